"""The symbolic interpreter agrees with the concrete one, and its guard rails hold.

Agreement: one symbolic NAT step is built over a *symbolic* state (array variables), a symbolic
packet and symbolic choices; substituting the concrete state, packet and choice must turn its
output slots into exactly what models.concrete.step emits, and its new-state arrays into the
concrete new state."""
from __future__ import annotations

import pytest
import z3
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nfproof.models.api import ModelError, NF, PACKET_WIDTHS, UDP, TCP, Flow, Packet, Pool, addr
from nfproof.models.concrete import DictMap, copy_state, scripted, step as concrete_step
from nfproof.models.nat import Nat
from nfproof.verify import symbolic as S

PORTS = list(Nat.pool().values())
ADDRS = [addr("10.0.0.1"), addr("10.0.0.2"), addr("198.51.100.1"), Nat.external]
L4PORTS = [80, 1000, PORTS[0], PORTS[-1]]

protos = st.sampled_from([TCP, UDP])
addrs = st.sampled_from(ADDRS)
l4ports = st.sampled_from(L4PORTS)
flows = st.builds(Flow, protos, addrs, l4ports, addrs, l4ports)
packets = st.builds(Packet, protos, addrs, l4ports, addrs, st.sampled_from(L4PORTS + PORTS[1:-1]),
                    st.sampled_from([0, 2, 16, 18]), st.booleans())


@st.composite
def nat_states(draw):
    """Arbitrary (not necessarily consistent) NAT states: the interpreters must agree on any."""
    by_flow = draw(st.dictionaries(flows, st.sampled_from(PORTS), max_size=4))
    by_port = draw(st.dictionaries(st.sampled_from(PORTS), flows, max_size=len(PORTS)))
    if draw(st.booleans()):  # often a consistent one, as the NAT itself builds
        by_port = {p: f for f, p in by_flow.items()}
    return {"by_flow": DictMap(Nat.by_flow, by_flow), "by_port": DictMap(Nat.by_port, by_port)}


def symbolic_state(nf_cls):
    out = {}
    for name, decl in nf_cls.declarations().items():
        ks, vs = z3.BitVecSort(S.kind_width(decl.key)), z3.BitVecSort(S.kind_width(decl.value))
        out[name] = (z3.Array(f"{name}.present", ks, z3.BoolSort()), z3.Array(f"{name}.values", ks, vs))
    return out


def concrete_arrays(decl, storage):
    present, values = S.SymMap.empty(decl)
    for k, v in storage.items():
        key = S.pack(decl.key, k)
        present, values = z3.Store(present, key, z3.BoolVal(True)), z3.Store(values, key, S.pack(decl.value, v))
    return present, values


def choice_var(k, width):
    return z3.BitVec(f"choice{k}", width)


SYM_STATE = symbolic_state(Nat)
SYM_PACKET = S.symbolic_packet("pkt")
SYM_STEP = S.step(Nat, SYM_STATE, SYM_PACKET, choice_var)


def substitution(state, pkt, choice):
    pairs = []
    for name, decl in Nat.declarations().items():
        p, v = concrete_arrays(decl, state[name])
        pairs += [(SYM_STATE[name][0], p), (SYM_STATE[name][1], v)]
    concrete = S.packet_terms(pkt)
    pairs += [(SYM_PACKET[f], concrete[f]) for f in SYM_PACKET]
    pairs.append((choice_var(0, S.CHOICE_WIDTH), z3.BitVecVal(choice, S.CHOICE_WIDTH)))
    return pairs


def proved(claim) -> bool:
    s = z3.Solver()
    s.add(z3.Not(claim))
    return s.check() == z3.unsat


A_FLOW = Flow(TCP, addr("10.0.0.1"), 1000, addr("198.51.100.1"), 80)
MAPPED = {"by_flow": DictMap(Nat.by_flow, {A_FLOW: PORTS[1]}), "by_port": DictMap(Nat.by_port, {PORTS[1]: A_FLOW})}
FULL = {"by_flow": DictMap(Nat.by_flow, {Flow(TCP, 1, 1, 2, p): p for p in PORTS}),
        "by_port": DictMap(Nat.by_port, {p: Flow(TCP, 1, 1, 2, p) for p in PORTS})}
