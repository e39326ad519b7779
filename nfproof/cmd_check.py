"""`nfproof check`: the CI gate. Runs every check of `[tool.nfproof]` (nfproof/config.py) through the
verifier's Python API and compares each verdict with the one the check expects.

Progress goes to stderr (a line per check as it finishes), a summary table and the stories of the
checks that did not pass to stdout (or everything as JSON with --json); --junit FILE writes one
testcase per check, a mismatch being a <failure> whose text is the counterexample's story as
`nfproof verify` prints it. Verdicts come from the cache (nfproof/cache.py) when nothing they
depend on changed. Exit code, the most severe over the checks: 1 a verdict is not the expected
one, 2 the config (or a model) is wrong, 3 a verdict is unknown (a timeout is never a pass), else 0.
`evaluate` is shared with the pytest plugin (nfproof/pytest_plugin.py).
"""
from __future__ import annotations

import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from . import cache as verdict_cache
from .config import Check, ConfigError, find, load
from .errors import OK, UNKNOWN, USAGE, VIOLATION, UsageError
from .models.api import ModelError
from .models.strategy import Strategy

SEVERITY = ("fail", "error", "unknown", "pass")  # most severe first; the exit code follows the first present
EXIT_CODES = {"fail": VIOLATION, "error": USAGE, "unknown": UNKNOWN, "pass": OK}


@dataclass
class RunOutcome:
    """One verifier run of a check (one strategy, one property) and how it compares."""

    strategy: str
    property: str | None
    verdict: str          # proved | counterexample | unknown | error (the model could not be verified)
    status: str           # pass | fail | unknown | error
    seconds: float        # the verifier's time (when cached: of the run that stored it)
    reason: str
    text: str             # what `nfproof verify` says: the story of a counterexample
    data: dict            # the result as `nfproof verify --json` gives it
    cached: bool = False


@dataclass
class CheckOutcome:
    check: Check
    runs: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0  # wall time of this evaluation

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.runs}
        return next(s for s in SEVERITY if s in statuses or s == "pass")

    @property
    def cached(self) -> bool:
        return bool(self.runs) and all(r.cached for r in self.runs)

    def verdicts(self) -> str:
        if len({r.verdict for r in self.runs}) == 1:
            return self.runs[0].verdict
        return ", ".join(f"{r.strategy}{' ' + r.property if r.property else ''}: {r.verdict}" for r in self.runs)

    def failure_text(self) -> str:
        """What went wrong, per run that did not pass: expected vs got, then the verifier's text."""
        parts = []
        for r in self.runs:
            if r.status != "pass":
                what = f"{self.check.chain} " + ("" if self.check.replay else "under ") + r.strategy + \
                    (f", property {r.property}" if r.property else "")
                parts.append(f"{self.check.label}, {what}: expected {self.check.expect}, got {r.verdict}\n{r.text}")
        return "\n\n".join(parts)


def verify(check: Check, strategy: Strategy, prop: str | None):
    """One run of the verifier (its Result, or a PropertyResult for a property)."""
    from .verify.solver import Budget

    budget = Budget(timeout=check.timeout)
    if prop:
        from .verify.properties import check_property, properties_of
        return check_property(check.nf, properties_of(check.nf)[prop], strategy, check.bound, budget,
                              check.log_choices, check.failover_time, check.max_stall)
    from .models.chain import instances
    from .verify import jobs
    from .verify.chain_alone import alone_checks, combined_verdict, unproved_reason
    from .verify.equivalence import Equivalence
    from .verify.failover import verify_failover
    eq = Equivalence(check.equivalence, check.allow_duplicates)

    def unit(progress):
        return verify_failover(check.nf, strategy, check.bound, budget, check.log_choices, progress, check.unbounded,
                               check.failover_time, check.max_stall, eq)
    members = instances(check.nf)  # a chain: as one unit and each instance alone, side by side
    followers = alone_checks(check.nf, {m: strategy for m in members}, check.bound, check.timeout, check.log_choices,
                             check.failover_time, check.max_stall, eq) if members else []
    jobs.register_classes(check.nf)
    [result], [alone] = jobs.run([(check.label, unit)], [followers], jobs.default_jobs(), jobs.SILENT)
    if alone is not None and members:
        result.alone = alone
        result.verdict = combined_verdict(result, result.alone)
        if result.verdict == "unknown":
            result.reason = unproved_reason(result.alone)
    return result


