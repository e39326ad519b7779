"""`[tool.nfproof]`: the checks a project gates its CI on (`nfproof check`, the pytest plugin).

Read from a pyproject.toml (or any TOML file with the same table), one `[[tool.nfproof.check]]`
table per check, validated into `Check`s before anything runs: the model is loaded, the
strategies parsed, durations converted to the model's clock ticks. A check with `bound` (or
`unbounded`) is a proof (`nfproof verify`, expect proved | counterexample); one with `trace` is a
recorded run to replay (`nfproof replay`, expect explained | violation). Every problem is one line
naming the file, the check (its index and name), the key and the fix; all of them are reported
together (`ConfigError.lines`). Paths (model files, traces) are relative to the config's folder.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field

from .models import lookup
from .models.api import ModelError, NF, ParamError
from .models.strategy import MUTATIONS, STRATEGY_FORMS, Strategy, StrategyError
from .cmd_verify import ALL_STRATEGIES, EQUIVALENCES, configured, duration, ticks
from .errors import UsageError

VERIFY_VERDICTS = ("proved", "counterexample")   # what `nfproof verify` decides
REPLAY_VERDICTS = ("explained", "violation")     # what `nfproof replay` decides
DEFAULT_TIMEOUT = 60.0                           # seconds per run, as `nfproof verify --timeout`

KEYS = {  # every key a check may have -> what it holds (for error messages)
    "name": "a label for reports (default: chain, strategy and bound)",
    "chain": "an NF or chain, as `nfproof verify CHAIN` takes it",
    "strategy": "a strategy name, a list of them, or 'all'",
    "bound": "input packets, a positive integer",
    "unbounded": "true: prove for every number of packets",
    "expect": "proved | counterexample (replay checks: explained | violation)",
    "params": "model parameters: a table NF.NAME = value, or a list of 'NF.NAME=VALUE'",
    "log-choices": "true: the primary logs its choices",
    "equivalence": "the output equivalence: " + ", ".join(EQUIVALENCES),
    "failover-time": "seconds (or '500ms'): how long a failover takes",
    "max-stall": "seconds (or '500ms'): the stall a failure-free run may have",
    "allow-duplicates": "true: an output repeated on an egress is no violation",
    "no-replay-input": "true: the protocol without input replay after a failover (verify check)",
    "no-dedup": "true: the protocol without duplicate suppression at the egress (verify check)",
    "property": "a named property of the model (or 'all') instead of output equivalence",
    "mutation": "a known protocol bug to inject (" + ", ".join(MUTATIONS) + ")",
    "timeout": "seconds per strategy (default 60)",
    "trace": "a recorded run to replay (replay check)",
    "pcap": "a capture to run with an injected failure and replay (replay check, with `fail`)",
    "fail": "the failure(s) to inject into the pcap's run, NF@PKT as `nfproof run --fail` takes it, e.g. nat@200",
    "seed": "the pcap run's seed (default 0)",
}
REPLAY_KEYS = ("trace", "pcap", "fail")
VERIFY_ONLY_KEYS = ("strategy", "bound", "unbounded", "log-choices", "failover-time", "property", "mutation", "timeout",
                    "no-replay-input", "no-dedup")
RUN_KEYS = ("strategy", "log-choices", "failover-time", "seed")  # a pcap check's run options


class ConfigError(UsageError):
    """One or more configuration problems, one line each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass
class Check:
    """One validated check: what to verify and which verdict it must have."""

    index: int                      # 1-based, as in the file
    name: str
    expect: str
    chain: str                      # as written in the config
    nf: type[NF] | None = None      # the configured model
    strategies: list[Strategy] = field(default_factory=list)
    bound: int = 8
    unbounded: bool = False
    log_choices: bool = False
    equivalence: str = "strict"
    allow_duplicates: bool = False
    failover_time: int | None = None  # ticks of the model's clock
    max_stall: int | None = None
    properties: list[str] = field(default_factory=list)  # empty: output equivalence
    timeout: float = DEFAULT_TIMEOUT
    params: list[str] = field(default_factory=list)      # NF.NAME=VALUE, as --param takes them
    replay: dict | None = None      # a replay check: trace (as written and absolute), max_stall, allow_duplicates
    base_dir: str = "."

    @property
    def label(self) -> str:
        return f"check {self.index} ({self.name!r})"

    def runs(self) -> list[tuple[Strategy | None, str | None]]:
        """The verifier runs the check consists of: one per strategy (and per property); a replay
        check is one run (None, None)."""
        if self.replay:
            return [(None, None)]
        return [(s, p) for p in (self.properties or [None]) for s in self.strategies]

    def settings(self, strategy: Strategy | None, prop: str | None) -> dict:
        """Everything a run's verdict depends on besides the code and the files (the cache key's options)."""
        if self.replay:
            settings = {"replay": self.replay["trace"], "chain": self.chain, "params": sorted(self.params),
                        "equivalence": self.equivalence, "max_stall": self.replay["max_stall"],
                        "allow_duplicates": self.replay["allow_duplicates"]}
            if self.replay["run"] is not None:  # the runtime makes the run: its code decides too
                from .cache import runtime_digest
                settings.update(pcap=self.replay["pcap"], run=self.replay["run"], runtime=runtime_digest())
            return settings
        return {"chain": self.chain, "params": sorted(self.params), "strategy": str(strategy), "property": prop,
                "bound": self.bound, "unbounded": self.unbounded, "log_choices": self.log_choices,
                "equivalence": self.equivalence, "allow_duplicates": self.allow_duplicates,
                "failover_time": self.failover_time, "max_stall": self.max_stall}


