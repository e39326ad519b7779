"""Bounded failover check: does an NF under a strategy keep `strict` output equivalence?

The question, for every input sequence of length n <= bound (packets chosen by the solver), every
crash point, every protected point the crash can leave behind and every choice the primary and
the standby make: is the sequence of outputs the egress lets out one that some failure-free
execution on the same inputs produces?

Encoding. Crash points are enumerated (`Strategy.failovers`: the distinct (released, r) outcomes
of every cut of the primary's timeline); everything else is symbolic. Three runs are built from
the symbolic interpreter's steps:
  primary   inputs 1..applied with choices p_i,
  standby   from the state protected at r (empty under `none`), inputs after it with fresh
            choices s_i (or the logged p_i under --log-choices),
  reference a failure-free run whose choices are read off the observed run (Skolemisation):
            p_i for inputs whose outputs the primary released or protected, s_i after that.
A violation is: the reference's outputs differ from the observed ones, or one of its borrowed
choices was not available to it. A proof also needs its reachability twins (some run where the
primary releases an output before the crash, some where the standby releases one after the
failover); without them it is vacuous and the verdict is unknown. Unsat proves the tuple: every failover run has a failure-free
twin. Steps are memoised on (state, input, choice names), so where the reference coincides
with the observed run its terms are the very same terms and no query is needed at all.

Time (DESIGN.md "Time"; only for an NF that reads the clock, `reads_clock`): inputs carry
symbolic arrival times a_i (non-decreasing, below 2**30 ticks); the primary processes input i at
a_i; each failover point -- here (released, r, applied), as the inputs applied before the crash
have their clock reads logged -- has a symbolic crash time c between the last event that
happened and the next one; the standby processes an input at max(a_i, c + F) (at a_i if its
clock read was logged). For an NF that uses time only through differences (`shift_invariant`)
the first event is at 0, min(a_1, c) = 0, which loses no run. The reference borrows the observed
processing time clamped into its window [a_i, a_i + S] (`_reference_times`), which keeps it a
failure-free run; where that is the observed time itself, reference and observed run stay the
same terms. Learnt references (from explained candidates) carry their times as terms over the
arrivals where they can. Every point of a length is first asked with all times at 0 (`_at_zero`),
where bursts show quickly; lockstep lemmas are refuted there first too.

Sat is only a candidate (the reference could have chosen differently): it is re-executed
concretely (verify/simulate.py) and confirmed by exhaustive search before it is reported;
a refuted candidate is blocked and the query repeated. Lengths grow from 1, so the first
confirmed counterexample is a shortest one.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import z3

from ..models.api import NF, PACKET_FIELDS, ModelError, Packet, Pool, TCP, UDP, addr, flags
from ..models.concrete import scripted, seeded
from ..models.strategy import Strategy
from . import solver as smt
from .induction import _arbitrary_state, prove_unbounded, reads_clock
from .equivalence import STRICT, Equivalence, in_flight
from .time_shift import shift_invariant
from .simulate import Explanation, FailoverRun, default_failover_ticks, explain, lost, simulate
from .symbolic import (TIME_WIDTH, Slot, egress_view, initial_state, outputs_differ, sequence_differs, step,
                       symbolic_packet)

LEMMA_SECONDS = 2.0   # time for one lockstep lemma (unproved: no harm, only slower)
LEARNT_OFFSETS = 8     # offsets tried when a learnt reference's time is generalised
MAX_REFINEMENTS = 32  # explained candidates learnt per failover point before giving up (unknown)
AT_ZERO_REFINEMENTS = 1  # candidates judged in a point's look at time 0 (`_at_zero`; the full query refines)
REPLAY_LEMMA_RLIMIT = 5_000_000  # resource limit of `_replay_explained` (its statement is the same for every input)
FIRST_PASS_RLIMIT = 1_000_000  # resource limit of a point's first try (most queries need far less; see _verify)
PASS_GROWTH = 4                # each later pass over the points left undecided: 4 times the limit
TIME_LIMIT = (1 << 30) - 1  # every arrival and crash time is at most this many ticks (no wrap in TIME_WIDTH bits)


@dataclass
class Counterexample:
    nf: type[NF]
    run: FailoverRun
    explanation: Explanation
    log_choices: bool
    max_stall: int = 0               # S, in ticks (the failover time F is in the run)
    eq: Equivalence = STRICT         # the equivalence no failure-free execution meets


@dataclass
class Result:
    verdict: str                       # proved | counterexample | unknown
    nf: str
    strategy: str
    bound: int
    seconds: float = 0.0
    counterexample: Counterexample | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)
    unbounded: bool = False            # proved for every number of packets


class _State:
    """A symbolic state; its terms key the step memo (`key`: the ids of its terms, which Z3
    hash-conses: two states with the very same terms step alike, whichever run reached them)."""

    def __init__(self, terms: dict):
        self.terms = terms
        self.key = tuple((name, tuple(t.get_id() for t in terms[name])) for name in sorted(terms))


def _tick(value: int):
    return z3.BitVecVal(value, TIME_WIDTH)


def _umax(a, b):
    return a if a.eq(b) else z3.If(z3.UGE(a, b), a, b)


def _umin(a, b):
    return a if a.eq(b) else z3.If(z3.ULE(a, b), a, b)


@dataclass
class _Point:
    """One failover point: the crash leaves `released` and the protected point r; `cut` is the
    earliest cut reaching it, `last_k` the last (the crash time lies in between, `window`: the
    inputs whose arrivals bound it, None for no bound)."""
    released: int
    r: int
    cut: object
    last_k: int
    window: tuple


class _Runs:
    """Memoised symbolic steps over one set of symbolic inputs."""

    def __init__(self, nf_cls: type[NF], bound: int, clocked: bool = False, failover_time: int = 0,
                 max_stall: int = 0):
        self.nf_cls, self.clocked = nf_cls, clocked
        self.inputs = [symbolic_packet(f"in{i}") for i in range(1, bound + 1)]
        self.arrivals = [z3.BitVec(f"in{i}.arrival", TIME_WIDTH) for i in range(1, bound + 1)]
        self.crash = z3.BitVec("crash", TIME_WIDTH)
        self.failover_time, self.max_stall = failover_time, max_stall
        self.failover_end = self.crash + _tick(failover_time)
        self.init = _State(initial_state(nf_cls))
        self.memo: dict = {}
        self.choice_vars: dict[tuple[str, int], list] = {}
        self.primary_states = [self.init]
        self.primary_steps = [None]
        self.learnt = 0  # reference runs learnt from explained candidates
        self.lemmas: dict = {}  # (replayed state, primary state, crash window) -> proved equal
        self.read_clock = False  # some step built so far called now()
        self.eq = STRICT  # the equivalence the check keeps
        self.aligned = False  # references must match input by input (verify_failover's `aligned`)
        # the first event happens at 0 where the NF uses times only as differences (verify/time_shift.py;
        # properties' predicates use them so too)
        self.first_at_zero = clocked and shift_invariant(nf_cls)

    def arrival(self, i: int):
        return self.arrivals[i - 1]

    def at_zero(self, i: int) -> list:
        """Arrivals up to input i and the crash at time 0 (with the arrivals non-decreasing)."""
        return [self.arrival(i) == _tick(0), self.crash == _tick(0)]

    def latest(self, i: int):
        """The end of input i's processing window in a failure-free run: a_i + S."""
        return self.arrival(i) + _tick(self.max_stall)

    def standby_time(self, i: int, clock_logged: bool):
        """When the standby processes input i: its logged clock read (the primary's, at arrival),
        else max(a_i, c + F) (its previous processing time is never later than that)."""
        return self.arrival(i) if clock_logged else _umax(self.arrival(i), self.failover_end)

    def time_constraints(self, n: int, window: tuple | None) -> list:
        """Arrivals non-decreasing and, for a failover point, the crash time in its window."""
        if not self.clocked:
            return []
        a = self.arrivals[:n]
        out = [z3.ULE(x, y) for x, y in zip(a, a[1:])] + [z3.ULE(a[-1], _tick(TIME_LIMIT))]
        if self.first_at_zero:
            zero = _tick(0)
            out.append(a[0] == zero if window is None else z3.Or(a[0] == zero, self.crash == zero))
        if window is not None:
            lower, upper = window
            out.append(z3.ULE(self.crash, _tick(TIME_LIMIT)))
            if lower is not None:
                out.append(z3.ULE(self.arrival(lower), self.crash))
            if upper is not None:
                out.append(z3.ULE(self.crash, self.arrival(upper)))
        return out

    def step(self, state: _State, i: int, source: str, constants: dict | None = None, time=None):
        """The step of input i from `state` at processing time `time` (a term; used only if the
        step reads the clock) with the choices of `source`: symbolic constants named after it,
        or, for a reference run learnt from an explanation, the given `constants` (input -> its
        choices in call order)."""
        key = (state.key, i, source)
        hit = self.memo.get(key)
        if hit is None and time is not None:
            hit = self.memo.get(key + (time.get_id(),))
        if hit is None:
            def choice_var(k, width):
                if constants is not None:
                    values = constants.get(i, [])
                    v = values[k] if k < len(values) else 0
                    if z3.is_bv(v) and v.size() == width:  # a learnt choice borrowed from the observed run
                        return v
                    return z3.BitVecVal(v if isinstance(v, int) else 0, width)
                by_call = self.choice_vars.setdefault((source, i), [])
                if k == len(by_call):
                    by_call.append(z3.BitVec(f"{source}{i}.choice{k}", width))
                return by_call[k]
            s = step(self.nf_cls, state.terms, self.inputs[i - 1], choice_var, _missed_clock if time is None else (lambda: time))
            hit = (s, _State(s.state), state)  # the source state kept alive: the ids in its key stay its own
            if s.reads_clock:
                if not self.clocked:
                    raise _ClockMissed()
                self.read_clock = True
                self.memo[key + (time.get_id(),)] = hit + (time,)  # the term kept alive: its id stays its own
            else:
                self.memo[key] = hit
        return hit[0], hit[1]

    def primary(self, i: int):
        while len(self.primary_steps) <= i:
            k = len(self.primary_steps)
            s, st = self.step(self.primary_states[-1], k, "p", time=self.arrival(k) if self.clocked else None)
            self.primary_steps.append(s)
            self.primary_states.append(st)
        return self.primary_steps[i]


