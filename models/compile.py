"""The model compiler: a model's `handle` turned into C, from the same source (DESIGN.md "The model
API": interpreted concretely, symbolically, and compiled where the interpreter is too slow).

How: the handler runs on tracing values, the way the symbolic interpreter explores it. A packet
field, a state read, a clock read or a choice is a `Value` (an int-valued C expression with the
range of ints it can hold) or a `Truth` (a bool one); arithmetic on them writes C, a branch on
one forks the path, and every path is re-executed from its decision prefix until all are
explored. The paths share their prefixes, so they fold into one tree of `if`s: the step function.

Exactness is the point: the C code computes what models/concrete.py computes, packet for packet.
Python ints are unbounded, so every value carries its range and is held in int64 or __int128
when that range fits (else the model is not compiled: `NotCompilable`); `//` and `%` floor as
Python's; keys, values and packet fields wrap at their widths as `wrap` does; errors the
interpreter would raise (a division by zero, an absent key, a bad field) are paths that return
the same located message; choices draw from the same splitmix64 stream by the protocol of
runtime/rng.py (`choose_all`, `choose_free`, values[below(n)]). Whatever the tracer cannot follow
exactly (a value used as a dict key, formatted into a string, an unbounded loop, a width over 64
bits in state) raises NotCompilable, and the caller interprets the model instead.

The C side: `CompiledModel` builds the source with the system C compiler (`$CC`, default cc; flags
`$NFPROOF_CFLAGS`, default -O3) into a cache directory (`$NFPROOF_CACHE`, default ~/.cache/nfproof)
and loads it with ctypes. Its ABI (one `cview_t` per
packet, outputs and drop reasons in caller arrays) is what runtime/fast.pyx calls per packet, and
`step()` is a per-packet Python entry for tests.
"""
from __future__ import annotations

import ctypes
import hashlib
import numbers
import os
import re
import subprocess
import tempfile

from .api import (INTERPRETER_FILES, MAX_CHOICE_WIDTH, NF, PACKET_FIELDS, PACKET_WIDTHS, Bits, Map, ModelError,
                  Packet, Set, check_bool_field, check_int_field, located, model_failure, model_functions, model_location, validate)
from .concrete import NO_ITERATION

INTERPRETER_FILES.add(__file__)

MAX_PATHS = 4096          # paths of one handler (a model with more is interpreted)
MAX_EVENTS = 20000        # operations on one path (an unbounded loop runs into it)
MAX_OUTPUTS = 16          # outputs of one step
INT64 = (-(1 << 63), (1 << 63) - 1)
INT128 = (-(1 << 127), (1 << 127) - 1)
NOW_RANGE = (0, (1 << 63) - 1)  # clock readings (ticks) the step takes: what an int64 holds, from 0
INPUT_FIELDS = ("proto", "src", "sport", "dst", "dport", "flags", "inbound", "length", "label")
assert INPUT_FIELDS == PACKET_FIELDS


class NotCompilable(BaseException):
    """The tracer cannot follow this model exactly (a BaseException, so a model's own `except
    Exception` does not swallow it): interpret it instead. The message says what and where."""


class _Failed(BaseException):
    """A path ends in the model error the interpreter would raise there (message located)."""


_QUIET = [0]  # > 0 while the compiler words an error message: a value then shows as a placeholder


def _error(make) -> str:
    """The located text of the model error make() builds (values in it shown as placeholders)."""
    _QUIET[0] += 1
    try:
        return str(located(make()))
    finally:
        _QUIET[0] -= 1


def _refuse(what: str):
    where = model_location()
    raise NotCompilable(f"{where}: {what}" if where else what)


# ---- tracing values --------------------------------------------------------------------------------

def _c_type(lo: int, hi: int) -> str:
    if INT64[0] <= lo and hi <= INT64[1]:
        return "int64_t"
    if INT128[0] <= lo and hi <= INT128[1]:
        return "__int128"
    _refuse(f"an integer beyond 127 bits ({lo}..{hi}) in the handler")


def _bits(lo: int, hi: int) -> int:
    return max(abs(lo).bit_length(), abs(hi).bit_length())


class Value:
    """An int the handler computes at run time: a C expression and the range of ints it can be."""

    __slots__ = ("run", "c", "lo", "hi")

    def __init__(self, run: "_Run", c: str, lo: int, hi: int):
        self.run, self.c, self.lo, self.hi = run, c, lo, hi

    @property
    def ctype(self) -> str:
        return _c_type(self.lo, self.hi)

    # Python asks these of an int in places the tracer cannot follow (indexing, formatting, ...)
    def __index__(self): _refuse("an integer computed at run time used as an index, a range or a count")
    def __int__(self): _refuse("int() of a value computed at run time")
    def __float__(self): _refuse("a float of a value computed at run time")
    def __format__(self, spec): _refuse("a value computed at run time formatted into a string")
    def __str__(self): _refuse("a value computed at run time formatted into a string")
    def __repr__(self):
        if _QUIET[0]:
            return "<a value known at run time>"
        _refuse("repr() of a value computed at run time")
    def __hash__(self): _refuse("a value computed at run time used as a dict key or set member")
    def __round__(self, n=None): _refuse("round() of a value computed at run time")
    def __trunc__(self): _refuse("math.trunc() of a value computed at run time")
    def __floor__(self): _refuse("math.floor() of a value computed at run time")
    def __ceil__(self): _refuse("math.ceil() of a value computed at run time")
    def __complex__(self): _refuse("complex() of a value computed at run time")
    def __getattr__(self, name): _refuse(f"int.{name} of a value computed at run time")
    def __iter__(self): _refuse("iterating a value")
    def __pow__(self, other): _refuse("** in a handler")
    def __rpow__(self, other): _refuse("** in a handler")
    def __truediv__(self, other): _refuse("/ (a float) in a handler")
    def __rtruediv__(self, other): _refuse("/ (a float) in a handler")
    def __divmod__(self, other): _refuse("divmod() in a handler")
    def __rdivmod__(self, other): _refuse("divmod() in a handler")

    def __bool__(self) -> bool:
        if self.lo > 0 or self.hi < 0:
            return True
        if self.lo == self.hi == 0:
            return False
        return self.run.branch(f"({self.c} != 0)")

    def select_from(self, values):  # models.api.select
        values = tuple(values)
        self.run.check(f"({self.c} >= 0 && {self.c} < {len(values)})", self.lo >= 0 and self.hi < len(values),
                       self.lo >= len(values) or self.hi < 0, lambda: ModelError(
                           f"select(): index {self!r} outside 0..{len(values) - 1}"))
        return self.run.pick(self, values)

    # arithmetic ---------------------------------------------------------------------------------
    def _arith(self, other, op: str, swap=False):
        b = _operand(self.run, other)
        if b is None:  # Python then tries the other operand, or raises the TypeError an int would
            return NotImplemented
        a = self
        if swap:
            a, b = b, a
        return self.run.arith(op, a, b)

    def __add__(self, o): return self._arith(o, "+")
    def __radd__(self, o): return self._arith(o, "+", True)
    def __sub__(self, o): return self._arith(o, "-")
    def __rsub__(self, o): return self._arith(o, "-", True)
    def __mul__(self, o): return self._arith(o, "*")
    def __rmul__(self, o): return self._arith(o, "*", True)
    def __floordiv__(self, o): return self._arith(o, "//")
    def __rfloordiv__(self, o): return self._arith(o, "//", True)
    def __mod__(self, o): return self._arith(o, "%")
    def __rmod__(self, o): return self._arith(o, "%", True)
    def __and__(self, o): return self._arith(o, "&")
    def __rand__(self, o): return self._arith(o, "&", True)
    def __or__(self, o): return self._arith(o, "|")
    def __ror__(self, o): return self._arith(o, "|", True)
    def __xor__(self, o): return self._arith(o, "^")
    def __rxor__(self, o): return self._arith(o, "^", True)
    def __lshift__(self, o): return self._arith(o, "<<")
    def __rlshift__(self, o): return self._arith(o, "<<", True)
    def __rshift__(self, o): return self._arith(o, ">>")
    def __rrshift__(self, o): return self._arith(o, ">>", True)
    def __neg__(self): return self.run.arith("-", 0, self)
    def __pos__(self): return self if type(self) is Value else Value(self.run, self.c, 0, 1)  # +True is 1, an int
    def __invert__(self): return self.run.arith("-", -1, self)
    def __abs__(self):
        if self.lo >= 0:
            return +self
        if self.hi <= 0:
            return -self
        top = max(-self.lo, self.hi)
        ty = _c_type(0, top)
        return self.run.value(f"(({ty}){self.c} < 0 ? -({ty}){self.c} : ({ty}){self.c})", 0, top)

    # comparisons ----------------------------------------------------------------------------------
    def _cmp(self, other, op: str):
        b = _operand(self.run, other)
        if b is None:  # as for an int: the other operand's answer, identity, or a TypeError
            return NotImplemented
        return self.run.compare(op, self, b)

    def __eq__(self, o): return self._cmp(o, "==")
    def __ne__(self, o): return self._cmp(o, "!=")
    def __lt__(self, o): return self._cmp(o, "<")
    def __le__(self, o): return self._cmp(o, "<=")
    def __gt__(self, o): return self._cmp(o, ">")
    def __ge__(self, o): return self._cmp(o, ">=")


