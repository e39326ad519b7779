"""Time in proofs (issue 11 item 2): clock reads are verified nondeterminism under exactly the rules
of DESIGN.md "Time", in the Z3 check, the concrete simulation and the explicit-state enumerator,
and the two agree; plus the gates a proof's bound never exercises (issue 10 item 7).

Models here are minimal on purpose: an idle-timeout firewall (a SYN opens its connection; data
passes and refreshes it while it was idle at most T ticks, else it is dropped) and a token bucket
(capacity C, R tokens per tick), both at one tick per second."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import pytest

from nfproof.models.api import NF, TCP, Bits, Counter, Flow, Map, Packet, addr, flags
from nfproof.models.strategy import Strategy
from nfproof.verify import solver as smt
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover
from nfproof.verify.induction import reads_clock
from nfproof.verify.report import as_json, story
from nfproof.verify.simulate import explain, simulate

Time = Bits(32, "Time")


class IdleFirewall(NF):
    """Theory of operation: a SYN opens (or reopens) its flow's connection at the time it is
    processed and passes; any other packet passes, refreshing the connection, while the connection
    was idle at most `timeout` ticks, and is dropped otherwise (or when there is none)."""
    name = "idle-firewall"
    ticks_per_second = 1
    timeout = 3
    last = Map(Flow, Time)  # flow -> when its connection last saw a packet

    def handle(self, pkt, ctx):
        now = ctx.now()
        if pkt.flags & flags("S"):
            self.last[pkt.flow] = now
            return ctx.emit(pkt, "out")
        seen = self.last.get(pkt.flow)
        if seen is None or now - seen > self.timeout:
            return ctx.drop("no live connection")
        self.last[pkt.flow] = now
        ctx.emit(pkt, "out")


class TokenBucket(NF):
    """Theory of operation: one bucket of `capacity` tokens, full at the start, refilled by `rate`
    tokens per tick since the last packet (capped at the capacity); a packet passes if a token is
    left and spends it, else it is dropped. The state counts the tokens spent (0: full)."""
    name = "token-bucket"
    ticks_per_second = 1
    capacity, rate = 2, 1
    spent = Counter(Bits(8, "Tokens"))
    last = Counter(Time)

    def handle(self, pkt, ctx):
        now = ctx.now()
        refill = (now - self.last) * self.rate
        spent = self.spent - refill if self.spent > refill else 0
        self.last = now
        if spent >= self.capacity:
            self.spent = spent
            return ctx.drop("no token")
        self.spent = spent + 1
        ctx.emit(pkt, "out")


@functools.lru_cache(maxsize=None)
def firewall(timeout: int) -> type[NF]:
    return type(f"IdleFirewall{timeout}", (IdleFirewall,), {"timeout": timeout, "name": f"idle-firewall-{timeout}"})


@functools.lru_cache(maxsize=None)
def bucket(capacity: int, rate: int) -> type[NF]:
    return type(f"TokenBucket{capacity}x{rate}", (TokenBucket,), {"capacity": capacity, "rate": rate})


HOST, SERVER = addr("10.0.0.1"), addr("198.51.100.1")
SYN = Packet(TCP, HOST, 1000, SERVER, 80, flags("S"))
DATA = Packet(TCP, HOST, 1000, SERVER, 80, flags("A"))
FIREWALL_UNIVERSE = [SYN, DATA]
BUCKET_UNIVERSE = [DATA]

COLUMNS = [("stateful.sync", False), ("stateful.checkpoint:2", False), ("stateful.checkpoint:2", True),
           ("stateful.commit:2", False), ("stateful.commit:2", True), ("stateful.async", False), ("none", False)]
# DESIGN.md "Time", the idle-timeout firewall with F = S = 4 (True: proved)
TABLE = {3: [True, False, True, False, True, False, True],
         6: [True, False, True, False, True, False, False]}
CELLS = [(t, s, lc, expected) for t, row in TABLE.items() for (s, lc), expected in zip(COLUMNS, row)]


def cell_id(cell):
    t, s, lc, _ = cell
    return f"T={t} {s}{' --log-choices' if lc else ''}"


@functools.lru_cache(maxsize=None)
def enumerated(model, strategy, log_choices, bound, failover_time, max_stall):
    nf_cls = firewall(model) if isinstance(model, int) else bucket(*model)
    universe = FIREWALL_UNIVERSE if isinstance(model, int) else BUCKET_UNIVERSE
    return enumerate_failover(nf_cls, Strategy.parse(strategy), bound, universe, log_choices,
                              failover_time=failover_time, max_stall=max_stall)


def z3_verdict(nf_cls, strategy, log_choices, bound, failover_time, max_stall, timeout=60.0):
    result = verify_failover(nf_cls, Strategy.parse(strategy), bound, smt.Budget(timeout=timeout), log_choices,
                             failover_time=failover_time, max_stall=max_stall)
    assert result.verdict != "unknown", result.reason
    if result.counterexample:  # confirmed concretely: the run is real and no failure-free timing explains it
        run = result.counterexample.run
        assert run.arrivals is not None and run.crash_time is not None
        assert not explain(nf_cls, run.inputs, run.observed_outputs, run.arrivals, max_stall).explained
    return result


# --- DESIGN.md's table -----------------------------------------------------------------------------

SLOW_Z3 = {(3, "none", False)}  # a proof whose queries take ~1 min at bound 4: bound 2 here (T = 6 fails at 2)


@pytest.mark.parametrize("cell", CELLS, ids=[cell_id(c) for c in CELLS])
def test_design_table_with_z3(cell):
    timeout, strategy, log_choices, proved = cell
    bound = 2 if (timeout, strategy, log_choices) in SLOW_Z3 else 4
    result = z3_verdict(firewall(timeout), strategy, log_choices, bound, 4, 4)
    assert (result.verdict == "proved") == proved, (result.verdict, result.reason)


@pytest.mark.slow
def test_design_table_none_at_bound_4_with_z3():
    result = z3_verdict(firewall(3), "none", False, 4, 4, 4, timeout=600)
    assert result.verdict == "proved"


@pytest.mark.parametrize("cell", CELLS, ids=[cell_id(c) for c in CELLS])
def test_design_table_with_the_enumerator(cell):
    """Arrival gaps 0, 1, 3, 6 as in DESIGN.md; bound 4 for the counterexamples (at T = 6 they
    need four packets), bound 3 for the proofs (bound 4: the slow test, ~10-20 s each)."""
    timeout, strategy, log_choices, proved = cell
    bound = 3 if proved else 4
    violation = enumerated(timeout, strategy, log_choices, bound, 4, 4)
    assert (violation is None) == proved, violation and story_of(violation)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS, ids=[cell_id(c) for c in CELLS])
def test_design_table_with_the_enumerator_at_bound_4(cell):
    timeout, strategy, log_choices, proved = cell
    assert (enumerated(timeout, strategy, log_choices, 4, 4, 4) is None) == proved


def story_of(violation):
    return "\n".join(f"{e.actor} {e.text}" for e in violation.run.events)


LONG_STALL_Z3 = [True, False, True, False, True, False, True]  # S = 8, T = 6, arbitrary arrival gaps


@pytest.mark.parametrize("column,proved", list(zip(COLUMNS, LONG_STALL_Z3)),
                         ids=[s + (" --log-choices" if lc else "") for s, lc in COLUMNS])
def test_a_long_stall(column, proved):
    """S = 8, T = 6. DESIGN.md says every strategy is proved; that holds for its brute force's
    arrival gaps (0, 1, 3, 6), which the enumerator reproduces. With any gap the solver picks, a
    SYN whose replay is late (crash long after it) lets through data that arrived more than
    T + S after it: the strategies that replay released inputs with fresh clocks are refuted,
    and the enumerator agrees once its gaps include one longer than T + S."""
    strategy, log_choices = column
    assert enumerated(6, strategy, log_choices, 3, 4, 8) is None
    bound = 2 if strategy == "none" else 3  # none's queries are slow at 3 (~45 s)
    assert (z3_verdict(firewall(6), strategy, log_choices, bound, 4, 8).verdict == "proved") == proved
    wide = enumerate_failover(firewall(6), Strategy.parse(strategy), 2, FIREWALL_UNIVERSE, log_choices,
                              failover_time=4, max_stall=8, gaps=(0, 1, 6, 15))
    assert (wide is None) == proved


@pytest.mark.parametrize("strategy,log_choices", COLUMNS, ids=[s + (" --log-choices" if lc else "") for s, lc in COLUMNS])
def test_no_stall_refutes_every_strategy_even_sync(strategy, log_choices):
    """T = 1, F = 4, S = 0: a replayed data packet finds its connection timed out."""
    assert z3_verdict(firewall(1), strategy, log_choices, 4, 4, 0).verdict == "counterexample"
    assert enumerated(1, strategy, log_choices, 4, 4, 0) is not None


def test_commit_counterexample_of_design():
    """DESIGN.md's commit:2, T = 3 example, run concretely: SYN@0, data@6, data@12, crash at 5."""
    strategy = Strategy.parse("stateful.commit:2")
    cut = next(c for c in strategy.cuts(3) if c.applied == 1 and c.k == 1)
    inputs, arrivals = [SYN, DATA, DATA], [0, 6, 12]

    def run(log):
        return simulate(firewall(3), strategy, inputs, cut, 0, lambda i: None, lambda i: None, log, arrivals, 5, 4)

    plain = run(False)
    assert plain.standby_times == {1: 9, 2: 9, 3: 12} and len(plain.observed) == 3
    assert not explain(firewall(3), inputs, plain.observed_outputs, arrivals, 4).explained
    logged = run(True)  # the SYN's clock read was logged when read: the standby reuses 0
    assert logged.standby_times[1] == 0 and len(logged.observed) == 1
    assert explain(firewall(3), inputs, logged.observed_outputs, arrivals, 4).explained