OUT_A = Packet(TCP, A_FLOW.src, A_FLOW.sport, A_FLOW.dst, A_FLOW.dport)
REPLY_A = Packet(TCP, A_FLOW.dst, A_FLOW.dport, Nat.external, PORTS[1], inbound=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=nat_states(), pkt=packets, choice=st.sampled_from(PORTS))
@example(state={"by_flow": DictMap(Nat.by_flow), "by_port": DictMap(Nat.by_port)}, pkt=OUT_A, choice=PORTS[2])       # new mapping
@example(state=MAPPED, pkt=OUT_A, choice=PORTS[0])                                              # mapped flow
@example(state=MAPPED, pkt=REPLY_A, choice=PORTS[0])                                            # translated back
@example(state=MAPPED, pkt=REPLY_A.rewrite(src=addr("198.51.100.2")), choice=PORTS[0])          # wrong remote
@example(state=MAPPED, pkt=REPLY_A.rewrite(sport=81), choice=PORTS[0])                          # wrong remote port
@example(state=MAPPED, pkt=REPLY_A.rewrite(proto=UDP), choice=PORTS[0])                         # wrong protocol
@example(state=MAPPED, pkt=REPLY_A.rewrite(dport=PORTS[0]), choice=PORTS[0])                    # no mapping
@example(state=FULL, pkt=OUT_A, choice=PORTS[0])                                                # pool exhausted
def test_symbolic_step_agrees_with_concrete(state, pkt, choice):
    state = copy_state(state)
    before = copy_state(state)
    res = concrete_step(Nat, state, pkt, scripted([choice]))
    used = res.choices[0] if res.choices else choice
    sub = substitution(before, pkt, used)

    slots = SYM_STEP.outputs
    assert len(res.outputs) <= len(slots)
    if pkt == REPLY_A and before["by_port"].get(PORTS[1]) == A_FLOW:  # the translated-back example
        assert res.outputs == [("lan", REPLY_A.rewrite(dst=A_FLOW.src, dport=A_FLOW.sport))]
    for j, slot in enumerate(slots):
        present = z3.simplify(z3.substitute(slot.present, *sub))
        assert z3.is_true(present) == (j < len(res.outputs)) and (z3.is_true(present) or z3.is_false(present))
        if j < len(res.outputs):
            gate, out = res.outputs[j]
            assert z3.simplify(z3.substitute(slot.gate, *sub)).as_long() == Nat.gates.index(gate)
            for f, w in PACKET_WIDTHS.items():
                assert z3.simplify(z3.substitute(slot.fields[f], *sub)).as_long() == getattr(out, f), f
            assert z3.is_true(z3.simplify(z3.substitute(slot.fields["inbound"], *sub))) == out.inbound

    # the choices taken were available: validity holds (and the scripted choice was honoured)
    assert z3.is_true(z3.simplify(z3.substitute(SYM_STEP.valid, *sub)))
    for name, decl in Nat.declarations().items():
        exp_present, exp_values = concrete_arrays(decl, state[name])
        got_present = z3.substitute(SYM_STEP.state[name][0], *sub)
        got_values = z3.substitute(SYM_STEP.state[name][1], *sub)
        k = z3.BitVec("k", S.kind_width(decl.key))
        assert proved(z3.ForAll([k], got_present[k] == exp_present[k])), name
        assert proved(z3.ForAll([k], z3.Implies(exp_present[k], got_values[k] == exp_values[k]))), name


@settings(max_examples=60, deadline=None)
@given(state=nat_states(), pkt=packets, choice=st.sampled_from(PORTS))
def test_unavailable_choice_is_invalid(state, pkt, choice):
    """Substituting a port that is in use makes the step's validity false exactly when the
    concrete NAT would have had to choose (a new outbound flow)."""
    res = concrete_step(Nat, copy_state(state), pkt, scripted([choice]))
    if not res.choices or choice not in state["by_port"]:
        return
    valid = z3.simplify(z3.substitute(SYM_STEP.valid, *substitution(state, pkt, choice)))
    assert z3.is_false(valid)


# -- guard rails ------------------------------------------------------------------------------------

def test_domain_values_that_do_not_fit_are_model_errors():
    with pytest.raises(ModelError):
        S.const(1 << 16, 16)
    with pytest.raises(ModelError):
        S.const(-1, 8)
    assert S.const((1 << 16) - 1, 16).as_long() == 65535
    x = S.SymBV(z3.BitVec("x", 16), S.Path(()))
    too_wide = (x == 1 << 16).t                                # widened, never truncated to x == 0
    assert z3.Solver().check(too_wide) == z3.unsat
    assert z3.Solver().check((x == 0).t) == z3.sat


def test_field_values_wrap_as_on_the_wire():
    """A packet field holds the low bits of what a model writes, in both interpreters."""
    pkt = Packet(300, 1, 70000, 2, 80)
    terms = S.packet_terms(pkt)
    assert z3.simplify(terms["sport"]).as_long() == pkt.wrapped().sport == 70000 & 0xFFFF
    assert z3.simplify(terms["proto"]).as_long() == pkt.wrapped().proto == 300 & 0xFF


def test_pool_too_wide_for_its_kind_raises():
    """A pool reaching past the port width must not silently wrap into ports 0.. (both interpreters)."""
    class WideNat(Nat):  # past the parameters' own check (Nat.check_params), straight to the interpreters
        @classmethod
        def pool(cls):
            return Pool(base=65535, size=2)
    with pytest.raises(ModelError):
        S.step(WideNat, S.initial_state(WideNat), S.symbolic_packet("w"), choice_var)
    from nfproof.models.concrete import initial_state, seeded, step
    with pytest.raises(ModelError):
        step(WideNat, initial_state(WideNat), Packet(TCP, 1, 1, 2, 80), seeded(0))


