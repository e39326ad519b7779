"""The search of trace replay: is there a failure-free execution of the chain, on these inputs,
whose outputs match the observed ones? (One partition of a trace, or a whole one.)

Inputs are taken in order. For each, the alternatives of a failure-free execution are its
processing time t in [max(a_i, previous t), a_i + S] (only if the step reads the clock; one
candidate per clock tick class, earliest first, then the latest, then the others) and its
nondeterministic choices, inferred from the outputs that reveal them: a choice's candidates are
the value logged for it (choice events), the domain's values that appear in this input's observed
outputs, then in later outputs of the partition, then -- for a small domain (<= SMALL_DOMAIN
values) -- every other value, for a large one a single value no output shows (values a model only
stores, compares and copies are interchangeable; this is the one assumption inference makes), and,
in a partitioned check, "the pool is exhausted" (decided later against every partition's use of
the pool). An input in flight at a crash (under loss-at-failover) may also have been lost.

The matching of an input's outputs is `equivalence.compare` against the observed outputs that
name it (`aligned`) or, for captures without that annotation, against the next observed outputs
of each channel (`positional`).

Search: depth first, with conflict-directed backjumping. Every value written into the state
remembers the decisions (earlier inputs with alternatives left) it depends on: those of every
value the writing step read, and of the times and choices that were forced by failures. When all
alternatives of an input fail, the search jumps back to the latest decision in the union of what
the failed attempts read, skipping decisions that cannot change the outcome (another flow's clock
reads, say). No decision left: the trace is not explained (a violation at the deepest input
reached). State changes are undone from a journal, so nothing is copied. The search keeps at most
HORIZON open decisions, and with `unit_horizon` (the streamed check's parts) only those of the
latest inputs, so memory stays flat on long traces; a conflict that reaches past them, or a search
that runs out of its attempt budget, is `unknown`, never a guess."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..models import concrete
from ..models.api import Bits, Flow, Map, Set
from ..models.concrete import Cell, DictMap, PySet, step
from .equivalence import Equivalence, Mismatch, compare
from .frames import OUTSIDE, Drop, observable, refusal
from .replay_rows import _fast

NS = 1_000_000_000
SMALL_DOMAIN = 64       # domains at most this big have every value tried
LOOKAHEAD = 64          # observed values of later outputs offered to a choice
HORIZON = 20_000        # open decisions kept (older ones are committed: completeness is lost there)
MAX_DEPS = 256          # decisions a state value remembers (more: the oldest are forgotten, soundly)
BUDGET = 200_000        # attempts beyond the first of each input before the answer is `unknown`
MEMO_VARIANTS = 4       # recorded steps kept per (input view, clock readings)
MEMO_KEYS = 1 << 20     # recorded views before the memo starts afresh
MISSING = object()
FRESH, EXHAUSTED = "fresh", "exhausted"   # candidate markers: a value no output shows; the pool is full
EMPTY = frozenset()
FORGOTTEN = -1          # a decision level standing for decisions a capped dependency set dropped
IMPOSSIBLE_SECONDS = 2  # Z3's time for asking whether an input's outputs are beyond every state (_impossible)
PRUNE_AT = 32           # a dependency set this big drops the committed decisions it holds (see _pruned)


def _pruned(deps, floor: int) -> set:
    """deps without the decisions committed already (levels <= floor), FORGOTTEN standing for them.
    The same verdicts: a conflict whose latest decision is at or below the floor is unknown either
    way, and the levels above it are kept. Without this a value's dependencies grew with its flow's
    length (a clock decision per packet) up to MAX_DEPS, and memory with the trace."""
    kept = {d for d in deps if d > floor}
    if len(kept) < len(deps):
        kept.add(FORGOTTEN)
    return kept


class Unknown(Exception):
    """The search cannot decide (budget, horizon): `reason` says why."""


# -- tracked state: undo journal, dependencies, keys touched ------------------------------------------
class Tracker:
    """The journal and the dependency bookkeeping shared by every storage of one search."""

    def __init__(self, track_touched: bool = False):
        self.journal: list = []
        self.offset = 0                      # journal positions dropped from the front
        self.writer: dict = {}               # (sid, key) -> frozenset of decision levels
        self.deps: set = set()               # decisions the running attempt depends on (its reads)
        self.wrote: list = []                # (sid, key) written by the running attempt
        self.touched: set | None = set() if track_touched else None
        self.pool_sids: set = set()          # storages some choice drew free values from
        self.pool_writes: list = []          # (sid, key, present) of the running attempt, for pool_sids
        self.recording: list | None = None   # (storage, key, value read) while a step is recorded (memo)
        self.floor = FORGOTTEN               # decisions at or below it are committed (Search.horizon_floor)

    def mark(self) -> int:
        return self.offset + len(self.journal)

    def read(self, sid, key, storage=None) -> None:
        d = self.writer.get((sid, key))
        if d:
            self.deps |= d
        if self.touched is not None:
            self.touched.add((sid, key))
        if self.recording is not None and storage is not None:
            self.recording.append((storage, key, storage.raw(key), (sid, key), storage.KIND))

    def write(self, storage, sid, key, old, present: bool = True) -> None:
        k = (sid, key)
        self.journal.append((storage, key, old))
        self.journal.append((None, k, self.writer.get(k)))
        deps = self.deps
        if len(deps) > PRUNE_AT and self.floor > FORGOTTEN:
            deps = self.deps = _pruned(deps, self.floor)
        if len(deps) > MAX_DEPS:  # the oldest are forgotten: FORGOTTEN stands for them
            deps = self.deps = set(sorted(deps)[-MAX_DEPS:]) | {FORGOTTEN}
        self.writer[k] = frozenset(deps) if deps else EMPTY
        self.wrote.append(k)
        if self.touched is not None:
            self.touched.add(k)
        if sid in self.pool_sids:
            self.pool_writes.append((sid, key, present))

    def undo(self, mark: int) -> None:
        journal, writer, keep = self.journal, self.writer, mark - self.offset
        while len(journal) > keep:
            storage, key, old = journal.pop()
            if storage is None:
                if old is None:
                    writer.pop(key, None)
                else:
                    writer[key] = old
            else:
                storage.restore(key, old)

    def forget_before(self, mark: int) -> None:
        """Journal entries before `mark` will never be undone (dropped in chunks: amortised)."""
        drop = mark - self.offset
        if drop > 65536 or drop > 0 and 2 * drop >= len(self.journal):  # (at least half: amortised)
            del self.journal[:drop]
            self.offset = mark


def _put_all(writes, tr: Tracker, deps: frozenset) -> None:
    """storage.put(k, value) for each recorded write (storage, k, value) of a step, with the
    tracker's `deps` (at most MAX_DEPS decisions, frozen: every write of the step depends on
    them) and no pool storage written: what Tracker.write and the storages' put do, inline."""
    journal, writer, wrote, touched = tr.journal, tr.writer, tr.wrote, tr.touched
    for storage, k, value in writes:
        kind = storage.KIND
        if kind == 0:
            old = dict.get(storage, k, MISSING)
        elif kind == 1:
            old = True if set.__contains__(storage, k) else MISSING
        else:
            old = storage._value
        if value is MISSING and old is MISSING or kind == 1 and value is not MISSING and old is not MISSING:
            continue   # removing what is not there, adding what is: the storage's put does nothing
        wk = (storage.sid, k)
        journal.append((storage, k, old))
        journal.append((None, wk, writer.get(wk)))
        writer[wk] = deps
        wrote.append(wk)
        if touched is not None:
            touched.add(wk)
        if kind == 0:
            if value is MISSING:
                DictMap.__delitem__(storage, k)
            else:
                if storage._counted and old is MISSING:
                    concrete._count(storage._counted, k, 1)
                dict.__setitem__(storage, k, value)
        elif kind == 1:
            if value is MISSING:
                PySet.discard(storage, k)
            else:
                PySet.add(storage, k)
        else:
            storage._value = value


