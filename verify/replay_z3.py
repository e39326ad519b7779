"""Z3 as trace replay's fallback: for a part the search could not decide (too many alternatives,
a conflict past the decisions it keeps), one query -- through verify/solver.py, the one module
that talks to Z3 -- asks whether some failure-free execution explains it.

Encoding (strict equivalence, outputs matched freely as the exact relation says): the chain as
one NF (`Chain.as_nf`, its instances releasing only what the input's frame can carry) stepped by the symbolic interpreter from its initial state over the part's
inputs (concrete packets), every choice a variable that must be available, every processing time
a variable in ticks with tick(a_i) <= T_i <= tick(a_i + S) and T_i non-decreasing (exactly the
non-decreasing times of the DESIGN.md window, seen through the clock); then, per egress, the
present outputs in order equal the observed ones. Sat: explained; unsat: a violation; the
solver's unknown or the budget: unknown."""
from __future__ import annotations

import z3

from . import solver as smt
from .frames import OUTSIDE, Drop, refusal
from .symbolic import TIME_WIDTH, initial_state, packet_terms, step

MAX_INPUTS = 48       # parts larger than this are left unknown
FIELDS = ("proto", "src", "sport", "dst", "dport", "flags", "length")


def decide(chain, units: list, observed: dict, t0_ns: int, stall_ns: int, budget: smt.Budget) -> str:
    """explained / violation / unknown for units (a part, in input order) and `observed`: egress ->
    [observable key] in trace order (the part's outputs)."""
    if len(units) > MAX_INPUTS:
        return "unknown"
    rates = {getattr(m.nf, "ticks_per_second", 1) for m in chain.members.values()}
    if len(rates) != 1:
        return "unknown"
    (tps,) = rates
    nf = chain.as_nf()
    framed = {}
    gates = list(nf.gates)
    state = initial_state(nf)
    constraints, slots, previous = [], [], None
    try:
        for k, u in enumerate(units):
            if isinstance(u.view, Drop):
                continue
            if u.view is OUTSIDE:
                return "unknown"   # frames outside the model: the search decides those
            lo = (u.time_ns - t0_ns) * tps // 1_000_000_000
            hi = (u.time_ns + stall_ns - t0_ns) * tps // 1_000_000_000
            if hi >= 1 << (TIME_WIDTH - 2):
                return "unknown"
            t = z3.BitVec(f"t{k}", TIME_WIDTH)
            constraints += [z3.UGE(t, lo), z3.ULE(t, hi)]
            if previous is not None:
                constraints.append(z3.UGE(t, previous))
            previous = t

            def choice(j, width, k=k):
                return z3.BitVec(f"in{k}.choice{j}", width)
            if u.writes not in framed:
                framed[u.writes] = _framed(nf, u.writes)
            s = step(framed[u.writes], state, packet_terms(u.view), choice, lambda t=t: t)
            constraints.append(s.valid)
            state = s.state
            slots += s.outputs
            budget.check_time()
    except smt.BudgetExhausted:
        return "unknown"
    for egress, keys in observed.items():
        if egress not in gates:
            return "violation"
    fields = FIELDS + ("label",) if any(len(k) > len(FIELDS) for ks in observed.values() for k in ks if k[0] != "raw") \
        else FIELDS
    for g, egress in enumerate(gates):
        keys = observed.get(egress, [])
        count = z3.IntVal(0)
        for slot in slots:
            here = z3.And(slot.present, slot.gate == g)
            cases = [z3.And(count == n, *[slot.fields[f] == key[c] for c, f in enumerate(fields)])
                     for n, key in enumerate(keys) if key[0] != "raw"]
            constraints.append(z3.Implies(here, z3.Or(*cases) if cases else z3.BoolVal(False)))
            count = count + z3.If(here, 1, 0)
        constraints.append(count == len(keys))
    s = smt.new_solver(budget)
    s.add(*constraints)
    try:
        result = smt.check(s, budget)
    except smt.BudgetExhausted:
        return "unknown"
    return "explained" if result == z3.sat else "violation"


def _framed(nf, writes: frozenset):
    """The chain NF whose instances release only what a frame that can write `writes` carries
    (the runtime contract, section 2: the rest is dropped, the state change stands)."""

    class Framed(nf):
        def released(self, instance, pkt, emitted, ctx):
            kept = []
            for gate, out in emitted:
                field = refusal(writes, pkt, out)
                if field is None:
                    kept.append((gate, out))
                else:
                    ctx.drop(f"{instance}: cannot write {field} into the frame")
            return kept
    return Framed
