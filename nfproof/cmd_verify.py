"""`nfproof verify CHAIN --strategy S --bound N`: a bounded failover proof or a counterexample."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import sys

from .models import NFS, lookup
from .models.api import ParamError
from .models.chain import instances
from .models.strategy import MUTATIONS, STRATEGY_FORMS, Strategy, StrategyError
from .errors import OK, UNKNOWN, VIOLATION, UsageError

EQUIVALENCES = ("strict", "per-flow", "loss-at-failover")  # verify/equivalence.py RELATIONS (tested)


def add_equivalence_options(p) -> None:
    """--equivalence and --allow-duplicates, the same for `nfproof verify` and `nfproof replay`."""
    p.add_argument("--equivalence", choices=EQUIVALENCES, default="strict",
                   help="strict: each egress sees exactly a failure-free sequence; per-flow: order within a flow "
                        "only; loss-at-failover: packets in flight at a crash may be missing (default strict)")
    p.add_argument("--allow-duplicates", action="store_true", help="an output repeated on an egress is not a violation")

ALL_STRATEGIES = ("none", "stateful.checkpoint:4", "stateful.async", "stateful.sync", "stateful.commit:4",
                  "stateless.sync", "stateless.async", "stateless.batch:4", "stateless.cache", "stateless.commit:4")


class Progress:
    """A progress line on stderr, on a terminal and without --json: `of(what)` is one check's
    progress(n, bound) callback, `clear()` erases the line after it."""

    def __init__(self, args):
        self.shown = sys.stderr.isatty() and not args.json
        self.width = shutil.get_terminal_size((100, 20)).columns - 1

    def of(self, what: str):
        def progress(n, bound):
            if self.shown:
                print(f"\r\033[K  {what}: every run of up to {n}/{bound} packets checked", end="", file=sys.stderr,
                      flush=True)
        return progress

    def side_by_side(self, done: int, running: dict) -> None:
        """Proofs running side by side (verify/jobs.py): label -> (n, bound) reached, or None."""
        if self.shown:
            now = " | ".join(f"{label}: {f'{at[0]}/{at[1]} packets checked' if at else 'started'}"
                             for label, at in running.items())
            print(f"\r\033[K  {done} done | {now}"[:self.width], end="", file=sys.stderr,
                  flush=True)

    def clear(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr)


def positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def configured(nf_cls, settings: list[str]):
    """nf_cls with the --param NF.NAME=VALUE settings applied (ParamError / UsageError if invalid);
    for a chain (a composite NF), to every member of that NF."""
    if settings and callable(getattr(nf_cls, "chain", None)):
        return _configured_chain(nf_cls, settings)
    values = {}
    for setting in settings:
        m = re.fullmatch(r"\s*([^=\s]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)", setting)
        if not m:
            raise UsageError(f"--param {setting!r}: write NF.NAME=VALUE, e.g. {nf_cls.name}.{next(iter(nf_cls.params()), 'name')}=VALUE")
        if m.group(1) != nf_cls.name:
            raise UsageError(f"--param {setting!r} names NF {m.group(1)!r}, but the NF verified is {nf_cls.name!r}")
        values[m.group(2)] = m.group(3).strip()
    return nf_cls.configure(values)


def _configured_chain(composite, settings: list[str]):
    from dataclasses import replace

    from .models import model_ref
    chain = composite.chain().copy()
    names = {m.nf.name for m in chain.members.values()}
    for setting in settings:
        nf_name = setting.partition("=")[0].strip().rpartition(".")[0]
        if nf_name not in names:
            raise UsageError(f"--param {setting!r} names NF {nf_name!r}, which is not in the chain "
                             f"(its NFs: {', '.join(sorted(names))}); write NF.NAME=VALUE")
    for name, member in list(chain.members.items()):
        mine = [s for s in settings if s.partition("=")[0].strip().rpartition(".")[0] == member.nf.name]
        chain.members[name] = replace(member, nf=configured(member.nf, mine))
    result = chain.as_nf()
    result.model_reference = ">".join(f"{name}={model_ref(m.nf)}" for name, m in chain.members.items())
    return result


def duration(text: str):
    """A command-line time: seconds, with `ms`/`us` suffixes accepted (converted to ticks per NF)."""
    from .models.api import parse_seconds
    try:
        return parse_seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def ticks(nf_cls, seconds, option: str) -> int | None:
    """A duration in the NF's clock ticks (`ticks_per_second`); a usage error if not a whole number."""
    if seconds is None:
        return None
    per_second = getattr(nf_cls, "ticks_per_second", 1)
    value = seconds * per_second
    if value.denominator != 1:
        raise UsageError(f"{option} {float(seconds):g} s is not a whole number of {nf_cls.name}'s clock ticks "
                         f"({per_second} per second); give a multiple of {1 / per_second:g} s")
    if value > (1 << 30) - 1:
        raise UsageError(f"{option} {float(seconds):g} s is {int(value)} ticks of {nf_cls.name}'s clock; at most "
                         f"{(1 << 30) - 1} ticks are supported")
    return int(value)


