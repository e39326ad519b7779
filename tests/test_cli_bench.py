"""`nfproof bench` end to end (nfproof/cmd_bench.py): a short real run of a few strategies (worker
processes, a standby process, a private redis-server, real SIGKILLs), its table, CSV, PNG plot and
ratios to none; the looped source; the one-line errors for bad input."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from pathlib import Path

import pytest

from nfproof.cli import main
from nfproof.cmd_bench import CSV_COLUMNS, LoopedCapture, LoopedSource, RunHung, guarded

DATA = Path(__file__).resolve().parent / "data"
E02 = DATA / "E02_http_49flows.pcap"
PORTS = "nat.ports=64512"


def cli(capsys, *argv):
    """(exit code, stdout, stderr) of `nfproof ARGV...` in this process (argparse errors exit)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def live_children() -> list[int]:
    """Processes whose parent is this one and that are not zombies."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One real run: none (added by the command), stateful.commit:8 and stateless.commit:8, 0.3 s each."""
    folder = tmp_path_factory.mktemp("bench")
    out, err = io.StringIO(), io.StringIO()  # (module scope: no capsys)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", "nat", "--pcap", str(E02), "--param", PORTS, "--strategies",
                     "stateful.commit:8,stateless.commit:8", "--duration", "0.3", "--fail-at", "100",
                     "--csv", str(folder / "b.csv"), "--plot", str(folder / "b.png")])
    with open(folder / "b.csv", newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "folder": folder, "columns": columns,
            "rows": {r["strategy"]: r for r in rows}, "children": live_children()}


def test_short_run_exits_0_and_prints_the_table(short_run):
    assert short_run["code"] == 0, short_run["err"]
    lines = short_run["out"].splitlines()
    assert lines[0].startswith("nfproof bench nat on ") and "655 frames" in lines[0] and "failure nat@100" in lines[0]
    header = next(line for line in lines if line.startswith("strategy"))
    for column in ("packets", "Mpps", "pkt/s", "x none", "p50 us", "p99 us", "detect ms", "takeover ms", "failover ms"):
        assert column in header
    body = [line.split() for line in lines if line.split() and line.split()[0] in short_run["rows"]]
    assert [b[0] for b in body] == ["none", "stateful.commit:8", "stateless.commit:8"]
    assert body[0][4] == "1.00"  # none's throughput ratio to itself
    assert f"csv: {short_run['folder'] / 'b.csv'}" in lines
    reference = next(line for line in lines if line.startswith("for reference, none in this process"))
    assert "x the worker processes' none" in reference


def test_csv_columns_and_ratios_relative_to_none(short_run):
    assert tuple(short_run["columns"]) == CSV_COLUMNS
    rows = short_run["rows"]
    assert list(rows) == ["none", "stateful.commit:8", "stateless.commit:8"]
    none = rows["none"]
    for name, row in rows.items():
        assert row["error"] == "", row["error"]
        assert int(row["packets"]) > 0 and float(row["pps"]) > 0 and float(row["wall_pps"]) > 0
        assert float(row["mpps"]) == pytest.approx(float(row["pps"]) / 1e6, rel=1e-4)
        for ratio, value in (("pps_ratio", "pps"), ("wall_pps_ratio", "wall_pps"), ("p50_ratio", "p50_us"),
                             ("p99_ratio", "p99_us"), ("failover_ratio", "failover_ms")):
            assert float(row[ratio]) == pytest.approx(float(row[value]) / float(none[value]), rel=1e-3), (name, ratio)
        assert float(row["p99_us"]) >= float(row["p50_us"]) > 0
    assert float(rows["stateless.commit:8"]["store_cpu_seconds"]) > 0  # the redis-server's CPU counted
    assert float(rows["none"]["store_cpu_seconds"]) == 0


def test_every_strategy_has_a_measured_failover(short_run):
    for name, row in short_run["rows"].items():
        assert row["fail_at"] == "nat@100"
        assert float(row["detection_ms"]) > 0 and float(row["takeover_ms"]) > 0, name
        assert float(row["failover_ms"]) == pytest.approx(float(row["detection_ms"]) + float(row["takeover_ms"]),
                                                          rel=1e-3)
        assert row["detected_by"] in ("closed socket", "missed heartbeats")


