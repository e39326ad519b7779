"""Differential fuzzing of the two interpreters and of the verdicts (issue 10).

Hypothesis generates small random NF models as source (tests/model_gen.py) and checks:

1. Step equivalence: the symbolic step (verify.symbolic.step over a symbolic state, packet and
   choices), evaluated at a concrete point (z3.substitute + simplify), gives exactly what the
   concrete step (models.concrete.step) gives there: every output's presence, gate and fields,
   the validity of the choices, and the new state. The points are reachable: a few random
   packets run concretely from the initial state, each checked before it is applied. Both
   raising ModelError is agreement; a ModelError on one side only is a disagreement, unless the
   symbolic interpreter rejects a path this point does not take and a point on that path makes
   the concrete interpreter raise too (found with Z3 from the path condition).
2. Verdict equivalence: at bounds <= 3, `verify_failover` and the explicit enumeration
   (`enumerate_failover` over a small packet universe) agree on every strategy, with and without
   logged choices. "proved" against an enumerated counterexample is always a false proof (the
   enumerator's run is concrete); a Z3 counterexample the enumerator did not find must use
   packets outside the universe, and the enumerator, given those packets too, must find one.

A disagreement fails with the generated model printed as source. bench/fuzz_differential.py runs
the same properties for as long as asked."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import pytest
import z3
from hypothesis import given, reject, settings, strategies as st

from nfproof.models.api import PACKET_WIDTHS, ModelError, Packet
from nfproof.models.concrete import copy_state, initial_state as concrete_initial, step as concrete_step
from nfproof.models.strategy import Strategy
from nfproof.verify import symbolic as S
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.equivalence import Equivalence
from nfproof.verify.failover import verify_failover
from nfproof.verify.solver import Budget

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import model_gen  # noqa: E402  (tests/ is not a package)

STRATEGIES = ("none", "stateful.checkpoint:2", "stateful.async", "stateful.sync", "stateful.commit:2",
              "stateless.sync", "stateless.async", "stateless.batch:2", "stateless.cache", "stateless.commit:2")


class Disagreement(AssertionError):
    pass


class TooSlow(Exception):
    """The symbolic step has more paths than the caller allows (skipped: too slow to fuzz)."""


@dataclass
class Tally:
    """What the properties saw (the bench prints it)."""

    step_examples: int = 0
    step_points: int = 0
    step_model_errors: int = 0       # both interpreters raised ModelError (agreement)
    step_static_rejections: int = 0  # the symbolic side rejected a path no reached state takes
    step_too_slow: int = 0           # skipped: more paths than the limit
    verdict_examples: int = 0
    verdict_checks: int = 0
    verdict_unknown: int = 0
    verdict_counterexamples: int = 0
    verdict_proved: int = 0
    verdict_widened: int = 0         # Z3 counterexample outside the universe, re-enumerated with it
    verdict_model_errors: int = 0
    unknown_reasons: dict = field(default_factory=dict)


TALLY = Tally()


def fail(model, what: str):
    raise Disagreement(f"{what}\n--- generated model ---\n{model.source}")


# -- step equivalence ----------------------------------------------------------------------------

class SymbolicPoint:
    """One symbolic step of a model over symbolic state, packet and choices, evaluable at
    concrete points."""

    def __init__(self, model, paths: int | None = None):
        nf = model.nf
        self.nf, self.decls = nf, nf.declarations()
        self.state = {name: tuple(z3.Const(f"state.{name}.{j}", t.sort())
                                  for j, t in enumerate(S._storage_class(decl).empty(decl)))
                      for name, decl in self.decls.items()}
        self.packet = S.symbolic_packet("pkt")
        self.choice_vars: dict[int, list] = {}

        def choice_var(k, width):
            var = z3.BitVec(f"choice{k}.w{width}", width)
            if not any(v.eq(var) for v in self.choice_vars.setdefault(k, [])):
                self.choice_vars[k].append(var)
            return var

        self.error = None
        try:
            with path_limit(paths):
                self.step = S.step(nf, self.state, self.packet, choice_var)
        except ModelError as e:
            self.error = e
        except TooSlow:
            raise
        except Exception as e:  # an internal error of the symbolic interpreter: always a bug
            fail(model, f"the symbolic interpreter crashed: {type(e).__name__}: {e}")

    def state_pairs(self, state: dict) -> list:
        pairs = []
        for name, decl in self.decls.items():
            pairs += list(zip(self.state[name], concrete_terms(decl, state[name])))
        return pairs

    def substitution(self, model, state: dict, pkt: Packet, choices: list) -> list:
        pairs = self.state_pairs(state)
        for f, w in PACKET_WIDTHS.items():
            pairs.append((self.packet[f], z3.BitVecVal(getattr(pkt, f), w)))
        pairs.append((self.packet["inbound"], z3.BoolVal(pkt.inbound)))
        for k, variables in self.choice_vars.items():
            for var in variables:
                value = choices[k] if k < len(choices) else 0
                if not 0 <= value < 1 << var.size():
                    fail(model, f"choice {k} = {value} does not fit the {var.size()}-bit choice variable")
                pairs.append((var, z3.BitVecVal(value, var.size())))
        return pairs


@contextlib.contextmanager
def path_limit(paths: int | None):
    """Raises TooSlow in the block when the symbolic interpreter starts path number `paths + 1`
    (None: no limit). Counts the interpreter's Path objects; raised between paths, so no Z3
    object is left half-built."""
    original = getattr(S, "Path", None)
    if not paths or original is None:
        yield
        return
    count = [0]

    class CountedPath(original):
        def __init__(self, *args, **kwargs):
            count[0] += 1
            if count[0] > paths:
                raise TooSlow(f"more than {paths} paths")
            super().__init__(*args, **kwargs)
    S.Path = CountedPath
    try:
        yield
    finally:
        S.Path = original


def concrete_terms(decl, storage) -> tuple:
    """A concrete storage as the symbolic interpreter's terms (its initial terms plus stores)."""
    empty = S._storage_class(decl).empty(decl)
    if hasattr(storage, "value") and not isinstance(storage, (dict, set)):  # a Counter's cell
        return (z3.BitVecVal(storage.value, empty[0].size()),)
    if isinstance(storage, dict):
        present, values = empty
        for k, v in dict.items(storage):  # the storage itself refuses iteration (a model must not)
            key = S.pack(decl.key, k)
            present, values = z3.Store(present, key, True), z3.Store(values, key, S.pack(decl.value, v))
        return present, values
    (present,) = empty
    for k in set.__iter__(storage):
        present = z3.Store(present, S.pack(decl.key, k), True)
    return (present,)