class _ClockMissed(Exception):
    """A step read the clock although `reads_clock` said the NF never does: verify timed."""


def _missed_clock():
    raise _ClockMissed()


def verify_failover(nf_cls: type[NF], strategy: Strategy, bound: int, budget: smt.Budget | None = None,
                    log_choices: bool = False, progress=None, unbounded: bool = False,
                    failover_time: int | None = None, max_stall: int | None = None, eq: Equivalence = STRICT,
                    aligned: bool = False) -> Result:
    """Bounded check up to `bound` packets; with `unbounded`, a bounded proof must then extend to
    every length (verify/induction.py) or the verdict is unknown. Times are in the NF's clock
    ticks (`ticks_per_second`): `failover_time` F defaults to one second, `max_stall` S to F;
    they matter only for an NF that reads the clock. `eq`: the output equivalence kept (the
    reference run is built as for strict, which implies the others, and a candidate is judged
    under `eq` by the concrete search; what the reference lost or passed over is learnt).
    `aligned` (strict only): prove more, that every failover run has a failure-free run whose
    outputs are the observed ones *input by input* (what verify/chain_alone.py builds on); a
    candidate explained only by a reference that matches as a whole sequence leaves its point
    undecided (unknown)."""
    if aligned and eq != STRICT:
        raise ValueError("aligned references are for strict equivalence without duplicates")
    budget = budget or smt.Budget()
    if failover_time is None:
        failover_time = default_failover_ticks(nf_cls)
    if max_stall is None:
        max_stall = failover_time
    for name, value in (("failover time", failover_time), ("max stall", max_stall)):
        if not 0 <= value <= TIME_LIMIT:
            raise ValueError(f"the {name} must be 0..{TIME_LIMIT} ticks, got {value}")
    clocked = reads_clock(nf_cls)
    while True:
        try:
            return _verify(nf_cls, strategy, bound, budget, log_choices, progress, unbounded, clocked,
                           failover_time, max_stall, eq, aligned)
        except _ClockMissed:
            clocked = True