class Truth(Value):
    """A bool the handler computes at run time (a comparison, `inbound`): an int 0 or 1 in C.
    As in Python it is an int too (`True + 1 == 2`), and `&`, `|`, `^` of two bools are bools."""

    __slots__ = ()

    def __init__(self, run, c: str):
        super().__init__(run, c, 0, 1)

    def __bool__(self) -> bool:
        return self.run.branch(self.c)

    def _logic(self, other, op):
        if isinstance(other, Truth) or type(other) is bool:
            if type(other) is bool:
                other = self.run.const_truth(other)
            return self.run.truth(f"({self.c} {op} {other.c})")
        return Value._arith(self, other, op)

    def __and__(self, o): return self._logic(o, "&")
    __rand__ = __and__
    def __or__(self, o): return self._logic(o, "|")
    __ror__ = __or__
    def __xor__(self, o): return self._logic(o, "^")
    __rxor__ = __xor__
    __hash__ = Value.__hash__

    def select_from(self, values):
        _refuse("select() with a bool as the index")


def _operand(run, x):
    """x as a Value (ints and bools as constants); None if it is neither (Python then tries the
    other operand or raises the TypeError an int would). Other numbers are refused: an int
    computes and compares with a float or a Fraction, which the C code does not."""
    if isinstance(x, Value):
        return x
    if type(x) is bool:
        return run.const(int(x))
    if isinstance(x, int):
        return run.const(x)
    if isinstance(x, numbers.Number):
        _refuse(f"a {type(x).__name__} in arithmetic or a comparison with a value computed at run time")
    return None


def _floor_div_range(a: Value, b: Value):
    m = max(abs(a.lo), abs(a.hi)) + 1
    return -m, m


def _bitwise_range(op, a: Value, b: Value):
    if a.lo >= 0 and b.lo >= 0:
        if op == "&":
            return 0, min(a.hi, b.hi)
        return 0, (1 << max(a.hi.bit_length(), b.hi.bit_length())) - 1
    n = max(_bits(a.lo, a.hi), _bits(b.lo, b.hi))
    return -(1 << n), (1 << n) - 1


# ---- one execution of the handler ------------------------------------------------------------------

