"""Schedules: one failover run forced to a given timeline (`nfproof run CHAIN --pcap INPUTS
--schedule FILE`), the runtime's half of an executable counterexample.

`nfproof verify ... --reproduce DIR` writes a counterexample as DIR/inputs.pcapng (its packets as
frames, at their arrival times, on the port of their side) and DIR/schedule.json; `load` reads and checks the latter. The
format ("nfproof-schedule/1", runtime/README.md section 8) is a written contract: verify/ writes
it with its own code, as the checker never shares the runtime's.

What a schedule forces, for its instance (the worker side is runtime/worker.py):
- the primary's and the replacement's choices, per input (numbered from 1 as the instance
  receives them; for a one-NF chain, the frames of the capture): past the given values, the
  seeded stream as usual;
- the crash: the primary replicates (and has acknowledged) exactly the inputs <= `protected`,
  releases the outputs of inputs <= `released`, applies inputs up to `applied` and dies by SIGKILL
  before the next one; the driver detects it as any failure and fails over;
- the clock: the capture time of tick 0 (`t0_ns`) and the crash time (`crash.time_ns`), so that the
  replacement processes inputs at max(arrival, crash + F, previous) as the counterexample says.
The run's strategy, parameters, --log-choices, --failover-time and --inside come from it too."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

FORMAT = "nfproof-schedule/1"


class ScheduleError(ValueError):
    """A schedule file that cannot be used: the message names the file and the field."""


@dataclass
class Schedule:
    path: str
    chain: str
    strategy: str
    instance: str
    crash: dict                      # {"applied": A, "released": R, "protected": r}, inputs of the instance
    params: list = field(default_factory=list)
    log_choices: bool = False
    failover_time: float | None = None   # seconds on the capture clock
    max_stall: float | None = None       # seconds (for the replay of the run)
    inside: list = field(default_factory=list)
    t0_ns: int | None = None
    crash_ns: int | None = None
    choices: dict = field(default_factory=dict)  # instance -> {"primary"|"standby": {n: [values]}}
    expect: str | None = None

    def part(self, instance: str, generation: int) -> dict:
        """What the worker of `instance` at `generation` is told (InstanceSpec.schedule)."""
        mine = self.choices.get(instance, {})
        if generation == 0:
            part = {"choices": mine.get("primary", {})}
            if instance == self.instance:
                part["crash"] = dict(self.crash)
            return part
        return {"choices": mine.get("standby", {})} if generation == 1 else {}

    def origin(self, first_ns: int) -> int:
        """The run's clock origin: the schedule's t0 (never after the first input)."""
        if self.t0_ns is None:
            return first_ns
        if self.t0_ns > first_ns:
            raise ScheduleError(f"{self.path}: t0_ns {self.t0_ns} is after the first input ({first_ns}); "
                                f"the schedule belongs to another capture")
        return self.t0_ns


def _tuples(value):
    """JSON lists back into the tuples models choose (a Flow, a record)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load(path: str) -> Schedule:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ScheduleError(f"--schedule {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScheduleError(f"--schedule {path}: not JSON ({e}); write it with `nfproof verify --reproduce DIR`") from None

    def need(key, kinds, where=data, name=None):
        name = name or key
        if not isinstance(where, dict) or key not in where:
            raise ScheduleError(f"{path}: `{name}` is missing")
        value = where[key]
        if not isinstance(value, kinds) or kinds is int and isinstance(value, bool):
            raise ScheduleError(f"{path}: `{name}` must be {'an integer' if kinds is int else f'a {kinds.__name__}'}, "
                                f"not {value!r}")
        return value

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ScheduleError(f"{path}: not a schedule (`format` must be {FORMAT!r}); write one with "
                            f"`nfproof verify --reproduce DIR`")
    crash = need("crash", dict)
    points = {k: need(k, int, crash, f"crash.{k}") for k in ("applied", "released", "protected")}
    if any(v < 0 for v in points.values()):
        raise ScheduleError(f"{path}: `crash` points are input numbers >= 0, not {points}")
    if points["protected"] > points["applied"] or points["released"] > points["applied"]:
        raise ScheduleError(f"{path}: `crash`: the primary can protect or release only inputs it applied "
                            f"(applied {points['applied']}, released {points['released']}, protected {points['protected']})")
    strategy = need("strategy", str)
    if strategy == "none" and points["protected"]:
        raise ScheduleError(f"{path}: `crash.protected` is {points['protected']}, but under none nothing is protected")
    choices = {}
    for instance, roles in need("choices", dict).items() if "choices" in data else ():
        if not isinstance(roles, dict) or set(roles) - {"primary", "standby"}:
            raise ScheduleError(f"{path}: `choices.{instance}` maps primary and standby to {{input: [values]}}")
        choices[instance] = {}
        for role, by_input in roles.items():
            try:
                choices[instance][role] = {str(int(n)): [_tuples(v) for v in values] for n, values in by_input.items()}
            except (AttributeError, TypeError, ValueError):
                raise ScheduleError(f"{path}: `choices.{instance}.{role}` maps input numbers to lists of values") from None
    expect = data.get("expect")
    if expect not in (None, "violation", "explained"):
        raise ScheduleError(f"{path}: `expect` is violation or explained, not {expect!r}")
    try:
        return Schedule(path, need("chain", str), strategy, need("instance", str, crash, "crash.instance"), points,
                        list(data.get("params", [])), bool(data.get("log_choices", False)),
                        _seconds(data, "failover_time", path), _seconds(data, "max_stall", path),
                        list(data.get("inside", [])), _ns(data.get("t0_ns"), "t0_ns", path),
                        _ns(crash.get("time_ns"), "crash.time_ns", path), choices, expect)
    except TypeError as e:
        raise ScheduleError(f"{path}: {e}") from None


def _seconds(data: dict, key: str, path: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ScheduleError(f"{path}: `{key}` is a number of seconds >= 0, not {value!r}")
    return float(value)


def _ns(value, key: str, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScheduleError(f"{path}: `{key}` is a time in ns since the epoch, not {value!r}")
    return value
