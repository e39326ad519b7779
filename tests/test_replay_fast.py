"""The fast pass of trace replay (verify/replay_fast.py): it explains runs of the real runtime, and it
never explains a trace the full check does not -- checked on runtime traces, on mutations of them
(a rewritten field, a lost, repeated or reordered output) and on the failover runs of verify's
simulator that tests/test_replay_agreement.py judges against the verifier."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nfproof.traces.trace import TracePacket, TraceWriter, read_trace
from nfproof.verify import replay_fast
from nfproof.verify.equivalence import Equivalence
from nfproof.verify.replay_load import load_trace, open_trace
from nfproof.verify.replay_stream import check_trace
from nfproof.verify.simulate import explain as verifier_explain

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_replay_agreement as agreement  # noqa: E402

pytestmark = pytest.mark.skipif(replay_fast._fast is None, reason="the C reader is not built (pure-Python fallback)")

DATA = Path(__file__).resolve().parent / "data"
RUNS = [("firewall>nat>lb", "E02_http_49flows.pcap", ["nat.ports=64512"]),
        ("firewall>nat>lb", "E02_http_49flows.pcap", []),            # a 4-port pool: flows find it used up
        ("nat", "E10_dns_icmp.pcap", ["nat.ports=64512"]),            # DNS and ICMP: three frame classes
        ("firewall>nat", "E11_icmp_ping_150.pcap", []),
        ("lb", "E03_http_13flows_bro_org.pcap", ["lb.backends=8"]),
        ("nat>lb", "E08_dcerpc_53flows_rst.pcap", ["nat.ports=64512"]),
        ("firewall>nat>lb", "E05_mixed_v4v6_80flows_ftpdata.pcap", ["nat.ports=64512"]),  # IPv6 passed on
        ("nat", "E14_vlan123_arp_icmp.pcap", []),                      # VLAN tags, ARP
        ("firewall", "E20_frag_ipv4_udp_afs.pcap", []),                # later fragments dropped
        ("nat", "E12_icmpv6_nd_ping.pcap", [])]


@pytest.fixture(autouse=True)
def quick_builds(monkeypatch):
    """The chains are built at -O1 here (dozens of builds; the results do not depend on the level:
    tests/test_compile.py)."""
    monkeypatch.setenv("NFPROOF_CFLAGS", "-O1")


def fast(path) -> tuple[bool, dict]:
    rec, items = open_trace(str(path))
    items.close()
    return replay_fast.explain(str(path), rec, min_bytes=0)


def full(path, eq=Equivalence()) -> str:
    """The full check's verdict (the trace is smaller than MIN_BYTES: check_trace does not take the
    fast pass), with processing times exactly the arrivals."""
    assert os.path.getsize(path) < replay_fast.MIN_BYTES
    return check_trace(str(path), eq=eq, stall_ns=0).verdict


@pytest.fixture(scope="module")
def runtime_traces(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("runs")
    for k, (chain, pcap, params) in enumerate(RUNS):
        path = folder / f"run{k}.pcapng"
        cmd = [sys.executable, "-m", "nfproof", "run", chain, "--pcap", str(DATA / pcap), "--seed", str(k), "-o",
               str(path)]
        for p in params:
            cmd += ["--param", p]
        subprocess.run(cmd, check=True, capture_output=True)
        out[(chain, pcap, tuple(params))] = path
    return out


def test_the_fast_pass_explains_runs_of_the_runtime(runtime_traces):
    for key, path in runtime_traces.items():
        explained, counts = fast(path)
        assert explained, f"{key}: {counts}"
        rec = load_trace(str(path))
        assert counts["inputs"] == len(rec.inputs) and counts["outputs"] == len(rec.outputs), key
        assert full(path) == "explained", key


def test_check_trace_takes_the_fast_pass_and_reports_as_the_full_check(runtime_traces, monkeypatch):
    path = runtime_traces[RUNS[0][0], RUNS[0][1], tuple(RUNS[0][2])]
    slow = check_trace(str(path))
    monkeypatch.setattr(replay_fast, "MIN_BYTES", 0)
    quick = check_trace(str(path))
    assert quick.verdict == slow.verdict == "explained"
    assert quick.stats["fast_pass"] == "explained" and slow.stats["fast_pass"] == "a small trace"
    for k in ("inputs", "outputs", "events"):
        assert quick.stats[k] == slow.stats[k], k
    assert [u.view for u in quick.recording.inputs] == [u.view for u in slow.recording.inputs]


def _mutated(src, dst, kind: str, rng: random.Random) -> str:
    """The trace with one output changed: `field` (a port, or an address byte), `external` (the NAT's
    outer address of an outbound output), `lost`, `repeated` or `swapped` (with the next output on
    its egress)."""
    with read_trace(str(src)) as t:
        header, items = t.header, list(t)
    outs = [k for k, x in enumerate(items) if isinstance(x, TracePacket) and x.direction == "out"]
    if kind in ("field", "external"):   # untagged Ethernet IPv4 frames: the offsets below are theirs
        outs = [k for k in outs if items[k].linktype == 1 and items[k].data[12:14] == b"\x08\x00"]
    if kind == "external":
        outs = [k for k in outs if items[k].interface == "egress:outside"]
    if not outs:
        return None
    k = rng.choice(outs)
    o = items[k]
    if kind in ("field", "external"):
        data = bytearray(o.data)
        ihl = (data[14] & 15) * 4
        if kind == "field" and data[23] in (6, 17):
            at = 14 + ihl + rng.choice([0, 2])          # sport or dport
        else:
            at = 26 + rng.randrange(8) if kind == "field" else 26 + 3   # an address byte / the source's last
        data[at] ^= 1 << rng.randrange(8)
        items[k] = TracePacket(o.interface, o.time_ns, bytes(data), o.instance, o.direction, o.seq, o.out_index,
                               o.wirelen, o.linktype, o.comment, o.label)
    elif kind == "lost":
        del items[k]
    elif kind == "repeated":
        items.insert(k + 1, o)
    else:
        later = [j for j in outs if j > k and items[j].interface == o.interface]
        if not later:
            return None
        j = later[0]
        items[k], items[j] = items[j], items[k]
    with TraceWriter(str(dst), header) as w:
        for x in items:
            w.write(x)
    return str(dst)


def test_the_fast_pass_explains_no_mutation_the_full_check_does_not(runtime_traces, tmp_path):
    rng = random.Random(7)
    declined = {}
    for n in range(48):
        key = list(runtime_traces)[n % len(runtime_traces)]
        kind = ["field", "external", "lost", "repeated", "swapped", "field"][n % 6]
        if kind == "external" and "nat" not in key[0]:
            kind = "field"
        path = _mutated(runtime_traces[key], tmp_path / f"m{n}.pcapng", kind, rng)
        if path is None:
            continue
        explained, counts = fast(path)
        verdict = full(path)
        if explained:
            assert verdict == "explained", f"{key} {kind}: the fast pass explains, the full check says {verdict}"
        else:
            declined[kind] = declined.get(kind, 0) + 1
        if kind != "field":   # the pass demands every output, once, in (seq, out_index) order
            assert not explained, f"{key} {kind}: the fast pass explains a trace with an output {kind}"
        if kind in ("external", "lost", "repeated"):   # (two outputs swapped may be equal packets)
            assert verdict == "violation", f"{key} {kind}"
    assert declined.get("field", 0) >= 8, declined


@pytest.mark.parametrize("name", sorted(agreement.UNIVERSES))
def test_the_fast_pass_agrees_with_the_verifier_on_failover_runs(name, tmp_path):
    """Every trace the fast pass explains, the verifier's exhaustive search explains (and so the
    full check: test_replay_agreement); and it explains most of the ones that are (all but those
    whose clock readings must come later than the arrivals)."""
    rng = random.Random(f"fast-{name}")
    counts = {"fast": 0, "explained": 0}
    for k in range(agreement.RUNS // 2):
        nf, run, stall = agreement.random_run(name, rng)
        path = tmp_path / f"run{k}.pcapng"
        agreement.write_trace(name, run, stall, path)
        explained, why = fast(path)
        truth = verifier_explain(nf, run.inputs, run.observed_outputs, run.arrivals, stall) \
            if run.arrivals is not None else verifier_explain(nf, run.inputs, run.observed_outputs)
        counts["explained"] += truth.explained
        if explained:
            counts["fast"] += 1
            assert truth.explained, f"run {k}: {run.strategy}, cut {run.cut}: the fast pass explains, the verifier not"
    assert counts["fast"] >= 0.7 * counts["explained"], counts


def test_a_build_that_cannot_be_written_leaves_the_trace_to_the_full_check(runtime_traces, monkeypatch):
    path = runtime_traces[RUNS[0][0], RUNS[0][1], tuple(RUNS[0][2])]
    monkeypatch.setenv("NFPROOF_CACHE", os.devnull + "/nfproof")   # not a directory
    explained, counts = fast(path)
    assert not explained and "not built" in counts["stopped"], counts
    monkeypatch.setattr(replay_fast, "MIN_BYTES", 0)
    result = check_trace(str(path))
    assert result.verdict == "explained" and "not built" in result.stats["fast_pass"]