class _Run:
    """One execution along a decision prefix: the C statements and branches it passes, in order."""

    def __init__(self, prefix: tuple, compiler: "_Compiler"):
        self.prefix, self.compiler = prefix, compiler
        self.decisions: list[bool] = []
        self.events: list = []           # ("s", statement) | ("b", condition, taken)
        self.decided: dict[str, bool] = {}
        self.temps = 0
        self.outputs = 0
        self.drops = 0

    def temp(self) -> str:
        self.temps += 1
        return f"t{self.temps}"

    def stmt(self, text: str) -> None:
        if len(self.events) > MAX_EVENTS:
            _refuse(f"more than {MAX_EVENTS} operations on one path (a loop bounded only at run time?)")
        self.events.append(("s", text))

    def branch(self, cond: str) -> bool:
        if cond in self.decided:
            return self.decided[cond]
        k = len(self.decisions)
        take = self.prefix[k] if k < len(self.prefix) else True
        self.decisions.append(take)
        self.events.append(("b", cond, take))
        self.decided[cond] = take
        return take

    def check(self, cond: str, always: bool, never: bool, error) -> None:
        """Go on where `cond` holds; where it does not, the path fails with error()."""
        if always:
            return
        if never or not self.branch(cond):
            raise _Failed(_error(lambda: error()))

    def const(self, v: int) -> Value:
        _c_type(v, v)
        return Value(self, _c_literal(v), v, v)

    def const_truth(self, v: bool) -> Truth:
        return Truth(self, "1" if v else "0")

    def value(self, expr: str, lo: int, hi: int) -> Value:
        t = self.temp()
        self.stmt(f"{_c_type(lo, hi)} {t} = {expr};")
        return Value(self, t, lo, hi)

    def truth(self, expr: str) -> Truth:
        t = self.temp()
        self.stmt(f"int {t} = {expr};")
        return Truth(self, t)

    def arith(self, op: str, a, b):
        a, b = _operand(self, a), _operand(self, b)
        if op in "+-*":
            corners = [eval(f"x {op} y") for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
            lo, hi = min(corners), max(corners)
            ty = _wide(_c_type(lo, hi), a, b)
            return self.value(f"(({ty}){a.c} {op} ({ty}){b.c})", lo, hi)
        if op in ("//", "%"):
            self.check(f"({b.c} != 0)", b.lo > 0 or b.hi < 0, b.lo == b.hi == 0, lambda: _zero_division(op))
            if op == "//":
                lo, hi = _floor_div_range(a, b)
            elif b.lo > 0:
                lo, hi = 0, b.hi - 1
            elif b.hi < 0:
                lo, hi = b.lo + 1, 0
            else:
                lo, hi = b.lo + 1, b.hi - 1
            ty = _c_type(min(lo, a.lo, b.lo), max(hi, a.hi, b.hi))
            fn = ("fdiv" if op == "//" else "fmod") + ("64" if ty == "int64_t" else "128")
            return self.value(f"{fn}({a.c}, {b.c})", lo, hi)
        if op == "&":   # a value already inside a mask 2^k - 1 is itself (the wraps of packet fields)
            for x, m in ((a, b), (b, a)):
                if type(x) is Value and m.lo == m.hi >= 0 and m.lo & (m.lo + 1) == 0 and 0 <= x.lo and x.hi <= m.lo:
                    return x
        if op in "&|^":
            lo, hi = _bitwise_range(op, a, b)
            ty = _c_type(min(lo, a.lo, b.lo), max(hi, a.hi, b.hi))
            return self.value(f"(({ty}){a.c} {op} ({ty}){b.c})", lo, hi)
        if op in ("<<", ">>"):
            if b.lo != b.hi:
                _refuse(f"a shift by an amount computed at run time (`{op}`)")
            n = b.lo
            if n < 0:
                raise _Failed(_error(lambda: model_failure_text(ValueError("negative shift count"))))
            if op == "<<":
                lo, hi = a.lo << n, a.hi << n
                ty = _wide(_c_type(lo, hi), a)
                return self.value(f"(({ty}){a.c} * {_c_literal(1 << n)})", lo, hi)
            lo, hi = a.lo >> n, a.hi >> n
            if lo == hi:
                return lo
            width = 63 if a.ctype == "int64_t" else 127
            if n > width:
                return self.value(f"({a.c} < 0 ? -1 : 0)", lo, hi)
            return self.value(f"({a.c} >> {n})", lo, hi)
        raise AssertionError(op)

    def compare(self, op: str, a: Value, b: Value):
        sure = {"==": (a.lo == a.hi == b.lo == b.hi, a.hi < b.lo or b.hi < a.lo),
                "!=": (a.hi < b.lo or b.hi < a.lo, a.lo == a.hi == b.lo == b.hi),
                "<": (a.hi < b.lo, a.lo >= b.hi), "<=": (a.hi <= b.lo, a.lo > b.hi),
                ">": (a.lo > b.hi, a.hi <= b.lo), ">=": (a.lo >= b.hi, a.hi < b.lo)}[op]
        if sure[0]:
            return True
        if sure[1]:
            return False
        ty = _c_type(min(a.lo, b.lo), max(a.hi, b.hi))
        return self.truth(f"(({ty}){a.c} {op} ({ty}){b.c})")

    def pick(self, index: Value, values):
        """values[index] (index checked in range), values ints or run-time values."""
        vals = [_operand(self, v) for v in values]
        if any(v is None for v in vals):
            _refuse("select()/choose() among values that are not integers")
        lo, hi = min(v.lo for v in vals), max(v.hi for v in vals)
        ty = _c_type(lo, hi)
        expr = f"({ty}){vals[-1].c}"
        for k in range(len(vals) - 2, -1, -1):
            expr = f"({index.c} == {k} ? ({ty}){vals[k].c} : {expr})"
        if all(type(v) is bool or isinstance(v, Truth) for v in values):  # a bool among bools is a bool
            return self.truth(f"(int){expr}")
        return self.value(expr, lo, hi)


def _wide(ty: str, *operands: Value) -> str:
    """The C type to compute in: __int128 if the result or an operand needs it (no wrapping casts)."""
    return "__int128" if ty == "__int128" or any(v.ctype == "__int128" for v in operands) else "int64_t"


def _c_literal(v: int) -> str:
    if INT64[0] < v <= INT64[1]:
        return f"INT64_C({v})"
    hi, lo = (v >> 64) & ((1 << 64) - 1), v & ((1 << 64) - 1)
    return f"I128(UINT64_C({hi}), UINT64_C({lo}))"


def model_failure_text(error: Exception) -> ModelError:
    return ModelError(f"the model raised {type(error).__name__}: {error}")


def _zero_division(op: str) -> ModelError:
    return model_failure_text(ZeroDivisionError("integer modulo by zero" if op == "%" else
                                                "integer division or modulo by zero"))


# ---- wrapping (models.api.wrap, on tracing values) ---------------------------------------------------

def _masked(run: _Run, v, width: int, what) -> str:
    """A C uint64_t expression of v's low `width` bits; v an int, a bool or a run-time value."""
    if width > 64:
        _refuse(f"a {width}-bit field in state or a packet (the compiler keeps 64 bits at most)")
    mask = (1 << width) - 1
    if type(v) is bool or isinstance(v, int) and not isinstance(v, Value):
        return f"UINT64_C({int(v) & mask})"
    if isinstance(v, Value):
        if 0 <= v.lo and v.hi <= mask:
            return f"(uint64_t){v.c}"
        return f"((uint64_t){v.c} & UINT64_C({mask}))"
    raise _Failed(_error(lambda: what(v)))


def _words(run: _Run, kind, value) -> list[str]:
    """The C words of a key or value of `kind` (Bits or a record type), as `wrap` reduces it."""
    if isinstance(kind, Bits):
        return [_masked(run, value, kind.width,
                        lambda v: ModelError(f"a {kind} ({kind.width}-bit integer) cannot hold {v!r}"))]
    widths = kind.widths
    if isinstance(value, tuple) and len(value) == len(widths) and all(
            isinstance(v, (int, Value)) for v in value):
        return [_masked(run, v, w, None) for v, w in zip(value, widths)]
    raise _Failed(_error(lambda: ModelError(f"a {kind.__name__} ({', '.join(kind._fields)}) cannot hold {value!r}")))


def _widths(kind) -> tuple:
    return (kind.width,) if isinstance(kind, Bits) else tuple(kind.widths)


def _from_words(run: _Run, kind, array: str):
    """The value a read returns: an int Value per word, built into the record type if any."""
    vals = []
    for k, w in enumerate(_widths(kind)):
        if w > 64:
            _refuse(f"a {w}-bit field in state (the compiler keeps 64 bits at most)")
        top = (1 << w) - 1
        vals.append(run.value(f"({_c_type(0, top)}){array}[{k}]", 0, top))  # copied now: a later write moves the slot
    return vals[0] if isinstance(kind, Bits) else kind._make(vals)


# ---- state and context, as the handler sees them while traced ----------------------------------------

_NOT_PACKET_ONLY = re.compile(r"\bt\d+\b|S->|\bnow\b|\brng\b")   # a key word that depends on more than the input


class _MapTrace:
    def __init__(self, run: _Run, index: int, decl, compiler):
        self.run, self.index, self.decl, self.compiler = run, index, decl, compiler
        self.is_set = isinstance(decl, Set)

    def _key(self, key, lookup: bool = False) -> str:
        words = _words(self.run, self.decl.key, key)
        t = self.run.temp()
        self.run.stmt(f"uint64_t {t}[{len(words)}] = {{{', '.join(words)}}};")
        if lookup and not any(_NOT_PACKET_ONLY.search(w) for w in words):  # nf_prefetch can look it up ahead
            self.compiler.prefetch.add((self.index, tuple(words), self.run.decided.get("in->inbound")))
        return t

    def _find(self, key):
        k = self._key(key, lookup=True)
        t = self.run.temp()
        vw = 0 if self.is_set else len(_widths(self.decl.value))
        self.run.stmt(f"uint64_t *{t} = map_get{self.index}(S, {k});  /* {self.decl.name} */")
        return t, self.run.branch(f"({t} != 0)")

    def get(self, key, default=None):
        t, found = self._find(key)
        return _from_words(self.run, self.decl.value, t) if found else default

    def __getitem__(self, key):
        t, found = self._find(key)
        if not found:
            raise _Failed(_error(lambda: ModelError(
                f"{self.decl.name}[key] of an absent key; test `key in m` first or use m.get(key)")))
        return _from_words(self.run, self.decl.value, t)

    def __contains__(self, key) -> bool:
        return self._find(key)[1]

    def __setitem__(self, key, value):
        k = self._key(key)
        words = _words(self.run, self.decl.value, value)
        t = self.run.temp()
        self.run.stmt(f"uint64_t {t}[{len(words)}] = {{{', '.join(words)}}};")
        self.run.stmt(f"map_put{self.index}(S, {k}, {t});")

    def __delitem__(self, key):
        k = self._key(key)
        self.run.stmt(f"map_del{self.index}(S, {k});")

    def add(self, key):
        k = self._key(key)
        self.run.stmt(f"map_put{self.index}(S, {k}, 0);")

    def discard(self, key):
        self.__delitem__(key)

    def remove(self, key):
        if not self.__contains__(key):
            raise _Failed(_error(lambda: ModelError(
                f"{self.decl.name}.remove(x) of an absent member; test `x in s` first or use discard(x)")))
        self.__delitem__(key)

    def absent_from(self, values, kind):
        if not isinstance(self.decl.key, Bits):
            _refuse(f"Pool.free({self.decl.name}): free values of a map keyed by records")
        if isinstance(values, range) and values.step == 1:
            if len(values) > 0 and (values.start < 0 or values[-1] >> self.decl.key.width):
                _refuse(f"Pool.free({self.decl.name}): pool values wider than the map's {self.decl.key.width}-bit keys")
            return _FreeDomain(self, values.start, len(values), kind)
        _refuse("a free-value domain over values that are not a range")

    def _unsupported(self, *args, **kwargs):
        what = "iterating a Set" if self.is_set else "iterating a Map"
        raise _Failed(_error(lambda: ModelError(f"{what} is not supported (a proof cannot follow it); {NO_ITERATION}")))

    __iter__ = keys = values = items = _unsupported

    def __getattr__(self, name):
        _refuse(f"{self.decl.name}.{name} (a declared Map or Set offers get, [], in, del, add, discard, remove)")

    def __len__(self):
        what = "len() of a Set" if self.is_set else "len() of a Map"
        instead = "count the members in a Counter" if self.is_set else "count the entries in a Counter"
        raise _Failed(_error(lambda: ModelError(f"{what} is not supported (a proof cannot follow it); {instead}")))


class _CounterTrace:
    def __init__(self, run: _Run, index: int, width: int):
        self.run, self.index, self.width = run, index, width

    @property
    def value(self):
        top = (1 << self.width) - 1
        if self.width > 64:
            _refuse(f"a {self.width}-bit Counter (the compiler keeps 64 bits at most)")
        return self.run.value(f"({_c_type(0, top)})S->c[{self.index}]", 0, top)

    @value.setter
    def value(self, v):
        if not isinstance(v, (int, Value)):   # (as both interpreters say it)
            raise _Failed(_error(lambda: ModelError(f"a {self.width}-bit integer cannot hold {v!r}")))
        self.run.stmt(f"set_counter(&S->c[{self.index}], {_masked(self.run, v, self.width, None)});")


class _FreeDomain:
    """Pool.free(m) while traced: the pool's values that are not keys of m."""

    def __init__(self, storage: _MapTrace, base: int, size: int, kind):
        self.storage, self.pool, self.kind, self.used = storage, (base, size), kind, storage

    def __getattr__(self, name):
        _refuse(f"Domain.{name} of a free-value domain")

    def exhausted(self):
        pid = self.storage.compiler.pool_id(self.storage.index, *self.pool)
        return self.storage.run.truth(f"(S->m[{self.storage.index}].pools[{pid}].used >= {_u64(self.pool[1])})")


def _u64(v: int) -> str:
    return f"UINT64_C({v})"


class _ContextTrace:
    def __init__(self, run: _Run, nf_cls, compiler):
        self.run, self.gates, self.compiler = run, nf_cls.gates, compiler

    def __getattr__(self, name):
        _refuse(f"ctx.{name} (the context offers choose, now, emit and drop)")

    def now(self):
        return Value(self.run, "now", *NOW_RANGE)

    def choose(self, domain):
        run = self.run
        kind = domain.kind
        if kind.width > MAX_CHOICE_WIDTH:
            raise _Failed(_error(lambda: ModelError(
                f"a choice from a {kind.width}-bit domain; choices are at most {MAX_CHOICE_WIDTH} bits")))
        fits = range(1 << kind.width)
        pool = getattr(domain, "pool", None)
        if pool is not None:
            base, size = pool
            if size and (base not in fits or base + size - 1 not in fits):
                raise _Failed(_error(lambda: ModelError(
                    f"a {kind} domain holds a value that does not fit in {kind.width} bits")))
            if size <= 0:
                return None
            if size > (1 << 63):
                _refuse("a choice from a pool of more than 2^63 values")
            used = getattr(domain, "used", None)
            if used is None:
                return run.value(f"({_c_type(base, base + size - 1)}){_c_literal(base)} + "
                                 f"({_c_type(0, size)})below(rng, {_u64(size)})", base, base + size - 1)
            if not isinstance(used, _MapTrace) or base + size - 1 >= 1 << 64:
                _refuse("a free-value choice over storage the compiler does not hold")
            pid = self.compiler.pool_id(used.index, base, size)
            t = run.temp()
            run.stmt(f"uint64_t {t}; int {t}f = choose_free{used.index}(S, rng, {pid}, {_u64(base)}, {_u64(size)}, &{t});")
            if not run.branch(f"{t}f"):
                return None
            top = base + size - 1
            return Value(run, f"(({_c_type(base, top)}){t})", base, top)
        items = domain.items
        values = []
        for value, available in items:
            if available is not True and available is not False:
                _refuse("a Domain whose availability is computed at run time")
            if available is True:
                values.append(value)
        for v in values:
            if isinstance(v, Value):
                run.check(f"({v.c} >= 0 && {v.c} <= {_c_literal(fits.stop - 1)})", v.lo >= 0 and v.hi < fits.stop,
                          v.hi < 0 or v.lo >= fits.stop,
                          lambda: ModelError(f"a {kind} domain holds a value that does not fit in {kind.width} bits"))
            elif type(v) is bool or not isinstance(v, int) or v not in fits:
                if type(v) is bool and v in fits:
                    continue
                raise _Failed(_error(lambda: ModelError(
                    f"a {kind} domain holds a value that does not fit in {kind.width} bits")))
        if not values:
            return None
        index = run.value(f"(int64_t)below(rng, {_u64(len(values))})", 0, len(values) - 1)
        return run.pick(index, values)

    def emit(self, pkt, gate) -> None:
        run = self.run
        if not isinstance(gate, str) or gate not in self.gates:
            if isinstance(gate, Value):
                _refuse("a gate computed at run time")
            raise _Failed(_error(lambda: ModelError(
                f"emit on undeclared gate {gate!r}; the NF declares gates {self.gates}")))
        if not isinstance(pkt, Packet):
            raise _Failed(_error(lambda: model_failure_text(AttributeError(
                f"'{type(pkt).__name__}' object has no attribute 'wrapped'"))))
        fields_ = pkt.__dict__
        inbound = fields_["inbound"]
        if isinstance(inbound, Truth):
            inbound_c = inbound.c
        elif inbound is True or inbound is False:
            inbound_c = "1" if inbound else "0"
        else:
            if isinstance(inbound, Value):
                raise _Failed(_error(lambda: ModelError(
                    f"the `inbound` field holds a bool (True: arrived from the outside), not {inbound!r}; "
                    f"write a comparison or bool(...), e.g. inbound=(x == 2)")))
            try:
                check_bool_field(inbound)
            except ModelError as e:
                raise _Failed(_error(lambda: e)) from None
        out = []
        for f, width in PACKET_WIDTHS.items():
            v = fields_[f]
            if not isinstance(v, (int, Value)):
                try:
                    check_int_field(f, v)
                except ModelError as e:
                    raise _Failed(_error(lambda: e)) from None
            out.append((f, _masked(run, v, width, None)))
        k = run.outputs
        if k >= MAX_OUTPUTS:
            _refuse(f"more than {MAX_OUTPUTS} outputs in one step")
        run.outputs += 1
        for f, c in out:
            run.stmt(f"O[{k}].{f} = (int64_t){c};")
        run.stmt(f"O[{k}].inbound = {inbound_c}; G[{k}] = {self.gates.index(gate)};")

    def drop(self, reason: str = "") -> None:
        if type(reason) is not str:
            _refuse("a drop reason that is not a string")
        rid = self.compiler.reason(reason)
        run = self.run
        k = run.drops
        if k >= MAX_OUTPUTS:
            _refuse(f"more than {MAX_OUTPUTS} drops in one step")
        run.drops += 1
        run.stmt(f"D[{k}] = {rid};")


# ---- the compiler ------------------------------------------------------------------------------------

class _Node:
    __slots__ = ("stmts", "cond", "kids", "end")

    def __init__(self):
        self.stmts, self.cond, self.kids, self.end = [], None, [None, None], None


def _check_no_try(nf_cls) -> None:
    """A try/except (or with) in the handler is refused: the compiled paths raise no Python
    exception a model could catch and go on from (a caught ZeroDivisionError would be a model
    error here). Read: models.api.model_functions."""
    for code in model_functions(nf_cls, with_checkers=True):
        if code.co_exceptiontable:
            raise NotCompilable(f"{code.co_filename}:{code.co_firstlineno}: {code.co_name} has a try/except or "
                                f"with block (the compiled code raises nothing a model could catch)")


class _Compiler:
    def __init__(self, nf_cls):
        _check_no_try(nf_cls)
        self.nf = nf_cls
        self.decls = nf_cls.declarations()
        self.maps = [(n, d) for n, d in self.decls.items() if isinstance(d, (Map, Set))]
        self.counters = [(n, d) for n, d in self.decls.items() if not isinstance(d, (Map, Set))]
        self.reasons: list[str] = []
        self.errors: list[str] = []
        self.pools: dict[int, list] = {}  # map index -> [(base, size)]
        self.prefetch: set = set()        # (map index, key words, inbound or None): keys of the input alone
        self.max_out = 0

    def reason(self, text: str) -> int:
        if text not in self.reasons:
            self.reasons.append(text)
        return self.reasons.index(text)

    def error(self, text: str) -> int:
        if text not in self.errors:
            self.errors.append(text)
        return self.errors.index(text) + 1

    def pool_id(self, index: int, base: int, size: int) -> int:
        pools = self.pools.setdefault(index, [])
        if (base, size) not in pools:
            if len(pools) >= 4:
                _refuse("more than 4 free-value pools over one map")
            pools.append((base, size))
        return pools.index((base, size))

    def execute(self, prefix: tuple) -> _Run:
        run = _Run(prefix, self)
        state = {}
        for k, (name, decl) in enumerate(self.maps):
            if not isinstance(decl, Set):
                _widths(decl.value)
            state[name] = _MapTrace(run, k, decl, self)
        for k, (name, decl) in enumerate(self.counters):
            state[name] = _CounterTrace(run, k, decl.kind.width)
        fields_ = {}
        for f in PACKET_FIELDS:
            if f == "inbound":
                fields_[f] = Truth(run, "in->inbound")
            else:
                fields_[f] = Value(run, f"in->{f}", 0, (1 << PACKET_WIDTHS[f]) - 1)
        pkt = Packet(**fields_)
        ctx = _ContextTrace(run, self.nf, self)
        nf = self.nf(state)
        try:
            nf.handle(pkt, ctx)
            run.end = ("ok",)
        except _Failed as failed:
            run.end = ("error", self.error(str(failed)))
        except ModelError as error:
            run.end = ("error", self.error(str(located(error, error.__traceback__))))
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as error:
            failure = model_failure(error)
            if failure is None:  # raised inside the tracer: a construct it does not follow
                raise NotCompilable(f"{model_location(error.__traceback__) or self.nf.__name__}: the compiler "
                                    f"cannot follow this ({type(error).__name__}: {error})") from error
            run.end = ("error", self.error(str(failure).replace("'Value'", "'int'").replace("'Truth'", "'bool'")))
        except Exception as error:
            raise NotCompilable(f"{model_location(error.__traceback__) or self.nf.__name__}: the handler raised "
                                f"{type(error).__name__}: {error}") from error
        self.max_out = max(self.max_out, run.outputs)
        return run

    def tree(self) -> _Node:
        root = _Node()
        pending = [()]
        paths = 0
        while pending:
            prefix = pending.pop()
            paths += 1
            if paths > MAX_PATHS:
                _refuse(f"more than {MAX_PATHS} paths through the handler")
            run = self.execute(prefix)
            self._insert(root, run)
            d = run.decisions
            pending.extend(tuple(d[:k]) + (not d[k],) for k in range(len(d) - 1, len(prefix) - 1, -1))
        return root

    @staticmethod
    def _insert(root: _Node, run: _Run) -> None:
        node, pos = root, 0
        for event in run.events:
            if event[0] == "s":
                if pos < len(node.stmts):
                    assert node.stmts[pos] == event[1], "the handler is not deterministic along a prefix"
                else:
                    assert node.cond is None and node.end is None
                    node.stmts.append(event[1])
                pos += 1
                continue
            _, cond, taken = event
            assert pos == len(node.stmts)
            assert node.cond in (None, cond), "the handler is not deterministic along a prefix"
            node.cond = cond
            if node.kids[taken] is None:
                node.kids[taken] = _Node()
            node, pos = node.kids[taken], 0
        assert pos == len(node.stmts) and node.cond is None
        node.end = (run.end, run.outputs, run.drops)

    def source(self) -> str:
        root = self.tree()
        lines = [C_RUNTIME, f"#define NMAPS {max(1, len(self.maps))}", f"#define NCOUNTERS {max(1, len(self.counters))}",
                 "typedef struct { map_t m[NMAPS]; uint64_t c[NCOUNTERS]; } state_t;", ""]
        for k, (name, decl) in enumerate(self.maps):  # each map's operations with its sizes as constants
            kw = len(_widths(decl.key))
            sw = 1 + kw + (0 if isinstance(decl, Set) else len(_widths(decl.value)))
            lines.append(f"static inline uint64_t *map_get{k}(state_t *S, const uint64_t *key) "
                         f"{{ return map_get(&S->m[{k}], key, {kw}, {sw}); }}")
            lines.append(f"static inline void map_put{k}(state_t *S, const uint64_t *key, const uint64_t *v) "
                         f"{{ map_put(&S->m[{k}], key, v, {kw}, {sw}); }}")
            lines.append(f"static inline void map_del{k}(state_t *S, const uint64_t *key) "
                         f"{{ map_del(&S->m[{k}], key, {kw}, {sw}); }}")
            lines.append(f"static inline int choose_free{k}(state_t *S, uint64_t *rng, int pool, uint64_t base, "
                         f"uint64_t size, uint64_t *out) {{ return choose_free(rng, &S->m[{k}], pool, base, size, out, "
                         f"{sw}); }}")
        lines.append("static void nf_free_state(state_t *S) {")
        lines.append("    for (int k = 0; k < NMAPS; k++) free(S->m[k].w);")
        lines.append("    free(S);")
        lines.append("}")
        lines.append("EXPORT void nf_free(void *S) { nf_free_state(S); }")
        lines.append("EXPORT uint64_t *nf_counters(void *S) { return ((state_t *)S)->c; }")
        lines.append("EXPORT void *nf_new(void) {")
        lines.append("    state_t *S = calloc(1, sizeof(state_t));")
        lines.append("    if (!S) return 0;")
        for k, (name, decl) in enumerate(self.maps):
            kw = len(_widths(decl.key))
            vw = 0 if isinstance(decl, Set) else len(_widths(decl.value))
            for w in _widths(decl.key) + (() if isinstance(decl, Set) else _widths(decl.value)):
                if w > 64:
                    _refuse(f"{name}: a {w}-bit field in state (the compiler keeps 64 bits at most)")
            pools = self.pools.get(k, [])
            lines.append(f"    if (map_init(&S->m[{k}], {kw}, {vw})) return nf_free_state(S), (void *)0;")
            for j, (base, size) in enumerate(pools):
                lines.append(f"    S->m[{k}].pools[{j}].base = {_u64(base)}; S->m[{k}].pools[{j}].size = {_u64(size)};")
            lines.append(f"    S->m[{k}].npools = {len(pools)};")
        lines.append("    return S;")
        lines.append("}")
        lines.append("EXPORT void nf_prefetch(void *state, const cview_t *in) {  /* the slots the step may look up */")
        lines.append("    state_t *S = state;")
        for side, guard in ((None, None), (True, "if (in->inbound) {"), (False, "if (!in->inbound) {")):
            keys = sorted((i, w) for i, w, inbound in self.prefetch if inbound is side)
            if keys and guard:
                lines.append("    " + guard)
            for i, words in keys:
                kw = len(words)
                sw = 1 + kw + (0 if isinstance(self.maps[i][1], Set) else len(_widths(self.maps[i][1].value)))
                lines.append(f"    {{ uint64_t k[{kw}] = {{{', '.join(words)}}}; map_prefetch(&S->m[{i}], k, {kw}, {sw}); }}")
            if keys and guard:
                lines.append("    }")
        lines.append("}")
        lines.append("EXPORT int nf_step(void *state, const cview_t *in, int64_t now, uint64_t *rng, cview_t *O, int *G, "
                     "int *nout, int *D, int *ndrop) {")
        lines.append("    state_t *S = state;")
        lines.append("    if (now < 0) return -1;")
        self._emit(root, lines, "    ")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _emit(self, node: _Node, lines: list, indent: str) -> None:
        for s in node.stmts:
            lines.append(indent + s)
        if node.cond is not None:
            lines.append(f"{indent}if ({node.cond}) {{")
            self._emit(node.kids[True], lines, indent + "    ")
            lines.append(f"{indent}}} else {{")
            self._emit(node.kids[False], lines, indent + "    ")
            lines.append(f"{indent}}}")
            return
        (end, outputs, drops) = node.end
        lines.append(f"{indent}*nout = {outputs}; *ndrop = {drops}; return {0 if end[0] == 'ok' else end[1]};")


C_RUNTIME = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define EXPORT __attribute__((visibility("default")))
#define I128(hi, lo) ((__int128)(((unsigned __int128)(hi) << 64) | (unsigned __int128)(lo)))
typedef struct { int64_t proto, src, sport, dst, dport, flags, inbound, length, label; } cview_t;

static inline int64_t fdiv64(int64_t a, int64_t b) { int64_t q = a / b; if ((a % b != 0) && ((a < 0) != (b < 0))) q--; return q; }
static inline int64_t fmod64(int64_t a, int64_t b) { if (b == -1) return 0; int64_t r = a % b; if (r != 0 && ((r < 0) != (b < 0))) r += b; return r; }
static inline __int128 fdiv128(__int128 a, __int128 b) { __int128 q = a / b; if ((a % b != 0) && ((a < 0) != (b < 0))) q--; return q; }
static inline __int128 fmod128(__int128 a, __int128 b) { if (b == -1) return 0; __int128 r = a % b; if (r != 0 && ((r < 0) != (b < 0))) r += b; return r; }

/* splitmix64, runtime/rng.py InstanceRng */
static inline uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}
#ifndef NFP_GUIDED
static inline uint64_t below(uint64_t *s, uint64_t n) { return rng_next(s) % n; }
#else
/* guided (trace replay, verify/replay_fast.py): the caller names the choices. `rng` points at a
   guide_t; choice j takes forced[j] (how[j] == 1; out of its domain: bad), else its domain's first
   value (how 0) or its second (how 2); the step records each choice's kind, domain and value. */