def _memo_reads(reads, writer, deps, touched, missing) -> bool:
    """Whether a recorded step's reads (storage, key, value, (sid, key), storage.KIND) find their
    values, in order, up to the first that does not: each read as Tracker.read does it (the
    writer's decisions into `deps`, the entry into `touched`). verify/_fast.pyx has the C copy."""
    for storage, k, value, wk, kind in reads:
        d = writer.get(wk)
        if d:
            deps |= d
        if touched is not None:
            touched.add(wk)
        if kind == 0:
            raw = dict.get(storage, k, missing)
        elif kind == 1:
            raw = True if set.__contains__(storage, k) else missing
        else:
            raw = storage._value
        if raw != value:
            return False
    return True


memo_reads = _memo_reads if _fast is None else _fast.memo_reads


_FLOW_MASKS = tuple((1 << w) - 1 for w in Flow.widths)


def _wrap_key(kind, key):
    """concrete.wrap(kind, key), without its cost where the key holds already (a Flow of ints
    within their widths, an int within its Bits: wrap would return an equal key)."""
    if kind is Flow:
        if type(key) is Flow:
            p, s, sp, d, dp = key
            mp, ms, msp, md, mdp = _FLOW_MASKS
            if type(p) is int and type(s) is int and type(sp) is int and type(d) is int and type(dp) is int \
                    and 0 <= p <= mp and 0 <= s <= ms and 0 <= sp <= msp and 0 <= d <= md and 0 <= dp <= mdp:
                return key
    elif type(kind) is Bits and type(key) is int and 0 <= key < 1 << kind.width:
        return key
    return concrete.wrap(kind, key)


class TrackedMap(DictMap):
    KIND = 0   # how memo_reads reads an entry raw (0: a dict's, 1: a set's, 2: a cell's value)

    def __init__(self, decl, tracker: Tracker, sid):
        super().__init__(decl)
        self.tracker, self.sid = tracker, sid

    def get(self, key, default=None):
        k = _wrap_key(self.decl.key, key)
        self.tracker.read(self.sid, k, self)
        return dict.get(self, k, default)

    def __getitem__(self, key):
        k = _wrap_key(self.decl.key, key)
        self.tracker.read(self.sid, k, self)
        return DictMap.__getitem__(self, k)

    def __contains__(self, key) -> bool:
        k = _wrap_key(self.decl.key, key)
        self.tracker.read(self.sid, k, self)
        return dict.__contains__(self, k)

    def raw(self, key):
        return dict.get(self, key, MISSING)

    def put(self, key, value) -> None:
        """Sets a wrapped key to a wrapped value (or MISSING: removes it), journaled."""
        old = dict.get(self, key, MISSING)
        if value is MISSING:
            if old is not MISSING:
                self.tracker.write(self, self.sid, key, old, False)
                DictMap.__delitem__(self, key)
            return
        self.tracker.write(self, self.sid, key, old)
        if self._counted and old is MISSING:
            concrete._count(self._counted, key, 1)
        dict.__setitem__(self, key, value)

    def __setitem__(self, key, value):
        k = _wrap_key(self.decl.key, key)
        self.tracker.write(self, self.sid, k, dict.get(self, k, MISSING))
        DictMap.__setitem__(self, k, value)

    def __delitem__(self, key):
        k = _wrap_key(self.decl.key, key)
        if dict.__contains__(self, k):
            self.tracker.write(self, self.sid, k, dict.__getitem__(self, k), False)
            DictMap.__delitem__(self, k)

    def has(self, key) -> bool:
        """Membership without a dependency (the pool check accounts for it)."""
        return dict.__contains__(self, key)

    def restore(self, key, old) -> None:
        if old is MISSING:
            DictMap.__delitem__(self, key)
        else:
            DictMap.__setitem__(self, key, old)


