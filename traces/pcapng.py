"""pcapng: streaming reader and writer.

Reads every section (either byte order), IDBs with their own link type, snaplen, if_tsresol
(powers of 10 and of 2) and if_tsoffset, EPB, SPB, the obsolete packet block, comments and
options, and custom blocks; skips other known and unknown blocks."""
from __future__ import annotations

import struct
from typing import Iterator

from .errors import FormatError
from .pcap import CHUNK, MAX_RECORD, Source, open_source
from .record import Closing, CustomBlock, Interface, Record, open_sink

SHB, IDB, OPB, SPB, NRB, ISB, EPB, DSB = 0x0A0D0D0A, 1, 2, 3, 4, 5, 6, 10
CB_COPY, CB_NOCOPY = 0x00000BAD, 0x40000BAD
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT = 0, 1
CUSTOM_OPTIONS = (2988, 2989, 19372, 19373)  # UTF-8 copyable, binary copyable, and not copyable
IF_NAME, IF_DESCRIPTION, IF_TSRESOL, IF_TSOFFSET = 2, 3, 9, 14
SHB_HARDWARE, SHB_OS, SHB_USERAPPL = 2, 3, 4
BLOCK_NAMES = {SHB: "SHB", IDB: "IDB", OPB: "OPB", SPB: "SPB", NRB: "NRB", ISB: "ISB", EPB: "EPB",
               DSB: "DSB", CB_COPY: "custom block", CB_NOCOPY: "custom block"}


def _pad(n: int) -> int:
    return -n % 4


def ts_scale(tsresol: int) -> tuple[int, int]:
    """(mul, div) with ns = units * mul // div for an if_tsresol byte."""
    v = tsresol & 0x7F
    if tsresol & 0x80:
        return 1_000_000_000, 1 << v
    return (10 ** (9 - v), 1) if v <= 9 else (1, 10 ** (v - 9))


class _Bad(Exception):
    """A problem inside the current block; the reader reports it at the block's offset."""


def parse_options(body: bytes, pos: int, order: str) -> list[tuple[int, bytes]]:
    """Options from body[pos:] up to opt_endofopt or the end of the block."""
    out, end = [], len(body)
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", body, pos)
        pos += 4
        if code == OPT_END:
            break
        if pos + length > end:
            raise _Bad(f"option {code} of length {length} overruns its block ({end - pos} bytes left)")
        out.append((code, body[pos:pos + length]))
        pos += length + _pad(length)
    return out


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _name(btype: int) -> str:
    return BLOCK_NAMES.get(btype, f"type 0x{btype:08x}")


