"""`nfproof bench CHAIN`: the seed paper's comparison (LANMAN 2020, "Managing State for Failure
Resiliency in NFV") on this machine: throughput, latency and failover time of every state-management
strategy, each as a ratio to `none` measured in the same run and the same way.

Every strategy, `none` included, runs through the failover runtime's worker processes
(runtime/failover.py FailoverDriver: a primary process per instance, a standby process per
instance under stateful.*, a private redis-server under stateless.*), never the in-process fast
path, so the ratios compare strategies, not architectures. Per strategy:

- a throughput run: the capture (held in memory) looped until --duration seconds have passed,
  no failure. Throughput = inputs / CPU time of every process of the run after start-up (the
  driver, the workers and, under stateless.*, the redis-server), in Mpps and packets/s; also
  inputs / wall time from the first input to the last output. Latency: per chain input, from
  entering the chain to its last output (p50, p99). With --rounds K, K such runs per strategy,
  round-robin: figures are medians, ratios medians of each round's ratio to that round's none
  (the machine's load drifts; a none measured beside each strategy follows it).
- a failover run: the capture looped up to --fail-at + FAIL_TAIL inputs, the primary of one
  instance SIGKILLed before it is handed input --fail-at; failover time = detection (kill to
  closed socket, or the silence of missed heartbeats) + takeover (the replacement ready).

--window N sets how many inputs a one-instance chain has in flight (default: as `nfproof run` under
the strategy that wants most: 32, and 128 under commit:B, for several batches in flight; every
strategy gets the same);
--read-cache has stateless.async/batch/commit read from the store's local read cache.

For reference only (no row, no ratio): `none` in this process, as `nfproof run` runs it without
--strategy (the fast path when built), inputs over the CPU time of the whole loop.

Prints a table, writes a CSV and a PNG bar plot (matplotlib, Agg) of the ratios and the failover
times, and shows a progress bar on stderr while it runs."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from .cmd_run import READ_CACHE, build_chain, non_negative_int
from .cmd_verify import positive_float, positive_int
from .errors import OK, USAGE, UsageError
from .models import NFS

DEFAULT_STRATEGIES = ("none", "stateful.checkpoint:8", "stateful.async", "stateful.sync", "stateful.commit:8",
                      "stateless.sync", "stateless.async", "stateless.batch:8", "stateless.cache",
                      "stateless.commit:8")
DEFAULT_CAPTURE = "tests/data/E02_http_49flows.pcap"
DEFAULT_FAIL_AT = 200
FAIL_TAIL = 100            # inputs a failover run hands over after the crash point
HANG_SECONDS = 120.0       # a run still going this long past its duration is stopped, its row failed
CSV_COLUMNS = ("chain", "strategy", "rounds", "packets", "cpu_seconds", "store_cpu_seconds", "wall_seconds",
               "mpps", "pps", "pps_min", "pps_max", "pps_ratio", "wall_pps", "wall_pps_ratio", "p50_us", "p50_ratio", "p99_us",
               "p99_ratio", "unplanned_failovers", "fail_at", "detection_ms", "takeover_ms", "failover_ms",
               "failover_ratio", "detected_by", "error")
DESCRIPTION = ("The seed paper's comparison (LANMAN 2020, \"Managing State for Failure Resiliency in NFV\") on this "
               "machine: throughput (Mpps, packets/s) and latency (p50, p99) of CHAIN under each strategy, and its "
               "failover time (detection + takeover) from one injected failure, each also as a ratio to `none` "
               "measured in the same run. Every strategy, none included, runs in the failover runtime's worker "
               "processes (stateful: a standby process per instance joined by TCP; stateless: a private "
               "redis-server on a loopback port).")
EPILOG = ("throughput: inputs over the CPU time of every process of the run after start-up (driver, workers, "
          "redis-server); wall pkt/s: inputs over the wall time from the first input to the last output. "
          "latency: per chain input, from entering the chain to its last output. failover: one more short run per "
          "strategy, the first instance's primary (or NF of --fail-at NF@PKT) SIGKILLed before input PKT. "
          "exit codes: 0 ok, 2 usage or input error, or a strategy's run failed (its row says why)")


def add_parser(sub):
    p = sub.add_parser("bench", help="compare the state-management strategies' throughput, latency and failover time",
                       description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("chain", metavar="CHAIN",
                   help=f"an NF ({', '.join(sorted(NFS))}, or path/to/mynf.py:Class) or a chain, e.g. 'firewall>nat>lb'")
    p.add_argument("--pcap", metavar="FILE", default=None,
                   help=f"the capture, looped until --duration has passed (default {DEFAULT_CAPTURE})")
    p.add_argument("--strategies", metavar="S,S,...", default=",".join(DEFAULT_STRATEGIES),
                   help="the strategies to compare (default: all ten forms with N=B=8); none is always measured, "
                        "as the baseline of the ratios")
    p.add_argument("--duration", type=positive_float, default=2.0, metavar="SECONDS",
                   help="wall seconds of each strategy's throughput run (default 2)")
    p.add_argument("--rounds", type=positive_int, default=1, metavar="K",
                   help="measure every strategy's throughput K times, round-robin (each round's none beside the "
                        "others); figures are medians over the rounds, ratios medians of each round's ratio to that "
                        "round's none (default 1)")
    p.add_argument("--param", action="append", default=[], metavar="NF.NAME=VALUE",
                   help="set a model parameter of every instance of NF, e.g. nat.ports=64512 (repeatable)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of every nondeterministic choice (default 0)")
    p.add_argument("--fail-at", metavar="[NF@]PKT", default=str(DEFAULT_FAIL_AT),
                   help=f"the failover runs kill NF's primary (default: the chain's first instance) before it is "
                        f"handed input PKT (default {DEFAULT_FAIL_AT})")
    p.add_argument("--heartbeat-ms", type=positive_float, default=1.0, metavar="MS",
                   help="primaries' heartbeat period (default 1)")
    p.add_argument("--window", type=positive_int, default=None, metavar="N",
                   help="inputs in flight at a one-instance chain, the same for every strategy (default: "
                        "`nfproof run`'s largest for the strategies: 32, and 128 under commit:B; a longer chain "
                        "hands over one chain input at a time). commit:B with N <= B waits for each batch's "
                        "acknowledgement before the next inputs come: a larger N lets several batches be in flight")
    p.add_argument("--read-cache", action="store_true",
                   help="stateless.async, .batch and .commit read the state from a local cache of what the "
                        "instance read and wrote (runtime/store.py read_cache: the same values for the single "
                        "writer a namespace has here), not with a round trip to the store per read; writes and "
                        "their protection are unchanged")
    p.add_argument("--csv", metavar="FILE", default=None,
                   help="write the results here (default bench-CHAIN.csv in the current directory, CHAIN's "
                        "characters other than letters, digits, '.', '-' and '_' as '_')")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write the bar plot here (default bench-CHAIN.png beside the CSV's default)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    return p


# -- the input: a capture in memory, looped -------------------------------------------------------------
class LoopedCapture:
    """A capture's frames held in memory (so reading costs every strategy the same, almost nothing),
    its link type, and its number of flows."""

    def __init__(self, path: str):
        from .runtime.ports import CaptureSource
        from .traces.errors import FormatError
        from .traces.headers import FlowKeyer, parse_frame
        self.path = path
        try:
            with CaptureSource(path) as source:
                self.linktype, self.frames = source.linktype, []
                while batch := source.receive(4096):
                    self.frames.extend(tuple(f) for f in batch)
        except FormatError as e:
            raise UsageError(str(e)) from None
        if not self.frames:
            raise UsageError(f"{path}: the capture holds no packet; give one with packets (--pcap FILE)")
        keyer, flows = FlowKeyer(limit=None), set()
        for data, wirelen, _, _ in self.frames:
            key = keyer.key(parse_frame(self.linktype, data, wirelen))
            if key is not None:
                flows.add(key)
        self.flows = len(flows)
        times = [f[2] for f in self.frames if f[2] is not None]
        span = max(times) - min(times) if times else 0
        # one pass later, the capture starts again one mean gap after its last frame
        self.period = span + (span // (len(times) - 1) if len(times) > 1 and span else 1_000_000)


class LoopedSource:
    """runtime/ports.py Source over a LoopedCapture: its frames again and again, each pass shifted
    in time by one capture period (so capture times keep increasing and timeouts behave as in a
    longer capture), until `duration` wall seconds have passed since the first receive, or
    `inputs` frames were handed out."""

    name = "looped capture"

    def __init__(self, capture: LoopedCapture, duration: float | None = None, inputs: int | None = None):
        self.capture, self.linktype = capture, capture.linktype
        self.duration, self.inputs = duration, inputs
        self.handed = self.passes = self.at = 0
        self.started: float | None = None   # perf_counter of the first receive

    def receive(self, max_frames: int) -> list:
        if self.started is None:
            self.started = time.perf_counter()
        if self.duration is not None and time.perf_counter() - self.started >= self.duration:
            return []
        if self.inputs is not None:
            max_frames = min(max_frames, self.inputs - self.handed)
        frames, all_frames = [], self.capture.frames
        shift = self.passes * self.capture.period
        while len(frames) < max_frames:
            data, wirelen, t, side = all_frames[self.at]
            frames.append((data, wirelen, None if t is None else t + shift, side))
            self.at += 1
            if self.at == len(all_frames):
                self.at, self.passes = 0, self.passes + 1
                shift = self.passes * self.capture.period
        self.handed += len(frames)
        return frames

    def progress(self) -> tuple[int, int | None]:
        """(done, total): milliseconds of the duration, or inputs handed out."""
        if self.duration is not None:
            elapsed = 0.0 if self.started is None else time.perf_counter() - self.started
            return int(min(elapsed, self.duration) * 1000), int(self.duration * 1000)
        return self.handed, self.inputs

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


# -- the measured driver ----------------------------------------------------------------------------------
def process_cpu(pid: int | None) -> float:
    """CPU time (user + system, s) of a live process from /proc; 0 if unknown or gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def measured_driver_class():
    from .runtime.failover import FailoverDriver

    class MeasuredDriver(FailoverDriver):
        """FailoverDriver that also measures, between start-up and stop, the CPU time of the store
        server it started (stateless.*: the private redis-server) and when the run's last output
        was in (its stop begins)."""

        store_pid = None
        store_cpu = 0.0
        stopped_at = None

        def start(self) -> None:
            super().start()
            server = getattr(self.stop_backend, "__self__", None)  # StoreBackend.serve's stop: RedisServer.stop
            self.store_pid = getattr(server, "pid", None)
            self._store_cpu0 = process_cpu(self.store_pid)

        def stop(self) -> None:
            self.stopped_at = time.perf_counter()
            if self.store_pid is not None:
                self.store_cpu = max(0.0, process_cpu(self.store_pid) - self._store_cpu0)
            super().stop()

    return MeasuredDriver


