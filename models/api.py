"""The NF model API.

An NF is a state machine: `handle(pkt, ctx)` reads and writes the NF's *declared* state and talks
to the world only through the context `ctx`:

    ctx.choose(domain)   a nondeterministic choice from a finite domain (None if it is empty)
    ctx.now()            the processing time (a nondeterministic clock read)
    ctx.emit(pkt, port)  an output on a named gate
    ctx.drop(reason)     no output, with a reason

Handlers are plain Python and are run by several interpreters, the context and the state storage
being the seam: concretely (runtime, trace replay: values are ints, maps are dicts) and
symbolically (verify/symbolic.py: values are Z3 terms, a branch on a symbolic condition forks the
path, maps are arrays). So a handler must be pure apart from its declared state and its context,
must not use `is` on state values (write `x is None` only on what `Map.get` or `ctx.choose`
returned: those fork on their own), and must keep loops bounded by constants.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, NamedTuple

TCP, UDP, ICMP = 6, 17, 1
PROTO_NAMES = {TCP: "TCP", UDP: "UDP", ICMP: "ICMP", 58: "ICMPv6"}
TCP_FLAGS = "FSRPAUEC"  # bit 0 = FIN ... bit 7 = CWR


class ModelError(Exception):
    """A model broke the rules of this API (e.g. emitted on an undeclared gate)."""


class Bits:
    """A fixed-width unsigned field type (a map key or value type); the width is what the
    symbolic interpreter uses for the Z3 bit-vector sort."""

    def __init__(self, width: int, name: str):
        self.width, self.name = width, name

    def __repr__(self) -> str:
        return self.name


Addr, Port, Proto, Flags = Bits(32, "Addr"), Bits(16, "Port"), Bits(8, "Proto"), Bits(8, "Flags")


class Flow(NamedTuple):
    """A 5-tuple flow key (also a record type for map keys and values)."""

    proto: Any
    src: Any
    sport: Any
    dst: Any
    dport: Any

    def __str__(self) -> str:
        return f"{PROTO_NAMES.get(self.proto, self.proto)} {ip(self.src)}:{self.sport} > {ip(self.dst)}:{self.dport}"


Flow.widths = (Proto.width, Addr.width, Port.width, Addr.width, Port.width)


def wrap(kind, value):
    """A value as a field of `kind` (Bits or Flow) holds it: its low bits, as on the wire and in
    the symbolic interpreter's bit-vectors."""
    if isinstance(kind, Bits):
        return value & ((1 << kind.width) - 1)
    return kind(*(v & ((1 << w) - 1) for v, w in zip(value, kind.widths)))


def ip(value) -> str:
    return str(ipaddress.IPv4Address(value)) if isinstance(value, int) else str(value)


def addr(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


@dataclass(frozen=True)
class Packet:
    """A packet as NFs see it: the header fields the bundled NFs act on. `inbound` is the side it
    arrived from (True: from the outside/WAN). Values are ints, or terms when run symbolically."""

    proto: Any = TCP
    src: Any = 0
    sport: Any = 0
    dst: Any = 0
    dport: Any = 0
    flags: Any = 0
    inbound: Any = False

    @property
    def flow(self) -> Flow:
        return Flow(self.proto, self.src, self.sport, self.dst, self.dport)

    def rewrite(self, **changes) -> "Packet":
        return replace(self, **changes)

    def wrapped(self) -> "Packet":
        """Integer fields reduced to their wire width: field arithmetic wraps, as it does on the
        wire and in the symbolic interpreter's bit-vectors."""
        return replace(self, **{f: getattr(self, f) & ((1 << w) - 1) for f, w in PACKET_WIDTHS.items()})

    def __str__(self) -> str:
        text = f"{PROTO_NAMES.get(self.proto, self.proto)} {ip(self.src)}:{self.sport} > {ip(self.dst)}:{self.dport}"
        if self.proto == TCP and isinstance(self.flags, int):
            text += " [" + "".join(c for b, c in enumerate(TCP_FLAGS) if self.flags >> b & 1) + "]"
        return text + (" (inbound)" if self.inbound is True else "")


PACKET_FIELDS = tuple(f.name for f in fields(Packet))
PACKET_WIDTHS = {"proto": 8, "src": 32, "sport": 16, "dst": 32, "dport": 16, "flags": 8}  # inbound: bool


def flags(text: str) -> int:
    """TCP flags from letters, e.g. flags("SA")."""
    return sum(1 << TCP_FLAGS.index(c) for c in text)


class Pool:
    """A bounded domain of integers [base, base+size): what a choice may pick from. Bounds are
    what make verification finite; `free(map)` is the domain of values not used as keys of map."""

    def __init__(self, base: int, size: int, kind: Bits = Port):
        self.base, self.size, self.kind = base, size, kind

    def values(self) -> range:
        return range(self.base, self.base + self.size)

    def free(self, used: "MapStorage") -> "Domain":
        return used.absent_from(self.values(), self.kind)

    def all(self) -> "Domain":
        """Every value of the pool (a choice that does not depend on state)."""
        return Domain(((v, True) for v in self.values()), self.kind)


class Domain:
    """A finite set of candidates, each with an availability condition (True for concrete
    domains; a term when symbolic). The context turns it into a choice."""

    def __init__(self, items: Iterable[tuple[Any, Any]], kind: Bits):
        self.items, self.kind = list(items), kind

    def concrete_values(self) -> list:
        return [value for value, available in self.items if available is True]


class MapStorage:
    """Storage interface of a declared Map or Set, implemented by each interpreter:
    get(key) -> value or None, m[key] = value, del m[key], key in m, add(key), discard(key),
    absent_from(values, kind) -> Domain of the values that are not keys."""


class State:
    """A state declaration: a class attribute of an NF naming one piece of its state."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, nf, owner=None):
        return self if nf is None else nf.state[self.name]


class Map(State):
    """A finite map from `key` type to `value` type (Bits or Flow)."""

    def __init__(self, key, value):
        self.key, self.value = key, value


class Set(State):
    """A finite set of `key` values: `x in s`, `s.add(x)`, `s.discard(x)`."""

    def __init__(self, key):
        self.key = key


class Counter(State):
    """An unsigned integer of `kind` (default 32 bits), initially 0; read and assign it as an
    attribute (`self.packets += 1`). Arithmetic wraps at the width, as in the symbolic bit-vectors."""

    def __init__(self, kind: Bits = Bits(32, "Count")):
        self.kind = kind

    def __get__(self, nf, owner=None):
        return self if nf is None else nf.state[self.name].value

    def __set__(self, nf, value):
        nf.state[self.name].value = value


class NF:
    """Base class of NF models. Subclasses declare state (class attributes of type Map, Set or
    Counter), bounded domains (Pool) and gates, and implement `handle(pkt, ctx)`. An instance is a view of one
    state storage (`state`: declaration name -> storage), so the same handler runs on any
    interpreter's storage."""

    name = "nf"
    gates: tuple[str, ...] = ("out",)

    def __init__(self, state: dict):
        self.state = state

    @classmethod
    def declarations(cls) -> dict[str, State]:
        out = {}
        for klass in reversed(cls.__mro__):
            out.update({k: v for k, v in vars(klass).items() if isinstance(v, State)})
        return out

    def handle(self, pkt: Packet, ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