#define NFP_CHOICES 8   /* GUIDED_CHOICES */
typedef struct {
    int n, bad;
    uint8_t how[NFP_CHOICES], kind[NFP_CHOICES];   /* kind: 0 an index below size, 1 a free pool value */
    uint64_t forced[NFP_CHOICES], base[NFP_CHOICES], size[NFP_CHOICES], value[NFP_CHOICES];
} guide_t;
static inline uint64_t below(uint64_t *s, uint64_t n) {
    guide_t *g = (guide_t *)s;
    int j = g->n++;
    if (j >= NFP_CHOICES) { g->bad = 1; return 0; }
    uint64_t v = g->how[j] == 1 ? g->forced[j] : g->how[j] == 2 ? 1 : 0;
    if (v >= n) { g->bad = 1; v = 0; }
    g->kind[j] = 0; g->base[j] = 0; g->size[j] = n; g->value[j] = v;
    return v;
}
#endif

/* a map of fixed-size keys and values (words), open addressing, linear probing */
typedef struct { uint64_t base, size; uint64_t used, cursor; } pool_t;  /* cursor: guided choices */
typedef struct { uint64_t *w; size_t mask, n; int kw, vw, sw, npools; pool_t pools[4]; } map_t;

static int map_init(map_t *m, int kw, int vw) {
    m->kw = kw; m->vw = vw; m->sw = 1 + kw + vw; m->mask = 15; m->n = 0; m->npools = 0;
    m->w = calloc((m->mask + 1) * m->sw, sizeof(uint64_t));
    return m->w == 0;
}
/* kw (key words) and sw (slot words: 1 + kw + value words) are passed as constants by each map's
   wrappers (map_get0, ...), so that these inline into code specialised for the map's sizes */
