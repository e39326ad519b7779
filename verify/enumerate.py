"""Explicit-state enumeration of failover runs: the ground truth the Z3 check is tested against.

For a finite packet `universe`, `enumerate_failover` tries every input sequence of length
1..bound (shortest first), every crash point of the strategy's timeline (`Strategy.cuts`, not
the deduplicated `failovers`), every protected point r the cut allows, and every combination of
choices the primary and the standby can make (backtracking over a decision prefix, as
`models.concrete.all_steps` does for one step). Each run is executed operationally by
`verify.simulate.simulate` and judged by the exact search `verify.simulate.explain`. The first
unexplained run is returned; None means none exists within the universe and the bound.

Nothing here uses Z3, so agreement with `verify.failover.verify_failover` is evidence that the
symbolic encoding (Skolemised reference runs, memoised steps, skipped identical queries) is
neither unsound nor incomplete on the universe."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..models.api import NF, Packet
from ..models.concrete import backtrack
from ..models.strategy import Strategy
from .simulate import Explanation, FailoverRun, explain, simulate


@dataclass
class Violation:
    run: FailoverRun
    explanation: Explanation
    decisions: tuple[int, ...]  # the choice indices (primary and standby, in call order) of the run


@dataclass
class EnumerationStats:
    sequences: int = 0
    runs: int = 0
    explained: int = 0          # explain() calls actually made (the rest were memoised)
    stats_by_length: dict = field(default_factory=dict)


def enumerate_failover(nf_cls: type[NF], strategy: Strategy, bound: int, universe: list[Packet],
                       log_choices: bool = False, stats: EnumerationStats | None = None) -> Violation | None:
    """The first (hence a shortest) failover run whose observed outputs no failure-free execution
    produces, or None."""
    stats = stats if stats is not None else EnumerationStats()
    memo: dict = {}
    for n in range(1, bound + 1):
        cuts = strategy.cuts(n)
        for seq in itertools.product(universe, repeat=n):
            inputs = list(seq)
            stats.sequences += 1
            for cut in cuts:
                for r in cut.protected:
                    def run(chooser, cut=cut, r=r):
                        return simulate(nf_cls, strategy, inputs, cut, r, lambda i: chooser, lambda i: chooser,
                                        log_choices)
                    for decisions, failover in backtrack(run):
                        stats.runs += 1
                        key = (seq, tuple(failover.observed_outputs))
                        if key not in memo:
                            stats.explained += 1
                            memo[key] = explain(nf_cls, inputs, failover.observed_outputs)
                        explanation = memo[key]
                        if not explanation.explained:
                            return Violation(failover, explanation, decisions)
        stats.stats_by_length[n] = stats.runs
    return None