REPLAY_VERDICTS = {OK: "explained", VIOLATION: "violation", UNKNOWN: "unknown"}  # by `nfproof replay`'s exit code


def replay(check: Check) -> dict:
    """A replay check's record: `nfproof replay TRACE --chain CHAIN ...` run in this process, its
    verdict read from its exit code and its text (the violation's story) from what it prints. A
    check with `pcap` makes its trace first: `nfproof run CHAIN --pcap FILE --fail ... -o TRACE`."""
    import tempfile

    if check.replay["run"] is None:
        return _replay(check, check.replay["trace"])
    from .config import resolved
    r = check.replay["run"]
    with tempfile.TemporaryDirectory(prefix="nfproof-check-") as folder:
        trace = os.path.join(folder, "run.pcapng")
        argv = ["run", resolved(check.chain, check.base_dir), "--pcap", check.replay["pcap"], "--strategy", r["strategy"],
                "--seed", str(r["seed"]), *[a for p in check.params for a in ("--param", p)],
                *[a for f in r["fail"] for a in ("--fail", f)], "-o", trace]
        if r["log_choices"]:
            argv.append("--log-choices")
        if r["failover_time"] is not None:
            argv += ["--failover-time", r["failover_time"]]
        code, text, seconds = _command(argv)
        if code != OK:
            return {"verdict": "error", "seconds": seconds, "text": text, "data": {"argv": argv, "exit": code},
                    "reason": text.splitlines()[-1] if text else f"nfproof run: exit {code}"}
        record = _replay(check, trace)
        record["seconds"] += seconds
        record["data"]["run"] = argv[:-2] + ["-o", "TRACE"]
        return record


def _command(argv: list) -> tuple[int, str, float]:
    """An nfproof command run in this process: (exit code, what it printed, seconds)."""
    import contextlib
    import io

    from .cli import main
    out, err, start = io.StringIO(), io.StringIO(), time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, (out.getvalue() + err.getvalue()).strip(), time.monotonic() - start


def _replay(check: Check, trace: str) -> dict:
    from .config import resolved

    argv = ["replay", trace, "--chain", resolved(check.chain, check.base_dir),
            *[arg for p in check.params for arg in ("--param", p)], "--equivalence", check.equivalence]
    if check.replay["max_stall"] is not None:
        argv += ["--max-stall", check.replay["max_stall"]]
    if check.replay["allow_duplicates"]:
        argv.append("--allow-duplicates")
    code, text, seconds = _command(argv)
    verdict = REPLAY_VERDICTS.get(code, "error")
    return {"verdict": verdict, "seconds": seconds, "text": text, "data": {"argv": argv, "exit": code},
            "reason": "" if verdict in ("explained", "violation") else text.splitlines()[0] if text else f"exit {code}"}


def record_of(result, prop: str | None, check: Check) -> dict:
    """A result as the cache keeps it: verdict, time, reason, the text and the JSON of `nfproof verify`."""
    if prop:
        from .verify.properties import properties_of, story
        text_of = properties_of(check.nf)[prop]
        data = {"verdict": result.verdict, "nf": result.nf, "property": result.property, "strategy": result.strategy,
                "bound": result.bound, "seconds": round(result.seconds, 4), "reason": result.reason,
                "observed": [{"input": i, "gate": g, "text": str(p)} for i, g, p in result.run.observed]
                if result.run else None}
        if result.verdict == "counterexample":
            text = f"error: {result.nf} under {result.strategy} breaks {result.property}: {text_of.text}\n\n{story(result)}"
        elif result.verdict == "proved":
            text = (f"proved: {result.nf} under {result.strategy}, {result.property} for every failover run of up to "
                    f"{result.bound} packets: {text_of.text}")
        else:
            text = f"unknown: {result.nf} under {result.strategy}, {result.property} at bound {result.bound}: {result.reason}"
    else:
        from .verify.report import as_json, error_line, reproduction, story
        data = as_json(result)
        alone = getattr(result, "alone", None)
        hit = next((a for a in alone or [] if a.crash), None)
        if alone:
            data["instances"] = [a.as_json() for a in alone]
        if hit:
            text = hit.error(f"{result.nf} under {result.strategy}")
        elif result.verdict == "counterexample":
            text = f"error: {error_line(result)}\n\n{story(result)}\n\nreproduce (Python):\n{reproduction(result)}"
        elif result.verdict == "proved":
            length = "of any length" if result.unbounded else f"of up to {result.bound} packets"
            unit = " (its instances failing as one unit, and any one of them crashing alone)" if alone else ""
            text = (f"proved: {result.nf}{unit} under {result.strategy} keeps {result.stats['equivalence']} output "
                    f"equivalence for every input "
                    f"sequence {length}, every crash point and every choice")
        else:
            text = f"unknown: {result.nf} under {result.strategy} at bound {result.bound}: {result.reason}"
    return {"verdict": result.verdict, "seconds": result.seconds, "reason": result.reason, "text": text.rstrip(),
            "data": data}


