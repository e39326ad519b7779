"""Adversarial fuzz of the chain-alone reduction (verify/chain_alone.py): every "proved" of one
instance crashing alone is checked against the explicit enumeration of that instance crashing
alone (verify/chain_crash.py `enumerate_instance_crashes`).

    .venv/bin/python bench/verify_chain_alone_fuzz.py [--cases 60] [--seed 0] [--timeout 60]
                                                      [--budget 20] [--statements 3] [--findings FILE] [--show]

Cases are random chains of 2-3 instances, cycled over these kinds:
  generated  generated models (tests/model_gen.py `models`), linear; a member may be "turned"
             (its `alt` gate faces inside: its outputs there travel back upstream)
  clocked    one clocked member (a tests/model_gen_time.py model, or `idle` / `clock` below) next
             to unclocked ones (generated or hand-written), sometimes two clocked ones
             (condition 3 blocks them)
  mixed      hand-written NFs (tests/chain_nfs.py, and the adversarial ones below: two outputs to
             both sides, a replay adding or dropping an output, downstreams that turn inbound
             packets around and count or drop out-of-order labels, a tee) and generated models
  branching  graphs built with the Python API: a fork (split -> two members, each to its own
             egress) or a merge (split -> two members -> one member)
  bundled    the chains of tests/test_chain.py and tests/test_chain_crash.py with their universes
and every strategy form (models/strategy.py STRATEGY_FORMS, parameters 1 and 2), plain, with the
replay-protected-input mutation, --no-replay-input, and a few with the other mutations and
--no-dedup, --log-choices on and off (the strategy list is cycled, so a run covers it evenly).
Clocked chains get a failover time F in {0, 1, 2} and a max stall S below, equal to and above F, and
arrival gaps {0, 1, F, F + S + 1}.

For each case and each instance: `check_alone` at bound 2 against `enumerate_instance_crashes`
at bound 2 over the case's universe (3 packets), run twice: as it is (the other instances and
the crashing one's primary take their first options) and with them taking their last options;
where that took under --cheap seconds, again at bound 3 over 2 packets (timed: arrival gaps 0, F
and F + S + 1). A disagreement is
  - a "proved" where the enumeration finds an unexplained run (a false proof: a soundness bug),
  - a counterexample that `simulate.explain` explains after all, or that names another instance.
Each case runs in a forked child; one that outlives --timeout is killed and counted "skipped
(slow)" (the checks it finished still count). One case runs at a time (one CPU).

Prints `RESULT <metric> <value> <unit>` lines: cases run (and by kind), skipped (slow), model
errors, checks, proved, counterexample, unknown, enumerated violations, unknown where the
enumeration found a violation (incompleteness, not a bug), disagreements, errors, slowest case and
slowest check seconds; and `covers` (verify/chain_alone.py) for every strategy up to 8 inputs.

`--drop CONDITION` breaks the reduction on purpose in the children (`drop_condition`: references
not aligned, conditions 2 and/or 3 ignored, checkpoint:N not widened to async): the disagreements
it then reports measure what the cross-check catches of an unsound reduction."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import random
import sys
import time
import traceback
from pathlib import Path

from nfproof.models.api import NF, Bits, Counter, Map, Pool, Port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

KILL_GRACE = 5.0
BOUND = 2
KINDS = ("generated", "clocked", "mixed", "branching", "bundled")


def result(metric: str, value, unit: str) -> None:
    print(f"RESULT {metric} {value} {unit}", flush=True)


# -- adversarial NFs (also tests/test_chain_alone_fuzz.py's targeted chains) -------------------------
def _gate(pkt):
    return "down" if pkt.inbound else "up"


class EchoOut(NF):
    """An outbound packet gets a tag chosen once per source port (remembered) in its dport and
    is emitted twice: on towards the outside (`up`) and, turned around, back towards the inside
    (`down`) carrying the tag in its sport. Inbound packets pass on `down`."""

    name = "echo-out"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    tags = Pool(base=7001, size=2)
    by_src = Map(Port, Port)

    def handle(self, pkt, ctx):
        if pkt.inbound:
            return ctx.emit(pkt, "down")
        tag = self.by_src.get(pkt.sport)
        if tag is None:
            tag = ctx.choose(self.tags.all())
            self.by_src[pkt.sport] = tag
        ctx.emit(pkt.rewrite(dport=tag), "up")
        ctx.emit(pkt.rewrite(src=pkt.dst, dst=pkt.src, sport=tag, dport=pkt.sport, inbound=True), "down")


class EchoIn(NF):
    """EchoOut mirrored: an inbound packet is tagged (per destination port, remembered) and
    emitted back towards the inside (`down`) and, turned around, towards the outside (`up`);
    outbound packets pass on `up`."""

    name = "echo-in"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    tags = Pool(base=7001, size=2)
    by_dst = Map(Port, Port)

    def handle(self, pkt, ctx):
        if not pkt.inbound:
            return ctx.emit(pkt, "up")
        tag = self.by_dst.get(pkt.dport)
        if tag is None:
            tag = ctx.choose(self.tags.all())
            self.by_dst[pkt.dport] = tag
        ctx.emit(pkt.rewrite(sport=tag), "down")
        ctx.emit(pkt.rewrite(src=pkt.dst, dst=pkt.src, sport=pkt.dport, dport=tag, inbound=False), "up")


class Burst(NF):
    """Stateless: each packet is emitted once or twice (a fresh choice every time; the copies
    labelled 0 and 1): a replay can emit more or fewer outputs than the primary did."""

    name = "burst"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    copies = Pool(base=1, size=2)

    def handle(self, pkt, ctx):
        k = ctx.choose(self.copies.all())
        for i in range(2):
            if i < k:
                ctx.emit(pkt.rewrite(label=i), _gate(pkt))


class StickyBurst(Burst):
    """Burst whose number of copies is chosen once (the first packet) and kept."""

    name = "sticky-burst"
    kept = Counter(Bits(8, "Count"))

    def handle(self, pkt, ctx):
        if self.kept == 0:
            self.kept = ctx.choose(self.copies.all())
        for i in range(2):
            if i < self.kept:
                ctx.emit(pkt.rewrite(label=i), _gate(pkt))


class Maybe(NF):
    """Stateless: each packet leaves on `log` (an egress of its own) and, by a fresh choice, a
    copy labelled 1 follows it on `up`/`down`: output 1 is the only one that reaches the next
    instance, once per chain input at most (condition 2 holds), and a replay can add it to an
    input whose primary left it out."""

    name = "maybe"
    gates = ("up", "down", "log")
    outside, inside = ("up",), ("down",)
    copies = Pool(base=1, size=2)

    def handle(self, pkt, ctx):
        ctx.emit(pkt, "log")
        if ctx.choose(self.copies.all()) == 2:
            ctx.emit(pkt.rewrite(label=1), _gate(pkt))


class Mirror(NF):
    """Counts every packet into `flags` (order-dependent state) and sends everything out on
    `up`: an inbound packet is turned back out without reaching the instance before it."""

    name = "mirror"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    seen = Counter(Bits(8, "Count"))

    def handle(self, pkt, ctx):
        self.seen += 1
        ctx.emit(pkt.rewrite(flags=self.seen), "up")


class Latch(NF):
    """Drops a packet whose label is below the highest label seen so far (remembered): an
    out-of-order arrival is lost. Everything that passes leaves on `up` (inbound turned back out)."""

    name = "latch"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    high = Counter(Bits(8, "Label"))

    def handle(self, pkt, ctx):
        if pkt.label < self.high:
            return ctx.drop("out of order")
        self.high = pkt.label
        ctx.emit(pkt, "up")


class Idle(NF):
    """Reads the clock: a packet passes if its source port was not seen, or was seen at most 1
    tick ago (then refreshed); else it is dropped (an idle timeout, the firewall's idea)."""

    name = "idle"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    last = Map(Port, Bits(32, "Time"))

    def handle(self, pkt, ctx):
        now = ctx.now()
        seen = self.last.get(pkt.sport)
        if seen is not None and now - seen > 1:
            return ctx.drop("idle")
        self.last[pkt.sport] = now
        ctx.emit(pkt, _gate(pkt))


class Clock(NF):
    """Reads the clock: writes the time since the previous packet into `label`."""

    name = "clock"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    last = Counter(Bits(32, "Time"))

    def handle(self, pkt, ctx):
        now = ctx.now()
        ctx.emit(pkt.rewrite(label=now - self.last), _gate(pkt))
        self.last = now


class Tee(NF):
    """Stateless: an outbound packet is copied to both outside-facing gates (`left`, `right`);
    inbound packets go back on `back`."""

    name = "tee"
    gates = ("left", "right", "back")
    outside, inside = ("left", "right"), ("back",)

    def handle(self, pkt, ctx):
        if pkt.inbound:
            return ctx.emit(pkt, "back")
        ctx.emit(pkt, "left")
        ctx.emit(pkt.rewrite(label=1), "right")


ADVERSARIAL = {cls.name: cls for cls in (EchoOut, EchoIn, Burst, StickyBurst, Maybe, Mirror, Latch, Idle, Clock, Tee)}
CLOCKED_NFS = ("idle", "clock")


# -- strategies -----------------------------------------------------------------------------------
def strategies() -> list:
    """(Strategy, log_choices): every form with small parameters, plain, mutated as
    tests/test_chain_alone.py `every_strategy` does, --no-replay-input, and the other mutations
    and --no-dedup on a few forms; each with --log-choices off and on."""
    from nfproof.models.strategy import MUTATIONS, STRATEGY_FORMS, Strategy
    out = []
    for form in STRATEGY_FORMS:
        for param in ((1, 2) if ":" in form else (None,)):
            s = Strategy.parse(form.split(":")[0] + (f":{param}" if param else ""))
            variants = [s, s.mutated("replay-protected-input"), s.switched(replay_input=False)]
            if form in ("stateful.sync", "stateful.commit:B", "stateful.async") and param in (None, 1):
                variants += [s.switched(dedup=False)] + [s.mutated(m) for m in MUTATIONS if m != "replay-protected-input"]
            out += [(v, log) for v in variants for log in (False, True)]
    return out


def strategy_text(s, log: bool) -> str:
    return str(s) + (" --log-choices" if log else "")


# -- models and cases -----------------------------------------------------------------------------
def draw_pool(count: int, seed: int, statements: int = 3) -> dict:
    """`count` unclocked and `count` clocked generated models, each with a small packet universe
    (`statements`: the handler's top-level statements at most; above 3 also nested two deep)."""
    import model_gen
    import model_gen_time
    from hypothesis import HealthCheck, given, settings, seed as hseed, strategies as st
    pool = {"plain": [], "clocked": []}

    @hseed(seed)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data):
        m = data.draw(model_gen.models(max_statements=statements, max_depth=1 if statements <= 3 else 2,
                                       max_expr_depth=1, max_choices=1 if statements <= 3 else 2, max_pool=2,
                                       final_emit=True, nondeterministic=data.draw(st.booleans())))
        u = data.draw(st.lists(model_gen.small_packets(m), min_size=3, max_size=3, unique=True))
        pool["plain"].append((m.source, u))
        c = data.draw(model_gen_time.clocked_models(max_statements=statements, max_depth=1 if statements <= 3 else 2,
                                                    nondeterministic=data.draw(st.booleans())))
        u = data.draw(st.lists(model_gen.small_packets(c), min_size=3, max_size=3, unique=True))
        pool["clocked"].append((c.source, u))

    collect()
    return pool


