"""Adversarial cross-checks of the chain-alone reduction (verify/chain_alone.py): every verdict of
one instance crashing alone against the enumeration of that instance crashing alone
(verify/chain_crash.py `enumerate_instance_crashes`): a "proved" where the enumeration finds an
unexplained run is a false proof; a counterexample must stay unexplained when re-explained.

- Hand-written chains aimed at the steps of the theorem's argument (their NFs are defined in
  bench/verify_chain_alone_fuzz.py, whose random "mixed" chains use them too):
  * an instance with two outputs per input, one to each side (one travelling back towards where
    the packet came from): first, last and in the middle of a chain (in the middle it reaches
    its upstream twice: condition 2 blocks the reduction);
  * a replayed input whose re-execution emits a different number of outputs (a choice of one
    or two), next to a downstream that turns inbound packets around (so a later chain input
    reaches the downstream without crossing the instance) and counts, or drops out-of-order
    labels (order-dependent state): a new output of a replayed released input arrives late;
  * a clocked instance (an idle timeout, a timestamp) next to unclocked ones, with the failover
    time F and the max stall S in S < F, S = F, S > F; two clocked instances (condition 3);
  * a member that is itself a chain's composite;
  * branching graphs: a tee (one packet to two instances), a merge (two branches into one
    order-dependent instance, exclusive per packet) and a shared egress (condition 2 blocks it);
    a diamond (one packet reaches an instance twice) and a tee onto a shared egress (condition 2
    blocks both); the fork of tests/test_chain.py is among the fuzz's bundled chains.
- Each condition is needed: with it dropped, the cross-check finds a false proof on the chain
  made to break it (so the harness has teeth).
- A fixed-seed sample of bench/verify_chain_alone_fuzz.py's random chains.
The sweep is not vacuous: it proves and refutes things both (asserted)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "bench"))

from nfproof.models.api import TCP, Packet
from nfproof.models.chain import Chain
from nfproof.models.strategy import Strategy
from nfproof.verify import chain_alone
from nfproof.verify.chain_alone import obstacles
from nfproof.verify.equivalence import STRICT
from nfproof.verify.induction import reads_clock

import verify_chain_alone_fuzz as fuzz
from verify_chain_alone_fuzz import Burst, Clock, EchoIn, EchoOut, Idle, Latch, Maybe, Mirror, StickyBurst, Tee
from chain_nfs import Count, Pick, Split


NFS = {cls.name: cls for cls in (EchoOut, EchoIn, Burst, Maybe, StickyBurst, Mirror, Latch, Idle, Clock, Tee, Count, Pick,
                                 Split)}

OUT1, OUT2 = Packet(TCP, 1, 1, 2, 80), Packet(TCP, 1, 2, 2, 80)
IN1 = Packet(TCP, 2, 80, 1, 1, inbound=True)
UNIVERSE = [OUT1, OUT2, IN1]


def linear(text):
    return lambda: Chain.parse(text, NFS.__getitem__)


def graph(kind):
    """Branching graphs with the Python API (tests/test_chain.py `branching` is the fork)."""
    def build():
        chain = Chain(kind)
        if kind == "tee":  # one packet to two instances, each to its own egress
            for name, cls in (("tee", Tee), ("pick", Pick), ("burst", Burst)):
                chain.add(name, cls)
            chain.connect("tee.left", "pick")
            chain.connect("tee.right", "burst")
            chain.connect("pick.down", "tee")
            chain.connect("burst.down", "tee")
            chain.egress("pick.up", "east")
            chain.egress("burst.up", "west")
            chain.egress("tee.back", "inside")
            chain.ingress("inside", "tee")
            chain.ingress("outside", "pick")
        elif kind == "merge":  # split -> pick | count -> latch: one packet per chain input reaches the latch
            for name, cls in (("split", Split), ("pick", Pick), ("count", Count), ("latch", Latch)):
                chain.add(name, cls)
            chain.connect("split.left", "pick")
            chain.connect("split.right", "count")
            chain.connect("pick.up", "latch")
            chain.connect("count.up", "latch")
            chain.connect("latch.down", "pick")
            chain.connect("pick.down", "split")
            chain.connect("count.down", "split")
            chain.egress("latch.up", "outside")
            chain.egress("split.back", "inside")
            chain.ingress("inside", "split")
            chain.ingress("outside", "latch")
        elif kind == "diamond":  # tee -> count -> mirror and tee -> mirror: the mirror twice per packet
            for name, cls in (("tee", Tee), ("count", Count), ("mirror", Mirror)):
                chain.add(name, cls)
            chain.connect("tee.left", "count")
            chain.connect("tee.right", "mirror")
            chain.connect("count.up", "mirror")
            chain.connect("count.down", "tee")
            chain.connect("mirror.down", "count")
            chain.egress("mirror.up", "outside")
            chain.egress("tee.back", "inside")
            chain.ingress("inside", "tee")
            chain.ingress("outside", "mirror")
        elif kind == "tee-shared":  # tee -> count -> egress and tee -> the same egress
            for name, cls in (("tee", Tee), ("count", Count)):
                chain.add(name, cls)
            chain.connect("tee.left", "count")
            chain.connect("count.down", "tee")
            chain.egress("count.up", "outside")
            chain.egress("tee.right", "outside")
            chain.egress("tee.back", "inside")
            chain.ingress("inside", "tee")
            chain.ingress("outside", "count")
        else:  # shared: split -> pick | burst, both onto one egress
            for name, cls in (("split", Split), ("pick", Pick), ("burst", Burst)):
                chain.add(name, cls)
            chain.connect("split.left", "pick")
            chain.connect("split.right", "burst")
            chain.connect("pick.down", "split")
            chain.connect("burst.down", "split")
            chain.egress("pick.up", "outside")
            chain.egress("burst.up", "outside")
            chain.egress("split.back", "inside")
            chain.ingress("inside", "split")
            chain.ingress("outside", "pick")
        return chain.validate()
    return build


def nested():
    inner = Chain.parse("pick>count", NFS.__getitem__).as_nf()
    return Chain.parse("ab>mirror", {"ab": inner, "mirror": Mirror}.__getitem__)


TARGETED = {
    # two outputs per input, one to each side
    "echo-out>count": (linear("echo-out>count"), UNIVERSE),
    "echo-out>pick": (linear("echo-out>pick"), UNIVERSE),
    "count>echo-in": (linear("count>echo-in"), UNIVERSE),
    "count>echo-out>pick": (linear("count>echo-out>pick"), UNIVERSE),
    # a replay emits another number of outputs; a later chain input reaches the downstream only
    "maybe>mirror": (linear("maybe>mirror"), UNIVERSE),
    "maybe>latch": (linear("maybe>latch"), [OUT1, Packet(TCP, 2, 80, 1, 1, label=0, inbound=True)]),
    "burst>mirror": (linear("burst>mirror"), UNIVERSE),
    "burst>latch": (linear("burst>latch"), [OUT1, Packet(TCP, 2, 80, 1, 1, label=0, inbound=True)]),
    "sticky-burst>mirror": (linear("sticky-burst>mirror"), UNIVERSE),
    "pick>burst>mirror": (linear("pick>burst>mirror"), [OUT1, IN1]),
    # clocked next to unclocked
    "idle>pick": (linear("idle>pick"), [OUT1, IN1]),
    "pick>idle": (linear("pick>idle"), [OUT1, OUT2]),
    "count>clock>mirror": (linear("count>clock>mirror"), [OUT1, IN1]),
    "clock>burst>mirror": (linear("clock>burst>mirror"), [OUT1, IN1]),
    "idle>clock": (linear("idle>clock"), [OUT1, OUT2]),
    # branching
    "tee": (graph("tee"), UNIVERSE),
    "merge": (graph("merge"), UNIVERSE),
    "shared": (graph("shared"), UNIVERSE),
    "clock>idle": (linear("clock>idle"), [OUT1, OUT2]),
    # a member that is a chain itself (its composite, failing as one unit)
    "(pick>count)>mirror": (nested, UNIVERSE),
    "diamond": (graph("diamond"), [OUT1, OUT2]),
    "tee-shared": (graph("tee-shared"), [OUT1, OUT2]),
}
STRATEGIES = [("none", False), ("stateful.async", False), ("stateful.async", True), ("stateful.sync", False),
              ("stateful.checkpoint:1", False), ("stateful.checkpoint:2", True), ("stateful.commit:2", False),
              ("stateless.batch:2", False)]
# clocked chains: (F, S) with S < F, S = F and S > F, under fewer strategies (their enumeration is longer)
TIMES = {"idle>pick": [(2, 1), (2, 3)], "pick>idle": [(2, 2)], "count>clock>mirror": [(1, 0), (1, 2)],
         "clock>burst>mirror": [(1, 1)], "idle>clock": [(1, 1)], "clock>idle": [(1, 1)]}
CLOCKED_STRATEGIES = [("none", False), ("stateful.async", False), ("stateful.async", True), ("stateful.sync", False),
                      ("stateful.checkpoint:2", True), ("stateful.commit:2", False)]
CASES = [(c, s, lc, fs) for c in TARGETED for s, lc in (CLOCKED_STRATEGIES if c in TIMES else STRATEGIES)
         for fs in TIMES.get(c, [(0, 0)])]
TALLY: dict = {}
PER_CHAIN: dict = {}


def agree(nf, chain, strategy, log, bound, universe, f, s):
    """Every instance: check_alone against the enumeration (check_instance asserts nothing; the
    problems it lists are the disagreements)."""
    timed = reads_clock(nf)
    gaps = tuple(sorted({0, 1, f, f + s + 1})) if timed else None
    out = []
    for instance in chain.members:
        r = fuzz.check_instance(nf, chain, instance, strategy, log, bound, universe, timed, f, s, gaps, 60)
        assert not r["problems"], (r["problems"], r["reason"], r["enumerated"] or r.get("story"))
        TALLY[r["verdict"]] = TALLY.get(r["verdict"], 0) + 1
        out.append(r)
    return out


@pytest.mark.parametrize("chain_name,strategy,log,times", CASES,
                         ids=[f"{c}-{s}{'-log' if lc else ''}{'-F%dS%d' % fs if fs != (0, 0) else ''}"
                              for c, s, lc, fs in CASES])
def test_targeted_chains_agree_with_enumeration(chain_name, strategy, log, times):
    build, universe = TARGETED[chain_name]
    chain = build()
    nf = chain.as_nf()
    f, s = times
    for r in agree(nf, chain, Strategy.parse(strategy), log, 2, universe, f, s):
        PER_CHAIN.setdefault(chain_name, {}).setdefault((strategy, log, times), {})[r["instance"]] = r["verdict"]


def test_targeted_conditions():
    """The conditions the targeted chains are meant to meet or break (so they test what they say)."""
    def blocked(name, instance):
        return obstacles(TARGETED[name][0]().as_nf(), instance, STRICT)
    assert blocked("echo-out>count", "echo-out") == [] and blocked("count>echo-in", "echo-in") == []
    assert any("count may handle two packets" in o for o in blocked("count>echo-out>pick", "echo-out"))
    assert blocked("maybe>mirror", "maybe") == [] and blocked("maybe>latch", "maybe") == []
    assert any("mirror may handle two packets" in o for o in blocked("burst>mirror", "burst"))
    assert blocked("idle>pick", "idle") == [] and blocked("count>clock>mirror", "clock") == []
    assert any("read the clock" in o for o in blocked("idle>clock", "idle"))
    assert blocked("tee", "pick") == [] and blocked("merge", "latch") == []
    assert any("egress outside is fed by" in o for o in blocked("shared", "pick"))


def test_targeted_verdicts_decide_both_ways():
    """(after the sweep above in file order) what the theorem predicts where it is clear-cut."""
    if not PER_CHAIN:
        pytest.skip("run with the sweep")
    v = PER_CHAIN
    # a tag chosen once and remembered, both outputs carry it: safe under sync, not under async
    assert v["echo-out>count"][("stateful.sync", False, (0, 0))]["echo-out"] == "proved"
    assert v["echo-out>count"][("stateful.async", False, (0, 0))]["echo-out"] == "counterexample"
    assert v["count>echo-in"][("stateful.sync", False, (0, 0))]["echo-in"] == "proved"
    # the replayed released input's new output arrives late: never proved where a replay of a
    # released input exists (async, checkpoint), proved where none does (sync protects first)
    for strategy in (("stateful.async", False, (0, 0)), ("stateful.checkpoint:1", False, (0, 0))):
        assert v["maybe>mirror"][strategy]["maybe"] != "proved", strategy
        assert v["maybe>latch"][strategy]["maybe"] != "proved", strategy
    assert v["maybe>mirror"][("stateful.sync", False, (0, 0))]["maybe"] == "proved"
    # in the middle, turning around reaches the upstream twice: no proof
    assert all(r["echo-out"] != "proved" for r in v["count>echo-out>pick"].values())


def _unaligned(monkeypatch):
    real = chain_alone.verify_failover
    monkeypatch.setattr(chain_alone, "verify_failover", lambda *a, **k: real(*a, **dict(k, aligned=False)))


def _unblocked(monkeypatch):
    monkeypatch.setattr(chain_alone, "obstacles", lambda *a, **k: [])


@pytest.mark.parametrize("broken,chain_name,instance,strategy,times", [
    (_unaligned, "maybe>mirror", "maybe", "stateful.async", (0, 0)),    # (d): a replayed input's late new output
    (_unblocked, "diamond", "count", "stateful.sync", (0, 0)),          # 2: the mirror handles two packets
    (_unblocked, "tee-shared", "count", "stateful.sync", (0, 0)),       # 2: an egress with two feeders
    (_unblocked, "clock>idle", "clock", "stateful.sync", (1, 1)),       # 3: two instances read the clock
], ids=["aligned", "one-packet", "one-feeder", "one-clock"])
def test_the_cross_check_catches_the_reduction_without_a_condition(monkeypatch, broken, chain_name, instance, strategy,
                                                                   times):
    """Each condition of the theorem is needed, and the cross-check is strong enough to show it:
    with the condition dropped (references not aligned; obstacles ignored), check_alone proves an
    instance that the enumeration refutes on the chain made to break that condition."""
    build, universe = TARGETED[chain_name]
    chain = build()
    nf = chain.as_nf()
    f, s = times
    timed = reads_clock(nf)
    gaps = tuple(sorted({0, 1, f, f + s + 1})) if timed else None
    sound = fuzz.check_instance(nf, chain, instance, Strategy.parse(strategy), False, 2, universe, timed, f, s, gaps, 60)
    assert sound["verdict"] != "proved" and sound["enumerated"] is not None and not sound["problems"]
    broken(monkeypatch)
    r = fuzz.check_instance(nf, chain, instance, Strategy.parse(strategy), False, 2, universe, timed, f, s, gaps, 60)
    assert r["verdict"] == "proved" and any(p.startswith("FALSE PROOF") for p in r["problems"]), r


def test_sample_of_the_fuzz_agrees():
    """A fixed-seed sample of the bench's random chains (every kind), in process."""
    pool = fuzz.draw_pool(14, 7)
    verdicts = {}
    for case in fuzz.make_cases(14, 7, pool):
        results = []
        fuzz.run_case(case, 30, 0, results.append)
        for r in results:
            if "verdict" in r:
                assert not r["problems"], fuzz.describe(case) + "\n" + str(r)
                verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
            assert "error" not in r, fuzz.describe(case) + "\n" + r.get("traceback", "")
    assert verdicts.get("proved", 0) >= 5 and verdicts.get("counterexample", 0) >= 3, verdicts


def test_the_sweep_decides_both_ways():
    if not TALLY:
        pytest.skip("run with the sweep")
    assert TALLY.get("proved", 0) >= 20 and TALLY.get("counterexample", 0) >= 10, TALLY
