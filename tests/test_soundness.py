"""Issue 10: the two interpreters give every value the same meaning.

Each reproduction of the issue is checked against explicit enumeration (the verifier must give the
enumerator's verdict, never `proved` where a counterexample exists, never an internal error), or
must be a ModelError naming the model's file and line on both interpreters."""
from __future__ import annotations

import pytest
import z3

from nfproof.models.api import NF, Bits, Counter, Domain, Map, ModelError, Packet, Pool, Port, Set, TCP, select
from nfproof.models.concrete import initial_state as concrete_state, step as concrete_step
from nfproof.models.strategy import Strategy
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover
from nfproof.verify.symbolic import CHOICE_WIDTH, initial_state as symbolic_state, step as symbolic_step, symbolic_packet

P1 = Packet(TCP, 1, 1000, 2, 80)
P2 = Packet(TCP, 1, 1001, 2, 80)


def agree(nf_cls, strategy, bound, universe, log_choices=False):
    """The verifier's verdict equals the enumerator's, and is not unknown."""
    explicit = enumerate_failover(nf_cls, Strategy.parse(strategy), bound, universe, log_choices)
    result = verify_failover(nf_cls, Strategy.parse(strategy), bound, log_choices=log_choices)
    assert result.verdict != "unknown", result.reason
    assert result.verdict == ("counterexample" if explicit else "proved"), (strategy, bound, explicit and explicit.run.inputs)
    return result


# 1. an integer written into the boolean `inbound` field

class IntoInbound(NF):
    name = "into-inbound"
    picks = Map(Port, Bits(8, "B8"))

    def handle(self, pkt, ctx):
        m = self.picks.get(pkt.sport)
        if m is None:
            m = ctx.choose(Domain([(1, True), (2, True)], Bits(8, "B8")))
            self.picks[pkt.sport] = m
        ctx.emit(pkt.rewrite(inbound=m), "out")


def test_int_into_inbound_is_a_model_error_on_both_interpreters():
    with pytest.raises(ModelError, match=r"test_soundness.py:\d+.*inbound"):
        concrete_step(IntoInbound, concrete_state(IntoInbound), P1, lambda vs: vs[0])
    with pytest.raises(ModelError, match=r"test_soundness.py:\d+.*inbound"):
        verify_failover(IntoInbound, Strategy.parse("none"), 2)


class BoolInbound(NF):
    """The same model written as intended: a bool computed from the sticky choice."""
    name = "bool-inbound"
    picks = Map(Port, Bits(8, "B8"))

    def handle(self, pkt, ctx):
        m = self.picks.get(pkt.sport)
        if m is None:
            m = ctx.choose(Domain([(1, True), (2, True)], Bits(8, "B8")))
            self.picks[pkt.sport] = m
        ctx.emit(pkt.rewrite(inbound=m == 2), "out")


@pytest.mark.parametrize("strategy", ["none", "stateful.async", "stateful.checkpoint:2", "stateful.sync"])
def test_bool_inbound_agrees(strategy):
    agree(BoolInbound, strategy, 2, [P1, P2])


# 2. wide values: a 64-bit choice at and above 2**63, and a 72-bit domain

def wide_cookie(base, kind):
    class WideCookie(NF):
        name = "wide-cookie"
        cookies = Pool(base=base, size=2, kind=kind)
        drawn = Counter(Bits(1, "D"))
        flag = Counter(Bits(1, "F"))

        def handle(self, pkt, ctx):
            if self.drawn == 0:
                cookie = ctx.choose(self.cookies.all())
                self.flag = 1 if cookie == base + 1 else 0
                self.drawn = 1
            ctx.emit(pkt.rewrite(dport=self.flag), "out")
    return WideCookie


@pytest.mark.parametrize("base,kind", [(2**63 - 1, Bits(64, "Cookie")), (2**64 + 5, Bits(72, "Cookie72")),
                                       (2**63 - 1, Bits(72, "Cookie72"))])
@pytest.mark.parametrize("strategy", ["none", "stateful.async", "stateful.checkpoint:2", "stateful.sync"])
def test_wide_choices_agree(base, kind, strategy):
    result = agree(wide_cookie(base, kind), strategy, 3, [P1])
    if strategy != "stateful.sync":
        assert result.verdict == "counterexample"


# 3. a 64-bit choice stored and compared right after

