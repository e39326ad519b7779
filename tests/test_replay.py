"""Issue 7 acceptance: `nfproof replay` on hand-built traces (tests/replay_traces.py) -- the NAT
that re-maps a flow, logged choices, the firewall that loses its table against the allowed stall,
loss at the crash, duplicates, reordering, other tools' custom blocks -- plus input errors, the
window and the JSON report."""
from __future__ import annotations

import json
import struct

from nfproof.cli import main
from nfproof.models.api import ICMP, Packet
from nfproof.traces.pcapng import PcapngWriter
from nfproof.traces.trace import PEN
from nfproof.verify.equivalence import Equivalence
from nfproof.verify.solver import Budget
from nfproof.verify.frames import frame_of
from nfproof.verify import replay_z3
from nfproof.verify.replay import replay
from nfproof.verify.replay_load import load_trace

from replay_traces import EXT, HOST, HOST2, REMOTE, S, Run, tcp, udp


def cli(capsys, *args):
    code = main(["replay", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def verdict(path, relation="strict", dups=False, stall=None, **kw):
    return replay(load_trace(str(path)), Equivalence(relation, dups), stall, **kw)


# -- the NAT ---------------------------------------------------------------------------------------
def nat_run(ports, log_choices=False) -> Run:
    """SYN, ACK, data of one flow; the NAT crashes after the ACK and a standby takes over."""
    run = Run("nat", ["nat.ports=64"], "none")
    for k, (f, at) in enumerate((("S", 0.0), ("A", 0.1), ("A", 2.0))):
        pkt = tcp(HOST, 1000, REMOTE, 80, f)
        seq = run.input(pkt, at)
        instance = "nat" if k < 2 else "nat#standby"
        if log_choices and k == 0:
            run.event("choice", at, "nat", seq=seq, name="choose", value=ports[0])
        run.output(seq, pkt.rewrite(src=EXT, sport=ports[k]), "outside", instance)
        if k == 1:
            run.crash(0.5, "nat", "nat#standby", 1.0)
    return run


def test_nat_remapping_an_established_flow_is_a_violation_at_that_packet(tmp_path, capsys):
    path = nat_run([1024, 1024, 1025]).write(tmp_path / "nat.pcapng")
    code, out, _ = cli(capsys, path)
    assert code == 1
    assert out.startswith("error: ") and "packet #6 on egress outside of input 2, released by nat#standby" in out
    assert "sport   1025   <-- 1024 in the other" in out      # field by field, the difference marked
    assert "failure of nat" in out and "failover of nat#standby" in out
    assert "nat.by_flow[TCP 10.0.0.1:1000 > 198.51.100.1:80] = 1024" in out   # the state it has
    r = verdict(path)
    assert r.verdict == "violation" and r.failure.output.seq == 2 and r.failure.output.number == 6
    assert r.failure.expected[0][1][2] == 1024


def test_the_same_run_with_choices_logged_is_explained(tmp_path, capsys):
    path = nat_run([1030, 1030, 1030], log_choices=True).write(tmp_path / "nat.pcapng")
    code, out, _ = cli(capsys, path)
    assert code == 0 and out.startswith("explained:")


def test_a_port_given_to_two_flows_at_once_is_a_violation_partitioned_or_not(tmp_path):
    from nfproof.models.api import addr
    run = Run("nat", ["nat.ports=64"])
    for host, remote, at in ((HOST, REMOTE, 0.0), (HOST2, addr("198.51.100.2"), 0.1)):
        pkt = tcp(host, 1000, remote, 80, "S")   # nothing in common but the port they are given
        run.output(run.input(pkt, at), pkt.rewrite(src=EXT, sport=1024), "outside", "nat")
    path = run.write(tmp_path / "shared.pcapng")
    split = verdict(path, jobs=1)
    assert split.verdict == "violation" and split.failure.output.seq == 1
    assert split.stats["parts"] == 1 and split.stats["merged"] == 1   # two flows, merged by the pool check
    assert verdict(path, partition=False).verdict == "violation"


def test_pool_exhaustion_is_checked_across_flows(tmp_path):
    """Three flows, two get ports, the third is dropped: explained while both ports of a 2-port
    pool are taken, a violation with a third port free -- split by flow or not."""
    from nfproof.models.api import addr
    for ports, expected in ((2, "explained"), (3, "violation")):
        run = Run("nat", [f"nat.ports={ports}"])
        for k, host in enumerate((HOST, HOST2, addr("10.0.0.3"))):
            pkt = tcp(host, 1000, REMOTE, 80, "S")
            seq = run.input(pkt, 0.1 * k)
            if k < 2:
                run.output(seq, pkt.rewrite(src=EXT, sport=1024 + k), "outside", "nat")
        path = run.write(tmp_path / f"pool{ports}.pcapng")
        assert verdict(path).verdict == expected
        assert verdict(path, partition=False).verdict == expected


# -- the firewall and the stall --------------------------------------------------------------------
def firewall_run() -> Run:
    """A connection set up and used until 1 s; the firewall fails at 1.5 s, its standby (empty
    table) takes over at 2.5 s and drops the connection's packet at 3 s."""
    run = Run("firewall", [], "none")
    for f, at, inbound in (("S", 0.0, False), ("SA", 0.1, True), ("A", 0.2, False), ("A", 1.0, False)):
        pkt = tcp(REMOTE, 80, HOST, 1000, f, True) if inbound else tcp(HOST, 1000, REMOTE, 80, f)
        run.output(run.input(pkt, at), pkt, "inside" if inbound else "outside", "firewall")
    run.crash(1.5, "firewall", "firewall#standby", 1.0)
    run.input(tcp(HOST, 1000, REMOTE, 80, "A"), 3.0)       # dropped by the standby: no connection
    return run


def test_firewall_losing_its_table_is_a_violation_within_the_allowed_stall(tmp_path, capsys):
    path = firewall_run().write(tmp_path / "fw.pcapng")
    code, out, _ = cli(capsys, path)                       # S = F = 1 s < timeout 6 s
    assert code == 1 and "emits an output" in out and "never came out" in out
    assert "processing input 4 5 s after it arrived (the allowed stall is 1 s)" in out
    r = verdict(path)
    assert r.failure.unit.seq == 4 and r.failure.missing[0] == "outside"


def test_firewall_losing_its_table_is_explained_when_the_stall_exceeds_the_timeout(tmp_path, capsys):
    path = firewall_run().write(tmp_path / "fw.pcapng")
    code, out, _ = cli(capsys, path, "--max-stall", "7")   # a stall beyond the 6 s timeout explains it
    assert code == 0, out
    code, _, _ = cli(capsys, path, "--max-stall", "4")     # 3 + 4 - 1 = 6 s idle: not beyond the timeout
    assert code == 1
    code, _, _ = cli(capsys, path, "--max-stall", "5")     # up to 7 s idle
    assert code == 0
    code, _, _ = cli(capsys, path, "--max-stall", "7", "--param", "firewall.timeout=10")
    assert code == 1


# -- loss, duplicates, order ----------------------------------------------------------------------
def lb_run(lose_at_crash=False, duplicate=False, swap=False, same_flow=False) -> Run:
    """Four packets through the NAT (two flows); the NAT crashes after input 1."""
    run = Run("nat", ["nat.ports=64"], "stateful.sync")
    flows = [(HOST, 1000, 1024), (HOST2, 2000, 1025)]
    plan = [(0, 0.0), (1, 0.1), (1 if same_flow else 0, 0.6), (0, 2.0)]
    seqs = []
    for k, (flow, at) in enumerate(plan):
        host, sport, port = flows[flow]
        pkt = tcp(host, sport, REMOTE, 80, "S" if k < 2 else "A")
        seqs.append((run.input(pkt, at), pkt.rewrite(src=EXT, sport=port), k))
        if k == 1:
            run.output(*seqs[0][:2], "outside", "nat")
            if swap:
                continue
            run.output(*seqs[1][:2], "outside", "nat")
            if duplicate:
                run.output(*seqs[1][:2], "outside", "nat")
        if k == 2:
            if swap:
                run.output(*seqs[2][:2], "outside", "nat")
                run.output(*seqs[1][:2], "outside", "nat")
            run.crash(0.7, "nat", "nat#standby", 1.0, replica_seq=1)
            if not lose_at_crash and not swap:
                run.output(*seqs[2][:2], "outside", "nat")
        if k == 3:
            run.output(*seqs[3][:2], "outside", "nat#standby")
    return run


def test_a_packet_lost_at_the_crash_violates_strict_but_not_loss_at_failover(tmp_path, capsys):
    path = lb_run(lose_at_crash=True).write(tmp_path / "loss.pcapng")
    code, out, _ = cli(capsys, path)
    assert code == 1 and "never came out" in out
    code, out, _ = cli(capsys, path, "--equivalence", "loss-at-failover")
    assert code == 0, out
    assert verdict(lb_run().write(tmp_path / "ok.pcapng")).verdict == "explained"


def test_a_duplicated_output_is_a_violation_unless_allowed(tmp_path, capsys):
    path = lb_run(duplicate=True).write(tmp_path / "dup.pcapng")
    code, out, _ = cli(capsys, path)
    assert code == 1 and "packet #5 on egress outside of input 1" in out
    code, _, _ = cli(capsys, path, "--allow-duplicates")
    assert code == 0


def test_reordering_across_flows_violates_strict_but_not_per_flow(tmp_path, capsys):
    path = lb_run(swap=True).write(tmp_path / "swap.pcapng")
    code, out, _ = cli(capsys, path)
    assert code == 1 and "came out after" in out and "input order" in out
    code, out, _ = cli(capsys, path, "--equivalence", "per-flow")
    assert code == 0, out
    same = lb_run(swap=True, same_flow=True).write(tmp_path / "same.pcapng")
    code, _, _ = cli(capsys, same, "--equivalence", "per-flow")    # within one flow it stays a violation
    assert code == 1


# -- other tools' custom blocks ------------------------------------------------------------------
def _foreign_capture(path, packets):
    with PcapngWriter(str(path)) as w:
        w.write_custom(PEN, b"OTHR" + struct.pack("<I", 7) + b"not ours")   # PEN 32473, no NFPT magic
        iface = w.add_interface(1, name="eth0")
        for k, pkt in enumerate(packets):
            w.write_packet(iface, 1_700_000_000 * 10 ** 9 + k * 10 ** 6, frame_of(pkt))
        w.write_custom(PEN, b"\x00\x01\x02\x03 still not ours")
    return str(path)


def test_an_output_the_frame_cannot_carry_is_dropped(tmp_path):
    """An ICMP echo reply leaving the inside: the NAT maps it and gives it a port, which a reply
    (its identifier is in dport) cannot carry, so the runtime drops that output (runtime/README.md
    section 2). A run without it is explained; one that released the reply is a violation -- by
    the search and by Z3."""
    reply = Packet(ICMP, HOST, 0, REMOTE, 7)
    dropped, released = Run("nat", ["nat.ports=64"]), Run("nat", ["nat.ports=64"])
    dropped.input(reply, 0.0)
    released.output(released.input(reply, 0.0), reply, "outside", "nat")
    for run, expected in ((dropped, "explained"), (released, "violation")):
        path = run.write(tmp_path / f"{expected}.pcapng")
        assert verdict(path).verdict == expected
        rec = load_trace(path)
        observed = {}
        for o in rec.outputs:
            observed.setdefault(o.egress, []).append(o.key)
        assert replay_z3.decide(rec.chain, rec.inputs, observed, rec.t0_ns, S, Budget(timeout=60)) == expected


def test_a_port_taken_by_a_dropped_output_is_chosen_again(tmp_path):
    """IGMP cannot carry the port the NAT maps it to: its outputs are dropped, but its mapping
    holds a port that no output shows. The search first gives it the port a later flow reveals;
    that flow's failure must lead back to the IGMP choice (it took the port), not to a violation."""
    run = Run("nat", ["nat.ports=64512"])
    igmp, ssdp = Packet(2, HOST, 0, REMOTE, 0), udp(HOST, 62923, REMOTE, 1900)
    run.input(igmp, 0.0)
    run.output(run.input(ssdp, 1.0), ssdp.rewrite(src=EXT, sport=25558), "outside", "nat")
    run.input(igmp, 2.0)
    r = verdict(run.write(tmp_path / "t.pcapng"))
    assert r.verdict == "explained", r.reason


def test_a_capture_with_other_tools_pen_32473_blocks_is_a_plain_capture(tmp_path, capsys):
    inputs = [tcp(HOST, 1000, REMOTE, 80, "S"), tcp(HOST, 1000, REMOTE, 80, "A")]
    src = _foreign_capture(tmp_path / "in.pcapng", inputs)
    dst = _foreign_capture(tmp_path / "out.pcapng", [p.rewrite(src=EXT, sport=1024) for p in inputs])
    assert main(["inspect", src]) == 0
    out = capsys.readouterr().out
    assert "custom blocks: 2 of other tools (skipped)" in out and "packets: 2" in out
    code, _, err = cli(capsys, src)
    assert code == 2 and "not an nfproof trace" in err and "plain capture" in err
    code, out, err = cli(capsys, "--input", src, "--output", dst, "--chain", "nat")
    assert code == 0, out + err
    assert "custom block(s) of other tools skipped" in err
    bad = _foreign_capture(tmp_path / "bad.pcapng", [p.rewrite(src=EXT, sport=p.flags) for p in inputs])
    code, out, _ = cli(capsys, "--input", src, "--output", bad, "--chain", "nat")
    assert code == 1


# -- input errors, window, JSON ---------------------------------------------------------------------
def test_input_errors_exit_2(tmp_path, capsys):
    path = nat_run([1024, 1024, 1024]).write(tmp_path / "nat.pcapng")
    code, _, err = cli(capsys, path, "--chain", "firewall")
    assert code == 2 and "the run header names chain 'nat', --chain says 'firewall'" in err
    code, _, err = cli(capsys, path, "--param", "nat.ports=x")
    assert code == 2 and "nat.ports" in err
    code, _, err = cli(capsys, tmp_path / "missing.pcapng")
    assert code == 2 and "cannot read" in err
    corrupt = tmp_path / "corrupt.pcapng"
    corrupt.write_bytes(open(path, "rb").read()[:-7])
    code, _, err = cli(capsys, corrupt)
    assert code == 2 and "offset" in err
    unknown = Run("nosuchnf").write(tmp_path / "unknown.pcapng")
    code, _, err = cli(capsys, unknown)
    assert code == 2 and "unknown NF 'nosuchnf'" in err


def test_window_is_small_and_replays_to_the_same_violation(tmp_path, capsys):
    run = nat_run([1024, 1024, 1025])
    for k in range(20):   # other flows around it
        pkt = udp(HOST2, 3000 + k, REMOTE, 53)
        run.output(run.input(pkt, 0.2 + k / 100), pkt.rewrite(src=EXT, sport=1030 + k), "outside", "nat")
    path = run.write(tmp_path / "nat.pcapng")
    window = tmp_path / "window.pcapng"
    code, _, err = cli(capsys, path, "--window", window)
    assert code == 1 and "shows the same violation" in err
    small = load_trace(str(window))
    assert len(small.inputs) <= 3 and len(small.outputs) <= 3
    code, out, _ = cli(capsys, window)
    assert code == 1 and "released by nat#standby" in out


def test_json_report(tmp_path, capsys):
    path = nat_run([1024, 1024, 1025]).write(tmp_path / "nat.pcapng")
    code, out, _ = cli(capsys, path, "--json")
    data = json.loads(out)
    assert code == 1 and data["verdict"] == "violation"
    f = data["failure"]
    assert f["output"]["fields"]["sport"] == "1025" and f["expected"][0]["fields"]["sport"] == "1024"
    assert [e["kind"] for e in f["events"]] == ["failure", "failover"]
    assert f["input"]["seq"] == 2 and f["needed"]


def test_z3_decides_where_the_search_runs_out_of_budget(tmp_path):
    """With no budget for alternatives the search cannot decide the firewall runs; Z3 does, as
    the search does with its budget."""
    path = firewall_run().write(tmp_path / "fw.pcapng")
    for stall_s, expected in ((1, "violation"), (7, "explained")):
        assert verdict(path, stall=stall_s * 10 ** 9).verdict == expected
        r = verdict(path, stall=stall_s * 10 ** 9, budget=0)
        assert r.verdict == expected and r.stats.get("z3_queries", 0) >= 1, r.reason
        if expected == "violation":
            assert r.failure.decided_by == "z3" and r.failure.unit.seq == 4


def test_pure_python_and_cython_parsers_give_the_same_report(tmp_path):
    """The frame view parses with nfproof.traces (Cython, or the pure-Python fallback with
    NFPROOF_PUREPYTHON=1): the same trace gives the same report either way."""
    import os
    import subprocess
    import sys
    path = nat_run([1024, 1024, 1025]).write(tmp_path / "nat.pcapng")
    outs = []
    for pure in ("0", "1"):
        env = dict(os.environ, NFPROOF_PUREPYTHON=pure)
        p = subprocess.run([sys.executable, "-m", "nfproof", "replay", path, "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1, p.stderr
        data = json.loads(p.stdout)
        data["stats"].pop("cpu_seconds")
        outs.append(data)
    assert outs[0] == outs[1]


def _all_traces(tmp_path):
    runs = {"nat_bad": nat_run([1024, 1024, 1025]), "nat_logged": nat_run([1030] * 3, log_choices=True),
            "fw": firewall_run(), "loss": lb_run(lose_at_crash=True), "dup": lb_run(duplicate=True),
            "swap": lb_run(swap=True), "swap_same": lb_run(swap=True, same_flow=True), "ok": lb_run()}
    return {name: run.write(tmp_path / f"{name}.pcapng") for name, run in runs.items()}


def test_the_streamed_check_agrees_with_the_in_memory_one(tmp_path):
    from nfproof.verify.replay_stream import check_trace
    for name, path in _all_traces(tmp_path).items():
        for relation in ("strict", "per-flow", "loss-at-failover"):
            for dups in (False, True):
                for stall in (None, 7 * 10 ** 9):
                    eq = Equivalence(relation, dups)
                    a, b = verdict(path, relation, dups, stall), check_trace(path, eq=eq, stall_ns=stall)
                    where = (name, relation, dups, stall)
                    assert a.verdict == b.verdict, where
                    assert (a.failure and a.failure.number) == (b.failure and b.failure.number), where


def test_a_long_flow_remapped_late_is_found_past_the_parts_horizon(tmp_path):
    """A flow of 40 packets whose standby re-maps it at packet 35: the streamed check keeps a
    part's decisions open for its last PART_UNIT_HORIZON inputs only, so the first packet's choice
    is committed long before; the conflict that reaches it is unknown in the first pass and the
    second finds the violation at the in-memory check's packet. The same flow kept on its port is
    explained."""
    from nfproof.verify.replay_stream import PART_UNIT_HORIZON, check_trace
    for remap, expected in ((35, "violation"), (None, "explained")):
        run = Run("nat", ["nat.ports=64"], "none")
        for k in range(40):
            pkt = tcp(HOST, 1000, REMOTE, 80, "S" if k == 0 else "A")
            seq = run.input(pkt, 0.1 * k)
            run.output(seq, pkt.rewrite(src=EXT, sport=1025 if remap is not None and k >= remap else 1024),
                       "outside", "nat" if k < 30 else "nat#standby")
            if k == 29:
                run.crash(0.1 * k + 0.05, "nat", "nat#standby", 0.01)
        path = run.write(tmp_path / f"long-{remap}.pcapng")
        assert 35 - 0 > PART_UNIT_HORIZON
        a, b = verdict(path), check_trace(path, eq=Equivalence("strict", False))
        assert a.verdict == b.verdict == expected
        assert (a.failure and a.failure.number) == (b.failure and b.failure.number)


def test_jobs_and_sequential_give_the_same_report(tmp_path, capsys):
    run = nat_run([1024, 1024, 1025])
    for k in range(40):   # other flows, some inbound replies among them
        pkt = udp(HOST2, 3000 + k, REMOTE, 53)
        seq = run.input(pkt, 0.2 + k / 100)
        run.output(seq, pkt.rewrite(src=EXT, sport=1030 + k), "outside", "nat")
        if k % 3 == 0:
            reply = udp(REMOTE, 53, EXT, 1030 + k, inbound=True)
            run.output(run.input(reply, 0.2 + k / 100), reply.rewrite(dst=HOST2, dport=3000 + k), "inside", "nat")
    path = run.write(tmp_path / "many.pcapng")
    reports = []
    for extra in (["--jobs", "1"], ["--jobs", "2"], ["--sequential"]):
        code, out, _ = cli(capsys, path, "--json", *extra)
        data = json.loads(out)
        assert code == 1, out
        reports.append((data["verdict"], data["failure"]["output"], data["failure"]["expected"]))
    assert reports[0] == reports[1] == reports[2]


def test_captures_with_an_output_capture_per_egress(tmp_path, capsys):
    def capture(name, packets):
        path = tmp_path / name
        with PcapngWriter(str(path)) as w:
            iface = w.add_interface(1)
            for k, pkt in enumerate(packets):
                w.write_packet(iface, 1_700_000_000 * 10 ** 9 + k * 1000, frame_of(pkt))
        return str(path)
    syn, synack = tcp(HOST, 1000, REMOTE, 80, "S"), tcp(REMOTE, 80, EXT, 1024, "SA", True)
    src = capture("in.pcapng", [syn, synack])
    wan = capture("wan.pcapng", [syn.rewrite(src=EXT, sport=1024)])
    lan = capture("lan.pcapng", [synack.rewrite(dst=HOST, dport=1000)])
    code, out, _ = cli(capsys, "--input", src, "--output", f"outside={wan}", "--output", f"inside={lan}",
                       "--chain", "nat")
    assert code == 0, out
    code, out, _ = cli(capsys, "--input", src, "--output", f"inside={wan}", "--output", f"outside={lan}",
                       "--chain", "nat")
    assert code == 1 and "on egress outside is not produced" in out


def test_labels_are_compared_when_the_trace_records_them(tmp_path):
    """csfq-edge writes a rate label beside each frame: a trace whose header says `labels: true`
    compares each output's recorded label with the model's (a wrong one is a violation, shown as
    the label field); an older trace without them compares frames only."""
    from nfproof.traces.trace import TracePacket
    pkt = tcp(HOST, 1000, REMOTE, 80, "A")

    def run(labels, recorded):
        r = Run("csfq-edge", [], "none", **({"labels": True} if recorded else {}))
        for k, label in enumerate(labels):
            seq = r.input(pkt, 0.1 * k)
            r.items.append(TracePacket("egress:outside", r._time_of(seq), frame_of(pkt), "csfq-edge", "out", seq, 0,
                                       label=label))
        return r.write(tmp_path / f"{labels}-{recorded}.pcapng")

    assert verdict(run((1, 2), True)).verdict == "explained"
    wrong = verdict(run((1, 1), True))
    assert wrong.verdict == "violation" and wrong.failure.output.key[7] == 1
    assert verdict(run((1, 1), False)).verdict == "explained"


def test_dependency_sets_dropping_committed_decisions_change_no_verdict(tmp_path, monkeypatch):
    """replay_search._pruned: a long firewall flow (a clock decision per packet, each packet's state
    depending on the last) with a reply rewritten late or not, streamed: the same verdicts and
    failing packets whether dependency sets drop their committed decisions from 2 entries on or
    never."""
    from nfproof.verify import replay_search
    from nfproof.verify.replay_stream import check_trace
    paths = {}
    for lost in (50, None):
        run = Run("firewall", [], "none")
        for k in range(60):
            out = udp(HOST, 4000, REMOTE, 53)
            run.output(run.input(out, 0.5 * k), out, "outside", "firewall")
            back = udp(REMOTE, 53, HOST, 4000, inbound=True)
            run.output(run.input(back, 0.5 * k + 0.1), back.rewrite(dport=4001) if k == lost else back, "inside",
                       "firewall")
        paths[lost] = run.write(tmp_path / f"fw-{lost}.pcapng")
    results = {}
    for prune_at in (2, 10 ** 9):
        monkeypatch.setattr(replay_search, "PRUNE_AT", prune_at)
        results[prune_at] = [(r.verdict, r.failure and r.failure.number) for r in
                             (check_trace(p, eq=Equivalence("strict", False)) for p in paths.values())]
    assert results[2] == results[10 ** 9]
    assert [v for v, _ in results[2]] == ["violation", "explained"]


def test_an_output_no_state_can_produce_is_a_violation_however_long_the_flow(tmp_path):
    """A reply the firewall passes with its port changed, at packet 50 of a 60-packet flow: the
    firewall never rewrites a port, from any state at any time (replay_z3.impossible /
    never_emits), so no backtracking over the 100 earlier clock decisions is needed: a violation
    at that packet, in memory and streamed (it was unknown: the search ran out of its budget)."""
    from nfproof.verify.replay_stream import check_trace
    run = Run("firewall", [], "none")
    for k in range(60):
        out = udp(HOST, 4000, REMOTE, 53)
        run.output(run.input(out, 0.5 * k), out, "outside", "firewall")
        back = udp(REMOTE, 53, HOST, 4000, inbound=True)
        run.output(run.input(back, 0.5 * k + 0.1), back.rewrite(dport=4001) if k == 50 else back, "inside",
                   "firewall")
    path = run.write(tmp_path / "fw.pcapng")
    a, b = verdict(path), check_trace(path, eq=Equivalence("strict", False))
    assert a.verdict == b.verdict == "violation", (a.reason, b.reason)
    assert a.failure.unit.seq == b.failure.unit.seq == 101
