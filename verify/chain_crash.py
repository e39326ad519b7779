"""One instance of a chain crashing while the others keep running, executed concretely.

DESIGN.md "Chains and scale-out": per instance, each NF runs the failover protocol with its
neighbours as upstream and downstream; "released" means handed to the next instance. The run here:

- Chain inputs are processed one at a time, run to completion as models/chain.py routes them.
  Every packet instance X receives is one of X's inputs, numbered n = 1, 2, ...
- The crash cuts the strategy's timeline over the chain inputs (`Strategy.cuts`): X applied its
  inputs of chain inputs <= `applied`, released (handed on) the outputs of those of chain inputs
  <= `released` and held the others, and its state is protected up to its inputs of chain input r.
- X's standby (the initial state under `none`) releases the protected outputs it holds, then X's
  upstream replays X's inputs after the replay start (`Strategy.replay_start`) from its buffer:
  the packets it sent, so no other instance processes anything twice. X's downstream suppresses
  duplicates by X's (n, j). The remaining chain inputs follow; the other instances keep their
  state throughout.
- One chain input is in flight at a time, as the runtime runs chains: an output-commit batch
  closes at every chain input (`in_a_chain`: commit:B runs as commit:1). (Holding an output
  across chain inputs would break equivalence with no crash at all: an inbound reply reaches
  the NAT before the firewall released the outbound packet that makes its mapping.)
- Time (DESIGN.md "Time"): every instance processes a chain input at its arrival, except X's
  standby, which processes at max(a, c + F, its previous time) (a logged clock read under
  --log-choices); the others keep their clocks (what X's standby emits is processed downstream at
  the chain input's arrival), as the runtime's instances do (runtime/failover.py processing_time).

`find_instance_crash` tries, for one input sequence, every instance, every crash point and every
choice X's standby makes (the other instances and X's primary take their first option), and
returns the first run that no failure-free execution of the chain explains (`simulate.explain` on
the chain's composite NF): a counterexample in which one named instance crashed alone. It is a
search over runs, not a proof: finding none says nothing about other inputs."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from ..models.api import TCP, UDP, Packet, flags
from ..models.chain import Chain, initial_chain_state, run_chain
from ..models.concrete import backtrack, copy_state, initial_state, scripted, step
from ..models.strategy import Cut, Strategy
from .equivalence import STRICT, Equivalence, in_flight
from .simulate import Explanation, choices_text, explain, lost


@dataclass
class InstanceCrash:
    instance: str
    strategy: Strategy
    inputs: list[Packet]
    cut: Cut
    protected: int
    observed: list                    # [(egress, Packet)] as the chain's egresses let them out
    events: list[str]
    arrivals: list | None = None
    crash_time: int | None = None
    explanation: Explanation | None = None
    chain_members: tuple = ()
    counts: tuple = (0, 0, 0)         # X's own inputs: applied, released, protected at the crash
    choices: dict = field(default_factory=dict)  # instance -> {"primary"|"standby": {n: [values]}}, n as it numbers its inputs

    @property
    def standby_choices(self) -> list:
        """What X's standby chose, in call order (its inputs in order: the replayed, then the new)."""
        mine = self.choices.get(self.instance, {}).get("standby", {})
        return [v for n in sorted(mine) for v in mine[n]]

    def story(self) -> str:
        others = [m for m in self.chain_members if m != self.instance]
        lines = [f"{self.instance} crashes alone ({', '.join(others)} keep{'s' if len(others) == 1 else ''} running), after chain input "
                 f"{self.cut.applied} applied / {self.cut.released} released, its state protected up to chain "
                 f"input {self.protected}", "inputs (in arrival order):"]
        lines += [f"  {i}. {p}" + (f"   (arrives at {self.arrivals[i - 1]})" if self.arrivals else "")
                  for i, p in enumerate(self.inputs, 1)]
        lines.append("what happened:")
        lines += [f"  {k:2}. {text}" for k, text in enumerate(self.events, 1)]
        lines.append("the outside world saw:")
        why = self.explanation
        for k, (egress, pkt) in enumerate(self.observed):
            mark = "   <-- no failure-free execution produces this" if why and k == why.matched else ""
            lines.append(f"  {k + 1}. {egress}: {pkt}{mark}")
        if why and why.matched >= len(self.observed):
            lines.append(f"  (nothing more: a failure-free execution emits more after output {why.matched})")
        if why:
            instead = "; or ".join(f"{g}: {p}" for g, p in why.expected) or "no further output"
            lines.append(f"why: after the first {why.matched} output(s), every failure-free execution of the chain "
                         f"that matches emits instead: {instead}")
        return "\n".join(lines)


