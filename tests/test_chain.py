"""Chains (issue 11 item 3, models/chain.py): wiring of the linear form and of branching graphs,
validation errors, concrete execution, and the chain as one NF on both interpreters (Z3 and the
explicit-state enumerator agree on failover verdicts of 2-NF chains at bounds <= 2)."""
from __future__ import annotations

import pytest

from nfproof.models import lookup as bundled_lookup
from nfproof.models.api import NF, TCP, Packet, addr
from nfproof.models.chain import Chain, ChainError, initial_chain_state, run_chain
from nfproof.models.concrete import copy_state, initial_state, scripted, seeded, step
from nfproof.models.nat import Nat
from nfproof.models.strategy import Strategy
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover

from chain_nfs import Count, Pick, Split, StampA, StampB, StampC, lookup

HOST, REMOTE = addr("10.0.0.1"), addr("198.51.100.1")
OUT = Packet(TCP, HOST, 1000, REMOTE, 80)
IN = Packet(TCP, REMOTE, 80, HOST, 1000, inbound=True)


def first(options):
    return options[0]


# -- wiring of the linear form -----------------------------------------------------------------------
def test_linear_chain_wiring():
    chain = Chain.parse("a>b>c", lookup)
    assert list(chain.members) == ["a", "b", "c"]
    assert chain.egress_names == ("outside", "inside")
    assert chain.ingresses == {"inside": "a", "outside": "c"}
    state = initial_chain_state(chain)

    out = run_chain(chain, state, OUT, first)
    assert [name for name, _ in out.visits] == ["a", "b", "c"]
    assert [p.inbound for _, p in out.visits] == [False, False, False]
    # the label spells the path: a (1), then b (2), then c (3)
    assert out.by_egress == {"outside": [OUT.rewrite(label=(1 * 4 + 2) * 4 + 3)], "inside": []}

    back = run_chain(chain, state, IN, first)
    assert [name for name, _ in back.visits] == ["c", "b", "a"]
    assert all(p.inbound for _, p in back.visits)
    assert back.by_egress == {"outside": [], "inside": [IN.rewrite(label=(3 * 4 + 2) * 4 + 1)]}


def test_repeated_members_get_numbered_names():
    chain = Chain.parse("nat>nat>nat", bundled_lookup)
    assert list(chain.members) == ["nat", "nat#2", "nat#3"]
    named = Chain.parse("edge = nat > core=nat", bundled_lookup)
    assert list(named.members) == ["edge", "core"] and named.name == "edge = nat>core=nat"
    configured = Chain.parse("nat[ports=2,base=20000]>edge=nat[ports=3]>nat", bundled_lookup)
    assert {k: (m.nf.ports, m.nf.base) for k, m in configured.members.items()} == \
        {"nat": (2, 20000), "edge": (3, Nat.base), "nat#2": (Nat.ports, Nat.base)}
    with pytest.raises(ChainError) as e:
        Chain.parse("x=a>x=b", lookup)
    assert str(e.value) == "instance 'x' is already in the chain; give the second one another name (e.g. 'x#2')"


def test_nat_nat_translates_twice_and_back():
    chain = Chain.parse("nat>nat", bundled_lookup)
    state = initial_chain_state(chain)
    out = run_chain(chain, state, OUT, first)
    base = Nat.base
    assert out.choices == [base, base]  # each NAT picks the first free port of its own pool
    assert out.outputs == [("outside", OUT.rewrite(src=Nat.external, sport=base))]
    assert state["nat"]["by_port"][base] == OUT.flow
    assert state["nat#2"]["by_port"][base] == OUT.rewrite(src=Nat.external, sport=base).flow
    reply = Packet(TCP, REMOTE, 80, Nat.external, base, inbound=True)
    back = run_chain(chain, state, reply, first)
    assert back.outputs == [("inside", IN)]
    stray = run_chain(chain, state, reply.rewrite(dport=base + 1), first)
    assert stray.outputs == [] and stray.drops == [("nat#2", "no mapping")]


