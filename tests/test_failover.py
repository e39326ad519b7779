"""Issue 2 acceptance for the library API: verdicts of verify_failover on the NAT, counterexamples
confirmed by an independent concrete re-execution, shortest counterexamples, --log-choices,
budgets that run out give `unknown`, and Strategy.parse errors."""
from __future__ import annotations

import pytest

from nfproof.models.concrete import initial_state, step
from nfproof.models.nat import Nat
from nfproof.models.strategy import STRATEGY_FORMS, Strategy, StrategyError
from nfproof.verify import solver as smt
from nfproof.models.concrete import backtrack as all_choice_runs
from nfproof.verify.failover import verify_failover
from nfproof.verify.simulate import explain, simulate

ACCEPTANCE = [
    ("stateful.async", 4, "counterexample"),
    ("stateful.sync", 4, "proved"),
    ("stateful.commit:4", 4, "proved"),
    ("none", 4, "counterexample"),
    ("stateful.checkpoint:3", 5, "counterexample"),
    ("stateless.async", 4, "counterexample"),
    ("stateless.sync", 4, "proved"),
    ("stateless.commit:4", 4, "proved"),
]


def failure_free_outputs(nf_cls, inputs):
    """Every output sequence a failure-free execution can produce, by brute force over all choices
    (deliberately not verify.simulate.explain)."""
    def run(chooser):
        state, outs = initial_state(nf_cls), []
        for pkt in inputs:
            outs += step(nf_cls, state, pkt, chooser).outputs
        return tuple(outs)
    return {outs for _, outs in all_choice_runs(run)}


def replays_to(nf_cls, run, log_choices):
    """Does some choice of the primary and the standby make simulate reproduce `run.observed`?"""
    def go(chooser):
        return simulate(nf_cls, run.strategy, run.inputs, run.cut, run.protected,
                        lambda i: chooser, lambda i: chooser, log_choices).observed
    return any(observed == run.observed for _, observed in all_choice_runs(go))


@pytest.mark.parametrize("strategy,bound,expected", ACCEPTANCE)
def test_acceptance_verdicts(strategy, bound, expected):
    result = verify_failover(Nat, Strategy.parse(strategy), bound)
    assert result.verdict == expected, result.reason
    assert result.bound == bound and result.seconds >= 0
    if expected == "proved":
        assert result.counterexample is None
        return
    cex = result.counterexample
    run, n = cex.run, len(cex.run.inputs)
    assert 1 <= n <= bound
    # the crash is one the strategy can leave behind
    assert run.cut in Strategy.parse(strategy).cuts(n) and run.protected in run.cut.protected
    # independently re-executed: the failover run is a real one of the protocol ...
    assert replays_to(Nat, run, cex.log_choices)
    # ... and no failure-free execution on the same inputs produces what the egress let out
    observed = tuple(run.observed_outputs)
    assert observed not in failure_free_outputs(Nat, run.inputs)
    assert not explain(Nat, run.inputs, list(observed)).explained
    assert not cex.explanation.explained
    kinds = [e.kind for e in run.events]
    assert "crash" in kinds and "failover" in kinds
    # shortest: nothing shorter is a counterexample
    if n > 1:
        shorter = verify_failover(Nat, Strategy.parse(strategy), n - 1)
        assert shorter.verdict == "proved", shorter.reason


def test_shortest_counterexample_is_two_packets():
    """A NAT failover bug needs an output released with one port and a later one with another."""
    for strategy in ("none", "stateful.async", "stateful.checkpoint:3", "stateful.checkpoint:1"):
        result = verify_failover(Nat, Strategy.parse(strategy), 6)
        assert result.verdict == "counterexample"
        assert len(result.counterexample.run.inputs) == 2
        assert verify_failover(Nat, Strategy.parse(strategy), 1).verdict == "proved"


@pytest.mark.parametrize("strategy", ["stateful.async", "stateful.checkpoint:2", "stateless.async"])
def test_log_choices_makes_replay_strategies_safe(strategy):
    assert verify_failover(Nat, Strategy.parse(strategy), 4).verdict == "counterexample"
    result = verify_failover(Nat, Strategy.parse(strategy), 4, log_choices=True)
    assert result.verdict == "proved", result.reason
    assert result.strategy.endswith("--log-choices")


def test_log_choices_does_not_save_none():
    result = verify_failover(Nat, Strategy.parse("none"), 4, log_choices=True)
    assert result.verdict == "counterexample"
    assert replays_to(Nat, result.counterexample.run, True)
    assert tuple(result.counterexample.run.observed_outputs) not in failure_free_outputs(Nat, result.counterexample.run.inputs)


@pytest.mark.parametrize("strategy", ["stateful.sync", "stateful.commit:4", "stateful.async", "none"])
def test_tiny_budget_gives_unknown_never_proved(strategy):
    result = verify_failover(Nat, Strategy.parse(strategy), 8, budget=smt.Budget(timeout=0.0001))
    assert result.verdict == "unknown"
    assert result.reason
    assert result.counterexample is None


def test_tiny_rlimit_gives_unknown():
    """The resource limit alone (not the clock) surfaces as unknown when a query is needed ..."""
    result = verify_failover(Nat, Strategy.parse("stateful.async"), 6, budget=smt.Budget(timeout=60, rlimit=1))
    assert result.verdict == "unknown", (result.verdict, result.stats)
    assert "resource" in result.reason and result.stats["queries"] >= 1


def test_proofs_need_queries_only_for_their_reachability_twins():
    """... while the NAT's safe strategies need no equivalence query at all (the reference run is the
    observed run term for term); the only queries are the reachability twins, so a starved solver
    gives unknown, never a proof without its twins."""
    strategy = Strategy.parse("stateful.sync")
    result = verify_failover(Nat, strategy, 6)
    points = sum(len(strategy.failovers(n)) for n in range(1, 7))
    assert result.verdict == "proved" and result.stats["identical"] == points
    assert 1 <= result.stats["queries"] <= 2 * len(strategy.failovers(1)) + 2
    starved = verify_failover(Nat, strategy, 6, budget=smt.Budget(timeout=60, rlimit=1))
    assert starved.verdict == "unknown"


# -- Strategy.parse -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["none", "stateful.checkpoint:3", "stateful.async", "stateful.sync",
                                  "stateful.commit:32", "stateless.sync", "stateless.async", "stateless.batch:8",
                                  "stateless.cache", "stateless.commit:2"])
def test_parse_valid(text):
    assert str(Strategy.parse(text)) == text


@pytest.mark.parametrize("text", ["bogus", "stateful", "stateful.asink", "", "stateful.sync:2", "none:1",
                                  "STATEFUL.SYNC"])
def test_parse_unknown_lists_valid_forms(text):
    with pytest.raises(StrategyError) as e:
        Strategy.parse(text)
    message = str(e.value)
    assert "\n" not in message
    for form in STRATEGY_FORMS:
        assert form in message


@pytest.mark.parametrize("text", ["stateful.checkpoint", "stateful.checkpoint:0", "stateful.commit:-1",
                                  "stateful.commit:x", "stateless.batch:1.5", "stateless.commit:"])
def test_parse_bad_parameter(text):
    with pytest.raises(StrategyError) as e:
        Strategy.parse(text)
    base = text.split(":")[0]
    assert f"{base}:" in str(e.value) and "positive integer" in str(e.value)
    assert isinstance(e.value, ValueError)