class Bench:
    """One benchmark: the chain, the capture, the settings. `rows(strategies, rounds)` measures
    every strategy's throughput `rounds` times (round-robin, so each round's none is measured
    beside the others), then its failover once, and returns one row (CSV_COLUMNS) per strategy."""

    def __init__(self, chain_text: str, params: list, capture: LoopedCapture, seed: int, duration: float,
                 fail_instance: str, fail_at: int, heartbeat_ms: float, progress, window: int | None = None,
                 read_cache: bool = False):
        from .runtime.ports import capture_inside
        self.chain_text, self.params, self.capture, self.seed = chain_text, params, capture, seed
        self.duration, self.fail_instance, self.fail_at, self.heartbeat_ms = duration, fail_instance, fail_at, heartbeat_ms
        self.inside = capture_inside(capture.path)
        self.progress = progress
        self.window = window  # None: the largest default of the strategies (`rows`), the same for all of them
        self.read_cache = read_cache
        self.Driver = measured_driver_class()

    def driver(self, strategy, failures, progress):
        from .runtime.failover import FailoverSettings
        backend = {"read_cache": True} if self.read_cache and strategy.name in READ_CACHE else {}
        settings = FailoverSettings(None if strategy.name == "none" else strategy, failures=failures,
                                    heartbeat_ms=self.heartbeat_ms, window=self.window, backend=backend)
        return self.Driver(build_chain(self.chain_text, self.params), self.chain_text, self.params, self.seed,
                           settings, self.capture.linktype, self.inside, None, "pcap", 32, progress)

    def throughput(self, strategy, label: str) -> dict:
        """One throughput run: the capture looped for `duration` seconds, no failure."""
        source = LoopedSource(self.capture, duration=self.duration)
        driver = self.driver(strategy, [], self.progress.phase(label))
        stats = guarded(driver, source, self.duration + HANG_SECONDS)
        cpu = stats.process_seconds + driver.store_cpu
        wall = driver.stopped_at - source.started
        return {"packets": stats.packets_in, "cpu_seconds": cpu, "store_cpu_seconds": driver.store_cpu,
                "wall_seconds": wall, "pps": stats.packets_in / cpu if cpu else None,
                "wall_pps": stats.packets_in / wall if wall else None,
                "p50_us": _us(stats.latency_ns.get("p50")), "p99_us": _us(stats.latency_ns.get("p99")),
                "unplanned_failovers": len(driver.failovers)}

    def failover(self, strategy) -> dict:
        """One failover run: the capture looped up to fail_at + FAIL_TAIL inputs, one planned kill."""
        from .runtime.failover import PlannedFailure
        source = LoopedSource(self.capture, inputs=self.fail_at + FAIL_TAIL)
        driver = self.driver(strategy, [PlannedFailure(self.fail_instance, self.fail_at)],
                             self.progress.phase(f"{strategy}: failover"))
        guarded(driver, source, HANG_SECONDS)
        planned = [f for f in driver.failovers if f["cause"].startswith("before input")]  # the kill's cause
        if not planned or planned[0]["detection_ns"] is None:
            return {"error": f"the failure {self.fail_instance}@{self.fail_at} was never reached: no input >= "
                             f"{self.fail_at} came to {self.fail_instance} within {self.fail_at + FAIL_TAIL} inputs"}
        f = planned[0]
        return {"detection_ms": f["detection_ns"] / 1e6, "takeover_ms": f["takeover_ns"] / 1e6,
                "failover_ms": (f["detection_ns"] + f["takeover_ns"]) / 1e6, "detected_by": f["detected_by"]}

    def in_process(self) -> dict:
        """For reference, not a row: `none` as `nfproof run` runs it without --strategy (in this
        process, the fast path when built): inputs over the CPU time of the whole loop."""
        from .runtime.executor import make_pipeline, run as run_chain
        chain = build_chain(self.chain_text, self.params)
        pipeline, implementation = make_pipeline(chain, self.seed, self.capture.linktype, self.inside)
        source = LoopedSource(self.capture, duration=self.duration)
        cpu0 = time.process_time()
        stats = run_chain(chain, source, pipeline, None, 32, "pcap", self.progress.phase("none in process (reference)"),
                          implementation=implementation, inside=self.inside)
        cpu = time.process_time() - cpu0
        return {"implementation": implementation, "packets": stats.packets_in,
                "pps": stats.packets_in / cpu if cpu else None, "cpu_seconds": cpu}

    def rows(self, strategies: list, rounds: int) -> list[dict]:
        if self.window is None:  # one window for every strategy, none included: the ratios compare strategies only
            from .runtime.failover import default_window
            self.window = max(default_window(None if s.name == "none" else s) for s in strategies)
        runs: dict = {s: [] for s in strategies}
        errors: dict = {}
        for k in range(rounds):
            for s in strategies:
                if s not in errors:
                    label = f"{s}: throughput" + (f" (round {k + 1}/{rounds})" if rounds > 1 else "")
                    result, error = attempt(self.throughput, s, label)
                    if result is None:  # its later rounds are skipped
                        errors[s] = f"throughput: {error}"
                    else:
                        runs[s].append(result)
        rows = []
        none = runs[strategies[0]]  # parse_strategies puts none first
        for s in strategies:
            row = dict.fromkeys(CSV_COLUMNS)
            row.update(chain=self.chain_text, strategy=str(s), rounds=len(runs[s]),
                       fail_at=f"{self.fail_instance}@{self.fail_at}")
            if runs[s]:
                for column in THROUGHPUT:
                    row[column] = median([r[column] for r in runs[s]])
                row["packets"] = int(row["packets"])
                row["unplanned_failovers"] = sum(r["unplanned_failovers"] for r in runs[s])
                row["mpps"] = row["pps"] / 1e6 if row["pps"] else None
                measured = [r["pps"] for r in runs[s] if r["pps"] is not None]
                row["pps_min"], row["pps_max"] = (min(measured), max(measured)) if measured else (None, None)
                if len(none) == rounds == len(runs[s]):  # each round's figure over that round's none
                    for ratio, column in RATIOS:
                        row[ratio] = median([_ratio(r[column], b[column]) for r, b in zip(runs[s], none)])
            result, error = attempt(self.failover, s)
            row.update(result or {})
            failover_error = row.get("error") or error
            row["error"] = "; ".join(e for e in (errors.get(s), failover_error and f"failover: {failover_error}")
                                     if e) or None
            rows.append(row)
        if rows[0]["failover_ms"]:
            for row in rows:
                row["failover_ratio"] = _ratio(row["failover_ms"], rows[0]["failover_ms"])
        return rows


