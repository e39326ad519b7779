"""The model compiler (models/compile.py) against the concrete interpreter: the same packets, clock
readings and seeded choice streams give the same outputs, drops, model errors and states, for every
bundled model (at proof-sized and real parameters) and for random models (tests/model_gen.py,
tests/model_gen_time.py: every operator, width, state kind and choice the API offers)."""
from __future__ import annotations

import ctypes
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from nfproof.models import compile as C
from nfproof.models.api import ModelError, Packet
from nfproof.models import NFS as BUNDLED
from nfproof.models.concrete import copy_state, initial_state, plain_state, step as concrete_step
from nfproof.runtime.rng import InstanceRng, StreamChooser

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_gen  # noqa: E402
import model_gen_time  # noqa: E402

BOUNDED = model_gen.BOUNDED
TALLY = {"compiled": 0, "refused": 0, "steps": 0, "errors": 0}


@pytest.fixture
def quick_builds(monkeypatch):
    """Random models are built at -O1: hundreds of them, each a C compiler run (the C code is free of
    undefined behaviour, so its results do not depend on the level; the bundled models, the
    pipelines' tests and the benchmark use the default -O3)."""
    monkeypatch.setenv("NFPROOF_CFLAGS", "-O1")


def run_both(nf_cls, inputs, seed=3):
    """Steps both executions over inputs [(packet, now)]; asserts equal results after each one.
    Returns False when the compiler refuses the model (NotCompilable), True otherwise."""
    try:
        model = C.compiled(nf_cls)
    except C.NotCompilable:
        TALLY["refused"] += 1
        return False
    TALLY["compiled"] += 1
    cstate = model.new_state()
    pstate = initial_state(nf_cls)
    crng, prng = InstanceRng(seed, 0), InstanceRng(seed, 0)
    chooser = StreamChooser(prng)
    for k, (pkt, now) in enumerate(inputs):
        TALLY["steps"] += 1
        try:
            result = concrete_step(nf_cls, pstate, pkt, chooser, lambda: now)
            expected = ([(g, p) for g, p in result.outputs], list(result.drops))
        except ModelError as e:
            expected = e
        try:
            got = cstate.step(pkt, now, crng)
        except ModelError as e:
            got = e
        where = f"input {k} {pkt!r} at {now}"
        if isinstance(expected, ModelError) or isinstance(got, ModelError):
            assert type(got) is type(expected), f"{where}: concrete {expected!r}, compiled {got!r}"
            TALLY["errors"] += 1
            assert _agrees(str(got), str(expected)), f"{where}: concrete {expected}, compiled {got}"
            return True  # a model error ends the run on every path
        assert got == expected, where
        assert crng.state == prng.state, f"{where}: the choice streams drew differently"
        assert cstate.plain() == plain_state(pstate), where
    return True


def _agrees(compiled: str, concrete: str) -> bool:
    """Equal messages, up to the first value the compiled code cannot print (known at run time only)."""
    known = compiled.split("<a value known at run time>")[0]
    return compiled == concrete if known == compiled else concrete.startswith(known)


def _packets(rng: random.Random, constants, n):
    values = [0, 1, 2, 6, 17, 80, 443, 1024, 1025, 65535, 0x0A000001, 0xC0A80001, 0xCB007101] + list(constants)
    out = []
    for _ in range(n):
        def pick(width):
            v = rng.choice(values) if rng.random() < 0.8 else rng.getrandbits(width)
            return v & ((1 << width) - 1)
        out.append(Packet(proto=rng.choice([6, 17, 1, pick(8)]), src=pick(32), sport=pick(16), dst=pick(32),
                          dport=pick(16), flags=pick(8), inbound=rng.random() < 0.5, length=pick(16), label=pick(16)))
    return out


