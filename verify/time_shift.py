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
its clock values moved back by d; by induction so does every run.

Expiry times pass too, in a second, stricter reading (`offsets`): a comparison's side may be a
clock value plus a constant K (|K| < 2**31, the sum exact: no wrap at its width), and a clock map
may store now() + K for 0 <= K < 2**31. Stored values then lie in [d, t + 2**31), below 2**32, so
they are read back exactly -- provided every read is unsigned (a zero extension: a sign extension
of a value >= 2**31 would read it as negative), which this reading demands; an unsigned
comparison takes only offsets K >= 0 (a negative sum would read as a huge value).

A model that keeps time elsewhere (a counter that starts at 0, a record, a map not named so),
stores any other derived time (now() - K, a stored time + K) or uses a time otherwise (the raw
clock in a packet, a comparison with a constant) fails the test and is checked at absolute times,
as before."""
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
    arrays = [state[name][1] for name in clocks]
    return any(_Walk(t, arrays, offsets).accepts(after, clocks) for offsets in (False, True))


EXTENSIONS = (z3.Z3_OP_ZERO_EXT, z3.Z3_OP_SIGN_EXT)
UNSIGNED = (z3.Z3_OP_ULEQ, z3.Z3_OP_ULT, z3.Z3_OP_UGEQ, z3.Z3_OP_UGT)
COMPARISONS = (z3.Z3_OP_EQ, z3.Z3_OP_DISTINCT, z3.Z3_OP_SLEQ, z3.Z3_OP_SLT, z3.Z3_OP_SGEQ, z3.Z3_OP_SGT) + UNSIGNED
OFFSET_LIMIT = 1 << 31  # |K| of an offset clock value now() + K (stored: 0 <= K < this, so now() + K < 2**32)


class _Walk:
    """The syntactic test, over the step's terms. A *clock term* is t, a clock map's value at a key,
    or an if-then-else of clock terms; extended (zero or sign: its value is below 2**31) it is the
    clock value as an integer. Shifting moves every clock term by d and leaves unchanged what uses
    clock terms only as the two sides of a difference or a comparison. A term is *free* if it uses
    them only so; a clock map's next values must be clock terms stored at free keys."""

    def __init__(self, t, clock_arrays: list, offsets: bool = False):
        self.atoms = {t.get_id()} | {a.get_id() for a in clock_arrays}
        self.t = t
        self.offsets = offsets  # the stricter reading that admits expiry times (module docstring)
        self.memo: dict = {}

    def accepts(self, after, clocks: list) -> bool:
        slots = [x for slot in after.outputs for x in (slot.present, slot.gate, *slot.fields.values())]
        for name, terms in after.state.items():
            if name in clocks:
                present, values = terms
                slots.append(present)
                if not self.clock_array(values):
                    return False
            else:
                slots += terms
        counts = list((after.choice_counts or {}).values())  # (a chain's visits: how many choices each made)
        return all(self.free(x) for x in [after.valid] + slots + counts)

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
            inner = e.children()[0]
            if self.clock_value(inner):
                return True  # the low bits of a clock value, all of them
            if self.offsets and e.size() == TIME_WIDTH:  # an expiry time now() + K, 0 <= K < 2**31: below 2**32
                found = self.offset(inner)
                return found is not None and found[1] and 0 <= found[0] < OFFSET_LIMIT
        return False

    def clock_value(self, e) -> bool:
        """An extension chain of a clock term: the clock value as an integer of e's width (in the
        `offsets` reading the extension next to the term must be a zero extension)."""
        innermost = None
        while self._kind(e) in EXTENSIONS:
            innermost, e = self._kind(e), e.children()[0]
        if self.offsets and innermost != z3.Z3_OP_ZERO_EXT and z3.is_bv(e) and e.size() == TIME_WIDTH:
            return False
        return self.clock_term(e)

    def offset(self, e):
        """(K, whether the clock value is now() itself) if e is a clock value, or (sign-extended) a
        clock value plus or minus a constant K, |K| < 2**31, in a sum wide enough to be exact."""
        while self._kind(e) == z3.Z3_OP_SIGN_EXT:
            e = e.children()[0]
        if self.clock_value(e):
            return 0, self._now(e)
        kind = self._kind(e)
        if not self.offsets or kind not in (z3.Z3_OP_BADD, z3.Z3_OP_BSUB) or e.num_args() != 2 \
                or e.size() < TIME_WIDTH + 2:  # a value below 2**32 plus |K| < 2**31: exact in 34 signed bits
            return None
        a, b = e.children()
        if kind == z3.Z3_OP_BADD and self._constant(a) is not None:
            a, b = b, a
        k = self._constant(b)
        if k is None or not self.clock_value(a):
            return None
        k = k if kind == z3.Z3_OP_BADD else -k
        return (k, self._now(a)) if abs(k) < OFFSET_LIMIT else None

    def _constant(self, e):
        """The signed value of a constant, possibly extended (the interpreter writes SignExt(30, 5))."""
        inner = e
        while self._kind(inner) in EXTENSIONS:
            inner = inner.children()[0]
        return z3.simplify(e).as_signed_long() if z3.is_bv_value(inner) else None

    def _now(self, e) -> bool:
        while self._kind(e) in EXTENSIONS:
            e = e.children()[0]
        return e.eq(self.t)

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
        if len(args) == 2 and (kind in COMPARISONS or kind == z3.Z3_OP_BSUB):
            if self.clock_value(args[0]) and self.clock_value(args[1]):
                return True  # a difference or comparison of two clock values: the same after the shift
            sides = [self.offset(a) for a in args] if self.offsets else [None]
            if None not in sides and (kind not in UNSIGNED or all(k >= 0 for k, _ in sides)):
                return True  # ... of two clock values with constants added: the same too
        return all(self.free(a) for a in args)
