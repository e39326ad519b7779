"""The symbolic interpreter: runs an NF handler on Z3 terms and returns, for one input packet, the
new state and the outputs as terms over the old state, the packet and the choices made.

Every path of the handler is explored by re-execution: a branch on a symbolic condition (`if`
on a SymBool, `Map.get` on a key that may be absent, `choose` from a domain that may be empty)
takes the branch its decision prefix says and records the alternative; the explorer then replays
the handler with each alternative prefix. The paths' results are merged into if-then-else terms,
so one step is one set of terms whatever the number of paths.

Choices are Z3 constants supplied by the caller (`choice_var(k, width)` for the k-th choice of the
step), with a validity condition (the value was available in the domain) returned per step:
the same step can then be read as "some valid choice" (an assumption) or "this particular
choice" (an obligation), which is how the failover check builds its witness executions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import z3

from ..models.api import (INTERPRETER_FILES, MAX_CHOICE_WIDTH, NF, PACKET_FIELDS, PACKET_WIDTHS, Bits, Domain, Map,
                          MapStorage, ModelError, Packet, Set, check_bool_field, model_code)
from ..models.concrete import NO_ITERATION, unsupported
from . import solver as smt

INTERPRETER_FILES.add(__file__)


class InfeasiblePath(Exception):
    """The path's own conditions contradict each other: it is dropped, it describes no run."""


class Path:
    """Records the decisions of one execution and proposes the untaken alternatives."""

    def __init__(self, prefix: tuple[bool, ...]):
        self.prefix, self.decisions, self.conds = prefix, [], []
        self.decided: dict[int, bool] = {}  # condition (AST id) -> the branch this path took

    def branch(self, cond: z3.BoolRef) -> bool:
        cond = z3.simplify(cond)
        if z3.is_true(cond):
            return True
        if z3.is_false(cond):
            return False
        if cond.get_id() in self.decided:  # tested before on this path (e.g. `k in m`, then m.get(k))
            return self.decided[cond.get_id()]
        if z3.is_not(cond) and cond.arg(0).get_id() in self.decided:  # `if d == 0:` ... then d != 0
            return not self.decided[cond.arg(0).get_id()]
        k = len(self.decisions)
        take = self.prefix[k] if k < len(self.prefix) else True
        self.decisions.append(take)
        self.conds.append(cond if take else z3.Not(cond))
        self.decided[cond.get_id()] = take
        if z3.is_not(cond):  # `if d != 0:` then `x // d` tests d == 0
            self.decided[cond.arg(0).get_id()] = not take
        return take

    def fail(self, message: str):
        """A model error on this path, if some input can take it; else the path is dropped."""
        if smt.satisfiable(self.conds) is False:
            raise InfeasiblePath()
        raise ModelError(message)

    def alternatives(self) -> list[tuple[bool, ...]]:
        d = self.decisions
        return [tuple(d[:k]) + (not d[k],) for k in range(len(self.prefix), len(d))]

    def condition(self) -> z3.BoolRef:
        return z3.And(*self.conds) if self.conds else z3.BoolVal(True)


def const(value: int, width: int) -> z3.BitVecRef:
    """An unsigned constant of a field or domain value."""
    if not 0 <= value < (1 << width):  # a silently truncated domain value can make a bug vanish
        raise ModelError(f"a domain value {value} does not fit in {width} bits")
    return z3.BitVecVal(value, width)


def fit(t, width: int):
    """A value's term stored in a `width`-bit field: its low bits (two's complement, exactly the
    concrete interpreter's `& mask`), or sign-extended when narrower."""
    size = t.size()
    if size == width:
        return t
    if size > width:
        if z3.is_app_of(t, z3.Z3_OP_ZERO_EXT) and t.arg(0).size() == width:
            return t.arg(0)  # a field read back unchanged: keep the very same term
        return z3.Extract(width - 1, 0, t)
    return z3.SignExt(width - size, t)


def term(value, width: int):
    """The Z3 term of a field value (int or SymBV)."""
    if isinstance(value, SymBV):
        return fit(value.t, width)
    if isinstance(value, SymBool):  # a bool stored as an integer, as Python does
        return z3.If(value.t, z3.BitVecVal(1, width), z3.BitVecVal(0, width))
    if not isinstance(value, int):
        raise ModelError(f"a {width}-bit integer cannot hold {value!r}")
    return z3.BitVecVal(int(value) & ((1 << width) - 1), width)  # wraps, as the concrete interpreter masks


