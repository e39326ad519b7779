"""`nfproof run CHAIN --pcap FILE [-o TRACE.pcapng]`: run a chain on a capture with the reference
runtime, record the run as a trace, and report counts, drops, throughput and latency."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from .cmd_verify import configured, positive_int
from .errors import OK, UsageError
from .models import NFS, lookup
from .models.api import ParamError
from .models.chain import Chain, ChainError
from .traces.errors import FormatError

LATENCY = ("latency per packet: from its batch entering the pipeline (process()) to the batch's outputs "
           "having been recorded and sent on; it includes the batching, not the wait for a batch to fill")
DESCRIPTION = ("Run CHAIN on the frames of a capture with the reference runtime: every frame enters the chain "
               "from the inside or the outside (by --inside), runs to completion, and leaves on the chain's "
               "egresses or is dropped. Choices are drawn from --seed, clock reads from the capture's times "
               "(--clock pcap, reproducible) or the machine's. With -o, the run is recorded as a trace "
               "(pcapng: inputs, outputs by egress, a final summary) for `nfproof replay` and Wireshark.")
EPILOG = (f"throughput counts the inputs (their wire bytes for Gbps) over the CPU time spent processing them in the "
          f"pipeline; {LATENCY}. "
          "exit codes: 0 ok, 2 usage or input error (the trace written so far is closed and readable)")


def non_negative_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) >= 1 << 64:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2^64-1, got {text!r}")
    return int(text)


# Written out so that building the parser imports no runtime (numpy): every command builds it.
# tests/test_cli_run.py holds them to runtime.executor.CLOCKS and runtime.frames.DEFAULT_INSIDE_TEXT.
CLOCKS = ("pcap", "wall")
DEFAULT_INSIDE_TEXT = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def add_parser(sub):
    p = sub.add_parser("run", help="run a chain on a capture and record the run as a trace",
                       description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("chain", metavar="CHAIN",
                   help=f"an NF ({', '.join(sorted(NFS))}, or a user model path/to/mynf.py:Class) or a chain of "
                        "them, e.g. 'firewall>nat>lb'")
    p.add_argument("--pcap", required=True, metavar="FILE", help="the input: a pcap or pcapng capture")
    p.add_argument("-o", "--output", metavar="TRACE.pcapng", help="record the run into this trace")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of every nondeterministic choice (default 0)")
    p.add_argument("--batch", type=positive_int, default=32, help="inputs per batch (default 32); outputs do not "
                                                                 "depend on it")
    p.add_argument("--param", action="append", default=[], metavar="NF.NAME=VALUE",
                   help="set a model parameter of every instance of NF, e.g. nat.ports=64512 (repeatable)")
    p.add_argument("--inside", metavar="CIDR,...|auto", default="auto",
                   help="networks on the inside: a frame whose source address is in none of them arrives from the "
                        f"outside. auto (default): {DEFAULT_INSIDE_TEXT} if the capture has a packet from them, else "
                        "the hosts that open connections in it (TCP SYN senders, first senders of UDP and ICMP query "
                        "flows)")
    p.add_argument("--clock", choices=CLOCKS, default="pcap",
                   help="what now() reads: the capture's times (pcap, default: reproducible) or the time each "
                        "batch arrives (wall)")
    p.add_argument("--generic", action="store_true",
                   help="run every NF's own model code (runtime/generic.py) instead of the bundled fast path")
    p.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def build_chain(text: str, settings: list[str]) -> Chain:
    """The validated chain CHAIN names, each member's NF configured with the --param settings for
    its NF name (UsageError for an unknown NF, a bad chain, a bad or unused setting)."""
    by_nf: dict[str, list[str]] = {}
    for setting in settings:  # NF.NAME=VALUE; `configured` checks the form and the values
        by_nf.setdefault(setting.partition("=")[0].strip().rpartition(".")[0], []).append(setting)

    def configured_lookup(ref: str):
        nf_cls = lookup(ref)
        return configured(nf_cls, by_nf.get(nf_cls.name, []))

    try:
        if ">" not in text:
            lookup(text)  # its own message for a single unknown NF (not wrapped as a chain's)
        chain = Chain.parse(text, configured_lookup)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    except (ParamError, ChainError) as e:
        raise UsageError(str(e)) from None
    names = sorted({m.nf.name for m in chain.members.values()})
    for nf_name, given in by_nf.items():
        if nf_name not in names:
            if not nf_name or "=" not in given[0]:
                configured(next(iter(chain.members.values())).nf, given[:1])  # raises: write NF.NAME=VALUE
            raise UsageError(f"--param {given[0]!r} names NF {nf_name!r}, which is not in the chain {text!r} "
                             f"(its NFs: {', '.join(names)})")
    return chain


class Progress:
    """A progress line on stderr (the executor calls it a few times a second on long runs)."""

    def __init__(self):
        self.shown = False

    def __call__(self, packets: int, done: int, total: int | None) -> None:
        share = f", {min(100, 100 * done // total)}% of the capture" if total else ""
        print(f"\r  {packets:,} packets{share}", end="", file=sys.stderr, flush=True)
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def run(args) -> int:
    from .runtime.executor import make_pipeline, run as run_chain
    from .runtime.frames import parse_inside
    from .runtime.ports import CaptureSource, capture_inside
    from .runtime.recorder import Recorder

    auto_inside = args.inside.strip() == "auto"
    if not auto_inside:
        try:
            inside = parse_inside(args.inside)
        except ValueError as e:
            raise UsageError(str(e)) from None
    chain = build_chain(args.chain, args.param)
    if args.output and os.path.exists(args.output) and os.path.exists(args.pcap) \
            and os.path.samefile(args.output, args.pcap):
        raise UsageError(f"-o {args.output} is the input capture; name another file for the trace")
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"cannot write the trace {args.output}: {folder} is not a writable folder")
    try:
        source = CaptureSource(args.pcap)
    except FormatError as e:
        raise UsageError(str(e)) from None
    if auto_inside:
        inside = capture_inside(args.pcap)
    cpu0 = time.process_time()
    with source:
        pipeline, implementation = make_pipeline(chain, args.seed, source.linktype, inside, args.generic)
        recorder = None
        if args.output:
            fields = {"params": list(args.param), "seed": args.seed, "inside": [str(n) for n in inside],
                      "clock": args.clock, "batch": args.batch, "implementation": implementation,
                      "input": os.path.basename(args.pcap)}
            try:
                recorder = Recorder(args.output, args.chain, fields)
            except OSError as e:
                raise UsageError(f"cannot write the trace {args.output}: {e.strerror or e}") from None
        progress = Progress() if args.progress or sys.stderr.isatty() else None
        try:
            stats = run_chain(chain, source, pipeline, recorder, args.batch, args.clock,
                              progress, implementation=implementation, inside=inside)
        except FormatError as e:
            kept = (f" (the trace {args.output} holds the {recorder.inputs} input{'' if recorder.inputs == 1 else 's'} "
                    f"before it)") if recorder else ""
            raise UsageError(f"{e}{kept}") from None
        finally:
            if progress is not None:
                progress.clear()
    cpu = time.process_time() - cpu0
    result = as_json(stats, args, cpu, inside, auto_inside)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return OK


def as_json(stats, args, cpu_seconds: float, inside, auto_inside: bool) -> dict:
    return {"chain": args.chain, "input": args.pcap, "implementation": stats.implementation, "seed": args.seed,
            "batch": args.batch, "clock": args.clock, "inside": [str(n) for n in inside], "auto_inside": auto_inside,
            "packets_in": stats.packets_in, "packets_out": stats.packets_out, "by_egress": stats.by_egress,
            "bytes_in": stats.bytes_in, "bytes_out": stats.bytes_out, "dropped": stats.dropped,
            "mpps": round(stats.mpps, 6), "gbps": round(stats.gbps, 6), "latency": stats.latency_ns,
            "process_seconds": round(stats.process_seconds, 6),
            "process_wall_seconds": round(stats.process_wall_seconds, 6), "run_seconds": round(stats.run_seconds, 6),
            "cpu_seconds": round(cpu_seconds, 6), "outputs_sha256": stats.outputs_sha256, "trace": args.output}


def _us(ns) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f} us"


def render(r: dict) -> str:
    dropped = sum(r["dropped"].values())
    lines = [f"{r['chain']} on {r['input']}: {r['implementation']} implementation, seed {r['seed']}, "
             f"batch {r['batch']}, clock {r['clock']}",
             f"inside: {', '.join(r['inside'])}" + (" (auto)" if r["auto_inside"] else ""),
             f"packets: {r['packets_in']:,} in, {r['packets_out']:,} out ("
             + ", ".join(f"{e} {n:,}" for e, n in r["by_egress"].items()) + f"), {dropped:,} dropped",
             f"bytes on the wire: {r['bytes_in']:,} in, {r['bytes_out']:,} out"]
    if dropped:
        lines.append("dropped by reason:")
    for reason, count in r["dropped"].items():
        lines.append(f"  {count:>8,}  {reason}")
    lines.append(f"throughput: {r['mpps']:.3f} Mpps, {r['gbps']:.3f} Gbps ({r['process_seconds']:.4f} s CPU in the "
                 f"pipeline; the run took {r['run_seconds']:.3f} s, {r['cpu_seconds']:.3f} s CPU)")
    lat = r["latency"]
    lines.append(f"latency: p50 {_us(lat.get('p50'))}, p99 {_us(lat.get('p99'))}, p99.9 {_us(lat.get('p999'))} "
                 f"(batch entering the pipeline to its outputs handed on)")
    lines.append(f"outputs sha256: {r['outputs_sha256']}")
    lines.append(f"trace: {r['trace']}" if r["trace"] else "trace: not recorded (give -o TRACE.pcapng)")
    return "\n".join(lines)
