"""Sets and counters as declared state: concrete and symbolic interpreters, proofs and explicit
enumeration agree. Deterministic NFs are safe under asynchronous replication (replay rebuilds
their state) and unsafe without protection."""
import pytest

from nfproof.models.api import NF, Bits, Counter, Flow, Packet, Pool, Set, TCP, addr, flags
from nfproof.models.concrete import initial_state, seeded, step
from nfproof.models.strategy import Strategy
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover

LAN, REMOTE = addr("10.0.0.1"), addr("198.51.100.1")


class SeenFirewall(NF):
    """Theory of operation: outbound packets pass and open their flow for replies; an inbound
    packet passes only if its flow was opened (no timeouts)."""

    name = "seen-firewall"
    gates = ("wan", "lan")
    opened = Set(Flow)

    def handle(self, pkt, ctx):
        if pkt.inbound:
            if pkt.flow in self.opened:
                return ctx.emit(pkt, "lan")
            return ctx.drop("not opened")
        self.opened.add(Flow(pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport))
        ctx.emit(pkt, "wan")


class Numberer(NF):
    """Theory of operation: stamps each packet's TCP flags with a 2-bit packet counter (which wraps)."""

    name = "numberer"
    count = Counter(Bits(2, "Count2"))

    def handle(self, pkt, ctx):
        self.count += 1
        ctx.emit(pkt.rewrite(flags=self.count), "out")


OUT = Packet(TCP, LAN, 1000, REMOTE, 80, flags("S"))
REPLY = Packet(TCP, REMOTE, 80, LAN, 1000, flags("SA"), inbound=True)
STRANGER = Packet(TCP, REMOTE, 81, LAN, 1000, flags("SA"), inbound=True)


def run(nf_cls, packets):
    state = initial_state(nf_cls)
    return [step(nf_cls, state, p, seeded(0)).outputs for p in packets]


def test_concrete_set_and_counter():
    assert run(SeenFirewall, [REPLY, OUT, REPLY, STRANGER]) == [[], [("wan", OUT)], [("lan", REPLY)], []]
    stamps = [outs[0][1].flags for outs in run(Numberer, [OUT] * 5)]
    assert stamps == [1, 2, 3, 0, 1]  # wraps at 2 bits


@pytest.mark.parametrize("nf_cls", [SeenFirewall, Numberer])
@pytest.mark.parametrize("strategy,verdict", [
    ("none", "counterexample"), ("stateful.async", "proved"), ("stateful.checkpoint:2", "proved"),
    ("stateful.sync", "proved"), ("stateless.batch:3", "proved"),
])
def test_deterministic_nfs_survive_replay(nf_cls, strategy, verdict):
    assert verify_failover(nf_cls, Strategy.parse(strategy), 5).verdict == verdict


@pytest.mark.parametrize("nf_cls,universe", [(SeenFirewall, [OUT, REPLY, STRANGER]), (Numberer, [OUT])])
@pytest.mark.parametrize("strategy", ["none", "stateful.async", "stateful.checkpoint:2", "stateful.commit:2"])
def test_enumeration_agrees(nf_cls, universe, strategy):
    s = Strategy.parse(strategy)
    for bound in (1, 2, 3):
        explicit = enumerate_failover(nf_cls, s, bound, universe)
        symbolic = verify_failover(nf_cls, s, bound)
        assert symbolic.verdict != "unknown" or symbolic.reason.startswith("vacuous")
        assert (explicit is None) == (symbolic.verdict != "counterexample"), (strategy, bound)
        if explicit is not None:
            assert len(explicit.run.inputs) == len(symbolic.counterexample.run.inputs)


class Lottery(NF):
    """Theory of operation: a flow's first packet wins or loses a coin toss (a choice); a winning
    flow is remembered and all its packets pass, a losing packet is dropped. Its outputs reveal a
    won toss but not a lost one, and a lost toss replayed after a failover may be won: the egress
    then lets out an output of an input whose release had none."""

    name = "lottery"
    coin = Pool(base=0, size=2, kind=Bits(1, "Bit"))
    won = Set(Flow)

    def handle(self, pkt, ctx):
        if pkt.flow in self.won:
            return ctx.emit(pkt, "out")
        if ctx.choose(self.coin.all()) == 1:
            self.won.add(pkt.flow)
            return ctx.emit(pkt, "out")
        ctx.drop("lost")


def test_egress_lets_out_a_replayed_output_it_never_saw():
    from nfproof.models.concrete import scripted
    from nfproof.verify.simulate import simulate
    strategy = Strategy.parse("stateful.async")
    cut = strategy.cuts(1)[-1]  # crash after input 1 was applied, sent and released (with no output)
    run = simulate(Lottery, strategy, [OUT], cut, 0, lambda i: scripted([0]), lambda i: scripted([1]))
    assert run.observed_outputs == [("out", OUT)]
    # the failure-free run that wins the toss explains it; the check must prove this, not guess
    assert verify_failover(Lottery, strategy, 1).verdict == "proved"


LOTTERY_UNIVERSE = [OUT, OUT.rewrite(flags=flags("A")), Packet(TCP, addr("10.0.0.2"), 1000, REMOTE, 80, flags("S"))]


@pytest.mark.parametrize("strategy,log", [("none", False), ("stateful.async", False), ("stateful.async", True),
                                          ("stateful.checkpoint:2", False), ("stateful.checkpoint:2", True),
                                          ("stateful.sync", False), ("stateful.commit:2", False)])
def test_lottery_enumeration_agrees(strategy, log):
    s = Strategy.parse(strategy)
    for bound in (1, 2):
        explicit = enumerate_failover(Lottery, s, bound, LOTTERY_UNIVERSE, log_choices=log)
        symbolic = verify_failover(Lottery, s, bound, log_choices=log)
        assert symbolic.verdict != "unknown", symbolic.reason
        assert (explicit is None) == (symbolic.verdict == "proved"), (strategy, log, bound)
