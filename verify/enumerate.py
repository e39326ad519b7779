"""Explicit-state enumeration of failover runs: the ground truth the Z3 check is tested against.

For a finite packet `universe`, `enumerate_failover` tries every input sequence of length
1..bound (shortest first), every crash point of the strategy's timeline (`Strategy.cuts`, not
the deduplicated `failovers`), every protected point r the cut allows, and every combination of
choices the primary and the standby can make (backtracking over a decision prefix, as
`models.concrete.all_steps` does for one step). Each run is executed operationally by
`verify.simulate.simulate` and judged by the exact search `verify.simulate.explain`. The first
unexplained run is returned; None means none exists within the universe and the bound.

Time (DESIGN.md "Time"), for an NF that reads the clock: arrival times are enumerated too, as
sums of gaps from the small domain `gaps` (the first gap counts from time 0, so a crash before
the first arrival is covered); the crash time takes every tick between the last event that
happened and the next one (after the last event: every tick up to `horizon` later, default
F + S + the largest gap + 1); failure-free executions may stall up to `max_stall` ticks (every
time in the window is tried by `explain`). An NF that reads no clock is enumerated untimed, as
before; if a clock read shows up in an untimed run the enumeration restarts timed.

Nothing here uses Z3, so agreement with `verify.failover.verify_failover` is evidence that the
symbolic encoding (Skolemised reference runs, memoised steps, skipped identical queries) is
neither unsound nor incomplete on the universe."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..models.api import NF, Packet
from ..models.concrete import backtrack
from ..models.strategy import Strategy
from .equivalence import STRICT, Equivalence, in_flight
from .simulate import (Explanation, FailoverRun, default_failover_ticks, explain, lost, observations, observed_items,
                       simulate)


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


DEFAULT_GAPS = (0, 1, 3, 6)  # arrival gaps (ticks) of DESIGN.md's worked examples


def enumerate_failover(nf_cls: type[NF], strategy: Strategy, bound: int, universe: list[Packet],
                       log_choices: bool = False, stats: EnumerationStats | None = None,
                       failover_time: int | None = None, max_stall: int | None = None,
                       gaps: tuple[int, ...] | None = None, horizon: int | None = None,
                       exhaustive: bool = False, eq: Equivalence = STRICT) -> Violation | None:
    """The first (hence a shortest) failover run whose observed outputs no failure-free execution
    produces, or None. Times are in the NF's ticks; `failover_time` defaults as in the failover
    check (one second), `max_stall` to the failover time. `gaps` forces timed enumeration.

    Each shape (sequence, arrivals, cut, r, crash time) is judged on the set of distinct outputs
    its runs can let out (`simulate.observations`, dynamic programming over partial runs); only a
    shape with an unexplained one is then run choice combination by choice combination, to
    return the first unexplained run in the same order as before. `exhaustive` runs every shape
    that way (the original enumeration: one simulate per combination of choices), and `stats.runs`
    counts runs there, distinct observations otherwise. `eq`: the equivalence runs are judged by
    (under loss-at-failover the inputs in flight at the crash may have been lost)."""
    if failover_time is None:
        failover_time = default_failover_ticks(nf_cls)
    if max_stall is None:
        max_stall = failover_time
    stats = stats if stats is not None else EnumerationStats()
    if gaps is None:
        try:
            return _enumerate(nf_cls, strategy, bound, universe, log_choices, stats, None, exhaustive, eq)
        except _ClockRead:
            gaps = DEFAULT_GAPS
    horizon = horizon if horizon is not None else failover_time + max_stall + max(gaps) + 1
    return _enumerate(nf_cls, strategy, bound, universe, log_choices, stats, (gaps, failover_time, max_stall, horizon),
                      exhaustive, eq)


class _ClockRead(Exception):
    """An untimed enumeration met a clock read: it must be timed."""


def _standby_times(strategy, cut, r, arrivals, crash_time, failover_time, log_choices):
    """When the standby processes each input it handles (what a crash time changes in a run)."""
    out, previous = [], crash_time + failover_time
    for i in range(strategy.replay_start(cut.released, r) + 1, len(arrivals) + 1):
        if lost(strategy, cut.applied, i):
            continue
        t = arrivals[i - 1] if log_choices and i <= cut.applied else max(arrivals[i - 1], previous)
        previous = max(previous, t)
        out.append(t)
    return tuple(out)


def _enumerate(nf_cls, strategy, bound, universe, log_choices, stats, timing, exhaustive=False, eq=STRICT):
    memo, step_cache = {}, {}
    failover_time, max_stall = (timing[1], timing[2]) if timing else (0, 0)
    for n in range(1, bound + 1):
        cuts, timeline = strategy.cuts(n), strategy.events(n)
        arrival_sets = [None]
        if timing is not None:
            gaps, _, _, horizon = timing
            arrival_sets = [list(itertools.accumulate(g)) for g in itertools.product(gaps, repeat=n)]
        for seq in itertools.product(universe, repeat=n):
            inputs, seq_ids = list(seq), tuple(map(id, seq))
            for arrivals in arrival_sets:
                stats.sequences += 1
                done = set()  # runs that differ only in the labels of the primary's events or in an unseen crash time
                for cut in cuts:
                    crash_times = [None]
                    if arrivals is not None:
                        low = arrivals[timeline[cut.k - 1][1] - 1] if cut.k > 0 else 0
                        high = arrivals[timeline[cut.k][1] - 1] if cut.k < len(timeline) else low + horizon
                        crash_times = range(low, high + 1)
                    lossable = tuple(in_flight(cut.released, cut.applied)) if eq.lossy else ()
                    for r in cut.protected:
                        for crash_time in crash_times:
                            shape = (cut.applied, cut.released, r, arrivals and _standby_times(
                                strategy, cut, r, arrivals, crash_time, failover_time, log_choices))
                            if shape in done:
                                continue
                            done.add(shape)

                            def run(chooser, cut=cut, r=r, crash_time=crash_time, story=False):
                                return simulate(nf_cls, strategy, inputs, cut, r, lambda i: chooser, lambda i: chooser,
                                                log_choices, arrivals, crash_time, failover_time, story=story,
                                                step_cache=step_cache)
                            if not exhaustive:
                                seen, read_clock = observations(nf_cls, strategy, inputs, cut, r, log_choices, arrivals,
                                                                crash_time, failover_time, step_cache, decode=False)
                                if timing is None and read_clock:
                                    raise _ClockRead()
                                stats.runs += len(seen)
                                unexplained = False
                                for codes in seen:  # (any order: the verdict is whether one is unexplained)
                                    key = ("coded", seq_ids, tuple(arrivals or ()), codes, lossable)
                                    if key not in memo:
                                        stats.explained += 1
                                        items = observed_items(step_cache)
                                        memo[key] = explain(nf_cls, inputs, [items[c] for c in codes], arrivals, max_stall,
                                                            step_cache=step_cache, eq=eq, lossable=lossable)
                                    if timing is None and memo[key].read_clock:
                                        raise _ClockRead()
                                    unexplained |= not memo[key].explained
                                if not unexplained:
                                    continue  # else: the runs of this shape one by one, for the first unexplained one
                            for decisions, failover in backtrack(run):
                                stats.runs += 1
                                if timing is None and failover.read_clock:
                                    raise _ClockRead()
                                key = (seq, tuple(arrivals or ()), tuple(failover.observed_outputs), lossable)
                                if key not in memo:
                                    stats.explained += 1
                                    memo[key] = explain(nf_cls, inputs, failover.observed_outputs, arrivals, max_stall,
                                                        step_cache=step_cache, eq=eq, lossable=lossable)
                                explanation = memo[key]
                                if timing is None and explanation.read_clock:
                                    raise _ClockRead()
                                if not explanation.explained:
                                    replayed = iter(decisions)
                                    return Violation(run(lambda options: options[next(replayed)], story=True),
                                                     explanation, decisions)
        stats.stats_by_length[n] = stats.runs
    return None