def test_path_exploration_counts_nat_paths():
    # symbolic state: inbound = no mapping | wrong dst | wrong dport | wrong proto | translated (5);
    # outbound = mapped | pool exhausted | new mapping (3)
    assert SYM_STEP.paths == 8
    assert len(SYM_STEP.outputs) == 1
    # from the empty state every lookup is decided: inbound dropped, outbound gets a new port
    assert S.step(Nat, S.initial_state(Nat), S.symbolic_packet("e"), choice_var).paths == 2
    # a concrete packet on a symbolic state: only the outbound paths remain
    out = S.packet_terms(Packet(TCP, addr("10.0.0.1"), 1000, addr("198.51.100.1"), 80))
    assert S.step(Nat, SYM_STATE, out, choice_var).paths == 3


def test_path_alternatives():
    p = S.Path(())
    a, b = z3.Bools("a b")
    assert p.branch(a) is True and p.branch(b) is True
    assert p.branch(z3.BoolVal(False)) is False          # constant conditions do not fork
    assert p.alternatives() == [(False,), (True, False)]
    q = S.Path((True, False))
    assert q.branch(a) is True and q.branch(b) is False and q.alternatives() == []
    assert proved(q.condition() == z3.And(a, z3.Not(b)))


def test_outputs_differ_none_on_identical_terms():
    assert S.outputs_differ(SYM_STEP.outputs, SYM_STEP.outputs) is None
    again = S.step(Nat, SYM_STATE, SYM_PACKET, choice_var)       # rebuilt: hash-consed, same terms
    assert S.outputs_differ(SYM_STEP.outputs, again.outputs) is None
    assert S.outputs_differ([], []) is None


def test_outputs_differ_on_other_terms_is_satisfiable_and_sound():
    other = S.step(Nat, SYM_STATE, SYM_PACKET, lambda k, w: z3.BitVec(f"other{k}", w))
    differ = S.outputs_differ(SYM_STEP.outputs, other.outputs)
    assert differ is not None
    s = z3.Solver()
    s.add(differ)
    assert s.check() == z3.sat                                  # two different port choices
    s = z3.Solver()
    s.add(differ, choice_var(0, S.CHOICE_WIDTH) == z3.BitVec("other0", S.CHOICE_WIDTH))
    assert s.check() == z3.unsat                                # same choice: same outputs
    # a step with no output against one with an output differs exactly when the output exists
    d = S.outputs_differ(SYM_STEP.outputs, [])
    assert proved(d == SYM_STEP.outputs[0].present)


class Increment(NF):
    """Arithmetic on a field: the two interpreters must agree at the top of the width too."""

    name = "inc"

    def handle(self, pkt, ctx):
        ctx.emit(pkt.rewrite(sport=pkt.sport + 1), "out")


def test_arithmetic_overflow_agrees():
    pkt = Packet(TCP, 1, 65535, 2, 80)
    concrete = concrete_step(Increment, {}, pkt, scripted([])).outputs[0][1].sport
    sym = S.step(Increment, {}, S.packet_terms(pkt), choice_var)
    assert z3.simplify(sym.outputs[0].fields["sport"]).as_long() == concrete


class _Text(NF):
    """Branches on the digits of the clock: the symbolic engine cannot follow text of a value."""
    name, gates = "text", ("out",)
    how = "str"

    def handle(self, pkt, ctx):
        now = ctx.now()
        text = {"str": lambda: str(now), "format": lambda: f"{now}", "repr": lambda: repr(now),
                "percent": lambda: "%s" % now, "flag": lambda: str(now > 3)}[self.how]()
        if len(text) >= 2:
            ctx.emit(pkt, "out")


@pytest.mark.parametrize("how", ["str", "format", "repr", "percent", "flag"])
def test_text_of_a_symbolic_value_is_a_model_error(how):
    """Found by review: `f"{ctx.now()}"` gave the constant text of the term, so a branch on its
    digits never forked and sync was "proved" for an NF that emits only from time 10 on."""
    from nfproof.models.strategy import Strategy
    from nfproof.verify.failover import verify_failover
    nf = type("Text", (_Text,), {"how": how, "__module__": __name__})
    with pytest.raises(ModelError, match="text of a model value"):
        verify_failover(nf, Strategy.parse("stateful.sync"), 1, failover_time=4, max_stall=0)


def test_the_engine_still_shows_terms_in_its_own_messages():
    v = S.SymBV(z3.BitVec("x", 8), S.Path(()))
    assert eval(compile("repr(v)", S.__file__, "eval")) == "SymBV(x)"  # (as from verify/symbolic.py)
    with pytest.raises(ModelError):
        repr(v)
