"""The compositional symbolic step of a chain (verify/symbolic.py `_chain_step`: one symbolic step
per member visit) is the very step the path-by-path execution of ChainNF.handle gives
(`compose=False`): Z3 proves the two equal -- next state, outputs slot by slot, validity of the
choices -- from an arbitrary state (array constants: every reachable state and more), for an
arbitrary packet and the same choice variables. The chains cover every routing shape the
composite has: linear chains both ways, a branching graph, a member that turns packets around,
extra gates (a second output that may be absent), two outputs of one member followed to the
same chooser (choices numbered across visits), choosers in sequence, nested composites, clocks,
and the bundled firewall>nat>lb."""
from __future__ import annotations

import pytest
import z3

from nfproof.models import lookup as bundled_lookup
from nfproof.models.api import NF, Bits, Counter, Map, Pool, Port
from nfproof.models.chain import Chain, ChainError
from nfproof.verify.induction import _arbitrary_state
from nfproof.verify.symbolic import TIME_WIDTH, Slot, step, symbolic_packet

from chain_nfs import lookup as chain_lookup
from test_chain import branching


class Twice(NF):
    """Emits every packet twice on the gate of its direction; the second copy marked (label 1)."""

    name = "twice"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)

    def handle(self, pkt, ctx):
        gate = "down" if pkt.inbound else "up"
        ctx.emit(pkt, gate)
        ctx.emit(pkt.rewrite(label=1), gate)


class Coin(NF):
    """Chooses one of two ports for every packet (no memory) and writes it into dport; drops the
    packet when a Counter says so (every third one), so the number of choices per visit varies."""

    name = "coin"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    ports = Pool(base=7001, size=2)
    seen = Counter(Bits(8, "Count"))

    def handle(self, pkt, ctx):
        self.seen += 1
        if self.seen % 3 == 0:
            return ctx.drop("third")
        port = ctx.choose(self.ports.all())
        ctx.emit(pkt.rewrite(dport=port), "down" if pkt.inbound else "up")


class Sticky(NF):
    """Like chain_nfs.Pick in both directions: a source port's first packet chooses, later ones reuse."""

    name = "sticky"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    backends = Pool(base=9001, size=3)
    by_src = Map(Port, Port)

    def handle(self, pkt, ctx):
        backend = self.by_src.get(pkt.sport)
        if backend is None:
            backend = ctx.choose(self.backends.all())
            self.by_src[pkt.sport] = backend
        ctx.emit(pkt.rewrite(sport=backend), "down" if pkt.inbound else "up")


LOCAL = {cls.name: cls for cls in (Twice, Coin, Sticky)}


def lookup(name: str):
    return LOCAL[name] if name in LOCAL else chain_lookup(name)


def _turnaround() -> Chain:
    return Chain.parse("a>reject>c", chain_lookup)


def _nested() -> Chain:
    inner = Chain.parse("twice>coin", lookup).as_nf()
    return Chain.parse("ab>sticky", {"ab": inner, "sticky": Sticky}.__getitem__)


CHAINS = {
    "firewall>nat>lb": lambda: Chain.parse("firewall>nat>lb", bundled_lookup),
    "nat>nat": lambda: Chain.parse("nat>nat", bundled_lookup),
    "lb>ratelimit": lambda: Chain.parse("lb>ratelimit", bundled_lookup),
    "monitor>csfq-edge>csfq-core": lambda: Chain.parse("monitor>csfq-edge>csfq-core", bundled_lookup),
    "fork": branching,
    "turnaround": _turnaround,
    "alarm>count>pick": lambda: Chain.parse("alarm>count>pick", chain_lookup),
    "twice>coin>sticky": lambda: Chain.parse("twice>coin>sticky", lookup),
    "coin>twice>coin": lambda: Chain.parse("coin>twice>coin", lookup),
    "nested": _nested,
    "inc>drop-zero": lambda: Chain.parse("inc>drop-zero", chain_lookup),
}


