"""Trace replay in one streamed pass, memory flat in the trace's length, parts checked in parallel.

Pass 1 (every worker reads the whole trace; worker w checks the parts whose name hashes to w):
an input is held until LAG more inputs have been read (its outputs are then all there), then
given to its part (replay_partition's union-find over connections, grown as the trace goes) and
that part's search goes as far as it can (replay_search.Search, fed incrementally). A part keeps
only the inputs its open decisions may return to (at most PART_HORIZON of them, made within its
last PART_UNIT_HORIZON inputs), so memory grows with the flows alive, not with the packets. Each
worker reports, per part, its verdict and what the independence checks need: the state entries it
touched, its pool choices, its late processing times. Worker 0 also checks the order of the
outputs on every channel.

Pass 2, only if pass 1 leaves something undecided (a part not explained, parts that turned out
not to be independent, outputs out of order, late processing times that constrain other parts):
the parts concerned are read again into memory and checked exactly by replay.replay (merging,
matching outputs freely, Z3, and the report). Explained traces never need it."""
from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import get_context

from .equivalence import Equivalence
from .frames import outside_route
from .replay_load import CLOCK_NAMES, Event, Input, Output, Recording, open_trace
from .replay_partition import _UnionFind, partition_kinds, tags_of
from .replay_search import Problem, Search, gc_off, paused_gc

LAG = 4096            # inputs read past an input before its outputs are taken to be complete
PREVIEW = 400         # packets kept from the start of an explained trace for its timeline
PART_HORIZON = 16     # open decisions a part keeps (a conflict reaching further: unknown, then pass 2)...
PART_UNIT_HORIZON = 16  # ...and only those of its latest inputs (else a flow's first choice keeps the flow)
ALL = ("all",)        # the one part of a chain that is not partitionable
PART_MEMO_KEYS = 16   # recorded steps a part keeps (replay_search._memo_run; 1 << 20 for the one part)


class Window:
    """A list whose front can be forgotten: indices stay those of the whole sequence."""

    __slots__ = ("items", "offset")

    def __init__(self):
        self.items, self.offset = [], 0

    def __len__(self) -> int:
        return self.offset + len(self.items)

    def __getitem__(self, i):
        return self.items[i - self.offset]

    def append(self, x) -> None:
        self.items.append(x)

    def forget_before(self, i: int) -> list:
        drop = i - self.offset
        if drop < 8:
            return []
        gone = self.items[:drop]
        del self.items[:drop]
        self.offset = i
        return gone


def _owner(name, workers: int) -> int:
    return zlib.crc32(repr(name).encode()) % workers


class _Releaser:
    """Holds each input until LAG more have been read, collecting its outputs; then releases it."""

    def __init__(self, sink):
        self.sink = sink
        self.pending: deque = deque()
        self.by_seq: dict = {}
        self.early: dict = {}          # outputs read before their input
        self.released_upto = -1        # highest seq released
        self.late: list = []           # outputs of inputs already released
        self.inputs = 0

    def input(self, u: Input) -> None:
        entry = [u, self.early.pop(u.seq, [])]
        self.pending.append(entry)
        self.by_seq[u.seq] = entry
        self.inputs += 1
        if len(self.pending) > LAG:
            self._release()

    def output(self, o: Output) -> None:
        entry = self.by_seq.get(o.seq)
        if entry is not None:
            entry[1].append(o)
        elif o.seq is not None and o.seq <= self.released_upto:
            self.late.append(o)
        else:
            self.early.setdefault(o.seq, []).append(o)

    def _release(self) -> None:
        u, outs = self.pending.popleft()
        del self.by_seq[u.seq]
        self.released_upto = max(self.released_upto, u.seq)
        self.sink(u, outs)

    def flush(self) -> None:
        while self.pending:
            self._release()


@dataclass
class PartReport:
    verdict: str
    reason: str = ""
    touched: set | None = None
    pool: dict = field(default_factory=dict)      # seq -> pool events
    late: dict = field(default_factory=dict)      # seq -> (arrival, processing time)


@dataclass
class PassReport:
    parts: dict = field(default_factory=dict)     # part name -> PartReport
    tainted: set = field(default_factory=set)     # names of parts merged while the trace was read
    inversions: list = field(default_factory=list)  # (tag, tag) of outputs out of order
    orphans: list = field(default_factory=list)   # seqs of outputs without an input
    late_outputs: list = field(default_factory=list)  # tags of outputs that came more than LAG inputs late
    uf: dict = field(default_factory=dict)        # the union-find's parents (worker 0)
    names: dict = field(default_factory=dict)     # root -> part name (worker 0)
    inputs: int = 0
    outputs: int = 0
    events: list = field(default_factory=list)
    partitioned: bool = False
    preview: list = field(default_factory=list)   # the first PREVIEW inputs and outputs (for the HTML timeline)