def evaluate(check: Check, cache: verdict_cache.Cache) -> CheckOutcome:
    """Every run of the check, from the cache where nothing it depends on changed."""
    outcome, start = CheckOutcome(check), time.monotonic()
    for strategy, prop in check.runs():
        inputs = (check.replay["trace"] or check.replay["pcap"],) if check.replay else ()
        run_key = verdict_cache.key(check.nf, check.settings(strategy, prop), inputs)
        record, cached = cache.get(run_key), True
        if record is None:
            cached = False
            try:
                record = replay(check) if check.replay else record_of(verify(check, strategy, prop), prop, check)
            except ModelError as e:
                record = {"verdict": "error", "seconds": 0.0, "reason": str(e), "text": f"model error: {e}", "data": {}}
            cache.put(run_key, record)
        verdict = record["verdict"]
        status = "pass" if verdict == check.expect else verdict if verdict in ("unknown", "error") else "fail"
        strategy_text = f"replay {check.replay['shown']}" if check.replay else \
            str(strategy) + (" --log-choices" if check.log_choices else "")
        outcome.runs.append(RunOutcome(strategy_text, prop, verdict, status, record["seconds"], record["reason"],
                                       record["text"], record["data"], cached))
    outcome.seconds = time.monotonic() - start
    return outcome


def exit_code(outcomes: list[CheckOutcome]) -> int:
    statuses = {o.status for o in outcomes}
    return EXIT_CODES[next(s for s in SEVERITY if s in statuses or s == "pass")]


def add_parser(sub):
    p = sub.add_parser(
        "check", help="run the checks of [tool.nfproof] (a CI gate)",
        description="Run every [[tool.nfproof.check]] of ./pyproject.toml (or --config FILE) and compare each "
                    "verdict with its `expect`. Unchanged checks are answered from the cache.",
        epilog="exit codes: 0 every check has its expected verdict, 1 one does not, 2 configuration (or model) "
               "error, 3 a verdict is unknown (timeout or budget; never a pass)")
    p.add_argument("--config", metavar="FILE", help="a pyproject.toml or a TOML file with a [tool.nfproof] table "
                                                    "(default: ./pyproject.toml)")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML (one testcase per check)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--no-cache", action="store_true", help="verify everything again (the cache is neither read "
                                                           "nor written)")
    p.add_argument("--cache-dir", metavar="DIR", help="where verdicts are kept (default: .nfproof-cache/ beside "
                                                      "the config)")
    return p


def run(args) -> int:
    config_path = find(args.config)
    try:
        checks = load(config_path)
    except ConfigError as e:
        for line in e.lines:
            print(f"nfproof check: error: {line}", file=sys.stderr)
        return USAGE
    if args.junit:
        folder = os.path.dirname(os.path.abspath(args.junit))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"--junit {args.junit}: {folder} is not a writable folder")
    folder = None if args.no_cache else args.cache_dir or os.path.join(os.path.dirname(os.path.abspath(config_path)),
                                                                       ".nfproof-cache")
    cache = verdict_cache.Cache(folder)
    live = sys.stderr.isatty()
    outcomes, start = [], time.monotonic()
    for k, check in enumerate(checks, 1):
        if live:
            print(f"\r[{k}/{len(checks)}] {check.name} ...", end="", file=sys.stderr, flush=True)
        outcome = evaluate(check, cache)
        outcomes.append(outcome)
        print(("\r\033[K" if live else "") + progress_line(outcome, k, len(checks)), file=sys.stderr, flush=True)
    code = exit_code(outcomes)
    seconds = time.monotonic() - start
    if args.junit:
        try:
            with open(args.junit, "wb") as f:
                f.write(junit(outcomes, seconds))
        except OSError as e:
            raise UsageError(f"cannot write {args.junit}: {e.strerror}") from None
    if args.json:
        print(json.dumps(as_json(outcomes, config_path, code, cache), indent=2))
    else:
        print(table(outcomes, cache))
        for o in outcomes:
            if o.status != "pass":
                print(f"\n{o.status.upper()} {o.failure_text()}")
    return code


