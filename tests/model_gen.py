"""Random NF models as Python source, for the differential fuzzer (tests/test_differential.py,
bench/fuzz_differential.py).

`models(...)` is a Hypothesis strategy of `Generated` models: readable source (a failure prints
it, a human can paste it) compiled into an NF class. The vocabulary is the model API's whole:
Map / Set / Counter declarations at widths 1..64 and Flow keys and values, every integer operator
(+ - * // % & | ^, shifts by constants, unary - ~, abs()), comparisons with the boundary constants
of every width, `if`/`else` on symbolic conditions, `k in m`, `m.get(k)`, `m.get(k, 0)`, `m[k]`
after `k in m`, `del m[k]`, Set add / discard / remove after a membership test, choices from
`pool.all()` and `pool.free(m)` (pools of at most 3 values at bases up to 2**64-3) stored in state
and revealed on later packets, several outputs and gates, drops, writes of computed values into
every packet field (`inbound` included), loops over constants.

Models are bounded, touch declared state only, subscript `m[k]` only where `k in m` holds and
divide by nothing that can be 0. A few constructs may be model errors depending on values (an
integer written into `inbound`, a Domain value wider than its kind): they are generated on
purpose, since both interpreters must reject them alike; any other `ModelError` or crash is a
finding, judged by the test. `packets(model)` draws input packets concentrated on the constants the model compares with,
so that its branches are taken both ways."""
from __future__ import annotations

import itertools
import linecache
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings, strategies as st

from nfproof.models.api import PACKET_WIDTHS, Packet

WIDTHS = (1, 8, 16, 32, 64)
BOUNDED = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
INT_FIELDS = tuple(PACKET_WIDTHS)  # every integer field (inbound is the bool one)
FLOW_FIELDS = ("proto", "src", "sport", "dst", "dport")
HEADER = "from nfproof.models.api import NF, Bits, Counter, Domain, Flow, Map, Pool, Set\n\n\n"


def boundaries(width: int) -> list[int]:
    """0, 2^(w-1)-1, 2^(w-1), 2^w-1 (deduplicated, in order)."""
    return list(dict.fromkeys([0, (1 << (width - 1)) - 1, 1 << (width - 1), (1 << width) - 1]))


BOUNDARY_CONSTANTS = sorted({c for w in WIDTHS + (2, 4) for c in boundaries(w)})
SMALL_CONSTANTS = [1, 2, 3, 5, 7, 255, 256, 65536]


@dataclass
class Generated:
    """A generated model: its source, its class, and the constants it uses (for packets)."""

    source: str
    nf: type
    constants: list[int]
    choices: bool  # whether it calls ctx.choose at all

    def __repr__(self) -> str:  # what Hypothesis prints for a falsifying example
        return "\n" + self.source


@dataclass
class _Decl:
    name: str
    kind: str              # map | set | counter | pool
    key: object = None     # width (int) or "flow"
    value: object = None   # width or "flow" (maps), width (counters, pools)
    base: int = 0
    size: int = 0


@dataclass
class _Config:
    max_statements: int = 6
    max_depth: int = 2
    max_expr_depth: int = 2
    max_choices: int = 2
    max_pool: int = 3
    nondeterministic: bool = False  # at least one pool and one counter, and choices drawn often


@dataclass
class _Scope:
    ints: list = field(default_factory=list)    # local int variable names
    flows: list = field(default_factory=list)   # local Flow variable names

    def child(self) -> "_Scope":
        return _Scope(list(self.ints), list(self.flows))


_COUNTER = itertools.count()


def _kind(width) -> str:
    return "Flow" if width == "flow" else f"Bits({width}, 'B{width}')"