def find(explicit: str | None, cwd: str | None = None) -> str:
    """The config file: `--config FILE`, else ./pyproject.toml."""
    if explicit:
        if not os.path.isfile(explicit):
            raise UsageError(f"--config {explicit}: no such file; give a pyproject.toml or a TOML file with a "
                             f"[tool.nfproof] table")
        return explicit
    path = os.path.join(cwd, "pyproject.toml") if cwd else "pyproject.toml"
    if not os.path.isfile(path):
        raise UsageError(f"no pyproject.toml in {cwd or os.getcwd()}; run from the project's root or give "
                         f"--config FILE")
    return path


def load(path: str) -> list[Check]:
    """The checks of the [tool.nfproof] table in `path`, validated (ConfigError if any is wrong)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    table = data.get("tool", {}).get("nfproof") if isinstance(data.get("tool"), dict) else None
    example = "[[tool.nfproof.check]]\\nchain = \"nat\"\\nstrategy = \"stateful.sync\"\\nbound = 4\\nexpect = \"proved\""
    if not isinstance(table, dict):
        raise ConfigError([f"{path}: no [tool.nfproof] table; add one check per [[tool.nfproof.check]] table, "
                           f"e.g. {example}"])
    errors = [f"{path}: [tool.nfproof]: unknown key {k!r}{_did_you_mean(k, ['check'])}; valid keys: check"
              for k in table if k != "check"]
    tables = table.get("check", [])
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        errors.append(f"{path}: [tool.nfproof] has no checks; write each as a [[tool.nfproof.check]] table, "
                      f"e.g. {example}")
        raise ConfigError(errors)
    base_dir = os.path.dirname(os.path.abspath(path))
    checks, names = [], {}
    for index, entry in enumerate(tables, 1):
        try:
            check = from_table(entry, index, base_dir)
        except ConfigError as e:
            errors += [f"{path}: {line}" for line in e.lines]
            continue
        if check.name in names:
            errors.append(f"{path}: {check.label}: name {check.name!r} is also check {names[check.name]}'s; give "
                          f"each check its own `name`")
        names.setdefault(check.name, index)
        checks.append(check)
    if errors:
        raise ConfigError(errors)
    return checks


def from_table(entry: dict, index: int, base_dir: str, expect_required: bool = True, label: str | None = None) -> Check:
    """One check from its table (keys as in the config file); ConfigError naming every bad key.
    Without `expect_required` (a verification asked for from Python) `expect` may be left out;
    `label` names the check in errors (default: its index and name)."""
    name = entry.get("name", _default_name(entry))
    label = label or f"check {index}" + (f" ({name!r})" if isinstance(name, str) and name else "")
    errors = []

    def bad(key: str, message: str):
        errors.append(f"{label}: {key}: {message}")

    for key in entry:
        if key not in KEYS:
            errors.append(f"{label}: unknown key {key!r}{_did_you_mean(key, KEYS)}; valid keys: {', '.join(KEYS)}")
    if name is not None and not (isinstance(name, str) and name.strip()):
        bad("name", "give a non-empty string, e.g. name = \"nat-sync\"")
    expect = entry.get("expect")
    replay = any(k in entry for k in REPLAY_KEYS)
    valid_expect = REPLAY_VERDICTS if replay else VERIFY_VERDICTS
    if expect is None and expect_required:
        errors.append(f"{label}: missing key 'expect'; write expect = \"{valid_expect[0]}\" (valid: "
                      f"{', '.join(valid_expect)})")
    elif expect is not None and expect not in valid_expect:
        other = "a replay verdict (checks with `trace`)" if expect in REPLAY_VERDICTS else \
            "a verify verdict (checks with `bound`)" if expect in VERIFY_VERDICTS else "not a verdict"
        bad("expect", f"{expect!r} is {other}; valid here: {', '.join(valid_expect)}")

    chain = entry.get("chain")
    nf_cls = None
    if chain is None:
        errors.append(f"{label}: missing key 'chain'; write the NF or chain, e.g. chain = \"nat\" or "
                      f"chain = \"models/mynf.py:MyNF\"")
    elif not isinstance(chain, str) or not chain.strip():
        bad("chain", "give the NF or chain as a string, e.g. \"nat\" or \"firewall>nat\"")
    else:
        nf_cls = _model(chain, base_dir, bad)

    params = _params(entry.get("params"), bad)
    if nf_cls is not None and params:
        try:
            nf_cls = configured(nf_cls, params)
        except (ParamError, UsageError) as e:
            bad("params", str(e).replace("--param ", ""))
            nf_cls = None

    if replay:
        return _replay_check(entry, index, name, label, expect, chain, nf_cls, params, base_dir, bad, errors)
    allow_duplicates = _bool(entry, "allow-duplicates", bad)
    strategies = [s.switched(not _bool(entry, "no-replay-input", bad), not _bool(entry, "no-dedup", bad))
                  for s in _strategies(entry.get("strategy"), bad, errors, label)]
    unbounded = _bool(entry, "unbounded", bad)
    bound = entry.get("bound", 8 if unbounded else None)
    if bound is None:
        errors.append(f"{label}: missing key 'bound'; write bound = 4 (input packets) or unbounded = true")
    elif isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
        bad("bound", f"{bound!r} is not a number of packets; give a positive integer, e.g. bound = 4")
    log_choices = _bool(entry, "log-choices", bad)

    equivalence = entry.get("equivalence", "strict")
    if equivalence not in EQUIVALENCES:
        bad("equivalence", f"unknown equivalence {equivalence!r}; valid: {', '.join(EQUIVALENCES)}")

    times = {}
    for key in ("failover-time", "max-stall"):
        if key not in entry:
            times[key] = None
            continue
        value = entry[key]
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise argparse.ArgumentTypeError(f"{value!r} is not a duration: give seconds, e.g. {key} = 4 or "
                                                 f"{key} = \"500ms\"")
            seconds = duration(str(value))
            times[key] = ticks(nf_cls, seconds, key) if nf_cls is not None else None
        except argparse.ArgumentTypeError as e:
            bad(key, str(e))
        except UsageError as e:
            bad(key, str(e).removeprefix(key + " "))

    properties = []
    prop = entry.get("property")
    if prop is not None:
        if not isinstance(prop, str):
            bad("property", "give a property name as a string, or 'all'")
        elif nf_cls is not None:
            from .verify.properties import properties_of
            known = properties_of(nf_cls)
            if not known:
                bad("property", f"{chain} declares no named properties (bundled ones: nat, firewall, lb, ratelimit)")
            elif prop != "all" and prop not in known:
                bad("property", f"unknown property {prop!r} of {chain}; valid: {', '.join(known)}, all")
            else:
                properties = list(known) if prop == "all" else [prop]
        if unbounded:
            bad("unbounded", "a property is checked up to `bound` packets only; remove unbounded = true")

    mutation = entry.get("mutation")
    if mutation is not None:
        if mutation not in MUTATIONS:
            bad("mutation", f"unknown mutation {mutation!r}; valid: {', '.join(MUTATIONS)}")
        else:
            strategies = [s.mutated(mutation) for s in strategies]

    if properties and (equivalence != "strict" or allow_duplicates
                       or any(not (s.replay_input and s.dedup) for s in strategies)):
        bad("property", "a property is checked over the default protocol: drop equivalence, allow-duplicates, "
                        "no-replay-input and no-dedup")

    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        bad("timeout", f"{timeout!r} is not a number of seconds; give a positive number, e.g. timeout = 60")

    if errors:
        raise ConfigError(errors)
    return Check(index=index, name=name,
                 expect=expect, chain=chain, nf=nf_cls, strategies=strategies, bound=bound, unbounded=unbounded,
                 log_choices=log_choices, equivalence=equivalence, allow_duplicates=allow_duplicates,
                 failover_time=times["failover-time"],
                 max_stall=times["max-stall"], properties=properties, timeout=float(timeout), params=params,
                 base_dir=base_dir)


def _replay_check(entry, index, name, label, expect, chain, nf_cls, params, base_dir, bad, errors) -> Check:
    """A check by `nfproof replay` of a recorded run (`trace`), or of a run of a capture with
    injected failures (`pcap` and `fail`, run by `nfproof run` first)."""
    run = "pcap" in entry or "fail" in entry
    for key in VERIFY_ONLY_KEYS:
        if key in entry and not (run and key in RUN_KEYS):
            bad(key, "does not apply to a replay check; remove it" + (
                f" (a run of a capture takes {', '.join(RUN_KEYS)})" if key not in RUN_KEYS else
                f" (or run a capture: pcap = \"in.pcap\" and fail = \"NF@PKT\")"))
    if "seed" in entry and not run:
        bad("seed", "applies to a run of a capture (with `pcap`); remove it")
    if "trace" in entry and run:
        bad("trace", "a replay check has either `trace` (a recorded run) or `pcap` and `fail` (a run to make)")
    files = {}
    for key in ("trace", "pcap"):
        value = entry.get(key)
        if key not in entry:
            continue
        if not isinstance(value, str) or not value:
            bad(key, f"give the file as a string, e.g. {key} = \"runs/nat.{'pcapng' if key == 'trace' else 'pcap'}\"")
        else:
            files[key] = os.path.normpath(os.path.join(base_dir, value))
            if not os.path.isfile(files[key]):
                bad(key, f"{value} not found in {base_dir} (paths are relative to the config file's folder)")
    path = files.get("trace")
    run_options = _run_options(entry, bad) if run else None
    equivalence = entry.get("equivalence", "strict")
    if equivalence not in EQUIVALENCES:
        bad("equivalence", f"unknown equivalence {equivalence!r}; valid: {', '.join(EQUIVALENCES)}")
    stall = entry.get("max-stall")
    if stall is not None:
        try:
            if isinstance(stall, bool) or not isinstance(stall, (int, float, str)):
                raise argparse.ArgumentTypeError(f"{stall!r} is not a duration: give seconds, e.g. max-stall = 1")
            duration(str(stall))
        except argparse.ArgumentTypeError as e:
            bad("max-stall", str(e))
    allow_duplicates = _bool(entry, "allow-duplicates", bad)
    if errors:
        raise ConfigError(errors)
    shown = entry.get("trace") or entry.get("pcap")
    return Check(index=index, name=name, expect=expect, chain=chain, nf=nf_cls, equivalence=equivalence,
                 params=params, base_dir=base_dir, strategies=[],
                 replay={"trace": path, "pcap": files.get("pcap"), "shown": shown, "run": run_options,
                         "max_stall": None if stall is None else str(stall), "allow_duplicates": allow_duplicates})


def _run_options(entry: dict, bad) -> dict:
    """A pcap check's `nfproof run` options: fail, strategy, log-choices, failover-time, seed."""
    if "pcap" not in entry:
        bad("fail", "injects a failure into a run of a capture: give the capture too, pcap = \"in.pcap\"")
    fail = entry.get("fail")
    fails = [fail] if isinstance(fail, str) else fail if isinstance(fail, list) else None
    if fail is None:
        bad("pcap", "a run of a capture needs the failure to inject: fail = \"NF@PKT\", e.g. fail = \"nat@200\"")
        fails = []
    elif not fails or not all(isinstance(f, str) and re.fullmatch(r"\s*[^@\s]+\s*@\s*[0-9]+\s*", f) for f in fails):
        bad("fail", f"{fail!r}: write NF@PKT (the instance and the input before which it is killed), e.g. "
                    f"fail = \"nat@200\", or a list of them")
        fails = []
    strategy = entry.get("strategy", "none")
    try:
        if not isinstance(strategy, str):
            raise StrategyError(f"a run takes one strategy, as a string, not {strategy!r}")
        Strategy.parse(strategy)
    except StrategyError as e:
        bad("strategy", str(e))
    seed = entry.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        bad("seed", f"{seed!r} is not an integer from 0 to 2^64-1")
    failover = entry.get("failover-time")
    if failover is not None:
        try:
            if isinstance(failover, bool) or not isinstance(failover, (int, float, str)):
                raise argparse.ArgumentTypeError(f"{failover!r} is not a duration: give seconds, e.g. failover-time = 1")
            duration(str(failover))
        except argparse.ArgumentTypeError as e:
            bad("failover-time", str(e))
    return {"fail": [f.strip() for f in fails], "strategy": strategy, "log_choices": _bool(entry, "log-choices", bad),
            "failover_time": None if failover is None else str(failover), "seed": seed}