def _flows(rng: random.Random, nf_cls, n):
    """Traffic the bundled models act on: a few hosts' connections both ways, with their flags."""
    hosts = [0x0A000001 + k for k in range(3)]
    remotes = [0xC6336401, 0xC000020A, 0xCB007101, 0x08080808]
    external = int(getattr(nf_cls, "external", 0) or 0) if isinstance(getattr(nf_cls, "external", 0), int) else 0
    out, t = [], 0
    for _ in range(n):
        t += rng.choice([0, 0, 1, 2, 7])
        proto = rng.choice([6, 6, 17, 1])
        h, r = rng.choice(hosts), rng.choice(remotes)
        hp, rp = rng.choice([40000, 40001, 5353]), rng.choice([80, 443, 53])
        flags = rng.choice([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x00])
        if rng.random() < 0.5:
            pkt = Packet(proto, h, hp, r, rp, flags, False, rng.choice([60, 1500]), 0)
        else:
            dst = external if external and rng.random() < 0.5 else h
            dport = rng.choice([1024, 1025, 1026, 1027, hp, 40000])
            pkt = Packet(proto, r, rp, dst, dport, flags, True, rng.choice([60, 1500]), 0)
        out.append((pkt, t))
    return out


BUNDLED_CASES = [(name, params) for name in sorted(BUNDLED) for params in ({}, "real")]


def bundled(name: str, params):
    """The bundled model, at proof-sized parameters or ("real") at a real deployment's."""
    nf_cls = BUNDLED[name]
    if params == "real":
        real = {"nat": {"ports": "64512"}, "lb": {"backends": "8"}, "lb-hash": {"backends": "8"}}.get(name)
        if real is None:
            pytest.skip("no parameter to scale")
        nf_cls = nf_cls.configure(real)
    return nf_cls


@pytest.mark.parametrize("name,params", BUNDLED_CASES)
def test_bundled_models_compile_and_agree(name, params):
    nf_cls = bundled(name, params)
    for seed in range(4):
        rng = random.Random(seed)
        assert run_both(nf_cls, _flows(rng, nf_cls, 400), seed), f"{name} is not compiled"
        assert run_both(nf_cls, [(p, rng.randrange(0, 1 << 20)) for p in _packets(rng, (), 200)], seed)


@st.composite
def compile_examples(draw, gen=model_gen.models, **args):
    model = draw(gen(**args))
    inputs = draw(st.lists(model_gen.packets(model), min_size=1, max_size=8))
    times = draw(st.lists(st.one_of(st.integers(0, 1 << 20), st.integers(0, (1 << 63) - 1)),
                          min_size=len(inputs), max_size=len(inputs)))
    return model, list(zip(inputs, sorted(times)))