class PcapngReader(Closing):
    """Iterating yields Records; `items()` yields Records and CustomBlocks in file order."""

    format = "pcapng"

    def __init__(self, path_or_file):
        f, path, self._owned = open_source(path_or_file)
        self._file = f
        self.src = Source(f, path)
        self.interfaces: list[Interface] = []
        self.sections: list[dict] = []
        self.count = 0  # packet records read
        self.blocks = 0  # blocks read
        self.block_offset = 0  # offset of the block last read
        self._buf, self._pos, self._base = b"", 0, self.src.offset  # _buf[_pos] is at offset _base + _pos
        self._order = "<"
        self._ifs: list[tuple[Interface, int, int, int]] = []  # this section's: (interface, mul, div, offset ns)
        try:
            first = self._next_block()
            if first is None or first[0] != SHB:
                raise self.src.error(0, "not a pcapng file: does not start with a section header block")
            try:
                self._section(first[1])
            except _Bad as e:
                raise self.src.error(0, f"block 1 (SHB): {e}") from None
        except FormatError:
            self.close()
            raise

    @property
    def details(self) -> dict:
        return {"format": "pcapng", "sections": self.sections}

    def _fill(self, need: int) -> int:
        """Makes `need` bytes available at _pos if the file has them; returns how many are."""
        buf, pos = self._buf, self._pos
        self._buf = buf[pos:] + self.src.read(max(CHUNK, need - (len(buf) - pos)))
        self._base, self._pos = self._base + pos, 0
        return len(self._buf)

    def _next_block(self):
        """(type, body, offset) of the next block, or None at a clean end of file."""
        n = self.blocks + 1
        avail = len(self._buf) - self._pos
        if avail < 12:
            avail = self._fill(12)
        buf, pos, error = self._buf, self._pos, self.src.error
        at = self._base + pos
        if avail < 8:
            if avail == 0:
                return None
            raise error(at, f"block {n} header truncated: {avail} of 8 bytes")
        if buf[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            magic = buf[pos + 8:pos + 12]
            if magic == b"\x4d\x3c\x2b\x1a":
                self._order = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                self._order = ">"
            elif len(magic) < 4:
                raise error(at, f"block {n} (SHB) truncated before its byte-order magic")
            else:
                raise error(at, f"block {n} (SHB) has a bad byte-order magic {magic.hex()}")
        btype, total = struct.unpack_from(self._order + "II", buf, pos)
        if total < 12 or total % 4 or (btype == SHB and total < 28):
            raise error(at, f"block {n} ({_name(btype)}) has an invalid length {total}")
        if total > avail:
            remain = self.src.remain()
            if remain is not None and total > avail + remain:
                raise error(at, f"block {n} ({_name(btype)}) claims {total} bytes, {avail + remain} remain")
            if total > MAX_RECORD:
                raise error(at, f"block {n} ({_name(btype)}) claims {total} bytes, more than the maximum of {MAX_RECORD}")
            avail = self._fill(total)
            buf, pos = self._buf, 0
            if total > avail:
                raise error(at, f"block {n} ({_name(btype)}) claims {total} bytes, {avail} remain")
        (trailer,) = struct.unpack_from(self._order + "I", buf, pos + total - 4)
        if trailer != total:
            raise error(at, f"block {n} ({_name(btype)}): length {total} in header, {trailer} in trailer")
        self.blocks, self.block_offset, self._pos = n, at, pos + total
        return btype, buf[pos + 8:pos + total - 4], at

    def items(self) -> Iterator[Record | CustomBlock]:
        while (blk := self._next_block()) is not None:
            try:
                item = self._decode(*blk)
            except _Bad as e:
                raise self.src.error(blk[2], f"block {self.blocks} ({_name(blk[0])}): {e}") from None
            if item is not None:
                yield item

    def _decode(self, btype: int, body: bytes, at: int) -> Record | CustomBlock | None:
        o = self._order
        if btype == EPB or btype == OPB:
            if len(body) < 20:
                raise _Bad(f"body of {len(body)} bytes is shorter than 20")
            if btype == EPB:
                iface, tsh, tsl, caplen, wirelen = struct.unpack_from(o + "IIIII", body)
            else:
                iface, _drops, tsh, tsl, caplen, wirelen = struct.unpack_from(o + "HHIIII", body)
            if caplen > len(body) - 20:
                raise _Bad(f"captured length {caplen} exceeds the {len(body) - 20} bytes of packet data")
            return self._record(iface, (tsh << 32) | tsl, wirelen, body[20:20 + caplen], body, 20 + caplen + _pad(caplen))
        if btype == SPB:
            if len(body) < 4:
                raise _Bad(f"body of {len(body)} bytes is shorter than 4")
            if not self._ifs:
                raise _Bad("simple packet block in a section without interfaces")
            (wirelen,) = struct.unpack_from(o + "I", body)
            snap = self._ifs[0][0].snaplen or wirelen
            return self._record(0, None, wirelen, body[4:4 + min(wirelen, snap, len(body) - 4)], body, len(body))
        if btype == IDB:
            self._interface(body)
        elif btype == SHB:
            self._section(body)
        elif btype == CB_COPY or btype == CB_NOCOPY:
            if len(body) < 4:
                raise _Bad(f"body of {len(body)} bytes is shorter than 4")
            return CustomBlock(struct.unpack_from(o + "I", body)[0], body[4:], btype == CB_COPY, at)
        return None  # NRB, ISB, DSB, systemd journal and unknown blocks are skipped

    def _section(self, body: bytes) -> None:
        o = self._order
        major, minor, _seclen = struct.unpack_from(o + "HHq", body, 4)
        if major != 1:
            raise _Bad(f"pcapng version {major}.{minor} is not supported")
        sec = {"byte_order": "little" if o == "<" else "big", "version": f"{major}.{minor}",
               "interfaces": [], "comments": []}
        names = {SHB_HARDWARE: "hardware", SHB_OS: "os", SHB_USERAPPL: "application"}
        for code, val in parse_options(body, 16, o):
            if code == OPT_COMMENT:
                sec["comments"].append(_text(val))
            elif code in names:
                sec[names[code]] = _text(val)
        self.sections.append(sec)
        self._ifs = []

    def _interface(self, body: bytes) -> None:
        o = self._order
        if len(body) < 8:
            raise _Bad(f"body of {len(body)} bytes is shorter than 8")
        linktype, _res, snaplen = struct.unpack_from(o + "HHI", body)
        iface = Interface(len(self.interfaces), linktype, snaplen, section=len(self.sections) - 1)
        comments = []
        for code, val in parse_options(body, 8, o):
            if code == OPT_COMMENT:
                comments.append(_text(val))
            elif code == IF_NAME:
                iface.name = _text(val)
            elif code == IF_DESCRIPTION:
                iface.description = _text(val)
            elif code == IF_TSRESOL and len(val) >= 1:
                iface.tsresol = val[0]
            elif code == IF_TSOFFSET and len(val) >= 8:
                (iface.tsoffset,) = struct.unpack_from(o + "q", val)
        iface.comments = tuple(comments)
        self.interfaces.append(iface)
        self.sections[-1]["interfaces"].append(iface.id)
        self._ifs.append((iface, *ts_scale(iface.tsresol), iface.tsoffset * 1_000_000_000))

    def _record(self, iface: int, units: int | None, wirelen: int, data: bytes, body: bytes, opts_at: int) -> Record:
        if iface >= len(self._ifs):
            raise _Bad(f"refers to interface {iface}, the section has {len(self._ifs)}")
        info, mul, div, offset = self._ifs[iface]
        time_ns = None if units is None else units * mul // div + offset
        self.count += 1
        if opts_at >= len(body):
            return Record(info.id, info.linktype, time_ns, wirelen, data)
        comments, options, custom = [], [], []
        for code, val in parse_options(body, opts_at, self._order):
            if code == OPT_COMMENT:
                comments.append(_text(val))
            elif code in CUSTOM_OPTIONS and len(val) >= 4:
                custom.append((code, struct.unpack_from(self._order + "I", val)[0], val[4:]))
            else:
                options.append((code, val))
        return Record(info.id, info.linktype, time_ns, wirelen, data, tuple(comments), tuple(options), tuple(custom))

    def __iter__(self) -> Iterator[Record]:
        for item in self.items():
            if type(item) is Record:
                yield item


class PcapngWriter(Closing):
    """Writes pcapng: sections, interfaces (default ns resolution), EPB/SPB, custom blocks."""

    def __init__(self, path_or_file, *, big_endian: bool = False, comments=(), hardware=None, os=None,
                 userappl=None):
        self.f, self._owned = open_sink(path_or_file)
        self._file = self.f
        self.new_section(big_endian=big_endian, comments=comments, hardware=hardware, os=os, userappl=userappl)

    def _options(self, opts) -> bytes:
        out = bytearray()
        for code, val in opts:
            if isinstance(val, str):
                val = val.encode()
            if len(val) > 0xFFFF:
                raise ValueError(f"option {code} is longer than 65535 bytes")
            out += struct.pack(self.order + "HH", code, len(val)) + val + bytes(_pad(len(val)))
        if out:
            out += bytes(4)
        return bytes(out)

    def write_block(self, btype: int, body: bytes) -> None:
        """A raw block; the body is padded to 32 bits."""
        body += bytes(_pad(len(body)))
        total = len(body) + 12
        self.f.write(struct.pack(self.order + "II", btype, total) + body + struct.pack(self.order + "I", total))

    def new_section(self, *, big_endian: bool = False, comments=(), hardware=None, os=None, userappl=None) -> None:
        self.order = ">" if big_endian else "<"
        self._ifaces: list[tuple[int, int, int]] = []  # (mul, div, tsoffset) per interface
        opts = [(OPT_COMMENT, c) for c in comments]
        opts += [(c, v) for c, v in ((SHB_HARDWARE, hardware), (SHB_OS, os), (SHB_USERAPPL, userappl)) if v]
        self.write_block(SHB, struct.pack(self.order + "IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + self._options(opts))

    def add_interface(self, linktype: int = 1, snaplen: int = 0, *, name=None, description=None,
                      tsresol: int = 9, tsoffset: int = 0, comments=()) -> int:
        """Declares an interface in the current section; returns its id there."""
        opts = [(OPT_COMMENT, c) for c in comments]
        if name is not None:
            opts.append((IF_NAME, name))
        if description is not None:
            opts.append((IF_DESCRIPTION, description))
        if tsresol != 6:
            opts.append((IF_TSRESOL, bytes([tsresol])))
        if tsoffset:
            opts.append((IF_TSOFFSET, struct.pack(self.order + "q", tsoffset)))
        self.write_block(IDB, struct.pack(self.order + "HHI", linktype, 0, snaplen) + self._options(opts))
        mul, div = ts_scale(tsresol)
        self._ifaces.append((mul, div, tsoffset))
        return len(self._ifaces) - 1

    def write_packet(self, interface: int, time_ns: int, data: bytes, wirelen: int | None = None, *,
                     comments=(), options=(), custom=()) -> None:
        """An EPB. `custom` holds (code, PEN, data) custom options; `options` raw (code, value)."""
        if not 0 <= interface < len(self._ifaces):
            raise ValueError(f"interface {interface} is not declared in this section")
        mul, div, offset = self._ifaces[interface]
        units = ((time_ns - offset * 1_000_000_000) * div) // mul
        if not 0 <= units < 1 << 64:
            raise ValueError(f"timestamp {time_ns} ns does not fit interface {interface}")
        opts = [(OPT_COMMENT, c) for c in comments] + list(options)
        opts += [(code, struct.pack(self.order + "I", pen) + val) for code, pen, val in custom]
        n = len(data)
        self.write_block(EPB, struct.pack(self.order + "IIIII", interface, units >> 32, units & 0xFFFFFFFF, n,
                                          n if wirelen is None else wirelen)
                         + data + bytes(_pad(n)) + self._options(opts))

    def write_simple_packet(self, data: bytes, wirelen: int | None = None) -> None:
        """An SPB (interface 0, no timestamp)."""
        self.write_block(SPB, struct.pack(self.order + "I", len(data) if wirelen is None else wirelen) + data)

    def write_custom(self, pen: int, data: bytes, *, copyable: bool = True) -> None:
        self.write_block(CB_COPY if copyable else CB_NOCOPY, struct.pack(self.order + "I", pen) + data)