def bool_term(value) -> z3.BoolRef:
    """The term of a bool (the `inbound` field): a bool, never an integer, on both interpreters."""
    if isinstance(value, SymBool):
        return value.t
    check_bool_field(value)
    return z3.BoolVal(value)


class SymBool:
    """A symbolic bool with Python's semantics: it forks when tested, and compares and computes
    with integers as 0/1 (True == 1, x + flag)."""

    __slots__ = ("t", "path")
    __hash__ = None

    def __init__(self, t, path: Path):
        self.t, self.path = t, path

    def __bool__(self) -> bool:
        return self.path.branch(self.t)

    def as_int(self) -> "SymBV":
        return SymBV(z3.If(self.t, z3.BitVecVal(1, 2), z3.BitVecVal(0, 2)), self.path)

    def __index__(self):
        return self.as_int().__index__()

    def __int__(self):
        return self.as_int().__int__()

    def __abs__(self): return self.as_int()
    def __neg__(self): return -self.as_int()
    def __lshift__(self, other): return self.as_int() << other
    def __rlshift__(self, other): return other << self.as_int()
    def __rshift__(self, other): return self.as_int() >> other
    def __rrshift__(self, other): return other >> self.as_int()
    def __floordiv__(self, other): return self.as_int() // other
    def __rfloordiv__(self, other): return other // self.as_int()
    def __mod__(self, other): return self.as_int() % other
    def __rmod__(self, other): return other % self.as_int()

    def select_from(self, values):
        return self.as_int().select_from(values)

    def __and__(self, other):
        if isinstance(other, (SymBool, bool)):
            return SymBool(z3.And(self.t, bool_term(other)), self.path)
        return self.as_int() & other

    def __or__(self, other):
        if isinstance(other, (SymBool, bool)):
            return SymBool(z3.Or(self.t, bool_term(other)), self.path)
        return self.as_int() | other

    __rand__, __ror__ = __and__, __or__

    def __invert__(self):  # Python: ~True == -2; `not flag` is what models mean, and forks
        return ~self.as_int()

    def __eq__(self, other):
        if isinstance(other, (SymBool, bool)):
            return SymBool(self.t == bool_term(other), self.path)
        return self.as_int() == other

    def __ne__(self, other):
        if isinstance(other, (SymBool, bool)):
            return SymBool(self.t != bool_term(other), self.path)
        return self.as_int() != other

    # arithmetic and ordering: as the integer 0/1
    def __add__(self, other): return self.as_int() + other
    def __radd__(self, other): return other + self.as_int()
    def __sub__(self, other): return self.as_int() - other
    def __rsub__(self, other): return other - self.as_int()
    def __mul__(self, other): return self.as_int() * other
    def __rmul__(self, other): return other * self.as_int()
    def __xor__(self, other): return self.as_int() ^ other
    def __rxor__(self, other): return other ^ self.as_int()
    def __lt__(self, other): return self.as_int() < other
    def __le__(self, other): return self.as_int() <= other
    def __gt__(self, other): return self.as_int() > other
    def __ge__(self, other): return self.as_int() >= other