def test_extra_gate_is_its_own_egress_depth_first():
    """alarm>count: the alarm forwards the packet, then alerts; depth first, the forwarded packet
    leaves through count before the alert leaves the chain."""
    chain = Chain.parse("alarm>count", lookup)
    assert chain.egress_names == ("outside", "inside", "alarm.alert")
    state = initial_chain_state(chain)
    run_chain(chain, state, OUT, first)
    second = run_chain(chain, state, OUT, first)
    assert [e for e, _ in second.outputs] == ["outside", "alarm.alert"]
    assert second.by_egress["alarm.alert"] == [OUT.rewrite(label=2)]
    assert second.by_egress["outside"] == [OUT.rewrite(flags=2)]
    assert [name for name, _ in second.visits] == ["alarm", "count"]


def test_turned_around_packet_travels_back():
    chain = Chain.parse("a>reject>c", lookup)
    telnet = OUT.rewrite(dport=23)
    res = run_chain(chain, initial_chain_state(chain), telnet, first)
    assert [(name, p.inbound) for name, p in res.visits] == [("a", False), ("reject", False), ("a", True)]
    reply = Packet(TCP, REMOTE, 23, HOST, 1000, flags=4, label=1 * 4 + 1, inbound=True)
    assert res.outputs == [("inside", reply)]


def test_routing_loop_is_a_model_error():
    chain = Chain.parse("always-up>always-down", lookup)
    with pytest.raises(ChainError) as e:
        run_chain(chain, initial_chain_state(chain), OUT, first)
    assert str(e.value) == ("chain 'always-up>always-down': a packet crossed more than 4 instances "
                            "(a routing loop through NFs that turn packets around?)")


# -- a branching graph built with the Python API -------------------------------------------------------
def branching() -> Chain:
    """split: even source ports go left to `count`, odd ones right to `pick`; both leave on
    their own egress; replies come in through `count` only and go back via split."""
    chain = Chain("fork")
    chain.add("split", Split)
    chain.add("count", Count)
    chain.add("pick", Pick)
    chain.connect("split.left", "count")
    chain.connect("split.right", "pick")
    chain.connect("count.down", "split")
    chain.connect("pick.down", "split")
    chain.egress("count.up", "east")
    chain.egress("pick.up", "west")
    chain.egress("split.back", "inside")
    chain.ingress("inside", "split")
    chain.ingress("outside", "count")
    return chain.validate()


def test_branching_graph():
    chain = branching()
    assert chain.egress_names == ("east", "west", "inside")
    state = initial_chain_state(chain)
    even = run_chain(chain, state, OUT, first)
    assert [n for n, _ in even.visits] == ["split", "count"]
    assert even.by_egress == {"east": [OUT.rewrite(flags=1)], "west": [], "inside": []}
    odd = run_chain(chain, state, OUT.rewrite(sport=1001), scripted([7002]))
    assert [n for n, _ in odd.visits] == ["split", "pick"] and odd.choices == [7002]
    assert odd.by_egress["west"] == [OUT.rewrite(sport=1001, dport=7002)]
    back = run_chain(chain, state, IN, first)
    assert [(n, p.inbound) for n, p in back.visits] == [("count", True), ("split", True)]
    assert back.outputs == [("inside", IN.rewrite(flags=2))]
    nf = chain.as_nf()
    assert nf.gates == ("east", "west", "inside") and nf.outside == ("east", "west") and nf.inside == ("inside",)


