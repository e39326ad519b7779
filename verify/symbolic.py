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

import sys
from dataclasses import dataclass
from typing import Callable

import z3
import z3.z3

from ..models.api import (INTERPRETER_FILES, MAX_CHOICE_WIDTH, NF, PACKET_FIELDS, PACKET_WIDTHS, Bits, Domain, Map,
                          MapStorage, ModelError, Packet, Set, check_bool_field, model_code)
from ..models.concrete import NO_ITERATION, unsupported
from . import solver as smt

INTERPRETER_FILES.add(__file__)


DOMAIN_LIMIT: list = [None]  # a caller that must stay quick sets it: a larger pool domain is BudgetExhausted
# (the step lists every value of a domain, so a 64k-port pool costs seconds; proofs use small pools)


class InfeasiblePath(Exception):
    """The path's own conditions contradict each other: it is dropped, it describes no run."""


class Path:
    """Records the decisions of one execution and proposes the untaken alternatives."""

    def __init__(self, prefix: tuple[bool, ...], context: tuple = ()):
        self.prefix, self.decisions, self.conds, self.context = prefix, [], [], context
        self.decided: dict[int, bool] = {}  # condition (AST id) -> the branch this path took

    def branch(self, cond: z3.BoolRef) -> bool:
        value = fold(cond)
        if value is not None:
            return value
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
        if smt.satisfiable(list(self.context) + self.conds) is False:
            raise InfeasiblePath()
        raise ModelError(message)

    def alternatives(self) -> list[tuple[bool, ...]]:
        d = self.decisions
        return [tuple(d[:k]) + (not d[k],) for k in range(len(self.prefix), len(d))]

    def condition(self) -> z3.BoolRef:
        return z3.And(*self.conds) if self.conds else z3.BoolVal(True)


_MEMO: dict = {}      # (kind, term ids) -> (the terms, result); the terms kept alive, so their ids stay their own
MEMO_SIZE = 200_000
FOLD_BUDGET = 256     # array nodes one `fold` may walk through before it gives up (None)


def _memo(key: tuple, terms: tuple, make):
    hit = _MEMO.get(key)
    if hit is None:
        if len(_MEMO) >= MEMO_SIZE:
            _MEMO.clear()
        hit = _MEMO[key] = (terms, make())
    return hit[1]


def simplified(t):
    """z3.simplify(t), memoised on the term's id (Z3 hash-conses: equal terms are one AST)."""
    return _memo(("simplify", t.get_id()), (t,), lambda: z3.simplify(t))


def fold(t):
    """The constant value of a term (a bool, or a bit-vector's unsigned int) when it follows from
    its structure alone, else None. Exact where it answers: constants, the Boolean connectives,
    if-then-else, (in)equalities and comparisons of constants, extensions, extracts and concats of
    constants, and a read from an array through stores at the very same key (the stored value),
    at a different constant key (skipped), from a constant array, or through an if-then-else of
    arrays whose branches read alike. A branch asks only this: z3.simplify rewrites the whole term
    each time, and a condition over a state many steps deep is a large term (it made the handlers'
    re-execution quadratic). A condition it cannot fold forks, which costs a path whose condition
    may be unsatisfiable (merged under that condition: it describes no run), never soundness."""
    return _fold(t.ctx_ref(), t.as_ast(), t, [FOLD_BUDGET])


# fold walks the term's ASTs through the C API (no Python object per node: this is most of a
# branch's cost); a memo entry is kept alive by the term first folded, of which it is a part.
_APP, _NUMERAL = z3.Z3_APP_AST, z3.Z3_NUMERAL_AST
_BV_SORT, _BOOL_SORT = z3.Z3_BV_SORT, z3.Z3_BOOL_SORT
_BV_CMP = {z3.Z3_OP_ULEQ: (False, lambda a, b: a <= b), z3.Z3_OP_ULT: (False, lambda a, b: a < b),
           z3.Z3_OP_UGEQ: (False, lambda a, b: a >= b), z3.Z3_OP_UGT: (False, lambda a, b: a > b),
           z3.Z3_OP_SLEQ: (True, lambda a, b: a <= b), z3.Z3_OP_SLT: (True, lambda a, b: a < b),
           z3.Z3_OP_SGEQ: (True, lambda a, b: a >= b), z3.Z3_OP_SGT: (True, lambda a, b: a > b)}