class TrackedSet(PySet):
    KIND = 1

    def __init__(self, decl, tracker: Tracker, sid):
        super().__init__(decl)
        self.tracker, self.sid = tracker, sid

    def __contains__(self, key) -> bool:
        k = _wrap_key(self.decl.key, key)
        self.tracker.read(self.sid, k, self)
        return set.__contains__(self, k)

    def raw(self, key):
        return True if set.__contains__(self, key) else MISSING

    def put(self, key, value) -> None:
        if value is MISSING:
            self.discard(key)
        else:
            self.add(key)

    def add(self, key):
        k = _wrap_key(self.decl.key, key)
        if not set.__contains__(self, k):
            self.tracker.write(self, self.sid, k, MISSING)
            PySet.add(self, k)

    def discard(self, key):
        k = _wrap_key(self.decl.key, key)
        if set.__contains__(self, k):
            self.tracker.write(self, self.sid, k, True, False)
            PySet.discard(self, k)

    def has(self, key) -> bool:
        return set.__contains__(self, key)

    def restore(self, key, old) -> None:
        if old is MISSING:
            PySet.discard(self, key)
        else:
            PySet.add(self, key)


class TrackedCell(Cell):
    KIND = 2

    def __init__(self, width: int, tracker: Tracker, sid):
        super().__init__(width)
        self.tracker, self.sid = tracker, sid

    @property
    def value(self) -> int:
        self.tracker.read(self.sid, None, self)
        return self._value

    def raw(self, key):
        return self._value

    def put(self, key, value) -> None:
        self.value = value

    @value.setter
    def value(self, v: int) -> None:
        self.tracker.write(self, self.sid, None, self._value)
        self._value = v & self.mask

    def restore(self, key, old) -> None:
        self._value = old


_LAYOUTS: dict = {}   # id(chain) -> (chain, [(instance, [(declaration, decl, sid)])]): a search per part


def _layout(chain) -> list:
    got = _LAYOUTS.get(id(chain))
    if got is None or got[0] is not chain:
        got = _LAYOUTS[id(chain)] = (chain, [(name, [(d, decl, (name, d)) for d, decl in
                                                     member.nf.declarations().items()])
                                             for name, member in chain.members.items()])
    return got[1]


def tracked_state(chain, tracker: Tracker) -> dict:
    """instance -> {declaration: tracked storage}; storage ids are (instance, declaration)."""
    out = {}
    for name, decls in _layout(chain):
        mine = out[name] = {}
        for decl_name, decl, sid in decls:
            if isinstance(decl, Map):
                mine[decl_name] = TrackedMap(decl, tracker, sid)
            elif isinstance(decl, Set):
                mine[decl_name] = TrackedSet(decl, tracker, sid)
            else:
                mine[decl_name] = TrackedCell(decl.kind.width, tracker, sid)
    return out


# -- the problem and the result ---------------------------------------------------------------------
@dataclass
class Problem:
    """What one search checks. `units`: the inputs in order (objects with seq, time_ns, side, view,
    raw_key, lossable). `observed`: aligned, seq -> [(egress, key)] in trace order; positional,
    channel -> [(trace index, key, duplicate?)]. Times in ns (t0_ns: the run's clock origin,
    stall_ns: S). Hints: `logged` / `logged_clock`, (seq, instance) -> values of choice events;
    `shown_values`: every value observed outputs show (a fresh choice avoids them)."""

    chain: object
    units: list
    observed: dict
    eq: Equivalence
    t0_ns: int
    stall_ns: int
    aligned: bool = True
    partitioned: bool = False
    flow_of: object = None
    logged: dict = field(default_factory=dict)
    logged_clock: dict = field(default_factory=dict)
    shown_values: frozenset = frozenset()
    lower_bounds: dict = field(default_factory=dict)   # unit index -> earliest processing time allowed
    no_exhaust: frozenset = frozenset()   # input seqs at which "the pool is exhausted" is known false
    fresh_from: dict = field(default_factory=dict)  # (base, size) -> first pool value no output shows (shared)
    budget: int = BUDGET
    labels: bool = False   # keys hold the outputs' labels (the trace records them)
    outside_routes: dict = field(default_factory=dict)  # side -> (egress or None, instance)


@dataclass
class Attempt:
    """One alternative tried for an input: when it was processed, what it chose, what it emitted,
    and (if it did not match) how."""

    time_ns: int | None
    choices: list = field(default_factory=list)    # [(instance, value)]
    produced: list = field(default_factory=list)   # [(egress, key)]
    mismatch: object = None
    lost: bool = False
    clock: bool = False
    drops: list = field(default_factory=list)
    pool: list = field(default_factory=list)       # pool events: ("choose", sid, value, (base, size)) / ("set", sid, key, present)


@dataclass
class Outcome:
    verdict: str                    # explained | violation | unknown
    reason: str = ""
    failed_unit: int | None = None  # the deepest input (index into units) whose every alternative failed
    attempts: list = field(default_factory=list)   # the alternatives tried there, the preferred first
    touched: set | None = None      # (storage id, key) read or written (partitioned checks)
    pool: dict = field(default_factory=dict)       # unit index -> pool events of its explanation
    late: dict = field(default_factory=dict)       # unit index -> processing time, where later than arrival
    clocked: bytearray = field(default_factory=bytearray)  # per unit: 1 if its step read the clock
    extra_attempts: int = 0
    diagnosis: object = None        # filled by the caller (replay.py) for a violation


