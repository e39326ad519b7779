"""Named properties of what the outside world sees: `always` invariants over the egress, each with
its `sometimes` reachability twin, checked over every failover run within a bound.

A property speaks of the observed outputs in egress order, each with the input that produced it
and the time it was processed (`Seen`). Two shapes cover the bundled properties:
  pairs     for every two outputs a before b: relevant(a, b) implies holds(a, b)
  precedes  for every output b with relevant(b): some output a before it with holds(a, b)
  window    for every two outputs a before b with relevant(a, b): allowed(a, b, k), k the number of
            outputs c from a to b (inclusive) with relevant(a, c)
The twin asks that the property's situation occurs in some failover run (two outputs of one flow;
an admitted inbound packet): without it a property "holds" vacuously, and the verdict is unknown.

Predicates are written once over `Seen` views and run on Z3 terms (the violation query) and on
ints (re-checking every counterexample on the concrete simulation before it is reported): use the
connectives below (`both`, `either`, `implies`, `iff`, `negate`), never `and`/`or`/`not`.

Unlike output equivalence, a property needs no failure-free reference: a violation is a run of the
failover protocol (verify/failover.py's observed run, the same encoding) whose outputs break it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import z3

from ..models.api import NF, TCP, flags
from ..models.strategy import Strategy
from . import solver as smt
from .failover import _ClockMissed, _failover_run, _points, _Runs, concrete_run, default_failover_ticks, readable_model
from .induction import reads_clock
from .simulate import FailoverRun


def _z3(*xs) -> bool:
    return any(isinstance(x, z3.ExprRef) for x in xs)


def both(*xs):
    return z3.And(*xs) if _z3(*xs) else all(xs)


def either(*xs):
    return z3.Or(*xs) if _z3(*xs) else any(xs)


def negate(x):
    return z3.Not(x) if _z3(x) else not x


def implies(a, b):
    return either(negate(a), b)


def iff(a, b):
    return a == b if _z3(a, b) else bool(a) == bool(b)


@dataclass
class Seen:
    """An observed output: its gate, its fields, the input that produced it, its processing time."""

    gate: object          # gate name (concrete) or index term (symbolic)
    out: dict             # field -> value or term
    inp: dict             # the input packet's fields
    time: object          # processing time (ticks), or None for an NF without clock
    gates: tuple

    def on(self, gate: str):
        return self.gate == gate if isinstance(self.gate, str) else self.gate == self.gates.index(gate)


@dataclass(frozen=True)
class Property:
    name: str
    text: str                 # what always holds
    twin: str                 # what must sometimes happen, for the proof not to be vacuous
    shape: str                # pairs | precedes | window
    relevant: Callable
    holds: Callable = None    # pairs, precedes: (a, b) -> condition
    allowed: Callable = None  # window: (a, b, number of relevant outputs from a to b) -> condition


def _same_flow(x: dict, y: dict):
    return both(*[x[f] == y[f] for f in ("proto", "src", "sport", "dst", "dport")])


def _reply_of(a: Seen, b: Seen):
    """b travels the connection a opened, the other way."""
    o, p = a.out, b.out
    return both(o["proto"] == p["proto"], o["src"] == p["dst"], o["sport"] == p["dport"],
                o["dst"] == p["src"], o["dport"] == p["sport"])


def _is_syn(fields: dict):
    return both(fields["flags"] & flags("S") != 0, fields["flags"] & flags("A") == 0)


def properties_of(nf_cls: type[NF]) -> dict[str, Property]:
    """The named properties of a bundled model (by its NF name). A predicate may use the times of
    outputs only through differences (a shift-invariant NF's clock starts at 0: verify/time_shift.py)."""
    name = getattr(nf_cls, "name", "")
    if name == "nat":
        return {p.name: p for p in [Property(
            "mapping-bijective", "the NAT's mapping stays a bijection: two outbound outputs carry the same external "
            "port exactly when they come from the same inside flow",
            "an inside flow is seen outside twice",
            "pairs", relevant=lambda a, b: both(a.on("wan"), b.on("wan")),
            holds=lambda a, b: iff(_same_flow(a.inp, b.inp), a.out["sport"] == b.out["sport"]))]}
    if name == "firewall":
        return {p.name: p for p in [Property(
            "no-unsolicited-inbound", "the firewall never admits an inbound packet of a connection that no outbound "
            "packet opened (a TCP SYN, or any UDP datagram) before it",
            "an inbound packet is admitted",
            "precedes", relevant=lambda b: b.on("lan"),
            holds=lambda a, b: both(a.on("wan"), _reply_of(a, b), either(a.out["proto"] != TCP, _is_syn(a.out))))]}
    if name == "lb":
        return {p.name: p for p in [Property(
            "sticky-backend", "the load balancer never moves an established flow: every packet of a flow goes to the "
            "backend its first packet went to",
            "a balanced flow sends a second packet",
            "pairs", relevant=lambda a, b: both(a.on("wan"), b.on("wan"), _same_flow(a.inp, b.inp),
                                                a.inp["dst"] == nf_cls.vip),
            holds=lambda a, b: a.out["dst"] == b.out["dst"])]}
    if name == "ratelimit":
        return {p.name: p for p in [Property(
            "within-rate", "the rate limiter never lets a source exceed its rate: over any window, at most capacity + "
            "rate x (window length) of its packets pass",
            "a source's packets pass twice",
                    "window", relevant=lambda a, c: a.inp["src"] == c.inp["src"],
            # count packets cost ticks_per_second credit each; the bucket holds capacity x that and
            # refills `rate` credit per tick
            allowed=lambda a, b, count: count * nf_cls.ticks_per_second
            <= nf_cls.capacity * nf_cls.ticks_per_second + nf_cls.rate * (b.time - a.time))]}
    return {}


# -- checking ----------------------------------------------------------------------------------------

@dataclass
class PropertyResult:
    verdict: str              # proved | counterexample | unknown
    nf: str
    property: str
    strategy: str
    bound: int
    seconds: float = 0.0
    run: FailoverRun | None = None    # a shortest failover run that breaks it, re-executed concretely
    reason: str = ""
    stats: dict = field(default_factory=dict)


TIME64 = 64  # times widened for arithmetic on them (rate x elapsed)


def _sequence_terms(runs: _Runs, nf_cls, n, observed: dict, seen_upto: int, times: dict, leaks: dict) -> list:
    """[(present, Seen)] of one observed run, in egress order; an output's time is its input's
    processing time by the instance that let it out (the primary at arrival, the standby later)."""
    out = []
    for i in range(1, n + 1):
        t = None
        if runs.clocked:
            t = runs.arrival(i) if i <= seen_upto else times[i]
            if i in leaks:  # a replayed output the egress never saw came from the standby
                t = z3.If(leaks[i], times[i], t)
            t = z3.ZeroExt(TIME64 - t.size(), t)
        for slot in observed[i]:
            out.append((slot.present, Seen(slot.gate, slot.fields, runs.inputs[i - 1], t, nf_cls.gates)))
    return out


def _count(conds: list):
    if not any(_z3(c) for c in conds):
        return sum(1 for c in conds if c)
    return sum(z3.If(c, z3.BitVecVal(1, TIME64), z3.BitVecVal(0, TIME64)) if _z3(c) else
               z3.BitVecVal(int(bool(c)), TIME64) for c in conds)


def _violations(prop: Property, seq: list) -> tuple[list, list]:
    """(conditions under which the property breaks, conditions under which its twin happens),
    over [(present, Seen)] in egress order: terms, or plain bools for a concrete run."""
    bad, twin = [], []
    for y, (py, b) in enumerate(seq):
        if prop.shape == "precedes":
            relevant = both(py, prop.relevant(b))
            support = [both(px, prop.holds(a, b)) for px, a in seq[:y]]
            bad.append(both(relevant, *[negate(c) for c in support]))
            twin.append(both(relevant, either(*support)) if support else False)
            continue
        for x, (px, a) in enumerate(seq[:y]):
            relevant = both(px, py, prop.relevant(a, b))
            twin.append(relevant)
            if prop.shape == "pairs":
                bad.append(both(relevant, negate(prop.holds(a, b))))
            else:
                count = _count([both(pc, prop.relevant(a, c)) for pc, c in seq[x:y + 1]])
                bad.append(both(relevant, negate(prop.allowed(a, b, count))))
    return [c for c in bad if c is not False], [c for c in twin if c is not False]


def check_property(nf_cls: type[NF], prop: Property, strategy: Strategy, bound: int, budget: smt.Budget | None = None,
                   log_choices: bool = False, failover_time: int | None = None,
                   max_stall: int | None = None, progress=None) -> PropertyResult:
    """Every failover run of up to `bound` inputs keeps `prop`, or a shortest run (re-executed
    concretely) that breaks it; unknown when the budget runs out or the twin never happens. The
    protocol is the default one (input replay, duplicate suppression). `progress(n, bound)` is
    called as each length is done."""
    if not (strategy.replay_input and strategy.dedup):
        raise ValueError("properties are checked with input replay and duplicate suppression only")
    budget = budget or smt.Budget()
    failover_time = default_failover_ticks(nf_cls) if failover_time is None else failover_time
    clocked = reads_clock(nf_cls)
    while True:
        try:
            return _check(nf_cls, prop, strategy, bound, budget, log_choices, clocked, failover_time,
                          failover_time if max_stall is None else max_stall, progress)
        except _ClockMissed:
            clocked = True


def _check(nf_cls, prop, strategy, bound, budget, log_choices, clocked, failover_time, max_stall, progress):
    result = PropertyResult("unknown", nf_cls.name, prop.name, str(strategy) + (" --log-choices" if log_choices else ""),
                            bound)
    runs = _Runs(nf_cls, bound, clocked, failover_time, max_stall)  # (its clock may start at 0: `properties_of`)
    twin_seen = False
    proved: dict = {}  # id of a violation condition -> sets of assumption ids under which it is unsatisfiable
    keep: list = []
    try:
        for n in range(1, bound + 1):
            for point in _points(strategy, n, clocked):
                budget.check_time()
                assumptions, _, observed, _, seen_upto, leaks, times, _, _ = _failover_run(runs, strategy, n, point,
                                                                                       log_choices, budget)
                seq = _sequence_terms(runs, nf_cls, n, observed, seen_upto, times, leaks)
                bad, twin = _violations(prop, seq)
                # the same violation condition unsatisfiable under a subset of these assumptions (the
                # very terms: an earlier point whose steps these share) needs no query
                assumed = frozenset(a.get_id() for a in assumptions)
                violated = z3.Or(*bad) if bad else None
                if violated is not None and any(assumed >= under for under in proved.get(violated.get_id(), ())):
                    violated = None
                    result.stats["identical"] = result.stats.get("identical", 0) + 1
                if violated is None and (twin_seen or not twin):
                    continue
                s = smt.new_solver(budget)
                s.add(*assumptions)
                if violated is not None and smt.check(s, budget, violated) == z3.sat:
                    s.add(z3.Or(*bad))
                    smt.check(s, budget)
                    model = readable_model(s, runs, n, budget)
                    result.run = _confirm(runs, nf_cls, strategy, n, point, model, prop, log_choices)
                    result.verdict = "counterexample"
                    return result
                if violated is not None:
                    proved.setdefault(violated.get_id(), []).append(assumed)
                    keep.append((violated, assumptions))  # (alive: their ids stay theirs)
                if not twin_seen and twin and smt.check(s, budget, z3.Or(*twin)) == z3.sat:
                    twin_seen = True
            if progress:
                progress(n, bound)
        if twin_seen:
            result.verdict = "proved"
        else:
            result.reason = f"vacuous: no failover run within the bound in which {prop.twin}"
    except smt.BudgetExhausted as e:
        result.reason = str(e)
    finally:
        result.seconds = time.monotonic() - budget.start
        result.stats["queries"] = budget.queries
    return result


def _concrete_sequence(run: FailoverRun, nf_cls) -> list:
    """[(True, Seen)] of a concrete failover run, as `_sequence_terms` sees a symbolic one."""
    out, by_standby = [], False
    for e in run.events:
        if e.kind in ("apply", "replay", "release"):
            by_standby = e.actor == "standby" and e.kind != "release"
        if e.kind != "deliver":
            continue
        i, gate, pkt = run.observed[len(out)]
        t = None
        if run.arrivals is not None:
            t = run.standby_times[i] if by_standby else run.primary_times.get(i, run.arrivals[i - 1])
        inp = run.inputs[i - 1]
        out.append((True, Seen(gate, vars(pkt), vars(inp), t, nf_cls.gates)))
    return out


def _confirm(runs: _Runs, nf_cls, strategy, n, point, model, prop: Property, log_choices) -> FailoverRun:
    """Re-executes the solver's run on the concrete simulation; the property must break there."""
    from .failover import EncodingMismatch

    run = concrete_run(runs, strategy, n, point, model, log_choices)
    if not _violations(prop, _concrete_sequence(run, nf_cls))[0]:
        raise EncodingMismatch(f"{nf_cls.name} under {strategy}: the solver's run breaks {prop.name}, "
                               f"its concrete simulation does not: {run.observed_outputs}")
    return run


def check_property_concretely(nf_cls, prop: Property, run: FailoverRun) -> bool:
    """Whether a concrete failover run keeps the property (the enumerator's judge)."""
    return not _violations(prop, _concrete_sequence(run, nf_cls))[0]


def story(result: PropertyResult) -> str:
    """A property counterexample as a numbered story: the run, what the egress let out."""
    run = result.run
    lines = [f"counterexample: {result.nf} under {result.strategy} breaks {result.property}, "
             f"{len(run.inputs)} input packet(s)", "", "inputs (in arrival order):"]
    lines += [f"  {i}. {p}" + (f"   (arrives at {run.arrivals[i - 1]})" if run.arrivals else "")
              for i, p in enumerate(run.inputs, 1)]
    lines += ["", "what happened:"] + [f"  {k:2}. {e.actor} {e.text}" for k, e in enumerate(run.events, 1)]
    lines += ["", "the outside world saw:"] + [f"  {k}. {g}: {p}   (input {i})" for k, (i, g, p) in
                                              enumerate(run.observed, 1)]
    return "\n".join(lines)