class SymBV:
    """A symbolic integer with Python's semantics: the term is a signed bit-vector wide enough for
    the exact value (sums and differences widen by one bit), so arithmetic and comparisons agree
    with the concrete interpreter's unbounded ints; a value wraps only where it is stored or
    emitted (`fit`), as the concrete interpreter masks it there. Comparisons give SymBools, which
    fork when tested; so does the value's truthiness."""

    __slots__ = ("t", "path")
    __hash__ = None  # symbolic values cannot key Python dicts

    def __init__(self, t, path: Path):
        self.t, self.path = t, path

    @classmethod
    def unsigned(cls, t, path: Path) -> "SymBV":
        """The value of an unsigned field term."""
        return cls(z3.ZeroExt(1, t), path)

    def _other(self, other):
        if isinstance(other, SymBV):
            return other.t
        if isinstance(other, SymBool):
            return other.as_int().t
        if isinstance(other, int):  # bools included: True is 1
            return z3.BitVecVal(int(other), max(2, int(other).bit_length() + 1))
        if other is None:  # x == None: plain Python semantics (False)
            return None
        raise TypeError(f"cannot combine a symbolic integer with {other!r}")

    def _operands(self, other, extra=0):
        """Both operands sign-extended to a common width (plus `extra` bits of headroom), or None."""
        o = self._other(other)
        if o is None:
            return None
        width = max(self.t.size(), o.size()) + extra
        return [t if t.size() == width else z3.SignExt(width - t.size(), t) for t in (self.t, o)]

    def _cmp(op):
        def method(self, other):
            pair = self._operands(other)
            return NotImplemented if pair is None else SymBool(op(*pair), self.path)
        return method

    def _arith(op, extra=0, swap=False):
        def method(self, other):
            pair = self._operands(other, extra)
            if pair is None:
                return NotImplemented
            return SymBV(op(*(pair[::-1] if swap else pair)), self.path)
        return method

    __eq__ = _cmp(lambda a, b: a == b)
    __ne__ = _cmp(lambda a, b: a != b)
    __lt__ = _cmp(lambda a, b: a < b)    # signed: values are exact integers
    __le__ = _cmp(lambda a, b: a <= b)
    __gt__ = _cmp(lambda a, b: a > b)
    __ge__ = _cmp(lambda a, b: a >= b)
    __add__ = __radd__ = _arith(lambda a, b: a + b, extra=1)
    __sub__ = _arith(lambda a, b: a - b, extra=1)
    __rsub__ = _arith(lambda a, b: a - b, extra=1, swap=True)
    __and__ = __rand__ = _arith(lambda a, b: a & b)
    __or__ = __ror__ = _arith(lambda a, b: a | b)
    __xor__ = __rxor__ = _arith(lambda a, b: a ^ b)

    def __mul__(self, other):
        o = self._other(other)
        if o is None:
            return NotImplemented
        width = self.t.size() + o.size()
        return SymBV(z3.SignExt(width - self.t.size(), self.t) * z3.SignExt(width - o.size(), o), self.path)

    __rmul__ = __mul__

    def _floor(self, other, reverse=False):
        """Python's floor division and modulo (z3's signed ones truncate toward zero; one bit of
        headroom, as -2**(w-1) // -1 does not fit in w bits). A divisor that may be zero is a
        model error, as ZeroDivisionError is on the concrete interpreter."""
        pair = self._operands(other, extra=1)
        if pair is None:
            return None
        a, b = pair[::-1] if reverse else pair
        if self.path.branch(b == 0):
            self.path.fail("integer division or modulo by zero (ZeroDivisionError); test the divisor first")
        q, r = a / b, z3.SRem(a, b)  # `/` on bit-vectors is signed division
        adjust = z3.And(r != 0, (r < 0) != (b < 0))
        return z3.If(adjust, q - 1, q), z3.If(adjust, r + b, r)

    def __floordiv__(self, other):
        qr = self._floor(other)
        return NotImplemented if qr is None else SymBV(qr[0], self.path)

    def __mod__(self, other):
        qr = self._floor(other)
        return NotImplemented if qr is None else SymBV(qr[1], self.path)

    def __rfloordiv__(self, other):
        qr = self._floor(other, reverse=True)
        return NotImplemented if qr is None else SymBV(qr[0], self.path)

    def __rmod__(self, other):
        qr = self._floor(other, reverse=True)
        return NotImplemented if qr is None else SymBV(qr[1], self.path)

    def _amount(self, n):
        """A shift amount: a non-negative int, or a term and the largest value it can take."""
        if isinstance(n, SymBool):
            n = n.as_int()
        if isinstance(n, int):
            if n < 0:
                self.path.fail("negative shift count (ValueError)")
            return n, n
        if not isinstance(n, SymBV):
            raise ModelError(f"cannot shift by {n!r}")
        if self.path.branch(n.t < 0):
            self.path.fail("negative shift count (ValueError); mask the amount first, e.g. x << (n & 7)")
        return n.t, _max_value(n.t)

    def _shift_left(self, value, n):
        amount, most = self._amount(n)
        width = value.size() + most + 1
        if width > MAX_SHIFT_WIDTH:
            raise ModelError(f"a shift by up to {most} bits needs {width}-bit integers; mask the amount first "
                             f"(e.g. x << (n & 31))")
        if isinstance(amount, int):
            return SymBV(z3.SignExt(amount, value) << amount, self.path)
        width = max(width, amount.size())
        return SymBV(z3.SignExt(width - value.size(), value) << z3.ZeroExt(width - amount.size(), amount), self.path)

    def __lshift__(self, n):
        return self._shift_left(self.t, n)

    def __rlshift__(self, other):  # `1 << x`
        o = self._other(other)
        return NotImplemented if o is None else self._shift_left(o, self)

    def _shift_right(self, value, n):
        amount, _ = self._amount(n)
        if isinstance(amount, int):
            return SymBV(value >> min(amount, value.size() - 1), self.path)  # arithmetic, as Python's
        width = max(value.size(), amount.size())
        value = z3.SignExt(width - value.size(), value)
        return SymBV(value >> z3.ZeroExt(width - amount.size(), amount), self.path)

    def __rshift__(self, n):
        return self._shift_right(self.t, n)

    def __rrshift__(self, other):
        o = self._other(other)
        return NotImplemented if o is None else self._shift_right(o, self)

    def __abs__(self):
        t = z3.SignExt(1, self.t)
        return SymBV(z3.If(t < 0, -t, t), self.path)

    def __index__(self):
        raise ModelError("a symbolic integer indexes a Python sequence (Python needs a concrete int); write "
                         "select(table, i) (from nfproof.models.api), which both interpreters follow")

    def __int__(self):
        raise ModelError("int() of a model value: values are integers already; drop the int()")

    def select_from(self, values: tuple):
        """select(values, self): values[self] as an if-then-else over the constant sequence."""
        if not values:
            self.path.fail("select() from an empty sequence")
        if self.path.branch(z3.Or(self.t < 0, self.t >= len(values))):
            self.path.fail(f"select(): the index may fall outside 0..{len(values) - 1}")
        terms = [v.t if isinstance(v, SymBV) else self._other(v) for v in values]
        width = max([t.size() for t in terms] + [self.t.size()])
        terms = [z3.SignExt(width - t.size(), t) for t in terms]
        index = z3.SignExt(width - self.t.size(), self.t)
        acc = terms[-1]
        for k in range(len(terms) - 2, -1, -1):
            acc = z3.If(index == k, terms[k], acc)
        return SymBV(acc, self.path)

    def __neg__(self):
        return SymBV(-z3.SignExt(1, self.t), self.path)

    def __invert__(self):
        return SymBV(~self.t, self.path)  # two's complement: ~x == -x - 1, as in Python

    def __bool__(self) -> bool:
        return self.path.branch(self.t != 0)

    def __repr__(self) -> str:
        return f"SymBV({self.t})"