class WideCompare(NF):
    name = "wide-compare"
    kept = Map(Bits(8, "K"), Bits(64, "V"))

    def handle(self, pkt, ctx):
        x = self.kept.get(0)
        if x is None:
            x = ctx.choose(Domain([(1, True), (2**63, True)], Bits(64, "V")))
            self.kept[0] = x
        ctx.emit(pkt.rewrite(dport=1 if x > 5 else 2), "out")


@pytest.mark.parametrize("strategy", ["none", "stateful.async", "stateful.sync"])
def test_wide_compare_agrees(strategy):
    agree(WideCompare, strategy, 2, [P1])


@pytest.mark.parametrize("width", [1, 8, 16, 32, 63, 64, 65, 72])
def test_boundary_values_compare_and_compute_as_python(width):
    """A choice at each boundary value, pushed through comparisons, arithmetic and conversions:
    the symbolic step evaluated at that choice equals the concrete step."""
    kind = Bits(width, f"W{width}")
    boundaries = sorted({0, 1, (1 << (width - 1)) - 1, 1 << (width - 1), (1 << width) - 1})

    class Boundary(NF):
        name = "boundary"
        kept = Map(Bits(8, "K"), kind)

        def handle(self, pkt, ctx):
            x = ctx.choose(Domain([(v, True) for v in boundaries], kind))
            self.kept[1] = x + 1          # wraps when stored
            y = self.kept[1]
            z = -x
            ctx.emit(pkt.rewrite(dport=(x > (1 << (width - 1)) - 1) + 2 * (x >= 1 << (width - 1)) + 4 * (y < x)
                                 + 8 * (z < 0) + 16 * (abs(z) == x) + 32 * (x // 3 > 7) + 64 * (x % 5 == 1)
                                 + 128 * (~x < 0) + 256 * ((x >> (width - 1)) == 1) + 512 * ((x ^ y) > x)),
                     "out")
            ctx.emit(pkt.rewrite(src=x, sport=x * 3, flags=x - 1), "out")

    for value in boundaries:
        concrete = concrete_step(Boundary, concrete_state(Boundary), P1, lambda vs, value=value: value)
        sym = symbolic_step(Boundary, symbolic_state(Boundary), symbolic_packet("p"),
                            lambda k, w: z3.BitVec(f"c{k}", w))
        pin = [z3.BitVec("c0", CHOICE_WIDTH) == value] + [z3.BitVec(f"p.{f}", w) == getattr(P1, f)
                                                              for f, w in (("proto", 8), ("src", 32), ("sport", 16),
                                                                           ("dst", 32), ("dport", 16), ("flags", 8))]
        s = z3.Solver()
        s.add(*pin, z3.Not(z3.Bool("p.inbound")), sym.valid)
        assert s.check() == z3.sat
        model = s.model()
        for (gate, pkt), slot in zip(concrete.outputs, sym.outputs):
            for f in ("src", "sport", "dport", "flags"):
                assert model.eval(slot.fields[f]).as_long() == getattr(pkt, f), (width, value, f)


# 4. undeclared state

class CountingFirewall(NF):
    """Meant to admit inbound packets only after an outbound one, counting in a plain attribute."""
    name = "counting-firewall"
    n = 0

    def handle(self, pkt, ctx):
        if not pkt.inbound:
            self.n += 1
            return ctx.emit(pkt, "out")
        if self.n > 0:
            return ctx.emit(pkt, "out")
        ctx.drop("unsolicited")


class ListFirewall(NF):
    name = "list-firewall"
    allowed = []

    def handle(self, pkt, ctx):
        if not pkt.inbound:
            self.allowed.append(pkt.src)
            return ctx.emit(pkt, "out")
        ctx.drop("unsolicited")


@pytest.mark.parametrize("nf_cls,line", [(CountingFirewall, "self.n += 1"), (ListFirewall, "allowed = []")])
def test_undeclared_state_is_a_model_error(nf_cls, line):
    with pytest.raises(ModelError, match=r"test_soundness.py:\d+") as concrete:
        concrete_step(nf_cls, concrete_state(nf_cls), P1, lambda vs: vs[0])
    with pytest.raises(ModelError, match=r"test_soundness.py:\d+") as symbolic:
        verify_failover(nf_cls, Strategy.parse("none"), 2)
    for e in (concrete, symbolic):
        assert "Map, Set or Counter" in str(e.value)


# 5. natural Python: supported on both interpreters, or a model error with file and line

class Natural(NF):
    name = "natural"
    counts = Map(Port, Bits(8, "C"))
    seen = Set(Port)
    table = (7, 11, 13, 17)

    def handle(self, pkt, ctx):
        c = self.counts.get(pkt.sport, 0)
        self.counts[pkt.sport] = c + 1
        if pkt.sport in self.seen:
            self.seen.remove(pkt.sport)
        else:
            self.seen.add(pkt.sport)
        ctx.emit(pkt.rewrite(dport=abs(c - 2) + select(self.table, pkt.sport % 4)
                             + (1 << (pkt.flags & 3)) + 100 * (pkt.sport in self.seen)), "out")


def test_natural_python_agrees_on_both_interpreters():
    universe = [P1, P2, Packet(TCP, 1, 1002, 2, 80, flags=3)]
    for strategy in ("none", "stateful.async", "stateful.sync"):
        agree(Natural, strategy, 2, universe)
    state = concrete_state(Natural)
    outs = [concrete_step(Natural, state, p, lambda vs: vs[0]).outputs[0][1].dport for p in (P1, P1, P2)]
    assert outs == [2 + 7 + 1 + 100, 1 + 7 + 1 + 0, 2 + 11 + 1 + 100]


def unsupported(body):
    namespace = {"NF": NF, "Map": Map, "Port": Port, "Bits": Bits, "Domain": Domain}
    exec(compile("class Bad(NF):\n    name = 'bad'\n    counts = Map(Port, Port)\n"
                 "    def handle(self, pkt, ctx):\n        self.counts[pkt.sport] = 1\n"
                 f"        {body}\n        ctx.emit(pkt, 'out')\n", "/models/bad.py", "exec"), namespace)
    return namespace["Bad"]


@pytest.mark.parametrize("body,advice", [
    ("for k in self.counts: pass", "iterat"),
    ("x = len(self.counts)", "Counter"),
    ("x = list(self.counts.items())", "iterat"),
    ("x = (1, 2, 3)[pkt.sport]", "select("),
    ("x = 5 // (pkt.sport - pkt.sport)", "zero"),
])
def test_unsupported_constructs_are_model_errors_with_file_and_line(body, advice):
    bad = unsupported(body)
    with pytest.raises(ModelError, match=r"/models/bad.py:6") as e:
        verify_failover(bad, Strategy.parse("none"), 1)
    assert advice in str(e.value)
    with pytest.raises(ModelError, match=r"/models/bad.py:6"):
        concrete_step(bad, concrete_state(bad), P1, lambda vs: vs[0])


def test_domain_of_packet_values():
    class Echo(NF):
        """Chooses the source or the destination port as the new destination port, sticky."""
        name = "echo"
        kept = Map(Bits(8, "K"), Port)

        def handle(self, pkt, ctx):
            x = self.kept.get(0)
            if x is None:
                x = ctx.choose(Domain([(pkt.sport, True), (pkt.dport, True)], Port))
                self.kept[0] = x
            ctx.emit(pkt.rewrite(dport=x), "out")

    for strategy in ("none", "stateful.async", "stateful.sync"):
        agree(Echo, strategy, 2, [P1, P2])


def test_domain_values_wider_than_their_kind_are_model_errors_on_both_interpreters():
    class Wide(NF):
        name = "wide"

        def handle(self, pkt, ctx):
            x = ctx.choose(Domain([(pkt.src, True), (3, True)], Bits(16, "P")))
            ctx.emit(pkt.rewrite(dport=x), "out")

    with pytest.raises(ModelError, match=r"test_soundness.py:\d+: a P domain"):
        concrete_step(Wide, concrete_state(Wide), Packet(TCP, 70000, 1, 2, 3), lambda vs: vs[0])
    with pytest.raises(ModelError, match=r"test_soundness.py:\d+: a P domain may hold"):
        verify_failover(Wide, Strategy.parse("none"), 1)


def test_a_domain_of_bools_counts_them_as_integers():
    class Flag(NF):
        name = "flag"
        kept = Counter(Bits(8, "K"))

        def handle(self, pkt, ctx):
            if self.kept == 0:
                self.kept = 1 + ctx.choose(Domain([(pkt.inbound, True), (3, True)], Bits(8, "P")))
            ctx.emit(pkt.rewrite(dport=self.kept), "out")

    for strategy in ("none", "stateful.async", "stateful.sync"):
        agree(Flag, strategy, 2, [P1, Packet(TCP, 2, 80, 1, 1000, inbound=True)])