def _app_kind(t):
    """The declaration kind of an application (z3.Z3_OP_...), None for any other term."""
    return _op(t.ctx_ref(), t.as_ast())


def _op(ctx, a):
    if z3.Z3_get_ast_kind(ctx, a) != _APP:
        return None
    return z3.Z3_get_decl_kind(ctx, z3.Z3_get_app_decl(ctx, a))


def _width(ctx, a) -> int:
    return z3.Z3_get_bv_sort_size(ctx, z3.Z3_get_sort(ctx, a))


def _signed(v: int, width: int) -> int:
    return v - (1 << width) if v >> (width - 1) else v


def _fold(ctx, a, keep, budget):
    key = ("fold", z3.Z3_get_ast_id(ctx, a))
    hit = _MEMO.get(key)
    if hit is not None:
        return hit[1]
    value = _fold_new(ctx, a, keep, budget)
    if budget[0] > 0:  # an answer cut short by the budget is not remembered
        _memo(key, (keep,), lambda: value)
    return value


def _fold_new(ctx, a, keep, budget):
    kind = z3.Z3_get_ast_kind(ctx, a)
    if kind == _NUMERAL:
        sort = z3.Z3_get_sort_kind(ctx, z3.Z3_get_sort(ctx, a))
        return int(z3.Z3_get_numeral_string(ctx, a)) if sort in (_BV_SORT, z3.Z3_INT_SORT) else None
    if kind != _APP:
        return None
    decl = z3.Z3_get_app_decl(ctx, a)
    k = z3.Z3_get_decl_kind(ctx, decl)
    if k == z3.Z3_OP_TRUE:
        return True
    if k == z3.Z3_OP_FALSE:
        return False
    n = z3.Z3_get_app_num_args(ctx, a)

    def arg(i):
        return z3.Z3_get_app_arg(ctx, a, i)

    def sub(b):
        return _fold(ctx, b, keep, budget)
    if k == z3.Z3_OP_NOT:
        v = sub(arg(0))
        return None if v is None else not v
    if k in (z3.Z3_OP_AND, z3.Z3_OP_OR):
        unknown, absorbing = False, k == z3.Z3_OP_OR
        literals = set()  # (id, polarity) of the operands: x and not x absorb
        for i in range(n):
            b = arg(i)
            v = sub(b)
            if v is absorbing:
                return absorbing
            if v is None:
                unknown = True
                positive = _op(ctx, b) != z3.Z3_OP_NOT
                ident = z3.Z3_get_ast_id(ctx, b if positive else z3.Z3_get_app_arg(ctx, b, 0))
                if (ident, not positive) in literals:
                    return absorbing
                literals.add((ident, positive))
        return None if unknown else not absorbing
    if k == z3.Z3_OP_ITE:
        c = sub(arg(0))
        if c is not None:
            return sub(arg(1) if c else arg(2))
        x = sub(arg(1))
        return x if x is not None and x == sub(arg(2)) else None
    if k in (z3.Z3_OP_EQ, z3.Z3_OP_DISTINCT) and n == 2:
        x, y = arg(0), arg(1)
        if z3.Z3_is_eq_ast(ctx, x, y):
            return k == z3.Z3_OP_EQ
        u, v = sub(x), sub(y)
        return None if u is None or v is None else (u == v) == (k == z3.Z3_OP_EQ)
    if k in _BV_CMP:
        signed, cmp = _BV_CMP[k]
        x = arg(0)
        u, v = sub(x), sub(arg(1))
        if u is None or v is None:
            return None
        if signed:
            w = _width(ctx, x)
            u, v = _signed(u, w), _signed(v, w)
        return cmp(u, v)
    if k == z3.Z3_OP_ZERO_EXT:
        return sub(arg(0))
    if k == z3.Z3_OP_SIGN_EXT:
        x = arg(0)
        v = sub(x)
        return None if v is None else _signed(v, _width(ctx, x)) % (1 << _width(ctx, a))
    if k == z3.Z3_OP_EXTRACT:
        v = sub(arg(0))
        hi, lo = z3.Z3_get_decl_int_parameter(ctx, decl, 0), z3.Z3_get_decl_int_parameter(ctx, decl, 1)
        return None if v is None else (v >> lo) & ((1 << (hi - lo + 1)) - 1)
    if k == z3.Z3_OP_CONCAT:
        out = 0
        for i in range(n):
            b = arg(i)
            v = sub(b)
            if v is None:
                return None
            out = (out << _width(ctx, b)) | v
        return out
    if k == z3.Z3_OP_SELECT and n == 2:
        return _read(ctx, arg(0), arg(1), keep, budget)
    sorts = [z3.Z3_get_sort_kind(ctx, z3.Z3_get_sort(ctx, x)) for x in [a] + [arg(i) for i in range(n)]]
    if sorts[0] in (_BV_SORT, _BOOL_SORT):  # any other operation on constants: evaluate it on the constants alone
        t = z3.z3._to_expr_ref(a, keep.ctx)
        args = []
        for b, sort in zip(t.children(), sorts[1:]):
            v = sub(b.as_ast()) if sort in (_BV_SORT, _BOOL_SORT) else None
            if v is None:
                return None
            args.append(z3.BoolVal(v) if sort == _BOOL_SORT else z3.BitVecVal(v, b.size()))
        value = z3.simplify(t.decl()(*args) if args else t)
        if z3.is_true(value) or z3.is_false(value):
            return z3.is_true(value)
        if z3.is_bv_value(value):
            return value.as_long()
    return None