MAX_SHIFT_WIDTH = 1024  # bits of the widest integer a shift by a symbolic amount may produce


def _max_value(t) -> int:
    """An upper bound of a signed term's value: a mask's constant, a field's width, else the sort's."""
    t = z3.simplify(t)
    if z3.is_app_of(t, z3.Z3_OP_CONCAT) and z3.is_bv_value(t.arg(0)) and t.arg(0).as_long() == 0:
        return (1 << (t.size() - t.arg(0).size())) - 1
    if z3.is_bv_value(t):
        return t.as_signed_long()
    if z3.is_app_of(t, z3.Z3_OP_ZERO_EXT):
        return (1 << t.arg(0).size()) - 1
    if z3.is_app_of(t, z3.Z3_OP_BAND):
        bounds = [_max_value(a) for a in t.children() if z3.is_bv_value(a) and a.as_signed_long() >= 0]
        if bounds:
            return min(bounds)
    return (1 << (t.size() - 1)) - 1


def kind_width(kind) -> int:
    return kind.width if isinstance(kind, Bits) else sum(kind.widths)


def pack(kind, value):
    if isinstance(kind, Bits):
        if isinstance(value, tuple):
            raise ModelError(f"a {kind} ({kind.width}-bit integer) cannot hold {value!r}")
        return term(value, kind.width)
    if not isinstance(value, tuple) or len(value) != len(kind.widths):
        raise ModelError(f"a {kind.__name__} ({', '.join(kind._fields)}) cannot hold {value!r}")
    return z3.Concat(*(term(v, w) for v, w in zip(value, kind.widths)))


def unpack(kind, t, path: Path):
    if isinstance(kind, Bits):
        return SymBV.unsigned(t, path)
    parts, hi = [], kind_width(kind)
    for w in kind.widths:
        parts.append(SymBV.unsigned(z3.Extract(hi - 1, hi - w, t), path))
        hi -= w
    return kind(*parts)