# --- token bucket -----------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity,rate,failover_time", [(2, 1, 2), (2, 1, 3), (2, 1, 1), (1, 1, 1), (2, 2, 1)])
def test_token_bucket_under_none_is_proved_exactly_when_the_failover_refills_it(capacity, rate, failover_time):
    """Bound 4 = 2C: a counterexample needs C packets to empty the bucket and C after the crash."""
    proved = rate * failover_time >= capacity
    result = z3_verdict(bucket(capacity, rate), "none", False, 4, failover_time, failover_time)
    assert (result.verdict == "proved") == proved, result.reason
    assert (enumerated((capacity, rate), "none", False, 4, failover_time, failover_time) is None) == proved


@pytest.mark.parametrize("strategy,proved", [("stateful.async", False), ("stateful.commit:2", False),
                                             ("stateful.sync", True)])
def test_token_bucket_under_replaying_strategies(strategy, proved):
    """R * F >= C, S = F: a replay at the late clock spends the token a later packet needed."""
    result = z3_verdict(bucket(2, 1), strategy, False, 4, 2, 2)
    assert (result.verdict == "proved") == proved, result.reason
    assert (enumerated((2, 1), strategy, False, 4, 2, 2) is None) == proved


# --- engines agree on the semantics -----------------------------------------------------------------