def test_direction_of_an_edge():
    """An extra gate wires only with an explicit direction; a facing gate only its own way."""
    chain = Chain("c")
    chain.add("alarm", lookup("alarm"))
    chain.add("count", Count)
    with pytest.raises(ChainError) as e:
        chain.connect("alarm.alert", "count")
    assert str(e.value) == ("gate alarm.alert faces neither inside nor outside: say which way the packet travels, "
                            "connect('alarm.alert', 'count', direction='outbound' or 'inbound')")
    with pytest.raises(ChainError) as e:
        chain.connect("alarm.up", "count", direction="inbound")
    assert str(e.value) == "gate alarm.up faces outside, so it wires outbound, not inbound"
    with pytest.raises(ChainError) as e:
        chain.connect("alarm.alert", "count", direction="sideways")
    assert str(e.value) == "direction 'sideways' of alarm.alert -> count is not one of outbound, inbound"
    chain.connect("alarm.alert", "count", direction="outbound")  # alerts are counted, then leave outside
    chain.connect("alarm.up", "count")
    chain.connect("count.down", "alarm")
    chain.egress("count.up", "outside")
    chain.egress("alarm.down", "inside")
    chain.ingress("inside", "alarm")
    state = initial_chain_state(chain)
    run_chain(chain, state, OUT, first)
    res = run_chain(chain, state, OUT, first)
    assert res.outputs == [("outside", OUT.rewrite(flags=2)), ("outside", OUT.rewrite(label=2, flags=3))]


# -- validation: every error, one line, asserted -------------------------------------------------------
@pytest.mark.parametrize("text,message", [
    ("", "empty chain: name at least one NF, e.g. 'firewall>nat>lb'"),
    ("   ", "empty chain: name at least one NF, e.g. 'firewall>nat>lb'"),
    ("a>>b", "malformed chain 'a>>b': member 2 is empty; write NF>NF>..., e.g. 'firewall>nat>lb'"),
    ("a>", "malformed chain 'a>': member 2 is empty; write NF>NF>..., e.g. 'firewall>nat>lb'"),
    (">a", "malformed chain '>a': member 1 is empty; write NF>NF>..., e.g. 'firewall>nat>lb'"),
    ("x=>a", "malformed chain 'x=>a': 'x=' names no NF; write NAME=NF, e.g. 'edge=nat'"),
    ("a>nope>c", "chain 'a>nope>c': unknown NF 'nope'; valid: a, alarm, always-down, always-up, b, c, count, "
                 "drop-zero, inc, pick, reject, split"),
])
def test_parse_errors(text, message):
    with pytest.raises(ChainError) as e:
        Chain.parse(text, lookup)
    assert str(e.value) == message


def test_unknown_bundled_nf_lists_the_known_ones():
    with pytest.raises(ChainError) as e:
        Chain.parse("nat>nope>nat", bundled_lookup)
    with pytest.raises(KeyError) as known:
        bundled_lookup("nope")
    assert str(e.value) == f"chain 'nat>nope>nat': {known.value.args[0]}"
    assert "unknown NF 'nope'" in str(e.value) and "nat" in str(e.value).split("'nope'")[1]


def test_bundled_firewall_nat_lb_parses():
    chain = Chain.parse("firewall>nat>lb", bundled_lookup)
    assert list(chain.members) == ["firewall", "nat", "lb"]
    assert chain.ingresses == {"inside": "firewall", "outside": "lb"}
    assert chain.egress_names[:2] == ("outside", "inside")
    assert len(chain.as_nf().declarations()) == sum(len(m.nf.declarations()) for m in chain.members.values())


def two(a=StampA, b=StampB) -> Chain:
    chain = Chain("pair")
    chain.add("a", a)
    chain.add("b", b)
    return chain


def test_cycle():
    chain = two()
    chain.connect("a.up", "b")
    chain.connect("b.up", "a")
    chain.ingress("inside", "a")
    chain.egress("a.down", "inside")
    chain.egress("b.down", "inside")
    with pytest.raises(ChainError) as e:
        chain.validate()
    assert str(e.value) == ("chain 'pair' has a cycle of outbound links: a -> b -> a; a packet would circle forever, "
                            "remove one link")


