"""Hard small models (issue 11): random small NF models under every strategy, for the verifier and
the enumerator, and the stateless random-drop NF under stateful.async at large bounds.

    .venv/bin/python bench/verify_fuzz.py [--models 12] [--seed 0] [--bound 4] [--timeout 30]
                                          [--enum-bound 3] [--enum-universe 3] [--enum-timeout 30]
                                          [--drop-bounds 16,24] [--quick]

Models come from tests/model_gen.py (the differential fuzzer's generator): maps, sets, counters,
choices stored and revealed on later packets, several outputs and gates, deletes, pools of at most
4 values; drawn with `nondeterministic` (choices likely) and `final_emit` (an output of a
state-dependent value, so the proofs are seldom vacuous). Each model runs under all ten
strategies, at --bound for `verify.failover.verify_failover` and at --enum-bound over a universe
of --enum-universe packets (the sizes tests/test_differential.py uses) for
`verify.enumerate.enumerate_failover`. Every run is a fresh child process killed a few seconds
past its timeout; a model error (the generator makes some on purpose) is counted apart.

Prints `RESULT <metric> <value> <unit>` lines:
  verify_fuzz.verifier.runs / .unknown / .model_errors / .slowest_seconds / .slowest_cpu_seconds /
    .median_seconds / .over_10s             (verdicts at --bound; unknown = budget hit or killed)
  verify_fuzz.enumerator.runs / .unknown / .slowest_seconds / .slowest_cpu_seconds / .over_10s
  verify_fuzz.disagreements                 runs both decided with different verdicts: a verifier proof
                                            where the enumerator finds a violation is a soundness bug; a
                                            verifier counterexample the enumerator's small universe and
                                            bound cannot reach also shows here (look at the run)
  verify_fuzz.random_drop.async.bound<N>.seconds / .cpu_seconds / .verdict / .queries
Aims (issue 11): every verdict at bound 4 under 10 s; the random-drop case at bound 24 under 10 s;
the enumerator under 10 s wherever the tests use it."""
from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

STRATEGIES = ("none", "stateful.checkpoint:2", "stateful.async", "stateful.sync", "stateful.commit:2",
              "stateless.sync", "stateless.async", "stateless.batch:2", "stateless.cache", "stateless.commit:2")
VERDICT_CODE = {"proved": 1, "counterexample": 0, "unknown": -1, "model_error": -2}
KILL_GRACE = 5.0

RANDOM_DROP = """from nfproof.models.api import NF, Bits, Pool


class RandomDrop(NF):
    \"\"\"Theory of operation: no state; every packet is forwarded or dropped by a coin toss (a choice).\"\"\"

    name = "random-drop"
    gates = ("out",)
    coin = Pool(0, 2, Bits(1, "Coin"))

    def handle(self, pkt, ctx):
        if ctx.choose(self.coin.all()) == 1:
            return ctx.drop("coin")
        ctx.emit(pkt, "out")
"""


def result(metric: str, value, unit: str) -> None:
    print(f"RESULT {metric} {value} {unit}", flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def draw_models(count: int, seed: int, max_pool: int) -> list:
    """`count` generated models (source and packet universes), reproducible from `seed`."""
    if count <= 0:
        return []
    import model_gen
    from hypothesis import HealthCheck, given, settings, seed as hseed, strategies as st
    drawn = []

    @hseed(seed)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data):
        model = data.draw(model_gen.models(max_statements=5, max_depth=2, max_expr_depth=1, max_choices=2,
                                           max_pool=max_pool, final_emit=True, nondeterministic=True))
        universe = data.draw(st.lists(model_gen.small_packets(model), min_size=4, max_size=4, unique=True))
        drawn.append((model.source, universe))

    collect()
    return drawn[:count]


def _child(conn, job: dict) -> None:
    import model_gen
    from nfproof.models.api import ModelError
    from nfproof.models.strategy import Strategy
    from nfproof.verify import solver as smt
    from nfproof.verify.enumerate import enumerate_failover
    from nfproof.verify.failover import verify_failover
    nf = model_gen.compile_model(job["source"])
    strategy = Strategy.parse(job["strategy"])
    cpu, wall = _cpu(), time.perf_counter()
    out = {}
    try:
        if job["tool"] == "verifier":
            r = verify_failover(nf, strategy, job["bound"], budget=smt.Budget(timeout=job["timeout"]),
                                log_choices=job["log"])
            out = dict(verdict=r.verdict, queries=r.stats.get("queries"), reason=r.reason)
        else:
            v = enumerate_failover(nf, strategy, job["bound"], job["universe"], job["log"])
            out = dict(verdict="proved" if v is None else "counterexample", queries=None, reason="")
    except ModelError as e:
        out = dict(verdict="model_error", queries=None, reason=str(e))
    out.update(seconds=time.perf_counter() - wall, cpu=_cpu() - cpu)
    conn.send(out)
    conn.close()


def run_one(job: dict) -> dict:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    t = time.perf_counter()
    p = ctx.Process(target=_child, args=(child, job))
    p.start()
    child.close()
    out = None
    if parent.poll(job["timeout"] + KILL_GRACE):
        try:
            out = parent.recv()
        except EOFError:
            out = None
    if out is None:
        p.kill()
        out = dict(verdict="unknown", seconds=time.perf_counter() - t, cpu=None, queries=None,
                   reason="killed at the timeout" if p.exitcode is None or p.exitcode < 0 else f"exit {p.exitcode}")
    elif job["tool"] == "enumerator" and out["seconds"] > job["timeout"]:
        out["verdict"], out["reason"] = "unknown", "over the timeout"
    p.join()
    return out


