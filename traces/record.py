"""What the pcap and pcapng readers yield."""
from __future__ import annotations

from dataclasses import dataclass, field


def open_sink(path_or_file):
    """(file, owned): a path is opened for writing (and owned), a file object is borrowed."""
    if hasattr(path_or_file, "write"):
        return path_or_file, False
    return open(path_or_file, "wb"), True


class Closing:
    """Context manager for readers and writers: closes `_file` if it opened it, else flushes it."""

    _file, _owned = None, False

    def close(self) -> None:
        if self._owned:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(slots=True)
class Record:
    """One captured packet.

    `interface` indexes the reader's `interfaces` (global over pcapng sections; always 0 for pcap).
    `time_ns` is ns since the epoch, None for a pcapng simple packet block (which has none).
    `options` holds the remaining pcapng options as (code, raw value); `custom` the custom options
    (codes 2988/2989/19372/19373) as (code, PEN, data)."""

    interface: int
    linktype: int
    time_ns: int | None
    wirelen: int
    data: bytes
    comments: tuple[str, ...] = ()
    options: tuple[tuple[int, bytes], ...] = ()
    custom: tuple[tuple[int, int, bytes], ...] = ()

    @property
    def caplen(self) -> int:
        return len(self.data)


@dataclass(slots=True)
class Interface:
    """A capture interface: the pcap file header, or a pcapng IDB."""

    id: int
    linktype: int
    snaplen: int
    section: int = 0
    name: str | None = None
    description: str | None = None
    tsresol: int = 6  # the pcapng if_tsresol byte: 10^-v, or 2^-(v & 0x7f) when the top bit is set
    tsoffset: int = 0  # seconds
    comments: tuple[str, ...] = ()


@dataclass(slots=True)
class CustomBlock:
    """A pcapng custom block (type 0x00000BAD copyable, 0x40000BAD not): PEN and opaque data."""

    pen: int
    data: bytes
    copyable: bool
    offset: int = field(default=0, compare=False)


LINKTYPES = {
    0: "NULL", 1: "EN10MB", 101: "RAW", 12: "RAW", 14: "RAW", 105: "IEEE802_11", 108: "LOOP",
    113: "LINUX_SLL", 127: "IEEE802_11_RADIOTAP", 228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2",
}


def linktype_name(linktype: int) -> str:
    return LINKTYPES.get(linktype, f"DLT{linktype}")
