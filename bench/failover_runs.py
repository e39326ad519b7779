"""Failover runs for real (issue 8): `nfproof run` with random crash points over the everyday
captures in tests/data, each trace judged by `nfproof replay`, per strategy:

- `stateful.sync` and `stateful.commit:B --log-choices`: expected zero violations;
- `none` and `stateful.async`: expected violations (the fault injection bites).

Each run: a (capture, chain) pair, cycled (chains `nat` and `firewall>nat>lb`, nat.ports=64512; a
pair whose failure-free in-process run replay does not explain is left out and listed: that is
replay's limit, not a failover's outcome),
`--fail-random K` (K = 1 or 2) and `--seed` drawn from the run's number, so a run is reproducible
up to what the real processes did before each kill. Detection (kill to the closed socket, or the
silence of missed heartbeats) and takeover (failover start to the replacement ready) are measured
by the runtime and recorded in the trace; they are summarised here per strategy.

    .venv/bin/python bench/failover_runs.py [--runs N] [--unsafe-runs N] [--batch B] [--quick] [-v]

`--runs` safe runs (default 200, split between sync and commit), `--unsafe-runs` runs of none and
of async (default 25 each). Exit code 0 iff the safe strategies had no violation (nor unknown) and
each unsafe one had at least one violation. Prints `RESULT <metric> <value> <unit>` lines."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CHAINS = ("nat", "firewall>nat>lb")
PARAMS = ["--param", "nat.ports=64512"]


def everyday() -> list[Path]:
    """The everyday captures (E*), without the empty ones."""
    return [p for p in sorted(DATA.glob("E*.pcap*")) if p.stat().st_size > 64]


def nfproof(*argv) -> tuple[int, str, str]:
    from nfproof.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def baseline(capture: Path, chain: str, folder: Path) -> str:
    """`nfproof replay`'s verdict on the failure-free in-process run (none, no --fail): a
    combination it does not explain says nothing about failover, and is left out."""
    trace = folder / "baseline.pcapng"
    code, out, err = nfproof("run", chain, "--pcap", capture, *PARAMS, "-o", trace)
    if code != 0:
        return err.strip().splitlines()[-1] if err.strip() else f"run: exit {code}"
    code, out, err = nfproof("replay", trace, "--jobs", "1")
    trace.unlink()
    return "explained" if code == 0 else (out or err).strip().splitlines()[0]


def one_run(k: int, strategy: list[str], capture: Path, chain: str, folder: Path) -> dict:
    rng = random.Random(f"failover-runs:{k}")
    seed, failures = rng.randrange(1 << 32), rng.choice((1, 2))
    trace = folder / f"run{k}.pcapng"
    argv = ["run", chain, "--pcap", capture, *PARAMS, "--strategy", *strategy, "--fail-random", failures,
            "--seed", seed, "-o", trace, "--json"]
    started = time.monotonic()
    code, out, err = nfproof(*argv)
    row = {"run": k, "strategy": " ".join(strategy), "capture": capture.name, "chain": chain, "seed": seed,
           "command": "nfproof " + " ".join(str(a) for a in argv[:-1])}
    if code != 0:
        return {**row, "verdict": "run failed", "error": err.strip().splitlines()[-1:] or [f"exit {code}"]}
    result = json.loads(out)
    code, out, err = nfproof("replay", trace, "--jobs", "1", "--json")
    verdict = {0: "explained", 1: "violation", 3: "unknown"}.get(code, f"replay error {code}: {err.strip()}")
    trace.unlink()
    return {**row, "verdict": verdict, "inputs": result["packets_in"], "failures": result["failures"],
            "failovers": result["failovers"], "seconds": round(time.monotonic() - started, 2)}


def percentile(values: list, q: float):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="runs of the safe strategies (split between them)")
    p.add_argument("--unsafe-runs", type=int, default=25, help="runs of each unsafe strategy")
    p.add_argument("--batch", type=int, default=8, help="B of stateful.commit:B (default 8)")
    p.add_argument("--quick", action="store_true", help="12 safe runs, 4 of each unsafe strategy")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per run")
    p.add_argument("--json", metavar="FILE", help="write every run's row to FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.unsafe_runs = 12, 4
    safe = [["stateful.sync"], [f"stateful.commit:{args.batch}", "--log-choices"]]
    unsafe = [["none"], ["stateful.async"]]
    # (strategy, which pair): the safe runs alternate over the pairs; each unsafe strategy starts at the first
    plan = [(safe[k % 2], k) for k in range(args.runs)] + [(s, k) for s in unsafe for k in range(args.unsafe_runs)]
    captures = everyday()
    rows, started, cpu0 = [], time.monotonic(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="nfproof-failover-runs-") as folder:
        combos, left_out = [], []
        for chain in CHAINS:
            for capture in captures:
                verdict = baseline(capture, chain, Path(folder))
                (combos if verdict == "explained" else left_out).append((capture, chain, verdict))
        for capture, chain, verdict in left_out:
            print(f"left out: {chain} on {capture.name}: replay does not explain its failure-free run: {verdict}")
        for k, (strategy, pair) in enumerate(plan):
            capture, chain, _ = combos[pair % len(combos)]
            row = one_run(k, strategy, capture, chain, Path(folder))
            rows.append(row)
            if args.verbose or row["verdict"] not in ("explained", "violation"):
                print(f"  {k:3} {row['strategy']:32} {chain:16} {capture.name:34} {row['verdict']}"
                      + (f"  {row.get('error')}" if "error" in row else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    ok = True
    print(f"{len(rows)} runs in {time.monotonic() - started:.0f} s over {len(combos)} (capture, chain) pairs: "
          + "; ".join(f"{chain}: " + " ".join(c.name.split("_")[0] for c, ch, _ in combos if ch == chain)
                      for chain in CHAINS))
    print(f"{'strategy':34} {'runs':>5} {'failovers':>9} {'explained':>9} {'violation':>9} {'other':>5}   "
          f"detection p50/p99/max ms   takeover p50/p99/max ms (spare ready; cold: waited for one)")
    for strategy, expect_safe in [(" ".join(s), True) for s in safe] + [(" ".join(s), False) for s in unsafe]:
        mine = [r for r in rows if r["strategy"] == strategy]
        verdicts = [r["verdict"] for r in mine]
        failovers = [f for r in mine for f in r.get("failovers", [])]
        detection = [f["detection_ns"] / 1e6 for f in failovers if f["detection_ns"] is not None]
        takeover = [f["takeover_ns"] / 1e6 for f in failovers if f["spare_ready"]]
        cold = sum(not f["spare_ready"] for f in failovers)
        explained, violations = verdicts.count("explained"), verdicts.count("violation")
        other = len(verdicts) - explained - violations
        fmt = lambda xs: "/".join("-" if v is None else f"{v:.1f}" for v in  # noqa: E731
                                  (percentile(xs, 0.5), percentile(xs, 0.99), max(xs, default=None)))
        print(f"{strategy:34} {len(mine):5} {len(failovers):9} {explained:9} {violations:9} {other:5}   "
              f"{fmt(detection):25} {fmt(takeover)} (cold {cold})")
        key = strategy.split()[0].replace("stateful.", "").replace(":", "")
        print(f"RESULT {key}_runs {len(mine)} runs")
        print(f"RESULT {key}_violations {violations} runs")
        if detection:
            print(f"RESULT {key}_detection_p50 {percentile(detection, 0.5):.2f} ms")
        if takeover:
            print(f"RESULT {key}_takeover_p50 {percentile(takeover, 0.5):.2f} ms")
        ok &= (violations == 0 and other == 0) if expect_safe else violations >= 1
    print(f"RESULT cpu {time.process_time() - cpu0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
