"""`nfproof run CHAIN --pcap FILE [-o TRACE.pcapng]`: run a chain on a capture with the reference
runtime, record the run as a trace, and report counts, drops, throughput and latency."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from .cmd_verify import configured, duration, positive_float, positive_int
from .errors import OK, UsageError
from .models import NFS, lookup
from .models.api import ParamError, validate
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
          f"pipeline; {LATENCY}. With --strategy other than none, or with --fail, every instance runs as a worker "
          "process (its primary; under stateful.* a standby process joined to it by TCP), failures are SIGKILLs, "
          "and the trace records failures, failovers, protected points and logged choices; throughput then counts "
          "the CPU time of every process. "
          "exit codes: 0 ok, 2 usage or input error (the trace written so far is closed and readable)")
STORE_FAILURES = ("store", "store-failover", "store-kill")  # --fail targets that are the stateless store
STRATEGY_FORMS = ("none", "stateful.checkpoint:N", "stateful.async", "stateful.sync", "stateful.commit:B",
                  "stateless.sync", "stateless.async", "stateless.batch:B", "stateless.cache", "stateless.commit:B")


def non_negative_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) >= 1 << 64:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2^64-1, got {text!r}")
    return int(text)


def flows_count(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) > FLOWS_MAX:
        raise argparse.ArgumentTypeError(f"must be a number of connections from 0 to {FLOWS_MAX}, got {text!r}")
    return int(text)


# Written out so that building the parser imports no runtime (numpy): every command builds it.
# tests/test_cli_run.py holds them to runtime.executor.CLOCKS and runtime.frames.DEFAULT_INSIDE_TEXT.
CLOCKS = ("pcap", "wall")
FLOWS_MAX = 1 << 24
DEFAULT_INSIDE_TEXT = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def add_parser(sub):
    p = sub.add_parser("run", help="run a chain on a capture and record the run as a trace",
                       description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("chain", metavar="CHAIN",
                   help=f"an NF ({', '.join(sorted(NFS))}, or a user model path/to/mynf.py:Class) or a chain of "
                        "them, e.g. 'firewall>nat>lb'")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pcap", metavar="FILE", help="the input: a pcap or pcapng capture")
    source.add_argument("--iface", action="append", metavar="SIDE=IF",
                        help="the input: live interfaces, inside=IF and outside=IF (AF_PACKET raw sockets: Linux, "
                             "root or CAP_NET_RAW); a frame's side is its interface's, the outputs leave on the "
                             "interface of their side; ends at --count, --duration, --idle or Ctrl-C")
    p.add_argument("--count", type=positive_int, metavar="N", help="with --iface: stop after N input frames")
    p.add_argument("--duration", type=positive_float, metavar="S", help="with --iface: stop after S seconds")
    p.add_argument("--idle", type=positive_float, metavar="S",
                   help="with --iface: stop once no frame arrived for S seconds")
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
    p.add_argument("--flows", type=flows_count, default=0, metavar="N",
                   help="size the flow tables for N connections at start, their memory taken then (as a DPDK NF "
                        "sizes its tables), so that packets do not pay for the tables' growth; they still grow "
                        "past N. Memory: 64-256 bytes per connection for each NF's table and twice that for the "
                        "flow cache (firewall>nat>lb: 840 bytes at 50k connections, 340 at 1M) "
                        "(default 0: start small and grow)")
    p.add_argument("--generic", action="store_true",
                   help="run every NF's own model code (runtime/generic.py) instead of the bundled fast path: "
                        "compiled to C from the model's source where it can be (models/compile.py), else interpreted")
    p.add_argument("--interpret", action="store_true",
                   help="with --generic (or a user model): interpret the models' handlers (models/concrete.py), do "
                        "not compile them")
    f = p.add_argument_group("failover (issue 8: the strategies and switches of `nfproof verify`, run for real)")
    f.add_argument("--strategy", default="none", metavar="S",
                   help=f"state management: {', '.join(STRATEGY_FORMS)} (default none: in process, unless --fail)")
    f.add_argument("--log-choices", action="store_true",
                   help="the primary logs each input's choices and clock reads to the standby (acknowledged) before "
                        "releasing its outputs; a promoted standby reuses them for replayed inputs")
    f.add_argument("--no-replay-input", action="store_true",
                   help="after a failover the upstream replays nothing: inputs the protected state does not cover are lost")
    f.add_argument("--no-dedup", action="store_true", help="let duplicate outputs out after a failover")
    f.add_argument("--fail", action="append", default=[], metavar="NF@PKT",
                   help="SIGKILL instance NF's primary when it is about to be handed input PKT, the outputs before it "
                        "released unless the strategy holds them for protection (0-based, as the "
                        "trace numbers inputs), e.g. nat@200 (repeatable); store@PKT: restart a stateless strategy's "
                        "private redis-server without persistence before input PKT (its state is lost); "
                        "store-failover@PKT: kill it there and promote its replica, cut off 16 inputs earlier; "
                        "store-kill@PKT: kill it for good (the run stops with the store's error)")
    f.add_argument("--schedule", metavar="FILE",
                   help="force one failover timeline: the schedule.json of `nfproof verify --reproduce DIR` (its "
                        "choices, crash point, protected point and clock; its strategy, --param, --log-choices, "
                        "--failover-time and --inside apply unless given the same)")
    f.add_argument("--fail-random", type=positive_int, metavar="K",
                   help="K failures at crash points drawn from --seed (instance and input)")
    f.add_argument("--heartbeat-ms", type=positive_float, default=1.0, metavar="MS",  # 50: HEARTBEAT_MISSES (tested)
                   help="primaries send a heartbeat every MS ms (default 1); silence for 50 periods, or a closed "
                        "socket, is a failure")
    f.add_argument("--async-flush-ms", type=positive_float, default=None, metavar="MS",
                   help="stateful.async, stateless.async: queued state changes are shipped at the latest MS ms after "
                        "the oldest was queued (default 1), or when 64 are waiting")
    f.add_argument("--failover-time", type=duration, default=None, metavar="F",
                   help="the failover's duration on the capture clock under --clock pcap, in seconds (ms/us accepted; "
                        "default 1 s): the replacement processes nothing before crash + F")
    f.add_argument("--standby", metavar="HOST:PORT", default="127.0.0.1:0",
                   help="where standby processes listen for their primary (default 127.0.0.1:0, any free port; "
                        "a fixed PORT: the n-th standby takes PORT+n-1)")
    f.add_argument("--redis", metavar="URL", help="stateless.*: keep the state in this Redis (redis://host:port/db) "
                                                  "instead of a private redis-server on a free loopback port")
    f.add_argument("--redis-cluster", metavar="HOST:PORT,...", help="stateless.*: keep the state in this Redis Cluster")
    f.add_argument("--read-cache", action="store_true",
                   help="stateless.async, .batch, .commit: read the state from the instance's own cache of what it "
                        "read and wrote (it is the single writer of its keys), not with a round trip to the store")
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
    for member in chain.members.values():  # a model error here, not from a worker process later
        validate(member.nf)
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


def failover_settings(args, chain: Chain):
    """The failover run the options ask for (runtime/failover.py FailoverSettings), or None for an
    in-process run (strategy none, no failure). UsageError for a bad option."""
    from .models.strategy import Strategy, StrategyError
    try:
        strategy = Strategy.parse(args.strategy)
    except StrategyError as e:
        raise UsageError(f"--strategy: {e}") from None
    protected = strategy.name != "none"
    if args.log_choices and not protected:
        raise UsageError("--log-choices needs a strategy that protects state (stateful.* or stateless.*): under "
                         "none there is no standby to log to")
    failures = [parse_failure(text, chain) for text in args.fail]
    if args.fail_random:
        failures += random_failures(args.fail_random, args.seed, chain, count_inputs(args.pcap))
    if not protected and not failures and not args.schedule:
        for flag, on in (("--no-replay-input", args.no_replay_input), ("--no-dedup", args.no_dedup)):
            if on:
                raise UsageError(f"{flag} changes what a failover does: give --fail or --fail-random (or a strategy)")
        return None
    from .runtime.failover import FailoverSettings, PlannedFailure, parse_address
    try:
        standby = parse_address(args.standby)
    except ValueError as e:
        raise UsageError(f"--standby: {e}") from None
    failover_ns = int((args.failover_time if args.failover_time is not None else 1) * 1_000_000_000)
    store = {k: v for k, v in (("redis", args.redis), ("redis_cluster", args.redis_cluster)) if v}
    store_failures = [name for name, _ in failures if name in STORE_FAILURES]
    if store_failures and (not strategy.name.startswith("stateless.") or store):
        raise UsageError(f"--fail {store_failures[0]}@PKT fails the private redis-server of a stateless strategy "
                         f"(stateless.*, without --redis or --redis-cluster: fail a server of your own yourself)")
    if "store-failover" in store_failures:
        store["replica"] = True  # the private server gets a replica to fail over to
    if args.read_cache:
        if strategy.name not in READ_CACHE:
            raise UsageError(f"--read-cache is for {', '.join(READ_CACHE[:-1])} and {READ_CACHE[-1]}, not {strategy}")
        store["read_cache"] = True
    if store and not strategy.name.startswith("stateless."):
        raise UsageError(f"--{next(iter(store)).replace('_', '-')} is for the stateless strategies (stateless.*), "
                         f"not {strategy}")
    return FailoverSettings(strategy if protected else None, args.log_choices, not args.no_replay_input,
                            not args.no_dedup, [PlannedFailure(name, seq) for name, seq in sorted(failures, key=lambda f: f[1])],
                            args.heartbeat_ms, failover_ns, standby, store, args.schedule,
                            async_flush_ms=args.async_flush_ms)


def apply_schedule(args, parser_defaults: dict) -> None:
    """--schedule FILE: loads it into args.schedule and takes its settings for the options not
    given; one given differently is a UsageError (the run would not be the schedule's)."""
    from .runtime.schedule import ScheduleError, load
    try:
        schedule = load(args.schedule)
    except ScheduleError as e:
        raise UsageError(str(e)) from None
    if " ".join(args.chain.split()) != " ".join(schedule.chain.split()):
        raise UsageError(f"--schedule {args.schedule} is for the chain {schedule.chain!r}, not {args.chain!r}")
    if args.fail or args.fail_random:
        raise UsageError("--schedule sets the crash itself: drop --fail and --fail-random")
    inputs = count_inputs(args.pcap)
    if schedule.crash["applied"] > inputs:
        raise UsageError(f"--schedule {args.schedule}: its crash comes after input {schedule.crash['applied']}, but "
                         f"{args.pcap} has {inputs}: is this the schedule's capture?")
    wanted = {"strategy": schedule.strategy, "log_choices": schedule.log_choices, "param": schedule.params,
              "failover_time": schedule.failover_time, "inside": ",".join(schedule.inside) or parser_defaults["inside"]}
    for key, value in wanted.items():
        given = getattr(args, key)
        if given != parser_defaults[key] and given != value and not (key == "param" and sorted(given) == sorted(value)):
            raise UsageError(f"--{key.replace('_', '-')} {given!r} differs from the schedule's {value!r} "
                             f"({args.schedule}); leave it out")
        setattr(args, key, value)
    args.schedule = schedule


def parse_failure(text: str, chain: Chain) -> tuple[str, int]:
    """NF@PKT -> (instance name, input seq); NF is an instance name or the NF of exactly one."""
    name, sep, pkt = text.rpartition("@")
    if not sep or not name or not re.fullmatch(r"[0-9]+", pkt.strip()):
        raise UsageError(f"--fail {text!r}: write NF@PKT, e.g. nat@200 (kill nat before it handles input 200)")
    name = name.strip()
    if name in STORE_FAILURES and name not in chain.members:
        return name, int(pkt)
    if name not in chain.members:
        by_nf = [m for m, member in chain.members.items() if member.nf.name == name]
        if len(by_nf) != 1:
            raise UsageError(f"--fail {text!r}: the chain has no instance {name!r}; its instances: "
                             f"{', '.join(chain.members)}")
        name = by_nf[0]
    return name, int(pkt)


def random_failures(k: int, seed: int, chain: Chain, inputs: int) -> list[tuple[str, int]]:
    """K crash points drawn from the seed: an instance and an input in 1..inputs-1 each (distinct
    inputs, so each failover is over before the next failure)."""
    import random
    if inputs < 2:
        return []
    rng = random.Random(f"nfproof-fail:{seed}")
    seqs = sorted(rng.sample(range(1, inputs), min(k, inputs - 1)))
    names = list(chain.members)
    return [(rng.choice(names), s) for s in seqs]


READ_CACHE = ("stateless.async", "stateless.batch", "stateless.commit")  # --read-cache applies to these


def live_interfaces(args) -> dict[str, str]:
    """--iface inside=IF --iface outside=IF as {side: interface}; {} for a capture run."""
    if not args.iface:
        for flag in ("count", "duration", "idle"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag} applies to live interfaces (--iface); a capture ends with its file")
        return {}
    out: dict[str, str] = {}
    for item in args.iface:
        side, sep, name = item.partition("=")
        if not sep or side not in ("inside", "outside") or not name or side in out:
            raise UsageError(f"--iface {item}: give inside=IF and outside=IF once each, e.g. --iface inside=eth1 "
                             f"--iface outside=eth2")
        out[side] = name
    if set(out) != {"inside", "outside"}:
        raise UsageError(f"--iface: the {'inside' if 'inside' not in out else 'outside'} interface is missing; give "
                         f"--iface inside=IF --iface outside=IF")
    if args.fail_random or args.schedule:
        raise UsageError("--iface: --fail-random and --schedule need a capture (--pcap): they are planned on its "
                         "inputs; use --fail NF@PKT")
    if args.count is None and args.duration is None and args.idle is None:
        print(f"nfproof run: reading {','.join(args.iface)} until Ctrl-C", file=sys.stderr)
    return out


def count_inputs(path: str) -> int:
    from .runtime.ports import CaptureSource
    n = 0
    try:
        with CaptureSource(path) as source:
            while True:
                frames = source.receive(4096)
                if not frames:
                    return n
                n += len(frames)
    except FormatError:
        return n


def run(args) -> int:
    from .runtime.executor import make_pipeline, run as run_chain
    from .runtime.frames import DEFAULT_INSIDE, parse_inside
    from .runtime.ports import CaptureSource, capture_inside
    from .runtime.recorder import Recorder

    interfaces = live_interfaces(args)
    if args.schedule:
        apply_schedule(args, {"strategy": "none", "log_choices": False, "param": [], "failover_time": None,
                              "inside": "auto"})
    auto_inside = args.inside.strip() == "auto"
    if not auto_inside:
        try:
            inside = parse_inside(args.inside)
        except ValueError as e:
            raise UsageError(str(e)) from None
    chain = build_chain(args.chain, args.param)
    if args.output and args.pcap and os.path.exists(args.output) and os.path.exists(args.pcap) \
            and os.path.samefile(args.output, args.pcap):
        raise UsageError(f"-o {args.output} is the input capture; name another file for the trace")
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"cannot write the trace {args.output}: {folder} is not a writable folder")
    sinks = []
    if interfaces:
        from .runtime.ports import InterfaceError, InterfaceSink, InterfaceSource
        try:
            source = InterfaceSource(interfaces, args.count, args.duration, args.idle)
        except InterfaceError as e:
            raise UsageError(str(e)) from None
        try:
            sinks.append(InterfaceSink(interfaces))
        except InterfaceError as e:
            source.close()
            raise UsageError(str(e)) from None
    else:
        try:
            source = CaptureSource(args.pcap)
        except FormatError as e:
            raise UsageError(str(e)) from None
    settings = failover_settings(args, chain)
    if auto_inside:
        inside = capture_inside(args.pcap) if args.pcap else DEFAULT_INSIDE
    cpu0 = time.process_time()
    failovers, pids = None, None
    with source:
        if settings is None:
            pipeline, implementation = make_pipeline(chain, args.seed, source.linktype, inside, args.generic,
                                                     compile=not args.interpret, flows=args.flows)
            if getattr(pipeline, "not_compiled", None):
                print(f"note: the models run interpreted: {pipeline.not_compiled}", file=sys.stderr)
        else:
            implementation = "generic"  # the workers run every model's own code (models/concrete.py)
        recorder = None
        if args.output:
            fields = {"params": list(args.param), "seed": args.seed, "inside": [str(n) for n in inside],
                      "clock": args.clock, "batch": args.batch, "implementation": implementation,
                      "input": os.path.basename(args.pcap) if args.pcap else f"interfaces {source.name}"}
            if settings is not None:
                fields.update(processes=True, fail=[str(f) for f in settings.failures],
                              failover_time=settings.failover_ns / 1e9, heartbeat_ms=settings.heartbeat_ms,
                              standby=args.standby, log_choices=settings.log_choices,
                              replay_input=settings.replay_input, dedup=settings.dedup)
                if settings.schedule is not None:
                    fields.update(schedule=os.path.basename(settings.schedule.path))
                    if settings.schedule.max_stall is not None:
                        fields.update(max_stall=settings.schedule.max_stall)
            try:
                recorder = Recorder(args.output, args.chain, fields, settings.text() if settings else "none")
            except OSError as e:
                raise UsageError(f"cannot write the trace {args.output}: {e.strerror or e}") from None
        progress = Progress() if args.progress or sys.stderr.isatty() else None
        try:
            if settings is None:
                stats = run_chain(chain, source, pipeline, recorder, args.batch, args.clock,
                                  progress, implementation=implementation, inside=inside, sinks=sinks)
            else:
                from .runtime.failover import FailoverDriver, RunFailed
                from .runtime.store import StoreError
                try:
                    driver = FailoverDriver(chain, args.chain, args.param, args.seed, settings, source.linktype,
                                            inside, recorder, args.clock, args.batch, progress, sinks)
                    stats = driver.run(source)
                except RunFailed as e:
                    raise UsageError(f"the run stopped: {e}") from None
                except StoreError as e:  # no redis-server, a --redis that does not answer
                    raise UsageError(str(e)) from None
                failovers, pids, store_failures = driver.failovers, driver.pids(), driver.store_failures
                in_flight = driver.window
        except FormatError as e:
            kept = (f" (the trace {args.output} holds the {recorder.inputs} input{'' if recorder.inputs == 1 else 's'} "
                    f"before it)") if recorder else ""
            raise UsageError(f"{e}{kept}") from None
        finally:
            if progress is not None:
                progress.clear()
            for sink in sinks:
                sink.close()
    cpu = time.process_time() - cpu0
    if settings is not None and settings.schedule is not None \
            and not any(f["instance"] == settings.schedule.instance for f in failovers):
        raise UsageError(f"--schedule {settings.schedule.path}: its crash of {settings.schedule.instance} after input "
                         f"{settings.schedule.crash['applied']} was not reached (of {stats.packets_in} inputs, fewer "
                         f"reached {settings.schedule.instance}): is this the schedule's capture?")
    result = as_json(stats, args, cpu, inside, auto_inside)
    if settings is not None:
        result.update(strategy=settings.text(), processes=pids,
                      failures=[str(f) for f in settings.failures],
                      failures_not_reached=[str(f) for f in settings.failures if not f.done],
                      failovers=[{k: v for k, v in f.items() if not k.startswith("_")} for f in failovers],
                      store_failures=store_failures, in_flight=in_flight)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return OK


