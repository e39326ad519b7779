"""Seconds to verdict of `verify_failover` for every bundled model and for the chain firewall>nat>lb,
and of the whole `nfproof verify` of the chain (as one unit and each instance crashing alone).

    .venv/bin/python bench/verify_models.py [--bounds 4,8,12,16] [--timeout 60] [--models nat,lb]
                                            [--chain-bounds 4,8,12,16] [--quick] [--markdown FILE]

Every run is a fresh child process (no memo or solver shared between runs) with the verifier's
own budget set to --timeout and a hard kill a few seconds after it: a run that reaches neither a
verdict nor the budget's end is reported unknown too. An unknown is printed as such (verdict -1,
seconds as a lower bound), never as a time.

Prints `RESULT <metric> <value> <unit>` lines:
  verify_models.<model>.<strategy>.bound<N>.seconds      wall time to verdict (s; s_lower_bound if unknown)
  verify_models.<model>.<strategy>.bound<N>.cpu_seconds  CPU time of the child (the machine may be shared)
  verify_models.<model>.<strategy>.bound<N>.verdict      1 proved, 0 counterexample, -1 unknown
  verify_models.<model>.<strategy>.bound<N>.queries      solver queries
  verify_models.<model>.<strategy>.bound<N>.cex_seconds  time to the (shortest) counterexample
  verify_models.<model>.<strategy>.bound<N>.cex_length   its packets
  verify_models.chain.<strategy>.bound<N>.command.jobs<J>.seconds / .cpu_seconds
                                                         `nfproof verify CHAIN --jobs J` (J = 1, 2): the chain's
                                                         verdict, its unit and its instances' proofs; wall and
                                                         CPU of every process; .verdict as above
  verify_models.summary.*                                slowest verdict, slowest counterexample, unknowns
Strategies: none, stateful.sync, stateful.commit:4, stateful.commit:4 with --log-choices
(`stateful.commit:4+log`), stateful.async; the chain under stateful.commit:4+log.
Aims (issue 11): the 3-NF chain at bound 16 under 10 s on 2 cores; every shortest
counterexample under 1 s."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import time

STRATEGIES = [("none", False), ("stateful.sync", False), ("stateful.commit:4", False), ("stateful.commit:4", True),
              ("stateful.async", False)]
CHAIN = "firewall>nat>lb"
CHAIN_STRATEGIES = [("stateful.commit:4", True)]
VERDICT_CODE = {"proved": 1, "counterexample": 0, "unknown": -1}
KILL_GRACE = 5.0  # seconds past the budget before the child is killed (term construction ignores the budget)


def result(metric: str, value, unit: str) -> None:
    print(f"RESULT {metric} {value} {unit}", flush=True)


def label(strategy: str, log_choices: bool) -> str:
    return strategy + ("+log" if log_choices else "")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(conn, model: str, strategy: str, log_choices: bool, bound: int, timeout: float) -> None:
    from nfproof.models import lookup
    from nfproof.models.strategy import Strategy
    from nfproof.verify import solver as smt
    from nfproof.verify.failover import verify_failover
    nf = lookup(model)
    cpu, wall = _cpu(), time.perf_counter()
    r = verify_failover(nf, Strategy.parse(strategy), bound, budget=smt.Budget(timeout=timeout),
                        log_choices=log_choices)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    cex = len(r.counterexample.run.inputs) if r.counterexample else None
    conn.send(dict(verdict=r.verdict, seconds=wall, cpu=cpu, queries=r.stats.get("queries"), cex=cex,
                   reason=r.reason))
    conn.close()


def run_one(model: str, strategy: str, log_choices: bool, bound: int, timeout: float) -> dict:
    """One verification in a fresh child (forked after the imports: no z3 solver ran in the parent)."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    t = time.perf_counter()
    p = ctx.Process(target=_child, args=(child, model, strategy, log_choices, bound, timeout))
    p.start()
    child.close()
    out = None
    if parent.poll(timeout + KILL_GRACE):
        try:
            out = parent.recv()
        except EOFError:
            out = None
    if out is None:
        p.kill()
        out = dict(verdict="unknown", seconds=time.perf_counter() - t, cpu=None, queries=None, cex=None,
                   reason="killed" if p.exitcode is None or p.exitcode < 0 else f"child exited {p.exitcode}")
    p.join()
    return out


