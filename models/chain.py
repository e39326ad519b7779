"""Chains: directed graphs of NF instances, their concrete execution, and their composite NF.

Theory of operation. A chain is a graph of named NF instances (a networkx MultiDiGraph: one edge
per wired gate, keyed by the gate). Each NF says which of its gates face the outside and which the
inside (class attributes `outside` / `inside`); every other gate (a monitor's `alert`) is an extra
gate. An edge `a.gate -> b` carries a *direction*: `outbound` (travelling towards the outside end:
the packet arrives at b from its inside, `Packet.inbound` False) or `inbound` (arriving at b from
its outside, `inbound` True). A gate facing outside wires outbound by default, one facing inside
inbound; an extra gate needs the direction spelled out. A gate that is wired to no instance is an
*egress*: a named exit the outside world sees (several gates may share one name).

The linear form `firewall>nat>lb` (`Chain.parse`) has an inside end (before the first NF) and an
outside end (after the last): packets from the inside (`inbound` False) enter the first instance
and travel through each instance's outside-facing gates to the next; packets from the outside
(`inbound` True) enter the last instance and travel back through the inside-facing gates. Its
egresses: `outside` (what the last instance emits on outside-facing gates), `inside` (what the
first emits on inside-facing gates) and `INSTANCE.GATE` for every extra gate. Instances are named
after their NF (`nat`, then `nat#2`, `nat#3` when repeated) or explicitly (`edge=nat>core=nat`).

Execution is run to completion, depth first in gate-emission order: an instance handles a packet
completely; then each packet it emitted, in the order emitted, is carried to its gate's neighbour
and processed there (with all its descendants) before the next one; a packet on an egress gate
leaves the chain. A packet handed on is wrapped to the field widths (as on a wire) and gets the
`inbound` flag of the side it arrives on. Choices and clock reads are made in that order. A
packet may cross at most 2 x (number of instances) instances (out and back once each); more is
a routing loop and a model error.

Two executions share that routing (`Chain.route`):
- `run_chain` runs each instance with models.concrete.step on per-instance state
  (`initial_chain_state`).
- `chain.as_nf()` is the chain as one NF: its declarations are the instances' (`instance.decl`),
  its gates the chain's egresses, and its handler routes the packet through the instances' handlers
  on views of their part of the state. Its handler is plain deterministic Python given the branch
  decisions, so it runs unchanged on the concrete and the symbolic interpreter; the verifier then
  treats the whole chain as one failing unit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import networkx as nx

from . import api
from .api import NF, PACKET_WIDTHS, ModelError, Packet, Pool

# routing frames are the interpreter's: a model error points at the member's own line
getattr(api, "INTERPRETER_FILES", set()).add(__file__)

OUTBOUND, INBOUND = "outbound", "inbound"
DIRECTIONS = (OUTBOUND, INBOUND)
SIDES = ("inside", "outside")  # where a packet enters: from the inside (outbound) or the outside
# Until every model declares `outside` / `inside` (models/api.py), gates with these names count.
_FALLBACK_OUTSIDE, _FALLBACK_INSIDE = ("wan", "out", "outside"), ("lan", "in", "inside")
_INSTANCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_#-]*")
EXAMPLE = "'firewall>nat>lb'"


class ChainError(ModelError):
    """A chain that cannot be built or run (one line: what is wrong, and the fix). It is about
    the wiring, not a model's line, so interpreters do not prefix a location."""

    location = ""