def test_z3_counterexample_is_reexecuted_with_its_times():
    result = z3_verdict(firewall(3), "stateful.checkpoint:2", False, 3, 4, 4)
    run = result.counterexample.run
    assert all(a <= b for a, b in zip(run.arrivals, run.arrivals[1:]))
    assert run.failover_end == run.crash_time + 4
    for i, t in run.standby_times.items():  # the standby's rule, unless a logged clock read was reused
        assert t == max(run.arrivals[i - 1], run.failover_end)
    for i, t in run.primary_times.items():
        assert t == run.arrivals[i - 1]
    text = story(result)
    assert f"crashes at {run.crash_time}" in text and f"failover ends at {run.failover_end}" in text
    assert "arrived at" in text and "processed by the primary at" in text and "by the standby at" in text
    times = as_json(result)["counterexample"]["times"]
    assert times["arrivals"] == run.arrivals and times["crash"] == run.crash_time
    assert times["failover_end"] == run.failover_end
    json.dumps(as_json(result))


def test_models_without_clock_reads_get_no_time_variables():
    from nfproof.models.nat import Nat
    assert reads_clock(firewall(3)) and reads_clock(TokenBucket) and not reads_clock(Nat)
    result = verify_failover(Nat, Strategy.parse("stateful.sync"), 3)
    assert result.verdict == "proved" and "clock" not in result.stats
    timed = verify_failover(firewall(3), Strategy.parse("stateful.sync"), 2, failover_time=4)
    assert timed.stats["clock"] is True and timed.stats["failover_time"] == 4 and timed.stats["max_stall"] == 4


def test_unbounded_does_not_cover_clock_reads():
    result = verify_failover(firewall(3), Strategy.parse("stateful.sync"), 2, failover_time=4, unbounded=True)
    assert result.verdict == "unknown" and "clock" in result.reason and not result.unbounded


def test_default_failover_time_is_one_second():
    class Millis(IdleFirewall):
        ticks_per_second = 1000
        timeout = 500
    result = verify_failover(Millis, Strategy.parse("stateful.sync"), 1)
    assert result.stats["failover_time"] == 1000 and result.stats["max_stall"] == 1000


# --- gates a bound never exercises (issue 10 item 7) ------------------------------------------------

