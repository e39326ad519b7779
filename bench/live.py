"""Live interfaces (issue 6): `nfproof run nat --iface inside=IF --iface outside=IF` on veth pairs in
a network namespace this script creates (root and iproute2 needed), fed N generated 64-byte
Ethernet/IPv4/TCP frames of F outbound flows as fast as a raw socket in the namespace sends them.
Baseline in the same run: the same frames from a pcap file through `nfproof run nat --pcap`.

    sudo .venv/bin/python bench/live.py [--frames N] [--flows F]

Prints RESULT lines: frames sent and the sender's rate, frames the run read (a kernel socket
buffer that overflows drops the rest; the run ends after --idle), outputs, and per run the chain's
own processing rate (pipeline) and the whole process's (inputs over its CPU time: reading and
writing included), with the ratio of the latter to the pcap run's."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime import ACK, PSH, SYN, tcp_frame  # noqa: E402  (bench/runtime.py's frame generator)

from nfproof.traces.pcap import PcapWriter  # noqa: E402

SENDER = """
import socket, sys
frames = open(sys.argv[1], "rb").read()
size = int(sys.argv[2])
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); out.bind(("vi1", 0))
for k in range(0, len(frames), size):
    out.send(frames[k:k + size])
"""

# the receive path alone: N frames queued on vi0 (the socket buffer holds them all), then read by
# InterfaceSource.receive(32) with recvmmsg (fast.FrameReceiver) or one recvfrom each; its CPU time
DRAIN = """
import json, socket, sys, time
from nfproof.runtime.ports import InterfaceSource
frames, size, how = open(sys.argv[1], "rb").read(), int(sys.argv[2]), sys.argv[3]
source = InterfaceSource({"inside": "vi0", "outside": "vo0"}, idle=0.3)
if how == "each":
    source.receiver = None
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); out.bind(("vi1", 0))
for k in range(0, len(frames), size):
    out.send(frames[k:k + size])
time.sleep(0.2)
read, cpu = 0, time.process_time()
while batch := source.receive(32):
    read += len(batch)
print(json.dumps({"read": read, "cpu_seconds": time.process_time() - cpu}))
"""


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=check)


def frames_of(n: int, flows: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    conns = [((10 << 24) | rng.getrandbits(24), rng.randrange(1024, 65536)) for _ in range(flows)]
    remote = (198 << 24) | (51 << 16) | (100 << 8) | 7
    return [tcp_frame(*conns[k % flows], remote, 80, SYN if k < flows else ACK | PSH, 0 if k < flows else 10)
            for k in range(n)]


def has_batch_receive() -> bool:
    """Whether InterfaceSource reads by recvmmsg here (the fast path is built and not turned off)."""
    import nfproof.runtime.ports as ports
    from nfproof.runtime import IMPLEMENTATION
    return IMPLEMENTATION == "fast" and hasattr(ports, "_frame_receiver")


def nfproof(*args, ns=()):
    return subprocess.run([*ns, sys.executable, "-m", "nfproof", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--flows", type=int, default=10_000)
    args = p.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("bench/live.py needs root and iproute2 (a network namespace with veth pairs)", file=sys.stderr)
        return 2
    frames = frames_of(args.frames, args.flows)
    size = len(frames[0])
    work = Path(tempfile.mkdtemp(prefix="nfproof-live-"))
    blob = work / "frames.bin"
    blob.write_bytes(b"".join(frames))
    pcap = work / "frames.pcap"
    with PcapWriter(str(pcap), 1, nanosecond=True) as w:
        for k, f in enumerate(frames):
            w.write(1_700_000_000 * 10 ** 9 + k * 1000, f)
    params = ("--param", "nat.ports=64512", "--inside", "10.0.0.0/8")
    base = json.loads(nfproof("run", "nat", "--pcap", pcap, *params, "--json").stdout)

    name = f"nfproof-bench-{os.getpid()}"
    sh("ip", "netns", "add", name)
    ns = ["ip", "netns", "exec", name]
    try:
        sh(*ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for a, b in (("vi0", "vi1"), ("vo0", "vo1")):
            sh("ip", "-n", name, "link", "add", a, "type", "veth", "peer", "name", b)
            for dev in (a, b):
                sh("ip", "-n", name, "link", "set", dev, "up")
        run = subprocess.Popen([*ns, sys.executable, "-m", "nfproof", "run", "nat", *params, "--iface", "inside=vi0",
                                "--iface", "outside=vo0", "--count", str(args.frames), "--idle", "3", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while len(sh(*ns, "cat", "/proc/net/packet").stdout.strip().splitlines()) < 5:  # header + 4 sockets
            if run.poll() is not None:
                print(run.communicate()[1], file=sys.stderr)
                return 2
            time.sleep(0.05)
        started = time.monotonic()
        sh(*ns, sys.executable, "-c", SENDER, str(blob), str(size))
        send_seconds = time.monotonic() - started
        out, err = run.communicate(timeout=600)
        if run.returncode != 0:
            print(err, file=sys.stderr)
            return 2
        live = json.loads(out)
        drains = {how: json.loads(sh(*ns, sys.executable, "-c", DRAIN, str(blob), str(size), how).stdout)
                  for how in ("batch", "each") if how == "each" or has_batch_receive()}
    finally:
        sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"RESULT live.frames_sent {args.frames} frames")
    print(f"RESULT live.send_rate {args.frames / send_seconds / 1e6:.3f} Mpps")
    print(f"RESULT live.frames_read {live['packets_in']} frames")
    print(f"RESULT live.outputs {live['packets_out']} frames")
    # the chain's own processing (both runs), then the whole process (reading and writing included)
    print(f"RESULT live.pipeline_mpps {live['mpps']:.3f} Mpps")
    print(f"RESULT pcap.pipeline_mpps {base['mpps']:.3f} Mpps")
    live_cpu, pcap_cpu = live["packets_in"] / live["cpu_seconds"], base["packets_in"] / base["cpu_seconds"]
    print(f"RESULT live.process_mpps {live_cpu / 1e6:.3f} Mpps")
    print(f"RESULT pcap.process_mpps {pcap_cpu / 1e6:.3f} Mpps")
    print(f"RESULT live.process_ratio_to_pcap {live_cpu / pcap_cpu:.3f} x")
    print(f"RESULT live.cpu_per_frame {live['cpu_seconds'] / live['packets_in'] * 1e6:.2f} us")
    for how, drain in drains.items():  # the receive path alone
        print(f"RESULT receive_{how}.frames_read {drain['read']} frames")
        print(f"RESULT receive_{how}.cpu_per_frame {drain['cpu_seconds'] / drain['read'] * 1e6:.3f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