def _verify(nf_cls, strategy, bound, budget, log_choices, progress, unbounded, clocked, failover_time, max_stall, eq,
            aligned):
    result = Result("unknown", nf_cls.name, str(strategy) + (" --log-choices" if log_choices else ""), bound)
    runs, undecided, queries_skipped = _Runs(nf_cls, bound, clocked, failover_time, max_stall), [], 0
    runs.eq, runs.aligned = eq, aligned
    result.stats["equivalence"] = str(eq)
    if clocked:
        result.stats.update(clock=True, failover_time=failover_time, max_stall=max_stall,
                            first_event_at_zero=runs.first_at_zero)
    try:
        for n in range(1, bound + 1):
            # Passes per length with growing resource limits (`_pass_limits`): every point with a
            # small one first, the points it leaves undecided with a larger one, and so on up to the
            # budget's. Any counterexample of this length is a
            # shortest one, and a cheap one (a sat query) is often behind a hard proof of another
            # point; the verdict is the same either way (only the order of the queries changes).
            def queries():
                for point in _points(strategy, n, clocked):
                    budget.check_time()
                    query = _violation(runs, strategy, n, point, log_choices, budget)
                    if query is None:
                        nonlocal queries_skipped
                        queries_skipped += 1
                        continue
                    yield point, query
            todo = queries()  # built as the first pass goes: a counterexample ends it early
            if clocked:  # a first look with every time at 0: a sat answer there is a counterexample too
                todo = list(todo)
                for point, query in todo:
                    cex = _solve(runs, nf_cls, strategy, n, point, _at_zero(runs, n, query), budget, log_choices,
                                 rlimit=FIRST_PASS_RLIMIT, refinements=AT_ZERO_REFINEMENTS)
                    if isinstance(cex, Counterexample):
                        result.verdict, result.counterexample = "counterexample", cex
                        return result
            for limit in _pass_limits(budget):
                later = []
                for point, query in todo:
                    cex = _solve(runs, nf_cls, strategy, n, point, query, budget, log_choices, rlimit=limit)
                    if cex == "deferred":
                        later.append((point, query))
                    elif cex == "undecided":
                        undecided.append((n, point.released, point.r))
                    elif cex is not None:
                        result.verdict, result.counterexample = "counterexample", cex
                        return result
                todo = later
            if progress:
                progress(n, bound)
        missing = [] if undecided else _unwitnessed(runs, strategy, bound, log_choices, budget)
        if undecided:
            result.reason = f"{len(undecided)} failover point(s) left undecided after {MAX_REFINEMENTS} refinements"
        elif missing:
            result.reason = f"vacuous: no run within the bound in which {' / '.join(missing)}"
        else:
            result.verdict = "proved"
            result.stats["witnessed"] = list(REACHABILITY_TWINS)
            result.stats["unexercised_gates"] = _unexercised_gates(runs, bound, budget)
            if unbounded and not (strategy.replay_input and strategy.dedup):
                result.verdict = "unknown"
                result.reason = (f"proved up to {bound} packets; the proof for every length covers the protocol "
                                 f"with input replay and duplicate suppression only")
            elif unbounded:  # (strict, which implies the weaker relations)
                induction = prove_unbounded(nf_cls, strategy, log_choices, budget)
                result.unbounded = induction.proved
                result.stats["induction"] = induction.reason
                if not induction.proved:
                    result.verdict = "unknown"
                    result.reason = f"proved up to {bound} packets, but not for every length: {induction.reason}"
    except smt.BudgetExhausted as e:
        result.reason = str(e)
    finally:
        result.seconds = time.monotonic() - budget.start
        result.stats.update(queries=budget.queries, identical=queries_skipped, steps=len(runs.memo))
    return result


def _at_zero(runs: _Runs, n: int, query: tuple) -> tuple:
    """The query with every arrival and the crash at time 0. Many clock counterexamples need no
    time to pass (a burst that the standby's fresh state treats differently), and the solver finds
    them there many times faster (ratelimit under `none`: 0.4 s against 3.9 s). Its unsat proves
    nothing for other times, so every point is asked again without it."""
    assumptions, *rest = query
    return (assumptions + runs.at_zero(n), *rest)


def _pass_limits(budget) -> list:
    """The resource limits of a length's passes over its failover points: each pass tries the
    points the previous one left undecided, with PASS_GROWTH times its limit, the last with the
    budget's own (None)."""
    limits, limit = [], FIRST_PASS_RLIMIT
    while budget.rlimit and limit < budget.rlimit:
        limits.append(limit)
        limit *= PASS_GROWTH
    return limits + [None]


def _points(strategy: Strategy, n: int, clocked: bool) -> list[_Point]:
    """The failover points of n inputs: (released, r) outcomes; for an NF that reads the clock
    also by `applied` (which inputs had their clock reads logged), each with its crash window."""
    out = []
    for key, (cut, last_k) in strategy.failover_points(n, timed=clocked).items():
        window = strategy.crash_window(n, cut.k, last_k) if clocked else None
        out.append(_Point(key[0], key[1], cut, last_k, window))
    return out


