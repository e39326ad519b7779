"""The chain executor: reads a Source (runtime/ports.py) in batches, runs a Pipeline on each batch,
hands the outputs in release order to the recorder and the sinks, and measures the run.

    pipeline, implementation = make_pipeline(chain, seed, source.linktype, inside)
    stats = run(chain, source, pipeline, recorder, batch=32, clock="pcap")

Time (the runtime contract, section 5): an input's time is its capture time made non-decreasing
(a capture may go backwards; a frame without a time takes the previous one); the pipeline sees it
relative to the run's first input. Under `clock="wall"` the pipeline sees instead the monotonic
time at which the batch arrived (relative to the first batch); the trace keeps capture times.

Measures (RunStats): packets and wire bytes in and out, drops by reason, `outputs_sha256` (sha256
over every output in release order: egress name, NUL, 4-byte little-endian length, frame),
throughput over the processing time (the CPU time spent in `pipeline.process`: on a shared machine
wall-clock time would count other processes' turns), and per-packet latency (wall-clock)
percentiles: for every packet, the time from its batch entering `process()` to the batch's outputs
having been handed on (recorded and sent), so it includes the batching, not the wait for a batch to
fill."""
from __future__ import annotations

import hashlib
import struct
import time
from collections import Counter
from itertools import accumulate
from dataclasses import dataclass, field

from .batch import CLASSIFY, FROM_INSIDE, FROM_OUTSIDE, Batch
from .frames import DEFAULT_INSIDE, NotBundled, Sides

CLOCKS = ("pcap", "wall")
PERCENTILES = (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))
PROGRESS_SECONDS = 0.25  # at most this often


@dataclass
class RunStats:
    implementation: str
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0            # wire lengths of the inputs
    bytes_out: int = 0           # wire lengths of the outputs
    dropped: dict = field(default_factory=dict)   # reason -> count, most frequent first
    by_egress: dict = field(default_factory=dict)  # egress -> outputs, in the chain's egress order
    outputs_sha256: str = hashlib.sha256().hexdigest()
    batches: int = 0
    process_seconds: float = 0.0  # CPU time (this thread's) inside pipeline.process: what throughput counts
    process_wall_seconds: float = 0.0  # the same in wall-clock time
    run_seconds: float = 0.0      # the whole loop: reading, processing, recording
    latency_ns: dict = field(default_factory=dict)  # p50 / p99 / p999 per packet

    @property
    def mpps(self) -> float:
        return self.packets_in / self.process_seconds / 1e6 if self.process_seconds else 0.0

    @property
    def gbps(self) -> float:
        return self.bytes_in * 8 / self.process_seconds / 1e9 if self.process_seconds else 0.0

    def summary(self) -> dict:
        """The trace's summary event fields."""
        return {"packets_in": self.packets_in, "packets_out": self.packets_out, "dropped": dict(self.dropped),
                "outputs_sha256": self.outputs_sha256}


def make_pipeline(chain, seed: int, linktype: int = 1, inside=DEFAULT_INSIDE, generic: bool = False,
                  compile: bool = True, flows: int = 0):
    """(pipeline, implementation): the bundled-NF pipeline (runtime.impl: 'fast' Cython, or the
    pure-Python 'fallback'), or, when asked or when a member is not a bundled NF, the models' own
    handlers: 'compiled' (models/compile.py, on the fast path's batch loop) where every model
    compiles and `compile` is on, else 'generic' (interpreted; `pipeline.not_compiled` says why).
    `flows`: the connections the bundled NFs' tables are sized for at start (0: they grow)."""
    if not generic:
        from . import IMPLEMENTATION, impl
        try:
            return impl.Pipeline(chain, seed, linktype, inside, flows=flows), IMPLEMENTATION
        except NotBundled:
            pass
    from .generic import GenericPipeline, compiled_pipeline
    why = None
    if compile:
        pipeline, why = compiled_pipeline(chain, seed, linktype, inside)
        if pipeline is not None:
            return pipeline, "compiled"
    pipeline = GenericPipeline(chain, seed, linktype, inside)
    pipeline.not_compiled = why
    return pipeline, "generic"