def _default_name(entry: dict) -> str:
    """`chain strategy [--log-choices] [mutation] [property] bound N` (`chain replay TRACE`), from the
    values as written."""
    if "trace" in entry:
        return f"{entry.get('chain')} replay {entry['trace']}"
    if "pcap" in entry:
        fail = entry.get("fail")
        return (f"{entry.get('chain')} run {entry['pcap']} {entry.get('strategy', 'none')}"
                + (" --log-choices" if entry.get("log-choices") is True else "")
                + "".join(f" --fail {f}" for f in (fail if isinstance(fail, list) else [fail]) if isinstance(f, str)))
    strategy = entry.get("strategy")
    parts = [entry.get("chain"), ",".join(map(str, strategy)) if isinstance(strategy, list) else strategy,
             "--log-choices" if entry.get("log-choices") is True else None, entry.get("mutation"),
             entry.get("property"), "unbounded" if entry.get("unbounded") is True else f"bound {entry.get('bound')}"]
    return " ".join(str(p) for p in parts if p is not None)


def resolved(chain: str, base_dir: str) -> str:
    """The chain with its relative model-file references made absolute (from the config's folder)."""
    return ">".join(m.group(1) + os.path.normpath(os.path.join(base_dir, m.group(2))) + m.group(3)
                    if (m := _file_member(member)) else member for member in chain.split(">"))


