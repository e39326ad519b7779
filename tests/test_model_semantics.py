"""Models that stress the corners of the two interpreters and of the failover encoding (found in
review): several outputs per packet, choices the outputs reveal only partly, deleting absent
keys, truthiness, narrowing stores, overflowing arithmetic, boolean equality. For each, the
concrete and symbolic interpreters agree on every output, and the Z3 verdict agrees with the
explicit enumeration."""
import pytest
from hypothesis import given, settings, strategies as st
import z3

from nfproof.models.api import NF, Bits, Counter, Domain, Flow, Map, Packet, Pool, Port, Set, TCP, flags
from nfproof.models.concrete import initial_state as concrete_state, step as concrete_step
from nfproof.models.strategy import Strategy
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover
from nfproof.verify.symbolic import initial_state as symbolic_state, packet_terms, step as symbolic_step

P = Packet(TCP, 1, 1, 2, 80)
COIN = Bits(1, "Coin")


class TwoOut(NF):
    """Stateless: choice 0 emits the packet, choice 1 two rewritten copies."""
    name = "two-out"

    def handle(self, pkt, ctx):
        if ctx.choose(Domain([(0, True), (1, True)], COIN)) == 0:
            return ctx.emit(pkt, "out")
        ctx.emit(pkt.rewrite(dport=1), "out")
        ctx.emit(pkt.rewrite(dport=2), "out")


def hidden(a, b):
    class Hidden(NF):
        """The first packet picks x in 0..3 and reveals only x == a; later ones only x == b."""
        name = "hidden"
        seen = Counter(Bits(4, "C"))
        x = Counter(Bits(4, "C"))

        def handle(self, pkt, ctx):
            if self.seen == 0:
                self.x = ctx.choose(Domain([(v, True) for v in range(4)], Bits(4, "C")))
                self.seen = 1
                return ctx.emit(pkt.rewrite(dport=101 if self.x == a else 100), "out")
            ctx.emit(pkt.rewrite(dport=103 if self.x == b else 102), "out")
    return Hidden


class Deleter(NF):
    """A port per flow, chosen; a FIN deletes the mapping (which may be absent)."""
    name = "deleter"
    ports = Pool(base=1, size=2)
    by_sport = Map(Port, Port)

    def handle(self, pkt, ctx):
        if pkt.flags == flags("F"):
            del self.by_sport[pkt.sport]
            return ctx.drop("fin")
        port = self.by_sport.get(pkt.sport)
        if port is None:
            port = ctx.choose(self.ports.all())
            self.by_sport[pkt.sport] = port
        ctx.emit(pkt.rewrite(dport=port), "out")


class Truthy(NF):
    """A counter tested for truthiness."""
    name = "truthy"
    n = Counter(Bits(8, "C8"))

    def handle(self, pkt, ctx):
        ctx.emit(pkt.rewrite(dport=1 if self.n else 0), "out")
        self.n = 1


class Narrow(NF):
    """Stores a 32-bit address in a 16-bit map value and compares it back."""
    name = "narrow"
    first = Map(Port, Port)

    def handle(self, pkt, ctx):
        v = self.first.get(0)
        if v is None:
            self.first[0] = pkt.src
            return ctx.emit(pkt.rewrite(dport=0), "out")
        ctx.emit(pkt.rewrite(dport=1 if v == pkt.src else 2), "out")


class Arithmetic(NF):
    """Sums and differences that overflow the field width before they are compared or emitted."""
    name = "arithmetic"

    def handle(self, pkt, ctx):
        up = 1 if pkt.sport + 1 > pkt.sport else 2
        down = 3 if pkt.sport - 1 < 0 else 4
        ctx.emit(pkt.rewrite(dport=up + down, sport=pkt.sport + 1, flags=pkt.inbound == False), "out")


def outputs_agree(nf_cls, packets):
    cstate, sstate = concrete_state(nf_cls), symbolic_state(nf_cls)
    for pkt in packets:
        result = concrete_step(nf_cls, cstate, pkt, lambda options: 1 if 1 in options else options[0])
        concrete, made = result.outputs, result.choices  # the symbolic step makes the same choices
        sym = symbolic_step(nf_cls, sstate, packet_terms(pkt), lambda k, w: z3.BitVecVal(made[k] if k < len(made) else 0, w))
        sstate = sym.state
        got = [tuple(z3.simplify(slot.fields[f]).as_long() for f in ("sport", "dport", "flags"))
               for slot in sym.outputs if z3.is_true(z3.simplify(slot.present))]
        assert got == [(p.sport, p.dport, p.flags) for _, p in concrete], (nf_cls.name, pkt)