class _Part:
    __slots__ = ("name", "search", "observed", "final", "done")

    def __init__(self, name, search, observed):
        self.name, self.search, self.observed = name, search, observed
        self.final, self.done = PartReport("explained"), False


def first_pass(path, chain_text, params, inside, eq: Equivalence, stall_ns: int, worker: int = 0,
               workers: int = 1, progress=None) -> PassReport:
    """Pass 1 for the parts worker `worker` of `workers` owns (see the module docstring)."""
    rec, items = open_trace(path, chain_text, params, inside, progress if worker == 0 else None)
    kinds = partition_kinds(rec.chain)
    by_source = kinds is not None and "source" in kinds
    out = PassReport(partitioned=kinds is not None)
    uf, root_name, parts, order = _UnionFind(), {}, {}, {}
    logged, logged_clock, shown, fresh_from = {}, {}, set(), {}
    routes = {side: outside_route(rec.chain, side)[:2] for side in ("inside", "outside")}
    released, crashed = -1, False   # highest seq with an output so far; between a failure and a failover

    def new_part(name) -> _Part:
        observed: dict = {}
        problem = Problem(rec.chain, Window(), observed, eq, rec.t0_ns, stall_ns, aligned=True,
                          partitioned=kinds is not None, flow_of=rec.flow_of, logged=logged,
                          logged_clock=logged_clock, shown_values=shown, outside_routes=routes, fresh_from=fresh_from,
                          labels=rec.labels)
        search = Search(problem)
        search.horizon, search.unit_horizon = PART_HORIZON, PART_UNIT_HORIZON
        if kinds is not None:   # one flow's views, at each clock reading: a few (memory flat in time)
            search.memo_keys = PART_MEMO_KEYS
        return _Part(name, search, observed)

    def sink(u: Input, outs: list) -> None:
        observed = [(o.egress, o.key) for o in outs]
        if kinds is None:
            name = ALL
        else:
            tags = tags_of(u, observed, by_source)
            find = uf.find
            r = find(tags[0])
            name = root_name.get(r)
            if name is None or any(find(t) != r for t in tags[1:]):   # a new part, or parts that meet
                roots = {find(t) for t in tags}
                named = sorted({root_name.pop(r) for r in roots if r in root_name}, key=repr)
                root = tags[0]
                for t in tags[1:]:
                    root = uf.union(root, t)
                if len(named) > 1:   # parts met: pass 2 checks them together
                    out.tainted.update(named)
                name = root_name[find(root)] = named[0] if named else tags[0]
            # else: every tag is in one named part already (the union-find is as the unions leave it)
        if workers > 1 and _owner(name, workers) != worker:
            return
        part = parts.get(name)
        if part is None:
            part = parts[name] = new_part(name)
        if part.done:
            return
        s = part.search
        part.observed[u.seq] = observed
        s.units.append(u)
        result = s.proceed()
        if result is not None:
            part.final.verdict, part.final.reason, part.done, part.search = result.verdict, result.reason, True, None
            s.tracker.journal.clear()   # the part's one cycle (journal -> storage -> tracker)
            return
        below = s.oldest_needed()
        if below - s.units.offset >= 8:   # else Window.forget_before forgets nothing
            _forget(part, below)

    releaser = _Releaser(sink)
    for item in items:
        kind = type(item)
        if worker == 0 and len(out.preview) < PREVIEW and kind is not Event:
            out.preview.append(item)
        if kind is Input:
            if crashed and eq.lossy and item.seq > released:
                item.lossable = True
            releaser.input(item)
            out.inputs += 1
        elif kind is Output:
            out.outputs += 1
            if item.key[0] != "raw":
                shown.update(item.key[1:5])
            if item.seq is not None and item.seq > released:
                released = item.seq
            releaser.output(item)
            if worker == 0 and item.seq is not None and not (eq.allow_duplicates and item.duplicate):
                channel = eq.channel(item.egress, item.key, rec.flow_of)
                before = order.get(channel)
                if before is not None and before[0] > item.seq:
                    out.inversions.append((output_tag(item), output_tag(before[1])))
                else:   # the output itself: its tag is needed only for an inversion
                    order[channel] = (item.seq, item)
        else:
            out.events.append(item)
            if item.kind == "choice" and isinstance(item.fields.get("seq"), int) \
                    and isinstance(item.fields.get("value"), int):
                target = logged_clock if str(item.fields.get("name", "")) in CLOCK_NAMES else logged
                target.setdefault((item.fields["seq"], item.instance), []).append(item.fields["value"])
            elif item.kind == "failure":
                crashed = True
                if eq.lossy:   # the inputs not released yet were in flight
                    for u, _ in releaser.pending:
                        if u.seq > released:
                            u.lossable = True
            elif item.kind == "failover":
                crashed = False
    releaser.flush()
    for part in parts.values():
        if not part.done:
            s = part.search
            part.final.verdict = s.finish().verdict
            part.final.touched = s.tracker.touched
            _forget(part, len(s.units), everything=True)
            s.tracker.journal.clear()   # the part's one cycle (journal -> storage -> tracker)
            part.search = None
        out.parts[part.name] = part.final
    if worker == 0:
        out.orphans = sorted(releaser.early)
        out.late_outputs = [output_tag(o) for o in releaser.late]
        out.uf, out.names = uf.parent, root_name
    return out


