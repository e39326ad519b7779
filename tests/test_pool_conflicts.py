"""The pool checks between parts (replay_partition._pool_conflicts, replay_stream._pool_conflicts)
against their first, quadratic form kept here as the reference: random sequences of pool events
(values chosen, "exhausted" claims, values taken and given back) give the same merged groups,
the same forbidden claims and the same parts sent to the second pass."""
from __future__ import annotations

import random
from types import SimpleNamespace

from nfproof.verify.replay_partition import _UnionFind, _pool_conflicts as partition_conflicts
from nfproof.verify.replay_stream import PoolCounts, _pool_conflicts as stream_conflicts


def reference_partition(events, groups, forbid) -> bool:
    held, found, pools = {}, False, PoolCounts()
    for seq, p, _, ev in sorted(events, key=lambda e: e[:3]):
        kind, sid = ev[0], ev[1]
        values = held.setdefault(sid, {})
        if kind == "choose":
            value, (base, size) = ev[2], ev[3]
            if value is None:
                if pools.count(sid, base, size, values) < size:
                    others = {q for v, q in values.items() if base <= v < base + size} - {p}
                    if others:
                        for q in others:
                            groups.union(p, q)
                        found = True
                    elif seq not in forbid.setdefault(p, set()):
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
            elif values.get(key) == p:
                del values[key]
                pools.removed(sid, key)
    return found


def reference_stream(parts: dict) -> set:
    events = sorted(((seq, repr(name), n, name, ev) for name, r in parts.items() for seq, evs in r.pool.items()
                     for n, ev in enumerate(evs)), key=lambda e: e[:3])
    held, out, pools = {}, set(), PoolCounts()
    for _, _, _, name, ev in events:
        sid = ev[1]
        values = held.setdefault(sid, {})
        if ev[0] == "choose":
            value, (base, size) = ev[2], ev[3]
            if value is None:
                if pools.count(sid, base, size, values) < size:
                    out.add(name)
                    out |= {q for v, q in values.items() if base <= v < base + size}
            elif value in values and values[value] != name:
                out |= {name, values[value]}
        elif ev[3]:
            if ev[2] in values and values[ev[2]] != name:
                out |= {name, values[ev[2]]}
            if ev[2] not in values:
                pools.added(sid, ev[2])
            values[ev[2]] = name
        elif values.get(ev[2]) == name:
            del values[ev[2]]
            pools.removed(sid, ev[2])
    return out


def random_events(rng: random.Random, parts: int, n: int) -> list:
    """(seq, part, n, event) as the parts' searches log them: pool "by_port" of 6 values from 10,
    a second pool of 3 from 14, writes of those values and of a few outside both."""
    pools = [(10, 6), (14, 3)]
    events = []
    for seq in range(n):
        p = rng.randrange(parts)
        base, size = rng.choice(pools)
        for k in range(rng.randint(1, 2)):
            r = rng.random()
            if r < 0.25:
                ev = ("choose", "by_port", rng.choice([None, base + rng.randrange(size)]), (base, size))
            else:
                ev = ("set", "by_port", rng.choice([base + rng.randrange(size), rng.randrange(8, 20)]), r < 0.7)
            events.append((seq, p, k, ev))
    return events


def partition_form(events, nparts: int):
    """The events as replay_partition's arguments: one input per seq, parts' outcomes by local index."""
    seqs = sorted({e[0] for e in events})
    rec = SimpleNamespace(inputs=[SimpleNamespace(seq=s) for s in seqs])
    parts, outcomes = [], []
    for p in range(nparts):
        mine = sorted({e[0] for e in events if e[1] == p})
        pool = {}
        for local, s in enumerate(mine):
            pool[local] = [ev for (seq, q, _, ev) in sorted(events, key=lambda e: e[:3]) if seq == s and q == p]
        parts.append([seqs.index(s) for s in mine])
        outcomes.append(SimpleNamespace(pool=pool))
    return rec, parts, outcomes


def test_the_pool_checks_are_their_reference():
    rng = random.Random(11)
    merged = forbidden = 0
    for trial in range(400):
        nparts = rng.randint(1, 6)
        events = random_events(rng, nparts, rng.randint(1, 40))
        rec, parts, outcomes = partition_form(events, nparts)
        g1, f1, g2, f2 = _UnionFind(), {}, _UnionFind(), {}
        found = partition_conflicts(rec, parts, outcomes, g1, f1)
        assert found == reference_partition(events, g2, f2), trial
        assert f1 == f2, trial
        assert all((g1.find(p) == g1.find(q)) == (g2.find(p) == g2.find(q))
                   for p in range(nparts) for q in range(nparts)), trial
        named = {f"part{p}": SimpleNamespace(pool={}) for p in range(nparts)}
        for seq, p, _, ev in sorted(events, key=lambda e: e[:3]):
            named[f"part{p}"].pool.setdefault(seq, []).append(ev)
        assert stream_conflicts(named) == reference_stream(named), trial
        merged += found
        forbidden += any(f1.values())
    assert merged > 50 and forbidden > 20, (merged, forbidden)   # both outcomes are exercised