class _Writer:
    """Draws one model: declarations first, then the handler's statements."""

    def __init__(self, draw, cfg: _Config):
        self.draw, self.cfg = draw, cfg
        self.decls: list[_Decl] = []
        self.constants: set[int] = set()
        self.nvars = 0
        self.nchoices = 0
        self.gates: list[str] = []

    # -- helpers -------------------------------------------------------------------------------
    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def chance(self, p_true_in_8: int) -> bool:
        return self.draw(st.integers(0, 7)) < p_true_in_8

    def fresh(self, prefix="v") -> str:
        self.nvars += 1
        return f"{prefix}{self.nvars}"

    def of(self, kind):
        return [d for d in self.decls if d.kind == kind]

    # -- declarations --------------------------------------------------------------------------
    def declare(self):
        n = 0
        for _ in range(self.draw(st.integers(0, 2))):
            key = self.pick(WIDTHS + ("flow",))
            value = self.pick(WIDTHS + ("flow",))
            self.decls.append(_Decl(f"m{n}", "map", key, value)); n += 1
        for _ in range(self.draw(st.integers(0, 1))):
            self.decls.append(_Decl(f"s{n}", "set", self.pick(WIDTHS + ("flow",)))); n += 1
        least = 1 if self.cfg.nondeterministic else 0
        for _ in range(self.draw(st.integers(least, 2))):
            self.decls.append(_Decl(f"c{n}", "counter", value=self.pick(WIDTHS))); n += 1
        for _ in range(self.draw(st.integers(least, 2))):
            width = self.pick(WIDTHS)
            size = self.draw(st.integers(min(1 + least, self.cfg.max_pool), min(self.cfg.max_pool, 1 << width)))
            top = (1 << width) - size
            base = self.pick(sorted({0, 1, min(top, (1 << (width - 1)) - 1), min(top, (1 << (width - 1)) - 2 if width > 1 else 0),
                                     min(top, 1 << (width - 1)), top, min(top, 20000)}))
            base = max(0, base)
            self.decls.append(_Decl(f"pool{n}", "pool", value=width, base=base, size=size)); n += 1
            self.constants.update(range(base, base + size))
        self.gates = list(self.pick([("out",), ("out", "alt"), ("out", "alt", "log")]))

    def render_decls(self) -> list[str]:
        out = [f'    name = "generated"', f"    gates = {tuple(self.gates)!r}"]
        for d in self.decls:
            if d.kind == "map":
                out.append(f"    {d.name} = Map({_kind(d.key)}, {_kind(d.value)})")
            elif d.kind == "set":
                out.append(f"    {d.name} = Set({_kind(d.key)})")
            elif d.kind == "counter":
                out.append(f"    {d.name} = Counter({_kind(d.value)})")
            else:
                out.append(f"    {d.name} = Pool(base={d.base}, size={d.size}, kind={_kind(d.value)})")
        return out

    # -- expressions ---------------------------------------------------------------------------
    def constant(self) -> str:
        c = self.pick(BOUNDARY_CONSTANTS + SMALL_CONSTANTS + sorted(self.constants or {0}))
        if self.chance(1):
            c = -c if c else -1
        self.constants.add(abs(c))
        return str(c) if c >= 0 else f"({c})"

    def atom(self, scope: _Scope) -> str:
        options = ["field", "const"]
        if scope.ints:
            options += ["local", "local"]
        if scope.flows:
            options.append("flowfield")
        if self.of("counter"):
            options.append("counter")
        which = self.pick(options)
        if which == "field":
            return "pkt." + self.pick(INT_FIELDS + ("inbound",))
        if which == "const":
            return self.constant()
        if which == "local":
            return self.pick(scope.ints)
        if which == "flowfield":
            return f"{self.pick(scope.flows)}.{self.pick(FLOW_FIELDS)}"
        return "self." + self.pick(self.of("counter")).name

    def expr(self, scope: _Scope, depth: int | None = None) -> str:
        depth = self.cfg.max_expr_depth if depth is None else depth
        if depth <= 0 or self.chance(3):
            return self.atom(scope)
        form = self.pick(["binary", "binary", "binary", "unary", "shift", "divide", "ite", "bool"])
        if form == "binary":
            op = self.pick(["+", "-", "*", "&", "|", "^"])
            return f"({self.expr(scope, depth - 1)} {op} {self.expr(scope, depth - 1)})"
        if form == "unary":
            op = self.pick(["-", "~", "abs"])
            inner = self.expr(scope, depth - 1)
            return f"abs({inner})" if op == "abs" else f"({op}{inner})"
        if form == "shift":
            op = self.pick(["<<", ">>"])
            amount = self.pick([0, 1, 3, 8, 15, 16, 31, 32, 63, 64, 65])
            return f"({self.expr(scope, depth - 1)} {op} {amount})"
        if form == "divide":
            op = self.pick(["//", "%"])
            if self.chance(2):  # a symbolic divisor that is never 0
                divisor = f"({self.expr(scope, depth - 1)} | 1)"
            else:
                divisor = str(self.pick([1, 2, 3, 7, 256, 65536, -3, (1 << 63) - 1, 1 << 63]))
                divisor = f"({divisor})" if divisor.startswith("-") else divisor
            return f"({self.expr(scope, depth - 1)} {op} {divisor})"
        if form == "ite":
            return f"({self.expr(scope, depth - 1)} if {self.cond(scope, depth - 1)} else {self.expr(scope, depth - 1)})"
        return f"({self.cond(scope, depth - 1)})"

    def cond(self, scope: _Scope, depth: int | None = None) -> str:
        depth = self.cfg.max_expr_depth if depth is None else depth
        options = ["compare", "compare", "compare", "truthy", "inbound"]
        if [d for d in self.decls if d.kind in ("map", "set")]:
            options += ["member", "member"]
        if depth > 0:
            options += ["not", "andor"]
        form = self.pick(options)
        if form == "compare":
            op = self.pick(["==", "!=", "<", "<=", ">", ">="])
            left = self.expr(scope, depth - 1 if depth > 0 else 0)
            right = self.constant() if self.chance(5) else self.expr(scope, depth - 1 if depth > 0 else 0)
            return f"{left} {op} {right}"
        if form == "truthy":
            return self.expr(scope, max(depth - 1, 0))
        if form == "inbound":
            return "pkt.inbound"
        if form == "member":
            d = self.pick([d for d in self.decls if d.kind in ("map", "set")])
            return f"{self.key_for(d, scope)} in self.{d.name}"
        if form == "not":
            return f"not ({self.cond(scope, depth - 1)})"
        return f"({self.cond(scope, depth - 1)}) {self.pick(['and', 'or'])} ({self.cond(scope, depth - 1)})"

    def flow_expr(self, scope: _Scope) -> str:
        form = self.pick(["pkt", "pkt", "local", "built"] if scope.flows else ["pkt", "pkt", "built"])
        if form == "pkt":
            return "pkt.flow"
        if form == "local":
            return self.pick(scope.flows)
        parts = [f"pkt.{f}" if self.chance(5) else self.expr(scope, 1) for f in FLOW_FIELDS]
        return f"Flow({', '.join(parts)})"

    def key_for(self, d: _Decl, scope: _Scope) -> str:
        return self.flow_expr(scope) if d.key == "flow" else self.expr(scope, 1)

    def value_for(self, width, scope: _Scope) -> str:
        return self.flow_expr(scope) if width == "flow" else self.expr(scope)

    # -- statements ----------------------------------------------------------------------------
    def block(self, scope: _Scope, depth: int, indent: str, budget: int) -> list[str]:
        lines: list[str] = []
        for _ in range(self.draw(st.integers(1, max(1, budget)))):
            lines += self.statement(scope, depth, indent)
            if lines and lines[-1].lstrip().startswith("return"):
                break
        return lines

    def statement(self, scope: _Scope, depth: int, indent: str) -> list[str]:
        options = ["assign", "emit", "emit", "emit"]
        maps = self.of("map")
        sets = self.of("set")
        if self.of("counter"):
            options += ["counter", "counter"]
        if maps:
            options += ["store", "store", "get", "get", "getdefault", "subscript", "delete"]
        if sets:
            options += ["setop", "setop"]
        if self.of("pool") and self.nchoices < self.cfg.max_choices:
            options += ["choose", "choose", "choose"] * (4 if self.cfg.nondeterministic else 1)
        if self.nchoices < self.cfg.max_choices:
            options += ["domain"]
        if self.of("pool") and self.nchoices < self.cfg.max_choices and self.cfg.nondeterministic:
            options += ["sticky"] * 8
        if depth < self.cfg.max_depth:
            options += ["if", "if", "if", "loop"]
        options += ["drop"]
        form = self.pick(options)
        i = indent
        if form == "assign":
            name = self.fresh()
            line = f"{i}{name} = {self.expr(scope)}"
            scope.ints.append(name)
            return [line]
        if form == "emit":
            return [f"{i}{self.emit(scope)}"]
        if form == "drop":
            return [f"{i}{'return ' if self.chance(4) else ''}ctx.drop({self.pick(['a', 'b'])!r})"]
        if form == "counter":
            c = self.pick(self.of("counter")).name
            op = self.pick(["=", "=", "+=", "-="])
            return [f"{i}self.{c} {op} {self.expr(scope)}"]
        if form == "store":
            d = self.pick(maps)
            return [f"{i}self.{d.name}[{self.key_for(d, scope)}] = {self.value_for(d.value, scope)}"]
        if form == "delete":
            d = self.pick(maps)
            return [f"{i}del self.{d.name}[{self.key_for(d, scope)}]"]
        if form == "get":
            d = self.pick(maps)
            name = self.fresh("f" if d.value == "flow" else "v")
            lines = [f"{i}{name} = self.{d.name}.get({self.key_for(d, scope)})", f"{i}if {name} is None:"]
            if d.value == "flow":
                lines.append(f"{i}    {name} = {self.flow_expr(scope)}")
                scope.flows.append(name)
            elif self.chance(2):
                lines.append(f"{i}    return ctx.drop('absent')")
                scope.ints.append(name)
            else:
                lines.append(f"{i}    {name} = {self.expr(scope)}")
                scope.ints.append(name)
            return lines
        if form == "getdefault":
            d = self.pick([m for m in maps if m.value != "flow"] or maps)
            if d.value == "flow":
                name = self.fresh("f")
                line = f"{i}{name} = self.{d.name}.get({self.key_for(d, scope)}, pkt.flow)"
                scope.flows.append(name)
                return [line]
            name = self.fresh()
            line = f"{i}{name} = self.{d.name}.get({self.key_for(d, scope)}, {self.pick(['0', '0', self.constant()])})"
            scope.ints.append(name)
            return [line]
        if form == "subscript":
            d = self.pick(maps)
            key = self.fresh("k")
            name = self.fresh("f" if d.value == "flow" else "v")
            keyline = f"{i}{key} = {self.key_for(d, scope)}" if d.key != "flow" or self.chance(4) else None
            keyref = key if keyline else "pkt.flow"
            inner = scope.child()
            (inner.flows if d.value == "flow" else inner.ints).append(name)
            lines = ([keyline] if keyline else []) + [f"{i}if {keyref} in self.{d.name}:", f"{i}    {name} = self.{d.name}[{keyref}]"]
            lines += self.block(inner, depth + 1, i + "    ", 2)
            return lines
        if form == "setop":
            d = self.pick(sets)
            op = self.pick(["add", "add", "discard", "remove"])
            key = self.key_for(d, scope)
            if op == "remove":
                k = self.fresh("k")
                return [f"{i}{k} = {key}", f"{i}if {k} in self.{d.name}:", f"{i}    self.{d.name}.remove({k})"]
            return [f"{i}self.{d.name}.{op}({key})"]
        if form == "choose":
            pool = self.pick(self.of("pool"))
            self.nchoices += 1
            name = self.fresh("x")
            holders = [d for d in self.decls if d.kind in ("map", "set") and d.key != "flow"
                       and pool.base + pool.size - 1 < (1 << d.key)]
            if holders and self.chance(4):
                domain = f"self.{pool.name}.free(self.{self.pick(holders).name})"
            else:
                domain = f"self.{pool.name}.all()"
            lines = [f"{i}{name} = ctx.choose({domain})"]
            if "free" in domain:
                lines += [f"{i}if {name} is None:",
                          f"{i}    return ctx.drop('exhausted')" if self.chance(4) else f"{i}    {name} = {self.constant()}"]
            scope.ints.append(name)
            # keep the choice: in state more often than not, so a later packet reveals it
            keepers = [d for d in self.decls if d.kind == "counter" or (d.kind == "map" and d.value != "flow")]
            if keepers and self.chance(5):
                d = self.pick(keepers)
                if d.kind == "counter":
                    lines.append(f"{i}self.{d.name} = {name}")
                else:
                    lines.append(f"{i}self.{d.name}[{self.key_for(d, scope)}] = {name}")
            return lines
        if form == "sticky":  # a choice made once (per key) and kept: what failover must preserve
            self.nchoices += 1
            pool = self.pick(self.of("pool"))
            counters = self.of("counter")
            maps = [d for d in self.of("map") if d.value != "flow"]
            if maps and (not counters or self.chance(4)):
                d = self.pick(maps)
                name, key = self.fresh("x"), self.key_for(d, scope)
                scope.ints.append(name)
                return [f"{i}{name} = self.{d.name}.get({key})", f"{i}if {name} is None:",
                        f"{i}    {name} = ctx.choose(self.{pool.name}.all())", f"{i}    self.{d.name}[{key}] = {name}"]
            c = self.pick(counters).name
            return [f"{i}if self.{c} == 0:", f"{i}    self.{c} = ctx.choose(self.{pool.name}.all())"]
        if form == "domain":  # a Domain of computed values (packet fields, locals, constants)
            self.nchoices += 1
            width = self.pick(WIDTHS)
            values = []
            for _ in range(self.draw(st.integers(1, 3))):
                which = self.pick(["field", "field", "const", "atom"])
                if which == "field":
                    values.append("pkt." + self.pick(INT_FIELDS))
                elif which == "const":
                    values.append(str(self.pick(sorted({c & ((1 << width) - 1) for c in BOUNDARY_CONSTANTS + [1, 2]}))))
                else:
                    values.append(self.atom(scope))
            name = self.fresh("x")
            scope.ints.append(name)
            items = ", ".join(f"({v}, True)" for v in values)
            return [f"{i}{name} = ctx.choose(Domain([{items}], {_kind(width)}))"]
        if form == "if":
            then_scope, else_scope = scope.child(), scope.child()
            lines = [f"{i}if {self.cond(scope)}:"] + self.block(then_scope, depth + 1, i + "    ", 2)
            if self.chance(5):
                lines += [f"{i}else:"] + self.block(else_scope, depth + 1, i + "    ", 2)
            return lines
        # loop over a constant range
        name = self.fresh("i")
        inner = scope.child()
        inner.ints.append(name)
        return [f"{i}for {name} in range({self.pick([1, 2, 3])}):"] + self.block(inner, self.cfg.max_depth, i + "    ", 1)

    def emit(self, scope: _Scope) -> str:
        gate = self.pick(self.gates)
        writes = []
        for f in self.draw(st.lists(st.sampled_from(INT_FIELDS + ("inbound",)), max_size=3, unique=True)):
            if f == "inbound":
                value = self.cond(scope, 1) if self.chance(7) else self.expr(scope, 1)
            else:
                value = self.expr(scope)
            writes.append(f"{f}={value}")
        packet = f"pkt.rewrite({', '.join(writes)})" if writes else "pkt"
        return f"ctx.emit({packet}, {gate!r})"


