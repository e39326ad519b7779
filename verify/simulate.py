"""Concrete failover runs and the exact equivalence check.

`simulate` executes the failover protocol of DESIGN.md operationally on concrete packets: the
primary follows the strategy's timeline up to the crash, the standby resumes from the protected
state, the upstream replays, the egress suppresses duplicates. `explain` decides by exhaustive
search whether some failure-free execution produces exactly the observed outputs (`strict`).

Together they are the ground truth the symbolic check is tested against, and every
counterexample the solver proposes is re-executed here before it is reported."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..models.api import NF, Packet
from ..models.concrete import all_steps, copy_state, freeze_state, initial_state, scripted, step
from ..models.strategy import Cut, Strategy


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

    @property
    def observed_outputs(self) -> list:
        return [(g, p) for _, g, p in self.observed]


def simulate(nf_cls: type[NF], strategy: Strategy, inputs: list[Packet], cut: Cut, protected: int,
             primary_chooser, standby_chooser, log_choices: bool = False) -> FailoverRun:
    """`primary_chooser(i)` / `standby_chooser(i)` give the chooser used for input i."""
    n, events = len(inputs), []
    state, snapshots, outputs, choices, clock_reads = initial_state(nf_cls), {0: initial_state(nf_cls)}, {}, {}, {}
    for i in range(1, cut.applied + 1):
        res = step(nf_cls, state, inputs[i - 1], primary_chooser(i))
        snapshots[i], outputs[i], choices[i], clock_reads[i] = copy_state(state), res.outputs, res.choices, res.clock_reads
        events.append(Event("apply", "primary", i, f"applies input {i}: " + _describe(inputs[i - 1], res), res.outputs))

    observed, last = [], (0, -1)

    def deliver(i, outs, actor):
        nonlocal last
        for j, (gate, pkt) in enumerate(outs):
            if (i, j) <= last:
                events.append(Event("duplicate", "egress", i, f"drops the duplicate {pkt} on {gate}"))
            else:
                observed.append((i, gate, pkt))
                last = (i, j)
                events.append(Event("deliver", "egress", i, f"lets out output {len(observed)}: {gate}: {pkt}"))

    released = 0
    for kind, i in strategy.events(n)[:cut.k]:
        if kind == "protect":
            events.append(Event("protect", "primary", i, f"state covering inputs 1..{i} acknowledged"))
        elif kind == "send":
            events.append(Event("protect", "primary", i, f"sends the state change of input {i} (not awaited)"))
        elif kind == "release":  # releases every unreleased output up to input i (a whole batch under commit)
            for j in range(released + 1, i + 1):
                if outputs[j]:
                    events.append(Event("release", "primary", j, f"releases the outputs of input {j}", outputs[j]))
                deliver(j, outputs[j], "primary")
            released = i
    events.append(Event("crash", "primary", cut.applied, f"crashes (after {cut.applied} applied, {cut.released} released)"))

    if strategy.replays_from_protected:
        state, start = copy_state(snapshots[protected]), protected
        if strategy.replay_starts_at_protected:
            start = max(protected - 1, 0)
        covering = f"the state covering inputs 1..{protected}" if protected else "the initial state (nothing was protected)"
        events.append(Event("failover", "standby", protected, f"takes over with {covering}"))
        for i in range(cut.released + 1, protected + 1 if strategy.standby_releases_protected else 0):
            if outputs[i]:
                events.append(Event("release", "standby", i, f"releases the protected outputs of input {i}", outputs[i]))
            deliver(i, outputs[i], "standby")
    else:
        state, start = initial_state(nf_cls), cut.released
        events.append(Event("failover", "standby", 0, "takes over with an empty state"))
    standby_choices = {}
    for i in range(start + 1, n + 1):
        logged = log_choices and i <= cut.released
        chooser = _logged(choices[i], standby_chooser(i)) if logged else standby_chooser(i)
        res = step(nf_cls, state, inputs[i - 1], chooser, _replay_clock(clock_reads[i]) if logged else None)
        standby_choices[i] = res.choices
        kind = "replay" if i <= cut.applied else "apply"
        events.append(Event(kind, "standby", i, f"{'replays' if kind == 'replay' else 'applies'} input {i}: " + _describe(inputs[i - 1], res, logged), res.outputs))
        deliver(i, res.outputs, "standby")
    return FailoverRun(strategy, list(inputs), cut, protected, observed, events, choices, standby_choices)


def _logged(values: list, fallback):
    """The standby reuses the primary's logged choices as they are (FTMB), available or not:
    replay is deterministic; past the log (a path the primary did not take) it chooses afresh."""
    pending = list(values)
    return lambda options: pending.pop(0) if pending else fallback(options)


def _replay_clock(reads: list):
    """A clock answering with the logged reads, then with the last one (or 0)."""
    pending = list(reads)
    return lambda: pending.pop(0) if len(pending) > 1 else (pending[0] if pending else 0)


def _describe(pkt: Packet, res, logged: bool = False) -> str:
    text = f"{pkt}"
    if res.choices:
        text += f"; {'reuses the logged choice' if logged else 'chooses'} {', '.join(map(str, res.choices))}"
    if res.drops:
        text += f"; drops it ({', '.join(res.drops)})"
    return text


@dataclass
class Explanation:
    explained: bool
    matched: int                     # longest prefix of the observed outputs some execution produces
    expected: list = field(default_factory=list)   # what failure-free executions emit instead there
    choices: list = field(default_factory=list)    # the witness's choices per input, if explained


def explain(nf_cls: type[NF], inputs: list[Packet], observed: list) -> Explanation:
    """Does some failure-free execution on `inputs` emit exactly `observed` ([(gate, Packet)])?"""
    best = Explanation(False, -1)
    seen = set()

    def search(i, j, state, trail):
        nonlocal best
        if i == len(inputs):
            if j == len(observed):
                best = Explanation(True, j, [], trail)
                return True
            if j > best.matched:  # inputs exhausted with observed outputs left over
                best = Explanation(False, j, [])
            return False
        key = (i, j, freeze_state(state))
        if key in seen:
            return False
        seen.add(key)
        for new_state, res in all_steps(nf_cls, state, inputs[i]):
            outs = res.outputs
            if observed[j:j + len(outs)] == outs:
                if search(i + 1, j + len(outs), new_state, trail + [res.choices]):
                    return True
            else:  # remember how far this branch matched and what it would have emitted there
                k = next(t for t, o in enumerate(outs) if j + t >= len(observed) or observed[j + t] != o)
                if j + k > best.matched:
                    best = Explanation(False, j + k, [])
                if j + k == best.matched and outs[k] not in best.expected:
                    best.expected.append(outs[k])
        return False

    search(0, 0, initial_state(nf_cls), [])
    return best


def reproduce(nf: str, strategy: str, inputs: list[Packet], crash: int, protected: int,
              primary_choices: dict, standby_choices: dict, log_choices: bool = False) -> bool:
    """Re-run a reported counterexample concretely; prints what the egress saw and whether a
    failure-free execution explains it. Returns True if it does (i.e. no bug)."""
    from ..models import lookup

    nf_cls, strat = (nf if isinstance(nf, type) else lookup(nf)), Strategy.parse(strategy)
    cut = strat.cuts(len(inputs))[crash]
    run = simulate(nf_cls, strat, inputs, cut, protected,
                   lambda i: scripted(primary_choices.get(i, [])), lambda i: scripted(standby_choices.get(i, [])),
                   log_choices)
    for e in run.events:
        print(f"{e.actor:8} {e.text}")
    verdict = explain(nf_cls, inputs, run.observed_outputs)
    print("explained by a failure-free execution" if verdict.explained
          else f"NOT explained: output {verdict.matched + 1} has no failure-free counterpart")
    return verdict.explained
