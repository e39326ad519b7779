"""Splitting a trace into independently checkable parts, and proving the parts were independent.

A model declares how its state is keyed (`partition`, a class attribute; models/api.py): "flow"
(per connection, both directions), "source" (per source address), "stateless", or None (not
partitionable, the default). When every instance of the chain declares one, the inputs are split
into the components of a union-find over what they and their observed outputs show: connections
(5-tuples either way round) and, for "source" models, source addresses.

The split is a guess that is then checked, so verdicts are those of the sequential check:
- every part records the state entries it read or wrote; two parts touching one entry were not
  independent: they are merged and checked again;
- choices from a shared pool (`Pool.free(used)`: a NAT's ports) are checked across parts in
  input order: a value chosen while another part holds it, or "the pool was exhausted" while
  it was not, merges the parts concerned;
- processing times must be non-decreasing over the whole trace: each part's clock reads fix a
  class of times per input; where one part's late time leaves a later input of another part no
  time in its class, the two are merged.
Parts run in parallel (`jobs` worker processes, forked) and in any order; the result does not
depend on either."""
from __future__ import annotations

import os
from multiprocessing import get_context

from .frames import OUTSIDE, Drop
from .replay_search import NS, Outcome, Problem, search

KINDS = ("flow", "source", "stateless")


def partition_kinds(chain) -> list | None:
    """The members' declarations, or None if some member is not partitionable."""
    kinds = [getattr(m.nf, "partition", None) for m in chain.members.values()]
    if any(k not in KINDS for k in kinds):
        return None
    return kinds


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        parent = self.parent
        root = parent.setdefault(x, x)
        while root != parent[root]:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb
        return rb


def _connection(key: tuple):
    proto, src, sport, dst, dport = key[:5]
    a, b = (src, sport), (dst, dport)
    return ("c", proto) + (a + b if a <= b else b + a)


def tags_of(u, observed: list, by_source: bool) -> list:
    """What puts an input (or, with u None, just outputs) into a part: the connections it and its
    observed outputs show (5-tuples either way round) and, for "source" models, their source
    addresses; an input dropped at the ingress is a part of its own."""
    tags = []
    if u is not None:
        v = u.view
        if v is OUTSIDE:
            tags.append(("raw", u.raw_key[2]) if u.raw_key[2] is not None else ("input", u.seq))
        elif isinstance(v, Drop):
            tags.append(("input", u.seq))
        else:
            tags.append(_connection((v.proto, v.src, v.sport, v.dst, v.dport)))
            if by_source:
                tags.append(("a", v.src))
    for _, key in observed:
        if key[0] == "raw":
            if key[2] is not None:
                tags.append(("raw", key[2]))
        else:
            tags.append(_connection(key))
            if by_source:
                tags.append(("a", key[1]))
    return tags or [("output", id(observed))]


def split(rec, observed: dict, kinds: list) -> list[list[int]]:
    """Indices into rec.inputs, grouped into parts (each in input order)."""
    uf = _UnionFind()
    by_source = "source" in kinds
    roots = []
    for u in rec.inputs:
        tags = tags_of(u, observed.get(u.seq, ()), by_source)
        root = tags[0]
        for t in tags[1:]:
            root = uf.union(root, t)
        roots.append(uf.find(root))
    parts: dict = {}
    for k, r in enumerate(roots):
        parts.setdefault(uf.find(r), []).append(k)
    return list(parts.values())


# -- running the parts ------------------------------------------------------------------------------
_SHARED: dict = {}   # what forked workers read: the base problem and the recording's inputs


def _problem_for(base: Problem, units: list) -> Problem:
    return Problem(**{**base.__dict__, "units": units})


def _run_part(indices: list[int]) -> Outcome:
    base, inputs = _SHARED["base"], _SHARED["inputs"]
    return search(_problem_for(base, [inputs[k] for k in indices]))


def _run_batch(batch: list[list[int]]) -> list[Outcome]:
    return [_run_part(indices) for indices in batch]