def summarise(tool: str, runs: list[dict]) -> None:
    decided = [r for r in runs if r["verdict"] in ("proved", "counterexample")]
    unknown = [r for r in runs if r["verdict"] == "unknown"]
    result(f"verify_fuzz.{tool}.runs", len(runs), "runs")
    result(f"verify_fuzz.{tool}.unknown", len(unknown), "runs")
    result(f"verify_fuzz.{tool}.model_errors", sum(r["verdict"] == "model_error" for r in runs), "runs")
    result(f"verify_fuzz.{tool}.proved", sum(r["verdict"] == "proved" for r in runs), "runs")
    result(f"verify_fuzz.{tool}.counterexample", sum(r["verdict"] == "counterexample" for r in runs), "runs")
    if decided:
        slowest = max(decided, key=lambda r: r["seconds"])
        result(f"verify_fuzz.{tool}.slowest_seconds", f"{slowest['seconds']:.3f}", "s")
        result(f"verify_fuzz.{tool}.slowest_cpu_seconds", f"{slowest['cpu']:.3f}", "s")
        result(f"verify_fuzz.{tool}.median_seconds", f"{statistics.median(r['seconds'] for r in decided):.3f}", "s")
        print(f"# {tool} slowest verdict: model {slowest['model']} {slowest['strategy']} ({slowest['verdict']})",
              flush=True)
    result(f"verify_fuzz.{tool}.over_10s", sum(r["seconds"] > 10 for r in runs), "runs")
    for r in unknown:
        print(f"# {tool} unknown: model {r['model']} {r['strategy']}: {r['reason']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bound", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=30.0, help="verifier budget per run (s)")
    ap.add_argument("--log-choices", action="store_true", help="also every strategy with --log-choices")
    ap.add_argument("--max-pool", type=int, default=4)
    ap.add_argument("--enum-bound", type=int, default=3)
    ap.add_argument("--enum-universe", type=int, default=3)
    ap.add_argument("--enum-timeout", type=float, default=30.0)
    ap.add_argument("--drop-bounds", default="16,24")
    ap.add_argument("--drop-timeout", type=float, default=60.0)
    ap.add_argument("--show-models", action="store_true", help="print each model's source")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 models, bound 2, 2 strategies, drop bound 4")
    args = ap.parse_args()
    import nfproof.verify.enumerate  # noqa: F401  (imported before forking: children start warm)
    import nfproof.verify.failover  # noqa: F401
    strategies = STRATEGIES
    if args.quick:
        args.models, args.bound, args.enum_bound, args.enum_universe = 2, 2, 2, 2
        args.timeout = args.enum_timeout = args.drop_timeout = 10.0
        args.drop_bounds, strategies = "4", ("none", "stateful.async")

    models = draw_models(args.models, args.seed, args.max_pool)
    cases = [(s, log) for s in strategies for log in ((False, True) if args.log_choices else (False,))]
    verifier, enumerator = [], []
    for m, (source, universe) in enumerate(models):
        if args.show_models:
            print(f"# model {m}:\n" + "".join(f"#   {line}\n" for line in source.splitlines()), flush=True)
        for text, log in cases:
            name = text + ("+log" if log else "")
            job = dict(source=source, strategy=text, log=log, universe=universe[:args.enum_universe])
            r = run_one(dict(job, tool="verifier", bound=args.bound, timeout=args.timeout))
            verifier.append(dict(r, model=m, strategy=name))
            e = run_one(dict(job, tool="enumerator", bound=args.enum_bound, timeout=args.enum_timeout))
            enumerator.append(dict(e, model=m, strategy=name))
            why = f" ({r['reason'][:60]})" if r["verdict"] == "unknown" else ""
            print(f"# model {m} {name}: verifier {r['verdict']} {r['seconds']:.2f} s{why}, "
                  f"enumerator {e['verdict']} {e['seconds']:.2f} s", flush=True)
    if models:
        summarise("verifier", verifier)
        summarise("enumerator", enumerator)
        decided = ("proved", "counterexample")
        differ = [(v, e) for v, e in zip(verifier, enumerator) if v["verdict"] in decided and e["verdict"] in decided
                  and v["verdict"] != e["verdict"]]
        result("verify_fuzz.disagreements", len(differ), "runs")  # the verifier's verdict against the enumerator's
        for v, e in differ:
            print(f"# DISAGREE: model {v['model']} {v['strategy']}: verifier {v['verdict']}, enumerator {e['verdict']}",
                  flush=True)

    for b in [int(x) for x in args.drop_bounds.split(",") if x]:
        r = run_one(dict(source=RANDOM_DROP.replace("class RandomDrop", "class Generated"), strategy="stateful.async",
                         log=False, universe=[], tool="verifier", bound=b, timeout=args.drop_timeout))
        prefix = f"verify_fuzz.random_drop.async.bound{b}"
        unknown = r["verdict"] == "unknown"
        result(f"{prefix}.seconds", f"{r['seconds']:.3f}", "s_lower_bound" if unknown else "s")
        if r["cpu"] is not None:
            result(f"{prefix}.cpu_seconds", f"{r['cpu']:.3f}", "s_lower_bound" if unknown else "s")
        result(f"{prefix}.verdict", VERDICT_CODE[r["verdict"]], r["verdict"])
        if r["queries"] is not None:
            result(f"{prefix}.queries", r["queries"], "queries")
        if r["reason"]:
            print(f"# random-drop bound {b}: {r['reason']}", flush=True)


if __name__ == "__main__":
    main()