def _failover_run(runs: _Runs, strategy: Strategy, n, point: _Point, log_choices, budget):
    """The observed run of one failover point: (assumptions on the choices made and on the times,
    ids of the steps they cover, per-input observed outputs, per-input choice names of the
    standby, last input whose outputs came from the primary, for replayed released inputs the
    condition that a replayed output got past the egress, per-input standby times, the states the
    standby stepped from, and under --no-dedup the replayed outputs of released inputs, which the
    egress lets out again after everything released before the crash). Inputs lost for want of
    replay (--no-replay-input) have no step; the reference borrows the primary's choices there."""
    released, r, applied = point.released, point.r, point.cut.applied
    assumed, assumptions = set(), runs.time_constraints(n, point.window)
    for i in range(1, min(applied, n) + 1):
        s = runs.primary(i)
        assumed.add(id(s))
        assumptions.append(s.valid)
    seen_upto = max(released, r)  # outputs of inputs <= this were released by the primary (or from its protected record)
    observed = {i: runs.primary(i).outputs if i <= released or strategy.standby_releases_protected else []
                for i in range(1, seen_upto + 1)}
    start = strategy.replay_start(released, r)
    if strategy.replays_from_protected:
        runs.primary(r)
        state = runs.primary_states[r]
    else:
        state = runs.init
    sources, leaks, replay_valid, times, pre = {}, {}, [], {}, {}
    dups = {}  # under --no-dedup: the replayed outputs of released inputs, let out again
    for i in range(start + 1, n + 1):
        if lost(strategy, applied, i):  # the primary's choices stand in for it in the reference
            sources[i] = "p"
            if i > seen_upto:
                observed[i] = []
            continue
        sources[i] = "p" if log_choices and i <= released else "s"
        times[i] = runs.standby_time(i, log_choices and i <= applied) if runs.clocked else None
        pre[i] = state
        s, state = runs.step(state, i, sources[i], time=times[i])
        if sources[i] == "s":
            assumed.add(id(s))
            assumptions.append(s.valid)
        if i > seen_upto:
            observed[i] = s.outputs
        else:  # a replay of a released input: the egress drops what it has seen, not more
            if sources[i] == "s":  # logged choices are reused as they are: nothing to assume of them
                replay_valid.append(s.valid)
            same_outputs, same_state = _lockstep(runs, s, state, i, replay_valid, point, n, budget)
            if same_state:
                state = runs.primary_states[i]
            if not strategy.dedup:
                dups[i] = s.outputs
            elif not same_outputs:
                later = [runs.primary(k).outputs[0].present for k in range(i + 1, released + 1) if runs.primary(k).outputs]
                observed[i], leaks[i] = egress_view(observed[i], s.outputs, z3.Or(*later) if later else z3.BoolVal(False))
    return assumptions, assumed, observed, sources, seen_upto, leaks, times, pre, dups


def _lockstep(runs: _Runs, replay, replayed: _State, i: int, replay_valid: list, point: _Point, n: int,
              budget) -> tuple[bool, bool]:
    """Lockstep lemmas for the standby's replay of a released input i: do its outputs, and its
    state after i, provably equal the primary's (given that the choices made so far were valid,
    and the times of the failover point)? Where they do, the caller continues with the primary's
    terms, so the rest of the run needs no solving. Unprovable within a small budget: False,
    which costs time, never soundness."""
    primary, primary_state = runs.primary(i), runs.primary_states[i]
    # The key leaves out `replay_valid`: the same replayed state object is reached through the same
    # memoised steps, so two contexts differ only by the validity of replay steps before a lockstep
    # collapse onto the primary's state, whose choice variables that state no longer mentions (and a
    # valid choice always exists on the path that made one): the lemma holds under either context.
    # With a clock, the lemma depends on the crash window too, not on n: the times of inputs after
    # i can always follow a_i (a_{i+1} = ... = a_n = a_i), so the arrivals of later inputs add no
    # constraint on the terms compared.
    key = (id(replay), id(replayed)) + ((point.window,) if runs.clocked else ())
    if key not in runs.lemmas:
        context = [runs.primary(k).valid for k in range(1, i + 1)] + replay_valid + runs.time_constraints(n, point.window)
        # a replay at another time often differs already with every time at 0: a cheap refutation
        at_zero = runs.at_zero(i) if runs.clocked else None

        def holds(condition) -> bool:
            answer = []
            if at_zero and not _proved_false(condition, context + at_zero, budget, FIRST_PASS_RLIMIT, answer) \
                    and answer[-1] == z3.sat:
                return False
            return _proved_false(condition, context, budget)
        state_differs = [a != b for name in primary_state.terms
                         for a, b in zip(replayed.terms[name], primary_state.terms[name])]
        outputs_differ_ = outputs_differ(replay.outputs, primary.outputs)
        runs.lemmas[key] = (outputs_differ_ is None or holds(outputs_differ_),
                            replayed is primary_state or holds(z3.Or(*state_differs)))
    return runs.lemmas[key]


def _proved_false(condition, context: list, budget, rlimit: int | None = None, answer: list | None = None) -> bool:
    """Whether `condition` is unsatisfiable under `context`, within LEMMA_SECONDS (and `rlimit`
    if given); `answer` (a list) receives the solver's answer."""
    solver = smt.new_solver(budget, rlimit=rlimit)
    solver.add(*context)
    lemma_budget = smt.Budget(timeout=min(LEMMA_SECONDS, budget.remaining()), rlimit=rlimit or budget.rlimit)
    budget.queries += 1
    result = smt.check(solver, lemma_budget, condition, unknown_ok=True)
    if answer is not None:
        answer.append(result)
    return result == z3.unsat


def _violation(runs: _Runs, strategy: Strategy, n, point: _Point, log_choices, budget):
    """(assumptions, violation, observed outputs, reference times) for one failover point, or
    None if the reference run is the observed run term for term. The reference borrows each
    choice from the run whose outputs the egress let out for that input: the primary's, the
    standby's, or, for a replayed input, whichever the egress passed (choice source "m", defined
    by an if-then-else); and its processing time likewise (`_reference_times`)."""
    assumptions, assumed, observed, sources, seen_upto, leaks, times, pre, dups = _failover_run(
        runs, strategy, n, point, log_choices, budget)

    def source(i):
        if sources.get(i) == "s" and i in leaks and not z3.is_false(leaks[i]):
            return "m"
        return "p" if i <= seen_upto else sources[i]

    def explained(i, reference_state: _State) -> bool:
        """A replayed released input the reference borrows "m" for, from the very state the
        primary and the standby stepped from, whose outputs and next state `_replay_explained`
        proved for every state: its conditions hold, and the reference goes on from the primary's
        state after it (so where nothing else differs, the rest is the same terms)."""
        if runs.clocked or source(i) != "m":  # (an "m" input was released: the primary stepped it)
            return False
        start = runs.primary_states[i - 1].key
        return reference_state.key == start and pre[i].key == start and _replay_explained(runs, i, budget)

    reference_times = _reference_times(runs, n, point, source, times, leaks, log_choices) if runs.clocked else None
    # loss-at-failover: the reference lost what the observed run lost of the inputs in flight
    skip = {i for i in in_flight(point.released, point.cut.applied) if lost(strategy, point.cut.applied, i)} if runs.eq.lossy else set()
    violations = _reference_differs(runs, n, observed, source, assumed=assumed, times=reference_times,
                                    explained=explained, skip=skip)
    released_slots = [slot for i in range(1, seen_upto + 1) for slot in observed[i]]
    dup_slots = [slot for i in sorted(dups) for slot in dups[i]]
    order = released_slots + dup_slots + [slot for i in range(seen_upto + 1, n + 1) for slot in observed[i]]
    violations += _not_duplicates(dup_slots, order, runs.eq.allow_duplicates)
    # aligned: a replayed released input's new output gets past the egress later than its input's other
    # outputs did (after outputs of later inputs): not input by input, so it leaves the point undecided
    late = [c for c in leaks.values() if not z3.is_false(c)] if runs.aligned else []
    violations += late
    for i in range(1, n + 1):
        if source(i) == "m":
            borrowed = zip(runs.choice_vars.get(("m", i), []), runs.choice_vars.get(("p", i), []),
                           runs.choice_vars.get(("s", i), []))
            assumptions += [m == z3.If(leaks[i], sv, pv) for m, pv, sv in borrowed]
    return (assumptions, z3.Or(*violations), observed, reference_times, order, late) if violations else None