def as_json(stats, args, cpu_seconds: float, inside, auto_inside: bool) -> dict:
    return {"chain": args.chain, "input": args.pcap or "interfaces " + ",".join(args.iface), "implementation": stats.implementation, "seed": args.seed,
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
    if "strategy" in r:
        lines.append(f"strategy: {r['strategy']}; worker processes: {len(r['processes'])}; "
                     f"failures planned: {', '.join(r['failures']) or 'none'}"
                     + (f" (never reached: {', '.join(r['failures_not_reached'])})" if r["failures_not_reached"] else ""))
    for f in r.get("store_failures") or []:
        what = {"restart": "the redis-server restarted without persistence", "killed": "the redis-server was killed"}.get(
            f["kind"], f"the redis-server died; its replica, cut off {f.get('lag_inputs')} inputs earlier, was promoted")
        lines.append(f"store failure: {what} before input {f['before_seq']} (in {_us(f['took_ns'])})")
    for k, f in enumerate(r.get("failovers") or [], 1):
        lines.append(f"failover {k}: {f['instance']} {f['cause']}: detected in {_us(f['detection_ns'])} "
                     f"({f['detected_by']}), takeover {_us(f['takeover_ns'])}"
                     + ("" if f["spare_ready"] else " (no spare process was ready: one was started)")
                     + (f", new standby attached in {_us(f['attach_ns'])}" if f.get("attach_ns") is not None else "")
                     + f"; protected point input {f['replica_seq']}, {f['held']} held, {f['replayed']} replayed"
                     + (f", {f['outputs_lost']} protected inputs' outputs lost" if f.get("outputs_lost") else "")
                     + ("; the store had lost its state: it started afresh" if f.get("state_lost") else "")
                     + (f"; the store lost the updates of its last {f['store_behind']} acknowledged inputs"
                        if f.get("store_behind") else ""))
    lines.append(f"outputs sha256: {r['outputs_sha256']}")
    lines.append(f"trace: {r['trace']}" if r["trace"] else "trace: not recorded (give -o TRACE.pcapng)")
    return "\n".join(lines)
