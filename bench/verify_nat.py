"""Seconds to verdict for the NAT under each stateful strategy at bounds 4, 8 and 16.

    .venv/bin/python bench/verify_nat.py [--bounds 4,8,16] [--naive-timeout 10] [--naive-bounds 4] [--markdown FILE]

Prints `RESULT <metric> <value> <unit>` lines:
  verify_nat.<strategy>.bound<N>.seconds        wall time of verify_failover (best of --repeat)
  verify_nat.<strategy>.bound<N>.verdict        1 proved, 0 counterexample, -1 unknown (unit: the verdict)
  verify_nat.<strategy>.bound<N>.cex_length     packets in the (shortest) counterexample
  verify_nat.primary.bound<N>.seconds           baseline: building the primary run's symbolic steps alone
  verify_nat.<strategy>.bound<N>.ratio_to_primary
  verify_nat.naive.<strategy>.bound<N>.seconds  baseline: the naive encoding (a raw ForAll over the
                                                failure-free run's choices, no Skolemisation), with a
                                                timeout; ratio_naive = naive / ours
Aims from issue 2: bound 16 in under 2 s for the safe strategies; the first (shortest)
counterexample for the unsafe ones under 100 ms."""
from __future__ import annotations

import argparse
import time

import z3

from nfproof.models.nat import Nat
from nfproof.models.strategy import Strategy
from nfproof.verify import solver as smt
from nfproof.verify.failover import _Runs, verify_failover
from nfproof.verify.symbolic import outputs_differ

STRATEGIES = ["none", "stateful.checkpoint:4", "stateful.async", "stateful.sync", "stateful.commit:4"]
VERDICT_CODE = {"proved": 1, "counterexample": 0, "unknown": -1}


def result(metric: str, value, unit: str) -> None:
    print(f"RESULT {metric} {value} {unit}", flush=True)


def primary_only(bound: int) -> float:
    t = time.perf_counter()
    _Runs(Nat, bound).primary(bound)
    return time.perf_counter() - t


def naive(strategy: Strategy, bound: int, timeout: float) -> tuple[str, float]:
    """The encoding DESIGN.md warns about: for each failover point, is there a failover run such
    that *every* choice of a failure-free run gives other outputs? (ForAll over its choices.)"""
    budget = smt.Budget(timeout=timeout, rlimit=None)
    t = time.perf_counter()
    runs = _Runs(Nat, bound)
    try:
        for n in range(1, bound + 1):
            for (released, r), cut in strategy.failovers(n).items():
                assumptions = [runs.primary(i).valid for i in range(1, min(cut.applied, n) + 1)]
                seen_upto = max(released, r)
                observed = {i: runs.primary(i).outputs for i in range(1, seen_upto + 1)}
                state, start = (runs.primary_states[r], r) if strategy.replays_from_protected else (runs.init, released)
                runs.primary(r)
                for i in range(start + 1, n + 1):
                    s, state = runs.step(state, i, "s")
                    assumptions.append(s.valid)
                    if i > seen_upto:
                        observed[i] = s.outputs
                state, valid, differ = runs.init, [], []
                for i in range(1, n + 1):
                    s, state = runs.step(state, i, "f")
                    valid.append(s.valid)
                    d = outputs_differ(s.outputs, observed[i])
                    if d is not None:
                        differ.append(d)
                fvars = [v for i in range(1, n + 1) for v in runs.choice_vars.get(("f", i), [])]
                body = z3.Or(z3.Not(z3.And(*valid)), *differ) if differ else z3.Not(z3.And(*valid))
                solver = smt.new_solver(budget)
                solver.add(*assumptions)
                solver.add(z3.ForAll(fvars, body) if fvars else body)
                if smt.check(solver, budget) == z3.sat:
                    return "counterexample", time.perf_counter() - t
        return "proved", time.perf_counter() - t
    except smt.BudgetExhausted:
        return "unknown", time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bounds", default="4,8,16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-timeout", type=float, default=10.0)
    ap.add_argument("--naive-bounds", default="4")
    ap.add_argument("--markdown", help="also write a Markdown table to this file")
    args = ap.parse_args()
    bounds = [int(b) for b in args.bounds.split(",")]
    verify_failover(Nat, Strategy.parse("stateful.sync"), 2)  # warm up z3 and imports

    rows = []
    for b in bounds:
        base = min(primary_only(b) for _ in range(args.repeat))
        result(f"verify_nat.primary.bound{b}.seconds", f"{base:.4f}", "s")
        for name in STRATEGIES:
            best = None
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = verify_failover(Nat, Strategy.parse(name), b)
                dt = time.perf_counter() - t
                best = dt if best is None else min(best, dt)
            cex = len(r.counterexample.run.inputs) if r.counterexample else None
            result(f"verify_nat.{name}.bound{b}.seconds", f"{best:.4f}", "s")
            result(f"verify_nat.{name}.bound{b}.verdict", VERDICT_CODE[r.verdict], r.verdict)
            if cex:
                result(f"verify_nat.{name}.bound{b}.cex_length", cex, "packets")
            result(f"verify_nat.{name}.bound{b}.ratio_to_primary", f"{best / base:.2f}", "x")
            rows.append({"strategy": name, "bound": b, "verdict": r.verdict, "seconds": best, "cex": cex,
                         "primary": base, "queries": r.stats.get("queries"), "naive": None})
    for b in [int(x) for x in args.naive_bounds.split(",") if x]:
        for name in ("stateful.sync", "stateful.commit:4", "stateful.async"):
            verdict, dt = naive(Strategy.parse(name), b, args.naive_timeout)
            # a timed-out naive run reports the time it was given: a lower bound (unit says so)
            result(f"verify_nat.naive.{name}.bound{b}.seconds", f"{dt:.4f}", "s" if verdict != "unknown" else "s_lower_bound")
            result(f"verify_nat.naive.{name}.bound{b}.verdict", VERDICT_CODE[verdict], verdict)
            ours = next((row for row in rows if row["strategy"] == name and row["bound"] == b), None)
            if ours:
                ours["naive"] = (verdict, dt)
                result(f"verify_nat.{name}.bound{b}.ratio_naive", f"{dt / ours['seconds']:.1f}",
                       "x" if verdict != "unknown" else "x_lower_bound")

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| strategy | bound | verdict | seconds | cex packets | primary-only s | ratio to primary | naive ForAll s |\n")
            f.write("|---|---:|---|---:|---:|---:|---:|---:|\n")
            for row in rows:
                nv = row["naive"]
                naive_text = "" if nv is None else (f"{nv[1]:.3f} ({nv[0]})" if nv[0] != "unknown" else f">{args.naive_timeout:g} (unknown)")
                f.write(f"| {row['strategy']} | {row['bound']} | {row['verdict']} | {row['seconds']:.4f} | "
                        f"{row['cex'] or ''} | {row['primary']:.4f} | {row['seconds'] / row['primary']:.1f} | {naive_text} |\n")


if __name__ == "__main__":
    main()
