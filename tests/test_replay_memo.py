"""The search's memo of steps that make pool choices (replay_search.Search._rechoose: a recorded
step whose reads find their values is taken when the chooser, asked the same pool choices again,
gives the same answers) and the C copy of its read check (verify/_fast.pyx memo_reads, the Python
reference replay_search._memo_reads) leave every verdict and report as running every step through
the models: firewall>nat>lb with a NAT pool smaller than the flows (the flows that find it used up
make a choice -- "the pool is exhausted" -- at every packet, the case the memo now replays),
explained and with violations, streamed and in memory."""
from __future__ import annotations

import pytest

from nfproof.models.api import UDP, Packet, addr
from nfproof.verify import replay_search
from nfproof.verify.equivalence import Equivalence
from nfproof.verify.replay import replay
from nfproof.verify.replay_load import load_trace
from nfproof.verify.replay_report import story
from nfproof.verify.replay_stream import check_trace

from replay_traces import EXT, Run

VIP, B0 = addr("198.51.100.1"), addr("192.0.2.10")
EQ = Equivalence()
HOSTS = [addr("10.0.0.1") + k for k in range(5)]


def exhausted_pool(bad: str | None, packets: int = 8) -> Run:
    """Five UDP flows to the VIP through a 2-port NAT: flows 0 and 1 get ports 1024 and 1025
    (backends B0, B0+1), flows 2-4 find the pool used up (no output). bad: 'shown' (packet 6 of
    flow 3 comes out with flow 0's port), 'port' (packet 5 of flow 1 with flow 0's port),
    'backend' (packet 6 of flow 0 sent to the other backend), 'missing' (packet 4 of flow 0 lost)."""
    run = Run("firewall>nat>lb", ["nat.ports=2", "lb.backends=2"])
    for k in range(packets):
        for f, host in enumerate(HOSTS):
            pkt = Packet(UDP, host, 4000, VIP, 53)
            seq = run.input(pkt, 0.01 * (len(HOSTS) * k + f))
            if f < 2:
                if bad == "missing" and (f, k) == (0, 4):
                    continue
                port = 1024 + (0 if bad == "port" and (f, k) == (1, 5) else f)
                backend = B0 + (1 - f if bad == "backend" and (f, k) == (0, 6) else f)
                run.output(seq, Packet(UDP, EXT, port, backend, 53), "outside", "lb")
            elif bad == "shown" and (f, k) == (3, 6):
                run.output(seq, Packet(UDP, EXT, 1024, B0, 53), "outside", "lb")
    return run


def outcome(path) -> tuple:
    """Verdict, failing input and report of the streamed check, the in-memory check and the
    sequential one (the stats line aside: it counts what each pass read)."""
    out = []
    for result in (check_trace(path), replay(load_trace(path), EQ), replay(load_trace(path), EQ, partition=False)):
        f = result.failure
        where = None if f is None else (f.unit.seq if f.unit is not None else None,
                                        f.output.seq if f.output is not None else None)
        out.append((result.verdict, where, story(result).split("\n", 1)[1:]))
    return tuple(out)


@pytest.mark.parametrize("bad, expected", [(None, "explained"), ("shown", "violation"), ("port", "violation"),
                                           ("backend", "violation"), ("missing", "violation")])
def test_the_choice_memo_and_the_c_read_check_change_nothing(bad, expected, tmp_path, monkeypatch):
    path = exhausted_pool(bad).write(tmp_path / "pool.pcapng")
    rechosen = []
    original = replay_search.Search._rechoose
    with monkeypatch.context() as m:
        m.setattr(replay_search.Search, "_rechoose",
                  lambda self, *a: rechosen.append(original(self, *a)) or rechosen[-1])
        fast = outcome(path)
    assert {v for v, _, _ in fast} == {expected}, fast
    assert sum(rechosen) >= 10   # the memo replayed the exhausted flows' later steps
    # the Python read check (NFPROOF_PUREPYTHON=1's): the same
    with monkeypatch.context() as m:
        m.setattr(replay_search, "memo_reads", replay_search._memo_reads)
        assert outcome(path) == fast
    # no choice memo (steps with choices run by the models), then no memo at all: the same
    with monkeypatch.context() as m:
        m.setattr(replay_search.Search, "_rechoose", lambda self, chooser, choices: False)
        assert outcome(path) == fast
    with monkeypatch.context() as m:
        m.setattr(replay_search.Search, "_replayed", lambda self, unit, i, lo: False)
        m.setattr(replay_search, "MEMO_VARIANTS", 0)
        assert outcome(path) == fast