class _Frame:
    __slots__ = ("i", "mark", "tprev", "tdeps", "lo", "times", "ti", "pending", "conflicts", "lost_done",
                 "first", "later")

    def __init__(self, i, mark, tprev, tdeps, lo):
        self.i, self.mark, self.tprev, self.tdeps, self.lo = i, mark, tprev, tdeps, lo
        self.times, self.ti, self.pending = None, 0, [()]
        self.conflicts: set = set()
        self.lost_done, self.first = False, True
        self.later = False   # the step reads the clock and its window holds more than lo's clock class

    def next_prefix(self) -> tuple:
        """Pops the next decision prefix to try (pending holds prefixes and _Alternatives)."""
        top = self.pending.pop()
        if type(top) is tuple:
            return top
        j = top.next
        if j < top.last:
            top.next = j + 1
            self.pending.append(top)
        return top.taken + (j,)

    def has_more(self, lossable: bool) -> bool:
        return bool(self.pending) or (self.later if self.times is None else self.ti + 1 < len(self.times)) \
            or (lossable and not self.lost_done)


class _Alternatives:
    """The prefixes taken + (j,) for j = next..last, tried in that order: what
    `pending.extend(taken + (j,) for j in range(last, next - 1, -1))` would push, in one entry."""

    __slots__ = ("taken", "next", "last")

    def __init__(self, taken: tuple, first: int, last: int):
        self.taken, self.next, self.last = taken, first, last


class _Skip(Exception):
    """This alternative does not exist after all (a fresh value when none is left)."""


class _Chooser:
    """Gives a step its choices: follows a decision prefix, then takes the first candidate and
    queues the others on the frame (models/concrete.backtrack's scheme, with inferred candidates)."""

    def __init__(self, search: "Search", frame: _Frame, prefix: tuple, unit):
        self.search, self.frame, self.prefix, self.unit = search, frame, prefix, unit
        self.taken: list = []
        self.made: list = []       # (instance, value)
        self.per_instance: dict = {}
        self.instance = None

    def _decide(self, candidates: list, fresh):
        k = len(self.taken)
        if k < len(self.prefix):
            index = self.prefix[k]
        else:
            index = 0
            if len(candidates) > 1:  # the others, 1 first: one entry standing for them all (see _Frame.next_prefix)
                self.frame.pending.append(_Alternatives(tuple(self.taken), 1, len(candidates) - 1))
        self.taken.append(index)
        value = candidates[index]
        if value is FRESH:
            value = fresh()
            if value is None:
                raise _Skip()
        return value

    def __call__(self, values: list):          # an explicit domain: its concrete values (never empty)
        self.search.choice_log = None          # the memo does not record such a step (its domain may read state untracked)
        def fresh():
            shown = self.search.problem.shown_values
            return next((v for v in values if v not in shown), None)
        cands = self.search.candidates(self, values.__contains__, values if len(values) <= SMALL_DOMAIN else None,
                                       False)
        value = self._decide(cands, fresh)
        self.made.append((self.instance, value))
        return value

    def choose_domain(self, domain):            # a pool domain: [base, base+size), minus `used`'s keys
        value = self._choose_domain(domain)
        log = self.search.choice_log
        if log is not None:   # for the memo: the call and its answer (see Search._rechoose)
            log.append((self.instance, domain.pool, domain.used, domain.kind, value))
        return value

    def _choose_domain(self, domain):
        base, size = domain.pool
        used = domain.used
        search = self.search
        if used is None:
            def available(v):
                return base <= v < base + size
        else:
            has = used.has if hasattr(used, "has") else used.__contains__
            sid = getattr(used, "sid", None)
            search.tracker.pool_sids.add(sid)

            def available(v):
                return base <= v < base + size and not has(v)
            if domain.exhausted():
                search.pool_events.append(("choose", sid, None, (base, size)))
                return None
        small = range(base, base + size) if size <= SMALL_DOMAIN else None
        shared = search.problem.partitioned and used is not None and self.unit.seq not in search.problem.no_exhaust
        # a value outside the pool is unavailable whatever the state holds: no decision took it
        taken_by = None if used is None else (lambda v: base <= v < base + size and search.tracker.read(sid, v))
        cands = search.candidates(self, available, small, shared, taken_by)
        value = self._decide(cands, lambda: search.fresh(base, size, available))
        if used is not None:
            search.pool_events.append(("choose", sid, None if value is EXHAUSTED else value, (base, size)))
        if value is EXHAUSTED:
            return None
        self.made.append((self.instance, value))
        return value