THROUGHPUT = ("packets", "cpu_seconds", "store_cpu_seconds", "wall_seconds", "pps", "wall_pps", "p50_us", "p99_us")
RATIOS = (("pps_ratio", "pps"), ("wall_pps_ratio", "wall_pps"), ("p50_ratio", "p50_us"), ("p99_ratio", "p99_us"))


class RunHung(Exception):
    """A run went on far past its time (a runtime bug); it was stopped."""


def guarded(driver, source, seconds: float):
    """driver.run(source), stopped with RunHung if it has not returned after `seconds` (SIGALRM;
    only in the main thread, elsewhere unguarded). The driver stops its processes as it unwinds."""
    if threading.current_thread() is not threading.main_thread():
        return driver.run(source)

    def fire(signum, frame):
        raise RunHung(f"the run did not end within {seconds:g} s (in flight: {driver.in_flight} inputs, "
                      f"{len(driver.failovers)} failovers so far): stopped; a bug in the runtime")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return driver.run(source)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def attempt(measure, *args) -> tuple[dict | None, str | None]:
    """(measure(*args), None), or (None, why) when the run failed: this strategy's row says so and
    the others still run."""
    from .models.api import ModelError
    from .runtime.failover import RunFailed
    from .runtime.store import StoreError
    try:
        return measure(*args), None
    except RunFailed as e:
        return None, f"the run stopped: {e}"
    except RunHung as e:
        return None, str(e)
    except (ModelError, StoreError, OSError) as e:  # a store that cannot start, a model error
        return None, f"{type(e).__name__}: {e}"


