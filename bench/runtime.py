"""Runtime benchmark (issue 6): the chain 'firewall>nat>lb' on generated traffic, packets per second
of CPU time on one core, every path in one run.

Traffic: `--flows` flows (5-tuples; a TCP connection is two: one per direction, as the monitor
counts them) over `--frames` 64-byte Ethernet/IPv4/TCP frames held in memory. Half the connections
go to the load balancer's VIP 198.51.100.1:80, half to other remote addresses. Each connection is a
handshake (SYN out, SYN-ACK in, ACK out), data both ways and a FIN out; connections run interleaved
(random start times), so every table sees all flows at once. Inbound replies are addressed as the
chain's own choices make them (the NAT's external port, the LB's backend): a warm-up run of the
connections' SYNs with the same seed learns those choices, which the measured runs then repeat.
Sides are given (0 outbound, 1 inbound); times advance 67 ns per frame (14.88 Mpps).

Measured, each on a fresh pipeline over a fresh copy of the frames (time.process_time):
- `passthrough`: runtime.fast.PassThrough, parse only: every frame parsed and released unchanged;
- `fast`: runtime.fast.Pipeline over all frames in one call (its C loop), its tables sized for the
  traffic's connections when it is made (`flows=`, as a DPDK NF sizes its tables at start: the
  packets do not pay for the tables' growth and the kernel's zeroing of their pages);
- `fast_growing`: the same with tables that start small and grow as the flows come;
- `fast_batch_calls`: the same through `process()` once per batch of `--batch` frames (one Batch
  object refilled between calls; the time of the loop minus that of the same loop filling only):
  what the executor pays per call;
- `pure`: runtime.pure.Pipeline on the first `--pure-frames` frames;
- `generic`: runtime.generic.GenericPipeline on the first `--generic-frames` frames;
- `compiled`: the generic executor with the models' handlers compiled (models/compile.py; what
  `nfproof run --generic` runs), over all frames in one call, best of `--repeat`.
The fast paths' outputs and drops are checked equal to each other (and the pure path's, on its
prefix), so the figures are for the same work. Prints `RESULT <metric> <value> <unit>` lines.

    .venv/bin/python bench/runtime.py [--frames N] [--flows N] [--batch N] [--quick] [--paths generic,...]
                                      [--fast BUILD.so]

`--fast` measures another build of runtime/fast.pyx in place of the installed one (e.g. an older
commit's, compiled as module nfproof.runtime.<name>, the file's name up to its first dot), so that
before and after are measured in one session; the traffic's warm-up run uses the installed build.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would spin beside the measurement
import platform
import random
import struct
import sys
import time
from collections import Counter

import numpy as np

from nfproof.models import lookup
from nfproof.models.api import addr
from nfproof.models.chain import Chain
from nfproof.runtime import fast
from nfproof.runtime.batch import Batch

CHAIN = "firewall>nat>lb"
PARAMS = {"nat": {"ports": 64512}}
FRAME = 64
NS_PER_FRAME = 67  # 14.88 Mpps
SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08
MAC = bytes.fromhex("020000000002020000000001")
PATHS = ("passthrough", "fast", "fast_growing", "fast_batch_calls", "pure", "generic", "compiled")


def chain():
    return Chain.parse(CHAIN, lambda ref: lookup(ref).configure(PARAMS.get(ref, {})))


def checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_frame(src: int, sport: int, dst: int, dport: int, flags: int, payload: int) -> bytes:
    """A 64-byte Ethernet/IPv4/TCP frame with valid checksums (payload bytes, then padding)."""
    data = b"x" * payload
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + data
    pseudo = struct.pack("!IIBBH", src, dst, 0, 6, len(seg))
    c = checksum(pseudo + seg + b"\0" * (len(seg) % 2))
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(seg), 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return (MAC + b"\x08\x00" + ip + seg).ljust(FRAME, b"\0")


def connections(flows: int, frames: int, seed: int):
    """(inside host, port, remote, remote port) per connection, and the trace as (connection, step)
    events in time order; steps: 0 SYN out, 1 SYN-ACK in, 2 ACK out, then data out/in, last FIN out."""
    rng = random.Random(seed)
    n = max(1, flows // 2)
    per = max(4, frames // n)
    vip = addr("198.51.100.1")
    seen, conns = set(), []
    while len(conns) < n:
        host, port = (10 << 24) | rng.getrandbits(24), rng.randrange(1024, 65536)
        remote, rport = (vip, 80) if len(conns) % 2 == 0 else ((198 << 24) | (18 << 16) | rng.getrandbits(17), 443)
        if (host, port, remote, rport) not in seen:
            seen.add((host, port, remote, rport))
            conns.append((host, port, remote, rport))
    events = []
    for c in range(n):
        start = rng.random()
        events += [(start + k * (1.0 / per), c, k) for k in range(per)]
    events.sort()
    return conns, [(c, k) for _, c, k in events[:frames]], per


def outbound_frame(conn, step: int, per: int) -> bytes:
    host, port, remote, rport = conn
    flags = SYN if step == 0 else ACK | FIN if step == per - 1 else ACK if step == 2 else ACK | PSH
    return tcp_frame(host, port, remote, rport, flags, 0 if step in (0, 2, per - 1) else 10)


def build(flows: int, frames: int, seed: int):
    """(data bytes, sides array): the trace; inbound frames use the choices a warm-up run learns."""
    conns, events, per = connections(flows, frames, seed)
    first = {}
    for c, k in events:
        if k == 0:
            first.setdefault(c, len(first))
    warm = fast.Pipeline(chain(), seed)
    order = sorted(first, key=first.get)
    batch = Batch(len(order))
    for j, c in enumerate(order):
        batch.add(outbound_frame(conns[c], 0, per), FRAME, j, 0)
    warm.process(batch)
    nat = {(f.src, f.sport, f.dst, f.dport): p for f, p in warm.state("nat")["by_flow"].items()}
    backend = {(f.sport, f.dport, f.dst): b for f, b in warm.state("lb")["backend_of"].items()}
    external = lookup("nat").external
    templates = {}
    out, sides = bytearray(), np.zeros(len(events), np.uint8)
    for i, (c, k) in enumerate(events):
        inbound = k == 1 or (k > 2 and k != per - 1 and k % 2 == 0)
        key = (c, k if k < 3 or k == per - 1 else 3 + inbound)
        frame = templates.get(key)
        if frame is None:
            host, port, remote, rport = conns[c]
            if inbound:
                nat_port = nat.get((host, port, remote, rport), 1)
                src = backend.get((nat_port, rport, remote), remote)
                frame = tcp_frame(src, rport, external, nat_port, SYN | ACK if k == 1 else ACK | PSH, 0 if k == 1 else 10)
            else:
                frame = outbound_frame(conns[c], k, per)
            templates[key] = frame
        out += frame
        sides[i] = inbound
    return out, sides


def fill(batch: Batch, data: bytearray, sides: np.ndarray, start: int, stop: int) -> None:
    n = stop - start
    batch.clear()
    batch.data[:] = memoryview(data)[start * FRAME:stop * FRAME]
    batch.off[:n] = np.arange(n, dtype=np.int64) * FRAME
    batch.caplen[:n] = batch.wirelen[:n] = FRAME
    batch.t_ns[:n] = np.arange(start, stop, dtype=np.int64) * NS_PER_FRAME
    batch.side[:n] = sides[start:stop]
    batch.n = n


def whole(data, sides, frames: int) -> Batch:
    """All frames in one batch, its output arrays touched (a runtime reuses its batches: the first
    write to fresh pages is not the pipeline's cost)."""
    batch = Batch(frames, outputs_per_input=2)
    fill(batch, data, sides, 0, frames)
    for array in (batch.out_in, batch.out_egress, batch.out_inst, batch.out_off, batch.out_len, batch.out_label,
                  batch.out_copy, batch.drop_in, batch.drop_reason):
        array[:] = 0
    return batch


def load_build(path: str):
    """The extension module built from runtime/fast.pyx at path (named nfproof.runtime.<stem>)."""
    import importlib.util
    name = "nfproof.runtime." + os.path.basename(path).split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fast_pipeline(module, seed: int, flows: int = 0):
    """module.Pipeline, its tables sized for `flows` connections (builds from before `flows=`
    existed: unsized)."""
    try:
        return module.Pipeline(chain(), seed, flows=flows)
    except TypeError:
        return module.Pipeline(chain(), seed)


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def results(pipeline, batch: Batch):
    return batch.outputs(), [(i, pipeline.reasons[r]) for i, r in batch.drops()]


def summary(pipeline, batch: Batch) -> str:
    drops = Counter(pipeline.reasons[r] for r in batch.drop_reason[:batch.n_drop].tolist())
    changed = 0
    return (f"{batch.n} frames -> {batch.n_out} outputs, {batch.n_drop} drops"
            + "".join(f"; {c} {r!r}" for r, c in drops.most_common()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=32, help="batch size of the per-call run")
    ap.add_argument("--pure-frames", type=int, default=50_000)
    ap.add_argument("--generic-frames", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="fast-path runs (the best counts)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--fast", metavar="BUILD.so", help="another build of runtime/fast.pyx to measure (see above)")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"the paths to measure, comma-separated (default all: {','.join(PATHS)}); the fast path's "
                         f"results are the reference either way (an untimed run when it is not measured)")
    a = ap.parse_args(argv)
    paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        ap.error(f"--paths {a.paths}: name some of {', '.join(PATHS)}")
    if a.quick:
        a.frames, a.flows, a.pure_frames, a.generic_frames, a.repeat = 4000, 400, 1000, 300, 1
    measured = load_build(a.fast) if a.fast else fast
    print(f"fast path: {measured.__file__}", flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared); "
          f"{platform.python_implementation()} {platform.python_version()}; CPU time of one core", flush=True)
    t = time.perf_counter()
    data, sides = build(a.flows, a.frames, a.seed)
    n = len(sides)
    print(f"traffic: {n} frames of {FRAME} bytes, {a.flows} flows, chain {CHAIN} with "
          f"{', '.join(f'{k}.{p}={v}' for k, ps in PARAMS.items() for p, v in ps.items())} "
          f"(built in {time.perf_counter() - t:.1f} s)", flush=True)

    best = {}
    reference = None
    connections, checked = max(1, a.flows // 2), set()
    for _ in range(a.repeat if {"passthrough", "fast", "fast_growing"} & set(paths) else 0):
        if "passthrough" in paths:
            batch = whole(data, sides, n)
            base = measured.PassThrough()
            best["passthrough"] = min(best.get("passthrough", 1e9), cpu(lambda: base.process(batch)))
        for name, sized in (("fast", connections), ("fast_growing", 0)):
            if name not in paths:
                continue
            batch = whole(data, sides, n)
            pipeline = fast_pipeline(measured, a.seed, sized)
            best[name] = min(best.get(name, 1e9), cpu(lambda: pipeline.process(batch)))
            if reference is None:
                reference = results(pipeline, batch)
                print(f"{name}: {summary(pipeline, batch)}; tables {pipeline.table_sizes()}; "
                      f"flow cache {pipeline.cache_stats()}", flush=True)
            elif name not in checked:
                checked.add(name)
                if results(pipeline, batch) != reference:
                    print(f"error: {name} gave other results than the first fast-path run", file=sys.stderr)
                    return 1
    if reference is None:  # the fast path not measured: its results, untimed
        batch = whole(data, sides, n)
        pipeline = fast_pipeline(measured, a.seed)
        pipeline.process(batch)
        reference = results(pipeline, batch)

    if "fast_batch_calls" in paths:
        # per-batch calls: the loop that fills and processes, minus the same loop filling only
        pipeline = fast_pipeline(measured, a.seed, connections)
        batch, outs, drops = Batch(a.batch), [], []
        fill(batch, data, sides, 0, min(n, a.batch))
        starts = range(0, n, a.batch)
        t = time.process_time()
        for start in starts:
            fill(batch, data, sides, start, min(n, start + a.batch))
        filling = time.process_time() - t
        t = time.process_time()
        for start in starts:
            fill(batch, data, sides, start, min(n, start + a.batch))
            pipeline.process(batch)
        best["fast_batch_calls"] = max(1e-9, time.process_time() - t - filling)
        pipeline = fast_pipeline(measured, a.seed, connections)  # once more, keeping the results (not timed)
        for start in starts:
            fill(batch, data, sides, start, min(n, start + a.batch))
            pipeline.process(batch)
            outs += [(start + i, e, k, label, f) for i, e, k, label, f in batch.outputs()]
            drops += [(start + i, pipeline.reasons[r]) for i, r in batch.drops()]
        if (outs, drops) != reference:
            print("error: the per-batch calls gave other results than the one-call run", file=sys.stderr)
            return 1

    if "compiled" in paths:
        from nfproof.runtime.generic import compiled_pipeline
        t = time.perf_counter()
        pipeline, why = compiled_pipeline(chain(), a.seed)
        if pipeline is None:
            print(f"compiled: not measured ({why})", flush=True)
        else:
            print(f"compiled: the chain's models compiled and loaded in {time.perf_counter() - t:.2f} s", flush=True)
            for _ in range(a.repeat):
                batch = whole(data, sides, n)
                pipeline = compiled_pipeline(chain(), a.seed)[0]
                best["compiled"] = min(best.get("compiled", 1e9), cpu(lambda: pipeline.process(batch)))
            if results(pipeline, batch) != reference:
                print("error: the compiled generic path's results differ from the fast path's", file=sys.stderr)
                return 1

    for name, frames in (("pure", a.pure_frames), ("generic", a.generic_frames)):
        if name not in paths:
            continue
        frames = min(frames, n)
        try:
            if name == "pure":
                from nfproof.runtime.pure import Pipeline as cls
            else:
                from nfproof.runtime.generic import GenericPipeline as cls
            slow = cls(chain(), a.seed)
            batch = whole(data, sides, frames)
            secs = cpu(lambda: slow.process(batch))
        except Exception as e:  # a path not there yet or failing: say so, measure the others
            print(f"{name}: not measured ({type(e).__name__}: {e})", flush=True)
            continue
        got = results(slow, batch)
        expect = ([o for o in reference[0] if o[0] < frames], [d for d in reference[1] if d[0] < frames])
        if got != expect:
            print(f"error: the {name} path's results differ from the fast path's on the first {frames} frames",
                  file=sys.stderr)
            return 1
        best[name] = secs * n / frames  # per frame, scaled to the whole run for the rate below
        print(f"{name}: {frames} frames in {secs:.2f} s CPU", flush=True)

    for name, secs in best.items():
        print(f"RESULT {CHAIN.replace('>', '_')}_{name}_mpps {n / secs / 1e6:.3f} Mpps")
    if "passthrough" in best and "fast" in best:
        print(f"RESULT {CHAIN.replace('>', '_')}_fast_vs_passthrough {best['passthrough'] / best['fast']:.3f} ratio")
    if "compiled" in best and "generic" in best:
        print(f"RESULT {CHAIN.replace('>', '_')}_compiled_vs_generic {best['generic'] / best['compiled']:.1f} ratio")
    if "fast" in best:
        print(f"RESULT {CHAIN.replace('>', '_')}_fast_ns_per_frame {best['fast'] / n * 1e9:.1f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
