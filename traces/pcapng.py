"""pcapng: streaming reader and writer.

Reads every section (either byte order), IDBs with their own link type, snaplen, if_tsresol
(powers of 10 and of 2) and if_tsoffset, EPB, SPB, the obsolete packet block, comments and
options, and custom blocks; skips other known and unknown blocks."""
from __future__ import annotations

import struct
from typing import Iterator

from .errors import FormatError
from .pcap import MAX_RECORD, Source, open_source
from .record import CustomBlock, Interface, Record

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


def parse_options(body: bytes, pos: int, order: str, err) -> list[tuple[int, bytes]]:
    """Options from body[pos:] up to opt_endofopt or the end; `err(reason)` builds the error."""
    out, end = [], len(body)
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", body, pos)
        pos += 4
        if code == OPT_END:
            break
        if pos + length > end:
            raise err(f"option {code} of length {length} overruns its block ({end - pos} bytes left)")
        out.append((code, body[pos:pos + length]))
        pos += length + _pad(length)
    return out


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


class PcapngReader:
    """Iterating yields Records; `items()` yields Records and CustomBlocks in file order."""

    format = "pcapng"

    def __init__(self, path_or_file):
        f, path, self._owned = open_source(path_or_file)
        self.src = Source(f, path)
        self.interfaces: list[Interface] = []
        self.sections: list[dict] = []
        self.count = 0  # packet records read
        self.blocks = 0  # blocks read
        self.block_offset = 0  # offset of the block last read
        self._section_ifaces: list[int] = []
        self._order = "<"
        try:
            first = self._next_block()
        except FormatError:
            self.close()
            raise
        if first is None or first[0] != SHB:
            self.close()
            raise self.src.error(0, "not a pcapng file: does not start with a section header block")
        try:
            self._section(first[1], lambda reason: self.src.error(0, f"block 1 (SHB): {reason}"))
        except FormatError:
            self.close()
            raise

    @property
    def details(self) -> dict:
        return {"format": "pcapng", "sections": self.sections}

    def _next_block(self):
        """(type, body, offset) of the next block, or None at a clean end of file."""
        src, n = self.src, self.blocks + 1
        at = src.offset
        head = src.read(8)
        if not head:
            return None
        if len(head) < 8:
            raise src.error(at, f"block {n} header truncated: {len(head)} of 8 bytes")
        if head[:4] == b"\x0a\x0d\x0d\x0a":
            magic = src.read(4)
            if len(magic) < 4:
                raise src.error(at, f"block {n} (SHB) truncated before its byte-order magic")
            if magic == b"\x4d\x3c\x2b\x1a":
                self._order = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                self._order = ">"
            else:
                raise src.error(at, f"block {n} (SHB) has a bad byte-order magic {magic.hex()}")
            head += magic
        btype, total = struct.unpack_from(self._order + "II", head)
        name = BLOCK_NAMES.get(btype, f"type 0x{btype:08x}")
        if total < 12 or total % 4 or (btype == SHB and total < 28):
            raise src.error(at, f"block {n} ({name}) has an invalid length {total}")
        rest = total - len(head)
        remain = src.remain()
        if remain is not None and rest > remain:
            raise src.error(at, f"block {n} ({name}) claims {total} bytes, {remain + len(head)} remain")
        if total > MAX_RECORD:
            raise src.error(at, f"block {n} ({name}) claims {total} bytes, more than the maximum of {MAX_RECORD}")
        tail = src.read(rest)
        if len(tail) < rest:
            raise src.error(at, f"block {n} ({name}) claims {total} bytes, {len(tail) + len(head)} remain")
        (trailer,) = struct.unpack_from(self._order + "I", tail, rest - 4)
        if trailer != total:
            raise src.error(at, f"block {n} ({name}): length {total} in header, {trailer} in trailer")
        self.blocks = n
        return btype, (head[8:] + tail[:-4]) if btype == SHB else tail[:-4], at

    def items(self) -> Iterator[Record | CustomBlock]:
        src = self.src
        while True:
            blk = self._next_block()
            if blk is None:
                return
            btype, body, at = blk
            self.block_offset = at
            o, n = self._order, self.blocks

            def err(reason, at=at, n=n, btype=btype):
                return src.error(at, f"block {n} ({BLOCK_NAMES.get(btype, hex(btype))}): {reason}")

            if btype == EPB or btype == OPB:
                if len(body) < 20:
                    raise err(f"body of {len(body)} bytes is shorter than 20")
                if btype == EPB:
                    iface, tsh, tsl, caplen, wirelen = struct.unpack_from(o + "IIIII", body)
                else:
                    iface, _drops, tsh, tsl, caplen, wirelen = struct.unpack_from(o + "HHIIII", body)
                if caplen > len(body) - 20:
                    raise err(f"captured length {caplen} exceeds the {len(body) - 20} bytes of packet data")
                yield self._record(iface, (tsh << 32) | tsl, wirelen, body[20:20 + caplen],
                                   parse_options(body, 20 + caplen + _pad(caplen), o, err), err)
            elif btype == SPB:
                if len(body) < 4:
                    raise err(f"body of {len(body)} bytes is shorter than 4")
                (wirelen,) = struct.unpack_from(o + "I", body)
                if not self._section_ifaces:
                    raise err("simple packet block in a section without interfaces")
                snap = self.interfaces[self._section_ifaces[0]].snaplen or wirelen
                yield self._record(0, None, wirelen, body[4:4 + min(wirelen, snap, len(body) - 4)], [], err)
            elif btype == IDB:
                if len(body) < 8:
                    raise err(f"body of {len(body)} bytes is shorter than 8")
                linktype, _res, snaplen = struct.unpack_from(o + "HHI", body)
                iface = Interface(len(self.interfaces), linktype, snaplen, section=len(self.sections) - 1)
                comments = []
                for code, val in parse_options(body, 8, o, err):
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
                self._section_ifaces.append(iface.id)
                self.sections[-1]["interfaces"].append(iface.id)
            elif btype == SHB:
                self._section(body, err)
            elif btype == CB_COPY or btype == CB_NOCOPY:
                if len(body) < 4:
                    raise err(f"body of {len(body)} bytes is shorter than 4")
                (pen,) = struct.unpack_from(o + "I", body)
                yield CustomBlock(pen, body[4:], btype == CB_COPY, at)
            # NRB, ISB, DSB, systemd journal and unknown blocks: skipped

    def _section(self, body: bytes, err) -> None:
        o = self._order
        major, minor, _seclen = struct.unpack_from(o + "HHq", body, 4)
        if major != 1:
            raise err(f"pcapng version {major}.{minor} is not supported")
        sec = {"byte_order": "little" if o == "<" else "big", "version": f"{major}.{minor}",
               "interfaces": [], "comments": []}
        names = {SHB_HARDWARE: "hardware", SHB_OS: "os", SHB_USERAPPL: "application"}
        for code, val in parse_options(body, 16, o, err):
            if code == OPT_COMMENT:
                sec["comments"].append(_text(val))
            elif code in names:
                sec[names[code]] = _text(val)
        self.sections.append(sec)
        self._section_ifaces = []

    def _record(self, iface: int, units: int | None, wirelen: int, data: bytes, opts, err) -> Record:
        ids = self._section_ifaces
        if iface >= len(ids):
            raise err(f"refers to interface {iface}, the section has {len(ids)}")
        info = self.interfaces[ids[iface]]
        time_ns = None
        if units is not None:
            mul, div = ts_scale(info.tsresol)
            time_ns = units * mul // div + info.tsoffset * 1_000_000_000
        comments, options, custom = [], [], []
        for code, val in opts:
            if code == OPT_COMMENT:
                comments.append(_text(val))
            elif code in CUSTOM_OPTIONS and len(val) >= 4:
                custom.append((code, struct.unpack_from(self._order + "I", val)[0], val[4:]))
            else:
                options.append((code, val))
        self.count += 1
        return Record(info.id, info.linktype, time_ns, wirelen, data, tuple(comments), tuple(options), tuple(custom))

    def __iter__(self) -> Iterator[Record]:
        for item in self.items():
            if type(item) is Record:
                yield item

    def close(self) -> None:
        if self._owned:
            self.src.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PcapngWriter:
    """Writes pcapng: sections, interfaces (default ns resolution), EPB/SPB, custom blocks."""

    def __init__(self, path_or_file, *, big_endian: bool = False, comments=(), hardware=None, os=None,
                 userappl=None):
        if hasattr(path_or_file, "write"):
            self.f, self._owned = path_or_file, False
        else:
            self.f, self._owned = open(path_or_file, "wb"), True
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

    def close(self) -> None:
        if self._owned:
            self.f.close()
        else:
            self.f.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
