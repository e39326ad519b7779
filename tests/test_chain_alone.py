"""One instance crashing alone, proved by reduction (verify/chain_alone.py), cross-checked.

- The failover points a chain leaves an instance at are failover points of the instance alone
  under `alone_strategy`, for every strategy (exhaustive over which chain inputs reach it); the
  check fails for checkpoint:2 taken as itself, which is why it is verified as async.
- The routing condition: firewall>nat>lb meets it, a chain that turns a packet around does not.
- Every "proved" is checked against the enumeration of that instance crashing alone over a small
  universe (arrival gaps for clocked chains): no unexplained run; every counterexample is
  re-explained and is unexplained; where the enumeration finds a violation the verdict is never
  proved, and the sweep has proofs and counterexamples both."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nfproof.models import lookup
from nfproof.models.chain import Chain
from nfproof.models.strategy import STRATEGY_FORMS, Strategy
from nfproof.verify import chain_alone
from nfproof.verify.chain_alone import alone_strategy, check_alone, covers, obstacles
from nfproof.verify.chain_crash import enumerate_instance_crashes
from nfproof.verify.equivalence import Equivalence
from nfproof.verify.induction import reads_clock
from nfproof.verify.simulate import explain

from chain_nfs import lookup as small_nfs
from test_chain import CHAINS
from test_chain_crash import MORE_CHAINS


def every_strategy():
    for form in STRATEGY_FORMS:
        for param in ((1, 2, 3) if ":" in form else (None,)):
            s = Strategy.parse(form.split(":")[0] + (f":{param}" if param else ""))
            yield s
            yield s.mutated("replay-protected-input")
            yield s.switched(replay_input=False)


def test_a_chain_leaves_an_instance_at_its_own_failover_points():
    for s in every_strategy():
        assert all(covers(s, n) for n in range(1, 7)), s


def test_checkpoint_taken_as_itself_would_miss_points(monkeypatch):
    monkeypatch.setattr(chain_alone, "alone_strategy", chain_alone.in_a_chain)
    assert not covers(Strategy.parse("stateful.checkpoint:2"), 3)
    assert alone_strategy(Strategy.parse("stateful.checkpoint:2")) == Strategy.parse("stateful.async")
    assert alone_strategy(Strategy.parse("stateless.commit:8")) == Strategy.parse("stateless.commit:1")


def test_routing_conditions():
    nf = lookup("firewall>nat>lb")
    assert obstacles(nf, "nat", Equivalence()) == []
    assert obstacles(nf, "lb", Equivalence("per-flow")) == ["it holds for strict equivalence only (not per-flow)"]
    turned = Chain.parse("a>reject>c", small_nfs).as_nf()
    assert "a may handle two packets of one chain input" in obstacles(turned, "reject", Equivalence())
    both = lookup("firewall>ratelimit")
    assert reads_clock(both.chain().members["firewall"].nf)
    assert any("read the clock" in o for o in obstacles(both, "firewall", Equivalence()))
    assert obstacles(both, "ratelimit", Equivalence())[0].startswith("ratelimit and firewall read the clock,")


BUILDS = {name: (lambda b=build: b().as_nf(), universe) for name, (build, universe) in CHAINS.items()}
BUILDS.update({name: (lambda n=name: lookup(n), universe) for name, universe in MORE_CHAINS.items()})
STRATEGIES = [("none", False), ("stateful.async", False), ("stateful.sync", False), ("stateful.commit:2", False),
              ("stateful.async", True), ("stateful.checkpoint:2", False), ("stateful.checkpoint:2", True),
              ("stateless.sync", False), ("stateless.async", False)]
CASES = [(c, s, lc) for c in BUILDS for s, lc in STRATEGIES]
TALLY: dict = {}


@pytest.mark.parametrize("chain_name,strategy,log", CASES, ids=[f"{c}-{s}{'-log' if lc else ''}" for c, s, lc in CASES])
def test_verdicts_agree_with_enumeration(chain_name, strategy, log):
    build, universe = BUILDS[chain_name]
    nf = build()
    timed = reads_clock(nf)
    gaps, f = ((0, 1, 3), 1) if timed else (None, 0)
    for instance in nf.chain().members:
        alone = check_alone(nf, instance, Strategy.parse(strategy), 2, 60, log, f, f)
        enumerated = enumerate_instance_crashes(nf.chain(), Strategy.parse(strategy), 2, universe, log, gaps=gaps,
                                                failover_time=f, max_stall=f, instances=[instance])
        TALLY[alone.verdict] = TALLY.get(alone.verdict, 0) + 1
        if enumerated is not None:
            assert alone.verdict != "proved", enumerated.story()
        if alone.verdict == "counterexample":
            crash = alone.crash
            assert crash.instance == instance
            again = explain(nf, crash.inputs, crash.observed, crash.arrivals, f if timed else 0)
            assert not again.explained, crash.story()


def test_the_sweep_decides_both_ways():
    """(runs after the sweep above in file order: it proved and refuted something)"""
    if not TALLY:
        pytest.skip("run with the sweep")
    assert TALLY.get("proved", 0) >= 20 and TALLY.get("counterexample", 0) >= 20, TALLY


def test_firewall_nat_lb_any_instance_alone():
    nf = lookup("firewall>nat>lb")
    for strategy, log in [("stateful.commit:4", True), ("stateful.sync", False), ("stateless.sync", False)]:
        for instance in nf.chain().members:
            alone = check_alone(nf, instance, Strategy.parse(strategy), 4, 60, log, 4, 4)
            assert alone.verdict == "proved", (strategy, instance, alone.reason)
    nat = check_alone(nf, "nat", Strategy.parse("stateful.async"), 4, 60, False, 4, 4)
    assert nat.verdict == "counterexample" and "nat crashes alone" in nat.crash.story()
