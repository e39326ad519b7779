"""The trace's packet records as replay reads them: one row per packet, in file order, with the
fields of its view already taken out of the frame (the reference; verify/_fast.pyx is its C
twin, chosen at import like traces/'s parser: the extension if built, this module with
NFPROOF_PUREPYTHON=1 or without it; `IMPLEMENTATION` says which).

`rows(trace)` yields, after the run header (which `trace`, a traces.trace.Trace, has read):
- for a packet the tuple (interface name, link type, time_ns, seq, out_index, instance, wirelen,
  data, key, writes, outer source): for a frame whose view (verify/frames.view) is a Packet,
  `key` is `observable` of that view (proto, src, sport, dst, dport, flags, length), `writes` the
  index of `writable`'s answer in WRITES and `outer source` the IPv4 source address as an int
  (what Sides classifies a plain `ingress` frame by), and `data` is None; for any other frame
  (outside the model, dropped at the ingress) `data` holds the frame and the other three are None;
  last, the packet's recorded label (None when the annotation has none);
- for a control event the traces.trace.TraceEvent.
The fast reader reads the file itself (mmapped); where it meets something it does not read
exactly as traces/trace.py does (any corruption, OPB/SPB blocks, unusual timestamp scales), the
rest of the file, from that block on, is read by traces/trace.py through `row_of`: errors are
the Python reader's, word for word. `offset()` is the offset of the block last read (for the
progress bar); `foreign_blocks()` the other tools' custom blocks skipped."""
from __future__ import annotations

import os

from ..models.api import ICMP, TCP, UDP
from ..traces import parse_frame
from ..traces.trace import TraceHeader, decode_block, event_from_json, read_trace
from .frames import (ADDRESS_WRITES, DPORT_WRITES, ICMP_ERRORS, ICMP_REPLIES, ICMP_REQUESTS, PORT_WRITES,
                     SPORT_WRITES, TCP_WRITES, _quoted_ports, _u32, observable, view, writable)

WRITES = (ADDRESS_WRITES, TCP_WRITES, PORT_WRITES, SPORT_WRITES, DPORT_WRITES)
_WRITE_INDEX = {w: k for k, w in enumerate(WRITES)}

if os.environ.get("NFPROOF_PUREPYTHON") == "1":
    _fast = None
else:
    try:
        from . import _fast
    except ImportError:  # not compiled
        _fast = None
IMPLEMENTATION = "fast" if _fast is not None else "fallback"


def model_row(parsed, wirelen: int):
    """(key, writes index, outer source) of a frame whose view is a Packet, else None."""
    v = view(parsed, wirelen, False)
    if type(v) is not _PACKET:
        return None
    return observable(v), _WRITE_INDEX[writable(parsed)], _u32(parsed.src)


def row_of(p) -> tuple:
    """The row of a traces.trace.TracePacket."""
    parsed = parse_frame(p.linktype, p.data, p.wirelen)
    m = model_row(parsed, p.wirelen)
    if m is None:
        return (p.interface, p.linktype, p.time_ns, p.seq, p.out_index, p.instance, p.wirelen, p.data,
                None, None, None, p.label)
    return (p.interface, p.linktype, p.time_ns, p.seq, p.out_index, p.instance, p.wirelen, None) + m + (p.label,)


class Rows:
    """Iterates the rows of an open trace (see the module docstring); closes it at the end."""

    def __init__(self, trace, fast: bool | None = None):
        self.trace = trace
        self.scan = None
        if (_fast is not None if fast is None else fast) and isinstance(trace.path, str):
            try:
                self.scan = _fast.TraceRows(trace.path)
            except OSError:
                self.scan = None
        self._foreign = 0

    def offset(self) -> int:
        return self.scan.offset if self.scan is not None else self.trace._r.block_offset

    def foreign_blocks(self) -> int:
        return self._foreign + self.trace.foreign_blocks

    def __iter__(self):
        try:
            skip = 0
            if self.scan is not None:
                scan, back = self.scan, 0
                try:
                    for row in scan:
                        if row[0] is None:   # one of our custom blocks
                            ev = _event(row[2])
                            if ev is None:
                                back = 1     # read it again in Python
                                raise _fast.Fallback()
                            yield ev
                        else:
                            yield row
                    self._foreign = scan.foreign_blocks
                    return
                except _fast.Fallback:
                    skip, self._foreign = scan.items - back, scan.foreign_blocks
                finally:
                    scan.close()
            yield from _python_rows(self.trace, skip)
        finally:
            self.trace.close()


def _event(payload: bytes):
    """The TraceEvent of an nfproof custom block's payload, None where traces/trace.py would
    raise (the Python reader then reads the block again and says why)."""
    try:
        ev = event_from_json(decode_block(payload))
    except ValueError:
        return None
    return None if isinstance(ev, TraceHeader) else ev


def _python_rows(trace, skip: int):
    """Rows from traces/trace.py, after `skip` blocks the fast reader took."""
    items = trace._items
    for _ in range(skip):
        next(items, None)
    for item in trace:
        yield row_of(item) if type(item) is not _EVENT else item


def rows(trace, fast: bool | None = None) -> Rows:
    return Rows(trace, fast)


from ..models.api import Packet as _PACKET  # noqa: E402
from ..traces.trace import TraceEvent as _EVENT  # noqa: E402