def add_parser(sub):
    p = sub.add_parser(
        "verify", help="prove failover equivalence or find a counterexample",
        description="Bounded proof that CHAIN under a state-management strategy keeps output equivalence "
                    "(strict by default) for every input sequence up to --bound packets, every crash point and every "
                    "nondeterministic choice; or a shortest counterexample.",
        epilog=f"strategies: {', '.join(STRATEGY_FORMS)}, or 'all' (all ten, as one table). "
               "exit codes: 0 proved, 1 counterexample, 2 usage error, 3 unknown (budget hit)")
    p.add_argument("chain", metavar="CHAIN",
                   help=f"an NF: a bundled name ({', '.join(sorted(NFS))}), or a user model "
                        "path/to/mynf.py:Class or package.module:Class; or a chain of them, e.g. 'firewall>nat>lb' "
                        "(verified as one failing unit and with each instance crashing alone)")
    p.add_argument("--param", action="append", default=[], metavar="NF.NAME=VALUE",
                   help="set a model parameter, e.g. nat.ports=64512 or firewall.timeout=500ms (repeatable)")
    p.add_argument("--strategy", default="all",
                   help="e.g. stateful.commit:4, or 'all' (default: all ten strategies, as one table); for a chain "
                        "also one per instance, INSTANCE=S with one S for the rest, e.g. stateful.sync,nat=none "
                        "(a counterexample with that instance crashing alone, else unknown: no proof yet)")
    p.add_argument("--bound", type=positive_int, default=8, help="input packets (default 8)")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per strategy (default 60)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="proofs run side by side in worker processes: a chain's as one unit and per instance, and "
                        "one per strategy (default: all cores)")
    p.add_argument("--failover-time", metavar="F", type=duration, default=None,
                   help="how long a failover takes, in seconds (ms/us suffixes accepted; default 1 s): the standby "
                        "processes nothing before crash + F (matters only for NFs that read the clock)")
    p.add_argument("--max-stall", metavar="S", type=duration, default=None,
                   help="the stall a failure-free run may have: input i may be processed up to S after it arrived "
                        "(default: the failover time)")
    p.add_argument("--log-choices", action="store_true",
                   help="the primary logs its choices before releasing; the standby reuses them")
    add_equivalence_options(p)
    p.add_argument("--no-replay-input", action="store_true",
                   help="the protocol as `nfproof run --no-replay-input` runs it: after a failover the upstream replays "
                        "nothing, so inputs the protected state does not cover are lost")
    p.add_argument("--no-dedup", action="store_true",
                   help="the protocol as `nfproof run --no-dedup` runs it: the egress lets duplicates out after a failover")
    p.add_argument("--unbounded", action="store_true",
                   help="after the bounded proof, prove it for every number of packets (induction), else unknown")
    p.add_argument("--mutation", choices=sorted(MUTATIONS), metavar="BUG",
                   help="inject a known protocol bug, to check the verdict turns into a counterexample: "
                        + "; ".join(f"{k}: {v}" for k, v in MUTATIONS.items()))
    p.add_argument("--property", metavar="NAME",
                   help="check a named property of the model's outputs (always, with its sometimes twin) instead of "
                        "output equivalence; 'all' for every property of the model")
    p.add_argument("--json", action="store_true", help="print the result as JSON (a list with --strategy all)")
    p.add_argument("--html", metavar="FILE", help="also write a counterexample as a self-contained HTML timeline")
    p.add_argument("--reproduce", metavar="DIR",
                   help="also write a counterexample as files the runtime replays: DIR/inputs.pcap (its packets as "
                        "frames), DIR/schedule.json (crash point, protected point, choices, clock) and DIR/README.md "
                        "(`nfproof run CHAIN --pcap DIR/inputs.pcap --schedule DIR/schedule.json -o t.pcapng`, then "
                        "`nfproof replay t.pcapng`); with --strategy all, one DIR/STRATEGY per counterexample")
    return p


