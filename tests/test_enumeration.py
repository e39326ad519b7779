"""Acceptance (issue 2): an exhaustive explicit-state enumeration agrees with the Z3 verdict for
every strategy at bounds <= 3.

The enumerator (verify/enumerate.py) uses no Z3: every input sequence over a small packet universe,
every cut of the primary's timeline, every protected point, every primary and standby choice, each
run executed by verify.simulate and judged by the exact `explain` search. The NAT is shrunk to a
pool of two ports so that the universe can hit every mapping, the wrong-remote and wrong-protocol
drops and pool exhaustion (three LAN flows for two ports)."""
from __future__ import annotations

import functools
import time

import pytest

from nfproof.models.api import NF, UDP, Bits, Map, Packet, Pool, Port, TCP, addr
from nfproof.models.concrete import initial_state, step
from nfproof.models.nat import Nat
from nfproof.models.strategy import Strategy
from nfproof.models.concrete import backtrack as all_choice_runs
from nfproof.verify.enumerate import EnumerationStats, enumerate_failover
from nfproof.verify.failover import verify_failover
from nfproof.verify.simulate import explain, simulate


class SmallNat(Nat):
    base, ports = 20000, 2


REMOTE, WRONG = addr("198.51.100.1"), addr("198.51.100.2")
HOST1, HOST2 = addr("10.0.0.1"), addr("10.0.0.2")
EXT = Nat.external
UNIVERSE = [
    Packet(TCP, HOST1, 1000, REMOTE, 80),                      # LAN flow A
    Packet(TCP, HOST2, 1000, REMOTE, 80),                      # LAN flow B
    Packet(UDP, HOST1, 1000, REMOTE, 80),                      # LAN flow C (same tuple, other protocol)
    Packet(TCP, REMOTE, 80, EXT, 20000, inbound=True),         # reply to whichever flow holds 20000
    Packet(TCP, REMOTE, 80, EXT, 20001, inbound=True),         # reply to whichever flow holds 20001
    Packet(TCP, WRONG, 80, EXT, 20000, inbound=True),          # from the wrong remote: dropped
    Packet(UDP, REMOTE, 80, EXT, 20001, inbound=True),         # right remote, protocol of flow C
]

BASES = ["none", "stateful.checkpoint:1", "stateful.checkpoint:2", "stateful.async", "stateful.sync",
         "stateful.commit:1", "stateful.commit:2", "stateful.commit:3"]
STATELESS = ["stateless.batch:1", "stateless.batch:2", "stateless.async", "stateless.sync", "stateless.cache",
             "stateless.commit:1", "stateless.commit:2", "stateless.commit:3"]
CASES = [(s, False) for s in BASES + STATELESS] + [(s, True) for s in ("stateful.async", "stateful.checkpoint:2", "none",
                                                                       "stateless.async", "stateless.batch:2")]


@functools.lru_cache(maxsize=None)
def shortest_violation(strategy: str, log_choices: bool, bound: int = 3):
    """Length of the shortest violating run within `bound` (None: none), with the violation."""
    v = enumerate_failover(SmallNat, Strategy.parse(strategy), bound, UNIVERSE, log_choices)
    return (len(v.run.inputs), v) if v else (None, None)


@pytest.mark.parametrize("bound", [1, 2, 3])
@pytest.mark.parametrize("strategy,log_choices", CASES, ids=[s + (" --log-choices" if lc else "") for s, lc in CASES])
def test_enumeration_agrees_with_z3(strategy, log_choices, bound):
    length, violation = shortest_violation(strategy, log_choices)
    explicit = "counterexample" if length is not None and length <= bound else "proved"
    result = verify_failover(SmallNat, Strategy.parse(strategy), bound, log_choices=log_choices)
    assert result.verdict != "unknown", result.reason
    assert result.verdict == explicit, (strategy, log_choices, bound, violation and violation.run.inputs)
    if result.verdict == "counterexample":
        # both searches grow lengths from 1: the solver's counterexample is as short as the enumerator's
        assert len(result.counterexample.run.inputs) == length


def test_expected_verdicts_at_bound_3():
    """The enumeration itself reaches the verdicts DESIGN.md predicts (so agreement is not vacuous)."""
    unsafe = {s for s, lc in CASES if shortest_violation(s, lc)[0] is not None and not lc}
    assert unsafe == {"none", "stateful.checkpoint:1", "stateful.checkpoint:2", "stateful.async",
                      "stateless.batch:1", "stateless.batch:2", "stateless.async"}
    for s in ("stateful.async", "stateful.checkpoint:2", "stateless.async", "stateless.batch:2"):
        assert shortest_violation(s, True)[0] is None, s  # --log-choices makes them safe
    assert shortest_violation("none", True)[0] == 2          # ... but not `none`: nothing is protected
    for s, lc in CASES:
        length = shortest_violation(s, lc)[0]
        assert length in (None, 2), (s, lc, length)       # one packet never suffices: nothing was released before