def output_tag(o: Output):
    """The part tag of an output (an output belongs to its input's part)."""
    return tags_of(None, [(o.egress, o.key)], False)[0]


def _forget(part: _Part, below: int, everything: bool = False) -> None:
    """Moves what a part no longer needs out of its search (memory flat): the units before
    `below`, their observed outputs and caches; their final pool events and late times go to
    the part's report, by seq."""
    s = part.search
    if everything:
        first, gone = s.units.offset, list(s.units.items)
        s.units.items.clear()
    else:
        gone = s.units.forget_before(below)
        first = below - len(gone)
    for k, u in enumerate(gone, first):
        part.observed.pop(u.seq, None)
        s._revealed.pop(k, None)
        s._ahead.pop(k, None)
        events = s.pool.pop(k, None)
        if events:
            part.final.pool[u.seq] = events
        t = s.late.pop(k, None)
        if t is not None:
            part.final.late[u.seq] = (u.time_ns, t)


# -- the whole check ---------------------------------------------------------------------------------
_JOB: dict = {}


def _pass_job(worker: int) -> PassReport:
    a = _JOB
    with gc_off():
        return first_pass(a["path"], a["chain"], a["params"], a["inside"], a["eq"], a["stall"], worker,
                          a["workers"], a["progress"] if worker == 0 else None)


def check_trace(path, chain_text=None, params=(), inside=None, eq: Equivalence = Equivalence(),
                stall_ns: int | None = None, jobs: int = 1, progress=None):
    """The verdict on a trace file (a replay.ReplayResult), streamed (see the module docstring)."""
    with paused_gc():   # the sweeps over every part's report allocate millions of tuples
        return _check_trace(path, chain_text, params, inside, eq, stall_ns, jobs, progress)


def _check_trace(path, chain_text, params, inside, eq, stall_ns, jobs, progress):
    import time
    from .replay import failover_time_ns, replay
    started = time.process_time()
    rec, items = open_trace(path, chain_text, params, inside)   # the run's description, errors early
    next(items, None)
    items.close()
    rec.events = scan_events(path)
    failover = failover_time_ns(rec)
    stall = failover if stall_ns is None else stall_ns
    from . import replay_fast
    explained, fast = replay_fast.explain(path, rec)
    if explained:
        return _fast_result(path, chain_text, params, inside, rec, eq, stall, failover, fast, started)
    _JOB.update(path=path, chain=chain_text, params=list(params), inside=inside, eq=eq, stall=stall,
                workers=max(1, jobs), progress=progress)
    if jobs > 1 and partition_kinds(rec.chain) is not None:
        with get_context("fork").Pool(jobs) as pool:
            reports = pool.map(_pass_job, range(jobs), chunksize=1)
    else:
        _JOB["workers"] = 1
        reports = [_pass_job(0)]
    main = reports[0]
    parts = {name: r for rep in reports for name, r in rep.parts.items()}
    uf = _UnionFind()
    uf.parent = main.uf

    def name_of(tag):
        return ALL if not main.partitioned else main.names.get(uf.find(tag))

    selected = {n for n, r in parts.items() if r.verdict != "explained"} | main.tainted
    selected |= _touched_conflicts(parts)
    selected |= _pool_conflicts(parts)
    for a, b in main.inversions:
        selected |= {name_of(a), name_of(b)}
    selected |= {name_of(t) for t in main.late_outputs}
    windows = [(a, t) for r in parts.values() for a, t in r.late.values()]
    if windows:
        selected |= {n for n, r in parts.items() if r.late}
    selected.discard(None)
    stats = dict(inputs=main.inputs, outputs=main.outputs, events=len(main.events), parts=len(parts),
                 streamed=True, workers=len(reports), second_pass_parts=0, fast_pass=fast["stopped"])
    if not selected and not main.orphans and not windows:
        from .replay import ReplayResult
        rec.inputs = [x for x in main.preview if type(x) is Input]
        rec.outputs = [x for x in main.preview if type(x) is Output]
        rec.events = main.events
        result = ReplayResult("explained", rec, eq, stall, failover, stats=stats)
        stats["cpu_seconds"] = time.process_time() - started
        return result
    sub = _subset(path, chain_text, params, inside, eq, main, uf, selected, windows, set(main.orphans))
    stats["second_pass_parts"] = len(selected)
    result = replay(sub, eq, stall, jobs=1, lossable_marked=True)
    result.failover_ns = failover
    result.stats = {**result.stats, **{k: v for k, v in stats.items() if k not in ("parts",)},
                    "second_pass_inputs": len(sub.inputs)}
    result.stats["cpu_seconds"] = time.process_time() - started
    return result