class SearchLimit(Exception):
    """The search ran more runs than it was allowed: it decided nothing."""


def in_a_chain(strategy: Strategy) -> Strategy:
    """The strategy as an instance of a chain runs it: an output-commit batch closes at every chain input."""
    return replace(strategy, param=1) if strategy.mode == "commit" else strategy


def _first(options):
    return options[0]


def simulate_instance_crash(chain: Chain, instance: str, strategy: Strategy, inputs: list[Packet], cut: Cut,
                            protected: int, standby_chooser, log_choices: bool = False, arrivals: list | None = None,
                            crash_time: int | None = None, failover_time: int = 0) -> InstanceCrash:
    """The run described in the module docstring; `standby_chooser` makes X's standby's choices."""
    nf = chain.members[instance].nf
    who = f"{instance}'s {'standby' if strategy.name.startswith('stateful') else 'replacement'}"
    state = initial_chain_state(chain)
    events: list[str] = []
    observed: list = []
    timed = arrivals is not None
    now = [0]
    received: list = []               # X's inputs: (chain input, packet)
    held: dict = {}                   # n -> outputs X holds (not released before the crash)
    choices: dict = {}                # n -> X's primary's choices (the standby reuses them when logged)
    clocks: dict = {}                 # n -> the time X's primary processed it
    snapshots = {0: copy_state(state[instance])}
    last = [(0, -1)]                  # X's downstream: the highest (n, j) it passed
    chain_input = [0]
    standby = {"on": False, "state": None, "previous": 0, "end": 0}  # X's standby, once it took over
    choices_by: dict = {}             # instance -> role -> its input number -> the choices it made
    seen_by: dict = {}                # instance -> how many inputs it received

    def clock():
        return now[0]

    def record(name: str, role: str, n: int, values: list):
        if values:
            choices_by.setdefault(name, {}).setdefault(role, {})[n] = list(values)

    def process(name: str, p: Packet):
        if name != instance:
            seen_by[name] = seen_by.get(name, 0) + 1
            res = step(chain.members[name].nf, state[name], p, _first, clock)
            record(name, "primary", seen_by[name], res.choices)
            return res.outputs
        n = len(received) + 1
        received.append((chain_input[0], p))
        if not standby["on"]:
            res = step(nf, state[instance], p, _first, clock)
            choices[n], clocks[n] = res.choices, now[0]
            record(instance, "primary", n, res.choices)
            snapshots[n] = copy_state(state[instance])
            if chain_input[0] > cut.released:
                held[n] = res.outputs
                events.append(f"{instance} applies its input {n} (chain input {chain_input[0]}): {p}; holds "
                              + (", ".join(f"{g}: {o}" for g, o in res.outputs) or "no output"))
                return []
            return passed(n, res.outputs)
        t = now[0]
        if timed:  # (the others process at the chain input's arrival, as the runtime's instances do)
            t = standby["previous"] = max(now[0], standby["end"], standby["previous"])
        res = step(nf, standby["state"], p, standby_chooser, lambda: t)
        record(instance, "standby", n, res.choices)
        events.append(f"{who} applies its input {n} (chain input {chain_input[0]}): {p}"
                      + (f"; chooses {choices_text(res)}" if res.choices else ""))
        return passed(n, res.outputs)

    def passed(n, outputs):
        """X's outputs of its input n its downstream lets through (it drops what it has seen)."""
        out = []
        for j, o in enumerate(outputs):
            if strategy.dedup and (n, j) <= last[0]:
                events.append(f"the next hop drops the duplicate {o[0]}: {o[1]} of {instance}'s input {n}")
                continue
            last[0] = max(last[0], (n, j))
            out.append(o)
        return out

    def emit(p: Packet, egress: str):
        observed.append((egress, p.wrapped()))

    def route(i: int, t: int):
        chain_input[0], now[0] = i, t
        chain.route(inputs[i - 1], process, emit, lambda reason: None)

    for i in range(1, cut.applied + 1):
        route(i, arrivals[i - 1] if timed else 0)
    arrival_of = lambda n: arrivals[received[n - 1][0] - 1] if timed else 0  # noqa: E731  (X's input n's chain input's)
    x_of = lambda k: sum(1 for c, _ in received if c <= k)  # noqa: E731  (X's inputs of chain inputs <= k)
    applied, released, r = len(received), x_of(cut.released), x_of(protected)
    if timed and crash_time is None:
        crash_time = arrivals[cut.applied - 1] if cut.applied else 0
    failover_end = crash_time + failover_time if timed else None
    events.append(f"{instance} crashes" + (f" at {crash_time}; its failover ends at {failover_end}" if timed else ""))
    standby["on"] = True
    if strategy.replays_from_protected:
        standby["state"] = copy_state(snapshots[r])
        events.append(f"{who} takes over with the state of its input {r}" if r else
                      f"{who} takes over with the initial state (nothing was protected)")
        for n in range(released + 1, r + 1 if strategy.standby_releases_protected else 0):
            if held.get(n):
                events.append(f"{who} releases the protected outputs of its input {n}")
                now[0] = arrival_of(n)
                chain.carry(instance, passed(n, held[n]), process, emit)
    else:
        standby["state"] = initial_state(nf)
        events.append(f"{who} takes over with an empty state")
    standby["end"] = standby["previous"] = failover_end or 0
    for n in range(strategy.replay_start(released, r) + 1, applied + 1):
        i, p = received[n - 1]
        if lost(strategy, applied, n):
            events.append(f"the upstream kept no copy of {instance}'s input {n}: it is lost (--no-replay-input)")
            continue
        logged = log_choices and n <= released
        chooser = scripted(list(choices[n])) if logged else standby_chooser
        t = now[0] = arrival_of(n)
        if timed:
            t = clocks[n] if log_choices else max(arrivals[i - 1], failover_end, standby["previous"])
            standby["previous"] = max(standby["previous"], t)
        res = step(nf, standby["state"], p, chooser, lambda: t)
        if not logged:
            record(instance, "standby", n, res.choices)
        events.append(f"the upstream replays {instance}'s input {n} (chain input {i}): {p}"
                      + (f"; {who} chooses {choices_text(res)}" if res.choices else ""))
        chain.carry(instance, passed(n, res.outputs), process, emit)
    for i in range(cut.applied + 1, len(inputs) + 1):
        route(i, arrivals[i - 1] if timed else 0)
    return InstanceCrash(instance, strategy, list(inputs), cut, protected, observed, events,
                         list(arrivals) if timed else None, crash_time, chain_members=tuple(chain.members),
                         counts=(applied, released, r), choices=choices_by)