_NAMESPACE_NAMES = ("NF", "Bits", "Counter", "Flow", "Map", "Pool", "Set")


def compile_model(source: str) -> type:
    """The NF class `Generated` defined by `source` (registered with linecache, so tracebacks
    and `inspect` show its lines)."""
    filename = f"<generated-model-{next(_COUNTER)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {"__name__": "generated_model"}
    exec(compile(source, filename, "exec"), namespace)
    _forget_old(filename)
    return namespace["Generated"]


_RECENT: list[str] = []


def _forget_old(filename: str, keep: int = 256) -> None:
    _RECENT.append(filename)
    while len(_RECENT) > keep:
        linecache.cache.pop(_RECENT.pop(0), None)


@st.composite
def models(draw, max_statements: int = 6, max_depth: int = 2, max_expr_depth: int = 2, max_choices: int = 2,
           max_pool: int = 3, final_emit: bool = False, nondeterministic: bool = False) -> Generated:
    """`final_emit`: the handler ends with an output of some state-dependent value (so failover
    checks are seldom vacuous); `nondeterministic`: choices are likely (so they are too)."""
    w = _Writer(draw, _Config(max_statements, max_depth, max_expr_depth, max_choices, max_pool, nondeterministic))
    w.declare()
    scope = _Scope()
    body = w.block(scope, 0, "        ", max_statements)
    if final_emit and not body[-1].lstrip().startswith("return"):
        stateful = [f"self.{d.name}" for d in w.decls if d.kind == "counter"] + scope.ints
        value = w.pick(stateful) if stateful and w.chance(6) else w.expr(scope)
        body.append(f"        ctx.emit(pkt.rewrite({w.pick(INT_FIELDS)}={value}), {w.pick(w.gates)!r})")
    source = (HEADER + "class Generated(NF):\n" + "\n".join(w.render_decls()) + "\n\n"
              + "    def handle(self, pkt, ctx):\n" + "\n".join(body) + "\n")
    return Generated(source, compile_model(source), sorted(w.constants), w.nchoices > 0)


def _field_values(model: Generated, width: int) -> list[int]:
    mask = (1 << width) - 1
    near = {c + d for c in model.constants for d in (-1, 0, 1)}
    return sorted({v & mask for v in near | set(boundaries(width)) | {1, 2}})


def packets(model: Generated):
    """Input packets for `model`: field values near the model's constants and the field's
    boundaries, sometimes anything the field holds."""
    def value(f):
        w = PACKET_WIDTHS[f]
        return st.one_of(st.sampled_from(_field_values(model, w)), st.integers(0, (1 << w) - 1))
    return st.builds(Packet, **{f: value(f) for f in INT_FIELDS}, inbound=st.booleans())


def small_packets(model: Generated):
    """Input packets for a small universe: near the model's constants only."""
    return st.builds(Packet, **{f: st.sampled_from(_field_values(model, PACKET_WIDTHS[f])) for f in INT_FIELDS},
                     inbound=st.booleans())


def sample(strategy, n: int) -> list:
    """n values drawn from a strategy, the same ones on every run (for tests that loop over a corpus)."""
    out = []

    @settings(max_examples=n, **BOUNDED)
    @given(strategy)
    def collect(x):
        out.append(x)
    collect()
    return out
