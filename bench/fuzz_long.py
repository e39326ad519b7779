"""Long fuzz run of the codec: the properties of tests/test_fuzz_codec.py with many more examples.

    .venv/bin/python bench/fuzz_long.py [--examples N] [--seed S]

Prints one RESULT line per property; exits 1 (with Hypothesis's minimal failing input) on a failure."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

ROOT = Path(__file__).resolve().parent.parent


def _returning_none(check):
    def prop(data):
        check(data)
    return prop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=20_000, help="examples per property (default 20000)")
    ap.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random)")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("fuzz_codec", ROOT / "tests" / "test_fuzz_codec.py")
    fz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fz)
    cfg = settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
                   suppress_health_check=list(HealthCheck))
    props = {
        "captures": (fz.captures, fz.read_capture),
        "traces": (fz.traces, fz.read_mutated_trace),
        "inspect": (fz.captures | fz.traces, fz.inspect_bytes),
    }
    failed = False
    for name, (strategy, check) in props.items():
        test = cfg(given(strategy)(_returning_none(check)))
        if args.seed is not None:
            test = seed(args.seed)(test)
        t0 = time.perf_counter()
        try:
            test()
            status = "ok"
        except Exception as e:  # report and go on with the next property
            status, failed = f"FAILED {type(e).__name__}: {e}", True
        print(f"RESULT fuzz_{name} examples={args.examples} seconds={time.perf_counter() - t0:.1f} {status}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
