"""`nfproof replay TRACE`: does a failure-free execution of the chain explain a recorded run?"""
from __future__ import annotations

import json
import os
import sys

from .cmd_verify import add_equivalence_options, duration, positive_int
from .errors import OK, UNKNOWN, USAGE, VIOLATION, UsageError

EXIT = {"explained": OK, "violation": VIOLATION, "unknown": UNKNOWN}


def _duration_ns(text: str) -> int:
    return int(duration(text) * 1_000_000_000)


def add_parser(sub):
    p = sub.add_parser(
        "replay", help="check a recorded run: does a failure-free execution explain its outputs?",
        description="Decide whether some failure-free execution of the chain model, on the inputs of a recorded "
                    "run, produces the outputs its egresses let out, under the chosen output equivalence. "
                    "Choices (a NAT's port, a load balancer's backend, a drop draw) and clock reads are inferred "
                    "from the outputs that reveal them; input i may be processed any time in [a_i, a_i + S].",
        epilog="exit codes: 0 explained, 1 violation, 2 input error, 3 unknown (the search could not decide)")
    p.add_argument("trace", metavar="TRACE", nargs="?",
                   help="an nfproof trace (pcapng) as `nfproof run` writes it; or give --input and --output")
    p.add_argument("--input", metavar="CAPTURE", help="the inputs as a plain capture (pcap or pcapng)")
    p.add_argument("--output", metavar="[EGRESS=]CAPTURE", action="append", default=[],
                   help="the outputs as a plain capture, optionally for one egress (outside=wan.pcap); without "
                        "EGRESS an output goes to `inside` if its destination is an inside address, else `outside` "
                        "(repeatable)")
    p.add_argument("--chain", metavar="CHAIN",
                   help="the chain, e.g. firewall>nat>lb (default: the trace's; must match it)")
    p.add_argument("--param", action="append", default=[], metavar="NF.NAME=VALUE",
                   help="a model parameter (adds to and overrides the trace's), e.g. nat.ports=64512 (repeatable)")
    add_equivalence_options(p)
    p.add_argument("--max-stall", metavar="S", type=_duration_ns,
                   help="how late a failure-free run may process an input, in seconds (ms/us accepted; default: the "
                        "trace's failover time, else 1 s)")
    p.add_argument("--inside", metavar="CIDR,...", help="the inside networks for classifying sides (default: the "
                   "trace's, else the RFC 1918 ranges and fc00::/7)")
    p.add_argument("--jobs", type=positive_int, default=None, help="worker processes for the flows (default: all cores)")
    p.add_argument("--sequential", action="store_true", help="check the trace as one part, even where the models "
                   "allow splitting it by flow (same verdict, slower)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML timeline of the run")
    p.add_argument("--window", metavar="FILE", help="write a minimal window of the trace that still shows the "
                   "violation, as a small trace (pcapng)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path}: {folder} is not a writable folder")