class SymMap(MapStorage):
    """A declared Map as two arrays: key -> present, key -> value."""

    def __init__(self, decl, path: Path, present, values):
        self.decl, self.path, self.present, self.values = decl, path, present, values

    @staticmethod
    def empty(decl):
        ks = z3.BitVecSort(kind_width(decl.key))
        return z3.K(ks, z3.BoolVal(False)), z3.K(ks, z3.BitVecVal(0, kind_width(decl.value)))

    def terms(self) -> tuple:
        return self.present, self.values

    def _key(self, key):
        return pack(self.decl.key, key)

    def get(self, key, default=None):
        k = self._key(key)
        if self.path.branch(z3.Select(self.present, k)):
            return unpack(self.decl.value, z3.Select(self.values, k), self.path)
        return default

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            self.path.fail(f"{self.decl.name}[key] on a path where the key may be absent; test `key in m` "
                           f"first or use m.get(key)")
        return value

    __iter__ = keys = items = unsupported("iterating a Map", NO_ITERATION)
    __len__ = unsupported("len() of a Map", "count the entries in a Counter")

    def __contains__(self, key) -> bool:
        return self.path.branch(z3.Select(self.present, self._key(key)))

    def __setitem__(self, key, value):
        k = self._key(key)
        self.present = z3.Store(self.present, k, z3.BoolVal(True))
        self.values = z3.Store(self.values, k, pack(self.decl.value, value))

    def __delitem__(self, key):
        self.present = z3.Store(self.present, self._key(key), z3.BoolVal(False))

    def absent_from(self, values, kind) -> Domain:
        w = kind_width(self.decl.key)
        return Domain(((v, z3.Not(z3.Select(self.present, const(v, w)))) for v in values), kind)


class SymSet(SymMap):
    """A declared Set as one array: key -> member."""

    def __init__(self, decl, path: Path, present):
        self.decl, self.path, self.present = decl, path, present

    @staticmethod
    def empty(decl):
        return (z3.K(z3.BitVecSort(kind_width(decl.key)), z3.BoolVal(False)),)

    def terms(self) -> tuple:
        return (self.present,)

    def add(self, key):
        self.present = z3.Store(self.present, self._key(key), z3.BoolVal(True))

    def discard(self, key):
        del self[key]

    def remove(self, key):
        if not self.path.branch(z3.Select(self.present, self._key(key))):
            self.path.fail(f"{self.decl.name}.remove(x) of a member that may be absent; test `x in s` first or "
                           f"use discard(x)")
        del self[key]

    __iter__ = unsupported("iterating a Set", NO_ITERATION)
    __len__ = unsupported("len() of a Set", "count the members in a Counter")


class SymCell:
    """A declared Counter as one bit-vector."""

    def __init__(self, decl, path: Path, value):
        self.decl, self.path, self.term = decl, path, value

    @staticmethod
    def empty(decl):
        return (z3.BitVecVal(0, decl.kind.width),)

    def terms(self) -> tuple:
        return (self.term,)

    @property
    def value(self):
        return SymBV.unsigned(self.term, self.path)

    @value.setter
    def value(self, v):
        self.term = term(v, self.decl.kind.width)


def _storage_class(decl):
    return SymMap if isinstance(decl, Map) else SymSet if isinstance(decl, Set) else SymCell


CHOICE_WIDTH = MAX_CHOICE_WIDTH  # bits of every choice variable: wide enough for any domain, unsigned


TIME_WIDTH = 32  # bits of a time term (ticks); the failover check keeps every time below 2**30