def _read(ctx, array, index, keep, budget):
    """The constant at `index` of an array term, or None (see `fold`)."""
    key = ("read", z3.Z3_get_ast_id(ctx, array), z3.Z3_get_ast_id(ctx, index))
    hit = _MEMO.get(key)
    if hit is not None:
        return hit[1]
    budget[0] -= 1
    k = _op(ctx, array)
    if budget[0] <= 0 or k is None:
        return None

    def arg(i):
        return z3.Z3_get_app_arg(ctx, array, i)

    def sub(b):
        return _fold(ctx, b, keep, budget)
    value = None
    if k == z3.Z3_OP_STORE and z3.Z3_get_app_num_args(ctx, array) == 3:
        j = arg(1)
        if z3.Z3_is_eq_ast(ctx, j, index):
            value = sub(arg(2))
        else:
            u, v = sub(j), sub(index)
            if u is not None and v is not None:
                value = sub(arg(2)) if u == v else _read(ctx, arg(0), index, keep, budget)
    elif k == z3.Z3_OP_CONST_ARRAY:
        value = sub(arg(0))
    elif k == z3.Z3_OP_ITE:
        c = sub(arg(0))
        if c is not None:
            value = _read(ctx, arg(1) if c else arg(2), index, keep, budget)
        else:
            x = _read(ctx, arg(1), index, keep, budget)
            value = x if x is not None and x == _read(ctx, arg(2), index, keep, budget) else None
    if budget[0] > 0:
        _memo(key, (keep,), lambda: value)
    return value


def const(value: int, width: int) -> z3.BitVecRef:
    """An unsigned constant of a field or domain value."""
    if not 0 <= value < (1 << width):  # a silently truncated domain value can make a bug vanish
        raise ModelError(f"a domain value {value} does not fit in {width} bits")
    return z3.BitVecVal(value, width)


def fit(t, width: int):
    """A value's term stored in a `width`-bit field: its low bits (two's complement, exactly the
    concrete interpreter's `& mask`), or sign-extended when narrower. (Memoised: every path of a
    step re-executes the handler, and most of what it builds is the same terms again.)"""
    return _memo(("fit", t.get_id(), width), (t,), lambda: _fit(t, width))


def _fit(t, width: int):
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


NO_TEXT = ("text of a model value (str(), repr(), format(), an f-string): the interpreters follow integers, "
           "not their digits; compute with the value itself")


def _as_text(self, spec: str = ""):
    raise ModelError(NO_TEXT)


def _repr(self) -> str:
    """The engine's own messages show a term; a model's text of a value is an error (its branches
    on the digits would not be followed)."""
    if sys._getframe(1).f_code.co_filename not in INTERPRETER_FILES:
        raise ModelError(NO_TEXT)
    return f"{type(self).__name__}({self.t})"