def test_violation_is_real_and_replayable():
    """The run the enumerator returns is unexplained on re-execution with its recorded decisions."""
    _, v = shortest_violation("stateful.async", False)
    assert v is not None and not v.explanation.explained
    replay = iter(v.decisions)

    def by_index(options):
        return options[next(replay)]

    run = simulate(SmallNat, v.run.strategy, v.run.inputs, v.run.cut, v.run.protected,
                   lambda i: by_index, lambda i: by_index)
    assert run.observed == v.run.observed
    assert not explain(SmallNat, run.inputs, run.observed_outputs).explained
    # the same inputs without a crash are, of course, explained
    state = initial_state(SmallNat)
    outs = [o for p in v.run.inputs for o in step(SmallNat, state, p, lambda opts: opts[0]).outputs]
    assert explain(SmallNat, v.run.inputs, outs).explained


def test_all_choice_runs_covers_every_combination():
    """Backtracking over a decision prefix visits each combination exactly once."""
    def run(chooser):
        return (chooser([1, 2, 3]), chooser(["a", "b"]), chooser([True]))
    results = [r for _, r in all_choice_runs(run)]
    assert sorted(results, key=str) == sorted([(x, y, True) for x in (1, 2, 3) for y in "ab"], key=str)
    assert len(results) == len(set(results)) == 6


def test_enumeration_counts_runs_for_sync():
    """A safe strategy is enumerated fully: every sequence of length 1..3 is tried."""
    stats = EnumerationStats()
    assert enumerate_failover(SmallNat, Strategy.parse("stateful.sync"), 3, UNIVERSE, stats=stats) is None
    u = len(UNIVERSE)
    assert stats.sequences == u + u ** 2 + u ** 3
    assert stats.runs > stats.sequences


def test_universe_reaches_pool_exhaustion():
    """Sanity of the shrunken model: with a pool of two the third flow is dropped (exhaustion is reachable)."""
    state = initial_state(SmallNat)
    outs = [step(SmallNat, state, p, lambda o: o[0]) for p in UNIVERSE[:3]]
    assert [len(o.outputs) for o in outs] == [1, 1, 0] and outs[2].drops == ["pool exhausted"]


def test_enumeration_is_fast():
    t = time.monotonic()
    shortest_violation.cache_clear()
    shortest_violation("stateful.commit:2", False)
    assert time.monotonic() - t < 30


# -- two more NFs, so agreement is not a NAT-only accident --------------------------------------------

Key, Count = Bits(8, "Key"), Bits(8, "Count")


class Counter(NF):
    """Deterministic: stamps each packet with a running count (state matters, choices do not):
    replay rebuilds its state, so async and checkpoints are safe; `none` is not."""

    name = "counter"
    count = Map(Key, Count)

    def handle(self, pkt, ctx):
        c = self.count.get(0)
        n = 1 if c is None else c + 1
        self.count[0] = n
        ctx.emit(pkt.rewrite(flags=n), "out")


class StickyBalancer(NF):
    """Chooses a backend (any of two, always available) per source port and sticks to it."""

    name = "lb"
    backends = Pool(base=1, size=2)
    by_src = Map(Port, Port)

    def handle(self, pkt, ctx):
        b = self.by_src.get(pkt.sport)
        if b is None:
            b = ctx.choose(self.backends.all())
            self.by_src[pkt.sport] = b
        ctx.emit(pkt.rewrite(dport=b), "out")


OTHER_UNIVERSE = [Packet(TCP, 1, 1, 2, 80), Packet(TCP, 1, 2, 2, 80)]
OTHER_CASES = [(nf, s, lc) for nf in (Counter, StickyBalancer)
               for s in ("none", "stateful.checkpoint:1", "stateful.checkpoint:2", "stateful.async", "stateful.sync",
                         "stateful.commit:2") for lc in (False, True)]


@pytest.mark.parametrize("nf_cls,strategy,log_choices", OTHER_CASES,
                         ids=[f"{nf.name}-{s}{'-log' if lc else ''}" for nf, s, lc in OTHER_CASES])
def test_enumeration_agrees_with_z3_other_nfs(nf_cls, strategy, log_choices):
    verdicts = {}
    for bound in (1, 2, 3):
        v = enumerate_failover(nf_cls, Strategy.parse(strategy), bound, OTHER_UNIVERSE, log_choices)
        result = verify_failover(nf_cls, Strategy.parse(strategy), bound, log_choices=log_choices)
        assert result.verdict != "unknown", result.reason
        assert result.verdict == ("counterexample" if v else "proved"), (bound, v and v.run.inputs)
        verdicts[bound] = result.verdict
    # what DESIGN.md predicts: a deterministic NF is safe under every protecting strategy
    unsafe = strategy == "none" or (nf_cls is StickyBalancer and not log_choices
                                    and strategy.split(":")[0] in ("stateful.checkpoint", "stateful.async"))
    assert verdicts[3] == ("counterexample" if unsafe else "proved")