class _Progress:
    """A progress line on a terminal's stderr (nothing otherwise)."""

    def __init__(self, enabled: bool, path: str | None):
        self.enabled, self.path = enabled, path
        self.shown = False

    def reading(self, packets: int, offset: int | None = None) -> None:
        if self.enabled:
            self.shown = True
            size = os.path.getsize(self.path) if self.path and os.path.isfile(self.path) else 0
            if offset is not None and size:
                width, done = 30, min(1.0, offset / size)
                bar = "#" * int(width * done)
                print(f"\r  checking [{bar:{width}}] {100 * done:3.0f}% of {self.path}, {packets:,} packets",
                      end="", file=sys.stderr, flush=True)
            else:
                print(f"\r  reading {self.path}: {packets:,} packets", end="", file=sys.stderr, flush=True)

    def checking(self, done: int, total: int) -> None:
        if self.enabled and total > 1:
            self.shown = True
            width = 30
            bar = "#" * (width * done // total)
            print(f"\r  checking [{bar:{width}}] {done:,}/{total:,} flows", end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def load(args, progress=None):
    from .verify.replay_load import ReplayInputError, load_captures, load_trace
    inside = [s.strip() for s in args.inside.split(",") if s.strip()] if args.inside else None
    try:
        if args.trace is not None:
            if args.input or args.output:
                raise UsageError("give a TRACE or --input/--output captures, not both")
            return load_trace(args.trace, args.chain, args.param, inside, progress)
        if not args.input or not args.output:
            raise UsageError("give a TRACE, or --input CAPTURE and --output CAPTURE (with --chain)")
        if not args.chain:
            raise UsageError("--input/--output captures need --chain, e.g. --chain nat")
        outputs = []
        for spec in args.output:
            egress, eq, path = spec.partition("=")
            outputs.append((egress, path) if eq and not os.path.exists(spec) else (None, spec))
        return load_captures(args.input, outputs, args.chain, args.param, inside)
    except ReplayInputError as e:
        message = str(e)
        if "not an nfproof trace" in message and args.trace is not None:
            message += (f"; {args.trace} is a plain capture: replay it as --input (with --output and --chain), "
                        f"or inspect it with `nfproof inspect`")
        raise UsageError(message) from None


def stream(args, eq, jobs: int, progress):
    from .verify.replay_load import ReplayInputError
    from .verify.replay_stream import check_trace
    inside = [s.strip() for s in args.inside.split(",") if s.strip()] if args.inside else None
    try:
        return check_trace(args.trace, args.chain, args.param, inside, eq, args.max_stall, jobs, progress)
    except ReplayInputError as e:
        message = str(e)
        if "not an nfproof trace" in message:
            message += (f"; {args.trace} is a plain capture: replay it as --input (with --output and --chain), "
                        f"or inspect it with `nfproof inspect`")
        raise UsageError(message) from None


def run(args) -> int:
    from .verify.equivalence import Equivalence
    from .verify.replay import replay
    from .verify.replay_partition import default_jobs
    from .verify.replay_report import as_json, error_line, story

    for path in (args.html, args.window):
        if path:
            _writable(path)
    progress = _Progress(sys.stderr.isatty() and not args.json, args.trace or args.input)
    eq = Equivalence(args.equivalence, args.allow_duplicates)
    jobs = args.jobs or default_jobs()
    if args.trace is not None and not (args.input or args.output) and not args.sequential:
        result = stream(args, eq, jobs, progress.reading)   # memory flat, parts in parallel
    else:
        rec = load(args, progress.reading)
        progress.clear()
        result = replay(rec, eq, args.max_stall, jobs, partition=not args.sequential, progress=progress.checking)
    progress.clear()
    rec = result.recording
    notes = []
    if args.window:
        if result.verdict == "violation":
            from .verify.replay_window import write_window
            try:
                kept = write_window(result, args.window)
            except OSError as e:
                raise UsageError(f"cannot write {args.window}: {e.strerror}") from None
            notes.append(f"window: {args.window} ({kept} packets) shows the same violation")
        else:
            notes.append(f"no violation: {args.window} not written")
    if args.html:
        from .verify.timeline import html
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(html(result))
        except OSError as e:
            raise UsageError(f"cannot write {args.html}: {e.strerror}") from None
    if args.json:
        out = as_json(result)
        out["notes"] = notes
        print(json.dumps(out, indent=2, default=str))
    else:
        line = error_line(result)
        print(line if result.verdict != "violation" else f"error: {line}")
        if result.verdict == "violation":
            print()
            print(story(result))
        if rec.foreign_blocks:
            notes.append(f"{rec.foreign_blocks} custom block(s) of other tools skipped")
        if rec.other_packets:
            notes.append(f"{rec.other_packets} packet(s) on internal links not checked")
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return EXIT[result.verdict]


__all__ = ["add_parser", "run", "USAGE"]