@pytest.mark.parametrize("nf_cls,packets", [
    (Truthy, [P, P]), (Narrow, [P.rewrite(src=0x10001)] * 2), (Narrow, [P.rewrite(src=0x10001), P.rewrite(src=1)]),
    (Arithmetic, [P.rewrite(sport=65535), P.rewrite(sport=0), P.rewrite(sport=7, inbound=True)]),
    (TwoOut, [P]), (Deleter, [P.rewrite(flags=flags("F")), P]),
])
def test_concrete_and_symbolic_interpreters_agree(nf_cls, packets):
    outputs_agree(nf_cls, packets)


CASES = [(TwoOut, [P]), (hidden(0, 1), [P]), (hidden(2, 1), [P]), (Truthy, [P]),
         (Deleter, [P, P.rewrite(flags=flags("F"))])]


@pytest.mark.parametrize("nf_cls,universe", CASES, ids=lambda c: getattr(c, "name", ""))
@pytest.mark.parametrize("strategy", ["none", "stateful.async", "stateful.checkpoint:2", "stateful.sync"])
def test_verdicts_agree_with_enumeration(nf_cls, universe, strategy):
    s = Strategy.parse(strategy)
    for bound in (1, 2):
        explicit = enumerate_failover(nf_cls, s, bound, universe)
        symbolic = verify_failover(nf_cls, s, bound)
        assert symbolic.verdict != "unknown" or symbolic.reason.startswith("vacuous"), symbolic.reason
        if explicit is not None:  # a violation within the universe is one for every packet
            assert symbolic.verdict == "counterexample", (strategy, bound)
        elif symbolic.verdict == "counterexample":  # outside the universe: it must be confirmed and real
            assert symbolic.counterexample.explanation.explained is False


class Clocked(NF):
    """Reads the clock, then makes a choice."""
    name = "clocked"

    def handle(self, pkt, ctx):
        ctx.now()
        ctx.emit(pkt.rewrite(dport=ctx.choose(Domain([(0, True), (7, True)], Port))), "out")


def test_logged_choices_and_clock_reads_are_replayed_separately():
    from nfproof.models.concrete import scripted
    from nfproof.verify.simulate import simulate
    strategy = Strategy.parse("stateful.async")
    cut = next(c for c in strategy.cuts(1) if c.released == 1)
    run = simulate(Clocked, strategy, [P], cut, 0, lambda i: scripted([7]), lambda i: scripted([0]), log_choices=True)
    assert run.primary_choices == {1: [7]} and run.standby_choices == {1: [7]}


class Stray(NF):
    """Emits on a gate it did not declare."""
    name = "stray"

    def handle(self, pkt, ctx):
        ctx.emit(pkt, "elsewhere")


def test_model_errors_are_reported_by_both_interpreters():
    from nfproof.models.api import ModelError
    with pytest.raises(ModelError, match="undeclared gate 'elsewhere'"):
        concrete_step(Stray, concrete_state(Stray), P, lambda o: o[0])
    with pytest.raises(ModelError, match="undeclared gate 'elsewhere'"):
        symbolic_step(Stray, symbolic_state(Stray), packet_terms(P), lambda k, w: z3.BitVecVal(0, w))
    assert verify_failover(Clocked, Strategy.parse("stateful.sync"), 1).verdict == "proved"  # clocks are verified now


class Hashing(NF):
    """Every integer operator a model may use, on packet fields, with negative intermediates."""
    name = "hashing"

    def handle(self, pkt, ctx):
        backend = 8000 + (pkt.src ^ pkt.dst) % 4
        mixed = (pkt.sport * 3 - pkt.dport) // 7 + (-pkt.sport) % 5 + (~pkt.dport >> 2) + (pkt.flags << 3)
        ctx.emit(pkt.rewrite(dport=backend, sport=mixed, flags=(pkt.sport - pkt.dport) % 256), "out")


class InThenSubscript(NF):
    """`k in m` then `m[k]`: the second test must not fork again."""
    name = "in-then-subscript"
    ports = Pool(base=1000, size=2)
    by_flow = Map(Flow, Port)

    def handle(self, pkt, ctx):
        if pkt.flow in self.by_flow:
            port = self.by_flow[pkt.flow]
        else:
            port = ctx.choose(self.ports.all())
            self.by_flow[pkt.flow] = port
        ctx.emit(pkt.rewrite(sport=port), "out")


