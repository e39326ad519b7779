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

from ..models.api import NF, PACKET_FIELDS, PACKET_WIDTHS, Bits, Domain, Map, MapStorage, ModelError, Packet, Set


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
        k = len(self.decisions)
        take = self.prefix[k] if k < len(self.prefix) else True
        self.decisions.append(take)
        self.conds.append(cond if take else z3.Not(cond))
        self.decided[cond.get_id()] = take
        return take

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
        raise TypeError(f"not a {width}-bit value: {value!r}")
    return z3.BitVecVal(int(value) & ((1 << width) - 1), width)  # wraps, as the concrete interpreter masks


def bool_term(value) -> z3.BoolRef:
    return value.t if isinstance(value, SymBool) else z3.BoolVal(bool(value))


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
        """Python's floor division and modulo (z3's signed ones truncate toward zero)."""
        pair = self._operands(other)
        if pair is None:
            return None
        a, b = pair[::-1] if reverse else pair
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

    def __lshift__(self, n):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ModelError("shifts are supported by a non-negative constant amount only")
        return SymBV(z3.SignExt(n, self.t) << n, self.path)

    def __rshift__(self, n):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ModelError("shifts are supported by a non-negative constant amount only")
        return SymBV(self.t >> n, self.path)  # arithmetic shift, as Python's on negative ints

    def __neg__(self):
        return SymBV(-z3.SignExt(1, self.t), self.path)

    def __invert__(self):
        return SymBV(~self.t, self.path)  # two's complement: ~x == -x - 1, as in Python

    def __bool__(self) -> bool:
        return self.path.branch(self.t != 0)

    def __repr__(self) -> str:
        return f"SymBV({self.t})"


def kind_width(kind) -> int:
    return kind.width if isinstance(kind, Bits) else sum(kind.widths)


def pack(kind, value):
    if isinstance(kind, Bits):
        return term(value, kind.width)
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

    def get(self, key):
        k = self._key(key)
        if self.path.branch(z3.Select(self.present, k)):
            return unpack(self.decl.value, z3.Select(self.values, k), self.path)
        return None

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise ModelError(f"{self.decl.name}[key] on a path where the key may be absent; test `key in m` "
                             f"first or use m.get(key)")
        return value

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


CHOICE_WIDTH = 64  # bits of a choice variable: domain values are below 2**63


class SymContext:
    def __init__(self, path: Path, choice_var: Callable[[int, int], z3.BitVecRef], gates: tuple[str, ...]):
        self.path, self.choice_var, self.gates = path, choice_var, gates
        self.outputs, self.drops, self.validity, self.nchoices = [], [], [], 0

    def choose(self, domain: Domain):
        items = [(const(val, domain.kind.width).as_long(), z3.BoolVal(c) if isinstance(c, bool) else c)
                 for val, c in domain.items]  # const: a domain value wider than its kind is a model error
        if self.path.branch(z3.And(*[z3.Not(c) for _, c in items]) if items else z3.BoolVal(True)):
            return None
        # One variable per call, of one width whatever the domain, so that every path's k-th choice
        # is the same variable; its value is one of the domain's (validity), hence non-negative.
        v = self.choice_var(self.nchoices, CHOICE_WIDTH)
        self.nchoices += 1
        self.validity.append(z3.Or(*[z3.And(v == val, c) for val, c in items]))
        return SymBV(v, self.path)

    def now(self):
        raise ModelError("the NF reads the clock (ctx.now()); clock reads are not verified yet")

    def emit(self, pkt: Packet, gate: str) -> None:
        if gate not in self.gates:
            raise ModelError(f"emit on undeclared gate {gate!r}; the NF declares gates {self.gates}")
        self.outputs.append((gate, pkt))

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


def step(nf_cls: type[NF], state: dict, pkt: dict, choice_var) -> SymStep:
    """All paths of nf_cls.handle on (state, pkt), merged."""
    decls = nf_cls.declarations()
    runs, pending = [], [()]
    while pending:
        path = Path(pending.pop())
        storages = {name: _storage_class(decl)(decl, path, *state[name]) for name, decl in decls.items()}
        ctx = SymContext(path, choice_var, nf_cls.gates)
        nf_cls(storages).handle(_bind(pkt, path), ctx)
        pending.extend(path.alternatives())
        runs.append((path.condition(), storages, ctx))

    new_state = {name: tuple(ite([(pc, s[name].terms()[c]) for pc, s, _ in runs])
                             for c in range(len(runs[0][1][name].terms()))) for name in decls}
    slots = []
    for j in range(max(len(ctx.outputs) for _, _, ctx in runs)):
        having = [(pc, ctx.outputs[j]) for pc, _, ctx in runs if len(ctx.outputs) > j]
        terms = [(pc, packet_terms(p)) for pc, (_, p) in having]
        slots.append(Slot(
            present=z3.Or(*[pc for pc, _ in having]) if len(having) < len(runs) else z3.BoolVal(True),
            gate=ite([(pc, z3.IntVal(nf_cls.gates.index(g))) for pc, (g, _) in having]),
            fields={f: ite([(pc, t[f]) for pc, t in terms]) for f in terms[0][1]},
        ))
    valid = [z3.Implies(pc, z3.And(*ctx.validity)) for pc, _, ctx in runs if ctx.validity]
    return SymStep(new_state, slots, z3.And(*valid) if valid else z3.BoolVal(True), len(runs))


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
        same = [x.present.eq(y.present), x.gate.eq(y.gate)] + [x.fields.get(f) is not None and y.fields.get(f) is not None and x.fields[f].eq(y.fields[f]) for f in PACKET_FIELDS]
        if all(same):
            continue
        fields_differ = [x.fields[f] != y.fields[f] for f in PACKET_FIELDS if f in x.fields and f in y.fields]
        diffs.append(z3.Or(x.present != y.present,
                           z3.And(x.present, z3.Or(x.gate != y.gate, *fields_differ))))
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
