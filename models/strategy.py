"""State-management strategies: one precise semantics shared by the verifier and the runtime.

Every strategy runs the failover protocol of DESIGN.md; they differ only in when an input's state
change is *protected* (acknowledged by the standby, or applied at the store) and when its outputs
are *released*. That is captured by the primary's event timeline: for each input i, in order,
`apply i`, then the strategy's `send i` / `protect i` / `release i` events. A crash is a cut of
that timeline: the events before it happened, the rest did not.

From a cut follow `released` (highest input whose outputs reached downstream) and the protected
point r (highest input covered by state the standby holds; for asynchronous updates any prefix of
the sent records may have arrived, so r ranges over 0..sent). The standby resumes from the state
protected at r and the upstream replays inputs r+1.. ; under `none` it starts empty and the
upstream replays only the inputs whose outputs were not released.

Time (DESIGN.md "Time"): the primary processes input i at its arrival a_i and every event of its
timeline that follows `apply i` happens at that instant, so a cut of the timeline also bounds the
crash time (`crash_window`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

STRATEGY_FORMS = ("none", "stateful.checkpoint:N", "stateful.async", "stateful.sync", "stateful.commit:B",
                  "stateless.sync", "stateless.async", "stateless.batch:B", "stateless.cache", "stateless.commit:B")
_PARAMETRISED = {"stateful.checkpoint", "stateful.commit", "stateless.batch", "stateless.commit"}
_PLAIN = {"none", "stateful.async", "stateful.sync", "stateless.sync", "stateless.async", "stateless.cache"}


MUTATIONS = {  # known protocol bugs, injected on purpose to check that the verifier catches them
    "replay-protected-input": "the upstream replays from the protected input r itself, not r+1 (applied twice)",
    "no-protected-release": "the standby does not release the protected outputs the egress has not seen",
    "release-before-ack": "outputs are released before the protection they wait for is acknowledged",
}


class StrategyError(ValueError):
    pass


@dataclass(frozen=True)
class Cut:
    """The primary's progress at a crash: events[:k] happened."""

    k: int
    applied: int
    released: int
    protected: tuple[int, ...]  # possible protected points r (several when updates are asynchronous)