def run(args) -> int:
    from .verify.chain_alone import combined_verdict, unproved_reason
    from .verify.report import as_json, error_line, html, reproduction, story

    try:
        nf_cls = configured(lookup(args.chain), args.param)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    except ParamError as e:
        raise UsageError(str(e)) from None
    assignment = per_instance(args.strategy, nf_cls)  # instance -> strategy text, or None
    texts = list(ALL_STRATEGIES) if args.strategy == "all" else \
        list(dict.fromkeys(assignment.values())) if assignment else [args.strategy]
    try:
        parsed = {t: Strategy.parse(t).switched(not args.no_replay_input, not args.no_dedup) for t in texts}
    except StrategyError as e:
        raise UsageError(str(e)) from None
    if args.mutation:
        parsed = {t: s.mutated(args.mutation) for t, s in parsed.items()}
    strategies = list(dict.fromkeys(parsed.values()))
    if assignment and len(strategies) == 1:  # the same strategy for every instance
        assignment = None
    from .verify.equivalence import Equivalence
    eq = Equivalence(args.equivalence, args.allow_duplicates)
    failover_time = ticks(nf_cls, args.failover_time, "--failover-time")
    max_stall = ticks(nf_cls, args.max_stall, "--max-stall")

    if args.html:
        folder = os.path.dirname(os.path.abspath(args.html))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"cannot write {args.html}: {folder} is not a writable folder")
    progress = Progress(args)
    if assignment:
        if args.property:
            raise UsageError("--property takes one strategy for the whole chain")
        return _run_per_instance(args, nf_cls, {i: parsed[t] for i, t in assignment.items()}, failover_time,
                                 max_stall, eq, progress)
    if args.property:
        if eq.relation != "strict" or eq.allow_duplicates or args.no_replay_input or args.no_dedup:
            raise UsageError("--property checks the model's own property over the default protocol: drop "
                             "--equivalence, --allow-duplicates, --no-replay-input and --no-dedup")
        return _run_properties(args, nf_cls, strategies)
    results, alone, alones = _prove(args, nf_cls, strategies, failover_time, max_stall, eq, progress)
    verdict = {id(r): combined_verdict(r, alones.get(id(r))) for r in results}

    failing = [r for r in results if r.counterexample]
    if args.html and failing:
        try:
            with open(args.html, "w") as f:
                found = alone[id(failing[0])]
                f.write(html(failing[0], found.story() if found else None))
        except OSError as e:
            raise UsageError(f"cannot write {args.html}: {e.strerror}") from None
    elif args.html:
        print(f"nfproof verify: no counterexample {'of the chain as one unit ' if alones else ''}"
              f"(whose inputs --html shows), {args.html} not written", file=sys.stderr)
    if args.reproduce:
        _reproduce(args, failing, len(results) > 1)
    if args.json:
        out = [as_json(r) for r in results]
        for data, r in zip(out, results):
            found = alone[id(r)]
            if found is not None:  # (null: no single-instance crash of these inputs shows it)
                data["instance_crash"] = {"instance": found.instance, "story": found.story()} if found else None
            if id(r) in alones:
                data["verdict"] = verdict[id(r)]
                data["instances"] = [a.as_json() for a in alones[id(r)]]
                hit = next((a for a in alones[id(r)] if a.crash), None)
                if hit:
                    data["instance_crash"] = {"instance": hit.instance, "story": hit.crash.story()}
                if verdict[id(r)] == "unknown":
                    data["reason"] = unproved_reason(alones[id(r)])
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    elif len(results) == 1:
        r = results[0]
        hit = next((a for a in alones.get(id(r), []) if a.crash), None)
        if hit:
            print(hit.error(f"{r.nf} under {r.strategy}", " (the chain failing as one unit: proved)"))
        elif verdict[id(r)] == "unknown" and r.verdict == "proved":
            print(f"unknown: {r.nf} under {r.strategy} at bound {r.bound}: proved failing as one unit; "
                  f"{unproved_reason(alones[id(r)])}")
        elif r.verdict == "counterexample":
            print(f"error: {error_line(r)}\n\n{story(r)}\n\nreproduce (Python):\n{reproduction(r)}")
            if alone[id(r)]:
                print(f"\nthe same inputs with one instance crashing alone (the others keep running):\n"
                      f"{alone[id(r)].story()}")
            elif alone[id(r)] is False:
                print(f"\nno run of these inputs in which one instance crashes alone (the others keep running) "
                      f"shows a violation: this one needs the instances to fail together")
        elif r.verdict == "proved":
            length = "of any length" if r.unbounded else f"of up to {r.bound} packets"
            unit = " (its instances failing as one unit, and any one of them crashing alone while the others keep " \
                   "running)" if id(r) in alones else ""
            print(f"proved: {r.nf}{unit} under {r.strategy} keeps {eq} output equivalence for every input sequence "
                  f"{length}, every crash point and every choice"
                  + (f", every arrival and crash time below 2^30 ticks" if r.stats.get("clock") else "") +
                  f" ({r.seconds:.2f} s); "
                  + (f"{r.stats['induction']}; " if r.unbounded else "") +
                  f"not vacuous: runs exist in which {' and '.join(r.stats['witnessed'])}")
            for gate in r.stats.get("unexercised_gates", []):
                print(f"note: no run of up to {r.bound} packets emits on gate {gate!r}, so the proof says nothing "
                      f"about its outputs; raise --bound to exercise it")
        else:
            print(f"unknown: {r.nf} under {r.strategy} at bound {r.bound}: {r.reason} ({r.seconds:.2f} s)")
    else:
        print(f"{'strategy':34} {'verdict':22} {'bound':>5} {'seconds':>8}  counterexample")
        for r in results:
            note = error_line(r) if r.counterexample else r.reason
            if alone[id(r)]:
                note += f" ({alone[id(r)].instance} crashing alone shows it too)"
            elif alone[id(r)] is False:
                note += " (only with the instances failing together)"
            hit = next((a for a in alones.get(id(r), []) if a.crash), None)
            if hit:
                note = f"{hit.instance} crashing alone ({len(hit.crash.inputs)} packets; as one unit: proved)"
            elif verdict[id(r)] == "unknown" and r.verdict == "proved":
                note = "as one unit: proved; " + unproved_reason(alones[id(r)])
            elif id(r) in alones:
                note = "as one unit and each instance alone"
            length = f"{len(r.counterexample.run.inputs)} packets: " if r.counterexample else ""
            shown = verdict[id(r)] + (" (any length)" if r.unbounded and verdict[id(r)] == "proved" else "")
            print(f"{r.strategy:34} {shown:22} {r.bound:>5} {r.seconds:>8.3f}  {length}{note}")
    verdicts = set(verdict.values())
    return VIOLATION if "counterexample" in verdicts else UNKNOWN if "unknown" in verdicts else OK


