"""Concrete failover runs and the exact equivalence check.

`simulate` executes the failover protocol of DESIGN.md operationally on concrete packets: the
primary follows the strategy's timeline up to the crash, the standby resumes from the protected
state, the upstream replays, the egress suppresses duplicates. `explain` decides by exhaustive
search whether some failure-free execution produces the observed outputs (under an equivalence
of verify/equivalence.py; strict by default).

Time (DESIGN.md "Time"), when `arrivals` are given (ticks of the NF's clock): the primary
processes input i at its arrival a_i (every event of its timeline after `apply i` happens then);
the crash happens at `crash_time`; the failover ends at crash_time + F; the standby processes
each input it handles at max(a_i, crash + F, its previous processing time), except that under
--log-choices an input the primary applied before the crash reuses the primary's clock reads
(they are logged synchronously as they are read: FTMB's packet access log). A failure-free
execution processes input i at any t_i in [a_i, a_i + S] (S: the accepted stall), non-decreasing.
Every clock read of one step returns that step's processing time. Without arrivals every clock
reads 0 (an NF that reads no clock behaves the same either way).

Together they are the ground truth the symbolic check is tested against, and every
counterexample the solver proposes is re-executed here before it is reported."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..models.api import NF, Packet, ip
from ..models.concrete import all_steps, backtrack, copy_state, freeze_state, initial_state, scripted, step
from ..models.strategy import Cut, Strategy
from .equivalence import STRICT, Equivalence, in_flight


@dataclass
class Event:
    kind: str      # apply, protect, release, crash, failover, replay, deliver, duplicate
    actor: str     # primary, standby, egress, upstream
    input: int     # 1-based input index (0: none)
    text: str
    outputs: list = field(default_factory=list)  # [(gate, Packet)]


@dataclass
class FailoverRun:
    strategy: Strategy
    inputs: list[Packet]
    cut: Cut
    protected: int                   # r: the standby resumes from the state covering inputs <= r
    observed: list                   # [(input, gate, Packet)] as the egress let them out
    events: list[Event]
    primary_choices: dict            # input -> the primary's choices for it
    standby_choices: dict            # input -> the standby's choices for it
    arrivals: list | None = None     # arrival time of each input (ticks), None: untimed
    crash_time: int | None = None
    failover_end: int | None = None  # crash_time + F: the standby starts processing then
    primary_times: dict = field(default_factory=dict)   # input -> when the primary processed it
    standby_times: dict = field(default_factory=dict)   # input -> when the standby processed it
    read_clock: bool = False         # some step of the run called now()

    @property
    def observed_outputs(self) -> list:
        return [(g, p) for _, g, p in self.observed]


def simulate(nf_cls: type[NF], strategy: Strategy, inputs: list[Packet], cut: Cut, protected: int,
             primary_chooser, standby_chooser, log_choices: bool = False, arrivals: list | None = None,
             crash_time: int | None = None, failover_time: int = 0, story: bool = True,
             step_cache: dict | None = None) -> FailoverRun:
    """`primary_chooser(i)` / `standby_chooser(i)` give the chooser used for input i. With
    `arrivals` (one time per input), the crash happens at `crash_time` (default: the time of the
    cut's last event) and the failover takes `failover_time` ticks. `story=False` skips the
    event texts; `step_cache` (a dict kept across runs) memoises steps that made no choice."""
    n, events = len(inputs), []

    def note(kind, actor, i, text, outputs=()):
        if story:  # the texts cost more than the run: the enumerator builds them only for what it shows
            events.append(Event(kind, actor, i, text(), list(outputs)))

    timeline = strategy.events(n) if step_cache is None else _cached(step_cache, ("events", strategy, n), strategy.events)
    timed = arrivals is not None
    if timed and crash_time is None:
        crash_time = arrivals[timeline[cut.k - 1][1] - 1] if cut.k > 0 else 0
    at = (lambda t: f"at {t}: ") if timed else (lambda t: "")
    initial = _initial_state(nf_cls, step_cache)
    state = initial if step_cache is not None else copy_state(initial)
    snapshots, outputs, choices, clock_reads = {0: initial}, {}, {}, {}
    primary_times, read_clock = {}, False
    for i in range(1, cut.applied + 1):
        primary_times[i] = arrivals[i - 1] if timed else 0
        res, state = _step(nf_cls, state, inputs[i - 1], primary_chooser(i), primary_times[i], step_cache)
        snapshots[i] = state if step_cache is not None else copy_state(state)
        outputs[i], choices[i], clock_reads[i] = res.outputs, res.choices, res.clock_reads
        read_clock |= bool(res.clock_reads)
        note("apply", "primary", i, lambda: at(primary_times[i]) + f"applies input {i}: " + _describe(inputs[i - 1], res), res.outputs)

    observed, last = [], (0, -1)

    def deliver(i, outs, actor):
        nonlocal last
        for j, (gate, pkt) in enumerate(outs):
            if (i, j) <= last and strategy.dedup:
                note("duplicate", "egress", i, lambda: f"drops the duplicate {pkt} on {gate}")
            else:
                observed.append((i, gate, pkt))
                last = max(last, (i, j))
                note("deliver", "egress", i, lambda: f"lets out output {len(observed)}: {gate}: {pkt}")

    released = 0
    for kind, i in timeline[:cut.k]:
        when = at(arrivals[i - 1]) if timed else ""
        if kind == "protect":
            note("protect", "primary", i, lambda: when + f"state covering inputs 1..{i} acknowledged")
        elif kind == "send":
            note("protect", "primary", i, lambda: when + f"sends the state change of input {i} (not awaited)")
        elif kind == "release":  # releases every unreleased output up to input i (a whole batch under commit)
            for j in range(released + 1, i + 1):
                if outputs[j]:
                    note("release", "primary", j, lambda: when + f"releases the outputs of input {j}", outputs[j])
                deliver(j, outputs[j], "primary")
            released = i
    failover_end = crash_time + failover_time if timed else None
    note("crash", "primary", cut.applied, lambda: at(crash_time) + f"crashes (after {cut.applied} applied, "
         f"{cut.released} released)" + (f"; the failover ends at {failover_end}" if timed else ""))

    start = strategy.replay_start(cut.released, protected)
    if strategy.replays_from_protected:
        state = snapshots[protected] if step_cache is not None else copy_state(snapshots[protected])
        covering = f"the state covering inputs 1..{protected}" if protected else "the initial state (nothing was protected)"
        note("failover", "standby", protected, lambda: at(failover_end) + f"takes over with {covering}")
        for i in range(cut.released + 1, protected + 1 if strategy.standby_releases_protected else 0):
            if outputs[i]:
                note("release", "standby", i, lambda: f"releases the protected outputs of input {i}", outputs[i])
            deliver(i, outputs[i], "standby")
    else:
        state = initial if step_cache is not None else copy_state(initial)
        note("failover", "standby", 0, lambda: at(failover_end) + "takes over with an empty state")
    standby_choices, standby_times, previous = {}, {}, failover_end
    for i in range(start + 1, n + 1):
        if lost(strategy, cut.applied, i):
            note("lost", "upstream", i, lambda: f"kept no copy of input {i}: it is lost (--no-replay-input)")
            continue
        logged = log_choices and i <= cut.released
        clock_logged = log_choices and i <= cut.applied
        chooser = _logged(choices[i], standby_chooser(i)) if logged else standby_chooser(i)
        if not timed:
            standby_times[i] = 0
        elif clock_logged:
            standby_times[i] = primary_times[i]
        else:
            standby_times[i] = max(arrivals[i - 1], failover_end, previous)
        if timed:
            previous = max(previous, standby_times[i])
        res, state = _step(nf_cls, state, inputs[i - 1], chooser, standby_times[i], step_cache)
        read_clock |= bool(res.clock_reads)
        standby_choices[i] = res.choices
        kind = "replay" if i <= cut.applied else "apply"
        note(kind, "standby", i, lambda: at(standby_times[i]) + f"{'replays' if kind == 'replay' else 'applies'} input {i}: "
             + _describe(inputs[i - 1], res, logged)
             + (f"; reuses the logged clock read {standby_times[i]}" if timed and clock_logged and res.clock_reads else ""),
             res.outputs)
        deliver(i, res.outputs, "standby")
    return FailoverRun(strategy, list(inputs), cut, protected, observed, events, choices, standby_choices,
                       list(arrivals) if timed else None, crash_time if timed else None, failover_end,
                       primary_times if timed else {}, standby_times if timed else {}, read_clock)


def lost(strategy: Strategy, applied: int, i: int) -> bool:
    """Whether input i, one the standby would take over, is lost: handed to the primary before the
    crash (one of the `applied` first), and the upstream kept no copy (--no-replay-input)."""
    return not strategy.replay_input and i <= applied


def observations(nf_cls: type[NF], strategy: Strategy, inputs: list[Packet], cut: Cut, protected: int,
                 log_choices: bool = False, arrivals: list | None = None, crash_time: int | None = None,
                 failover_time: int = 0, step_cache: dict | None = None, decode: bool = True) -> tuple[set, bool]:
    """What the egress can let out in the failover runs of one shape (inputs, cut, protected point,
    times), over every combination of the primary's and the standby's choices: (the set of
    observed output sequences, as tuples of (gate, Packet), whether some step read the clock).

    The same runs as `simulate` with every pair of choosers (the enumerator's backtracking over
    whole runs), computed by dynamic programming instead: runs are followed step by step and two
    partial runs are merged when everything the rest of the run can depend on is equal -- the
    state (frozen), the outputs that will be let out, the choices the standby will reuse (under
    --log-choices), the protected snapshot; the primary's steps past everything the standby and
    the egress use (outputs up to max(released, r), choices up to `released`, the state at r)
    still run, for their clock reads only. The product of the choices per run becomes a sum over
    distinct partial runs. tests/test_enumeration.py checks it against `simulate` run by run.
    With `decode` False the sequences are tuples of ints, `observed_items(step_cache)` their
    outputs (cheaper keys for a caller that sees many shapes)."""
    n = len(inputs)
    timed = arrivals is not None
    cache = step_cache if step_cache is not None else {}
    timeline = _cached(cache, ("events", strategy, n), strategy.events)
    if timed and crash_time is None:
        crash_time = arrivals[timeline[cut.k - 1][1] - 1] if cut.k > 0 else 0
    released, applied = cut.released, cut.applied
    replays = strategy.replays_from_protected
    seen_upto = max(released, protected) if replays and strategy.standby_releases_protected else released
    read_clock = False

    def frozen(state):
        """freeze_state, remembered per state object (states here are never changed once made; the
        cache keeps each alive, so its id stays its own)."""
        hit = cache.get(("obs-frozen", id(state)))
        if hit is None:
            hit = cache[("obs-frozen", id(state))] = (state, freeze_state(state))
        return hit[1]

    items = cache.setdefault(("obs-items",), ({}, []))  # (gate, Packet) <-> small int: cheap keys to hash

    def coded(res) -> tuple:
        """A step's outputs as interned ints (remembered per result object, which the cache keeps)."""
        hit = cache.get(("obs-code", id(res)))
        if hit is None:
            index, table = items
            code = []
            for o in res.outputs:
                if o not in index:
                    index[o] = len(table)
                    table.append(o)
                code.append(index[o])
            hit = cache[("obs-code", id(res))] = (res, tuple(code))
        return hit[1]

    def steps(state, i, t, logged=()):
        """[(state after, StepResult)] of input i at time t over every choice (logged ones first)."""
        nonlocal read_clock
        key = ("obs", frozen(state), id(inputs[i - 1]), t, tuple(logged))
        hit = cache.get(key)
        if hit is None:
            def run(chooser):
                pending = list(logged)
                after = copy_state(state)
                res = step(nf_cls, after, inputs[i - 1], (lambda options: pending.pop(0) if pending else chooser(options)),
                           _fixed_clock(t))
                return after, res
            hit = cache[key] = [r for _, r in backtrack(run)]
        read_clock |= any(res.clock_reads for _, res in hit)
        return hit

    # the primary: (state, outputs[1..], choices[1..] the standby reuses, snapshot at r); the same
    # for every crash time of a cut (remembered)
    init = cache.get(("obs-init", nf_cls))
    if init is None:
        init = cache[("obs-init", nf_cls)] = initial_state(nf_cls)
    primary_key = ("obs-primary", nf_cls, tuple(map(id, inputs)), tuple(arrivals or ()), applied, seen_upto,
                   released if log_choices else None, protected)
    frontier = cache.get(primary_key)
    if frontier is None:
        frontier = {(frozen(init), (), (), frozen(init) if protected == 0 else None): (init, init)}
        for i in range(1, applied + 1):
            nxt = {}
            for (_, outs, logs, snap), (state, snapshot) in frontier.items():
                for after, res in steps(state, i, arrivals[i - 1] if timed else 0):
                    o = outs + (coded(res),) if i <= seen_upto else outs
                    c = logs + (tuple(res.choices),) if log_choices and i <= released else logs
                    snap_state, snap_key = (after, frozen(after)) if i == protected else (snapshot, snap)
                    key = (frozen(after), o, c, snap_key)
                    if key not in nxt:
                        nxt[key] = (after, snap_state)
            frontier = nxt
        cache[primary_key] = (frontier, read_clock)
    else:
        frontier, primary_read = frontier
        read_clock |= primary_read
    start = strategy.replay_start(released, protected)
    failover_end = crash_time + failover_time if timed else None

    results: set = set()
    for (_, outs, logs, _), (_, snapshot) in frontier.items():
        observed, last = [], (0, -1)

        def deliver(i, out, observed, last):
            for j, o in enumerate(out):
                if (i, j) > last or not strategy.dedup:
                    observed.append(o)
                    last = max(last, (i, j))
            return last
        for i in range(1, released + 1):
            last = deliver(i, outs[i - 1], observed, last)
        if replays:
            state = snapshot
            if strategy.standby_releases_protected:
                for i in range(released + 1, protected + 1):
                    last = deliver(i, outs[i - 1], observed, last)
        else:
            state = init
        # the standby: partial runs merged on (state, what was let out, the egress's last index)
        partial = {(frozen(state), tuple(observed), last): state}
        previous = failover_end
        for i in range(start + 1, n + 1):
            if lost(strategy, applied, i):
                continue
            logged = logs[i - 1] if log_choices and i <= released else ()
            if not timed:
                t = 0
            elif log_choices and i <= applied:
                t = arrivals[i - 1]
            else:
                t = max(arrivals[i - 1], failover_end, previous)
            if timed:
                previous = max(previous, t)
            nxt = {}
            for (_, seen, last), st in partial.items():
                for after, res in steps(st, i, t, logged):
                    out = list(seen)
                    new_last = deliver(i, coded(res), out, last)
                    key = (frozen(after), tuple(out), new_last)
                    if key not in nxt:
                        nxt[key] = after
            partial = nxt
        results.update(seen for _, seen, _ in partial)
    if not decode:
        return results, read_clock
    table = items[1]
    return {tuple(table[k] for k in seen) for seen in results}, read_clock


def observed_items(step_cache: dict) -> list:
    """The (gate, Packet) of each int in the sequences `observations(..., decode=False)` returns."""
    return step_cache[("obs-items",)][1]


DEFAULT_FAILOVER_SECONDS = 1  # --failover-time default: a standby takes over within a second


def default_failover_ticks(nf_cls: type[NF]) -> int:
    """The default failover time F in the NF's clock ticks (one second); --max-stall S defaults to F."""
    return DEFAULT_FAILOVER_SECONDS * getattr(nf_cls, "ticks_per_second", 1)


def _logged(values: list, fallback):
    """The standby reuses the primary's logged choices as they are (FTMB), available or not:
    replay is deterministic; past the log (a path the primary did not take) it chooses afresh."""
    pending = list(values)
    return lambda options: pending.pop(0) if pending else fallback(options)


def _initial_state(nf_cls, cache):
    if cache is None:
        return initial_state(nf_cls)
    if ("initial", nf_cls) not in cache:
        cache[("initial", nf_cls)] = state = initial_state(nf_cls)
        cache[("frozen", id(state))] = freeze_state(state)
    return cache[("initial", nf_cls)]


def _step(nf_cls, state, pkt, chooser, t, cache):
    """One concrete step at time t: (result, the state after it). With a cache, states are
    values (never changed once made) and a step that made no choice is looked up by (state,
    packet, time) -- time None if it read no clock. Packets are keyed by identity (the
    enumerator's universe), cached states by identity too (the cache keeps them alive)."""
    if cache is None:
        return step(nf_cls, state, pkt, chooser, _fixed_clock(t)), state
    frozen = cache.get(("frozen", id(state)))
    if frozen is None:
        frozen = freeze_state(state)
    hit = cache.get((frozen, id(pkt), None)) or cache.get((frozen, id(pkt), t))
    if hit is not None:
        return hit
    after = copy_state(state)
    res = step(nf_cls, after, pkt, chooser, _fixed_clock(t))
    if not res.choices:
        cache[(frozen, id(pkt), t if res.clock_reads else None)] = (res, after)
        cache[("frozen", id(after))] = freeze_state(after)
    return res, after


def _cached(cache, key, make):
    if key not in cache:
        cache[key] = make(key[-1])
    return cache[key]


def _fixed_clock(t: int):
    """The clock of one step: every read returns the step's processing time."""
    return lambda: t


def choices_text(res) -> str:
    """A step's choices as a story shows them (addresses dotted)."""
    return ", ".join(ip(v) if getattr(k, "name", "") == "Addr" else str(v)
                     for v, k in zip(res.choices, res.choice_kinds + [None] * len(res.choices)))


def _describe(pkt: Packet, res, logged: bool = False) -> str:
    text = f"{pkt}"
    if res.choices:
        text += f"; {'reuses the logged choice' if logged else 'chooses'} {choices_text(res)}"
    if res.drops:
        text += f"; drops it ({', '.join(res.drops)})"
    return text


@dataclass
class Explanation:
    explained: bool
    matched: int                     # longest prefix of the observed outputs some execution produces
    expected: list = field(default_factory=list)   # what failure-free executions emit instead there
    choices: list = field(default_factory=list)    # the witness's choices per input, if explained
    times: list = field(default_factory=list)      # the witness's processing time per input (timed)
    read_clock: bool = False                       # some step the search tried called now()
    lost: list = field(default_factory=list)       # inputs (1-based) the witness lost in flight (loss-at-failover)
    skipped: list = field(default_factory=list)    # observed outputs (0-based) it skips as duplicates


def explain(nf_cls: type[NF], inputs: list[Packet], observed: list, arrivals: list | None = None,
            max_stall: int = 0, prefer: list | None = None, step_cache: dict | None = None,
            eq: Equivalence = STRICT, lossable: Iterable[int] = ()) -> Explanation:
    """Does some failure-free execution on `inputs` emit `observed` ([(gate, Packet)]) under the
    equivalence `eq` (for `strict`: on every egress exactly the sequence it emits there)? With
    `arrivals`, input i may be processed at any time in [a_i, a_i + max_stall], times
    non-decreasing, and every such time is tried (`prefer[i]`, if given, first); a step that reads
    no clock is processed at the earliest time allowed, which leaves later steps the most room
    (its result does not depend on the time). Under
    loss-at-failover the execution may also have lost any of the inputs `lossable` (1-based: in
    flight at the crash); with duplicates allowed an observed output equal to an earlier one on
    its channel may be skipped."""
    # The search keeps a position in each channel's sequence of observed outputs (the relation's
    # `Equivalence.channel`: the egress, or the egress and flow); a lost input steps nothing, and
    # an observed duplicate may be passed over where an output is matched or at the end.
    lossable = set(lossable) if eq.lossy else set()
    channel_of = [eq.channel(gate, pkt, None) for gate, pkt in observed]
    channels = list(dict.fromkeys(channel_of))
    index = {c: k for k, c in enumerate(channels)}
    lanes = [[k for k, c in enumerate(channel_of) if c == ch] for ch in channels]  # observed indices per channel
    dup = {k: eq.allow_duplicates and any(observed[e] == observed[k] for e in lane[:m])  # may be passed over
           for lane in lanes for m, k in enumerate(lane)}
    best = Explanation(False, -1)
    seen = set()
    timed, read_clock = arrivals is not None, False

    def frontier(pos) -> int:
        """The first observed output not yet matched or skipped (the matched prefix of the story)."""
        return min((lanes[c][p] for c, p in enumerate(pos) if p < len(lanes[c])), default=len(observed))

    def matches(pos, outs, m=0, skipped=()):
        """Every (positions, skipped duplicates) that match outs[m:] from `pos`."""
        if m == len(outs):
            yield pos, skipped
            return
        gate, pkt = outs[m]
        c = index.get(eq.channel(gate, pkt, None))
        if c is None:
            return
        p, lane = pos[c], lanes[c]
        while p < len(lane):
            if observed[lane[p]] == outs[m]:
                yield from matches(pos[:c] + (p + 1,) + pos[c + 1:], outs, m + 1, skipped + tuple(lane[pos[c]:p]))
            if not dup[lane[p]]:
                return
            p += 1

    def fail(pos, outs):
        """Remember how far a branch matched and the output it would have emitted there instead."""
        nonlocal best
        pos, m = list(pos), 0
        while m < len(outs):  # the outputs that do match, in order
            c = index.get(eq.channel(*outs[m], None))
            if c is None or pos[c] >= len(lanes[c]) or observed[lanes[c][pos[c]]] != outs[m]:
                break
            pos[c] += 1
            m += 1
        at = frontier(pos)
        if at > best.matched:
            best = Explanation(False, at, [])
        if at == best.matched and m < len(outs) and outs[m] not in best.expected:
            best.expected.append(outs[m])

    def every_step(state, i, t):
        if step_cache is None:
            return all_steps(nf_cls, state, inputs[i], _fixed_clock(t))
        key = ("all", freeze_state(state), id(inputs[i]), t)
        if key not in step_cache:
            step_cache[key] = all_steps(nf_cls, state, inputs[i], _fixed_clock(t))
        return step_cache[key]

    def search(i, pos, state, trail, times, earliest, lost, skipped):
        nonlocal best, read_clock
        if i == len(inputs):
            rest = [k for c, lane in enumerate(lanes) for k in lane[pos[c]:]]
            if all(dup[k] for k in rest):
                best = Explanation(True, len(observed), [], trail, times, lost=lost, skipped=sorted(skipped + tuple(rest)))
                return True
            fail(pos, [])
            return False
        if timed:
            earliest = max(earliest, arrivals[i])
        key = (i, pos, freeze_state(state), earliest)
        if key in seen:
            return False
        seen.add(key)
        at_earliest = every_step(state, i, earliest)
        timings = [earliest]
        read_clock |= any(res.clock_reads for _, res in at_earliest)
        if timed and any(res.clock_reads for _, res in at_earliest):  # the preferred time, the latest, the earliest, ...
            latest = arrivals[i] + max_stall
            timings = [prefer[i]] if prefer is not None and earliest <= prefer[i] <= latest else []
            timings += [t for t in (latest, earliest) if t not in timings]
            timings += [t for t in range(earliest + 1, latest) if t not in timings]
        for t in timings:
            for new_state, res in (at_earliest if t == earliest else every_step(state, i, t)):
                found = False
                for new_pos, skip in matches(pos, res.outputs):
                    found = True
                    if search(i + 1, new_pos, new_state, trail + [res.choices], times + [t], t, lost, skipped + skip):
                        return True
                if not found:
                    fail(pos, res.outputs)
        if i + 1 in lossable:  # lost in flight: the execution never saw it
            return search(i + 1, pos, state, trail + [[]], times + [earliest], earliest, lost + [i + 1], skipped)
        return False

    search(0, (0,) * len(channels), initial_state(nf_cls), [], [], 0, [], ())
    best.read_clock = read_clock
    return best


def reproduce(nf: str, strategy: str, inputs: list[Packet], crash: int, protected: int,
              primary_choices: dict, standby_choices: dict, log_choices: bool = False,
              arrivals: list | None = None, crash_time: int | None = None, failover_time: int = 0,
              max_stall: int = 0, replay_input: bool = True, dedup: bool = True, mutation: str | None = None,
              equivalence: str = "strict", allow_duplicates: bool = False) -> bool:
    """Re-run a reported counterexample concretely; prints what the egress saw and whether a
    failure-free execution explains it. Returns True if it does (i.e. no bug). Times (arrivals,
    crash_time, failover_time, max_stall) are in the NF's clock ticks; the protocol switches, an
    injected bug and the equivalence as `nfproof verify` takes them."""
    from ..models import lookup

    nf_cls, strat = (nf if isinstance(nf, type) else lookup(nf)), Strategy.parse(strategy).switched(replay_input, dedup)
    if mutation:
        strat = strat.mutated(mutation)
    eq = Equivalence(equivalence, allow_duplicates)
    cut = strat.cuts(len(inputs))[crash]
    run = simulate(nf_cls, strat, inputs, cut, protected,
                   lambda i: scripted(primary_choices.get(i, [])), lambda i: scripted(standby_choices.get(i, [])),
                   log_choices, arrivals, crash_time, failover_time)
    for e in run.events:
        print(f"{e.actor:8} {e.text}")
    verdict = explain(nf_cls, inputs, run.observed_outputs, arrivals, max_stall, eq=eq,
                      lossable=in_flight(cut.released, cut.applied))
    print("explained by a failure-free execution" if verdict.explained
          else f"NOT explained: output {verdict.matched + 1} has no failure-free counterpart")
    return verdict.explained