def _file_member(member: str):
    """A match (prefix, relative path, ':Class...') if a chain member names a model by a relative file path."""
    m = re.fullmatch(r"(\s*(?:[A-Za-z_][A-Za-z0-9_#-]*\s*=)?\s*)([^:\[\]=]+?)(\s*:.*)", member, re.S)
    return m if m and (m.group(2).endswith(".py") or "/" in m.group(2)) and not os.path.isabs(m.group(2)) else None


def _model(chain: str, base_dir: str, bad) -> type[NF] | None:
    """The model the chain names, with file references read relative to the config's folder."""
    for member in chain.split(">"):
        m = _file_member(member)
        if m and not os.path.isfile(os.path.join(base_dir, m.group(2))):
            bad("chain", f"model file {m.group(2)} not found in {base_dir} (paths are relative to the config "
                         f"file's folder)")
            return None
    try:
        return lookup(resolved(chain, base_dir))
    except KeyError as e:
        bad("chain", e.args[0] if e.args else str(e))
    except (ParamError, ModelError) as e:
        bad("chain", str(e))
    return None


def _params(value, bad) -> list[str]:
    """`params` as NF.NAME=VALUE settings: a table (`"nat.ports" = 2`, or nested `nat = {ports = 2}`)
    or a list of strings."""
    if value is None:
        return []
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return list(value)
        bad("params", "a list of params holds strings 'NF.NAME=VALUE', e.g. [\"nat.ports=2\"]")
        return []
    if not isinstance(value, dict):
        bad("params", "give a table, e.g. params = { \"nat.ports\" = 2 }, or a list [\"nat.ports=2\"]")
        return []
    out = []
    for key, v in value.items():
        items = [(f"{key}.{k}", w) for k, w in v.items()] if isinstance(v, dict) else [(key, v)]
        for setting, w in items:
            if isinstance(w, bool) or not isinstance(w, (int, float, str)):
                bad("params", f"{setting} = {w!r}: give a number or a string (times in seconds, e.g. \"500ms\")")
                continue
            out.append(f"{setting}={w}")
    return out


def _strategies(value, bad, errors, label) -> list[Strategy]:
    if value is None:
        errors.append(f"{label}: missing key 'strategy'; write e.g. strategy = \"stateful.sync\" or a list "
                      f"(valid: {', '.join(STRATEGY_FORMS)}, all)")
        return []
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) for n in names):
        bad("strategy", f"give a strategy name or a list of names (valid: {', '.join(STRATEGY_FORMS)}, all)")
        return []
    out = []
    for text in names:
        try:
            out += [Strategy.parse(s) for s in ALL_STRATEGIES] if text == "all" else [Strategy.parse(text)]
        except StrategyError as e:
            bad("strategy", str(e))
    return out


def _bool(entry: dict, key: str, bad) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        bad(key, f"{value!r} is not a boolean; write {key} = true or {key} = false")
        return False
    return value


def _did_you_mean(key: str, valid) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
