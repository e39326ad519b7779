"""The fast pass of trace replay: one pass in C over a trace file that finds, for a run whose outputs
are exactly a failure-free execution's, that execution -- and otherwise stops and leaves the trace
to the full check (verify/replay_stream.py), which decides it as before.

How: the chain as one NF (`Chain.as_nf`, its instances releasing only what each input's frame can
carry: frames.framed_chain) compiled from the models' source (models/compile.py) in its guided
form: the caller names each choice and every write can be undone. The trace is read in C
(verify/_fast.pyx `explain`); each input waits until LAG more inputs have been read (its outputs
are then all there) and is stepped at the clock reading of its arrival (the earliest time of its
DESIGN.md "Time" window; arrivals made non-decreasing, as the full check does) with its choices
inferred from its observed outputs: a choice's default value and the next one are tried, an
output field that moves with the choice gives the value that field shows, and a choice among at
most 64 values is tried value by value. The input is explained when the step emits exactly its
observed outputs: out_index j the model's j-th output, same egress, same fields (and label).

Why a pass is a proof: the inputs stepped in order from the initial state, each at a time of its
window and with choices its domain offers, emit exactly the observed outputs on every egress in
order (each egress's outputs are checked in trace order against (seq, out_index)): that run *is*
a failure-free execution with the observed outputs, so the trace is explained under every
equivalence (strict is the finest; the others accept more). Anything else -- an output that no
inferred choice reproduces, a lost, repeated, late or reordered output, a frame outside the
model, an unannotated output, a model error, a chain whose members' clocks differ, a model the
compiler does not follow -- stops the pass: it never gives a violation or an unknown, and its
stop costs only the time it ran. NFPROOF_REPLAY_FAST=0 turns it off (the benchmark's baseline)."""
from __future__ import annotations

import os

from .frames import framed_chain, outside_route
from .replay_load import _interface_kind
from .replay_rows import WRITES, _fast

LAG = 4096              # inputs read past an input before its outputs are taken as complete
MIN_BYTES = 1 << 24     # smaller traces go straight to the full check (a first build of the chain takes ~3 s)
MAX_TRIALS = 64         # steps tried per input


def explain(path: str, rec, min_bytes: int | None = None) -> tuple[bool, dict]:
    """(True, counts) when the fast pass explains the trace at `path` (a Recording `rec` with its
    chain and header read, no packets); else (False, {"stopped": why})."""
    if _fast is None or os.environ.get("NFPROOF_PUREPYTHON"):
        return False, {"stopped": "the C reader is not built"}
    if os.environ.get("NFPROOF_REPLAY_FAST") == "0":
        return False, {"stopped": "off (NFPROOF_REPLAY_FAST=0)"}
    if os.path.getsize(path) < (MIN_BYTES if min_bytes is None else min_bytes):
        return False, {"stopped": "a small trace"}
    rates = {getattr(m.nf, "ticks_per_second", 1) for m in rec.chain.members.values()}
    if len(rates) != 1:
        return False, {"stopped": "the chain's members count time at different rates"}
    from ..models.compile import NotCompilable, CompiledModel
    nf = rec.chain.as_nf()
    kept: dict = {}

    def variant(w: int):
        """The guided build for frames of writes class w: (step, mark, undo, prefetch, state) addresses."""
        try:
            model = CompiledModel(framed_chain(nf, WRITES[w]), guided=True)
        except NotCompilable as e:
            kept.setdefault("why", f"not compiled: {e}")
            return None
        except (OSError, RuntimeError) as e:   # no writable cache, a compiler that fails: the full check decides
            kept.setdefault("why", f"not built: {e}")
            return None
        if "state" not in kept:
            kept["layout"], kept["state"] = model.layout, model.new_state()
        elif model.layout != kept["layout"]:
            kept.setdefault("why", "the frame classes' builds hold their state differently")
            return None
        kept[w] = model
        return (model.step_address, model.mark_address, model.undo_address, model.prefetch_address,
                kept["state"].address)

    t0 = rec.header_fields.get("t0_ns")
    if isinstance(t0, int) and t0 < 0:
        return False, {"stopped": "a clock origin before 0"}
    try:
        gates = {e: g for g, e in enumerate(nf.gates)}
        routes = tuple(-1 if egress is None else gates[egress]
                       for egress in (outside_route(rec.chain, side)[0] for side in ("inside", "outside")))

        def kind_of(name: str) -> int:
            """replay_load's reading of an interface name; -3 where the full check must read it (an
            ingress classified by address, an unknown egress, a name like an ingress that is none)."""
            what, arg = _interface_kind(name)
            if what == 0:
                return -3 if arg not in gates else 2 + gates[arg]
            if what == 1:
                return -3 if arg is None else ("inside", "outside").index(arg)
            return -1 if what == 2 else -3
        outcome = _fast.explain(path, variant, kind_of, rec.labels, t0 if isinstance(t0, int) else -1, rates.pop(),
                                routes, LAG, MAX_TRIALS)
    except _fast.Fallback:
        return False, {"stopped": "a block the C reader leaves to the full check"}
    if outcome[0] == "explained":
        return True, outcome[1]
    why = kept.get("why") or outcome[2]
    return False, {"stopped": f"packet {outcome[1]}: {why}"}