class Alerting(NF):
    """Theory of operation: forwards every packet on `out` and counts them; the third packet also
    raises one alert on the `alert` gate."""
    name = "alerting"
    gates = ("out", "alert")
    seen = Counter(Bits(8, "Count"))

    def handle(self, pkt, ctx):
        self.seen += 1
        if self.seen == 3:
            ctx.emit(pkt, "alert")
        ctx.emit(pkt, "out")


def test_a_gate_the_bound_never_exercises_is_reported():
    short = verify_failover(Alerting, Strategy.parse("stateful.sync"), 2)
    assert short.verdict == "proved" and short.stats["unexercised_gates"] == ["alert"]
    long = verify_failover(Alerting, Strategy.parse("stateful.sync"), 3)
    assert long.verdict == "proved" and long.stats["unexercised_gates"] == []


def test_cli_notes_unexercised_gates_and_takes_times(tmp_path):
    model = tmp_path / "alerting.py"
    model.write_text(textwrap.dedent('''
        from nfproof.models.api import NF, Bits, Counter

        class Alerting(NF):
            """Theory of operation: forwards and counts; the third packet raises an alert."""
            name = "alerting"
            gates = ("out", "alert")
            seen = Counter(Bits(8, "Count"))

            def handle(self, pkt, ctx):
                self.seen += 1
                if self.seen == 3:
                    ctx.emit(pkt, "alert")
                ctx.emit(pkt, "out")
    '''))

    def verify(*args):
        return subprocess.run([sys.executable, "-m", "nfproof", "verify", f"{model}:Alerting", *args],
                              capture_output=True, text=True)

    r = verify("--strategy", "stateful.sync", "--bound", "2", "--failover-time", "2", "--max-stall", "3000ms")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("proved:") and "note: no run of up to 2 packets emits on gate 'alert'" in r.stdout
    r = verify("--strategy", "stateful.sync", "--bound", "3")
    assert r.returncode == 0 and "note:" not in r.stdout
    bad = verify("--strategy", "stateful.sync", "--failover-time", "soon")
    assert bad.returncode == 2 and "--failover-time" in bad.stderr
    fraction = verify("--strategy", "stateful.sync", "--failover-time", "500ms")
    assert fraction.returncode == 2 and "whole number" in fraction.stderr + fraction.stdout


# --- the bundled firewall (models/firewall.py), DESIGN.md's clock rules ------------------------------

FIREWALL_ACCEPTANCE = [("stateful.sync", False, 0), ("stateful.checkpoint:2", False, 1),
                       ("stateful.checkpoint:2", True, 0), ("stateful.commit:2", False, 1),
                       ("stateful.commit:2", True, 0)]


@pytest.mark.slow  # the proofs build ~30 symbolic steps of the full firewall: 30-60 s each
@pytest.mark.parametrize("strategy,log_choices,code", FIREWALL_ACCEPTANCE,
                         ids=[s + (" --log-choices" if lc else "") for s, lc, _ in FIREWALL_ACCEPTANCE])
def test_bundled_firewall_clock_rules(strategy, log_choices, code):
    args = [sys.executable, "-m", "nfproof", "verify", "firewall", "--param", "firewall.timeout=3",
            "--failover-time", "4", "--bound", "6", "--strategy", strategy, "--timeout", "600"]
    r = subprocess.run(args + (["--log-choices"] if log_choices else []), capture_output=True, text=True)
    assert r.returncode == code, r.stdout + r.stderr
    if code == 1:
        assert "arrived at" in r.stdout and "the failover ends at" in r.stdout


class NarrowTime(NF):
    """A 2-bit clock cell: passes while (now - last) & 3 <= 1 (found in review: each explained
    candidate's times were learnt as constants, so refinements ran out: unknown)."""
    name = "narrow-time"
    last = Counter(Bits(2, "T"))
    seen = Counter(Bits(1, "S"))

    def handle(self, pkt, ctx):
        now = ctx.now()
        if self.seen == 0:
            self.seen = 1
            self.last = now
            return ctx.emit(pkt, "out")
        d = (now - self.last) & 3
        self.last = now
        if d <= 1:
            ctx.emit(pkt, "out")


@pytest.mark.parametrize("strategy", ["none", "stateful.checkpoint:2", "stateful.async", "stateful.commit:2"])
def test_learnt_times_generalise_to_offsets_in_the_window(strategy):
    result = verify_failover(NarrowTime, Strategy.parse(strategy), 2, failover_time=1, max_stall=3)
    explicit = enumerate_failover(NarrowTime, Strategy.parse(strategy), 2, [Packet(TCP, 1, 2, 3, 4)],
                                  failover_time=1, max_stall=3, gaps=(0, 1, 3, 5))
    assert result.verdict == ("counterexample" if explicit else "proved"), result.reason