def progress_line(outcome: CheckOutcome, k: int, total: int) -> str:
    cached = " (cached)" if outcome.cached else ""
    return (f"[{k}/{total}] {outcome.status.upper():7} {outcome.check.name}: {outcome.verdicts()} "
            f"(expected {outcome.check.expect}), {outcome.seconds:.2f} s{cached}")


def table(outcomes: list[CheckOutcome], cache: verdict_cache.Cache) -> str:
    rows = [("check", "chain", "strategy", "bound", "expected", "verdict", "seconds", "result")]
    for o in outcomes:
        c = o.check
        for r in o.runs:
            rows.append((c.name, c.chain, r.strategy + (f" {r.property}" if r.property else ""),
                         "-" if c.replay else "any" if c.unbounded else str(c.bound), c.expect, r.verdict, f"{r.seconds:.2f}",
                         r.status + (" (cached)" if r.cached else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i in (3, 6) else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    counts = {s: sum(o.status == s for o in outcomes) for s in SEVERITY}
    summary = (f"{len(outcomes)} check(s): {counts['pass']} passed, {counts['fail']} failed, {counts['unknown']} "
               f"unknown, {counts['error']} error(s)")
    if cache.folder:
        shown = os.path.relpath(cache.folder)
        summary += f"; {cache.hits} verdict(s) from the cache ({cache.folder if shown.startswith('..') else shown})"
    return "\n".join(lines + ["", summary])


def junit(outcomes: list[CheckOutcome], seconds: float) -> bytes:
    """JUnit XML: one testcase per check; a mismatch is a <failure>, an unknown or an error an <error>."""
    counts = {s: sum(o.status == s for o in outcomes) for s in SEVERITY}
    suites = ET.Element("testsuites", name="nfproof check", tests=str(len(outcomes)), failures=str(counts["fail"]),
                        errors=str(counts["unknown"] + counts["error"]), time=f"{seconds:.3f}")
    suite = ET.SubElement(suites, "testsuite", name="nfproof check", tests=str(len(outcomes)),
                          failures=str(counts["fail"]), errors=str(counts["unknown"] + counts["error"]), skipped="0",
                          time=f"{seconds:.3f}")
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname="nfproof.check", name=o.check.name, time=f"{o.seconds:.3f}")
        bad = [r for r in o.runs if r.status != "pass"]
        if bad:
            tag = "failure" if o.status == "fail" else "error"
            first = bad[0]
            element = ET.SubElement(case, tag, type=f"nfproof.{o.status}", message=(
                f"expected {o.check.expect}, got {first.verdict} ({o.check.chain} under {first.strategy})"
                + (f": {first.reason}" if first.reason else "")))
            element.text = o.failure_text()
        passed = [("[verdict from the cache] " if r.cached else "") + r.text for r in o.runs if r.status == "pass"]
        if passed:
            ET.SubElement(case, "system-out").text = "\n\n".join(passed)
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def as_json(outcomes: list[CheckOutcome], config_path: str, code: int, cache: verdict_cache.Cache) -> dict:
    return {
        "config": config_path, "exit": code, "cache": cache.folder, "cache_hits": cache.hits,
        "summary": {s: sum(o.status == s for o in outcomes) for s in SEVERITY},
        "checks": [{"index": o.check.index, "name": o.check.name, "chain": o.check.chain, "expect": o.check.expect,
                    "status": o.status, "seconds": round(o.seconds, 4),
                    "runs": [{"strategy": r.strategy, "property": r.property, "bound": o.check.bound,
                              "unbounded": o.check.unbounded, "verdict": r.verdict, "status": r.status,
                              "seconds": round(r.seconds, 4), "cached": r.cached, "reason": r.reason, "text": r.text,
                              "result": r.data} for r in o.runs]}
                   for o in outcomes],
    }