class Search:
    def __init__(self, problem: Problem):
        self.problem = p = problem
        self.chain, self.units, self.eq = p.chain, p.units, p.eq
        self.tracker = Tracker(track_touched=p.partitioned)
        self.state = tracked_state(p.chain, self.tracker)
        self.members = p.chain.members
        self.tps = sorted({getattr(m.nf, "ticks_per_second", 1) for m in self.members.values()})
        self.tprev, self.tdeps = None, EMPTY
        self.extra = 0
        self.deepest: tuple = (-1, [])   # (unit index, [Attempt]) of the deepest failure
        self.pool_events: list = []
        self.positions: dict = {}        # positional matching: channel -> next observed index
        self.stack = deque()
        self._revealed: dict = {}
        self._ahead: dict = {}
        self.stop_at = None              # run() stops when it reaches this unit (to diagnose it)
        self.memo: dict = {}             # (view, clock readings) -> recorded steps (see _memo_run)
        self.choice_log: list | None = None   # the pool choices of the step being recorded (see _memo_run)
        self.memo_keys = MEMO_KEYS       # views recorded before the memo starts afresh
        self.memo_ticks = None           # the clock readings of the latest recorded step
        self.horizon = HORIZON
        self.unit_horizon = None         # open decisions kept only for this many inputs after theirs
        self.start()

    # -- candidates for a choice ---------------------------------------------------------------------
    def candidates(self, chooser: _Chooser, available, small, shared: bool, taken_by=None) -> list:
        """The values to try for a choice, best first. A logged or revealed value that is not
        available makes the attempt depend on `taken_by(v)` (the decisions that took it): another
        choice there may leave it free."""
        unit, p, out, seen = chooser.unit, self.problem, [], set()

        def offer(v):
            if v not in seen and isinstance(v, int):
                seen.add(v)
                if available(v):
                    out.append(v)
                elif taken_by is not None:
                    taken_by(v)

        k = chooser.per_instance.get(chooser.instance, 0)
        chooser.per_instance[chooser.instance] = k + 1
        logged = p.logged.get((unit.seq, chooser.instance))
        if logged and k < len(logged):
            offer(logged[k])
        for v in self.revealed(chooser.frame.i):
            offer(v)
        for v in self.ahead(chooser.frame.i):
            offer(v)
        if small is not None:
            taken_by = None  # every value is tried: the others were not revealed
            for v in small:
                offer(v)
        else:
            out.append(FRESH)
        if shared:  # an input that shows nothing was most likely dropped for want of a value: try that first
            out.insert(0, EXHAUSTED) if not self._observed_for(chooser.frame.i) else out.append(EXHAUSTED)
        return out

    def revealed(self, i: int) -> list:
        got = self._revealed.get(i)
        if got is None:
            got = self._revealed[i] = _values(self._observed_for(i))
        return got

    def ahead(self, i: int) -> list:
        got = self._ahead.get(i)
        if got is None:
            values, j = [], i + 1
            while j < len(self.units) and len(values) < LOOKAHEAD and j <= i + LOOKAHEAD:
                values += _values(self._observed_for(j))
                j += 1
            got = self._ahead[i] = values[:LOOKAHEAD]
        return got

    def _observed_for(self, i: int):
        return self.problem.observed.get(self.units[i].seq, ()) if self.problem.aligned else ()

    def fresh(self, base: int, size: int, available):
        """A value of [base, base+size) that no observed output shows and the state has free.
        Values shown are skipped once for all searches of a check (`fresh_from`, shared: the
        set of values shown only grows), so a pool that outputs have used up costs O(1)."""
        shown, cursors = self.problem.shown_values, self.problem.fresh_from
        v, end = cursors.get((base, size), base), base + size
        while v < end and v in shown:
            v += 1
        cursors[(base, size)] = v
        while v < end:
            if v not in shown and available(v):
                return v
            v += 1
        return None

    # -- one attempt -----------------------------------------------------------------------------------
    def execute(self, unit, t, chooser) -> tuple[list, list, bool]:
        """Runs one input through the chain at time t: (produced [(egress, key)], drops, read clock)."""
        view = unit.view
        if isinstance(view, Drop):
            return [], [view.reason], False
        if view is OUTSIDE:
            egress, instance = self.problem.outside_routes[unit.side]
            if egress is None:
                return [], [f"{instance}: outside the model" if instance else f"the chain has no {unit.side} ingress"], False
            return [(egress, unit.raw_key)], [], False
        produced, drops, clock = [], [], [False]
        t0, writes = self.problem.t0_ns, unit.writes

        def process(instance, pkt):
            member = self.members[instance]
            chooser.instance = instance
            tps = member.nf.ticks_per_second

            def now():
                clock[0] = True
                return (t - t0) * tps // NS
            res = step(member.nf, self.state[instance], pkt, chooser, now)
            drops.extend(f"{instance}: {r}" for r in res.drops)
            released = []
            for gate, out in res.outputs:
                field = refusal(writes, pkt, out)
                if field is None:
                    released.append((gate, out))
                else:  # the frame cannot show it: not released, the state change stands
                    drops.append(f"{instance}: cannot write {field} into the frame")
            return released

        labels = self.problem.labels
        self.chain.route(view, process, lambda pkt, egress: produced.append((egress, observable(pkt.wrapped(), labels))),
                         drops.append)
        return produced, drops, clock[0]

    def match(self, unit, produced: list):
        """None if the input's outputs match what was observed for it, else the Mismatch."""
        p = self.problem
        if p.aligned:
            observed = p.observed.get(unit.seq, [])
            if produced == observed:
                return None
            return compare(observed, produced, self.eq, flow_of=p.flow_of,
                           lossable=(lambda k: True) if unit.lossable else None)
        return self._match_positional(produced, unit.lossable and self.eq.lossy)

    def _match_positional(self, produced, lossable: bool):
        observed, positions, eq, p = self.problem.observed, self.positions, self.eq, self.problem
        for egress, key in produced:
            channel = eq.channel(egress, key, p.flow_of)
            queue = observed.get(channel, ())
            k = positions.get(channel, 0)
            while k < len(queue) and queue[k][1] != key and eq.allow_duplicates and queue[k][2]:
                k += 1
            if k >= len(queue) or queue[k][1] != key:
                if lossable:  # lost in flight
                    continue
                return Mismatch(channel, queue[k][0] if k < len(queue) else None, None, [key])
            self.tracker.journal.append((self, channel, positions.get(channel, MISSING)))
            positions[channel] = k + 1
        return None

    def restore(self, channel, old) -> None:  # the journal's protocol, for positional pointers
        if old is MISSING:
            self.positions.pop(channel, None)
        else:
            self.positions[channel] = old

    def ticks(self, t: int):
        """The clock readings at time t (one per clock resolution of the chain's members)."""
        tps = self.tps
        if len(tps) == 1:
            return (t - self.problem.t0_ns) * tps[0] // NS
        t0 = self.problem.t0_ns
        return tuple((t - t0) * f // NS for f in tps)

    def _memo_run(self, unit, t, chooser):
        """Like execute, but a step that made no choice (or whose pool choices all found the pool
        used up) is recorded -- the values it read, the values it left, its pool choices and their
        answers -- and replayed without running the models when an input with the same view, at the
        same clock readings, finds every value it reads unchanged and the chooser gives the same
        answers to the same pool choices (Search._rechoose; the handlers are deterministic given
        what they read, their choices and the clock)."""
        view = unit.view
        if view is OUTSIDE or isinstance(view, Drop):
            return self.execute(unit, t, chooser)
        key = (_view_key(unit), unit.writes, self.ticks(t))
        tr, memo = self.tracker, self.memo
        for entry in memo.get(key, ()):
            reads, writes, produced, drops, clocked, choices = entry
            if memo_reads(reads, tr.writer, tr.deps, tr.touched, MISSING):
                if choices and not self._rechoose(chooser, choices):
                    break   # another answer to one of its choices: the models run
                for storage, k, value in writes:
                    storage.put(k, value)
                return produced, drops, clocked
        tr.recording = reads = []
        self.choice_log = []
        try:
            produced, drops, clocked = self.execute(unit, t, chooser)
            choices = self.choice_log   # None if a choice the memo cannot repeat was made
        finally:
            tr.recording = None
            self.choice_log = None
        # a step whose choice took a value wrote it into the state (a flow's port, its backend):
        # the flow's next input finds another state, so such steps are not kept (memory); the
        # steps kept are those that made no choice or found every pool used up (made none either)
        if choices is not None and all(c[4] is None for c in choices):
            states = self.state
            writes = []
            for sid, k in dict.fromkeys(tr.wrote):
                storage = states[sid[0]][sid[1]]
                writes.append((storage, k, storage.raw(k)))
            ticks = key[2]
            if ticks != self.memo_ticks:
                if self.memo_ticks is not None and ticks > self.memo_ticks:
                    # the clock moved on: inputs come in time order, so the steps recorded at earlier
                    # readings are asked for again only by a backjump (which then runs the models)
                    for old in [k for k in memo if k[2] < ticks]:
                        del memo[old]
                self.memo_ticks = ticks
            entries = memo.setdefault(key, [])
            entries.insert(0, (reads, writes, produced, drops, clocked, tuple(choices)))
            del entries[MEMO_VARIANTS:]
            if len(memo) > self.memo_keys:
                memo.clear()
        return produced, drops, clocked

    def _rechoose(self, chooser: _Chooser, choices: tuple) -> bool:
        """A recorded step's pool choices asked again, in order, of this attempt's chooser (the
        same calls the models would make: the step read the same values up to each of them):
        True if every answer is the recorded one -- then the step is the recorded step, and the
        chooser, the frame's alternatives and the pool events are as running it leaves them --
        else False with all of those as they were (the models then run the step)."""
        from ..models.api import Domain
        frame, tr = chooser.frame, self.tracker
        saved = (len(chooser.taken), len(chooser.made), dict(chooser.per_instance), len(frame.pending),
                 len(self.pool_events), set(tr.pool_sids), chooser.instance)
        try:
            for instance, pool, used, kind, value in choices:
                chooser.instance = instance
                if chooser._choose_domain(Domain((), kind, pool=pool, used=used)) != value:
                    break
            else:
                return True
        except _Skip:
            pass
        taken, made, per_instance, pending, events, pool_sids, instance = saved
        del chooser.taken[taken:], chooser.made[made:], frame.pending[pending:], self.pool_events[events:]
        chooser.per_instance, chooser.instance = per_instance, instance
        tr.pool_sids.clear()
        tr.pool_sids.update(pool_sids)
        return False

    def _replayed(self, unit, i: int, lo: int) -> bool:
        """The common case without frames: input i is the first alternative (processed at lo),
        the memo replays its step (see _memo_run), the outputs are the observed ones exactly,
        and no alternative is left (no pool storage written, no later clock class, not
        lossable). Then the state, the dependencies, the journal and the bookkeeping are left
        exactly as advance + _commit leave them, and True is returned; else nothing is done."""
        p = self.problem
        view = unit.view
        if not p.aligned or unit.lossable or view is OUTSIDE or type(view) is Drop \
                or lo > unit.time_ns + p.stall_ns:
            return False
        entries = self.memo.get((_view_key(unit), unit.writes, self.ticks(lo)))
        if not entries:
            return False
        tr = self.tracker
        tr.deps, tr.wrote, tr.pool_writes = set(), [], []
        self.pool_events = []
        writer, deps, touched = tr.writer, tr.deps, tr.touched
        for entry in entries:
            reads, writes, produced, drops, clocked, choices = entry
            if memo_reads(reads, writer, deps, touched, MISSING):
                break
        else:
            return False   # attempt() runs the step (the reads above add nothing it would not)
        if choices:   # a step with choices leaves alternatives: attempt() takes it (with its frame)
            return False
        if produced != p.observed.get(unit.seq, []) \
                or clocked and self.ticks(unit.time_ns + p.stall_ns) != self.ticks(lo):
            return False
        pool_sids = tr.pool_sids
        if pool_sids and any(storage.sid in pool_sids for storage, _, _ in writes):
            return False
        if len(deps) > PRUNE_AT and tr.floor > FORGOTTEN:
            deps = tr.deps = _pruned(deps, tr.floor)
        if len(deps) > MAX_DEPS:
            for storage, k, value in writes:
                storage.put(k, value)
        else:
            _put_all(writes, tr, frozenset(deps) if deps else EMPTY)
        if lo == unit.time_ns:   # _commit with no alternative left
            self.tdeps = EMPTY
        self.tprev = lo
        if not self.stack:
            tr.forget_before(tr.mark())
        clocked_ = self.clocked
        while len(clocked_) <= i:
            clocked_.append(0)
        clocked_[i] = clocked
        if clocked and lo > unit.time_ns:
            self.late[i] = lo
        return True

    def attempt(self, f: _Frame, unit, t, prefix, lost: bool) -> Attempt | None:
        """Try one alternative; on success the state is left as it made it and the Attempt returned."""
        tr = self.tracker
        tr.deps, tr.wrote, tr.pool_writes = set(), [], []
        self.pool_events = []
        if lost:
            att = Attempt(None, lost=True)
        else:
            chooser = _Chooser(self, f, prefix, unit)
            try:
                produced, drops, clocked = self._memo_run(unit, t, chooser)
            except _Skip:
                return None
            att = Attempt(t, chooser.made, produced, clock=clocked, drops=drops)
            if f.first:
                f.first = False
                if clocked:
                    f.later = self.ticks(unit.time_ns + self.problem.stall_ns) != self.ticks(f.lo)
        att.mismatch = self.match(unit, att.produced)
        if att.mismatch is None:
            if self.pool_events or tr.pool_writes:
                att.pool = self.pool_events + [("set",) + w for w in tr.pool_writes]
            return att
        f.conflicts |= tr.deps
        if f.lo > unit.time_ns:
            f.conflicts |= f.tdeps
        if not self.problem.aligned:  # positional: matching depends on every earlier input
            below = next((fr.i for fr in reversed(self.stack) if fr.i < f.i), None)
            if below is not None:
                f.conflicts.add(below)
        self._note_failure(f.i, att)
        return None

    def _note_failure(self, i, att) -> None:
        if i > self.deepest[0]:
            self.deepest = (i, [])
        if i == self.deepest[0] and len(self.deepest[1]) < 8:
            self.deepest[1].append(att)

    def time_candidates(self, unit, lo: int) -> list:
        """One processing time per class of equal clock readings in [lo, a_i + S] (its earliest
        time): lo's class first, then the latest, then a logged clock read's, then the rest."""
        hi = unit.time_ns + self.problem.stall_ns
        t0, starts = self.problem.t0_ns, {lo}
        for tps in self.tps:
            tick = (lo - t0) * tps // NS + 1
            while True:
                start = t0 + -(-tick * NS // tps)
                if start > hi:
                    break
                starts.add(start)
                tick += 1
                if len(starts) > 100_000:
                    raise Unknown(f"input {unit.seq}: more than 100000 distinct clock readings in its window")
        ordered = sorted(starts)
        out = [ordered[0]] + ([ordered[-1]] if len(ordered) > 1 else [])
        for (seq, instance), values in self.problem.logged_clock.items():
            if seq != unit.seq or instance not in self.members:
                continue
            tps = self.members[instance].nf.ticks_per_second
            for tick in values:
                t = next((t for t in ordered if (t - t0) * tps // NS == tick), None)
                if t is not None and t not in out:
                    out.insert(1, t)
        return out + [t for t in ordered if t not in out]

    def advance(self, f: _Frame) -> Attempt | None:
        """The next alternative of input f.i that matches (state left as it made it), or None."""
        unit = self.units[f.i]
        while True:
            if not f.pending and f.later and f.times is None:
                f.times = self.time_candidates(unit, f.lo)
            if not f.pending and f.times is not None and f.ti + 1 < len(f.times):
                f.ti += 1
                f.pending = [()]
            if f.pending:
                prefix = f.next_prefix()
                t = f.times[f.ti] if f.times is not None else f.lo
                lost = False
            elif unit.lossable and not f.lost_done:
                f.lost_done, prefix, t, lost = True, (), f.lo, True
            else:
                return None
            if not f.first:
                self.extra += 1
                if self.extra > self.problem.budget:
                    raise Unknown(f"the search tried {self.problem.budget} alternatives beyond the first "
                                  f"(at input {unit.seq}) without deciding")
            self.tracker.undo(f.mark)
            self.tprev, self.tdeps = f.tprev, f.tdeps
            att = self.attempt(f, unit, t, prefix, lost)
            if att is not None:
                return att

    def _commit(self, f: _Frame, att: Attempt) -> bool:
        """After a successful attempt: what its writes and its time depend on; returns whether
        input f.i stays an open decision."""
        unit = self.units[f.i]
        branch = f.has_more(unit.lossable)
        forced = set(f.conflicts)   # why the alternatives before this one failed
        if branch:
            forced.add(f.i)
        if forced:
            writer = self.tracker.writer
            for k in self.tracker.wrote:
                writer[k] = writer[k] | forced
        t = f.lo if att.lost or not att.clock else att.time_ns
        if t == unit.time_ns:
            self.tdeps = EMPTY
        elif t == f.lo:
            self.tdeps = f.tdeps
        else:
            self.tdeps = frozenset(forced) | (f.tdeps if f.lo > unit.time_ns else EMPTY)
            if len(self.tdeps) > PRUNE_AT and self.horizon_floor > FORGOTTEN:
                self.tdeps = frozenset(_pruned(self.tdeps, self.horizon_floor))
        self.tprev = t if not att.lost else f.tprev
        return branch

    def run(self) -> Outcome | None:
        """The whole search over `problem.units`; with `stop_at` set, returns None when it first
        reaches that unit (its state then is the one in which it first failed there: see
        replay.diagnose)."""
        self.start()
        out = self.proceed()
        if out is not None or self.stopped:
            return out
        return self.finish()

    def start(self) -> None:
        self.i, self.horizon_floor, self.stopped = 0, FORGOTTEN, False
        self.pool, self.late, self.clocked = {}, {}, bytearray()

    def proceed(self) -> Outcome | None:
        """Searches on over the units there are (more may be appended to `units` later: the
        streaming check feeds them). Returns a final Outcome (violation, unknown), or None when
        every unit there is has been explained so far (or `stop_at` was reached)."""
        units, stack = self.units, self.stack
        pool, late, clocked = self.pool, self.late, self.clocked
        stall = self.problem.stall_ns
        n, i = len(units), self.i
        keep = self.unit_horizon
        try:
            while i < n:
                if i == self.stop_at:
                    self.stopped = True
                    return None
                if keep is not None and stack and i - stack[0].i > keep:
                    # e.g. a flow's first choice, never refuted: kept open, it would keep the flow's every
                    # input and journal entry since (memory growing with the flow's length)
                    self._commit_oldest()
                unit = units[i]
                lo = unit.time_ns if self.tprev is None or self.tprev < unit.time_ns else self.tprev
                bound = self.problem.lower_bounds.get(i)
                if bound is not None and bound > lo:
                    lo = bound
                if bound is None and self._replayed(unit, i, lo):
                    i += 1
                    continue
                f = _Frame(i, self.tracker.mark(), self.tprev, self.tdeps, lo)
                if lo <= unit.time_ns + stall:
                    att = self.advance(f)
                else:  # an earlier input's time leaves this one no time in its window
                    att = None
                    f.conflicts |= self.tdeps
                    self._note_failure(i, Attempt(lo, mismatch="window"))
                if att is None and f.conflicts and self._impossible(unit):
                    f.conflicts = set()   # no earlier decision can help: a violation here
                while att is None:  # conflict-directed backjumping
                    conflicts = f.conflicts
                    if not conflicts:
                        return self._outcome("violation", "")
                    h = max(conflicts)
                    if h <= self.horizon_floor:
                        kept = f"the latest {self.horizon}" + (f", of the last {keep} inputs" if keep else "")
                        raise Unknown(f"explaining input {units[self.deepest[0]].seq} needs a decision the search "
                                      f"no longer keeps open (it keeps {kept}, and {MAX_DEPS} per value)")
                    while stack[-1].i > h:
                        stack.pop()
                    g = stack[-1]
                    g.conflicts |= conflicts - {h}
                    for k in [k for k in late if k >= h]:
                        del late[k]
                    for k in [k for k in pool if k >= h]:
                        del pool[k]
                    att = self.advance(g)
                    stack.pop()
                    f = g
                if self._commit(f, att):
                    stack.append(f)
                    if len(stack) > self.horizon:
                        self._commit_oldest()
                elif not stack:
                    self.tracker.forget_before(self.tracker.mark())
                if att.pool:
                    pool[f.i] = att.pool
                while len(clocked) <= f.i:
                    clocked.append(0)
                clocked[f.i] = att.clock
                if att.clock and att.time_ns > units[f.i].time_ns:
                    late[f.i] = att.time_ns
                i = f.i + 1
        except Unknown as e:
            return self._outcome("unknown", str(e))
        finally:
            self.i = i
        return None

    def _impossible(self, unit) -> bool:
        """Whether the input's observed outputs are beyond every state, time and choice of the chain
        (replay_z3.impossible; asked once per input, only where the outputs are matched exactly)."""
        p = self.problem
        if not p.aligned or unit.lossable or p.eq.allow_duplicates:
            return False
        observed = p.observed.get(unit.seq, [])
        refuted = p.chain.__dict__.setdefault("_refuted", {})  # the chain's: every part of a check shares it
        key = (_view_key(unit), unit.writes, tuple(observed))
        known = refuted.get(key)
        if known is None:
            from . import replay_z3
            from .solver import Budget
            if len(refuted) >= 4096:
                refuted.clear()
            known = refuted[key] = replay_z3.impossible(p.chain, unit, observed, Budget(timeout=IMPOSSIBLE_SECONDS))
        return known

    def _commit_oldest(self) -> None:
        """The oldest open decision is kept no longer: a conflict reaching it is unknown."""
        stack = self.stack
        self.horizon_floor = self.tracker.floor = max(self.horizon_floor, stack.popleft().i)
        self.tracker.forget_before(stack[0].mark if stack else self.tracker.mark())

    def oldest_needed(self) -> int:
        """The first unit a backjump can still return to (units before it may be forgotten)."""
        return self.stack[0].i if self.stack else self.i

    def finish(self) -> Outcome:
        if not self.problem.aligned:
            leftover = self._positional_leftover()
            if leftover is not None:
                self.deepest = (len(self.units), [Attempt(None, mismatch=leftover)])
                return self._outcome("violation", "")
        return self._outcome("explained", "")

    def _outcome(self, verdict, reason) -> Outcome:
        i, attempts = self.deepest
        failed = i if verdict != "explained" and i >= 0 else None
        return Outcome(verdict, reason, failed, attempts if failed is not None else [], self.tracker.touched,
                       self.pool, self.late, self.clocked, self.extra)

    def _positional_leftover(self):
        for channel, queue in self.problem.observed.items():
            k = self.positions.get(channel, 0)
            while k < len(queue) and self.eq.allow_duplicates and queue[k][2]:
                k += 1
            if k < len(queue):
                return Mismatch(channel, queue[k][0], None, [])
        return None


class paused_gc:
    """The cyclic garbage collector run rarely while a check runs: its passes over the state the
    search keeps cost a third of the time on long traces at the default thresholds (it cannot be
    off: the chain's recursive routing closure is a cycle per input)."""

    def __enter__(self):
        import gc
        self.was = gc.get_threshold()
        gc.set_threshold(200_000, 50, 100)
        return self

    def __exit__(self, *exc):
        import gc
        gc.set_threshold(*self.was)
        return False


def _view_key(unit) -> tuple:
    """The fields of an input's view (a Packet), in its order: equal exactly when the views are
    (what the memo keys steps by; the reader gives it with the input, replay_load.Input.vkey)."""
    k = getattr(unit, "vkey", None)
    if k is None:
        v = unit.view
        k = (v.proto, v.src, v.sport, v.dst, v.dport, v.flags, v.inbound, v.length, v.label)
    return k


class gc_off:
    """The cyclic garbage collector off while a streamed pass runs: its passes over what the parts
    keep cost a third of the time even at paused_gc's thresholds, and a pass makes no cyclic
    garbage (the search's journal and storages are the only cycles, one per part, broken when the
    part ends: replay_stream.first_pass; the chain's routing closure breaks its own)."""

    def __enter__(self):
        import gc
        self.was = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc):
        import gc
        if self.was:
            gc.enable()
        return False


def _values(observed) -> list:
    """The field values observed outputs show, in order (candidates for inferred choices)."""
    out = []
    for _, key in observed:
        if key and key[0] != "raw":
            out.extend(key[1:5])
    return out


def search(problem: Problem) -> Outcome:
    return Search(problem).run()
