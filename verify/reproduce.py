"""Executable counterexamples (`nfproof verify ... --reproduce DIR`): a counterexample as files the
real runtime can replay.

- `inputs.pcapng`: the counterexample's input packets as Ethernet/IPv4 frames (`frames.frame_of`,
  valid checksums), one per input, at its arrival time on the NF's clock (tick 0 = `t0_ns`), on
  the interface of its side (`ingress:inside`, `ingress:outside`: the runtime takes a frame's side
  from its port, so no address needs to belong to a side). What no frame carries (a UDP
  packet's flags, a label, a length shorter than the headers: the solver leaves what a model
  ignores at any value) is set as a frame shows it and the counterexample re-executed
  (`framed_result`);
- `schedule.json`: what the run must force (format "nfproof-schedule/1", runtime/README.md
  section 8): the strategy and settings, the crash point (inputs applied, released, protected),
  the crash time, and the primary's and the standby's choices per input;
- `README.md`: the story, and the three commands: `nfproof run --schedule` replays it on the
  runtime, `nfproof replay` judges the trace, and reports the same violation.

Written here from the format's description, not with the runtime's code (verify/ never imports
runtime/). `ReproduceError` when a counterexample has no frames that show it (it needs a field
as no frame carries it, or a chain was verified as one unit)."""
from __future__ import annotations

import json
import os

from ..models.api import ICMP, TCP, UDP
from ..models.chain import instances
from ..traces.pcapng import PcapngWriter
from .equivalence import STRICT
from .frames import frame_of

FORMAT = "nfproof-schedule/1"
T0_NS = 1_700_000_000 * 10 ** 9   # the capture time of clock tick 0 (any fixed instant would do)
NS = 10 ** 9
UNTIMED_GAP_NS = 1_000_000        # inputs of an NF that reads no clock: 1 ms apart


class ReproduceError(ValueError):
    """A counterexample the runtime cannot be made to replay (the message says why)."""


def as_framed(pkt):
    """The packet as a frame shows it: flags only on TCP, ports only on TCP, UDP and ICMP (one
    identifier: an echo request's in sport, a reply's in dport), label 0 (labels travel beside
    frames and are 0 at the chain's ingress), a length at least its headers' (a frame's length
    is its wire length)."""
    if pkt.proto == UDP:
        pkt = pkt.rewrite(flags=0)
    elif pkt.proto == ICMP:
        pkt = pkt.rewrite(flags=0, dport=0 if pkt.sport else pkt.dport)
    elif pkt.proto != TCP:
        pkt = pkt.rewrite(sport=0, dport=0, flags=0)
    headers = len(frame_of(pkt.rewrite(label=0)))
    return pkt.rewrite(label=0, length=max(pkt.length, headers))


def framed_result(result):
    """The counterexample with its inputs as frames show them (a solver leaves the fields a model
    ignores, such as a UDP packet's flags, at any value), re-executed: the same crash and choices
    must still give an output no failure-free execution explains, else ReproduceError."""
    from dataclasses import replace

    from ..models.concrete import scripted
    from .simulate import explain, simulate
    cex = result.counterexample
    run = cex.run
    inputs = [as_framed(p) for p in run.inputs]
    if inputs == list(run.inputs):
        return result
    again = simulate(cex.nf, run.strategy, inputs, run.cut, run.protected,
                     lambda i: scripted(run.primary_choices.get(i, [])), lambda i: scripted(run.standby_choices.get(i, [])),
                     cex.log_choices, run.arrivals, run.crash_time,
                     (run.failover_end - run.crash_time) if run.arrivals is not None else 0)
    why = explain(cex.nf, inputs, again.observed_outputs, run.arrivals, cex.max_stall)
    if why.explained:
        changed = next(i for i, (a, b) in enumerate(zip(run.inputs, inputs), 1) if a != b)
        raise ReproduceError(f"the counterexample needs input {changed} as {run.inputs[changed - 1]!r}, fields no "
                             f"frame carries (as a frame: {inputs[changed - 1]})")
    return replace(result, counterexample=replace(cex, run=again, explanation=why))


def _frame(pkt) -> bytes:
    """The frame whose view is the (framed) packet, its wire length the packet's length."""
    frame = frame_of(pkt)  # a packet as_framed gives: its length is at least the headers'
    return frame_of(pkt, b"\0" * (pkt.length - len(frame))) if pkt.length > len(frame) else frame