def _prove(args, nf_cls, strategies, failover_time, max_stall, eq, progress: Progress):
    """Each strategy's proof and, for a chain whose proof as one unit holds, each instance's
    crashing alone (verify/jobs.py runs them side by side). Returns the results, id(result) ->
    `_instance_crash`, and id(result) -> the instances' verdicts (chains whose unit is proved)."""
    from functools import partial

    from .verify import jobs
    from .verify.chain_alone import alone_checks

    units = [(f"{args.chain} {s}", partial(_unit, nf_cls, s, args, failover_time, max_stall, eq)) for s in strategies]
    members = instances(nf_cls)
    followers = [alone_checks(nf_cls, {m: s for m in members}, args.bound, args.timeout, args.log_choices,
                              failover_time, max_stall, eq) if members else [] for s in strategies]
    jobs.register_classes(nf_cls)
    results, alones = jobs.run(units, followers, args.jobs or jobs.default_jobs(), progress)
    progress.clear()
    alone = {id(r): a for r, a in zip(results, alones) if a is not None and members}
    return results, {id(r): _instance_crash(nf_cls, r) for r in results}, alone


def _unit(nf_cls, strategy, args, failover_time, max_stall, eq, progress=None):
    from .verify.failover import verify_failover
    from .verify.solver import Budget
    return verify_failover(nf_cls, strategy, args.bound, Budget(timeout=args.timeout), args.log_choices, progress,
                           args.unbounded, failover_time, max_stall, eq)


def _instance_crash(nf_cls, result):
    """For a chain's counterexample (its instances failing as one unit): the same inputs' first
    run in which one instance crashes alone and no failure-free execution explains the outputs
    (verify/chain_crash.py), False if there is none, None if not a chain's counterexample."""
    if result.counterexample is None or not instances(nf_cls) or result.counterexample.run.strategy.mutation:
        return None
    from .verify.chain_crash import SearchLimit, for_counterexample
    try:
        found = for_counterexample(result.counterexample)
    except SearchLimit:
        return None
    return found or False