class SideClassifier:
    """The side (batch.FROM_INSIDE / FROM_OUTSIDE) of a frame whose input said CLASSIFY, by
    runtime/frames.py's `Sides` (contract section 3)."""

    def __init__(self, linktype: int, inside):
        from nfproof.traces import parse_frame
        self.parse, self.linktype, self.sides = parse_frame, linktype, Sides(inside)

    def side(self, frame: bytes, wirelen: int) -> int:
        return FROM_OUTSIDE if self.sides.inbound(self.parse(self.linktype, frame, wirelen)) else FROM_INSIDE


def run(chain, source, pipeline, recorder=None, batch: int = 32, clock: str = "pcap", progress=None,
        sinks=(), implementation: str = "", inside=DEFAULT_INSIDE) -> RunStats:
    """Runs `source` through `pipeline` in batches of up to `batch` inputs. `recorder`
    (runtime/recorder.py) and `sinks` (runtime/ports.py) get every output in release order;
    `progress(packets_in, bytes_read, total_bytes)` is called now and then. `inside`: the networks
    the pipeline classifies sides by (the recorder needs each input's side). The recorder is closed
    (with the summary of what was processed) also when the run fails: a fault in the input is
    raised after every frame before it was processed and recorded."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, not {clock!r}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    egresses, instances = tuple(pipeline.egresses), tuple(pipeline.instances)
    if egresses != tuple(chain.egress_names):
        raise ValueError(f"pipeline egresses {egresses} are not the chain's {tuple(chain.egress_names)}")
    stats = RunStats(implementation or getattr(pipeline, "implementation", ""))
    b = Batch(batch)
    linktype = source.linktype
    classifier = None
    egress_bytes = [e.encode() + b"\0" for e in egresses]
    pack_len = struct.Struct("<I").pack
    digest = hashlib.sha256()
    drops: Counter = Counter()
    per_egress = [0] * len(egresses)
    latencies: list[tuple[int, int]] = []  # (ns, packets of the batch)
    wall = clock == "wall"
    t0 = last = wall0 = None
    seq = 0
    next_progress = time.monotonic() + PROGRESS_SECONDS
    perf, thread_cpu = time.perf_counter_ns, time.thread_time_ns
    run_start = perf()
    error = None
    try:
        while True:
            frames = source.receive(batch)
            if not frames:
                break
            arrival = time.monotonic_ns() if wall else 0
            datas, wirelens, raw_times, sides_in = zip(*frames)
            times = []
            for t in raw_times:  # non-decreasing; a frame without a time takes the previous one
                if t is None or (last is not None and t < last):
                    t = last if last is not None else 0
                last = t
                times.append(t)
            if t0 is None:
                t0, wall0 = times[0], arrival
                if recorder is not None:
                    recorder.begin(linktype, egresses, t0)
            caplens = list(map(len, datas))
            offsets = list(accumulate(caplens, initial=0))
            n = len(frames)
            b.clear()  # filled array-wise (as Batch.add would, frame by frame)
            b.data += b"".join(datas)
            b.off[:n], b.caplen[:n], b.wirelen[:n], b.side[:n] = offsets[:n], caplens, wirelens, sides_in
            b.t_ns[:n] = arrival - wall0 if wall else [t - t0 for t in times]
            b.n = n
            t_enter, cpu_enter = perf(), thread_cpu()
            pipeline.process(b)
            t_processed, cpu_processed = perf(), thread_cpu()

            n_out = b.n_out
            out_in = b.out_in[:n_out].tolist()
            _check_complete(n, out_in, b.drop_in[:b.n_drop].tolist(), seq, pipeline)
            outputs, out_egress, bytes_out, hashed = [], [], 0, []
            if n_out:
                out_egress, out_inst = b.out_egress[:n_out].tolist(), b.out_inst[:n_out].tolist()
                out_off, out_len = b.out_off[:n_out].tolist(), b.out_len[:n_out].tolist()
                out_copy, out_label = b.out_copy[:n_out].tolist(), b.out_label[:n_out].tolist()
                data, extra = memoryview(b.data), memoryview(b.extra)
                for k in range(n_out):
                    o = out_off[k]
                    frame = bytes((extra if out_copy[k] else data)[o:o + out_len[k]])
                    e, i = out_egress[k], out_in[k]
                    hashed += (egress_bytes[e], pack_len(len(frame)), frame)
                    src = frames[i]
                    bytes_out += src[1] - len(src[0]) + len(frame)
                    outputs.append((i, egresses[e], instances[out_inst[k]], frame, out_label[k]))
                    for sink in sinks:
                        sink.send(egresses[e], frame, times[i])
                del data, extra
            if recorder is not None:
                sides = b.side[:n].tolist()
                if CLASSIFY in sides:  # the pipeline classified without writing the sides back
                    if classifier is None:
                        classifier = SideClassifier(linktype, inside)
                    sides = [classifier.side(f[0], f[1]) if s == CLASSIFY else s for f, s in zip(frames, sides)]
                recorder.record(seq, frames, times, sides, outputs)
            t_done = perf()

            seq += n  # the batch is done: count it
            stats.packets_in += n
            stats.packets_out += n_out
            stats.bytes_in += sum(wirelens)
            stats.bytes_out += bytes_out
            drops.update(b.drop_reason[:b.n_drop].tolist())
            digest.update(b"".join(hashed))
            for e in out_egress:
                per_egress[e] += 1
            stats.batches += 1
            stats.process_seconds += (cpu_processed - cpu_enter) / 1e9
            stats.process_wall_seconds += (t_processed - t_enter) / 1e9
            latencies.append((t_done - t_enter, n))
            if progress is not None and time.monotonic() >= next_progress:
                progress(stats.packets_in, *source.progress())
                next_progress = time.monotonic() + PROGRESS_SECONDS
    except BaseException as e:
        error = e
        raise
    finally:
        stats.run_seconds = (perf() - run_start) / 1e9
        reasons = pipeline.reasons
        stats.dropped = {reasons[r]: c for r, c in sorted(drops.items(), key=lambda rc: (-rc[1], reasons[rc[0]]))}
        stats.by_egress = dict(zip(egresses, per_egress))
        if stats.packets_out:
            stats.outputs_sha256 = digest.hexdigest()
        stats.latency_ns = percentiles(latencies)
        if recorder is not None:
            summary = stats.summary()
            if error is not None:
                summary["error"] = str(error) or type(error).__name__
            recorder.close(summary, egresses, linktype)
    return stats


def _check_complete(n: int, out_in: list, drop_in: list, seq0: int, pipeline) -> None:
    """Every input ends as at least one output or one drop (contract section 6)."""
    done = set(out_in)
    done.update(drop_in)
    if len(done) != n or (done and (min(done) < 0 or max(done) >= n)):
        missing = sorted(set(range(n)) - done)
        what = f"input {seq0 + missing[0]} has neither an output nor a drop" if missing else \
            f"outputs or drops name inputs outside the batch of {n}"
        raise RuntimeError(f"{type(pipeline).__name__}: {what} (a bug in the pipeline)")


def percentiles(latencies: list[tuple[int, int]]) -> dict:
    """Per-packet percentiles (ns) of batch latencies weighted by their packet counts."""
    total = sum(n for _, n in latencies)
    if not total:
        return {name: None for name, _ in PERCENTILES}
    ordered = sorted(latencies)
    out = {}
    for name, q in PERCENTILES:
        rank, seen = q * total, 0
        for ns, n in ordered:
            seen += n
            if seen >= rank:
                out[name] = ns
                break
    return out