class SymContext:
    def __init__(self, path: Path, choice_var: Callable[[int, int], z3.BitVecRef], gates: tuple[str, ...],
                 clock: Callable[[], z3.BitVecRef] | None = None):
        self.path, self.choice_var, self.gates, self.clock = path, choice_var, gates, clock
        self.outputs, self.drops, self.validity, self.nchoices = [], [], [], 0
        self.read_clock = False

    def choose(self, domain: Domain):
        width = domain.kind.width
        if width > CHOICE_WIDTH:
            raise ModelError(f"a choice from a {width}-bit domain; choices are at most {CHOICE_WIDTH} bits")
        # a domain value that does not fit its kind is a model error, as on the concrete interpreter
        items = [(z3.ZeroExt(CHOICE_WIDTH - width, self._domain_value(val, domain.kind)),
                  z3.BoolVal(c) if isinstance(c, bool) else c) for val, c in domain.items]
        if self.path.branch(z3.And(*[z3.Not(c) for _, c in items]) if items else z3.BoolVal(True)):
            return None
        # One variable per call, of one width whatever the domain, so that every path's k-th choice
        # is the same variable; it holds one of the domain's values (validity): an unsigned number
        # of the domain's width.
        v = self.choice_var(self.nchoices, CHOICE_WIDTH)
        self.nchoices += 1
        self.validity.append(z3.Or(*[z3.And(v == val, c) for val, c in items]))
        return SymBV.unsigned(z3.Extract(width - 1, 0, v) if width < CHOICE_WIDTH else v, self.path)

    def _domain_value(self, value, kind: Bits):
        if isinstance(value, SymBool):
            value = value.as_int()
        if not isinstance(value, SymBV):
            return const(value, kind.width)
        wide = z3.SignExt(max(0, kind.width + 2 - value.t.size()), value.t)
        if self.path.branch(z3.Or(wide < 0, wide >= z3.BitVecVal(1 << kind.width, wide.size()))):
            self.path.fail(f"a {kind} domain may hold a value that does not fit in {kind.width} bits")
        return fit(value.t, kind.width)

    def now(self):
        """The processing time of the current input: a TIME_WIDTH-bit term from the caller's
        `clock()` (the failover check's arrival, standby or reference time). Every read in one step
        returns the same time."""
        if self.clock is None:
            raise ModelError("the NF reads the clock (ctx.now()), and this use of the symbolic step supplies none")
        self.read_clock = True
        return SymBV.unsigned(self.clock(), self.path)

    def emit(self, pkt: Packet, gate: str) -> None:
        if gate not in self.gates:
            raise ModelError(f"emit on undeclared gate {gate!r}; the NF declares gates {self.gates}")
        self.outputs.append((gate, packet_terms(pkt)))  # a field of the wrong kind is a model error here

    def drop(self, reason: str = "") -> None:
        self.drops.append(reason)


def symbolic_packet(prefix: str) -> dict:
    """Fresh terms for every field of an input packet."""
    out = {f: z3.BitVec(f"{prefix}.{f}", w) for f, w in PACKET_WIDTHS.items()}
    out["inbound"] = z3.Bool(f"{prefix}.inbound")
    return out


def _bind(fields: dict, path: Path) -> Packet:
    return Packet(**{f: SymBool(t, path) if f == "inbound" else SymBV.unsigned(t, path) for f, t in fields.items()})


def packet_terms(pkt: Packet) -> dict:
    out = {f: term(getattr(pkt, f), w) for f, w in PACKET_WIDTHS.items()}
    out["inbound"] = bool_term(pkt.inbound)
    return out


def ite(pairs):
    """If-then-else over (condition, term) pairs whose conditions are exclusive and exhaustive."""
    acc = pairs[-1][1]
    for cond, t in reversed(pairs[:-1]):
        if not t.eq(acc):
            acc = z3.If(cond, t, acc)
    return acc


@dataclass
class Slot:
    """The j-th output of a step: whether it exists, its gate (index into NF.gates), its fields."""

    present: z3.BoolRef
    gate: z3.ArithRef
    fields: dict


@dataclass
class SymStep:
    state: dict           # declaration name -> tuple of terms (Map: present, values; Set: members; Counter: value)
    outputs: list[Slot]
    valid: z3.BoolRef     # the choices made on the taken path were available
    paths: int
    reads_clock: bool = False  # some path called ctx.now() (else the step is the same at every time)


def step(nf_cls: type[NF], state: dict, pkt: dict, choice_var, clock=None) -> SymStep:
    """All paths of nf_cls.handle on (state, pkt), merged. `clock()` gives the term now() returns
    (called lazily, so a step that reads no clock builds no time term)."""
    decls = nf_cls.declarations()
    runs, pending = [], [()]
    while pending:
        path = Path(pending.pop())
        storages = {name: _storage_class(decl)(decl, path, *state[name]) for name, decl in decls.items()}
        ctx = SymContext(path, choice_var, nf_cls.gates, clock)
        try:
            with model_code():
                nf_cls(storages).handle(_bind(pkt, path), ctx)
            runs.append((path.condition(), storages, ctx))
        except InfeasiblePath:
            pass
        pending.extend(path.alternatives())

    new_state = {name: tuple(ite([(pc, s[name].terms()[c]) for pc, s, _ in runs])
                             for c in range(len(runs[0][1][name].terms()))) for name in decls}
    slots = []
    for j in range(max(len(ctx.outputs) for _, _, ctx in runs)):
        having = [(pc, ctx.outputs[j]) for pc, _, ctx in runs if len(ctx.outputs) > j]
        slots.append(Slot(
            present=z3.Or(*[pc for pc, _ in having]) if len(having) < len(runs) else z3.BoolVal(True),
            gate=ite([(pc, z3.IntVal(nf_cls.gates.index(g))) for pc, (g, _) in having]),
            fields={f: ite([(pc, p[f]) for pc, (_, p) in having]) for f in having[0][1][1]},
        ))
    valid = [z3.Implies(pc, z3.And(*ctx.validity)) for pc, _, ctx in runs if ctx.validity]
    return SymStep(new_state, slots, z3.And(*valid) if valid else z3.BoolVal(True), len(runs),
                   any(ctx.read_clock for _, _, ctx in runs))