def per_instance(text: str, nf_cls) -> dict[str, str] | None:
    """`--strategy INSTANCE=S,...` (a bare S: for the instances not named) as instance -> strategy
    text in chain order; None for one strategy for the whole chain."""
    if "=" not in text:
        if "," in text:
            raise UsageError(f"--strategy {text}: one strategy, or INSTANCE=STRATEGY per instance with one strategy "
                             f"for the rest, e.g. --strategy stateful.sync,nat=stateful.commit:4")
        return None
    members = instances(nf_cls)
    if not members:
        raise UsageError(f"--strategy {text}: one strategy per instance is for chains of NFs; give {nf_cls.name} one "
                         f"strategy, e.g. --strategy stateful.sync")
    named, rest = {}, None
    for item in text.split(","):
        name, is_named, strategy = item.partition("=")
        if not is_named:
            if rest is not None:
                raise UsageError(f"--strategy {text}: two strategies for the instances not named ({rest}, {item}); "
                                 f"write INSTANCE=STRATEGY for each instance")
            rest = item
        elif name not in members:
            raise UsageError(f"--strategy {text}: {name!r} is no instance of {nf_cls.name}; its instances: "
                             f"{', '.join(members)}")
        elif name in named:
            raise UsageError(f"--strategy {text}: {name} is given two strategies")
        else:
            named[name] = strategy
    missing = [m for m in members if m not in named]
    if missing and rest is None:
        raise UsageError(f"--strategy {text}: no strategy for {', '.join(missing)}; name every instance or add one "
                         f"strategy for the others, e.g. --strategy stateful.sync,{text}")
    return {m: named.get(m, rest) for m in members}


def _run_per_instance(args, nf_cls, assignment: dict, failover_time, max_stall, eq, progress: Progress) -> int:
    """One strategy per instance: only the crashing instance's strategy shapes a run in which one
    instance crashes alone (the others hold and release nothing across chain inputs:
    verify/chain_crash.py), so each instance is checked alone under its own strategy
    (verify/chain_alone.py): proved for every instance -> proved (exit 0); a run with one crashing
    alone that no failure-free execution explains -> counterexample (exit 1, searched near the
    counterexamples of the instance as an NF of its own and of the chain as one unit under its
    strategy); else unknown (exit 3)."""
    from functools import partial

    from .verify import jobs
    from .verify.chain_alone import alone_checks, unproved_reason
    from .verify.report import as_json, html

    workers = args.jobs or jobs.default_jobs()
    jobs.register_classes(nf_cls)
    # the chain as one unit under each strategy: its counterexample seeds the searches
    strategies = list(dict.fromkeys(assignment.values()))
    units, _ = jobs.run([(f"{nf_cls.name} {s}", partial(_unit, nf_cls, s, args, failover_time, max_stall, eq))
                         for s in strategies], [[] for _ in strategies], workers, progress)
    units = dict(zip(strategies, units))
    seeds = {s: [(r.counterexample.run.inputs, r.counterexample.run.arrivals)] for s, r in units.items()
             if r.counterexample}
    checks = alone_checks(nf_cls, assignment, args.bound, args.timeout, args.log_choices, failover_time, max_stall,
                          eq, seeds)
    alones, _ = jobs.run(checks, [[] for _ in checks], workers, progress)
    progress.clear()
    text = ",".join(f"{i}={s}" for i, s in assignment.items())
    hit = next((a for a in alones if a.crash), None)
    unit = units[hit.strategy] if hit else None
    if hit and (args.html or args.reproduce) and not unit.counterexample:
        print(f"nfproof verify: {hit.instance}'s run was found near its own counterexample as one NF (the chain "
              f"as one unit has none under {hit.strategy}): --html and --reproduce not written", file=sys.stderr)
    elif hit and args.html:
        try:
            with open(args.html, "w") as out:
                out.write(html(unit, hit.crash.story()))
        except OSError as e:
            raise UsageError(f"cannot write {args.html}: {e.strerror}") from None
    if hit and args.reproduce and unit.counterexample:
        _reproduce(args, [unit], False, alone=hit.crash)
    verdict = "counterexample" if hit else "proved" if all(a.verdict == "proved" for a in alones) else "unknown"
    reason = "" if verdict != "unknown" else unproved_reason(alones)
    if args.json:
        print(json.dumps({"verdict": verdict, "nf": nf_cls.name,
                          "strategy": {i: str(s) for i, s in assignment.items()}, "bound": args.bound,
                          "reason": reason,
                          "instance_crash": {"instance": hit.instance, "strategy": str(hit.strategy),
                                             "story": hit.crash.story()} if hit else None,
                          "instances": [a.as_json() for a in alones],
                          "units": [dict(as_json(r), instances=[i for i, s in assignment.items() if s == strategy])
                                    for strategy, r in units.items()]}, indent=2))
    elif hit:
        print(hit.error(f"{nf_cls.name} with {text}"))
    elif verdict == "proved":
        print(f"proved: {nf_cls.name} with {text} keeps {eq} output equivalence with any one instance crashing alone "
              f"(the others keep running), for every input sequence of up to {args.bound} packets, every crash point "
              f"and every choice: " + "; ".join(a.reason for a in alones))
    else:
        print(f"unknown: {nf_cls.name} with {text} at bound {args.bound}: {reason}")
    return VIOLATION if hit else OK if verdict == "proved" else UNKNOWN