class Replaying:
    """A models.concrete chooser that makes the choices a guided step reports (values[j]: an index
    for a domain, a pool value for a free-value choice), each domain read as the C code reads it."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, values):
        return values[self.values.pop(0)]

    def choose_domain(self, domain):
        base, size = domain.pool
        if domain.used is None:
            return base + self.values.pop(0) if size > 0 else None
        if domain.used.count_in(base, size) >= size:
            return None
        return self.values.pop(0)


def run_guided(nf_cls, inputs, seed=5):
    """The guided build (trace replay's: verify/replay_fast.py) against the interpreter: each input
    stepped with each choice at its domain's first or second value, the same choices made by the
    interpreter give the same outputs, drops, errors and state; undoing a step (half of them, and
    every one that errs) gives back the state before it exactly."""
    try:
        model = C.CompiledModel(nf_cls, guided=True)
    except C.NotCompilable:
        return False
    mark = ctypes.CFUNCTYPE(ctypes.c_int)(model.mark_address)
    undo = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(model.undo_address)
    cstate, pstate = model.new_state(), initial_state(nf_cls)
    rng = random.Random(seed)
    for k, (pkt, now) in enumerate(inputs):
        where = f"input {k} {pkt!r} at {now}"
        before, saved = cstate.plain(), copy_state(pstate)
        guide = C.Guide()
        for j in range(C.GUIDED_CHOICES):
            guide.how[j] = rng.choice((0, 2))
        mark()
        try:
            got = cstate.step_with(pkt, now, ctypes.byref(guide))
        except ModelError as e:
            got = e
        if guide.bad:   # no second value in some domain
            assert undo(0) == 0 and cstate.plain() == before, where
            continue
        try:
            result = concrete_step(nf_cls, pstate, pkt, Replaying(guide.value[:guide.n]), lambda: now)
            expected = ([(g, p) for g, p in result.outputs], list(result.drops))
        except ModelError as e:
            expected = e
        if isinstance(expected, ModelError) or isinstance(got, ModelError):
            assert type(got) is type(expected), f"{where}: concrete {expected!r}, compiled {got!r}"
            assert _agrees(str(got), str(expected)), f"{where}: concrete {expected}, compiled {got}"
        else:
            assert got == expected, where
            assert cstate.plain() == plain_state(pstate), where
        if isinstance(got, ModelError) or rng.random() < 0.5:
            assert undo(0) == 0, where
            assert cstate.plain() == before, f"{where}: undone, the state is not the one before"
            pstate = saved
    return True


@pytest.mark.parametrize("name,params", BUNDLED_CASES)
def test_guided_builds_of_the_bundled_models_agree_and_undo(name, params):
    nf_cls = bundled(name, params)
    for seed in range(2):
        rng = random.Random(seed)
        assert run_guided(nf_cls, _flows(rng, nf_cls, 300), seed), f"{name} is not compiled"


def test_guided_build_of_a_chain_with_frame_rules_agrees_and_undoes():
    from nfproof.models import lookup
    from nfproof.models.chain import Chain
    from nfproof.verify.frames import PORT_WRITES, SPORT_WRITES, TCP_WRITES, framed_chain
    nf = Chain.parse("firewall>nat[ports=4]>lb", lookup).as_nf()
    for writes in (TCP_WRITES, PORT_WRITES, SPORT_WRITES):
        for seed in range(2):
            rng = random.Random(seed)
            assert run_guided(framed_chain(nf, writes), _flows(rng, nf, 300), seed)


RANDOM = [("plain", model_gen.models, 150), ("clocked", model_gen_time.clocked_models, 60),
          ("map-clocked", model_gen_time.map_clocked_models, 60)]


@pytest.mark.parametrize("check", ["run_both", "run_guided"])
@pytest.mark.parametrize("kind,gen,examples", RANDOM, ids=[k for k, _, _ in RANDOM])
def test_random_models_agree(quick_builds, check, kind, gen, examples):
    """Random models (tests/model_gen*.py): compiled and interpreted agree; so does the guided build
    (half as many examples), undo included."""
    run = globals()[check]

    @settings(max_examples=examples if check == "run_both" else examples // 2, **BOUNDED)
    @given(compile_examples(gen=gen))
    def agree(example):
        model, inputs = example
        run(model.nf, inputs)
    agree()


def test_a_counter_given_none_is_the_same_model_error_everywhere():
    """(found by the random models: the concrete interpreter raised a bare TypeError)"""
    from nfproof.models.api import NF, Bits, Counter, Flow, Map
    from nfproof.verify import symbolic as S

    class NoneCounter(NF):
        name, gates = "none-counter", ("out",)
        c = Counter(Bits(8, "Count"))
        seen = Map(Flow, Bits(8, "Count"))

        def handle(self, pkt, ctx):
            self.c = self.seen.get(pkt.flow)

    pkt = Packet(6, 1, 2, 3, 4, 0, False, 60, 0)
    with pytest.raises(ModelError, match=r"test_compile\.py:\d+: a 8-bit integer cannot hold None") as concrete:
        concrete_step(NoneCounter, initial_state(NoneCounter), pkt, lambda values: values[0], lambda: 0)
    with pytest.raises(ModelError) as compiled:
        C.CompiledModel(NoneCounter).new_state().step(pkt, 0, InstanceRng(0, 0))
    with pytest.raises(ModelError) as symbolic:
        S.step(NoneCounter, S.initial_state(NoneCounter), S.packet_terms(pkt), lambda k, w: None, lambda: 0)
    assert str(compiled.value) == str(concrete.value) == str(symbolic.value)


def test_most_random_models_compile():
    """The differential tests above mean something only if the compiler takes most models (traced
    only: building them is the tests above)."""
    refused = []
    for model in model_gen.sample(model_gen.models(), 300):
        try:
            C._Compiler(model.nf).source()
        except C.NotCompilable as e:
            refused.append(str(e))
    assert len(refused) <= 0.05 * 300, refused


def test_a_model_the_compiler_cannot_follow_is_refused_with_its_line():
    from nfproof.models.api import NF, Map, Port

    class Formats(NF):
        name, gates = "formats", ("out",)
        seen = Map(Port, Port)

        def handle(self, pkt, ctx):
            ctx.drop(f"port {pkt.dport}")

    with pytest.raises(C.NotCompilable, match=r"test_compile\.py:\d+: a value computed at run time formatted"):
        C.CompiledModel(Formats)


def test_a_chain_with_a_model_the_compiler_refuses_runs_interpreted():
    from nfproof.models.api import NF, Map, Port
    from nfproof.models.chain import Chain
    from nfproof.runtime import IMPLEMENTATION
    from nfproof.runtime.executor import make_pipeline

    class Formats(NF):
        name, gates = "formats", ("wan", "lan")
        outside, inside = ("wan",), ("lan",)
        seen = Map(Port, Port)

        def handle(self, pkt, ctx):
            ctx.drop(f"port {pkt.dport}")

    chain = Chain.parse("formats>nat", lambda name: Formats if name == "formats" else BUNDLED[name])
    pipeline, implementation = make_pipeline(chain, 0, generic=True)
    assert implementation == "generic"
    if IMPLEMENTATION == "fast":
        assert "a value computed at run time formatted into a string" in pipeline.not_compiled
    _, implementation = make_pipeline(Chain.parse("nat", lambda name: BUNDLED[name]), 0, generic=True)
    assert implementation == ("compiled" if IMPLEMENTATION == "fast" else "generic")


def test_a_model_error_in_the_compiled_pipeline_is_the_interpreters():
    """A division by zero on one packet of a batch: both generic pipelines raise the same located
    ModelError, after releasing the same outputs for the packets before it."""
    from nfproof.models.api import NF
    from nfproof.models.chain import Chain
    from nfproof.runtime import IMPLEMENTATION
    from nfproof.runtime.batch import Batch
    from nfproof.runtime.generic import GenericPipeline, compiled_pipeline

    if IMPLEMENTATION != "fast":
        pytest.skip("the compiled pipeline runs on the fast path's batch loop")

    class Divides(NF):
        name, gates = "divides", ("wan", "lan")
        outside, inside = ("wan",), ("lan",)

        def handle(self, pkt, ctx):
            ctx.emit(pkt.rewrite(sport=1000 // (pkt.dport - 99)), "lan" if pkt.inbound else "wan")

    import frames_gen as g
    frames = [g.eth(g.udp(0x0A000001, 5000, 0x08080808, port)) for port in (53, 100, 99, 80)]
    chain = Chain.parse("divides", lambda name: Divides)
    results = {}
    for name, pipeline in (("interpreted", GenericPipeline(chain, 1)), ("compiled", compiled_pipeline(chain, 1)[0])):
        batch = Batch(8)
        for k, frame in enumerate(frames):
            batch.add(frame, len(frame), k * 1000, 0)
        with pytest.raises(ModelError) as e:
            pipeline.process(batch)
        results[name] = (str(e.value), [data for *_, data in batch.outputs()])
    assert results["compiled"] == results["interpreted"]
    assert "ZeroDivisionError" in results["compiled"][0] and "test_compile.py" in results["compiled"][0]
    assert len(results["compiled"][1]) == 2


# -- the adversarial review's cases: each model is compiled exactly or refused ------------------------

def _adversarial_models():
    from nfproof.models.api import NF, Bits, Counter, Domain, Flow, Map, Pool, Port, Set, select

    W64 = Bits(64, "W64")

    class MinModulo(NF):  # INT64_MIN % -1 traps in C; Python gives 0
        name, gates = "a", ("out",)
        m = Map(Port, W64)

        def handle(self, pkt, ctx):
            ctx.emit(pkt.rewrite(sport=(self.m.get(0, 0) - (1 << 63)) % (pkt.sport - 1)), "out")

    class AbsBottom(NF):  # abs(-2^63) is 2^63, not int64's -2^63
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            ctx.emit(pkt.rewrite(sport=abs(~ctx.now() + pkt.sport) >> 48), "out")

    class SetLiteral(NF):  # `in {80, 443}` hashes the value
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            if pkt.dport in {80, 443}:
                return ctx.emit(pkt, "out")
            ctx.drop("other")

    class BitCount(NF):
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            ctx.emit(pkt.rewrite(sport=pkt.flags.bit_count()), "out")

    class FloatCompare(NF):
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            if pkt.length > 1e3:
                return ctx.drop("big")
            ctx.emit(pkt, "out")

    class CatchesDivision(NF):
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            try:
                q = 100 // pkt.dport
            except ZeroDivisionError:
                q = 7
            ctx.emit(pkt.rewrite(sport=q), "out")

    class ReprInReason(NF):
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            ctx.drop(f"port {pkt.dport!r}")

    class SelectsBool(NF):  # a bool selected among bools is a bool
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            ctx.emit(pkt.rewrite(inbound=select((True, False), pkt.sport & 1)), "out")

    class ChoosesBool(NF):
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            ctx.emit(pkt.rewrite(inbound=ctx.choose(Domain([(True, True), (False, True)], Bits(1, "B")))), "out")

    class FreeOverFlows(NF):
        name, gates = "a", ("out",)
        flows = Map(Flow, Port)

        def handle(self, pkt, ctx):
            port = ctx.choose(Pool(0, 4).free(self.flows))
            ctx.emit(pkt.rewrite(sport=port or 0), "out")

    class NarrowKeys(NF):  # pool values wider than the keys wrap when looked up
        name, gates = "a", ("out",)
        m = Map(Bits(8, "B8"), Port)

        def handle(self, pkt, ctx):
            v = ctx.choose(Pool(250, 10).free(self.m))
            if v is None:
                return ctx.drop("full")
            self.m[v] = 1
            ctx.emit(pkt.rewrite(sport=v), "out")

    class NegativePool(NF):
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            v = ctx.choose(Pool(10, -3).all())
            ctx.emit(pkt.rewrite(sport=7 if v is None else v), "out")

    class MapPop(NF):
        name, gates = "a", ("out",)
        m = Map(Port, Port)
        s = Set(Port)
        c = Counter()

        def handle(self, pkt, ctx):
            self.m[pkt.sport] = pkt.dport
            self.m.pop(pkt.sport, None)
            ctx.emit(pkt, "out")

    return [MinModulo, AbsBottom, SetLiteral, BitCount, FloatCompare, CatchesDivision, ReprInReason, SelectsBool,
            ChoosesBool, FreeOverFlows, NarrowKeys, NegativePool, MapPop]


ADVERSARIAL = _adversarial_models()


@pytest.mark.parametrize("nf_cls", ADVERSARIAL, ids=lambda c: c.__name__)
def test_adversarial_models_agree_or_are_refused(nf_cls):
    rng = random.Random(1)
    edge = [Packet(sport=s, dport=d, flags=f, length=n) for s, d, f, n in
            ((0, 0, 0, 0), (1, 80, 0x12, 1500), (65535, 443, 0xFF, 999), (2, 99, 1, 1001))]
    inputs = [(p, t) for p in edge for t in (0, (1 << 63) - 1)]
    inputs += [(p, rng.randrange(1 << 63)) for p in _packets(rng, (80, 443, 0, 1), 40)]
    assert run_both(nf_cls, inputs) == (nf_cls.__name__ in COMPILED_ADVERSARIAL)


COMPILED_ADVERSARIAL = {"MinModulo", "AbsBottom", "SelectsBool", "ChoosesBool", "NegativePool"}  # the rest: refused


def test_is_true_on_a_value_is_a_model_error():
    from nfproof.models.api import NF, validate

    class IsTrue(NF):
        name, gates = "a", ("out",)

        def handle(self, pkt, ctx):
            if pkt.inbound is True:
                ctx.emit(pkt, "out")

    with pytest.raises(ModelError, match=r"test_compile\.py:\d+: `is True` / `is False` on a value"):
        validate(IsTrue)