#define INLINE static inline __attribute__((always_inline))
INLINE uint64_t key_hash(const uint64_t *k, int kw) {
    uint64_t h = UINT64_C(0x9E3779B97F4A7C15);
    for (int i = 0; i < kw; i++) { h ^= k[i]; h *= UINT64_C(0xFF51AFD7ED558CCD); h ^= h >> 32; }
    return h;
}
INLINE int same_key(const uint64_t *a, const uint64_t *b, int kw) {
    for (int i = 0; i < kw; i++) if (a[i] != b[i]) return 0;
    return 1;
}
INLINE uint64_t *map_slot(const map_t *m, const uint64_t *k, int kw, int sw) {  /* the key's slot, or the empty one it would take */
    size_t i = key_hash(k, kw) & m->mask;
    for (;;) {
        uint64_t *s = m->w + i * sw;
        if (!s[0]) return s;
        if (same_key(s + 1, k, kw)) return s;
        i = (i + 1) & m->mask;
    }
}
INLINE uint64_t *map_get(const map_t *m, const uint64_t *k, int kw, int sw) {  /* the value words, 0: absent */
    uint64_t *s = map_slot(m, k, kw, sw);
    return s[0] ? s + 1 + kw : 0;
}
#ifdef NFP_GUIDED
/* the undo journal of guided steps: every map write and counter write since nf_mark() */
#define NFP_JOURNAL 4096
#define NFP_JWORDS 64
typedef struct { map_t *m; uint64_t *c; uint64_t old; int present; uint64_t w[NFP_JWORDS]; } jent_t;
static jent_t journal[NFP_JOURNAL];
static int journal_n, journal_full, undoing;
static inline void journal_map(map_t *m, const uint64_t *slot, const uint64_t *k, int kw, int sw) {
    if (undoing) return;
    if (journal_n >= NFP_JOURNAL || sw - 1 > NFP_JWORDS) { journal_full = 1; return; }
    jent_t *e = &journal[journal_n++];
    e->m = m; e->c = 0; e->present = slot[0] != 0;
    memcpy(e->w, k, kw * sizeof(uint64_t));
    if (e->present) memcpy(e->w + kw, slot + 1 + kw, (sw - 1 - kw) * sizeof(uint64_t));
}
static inline void set_counter(uint64_t *c, uint64_t v) {
    if (journal_n >= NFP_JOURNAL) journal_full = 1;
    else { jent_t *e = &journal[journal_n++]; e->m = 0; e->c = c; e->old = *c; }
    *c = v;
}
#else
#define journal_map(m, slot, k, kw, sw)
static inline void set_counter(uint64_t *c, uint64_t v) { *c = v; }
#endif
INLINE void map_prefetch(const map_t *m, const uint64_t *k, int kw, int sw) {  /* (asm: GCC keeps it) */
    __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)(m->w + (key_hash(k, kw) & m->mask) * sw)));
}
static inline void pools_count(map_t *m, const uint64_t *k, int64_t d) {
    for (int j = 0; j < m->npools; j++)
        if (k[0] - m->pools[j].base < m->pools[j].size) m->pools[j].used += d;
}
static void map_grow(map_t *m) {
    size_t old = m->mask + 1;
    uint64_t *w = m->w;
    uint64_t *nw = calloc(old * 2 * m->sw, sizeof(uint64_t));
    if (!nw) abort();
    m->w = nw; m->mask = old * 2 - 1;
    for (size_t i = 0; i < old; i++) {
        uint64_t *s = w + i * m->sw;
        if (s[0]) memcpy(map_slot(m, s + 1, m->kw, m->sw), s, m->sw * sizeof(uint64_t));
    }
    free(w);
}
INLINE void map_put(map_t *m, const uint64_t *k, const uint64_t *v, int kw, int sw) {
    uint64_t *s = map_slot(m, k, kw, sw);
    int vw = sw - 1 - kw;
    journal_map(m, s, k, kw, sw);
    if (!s[0]) {
        s[0] = 1; memcpy(s + 1, k, kw * sizeof(uint64_t)); m->n++;
        if (m->npools) pools_count(m, k, 1);
        if (vw) memcpy(s + 1 + kw, v, vw * sizeof(uint64_t));
        if (2 * m->n > m->mask) map_grow(m);
        return;
    }
    if (vw) memcpy(s + 1 + kw, v, vw * sizeof(uint64_t));
}
INLINE void map_del(map_t *m, const uint64_t *k, int kw, int sw) {  /* backward-shift deletion */
    uint64_t *s = map_slot(m, k, kw, sw);
    if (!s[0]) return;
    journal_map(m, s, k, kw, sw);
    if (m->npools) pools_count(m, k, -1);
    size_t i = (s - m->w) / sw, j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        uint64_t *t = m->w + j * sw;
        if (!t[0]) break;
        size_t home = key_hash(t + 1, kw) & m->mask;
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            memcpy(m->w + i * sw, t, sw * sizeof(uint64_t));
            i = j;
        }
    }
    memset(m->w + i * sw, 0, sw * sizeof(uint64_t));
    m->n--;
}
#ifdef NFP_GUIDED
INLINE int choose_free(uint64_t *rng, map_t *m, int pool, uint64_t base, uint64_t size, uint64_t *out, int sw) {
    pool_t *p = &m->pools[pool];
    if (p->used >= size) return 0;
    guide_t *g = (guide_t *)rng;
    int j = g->n++;
    if (j >= NFP_CHOICES) { g->bad = 1; *out = base; return 1; }
    uint64_t v, key[1];
    if (g->how[j] == 1) {
        v = g->forced[j]; key[0] = v;
        if (v - base >= size || map_get(m, key, 1, sw)) g->bad = 1;
    } else {  /* the first free value from the cursor on (how 2: the one after it) */
        int skip = g->how[j] == 2;
        uint64_t off = p->cursor % size;
        for (;;) {
            key[0] = base + off;
            if (!map_get(m, key, 1, sw)) {
                if (!skip) break;
                skip = 0;
                if (size - p->used < 2) { g->bad = 1; break; }
            }
            off = off + 1 == size ? 0 : off + 1;
        }
        v = base + off;
        if (g->how[j] == 0) p->cursor = off;
    }
    g->kind[j] = 1; g->base[j] = base; g->size[j] = size; g->value[j] = v;
    *out = v;
    return 1;
}
EXPORT int nf_mark(void) { journal_full = 0; return journal_n = 0; }
EXPORT int nf_undo(int mark) {  /* back to the state at journal length `mark`; -1 if the journal overflowed */
    if (journal_full) return -1;
    undoing = 1;
    while (journal_n > mark) {
        jent_t *e = &journal[--journal_n];
        if (e->c) { *e->c = e->old; continue; }
        map_t *m = e->m;
        if (e->present) map_put(m, e->w, e->w + m->kw, m->kw, m->sw);
        else map_del(m, e->w, m->kw, m->sw);
    }
    undoing = 0;
    return 0;
}
#else
/* runtime/rng.py choose_free: a pool value that is not a key; 0 (no draw) when every one is */
INLINE int choose_free(uint64_t *rng, map_t *m, int pool, uint64_t base, uint64_t size, uint64_t *out, int sw) {
    if (m->pools[pool].used >= size) return 0;
    uint64_t v = base, key[1];
    for (int k = 0; k < 64; k++) {
        v = base + below(rng, size);
        key[0] = v;
        if (!map_get(m, key, 1, sw)) { *out = v; return 1; }
    }
    uint64_t top = base + size - 1;
    for (;;) {
        key[0] = v;
        if (!map_get(m, key, 1, sw)) { *out = v; return 1; }
        v = v == top ? base : v + 1;
    }
}
#endif