def _fast_result(path, chain_text, params, inside, rec: Recording, eq, stall: int, failover: int, counts: dict,
                 started: float):
    """The explained verdict of the fast pass (verify/replay_fast.py), with the trace's first
    PREVIEW packets for the timeline."""
    import itertools
    import time
    from .replay import ReplayResult
    preview_rec, items = open_trace(path, chain_text, params, inside)
    preview = [x for x in itertools.islice((x for x in items if type(x) is not Event), PREVIEW)]
    items.close()
    rec.inputs = [x for x in preview if type(x) is Input]
    rec.outputs = [x for x in preview if type(x) is Output]
    rec.t0_ns = preview_rec.t0_ns
    rec.other_packets, rec.foreign_blocks = counts["other_packets"], counts["foreign_blocks"]
    stats = dict(inputs=counts["inputs"], outputs=counts["outputs"], events=len(rec.events), parts=1, streamed=True,
                 workers=1, second_pass_parts=0, fast_pass="explained")
    stats["cpu_seconds"] = time.process_time() - started
    return ReplayResult("explained", rec, eq, stall, failover, stats=stats)


def _touched_conflicts(parts: dict) -> set:
    owner, out = {}, set()
    for name, r in parts.items():
        for entry in r.touched or ():
            other = owner.setdefault(entry, name)
            if other != name:
                out |= {name, other}
    return out


def _pool_conflicts(parts: dict) -> set:
    """Parts whose pool choices cannot be combined: a value chosen while another part held it,
    or "exhausted" while it was not (replay_partition._pool_conflicts, by seq)."""
    events = sorted(((seq, repr(name), n, name, ev) for name, r in parts.items() for seq, evs in r.pool.items()
                     for n, ev in enumerate(evs)), key=lambda e: e[:3])
    held, out, pools = {}, set(), PoolCounts()
    fresh: dict = {}   # a pool found "exhausted" with a value free: its values taken since (the holders before are out)
    for _, _, _, name, ev in events:
        sid = ev[1]
        values = held.setdefault(sid, {})
        if ev[0] == "choose":
            value, (base, size) = ev[2], ev[3]
            if value is None:
                if pools.count(sid, base, size, values) < size:
                    out.add(name)
                    since = fresh.get((sid, base, size))
                    if since is None:   # every holder of the pool's values conflicts with it
                        out |= {q for v, q in values.items() if base <= v < base + size}
                        fresh[sid, base, size] = {}
                    else:               # (the earlier holders are out already)
                        out |= set(since.values())
                        since.clear()
            elif value in values and values[value] != name:
                out |= {name, values[value]}
        elif ev[3]:
            if ev[2] in values and values[ev[2]] != name:
                out |= {name, values[ev[2]]}
            if ev[2] not in values:
                pools.added(sid, ev[2])
            values[ev[2]] = name
            for (s, base, size), since in fresh.items():
                if s == sid and isinstance(ev[2], int) and base <= ev[2] < base + size:
                    since[ev[2]] = name
        elif values.get(ev[2]) == name:
            del values[ev[2]]
            pools.removed(sid, ev[2])
            for (s, _, _), since in fresh.items():
                if s == sid:
                    since.pop(ev[2], None)
    return out


