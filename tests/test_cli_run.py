"""`nfproof run` end to end (nfproof/cmd_run.py), and the executor, recorder and ports under it
(runtime/executor.py, runtime/recorder.py, runtime/ports.py), on the captures in tests/data."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nfproof.runtime import IMPLEMENTATION

from nfproof.cli import main
from nfproof.models import lookup
from nfproof.models.chain import Chain
from nfproof.runtime.batch import CLASSIFY, FROM_INSIDE, FROM_OUTSIDE
from nfproof.runtime.executor import RunStats, SideClassifier, percentiles, run
from nfproof.runtime.ports import CaptureSource, PcapSink, capture_inside
from nfproof.runtime.recorder import Recorder
from nfproof.traces.errors import FormatError
from nfproof.traces.pcapng import PcapngWriter
from nfproof.traces.reader import open_capture
from nfproof.traces.trace import TraceEvent, TracePacket, read_trace

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]
E02 = DATA / "E02_http_49flows.pcap"
EVERYDAY = sorted(DATA.glob("E*.pcap*"))
CLIENT = "128.2.0.0/16"  # E02's client (its server is 173.194.75.103): both are public addresses


def cli(capsys, *argv):
    """(exit code, stdout, stderr) of `nfproof ARGV...` in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv) -> dict:
    code, out, err = cli(capsys, "run", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def trace_items(path):
    with read_trace(path) as trace:
        header = trace.header
        items = list(trace)
        interfaces = dict(trace.interfaces)
    return header, items, interfaces


# -- the executor with a pipeline made for testing it (never shipped) -----------------------------
class EchoPipeline:
    """Exercises the executor only: the side is the frame's first byte parity when asked to
    classify (written back); input i is dropped when i % 5 == 4, emitted as a copy (first byte
    inverted) on egress 1 then in place (last byte inverted) on egress 0 when i % 3 == 0, else in
    place on egress 0. Indices are input sequence numbers over the whole run, so the result does
    not depend on the batch size."""

    def __init__(self, chain, classify_in_place=True):
        self.egresses, self.instances = chain.egress_names, tuple(chain.members)
        self.reasons = ["test: every fifth"]
        self.seq, self.classify_in_place = 0, classify_in_place
        self.seen_t = []

    def process(self, b):
        for i in range(b.n):
            seq, self.seq = self.seq, self.seq + 1
            o, n = int(b.off[i]), int(b.caplen[i])
            self.seen_t.append(int(b.t_ns[i]))
            if b.side[i] == CLASSIFY and self.classify_in_place:
                b.side[i] = b.data[o] & 1
            if seq % 5 == 4:
                b.drop(i, 0)
                continue
            if seq % 3 == 0:
                copy = bytes([b.data[o] ^ 0xFF]) + bytes(b.data[o + 1:o + n])
                b.emit(i, 1, 0, 7, copy=copy)
            b.data[o + n - 1] ^= 0xFF
            b.emit(i, 0, 0, 0)


def echo_chain():
    return Chain.parse("nat", lookup)


def expected_outputs(path):
    """What EchoPipeline must output for a capture, computed from the records directly."""
    out = []
    with open_capture(path) as r:
        for seq, rec in enumerate(r):
            d = bytes(rec.data)
            if seq % 5 == 4:
                continue
            if seq % 3 == 0:
                out.append(("inside", bytes([d[0] ^ 0xFF]) + d[1:], seq))
            out.append(("outside", d[:-1] + bytes([d[-1] ^ 0xFF]), seq))
    return out


def sha_of(outputs) -> str:
    h = hashlib.sha256()
    for egress, frame, _ in outputs:
        h.update(egress.encode() + b"\0" + struct.pack("<I", len(frame)) + frame)
    return h.hexdigest()


@pytest.mark.parametrize("batch", [1, 7, 32, 1000])
def test_executor_counts_hash_and_order(batch):
    chain = echo_chain()
    with CaptureSource(E02) as src:
        stats = run(chain, src, EchoPipeline(chain), batch=batch)
    want = expected_outputs(E02)
    assert stats.packets_in == 655 and stats.packets_out == len(want)
    assert stats.dropped == {"test: every fifth": 655 // 5}
    assert stats.outputs_sha256 == sha_of(want)
    assert stats.batches == -(-655 // batch)
    assert set(stats.latency_ns) == {"p50", "p99", "p999"}
    assert 0 < stats.latency_ns["p50"] <= stats.latency_ns["p99"] <= stats.latency_ns["p999"]
    assert stats.process_seconds > 0 and stats.mpps > 0 and stats.gbps > 0
    with open_capture(E02) as r:
        assert stats.bytes_in == sum(rec.wirelen for rec in r)


def test_executor_times_relative_and_monotonic(tmp_path):
    """t_ns = capture time made non-decreasing, relative to the first input; the trace keeps the
    clamped capture times; a pcapng simple packet block (no time) takes the previous time."""
    path = tmp_path / "backwards.pcapng"
    frames = [bytes([k]) * 60 for k in range(5)]
    with PcapngWriter(str(path)) as w:
        i = w.add_interface(1, 0)
        for t, f in zip([1_000, 5_000, 3_000, 9_000], frames):
            w.write_packet(i, t, f)
        w.write_block(3, struct.pack("<I", 60) + frames[4])  # SPB: no timestamp
    chain = echo_chain()
    pipe = EchoPipeline(chain)
    with CaptureSource(path) as src:
        run(chain, src, pipe, Recorder(tmp_path / "t.pcapng", "nat", {}), batch=2)
    assert pipe.seen_t == [0, 4_000, 4_000, 8_000, 8_000]
    header, items, _ = trace_items(tmp_path / "t.pcapng")
    assert header.fields["t0_ns"] == 1_000
    assert [p.time_ns for p in items if isinstance(p, TracePacket) and p.direction == "in"] == \
        [1_000, 5_000, 5_000, 9_000, 9_000]


def test_wall_clock_batches_share_a_time():
    chain = echo_chain()
    pipe = EchoPipeline(chain)
    with CaptureSource(E02) as src:
        run(chain, src, pipe, batch=100, clock="wall")
    assert pipe.seen_t[0] == 0 and pipe.seen_t == sorted(pipe.seen_t)
    assert all(len(set(pipe.seen_t[k:k + 100])) == 1 for k in range(0, 655, 100))


@pytest.mark.parametrize("classify_in_place", [True, False])
def test_recorder_writes_the_contract_trace(tmp_path, classify_in_place):
    chain = echo_chain()
    fields = {"params": [], "seed": 3, "inside": [CLIENT], "clock": "pcap", "batch": 8,
              "implementation": "test", "input": E02.name}
    pipe = EchoPipeline(chain, classify_in_place)
    with CaptureSource(E02) as src:
        stats = run(chain, src, pipe, Recorder(tmp_path / "t.pcapng", "nat", fields), batch=8,
                    inside=(CLIENT,))
    header, items, interfaces = trace_items(tmp_path / "t.pcapng")
    assert (header.chain, header.strategy) == ("nat", "none")
    assert list(header.fields) == ["params", "seed", "linktype", "inside", "clock", "batch", "implementation",
                                   "input", "t0_ns", "labels"]
    assert header.fields["seed"] == 3 and header.fields["linktype"] == 1
    with open_capture(E02) as r:
        records = list(r)
    assert header.fields["t0_ns"] == records[0].time_ns
    assert isinstance(items[-1], TraceEvent) and items[-1].kind == "summary"
    assert items[-1].fields == stats.summary() and "error" not in items[-1].fields
    packets = [p for p in items if isinstance(p, TracePacket)]
    inputs = [p for p in packets if p.direction == "in"]
    assert [p.seq for p in inputs] == list(range(655))
    assert [p.data for p in inputs] == [rec.data for rec in records]  # as captured, not as rewritten
    assert all(p.instance == "" and p.out_index is None for p in inputs)
    if classify_in_place:
        want_sides = [rec.data[0] & 1 for rec in records]
    else:
        classifier = SideClassifier(1, (CLIENT,))
        want_sides = [classifier.side(rec.data, rec.wirelen) for rec in records]
        assert 0 < sum(want_sides) < 655
    assert [p.interface for p in inputs] == [("ingress:inside", "ingress:outside")[s] for s in want_sides]
    outputs = [(p.interface.removeprefix("egress:"), p.data, p.seq) for p in packets if p.direction == "out"]
    assert outputs == expected_outputs(E02)
    seen = -1
    for p in packets:  # every input precedes its outputs; out_index counts them per input
        if p.direction == "in":
            seen = p.seq
        else:
            assert p.seq == seen and p.instance == "nat" and p.time_ns == records[p.seq].time_ns
    idx = [p.out_index for p in packets if p.direction == "out" and p.seq % 3 == 0]
    assert idx[:4] == [0, 1, 0, 1]
    assert set(interfaces) <= {"ingress:inside", "ingress:outside", "egress:outside", "egress:inside"}


def test_corrupt_capture_midway_keeps_a_readable_trace(tmp_path):
    chain = echo_chain()
    trace = tmp_path / "t.pcapng"
    with CaptureSource(DATA / "C01_corrupt_record_len.pcap") as src:
        with pytest.raises(FormatError, match="offset 3695: record 19 claims"):
            run(chain, src, EchoPipeline(chain), Recorder(trace, "nat", {}), batch=5)
    header, items, _ = trace_items(trace)
    inputs = [p for p in items if isinstance(p, TracePacket) and p.direction == "in"]
    assert [p.seq for p in inputs] == list(range(18))
    summary = items[-1]
    assert summary.kind == "summary" and summary.fields["packets_in"] == 18
    assert "record 19 claims" in summary.fields["error"]


def test_pipeline_that_loses_an_input_is_a_bug():
    class Lossy(EchoPipeline):
        def process(self, b):
            super().process(b)
            b.n_drop = b.n_out = 0

    chain = echo_chain()
    with CaptureSource(E02) as src, pytest.raises(RuntimeError, match="input 0 has neither an output nor a drop"):
        run(chain, src, Lossy(chain))


def test_pcap_sink_one_file_per_egress(tmp_path):
    chain = echo_chain()
    sink = PcapSink(tmp_path, 1)
    with CaptureSource(E02) as src:
        run(chain, src, EchoPipeline(chain), sinks=[sink])
    sink.close()
    want = expected_outputs(E02)
    for egress in ("outside", "inside"):
        with open_capture(tmp_path / f"{egress}.pcap") as r:
            assert [rec.data for rec in r] == [f for e, f, _ in want if e == egress]


def test_percentiles_weight_batches_by_packets():
    assert percentiles([(10, 98), (1000, 1), (5000, 1)]) == {"p50": 10, "p99": 1000, "p999": 5000}
    assert percentiles([]) == {"p50": None, "p99": None, "p999": None}
    assert RunStats("x").mpps == 0.0


# -- ports ------------------------------------------------------------------------------------------
def test_capture_source_reads_every_everyday_link_type():
    for path in EVERYDAY:
        with CaptureSource(path) as src, open_capture(path) as r:
            records = list(r)
            got = []
            while frames := src.receive(16):
                got += frames
            assert [tuple(f) for f in got] == \
                [(rec.data, rec.wirelen, rec.time_ns, CLASSIFY) for rec in records], path.name
            assert src.linktype == (records[0].linktype if records else 1)


def test_capture_source_interfaces_of_one_link_type_and_mixed(tmp_path):
    same, mixed = tmp_path / "same.pcapng", tmp_path / "mixed.pcapng"
    for path, second in ((same, 1), (mixed, 113)):
        with PcapngWriter(str(path)) as w:
            a, b = w.add_interface(1, 0), w.add_interface(second, 0)
            w.write_packet(a, 1, b"\1" * 60)
            w.write_packet(b, 2, b"\2" * 60)
            w.write_packet(a, 3, b"\3" * 60)
    with CaptureSource(same, side=FROM_OUTSIDE) as src:
        assert [(f[0][0], f[3]) for f in src.receive(10)] == [(1, 1), (2, 1), (3, 1)] and src.receive(10) == []
    with CaptureSource(mixed) as src:
        assert len(src.receive(10)) == 1  # the frame before the fault first
        with pytest.raises(FormatError, match=r"packet 2 has link type 113 \(LINUX_SLL\) but the packets before it 1"):
            src.receive(10)


def test_capture_source_errors_at_open():
    with pytest.raises(FormatError, match="cannot open"):
        CaptureSource(DATA / "no_such.pcap")
    with pytest.raises(FormatError, match="archaic"):
        CaptureSource(DATA / "C02_corrupt_pcap_version.pcap")
    with pytest.raises(ValueError, match="side"):
        CaptureSource(E02, side=5)
    assert FROM_INSIDE == 0


# -- the command ---------------------------------------------------------------------------------
def test_firewall_nat_lb_on_e02(tmp_path, capsys):
    trace = tmp_path / "t.pcapng"
    code, out, err = cli(capsys, "run", "firewall>nat>lb", "--pcap", E02, "--seed", 7, "-o", trace)
    assert code == 0, err
    assert "655 in" in out and "Mpps" in out and "p99" in out and str(trace) in out
    assert "inside: 128.2.6.136/32 (auto)" in out
    header, items, interfaces = trace_items(trace)
    assert header.chain == "firewall>nat>lb" and header.strategy == "none"
    f = header.fields
    assert (f["seed"], f["linktype"], f["clock"], f["batch"], f["input"]) == (7, 1, "pcap", 32, E02.name)
    assert f["params"] == [] and f["inside"] == ["128.2.6.136/32"]
    assert f["implementation"] in ("fast", "fallback")
    assert set(interfaces) == {"ingress:inside", "ingress:outside", "egress:outside"}
    packets = [p for p in items if isinstance(p, TracePacket)]
    inputs = [p for p in packets if p.direction == "in"]
    outputs = [p for p in packets if p.direction == "out"]
    assert [p.seq for p in inputs] == list(range(655))
    with open_capture(E02) as r:
        records = list(r)
    assert [p.data for p in inputs] == [rec.data for rec in records]
    client = bytes([128, 2, 6, 136])
    assert [p.interface for p in inputs] == \
        ["ingress:inside" if rec.data[26:30] == client else "ingress:outside" for rec in records]
    assert {p.instance for p in outputs} == {"lb"} and {p.interface for p in outputs} == {"egress:outside"}
    assert all(p.out_index == 0 and p.time_ns == records[p.seq].time_ns for p in outputs)
    summary = items[-1]
    assert summary.kind == "summary" and summary.fields["packets_in"] == 655
    assert summary.fields["packets_out"] == len(outputs) > 0
    assert sum(summary.fields["dropped"].values()) == 655 - len(outputs)
    again = run_json(capsys, "firewall>nat>lb", "--pcap", E02, "--seed", 7)
    assert again["outputs_sha256"] == summary.fields["outputs_sha256"]
    assert again["dropped"] == summary.fields["dropped"]
    if shutil.which("tshark"):
        shown = subprocess.run(["tshark", "-r", str(trace)], capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert len(shown.stdout.splitlines()) >= 655 + len(outputs)
    code, out, err = cli(capsys, "inspect", trace)
    assert code == 0 and "summary 1" in out, err


def test_inside_auto_and_given(tmp_path, capsys):
    assert [str(n) for n in capture_inside(E02)] == ["128.2.6.136/32"]
    assert [str(n) for n in capture_inside(DATA / "E03_http_13flows_bro_org.pcap")] == \
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    assert [str(n) for n in capture_inside(DATA / "E23_empty.pcap")] == \
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    r = run_json(capsys, "nat", "--pcap", E02, "--inside", "173.194.0.0/16", "--param", "nat.ports=64512",
                 "-o", tmp_path / "t.pcapng")
    assert r["inside"] == ["173.194.0.0/16"] and not r["auto_inside"]
    assert r["by_egress"]["outside"] == 323  # now the server's packets are the outbound ones
    header, _, _ = trace_items(tmp_path / "t.pcapng")
    assert header.fields["inside"] == ["173.194.0.0/16"] and header.fields["params"] == ["nat.ports=64512"]


def test_json_fields(capsys):
    r = run_json(capsys, "nat", "--pcap", E02)
    for key in ("packets_in", "packets_out", "dropped", "mpps", "gbps", "latency", "implementation",
                "outputs_sha256"):
        assert key in r
    assert set(r["latency"]) == {"p50", "p99", "p999"}
    assert r["packets_in"] == 655 and r["trace"] is None


@pytest.mark.parametrize("path", EVERYDAY, ids=lambda p: p.name[:3])
def test_nat_with_a_large_pool_on_every_everyday_capture(capsys, path):
    r = run_json(capsys, "nat", "--pcap", path, "--param", "nat.ports=64512")
    with open_capture(path) as reader:
        n = sum(1 for _ in reader)
    assert r["packets_in"] == n
    assert r["packets_out"] + sum(r["dropped"].values()) >= n
    assert r["packets_out"] <= 2 * n
    assert not any("exhausted" in reason for reason in r["dropped"])
    assert sum(r["by_egress"].values()) == r["packets_out"]
    if path.name.startswith("E02"):  # every outbound packet (the client's) leaves: each flow kept its mapping
        assert r["by_egress"] == {"outside": 332, "inside": 0}
        assert r["dropped"] == {"nat: no mapping": 323}  # the server answered the client, not the NAT


def test_same_seed_same_outputs_and_batch_size_does_not_matter(capsys):
    base = run_json(capsys, "firewall>nat>lb", "--pcap", E02, "--seed", 7)
    assert run_json(capsys, "firewall>nat>lb", "--pcap", E02, "--seed", 7)["outputs_sha256"] == base["outputs_sha256"]
    for batch in (1, 5, 256):
        other = run_json(capsys, "firewall>nat>lb", "--pcap", E02, "--seed", 7, "--batch", batch)
        assert other["outputs_sha256"] == base["outputs_sha256"], batch
        assert other["dropped"] == base["dropped"]
    for flows in (1, 100000):  # tables sized ahead (and grown past 1)
        other = run_json(capsys, "firewall>nat>lb", "--pcap", E02, "--seed", 7, "--flows", flows)
        assert (other["outputs_sha256"], other["dropped"]) == (base["outputs_sha256"], base["dropped"]), flows
    nat = [run_json(capsys, "nat", "--pcap", E02, "--param", "nat.ports=64512", "--seed", seed)["outputs_sha256"]
           for seed in (1, 1, 2)]
    assert nat[0] == nat[1] != nat[2]  # the seed draws the NAT's ports


def one_line_error(capsys, *argv) -> str:
    code, out, err = cli(capsys, "run", *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfproof run: error: "), err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert "C02_corrupt_pcap_version.pcap: offset 4: pcap version 1.4" in \
        one_line_error(capsys, "nat", "--pcap", DATA / "C02_corrupt_pcap_version.pcap")
    assert "C03_corrupt_pcapng_blocklen.pcapng: offset 0:" in \
        one_line_error(capsys, "nat", "--pcap", DATA / "C03_corrupt_pcapng_blocklen.pcapng")
    assert "no_such.pcap: cannot open" in one_line_error(capsys, "nat", "--pcap", tmp_path / "no_such.pcap")
    assert "unknown NF 'natt'; bundled:" in one_line_error(capsys, "natt", "--pcap", E02)
    assert "unknown NF 'lbb'" in one_line_error(capsys, "firewall>nat>lbb", "--pcap", E02)
    assert "empty" in one_line_error(capsys, "firewall>>lb", "--pcap", E02)
    assert "nat has no parameter 'port'" in one_line_error(capsys, "nat", "--pcap", E02, "--param", "nat.port=3")
    assert "nat.ports=lots" in one_line_error(capsys, "nat", "--pcap", E02, "--param", "nat.ports=lots")
    assert "names NF 'lb', which is not in the chain" in \
        one_line_error(capsys, "firewall>nat", "--pcap", E02, "--param", "lb.backends=2")
    assert "write NF.NAME=VALUE" in one_line_error(capsys, "nat", "--pcap", E02, "--param", "ports")
    assert "--inside 10.0.0.1/8: '10.0.0.1/8' is not a network" in \
        one_line_error(capsys, "nat", "--pcap", E02, "--inside", "10.0.0.1/8")
    assert "not a network" in one_line_error(capsys, "nat", "--pcap", E02, "--inside", "inside")
    with pytest.raises(SystemExit) as stop:  # (argparse's own exit, 2)
        cli(capsys, "run", "nat", "--pcap", E02, "--flows", "20000000")
    assert stop.value.code == 2 and "--flows: must be a number of connections from 0 to 16777216, got '20000000'" \
        in capsys.readouterr().err
    assert "cannot write the trace" in one_line_error(capsys, "nat", "--pcap", E02, "-o", tmp_path / "no" / "t.pcapng")
    copy = tmp_path / "in.pcap"
    shutil.copy(E02, copy)
    assert "is the input capture" in one_line_error(capsys, "nat", "--pcap", copy, "-o", copy)
    assert copy.read_bytes() == E02.read_bytes()


def test_corrupt_capture_midway_cli(tmp_path, capsys):
    trace = tmp_path / "t.pcapng"
    line = one_line_error(capsys, "firewall>nat>lb", "--pcap", DATA / "C01_corrupt_record_len.pcap", "-o", trace)
    assert "C01_corrupt_record_len.pcap: offset 3695: record 19 claims" in line
    assert f"the trace {trace} holds the 18 inputs before it" in line
    header, items, _ = trace_items(trace)
    assert [p.seq for p in items if isinstance(p, TracePacket) and p.direction == "in"] == list(range(18))
    assert items[-1].kind == "summary" and items[-1].fields["packets_in"] == 18
    code, out, err = cli(capsys, "inspect", trace)
    assert code == 0, err
    assert "trace: version 1, chain 'firewall>nat>lb'" in out and "summary 1" in out


@pytest.mark.parametrize("name", ["E02_http_49flows.pcap", "E05_mixed_v4v6_80flows_ftpdata.pcap", "E10_dns_icmp.pcap",
                                  "E20_frag_ipv4_udp_afs.pcap"])
def test_fast_fallback_and_generic_agree(capsys, name):
    """The pipelines give the same outputs and drops for the same seed (runtime contract): fast or
    fallback, and the generic executor compiled (where the fast path is built) and interpreted."""
    argv = ["firewall>nat>lb", "--pcap", str(DATA / name), "--seed", "7", "--param", "nat.ports=64512",
            "--param", "lb.backends=3", "--batch", "16"]
    base = run_json(capsys, *argv)
    assert base["packets_out"] > 0
    generic = run_json(capsys, *argv, "--generic")
    assert generic["implementation"] == ("compiled" if base["implementation"] == "fast" else "generic")
    interpreted = run_json(capsys, *argv, "--generic", "--interpret")
    assert interpreted["implementation"] == "generic"
    same = ("outputs_sha256", "dropped", "by_egress")
    assert [generic[k] for k in same] == [base[k] for k in same] == [interpreted[k] for k in same]
    env = dict(os.environ)  # the other of fast / fallback, in a fresh interpreter
    if base["implementation"] == "fast":
        env["NFPROOF_PUREPYTHON"] = "1"
    else:
        env.pop("NFPROOF_PUREPYTHON", None)
    done = subprocess.run([sys.executable, "-m", "nfproof", "run", *argv, "--json"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    twin = json.loads(done.stdout)
    if twin["implementation"] == base["implementation"]:
        pytest.skip("runtime/fast.pyx is not built: only the fallback and generic paths compared")
    assert [twin[k] for k in same] == [base[k] for k in same]


def test_installed_command(tmp_path):
    exe = ROOT / ".venv" / "bin" / "nfproof"
    if not exe.exists():
        pytest.skip("no .venv/bin/nfproof (make installs it)")
    trace = tmp_path / "t.pcapng"
    done = subprocess.run([str(exe), "run", "firewall>nat>lb", "--pcap", str(E02), "--seed", "7", "-o", str(trace)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "655 in" in done.stdout and trace.exists()
    bad = subprocess.run([str(exe), "run", "nat", "--pcap", str(DATA / "C02_corrupt_pcap_version.pcap")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("nfproof run: error: ")


def test_user_model_runs_on_the_generic_pipeline(tmp_path, capsys):
    knock = str(ROOT / "examples" / "models" / "port_knock.py") + ":PortKnock"
    r = run_json(capsys, f"{knock}>nat", "--pcap", E02, "--param", "nat.ports=64512", "-o", tmp_path / "t.pcapng")
    expected = "compiled" if IMPLEMENTATION == "fast" else "generic"  # the user's model compiled from its source
    assert r["implementation"] == expected
    assert r["by_egress"]["outside"] == 332  # the knock gate passes outbound traffic; the NAT maps it
    header, items, _ = trace_items(tmp_path / "t.pcapng")
    assert header.fields["implementation"] == expected and items[-1].fields["packets_out"] == 332
    assert run_json(capsys, "nat", "--pcap", E02, "--generic")["implementation"] == expected
    interpreted = run_json(capsys, f"{knock}>nat", "--pcap", E02, "--param", "nat.ports=64512", "--interpret")
    assert interpreted["implementation"] == "generic"
    assert (interpreted["outputs_sha256"], interpreted["dropped"]) == (r["outputs_sha256"], r["dropped"])


def test_wall_clock_run(tmp_path, capsys):
    """--clock wall: recorded in the header; the trace keeps capture times; a clockless NAT gives
    the same outputs as under --clock pcap."""
    trace = tmp_path / "t.pcapng"
    wall = run_json(capsys, "nat", "--pcap", E02, "--param", "nat.ports=64512", "--clock", "wall", "-o", trace)
    pcap = run_json(capsys, "nat", "--pcap", E02, "--param", "nat.ports=64512")
    assert wall["clock"] == "wall" and wall["outputs_sha256"] == pcap["outputs_sha256"]
    header, items, _ = trace_items(trace)
    assert header.fields["clock"] == "wall"
    with open_capture(E02) as r:
        first = next(iter(r)).time_ns
    assert header.fields["t0_ns"] == first and items[0].time_ns == first
    assert run_json(capsys, "firewall", "--pcap", E02, "--clock", "wall")["packets_in"] == 655


def test_progress_line(tmp_path, capsys, monkeypatch):
    import nfproof.runtime.executor as executor
    monkeypatch.setattr(executor, "PROGRESS_SECONDS", 0.0)  # every batch
    code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--progress", "--batch", 100)
    assert code == 0
    assert "\r  100 packets, " in err and "% of the capture" in err and err.endswith("\r\033[K")
    assert "\r" not in out and "655 in" in out
    code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--batch", 100)  # not a terminal: none
    assert code == 0 and err == ""


@pytest.mark.parametrize("chain", ["nat", "firewall>nat>lb"])
@pytest.mark.parametrize("name", EVERYDAY, ids=lambda p: p.name[:3])
def test_replay_explains_a_recorded_run(tmp_path, capsys, name, chain):
    """The loop the trace format exists for: `nfproof replay` finds a failure-free execution of the
    chain model that explains a run the runtime recorded, on every everyday capture (outputs the
    frames cannot carry, such as ports for ICMP replies, dropped on both sides)."""
    trace = tmp_path / "t.pcapng"
    code, out, err = cli(capsys, "run", chain, "--pcap", name, "--seed", 3,
                         "--param", "nat.ports=64512", *(("--param", "lb.backends=3") if "lb" in chain else ()), "-o", trace)
    assert code == 0, err
    code, out, err = cli(capsys, "replay", trace)
    assert code == 0 and out.startswith("explained:"), out + err


def test_help_and_parser_import_no_runtime(capsys):
    """Every command builds the parser: cmd_run's must not import numpy; its written-out
    constants are the runtime's."""
    from nfproof import cmd_run
    from nfproof.runtime import executor, frames
    assert cmd_run.CLOCKS == executor.CLOCKS and cmd_run.DEFAULT_INSIDE_TEXT == frames.DEFAULT_INSIDE_TEXT
    assert cmd_run.FLOWS_MAX == frames.FLOWS_MAX
    done = subprocess.run([sys.executable, "-c", "import sys; from nfproof.cli import build_parser; build_parser(); "
                           "print('numpy' in sys.modules, 'nfproof.runtime' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--clock {pcap,wall}" in out and "latency per packet" in out and "CPU time" in out
    from nfproof.runtime.failover import HEARTBEAT_MISSES
    assert f"silence for {HEARTBEAT_MISSES} periods" in " ".join(out.split())


def test_mixed_link_types_cli(tmp_path, capsys):
    mixed = tmp_path / "mixed.pcapng"
    frames = {path.name: next(iter(open_capture(path))).data for path in (E02, DATA / "E15_sll_redis_15flows.pcap")}
    with PcapngWriter(str(mixed)) as w:
        eth, sll = w.add_interface(1, 0), w.add_interface(113, 0)
        w.write_packet(eth, 1_000, frames[E02.name])
        w.write_packet(sll, 2_000, frames["E15_sll_redis_15flows.pcap"])
    trace = tmp_path / "t.pcapng"
    line = one_line_error(capsys, "nat", "--pcap", mixed, "-o", trace)
    assert "packet 2 has link type 113 (LINUX_SLL) but the packets before it 1 (EN10MB)" in line
    assert f"the trace {trace} holds the 1 input before it" in line
    _, items, _ = trace_items(trace)
    assert [p.seq for p in items if isinstance(p, TracePacket) and p.direction == "in"] == [0]