def find_instance_crash(chain: Chain, strategy: Strategy, inputs: list[Packet], log_choices: bool = False,
                        arrivals: list | None = None, failover_time: int = 0, max_stall: int = 0,
                        eq: Equivalence = STRICT, limit: int = 20_000, composite=None,
                        instances=None) -> InstanceCrash | None:
    """The first run (instances in chain order, or only those of `instances`; crash points in
    timeline order, the crash at the earliest and the latest time its point allows, standby
    choices depth first) that no failure-free execution of the chain explains, or None;
    SearchLimit past `limit` runs."""
    composite = composite or chain.as_nf()
    strategy = in_a_chain(strategy)
    timeline, runs = strategy.events(len(inputs)), 0
    for instance in [m for m in chain.members if instances is None or m in instances]:
        for cut in strategy.cuts(len(inputs)):
            crash_times = [None]
            if arrivals is not None:  # between the last event that happened and the next (DESIGN.md "Time")
                low = arrivals[timeline[cut.k - 1][1] - 1] if cut.k > 0 else 0
                high = arrivals[timeline[cut.k][1] - 1] if cut.k < len(timeline) else low + failover_time + max_stall + 1
                crash_times = sorted({low, high})
            for r in cut.protected:
                for crash_time in crash_times:
                    def run(chooser, cut=cut, r=r, crash_time=crash_time):
                        return simulate_instance_crash(chain, instance, strategy, inputs, cut, r, chooser, log_choices,
                                                       arrivals, crash_time, failover_time)
                    for _, crash in backtrack(run):
                        runs += 1
                        if runs > limit:
                            raise SearchLimit(f"more than {limit} runs of one instance crashing alone")
                        why = explain(composite, inputs, crash.observed, arrivals, max_stall, eq=eq,
                                      lossable=in_flight(cut.released, cut.applied))
                        if not why.explained:
                            crash.explanation = why
                            return crash
    return None


def for_counterexample(cex, instances=None) -> InstanceCrash | None:
    """`find_instance_crash` on the inputs, times, strategy and equivalence of a chain's
    counterexample (verify.failover.Counterexample; its instances failed as one unit), crashing
    each of `instances` (default: every instance)."""
    run = cex.run
    return find_instance_crash(cex.nf.chain(), run.strategy, run.inputs, cex.log_choices, run.arrivals,
                               (run.failover_end - run.crash_time) if run.arrivals is not None else 0, cex.max_stall,
                               cex.eq, instances=instances)


