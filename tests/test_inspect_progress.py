"""Long inspections report progress: packets and bytes read so far, increasing."""
from captures import capture

from nfproof import cmd_inspect


def test_progress_is_reported_every_n_packets(monkeypatch):
    monkeypatch.setattr(cmd_inspect, "PROGRESS_EVERY", 100)
    calls = []
    summary = cmd_inspect.summarise(capture("E02_http_49flows.pcap"), lambda p, b: calls.append((p, b)))
    assert [p for p, _ in calls] == list(range(100, summary["packets"] + 1, 100))
    assert all(b1 < b2 for (_, b1), (_, b2) in zip(calls, calls[1:])) and calls[-1][1] <= summary["bytes_captured"]


def test_inspect_reads_standard_input():
    import subprocess
    import sys
    data = capture("E10_dns_icmp.pcap").read_bytes()
    r = subprocess.run([sys.executable, "-m", "nfproof", "inspect", "-", "--json"], input=data, capture_output=True)
    assert r.returncode == 0 and b'"packets": 32' in r.stdout
    cut = subprocess.run([sys.executable, "-m", "nfproof", "inspect", "-"], input=data[:100], capture_output=True)
    assert cut.returncode == 2 and b"record 1 claims" in cut.stderr
