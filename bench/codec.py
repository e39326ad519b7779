"""Codec benchmark: read + parse to flow keys, packets per second.

Generates (once, cached in /tmp) a classic pcap of 1M 64-byte Ethernet frames over 65,536 flows:
70% TCP, 30% UDP, 20% of frames 802.1Q-tagged (4 VLANs). Then times, on one core in one run:
the C hot loop `nfproof.traces._fast.scan_pcap_flow_keys` (best of 5), its pure-Python twin
`nfproof.traces.headers.scan_pcap_flow_keys`, the per-packet `_fast.parse_frame` API over the
same records, and dpkt (a reference, if importable) doing the same work (Ethernet/VLAN, IPv4, ports,
a set of flow keys). Prints `RESULT <metric> <value> <unit>` lines.

    .venv/bin/python bench/codec.py [--packets N]
"""
from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time

from nfproof.traces import _fast, headers

FLOWS = 65536


def generate(path: str, packets: int) -> None:
    rng = random.Random(1)
    flows = [(rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16),
              6 if rng.random() < 0.7 else 17, rng.choice((0, 0, 0, 0, 10, 20, 30, 4094)))
             for _ in range(FLOWS)]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        out = []
        for i in range(packets):
            src, dst, sport, dport, proto, vlan = flows[rng.randrange(FLOWS)]
            eth = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
            eth += struct.pack("!HHH", 0x8100, vlan, 0x0800) if vlan else b"\x08\x00"
            iplen = 64 - len(eth)
            ip = struct.pack("!BBHHHBBHII", 0x45, 0, iplen, i & 0xFFFF, 0x4000, 64, proto, 0, src, dst)
            if proto == 6:
                l4 = struct.pack("!HHIIBBHHH", sport, dport, i, 0, 0x50, 0x10, 1024, 0, 0)
            else:
                l4 = struct.pack("!HHHH", sport, dport, iplen - 20, 0)
            frame = (eth + ip + l4).ljust(64, b"\x00")
            out.append(struct.pack("<IIII", i // 1000000, i % 1000000, 64, 64) + frame)
            if len(out) == 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))
    os.replace(tmp, path)


def timed(fn, *args, repeat=1):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, result


def parse_frame_api(path):
    flows, keyer = set(), headers.FlowKeyer(limit=None)
    for linktype, data, wirelen in headers.pcap_records(path):
        flows.add(keyer.key(_fast.parse_frame(linktype, data, wirelen)))
    return len(flows)


def dpkt_scan(path):
    import dpkt
    flows, n = set(), 0
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            n += 1
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP):
                l4 = ip.data
                ports = (l4.sport, l4.dport) if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) else (None, None)
                flows.add((ip.p, ip.src, ports[0], ip.dst, ports[1]))
    return n, len(flows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    args = ap.parse_args()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core
    path = f"/tmp/nfproof-bench-codec-{args.packets}.pcap"
    if not os.path.exists(path):
        t = time.perf_counter()
        generate(path, args.packets)
        print(f"generated {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    timed(_fast.scan_pcap_flow_keys, path)  # warm the page cache
    t_fast, fast = timed(_fast.scan_pcap_flow_keys, path, repeat=5)
    t_pure, pure = timed(headers.scan_pcap_flow_keys, path)
    assert fast == pure, (fast, pure)
    packets, flows, malformed = fast
    assert packets == args.packets and malformed == 0, fast
    t_api, api_flows = timed(parse_frame_api, path)
    assert api_flows == flows
    mpps = lambda t: packets / t / 1e6  # noqa: E731
    print(f"machine load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", file=sys.stderr)
    print(f"RESULT packets {packets} packets")
    print(f"RESULT flows {flows} flows")
    print(f"RESULT fast_scan {mpps(t_fast):.2f} Mpps")
    print(f"RESULT pure_scan {mpps(t_pure):.3f} Mpps")
    print(f"RESULT fast_parse_frame_api {mpps(t_api):.3f} Mpps")
    print(f"RESULT ratio_fast_over_pure {t_pure / t_fast:.0f} x")
    try:
        import dpkt  # noqa: F401
    except ImportError:
        print("dpkt reference skipped: not importable (`make bench` installs it)", file=sys.stderr)
        return 0
    t_dpkt, (n, dflows) = timed(dpkt_scan, path)
    assert n == packets and dflows == flows, (n, dflows, flows)
    print(f"RESULT dpkt_scan {mpps(t_dpkt):.3f} Mpps")
    print(f"RESULT ratio_fast_over_dpkt {t_dpkt / t_fast:.0f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