EXPORT size_t nf_map_len(void *state, int k) { return ((map_t *)state)[k].n; }
EXPORT void nf_map_items(void *state, int k, uint64_t *out) {  /* key and value words of every entry */
    map_t *m = &((map_t *)state)[k];
    for (size_t i = 0; i <= m->mask; i++) {
        uint64_t *s = m->w + i * m->sw;
        if (s[0]) { memcpy(out, s + 1, (m->sw - 1) * sizeof(uint64_t)); out += m->sw - 1; }
    }
}
EXPORT void nf_map_put(void *state, int k, const uint64_t *key, const uint64_t *value) {
    map_t *m = &((map_t *)state)[k];
    map_put(m, key, value, m->kw, m->sw);
}
"""


# ---- build and load ------------------------------------------------------------------------------

def cache_dir() -> str:
    return os.environ.get("NFPROOF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nfproof")


class CompiledModel:
    """A model's handler as a loaded C step function (see the module docstring).

    `reasons` and `errors` are the drop reasons and model errors the step returns by index;
    `new_state()` a fresh state (a C pointer, freed with the object), `step` one packet."""

    def __init__(self, nf_cls, guided: bool = False):
        validate(nf_cls)
        compiler = _Compiler(nf_cls)
        self.nf, self.source = nf_cls, compiler.source()
        # what a state's memory holds: maps (key and value words), their pools, counters
        self.layout = (tuple((len(_widths(d.key)), 0 if isinstance(d, Set) else len(_widths(d.value)),
                              tuple(compiler.pools.get(k, ()))) for k, (_, d) in enumerate(compiler.maps)),
                       len(compiler.counters))
        if guided:  # choices named by the caller, writes undone (verify/replay_fast.py)
            self.source = "#define NFP_GUIDED 1\n" + self.source
        self.reasons, self.errors = tuple(compiler.reasons), tuple(compiler.errors)
        self.maps = tuple(compiler.maps)
        self.counters = tuple(compiler.counters)
        self.max_out = max(1, compiler.max_out)
        self.lib = ctypes.CDLL(_build(self.source))
        self.lib.nf_new.restype = ctypes.c_void_p
        self.lib.nf_free.argtypes = (ctypes.c_void_p,)
        self.lib.nf_counters.restype = ctypes.POINTER(ctypes.c_uint64)
        self.lib.nf_counters.argtypes = (ctypes.c_void_p,)
        self.lib.nf_map_len.restype = ctypes.c_size_t
        self.lib.nf_map_len.argtypes = (ctypes.c_void_p, ctypes.c_int)
        self.lib.nf_map_items.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
        self.lib.nf_map_put.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        self.lib.nf_step.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p)
        self.step_address = ctypes.cast(self.lib.nf_step, ctypes.c_void_p).value
        self.prefetch_address = ctypes.cast(self.lib.nf_prefetch, ctypes.c_void_p).value
        if guided:
            self.lib.nf_undo.argtypes = (ctypes.c_int,)
            self.mark_address = ctypes.cast(self.lib.nf_mark, ctypes.c_void_p).value
            self.undo_address = ctypes.cast(self.lib.nf_undo, ctypes.c_void_p).value

    def new_state(self) -> "CState":
        return CState(self)

    def error(self, code: int) -> ModelError:
        if code == -1:
            return ModelError(f"{self.nf.name}: a clock reading outside 0..{NOW_RANGE[1]} ticks")
        return ModelError(self.errors[code - 1])


class CView(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int64) for f in INPUT_FIELDS]


GUIDED_CHOICES = 8


class Guide(ctypes.Structure):
    """A guided build's guide_t (C_RUNTIME): how each choice is made (0 its domain's first value,
    1 `forced`, 2 the second) and, after a step, what each one was (`kind` 0 an index below `size`,
    1 a free value of [base, base + size)); `n` choices made, `bad` a forced value outside its domain."""
    _fields_ = [("n", ctypes.c_int), ("bad", ctypes.c_int), ("how", ctypes.c_uint8 * GUIDED_CHOICES),
                ("kind", ctypes.c_uint8 * GUIDED_CHOICES)] + \
        [(f, ctypes.c_uint64 * GUIDED_CHOICES) for f in ("forced", "base", "size", "value")]


class CState:
    """One instance's state in C, readable as the plain dicts and ints models.concrete.plain_state gives."""

    def __init__(self, model: CompiledModel):
        self.model = model
        self.address = model.lib.nf_new()
        if not self.address:
            raise MemoryError("the compiled model's state")
        self._outs = (CView * model.max_out)()
        self._gates = (ctypes.c_int * model.max_out)()
        self._drops = (ctypes.c_int * MAX_OUTPUTS)()
        self._n = (ctypes.c_int * 2)()

    def step(self, pkt: Packet, now: int, rng) -> tuple[list, list]:
        """One packet (ints) at clock reading `now`; rng a runtime/rng.py-style object with `.state`.
        Returns ([(gate, Packet)], [reason]) as models.concrete.step's result has them."""
        state = ctypes.c_uint64(rng.state)
        try:
            return self.step_with(pkt, now, ctypes.byref(state))
        finally:
            rng.state = state.value

    def step_with(self, pkt: Packet, now: int, chooser) -> tuple[list, list]:
        """step() with the choices' C state given (a ctypes pointer: to the stream's uint64, or in a
        guided build to a guide_t)."""
        m = self.model
        view = CView(*[int(getattr(pkt, f)) for f in INPUT_FIELDS])
        code = m.lib.nf_step(self.address, ctypes.byref(view), now, chooser, self._outs, self._gates,
                             ctypes.byref(self._n, 0), self._drops, ctypes.byref(self._n, 4))
        if code:
            raise m.error(code)
        outs = [(m.nf.gates[self._gates[k]], Packet(**{f: (bool(getattr(self._outs[k], f)) if f == "inbound" else
                                                         getattr(self._outs[k], f)) for f in INPUT_FIELDS}))
                for k in range(self._n[0])]
        return outs, [m.reasons[self._drops[k]] for k in range(self._n[1])]

    def plain(self) -> dict:
        """The state as models.concrete.plain_state shows it."""
        m, out = self.model, {}
        for k, (name, decl) in enumerate(m.maps):
            kind_k = decl.key
            kw = len(_widths(kind_k))
            vw = 0 if isinstance(decl, Set) else len(_widths(decl.value))
            n = m.lib.nf_map_len(self.address, k)
            buf = (ctypes.c_uint64 * max(1, n * (kw + vw)))()
            m.lib.nf_map_items(self.address, k, buf)
            words = list(buf)
            entries = []
            for j in range(n):
                w = words[j * (kw + vw):(j + 1) * (kw + vw)]
                key = w[0] if isinstance(kind_k, Bits) else kind_k._make(w[:kw])
                if isinstance(decl, Set):
                    entries.append(key)
                else:
                    entries.append((key, w[kw] if isinstance(decl.value, Bits) else decl.value._make(w[kw:])))
            out[name] = set(entries) if isinstance(decl, Set) else dict(entries)
        counters = m.lib.nf_counters(self.address)
        for k, (name, _) in enumerate(m.counters):
            out[name] = counters[k]
        return out

    def __del__(self):
        address, self.address = getattr(self, "address", None), None
        if address:
            self.model.lib.nf_free(address)