def evaluate(t, pairs):
    return z3.simplify(z3.substitute(t, *pairs)) if pairs else z3.simplify(t)


def _store_chain(t):
    """(stored keys, default) of a simplified constant array, or None if it is not a Store chain."""
    keys = []
    while z3.is_store(t):
        keys.append(t.arg(1))
        t = t.arg(0)
    if z3.is_K(t):
        return keys, t.arg(0)
    return None


def _proved(claim) -> bool:
    s = z3.Solver()
    s.add(z3.Not(claim))
    return s.check() == z3.unsat


def compare_array(model, name, got, expected: dict, is_present: bool):
    """A substituted state array against the concrete entries {key sexpr: (key term, value term)}:
    a present-array must hold exactly the expected keys, a values-array the expected values at
    them (what it holds at absent keys does not matter)."""
    got = z3.simplify(got)
    chain = _store_chain(got)
    if chain is not None and (not is_present or z3.is_false(z3.simplify(chain[1]))):
        keys = {k.sexpr(): k for k in chain[0]} if is_present else {}
        keys.update({text: key for text, (key, _) in expected.items()})
        for text, key in keys.items():
            value = z3.simplify(z3.Select(got, key))
            want = z3.simplify(expected[text][1]) if text in expected else z3.BoolVal(False)
            if not z3.eq(value, want):
                fail(model, f"state {name}: at key {key} the symbolic step holds {value}, the concrete {want}")
        return
    k = z3.Const("k", got.domain())
    expected_array = z3.K(got.domain(), z3.BoolVal(False)) if is_present else got
    for key, value in expected.values():
        expected_array = z3.Store(expected_array, key, value)
    if not _proved(z3.ForAll([k], got[k] == expected_array[k])):
        fail(model, f"state {name}: the symbolic array {got} is not the concrete one")


