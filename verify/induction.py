"""Unbounded failover proofs: strict equivalence for input sequences of every length.

The argument is an induction on lockstep between the observed run and the Skolemised reference
run of verify/failover.py (the reference borrows the choices whose outputs were seen):

  1. inputs whose outputs the primary released (or protected): the reference *is* the primary,
     so their outputs agree whatever the length;
  2. inputs the standby replays although their outputs were already released (the replay
     segment, when the protected point r lags the release point): the standby, from the same
     state as the primary, must produce the same outputs and the same next state as the primary
     did -- an obligation on the NF, discharged by Z3 for one step from an *arbitrary* state
     (array constants, so it covers every reachable state and more), hence for a segment of any
     length by induction;
  3. inputs after that: standby and reference apply the same step function with the same
     choices to equal states, so they agree step by step (congruence), for any length.

Which obligations arise depends only on the strategy's timeline (whether release can run ahead
of protection, whether logged choices are reused, the mutations); the timeline is periodic in
the batch or checkpoint size, so a few periods show every shape. An obligation Z3 cannot prove
(or refutes for some arbitrary state) leaves the result at the bounded proof: unknown, never a
pass. `none` is proved unbounded only for NFs without state (the standby starts empty).

Clock reads are not covered: the lockstep of step 3 needs the standby's processing times to be
ones a failure-free run may choose, which holds only within each input's stall window, and the
windows of a long run are not an induction the obligations above state. An NF that reads the
clock (`reads_clock`) therefore stays at its bounded proof: unknown, with that reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import z3

from ..models.api import NF, ModelError
from ..models.strategy import Strategy
from . import solver as smt
from .symbolic import TIME_WIDTH, _storage_class, outputs_differ, step, symbolic_packet


@dataclass
class Induction:
    proved: bool
    reason: str  # what was proved, or what could not be


def _arbitrary_state(nf_cls: type[NF], name: str) -> dict:
    """Every declared component as a fresh constant of its sort: an arbitrary state."""
    out = {}
    for decl_name, decl in nf_cls.declarations().items():
        empty = _storage_class(decl).empty(decl)
        out[decl_name] = tuple(z3.Const(f"{name}.{decl_name}.{k}", t.sort()) for k, t in enumerate(empty))
    return out


def _choices(prefix: str):
    made = {}

    def choice_var(k, width):
        return made.setdefault((k, width), z3.BitVec(f"{prefix}.choice{k}.w{width}", width))
    return choice_var


def _same_step(a, b) -> list:
    """Conditions under which two steps differ in outputs or next state."""
    differ = outputs_differ(a.outputs, b.outputs)
    conds = [differ] if differ is not None else []
    conds += [x != y for name in a.state for x, y in zip(a.state[name], b.state[name]) if not x.eq(y)]
    return conds


def _holds(conds: list, context: list, budget: smt.Budget) -> bool:
    if not conds:
        return True
    solver = smt.new_solver(budget)
    solver.add(*context)
    return smt.check(solver, budget, z3.Or(*conds), unknown_ok=True) == z3.unsat


def _replay_shapes(strategy: Strategy) -> bool:
    """Can a crash leave released outputs beyond the protected point (a replay segment)?"""
    period = strategy.param or 1
    return any(released > r for n in range(1, 2 * period + 3) for released, r in strategy.failovers(n))


def reads_clock(nf_cls: type[NF]) -> bool:
    """Can the NF call ctx.now()? One symbolic step from an arbitrary state explores every path a
    reachable state can take (and more); a model error on the way counts as yes (the caller then
    adds the time variables, which costs time, never soundness)."""
    try:
        probe = step(nf_cls, _arbitrary_state(nf_cls, "probe"), symbolic_packet("probe"), _choices("probe"),
                     lambda: z3.BitVec("probe.now", TIME_WIDTH))
    except ModelError:
        return True
    return probe.reads_clock


def prove_unbounded(nf_cls: type[NF], strategy: Strategy, log_choices: bool, budget: smt.Budget) -> Induction:
    if reads_clock(nf_cls):
        return Induction(False, "the NF reads the clock, and the induction does not cover clock reads "
                                "(the standby's processing times stay in the stall window only up to the bound)")
    if not strategy.standby_releases_protected:
        return Induction(False, "the standby drops protected outputs: no induction applies")
    if not strategy.replays_from_protected:
        if nf_cls.declarations():
            return Induction(False, "under `none` the standby starts empty: only an NF without state is safe for every length")
        return Induction(True, "the NF has no state, so the empty standby is in lockstep with the primary")

    pkt = symbolic_packet("any")
    x = _arbitrary_state(nf_cls, "X")
    first = step(nf_cls, x, pkt, _choices("c"))
    obligations = []
    if _replay_shapes(strategy) and log_choices:
        obligations.append("replays reuse the logged choices, so they are the primary's steps")
    elif _replay_shapes(strategy):
        # 2. a replay with fresh choices must match the primary's step from the same state
        replay = step(nf_cls, x, pkt, _choices("s"))
        valid = [first.valid, replay.valid]
        if not _holds(_same_step(first, replay), valid, budget):
            return Induction(False, "a replayed input with fresh choices can differ from the primary's step "
                                    "(outputs or state); use --log-choices or a protect-before-release strategy")
        obligations.append("replays with fresh choices equal the primary's steps")
    if strategy.replay_starts_at_protected:
        # the protected input is applied a second time on top of its own state
        again = step(nf_cls, first.state, pkt, _choices("s"))
        if not _holds(_same_step(first, again), [first.valid, again.valid], budget):
            return Induction(False, "applying an input twice can differ from applying it once")
        obligations.append("applying an input twice equals applying it once")
    done = "; ".join(obligations) if obligations else "no replay runs ahead of protection"
    return Induction(True, f"induction on lockstep with the reference run ({done})")