class SymBool:
    """A symbolic bool with Python's semantics: it forks when tested, and compares and computes
    with integers as 0/1 (True == 1, x + flag)."""

    __slots__ = ("t", "path")
    __hash__ = None
    __str__ = __format__ = _as_text
    __repr__ = _repr

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


_INTS: dict = {}


def _int_term(value: int):
    """The term of a Python int operand: a signed bit-vector just wide enough (memoised)."""
    t = _INTS.get(value)
    if t is None:
        if len(_INTS) > 10_000:
            _INTS.clear()
        t = _INTS[value] = z3.BitVecVal(value, max(2, value.bit_length() + 1))
    return t


def _widened(a, b, extra: int) -> list:
    width = max(a.size(), b.size()) + extra
    return [t if t.size() == width else z3.SignExt(width - t.size(), t) for t in (a, b)]


class SymBV:
    """A symbolic integer with Python's semantics: the term is a signed bit-vector wide enough for
    the exact value (sums and differences widen by one bit), so arithmetic and comparisons agree
    with the concrete interpreter's unbounded ints; a value wraps only where it is stored or
    emitted (`fit`), as the concrete interpreter masks it there. Comparisons give SymBools, which
    fork when tested; so does the value's truthiness."""

    __slots__ = ("t", "path")
    __hash__ = None  # symbolic values cannot key Python dicts
    __str__ = __format__ = _as_text
    __repr__ = _repr

    def __init__(self, t, path: Path):
        self.t, self.path = t, path

    @classmethod
    def unsigned(cls, t, path: Path) -> "SymBV":
        """The value of an unsigned field term."""
        return cls(_memo(("zext", t.get_id()), (t,), lambda: z3.ZeroExt(1, t)), path)

    def _other(self, other):
        if isinstance(other, SymBV):
            return other.t
        if isinstance(other, SymBool):
            return other.as_int().t
        if isinstance(other, int):  # bools included: True is 1
            return _int_term(int(other))
        if other is None:  # x == None: plain Python semantics (False)
            return None
        raise TypeError(f"cannot combine a symbolic integer with {other!r}")

    def _operands(self, other, extra=0):
        """Both operands sign-extended to a common width (plus `extra` bits of headroom), or None."""
        o = self._other(other)
        if o is None:
            return None
        return _memo(("operands", self.t.get_id(), o.get_id(), extra), (self.t, o), lambda: _widened(self.t, o, extra))

    def _applied(self, op, other, extra=0, swap=False):
        """op on both operands widened (memoised on the terms), or None."""
        o = self._other(other)
        if o is None:
            return None
        a = self.t

        def make():
            pair = _widened(a, o, extra)
            return op(*(pair[::-1] if swap else pair))
        return _memo((id(op), a.get_id(), o.get_id(), extra, swap), (a, o), make)

    def _cmp(op):
        def method(self, other):
            t = self._applied(op, other)
            return NotImplemented if t is None else SymBool(t, self.path)
        return method

    def _arith(op, extra=0, swap=False):
        def method(self, other):
            t = self._applied(op, other, extra, swap)
            return NotImplemented if t is None else SymBV(t, self.path)
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



MAX_SHIFT_WIDTH = 1024  # bits of the widest integer a shift by a symbolic amount may produce


def _max_value(t) -> int:
    """An upper bound of a signed term's value: a mask's constant, a field's width, else the sort's."""
    t = simplified(t)
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
    parts = [term(v, w) for v, w in zip(value, kind.widths)]
    return _memo(("concat",) + tuple(p.get_id() for p in parts), tuple(parts), lambda: z3.Concat(*parts))


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
        domain = Domain(((v, z3.Not(z3.Select(self.present, const(v, w)))) for v in values), kind)
        domain.size = len(values)  # (for DOMAIN_LIMIT; `pool` stays None: Domain.exhausted is the concrete one's)
        return domain


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
        limit = DOMAIN_LIMIT[0]
        if limit is not None:
            size = domain.pool[1] if domain.pool is not None else getattr(domain, "size", 0)
            if size > limit:
                raise smt.BudgetExhausted(f"a choice from a pool of {size} values (the caller's limit: {limit})")
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
    choice_counts: dict | None = None  # number of choices made -> the condition under which the step makes that many
    visits: tuple = ()    # a chain's composite: (instance, route) of every visit its routing may take (`_chain_step`)