def _ns(ticks: int, tps: int) -> int:
    """The capture time of a tick (the earliest ns the runtime's clock reads as that tick)."""
    return T0_NS + -(-ticks * NS // tps)


def instance_crash(result):
    """A chain's counterexample (its instances failing as one unit) as the runtime can run it: the
    first run of its inputs in which one instance crashes alone and no failure-free execution
    explains the outputs (verify/chain_crash.py), else ReproduceError."""
    from .chain_crash import SearchLimit, for_counterexample
    try:
        found = for_counterexample(result.counterexample)
    except SearchLimit:
        found = None
    if found is None:
        raise ReproduceError("no run of the counterexample's inputs in which one instance crashes alone shows a "
                             "violation (it needs the chain's instances to fail together); the runtime crashes one "
                             "instance at a time")
    return found


def schedule(result, chain_text: str, instance: str, params: list, alone=None) -> tuple[dict, list[tuple[int, bytes]]]:
    """(schedule.json's content, [(capture time ns, inbound, frame)]) of a counterexample Result;
    for a chain's, of its run with one instance crashing alone (`instance_crash`)."""
    cex = result.counterexample
    run, nf = cex.run, cex.nf
    if run.strategy.mutation:
        raise ReproduceError(f"the strategy carries the injected bug {run.strategy.mutation!r}, which only the "
                             f"verifier simulates; the runtime implements the real strategies")
    if not (run.strategy.replay_input and run.strategy.dedup) or cex.eq != STRICT:
        raise ReproduceError("a schedule carries the default protocol (input replay, duplicate suppression) judged "
                             "strict; drop --no-replay-input, --no-dedup, --equivalence and --allow-duplicates")
    tps = getattr(nf, "ticks_per_second", 1)
    timed = run.arrivals is not None
    crash = {"instance": instance, "applied": run.cut.applied, "released": run.cut.released,
             "protected": run.protected, "time_ns": _ns(run.crash_time, tps) if timed else None}
    choices = {instance: {
        "primary": {str(i): list(v) for i, v in sorted(run.primary_choices.items()) if v},
        "standby": {str(i): list(v) for i, v in sorted(run.standby_choices.items()) if v}}}
    if instances(nf):
        alone = alone or instance_crash(result)  # (counts and choices by each instance's own input numbers)
        applied, released, protected = alone.counts
        crash = {"instance": alone.instance, "applied": applied, "released": released, "protected": protected,
                 "time_ns": _ns(alone.crash_time, tps) if timed else None}
        choices = {name: {role: {str(n): v for n, v in sorted(by_n.items())} for role, by_n in roles.items()}
                   for name, roles in alone.choices.items()}
    inputs, arrivals = (alone.inputs, alone.arrivals) if alone else (run.inputs, run.arrivals)
    times = [_ns(a, tps) if timed else T0_NS + i * UNTIMED_GAP_NS for i, a in enumerate(arrivals or inputs)]
    frames = [(t, p.inbound, _frame(p)) for t, p in zip(times, inputs)]
    failover_ticks = (run.failover_end - run.crash_time) if timed else None
    doc = {
        "format": FORMAT,
        "chain": chain_text,
        "params": list(params),
        "strategy": str(run.strategy),
        "log_choices": cex.log_choices,
        "t0_ns": T0_NS,
        "crash": crash,
        "choices": choices,
        "expect": "violation",
    }
    if timed:
        doc["failover_time"] = failover_ticks / tps
        doc["max_stall"] = cex.max_stall / tps
    return doc, frames


def write(result, folder: str, chain_text: str, instance: str, params: list, story, alone=None) -> list[str]:
    """Writes inputs.pcap, schedule.json and README.md (with `story(result)`) into `folder`
    (created), for the counterexample as frames show it (`framed_result`); returns their paths.
    A chain's: with one instance crashing alone, the first found or the run `alone` (an
    InstanceCrash on framed inputs: its inputs and times are the capture's)."""
    nf = result.counterexample.nf
    if alone is None:
        result = framed_result(result)
        alone = instance_crash(result) if instances(nf) else None
    doc, frames = schedule(result, chain_text, instance, params, alone)
    if alone and alone.inputs != result.counterexample.run.inputs:  # (found near the unit's counterexample)
        story = alone.story()
    else:
        story = story(result) + (f"\n\nThe same inputs with one instance crashing alone, as the runtime runs it:\n"
                                 f"{alone.story()}" if alone else "")
    os.makedirs(folder, exist_ok=True)
    pcap, sched, readme = (os.path.join(folder, n) for n in ("inputs.pcapng", "schedule.json", "README.md"))
    with PcapngWriter(pcap, userappl="nfproof verify --reproduce") as w:  # the side of a frame is its port's
        ports = {False: w.add_interface(1, 0, name="ingress:inside"), True: w.add_interface(1, 0, name="ingress:outside")}
        for t, inbound, frame in frames:
            w.write_packet(ports[inbound], t, frame)
    with open(sched, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    stall = f" --max-stall {doc['max_stall']:g}" if doc.get("max_stall") not in (None, doc.get("failover_time")) else ""
    quoted = f"'{chain_text}'" if any(c in chain_text for c in "> ") else chain_text
    with open(readme, "w") as f:
        f.write(f"# A counterexample of `nfproof verify {chain_text} --strategy {doc['strategy']}`, executable\n\n"
                f"Replay it on the reference runtime (real processes: the primary is killed at the crash point, the "
                f"{'standby' if doc['strategy'].startswith('stateful') else 'replacement'} takes over) and judge the "
                f"recorded run:\n\n"
                f"    nfproof run {quoted} --pcap {pcap} --schedule {sched} -o t.pcapng\n"
                f"    nfproof replay t.pcapng{stall}     # exit 1: the same violation\n\n"
                f"- `inputs.pcapng`: the {len(frames)} input packets as frames, at their arrival times, on the "
                f"interface of their side\n"
                f"- `schedule.json`: the crash (after input {doc['crash']['applied']} applied, "
                f"{doc['crash']['released']} released, state protected up to input {doc['crash']['protected']}), "
                f"the choices the primary and the standby make, the clock\n\n"
                f"What the verifier found:\n\n```\n{story}\n```\n")
    return [pcap, sched, readme]