def test_the_c_read_check_is_the_python_one():
    """memo_reads on maps, sets and cells: the same answer and the same reads recorded."""
    if replay_search._fast is None:
        pytest.skip("the Cython extension is not built (or NFPROOF_PUREPYTHON=1)")
    from nfproof.models.api import Flow, Map, Port, Set
    from nfproof.verify.replay_search import MISSING, Tracker, TrackedCell, TrackedMap, TrackedSet
    tr = Tracker(track_touched=True)
    m, s, c = TrackedMap(Map(Flow, Port), tr, ("a", "m")), TrackedSet(Set(Port), tr, ("a", "s")), TrackedCell(8, tr, ("a", "c"))
    flow = Flow(UDP, 1, 2, 3, 4)
    m[flow], c.value = 7, 5
    s.add(9)
    tr.writer[(("a", "m"), flow)] = frozenset({3, 4})
    cases = [
        [(m, flow, 7, (m.sid, flow), 0), (s, 9, True, (s.sid, 9), 1), (c, None, 5, (c.sid, None), 2)],
        [(m, flow, 8, (m.sid, flow), 0), (s, 9, True, (s.sid, 9), 1)],
        [(s, 10, MISSING, (s.sid, 10), 1), (m, Flow(UDP, 1, 2, 3, 5), MISSING, (m.sid, 0), 0), (c, None, 5, (c.sid, None), 2)],
        [(s, 9, MISSING, (s.sid, 9), 1), (m, flow, 7, (m.sid, flow), 0)],
    ]
    for reads in cases:
        got = []
        for check in (replay_search._memo_reads, replay_search._fast.memo_reads):
            deps, touched = {1}, set()
            got.append((check(reads, tr.writer, deps, touched, MISSING), deps, touched))
        assert got[0] == got[1], reads
    assert [replay_search._memo_reads(r, tr.writer, set(), None, MISSING) for r in cases] == [True, False, True, False]


def test_the_inline_writes_are_the_storages_put():
    """_put_all (the common path's writes) leaves the storages, the journal, the writers, the
    written and touched entries as storage.put with Tracker.write does, then undoes alike."""
    from nfproof.models.api import Flow, Map, Port, Set
    from nfproof.verify.replay_search import MISSING, Tracker, TrackedCell, TrackedMap, TrackedSet, _put_all

    def world():
        tr = Tracker(track_touched=True)
        m, s, c = TrackedMap(Map(Flow, Port), tr, ("a", "m")), TrackedSet(Set(Port), tr, ("a", "s")), TrackedCell(8, tr, ("a", "c"))
        m[Flow(UDP, 1, 2, 3, 4)], c.value = 7, 5
        m.count_in(0, 100)   # a counted pool range, kept up to date by the writes
        s.add(9)
        tr.deps = {2, 5}
        return tr, m, s, c

    def writes(m, s, c):
        f, g = Flow(UDP, 1, 2, 3, 4), Flow(UDP, 1, 2, 3, 5)
        return [(m, f, 8), (m, g, 3), (m, Flow(UDP, 9, 9, 9, 9), MISSING), (s, 9, True), (s, 10, True),
                (s, 11, MISSING), (c, None, 6), (m, f, MISSING), (s, 9, MISSING)]

    def seen(tr, m, s, c):
        return (dict(dict.items(m)), set(set.__iter__(s)), c._value, dict(m._counted), tr.writer,
                [(x if x is None else x.sid, k, o) for x, k, o in tr.journal], tr.wrote, tr.touched)

    a, b = world(), world()
    mark = a[0].mark()
    for storage, k, value in writes(*a[1:]):
        storage.put(k, value)
    _put_all(writes(*b[1:]), b[0], frozenset(b[0].deps))
    assert seen(*a) == seen(*b)
    a[0].undo(mark)
    b[0].undo(mark)
    assert seen(*a) == seen(*b) == seen(*world())[:4] + seen(*a)[4:]