def _reproduce(args, failing: list, per_strategy: bool, alone=None) -> None:
    """--reproduce DIR: each counterexample as inputs.pcap + schedule.json + README.md (a chain's
    with one instance crashing alone: the first found, or the run `alone`)."""
    from .models.chain import Chain
    from .verify.report import story
    from .verify.reproduce import ReproduceError, write
    if not failing:
        print(f"nfproof verify: no counterexample, {args.reproduce} not written", file=sys.stderr)
        return
    instance = next(iter(Chain.parse(args.chain, lookup).members))
    for r in failing:
        folder = os.path.join(args.reproduce, str(r.strategy).replace(":", "-")) if per_strategy else args.reproduce
        try:
            paths = write(r, folder, args.chain, instance, args.param, story, alone=alone)
        except ReproduceError as e:
            raise UsageError(f"--reproduce: {r.nf} under {r.strategy}: {e}") from None
        except OSError as e:
            raise UsageError(f"--reproduce {folder}: {e.strerror or e}") from None
        print(f"reproduction: {', '.join(paths)}; run it with: nfproof run {shlex.quote(args.chain)} --pcap {paths[0]} "
              f"--schedule {paths[1]} -o t.pcapng && nfproof replay t.pcapng", file=sys.stderr)


def _run_properties(args, nf_cls, strategies) -> int:
    """`--property NAME|all`: each named property under each strategy, a verdict each."""
    from .verify.properties import check_property, properties_of, story
    from .verify.solver import Budget

    known = properties_of(nf_cls)
    if not known:
        raise UsageError(f"{args.chain} declares no named properties (bundled ones: nat, firewall, lb, ratelimit)")
    if args.property != "all" and args.property not in known:
        raise UsageError(f"unknown property {args.property!r} of {args.chain}; valid: {', '.join(known)}, all")
    props = list(known.values()) if args.property == "all" else [known[args.property]]
    progress, results = Progress(args), []
    for prop in props:
        for s in strategies:
            results.append(check_property(nf_cls, prop, s, args.bound, Budget(timeout=args.timeout), args.log_choices,
                                          progress=progress.of(f"{args.chain} {s} {prop.name}")))
            progress.clear()
    if args.json:
        out = [{"verdict": r.verdict, "nf": r.nf, "property": r.property, "strategy": r.strategy, "bound": r.bound,
                "seconds": round(r.seconds, 4), "reason": r.reason,
                "observed": [{"input": i, "gate": g, "text": str(p)} for i, g, p in r.run.observed] if r.run else None}
               for r in results]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    else:
        for r in results:
            text = known[r.property]
            if r.verdict == "counterexample":
                print(f"error: {r.nf} under {r.strategy} breaks {r.property}: {text.text}\n\n{story(r)}\n")
            elif r.verdict == "proved":
                print(f"proved: {r.nf} under {r.strategy}, {r.property} for every failover run of up to {r.bound} "
                      f"packets ({r.seconds:.2f} s): {text.text}; not vacuous: a run exists in which {text.twin}")
            else:
                print(f"unknown: {r.nf} under {r.strategy}, {r.property} at bound {r.bound}: {r.reason} "
                      f"({r.seconds:.2f} s)")
    verdicts = {r.verdict for r in results}
    return VIOLATION if "counterexample" in verdicts else UNKNOWN if "unknown" in verdicts else OK
