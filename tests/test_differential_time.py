"""Differential fuzzing of the verdicts of models that read the clock (DESIGN.md "Time").

Hypothesis generates small random NF models that call `ctx.now()` (tests/model_gen_time.py) and
compares `verify_failover` with the timed explicit enumeration (`enumerate_failover` with arrival
`gaps`) at bound 2, for random strategies, --log-choices or not, failover time F and accepted
stall S in 0..2 (S < F, S = F, S > F, F = 0, S = 0):

- "proved" against an enumerated counterexample is a false proof (the enumerator's run is
  concrete and no failure-free timing explains it);
- Z3's shortest counterexample may not be longer than the enumerator's;
- a Z3 counterexample the enumerator did not find must use packets, arrival gaps or a crash time
  outside the enumerator's universe; given those too (when they are small enough to enumerate),
  the enumerator must find one.
Both raising ModelError is agreement; a crash of either side is a finding.

The untimed differential test (tests/test_differential.py) covers models without clock reads."""
from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from nfproof.models.api import ModelError
from nfproof.models.strategy import Strategy
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover
from nfproof.verify.induction import reads_clock
from nfproof.verify.simulate import explain
from nfproof.verify.solver import Budget

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_gen  # noqa: E402  (tests/ is not a package)
import model_gen_time  # noqa: E402

STRATEGIES = ("none", "stateful.checkpoint:2", "stateful.async", "stateful.sync", "stateful.commit:2",
              "stateless.sync", "stateless.async", "stateless.batch:2", "stateless.cache", "stateless.commit:2")
GAPS = (0, 1, 3)
BOUND = 2
WIDEN_LIMIT = 40  # widen the enumeration with a Z3 counterexample's times only up to this many ticks


class Disagreement(AssertionError):
    pass


def fail(model, what: str):
    raise Disagreement(f"{what}\n--- generated model ---\n{model.source}")


def check_timed_verdicts(model, universe, failover_time: int, max_stall: int, cases, bound: int = BOUND,
                         budget_seconds: float = 10.0) -> dict:
    """verify_failover against the timed enumerate_failover for each (strategy, log_choices) in
    `cases`; returns a tally of what was seen."""
    tally = {"proved": 0, "counterexample": 0, "unknown": 0, "model_error": 0, "widened": 0}
    times = dict(failover_time=failover_time, max_stall=max_stall)
    for text, log in cases:
        strategy = Strategy.parse(text)
        where = (f"{text}{' --log-choices' if log else ''}, bound {bound}, F = {failover_time}, S = {max_stall}, "
                 f"gaps {GAPS}, universe {universe}")
        try:
            explicit, explicit_error = enumerate_failover(model.nf, strategy, bound, universe, log, gaps=GAPS, **times), None
        except ModelError as e:
            explicit, explicit_error = None, e
        except Exception as e:
            fail(model, f"{where}: the enumerator crashed: {type(e).__name__}: {e}")
        try:
            result = verify_failover(model.nf, strategy, bound, Budget(timeout=budget_seconds), log_choices=log, **times)
        except ModelError:
            tally["model_error"] += 1
            continue
        except Exception as e:
            fail(model, f"{where}: verify_failover crashed: {type(e).__name__}: {e}")
        if explicit_error is not None:
            if result.verdict == "proved":
                fail(model, f"{where}: proved, but the enumerator hits a ModelError ({explicit_error})")
            tally["model_error"] += 1
            continue
        tally[result.verdict] += 1
        if result.verdict == "unknown":
            continue
        if result.verdict == "proved":
            if explicit is not None:
                run = explicit.run
                fail(model, f"{where}: FALSE PROOF: verify_failover proved it, the enumerator found a counterexample: "
                            f"inputs {run.inputs} arriving at {run.arrivals}, crash at {run.crash_time} (cut {run.cut}, "
                            f"r = {run.protected}), observed {run.observed_outputs}")
            continue
        run = result.counterexample.run  # re-executed concretely by verify_failover; check it here too
        if run.arrivals is None or not all(a <= b for a, b in zip(run.arrivals, run.arrivals[1:])):
            fail(model, f"{where}: Z3's counterexample has no or decreasing arrival times: {run.arrivals}")
        if explain(model.nf, run.inputs, run.observed_outputs, run.arrivals, max_stall).explained:
            fail(model, f"{where}: Z3's counterexample is explained by a failure-free run: {run.inputs} at {run.arrivals}")
        if explicit is not None:
            if len(run.inputs) > len(explicit.run.inputs):
                fail(model, f"{where}: Z3's shortest counterexample has {len(run.inputs)} inputs, the enumerator's "
                            f"{len(explicit.run.inputs)} (a false proof at the shorter length)")
            continue
        gaps = sorted(set(GAPS) | {b - a for a, b in zip([0] + run.arrivals, run.arrivals)})
        beyond = run.crash_time - run.arrivals[-1]
        if all(p in universe for p in run.inputs) and set(gaps) <= set(GAPS) and \
                beyond <= failover_time + max_stall + max(GAPS) + 1:
            fail(model, f"{where}: Z3's counterexample {run.inputs} at {run.arrivals}, crash at {run.crash_time}, "
                        f"lies in the enumerator's universe, and the enumerator finds none")
        if run.crash_time > WIDEN_LIMIT or max(gaps) > WIDEN_LIMIT:
            continue  # too many ticks to enumerate; the concrete re-execution above confirmed it
        tally["widened"] += 1
        widened = universe + [p for p in dict.fromkeys(run.inputs) if p not in universe]
        horizon = max(failover_time + max_stall + max(gaps) + 1, beyond)
        if enumerate_failover(model.nf, strategy, len(run.inputs), widened, log, gaps=tuple(gaps),
                              horizon=horizon, **times) is None:
            fail(model, f"{where}: Z3's counterexample {run.inputs} at {run.arrivals}, crash at {run.crash_time}, is "
                        f"not found by the enumerator even with its packets, gaps {gaps} and horizon {horizon}")
    return tally


@st.composite
def timed_verdict_examples(draw):
    model = draw(model_gen_time.clocked_models(nondeterministic=draw(st.booleans())))
    universe = draw(st.lists(model_gen.small_packets(model), min_size=2, max_size=2, unique=True))
    failover_time, max_stall = draw(st.sampled_from([0, 1, 2])), draw(st.sampled_from([0, 1, 2]))
    cases = draw(st.lists(st.tuples(st.sampled_from(STRATEGIES), st.booleans()), min_size=1, max_size=2, unique=True))
    return model, universe, failover_time, max_stall, cases


BOUNDED = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@settings(max_examples=25, **BOUNDED)
@given(timed_verdict_examples())
def test_verify_failover_agrees_with_timed_enumeration(example):
    model, universe, failover_time, max_stall, cases = example
    check_timed_verdicts(model, universe, failover_time, max_stall, cases)


def test_generated_models_read_the_clock_in_every_form():
    """Generated models read the clock (all but those whose reads lie on dead paths only, e.g.
    under `if x or 256:`), and the forms of model_gen_time's docstring occur."""
    seen, models = "", []

    @settings(max_examples=120, **BOUNDED)
    @given(model_gen_time.clocked_models())
    def collect(model):
        models.append(model)
    collect()
    assert models and sum(reads_clock(m.nf) for m in models) >= 0.9 * len(models)
    seen = "".join(m.source for m in models)
    for construct in ["= ctx.now()", "self.last = ", "ctx.now() - self.last", "self.seen.get(pkt.flow)",
                      "label=", "& 15)", "& 255)", " == ", " <= ", "Bits(4,", "Bits(32,"]:
        assert construct in seen, construct
