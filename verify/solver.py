"""The one module that runs Z3: fixed seeds, a resource limit as well as a timeout, and `unknown`
surfaced as a verdict of its own — never read as success. Verdicts are reproducible: the same
query with the same budget gets the same answer on any machine (rlimit counts work, not time)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import z3
import z3.z3
import z3.z3core

SEED = 0
z3.set_param("smt.random_seed", SEED)
z3.set_param("sat.random_seed", SEED)

# Read-only accessors of terms and reference counting, called without the error check the API
# makes after every C call (a fifth of the time the symbolic engine spends building terms). They
# cannot fail on the terms they are given, which the API made and keeps alive: kinds, ids, sorts,
# declarations and arguments are read only after z3.py has checked that they exist.
# NFPROOF_Z3_CHECKED=1 keeps every call checked.
UNCHECKED = ("Z3_get_ast_id", "Z3_get_ast_kind", "Z3_inc_ref", "Z3_dec_ref", "Z3_get_sort", "Z3_get_app_decl",
             "Z3_get_decl_kind", "Z3_is_eq_ast", "Z3_get_sort_kind", "Z3_get_app_num_args", "Z3_get_app_arg")
if not os.environ.get("NFPROOF_Z3_CHECKED"):
    for _name in UNCHECKED:
        _checked = getattr(z3.z3core, _name)
        _raw = getattr((_checked.__defaults__ or (None,))[0], "f", None)  # the C function it calls, then checks
        for _module in (z3, z3.z3, z3.z3core):
            if _raw is not None and getattr(_module, _name, None) is _checked:
                setattr(_module, _name, _raw)


class BudgetExhausted(Exception):
    """The time or resource budget ran out before a verdict."""


@dataclass
class Budget:
    """Wall-clock timeout for the whole check plus an rlimit per query (None: no rlimit)."""

    timeout: float = 60.0
    rlimit: int | None = 50_000_000
    start: float = field(default_factory=time.monotonic)
    queries: int = 0

    def remaining(self) -> float:
        return self.timeout - (time.monotonic() - self.start)

    def check_time(self) -> None:
        if self.remaining() <= 0:
            raise BudgetExhausted(f"timeout of {self.timeout:g} s reached")


def new_solver(budget: Budget, rlimit: int | None = None) -> z3.Solver:
    """z3's SMT solver after preprocessing (simplify, solve-eqs): it decides queries the plain
    solver gives up on within the resource limit (arithmetic on time differences, as in a token
    bucket) and is several times faster on long failover runs. `rlimit` (a smaller limit for a
    first try) overrides the budget's."""
    s = z3.Then("simplify", "solve-eqs", "smt").solver()
    s.set("random_seed", SEED)
    s.rlimit = rlimit or budget.rlimit  # (read again by _fresh_try)
    if s.rlimit:
        s.set("rlimit", s.rlimit)
    return s


def check(solver: z3.Solver, budget: Budget, *assumptions, unknown_ok: bool = False) -> z3.CheckSatResult:
    """sat / unsat; on unknown (timeout, rlimit, incompleteness) raises BudgetExhausted, or returns
    it when `unknown_ok` (for optional queries, e.g. prettier values, or a first try with a small
    limit). A query that hits its resource limit is tried once more as a copy in a fresh context
    (`_fresh_try`) before it is given up."""
    budget.check_time()
    solver.set("timeout", min(2**32 - 1, max(1, int(budget.remaining() * 1000))))
    budget.queries += 1
    result = solver.check(*assumptions)
    if result == z3.unknown and not unknown_ok and solver.reason_unknown() == "canceled" and budget.remaining() > 0:
        result = _fresh_try(solver, budget, assumptions)
    if result == z3.unknown and not unknown_ok:
        reason = solver.reason_unknown()
        if reason == "canceled":
            reason += " (the resource limit or the timeout was reached)"
        raise BudgetExhausted(f"solver returned unknown: {reason}")
    return result


def _fresh_try(solver: z3.Solver, budget: Budget, assumptions) -> z3.CheckSatResult:
    """The same query translated into a new context, whose terms are numbered afresh: Z3's search
    follows term numbers, and a query that runs out of resources after a long history of terms in
    this process is often quick there (seen: 50M resources spent against 0.6 s). Same formula, so
    unsat is unsat; a model found there is pinned onto the original solver (its constants' values as
    assumptions) so that `solver.model()` holds one; unknown if that fails."""
    fresh = z3.Context()
    copy = solver.translate(fresh)
    copy.set("random_seed", SEED)
    limit = getattr(solver, "rlimit", budget.rlimit)
    if limit:
        copy.set("rlimit", limit)
    copy.set("timeout", min(2**32 - 1, max(1, int(budget.remaining() * 1000))))
    result = copy.check(*[a.translate(fresh) for a in assumptions])
    if result != z3.sat:
        return result
    model, ctx = copy.model(), solver.ctx
    pins = [d().translate(ctx) == model[d].translate(ctx) for d in model.decls()
            if d.arity() == 0 and (z3.is_bv_sort(d.range()) or d.range() == z3.BoolSort(fresh))]
    solver.set("timeout", min(2**32 - 1, max(1, int(budget.remaining() * 1000))))
    return solver.check(*assumptions, *pins)


def satisfiable(conditions: list, rlimit: int = 2_000_000) -> bool | None:
    """Whether a small conjunction (a path's conditions) has a solution: True, False, or None when
    the solver gives up within `rlimit` (callers then treat the path as possible)."""
    s = new_solver(Budget(rlimit=rlimit))
    s.add(*conditions)
    result = s.check()
    return None if result == z3.unknown else result == z3.sat
