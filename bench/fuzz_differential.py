"""Long differential fuzz run (issue 10): the properties of tests/test_differential.py with many
more examples.

    .venv/bin/python bench/fuzz_differential.py [--examples N] [--verdict-examples M] [--seed S]

Step property: N points (default 100000), each a random model at a state its earlier inputs
reached, a packet and choices (one symbolic step per model, up to --inputs points each); verdict
property: M random models (default 200), each on every strategy with and without logged
choices. A disagreement does not stop the run: each kind (the message up to its first value) is
kept with the shortest model that shows it, and printed at the end. Prints RESULT lines (examples,
points, disagreements, unknowns, seconds); exits 1 if any disagreement was found."""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, reject, seed, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _load():
    spec = importlib.util.spec_from_file_location("test_differential", ROOT / "tests" / "test_differential.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def kind_of(message: str) -> str:
    """A disagreement's kind: its first line with values, packets and numbers blanked."""
    first = message.split("\n", 1)[0]
    first = re.sub(r"Packet\(.*?\)", "P", first)
    first = re.sub(r"-?\b\d+\b", "N", first)
    return first[:110]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100_000,
                    help="step examples: points (model, reached state, packet, choices) to check (default 100000)")
    ap.add_argument("--verdict-examples", type=int, default=200, help="verdict examples (default 200)")
    ap.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random)")
    ap.add_argument("--statements", type=int, default=6, help="top-level statements of a handler at most (default 6)")
    ap.add_argument("--inputs", type=int, default=8,
                    help="packets per model at most (each checked at the state the ones before reached; default 8)")
    ap.add_argument("--paths", type=int, default=64,
                    help="skip a model whose symbolic step has more paths (default 64; 0: no limit)")
    ap.add_argument("--progress", type=int, default=0, help="print a progress line every N step examples")
    args = ap.parse_args()
    fd = _load()
    cfg = settings(deadline=None, database=None, derandomize=False, suppress_health_check=list(HealthCheck))
    found: dict[str, tuple[str, str]] = {}  # kind -> (message, shortest model source)

    def keep_going(check):
        def run(example):
            try:
                check(example)
            except fd.TooSlow:
                reject()  # outside the `except Exception` below: Hypothesis's own exception
            except Exception as e:  # a disagreement, or a crash of the harness itself: both are kept
                message = str(e).split("\n--- generated model ---\n")[0]
                if not isinstance(e, fd.Disagreement):
                    message = f"harness error {type(e).__name__}: {message}"
                source = example[0].source
                kind = kind_of(message)
                if kind not in found:
                    print(f"# new kind of disagreement: {message[:300]}", file=sys.stderr, flush=True)
                if kind not in found or len(source) < len(found[kind][1]):
                    found[kind] = (message, source)
            if args.progress and check is verdicts:
                t = fd.TALLY
                print(f"# {t.verdict_examples} verdict models, {t.verdict_checks} checks, {t.verdict_proved} proved, "
                      f"{t.verdict_counterexamples} counterexamples, {t.verdict_unknown} unknown, "
                      f"{len(found)} kinds of disagreement", flush=True)
            if args.progress and fd.TALLY.step_examples % args.progress == 0 and check is step:
                print(f"# {fd.TALLY.step_examples} models, {fd.TALLY.step_points} points, {len(found)} kinds of "
                      f"disagreement", flush=True)
        return run

    def step(example):
        fd.check_step(*example, paths=args.paths)

    def verdicts(example):
        model, universe, bound, cases = example
        fd.check_verdicts(model, universe, bound, cases)

    phases = [("step", step, fd.step_examples(min_inputs=args.inputs // 2, max_inputs=args.inputs,
                                                     max_statements=args.statements), args.examples),
              ("verdict", verdicts, fd.verdict_examples(all_cases=True), args.verdict_examples)]
    for name, check, strategy, n in phases:
        if n <= 0:
            continue
        before = len(found)
        if name == "step":  # n points: about n / (3/4 of --inputs) models
            n = max(1, -(-n * 4 // (3 * max(args.inputs, 1))))
        test = settings(cfg, max_examples=n)(given(strategy)(keep_going(check)))
        if args.seed is not None:
            test = seed(args.seed)(test)
        t0 = time.perf_counter()
        test()
        seconds = time.perf_counter() - t0
        t = fd.TALLY
        if name == "step":
            print(f"RESULT step_points {t.step_points} examples")
            print(f"RESULT step_models {t.step_examples} models")
            print(f"RESULT step_model_errors {t.step_model_errors} examples")
            print(f"RESULT step_static_rejections {t.step_static_rejections} examples")
            print(f"RESULT step_too_slow {t.step_too_slow} examples")
        else:
            print(f"RESULT verdict_examples {t.verdict_examples} examples")
            print(f"RESULT verdict_checks {t.verdict_checks} checks")
            print(f"RESULT verdict_proved {t.verdict_proved} checks")
            print(f"RESULT verdict_counterexamples {t.verdict_counterexamples} checks")
            print(f"RESULT verdict_widened {t.verdict_widened} checks")
            print(f"RESULT verdict_unknown {t.verdict_unknown} checks")
            print(f"RESULT verdict_model_errors {t.verdict_model_errors} checks")
            for reason, count in sorted(t.unknown_reasons.items()):
                print(f"# unknown: {count} x {reason}")
        print(f"RESULT {name}_disagreements {len(found) - before} kinds")
        print(f"RESULT {name}_seconds {seconds:.1f} s", flush=True)
    for kind, (message, source) in sorted(found.items(), key=lambda kv: len(kv[1][1])):
        print(f"\nDISAGREEMENT {message}\n{source}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