class PoolCounts:
    """How many values of each pool a storage holds, kept up to date (a sweep over millions of
    "the pool is exhausted" claims must not count the pool each time)."""

    def __init__(self):
        self.counts: dict = {}   # sid -> {(base, size): count}

    def count(self, sid, base, size, values) -> int:
        pools = self.counts.setdefault(sid, {})
        if (base, size) not in pools:
            pools[(base, size)] = sum(1 for v in values if isinstance(v, int) and base <= v < base + size)
        return pools[(base, size)]

    def added(self, sid, v) -> None:
        for (base, size) in self.counts.get(sid, ()):
            if isinstance(v, int) and base <= v < base + size:
                self.counts[sid][(base, size)] += 1

    def removed(self, sid, v) -> None:
        for (base, size) in self.counts.get(sid, ()):
            if isinstance(v, int) and base <= v < base + size:
                self.counts[sid][(base, size)] -= 1


def _subset(path, chain_text, params, inside, eq, main: PassReport, uf, selected: set, windows: list,
            orphans: set) -> Recording:
    """Pass 2's input: the selected parts (whole), the parts with inputs inside a late processing
    time's reach, outputs without inputs, and every event -- read again into memory, with the
    loss marks of pass 1."""
    from .replay_load import _finish
    rec, items = open_trace(path, chain_text, params, inside)
    kinds = partition_kinds(rec.chain)
    by_source = kinds is not None and "source" in kinds
    keep_names = set(selected)
    released, crashed = -1, False

    def keep(u, outs):
        if kinds is None:
            name = ALL
        else:
            name = main.names.get(uf.find(tags_of(u, [(o.egress, o.key) for o in outs], by_source)[0]))
        if name in keep_names or any(a <= u.time_ns <= t for a, t in windows):
            rec.inputs.append(u)
            rec.outputs.extend(outs)

    releaser = _Releaser(keep)
    for item in items:
        kind = type(item)
        if kind is Input:
            if crashed and eq.lossy and item.seq > released:
                item.lossable = True
            releaser.input(item)
        elif kind is Output:
            if item.seq is not None and item.seq > released:
                released = item.seq
            if item.seq in orphans:
                rec.outputs.append(item)
            releaser.output(item)
        else:
            rec.events.append(item)
            if item.kind == "failure":
                crashed = True
                if eq.lossy:
                    for u, _ in releaser.pending:
                        if u.seq > released:
                            u.lossable = True
            elif item.kind == "failover":
                crashed = False
    releaser.flush()
    for o in releaser.late:
        rec.outputs.append(o)
    rec.outputs.sort(key=lambda o: o.number)
    _finish(rec, rec.header_fields.get("t0_ns"))
    return rec


def scan_events(path) -> list:
    """The control events of a trace, read without decoding its packets (for the failover time
    before the check starts): by the fast reader where it reads the whole file, else in Python."""
    from . import replay_rows
    from .replay_load import Event
    fast = replay_rows._fast
    if fast is not None:
        try:
            scan = fast.TraceRows(path)
        except OSError:
            scan = None
        if scan is not None:
            scan.events_only = True
            out = []
            try:
                for row in scan:
                    ev = replay_rows._event(row[2])
                    if ev is not None:
                        out.append(Event(ev.kind, ev.time_ns, ev.instance, ev.fields, scan.packets))
                return out
            except fast.Fallback:
                pass
            finally:
                scan.close()
    return _scan_events(path)


def _scan_events(path) -> list:
    import mmap
    import struct
    from .replay_load import Event
    from ..traces.trace import BLOCK_MAGIC, PEN, decode_block, event_from_json, TraceEvent
    out, packets = [], 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        order = "<" if m[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos, size = 0, len(m)
        head = struct.Struct(order + "II")
        while pos + 12 <= size:
            btype, total = head.unpack_from(m, pos)
            if total < 12:
                break
            if btype == 6 or btype == 3 or btype == 2:
                packets += 1
            elif btype == 0x0BAD or btype == 0x40000BAD:
                (pen,) = struct.unpack_from(order + "I", m, pos + 8)
                data = m[pos + 12:pos + total - 4]
                if pen == PEN and data[:4] == BLOCK_MAGIC:
                    try:
                        ev = event_from_json(decode_block(data))
                    except ValueError:
                        ev = None
                    if isinstance(ev, TraceEvent):
                        out.append(Event(ev.kind, ev.time_ns, ev.instance, ev.fields, packets))
            elif btype == 0x0A0D0D0A:
                order = "<" if m[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                head = struct.Struct(order + "II")
                btype, total = head.unpack_from(m, pos)
            pos += total
    return out