def step(nf_cls: type[NF], state: dict, pkt: dict, choice_var, clock=None, compose: bool = True) -> SymStep:
    """All paths of nf_cls.handle on (state, pkt), merged. `clock()` gives the term now() returns
    (called lazily, so a step that reads no clock builds no time term). A chain's composite NF
    (models/chain.py) is stepped member by member (`_chain_step`) unless `compose` is False."""
    out = _step(nf_cls, state, pkt, choice_var, clock, (), compose)
    if out is None:  # cannot happen without a context: the paths cover every input
        raise ModelError(f"{nf_cls.name}: no path of the handler is feasible")
    return out


def _step(nf_cls, state, pkt, choice_var, clock, context: tuple, compose: bool):
    """The step, or None if no path is feasible under `context` (conditions the caller knows)."""
    if compose and _composable(nf_cls):
        return _chain_step(nf_cls, state, pkt, choice_var, clock, context)
    decls = nf_cls.declarations()
    runs, pending = [], [()]
    while pending:
        path = Path(pending.pop(), context)
        storages = {name: _storage_class(decl)(decl, path, *state[name]) for name, decl in decls.items()}
        ctx = SymContext(path, choice_var, nf_cls.gates, clock)
        try:
            with model_code():
                nf_cls(storages).handle(_bind(pkt, path), ctx)
            runs.append((path.condition(), storages, ctx))
        except InfeasiblePath:
            pass
        pending.extend(path.alternatives())
    if not runs:
        return None

    new_state = {name: tuple(merge([(pc, s[name].terms()[c]) for pc, s, _ in runs])
                             for c in range(len(runs[0][1][name].terms()))) for name in decls}
    slots = []
    for j in range(max(len(ctx.outputs) for _, _, ctx in runs)):
        having = [(pc, ctx.outputs[j]) for pc, _, ctx in runs if len(ctx.outputs) > j]
        slots.append(Slot(
            present=z3.Or(*[pc for pc, _ in having]) if len(having) < len(runs) else z3.BoolVal(True),
            gate=merge([(pc, z3.IntVal(nf_cls.gates.index(g))) for pc, (g, _) in having]),
            fields={f: merge([(pc, p[f]) for pc, (_, p) in having]) for f in having[0][1][1]},
        ))
    valid = [z3.Implies(pc, z3.And(*ctx.validity)) for pc, _, ctx in runs if ctx.validity]
    counts: dict = {}
    for pc, _, ctx in runs:
        counts.setdefault(ctx.nchoices, []).append(pc)
    return SymStep(new_state, slots, z3.And(*valid) if valid else z3.BoolVal(True), len(runs),
                   any(ctx.read_clock for _, _, ctx in runs),
                   {n: (z3.BoolVal(True) if len(counts) == 1 else _or(pcs)) for n, pcs in counts.items()})


def _or(conds: list):
    return conds[0] if len(conds) == 1 else z3.Or(*conds)


def _and(*conds):
    conds = [c for c in conds if not z3.is_true(c)]
    return z3.BoolVal(True) if not conds else conds[0] if len(conds) == 1 else z3.And(*conds)


def merge(pairs):
    """If-then-else over (condition, term) pairs whose conditions are exclusive and exhaustive,
    grouped by term: each distinct term once, under the disjunction of its conditions, the most
    frequent one as the default (paths that differ only in what they emit leave the same state)."""
    groups: dict = {}
    for cond, t in pairs:
        groups.setdefault(t.get_id(), (t, []))[1].append(cond)
    if len(groups) == 1:
        return pairs[0][1]
    order = sorted(groups.values(), key=lambda g: len(g[1]))  # stable: ties keep their first appearance
    acc = order[-1][0]
    for t, conds in reversed(order[:-1]):
        acc = z3.If(_or(conds), t, acc)
    return acc