def test_self_loop_is_a_cycle():
    chain = Chain("loop")
    chain.add("a", StampA)
    chain.connect("a.down", "a")
    chain.egress("a.up", "outside")
    chain.ingress("inside", "a")
    with pytest.raises(ChainError) as e:
        chain.as_nf()
    assert str(e.value) == ("chain 'loop' has a cycle of inbound links: a -> a; a packet would circle forever, "
                            "remove one link")


def test_dangling_gate():
    chain = two()
    chain.connect("a.up", "b")
    chain.connect("b.down", "a")
    chain.egress("a.down", "inside")
    chain.ingress("inside", "a")
    with pytest.raises(ChainError) as e:
        chain.validate()
    assert str(e.value) == ("dangling gate b.up (facing outside): connect it to an instance "
                            "(chain.connect('b.up', INSTANCE)) or make it an egress (chain.egress('b.up', 'outside'))")


def test_empty_chain_and_no_ingress_and_unreachable():
    with pytest.raises(ChainError) as e:
        Chain("nothing").validate()
    assert str(e.value) == "chain 'nothing' is empty: add at least one NF instance"
    chain = two()
    chain.egress("a.up", "outside")
    chain.egress("a.down", "inside")
    chain.egress("b.up", "outside")
    chain.egress("b.down", "inside")
    with pytest.raises(ChainError) as e:
        chain.validate()
    assert str(e.value) == "chain 'pair' has no ingress: declare where packets enter, e.g. chain.ingress('inside', 'a')"
    chain.ingress("inside", "a")
    with pytest.raises(ChainError) as e:
        chain.validate()
    assert str(e.value) == "instance 'b' is reachable from no ingress; connect a gate to it or declare it an ingress"
    chain.ingress("outside", "b")
    assert chain.validate().egress_names == ("outside", "inside")


def test_api_misuse_errors():
    chain = two()
    cases = [
        (lambda: chain.connect("a.up", "z"), "unknown instance 'z' in chain 'pair'; instances: a, b"),
        (lambda: chain.connect("a.sideways", "b"), "instance 'a' has no gate 'sideways'; its gates: up, down"),
        (lambda: chain.connect("aup", "b"), "gate reference 'aup' is not INSTANCE.GATE (e.g. 'nat.wan')"),
        (lambda: chain.add("a", StampC), "instance 'a' is already in the chain; give the second one another name "
                                         "(e.g. 'a#2')"),
        (lambda: chain.add("a.b", StampC), "instance name 'a.b' is not valid: use letters, digits, _, - or # "
                                           "(starting with a letter), e.g. 'nat' or 'nat#2'"),
        (lambda: chain.add("c", object), "instance 'c': <class 'object'> is not an NF class (a subclass of models.api.NF)"),
        (lambda: chain.ingress("middle", "a"), "ingress side 'middle' is not one of inside, outside"),
        (lambda: chain.egress("a.up", " "), "egress of a.up needs a non-empty name, e.g. 'outside'"),
    ]
    for call, message in cases:
        with pytest.raises(ChainError) as e:
            call()
        assert str(e.value) == message
    chain.connect("a.up", "b")
    with pytest.raises(ChainError) as e:
        chain.egress("a.up", "outside")
    assert str(e.value) == "gate a.up is wired already; a gate feeds one neighbour or one egress"
    chain.ingress("inside", "a")
    with pytest.raises(ChainError) as e:
        chain.ingress("inside", "b")
    assert str(e.value) == "the inside ingress is 'a' already; a chain has one per side"


def test_facing_gates_must_be_gates():
    bad = type("Bad", (StampA,), {"name": "bad"})
    bad.outside = ("wan",)  # set after the class body, past the API's own check
    with pytest.raises(ChainError) as e:
        Chain("c").add("bad", bad)
    assert str(e.value) == "NF 'bad' declares outside gate 'wan', which is not one of its gates ('up', 'down')"
    both = type("Both", (StampA,), {"name": "both"})
    both.inside = ("up", "down")
    with pytest.raises(ChainError) as e:
        Chain("c").add("both", both)
    assert str(e.value) == "NF 'both' declares gate 'up' as facing both outside and inside; pick one"


