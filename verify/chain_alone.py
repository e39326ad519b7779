"""One instance of a chain crashing alone, proved by reduction to its own failover proof.

The run is verify/chain_crash.py's (DESIGN.md "Chains and scale-out", per instance): chain inputs
one at a time; instance X crashes, its standby takes over and X's neighbours replay what they
handed it and drop its duplicates; the others keep running with their state and their clocks.

Theorem. Let every condition of `obstacles` hold:
  1. strict equivalence, duplicates not allowed;
  2. per chain input, every instance handles at most one packet, and each egress is fed by one
     instance (`_routing`: the visits of one symbolic chain step from an arbitrary state);
  3. X's model reads no clock, or no other instance's model does (and X counts the chain's ticks);
and let X, as an NF of its own under `alone_strategy(S)`, be proved at bound n with *aligned*
references (`verify_failover(..., aligned=True)`: every failover run of X has a failure-free run
whose outputs are the observed ones input by input, and no replayed input that was released
before the crash lets a new output out). Then every run of up to n chain inputs in which X,
under S, crashes alone is explained by a failure-free execution of the chain.

Why. (a) X handles at most one packet per chain input (2), so it has at most n inputs, each at
its chain input's arrival. (b) The crash leaves X at a failover point of X alone under
`alone_strategy(S)`, its crash time within that point's window (`covers`; checked exhaustively in
tests/test_chain_alone.py): in a chain an output-commit batch closes at every chain input, so
commit:B is commit:1, and a checkpoint or batch taken every N chain inputs protects X after any
of its own inputs, which async covers. (c) So X's neighbours received, input by input, the
outputs of a failure-free run R of X on the same packets. (d) The failure-free chain run in which
X makes R's choices and every other instance the choices it made hands every instance the same
packets in the same order and lets the same outputs out, by induction over chain inputs: X holds
outputs only of the chain input in flight (its release at the latest closes it), whose other
branches therefore run before X's held outputs move on; by 2 no instance and no egress is
reached both from those and from elsewhere in the chain input, so the order makes no difference;
the new outputs of a replayed released input would arrive downstream after later chain inputs,
and the aligned proof excludes them. (e) Times: the others process every chain input at its
arrival in both runs; if X reads the clock it is the only one (3), and the chain run processes
input i at R's time for X's input of it (within [a_i, a_i + S], non-decreasing), or at
max(a_i, the previous time) when i does not reach X.

Where a condition fails, or X alone is not proved, nothing is claimed: `check_alone` then
searches near X's own counterexample (and any `seeds`) for a run with X crashing alone
(verify/chain_crash.py) and otherwise answers unknown."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from functools import partial

import z3

from ..models.strategy import Strategy
from . import solver as smt
from .chain_crash import InstanceCrash, SearchLimit, in_a_chain, near_counterexamples
from .equivalence import STRICT, Equivalence
from .failover import Result, verify_failover
from .induction import _arbitrary_state, _choices, reads_clock
from .symbolic import TIME_WIDTH, _composable, _exclusive, step, symbolic_packet


@dataclass
class Alone:
    """The verdict on one instance crashing alone: proved, counterexample (`crash`) or unknown."""

    instance: str
    strategy: Strategy
    verdict: str
    reason: str = ""
    crash: InstanceCrash | None = None
    own: Result | None = None  # the instance verified as an NF of its own

    def error(self, subject: str, note: str = "") -> str:
        """The error line and story of its counterexample; `subject`: the chain and its strategy."""
        return (f"error: {subject}: {self.instance} crashing alone (the others keep running) lets out outputs no "
                f"failure-free execution produces{note}\n\n{self.crash.story()}")

    def as_json(self) -> dict:
        return {"instance": self.instance, "strategy": str(self.strategy), "verdict": self.verdict,
                "reason": self.reason, "story": self.crash.story() if self.crash else None}


def alone_strategy(strategy: Strategy) -> Strategy:
    """The strategy X alone is verified under: its failover points cover those a chain leaves X at."""
    strategy = in_a_chain(strategy)
    if strategy.mode in ("checkpoint", "batch") and strategy.param != 1:
        return replace(strategy, name=strategy.name.rsplit(".", 1)[0] + ".async", param=None)
    return strategy


def covers(strategy: Strategy, n: int) -> bool:
    """Every crash of X under `strategy` in a run of n chain inputs, for every set of chain inputs
    that reach X, leaves X at a failover point of `alone_strategy` over X's own inputs whose crash
    window contains the chain's (as chain input indices; arrivals are non-decreasing)."""
    chain_strategy, own = in_a_chain(strategy), alone_strategy(strategy)
    events = chain_strategy.events(n)
    for reach in itertools.product((False, True), repeat=n):
        x_of = list(itertools.accumulate(reach, initial=0))  # X's inputs among chain inputs <= k
        chain_input = [k for k in range(1, n + 1) if reach[k - 1]]  # X's input m -> its chain input
        m = x_of[n]
        points = own.failover_points(m, timed=True)
        for cut in chain_strategy.cuts(n):
            low = events[cut.k - 1][1] if cut.k > 0 else 0
            high = events[cut.k][1] if cut.k < len(events) else n + 1
            for r in cut.protected:
                key = (x_of[cut.released], x_of[r], x_of[cut.applied])
                if key not in points:
                    return False
                first, last_k = points[key]
                lower, upper = own.crash_window(m, first.k, last_k)
                if (chain_input[lower - 1] if lower else 0) > low or (chain_input[upper - 1] if upper else n + 1) < high:
                    return False
    return True