def compare_state(model, sym: SymbolicPoint, pairs, state: dict):
    for name, decl in sym.decls.items():
        got = [evaluate(t, pairs) for t in sym.step.state[name]]
        storage = state[name]
        if isinstance(storage, dict):
            keys = [(z3.simplify(S.pack(decl.key, k)), z3.simplify(S.pack(decl.value, v))) for k, v in dict.items(storage)]
            compare_array(model, name + " (present)", got[0], {k.sexpr(): (k, z3.BoolVal(True)) for k, _ in keys}, True)
            compare_array(model, name + " (values)", got[1], {k.sexpr(): (k, v) for k, v in keys}, False)
        elif isinstance(storage, (set, frozenset)):
            keys = [z3.simplify(S.pack(decl.key, k)) for k in set.__iter__(storage)]
            compare_array(model, name, got[0], {k.sexpr(): (k, z3.BoolVal(True)) for k in keys}, True)
        else:
            if not (z3.is_bv_value(got[0]) and got[0].as_long() == storage.value):
                fail(model, f"state {name}: the symbolic counter is {got[0]}, the concrete {storage.value}")


def compare_outputs(model, sym: SymbolicPoint, pairs, outputs: list, pkt: Packet):
    nf = model.nf
    if len(outputs) > len(sym.step.outputs):
        fail(model, f"on {pkt!r}: the concrete step emits {len(outputs)} outputs, the symbolic at most "
                    f"{len(sym.step.outputs)}")
    for j, slot in enumerate(sym.step.outputs):
        present = evaluate(slot.present, pairs)
        if not (z3.is_true(present) or z3.is_false(present)):
            fail(model, f"on {pkt!r}: output {j}'s presence is not a constant: {present}")
        if z3.is_true(present) != (j < len(outputs)):
            fail(model, f"on {pkt!r}: output {j} is {'present' if z3.is_true(present) else 'absent'} "
                        f"symbolically, the concrete outputs are {outputs}")
        if j >= len(outputs):
            continue
        gate, out = outputs[j]
        g = evaluate(slot.gate, pairs)
        if not (z3.is_int_value(g) and nf.gates[g.as_long()] == gate):
            fail(model, f"on {pkt!r}: output {j}: gate {g} symbolically, {gate!r} concretely")
        for f, w in PACKET_WIDTHS.items():
            v = evaluate(slot.fields[f], pairs)
            if not (z3.is_bv_value(v) and v.as_long() == getattr(out, f)):
                fail(model, f"on {pkt!r}: output {j}: {f} = {v} symbolically, {getattr(out, f)!r} concretely")
        b = evaluate(slot.fields["inbound"], pairs)
        if not (z3.is_true(b) or z3.is_false(b)) or not (out.inbound == z3.is_true(b)):
            fail(model, f"on {pkt!r}: output {j}: inbound = {b} symbolically, {out.inbound!r} concretely")