# -- the chain as one NF ---------------------------------------------------------------------------
def test_composite_declarations_and_gates():
    nf = Chain.parse("nat>nat", bundled_lookup).as_nf()
    assert issubclass(nf, NF) and nf.name == "nat>nat"
    assert nf.gates == ("outside", "inside") and nf.outside == ("outside",) and nf.inside == ("inside",)
    assert list(nf.declarations()) == ["nat.by_flow", "nat.by_port", "nat#2.by_flow", "nat#2.by_port"]
    assert nf.declarations()["nat#2.by_port"] is Nat.by_port


def test_composite_matches_run_chain():
    """Concretely, the composite NF (flat namespaced state) and run_chain (per-instance state)
    emit the same outputs with the same choices and reach the same states, packet by packet."""
    for text, packets in [("nat>nat", [OUT, OUT.rewrite(sport=1001), IN.rewrite(dst=Nat.external, dport=Nat.base),
                                       IN.rewrite(dst=Nat.external, dport=Nat.base + 1), OUT]),
                          ("alarm>count>pick", [OUT, OUT.rewrite(sport=7), IN, OUT]),
                          ("a>reject>c", [OUT, OUT.rewrite(dport=23), IN])]:
        chain = Chain.parse(text, lookup if "nat" not in text else bundled_lookup)
        nf = chain.as_nf()
        flat, per_instance = initial_state(nf), initial_chain_state(chain)
        a, b = seeded(3), seeded(3)
        for pkt in packets:
            composite = step(nf, flat, pkt, a)
            routed = run_chain(chain, per_instance, pkt, b)
            assert composite.outputs == routed.outputs
            assert composite.choices == routed.choices
            assert composite.drops == [f"{i}: {r}" for i, r in routed.drops]
        for name, member in chain.members.items():
            for decl in member.nf.declarations():
                assert flat[f"{name}.{decl}"].frozen() == per_instance[name][decl].frozen()


def test_composite_of_composite():
    """A chain's composite has inside/outside egresses, so it can be a member of another chain."""
    inner = Chain.parse("a>b", lookup).as_nf()
    nested = Chain.parse("ab>c", {"ab": inner, "c": StampC}.__getitem__)
    flat = Chain.parse("a>b>c", lookup)
    for pkt in (OUT, IN):
        got = run_chain(nested, initial_chain_state(nested), pkt, first).outputs
        assert got == run_chain(flat, initial_chain_state(flat), pkt, first).outputs


def test_composite_is_a_copy():
    chain = two()
    chain.connect("a.up", "b")
    chain.connect("b.down", "a")
    chain.egress("b.up", "outside")
    chain.egress("a.down", "inside")
    chain.ingress("inside", "a")
    nf = chain.as_nf()
    chain.add("c", StampC)  # the chain changes afterwards; the composite does not
    assert list(nf.chain().members) == ["a", "b"]
    assert step(nf, initial_state(nf), OUT, first).outputs == [("outside", OUT.rewrite(label=6))]


# -- failover verdicts of the composite: Z3 and the enumerator agree -------------------------------
class SmallNat(Nat):
    base, ports = 20000, 2


EXT = Nat.external
NAT_UNIVERSE = [Packet(TCP, HOST, 1000, REMOTE, 80), Packet(TCP, addr("10.0.0.2"), 1000, REMOTE, 80),
                Packet(TCP, REMOTE, 80, EXT, 20000, inbound=True), Packet(TCP, REMOTE, 80, EXT, 20001, inbound=True)]