def test_plot_is_a_non_empty_png(short_run):
    data = (short_run["folder"] / "b.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_of_a_failed_row(short_run, tmp_path):
    """A strategy whose runs failed has no bars; the plot still comes out (marked there)."""
    from nfproof.cmd_bench import plot
    rows = [{k: (None if v == "" else float(v) if k.endswith(("_ms", "_us", "ratio")) else v) for k, v in r.items()}
            for r in short_run["rows"].values()]
    for column in ("pps_ratio", "p50_ratio", "p99_ratio", "detection_ms", "takeover_ms"):
        rows[1][column] = None
    rows[1]["error"] = "throughput: the run stopped"
    plot(str(tmp_path / "failed.png"), rows, "nat")
    assert (tmp_path / "failed.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_bar_on_stderr_and_no_process_left(short_run):
    err = short_run["err"]
    assert "[" in err and "stateful.commit:8: throughput" in err and "stateless.commit:8: failover" in err
    assert short_run["children"] == []  # workers, standbys, spares and redis-servers all gone


def test_json_rounds_and_the_default_csv_path(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "firewall>nat>lb", "--pcap", E02, "--param", PORTS, "--strategies", "none",
                         "--duration", "0.1", "--rounds", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["csv"] == "bench-firewall_nat_lb.csv" and (tmp_path / "bench-firewall_nat_lb.csv").stat().st_size
    assert (tmp_path / "bench-firewall_nat_lb.png").stat().st_size > 0
    assert [r["strategy"] for r in result["rows"]] == ["none"]
    row = result["rows"][0]
    assert row["rounds"] == 2 and row["pps_min"] <= row["pps"] <= row["pps_max"]
    assert row["pps_ratio"] == 1.0 and row["failover_ratio"] == 1.0 and result["fail_at"] == "firewall@200"
    assert result["frames"] == 655 and result["flows"] > 0
    assert "none: throughput (round 2/2)" in err
    assert result["in_process"]["packets"] > 0 and result["in_process"]["pps"] > row["pps"]


# -- the looped source ---------------------------------------------------------------------------------
def test_looped_source_repeats_the_capture_later_in_time():
    capture = LoopedCapture(str(E02))
    n = len(capture.frames)
    source = LoopedSource(capture, inputs=2 * n + 5)
    got = []
    while batch := source.receive(64):
        got += batch
    assert len(got) == 2 * n + 5 and source.progress() == (2 * n + 5, 2 * n + 5)
    assert [f[0] for f in got[n:2 * n]] == [f[0] for f in capture.frames]
    times = [f[2] for f in got]
    assert times == sorted(times) and times[n] - times[0] == capture.period > 0
    assert times[n] > times[n - 1]


def test_looped_source_stops_after_its_duration():
    source = LoopedSource(LoopedCapture(str(E02)), duration=0.05)
    handed = 0
    while batch := source.receive(32):
        handed += len(batch)
    assert handed > len(source.capture.frames)  # looped at least once in 50 ms
    assert source.progress() == (50, 50)


def test_a_run_that_does_not_end_is_stopped():
    class EndlessRun:  # the shape of FailoverDriver that guarded reads, stuck as a hung driver would be
        in_flight, failovers = 3, []

        def run(self, source):
            time.sleep(10)

    started = time.monotonic()
    with pytest.raises(RunHung, match="did not end within 0.2 s"):
        guarded(EndlessRun(), None, 0.2)
    assert time.monotonic() - started < 2


# -- bad input: one line, exit 2, no process started ---------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["nat", "--strategies", "stateful.bogus"], "unknown strategy 'stateful.bogus'"),
    (["nat", "--strategies", "stateful.commit"], "needs a positive integer parameter"),
    (["nat", "--strategies", ","], "--strategies is empty"),
    (["nonesuch"], "nonesuch"),
    (["nat", "--pcap", "/nonexistent/x.pcap"], "/nonexistent/x.pcap: no such file"),
    (["nat", "--pcap", str(DATA / "C02_corrupt_pcap_version.pcap")], "C02_corrupt_pcap_version.pcap"),
    (["nat", "--fail-at", "nat@x"], "write NF@PKT"),
    (["nat", "--fail-at", "lb@3"], "the chain has no instance 'lb'"),
    (["nat", "--fail-at", "soon"], "write PKT or NF@PKT"),
    (["nat", "--plot", "out.svg"], "ending in .png"),
    (["nat", "--csv", "/nonexistent/dir/b.csv"], "not a writable folder"),
    (["nat", "--param", "nat.bogus=1"], "bogus"),
    (["nat", "--duration", "0"], "--duration"),
    (["nat", "--rounds", "0"], "--rounds"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected):
    code, out, err = cli(capsys, "bench", *argv)
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert live_children() == []


def test_window_and_read_cache_reach_the_run(capsys, tmp_path, monkeypatch):
    """--window N and --read-cache (stateless reads from the instance's own cache): the JSON says
    so, and the stateless row runs and fails over with them (a real redis-server)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "nat", "--pcap", E02, "--param", PORTS, "--strategies", "stateless.commit:8",
                         "--duration", "0.2", "--window", "64", "--read-cache", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["window"] == 64 and result["read_cache"] is True
    row = next(r for r in result["rows"] if r["strategy"] == "stateless.commit:8")
    assert not row["error"] and row["pps"] > 0 and row["failover_ms"] > 0


def test_every_strategy_runs_with_the_window_the_largest_wants(capsys, tmp_path, monkeypatch):
    """commit:32 wants 4 batches in flight; none, measured beside it, gets the same window."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "nat", "--pcap", E02, "--param", PORTS, "--strategies",
                         "none,stateful.commit:32", "--duration", "0.2", "--json")
    assert code == 0, err
    assert json.loads(out)["window"] == 128