def _same(a: Slot, b: Slot, fields=PACKET_FIELDS) -> list:
    """Conditions that two slots hold the same output: their gates and the `fields` both have."""
    return [a.gate == b.gate] + [a.fields[f] == b.fields[f] for f in fields if f in a.fields and f in b.fields]


def _not_duplicates(slots: list, order: list, allowed: bool) -> list:
    """Conditions under which the output slots `slots` of the egress's sequence `order` are not
    duplicates to pass over: whenever one is there, or with duplicates allowed when it equals no
    output let out before it."""
    out = []
    for d in slots:
        if not allowed:
            out.append(d.present)
            continue
        earlier = order[:next(k for k, sl in enumerate(order) if sl is d)]
        same = [z3.And(e.present, *_same(e, d)) for e in earlier]
        out.append(z3.And(d.present, z3.Not(z3.Or(*same))) if same else d.present)
    return out


def _replay_explained(runs: _Runs, i: int, budget) -> bool:
    """The lemma behind `explained` in `_violation`, for input i of an NF that reads no clock:
    from an *arbitrary* state X (array constants), with the primary's step P (choices p_i) and
    the standby's replay S (fresh choices s_i) both valid, and the reference's choices
    m_i = if(a replayed output got past the egress, s_i, p_i) -- whatever the egress saw of later
    inputs (a fresh Boolean) -- the reference's step M from X is valid, emits exactly what the
    egress lets out of P and S (`egress_view`), and leaves the state P leaves. Proved for every
    X, packet and choice, it holds at every failover point whose reference, primary and replay
    all step input i from the same state; there it replaces the point's conditions for input i
    (a random-drop NF under stateful.async then needs no query per failover point at all). An
    unproved lemma (a NAT remembers the choice: the states differ) costs one query per input,
    never soundness; one the solver gives up on (REPLAY_LEMMA_RLIMIT: wide multiplications from
    an arbitrary state) is not tried again for the other inputs."""
    key = ("replay explained", i)
    if runs.lemmas.get("replay lemma gave up"):  # the same lemma for another input: as hard
        return False
    if key not in runs.lemmas:
        proved = False
        answer: list = []
        try:
            x = _State(_arbitrary_state(runs.nf_cls, f"any{i}"))
            p, p_after = runs.step(x, i, "p")
            s, _ = runs.step(x, i, "s")
            m, m_after = runs.step(x, i, "m")
            view, leak = egress_view(p.outputs, s.outputs, z3.Bool(f"any{i}.later_seen"))
            borrowed = [mv == z3.If(leak, sv, pv) for mv, pv, sv in zip(
                runs.choice_vars.get(("m", i), []), runs.choice_vars.get(("p", i), []), runs.choice_vars.get(("s", i), []))]
            differs = [z3.Not(m.valid)] + [a != b for name in m_after.terms
                                           for a, b in zip(m_after.terms[name], p_after.terms[name]) if not a.eq(b)]
            outputs = outputs_differ(m.outputs, view)
            if outputs is not None:
                differs.append(outputs)
            proved = _proved_false(z3.Or(*differs), [p.valid, s.valid] + borrowed, budget, REPLAY_LEMMA_RLIMIT, answer)
        except ModelError:  # a path only an unreachable state takes: no lemma
            proved = False
        runs.lemmas[key] = proved
        if answer == [z3.unknown]:
            runs.lemmas["replay lemma gave up"] = True
    return runs.lemmas[key]


def _reference_times(runs: _Runs, n, point: _Point, source, standby_times: dict, leaks: dict, log_choices) -> list:
    """The reference's processing time of each input: the time of the run it borrows from,
    clamped into [a_i, a_i + S]; so it is always a failure-free timing. The primary's times
    (arrivals), logged clock reads and, when S >= F, the standby's times for inputs that arrive
    no earlier than the crash's upper bound are in their windows already and are borrowed as they are (the same terms,
    so where nothing else differs no query is needed); after a mixed input the running maximum
    keeps the times non-decreasing."""
    out, mixed, applied, upper = [], False, point.cut.applied, point.window[1]
    for i in range(1, n + 1):
        src = source(i)
        logged = log_choices and i <= applied
        if src == "p":
            t = runs.arrival(i)
        else:
            t = standby_times[i]
            # c <= a_upper <= a_i, so max(a_i, c + F) <= a_i + F <= a_i + S: in the window
            in_window = upper is not None and upper <= i and runs.max_stall >= runs.failover_time
            if not (logged or in_window):
                t = _umin(t, runs.latest(i))
            if src == "m":
                t = z3.If(leaks[i], t, runs.arrival(i))
        if mixed:
            t = _umax(out[-1], t)
        mixed |= src == "m"
        out.append(t)
    return out