def run_command(chain: str, strategy: str, log_choices: bool, bound: int, timeout: float, jobs: int) -> dict:
    """`nfproof verify` of a chain: the verdict combines the unit and every instance alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "nfproof", "verify", chain, "--strategy", strategy, "--bound",
                            str(bound), "--timeout", str(timeout), "--jobs", str(jobs), "--json"]
                           + (["--log-choices"] if log_choices else []),
                           capture_output=True, text=True, timeout=4 * timeout + KILL_GRACE)
        verdict = json.loads(r.stdout)["verdict"] if r.returncode in (0, 1, 3) else "unknown"
    except subprocess.TimeoutExpired:
        verdict = "unknown"
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return dict(verdict=verdict, seconds=wall, cpu=cpu, queries=None, cex=None, reason="")


def report(prefix: str, r: dict) -> None:
    unknown = r["verdict"] == "unknown"
    result(f"{prefix}.seconds", f"{r['seconds']:.3f}", "s_lower_bound" if unknown else "s")
    if r["cpu"] is not None:
        result(f"{prefix}.cpu_seconds", f"{r['cpu']:.3f}", "s_lower_bound" if unknown else "s")
    result(f"{prefix}.verdict", VERDICT_CODE[r["verdict"]], r["verdict"])
    if r["queries"] is not None:
        result(f"{prefix}.queries", r["queries"], "queries")
    if r["cex"]:
        result(f"{prefix}.cex_seconds", f"{r['seconds']:.3f}", "s")
        result(f"{prefix}.cex_length", r["cex"], "packets")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bounds", default="4,8,12,16")
    ap.add_argument("--chain-bounds", default="4,8,12,16")
    ap.add_argument("--timeout", type=float, default=60.0, help="per run, seconds (then: unknown)")
    ap.add_argument("--models", default=None, help="comma-separated bundled names (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: two models, bound 2, chain bound 1, 10 s timeout")
    ap.add_argument("--markdown", help="also write a Markdown table to this file")
    args = ap.parse_args()
    from nfproof.models import NFS
    import nfproof.verify.failover  # noqa: F401  (imported before forking: children start warm)
    models = args.models.split(",") if args.models else list(NFS)
    bounds = [int(b) for b in args.bounds.split(",") if b]
    chain_bounds = [int(b) for b in args.chain_bounds.split(",") if b]
    if args.quick:
        models, bounds, chain_bounds, args.timeout = ["nat", "csfq-core"], [2], [1], 10.0

    rows = []
    for model in models:
        for b in bounds:
            for strategy, log in STRATEGIES:
                r = run_one(model, strategy, log, b, args.timeout)
                report(f"verify_models.{model}.{label(strategy, log)}.bound{b}", r)
                rows.append(dict(model=model, strategy=label(strategy, log), bound=b, **r))
    for b in chain_bounds:
        for strategy, log in CHAIN_STRATEGIES:
            r = run_one(CHAIN, strategy, log, b, args.timeout)
            report(f"verify_models.chain.{label(strategy, log)}.bound{b}", r)
            rows.append(dict(model=CHAIN, strategy=label(strategy, log), bound=b, **r))
            for jobs in (1, 2):
                r = run_command(CHAIN, strategy, log, b, args.timeout, jobs)
                report(f"verify_models.chain.{label(strategy, log)}.bound{b}.command.jobs{jobs}", r)
                rows.append(dict(model=f"nfproof verify {CHAIN} --jobs {jobs}", strategy=label(strategy, log), bound=b,
                                 **r))

    decided = [row for row in rows if row["verdict"] != "unknown"]
    unknown = [row for row in rows if row["verdict"] == "unknown"]
    cexes = [row for row in rows if row["verdict"] == "counterexample"]
    result("verify_models.summary.runs", len(rows), "runs")
    result("verify_models.summary.unknown", len(unknown), "runs")
    if decided:
        slowest = max(decided, key=lambda row: row["seconds"])
        result("verify_models.summary.slowest_verdict_seconds", f"{slowest['seconds']:.3f}", "s")
        print(f"# slowest verdict: {slowest['model']} {slowest['strategy']} bound {slowest['bound']}", flush=True)
    if cexes:
        slowest = max(cexes, key=lambda row: row["seconds"])
        result("verify_models.summary.slowest_cex_seconds", f"{slowest['seconds']:.3f}", "s")
        print(f"# slowest counterexample: {slowest['model']} {slowest['strategy']} bound {slowest['bound']}", flush=True)
    for row in unknown:
        print(f"# unknown: {row['model']} {row['strategy']} bound {row['bound']}: {row['reason']}", flush=True)

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| model | strategy | bound | verdict | wall s | CPU s | queries | cex packets |\n")
            f.write("|---|---|---:|---|---:|---:|---:|---:|\n")
            for row in rows:
                wall = f"{row['seconds']:.3f}" if row["verdict"] != "unknown" else f">{row['seconds']:.0f}"
                cpu = "" if row["cpu"] is None else f"{row['cpu']:.3f}"
                f.write(f"| {row['model']} | {row['strategy']} | {row['bound']} | {row['verdict']} | {wall} | {cpu} | "
                        f"{row['queries'] if row['queries'] is not None else ''} | {row['cex'] or ''} |\n")


if __name__ == "__main__":
    main()