# -- chains: a composite NF stepped member by member ----------------------------------------------
def _composable(nf_cls) -> bool:
    """A chain's composite (models/chain.py ChainNF) whose handler and release rule are the
    base class's (a checker's subclass that holds outputs back is stepped as one handler)."""
    chain = sys.modules.get(__package__.rpartition(".")[0] + ".models.chain")
    if chain is None:  # no composite exists before models/chain.py (and networkx, 0.2 s) is imported
        return False
    ChainNF = chain.ChainNF
    return (isinstance(nf_cls, type) and issubclass(nf_cls, ChainNF) and nf_cls.handle is ChainNF.handle
            and nf_cls.released is ChainNF.released)


def _chain_step(nf_cls, state, pkt, choice_var, clock, context: tuple) -> SymStep:
    """The composite's step, built from one symbolic step per *visit* (an instance handling one
    packet) instead of one handler execution per path of the product of the members' paths (the
    paths of a chain multiply; visits add up).

    Why it is the same step as running ChainNF.handle on every path (`compose=False`; the tests
    prove the two equal for arbitrary states): ChainNF.handle routes the packet through the
    members, run to completion and depth first in emission order (Chain.route). Here each
    visit runs under its *guard*, the condition under which the concrete routing reaches it:
    the ingress of the packet's side (`inbound`, fixed to its value under the guard), then for
    output j of a member's step and gate g, "the visit's guard, output j present, on gate g",
    followed to the hop of that gate (an egress, or the next instance with the packet as the
    link carries it: fields at their widths -- the slot's terms are --, `inbound` the side it
    arrives on). Visits are taken in the concrete order (a member's whole step, then its outputs
    in order, each followed to its end), so each member's state is threaded through the visits
    that reach it: after a visit it is if(guard, the visit's new state, the state before).
    Validity is the conjunction of "guard implies the visit's validity". A visit past the
    routing limit is the concrete interpreter's ChainError if its guard is satisfiable.

    Choices are numbered in call order, as the concrete interpreter and the path-by-path step
    number them: the k-th choice of a visit is the global variable number (choices made before
    the visit) + k; that count is tracked as a distribution {count: condition} over the visits so
    far (the members' steps report theirs, `choice_counts`), so the visit's k-th choice is an
    if-then-else over the possible counts.

    Outputs: each egress slot a visit produces is an output under its guard; they are in
    emission order, and the composite's j-th slot is "the j-th present one" (what duplicate
    suppression counts). Two egress slots whose routes part at a gate of the same output (or at
    the ingress side) are never both present, so only the others count as earlier outputs."""
    chain = nf_cls.chain()
    hops, limit = chain._routes(), 2 * len(chain.members)
    new_state = dict(state)
    sparse: list = []   # (route, condition, egress gate index, fields), in emission order
    valid: list = []
    counts = {0: z3.BoolVal(True)}
    globals_: list = []
    info = {"paths": 0, "reads_clock": False}
    taken: list = []

    def global_var(j):
        while len(globals_) <= j:
            globals_.append(choice_var(len(globals_), CHOICE_WIDTH))
        return globals_[j]

    def visit(instance, guard, fields, depth, route):
        nonlocal counts
        if fold(guard) is False:
            return
        if depth > limit:
            if smt.satisfiable(list(context) + [guard]) is False:
                return
            from ..models.chain import ChainError
            raise ChainError(f"chain {chain.name!r}: a packet crossed more than {limit} instances "
                             f"(a routing loop through NFs that turn packets around?)")
        member = chain.members[instance]
        before = list(counts.items())

        def local_var(k, width):
            return merge([(c, global_var(b + k)) for b, c in before])
        sub = _step(member.nf, {d: new_state[ns] for d, ns in member.state_names}, fields, local_var, clock,
                    context + (guard,), True)
        if sub is None:  # no path is feasible under the guard: the visit does not happen
            return
        taken.append((instance, route))
        info["paths"] += sub.paths
        info["reads_clock"] |= sub.reads_clock
        for d, ns in member.state_names:
            new_state[ns] = tuple(_if(guard, a, b) for a, b in zip(sub.state[d], new_state[ns]))
        if not z3.is_true(sub.valid):
            valid.append(z3.Implies(guard, sub.valid))
        made = {n: c for n, c in sub.choice_counts.items() if fold(c) is not False}
        if any(n for n in made):
            after: dict = {}
            for b, cb in before:
                after.setdefault(b, []).append(_and(cb, z3.Not(guard)))
                for n, cn in made.items():
                    after.setdefault(b + n, []).append(_and(cb, guard, cn))
            counts = {n: c for n, c in ((n, _or(cs)) for n, cs in after.items()) if fold(c) is not False}
        for j, slot in enumerate(sub.outputs):
            for g, gate in enumerate(member.gates):
                cond = _and(guard, slot.present, slot.gate == g)
                if fold(cond) is False:
                    continue
                hop = hops[(instance, gate)]
                if hop.egress is not None:
                    sparse.append((route + ((j, g),), cond, nf_cls.gates.index(hop.egress), slot.fields))
                else:
                    carried = dict(slot.fields)
                    carried["inbound"] = z3.BoolVal(hop.inbound)
                    visit(hop.target, cond, carried, depth + 1, route + ((j, g),))

    for side, inbound in (("inside", False), ("outside", True)):
        entry = chain.ingresses.get(side)
        if entry is None:
            continue
        fields = dict(pkt)
        fields["inbound"] = z3.BoolVal(inbound)
        visit(entry, pkt["inbound"] if inbound else z3.Not(pkt["inbound"]), fields, 1, ((side,),))
    return SymStep(new_state, _compact(sparse), _and(*valid), info["paths"], info["reads_clock"],
                   {n: c for n, c in counts.items()}, tuple(taken))


