"""A minimal window of a trace that still shows its violation (`nfproof replay --window FILE`).

From the inputs of the part (flow) the violation is in, up to the input it shows at, inputs are
removed while the rest still replays to a violation of the same kind (delta debugging, ddmin),
keeping every output of the inputs kept and the failure, failover and logged-choice events. The
window is written as a trace (the same run header, plus `window_of`), with the original packets
(their sequence numbers, times and annotations unchanged), so it replays on its own."""
from __future__ import annotations

from dataclasses import replace

from ..traces.trace import TraceEvent, TraceHeader, TracePacket, TraceWriter, read_trace
from .replay import ReplayResult, replay
from .replay_load import Recording

MAX_TESTS = 400   # replays the minimisation may spend


def _sub(rec: Recording, seqs: set) -> Recording:
    inputs = [replace(u, lossable=False) for u in rec.inputs if u.seq in seqs]
    outputs = [o for o in rec.outputs if o.seq in seqs]
    outputs = [replace(o, index=k) for k, o in enumerate(outputs)]
    events = [e for e in rec.events if e.kind != "choice" or e.fields.get("seq") in seqs]
    return replace(rec, inputs=inputs, outputs=outputs, events=events)


def minimal_seqs(result: ReplayResult) -> set:
    """The input sequence numbers of a minimal window (ddmin over the failing part's inputs)."""
    rec, f = result.recording, result.failure
    if f.kind == "orphan":
        return set()
    last = f.unit.seq if f.unit is not None else max(f.output.seq, f.before.seq if f.before else -1)
    if f.unit is not None and rec.annotated:
        from .replay_partition import partition_kinds, split
        kinds = partition_kinds(rec.chain)
        observed = {}
        for o in rec.outputs:
            observed.setdefault(o.seq, []).append((o.egress, o.key))
        parts = split(rec, observed, kinds) if kinds else [list(range(len(rec.inputs)))]
        k = next(k for k, u in enumerate(rec.inputs) if u is f.unit)
        candidates = [rec.inputs[j].seq for part in parts if k in part for j in part if rec.inputs[j].seq <= last]
    else:
        candidates = [u.seq for u in rec.inputs if u.seq <= last]
    keep = {s for s in (f.unit.seq if f.unit else None, f.output.seq if f.output else None,
                        f.before.seq if f.before else None) if s is not None}
    tests = [0]

    def fails(seqs) -> bool:
        tests[0] += 1
        r = replay(_sub(rec, set(seqs) | keep), result.eq, result.stall_ns, jobs=1, partition=False)
        return r.verdict == "violation" and r.failure.kind == f.kind

    current = [s for s in candidates if s not in keep]
    if not fails(current):  # the part alone does not show it (it needs other flows): keep everything before
        current = [u.seq for u in rec.inputs if u.seq <= last and u.seq not in keep]
    n = 2
    while len(current) >= 1 and tests[0] < MAX_TESTS:
        chunk = max(1, len(current) // n)
        subsets = [current[k:k + chunk] for k in range(0, len(current), chunk)]
        for sub in subsets:
            rest = [s for s in current if s not in set(sub)]
            if fails(rest):
                current, n = rest, max(n - 1, 2)
                break
        else:
            if chunk == 1:
                break
            n = min(len(current), n * 2)
    return set(current) | keep


def write_window(result: ReplayResult, path: str) -> int:
    """Writes the window as a trace; returns how many packets it holds."""
    rec = result.recording
    if not rec.annotated or rec.output_path is not None:
        raise OSError(0, "a window is written only for traces whose outputs name their inputs")
    seqs = minimal_seqs(result)
    numbers = {u.number for u in rec.inputs if u.seq in seqs} | {o.number for o in rec.outputs if o.seq in seqs}
    with read_trace(rec.path) as trace:
        header = trace.header
        fields = dict(header.fields) if isinstance(header.fields, dict) else {}
        fields.update(window_of=rec.path, t0_ns=rec.t0_ns)
        kept = 0
        with TraceWriter(path, TraceHeader(header.chain, header.strategy, fields)) as w:
            number = 0
            for item in trace:
                if isinstance(item, TracePacket):
                    number += 1
                    if number in numbers:
                        w.packet(item)
                        kept += 1
                elif isinstance(item, TraceEvent):
                    if item.kind in ("failure", "failover", "sync") or (
                            item.kind == "choice" and item.fields.get("seq") in seqs):
                        w.event(item)
    return kept