def _rejected_path(error: BaseException):
    """(the Path the symbolic interpreter was on when it raised, the validity conditions of the
    choices made on it): from the innermost frame of verify/symbolic.py holding a Path (and a
    context) in the traceback, or (None, [])."""
    tb, path, validity = error.__traceback__, None, []
    while tb is not None:
        frame = tb.tb_frame
        candidate = frame.f_locals.get("path")
        if frame.f_code.co_filename == S.__file__ and isinstance(candidate, S.Path):
            path, validity = candidate, list(getattr(frame.f_locals.get("ctx"), "validity", []))
        tb = tb.tb_next
    return path, validity


def confirm_symbolic_model_error(model, sym: SymbolicPoint, states: list):
    """The symbolic interpreter rejected the model on some path: some reachable state and some
    packet and choices taking that path must make the concrete interpreter raise too."""
    path, validity = _rejected_path(sym.error)
    if path is None:  # raised before any path (e.g. a declaration): nothing to locate
        TALLY.step_static_rejections += 1
        return
    condition = z3.And(path.condition(), *validity)
    for state in states:
        solver = z3.Solver()
        solver.set("timeout", 5000)
        solver.add(z3.substitute(condition, *sym.state_pairs(state)) if sym.state_pairs(state) else condition)
        if solver.check() != z3.sat:
            continue
        m = solver.model()
        pkt = Packet(**{f: m.eval(sym.packet[f], True).as_long() for f in PACKET_WIDTHS},
                     inbound=z3.is_true(m.eval(sym.packet["inbound"], True)))
        choices = [m.eval(sym.choice_vars[k][0], True).as_long() for k in sorted(sym.choice_vars)]
        try:
            concrete_step(model.nf, copy_state(state), pkt, scripted_exactly(choices))
        except ModelError:
            return
        fail(model, f"the symbolic interpreter rejects the model ({sym.error}) on a path that {pkt!r} with "
                    f"choices {choices} takes, where the concrete interpreter runs without error")
    # No reached state takes the rejected path: a static rejection (safe: no verdict at all), as a
    # type checker rejects dead code. Counted, not failed.
    TALLY.step_static_rejections += 1


def scripted_exactly(values: list):
    pending = list(values)

    def choose(options):
        wanted = pending.pop(0) if pending else options[0]
        return wanted if wanted in options else options[0]
    return choose


def picking(indices: list):
    """A chooser taking options[index % len] for the given indices in order (then the first)."""
    pending = list(indices)
    return lambda options: options[(pending.pop(0) if pending else 0) % len(options)]


def check_step(model, inputs: list[tuple[Packet, list[int]]], paths: int | None = None):
    """Run `inputs` (packet, choice indices) concretely from the initial state, checking each
    step against the symbolic step at that point. A model with more than `paths` paths raises
    TooSlow (the caller skips it)."""
    TALLY.step_examples += 1
    try:
        sym = SymbolicPoint(model, paths)
    except TooSlow:
        TALLY.step_too_slow += 1
        raise
    state, states = concrete_initial(model.nf), []
    for pkt, picks in inputs:
        before = copy_state(state)
        states.append(before)
        TALLY.step_points += 1
        try:
            res = concrete_step(model.nf, state, pkt, picking(picks))
        except ModelError as e:
            if sym.error is None:
                fail(model, f"on {pkt!r} the concrete interpreter raises ModelError ({e}), the symbolic does not")
            TALLY.step_model_errors += 1
            return
        except Exception as e:
            fail(model, f"on {pkt!r} the concrete interpreter crashed: {type(e).__name__}: {e}")
        if sym.error is not None:
            continue
        pairs = sym.substitution(model, before, pkt, res.choices)
        valid = evaluate(sym.step.valid, pairs)
        if not z3.is_true(valid):
            fail(model, f"on {pkt!r}: the concrete choices {res.choices} are invalid symbolically ({valid})")
        compare_outputs(model, sym, pairs, res.outputs, pkt)
        compare_state(model, sym, pairs, state)
    if sym.error is not None:
        TALLY.step_model_errors += 1
        confirm_symbolic_model_error(model, sym, states + [state])