def _reference_differs(runs: _Runs, n, observed, source, assumed=frozenset(), constants=None, aligned=True,
                       times=None, explained=None, skip=frozenset(), sequence=None, compare=None) -> list:
    """Conditions under which a failure-free reference run (choices from `source(i)`, input i
    processed at `times[i-1]`) fails to explain the observed outputs: it made a choice it could
    not make (checked only for steps not already assumed valid), or its outputs differ — input by
    input when `aligned` (stronger, and lets identical terms drop out), else as whole sequences
    (exactly `strict` equivalence: each egress's sequence). Inputs `explained(i, state)` (aligned only) need no condition:
    a lemma proved their step valid, its outputs the observed ones and its next state the
    primary's. Inputs in `skip` the reference lost (loss-at-failover). `sequence`: the observed
    slots in the egress's order, for the whole-sequence comparison (default: by input)."""
    violations, state, emitted = [], runs.init, []
    for i in range(1, n + 1):
        if i in skip:
            continue
        if aligned and explained is not None and explained(i, state):
            state = runs.primary_states[i]
            continue
        s, state = runs.step(state, i, source(i), constants, time=times[i - 1] if times else None)
        if id(s) not in assumed:
            violations.append(z3.Not(s.valid))
        emitted += s.outputs
        differ = outputs_differ(s.outputs, observed[i]) if aligned else None
        if differ is not None:
            violations.append(differ)
    if not aligned:
        if sequence is None:
            sequence = [slot for i in range(1, n + 1) for slot in observed[i]]
        violations.append(compare(emitted, sequence) if compare else _egresses_differ(emitted, sequence,
                                                                                       len(runs.nf_cls.gates)))
    return violations


FLOW_FIELDS = ("proto", "src", "sport", "dst", "dport")  # a flow, as Equivalence.channel's default_flow reads it


def _flows_differ_from(model):
    """For learning a per-flow witness: a condition under which the reference's outputs are not
    the observed ones up to an order that keeps every flow's (one egress, one 5-tuple: a
    channel's) -- read off `model`: each present reference output matched to the next present
    observed one of its channel, the presence of every slot as in the model, the matched pairs
    equal, and every pair of matches whose order differs on two different channels. (If the
    model's outputs do not match up, True: nothing learnt.)"""
    def value(t):
        v = model.eval(t, model_completion=True)
        return z3.is_true(v) if z3.is_bool(v) else v.as_long()

    def key(slot):  # (its channel's fields among them)
        return (value(slot.gate),) + tuple(value(slot.fields[f]) for f in PACKET_FIELDS if f in slot.fields)

    def compare(emitted, sequence):
        present = lambda slot: z3.is_true(model.eval(slot.present, True))  # noqa: E731
        pairs, used = [], set()
        for e in [sl for sl in emitted if present(sl)]:
            o = next((k for k, sl in enumerate(sequence) if k not in used and present(sl) and key(sl) == key(e)), None)
            if o is None:
                return z3.BoolVal(True)
            used.add(o)
            pairs.append((e, o))
        if len(used) != sum(1 for sl in sequence if present(sl)):
            return z3.BoolVal(True)
        explains = [sl.present if present(sl) else z3.Not(sl.present) for sl in list(emitted) + list(sequence)]
        for e, o in pairs:
            explains += _same(e, sequence[o])
        for (e1, o1), (e2, o2) in itertools.combinations(pairs, 2):
            if o1 > o2:  # reordered: allowed only between two channels
                explains.append(z3.Not(z3.And(*_same(e1, e2, FLOW_FIELDS))))
        return z3.Not(z3.And(*explains))
    return compare


def _egresses_differ(a: list[Slot], b: list[Slot], gates: int):
    """A condition under which some egress sees different sequences of present outputs in `a` and
    `b` (strict equivalence: each egress's sequence on its own, whatever the interleaving)."""
    if gates == 1:
        return sequence_differs(a, b)

    def on(slots, g):
        return [Slot(z3.And(slot.present, slot.gate == g), slot.gate, slot.fields) for slot in slots]
    return z3.Or(*[sequence_differs(on(a, g), on(b, g)) for g in range(gates)])


REACHABILITY_TWINS = ("the primary releases an output before the crash",
                      "the standby releases an output after the failover")


def _unwitnessed(runs: _Runs, strategy: Strategy, bound, log_choices, budget) -> list[str]:
    """The reachability twins of the proof: runs that show it is not vacuous (an NF that drops
    everything trivially 'keeps' equivalence). Shortest runs are tried first (cheapest queries).
    Returns the twins no run within the bound reaches."""
    missing = list(REACHABILITY_TWINS)
    for n in range(1, bound + 1):
        for point in _points(strategy, n, runs.clocked):
            assumptions, _, observed, _, seen_upto, _, _, _, _ = _failover_run(runs, strategy, n, point, log_choices, budget)
            inputs = {REACHABILITY_TWINS[0]: range(1, point.released + 1), REACHABILITY_TWINS[1]: range(seen_upto + 1, n + 1)}
            for twin in list(missing):
                present = [slot.present for i in inputs[twin] for slot in observed[i]]
                solver = smt.new_solver(budget)
                solver.add(*assumptions)
                if present and smt.check(solver, budget, z3.Or(*present)) == z3.sat:
                    missing.remove(twin)
            if not missing:
                return []
    return missing


GATE_SECONDS = 2.0  # time for one gate-reachability query (unknown: the gate is reported as not shown exercised)


def _unexercised_gates(runs: _Runs, bound: int, budget) -> list[str]:
    """The declared gates on which no failure-free run of up to `bound` inputs was shown to emit
    (a monitor's alert before its threshold): a proof says nothing about them. Satisfiability
    queries over the primary's runs (every choice valid, arrivals non-decreasing), shortest runs
    first: for each length i, whether input i can emit on a gate not seen yet."""
    gates = runs.nf_cls.gates
    missing = list(range(len(gates)))
    try:
        for i in range(1, bound + 1):
            if not missing:
                break
            assumptions = [runs.primary(k).valid for k in range(1, i + 1)] + runs.time_constraints(i, None)
            for g in list(missing):
                emits = [z3.simplify(z3.And(slot.present, slot.gate == g)) for slot in runs.primary(i).outputs]
                emits = [e for e in emits if not z3.is_false(e)]
                if not emits:
                    continue
                solver = smt.new_solver(budget)
                solver.add(*assumptions)
                gate_budget = smt.Budget(timeout=min(GATE_SECONDS, budget.remaining()), rlimit=budget.rlimit)
                budget.queries += 1
                if smt.check(solver, gate_budget, z3.Or(*emits), unknown_ok=True) == z3.sat:
                    missing.remove(g)
    except smt.BudgetExhausted:
        pass  # out of time: the gates not shown exercised so far stay listed
    return [gates[g] for g in missing]