def facing(nf_cls: type[NF]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(outside-facing gates, inside-facing gates) of an NF, checked against its gates."""
    gates = tuple(nf_cls.gates)
    outside = getattr(nf_cls, "outside", None)
    inside = getattr(nf_cls, "inside", None)
    outside = tuple(g for g in gates if g in _FALLBACK_OUTSIDE) if outside is None else tuple(outside)
    inside = tuple(g for g in gates if g in _FALLBACK_INSIDE) if inside is None else tuple(inside)
    label = getattr(nf_cls, "name", nf_cls.__name__)
    for side, names in (("outside", outside), ("inside", inside)):
        for g in names:
            if g not in gates:
                raise ChainError(f"NF {label!r} declares {side} gate {g!r}, which is not one of its gates {gates}")
    both = set(outside) & set(inside)
    if both:
        raise ChainError(f"NF {label!r} declares gate {sorted(both)[0]!r} as facing both outside and inside; pick one")
    return outside, inside


@dataclass(frozen=True)
class Member:
    """One instance: its NF class, its gates by facing, and its declarations' namespaced names."""

    name: str
    nf: type
    outside: tuple[str, ...]
    inside: tuple[str, ...]
    state_names: tuple[tuple[str, str], ...]  # (declaration, "instance.declaration")

    @property
    def gates(self) -> tuple[str, ...]:
        return tuple(self.nf.gates)

    def facing_of(self, gate: str) -> str | None:
        return "outside" if gate in self.outside else "inside" if gate in self.inside else None


@dataclass(frozen=True)
class Hop:
    """Where a packet emitted on one gate goes: an egress, or an instance (arriving inbound or not)."""

    egress: str | None = None
    target: str | None = None
    inbound: bool = False


def _split_gate(ref: str) -> tuple[str, str]:
    instance, dot, gate = ref.rpartition(".")
    if not dot or not instance or not gate:
        raise ChainError(f"gate reference {ref!r} is not INSTANCE.GATE (e.g. 'nat.wan')")
    return instance, gate


class Chain:
    """A graph of NF instances. Build it with `add`, `connect`, `ingress`, `egress` (or
    `Chain.parse('a>b>c', lookup)`), then `validate()`; `as_nf()` and `run_chain` validate first.

        chain = Chain("split")
        chain.add("s", Splitter); chain.add("x", Nat); chain.add("y", Nat)
        chain.connect("s.left", "x"); chain.connect("s.right", "y")     # outbound (outside-facing)
        chain.connect("x.lan", "s"); chain.connect("y.lan", "s")        # inbound (inside-facing)
        chain.egress("x.wan", "outside"); chain.egress("y.wan", "outside"); chain.egress("s.back", "inside")
        chain.ingress("inside", "s"); chain.ingress("outside", "x")
    """

    def __init__(self, name: str = "chain"):
        self.name = name
        self.graph = nx.MultiDiGraph()
        self.members: dict[str, Member] = {}
        self.ingresses: dict[str, str] = {}       # side -> instance a packet from that side enters
        self.egresses: dict[tuple[str, str], str] = {}  # (instance, gate) -> egress name
        self._hops: dict[tuple[str, str], Hop] | None = None

    # -- building -------------------------------------------------------------------------------
    def add(self, instance: str, nf_cls: type) -> str:
        if not isinstance(instance, str) or not _INSTANCE_NAME.fullmatch(instance):
            raise ChainError(f"instance name {instance!r} is not valid: use letters, digits, _, - or # "
                             f"(starting with a letter), e.g. 'nat' or 'nat#2'")
        if instance in self.members:
            raise ChainError(f"instance {instance!r} is already in the chain; give the second one another name "
                             f"(e.g. {instance + '#2'!r})")
        if not (isinstance(nf_cls, type) and issubclass(nf_cls, NF)):
            raise ChainError(f"instance {instance!r}: {nf_cls!r} is not an NF class (a subclass of models.api.NF)")
        outside, inside = facing(nf_cls)
        names = tuple((d, f"{instance}.{d}") for d in nf_cls.declarations())
        self.members[instance] = Member(instance, nf_cls, outside, inside, names)
        self.graph.add_node(instance, nf=nf_cls)
        self._hops = None
        return instance

    def _member(self, instance: str) -> Member:
        if instance not in self.members:
            known = ", ".join(self.members) or "none yet"
            raise ChainError(f"unknown instance {instance!r} in chain {self.name!r}; instances: {known}")
        return self.members[instance]

    def _gate(self, ref: str) -> tuple[Member, str]:
        instance, gate = _split_gate(ref)
        member = self._member(instance)
        if gate not in member.gates:
            raise ChainError(f"instance {instance!r} has no gate {gate!r}; its gates: {', '.join(member.gates)}")
        if (instance, gate) in self.egresses or any(k == gate for _, _, k in self.graph.out_edges(instance, keys=True)):
            raise ChainError(f"gate {ref} is wired already; a gate feeds one neighbour or one egress")
        return member, gate

    def connect(self, source: str, target: str, direction: str | None = None) -> None:
        """Wire gate `source` ('instance.gate') to instance `target`; `direction` is the way the
        packet travels: 'outbound' (it arrives at target from the inside) or 'inbound'. Default:
        from the gate's facing (outside-facing: outbound, inside-facing: inbound)."""
        member, gate = self._gate(source)
        self._member(target)
        faces = member.facing_of(gate)
        implied = {"outside": OUTBOUND, "inside": INBOUND}.get(faces)
        if direction is None:
            if implied is None:
                raise ChainError(f"gate {source} faces neither inside nor outside: say which way the packet travels, "
                                 f"connect({source!r}, {target!r}, direction='outbound' or 'inbound')")
            direction = implied
        if direction not in DIRECTIONS:
            raise ChainError(f"direction {direction!r} of {source} -> {target} is not one of {', '.join(DIRECTIONS)}")
        if implied is not None and direction != implied:
            raise ChainError(f"gate {source} faces {faces}, so it wires {implied}, not {direction}")
        self.graph.add_edge(member.name, target, key=gate, direction=direction)
        self._hops = None

    def ingress(self, side: str, instance: str) -> None:
        """Packets from `side` ('inside': Packet.inbound False; 'outside': True) enter `instance`."""
        if side not in SIDES:
            raise ChainError(f"ingress side {side!r} is not one of {', '.join(SIDES)}")
        self._member(instance)
        if side in self.ingresses:
            raise ChainError(f"the {side} ingress is {self.ingresses[side]!r} already; a chain has one per side")
        self.ingresses[side] = instance
        self._hops = None

    def egress(self, source: str, name: str) -> None:
        """Gate `source` ('instance.gate') leaves the chain as egress `name`."""
        if not isinstance(name, str) or not name.strip():
            raise ChainError(f"egress of {source} needs a non-empty name, e.g. 'outside'")
        member, gate = self._gate(source)
        self.egresses[(member.name, gate)] = name
        self._hops = None

    # -- the linear form ------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, lookup: Callable[[str], type]) -> "Chain":
        """A linear chain from `a>b>c` (members `NF` or `name=NF`; NF as `lookup` knows it)."""
        members = [m.strip() for m in text.strip().split(">")] if text.strip() else []
        if not members:
            raise ChainError(f"empty chain: name at least one NF, e.g. {EXAMPLE}")
        for position, m in enumerate(members, 1):
            if not m:
                raise ChainError(f"malformed chain {text!r}: member {position} is empty; write NF>NF>..., e.g. {EXAMPLE}")
        chain = cls(">".join(members))
        names, seen = [], {}
        for m in members:
            explicit, eq, ref = m.partition("=")
            if not eq or not _INSTANCE_NAME.fullmatch(explicit.strip()):
                explicit, ref = "", m
            explicit, ref = explicit.strip(), ref.strip()
            if not ref:
                raise ChainError(f"malformed chain {text!r}: {m!r} names no NF; write NAME=NF, e.g. 'edge=nat'")
            try:
                nf_cls = lookup(ref)
            except KeyError as e:
                raise ChainError(f"chain {text!r}: {e.args[0] if e.args else e}") from None
            if explicit:
                name = explicit
            else:
                base = getattr(nf_cls, "name", NF.name)
                base = base if base != NF.name and _INSTANCE_NAME.fullmatch(base) else ref if _INSTANCE_NAME.fullmatch(ref) else nf_cls.__name__
                seen[base] = seen.get(base, 0) + 1
                name = base if seen[base] == 1 else f"{base}#{seen[base]}"
            chain.add(name, nf_cls)
            names.append(name)
        first, last = chain.members[names[0]], chain.members[names[-1]]
        for a, b in zip(names, names[1:]):
            for g in chain.members[a].outside:
                chain.connect(f"{a}.{g}", b, OUTBOUND)
            for g in chain.members[b].inside:
                chain.connect(f"{b}.{g}", a, INBOUND)
        for g in last.outside:
            chain.egress(f"{last.name}.{g}", "outside")
        for g in first.inside:
            chain.egress(f"{first.name}.{g}", "inside")
        chain.ingress("inside", first.name)
        chain.ingress("outside", last.name)
        return chain.validate()

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> "Chain":
        """Checks the graph (raises ChainError) and fixes the routing table. Returns self."""
        if not self.members:
            raise ChainError(f"chain {self.name!r} is empty: add at least one NF instance")
        if not self.ingresses:
            raise ChainError(f"chain {self.name!r} has no ingress: declare where packets enter, "
                             f"e.g. chain.ingress('inside', {next(iter(self.members))!r})")
        hops: dict[tuple[str, str], Hop] = {}
        for a, b, gate, data in self.graph.edges(keys=True, data=True):
            hops[(a, gate)] = Hop(target=b, inbound=data["direction"] == INBOUND)
        for (a, gate), name in self.egresses.items():
            hops[(a, gate)] = Hop(egress=name)
        for m in self.members.values():
            for gate in m.gates:
                if (m.name, gate) in hops:
                    continue
                side = m.facing_of(gate)
                if side is None:  # an extra gate is an egress of its own
                    hops[(m.name, gate)] = Hop(egress=f"{m.name}.{gate}")
                    continue
                raise ChainError(f"dangling gate {m.name}.{gate} (facing {side}): connect it to an instance "
                                 f"(chain.connect({m.name + '.' + gate!r}, INSTANCE)) or make it an egress "
                                 f"(chain.egress({m.name + '.' + gate!r}, {side!r}))")
        for direction in DIRECTIONS:
            one_way = nx.DiGraph()
            one_way.add_edges_from((a, b) for a, b, d in self.graph.edges(data="direction") if d == direction)
            try:
                cycle = nx.find_cycle(one_way)
            except nx.NetworkXNoCycle:
                continue
            loop = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
            raise ChainError(f"chain {self.name!r} has a cycle of {direction} links: {loop}; "
                             f"a packet would circle forever, remove one link")
        reachable = set()
        for entry in self.ingresses.values():
            reachable |= {entry} | nx.descendants(self.graph, entry)
        for name in self.members:
            if name not in reachable:
                raise ChainError(f"instance {name!r} is reachable from no ingress; connect a gate to it or "
                                 f"declare it an ingress")
        self._hops = hops
        return self

    def _routes(self) -> dict[tuple[str, str], Hop]:
        if self._hops is None:
            self.validate()
        return self._hops

    @property
    def egress_names(self) -> tuple[str, ...]:
        """The chain's egresses: declared ones in declaration order, then extra gates'."""
        out: list[str] = []
        for name in list(self.egresses.values()) + [h.egress for h in self._routes().values() if h.egress]:
            if name not in out:
                out.append(name)
        return tuple(out)

    def egress_facing(self, side: str) -> tuple[str, ...]:
        """Egresses fed only by gates facing `side` ('outside' or 'inside')."""
        kinds: dict[str, set] = {}
        for (a, gate), hop in self._routes().items():
            if hop.egress:
                kinds.setdefault(hop.egress, set()).add(self.members[a].facing_of(gate))
        return tuple(e for e in self.egress_names if kinds.get(e) == {side})

    # -- execution ------------------------------------------------------------------------------
    def route(self, pkt: Packet, process: Callable[[str, Packet], Iterable], emit: Callable[[Packet, str], None],
              drop: Callable[[str], None]) -> None:
        """Carries one input packet through the chain, run to completion and depth first in
        gate-emission order: `process(instance, pkt)` runs one instance and returns what it
        emitted ([(gate, Packet)] in order); `emit(pkt, egress)` receives what leaves the chain."""
        side = "outside" if pkt.inbound else "inside"  # forks when symbolic
        entry = self.ingresses.get(side)
        if entry is None:
            return drop(f"the chain has no {side} ingress")
        self.carry(entry, process(entry, pkt), process, emit)

    def carry(self, instance: str, emitted, process, emit, depth: int = 1) -> None:
        """Carries on what `instance` emitted ([(gate, Packet)]), as `route` does: each to its
        gate's neighbour (processed there, depth first) or out of the chain."""
        hops = self._routes()
        for gate, out in list(emitted):
            hop = hops[(instance, gate)]
            if hop.egress is not None:
                emit(out, hop.egress)
                continue
            if depth >= 2 * len(self.members):
                raise ChainError(f"chain {self.name!r}: a packet crossed more than {2 * len(self.members)} instances "
                                 f"(a routing loop through NFs that turn packets around?)")
            p = _carried(out, hop.inbound)
            self.carry(hop.target, process(hop.target, p), process, emit, depth + 1)

    def copy(self) -> "Chain":
        other = Chain(self.name)
        other.graph, other.members = self.graph.copy(), dict(self.members)
        other.ingresses, other.egresses = dict(self.ingresses), dict(self.egresses)
        return other

    def as_nf(self) -> type[NF]:
        """The chain as one NF class (see the module docstring); runs on both interpreters. It
        holds a copy of the chain (`Composite.chain()`): later changes to this one do not affect it."""
        chain = self.copy().validate()
        attrs = {"name": chain.name, "gates": chain.egress_names, "outside": chain.egress_facing("outside"),
                 "inside": chain.egress_facing("inside"), "chain": staticmethod(lambda: chain),
                 "__doc__": f"The chain {chain.name!r} as one NF (models/chain.py)."}
        # the members' pools and constants, namespaced (the verifier reads them to pick readable values)
        for m in chain.members.values():
            for klass in m.nf.__mro__:
                if klass in NF.__mro__:
                    continue
                for attr, value in vars(klass).items():
                    if isinstance(value, Pool) or (isinstance(value, int) and not isinstance(value, bool)):
                        attrs.setdefault(f"{m.name}.{attr}", value)
        return type(f"ChainNF[{chain.name}]", (ChainNF,), attrs)


def instances(nf_cls: type) -> list[str]:
    """The instances of a chain of two or more NFs, in chain order; [] for a single NF."""
    chain = getattr(nf_cls, "chain", None)
    members = list(chain().members) if callable(chain) else []
    return members if len(members) > 1 else []


def _carried(pkt: Packet, inbound: bool) -> Packet:
    """The packet as a link between two instances carries it: integer fields wrapped to their
    widths (on ints and on symbolic values alike: `&` is exact on both), `inbound` the side it
    arrives on."""
    changes = {"inbound": inbound}
    for f, width in PACKET_WIDTHS.items():
        value = getattr(pkt, f)
        try:
            changes[f] = value & ((1 << width) - 1)
        except TypeError:
            raise ModelError(f"packet field `{f}` holds an integer, not {value!r}") from None
    return pkt.rewrite(**changes)


class _MemberContext:
    """The context one instance's handler sees inside the composite: choices, the clock and drops
    go to the composite's context; emissions are collected for routing."""

    def __init__(self, outer, member: Member):
        self.outer, self.member, self.emitted = outer, member, []

    def choose(self, domain):
        return self.outer.choose(domain)

    def now(self):
        return self.outer.now()

    def emit(self, pkt: Packet, gate: str) -> None:
        if gate not in self.member.gates:
            raise ModelError(f"instance {self.member.name!r}: emit on undeclared gate {gate!r}; "
                             f"the NF declares gates {self.member.gates}")
        self.emitted.append((gate, pkt))

    def drop(self, reason: str = "") -> None:
        self.outer.drop(f"{self.member.name}: {reason}")


class ChainNF(NF):
    """Base of the classes `Chain.as_nf` makes. The state is the flat dict of namespaced storages
    ("instance.declaration"); each member's handler runs on a view of its own part of it."""

    @staticmethod
    def chain() -> Chain:  # pragma: no cover - set by Chain.as_nf
        raise NotImplementedError

    @classmethod
    def declarations(cls) -> dict:
        return {f"{m.name}.{d}": decl for m in cls.chain().members.values() for d, decl in m.nf.declarations().items()}

    def handle(self, pkt: Packet, ctx) -> None:
        chain = self.chain()

        def process(instance: str, p: Packet):
            member = chain.members[instance]
            inner = _MemberContext(ctx, member)
            member.nf({d: self.state[ns] for d, ns in member.state_names}).handle(p, inner)
            return self.released(instance, p, inner.emitted, ctx)

        chain.route(pkt, process, ctx.emit, ctx.drop)

    def released(self, instance: str, pkt: Packet, emitted: list, ctx) -> list:
        """What of an instance's emissions ([(gate, Packet)]) for `pkt` travels on: all of them. A
        checker's subclass may hold some back (a trace checker: what a frame cannot carry)."""
        return emitted


# -- concrete execution with per-instance state ---------------------------------------------------
@dataclass
class ChainStep:
    egresses: tuple[str, ...]
    outputs: list = field(default_factory=list)      # [(egress, Packet)] in the order they left
    drops: list = field(default_factory=list)        # [(instance or "", reason)]
    choices: list = field(default_factory=list)      # every instance's choices, in call order
    clock_reads: list = field(default_factory=list)
    visits: list = field(default_factory=list)       # [(instance, Packet it processed)] in order

    @property
    def by_egress(self) -> dict[str, list[Packet]]:
        out = {e: [] for e in self.egresses}
        for e, p in self.outputs:
            out[e].append(p)
        return out


def initial_chain_state(chain: Chain) -> dict:
    """Instance name -> that instance's concrete state (models.concrete.initial_state)."""
    from .concrete import initial_state
    return {name: initial_state(m.nf) for name, m in chain.members.items()}


def run_chain(chain: Chain, state: dict, pkt: Packet, chooser, clock: Callable[[], int] | None = None) -> ChainStep:
    """Processes one input packet through every instance it reaches (run to completion, depth
    first in gate-emission order: an instance handles a packet fully, then each packet it emitted
    is followed to its end before the next), each instance by models.concrete.step on its own
    part of `state` (updated in place). Returns the outputs by egress, drops, choices, visits."""
    from .concrete import step
    result = ChainStep(chain.egress_names)

    def process(instance: str, p: Packet):
        result.visits.append((instance, p))
        res = step(chain.members[instance].nf, state[instance], p, chooser, clock)
        result.choices += res.choices
        result.clock_reads += res.clock_reads
        result.drops += [(instance, r) for r in res.drops]
        return res.outputs

    chain.route(pkt, process, lambda p, egress: result.outputs.append((egress, p.wrapped())),
                lambda reason: result.drops.append(("", reason)))
    return result