@dataclass(frozen=True)
class Strategy:
    name: str            # e.g. "stateful.commit"
    param: int | None = None
    mutation: str | None = None  # one of MUTATIONS: a deliberately broken protocol
    replay_input: bool = True    # False (--no-replay-input): the upstream keeps nothing, inputs past r are lost
    dedup: bool = True           # False (--no-dedup): the egress lets duplicates out after a failover

    @classmethod
    def parse(cls, text: str) -> "Strategy":
        m = re.fullmatch(r"([a-z.]+)(?::(.*))?", text.strip())
        base, arg = (m.group(1), m.group(2)) if m else (text, None)
        if base in _PLAIN and arg is None:
            return cls(base)
        if base in _PARAMETRISED:
            if arg is not None and re.fullmatch(r"[0-9]+", arg) and int(arg) >= 1:
                return cls(base, int(arg))
            raise StrategyError(f"strategy {base} needs a positive integer parameter, e.g. {base}:4 (got {text!r})")
        raise StrategyError(f"unknown strategy {text!r}; valid: {', '.join(STRATEGY_FORMS)}")

    def __str__(self) -> str:
        text = self.name if self.param is None else f"{self.name}:{self.param}"
        text += "".join(f" {flag}" for flag, on in (("--no-replay-input", not self.replay_input),
                                                    ("--no-dedup", not self.dedup)) if on)
        return text + (f" (mutation: {self.mutation})" if self.mutation else "")

    def mutated(self, mutation: str) -> "Strategy":
        if mutation not in MUTATIONS:
            raise StrategyError(f"unknown mutation {mutation!r}; valid: {', '.join(MUTATIONS)}")
        return replace(self, mutation=mutation)

    def switched(self, replay_input: bool = True, dedup: bool = True) -> "Strategy":
        """The same strategy with the protocol switches --no-replay-input / --no-dedup as given."""
        return replace(self, replay_input=replay_input, dedup=dedup)

    @property
    def replay_starts_at_protected(self) -> bool:
        return self.mutation == "replay-protected-input"

    @property
    def standby_releases_protected(self) -> bool:
        return self.mutation != "no-protected-release"

    @property
    def mode(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def events(self, n: int) -> list[tuple[str, int]]:
        """The primary's timeline for n inputs (batches close when full or at the end of input)."""
        mode, b, out = self.mode, self.param, []
        protect_then_release = [("release", None), ("protect", None)] if self.mutation == "release-before-ack" \
            else [("protect", None), ("release", None)]
        for i in range(1, n + 1):
            out.append(("apply", i))
            if mode == "none":
                out.append(("release", i))
            elif mode == "async":
                out += [("send", i), ("release", i)]
            elif mode in ("sync", "cache"):
                out += [(kind, i) for kind, _ in protect_then_release]
            elif mode in ("checkpoint", "batch"):
                out.append(("release", i))
                if i % b == 0:
                    out.append(("protect", i))
            elif mode == "commit":
                if i % b == 0 or i == n:  # the release covers the whole batch
                    out += [(kind, i) for kind, _ in protect_then_release]
        return out

    def cuts(self, n: int) -> list[Cut]:
        """Every crash point of an n-input run, as the progress it leaves behind."""
        events, out = self.events(n), []
        applied = released = protected = sent = 0
        for k in range(len(events) + 1):
            rs = tuple(range(sent + 1)) if self.mode == "async" else (0,) if self.mode == "none" else (protected,)
            out.append(Cut(k, applied, released, rs))
            if k < len(events):
                kind, i = events[k]
                if kind == "apply":
                    applied = i
                elif kind == "release":
                    released = i
                elif kind == "protect":
                    protected = i
                elif kind == "send":
                    sent = i
        return out

    def failovers(self, n: int) -> dict[tuple[int, int], Cut]:
        """Distinct (released, r) outcomes of a crash, each with the earliest cut reaching it."""
        out: dict[tuple[int, int], Cut] = {}
        for key, (cut, _) in self.failover_points(n).items():
            out.setdefault(key[:2], cut)
        return out

    def failover_points(self, n: int, timed: bool = False) -> dict[tuple, tuple[Cut, int]]:
        """Distinct outcomes of a crash: (released, r), or with `timed` (released, r, applied) (the
        inputs whose clock reads were logged when read), each with the earliest cut reaching it
        and the last one. The cuts reaching one outcome are consecutive, so its crash times are
        one interval: from the time of event `first.k - 1` to the time of event `last_k`
        (`crash_window`)."""
        out: dict[tuple, tuple[Cut, int]] = {}
        for cut in self.cuts(n):
            for r in cut.protected:  # (inputs lost without replay, up to `applied`, tell points apart too)
                key = (cut.released, r, cut.applied) if timed or not self.replay_input else (cut.released, r)
                first, _ = out.get(key, (cut, cut.k))
                out[key] = (first, cut.k)
        return out

    def crash_window(self, n: int, first_k: int, last_k: int) -> tuple[int | None, int | None]:
        """The crash of cuts first_k..last_k happens between the last event that happened and the
        next one: returns the inputs whose arrival times bound it, (lower, upper); None for no
        bound (nothing happened yet: time 0; nothing is left to happen: any time later). Every
        event of input i happens at i's arrival (the primary processes inputs as they arrive;
        a batch closes at the apply of its last input)."""
        events = self.events(n)
        lower = events[first_k - 1][1] if first_k > 0 else None
        upper = events[last_k][1] if last_k < len(events) else None
        return lower, upper

    def replay_start(self, released: int, r: int) -> int:
        """The standby takes over after this input: r (r - 1 under the replay-protected-input bug),
        or under `none` the last released one. Without input replay the inputs after it that the
        primary had been handed are lost; with it the upstream replays them."""
        if not self.replays_from_protected:
            return released
        return max(r - 1, 0) if self.replay_starts_at_protected else r

    @property
    def replays_from_protected(self) -> bool:
        """False for `none`: the standby starts empty and replays only unreleased inputs."""
        return self.name != "none"