class EncodingMismatch(RuntimeError):
    """The symbolic encoding and the concrete simulation disagree: a bug in nfproof, never a verdict."""


def _solve(runs, nf_cls, strategy, n, point: _Point, query, budget, log_choices, rlimit=None, refinements=MAX_REFINEMENTS):
    """None (no violation at this point), a confirmed Counterexample, "undecided" (refinements
    ran out), or with a smaller `rlimit` "deferred" when a query hits it (try again with the
    budget's own)."""
    assumptions, violation, observed, reference_times, order, late = query
    s = smt.new_solver(budget, rlimit=rlimit)
    s.add(*assumptions)
    s.add(violation)
    found = None  # a counterexample on the solver's own values; from then on candidates are made readable
    for _ in range(refinements):
        answer = smt.check(s, budget, unknown_ok=rlimit is not None or found is not None)
        if answer == z3.unknown:
            return found or "deferred"
        if answer == z3.unsat:
            return found
        model = s.model() if found is None else readable_model(s, runs, n, budget)
        if any(z3.is_true(model.eval(c, True)) for c in late):
            return found or "undecided"
        run, explanation = _judge(runs, nf_cls, strategy, n, point, model, order, reference_times, log_choices)
        if not explanation.explained and found is not None:
            return Counterexample(nf_cls, run, explanation, log_choices, runs.max_stall, runs.eq)
        if not explanation.explained:  # shown with readable values where they are a counterexample too
            found = Counterexample(nf_cls, run, explanation, log_choices, runs.max_stall, runs.eq)
            if rlimit is not None:  # readable values get the budget's own limit
                s.set("rlimit", budget.rlimit)
            model = readable_model(s, runs, n, budget)
            if any(z3.is_true(model.eval(c, True)) for c in late):
                return found
            run, explanation = _judge(runs, nf_cls, strategy, n, point, model, order, reference_times, log_choices)
            if not explanation.explained:
                return Counterexample(nf_cls, run, explanation, log_choices, runs.max_stall, runs.eq)
            # (else the readable twin is explained: learn from it, and look for a readable counterexample)

        def value(t):
            return model.eval(t, model_completion=True).as_long()

        # Counterexample-guided refinement: the failure-free run that explained this candidate is
        # another reference; from now on a violation must also escape it.
        runs.learnt += 1
        learnt = _learnt_choices(runs, explanation.choices, value)
        times, time_invalid = None, []
        if runs.clocked:
            times, time_invalid = _learnt_times(runs, n, explanation.times, reference_times, value)
        # (the outputs it passed over as duplicates, as slots: compared without them, each of which
        # must repeat an earlier one; under per-flow, the order it matched them in)
        if runs.aligned:  # the learnt reference must match input by input, this candidate included
            differs = _reference_differs(runs, n, observed, lambda i: f"learnt{runs.learnt}", constants=learnt,
                                         times=times) + time_invalid
            if not differs:
                return found
            if any(z3.is_true(model.eval(d, True)) for d in differs):
                return found or "undecided"
            s.add(z3.Or(*differs))
            continue
        present = [sl for sl in order if z3.is_true(model.eval(sl.present, True))]
        passed = [present[k] for k in explanation.skipped]
        differs = _reference_differs(runs, n, observed, lambda i: f"learnt{runs.learnt}", constants=learnt,
                                     aligned=False, times=times, skip=set(explanation.lost),
                                     sequence=[sl for sl in order if not any(sl is p for p in passed)],
                                     compare=_flows_differ_from(model) if runs.eq.relation == "per-flow" else None) \
            + time_invalid + _not_duplicates(passed, order, True)
        if not differs:
            return found
        s.add(z3.Or(*differs))
    return found or "undecided"


def _judge(runs: _Runs, nf_cls, strategy, n: int, point: _Point, model, order, reference_times, log_choices):
    """The concrete run of a solver's candidate (checked against the solver's outputs) and the
    failure-free search's explanation of it (none: a counterexample)."""
    def value(t):
        return model.eval(t, model_completion=True).as_long()

    run = concrete_run(runs, strategy, n, point, model, log_choices)
    seen = [(nf_cls.gates[model.eval(slot.gate, True).as_long()], _packet(model, slot.fields))
            for slot in order if z3.is_true(model.eval(slot.present, True))]
    if seen != run.observed_outputs:
        raise EncodingMismatch(f"{nf_cls.name} under {strategy}: the solver's run lets out {seen}, "
                               f"the concrete simulation {run.observed_outputs}")
    lossable = in_flight(point.released, point.cut.applied)
    if runs.clocked:
        return run, explain(nf_cls, run.inputs, run.observed_outputs, run.arrivals, runs.max_stall,
                            prefer=[value(t) for t in reference_times], eq=runs.eq, lossable=lossable)
    return run, explain(nf_cls, run.inputs, run.observed_outputs, eq=runs.eq, lossable=lossable)


def readable_model(s, runs: _Runs, n: int, budget):
    """The model of a satisfied solver, or one with readable values where one exists (the
    strictest set of constraints first; the solver is left as it was)."""
    model = s.model()
    pretty = _pretty(runs.nf_cls, runs.inputs[:n])
    if runs.clocked:
        times = _pretty_times(runs, n)
        pretty = [c + t for c, t in zip(pretty, times + times[-1:] * (len(pretty) - len(times)))]
    for constraints in pretty:
        s.push()
        s.add(*constraints)
        found = smt.check(s, budget, unknown_ok=True) == z3.sat
        if found:
            model = s.model()
        s.pop()
        if found:
            break
    return model


def concrete_run(runs: _Runs, strategy: Strategy, n: int, point: _Point, model, log_choices) -> FailoverRun:
    """The failover run a model of the encoding describes (inputs, choices, times), executed by the
    concrete simulation."""
    inputs = [_packet(model, runs.inputs[i]) for i in range(n)]

    def chooser(source):
        return lambda i: _scripted_or_any(model, runs.choice_vars.get((source, i), []))

    def value(t):
        return model.eval(t, model_completion=True).as_long()

    cut, timing = point.cut, {}
    if runs.clocked:
        arrivals, crash_time = [value(runs.arrival(i)) for i in range(1, n + 1)], value(runs.crash)
        cut = _cut_at(strategy, n, point, arrivals, crash_time)
        timing = dict(arrivals=arrivals, crash_time=crash_time, failover_time=runs.failover_time)
    return simulate(runs.nf_cls, strategy, inputs, cut, point.r, chooser("p"), chooser("s"), log_choices, **timing)


