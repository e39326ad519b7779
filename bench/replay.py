"""Benchmark of `nfproof replay` (issue 7): a generated trace of N packets in F flows through
firewall>nat>lb with one failover, checked end to end from the file, in CPU seconds.

The trace: a capture of F outbound UDP flows to the load balancer's VIP (packets of all flows
interleaved, one every microsecond) is run through the reference runtime (`nfproof run`), and a
failure and a failover of the NAT are written into the trace halfway (the state kept, as a
stateful.sync standby would: the run stays explained). Generated files are cached in --dir.

Prints RESULT lines: packets/s (inputs per CPU second, all processes) on one core (--jobs 1) and
with --jobs N, for each size, and whether the fast pass (verify/replay_fast.py) explained it; and,
for sizes up to --baseline-max, the same one-core check without the fast pass (the full check:
NFPROOF_REPLAY_FAST=0) and on the pure-Python fallback (NFPROOF_PUREPYTHON=1: no fast pass, the
reader of traces/trace.py and the Python header parser), with the ratios to the one-core check. Memory: the peak resident size of
the largest checking process. (`--sequential`, one unsplit in-memory search, is not measured: it
holds the whole trace.)"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from nfproof.models.api import UDP, Packet, addr
from nfproof.traces.pcap import PcapWriter
from nfproof.traces.trace import TraceEvent, TracePacket, TraceWriter, read_trace
from nfproof.verify.frames import frame_of

VIP = addr("198.51.100.1")
CHAIN = "firewall>nat>lb"
PARAMS = ["nat.ports=64512", "lb.backends=8"]


def capture(path: str, packets: int, flows: int) -> None:
    """Outbound UDP: flow k from 10.(k>>16).(k>>8).(k) port 1024+k%60000 to VIP:53."""
    frames = []
    for k in range(flows):
        src = addr("10.0.0.0") + 1 + k
        frames.append(frame_of(Packet(UDP, src, 1024 + k % 60000, VIP, 53), payload=b"x" * 18))
    t0 = 1_700_000_000 * 10 ** 9
    with PcapWriter(path, nanosecond=True) as w:
        for i in range(packets):
            w.write(t0 + i * 1000, frames[i % flows])


def trace(path: str, packets: int, flows: int, folder: str) -> None:
    pcap = os.path.join(folder, f"in-{packets}-{flows}.pcap")
    if not os.path.exists(pcap):
        capture(pcap, packets, flows)
    plain = os.path.join(folder, f"run-{packets}-{flows}.pcapng")
    if not os.path.exists(plain):
        cmd = [sys.executable, "-m", "nfproof", "run", CHAIN, "--pcap", pcap, "-o", plain]
        for p in PARAMS:
            cmd += ["--param", p]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with read_trace(plain) as t, TraceWriter(path, t.header) as w:
        half, n = packets // 2, 0
        for item in t:
            if isinstance(item, TracePacket) and item.direction == "in":
                n += 1
                if n == half:
                    w.event(TraceEvent("failure", item.time_ns, "nat", {"point": "after-release"}))
                    w.event(TraceEvent("failover", item.time_ns + 1000, "nat#standby",
                                       {"standby": "nat#standby", "replica_seq": half - 2, "end_ns": item.time_ns + 1000}))
            w.write(item)


def check(path: str, jobs: int, sequential: bool, mode: str = "") -> tuple[str, float, float, int]:
    """(verdict and how it was reached, CPU seconds of every process, wall seconds, peak RSS kB),
    from a fresh process (mode `pure`: on the pure-Python fallback; `full`: the fast pass off). The
    peak is the largest of this process's children so far."""
    cmd = [sys.executable, "-m", "nfproof", "replay", path, "--jobs", str(jobs), "--json"]
    if sequential:
        cmd.append("--sequential")
    env = {k: v for k, v in os.environ.items() if k not in ("NFPROOF_PUREPYTHON", "NFPROOF_REPLAY_FAST")}
    if mode == "pure":
        env["NFPROOF_PUREPYTHON"] = "1"
    elif mode == "full":
        env["NFPROOF_REPLAY_FAST"] = "0"
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _MEASURED] + cmd, capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    cpu, maxrss = (float(x) for x in out.stderr.strip().splitlines()[-1].split()[1:3])
    import json
    try:
        report = json.loads(out.stdout)
        verdict = report["verdict"] + (" fast_pass=yes" if report["stats"].get("fast_pass") == "explained"
                                       else " fast_pass=no")
    except ValueError:
        verdict = f"error: {out.stderr.strip()[-200:]}"
    return verdict, cpu, wall, int(maxrss)


# runs a command and says on stderr what it and its children (the workers) used: the peak of each
# check on its own (RUSAGE_CHILDREN of this process's own children only)
_MEASURED = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write(f"\\nMEASURED {u.ru_utime + u.ru_stime} {u.ru_maxrss}\\n")
sys.exit(r.returncode)"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="packets per trace, comma-separated")
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/nfproof-bench-replay")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("--baseline-max", type=int, default=1_000_000,
                    help="largest size also checked on the pure-Python fallback (0: none)")
    args = ap.parse_args(argv)
    print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs", flush=True)
    os.makedirs(args.dir, exist_ok=True)
    for size in (int(s) for s in args.sizes.split(",")):
        flows = min(args.flows, size)
        path = os.path.join(args.dir, f"trace-{size}-{flows}.pcapng")
        if not os.path.exists(path):
            trace(path, size, flows, args.dir)
        runs = [("parallel", args.jobs, "")] + ([] if args.skip_sequential else [("single-core", 1, "")])
        if size <= args.baseline_max:
            runs += [("full-check", 1, "full"), ("pure-python", 1, "pure")]
        one_core = None
        for label, jobs, mode in runs:
            verdict, cpu, wall, rss = check(path, jobs, False, mode)
            ratio = ""
            if label == "single-core":
                one_core = cpu
            elif mode and one_core:
                ratio = f" single_core_vs_{mode}={cpu / one_core:.2f}x"
            print(f"RESULT replay {CHAIN} packets={size} flows={flows} mode={label} jobs={jobs} verdict={verdict} "
                  f"cpu_s={cpu:.1f} wall_s={wall:.1f} packets_per_cpu_s={size / cpu:,.0f} "
                  f"packets_per_wall_s={size / wall:,.0f} peak_rss_mb={rss / 1024:.0f}{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