def _outputs_equal(a: list[Slot], b: list[Slot]) -> list:
    absent = Slot(z3.BoolVal(False), z3.IntVal(0), {})
    conds = []
    for j in range(max(len(a), len(b))):
        x = a[j] if j < len(a) else absent
        y = b[j] if j < len(b) else absent
        same = [x.gate == y.gate] + [x.fields[f] == y.fields[f] for f in x.fields if f in y.fields]
        conds += [x.present == y.present, z3.Implies(x.present, z3.And(*same))]
    return conds


def steps_agree(nf, prefix="X") -> None:
    state = _arbitrary_state(nf, prefix)
    pkt = symbolic_packet("pkt")
    made: dict = {}

    def choice_var(k, width):
        return made.setdefault(k, z3.BitVec(f"choice{k}", width))
    clock = z3.BitVec("now", TIME_WIDTH)
    composed = step(nf, state, pkt, choice_var, lambda: clock)
    product = step(nf, state, pkt, choice_var, lambda: clock, compose=False)
    same = [composed.valid == product.valid] + _outputs_equal(composed.outputs, product.outputs)
    same += [x == y for name in nf.declarations() for x, y in zip(composed.state[name], product.state[name])]
    solver = z3.Solver()
    solver.set("timeout", 60_000)
    solver.add(z3.Not(z3.And(*same)))
    assert solver.check() == z3.unsat, solver.model() if solver.check() == z3.sat else solver.reason_unknown()
    assert composed.reads_clock == product.reads_clock


@pytest.mark.parametrize("name", list(CHAINS))
def test_compositional_chain_step_equals_path_by_path_step(name):
    steps_agree(CHAINS[name]().as_nf())


@pytest.mark.parametrize("name", ["twice>coin>sticky", "coin>twice>coin", "nat>nat"])
def test_after_a_step_too(name):
    """From a state one composed step deep (the terms the failover check builds on) as well."""
    nf = CHAINS[name]().as_nf()
    start = _arbitrary_state(nf, "Y")
    first = step(nf, start, symbolic_packet("p0"), lambda k, w: z3.BitVec(f"first{k}", w), lambda: z3.BitVecVal(0, TIME_WIDTH))
    state, pkt = first.state, symbolic_packet("pkt")
    made: dict = {}

    def choice_var(k, width):
        return made.setdefault(k, z3.BitVec(f"choice{k}", width))
    composed = step(nf, state, pkt, choice_var)
    product = step(nf, state, pkt, choice_var, compose=False)
    same = [composed.valid == product.valid] + _outputs_equal(composed.outputs, product.outputs)
    same += [x == y for n in nf.declarations() for x, y in zip(composed.state[n], product.state[n])]
    solver = z3.Solver()
    solver.add(z3.Not(z3.And(*same)))
    assert solver.check() == z3.unsat


def test_a_wrong_composition_is_caught():
    """The equivalence check can fail: composing with the choices numbered per member (each
    member's first choice the global choice 0) differs from the concrete call order when two
    visits choose (coin>twice>coin: up to three choices per packet)."""
    import nfproof.verify.symbolic as S
    nf = CHAINS["coin>twice>coin"]().as_nf()
    original = S.merge

    def per_member(pairs):  # every visit's k-th choice: the first option (as if no choice came before)
        return pairs[0][1] if pairs and all(z3.is_bv(t) and t.decl().name().startswith("choice") for _, t in pairs) \
            else original(pairs)
    S.merge = per_member
    try:
        with pytest.raises(AssertionError):
            steps_agree(nf)
    finally:
        S.merge = original


def test_routing_loop_is_the_concrete_error():
    chain = Chain.parse("always-up>always-down", chain_lookup)
    nf = chain.as_nf()
    with pytest.raises(ChainError, match="crossed more than 4 instances"):
        step(nf, _arbitrary_state(nf, "X"), symbolic_packet("p"), lambda k, w: z3.BitVec(f"c{k}", w))