def run_parts(base: Problem, inputs: list, parts: list[list[int]], jobs: int, progress=None) -> list[Outcome]:
    """Outcome of each part (same order), `jobs` processes in parallel (1: in this process)."""
    _SHARED["base"], _SHARED["inputs"] = base, inputs
    if jobs <= 1 or len(parts) < 2:
        out = []
        for n, indices in enumerate(parts, 1):
            out.append(_run_part(indices))
            if progress:
                progress(n, len(parts))
        return out
    batches, size = [], max(1, min(256, len(parts) // (jobs * 8) or 1))
    for k in range(0, len(parts), size):
        batches.append(parts[k:k + size])
    results: list = []
    with get_context("fork").Pool(jobs) as pool:
        done = 0
        for r in pool.imap(_run_batch, batches, chunksize=1):
            results.extend(r)
            done += len(r)
            if progress:
                progress(done, len(parts))
    return results


# -- checking the parts were independent ----------------------------------------------------------
def conflicts(rec, base: Problem, parts: list[list[int]], outcomes: list[Outcome]) -> tuple[list[set[int]], dict]:
    """Groups of part numbers that must be checked together, and {part: input seqs} where a part
    claimed a pool exhausted that no other part fills (to check again without that claim).
    Nothing in either: the parts were independent."""
    groups = _UnionFind()
    found = False
    forbid: dict = {}
    owner: dict = {}
    for p, o in enumerate(outcomes):
        for entry in o.touched or ():
            q = owner.setdefault(entry, p)
            if q != p:
                groups.union(p, q)
                found = True
    found |= _pool_conflicts(rec, parts, outcomes, groups, forbid)
    found |= _time_conflicts(rec, base, parts, outcomes, groups)
    if not found:
        return [], forbid
    merged: dict = {}
    for p in range(len(parts)):
        merged.setdefault(groups.find(p), set()).add(p)
    return [g for g in merged.values() if len(g) > 1], forbid


def _pool_conflicts(rec, parts, outcomes, groups, forbid) -> bool:
    events = []
    for p, (indices, o) in enumerate(zip(parts, outcomes)):
        for local, evs in o.pool.items():
            seq = rec.inputs[indices[local]].seq
            events.extend((seq, p, n, ev) for n, ev in enumerate(evs))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    from .replay_stream import PoolCounts
    held: dict = {}     # sid -> {value: part}
    # a pool found "exhausted" while a value was free: (the values held at that claim, one group by
    # then; those taken since) -- so a later claim unions with one of the first and all of the second
    claimed: dict = {}  # (sid, base, size) -> (old {value: part}, fresh {value: part})
    found, pools = False, PoolCounts()
    for seq, p, _, ev in events:
        kind, sid = ev[0], ev[1]
        values = held.setdefault(sid, {})
        if kind == "choose":
            value, (base, size) = ev[2], ev[3]
            if value is None:
                if pools.count(sid, base, size, values) < size:  # "exhausted" while it was not
                    seen = claimed.get((sid, base, size))
                    if seen is None:   # the first claim: every holder
                        old, fresh = claimed[sid, base, size] = ({}, {v: q for v, q in values.items()
                                                                     if base <= v < base + size})
                        others = [q for q in fresh.values() if q != p]
                    else:              # the holders of the last claim are one group: one of them will do
                        old, fresh = seen
                        others = [q for q in fresh.values() if q != p]
                        others += next(([q] for q in old.values() if q != p), [])
                    old.update(fresh)
                    fresh.clear()
                    if others:  # check it with every holder
                        for q in others:
                            groups.union(p, q)
                        found = True
                    elif seq not in forbid.setdefault(p, set()):  # no one else fills it: the claim is false
                        forbid[p].add(seq)
            elif value in values and values[value] != p:
                groups.union(p, values[value])
                found = True
        else:
            key, present = ev[2], ev[3]
            if present:
                if key in values and values[key] != p:
                    groups.union(p, values[key])
                    found = True
                if key not in values:
                    pools.added(sid, key)
                values[key] = p
                for (s, base, size), (old, fresh) in claimed.items():
                    if s == sid and isinstance(key, int) and base <= key < base + size:
                        (old if key in old else fresh)[key] = p
            elif values.get(key) == p:
                del values[key]
                pools.removed(sid, key)
                for (s, _, _), (old, fresh) in claimed.items():
                    if s == sid:
                        old.pop(key, None)
                        fresh.pop(key, None)
    return found


def _time_conflicts(rec, base: Problem, parts, outcomes, groups) -> bool:
    """Non-decreasing processing times across parts: each input's interval of equivalent times
    (its clock class when it read the clock, else its whole window), swept in input order."""
    n = len(rec.inputs)
    late = {}
    clocked = bytearray(n)
    part_of = [0] * n
    for p, (indices, o) in enumerate(zip(parts, outcomes)):
        for local, k in enumerate(indices):
            part_of[k] = p
            if local < len(o.clocked) and o.clocked[local]:
                clocked[k] = 1
        for local, t in o.late.items():
            late[indices[local]] = t
    if not late:
        return False
    tps = sorted({getattr(m.nf, "ticks_per_second", 1) for m in base.chain.members.values()})
    t0, stall = base.t0_ns, base.stall_ns
    x, raiser, found = None, None, False
    for k, u in enumerate(rec.inputs):
        lo, hi = u.time_ns, u.time_ns + stall
        if clocked[k]:
            t = late.get(k, u.time_ns)
            lo = max(lo, max(t0 + -(-((t - t0) * f // NS) * NS // f) for f in tps))
            hi = min(hi, min(t0 + -(-((t - t0) * f // NS + 1) * NS // f) - 1 for f in tps))
        if x is None or lo > x:
            x, raiser = lo, k
        if x > hi:
            groups.union(part_of[k], part_of[raiser])
            found = True
            x, raiser = lo, k
    return found


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