@st.composite
def step_examples(draw, min_inputs: int = 1, max_inputs: int = 4, **model_args):
    """(model, inputs): each input is a packet and the choice indices it takes; each is one
    point of the property, at the state the inputs before it reached."""
    model = draw(model_gen.models(**model_args))
    inputs = draw(st.lists(st.tuples(model_gen.packets(model), st.lists(st.integers(0, 2), max_size=2)),
                           min_size=min_inputs, max_size=max_inputs))
    return model, inputs


# -- verdict equivalence ---------------------------------------------------------------------------

def check_verdicts(model, universe: list[Packet], bound: int, cases, budget_seconds: float = 20.0):
    """verify_failover against enumerate_failover for each (strategy, log_choices) or (strategy,
    log_choices, Protocol) in `cases`."""
    TALLY.verdict_examples += 1
    for text, log, *variant in cases:
        TALLY.verdict_checks += 1
        protocol = variant[0] if variant else Protocol()
        strategy = Strategy.parse(text).switched(protocol.replay_input, protocol.dedup)
        eq = protocol.eq
        where = f"{strategy}{' --log-choices' if log else ''} under {eq} at bound {bound}, universe {universe}"
        try:
            explicit = enumerate_failover(model.nf, strategy, bound, universe, log, eq=eq)
            explicit_error = None
        except ModelError as e:
            explicit, explicit_error = None, e
        except Exception as e:
            fail(model, f"{where}: the enumerator crashed: {type(e).__name__}: {e}")
        try:
            result = verify_failover(model.nf, strategy, bound, Budget(timeout=budget_seconds), log_choices=log, eq=eq)
        except ModelError as e:
            TALLY.verdict_model_errors += 1  # the step property judges which side is right
            continue
        except Exception as e:
            fail(model, f"{where}: verify_failover crashed: {type(e).__name__}: {e}")
        if explicit_error is not None:
            if result.verdict == "proved":
                fail(model, f"{where}: proved, but the enumerator hits a ModelError ({explicit_error})")
            TALLY.verdict_model_errors += 1
            continue
        if result.verdict == "unknown":
            TALLY.verdict_unknown += 1
            reason = result.reason.split(":")[0]
            TALLY.unknown_reasons[reason] = TALLY.unknown_reasons.get(reason, 0) + 1
            continue
        if explicit is not None:
            length = len(explicit.run.inputs)
            if result.verdict == "proved":
                fail(model, f"{where}: FALSE PROOF: verify_failover proved it, the enumerator found a "
                            f"counterexample: inputs {explicit.run.inputs}, cut {explicit.run.cut}, "
                            f"r={explicit.run.protected}, observed {explicit.run.observed_outputs}")
            found = len(result.counterexample.run.inputs)
            if found > length:
                fail(model, f"{where}: Z3's shortest counterexample has {found} inputs, the enumerator's {length} "
                            f"(a false proof at bound {length}): {explicit.run.inputs}")
            TALLY.verdict_counterexamples += 1
            continue
        if result.verdict == "proved":
            TALLY.verdict_proved += 1
            continue
        # Z3 found a counterexample the enumerator did not: its inputs must lie outside the universe
        inputs = result.counterexample.run.inputs
        if all(p in universe for p in inputs):
            fail(model, f"{where}: Z3's counterexample {inputs} (observed "
                        f"{result.counterexample.run.observed_outputs}) lies in the universe, the enumerator finds none")
        TALLY.verdict_widened += 1
        widened = universe + [p for p in dict.fromkeys(inputs) if p not in universe]
        if enumerate_failover(model.nf, strategy, len(inputs), widened, log, eq=eq) is None:
            fail(model, f"{where}: Z3's counterexample {inputs} is not found by the enumerator even with its inputs "
                        f"in the universe")
        TALLY.verdict_counterexamples += 1