def replies(chain: Chain, inputs: list[Packet], arrivals=None) -> list[Packet]:
    """The answers to what a failure-free run of `inputs` (first options) lets out: each TCP/UDP
    output turned around (addresses and ports swapped, a SYN answered by a SYN-ACK, other TCP by
    an ACK), entering from the side it left on: the packets that use the state the inputs made."""
    state, out = initial_chain_state(chain), []
    inbound = {e: False for e in chain.egress_facing("inside")} | {e: True for e in chain.egress_facing("outside")}
    for i, p in enumerate(inputs):
        now = arrivals[i] if arrivals is not None else 0
        for egress, o in run_chain(chain, state, p, _first, lambda: now).outputs:
            if o.proto not in (TCP, UDP) or egress not in inbound:
                continue
            syn = o.proto == TCP and o.flags & flags("S") and not o.flags & flags("A")
            out.append(Packet(o.proto, o.dst, o.dport, o.src, o.sport,
                              flags("SA") if syn else flags("A") if o.proto == TCP else 0, inbound=inbound[egress]))
    return list(dict.fromkeys(out))


def near_counterexamples(chain_nf, strategy: Strategy, found: list, log_choices: bool = False, timed: bool = False,
                         failover_time: int = 0, max_stall: int = 0, eq: Equivalence = STRICT, instances=None,
                         limit: int = 2_000) -> InstanceCrash | None:
    """A run in which one instance (of `instances`, default any) crashes alone, searched near the
    counterexamples `found` ([(inputs, arrivals or None)]: the chain's as one unit, an instance's
    own as one NF): each one's inputs first, then every sequence of their distinct packets up to
    the longest's length, shortest first, with the answers to what they let out (`replies`);
    timed, each at a counterexample's arrival times, all at 0 and F + 1 ticks apart. SearchLimit
    past `limit` sequences."""
    chain, tried = chain_nf.chain(), set()
    packets = list(dict.fromkeys(p for inputs, _ in found for p in inputs))
    packets += [p for inputs, arrivals in found for p in replies(chain, inputs, arrivals) if p not in packets]

    def timings(n, arrivals=None):
        """Arrival times for n inputs: a counterexample's, all at 0, F + 1 ticks apart (untimed: None)."""
        if not timed:
            return [None]
        own = [list(a[:n]) for a in [arrivals] + [a for _, a in found] if a is not None and len(a) >= n]
        options = own[:1] + [[0] * n, [k * (failover_time + 1) for k in range(n)]]
        return [list(a) for a in dict.fromkeys(tuple(a) for a in options)]

    longest = max((len(i) for i, _ in found), default=0)
    candidates = itertools.chain(  # (made as the search goes: the limit ends it long before the last)
        ((list(inputs), a) for inputs, arrivals in found for a in timings(len(inputs), arrivals)),
        ((list(seq), a) for n in range(1, longest + 1) for seq in itertools.product(packets, repeat=n)
         for a in timings(n)))
    for inputs, arrivals in candidates:
        key = (tuple(inputs), tuple(arrivals or ()))
        if key in tried:
            continue
        tried.add(key)
        if len(tried) > limit:
            raise SearchLimit(f"more than {limit} input sequences near the counterexamples")
        crash = find_instance_crash(chain, strategy, inputs, log_choices, arrivals, failover_time, max_stall, eq,
                                    composite=chain_nf, instances=instances)
        if crash is not None:
            return crash
    return None


def enumerate_instance_crashes(chain: Chain, strategy: Strategy, bound: int, universe: list[Packet],
                               log_choices: bool = False, gaps: tuple[int, ...] | None = None,
                               failover_time: int = 1, max_stall: int = 1, instances=None) -> InstanceCrash | None:
    """Every input sequence of up to `bound` packets of `universe` (shortest first; with `gaps`,
    arrival times as sums of them), every instance (of `instances`, default all) crashing alone:
    the first unexplained run, or None."""
    composite = chain.as_nf()
    for n in range(1, bound + 1):
        arrival_sets = [None] if gaps is None else \
            [list(itertools.accumulate(g)) for g in itertools.product(gaps, repeat=n)]
        for inputs in itertools.product(universe, repeat=n):
            for arrivals in arrival_sets:
                found = find_instance_crash(chain, strategy, list(inputs), log_choices, arrivals, failover_time,
                                            max_stall, composite=composite, instances=instances)
                if found is not None:
                    return found
    return None