_ROUTING: dict = {}


def _routing(chain_nf) -> str | None:
    """Why condition 2 fails for the chain, or None."""
    if not _composable(chain_nf):
        return "the chain's composite is not stepped instance by instance"
    if chain_nf not in _ROUTING:
        chain = chain_nf.chain()
        probe = step(chain_nf, _arbitrary_state(chain_nf, "routing"), symbolic_packet("routing"),
                     _choices("routing"), lambda: z3.BitVec("routing.now", TIME_WIDTH))
        reason = None
        for (a, ra), (b, rb) in itertools.combinations(probe.visits, 2):
            if a == b and not _exclusive(ra, rb):
                reason = f"{a} may handle two packets of one chain input"
                break
        feeders: dict = {}
        for (instance, _), hop in chain._routes().items():
            if hop.egress:
                feeders.setdefault(hop.egress, set()).add(instance)
        shared = [e for e, who in feeders.items() if len(who) > 1]
        if reason is None and shared:
            reason = f"egress {shared[0]} is fed by {' and '.join(sorted(feeders[shared[0]]))}"
        _ROUTING[chain_nf] = reason
    return _ROUTING[chain_nf]


def obstacles(chain_nf, instance: str, eq: Equivalence) -> list[str]:
    """Why the reduction does not apply to `instance` crashing alone (empty: it applies)."""
    out = []
    if eq != STRICT:
        out.append(f"it holds for strict equivalence only (not {eq})")
    routing = _routing(chain_nf)
    if routing:
        out.append(routing)
    chain = chain_nf.chain()
    member = chain.members[instance].nf
    if reads_clock(member):
        others = [m for m, mem in chain.members.items() if m != instance and reads_clock(mem.nf)]
        if others:
            out.append(f"{instance} and {', '.join(others)} read the clock, and a chain run has one time per chain "
                       f"input, where {instance}'s standby reads a later one than the others")
        if getattr(member, "ticks_per_second", 1) != getattr(chain_nf, "ticks_per_second", 1):
            out.append(f"{instance} counts time in other ticks than the chain")
    return out


