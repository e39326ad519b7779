"""Time-shift invariance: may a proof start its clock at zero?

Many clocked NFs use time only through differences (an idle timeout, a token bucket's refill): run
every step of a run d ticks later, with every stored clock value d ticks later, and it does the
same. For such an NF a failover run at any times has a twin whose first event is at 0 — the same
run shifted back by d = min(a_1, c) — with the very same outputs, and every failure-free run of the
twin shifted forward by d is a failure-free run of the original (processing windows [a_i, a_i + S]
and the standby's max(a_i, c + F) move with the arrivals). So a failover check may assume
min(a_1, c) = 0; that fixes the high bits of every time term and makes the solver's work far
smaller (ratelimit under `none` at bound 3: 0.3 s -> 0.01 s per query).

`shift_invariant` decides it syntactically, on one symbolic step from an arbitrary state (a test
of the terms, not a solver query: Z3 takes 10-15 s to prove the same fact for the token bucket,
the arithmetic identity (t - d) - (v - d) = t - v being hard for a SAT solver). The clock values
are t (what `now()` returns) and the values of the maps whose value kind is named like a time
(`models.api.Time`); maps start empty, so the initial state holds none. The step must use them
only as the two sides of a difference or a comparison, and store into those maps only clock
values. Then, for every shift d <= t with every stored clock value in [d, t] (they are earlier
processing times, which never decrease along a run, and below 2**31), the step at t - d from the
state with its clock values moved back by d has the same outputs, choices and other state, and
its clock values moved back by d; by induction so does every run. A model that keeps time
elsewhere (a counter that starts at 0, a record, a map not named so), stores a derived time (an
expiry time now + T) or uses a time otherwise (the raw clock in a packet, a comparison with a
constant) fails the test and is checked at absolute times, as before."""
from __future__ import annotations

import functools

import z3

from ..models.api import NF, Bits, Map, ModelError
from .induction import _arbitrary_state, _choices
from .symbolic import TIME_WIDTH, step, symbolic_packet


def clock_maps(nf_cls: type[NF]) -> list[str]:
    """The declarations that hold clock values: maps whose value kind is named like a time."""
    return [name for name, decl in nf_cls.declarations().items()
            if isinstance(decl, Map) and isinstance(decl.value, Bits) and decl.value.width == TIME_WIDTH
            and "time" in decl.value.name.lower()]


@functools.lru_cache(maxsize=None)
def shift_invariant(nf_cls: type[NF]) -> bool:
    """Whether every step of the NF commutes with moving the clock (see the module docstring)."""
    clocks = clock_maps(nf_cls)
    t = z3.BitVec("shift.t", TIME_WIDTH)
    try:
        state = _arbitrary_state(nf_cls, "shift")
        after = step(nf_cls, state, symbolic_packet("shift.in"), _choices("shift.c"), lambda: t)
    except ModelError:
        return False
    walk = _Walk(t, [state[name][1] for name in clocks])
    slots = [x for slot in after.outputs for x in (slot.present, slot.gate, *slot.fields.values())]
    for name, terms in after.state.items():
        if name in clocks:
            present, values = terms
            slots.append(present)
            if not walk.clock_array(values):
                return False
        else:
            slots += terms
    counts = list((after.choice_counts or {}).values())  # (a chain's visits: how many choices each made)
    return all(walk.free(x) for x in [after.valid] + slots + counts)


EXTENSIONS = (z3.Z3_OP_ZERO_EXT, z3.Z3_OP_SIGN_EXT)
COMPARISONS = (z3.Z3_OP_EQ, z3.Z3_OP_DISTINCT, z3.Z3_OP_ULEQ, z3.Z3_OP_ULT, z3.Z3_OP_UGEQ, z3.Z3_OP_UGT,
               z3.Z3_OP_SLEQ, z3.Z3_OP_SLT, z3.Z3_OP_SGEQ, z3.Z3_OP_SGT)


class _Walk:
    """The syntactic test, over the step's terms. A *clock term* is t, a clock map's value at a key,
    or an if-then-else of clock terms; extended (zero or sign: its value is below 2**31) it is the
    clock value as an integer. Shifting moves every clock term by d and leaves unchanged what uses
    clock terms only as the two sides of a difference or a comparison. A term is *free* if it uses
    them only so; a clock map's next values must be clock terms stored at free keys."""

    def __init__(self, t, clock_arrays: list):
        self.atoms = {t.get_id()} | {a.get_id() for a in clock_arrays}
        self.t = t
        self.memo: dict = {}

    def _kind(self, e):
        return e.decl().kind() if z3.is_app(e) else None

    def clock_term(self, e) -> bool:
        if e.eq(self.t):
            return True
        kind = self._kind(e)
        if kind == z3.Z3_OP_SELECT:
            array, key = e.children()
            return self.clock_array(array) and self.free(key)
        if kind == z3.Z3_OP_ITE:
            c, a, b = e.children()
            return self.free(c) and self.clock_term(a) and self.clock_term(b)
        if kind == z3.Z3_OP_EXTRACT and e.params()[1] == 0 and e.size() >= TIME_WIDTH:
            return self.clock_value(e.children()[0])  # the low bits of a clock value, all of them
        return False

    def clock_value(self, e) -> bool:
        """An extension chain of a clock term: the clock value as an integer of e's width."""
        while self._kind(e) in EXTENSIONS:
            e = e.children()[0]
        return self.clock_term(e)

    def clock_array(self, e) -> bool:
        if e.get_id() in self.atoms:
            return True
        kind = self._kind(e)
        if kind == z3.Z3_OP_STORE:
            array, key, value = e.children()
            return self.clock_array(array) and self.free(key) and self.clock_term(value)
        if kind == z3.Z3_OP_ITE:
            c, a, b = e.children()
            return self.free(c) and self.clock_array(a) and self.clock_array(b)
        return False

    def free(self, e) -> bool:
        key = e.get_id()
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self._free(e)
        return hit

    def _free(self, e) -> bool:
        if e.get_id() in self.atoms:
            return False
        if not z3.is_app(e):
            return False  # (a quantifier or a bound variable: not built by the interpreter)
        kind, args = e.decl().kind(), e.children()
        if len(args) == 2 and (kind in COMPARISONS or kind == z3.Z3_OP_BSUB) \
                and self.clock_value(args[0]) and self.clock_value(args[1]):
            return True  # a difference or comparison of two clock values: the same after the shift
        return all(self.free(a) for a in args)