@dataclass(frozen=True)
class Protocol:
    """The protocol switches and the equivalence of a verdict check."""
    replay_input: bool = True
    dedup: bool = True
    eq: Equivalence = Equivalence()


PROTOCOLS = [Protocol(replay_input=False), Protocol(dedup=False),
             Protocol(replay_input=False, eq=Equivalence("loss-at-failover")),
             Protocol(dedup=False, eq=Equivalence("strict", allow_duplicates=True)),
             Protocol(eq=Equivalence("per-flow")), Protocol(eq=Equivalence("loss-at-failover")),
             Protocol(replay_input=False, dedup=False, eq=Equivalence("loss-at-failover", allow_duplicates=True))]


@st.composite
def protocol_examples(draw):
    """verdict_examples under protocol switches and equivalences other than the default."""
    model, universe, bound, cases = draw(verdict_examples())
    return model, universe, bound, [(s, log, draw(st.sampled_from(PROTOCOLS))) for s, log in cases]


@st.composite
def verdict_examples(draw, all_cases: bool = False):
    model = draw(model_gen.models(max_statements=4, max_depth=1, max_expr_depth=1, max_choices=1, max_pool=2,
                                  final_emit=True, nondeterministic=draw(st.booleans())))
    bound = draw(st.sampled_from([2, 2, 3]))
    size = draw(st.integers(2, 3 if bound == 3 else 4))
    universe = draw(st.lists(model_gen.small_packets(model), min_size=size, max_size=size, unique=True))
    if all_cases:
        cases = [(s, log) for s in STRATEGIES for log in (False, True)]
    else:
        cases = draw(st.lists(st.tuples(st.sampled_from(STRATEGIES), st.booleans()), min_size=1, max_size=3,
                              unique=True))
    return model, universe, bound, cases


# -- the bounded runs of the default suite ---------------------------------------------------------

PATHS = 64  # symbolic paths of one step at most (more: the example is skipped)
BOUNDED = model_gen.BOUNDED


@settings(max_examples=150, **BOUNDED)
@given(step_examples())
def test_symbolic_step_equals_concrete_step(example):
    try:
        check_step(*example, paths=PATHS)
    except TooSlow:
        reject()


@settings(max_examples=12, **BOUNDED)
@given(verdict_examples())
def test_verify_failover_agrees_with_enumeration(example):
    model, universe, bound, cases = example
    check_verdicts(model, universe, bound, cases)


@settings(max_examples=12, **BOUNDED)
@given(protocol_examples())
def test_verify_failover_agrees_with_enumeration_under_switches_and_equivalences(example):
    """--no-replay-input, --no-dedup, loss-at-failover, per-flow, duplicates allowed: the same
    agreement (a proof the enumerator refutes is a false proof)."""
    model, universe, bound, cases = example
    check_verdicts(model, universe, bound, cases)


def test_generator_covers_the_vocabulary():
    """The generated models use every construct the issue lists (so the fuzzer is not vacuous)."""
    seen = ""
    for model in model_gen.sample(model_gen.models(), 250):
        seen += model.source
    for construct in ["Map(Flow", "Set(", "Counter(Bits(64", "Bits(1,", " in self.", ".get(", ", 0)", "del self.",
                      ".remove(", ".discard(", ".add(", ".all()", ".free(self.", "ctx.drop(", "abs(", " // ", " % ",
                      " << ", " >> ", "(~", "(-", " ^ ", " * ", " if ", "else:", "inbound=", "sport=", "proto=",
                      "flags=", "src=", "dst=", "dport=", "length=", "label=", "for i", "9223372036854775807", "'alt'",
                      "Domain(["]:
        assert construct in seen, construct


