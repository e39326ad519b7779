"""Trace replay: does some failure-free execution of the chain model, on the inputs of a recorded
run, produce the outputs the run's egresses let out? (`nfproof replay`; DESIGN.md "trace checks")

`replay(recording, eq, ...)` returns a ReplayResult: `explained`, `violation` (with the first
output no failure-free execution explains, what one would have emitted, and the choice or state
it would have needed) or `unknown` (the search could not decide; never a silent pass).

How (the modules it uses, one concern each):
- verify/replay_load.py reads the trace or the captures; verify/frames.py is the frame view;
- verify/equivalence.py defines the relations: a trace whose outputs name their inputs is checked
  as the order of each channel (`order_violation`) plus, input by input, that input's outputs
  (`compare`); captures without that annotation are matched position by position;
- verify/replay_search.py searches for the failure-free execution (choices and clock reads
  inferred from the outputs, processing times in the DESIGN.md "Time" window [a_i, a_i + S]);
- verify/replay_partition.py splits the trace by flow where the models allow it and checks that
  the parts were independent (so the verdict is the sequential one);
- verify/replay_fast.py first tries a trace file in one pass in C (the chain compiled, choices
  read off the outputs): an exact failure-free run explains it, anything else goes on below;
- verify/replay_stream.py runs all of it over a trace file in one streamed pass (memory flat in
  the trace's length, parts in parallel), coming back here only for the parts it cannot explain;
- verify/replay_z3.py decides, through verify/solver.py, what the search cannot;
- verify/replay_report.py, verify/timeline.py and verify/replay_window.py show the verdict.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..models.api import Flow, ip
from .equivalence import Equivalence, order_inversions
from .frames import outside_route
from .replay_load import CLOCK_NAMES, Recording, lossable_inputs
from .replay_partition import conflicts, partition_kinds, run_parts, split
from .replay_search import BUDGET, NS, Attempt, Problem, Search, Unknown, paused_gc
from .simulate import DEFAULT_FAILOVER_SECONDS

MAX_REPAIRS = 4         # changes reported as "what would have explained it"
Z3_SECONDS = 20.0        # per fallback query
MAX_INVERSIONS = 10_000  # out-of-order outputs looked at (a trace scrambled beyond is a violation anyway)


@dataclass
class Repair:
    """A change that would have explained the failing input: `what` (text), `kind` (state,
    choice, time)."""

    kind: str
    what: str


@dataclass
class Diagnosis:
    reads: list = field(default_factory=list)      # (text of the entry, its value text, written by seq or None)
    choices: list = field(default_factory=list)    # (instance, value text) of the preferred attempt
    repairs: list = field(default_factory=list)    # [Repair]
    time_ns: int | None = None                     # when the preferred attempt processed the input
    window: tuple | None = None                    # (earliest, latest) processing time allowed


@dataclass
class Failure:
    kind: str                      # content | order | orphan | window | leftover
    number: int                    # trace packet number where it shows (for picking the first)
    output: object = None          # the first observed output that cannot be explained (Output)
    unit: object = None            # the input it fails at (Input)
    expected: list = field(default_factory=list)   # (egress, key) a failure-free execution emits instead
    missing: tuple | None = None   # (egress, key) a failure-free execution emits that never came out
    before: object = None          # order: the output of a later input it came after
    attempts: list = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    part: int | None = None
    decided_by: str = "search"     # or "z3" (the search could not decide)


@dataclass
class ReplayResult:
    verdict: str                   # explained | violation | unknown
    recording: Recording
    eq: Equivalence
    stall_ns: int
    failover_ns: int
    failure: Failure | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)


def failover_time_ns(rec: Recording) -> int:
    """F: the longest failover in the trace (a failover event's end_ns, or its time, minus the
    failure before it), else the run header's `failover_time` (seconds), else the verifier's default."""
    longest, crash = None, None
    for e in rec.events:
        if e.kind == "failure":
            crash = e.time_ns
        elif e.kind == "failover" and crash is not None:
            end = e.fields.get("end_ns", e.time_ns)
            if isinstance(end, int):
                longest = max(longest or 0, end - crash)
    if longest is not None:
        return longest
    given = rec.header_fields.get("failover_time")
    if isinstance(given, (int, float)) and given >= 0:
        return int(given * NS)
    return DEFAULT_FAILOVER_SECONDS * NS


def base_problem(rec: Recording, eq: Equivalence, stall_ns: int, budget: int = BUDGET) -> Problem:
    observed: dict = {}
    for o in rec.outputs:
        if o.seq is not None:
            observed.setdefault(o.seq, []).append((o.egress, o.key))
    logged, logged_clock = {}, {}
    for e in rec.events:
        if e.kind == "choice" and isinstance(e.fields.get("seq"), int) and isinstance(e.fields.get("value"), int):
            target = logged_clock if str(e.fields.get("name", "")) in CLOCK_NAMES else logged
            target.setdefault((e.fields["seq"], e.instance), []).append(e.fields["value"])
    shown = frozenset(v for o in rec.outputs if o.key[0] != "raw" for v in o.key[1:5])
    routes = {side: outside_route(rec.chain, side)[:2] for side in ("inside", "outside")}
    return Problem(rec.chain, [], observed, eq, rec.t0_ns, stall_ns, aligned=True, flow_of=rec.flow_of,
                   logged=logged, logged_clock=logged_clock, shown_values=shown, budget=budget,
                   outside_routes=routes, labels=rec.labels)


def replay(rec: Recording, eq: Equivalence, stall_ns: int | None = None, jobs: int = 1, partition: bool = True,
           budget: int = BUDGET, progress=None, lossable_marked: bool = False) -> ReplayResult:
    """The verdict on a recording (see the module docstring). `stall_ns`: S (default: the
    failover time); `jobs`: worker processes for the parts; `partition=False`: one sequential
    search even where the models allow splitting."""
    with paused_gc():
        return _replay(rec, eq, stall_ns, jobs, partition, budget, progress, lossable_marked)


def _replay(rec, eq, stall_ns, jobs, partition, budget, progress, lossable_marked) -> ReplayResult:
    started = time.process_time()
    failover_ns = failover_time_ns(rec)
    stall = failover_ns if stall_ns is None else stall_ns
    if eq.lossy and not lossable_marked:
        lossable_inputs(rec)
    result = ReplayResult("explained", rec, eq, stall, failover_ns)
    base = base_problem(rec, eq, stall, budget)
    failures, unknown = [], []
    stats = result.stats
    stats.update(inputs=len(rec.inputs), outputs=len(rec.outputs), events=len(rec.events))
    if rec.annotated:
        failures += _orphans(rec)
        kinds = partition_kinds(rec.chain) if partition else None
        parts = split(rec, base.observed, kinds) if kinds else [list(range(len(rec.inputs)))]
        base.partitioned = len(parts) > 1
        outcomes = run_parts(base, rec.inputs, parts, jobs, progress)
        merges, no_exhaust = 0, set()
        while base.partitioned:
            groups, forbid = conflicts(rec, base, parts, outcomes)
            fresh = {p for p, seqs in forbid.items() if not seqs <= no_exhaust}
            if not groups and not fresh:
                break
            for seqs in forbid.values():
                no_exhaust |= seqs
            base.no_exhaust = frozenset(no_exhaust)
            merges += len(groups)
            gone = set().union(*groups) if groups else set()
            again = [parts[p] for p in sorted(fresh - gone)] + [sorted(k for p in g for k in parts[p]) for g in groups]
            gone |= fresh
            parts = [q for p, q in enumerate(parts) if p not in gone] + again
            kept = [o for p, o in enumerate(outcomes) if p not in gone]
            outcomes = kept + run_parts(base, rec.inputs, again, jobs)
        stats.update(parts=len(parts), merged=merges)
        exact = 0
        for p, (indices, outcome) in enumerate(zip(parts, outcomes)):
            if outcome.verdict == "violation":
                # attributed by the trace, this part's outputs are not explained; attributed freely?
                exact += 1
                indices_ = _interleaved(rec, eq, parts, {p})
                if _unproducible(rec, base, indices, indices_, outcome, stats):
                    verdict = "violation"   # an output of the failing input that no input can emit
                else:
                    verdict = _positional_verdict(rec, base, indices_, stats)
                if verdict == "violation":
                    failures.append(_content_failure(rec, base, indices, outcome, p))
                elif verdict == "unknown":
                    unknown.append("outputs cannot be matched to the inputs they name, and matching them freely "
                                   "was not decided")
            elif outcome.verdict == "unknown":
                verdict = _z3_verdict(rec, base, indices, stats)
                if verdict == "violation":
                    failures.append(_content_failure(rec, base, indices, outcome, p, decided_by="z3"))
                elif verdict == "unknown":
                    unknown.append(outcome.reason)
        order, checked = _order(rec, eq, base, parts, stats)
        failures += order
        stats.update(extra_attempts=sum(o.extra_attempts for o in outcomes), exact_rechecks=exact + checked)
    else:
        problem = _positional_problem(rec, base)
        outcome = Search(problem).run()
        stats.update(parts=1, merged=0, extra_attempts=outcome.extra_attempts)
        if outcome.verdict == "violation":
            failures.append(_positional_failure(rec, problem, outcome))
        elif outcome.verdict == "unknown":
            unknown.append(outcome.reason)
    if failures:
        result.verdict, result.failure = "violation", min(failures, key=lambda f: f.number)
        if result.failure.kind == "content" and rec.annotated:
            result.failure.diagnosis = diagnose(rec, base, parts[result.failure.part], result.failure)
    elif unknown:
        result.verdict, result.reason = "unknown", unknown[0]
    stats["cpu_seconds"] = time.process_time() - started
    return result


def _orphans(rec: Recording) -> list:
    seqs = {u.seq for u in rec.inputs}
    return [Failure("orphan", o.number, output=o) for o in rec.outputs if o.seq not in seqs][:1]


def _order(rec: Recording, eq: Equivalence, base: Problem, parts: list, stats: dict) -> tuple[list, int]:
    """Outputs released out of input order on their channel. The parts involved are checked
    again with outputs matched freely (position by position, whatever input they name): only
    what that cannot explain is a violation. Returns (failures, parts checked again)."""
    outs = rec.outputs
    skip = (lambda k: outs[k].duplicate) if eq.allow_duplicates else None
    part_of = {rec.inputs[k].seq: p for p, indices in enumerate(parts) for k in indices}
    groups, first = _Groups(), {}
    for n, (k, before) in enumerate(order_inversions([(o.egress, o.key, o.seq) for o in outs], eq,
                                                     flow_of=rec.flow_of, skip=skip)):
        if n >= MAX_INVERSIONS:
            break
        a, b = part_of.get(outs[k].seq), part_of.get(outs[before].seq)
        if a is None or b is None:
            continue
        root = groups.union(a, b)
        first.setdefault(root, (k, before))
    failures, checked = [], 0
    for root, members in groups.sets().items():
        checked += 1
        if _positional_verdict(rec, base, _interleaved(rec, eq, parts, members), stats) != "explained":
            k, before = min((v for r, v in first.items() if groups.find(r) == root), key=lambda kb: kb[0])
            failures.append(Failure("order", outs[k].number, output=outs[k], before=outs[before]))
    return failures, checked


class _Groups:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        while self.parent.setdefault(x, x) != x:
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb
        return rb

    def sets(self) -> dict:
        out: dict = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), set()).add(x)
        return out


def _interleaved(rec: Recording, eq: Equivalence, parts: list, members: set) -> list:
    """The inputs of some parts and of every part whose outputs interleave with theirs on a
    channel: matching outputs freely may take an output from another of its part's inputs, which
    moves it against the outputs of other parts around it, so those are checked with it."""
    part_of = {rec.inputs[k].seq: p for p, indices in enumerate(parts) for k in indices}
    channel = [eq.channel(o.egress, o.key, rec.flow_of) for o in rec.outputs]
    members = set(members)
    outs = rec.outputs
    while True:
        mine = [k for k, o in enumerate(outs) if part_of.get(o.seq) in members]
        if not mine:
            break
        seqs = [rec.inputs[i].seq for p in members for i in parts[p]]
        first, last = min(seqs), max(seqs)
        channels = {channel[k] for k in mine}
        # an output may be taken from any input of its part: it can move past every output of the
        # inputs from the part's first to its last
        span = [k for k, o in enumerate(outs) if o.seq is not None and first <= o.seq <= last and channel[k] in channels]
        lo, hi = min(mine + span), max(mine + span)
        more = {part_of.get(outs[k].seq) for k in range(lo, hi + 1) if channel[k] in channels} - members - {None}
        if not more:
            break
        members |= more
    return sorted(i for p in members for i in parts[p])


def _positional_verdict(rec: Recording, base: Problem, indices: list, stats: dict) -> str:
    """The exact check of some inputs and the outputs that name them: every channel's observed
    sequence is what a failure-free execution emits, whichever input each output is taken from
    (the search; Z3 where it cannot decide)."""
    units = [rec.inputs[k] for k in indices]
    seqs = {u.seq for u in units}
    problem = _positional_problem(rec, base, [o for o in rec.outputs if o.seq in seqs], units)
    verdict = Search(problem).run().verdict
    return _z3_verdict(rec, base, indices, stats) if verdict == "unknown" else verdict


UNPRODUCIBLE_VIEWS = 64   # distinct input packets _unproducible asks about at most


def _unproducible(rec: Recording, base: Problem, part: list, indices: list, outcome, stats: dict) -> bool:
    """Whether an output the part's failing input names is one no input among `indices` emits from any
    state, at any time, with any choices (replay_z3.never_emits, per distinct packet): then no
    matching of outputs to inputs explains it either, and the aligned violation stands (the
    free matching would search every assignment of outputs to inputs before saying so)."""
    if outcome.failed_unit is None or base.eq.lossy or base.eq.allow_duplicates:
        return False
    from . import replay_z3
    from .solver import Budget
    if not 0 <= outcome.failed_unit < len(part):
        return False
    failing = rec.inputs[part[outcome.failed_unit]]
    views = {}
    for k in indices:
        u = rec.inputs[k]
        views.setdefault((repr(u.view), u.writes), u)
        if len(views) > UNPRODUCIBLE_VIEWS:
            return False
    for egress, key in base.observed.get(failing.seq, []):
        stats["z3_queries"] = stats.get("z3_queries", 0) + 1
        if all(replay_z3.never_emits(rec.chain, u, egress, key, Budget(timeout=Z3_SECONDS)) for u in views.values()):
            return True
    return False


def _z3_verdict(rec: Recording, base: Problem, indices: list, stats: dict) -> str:
    """Z3's answer for some inputs and their outputs (verify/replay_z3.py): explained, violation,
    or unknown (also for what the encoding does not cover: loss, duplicates, large parts)."""
    from . import replay_z3
    from .solver import Budget
    units = [rec.inputs[k] for k in indices]
    seqs = {u.seq for u in units}
    outs = [o for o in rec.outputs if o.seq in seqs]
    if base.eq.lossy and any(u.lossable for u in units) or base.eq.allow_duplicates and any(o.duplicate for o in outs):
        return "unknown"
    observed: dict = {}
    for o in outs:
        observed.setdefault(o.egress, []).append(o.key)
    stats["z3_queries"] = stats.get("z3_queries", 0) + 1
    verdict = replay_z3.decide(rec.chain, units, observed, rec.t0_ns, base.stall_ns, Budget(timeout=Z3_SECONDS))
    if verdict == "violation" and base.eq.relation == "per-flow":
        return "unknown"   # the encoding compares whole egresses: stricter than per-flow
    return verdict


def _content_failure(rec: Recording, base: Problem, indices: list, outcome, part: int,
                     decided_by: str = "search") -> Failure:
    failure = _failure_at(rec, indices, outcome, part)
    failure.decided_by = decided_by
    return failure


def _failure_at(rec: Recording, indices: list, outcome, part: int) -> Failure:
    by_seq = {}
    for o in rec.outputs:
        if o.seq is not None:
            by_seq.setdefault(o.seq, []).append(o)
    unit = rec.inputs[indices[outcome.failed_unit]]
    first: Attempt = outcome.attempts[0] if outcome.attempts else None
    mine = by_seq.get(unit.seq, [])
    if first is None or first.mismatch == "window":
        return Failure("window", unit.number, unit=unit, attempts=outcome.attempts, part=part)
    m = first.mismatch
    expected = [(m.channel if isinstance(m.channel, str) else m.channel[0], k) for k in m.expected]
    if m.observed is not None:
        out = mine[m.observed]
        return Failure("content", out.number, output=out, unit=unit, expected=expected,
                       attempts=outcome.attempts, part=part)
    missing = first.produced[m.missing] if m.missing is not None else None
    after = [o for o in mine if (o.egress if isinstance(m.channel, str) else (o.egress, rec.flow_of(o.key))) == m.channel]
    number = after[-1].number if after else unit.number
    return Failure("content", number, unit=unit, expected=expected, missing=missing, attempts=outcome.attempts,
                   part=part)


def _positional_problem(rec: Recording, base: Problem, outputs=None, units=None) -> Problem:
    observed: dict = {}
    earlier: dict = {}
    for o in rec.outputs if outputs is None else outputs:
        channel = base.eq.channel(o.egress, o.key, rec.flow_of)
        seen = earlier.setdefault(channel, set())
        observed.setdefault(channel, []).append((o.index, o.key, o.key in seen))
        seen.add(o.key)
    return Problem(**{**base.__dict__, "units": rec.inputs if units is None else units, "observed": observed,
                      "aligned": False, "partitioned": False})


def _positional_failure(rec: Recording, problem: Problem, outcome) -> Failure:
    att = outcome.attempts[0] if outcome.attempts else None
    if outcome.failed_unit is not None and outcome.failed_unit < len(rec.inputs) and att is not None:
        unit = rec.inputs[outcome.failed_unit]
        m = att.mismatch
        if m is not None and m != "window" and m.observed is not None:
            out = rec.outputs[m.observed]
            return Failure("content", out.number, output=out, unit=unit, expected=[(o_e, k) for o_e, k in att.produced],
                           attempts=outcome.attempts)
        return Failure("content", unit.number, unit=unit, expected=list(att.produced) if att else [],
                       missing=att.produced[0] if att and att.produced else None, attempts=outcome.attempts)
    m = att.mismatch if att else None
    out = rec.outputs[m.observed] if m is not None and m.observed is not None else None
    return Failure("leftover", out.number if out else 0, output=out, attempts=outcome.attempts)


# -- what would have been needed ----------------------------------------------------------------------
def _entry_text(rec: Recording, sid, key) -> str:
    instance, decl_name = sid
    decl = rec.chain.members[instance].nf.declarations()[decl_name]
    if key is None:
        return f"{instance}.{decl_name}"
    return f"{instance}.{decl_name}[{_value_text(getattr(decl, 'key', None), key)}]"


def _value_text(kind, value) -> str:
    if isinstance(value, tuple) and len(value) == 5:
        return str(Flow(*value))
    if getattr(kind, "name", "") == "Addr" and isinstance(value, int):
        return ip(value)
    return str(value)


def diagnose(rec: Recording, base: Problem, indices: list, failure: Failure) -> Diagnosis:
    """Re-runs the part up to the failing input (the search is deterministic, so it arrives in
    the state it first failed in), then asks what single change would have explained the input:
    another value of a state entry it read, another choice, a later processing time."""
    units = [rec.inputs[k] for k in indices]
    i = next(k for k, u in enumerate(units) if u is failure.unit)
    problem = Problem(**{**base.__dict__, "units": units, "partitioned": False, "budget": base.budget})
    s = Search(problem)
    s.stop_at = i
    try:
        if s.run() is not None:  # the search ended before reaching it (cannot happen: it failed there)
            return Diagnosis()
    except Unknown:
        return Diagnosis()
    unit = units[i]
    lo = unit.time_ns if s.tprev is None or s.tprev < unit.time_ns else s.tprev
    hi = unit.time_ns + problem.stall_ns
    d = Diagnosis(time_ns=lo, window=(lo, hi))
    reads, att = _recorded_attempt(s, unit, lo)
    if att is None:
        return d
    d.choices = [(inst, str(v)) for inst, v in att.choices]
    for sid, key in reads:
        storage = s.state[sid[0]][sid[1]]
        value = _current(storage, key)
        decl = rec.chain.members[sid[0]].nf.declarations()[sid[1]]
        d.reads.append((_entry_text(rec, sid, key), "absent" if value is None else
                        _value_text(getattr(decl, "value", None), value), None))
    observed_values = [v for _, key in problem.observed.get(unit.seq, []) if key[0] != "raw" for v in key[1:5]]
    for sid, key in reads:
        for change, text in _state_changes(rec, s, sid, key, observed_values):
            if len(d.repairs) < MAX_REPAIRS and _explains(s, unit, lo, change):
                d.repairs.append(Repair("state", text))
    for k, (instance, value) in enumerate(att.choices):
        for v in dict.fromkeys(observed_values):
            if v != value and _explains(s, unit, lo, None, forced={k: v}):
                d.repairs.append(Repair("choice", f"{instance} choosing {v} instead of {value}"))
                break
    if att.clock:
        needed = _later_time(s, unit, hi, problem)
        if needed is not None:
            stall = needed - unit.time_ns
            d.repairs.append(Repair("time", f"processing input {unit.seq} {stall / NS:g} s after it arrived "
                                            f"(the allowed stall is {problem.stall_ns / NS:g} s)"))
    return d


def _current(storage, key):
    if key is None:
        return storage._value
    if isinstance(storage, dict):
        return dict.get(storage, key)
    return True if set.__contains__(storage, key) else None


def _recorded_attempt(s: Search, unit, t):
    """Runs the preferred alternative at time t recording the entries it reads (then undoes it)."""
    from .replay_search import _Chooser, _Frame
    tr = s.tracker
    reads: list = []
    original = tr.read

    def read(sid, key, storage=None):
        if (sid, key) not in reads:
            reads.append((sid, key))
        original(sid, key, storage)
    mark = tr.mark()
    tr.read = read
    try:
        f = _Frame(0, mark, s.tprev, s.tdeps, t)
        chooser = _Chooser(s, f, (), unit)
        produced, drops, clocked = s.execute(unit, t, chooser)
        return reads, Attempt(t, chooser.made, produced, clock=clocked, drops=drops)
    except Exception:
        return reads, None
    finally:
        tr.read = original
        tr.undo(mark)


def _state_changes(rec, s: Search, sid, key, observed_values):
    """Single changes of one entry worth trying: remove it, or give it an observed value."""
    storage = s.state[sid[0]][sid[1]]
    entry = _entry_text(rec, sid, key)
    value = _current(storage, key)
    decl = rec.chain.members[sid[0]].nf.declarations()[sid[1]]
    if isinstance(value, int) or value is None and isinstance(storage, dict):
        for v in dict.fromkeys(observed_values):
            if v == value:
                continue

            def put(st=storage, k=key, v=v):
                if k is None:
                    st.value = v
                else:
                    st[k] = v
            now = "none" if value is None else _value_text(getattr(decl, "value", None), value)
            yield put, f"{entry} = {_value_text(getattr(decl, 'value', None), v)} (a failure-free execution has {now})"
    if key is not None and value is not None:
        def remove(st=storage, k=key):
            if isinstance(st, dict):
                st.__delitem__(k)
            else:
                st.discard(k)
        yield remove, f"no {entry}, as if it had been lost (a failure-free execution has " \
                      f"{_value_text(getattr(decl, 'value', None), value)})"


def _explains(s: Search, unit, t, change, forced=None) -> bool:
    from .replay_search import _Chooser, _Frame
    tr = s.tracker
    mark = tr.mark()
    try:
        if change is not None:
            change()
        f = _Frame(0, mark, s.tprev, s.tdeps, t)
        chooser = _ForcedChooser(s, f, unit, forced or {}) if forced else _Chooser(s, f, (), unit)
        produced, _, _ = s.execute(unit, t, chooser)
        return s.match(unit, produced) is None
    except Exception:
        return False
    finally:
        tr.undo(mark)


class _ForcedChooser:
    """Makes choice k take forced[k] whether or not it is available (for 'what would be needed')."""

    def __init__(self, search, frame, unit, forced: dict):
        from .replay_search import _Chooser
        self.inner = _Chooser(search, frame, (), unit)
        self.forced, self.k = forced, 0

    @property
    def instance(self):
        return self.inner.instance

    @instance.setter
    def instance(self, value):
        self.inner.instance = value

    def _take(self, fallback):
        k, self.k = self.k, self.k + 1
        return self.forced[k] if k in self.forced else fallback()

    def __call__(self, values):
        return self._take(lambda: self.inner(values))

    def choose_domain(self, domain):
        return self._take(lambda: self.inner.choose_domain(domain))


def _later_time(s: Search, unit, hi: int, problem: Problem, limit_s: int = 3600) -> int | None:
    """The earliest processing time after the window at which the input would be explained."""
    t0 = problem.t0_ns
    tps = max(s.tps)
    tick = (hi - t0) * tps // NS + 1
    for _ in range(min(limit_s * tps, 100_000)):
        t = t0 + -(-tick * NS // tps)
        if _explains(s, unit, t, None):
            return t
        tick += 1
    return None


def events_around(rec: Recording, number: int) -> list:
    """The failure and failover events nearest before packet `number` and the first after."""
    control = [e for e in rec.events if e.kind in ("failure", "failover")]
    before = [e for e in control if e.after_packet < number][-2:]
    after = [e for e in control if e.after_packet >= number][:1]
    return before + after