SMALL_UNIVERSE = [Packet(TCP, 1, 1, 2, 80), Packet(TCP, 1, 2, 2, 80), Packet(TCP, 2, 80, 1, 1, inbound=True)]
CHAINS = {
    "nat>nat": (lambda: Chain.parse("nat>nat", {"nat": SmallNat}.__getitem__), NAT_UNIVERSE),
    "count>pick": (lambda: Chain.parse("count>pick", lookup), SMALL_UNIVERSE),
    "pick>alarm": (lambda: Chain.parse("pick>alarm", lookup), SMALL_UNIVERSE),
    "fork": (branching, SMALL_UNIVERSE),
}
STRATEGIES = [("none", False), ("stateful.checkpoint:1", False), ("stateful.async", False), ("stateful.sync", False),
              ("stateful.commit:2", False), ("stateful.async", True), ("stateful.checkpoint:1", True)]
CASES = [(c, s, lc) for c in CHAINS for s, lc in STRATEGIES]


@pytest.mark.parametrize("chain_name,strategy,log_choices", CASES,
                         ids=[f"{c}-{s}{'-log' if lc else ''}" for c, s, lc in CASES])
def test_z3_and_enumeration_agree_on_chains(chain_name, strategy, log_choices):
    build, universe = CHAINS[chain_name]
    nf = build().as_nf()
    verdicts = {}
    for bound in (1, 2):
        violation = enumerate_failover(nf, Strategy.parse(strategy), bound, universe, log_choices)
        result = verify_failover(nf, Strategy.parse(strategy), bound, log_choices=log_choices)
        assert result.verdict != "unknown", result.reason
        assert result.verdict == ("counterexample" if violation else "proved"), (bound, violation and violation.run.inputs)
        if violation:
            assert len(result.counterexample.run.inputs) == len(violation.run.inputs)
        verdicts[bound] = result.verdict
    # not vacuous: what DESIGN.md predicts for a chain with state and a choice (fork: the choice
    # is on one branch only; count>pick and the others have both)
    unsafe = strategy == "none" or (not log_choices and strategy in ("stateful.checkpoint:1", "stateful.async"))
    assert verdicts[2] == ("counterexample" if unsafe else "proved"), verdicts


def test_single_nf_chain_verifies_like_the_nf():
    nf = Chain.parse("nat", {"nat": SmallNat}.__getitem__).as_nf()
    for strategy in ("stateful.async", "stateful.sync"):
        for bound in (1, 2):
            assert verify_failover(nf, Strategy.parse(strategy), bound).verdict == \
                verify_failover(SmallNat, Strategy.parse(strategy), bound).verdict


def test_links_wrap_fields_on_both_interpreters():
    """inc>drop-zero: a source port of 65535 reaches drop-zero as 0 (the link carries 16 bits),
    concretely and symbolically; without the wrap the symbolic run would let it out."""
    from nfproof.models.api import PACKET_WIDTHS
    from nfproof.verify import symbolic as S
    import z3

    chain = Chain.parse("inc>drop-zero", lookup)
    nf = chain.as_nf()
    for sport, passes in ((65535, False), (100, True)):
        pkt = OUT.rewrite(sport=sport)
        concrete = run_chain(chain, initial_chain_state(chain), pkt, first)
        assert (concrete.outputs != []) == passes
        assert concrete.drops == ([] if passes else [("drop-zero", "source port 0")])
        terms = {f: z3.BitVecVal(getattr(pkt, f), w) for f, w in PACKET_WIDTHS.items()}
        terms["inbound"] = z3.BoolVal(False)
        sym = S.step(nf, S.initial_state(nf), terms, lambda k, w: z3.BitVec(f"c{k}", w))
        present = [z3.simplify(slot.present) for slot in sym.outputs]
        assert [z3.is_true(p) for p in present] == ([True] if passes else [])
        if passes:
            assert z3.simplify(sym.outputs[0].fields["sport"]).as_long() == 101