def test_bench_runs_and_prints_result_lines():
    """bench/fuzz_differential.py (the long form) keeps running: a tiny run."""
    import re
    import subprocess
    from pathlib import Path
    bench = Path(__file__).resolve().parents[1] / "bench" / "fuzz_differential.py"
    r = subprocess.run([sys.executable, str(bench), "--examples", "40", "--inputs", "4", "--verdict-examples", "1",
                        "--seed", "1"], capture_output=True, text=True, timeout=600)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines and all(re.fullmatch(r"RESULT \S+ -?[0-9.]+ \S+", line) for line in lines), r.stdout + r.stderr
    metrics = {line.split()[1]: float(line.split()[2]) for line in lines}
    assert metrics["step_points"] >= metrics["step_models"] > 0 and metrics["verdict_checks"] == 20
    assert r.returncode == (1 if metrics["step_disagreements"] + metrics["verdict_disagreements"] else 0), r.stdout


def test_a_duplicate_passed_over_is_learnt_as_the_slot_it_was():
    """Found by the protocol fuzz: an NF emitting the packet, then a copy whose length is a choice
    made once, under stateless.async --no-dedup with duplicates allowed. The explanation of a
    candidate passed over one of the *primary's* outputs as a duplicate (not the replayed one);
    learning assumed the replayed outputs were the ones passed over, so the same candidate came
    back and the 1-packet counterexample ended undecided."""
    from nfproof.models.api import Bits, Counter, NF, Pool

    class LengthOnce(NF):
        name = "length-once"
        gates = ("out",)
        c = Counter(Bits(1, "B1"))
        pool = Pool(base=0, size=2, kind=Bits(1, "B1"))

        def handle(self, pkt, ctx):
            ctx.emit(pkt, "out")
            if self.c == 0:
                self.c = ctx.choose(self.pool.all())
            ctx.emit(pkt.rewrite(length=self.c), "out")

    universe = [Packet(0, 0, 0, 0, 0, 0, False, 0), Packet(0, 0, 0, 0, 0, 0, True, 32767)]
    strategy = Strategy.parse("stateless.async").switched(dedup=False)
    eq = Equivalence("strict", allow_duplicates=True)
    assert enumerate_failover(LengthOnce, strategy, 1, universe, eq=eq) is not None
    result = verify_failover(LengthOnce, strategy, 1, Budget(timeout=60), eq=eq)
    assert result.verdict == "counterexample", result.reason


@pytest.mark.parametrize("strategy", ["none", "stateful.async", "stateful.sync", "stateful.checkpoint:2"])
def test_per_flow_proofs_learn_the_order_of_the_witness(strategy):
    """An NF that emits a packet and a copy to the next port in an order chosen once: after a
    failover the replacement may choose the other order. Strict: a counterexample; per-flow: the
    two flows' own sequences are unchanged, so proved -- which takes learning the witness's
    order (a candidate only a reordering explains came back until the refinements ran out)."""
    from nfproof.models.api import Bits, Counter, NF, Pool, TCP

    class OrderOnce(NF):
        name = "order-once"
        gates = ("out",)
        chosen = Counter(Bits(1, "B1"))
        flag = Counter(Bits(1, "B1"))
        pool = Pool(base=0, size=2, kind=Bits(1, "B1"))

        def handle(self, pkt, ctx):
            if self.chosen == 0:
                self.flag = ctx.choose(self.pool.all())
                self.chosen = 1
            first, second = (pkt, pkt.rewrite(dport=pkt.dport + 1))[::1 if self.flag else -1]
            ctx.emit(first, "out")
            ctx.emit(second, "out")

    universe = [Packet(TCP, 1, 1, 2, 80), Packet(TCP, 1, 2, 2, 80)]
    for eq in (Equivalence(), Equivalence("per-flow")):
        for bound in (1, 2, 3):
            explicit = enumerate_failover(OrderOnce, Strategy.parse(strategy), bound, universe, eq=eq)
            result = verify_failover(OrderOnce, Strategy.parse(strategy), bound, Budget(timeout=60), eq=eq)
            assert result.verdict == ("counterexample" if explicit else "proved"), (eq, bound, result.reason)
    assert result.verdict == "proved"
