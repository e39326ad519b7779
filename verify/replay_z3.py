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

import time

import z3

from ..models.api import ModelError

from . import solver as smt
from .frames import OUTSIDE, Drop, framed_chain
from .induction import _arbitrary_state
from .symbolic import DOMAIN_LIMIT, TIME_WIDTH, initial_state, packet_terms, step

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
                framed[u.writes] = framed_chain(nf, u.writes)
            s = step(framed[u.writes], state, packet_terms(u.view), choice, lambda t=t: t)
            constraints.append(s.valid)
            state = s.state
            slots += s.outputs
            budget.check_time()
    except smt.BudgetExhausted:
        return "unknown"
    if any(egress not in gates for egress in observed):
        return "violation"
    constraints += _matching(slots, gates, observed)
    s = smt.new_solver(budget)
    s.add(*constraints)
    try:
        result = smt.check(s, budget)
    except smt.BudgetExhausted:
        return "unknown"
    return "explained" if result == z3.sat else "violation"


REFUTE_DOMAIN = 1024    # the refutations below skip steps that choose from larger pools (slow to build)
REFUTE_SECONDS = 10.0   # and stop for the rest of the process once they have taken this long in all
_SPENT = [0.0]


def _any_step(chain, unit):
    """(the chain as one NF stepped on the unit's packet from an arbitrary state -- every storage a
    fresh constant -- at an arbitrary time with arbitrary choices, its gates); None for an input
    outside the model or dropped before it, when the refutations' time is spent, or when the step
    cannot be built: a choice from a pool larger than REFUTE_DOMAIN, or a model error that only
    some (perhaps unreachable) state takes."""
    view = unit.view
    if view is OUTSIDE or isinstance(view, Drop) or _SPENT[0] > REFUTE_SECONDS:
        return None
    nf = chain.as_nf()
    t = z3.BitVec("any.t", TIME_WIDTH)
    DOMAIN_LIMIT[0] = REFUTE_DOMAIN
    try:
        s = step(framed_chain(nf, unit.writes), _arbitrary_state(nf, "any"), packet_terms(view),
                 lambda j, width: z3.BitVec(f"any.c{j}", width), lambda: t)
    except (smt.BudgetExhausted, ModelError):
        return None
    finally:
        DOMAIN_LIMIT[0] = None
    return s, list(nf.gates)


def _timed(check):
    """check's answer, its time added to what the refutations have spent."""
    def timed(*args):
        started = time.process_time()
        try:
            return check(*args)
        finally:
            _SPENT[0] += time.process_time() - started
    timed.__doc__, timed.__name__ = check.__doc__, check.__name__
    return timed


def _matching(slots, gates: list, observed: dict) -> list:
    """Constraints that the present output slots, per egress in order, are exactly `observed`
    (egress -> [observable key]); a raw key (a frame outside the model) matches no slot."""
    keys = [key for ks in observed.values() for key in ks if key[0] != "raw"]
    fields = FIELDS + ("label",) if any(len(key) > len(FIELDS) for key in keys) else FIELDS
    constraints = []
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
    return constraints


def _unsat(constraints, budget: smt.Budget) -> bool:
    solver = smt.new_solver(budget)
    solver.add(*constraints)
    try:
        return smt.check(solver, budget) == z3.unsat
    except smt.BudgetExhausted:
        return False


@_timed
def impossible(chain, unit, observed: list, budget: smt.Budget) -> bool:
    """Whether no state at all (reachable or not), no processing time and no choices let the chain
    emit exactly `observed` ([(egress, key)] of this input, in order per egress) for `unit`: then
    no history explains the input, whatever was decided before it, and the search's conflict at
    it is a violation there (no backtracking over earlier clock readings or choices can help).
    False when it is possible, or undecided (the solver's unknown, the budget)."""
    if any(key[0] == "raw" for _, key in observed):
        return False
    made = _any_step(chain, unit)
    if made is None:
        return False
    s, gates = made
    if any(egress not in gates for egress, _ in observed):
        return True
    by_egress = {}
    for egress, key in observed:
        by_egress.setdefault(egress, []).append(key)
    return _unsat([s.valid] + _matching(s.outputs, gates, by_egress), budget)


@_timed
def never_emits(chain, unit, egress: str, key: tuple, budget: smt.Budget) -> bool:
    """Whether the unit's step emits `key` on `egress` from no state, time and choices at all (as
    one of its outputs): so, matched freely, that output cannot be this input's. False when it
    can, or undecided."""
    if key[0] == "raw":
        return False
    made = _any_step(chain, unit)
    if made is None:
        return False
    s, gates = made
    if egress not in gates:
        return True
    g = gates.index(egress)
    fields = FIELDS + ("label",) if len(key) > len(FIELDS) else FIELDS
    return _unsat([s.valid, z3.Or(*[z3.And(slot.present, slot.gate == g,
                                           *[slot.fields[f] == key[c] for c, f in enumerate(fields)])
                                    for slot in s.outputs] or [z3.BoolVal(False)])], budget)
