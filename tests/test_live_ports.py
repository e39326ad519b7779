"""Live interfaces (runtime/ports.py InterfaceSource / InterfaceSink, `nfproof run --iface`), in a
network namespace the test creates: two veth pairs, the runtime on one end of each, the test's raw
sockets on the other ends. Frames of a real capture go in on the inside pair; the NAT's outputs
must come out of the outside pair exactly as the run's trace records them, and the trace must
replay as explained. Needs root and `ip` (else skipped)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfproof.traces.reader import open_capture
from nfproof.traces.trace import TracePacket, read_trace

from netns import sh, veth_namespace

E02 = Path(__file__).parent / "data" / "E02_http_49flows.pcap"
FRAMES = 40


@pytest.fixture
def netns():
    with veth_namespace("nfproof-test", loopback=True) as ns:  # (primary and standby talk over loopback TCP)
        yield ns


SENDER = """
import socket, sys, time
frames = [bytes.fromhex(line) for line in sys.stdin.read().split()]
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); out.bind(("vi1", 0))
got = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); got.bind(("vo1", 0)); got.settimeout(0.5)
for f in frames:
    out.send(f)
    time.sleep(0.002)
seen, quiet = [], time.monotonic() + 4
while time.monotonic() < quiet:
    try:
        data, addr = got.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] != 4:  # not what this socket's host sent
        seen.append(data.hex())
        quiet = time.monotonic() + 2
print("\\n".join(seen))
"""


def packet_sockets(ns) -> int:
    return len(sh(*ns, "cat", "/proc/net/packet").stdout.strip().splitlines()) - 1


def live_run(ns, *options):
    """`nfproof run nat --iface inside=vi0 --iface outside=vo0 OPTIONS` in the namespace, returned once
    its two receiving and two sending sockets are bound (frames sent later are all its input)."""
    run = subprocess.Popen([*ns, sys.executable, "-m", "nfproof", "run", "nat", "--param", "nat.ports=64512",
                            "--iface", "inside=vi0", "--iface", "outside=vo0", *map(str, options)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while packet_sockets(ns) < 4:
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the runtime did not open its interfaces"
        time.sleep(0.05)
    return run


def send(ns, frames, sender=SENDER):
    """The frames into vi1; what came out of vo1 meanwhile (hex, in order)."""
    done = subprocess.run([*ns, sys.executable, "-c", sender], input="\n".join(f.hex() for f in frames),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [bytes.fromhex(h) for h in done.stdout.split()]


def test_a_nat_between_two_live_interfaces(netns, tmp_path):
    frames = [r.data for r, _ in zip(open_capture(E02), range(FRAMES))]
    trace = tmp_path / "live.pcapng"
    run = live_run(netns, "--count", FRAMES, "--idle", 20, "-o", trace, "--json")
    wire = send(netns, frames)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    result = json.loads(out)
    assert result["packets_in"] == FRAMES and result["input"] == "interfaces inside=vi0,outside=vo0"
    with read_trace(str(trace)) as t:
        items = [p for p in t if isinstance(p, TracePacket)]
    inputs = [p for p in items if p.interface.startswith("ingress")]
    egress = [p.data for p in items if p.interface == "egress:outside"]
    assert [p.data for p in inputs] == frames and all(p.interface == "ingress:inside" for p in inputs)
    assert len(egress) == result["packets_out"] > 0
    assert wire == egress  # what left on the wire, in order
    assert all(f[26:30] == bytes([203, 0, 113, 1]) for f in egress)    # the NAT's external address
    replay = subprocess.run([sys.executable, "-m", "nfproof", "replay", str(trace)], capture_output=True, text=True,
                            timeout=120)
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_a_real_failover_on_live_interfaces(netns, tmp_path):
    """--strategy stateful.sync --fail nat@20 on live interfaces: a primary and a standby process,
    the primary killed at input 20; every output still leaves on the wire, and replay explains
    the recorded run."""
    frames = [r.data for r, _ in zip(open_capture(E02), range(FRAMES))]
    trace = tmp_path / "live-failover.pcapng"
    run = live_run(netns, "--count", FRAMES, "--idle", 30, "--strategy", "stateful.sync", "--fail", "nat@20",
                   "-o", trace, "--json")
    wire = send(netns, frames)  # (frames that arrive while the workers start wait in the sockets' buffers)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    result = json.loads(out)
    assert result["packets_in"] == FRAMES and [f["cause"] for f in result["failovers"]][:1] == ["before input 20"]
    with read_trace(str(trace)) as t:
        egress = [p.data for p in t if isinstance(p, TracePacket) and p.interface == "egress:outside"]
    assert wire == egress and len(egress) == result["packets_out"]
    replay = subprocess.run([sys.executable, "-m", "nfproof", "replay", str(trace)], capture_output=True, text=True,
                            timeout=120)
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_ctrl_c_ends_a_live_run_cleanly(netns, tmp_path):
    """Without --count/--duration/--idle the run reads until Ctrl-C (SIGINT), then finishes as a
    capture does: results printed, the trace closed, exit 0."""
    import signal
    trace = tmp_path / "live.pcapng"
    run = live_run(netns, "-o", trace, "--json")
    send(netns, [r.data for r, _ in zip(open_capture(E02), range(5))],
         SENDER.replace("+ 4", "+ 1").replace("+ 2", "+ 1"))  # (a shorter wait for the outputs)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "until Ctrl-C" in err and json.loads(out)["packets_in"] == 5
    with read_trace(str(trace)) as t:
        assert sum(1 for p in t if isinstance(p, TracePacket) and p.interface.startswith("ingress")) == 5


def test_live_interface_errors_are_one_line(capsys):
    from nfproof.cli import main
    assert main(["run", "nat", "--iface", "inside=lo"]) == 2
    assert "the outside interface is missing" in capsys.readouterr().err
    assert main(["run", "nat", "--iface", "inside=nfp-none0", "--iface", "outside=lo", "--count", "1"]) == 2
    err = capsys.readouterr().err  # (without root the raw socket itself is refused first)
    assert "interface nfp-none0: No such device" in err or "needs CAP_NET_RAW" in err, err
    assert main(["run", "nat", "--iface", "inside=lo", "--iface", "outside=lo", "--count", "1",
                 "--fail-random", "1"]) == 2
    assert "--fail-random and --schedule need a capture" in capsys.readouterr().err