@settings(max_examples=60, deadline=None)
@given(src=st.integers(0, 2**32 - 1), dst=st.integers(0, 2**32 - 1), sport=st.integers(0, 65535),
       dport=st.integers(0, 65535), fl=st.integers(0, 255))
def test_integer_operators_agree(src, dst, sport, dport, fl):
    outputs_agree(Hashing, [Packet(TCP, src, sport, dst, dport, fl)])


def test_membership_then_subscript():
    outputs_agree(InThenSubscript, [P, P, P.rewrite(sport=9)])
    assert verify_failover(InThenSubscript, Strategy.parse("stateful.sync"), 2).verdict == "proved"


# -- found by the second review --------------------------------------------------------------------

class Alloc(NF):
    """Each packet takes a fresh port from a 2-port pool, marks it used and emits it."""
    name = "alloc"
    pool = Pool(base=1, size=2)
    used = Set(Port)

    def handle(self, pkt, ctx):
        port = ctx.choose(self.pool.free(self.used))
        if port is None:
            return ctx.drop("full")
        self.used.add(port)
        ctx.emit(pkt.rewrite(sport=port), "out")


class InboundNat(NF):
    """A NAT behind `pkt.inbound == 1` (a bool compared with an int, as Python allows)."""
    name = "inbound-nat"
    ports = Pool(base=1000, size=2)
    by_flow = Map(Flow, Port)

    def handle(self, pkt, ctx):
        if pkt.inbound == 1:
            port = self.by_flow.get(pkt.flow)
            if port is None:
                port = ctx.choose(self.ports.all())
                self.by_flow[pkt.flow] = port
            return ctx.emit(pkt.rewrite(sport=port), "out")
        ctx.emit(pkt, "out")


class TwoWidths(NF):
    """The first choice comes from a 16-bit or an 8-bit domain depending on the path."""
    name = "two-widths"
    wide = Pool(base=0, size=2, kind=Port)
    narrow = Pool(base=0, size=2, kind=Bits(8, "B8"))
    first = Map(Bits(8, "K"), Port)

    def handle(self, pkt, ctx):
        v = self.first.get(0)
        if v is None:
            v = ctx.choose(self.wide.all() if pkt.proto == TCP else self.narrow.all())
            self.first[0] = v
        ctx.emit(pkt.rewrite(dport=v), "out")


INBOUND = P.rewrite(inbound=True)


@pytest.mark.parametrize("nf_cls,strategy,log,universe", [
    (Alloc, Strategy.parse("stateful.checkpoint:1").mutated("replay-protected-input"), True, [P]),
    (Alloc, Strategy.parse("stateful.sync").mutated("replay-protected-input"), True, [P]),
    (Alloc, Strategy.parse("stateful.async"), False, [P]),
    (InboundNat, Strategy.parse("stateful.async"), False, [INBOUND, P]),
    (InboundNat, Strategy.parse("none"), False, [INBOUND, P]),
    (TwoWidths, Strategy.parse("stateful.async"), False, [P, P.rewrite(proto=17)]),
], ids=lambda x: getattr(x, "name", str(x)))
def test_review_cases_agree_with_enumeration(nf_cls, strategy, log, universe):
    for bound in (1, 2, 3):
        explicit = enumerate_failover(nf_cls, strategy, bound, universe, log_choices=log)
        symbolic = verify_failover(nf_cls, strategy, bound, log_choices=log, unbounded=True)
        if explicit is not None:
            assert symbolic.verdict == "counterexample", (bound, symbolic.reason)
        else:
            assert symbolic.verdict != "counterexample" or not symbolic.counterexample.explanation.explained


def test_bools_compute_as_integers():
    from nfproof.verify.symbolic import Path, SymBool
    flag = SymBool(z3.Bool("f"), Path(()))
    for expr, concrete in [(lambda b: b == 1, lambda b: b == 1), (lambda b: b + 2, lambda b: b + 2),
                           (lambda b: 1 != b, lambda b: 1 != b), (lambda b: b * 3 - 1, lambda b: b * 3 - 1)]:
        for value in (False, True):
            sym = expr(flag).t
            got = z3.simplify(z3.substitute(sym, (flag.t, z3.BoolVal(value))))
            want = concrete(value)
            assert (z3.is_true(got) == want if isinstance(want, bool) else got.as_signed_long() == want), (value, want)