def small_nfs() -> list[str]:
    """Hand-written members: tests/chain_nfs.py's (but those that loop or turn every packet
    around) and the adversarial ones above that read no clock."""
    from chain_nfs import TEST_NFS
    return [n for n in sorted(TEST_NFS) if n not in ("always-up", "always-down", "reject")] + \
        [n for n in sorted(ADVERSARIAL) if n not in CLOCKED_NFS]


def bundled_chains() -> dict:
    """name -> (build the chain, universe): tests/test_chain.py CHAINS and test_chain_crash.py MORE_CHAINS."""
    from nfproof.models import lookup
    from test_chain import CHAINS
    from test_chain_crash import MORE_CHAINS
    out = {name: (build, universe) for name, (build, universe) in CHAINS.items()}
    out.update({name: ((lambda n=name: lookup(n).chain()), universe) for name, universe in MORE_CHAINS.items()})
    return out


def usable(case: dict) -> bool:
    """Whether the case's chain builds and runs (no model error, no routing loop) on its universe,
    symbolically (the clock and routing probes) and concretely (every sequence of up to 2 of its
    packets, first and seeded choices): generated models are model errors now and then on purpose."""
    from nfproof.models.api import ModelError
    from nfproof.models.chain import initial_chain_state, run_chain
    from nfproof.models.concrete import seeded
    from nfproof.verify.chain_alone import obstacles
    from nfproof.verify.equivalence import STRICT
    from nfproof.verify.induction import reads_clock
    try:
        chain = build_chain(case)
        nf = chain.as_nf()
        reads_clock(nf)
        for m in chain.members:
            obstacles(nf, m, STRICT)
            reads_clock(chain.members[m].nf)
        for n in (1, 2):
            for seq in itertools.product(case["universe"], repeat=n):
                for chooser in (lambda options: options[0], seeded(1)):
                    state = initial_chain_state(chain)
                    for t, p in enumerate(seq):
                        run_chain(chain, state, p, chooser, lambda t=t: t)
    except ModelError:
        return False
    return True