def initial_state(nf_cls: type[NF]) -> dict:
    """Declaration name -> the tuple of terms of its initial (empty) storage."""
    return {name: _storage_class(decl).empty(decl) for name, decl in nf_cls.declarations().items()}


def _if(cond, a, b):
    return a if a.eq(b) else z3.If(cond, a, b)


def egress_view(released: list[Slot], replayed: list[Slot], later_seen):
    """What the egress lets out for an input that was released and then replayed: it drops a
    replayed output whose (input, output) index is at or below the highest it has seen, so output
    j of the replay gets through only if the released run had no output j for this input and no
    output for any later input (`later_seen`). Returns (slots, condition that some replayed
    output got through)."""
    absent = Slot(z3.BoolVal(False), z3.IntVal(0), {})
    out, leaks = [], []
    for j in range(max(len(released), len(replayed))):
        a = released[j] if j < len(released) else absent
        b = replayed[j] if j < len(replayed) else absent
        if a.present.eq(b.present) and a.gate.eq(b.gate) and a.fields.keys() == b.fields.keys() \
                and all(a.fields[f].eq(b.fields[f]) for f in a.fields):
            out.append(a)
            continue
        seen = z3.Or(a.present, later_seen)
        leaks.append(z3.And(z3.Not(seen), b.present))
        fields = {f: _if(seen, a.fields[f], b.fields[f]) if f in a.fields else b.fields[f] for f in b.fields} or a.fields
        out.append(Slot(_if(seen, a.present, b.present), _if(seen, a.gate, b.gate), fields))
    return out, (z3.Or(*leaks) if leaks else z3.BoolVal(False))


def outputs_differ(a: list[Slot], b: list[Slot]):
    """A condition under which two steps' outputs differ, or None if they are the same terms."""
    absent = Slot(z3.BoolVal(False), z3.IntVal(0), {})
    diffs = []
    for j in range(max(len(a), len(b))):
        x = a[j] if j < len(a) else absent
        y = b[j] if j < len(b) else absent
        same_present, same_gate = x.present.eq(y.present), x.gate.eq(y.gate)
        # only the fields whose terms differ (an identical pair can never differ: dropped from the Or)
        fields_differ = [x.fields[f] != y.fields[f] for f in PACKET_FIELDS
                         if f in x.fields and f in y.fields and not x.fields[f].eq(y.fields[f])]
        content_differs = ([] if same_gate else [x.gate != y.gate]) + fields_differ
        present_differs = [] if same_present else [x.present != y.present]
        if not content_differs and not present_differs:
            continue
        diffs.append(z3.Or(*present_differs, z3.And(x.present, z3.Or(*content_differs)))
                     if content_differs else z3.Or(*present_differs))
    return z3.Or(*diffs) if diffs else None


def sequence_differs(a: list[Slot], b: list[Slot]):
    """A condition under which the sequences of present outputs of two slot lists differ
    (whatever input each output belongs to): different counts, or different outputs at the same
    position."""
    def positions(slots):
        out, count = [], z3.IntVal(0)
        for slot in slots:
            out.append(count)
            count = count + z3.If(slot.present, 1, 0)
        return out, count

    pa, ca = positions(a)
    pb, cb = positions(b)
    conds = [ca != cb]
    for x, px in zip(a, pa):
        for y, py in zip(b, pb):
            fields = [x.fields[f] != y.fields[f] for f in PACKET_FIELDS if f in x.fields and f in y.fields]
            conds.append(z3.And(x.present, y.present, px == py, z3.Or(x.gate != y.gate, *fields)))
    return z3.Or(*conds)