def median(values: list):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _ratio(a, b):
    return a / b if a is not None and b else None


def _us(ns) -> float | None:
    return None if ns is None else ns / 1000


# -- progress -------------------------------------------------------------------------------------------
class ProgressBar:
    """A bar on stderr over every phase of the benchmark (per strategy: a throughput run per round
    and a failover run), redrawn at most a few times a second."""

    WIDTH = 30

    def __init__(self, phases: int, stream=None):
        self.phases, self.stream = phases, stream or sys.stderr
        self.done = -1
        self.label = ""
        self.shown_at = 0.0

    def phase(self, label: str):
        """The next phase; returns the executor-style callback progress(packets, done, total)."""
        self.done += 1
        self.label = label
        self.draw(0, 0, None, force=True)
        return self.draw

    def draw(self, packets: int, done: int, total: int | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown_at < 0.2:
            return
        self.shown_at = now
        share = min(1.0, done / total) if total else 0.0
        overall = (self.done + share) / self.phases
        filled = int(round(overall * self.WIDTH))
        print(f"\r\033[K[{'#' * filled}{'.' * (self.WIDTH - filled)}] {overall:4.0%}  "
              f"{self.done + 1}/{self.phases} {self.label}  {packets:,} packets",
              end="", file=self.stream, flush=True)

    def clear(self) -> None:
        print("\r\033[K", end="", file=self.stream, flush=True)


# -- the command ------------------------------------------------------------------------------------------
def parse_strategies(text: str) -> list:
    from .models.strategy import Strategy, StrategyError
    out = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        try:
            strategy = Strategy.parse(word)
        except StrategyError as e:
            raise UsageError(f"--strategies: {e}") from None
        if strategy not in out:
            out.append(strategy)
    if not out:
        raise UsageError("--strategies is empty: name at least one, e.g. --strategies none,stateful.sync")
    none = Strategy.parse("none")
    return [none] + [s for s in out if s != none]


def parse_fail_at(text: str, chain) -> tuple[str, int]:
    from .cmd_run import parse_failure
    if "@" in text:
        return parse_failure(text, chain)
    if not re.fullmatch(r"\s*[0-9]+\s*", text):
        raise UsageError(f"--fail-at {text!r}: write PKT or NF@PKT, e.g. 200 or nat@200")
    return next(iter(chain.members)), int(text)


def default_capture() -> str:
    """tests/data/E02_http_49flows.pcap of this source tree, else of the current directory."""
    here = Path(__file__).resolve().parents[1] / DEFAULT_CAPTURE
    return str(here) if here.exists() else DEFAULT_CAPTURE


def file_safe(chain_text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", chain_text)


def writable(path: str, flag: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: {folder} is not a writable folder; name a file in one")


def run(args) -> int:
    chain = build_chain(args.chain, args.param)
    strategies = parse_strategies(args.strategies)
    fail_instance, fail_at = parse_fail_at(args.fail_at, chain)
    pcap = args.pcap or default_capture()
    if not os.path.exists(pcap):
        raise UsageError(f"--pcap {pcap}: no such file; give a pcap or pcapng capture")
    csv_path = args.csv or f"bench-{file_safe(args.chain)}.csv"
    plot_path = args.plot or f"bench-{file_safe(args.chain)}.png"
    if not plot_path.lower().endswith(".png"):
        raise UsageError(f"--plot {plot_path}: the plot is a PNG; name a file ending in .png")
    writable(csv_path, "--csv")
    writable(plot_path, "--plot")
    capture = LoopedCapture(pcap)
    load_before = os.getloadavg()[0]

    progress = ProgressBar((args.rounds + 1) * len(strategies) + 1)
    bench = Bench(args.chain, args.param, capture, args.seed, args.duration, fail_instance, fail_at,
                  args.heartbeat_ms, progress, args.window, args.read_cache)
    try:
        rows = bench.rows(strategies, args.rounds)
        reference = bench.in_process()
    finally:
        progress.clear()
    write_csv(csv_path, rows)
    plot(plot_path, rows, args.chain)
    result = {"chain": args.chain, "input": pcap, "frames": len(capture.frames), "flows": capture.flows,
              "duration": args.duration, "rounds": args.rounds, "seed": args.seed, "params": list(args.param),
              "fail_at": f"{fail_instance}@{fail_at}", "heartbeat_ms": args.heartbeat_ms,
              "window": bench.window if len(chain.members) == 1 else 1, "read_cache": args.read_cache,
              "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "rows": rows, "in_process": reference, "csv": csv_path, "plot": plot_path}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"nfproof bench: {r['strategy']}: {r['error']}", file=sys.stderr)
    return USAGE if failed else OK


def machine() -> str:
    import platform
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_csv(path: str, rows: list[dict]) -> None:
    try:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_COLUMNS)
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(v) for k, v in row.items()})
    except OSError as e:
        raise UsageError(f"cannot write --csv {path}: {e.strerror or e}") from None


def _csv_value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def plot(path: str, rows: list[dict], chain_text: str) -> None:
    """Two panels, one above the other: the ratios to none (throughput, p50, p99) and the failover
    times (detection + takeover, stacked) per strategy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["strategy"] for r in rows]
    xs = range(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.8 * len(rows) + 3), 9))
    width = 0.27
    for k, (column, label) in enumerate((("pps_ratio", "throughput"), ("p50_ratio", "latency p50"),
                                         ("p99_ratio", "latency p99"))):
        top.bar([x + (k - 1) * width for x in xs], [_num(r[column]) for r in rows], width, label=label)
    top.axhline(1.0, color="black", linewidth=0.8)
    top.set_yscale("log")  # 0.1x throughput and 10x latency both readable
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    top.yaxis.set_major_locator(FixedLocator([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]))
    top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("ratio to none (same run, log scale)")
    top.set_title("throughput and latency relative to none")
    top.legend(fontsize=8)
    detection = [_num(r["detection_ms"]) for r in rows]
    takeover = [_num(r["takeover_ms"]) for r in rows]
    bottom.bar(xs, detection, 0.6, label="detection")
    bottom.bar(xs, takeover, 0.6, bottom=detection, label="takeover")
    bottom.set_ylabel("ms")
    bottom.set_title("failover time (detection + takeover, one injected failure)")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        for x, r in zip(xs, rows):
            if r["error"]:  # a failed run has no bar: say so where it would be
                ax.annotate("failed", (x, 0.5), xycoords=("data", "axes fraction"), ha="center", rotation=90,
                            color="red", fontsize=8)
    fig.suptitle(f"nfproof bench {chain_text}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UsageError(f"cannot write --plot {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def _num(v) -> float:
    return math.nan if v is None else v


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(r: dict) -> str:
    head = ("strategy", "packets", "Mpps", "pkt/s", "x none", "wall pkt/s", "x none", "p50 us", "x none",
            "p99 us", "x none", "detect ms", "takeover ms", "failover ms", "x none")
    table = [head]
    for row in r["rows"]:
        table.append((row["strategy"], _fmt(row["packets"], ","), _fmt(row["mpps"], ".4f"), _fmt(row["pps"], ",.0f"),
                      _fmt(row["pps_ratio"], ".2f"), _fmt(row["wall_pps"], ",.0f"), _fmt(row["wall_pps_ratio"], ".2f"),
                      _fmt(row["p50_us"], ",.0f"), _fmt(row["p50_ratio"], ".2f"), _fmt(row["p99_us"], ",.0f"),
                      _fmt(row["p99_ratio"], ".2f"), _fmt(row["detection_ms"], ".2f"), _fmt(row["takeover_ms"], ".2f"),
                      _fmt(row["failover_ms"], ".2f"), _fmt(row["failover_ratio"], ".2f")))
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = [f"nfproof bench {r['chain']} on {r['input']} ({r['frames']:,} frames, {r['flows']:,} flows, looped "
             f"{r['duration']:g} s per strategy"
             + (f", {r['rounds']} rounds: medians" if r["rounds"] > 1 else "") + f"), seed {r['seed']}"
             + (f", {' '.join('--param ' + p for p in r['params'])}" if r["params"] else "")
             + f"; failure {r['fail_at']}, heartbeat {r['heartbeat_ms']:g} ms"
             + (f", {r['window']} inputs in flight" if "window" in r else "")
             + ("; stateless async/batch/commit read from a local cache (--read-cache)" if r.get("read_cache") else ""),
             f"machine: {r['machine']}; {r['date']}; load average {r['load_average'][0]:g} before, "
             f"{r['load_average'][1]:g} after"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
              for line in table]
    lines.append("Mpps, pkt/s: inputs over the CPU time of every process (driver, workers, redis-server); wall pkt/s: "
                 "over the wall time; latency per chain input; x none: ratio to none's figure in this run")
    ref, base = r["in_process"], r["rows"][0]
    lines.append(f"for reference, none in this process as `nfproof run` runs it without --strategy ({ref['implementation']} "
                 f"path): {ref['packets']:,} packets, {_fmt(ref['pps'], ',.0f')} pkt/s of CPU"
                 + (f", {ref['pps'] / base['pps']:,.0f}x the worker processes' none" if ref["pps"] and base["pps"] else ""))
    for row in r["rows"]:
        if row["unplanned_failovers"]:
            lines.append(f"note: {row['strategy']}: {row['unplanned_failovers']} failover(s) nobody planned during its "
                         f"throughput run (a worker taken for failed, e.g. missed heartbeats)")
        if row["error"]:
            lines.append(f"error: {row['strategy']}: {row['error']}")
    lines.append(f"csv: {r['csv']}")
    lines.append(f"plot: {r['plot']}")
    return "\n".join(lines)
