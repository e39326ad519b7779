"""Open any pcap or pcapng capture by its magic and stream its records."""
from __future__ import annotations

import io
from typing import Iterator

from .errors import FormatError
from .pcap import PcapReader, open_source
from .pcapng import PcapngReader
from .record import Record

_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def open_capture(path_or_file) -> PcapReader | PcapngReader:
    """A reader for a pcap or pcapng path or binary file object (FormatError if neither).

    Both readers iterate over Records, have `items()` (pcapng adds CustomBlocks), `interfaces`,
    `details` (format, byte order, resolution, version...), `count` and are context managers."""
    f, path, owned = open_source(path_or_file)
    try:
        if f.seekable():
            here = f.tell()
            magic = f.read(4)
            f.seek(here)
        else:
            if not hasattr(f, "peek"):
                f = io.BufferedReader(f)
            magic = f.peek(4)[:4]
    except (OSError, ValueError) as e:
        if owned:
            f.close()
        raise FormatError(path, 0, f"cannot read: {e}") from None
    if magic in _PCAP_MAGICS:
        reader = PcapReader(f)
    elif magic == _PCAPNG_MAGIC:
        reader = PcapngReader(f)
    else:
        if owned:
            f.close()
        what = "empty file" if not magic else f"unknown magic {magic.hex()}"
        raise FormatError(path, 0, f"not a pcap or pcapng file ({what})")
    reader.src.path, reader._owned = path, owned
    return reader


def read_records(path_or_file) -> Iterator[Record]:
    """Every record of a capture, streamed; FormatError after the last good one on corruption."""
    with open_capture(path_or_file) as reader:
        yield from reader
