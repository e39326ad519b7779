"""Writes a run as a trace (traces/README.md, "What `nfproof run` records"): the run header, every
input on `ingress:inside` / `ingress:outside`, every output on `egress:NAME` right after the input
it descends from, control events (`failure`, `failover`, `sync`, `choice`: runtime/failover.py)
where they happened, and a final `summary` event. The file is always closed well-formed: `close`
writes the header (if no input came), the summary and the end, also when the run stopped on an
error.

The executor hands over a batch at a time (`record`); the failover driver, whose outputs come back
from worker processes one input at a time, writes item by item (`input`, `output`, `event`)."""
from __future__ import annotations

from nfproof.traces.trace import TraceEvent, TraceHeader, TracePacket, TraceWriter

from .batch import FROM_OUTSIDE

STRATEGY = "none"  # the in-process run; failover runs name theirs (e.g. "stateful.commit:8 --log-choices")
INGRESS = ("ingress:inside", "ingress:outside")  # by side: batch.FROM_INSIDE, FROM_OUTSIDE


class Recorder:
    """Records one run into `path`. The executor calls `begin` once (before the first input, or
    from `close` for a run without any), `record` per batch, then `close`."""

    def __init__(self, path, chain_text: str, fields: dict, strategy: str = STRATEGY):
        """Opens (creates) `path` now, so that an unwritable path fails before the run (OSError)."""
        self.path, self.chain_text, self.strategy = path, chain_text, strategy
        self._file = open(path, "wb")
        self.fields = dict(fields)  # params, seed, inside, clock, batch, implementation, input
        self.inputs = self.outputs = 0
        self.last_ns = 0
        self._w: TraceWriter | None = None
        self._linktype, self._closed = 1, False

    def begin(self, linktype: int, egresses, t0_ns: int | None) -> None:
        """Writes the run header and declares every port (same link type: the capture's)."""
        f = self.fields
        header = {"params": f.get("params", []), "seed": f.get("seed"), "linktype": linktype,
                  "inside": f.get("inside", []), "clock": f.get("clock"), "batch": f.get("batch"),
                  "implementation": f.get("implementation"), "input": f.get("input"), "t0_ns": t0_ns,
                  "labels": True}  # every output's label is in its annotation (traces/README.md)
        header.update((k, v) for k, v in f.items() if k not in header)
        self._w = TraceWriter(self._file, TraceHeader(self.chain_text, self.strategy, header))
        self._linktype, self.last_ns = linktype, t0_ns or 0
        for name in INGRESS + tuple(f"egress:{e}" for e in egresses):
            self._w.interface(name, linktype)

    def record(self, seq0: int, inputs, times, sides, outputs) -> None:
        """One batch. `inputs`: the frames as they arrived ((data, wirelen, ...), input i has seq
        seq0 + i); `times`: their trace timestamps; `sides`: 0 inside / 1 outside after
        classification; `outputs`: (input index, egress, instance, frame, label) in release order.
        Each input is written before its outputs; outputs keep their release order."""
        w, lt = self._w.packet, self._linktype
        written = 0
        last_in, out_index = -1, 0

        def write_inputs(upto: int) -> None:
            nonlocal written
            for i in range(written, upto):
                frame = inputs[i]
                w(TracePacket(INGRESS[sides[i] == FROM_OUTSIDE], times[i], frame[0], seq=seq0 + i,
                              wirelen=frame[1], linktype=lt))
            written = max(written, upto)

        for i, egress, instance, frame, label in outputs:
            write_inputs(i + 1)
            out_index = out_index + 1 if i == last_in else 0
            last_in = i
            src = inputs[i]
            wirelen = src[1] - len(src[0]) + len(frame) if len(frame) != len(src[0]) else src[1]
            w(TracePacket(f"egress:{egress}", times[i], frame, instance=instance, direction="out", seq=seq0 + i,
                          out_index=out_index, wirelen=max(wirelen, len(frame)), linktype=lt, label=label))
        write_inputs(len(inputs))
        self.inputs += len(inputs)
        self.outputs += len(outputs)
        if times:
            self.last_ns = times[-1]

    def input(self, seq: int, frame, time_ns: int, side: int) -> None:
        """One input: `frame` (data, wirelen, ...) as it arrived, `side` 0 inside / 1 outside."""
        self._w.packet(TracePacket(INGRESS[side == FROM_OUTSIDE], time_ns, frame[0], seq=seq, wirelen=frame[1],
                                   linktype=self._linktype))
        self.inputs += 1
        self.last_ns = max(self.last_ns, time_ns)

    def output(self, seq: int, out_index: int, egress: str, instance: str, frame: bytes, time_ns: int,
               wirelen: int, label: int = 0) -> None:
        """One output of input `seq` (its `out_index`-th), released onto `egress` by `instance`."""
        self._w.packet(TracePacket(f"egress:{egress}", time_ns, frame, instance=instance, direction="out", seq=seq,
                                   out_index=out_index, wirelen=max(wirelen, len(frame)), linktype=self._linktype,
                                   label=label))
        self.outputs += 1

    def event(self, kind: str, time_ns: int, instance: str, fields: dict) -> None:
        """A control event (traces/README.md: failure, failover, sync, choice)."""
        self._w.event(TraceEvent(kind, time_ns, instance, fields))
        self.last_ns = max(self.last_ns, time_ns)

    def close(self, summary: dict, egresses=(), linktype: int = 1) -> None:
        """The summary event (packets_in, packets_out, dropped, outputs_sha256 and, when the run
        stopped early, error), then the end of the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._w is None:
            self.begin(linktype, egresses, None)
        w, self._w = self._w, None
        try:
            w.event(TraceEvent("summary", self.last_ns, "", summary))
            w.close()
        finally:
            self._file.close()