def _exclusive(a: tuple, b: tuple) -> bool:
    """Routes (the ingress side, then (output, gate) per hop) that part at the side or at the
    gate of the same output: never both taken."""
    for x, y in zip(a, b):
        if x != y:
            return len(x) == 1 or x[0] == y[0]
    return False


def _compact(sparse: list) -> list[Slot]:
    """Slots in emission order that may be absent -> the j-th slot is the j-th present one."""
    entries: dict = {}
    for i, (route, cond, gate, fields) in enumerate(sparse):
        dist = {0: z3.BoolVal(True)}  # how many of the earlier outputs that can coexist with this one are present
        for other_route, other, _, _ in sparse[:i]:
            if _exclusive(route, other_route):
                continue
            nxt: dict = {}
            for k, ck in dist.items():
                nxt.setdefault(k, []).append(_and(ck, z3.Not(other)))
                nxt.setdefault(k + 1, []).append(_and(ck, other))
            dist = {k: c for k, c in ((k, _or(cs)) for k, cs in nxt.items()) if fold(c) is not False}
        for k, ck in dist.items():
            c = _and(ck, cond)
            if fold(c) is not False:
                entries.setdefault(k, []).append((c, gate, fields))
    slots = []
    for k in sorted(entries):
        if k != len(slots):
            break  # (cannot happen: a k-th present output needs k earlier ones)
        es = entries[k]
        slots.append(Slot(present=_or([c for c, _, _ in es]),
                          gate=merge([(c, z3.IntVal(g)) for c, g, _ in es]),
                          fields={f: merge([(c, fs[f]) for c, _, fs in es]) for f in es[0][2]}))
    return slots


def initial_state(nf_cls: type[NF]) -> dict:
    """Declaration name -> the tuple of terms of its initial (empty) storage."""
    return {name: _storage_class(decl).empty(decl) for name, decl in nf_cls.declarations().items()}


def _if(cond, a, b):
    return a if a.eq(b) else z3.If(cond, a, b)


def egress_view(released: list[Slot], replayed: list[Slot], later_seen):
    """`_egress_view`, memoised on the slots (objects kept alive in the memo) and the term: the
    failover check asks it for the same steps at many failover points."""
    key = ("egress", tuple(map(id, released)), tuple(map(id, replayed)), later_seen.get_id())
    return _memo(key, (released, replayed, later_seen), lambda: _egress_view(released, replayed, later_seen))


def _egress_view(released: list[Slot], replayed: list[Slot], later_seen):
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
    """A condition under which two steps' outputs differ, or None if they are the same terms
    (memoised on the slots, kept alive in the memo)."""
    key = ("differ", tuple(map(id, a)), tuple(map(id, b)))
    return _memo(key, (a, b), lambda: _outputs_differ(a, b))


def _outputs_differ(a: list[Slot], b: list[Slot]):
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
