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

from ..models.api import NF, PACKET_FIELDS, PACKET_WIDTHS, Bits, Domain, MapStorage, Packet


class Path:
    """Records the decisions of one execution and proposes the untaken alternatives."""

    def __init__(self, prefix: tuple[bool, ...]):
        self.prefix, self.decisions, self.conds = prefix, [], []

    def branch(self, cond: z3.BoolRef) -> bool:
        cond = z3.simplify(cond)
        if z3.is_true(cond):
            return True
        if z3.is_false(cond):
            return False
        k = len(self.decisions)
        take = self.prefix[k] if k < len(self.prefix) else True
        self.decisions.append(take)
        self.conds.append(cond if take else z3.Not(cond))
        return take

    def alternatives(self) -> list[tuple[bool, ...]]:
        d = self.decisions
        return [tuple(d[:k]) + (not d[k],) for k in range(len(self.prefix), len(d))]

    def condition(self) -> z3.BoolRef:
        return z3.And(*self.conds) if self.conds else z3.BoolVal(True)


def const(value: int, width: int) -> z3.BitVecRef:
    if not 0 <= value < (1 << width):  # a silently truncated constant can make a bug vanish
        raise OverflowError(f"constant {value} does not fit in {width} bits")
    return z3.BitVecVal(value, width)


def term(value, width: int):
    """The Z3 term of a field value (int or SymBV)."""
    if isinstance(value, SymBV):
        if value.t.size() != width:
            raise TypeError(f"{width}-bit field given a {value.t.size()}-bit value")
        return value.t
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not a {width}-bit value: {value!r}")
    return const(value, width)


def bool_term(value) -> z3.BoolRef:
    return value.t if isinstance(value, SymBool) else z3.BoolVal(bool(value))


class SymBool:
    __slots__ = ("t", "path")

    def __init__(self, t, path: Path):
        self.t, self.path = t, path

    def __bool__(self) -> bool:
        return self.path.branch(self.t)

    def __and__(self, other):
        return SymBool(z3.And(self.t, bool_term(other)), self.path)

    def __or__(self, other):
        return SymBool(z3.Or(self.t, bool_term(other)), self.path)

    __rand__, __ror__ = __and__, __or__

    def __invert__(self):
        return SymBool(z3.Not(self.t), self.path)


class SymBV:
    """An unsigned bit-vector value; comparisons give SymBools, which fork when tested."""

    __slots__ = ("t", "path")
    __hash__ = None  # symbolic values cannot key Python dicts

    def __init__(self, t, path: Path):
        self.t, self.path = t, path

    def _other(self, other):
        if isinstance(other, SymBV):
            return other.t
        if isinstance(other, int) and not isinstance(other, bool):
            return const(other, self.t.size())
        if other is None:  # x == None: plain Python semantics (False)
            return None
        raise TypeError(f"cannot combine a {self.t.size()}-bit value with {other!r}")

    def _cmp(op):
        def method(self, other):
            o = self._other(other)
            return NotImplemented if o is None else SymBool(op(self.t, o), self.path)
        return method

    def _arith(op):
        def method(self, other):
            o = self._other(other)
            return NotImplemented if o is None else SymBV(op(self.t, o), self.path)
        return method

    __eq__ = _cmp(lambda a, b: a == b)
    __ne__ = _cmp(lambda a, b: a != b)
    __lt__ = _cmp(z3.ULT)
    __le__ = _cmp(z3.ULE)
    __gt__ = _cmp(z3.UGT)
    __ge__ = _cmp(z3.UGE)
    __add__ = __radd__ = _arith(lambda a, b: a + b)
    __sub__ = _arith(lambda a, b: a - b)
    __and__ = __rand__ = _arith(lambda a, b: a & b)
    __or__ = __ror__ = _arith(lambda a, b: a | b)

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
        return SymBV(t, path)
    parts, hi = [], kind_width(kind)
    for w in kind.widths:
        parts.append(SymBV(z3.Extract(hi - 1, hi - w, t), path))
        hi -= w
    return kind(*parts)


