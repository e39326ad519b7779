"""Classic pcap: streaming reader and writer (µs and ns magic, either byte order)."""
from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO, Iterator

from .errors import FormatError
from .record import Closing, Interface, Record, open_sink

MAGIC_US, MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
CHUNK = 1 << 16  # bytes read at a time
MAX_RECORD = 1 << 26  # 64 MiB: no record or block may claim more (flat memory on corrupt input)
_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True),
}


class Source:
    """A binary file read forward, with its path, current offset and (if known) size."""

    def __init__(self, f: BinaryIO, path: str):
        self.f, self.path, self.offset = f, path, 0
        try:
            here = f.tell()
            self.size = f.seek(0, io.SEEK_END)
            f.seek(here)
            self.offset = here
        except (OSError, ValueError, AttributeError):
            self.size = None

    def remain(self) -> int | None:
        return None if self.size is None else max(self.size - self.offset, 0)

    def error(self, offset: int | None, reason: str) -> FormatError:
        return FormatError(self.path, offset, reason)

    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at end of file); advances the offset."""
        try:
            b = self.f.read(n)
        except OSError as e:
            raise self.error(self.offset, f"read error: {e}") from None
        self.offset += len(b)
        return b


def open_source(path_or_file: str | os.PathLike | BinaryIO) -> tuple[BinaryIO, str, bool]:
    """(file, display path, owned) for a path or an open binary file; FormatError if unopenable."""
    if hasattr(path_or_file, "read"):
        return path_or_file, getattr(path_or_file, "name", "<stream>"), False  # type: ignore[return-value]
    path = os.fspath(path_or_file)
    try:
        return open(path, "rb"), path, True
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from None


class PcapReader(Closing):
    """Reads a classic pcap file header on construction; iterating streams the records."""

    format = "pcap"

    def __init__(self, path_or_file):
        f, path, self._owned = open_source(path_or_file)
        self._file = f
        self.src = src = Source(f, path)
        hdr = src.read(24)
        if len(hdr) < 24:
            self.close()
            raise src.error(0, f"pcap file header truncated: {len(hdr)} of 24 bytes")
        try:
            self.order, self.nanosecond = _MAGICS[hdr[:4]]
        except KeyError:
            self.close()
            raise src.error(0, f"not a pcap file (magic {hdr[:4].hex()})") from None
        major, minor, _zone, _sigfigs, snaplen, network = struct.unpack(self.order + "HHiIII", hdr[4:])
        if major != 2:
            self.close()
            why = "archaic pcap savefile format" if major < 2 else "unsupported pcap savefile format"
            raise src.error(4, f"pcap version {major}.{minor}: {why}")
        self.version = (major, minor)
        self.snaplen = snaplen
        self.linktype = network & 0x03FFFFFF
        self.interfaces = [Interface(0, self.linktype, snaplen, tsresol=9 if self.nanosecond else 6)]
        self.count = 0

    @property
    def details(self) -> dict:
        return {
            "format": "pcap", "byte_order": "big" if self.order == ">" else "little",
            "resolution": "ns" if self.nanosecond else "us",
            "version": f"{self.version[0]}.{self.version[1]}", "snaplen": self.snaplen,
        }

    def __iter__(self) -> Iterator[Record]:
        src, lt, scale = self.src, self.linktype, 1 if self.nanosecond else 1000
        unpack = struct.Struct(self.order + "IIII").unpack_from
        limit = max(min(self.snaplen, MAX_RECORD), 262144)  # as libpcap and Wireshark
        buf, pos, base = b"", 0, src.offset  # buf[pos] is at file offset base + pos
        while True:
            if len(buf) - pos < 16:
                buf, base, pos = buf[pos:] + src.read(CHUNK), base + pos, 0
                if len(buf) < 16:
                    if not buf:
                        return
                    raise src.error(base, f"record {self.count + 1} header truncated: {len(buf)} of 16 bytes")
            sec, frac, caplen, wirelen = unpack(buf, pos)
            end = pos + 16 + caplen
            if end > len(buf):
                n, at = self.count + 1, base + pos
                remain = src.remain()
                if remain is not None and caplen > remain + len(buf) - pos - 16:
                    raise src.error(at, f"record {n} claims {caplen} bytes, {remain + len(buf) - pos - 16} remain")
                if caplen > limit:
                    raise src.error(at, f"record {n} claims {caplen} bytes, more than the maximum of {limit}")
                buf, base, pos = buf[pos:] + src.read(max(CHUNK, caplen + 16 - (len(buf) - pos))), base + pos, 0
                end = 16 + caplen
                if end > len(buf):
                    raise src.error(at, f"record {n} claims {caplen} bytes, {len(buf) - 16} remain")
            elif caplen > limit:
                raise src.error(base + pos, f"record {self.count + 1} claims {caplen} bytes, "
                                            f"more than the maximum of {limit}")
            self.count += 1
            yield Record(0, lt, sec * 1_000_000_000 + frac * scale, wirelen, buf[pos + 16:end])
            pos = end

    items = __iter__


class PcapWriter(Closing):
    """Writes a classic pcap file; timestamps are truncated to µs unless `nanosecond`."""

    def __init__(self, path_or_file, linktype: int = 1, snaplen: int = 262144, *,
                 nanosecond: bool = False, big_endian: bool = False, version: tuple[int, int] = (2, 4)):
        self.f, self._owned = open_sink(path_or_file)
        self._file = self.f
        self.order = ">" if big_endian else "<"
        self.nanosecond = nanosecond
        self._rec = struct.Struct(self.order + "IIII")
        magic = MAGIC_NS if nanosecond else MAGIC_US
        self.f.write(struct.pack(self.order + "IHHiIII", magic, *version, 0, 0, snaplen, linktype))

    def write(self, time_ns: int, data: bytes, wirelen: int | None = None) -> None:
        if time_ns < 0:
            raise ValueError("pcap timestamps cannot be negative")
        sec, ns = divmod(time_ns, 1_000_000_000)
        if sec >= 1 << 32:
            raise ValueError(f"timestamp {time_ns} ns is beyond the pcap range (2106)")
        frac = ns if self.nanosecond else ns // 1000
        self.f.write(self._rec.pack(sec, frac, len(data), len(data) if wirelen is None else wirelen))
        self.f.write(data)