def check_alone(chain_nf, instance: str, strategy: Strategy, bound: int, timeout: float, log_choices: bool = False,
                failover_time: int = 0, max_stall: int = 0, eq: Equivalence = STRICT, progress=None,
                seeds: tuple = ()) -> Alone:
    """`instance` under `strategy` crashing alone in runs of up to `bound` chain inputs (times in
    the chain's ticks). `seeds`: more runs ([(inputs, arrivals)], e.g. the chain's as one unit) to
    search near when there is no proof."""
    member = chain_nf.chain().members[instance].nf
    own_strategy = alone_strategy(strategy)
    blocked = obstacles(chain_nf, instance, eq)
    own = verify_failover(member, own_strategy, bound, smt.Budget(timeout=timeout), log_choices, progress,
                          failover_time=failover_time, max_stall=max_stall,
                          eq=eq if blocked else STRICT, aligned=not blocked)
    if not blocked and own.verdict == "proved":
        return Alone(instance, strategy, "proved", f"{instance} as an NF of its own under {own_strategy} is proved "
                     f"with references aligned input by input, which covers it crashing alone", own=own)
    near = list(seeds) + ([(own.counterexample.run.inputs, own.counterexample.run.arrivals)]
                          if own.counterexample else [])
    from .reproduce import as_framed  # (a capture can carry the inputs the search tries)
    near = [([as_framed(p) for p in inputs], arrivals) for inputs, arrivals in near]
    crash = None
    if near and not strategy.mutation:
        try:
            crash = near_counterexamples(chain_nf, strategy, near, log_choices, reads_clock(chain_nf), failover_time,
                                         max_stall, eq, [instance])
        except SearchLimit:
            pass
    if crash is not None:
        return Alone(instance, strategy, "counterexample", f"{instance} crashing alone lets out outputs no "
                     f"failure-free execution of the chain produces", crash=crash, own=own)
    why = "; ".join(blocked) if blocked else f"{instance} as an NF of its own under {own_strategy}: {own.verdict}" + \
        (f" ({own.reason})" if own.reason else "")
    searched = "no run near the counterexamples found shows a violation" if near and not strategy.mutation else \
        "no counterexample to search near"
    return Alone(instance, strategy, "unknown", f"no proof of {instance} crashing alone: {why}; {searched}", own=own)


def alone_checks(chain_nf, assignment: dict, bound: int, timeout: float, log_choices: bool = False,
                 failover_time: int | None = None, max_stall: int | None = None, eq: Equivalence = STRICT,
                 seeds: dict | None = None) -> list[tuple]:
    """`check_alone` for each instance under its strategy (`assignment`: instance -> Strategy), as
    (label, call(progress)) to make (verify/jobs.py); times default as the chain's verification's
    do; `seeds`: strategy -> [(inputs, arrivals)]."""
    from .simulate import default_failover_ticks
    f = default_failover_ticks(chain_nf) if failover_time is None else failover_time

    def call(instance, strategy, progress):
        return check_alone(chain_nf, instance, strategy, bound, timeout, log_choices, f,
                           f if max_stall is None else max_stall, eq, progress, tuple((seeds or {}).get(strategy, ())))
    return [(f"{instance} alone {strategy}", partial(call, instance, strategy)) for instance, strategy in assignment.items()]


def combined_verdict(result: Result, alones: list[Alone] | None) -> str:
    """A chain's verdict: as one failing unit (`result`) and, where that is proved, each instance
    alone (a bounded proof: with `unbounded` the whole is unknown)."""
    if alones is None or result.verdict != "proved":
        return result.verdict
    if any(a.verdict == "counterexample" for a in alones):
        return "counterexample"
    return "proved" if all(a.verdict == "proved" for a in alones) and not result.unbounded else "unknown"


def unproved_reason(alones: list[Alone]) -> str:
    return "; ".join(a.reason for a in alones if a.verdict != "proved") or \
        f"each instance crashing alone is proved up to {alones[0].own.bound} packets only (not for every length)"
