"""The search's common path (replay_search.Search._replayed: a step the memo replays, taken without
frames) and the streamed pass's shortcuts give the verdicts of the general path: long flows
whose later packets -- the ones the memo replays -- show a wrong port, a missing output, a
duplicate, or a packet the firewall's timeout explains, through nat and firewall>nat>lb,
streamed and in memory, with the memo and without it."""
from __future__ import annotations

import pytest

from nfproof.models.api import UDP, Packet, addr
from nfproof.verify import replay_search
from nfproof.verify.equivalence import Equivalence
from nfproof.verify.replay import replay
from nfproof.verify.replay_load import load_trace
from nfproof.verify.replay_stream import check_trace

from replay_traces import EXT, HOST, HOST2, REMOTE, Run, tcp, udp

VIP, B0 = addr("198.51.100.1"), addr("192.0.2.10")


def nat_flows(bad: dict, packets: int = 12) -> Run:
    """Two long outbound flows through the NAT, interleaved, each keeping its port, except
    bad[(flow, k)]: 'port' (another port), 'missing' (no output), 'twice' (output twice)."""
    run = Run("nat", ["nat.ports=64"])
    for k in range(packets):
        for f, host in enumerate((HOST, HOST2)):
            pkt = tcp(host, 1000, REMOTE, 80, "S" if k == 0 else "A")
            seq = run.input(pkt, 0.01 * (2 * k + f))
            what = bad.get((f, k))
            if what == "missing":
                continue
            port = 1024 + f + (7 if what == "port" else 0)
            run.output(seq, pkt.rewrite(src=EXT, sport=port), "outside", "nat")
            if what == "twice":
                run.output(seq, pkt.rewrite(src=EXT, sport=port), "outside", "nat", out_index=1)
    return run


def verdicts(path, eq=Equivalence()) -> set:
    streamed = check_trace(path, eq=eq)
    rec = load_trace(path)
    in_memory = replay(rec, eq)
    sequential = replay(load_trace(path), eq, partition=False)
    got = {streamed.verdict, in_memory.verdict, sequential.verdict}
    assert len(got) == 1, (streamed.verdict, in_memory.verdict, sequential.verdict)
    return got


@pytest.mark.parametrize("what, expected", [(None, "explained"), ("port", "violation"),
                                            ("missing", "violation"), ("twice", "violation")])
def test_a_late_packet_of_a_long_flow_is_judged_by_what_it_shows(what, expected, tmp_path, monkeypatch):
    bad = {} if what is None else {(1, 8): what}
    path = nat_flows(bad).write(tmp_path / "nat.pcapng")
    taken = []
    original = replay_search.Search._replayed
    with monkeypatch.context() as m:
        m.setattr(replay_search.Search, "_replayed", lambda self, *a: taken.append(original(self, *a)) or taken[-1])
        assert verdicts(path) == {expected}
    assert sum(taken) > 20   # the common path was taken (the later packets of each flow)
    if what is not None:
        r = check_trace(path)
        assert r.failure.unit.seq == 2 * 8 + 1 or r.failure.output.seq == 2 * 8 + 1
    # without the memo (every step run by the models): the same
    with monkeypatch.context() as m:
        m.setattr(replay_search.Search, "_replayed", lambda self, unit, i, lo: False)
        m.setattr(replay_search, "MEMO_VARIANTS", 0)
        assert verdicts(path) == {expected}
    if what == "twice":
        assert verdicts(path, Equivalence(allow_duplicates=True)) == {"explained"}


def firewall_udp(gaps: list, drop_at: int | None, timeout: int = 3) -> Run:
    """A UDP pseudo-connection through the firewall: outbound datagrams at the given times, each
    answered by an inbound one 1 ms later, the answer to datagram `drop_at` dropped."""
    run = Run("firewall", [f"firewall.udp_timeout={timeout}"])
    t = 0.0
    for k, gap in enumerate(gaps):
        t += gap
        out = udp(HOST, 5000, REMOTE, 53)
        run.output(run.input(out, t), out, "outside", "firewall")
        back = udp(REMOTE, 53, HOST, 5000, inbound=True)
        seq = run.input(back, t + 0.001)
        if k != drop_at:
            run.output(seq, back, "inside", "firewall")
    return run


@pytest.mark.parametrize("drop_at", [None, 8])
def test_the_firewall_clock_on_the_common_path(drop_at, tmp_path):
    path = firewall_udp([0.1] * 12, drop_at).write(tmp_path / "fw.pcapng")
    # a dropped answer: not explained (violation, or unknown where matching outputs freely, with
    # every processing time in the window, is not decided -- as before the common path)
    assert verdicts(path) == {"explained"} if drop_at is None else verdicts(path) - {"violation", "unknown"} == set()


def test_an_answer_after_the_timeout_is_dropped_and_explained(tmp_path):
    # 4 s of silence > the 3 s timeout: the answer after it passes only because the outbound
    # datagram just before it opened the pseudo-connection again; an answer with no datagram
    # before it, after the silence, is dropped
    run = firewall_udp([0.1] * 6, None)
    back = udp(REMOTE, 53, HOST, 5000, inbound=True)
    run.input(back, 6.0)   # no output: the connection timed out
    path = run.write(tmp_path / "fw.pcapng")
    assert verdicts(path) == {"explained"}
    run.output(run.seq - 1, back, "inside", "firewall")   # ... and one that claims it passed
    path = run.write(tmp_path / "fw2.pcapng")
    assert verdicts(path) == {"violation"}


def test_long_flows_through_the_whole_chain(tmp_path):
    """firewall>nat>lb: two UDP flows to the VIP, 12 packets each; a later packet of one sent to
    another backend is a violation."""
    for moved in (False, True):
        run = Run("firewall>nat>lb", ["nat.ports=64", "lb.backends=2"])
        for k in range(12):
            for f, host in enumerate((HOST, HOST2)):
                pkt = Packet(UDP, host, 4000, VIP, 53)
                seq = run.input(pkt, 0.01 * (2 * k + f))
                backend = B0 + f if not (moved and f == 0 and k == 9) else B0 + 1
                run.output(seq, Packet(UDP, EXT, 1024 + f, backend, 53), "outside", "lb")
        path = run.write(tmp_path / f"chain{moved}.pcapng")
        assert verdicts(path) == {"violation" if moved else "explained"}