# -- the enumerator's dynamic programming (verify.simulate.observations) against simulate, run by run --
def _observed_by_simulate(nf, strategy, inputs, cut, r, log_choices, arrivals=None, crash_time=None, failover_time=0):
    def run(chooser):
        return simulate(nf, strategy, inputs, cut, r, lambda i: chooser, lambda i: chooser, log_choices,
                        arrivals, crash_time, failover_time, story=False)
    return {tuple(f.observed_outputs) for _, f in all_choice_runs(run)}


def _shapes(strategy, n, arrivals=None, horizon=3):
    timeline = strategy.events(n)
    for cut in strategy.cuts(n):
        times = [None]
        if arrivals is not None:
            low = arrivals[timeline[cut.k - 1][1] - 1] if cut.k > 0 else 0
            high = arrivals[timeline[cut.k][1] - 1] if cut.k < len(timeline) else low + horizon
            times = range(low, high + 1)
        for r in cut.protected:
            for t in times:
                yield cut, r, t


OBSERVATION_CASES = [(s, lc) for s in ("none", "stateful.checkpoint:2", "stateful.async", "stateful.commit:2",
                                       "stateless.batch:2") for lc in (False, True)] + [("stateful.checkpoint:1", False)]


@pytest.mark.parametrize("strategy,log_choices", OBSERVATION_CASES)
def test_observations_are_the_outputs_of_every_run(strategy, log_choices):
    """Every shape's set of observed output sequences, by dynamic programming, equals the set
    simulate gives over every combination of choices: untimed (the NAT, with choices) and timed
    (the idle-timeout firewall of tests/test_time.py's kind: the bundled firewall, clock reads)."""
    from nfproof.models.firewall import Firewall
    from nfproof.verify.simulate import observations
    s = Strategy.parse(strategy)
    sequences = [UNIVERSE[:2], [UNIVERSE[0], UNIVERSE[3]], [UNIVERSE[0], UNIVERSE[1], UNIVERSE[2]],
                 [UNIVERSE[0], UNIVERSE[3], UNIVERSE[0]]]
    compared = 0
    for inputs in sequences:
        for cut, r, _ in _shapes(s, len(inputs)):
            got, _ = observations(SmallNat, s, inputs, cut, r, log_choices)
            assert got == _observed_by_simulate(SmallNat, s, inputs, cut, r, log_choices), (inputs, cut, r)
            compared += 1
    fw = Firewall.configure({"timeout": 3})
    syn, data = Packet(TCP, HOST1, 1000, REMOTE, 80, 2), Packet(TCP, HOST1, 1000, REMOTE, 80, 16)
    for inputs, arrivals in (([syn, data], [0, 3]), ([syn, data, data], [0, 1, 6])):
        for cut, r, t in _shapes(s, len(inputs), arrivals):
            got, _ = observations(fw, s, inputs, cut, r, log_choices, arrivals, t, 2)
            assert got == _observed_by_simulate(fw, s, inputs, cut, r, log_choices, arrivals, t, 2), (arrivals, cut, r, t)
            compared += 1
    assert compared > 20


def test_the_enumerator_agrees_with_its_exhaustive_form():
    """The verdicts and the violation returned (same run, same decisions) do not depend on the
    dynamic programming; and it is the product of choices it removes (a run count far larger)."""
    for strategy, log_choices in CASES[::3]:
        fast, slow = EnumerationStats(), EnumerationStats()
        new = enumerate_failover(SmallNat, Strategy.parse(strategy), 2, UNIVERSE[:4], log_choices, stats=fast)
        old = enumerate_failover(SmallNat, Strategy.parse(strategy), 2, UNIVERSE[:4], log_choices, stats=slow,
                                 exhaustive=True)
        assert (new is None) == (old is None), strategy
        if old is not None:
            assert (new.decisions, new.run.inputs, new.run.cut) == (old.decisions, old.run.inputs, old.run.cut)
        assert fast.sequences == slow.sequences and fast.runs <= slow.runs


def test_observations_miss_nothing_a_mutation_would_hide(monkeypatch):
    """The comparison above can fail: a dynamic programming that merges partial runs without
    looking at their states (every state frozen alike) loses runs of a NAT under stateful.async."""
    import nfproof.verify.simulate as sim
    s = Strategy.parse("stateful.async")
    inputs = [UNIVERSE[0], UNIVERSE[1], UNIVERSE[3]]
    monkeypatch.setattr(sim, "freeze_state", lambda state: 0)
    differs = 0
    for cut, r, _ in _shapes(s, len(inputs)):
        broken, _ = sim.observations(SmallNat, s, inputs, cut, r, False, step_cache={})
        differs += broken != _observed_by_simulate(SmallNat, s, inputs, cut, r, False)
    assert differs > 0