def make_cases(n: int, seed: int, pool: dict) -> list[dict]:
    """n cases, kinds and strategies cycled (shuffled by `seed`), everything else drawn from `seed`
    (a drawn chain that is a model error is drawn again, up to 20 times)."""
    rng = random.Random(seed)
    strat = strategies()
    rng.shuffle(strat)
    cases = []
    for k in range(n):
        for _ in range(20):
            case = draw_case(k, rng, strat, pool)
            if usable(case):
                break
        cases.append(case)
    return cases


def draw_case(k: int, rng, strat: list, pool: dict) -> dict:
    bundled = sorted(bundled_chains())
    plain, clocked, small = pool["plain"], pool["clocked"], small_nfs()
    kind = KINDS[k % len(KINDS)]
    s, log = strat[k % len(strat)]
    case = dict(id=k, kind=kind, strategy=s, log=log, F=0, S=0, gaps=None, members=[], topology="linear")

    def gen(source_pool, turned_ok=True):
        source, universe = rng.choice(source_pool)
        return ("gen", source, turned_ok and rng.random() < 0.3), universe
    if kind == "bundled":
        name = bundled[k // len(KINDS) % len(bundled)]
        case.update(topology="bundled:" + name, universe=list(bundled_chains()[name][1]))
    else:
        size = rng.choice((2, 2, 3))
        specs, universes = [], []
        for position in range(size):
            if kind == "generated":
                spec, u = gen(plain)
            elif kind == "clocked":
                if position == 0 or rng.random() < 0.2:  # (a second clocked member: condition 3 blocks)
                    spec, u = gen(clocked) if rng.random() < 0.7 else (("test", rng.choice(CLOCKED_NFS)), [])
                elif rng.random() < 0.5:
                    spec, u = ("test", rng.choice(small)), []
                else:
                    spec, u = gen(plain)
            elif kind == "mixed":
                spec, u = (("test", rng.choice(small)), []) if rng.random() < 0.5 else gen(plain)
            else:  # branching
                spec, u = gen(plain if rng.random() < 0.8 else clocked, turned_ok=position < 2)
            specs.append(spec)
            universes.append(u)
        if kind == "clocked":  # the clocked member at a random position
            j = rng.randrange(size)
            specs[0], specs[j] = specs[j], specs[0]
            universes[0], universes[j] = universes[j], universes[0]
        if kind == "branching":
            case["topology"] = "merge" if size == 3 else "fork"
        names = [f"m{j}" for j in range(size)]
        case["members"] = list(zip(names, specs))
        first = next((u for u in universes if u), None)
        last = next((u for u in reversed(universes) if u), None)
        if first is None:
            from test_chain import SMALL_UNIVERSE
            universe = list(SMALL_UNIVERSE)
        else:
            universe = list(first[:2])
            extra = [p for p in last if p.inbound and p not in universe] + [p for p in last if p not in universe]
            universe += extra[:1]
        case["universe"] = universe
    case["clocked"] = None  # filled in by the child (needs the classes)
    f = rng.choice((0, 1, 1, 2, 2))
    case["F"], case["S"] = f, rng.choice(tuple(x for x in (f - 1, f, f + 1) if x >= 0))
    case["gaps"] = tuple(sorted({0, 1, f, f + case["S"] + 1}))
    return case


def _turned(cls):
    """The generated model with its `alt` gate facing inside (outputs there go back upstream)."""
    if "alt" not in cls.gates:
        return cls
    return type(cls.__name__ + "Turned", (cls,), {"outside": ("out",), "inside": ("alt",), "__module__": cls.__module__})


def member_class(spec):
    import model_gen
    from chain_nfs import TEST_NFS
    if spec[0] == "gen":
        cls = model_gen.compile_model(spec[1])
        return _turned(cls) if spec[2] else cls
    return ADVERSARIAL.get(spec[1]) or TEST_NFS[spec[1]]


def build_chain(case: dict):
    """The case's chain (models.chain.Chain, validated)."""
    from nfproof.models.chain import Chain
    from chain_nfs import Split
    topology = case["topology"]
    if topology.startswith("bundled:"):
        return bundled_chains()[topology.split(":", 1)[1]][0]()
    classes = {name: member_class(spec) for name, spec in case["members"]}
    if topology == "linear":
        return Chain.parse(">".join(f"{n}={n}" for n in classes), classes.__getitem__)
    chain = Chain(topology)
    chain.add("split", Split)
    names = list(classes)
    for n in names:
        chain.add(n, classes[n])
    chain.connect("split.left", names[0])
    chain.connect("split.right", names[1])
    chain.egress("split.back", "inside")
    chain.ingress("inside", "split")
    members = chain.members
    for n in names[:2]:
        for g in members[n].inside:
            chain.connect(f"{n}.{g}", "split")
    if topology == "fork":
        for n, egress in zip(names, ("east", "west")):
            for g in members[n].outside:
                chain.egress(f"{n}.{g}", egress)
        chain.ingress("outside", names[0])
    else:  # merge: both branches into the third member
        for n in names[:2]:
            for g in members[n].outside:
                chain.connect(f"{n}.{g}", names[2])
        for g in members[names[2]].outside:
            chain.egress(f"{names[2]}.{g}", "outside")
        for g in members[names[2]].inside:
            chain.connect(f"{names[2]}.{g}", names[0])
        chain.ingress("outside", names[2])
    return chain.validate()


def describe(case: dict) -> str:
    """Everything needed to rebuild the case by hand: sources, topology, strategy, universe, times."""
    lines = [f"case {case['id']} ({case['kind']}): topology {case['topology']}, strategy "
             f"{strategy_text(case['strategy'], case['log'])}"]
    for name, spec in case["members"]:
        if spec[0] == "gen":
            lines.append(f"member {name}: generated model{' (turned: alt faces inside)' if spec[2] else ''}:")
            lines += ["    " + line for line in spec[1].splitlines()]
        else:
            where = "bench/verify_chain_alone_fuzz.py" if spec[1] in ADVERSARIAL else "tests/chain_nfs.py"
            lines.append(f"member {name}: {where} {spec[1]!r}")
    lines.append("universe: " + ", ".join(repr(p) for p in case["universe"]))
    if case.get("clocked"):
        lines.append(f"timed: F={case['F']} S={case['S']} gaps={case['gaps']}")
    return "\n".join(lines)


def _last(options):
    return options[-1]


PRIMARY_CHOOSERS = [None, _last]  # the enumeration's own (first options), then the last options


@contextlib.contextmanager
def primary_choices(chooser):
    """The enumeration with the other instances and X's primary taking `chooser`'s options
    (verify/chain_crash.py takes the first; None leaves it so): more observed runs, each as legal
    (the failure-free executions it is explained against still range over every choice)."""
    from nfproof.verify import chain_crash
    if chooser is None:
        yield
        return
    saved = chain_crash._first
    chain_crash._first = chooser
    try:
        yield
    finally:
        chain_crash._first = saved


# -- one check ------------------------------------------------------------------------------------
def check_instance(nf, chain, instance: str, strategy, log: bool, bound: int, universe: list, timed: bool,
                   f: int, s: int, gaps, budget: float, phase=None) -> dict:
    """check_alone against the enumeration for one instance; the counterexample re-explained.
    `phase(text)`, if given, hears which part starts (so a case killed for time says where)."""
    from nfproof.verify.chain_alone import check_alone
    from nfproof.verify.chain_crash import enumerate_instance_crashes
    from nfproof.verify.simulate import explain
    t = time.perf_counter()
    if phase:
        phase(f"{instance}@{bound} check_alone")
    alone = check_alone(nf, instance, strategy, bound, budget, log, f if timed else 0, s if timed else 0)
    t1 = time.perf_counter()
    if phase:
        phase(f"{instance}@{bound} enumeration (check_alone {alone.verdict} in {t1 - t:.1f} s)")
    enumerated = None
    for chooser in PRIMARY_CHOOSERS:
        with primary_choices(chooser):
            enumerated = enumerate_instance_crashes(chain, strategy, bound, universe, log, gaps=gaps if timed else None,
                                                    failover_time=f if timed else 1, max_stall=s if timed else 1,
                                                    instances=[instance])
        if enumerated is not None:
            break
    t2 = time.perf_counter()
    out = dict(instance=instance, bound=bound, verdict=alone.verdict, reason=alone.reason,
               check_seconds=t1 - t, enum_seconds=t2 - t1, enumerated=enumerated.story() if enumerated else None,
               problems=[])
    if alone.verdict == "proved" and enumerated is not None:
        out["problems"].append("FALSE PROOF: proved, but the enumeration finds an unexplained run")
    if alone.verdict == "counterexample":
        crash = alone.crash
        out["story"] = crash.story()
        if crash.instance != instance:
            out["problems"].append(f"the counterexample crashes {crash.instance}, not {instance}")
        again = explain(nf, crash.inputs, crash.observed, crash.arrivals, s if timed else 0)
        if again.explained:
            out["problems"].append("FALSE COUNTEREXAMPLE: re-explained by a failure-free execution")
    return out


def run_case(case: dict, budget: float, cheap: float, send) -> None:
    """Every instance of the case at bound 2, then (cheap, untimed) at bound 3; `send` gets each
    result dict as it is done."""
    from nfproof.models.api import ModelError
    from nfproof.verify.induction import reads_clock
    try:
        chain = build_chain(case)
        nf = chain.as_nf()
        timed = reads_clock(nf)
    except ModelError as e:
        send(dict(model_error=str(e)))
        return
    send(dict(clocked=timed))
    f, s = (case["F"], case["S"]) if timed else (0, 0)
    started = time.perf_counter()
    plans = [(BOUND, case["universe"], case["gaps"])]
    for bound, universe, gaps in plans:
        for instance in chain.members:
            try:
                r = check_instance(nf, chain, instance, case["strategy"], case["log"], bound, universe, timed, f, s,
                                   gaps, budget, lambda text: send(dict(phase=text)))
            except ModelError as e:
                send(dict(model_error=f"{instance}: {e}"))
                return
            except Exception as e:  # noqa: BLE001  (an exception of the verifier is a finding)
                send(dict(instance=instance, bound=bound, error=f"{type(e).__name__}: {e}",
                          traceback=traceback.format_exc()))
                continue
            send(r)
        if bound == BOUND and time.perf_counter() - started < cheap:  # (timed: three gaps, 0, F and past F + S)
            plans.append((3, case["universe"][:2], (0, f, f + s + 1) if timed else None))


def drop_condition(name: str) -> None:
    """Breaks the reduction on purpose (in a child process only), to measure what the cross-check
    catches: `aligned` (X alone proved with whole-sequence references), `obstacles` (conditions 2
    and 3 ignored), `routing` (condition 2 ignored), `clock` (condition 3 ignored), `widening`
    (X alone under the chain's strategy itself, checkpoint:N not widened to async)."""
    from nfproof.verify import chain_alone
    real_verify, real_obstacles = chain_alone.verify_failover, chain_alone.obstacles
    if name == "aligned":
        chain_alone.verify_failover = lambda *a, **k: real_verify(*a, **dict(k, aligned=False))
    elif name == "obstacles":
        chain_alone.obstacles = lambda *a, **k: []
    elif name in ("routing", "clock"):
        markers = ("may handle two packets", "is fed by") if name == "routing" else ("read the clock", "other ticks")
        chain_alone.obstacles = lambda *a, **k: [o for o in real_obstacles(*a, **k) if not any(m in o for m in markers)]
    elif name == "widening":
        chain_alone.alone_strategy = chain_alone.in_a_chain
    elif name:
        raise ValueError(f"unknown condition {name!r}")


def _child(conn, case, budget, cheap, drop=""):
    try:
        drop_condition(drop)
        run_case(case, budget, cheap, conn.send)
    finally:
        conn.send(None)
        conn.close()


def run_isolated(case: dict, timeout: float, budget: float, cheap: float, drop: str = "") -> tuple[list, bool, float]:
    """(result dicts, killed for time, seconds): the case in a forked child."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    t = time.perf_counter()
    p = ctx.Process(target=_child, args=(child, case, budget, cheap, drop))
    p.start()
    child.close()
    out, killed = [], False
    while True:
        left = timeout + KILL_GRACE - (time.perf_counter() - t)
        if left <= 0 or not parent.poll(left):
            killed = True
            break
        try:
            msg = parent.recv()
        except EOFError:
            break
        if msg is None:
            break
        out.append(msg)
    if killed:
        p.kill()
    p.join()
    return out, killed, time.perf_counter() - t


def why_unknown(reason: str) -> str:
    """A short name for why check_alone answered unknown."""
    for key, name in (("may handle two packets", "routing_two_packets"), ("is fed by", "routing_shared_egress"),
                      ("read the clock", "two_clocks"), ("other ticks", "ticks"), ("vacuous", "own_vacuous"),
                      ("own under", "own_not_proved"), ("not stepped instance by instance", "not_composable")):
        if key in reason:
            if name == "own_not_proved":
                own = reason.split("own under", 1)[1]
                return "own_counterexample" if ": counterexample" in own else "own_unknown"
            return name
    return "other"


# -- main -----------------------------------------------------------------------------------------
def covers_everywhere(n_max: int = 8) -> tuple[int, list]:
    from nfproof.verify.chain_alone import covers
    failed, checked = [], 0
    for s, log in strategies():
        if log:
            continue
        for n in range(1, n_max + 1):
            checked += 1
            if not covers(s, n):
                failed.append(f"{s} n={n}")
    return checked, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="wall seconds per case (then: skipped (slow))")
    ap.add_argument("--budget", type=float, default=20.0, help="solver seconds per check_alone")
    ap.add_argument("--cheap", type=float, default=3.0, help="a case done at bound 2 within this runs bound 3 too")
    ap.add_argument("--statements", type=int, default=3, help="generated handlers' top-level statements at most")
    ap.add_argument("--drop", default="", choices=("", "aligned", "obstacles", "routing", "clock", "widening"),
                    help="break the reduction on purpose (disagreements expected): what the cross-check catches")
    ap.add_argument("--findings", help="append each disagreement's reproducer to this file")
    ap.add_argument("--show", action="store_true", help="print every case's description")
    ap.add_argument("--covers-upto", type=int, default=8)
    args = ap.parse_args()
    import nfproof.verify.chain_alone  # noqa: F401  (imported before forking: children start warm)
    import nfproof.verify.chain_crash  # noqa: F401
    t0 = time.perf_counter()
    pool = draw_pool(max(4, args.cases), args.seed, args.statements)
    cases = make_cases(args.cases, args.seed, pool)
    tally = dict(cases=0, skipped=0, model_errors=0, checks=0, proved=0, counterexample=0, unknown=0,
                 enum_violations=0, unknown_with_violation=0, disagreements=0, errors=0)
    by_kind: dict = {}
    reasons: dict = {}
    slow_cases, slow_checks = [], []
    for case in cases:
        results, killed, seconds = run_isolated(case, args.timeout, args.budget, args.cheap, args.drop)
        tally["cases"] += 1
        kind = by_kind.setdefault(case["kind"], dict(cases=0, proved=0, counterexample=0, unknown=0, skipped=0))
        kind["cases"] += 1
        notes = []
        phase = ""
        for r in results:
            if "phase" in r:
                phase = r["phase"]
                continue
            if "clocked" in r:
                case["clocked"] = r["clocked"]
                continue
            if "model_error" in r:
                tally["model_errors"] += 1
                notes.append("model error")
                continue
            if "error" in r:
                tally["errors"] += 1
                notes.append(f"{r['instance']}@{r['bound']} ERROR")
                print(f"# ERROR in case {case['id']} instance {r['instance']} bound {r['bound']}: {r['error']}\n"
                      + describe(case) + "\n" + r["traceback"], flush=True)
                continue
            tally["checks"] += 1
            tally[r["verdict"]] += 1
            if r["verdict"] == "unknown":
                why = why_unknown(r["reason"])
                reasons[why] = reasons.get(why, 0) + 1
            kind[r["verdict"]] += 1
            tally["enum_violations"] += r["enumerated"] is not None
            tally["unknown_with_violation"] += r["enumerated"] is not None and r["verdict"] == "unknown"
            slow_checks.append((r["check_seconds"], case["id"], r["instance"], r["bound"], r["verdict"]))
            notes.append(f"{r['instance']}@{r['bound']} {r['verdict']}{'*' if r['enumerated'] else ''}")
            if r["problems"]:
                tally["disagreements"] += 1
                text = (f"DISAGREEMENT: case {case['id']} instance {r['instance']} bound {r['bound']}: "
                        + "; ".join(r["problems"]) + "\n" + describe(case) + f"\nverdict reason: {r['reason']}\n"
                        + (f"enumerated story:\n{r['enumerated']}\n" if r["enumerated"] else "")
                        + (f"counterexample story:\n{r['story']}\n" if r.get("story") else ""))
                print("# " + text.replace("\n", "\n# "), flush=True)
                if args.findings:
                    with open(args.findings, "a") as fh:
                        fh.write("\n```\n" + text + "```\n")
        if killed:
            tally["skipped"] += 1
            kind["skipped"] += 1
            notes.append(f"skipped (slow, in {phase or 'setup'})")
        slow_cases.append((seconds, case["id"], case["kind"], case["topology"], strategy_text(case["strategy"], case["log"])))
        print(f"# [{tally['cases']}/{len(cases)}] case {case['id']} {case['kind']} {case['topology']} "
              f"{len(case['members']) or ''} {strategy_text(case['strategy'], case['log'])}"
              f"{' timed F=%d S=%d' % (case['F'], case['S']) if case.get('clocked') else ''}: {seconds:.1f} s: "
              f"{', '.join(notes)}  (* = the enumeration found a violation)", flush=True)
        if args.show:
            print("#   " + describe(case).replace("\n", "\n#   "), flush=True)
    checked, failed = covers_everywhere(args.covers_upto)
    for why, count in sorted(reasons.items()):
        result(f"chain_alone_fuzz.unknown_because.{why}", count, "checks")
    for metric, value in tally.items():
        result(f"chain_alone_fuzz.{metric}", value, "checks" if metric in ("checks", "proved", "counterexample", "unknown",
                                                                          "enum_violations", "unknown_with_violation",
                                                                          "disagreements", "errors") else "cases")
    for name, kind in sorted(by_kind.items()):
        for metric, value in kind.items():
            result(f"chain_alone_fuzz.{name}.{metric}", value, "cases" if metric in ("cases", "skipped") else "checks")
    if slow_cases:
        slowest = max(slow_cases)
        result("chain_alone_fuzz.slowest_case_seconds", f"{slowest[0]:.2f}", "s")
        print(f"# slowest case: {slowest[1:]}", flush=True)
    if slow_checks:
        slowest = max(slow_checks)
        result("chain_alone_fuzz.slowest_check_seconds", f"{slowest[0]:.2f}", "s")
        print(f"# slowest check_alone: case {slowest[1]} instance {slowest[2]} bound {slowest[3]} ({slowest[4]})",
              flush=True)
    result("chain_alone_fuzz.covers_checked", checked, "strategy_lengths")
    result("chain_alone_fuzz.covers_failed", len(failed), "strategy_lengths")
    for f in failed:
        print(f"# covers fails: {f}", flush=True)
    result("chain_alone_fuzz.wall_seconds", f"{time.perf_counter() - t0:.1f}", "s")


if __name__ == "__main__":
    main()