_LOADED: dict = {}


def compiled(nf_cls) -> CompiledModel:
    """The model compiled (once per class and process); NotCompilable if the tracer cannot follow it."""
    model = _LOADED.get(nf_cls)
    if model is None:
        model = _LOADED[nf_cls] = CompiledModel(nf_cls)
    return model


def _build(source: str) -> str:
    """The shared object of `source`, built with the system C compiler into the cache (once)."""
    flags = os.environ.get("NFPROOF_CFLAGS", "-O3").split()
    digest = hashlib.sha256(" ".join(flags).encode() + b"\0" + source.encode()).hexdigest()[:24]
    directory = os.path.join(cache_dir(), "compiled")
    so = os.path.join(directory, f"nf_{digest}.so")
    if os.path.exists(so):
        return so
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        c = os.path.join(tmp, "nf.c")
        with open(c, "w") as f:
            f.write(source)
        out = os.path.join(tmp, "nf.so")
        cc = os.environ.get("CC", "cc")
        try:
            done = subprocess.run([cc, *flags, "-fwrapv", "-shared", "-fPIC", "-fvisibility=hidden", "-o", out, c],
                                  capture_output=True, text=True)
        except OSError as e:
            raise NotCompilable(f"no C compiler ({cc}: {e}); install gcc or set CC") from None
        if done.returncode != 0:
            raise RuntimeError(f"the C compiler rejected a compiled model (a bug in nfproof): {done.stderr[:2000]}")
        os.replace(out, so)  # atomic: a concurrent build of the same source leaves one good file
    return so