def _cut_at(strategy: Strategy, n: int, point: _Point, arrivals: list, crash_time: int):
    """The cut of a failover point whose own crash window holds `crash_time` (for the story)."""
    events = strategy.events(n)
    cuts = strategy.cuts(n)
    for k in range(point.cut.k, point.last_k + 1):
        low = arrivals[events[k - 1][1] - 1] if k > 0 else 0
        high = arrivals[events[k][1] - 1] if k < len(events) else None
        if low <= crash_time and (high is None or crash_time <= high):
            return cuts[k]
    return point.cut


def _learnt_choices(runs: _Runs, choices: list, value) -> dict:
    """An explanation's choices (input -> values in call order) as terms that generalise beyond
    this candidate: each value as the first choice variable of the observed run for that input
    (the standby's, the primary's, the egress's borrowing; the same call index first) that holds
    it here, else the constant. A reference whose path makes its choices at other call indices
    than the observed run's (a standby that starts empty chooses for a table entry the reference
    has already) then borrows the right one at every candidate, not at this one only. Sound as
    any reference: its steps' validity is part of what a violation must break."""
    out = {}
    for i, values in enumerate(choices, 1):
        pool = [runs.choice_vars.get((source, i), []) for source in ("s", "p", "m")]
        terms = []
        for k, v in enumerate(values):
            if not isinstance(v, int):
                terms.append(v)
                continue
            options = [vs[k] for vs in pool if k < len(vs)] + [t for vs in pool for t in vs]
            terms.append(next((t for t in options if value(t) == v), v))
        out[i] = terms
    return out


def _learnt_times(runs: _Runs, n, times: list, reference_times: list, value) -> tuple[list, list]:
    """An explanation's processing times as terms that generalise beyond this candidate: each
    one as the first of (the default reference's time, a_i, a_i + S, the previous time) equal to
    it here, else the constant; with the conditions under which those terms leave the window
    (then the learnt reference does not apply)."""
    out, invalid = [], []
    for i in range(1, n + 1):
        options = [reference_times[i - 1], runs.arrival(i), runs.latest(i)] + out[-1:]
        # ... or an offset inside the window from the arrival or the previous time (a constant
        # would block one candidate only: refinements would run out before a proof)
        options += [runs.arrival(i) + _tick(k) for k in range(1, min(runs.max_stall, LEARNT_OFFSETS))]
        options += [out[-1] + _tick(k) for k in range(1, min(runs.max_stall, LEARNT_OFFSETS) + 1) if out]
        term = next((t for t in options if value(t) == times[i - 1]), _tick(times[i - 1]))
        invalid += [z3.ULT(term, runs.arrival(i)), z3.UGT(term, runs.latest(i))]
        if out:
            invalid.append(z3.ULT(term, out[-1]))
        out.append(term)
    return out, [c for c in (z3.simplify(c) for c in invalid) if not z3.is_false(c)]


def _scripted_or_any(model, variables: list):
    """A chooser replaying a model's choices in call order (a seeded pick past their end)."""
    return scripted([model.eval(v, model_completion=True).as_long() for v in variables], seeded(0))


def _packet(model, fields: dict) -> Packet:
    values = {f: model.eval(t, model_completion=True) for f, t in fields.items()}
    return Packet(**{f: z3.is_true(v) if f == "inbound" else v.as_long() for f, v in values.items()})


def _pretty_times(runs: _Runs, n: int) -> list[list]:
    """Small, readable times: the first input at 0 and short gaps (strict), any short horizon (loose)."""
    horizon = _tick(4 * n * (runs.failover_time + runs.max_stall + 1))
    short = [z3.ULE(runs.arrival(n), horizon), z3.ULE(runs.crash, horizon + _tick(runs.failover_time + runs.max_stall))]
    return [[runs.arrival(1) == 0] + short, short]


def _pretty(nf_cls: type[NF], inputs: list[dict]) -> list[list]:
    """Constraint sets steering a counterexample to readable values, strictest first (each is
    tried and dropped if unsat): LAN hosts talk to remote servers, inbound packets come back from
    them to the NF's own addresses and ports; inputs carry no label (as a capture's frames)."""
    constants = []
    for klass in nf_cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, Pool):
                constants.extend(value.values())
            elif isinstance(value, int) and not isinstance(value, bool):
                constants.append(value)
    local = [addr("10.0.0.1"), addr("10.0.0.2")]
    remote = [addr("198.51.100.1"), addr("198.51.100.2")]
    own_addrs = [c for c in constants if c >= 1 << 16]
    own_ports = [c for c in constants if 0 < c < 1 << 16]

    def one_of(t, values):
        return z3.Or(*[t == v for v in values if v < 1 << t.size()])

    strict, loose, unlabelled = [], [], []
    for p in inputs:
        b = p["inbound"]
        unlabelled.append(p["label"] == 0)  # labels travel beside frames: 0 at the ingress of a real capture
        strict += [p["proto"] == TCP, one_of(p["flags"], [flags("S"), flags("A")]),
                   z3.If(b, one_of(p["src"], remote), one_of(p["src"], local)),
                   z3.If(b, one_of(p["sport"], [80, 443]), one_of(p["sport"], [1000, 1001])),
                   z3.If(b, one_of(p["dst"], own_addrs + local), one_of(p["dst"], remote)),
                   z3.If(b, one_of(p["dport"], own_ports + [1000, 1001]), one_of(p["dport"], [80, 443]))]
        loose += [one_of(p["proto"], [TCP, UDP]), one_of(p["src"], local + remote + own_addrs),
                  one_of(p["dst"], local + remote + own_addrs),
                  one_of(p["sport"], [1000, 1001, 80, 443] + own_ports), one_of(p["dport"], [1000, 1001, 80, 443] + own_ports)]
    return [strict + unlabelled, loose + unlabelled, unlabelled]
