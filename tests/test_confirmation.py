"""A solver candidate is only reported after concrete re-execution confirms it."""
import z3

from nfproof.models import Nat
from nfproof.models.api import NF
from nfproof.models.strategy import Strategy
from nfproof.verify import failover, solver as smt


def test_spurious_candidates_are_refuted_not_reported():
    """Feed the refinement loop a 'violation' that is satisfiable but not a bug (sync is safe):
    every candidate must be refuted by the concrete run and learnt as a reference run, until the
    learnt references explain every run (None: this failover point is proved), never a counterexample."""
    strategy = Strategy.parse("stateful.sync")
    runs = failover._Runs(Nat, 2)
    point = failover._points(strategy, 2, clocked=False)[0]
    budget = smt.Budget(timeout=30)
    query = failover._violation(runs, strategy, 2, point, False, budget)
    assert query is None  # the reference is the observed run term for term ...
    assumptions, _, observed, *_ = failover._failover_run(runs, strategy, 2, point, False, budget)
    order = [slot for i in sorted(observed) for slot in observed[i]]  # the egress's order (no duplicates)
    query = (assumptions, z3.BoolVal(True), observed, None, order, [])  # (no late outputs: not aligned)
    outcome = failover._solve(runs, Nat, strategy, 2, point, query, budget, False)
    assert outcome is None
    assert runs.learnt >= 2 and budget.queries > runs.learnt  # candidates were refuted and learnt


def test_reported_counterexample_is_unexplained_on_rerun():
    result = failover.verify_failover(Nat, Strategy.parse("stateful.async"), 3)
    assert result.verdict == "counterexample"
    run = result.counterexample.run
    from nfproof.verify.simulate import explain
    assert not explain(Nat, run.inputs, run.observed_outputs).explained


class DropAll(NF):
    """Drops every packet: equivalence holds trivially, so a proof would be vacuous."""

    name = "dropall"

    def handle(self, pkt, ctx):
        ctx.drop("nothing passes")


def test_vacuous_proof_is_unknown_not_proved():
    result = failover.verify_failover(DropAll, Strategy.parse("stateful.async"), 3)
    assert result.verdict == "unknown" and result.reason.startswith("vacuous")


def test_proof_reports_its_witnessed_reachability_twins():
    result = failover.verify_failover(Nat, Strategy.parse("stateful.commit:4"), 4)
    assert result.verdict == "proved"
    assert result.stats["witnessed"] == list(failover.REACHABILITY_TWINS)