class SymMap(MapStorage):
    """A declared Map as two arrays: key -> present, key -> value."""

    def __init__(self, decl, present, values, path: Path):
        self.decl, self.present, self.values, self.path = decl, present, values, path

    @staticmethod
    def empty(decl):
        ks, vs = z3.BitVecSort(kind_width(decl.key)), z3.BitVecSort(kind_width(decl.value))
        return z3.K(ks, z3.BoolVal(False)), z3.K(ks, z3.BitVecVal(0, vs.size()))

    def get(self, key):
        k = pack(self.decl.key, key)
        if self.path.branch(z3.Select(self.present, k)):
            return unpack(self.decl.value, z3.Select(self.values, k), self.path)
        return None

    def __contains__(self, key) -> bool:
        return self.path.branch(z3.Select(self.present, pack(self.decl.key, key)))

    def __setitem__(self, key, value):
        k = pack(self.decl.key, key)
        self.present = z3.Store(self.present, k, z3.BoolVal(True))
        self.values = z3.Store(self.values, k, pack(self.decl.value, value))

    def __delitem__(self, key):
        self.present = z3.Store(self.present, pack(self.decl.key, key), z3.BoolVal(False))

    def absent_from(self, values, kind) -> Domain:
        w = kind_width(self.decl.key)
        return Domain(((v, z3.Not(z3.Select(self.present, const(v, w)))) for v in values), kind)


class SymContext:
    def __init__(self, path: Path, choice_var: Callable[[int, int], z3.BitVecRef]):
        self.path, self.choice_var = path, choice_var
        self.outputs, self.drops, self.validity, self.nchoices = [], [], [], 0

    def choose(self, domain: Domain):
        if self.path.branch(z3.And(*[z3.Not(c) for _, c in domain.items]) if domain.items else z3.BoolVal(True)):
            return None
        v = self.choice_var(self.nchoices, domain.kind.width)
        self.nchoices += 1
        self.validity.append(z3.Or(*[z3.And(v == const(val, domain.kind.width), c) for val, c in domain.items]))
        return SymBV(v, self.path)

    def now(self):
        raise NotImplementedError("clock reads are not modelled symbolically yet")

    def emit(self, pkt: Packet, gate: str) -> None:
        self.outputs.append((gate, pkt))

    def drop(self, reason: str = "") -> None:
        self.drops.append(reason)


def symbolic_packet(prefix: str) -> dict:
    """Fresh terms for every field of an input packet."""
    out = {f: z3.BitVec(f"{prefix}.{f}", w) for f, w in PACKET_WIDTHS.items()}
    out["inbound"] = z3.Bool(f"{prefix}.inbound")
    return out


def _bind(fields: dict, path: Path) -> Packet:
    return Packet(**{f: (SymBool if f == "inbound" else SymBV)(t, path) for f, t in fields.items()})


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
    state: dict           # declaration name -> (present array, values array)
    outputs: list[Slot]
    valid: z3.BoolRef     # the choices made on the taken path were available
    paths: int


def step(nf_cls: type[NF], state: dict, pkt: dict, choice_var) -> SymStep:
    """All paths of nf_cls.handle on (state, pkt), merged."""
    decls = nf_cls.declarations()
    runs, pending = [], [()]
    while pending:
        path = Path(pending.pop())
        storages = {name: SymMap(decl, *state[name], path) for name, decl in decls.items()}
        ctx = SymContext(path, choice_var)
        nf_cls(storages).handle(_bind(pkt, path), ctx)
        pending.extend(path.alternatives())
        runs.append((path.condition(), storages, ctx))

    new_state = {name: (ite([(pc, s[name].present) for pc, s, _ in runs]),
                        ite([(pc, s[name].values) for pc, s, _ in runs])) for name in decls}
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
    return {name: SymMap.empty(decl) for name, decl in nf_cls.declarations().items()}


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
