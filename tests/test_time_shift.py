"""Time-shift invariance (verify/time_shift.py): which NFs a failover proof may start at time 0,
checked three ways: the syntactic test's answers on models made to pass and to fail it; concrete
runs (the other interpreter) of every model it accepts, shifted by random amounts, giving the same
outputs; and verdicts with the shift against verdicts without it and against the timed
enumerator."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings, strategies as st

from nfproof.models import lookup
from nfproof.models.api import NF, Bits, Counter, Flow, Map, Packet, TCP, Time, UDP
from nfproof.models.concrete import initial_state, seeded, step
from nfproof.models.strategy import Strategy
from nfproof.verify import failover
from nfproof.verify.failover import verify_failover
from nfproof.verify.solver import Budget
from nfproof.verify.time_shift import shift_invariant

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_gen  # noqa: E402
import model_gen_time  # noqa: E402
from test_differential_time import BOUNDED, STRATEGIES, check_timed_verdicts  # noqa: E402

CLOCKED = ("firewall", "ratelimit", "csfq-edge", "firewall>nat>lb", "ratelimit>csfq-edge")


@pytest.mark.parametrize("name", CLOCKED)
def test_the_bundled_clocked_models_are_shift_invariant(name):
    assert shift_invariant(lookup(name))


class Absolute(NF):
    name, gates = "absolute", ("out",)
    seen = Map(Flow, Time)

    def handle(self, pkt, ctx):
        self.seen[pkt.flow] = ctx.now()
        if ctx.now() >= 5:  # a time compared with a constant
            ctx.emit(pkt, "out")


class Stamped(NF):
    name, gates = "stamped", ("out",)
    seen = Map(Flow, Time)

    def handle(self, pkt, ctx):
        self.seen[pkt.flow] = ctx.now()
        ctx.emit(pkt.rewrite(label=ctx.now()), "out")  # the clock in a packet


class Expiry(NF):
    name, gates = "expiry", ("out",)
    expires = Map(Flow, Time)

    def handle(self, pkt, ctx):
        until = self.expires.get(pkt.flow)
        if until is None or ctx.now() > until:
            self.expires[pkt.flow] = ctx.now() + 3  # an expiry time: shifts with the clock
            ctx.emit(pkt, "out")
        if until is not None and ctx.now() - 2 <= until + 1:  # offsets on both sides of a comparison
            ctx.emit(pkt.rewrite(label=(ctx.now() - until) & 0xFF), "out")


class Early(NF):
    name, gates = "early", ("out",)
    expires = Map(Flow, Time)

    def handle(self, pkt, ctx):
        until = self.expires.get(pkt.flow)
        if until is None or ctx.now() > until:
            self.expires[pkt.flow] = ctx.now() - 3  # below 0 at time 0: wraps to 2**32 - 3
            ctx.emit(pkt, "out")


class Extended(NF):
    name, gates = "extended", ("out",)
    expires = Map(Flow, Time)

    def handle(self, pkt, ctx):
        until = self.expires.get(pkt.flow)
        if until is None:
            self.expires[pkt.flow] = ctx.now() + 3
        elif ctx.now() <= until:
            self.expires[pkt.flow] = until + 3  # a stored time plus a constant: may climb past 2**32
            ctx.emit(pkt, "out")


class FarExpiry(NF):
    name, gates = "far-expiry", ("out",)
    expires = Map(Flow, Time)

    def handle(self, pkt, ctx):
        until = self.expires.get(pkt.flow)
        if until is None or ctx.now() > until:
            self.expires[pkt.flow] = ctx.now() + (1 << 31)  # past 2**32 for a late enough clock
            ctx.emit(pkt, "out")


class FieldExpiry(NF):
    name, gates = "field-expiry", ("out",)
    expires = Map(Flow, Time)

    def handle(self, pkt, ctx):
        until = self.expires.get(pkt.flow)
        if until is None or ctx.now() > until:
            self.expires[pkt.flow] = ctx.now() + pkt.length  # not a constant
            ctx.emit(pkt, "out")


class Cell(NF):
    name, gates = "cell", ("out",)
    last = Counter(Time)  # starts at 0: time 0 itself, which a shift moves

    def handle(self, pkt, ctx):
        if ctx.now() - self.last.value > 2:
            ctx.emit(pkt, "out")
        self.last.value = ctx.now()


class Unnamed(NF):
    name, gates = "unnamed", ("out",)
    seen = Map(Flow, Bits(32, "Stamp"))  # clock values in a map not declared as times

    def handle(self, pkt, ctx):
        last = self.seen.get(pkt.flow)
        if last is None or ctx.now() - last < 3:
            ctx.emit(pkt, "out")
        self.seen[pkt.flow] = ctx.now()


class Differences(NF):
    name, gates = "differences", ("out",)
    seen = Map(Flow, Time)

    def handle(self, pkt, ctx):
        last = self.seen.get(pkt.flow)
        if last is not None and ctx.now() - last < 3:
            ctx.emit(pkt.rewrite(label=(ctx.now() - last) & 0xFF), "out")
        self.seen[pkt.flow] = ctx.now()


@pytest.mark.parametrize("nf, invariant", [(Absolute, False), (Stamped, False), (Expiry, True), (Early, False),
                                           (Extended, False), (FarExpiry, False), (FieldExpiry, False), (Cell, False),
                                           (Unnamed, False), (Differences, True)])
def test_the_syntactic_test(nf, invariant):
    assert shift_invariant(nf) is invariant


def run_outputs(nf_cls, packets, times):
    state, chooser, out = initial_state(nf_cls), seeded(7), []
    for pkt, t in zip(packets, times):
        out.append(step(nf_cls, state, pkt, chooser, lambda: t).outputs)
    return out


def random_run(rng, universe, n):
    times = sorted(rng.choice([0, 1, 2, 3, 5, 8, 13]) + rng.randrange(3) for _ in range(n))
    times = [t - times[0] for t in times]
    return [rng.choice(universe) for _ in range(n)], times


def test_shifted_concrete_runs_of_the_bundled_models_are_the_same():
    rng = random.Random(1)
    hosts = [0x0A000001, 0x0A000002, 0xC6336401]
    universe = [Packet(proto, rng.choice(hosts), sport, rng.choice(hosts), dport, flags, inbound=inbound)
                for proto in (TCP, UDP) for sport in (1000, 80) for dport in (80, 443)
                for flags in (0x02, 0x12, 0x10, 0x01) for inbound in (False, True)]
    for name in CLOCKED:
        nf = lookup(name)
        for _ in range(150):
            packets, times = random_run(rng, universe, rng.randint(1, 6))
            d = rng.choice([1, 2, 7, 1000, (1 << 30) - 100])
            assert run_outputs(nf, packets, times) == run_outputs(nf, packets, [t + d for t in times]), (name, packets, times, d)


def test_shifted_concrete_runs_of_the_expiry_models():
    """Expiry behaves the same at every shift; Early and FarExpiry, which the test refuses, do not
    (a stored now - 3 wraps at time 0; now + 2**31 wraps once the clock reaches 2**31)."""
    pkt = Packet(UDP, 0x0A000001, 1000, 0xC6336401, 53, 0)
    rng = random.Random(2)
    for _ in range(100):
        packets, times = random_run(rng, [pkt, pkt.rewrite(sport=1001)], rng.randint(1, 6))
        d = rng.choice([1, 2, 7, 1000, (1 << 30) - 100])
        assert run_outputs(Expiry, packets, times) == run_outputs(Expiry, packets, [t + d for t in times])
    assert run_outputs(Early, [pkt] * 2, [0, 1]) != run_outputs(Early, [pkt] * 2, [5, 6])
    assert run_outputs(FarExpiry, [pkt] * 2, [0, 1]) != run_outputs(FarExpiry, [pkt] * 2, [1 << 31, (1 << 31) + 1])


@settings(max_examples=60, **BOUNDED)
@given(model_gen_time.map_clocked_models(), st.data())
def test_shifted_concrete_runs_of_generated_models_are_the_same(model, data):
    """Every generated model the test accepts behaves the same at shifted times (the concrete
    interpreter); a model error must then happen at both times."""
    if not shift_invariant(model.nf):
        return
    universe = data.draw(st.lists(model_gen.small_packets(model), min_size=2, max_size=3, unique=True))
    rng = random.Random(data.draw(st.integers(0, 1000)))
    for _ in range(20):
        packets, times = random_run(rng, universe, rng.randint(1, 5))
        d = rng.choice([1, 3, 1 << 20, (1 << 30) - 100])
        try:
            early = run_outputs(model.nf, packets, times)
        except Exception as e:
            with pytest.raises(type(e)):
                run_outputs(model.nf, packets, [t + d for t in times])
            continue
        assert early == run_outputs(model.nf, packets, [t + d for t in times]), (model.source, packets, times, d)


def test_generated_models_exercise_both_answers():
    answers = set()

    @settings(max_examples=40, **BOUNDED)
    @given(model_gen_time.map_clocked_models())
    def collect(model):
        answers.add(shift_invariant(model.nf))
    collect()
    assert answers == {True, False}


def verdict(nf, text, log, bound, shift: bool, monkeypatch, **times):
    with monkeypatch.context() as m:
        if not shift:
            m.setattr(failover, "shift_invariant", lambda nf_cls: False)
        r = verify_failover(nf, Strategy.parse(text), bound, Budget(timeout=120), log_choices=log, **times)
    assert r.stats.get("first_event_at_zero") is shift
    return r.verdict, len(r.counterexample.run.inputs) if r.counterexample else None


@pytest.mark.parametrize("name", ["firewall", "ratelimit", "csfq-edge", "expiry"])
def test_verdicts_with_and_without_the_shift_agree(name, monkeypatch):
    nf = Expiry if name == "expiry" else lookup(name)
    for text in STRATEGIES:
        for log in (False, True):
            with_shift = verdict(nf, text, log, 3, True, monkeypatch)
            assert with_shift[0] != "unknown"
            assert with_shift == verdict(nf, text, log, 3, False, monkeypatch), (name, text, log)


def test_the_clock_rules_table_with_the_shift(monkeypatch):
    """DESIGN.md "Time", the firewall with timeout 3, F = 4, bound 6, both ways."""
    nf = lookup("firewall").configure({"timeout": "3"})
    for text, log, expected in [("stateful.sync", False, "proved"), ("stateful.checkpoint:2", False, "counterexample"),
                                ("stateful.commit:2", True, "proved")]:
        for shift in (True, False):
            got = verdict(nf, text, log, 6, shift, monkeypatch, failover_time=4)
            assert got[0] == expected, (text, log, shift)


@settings(max_examples=40, **BOUNDED)
@given(model_gen_time.map_clocked_models(nondeterministic=False), st.data())
def test_generated_verdicts_with_the_shift_match_the_enumerator(model, data):
    """tests/test_differential_time.py's checks, on generated models the shift applies to (seen:
    26 proofs and 25 counterexamples)."""
    assume(shift_invariant(model.nf))
    universe = data.draw(st.lists(model_gen.small_packets(model), min_size=2, max_size=2, unique=True))
    failover_time, max_stall = data.draw(st.sampled_from([0, 1, 2])), data.draw(st.sampled_from([0, 1, 2]))
    cases = data.draw(st.lists(st.tuples(st.sampled_from(STRATEGIES), st.booleans()), min_size=1, max_size=2, unique=True))
    check_timed_verdicts(model, universe, failover_time, max_stall, cases)


class Late(NF):
    name, gates = "late", ("out",)

    def handle(self, pkt, ctx):
        if ctx.now() >= 10:
            ctx.emit(pkt, "out")


def test_shifting_an_absolute_clock_would_prove_a_false_claim(monkeypatch):
    """Under sync with F = 4 > S = 0, one packet at 9 that the standby processes at the crash
    time + 4 goes out, which no failure-free run at [9, 9] does. Started at 0, no single packet
    shows that: with the shift the check at bound 1 finds no counterexample (and, with no output
    ever released, calls the proof vacuous). The test rejects the model, so the verifier finds it."""
    assert not shift_invariant(Late)
    honest = verify_failover(Late, Strategy.parse("stateful.sync"), 1, failover_time=4, max_stall=0)
    assert honest.verdict == "counterexample" and honest.counterexample.run.arrivals[0] >= 6
    with monkeypatch.context() as m:
        m.setattr(failover, "shift_invariant", lambda nf_cls: True)
        shifted = verify_failover(Late, Strategy.parse("stateful.sync"), 1, failover_time=4, max_stall=0)
    assert shifted.verdict != "counterexample"


@pytest.mark.parametrize("name", ["firewall", "ratelimit"])
def test_property_verdicts_with_and_without_the_shift_agree(name, monkeypatch):
    from nfproof.verify import properties
    nf = lookup(name)
    (prop,) = properties.properties_of(nf).values()
    for text, log in [("none", False), ("stateful.async", False), ("stateful.sync", False),
                      ("stateful.commit:2", False), ("stateful.commit:2", True)]:
        verdicts = []
        for shift in (True, False):
            with monkeypatch.context() as m:
                if not shift:
                    m.setattr(failover, "shift_invariant", lambda nf_cls: False)
                r = properties.check_property(nf, prop, Strategy.parse(text), 2, Budget(timeout=120), log_choices=log)
            verdicts.append((r.verdict, len(r.run.inputs) if r.run else None))
        assert verdicts[0] == verdicts[1] and verdicts[0][0] != "unknown", (name, text, log, verdicts)
