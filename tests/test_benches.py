"""The benchmarks keep running (small sizes here; the figures come from full runs, BENCHMARKS.md)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
RESULT = re.compile(r"RESULT \S+ -?[0-9.]+(e[-+]?[0-9]+)? \S+")


@pytest.mark.parametrize("script,args", [
    ("verify_nat.py", ["--bounds", "2", "--repeat", "1", "--naive-timeout", "1", "--naive-bounds", "2"]),
    ("codec.py", ["--packets", "20000"]),
    ("verify_models.py", ["--quick"]),
    ("verify_fuzz.py", ["--quick"]),
])
def test_bench_prints_result_lines(script, args):
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines and all(RESULT.fullmatch(line) for line in lines), lines


def test_live_bench_prints_result_lines():
    import os
    import shutil
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("bench/live.py needs root and iproute2")
    r = subprocess.run([sys.executable, str(BENCH / "live.py"), "--frames", "2000", "--flows", "200"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    results = dict(line.split()[1:3] for line in r.stdout.splitlines() if line.startswith("RESULT "))
    assert all(RESULT.fullmatch(line) for line in r.stdout.splitlines() if line.startswith("RESULT "))
    assert int(results["live.frames_sent"]) == 2000 and 0 < int(results["live.frames_read"]) <= 2000
    assert results["live.outputs"] == results["live.frames_read"]  # the NAT forwards every outbound frame
