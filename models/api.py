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

import ast
import inspect
import ipaddress
import os
import re
import sys
import sysconfig
import textwrap
from fractions import Fraction
from dataclasses import dataclass, fields
from typing import Any, Iterable, NamedTuple

TCP, UDP, ICMP = 6, 17, 1
PROTO_NAMES = {TCP: "TCP", UDP: "UDP", ICMP: "ICMP", 58: "ICMPv6"}
TCP_FLAGS = "FSRPAUEC"  # bit 0 = FIN ... bit 7 = CWR


class ModelError(Exception):
    """A model broke the rules of this API (e.g. emitted on an undeclared gate, kept state in an
    undeclared attribute, used a construct an interpreter cannot follow). Both interpreters raise
    it for the same models, prefixed with the model's file and line (`located`)."""

    location: str | None = None


MAX_CHOICE_WIDTH = 128  # bits of the widest domain a choice may draw from, on every interpreter
INTERPRETER_FILES: set[str] = {__file__}  # files whose frames are the interpreters', not the model's


def model_location(tb=None) -> str | None:
    """`file:line` of the innermost model frame: of a traceback (where an exception was raised),
    or of the current call stack."""
    frames = []
    if tb is not None:
        while tb is not None:
            frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
            tb = tb.tb_next
        frames.reverse()
    else:
        frame = sys._getframe(1)
        while frame is not None:
            frames.append((frame.f_code.co_filename, frame.f_lineno))
            frame = frame.f_back
    for filename, line in frames:
        if filename not in INTERPRETER_FILES:
            return f"{filename}:{line}"
    return None


def located(error: ModelError, tb=None) -> ModelError:
    """The error with the model's file and line in front (once)."""
    if error.location is None:
        error.location = model_location(tb) or "?"
        error.args = (f"{error.location}: {error.args[0] if error.args else ''}",) + error.args[1:]
    return error


class model_code:
    """`with model_code(): nf.handle(...)`: what the handler raises, as both interpreters report
    it: a ModelError gets the model's file and line; a Python error raised by the model's own code
    becomes a ModelError there; an error raised inside an interpreter stays what it is (a bug in
    nfproof, not in the model)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, ModelError):
            located(error, tb)
        elif isinstance(error, (ArithmeticError, LookupError, TypeError, ValueError, AttributeError)):
            failure = model_failure(error)
            if failure is not None:
                raise failure from None
        return False


def model_failure(error: Exception) -> ModelError | None:
    """A Python exception raised by model code itself (an index out of range, a division by
    zero, a bad operand) as a ModelError at the model's line; None when it was raised inside an
    interpreter (a bug in nfproof, not in the model)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code.co_filename in INTERPRETER_FILES:
        return None
    return located(ModelError(f"the model raised {type(error).__name__}: {error}"), error.__traceback__)


class Bits:
    """A fixed-width unsigned field type (a map key or value type); the width is what the
    symbolic interpreter uses for the Z3 bit-vector sort."""

    def __init__(self, width: int, name: str):
        self.width, self.name = width, name

    def __repr__(self) -> str:
        return self.name


Addr, Port, Proto, Flags = Bits(32, "Addr"), Bits(16, "Port"), Bits(8, "Proto"), Bits(8, "Flags")
# Clock values (`ctx.now()`, in the NF's ticks). Keep them in a Map of Time and use them only in
# differences and comparisons, and proofs may start the clock at 0 (verify/time_shift.py).
Time = Bits(32, "Time")


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
        if not isinstance(value, int):
            raise ModelError(f"a {kind} ({kind.width}-bit integer) cannot hold {value!r}")
        return value & ((1 << kind.width) - 1)
    masks = kind.__dict__.get("_masks") or _masks_of(kind)
    if isinstance(value, tuple) and len(value) == len(masks) and all(type(v) is int or isinstance(v, int) for v in value):
        return kind._make([v & m for v, m in zip(value, masks)])
    raise ModelError(f"a {kind.__name__} ({', '.join(kind._fields)}) cannot hold {value!r}")


_tuple_new = tuple.__new__


def _masks_of(kind) -> tuple:
    kind._masks = tuple((1 << w) - 1 for w in kind.widths)
    return kind._masks


_WRAPPERS: dict = {}  # kind -> its `wrapper`


def wrapper(kind):
    """`lambda value: wrap(kind, value)`, fast where the value holds already: an int (exactly)
    within a Bits, a record of its kind (exactly) whose fields are ints within their widths (wrap
    would return an equal value: it is returned as it is). Anything else goes through `wrap`, so
    results and errors are wrap's. Cached per kind (the concrete storages call it per access)."""
    try:
        return _WRAPPERS[kind]
    except (KeyError, TypeError):
        pass
    fast = None
    try:
        if isinstance(kind, Bits):
            fast = _bits_wrapper(kind, (1 << kind.width) - 1)
        elif isinstance(kind, type) and issubclass(kind, tuple):
            masks = kind.__dict__.get("_masks") or _masks_of(kind)
            if masks and all(type(m) is int for m in masks) and len(kind._fields) == len(masks):
                fast = _record_wrapper(kind, masks)
    except Exception:  # a kind wrap refuses: let wrap say so, at each use
        fast = None
    if fast is None:
        def fast(value, kind=kind):
            return wrap(kind, value)
    try:
        _WRAPPERS[kind] = fast
    except TypeError:
        pass
    return fast


def _bits_wrapper(kind, mask):
    def wrap_bits(value):
        if type(value) is int:
            return value & mask
        return wrap(kind, value)
    return wrap_bits


def _record_wrapper(kind, masks):
    n = len(masks)
    names = [f"v{k}" for k in range(n)]
    unpack = ", ".join(names) + ("," if n == 1 else "")
    exact = " and ".join(f"type({v}) is int" for v in names)
    within = " and ".join(f"0 <= {v} <= {m}" for v, m in zip(names, masks))
    source = (f"def wrap_record(value):\n"
              f"    if type(value) is kind:\n"
              f"        try:\n"
              f"            {unpack} = value\n"
              f"        except ValueError:\n"
              f"            pass\n"
              f"        else:\n"
              f"            if {exact} and {within}:\n"
              f"                return value\n"
              f"    return wrap(kind, value)\n")
    namespace = {"kind": kind, "wrap": wrap}
    exec(compile(source, _WRAPPER_FILE, "exec"), namespace)
    return namespace["wrap_record"]


_WRAPPER_FILE = "<nfproof.models.api.wrapper>"  # the generated wrappers' frames are the interpreters'
INTERPRETER_FILES.add(_WRAPPER_FILE)


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
    length: Any = 0      # bytes on the wire (0: unknown; the monitor counts it)
    label: Any = 0       # a rate label carried between NFs (csfq-edge writes it, csfq-core reads it)

    @property
    def flow(self) -> Flow:
        return _tuple_new(Flow, (self.proto, self.src, self.sport, self.dst, self.dport))  # Flow(...), as its __new__

    def rewrite(self, **changes) -> "Packet":
        if not changes.keys() <= _FIELD_SET:
            raise TypeError(f"Packet has no field {sorted(changes.keys() - _FIELD_SET)[0]!r}")
        new = object.__new__(type(self))  # dataclasses.replace, without its cost (the runtime's generic path)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def wrapped(self) -> "Packet":
        """The packet as a gate carries it: integer fields reduced to their wire width (field
        arithmetic wraps, as on the wire and in the symbolic interpreter's bit-vectors), `inbound`
        a bool. A value of another kind is a ModelError, as in the symbolic interpreter."""
        fields_ = self.__dict__
        inbound = fields_["inbound"]
        if inbound is not True and inbound is not False:
            check_bool_field(inbound)
        new = object.__new__(type(self))
        wrapped_ = new.__dict__
        wrapped_["inbound"] = inbound
        proto, src, sport, dst, dport, flags_, length, label = (
            fields_["proto"], fields_["src"], fields_["sport"], fields_["dst"], fields_["dport"], fields_["flags"],
            fields_["length"], fields_["label"])
        if (type(proto) is int and type(src) is int and type(sport) is int and type(dst) is int
                and type(dport) is int and type(flags_) is int and type(length) is int and type(label) is int):
            wrapped_["proto"], wrapped_["src"], wrapped_["sport"], wrapped_["dst"] = (
                proto & 0xFF, src & 0xFFFFFFFF, sport & 0xFFFF, dst & 0xFFFFFFFF)
            wrapped_["dport"], wrapped_["flags"], wrapped_["length"], wrapped_["label"] = (
                dport & 0xFFFF, flags_ & 0xFF, length & 0xFFFF, label & 0xFFFF)
            return new
        for f, mask in _FIELD_MASKS:
            wrapped_[f] = check_int_field(f, fields_[f]) & mask
        return new

    def __str__(self) -> str:
        text = f"{PROTO_NAMES.get(self.proto, self.proto)} {ip(self.src)}:{self.sport} > {ip(self.dst)}:{self.dport}"
        if self.proto == TCP and isinstance(self.flags, int):
            text += " [" + "".join(c for b, c in enumerate(TCP_FLAGS) if self.flags >> b & 1) + "]"
        for extra in ("length", "label"):
            value = getattr(self, extra)
            if isinstance(value, int) and value:
                text += f" {extra}={value}"
        return text + (" (inbound)" if self.inbound is True else "")


def check_bool_field(value) -> None:
    if not isinstance(value, bool):
        raise ModelError(f"the `inbound` field holds a bool (True: arrived from the outside), not {value!r}; "
                         f"write a comparison or bool(...), e.g. inbound=(x == 2)")


def check_int_field(name: str, value):
    if not isinstance(value, int):
        raise ModelError(f"packet field `{name}` holds an integer, not {value!r}")
    return value


PACKET_FIELDS = tuple(f.name for f in fields(Packet))


def _packet_init(self, proto=TCP, src=0, sport=0, dst=0, dport=0, flags=0, inbound=False, length=0, label=0):
    """The dataclass's __init__ (same parameters, defaults and attributes), without its nine
    object.__setattr__ calls (the runtime's generic path makes a Packet per frame)."""
    d = self.__dict__
    d["proto"] = proto
    d["src"] = src
    d["sport"] = sport
    d["dst"] = dst
    d["dport"] = dport
    d["flags"] = flags
    d["inbound"] = inbound
    d["length"] = length
    d["label"] = label


assert PACKET_FIELDS == ("proto", "src", "sport", "dst", "dport", "flags", "inbound", "length", "label")
assert tuple(f.default for f in fields(Packet)) == _packet_init.__defaults__
_packet_init.__qualname__, _packet_init.__module__ = "Packet.__init__", Packet.__module__
Packet.__init__ = _packet_init
PACKET_WIDTHS = {"proto": 8, "src": 32, "sport": 16, "dst": 32, "dport": 16, "flags": 8,
                 "length": 16, "label": 16}  # inbound: bool
_FIELD_SET = frozenset(PACKET_FIELDS)
_FIELD_MASKS = tuple((f, (1 << w) - 1) for f, w in PACKET_WIDTHS.items())
assert _FIELD_MASKS == (("proto", 0xFF), ("src", 0xFFFFFFFF), ("sport", 0xFFFF), ("dst", 0xFFFFFFFF),
                        ("dport", 0xFFFF), ("flags", 0xFF), ("length", 0xFFFF), ("label", 0xFFFF))  # Packet.wrapped


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
        return Domain(((v, True) for v in self.values()), self.kind, pool=(self.base, self.size))


class Domain:
    """A finite set of candidates, each with an availability condition (True for concrete
    domains; a term when symbolic). The context turns it into a choice.

    A domain drawn from a Pool also says so: `pool` = (base, size), and for `Pool.free(used)` the
    storage `used` whose keys are taken. Its `items` are then built only when asked for, so that a
    concrete chooser can draw from a 64k-port pool in O(1) (runtime/rng.py) instead of listing it."""

    def __init__(self, items: Iterable[tuple[Any, Any]], kind: Bits, pool: tuple[int, int] | None = None,
                 used: "MapStorage | None" = None):
        self._items, self.kind, self.pool, self.used = items, kind, pool, used

    @property
    def items(self) -> list:
        if not isinstance(self._items, list):
            self._items = list(self._items)
        return self._items

    def concrete_values(self) -> list:
        return [value for value, available in self.items if available is True]

    def exhausted(self) -> bool:
        """Every value of a concrete pool domain is taken (O(1): the storage counts its keys in the pool)."""
        if self.pool is None:
            return not self.concrete_values()
        if self.used is None:
            return self.pool[1] == 0
        return self.used.count_in(*self.pool) >= self.pool[1]


class MapStorage:
    """Storage interface of a declared Map or Set, implemented by each interpreter:
    get(key) -> value or None, m[key] = value, del m[key], key in m, add(key), discard(key),
    absent_from(values, kind) -> Domain of the values that are not keys; concrete storages also
    count_in(base, size) -> how many keys lie in [base, base+size)."""


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


class ParamError(ModelError, ValueError):
    """A model parameter was given a name or a value that is not valid (one line, naming the fix)."""


def parse_seconds(text) -> "Fraction":
    """A duration in seconds: a number, optionally suffixed `s`, `ms` or `us` ("1.5", "500ms")."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(s|ms|us)?\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration: give seconds, e.g. 6, 1.5, 500ms or 250us")
    return Fraction(m.group(1)) / {None: 1, "s": 1, "ms": 1000, "us": 1_000_000}[m.group(2)]


class Param:
    """A declared parameter of an NF: a size or constant with a proof-sized default, set per run
    (`Nf.configure({"name": "value"})`, `--param nf.name=value`). In a handler `self.name` reads
    a plain int. Kinds: "int" (non-negative, optional `low`/`high` bounds), "time" (given in
    seconds, `ms`/`us` suffixes accepted; stored in the NF's clock ticks, `ticks_per_second`) and
    "ipv4" (given as text, stored as the address's int)."""

    KINDS = ("int", "time", "ipv4")

    def __init__(self, default, doc: str = "", kind: str = "int", low: int = 0, high: int | None = None):
        if kind not in self.KINDS:
            raise ModelError(f"parameter kind {kind!r} is not one of {', '.join(self.KINDS)}")
        self.default, self.doc, self.kind, self.low, self.high = default, doc, kind, low, high
        self.name = "?"

    def __set_name__(self, owner, name):
        self.name = name

    def valid(self) -> str:
        """What a valid value looks like (for error messages)."""
        if self.kind == "ipv4":
            return "an IPv4 address such as 192.0.2.1"
        bounds = f"from {self.low}" + (f" to {self.high}" if self.high is not None else "")
        if self.kind == "time":
            return f"a duration {bounds} seconds, e.g. 6, 1.5, 500ms or 250us"
        return f"an integer {bounds}"

    def stored(self, value, nf_cls) -> int:
        """The int a handler reads for `value` given in the parameter's units; ParamError if invalid."""
        where = f"{nf_cls.name}.{self.name}"
        try:
            if self.kind == "ipv4":
                return addr(value) if isinstance(value, str) else int(ipaddress.IPv4Address(value))
            if self.kind == "time":
                bound_value = parse_seconds(value)  # bounds of a time are in seconds
                ticks = bound_value * nf_cls.ticks_per_second
                if ticks.denominator != 1:
                    raise ValueError(f"{value!r} is not a whole number of the NF's clock ticks "
                                     f"({nf_cls.ticks_per_second} per second)")
                number = int(ticks)
            else:
                if isinstance(value, bool) or not (isinstance(value, int) or re.fullmatch(r"\s*[0-9]+\s*", str(value))):
                    raise ValueError(f"{value!r} is not an integer")
                number = bound_value = int(value)
        except (ValueError, TypeError, ipaddress.AddressValueError) as e:
            raise ParamError(f"{where}={value}: {e}; valid: {self.valid()}") from None
        if bound_value < self.low or (self.high is not None and bound_value > self.high):
            raise ParamError(f"{where}={value} is out of range; valid: {self.valid()}")
        return number

    def describe(self, nf_cls) -> str:
        shown = dict(nf_cls._param_given).get(self.name, self.default)
        unit = "s" if self.kind == "time" and re.fullmatch(r"[0-9.]+", str(shown)) else ""
        return f"{nf_cls.name}.{self.name}={shown}{unit}" + (f" ({self.doc})" if self.doc else "")


def flow_hash(flow, buckets: int):
    """A deterministic hash of a 5-tuple into 0..buckets-1, written in the model vocabulary (xor,
    shifts, `&`, `*` and `%` by constants) so that both interpreters compute it identically: the
    fields are folded into 32 bits, mixed by a multiplicative (Knuth) step, and the high half is
    folded down before the modulo."""
    if not isinstance(buckets, int) or buckets < 1:
        raise ModelError(f"flow_hash needs a positive constant number of buckets, got {buckets!r}")
    proto, src, sport, dst, dport = flow
    h = (src ^ (dst * 0x9E37) ^ (sport << 16) ^ dport ^ (proto << 8)) & 0xFFFFFFFF
    h = (h * 0x9E3779B1) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFF) % buckets


class NF:
    """Base class of NF models. Subclasses declare state (class attributes of type Map, Set or
    Counter), bounded domains (Pool) and gates, and implement `handle(pkt, ctx)`. An instance is a view of one
    state storage (`state`: declaration name -> storage), so the same handler runs on any
    interpreter's storage."""

    name = "nf"
    gates: tuple[str, ...] = ("out",)
    outside: tuple[str, ...] = ("out",)  # gates facing the outside (WAN side); inside: the LAN side;
    inside: tuple[str, ...] = ()         # any other gate (e.g. an alert) is a chain egress of its own.
    # (Undeclared: the gates named wan/out/outside face outside, lan/in/inside inside.)
    ticks_per_second = 1                 # the resolution of the NF's clock (what now() counts)
    partition: str | None = None         # how the state is keyed, so trace replay may check flows apart
                                         # (verify/replay_partition.py): "flow" (per connection), "source"
                                         # (per source address), "stateless"; None: not partitionable
    _params: tuple = ()                  # (name, Param) of every declared parameter, over the hierarchy
    _param_given: tuple = ()             # (name, value as given: default or configured)

    def __init_subclass__(cls, **kwargs):
        """Declared parameters become plain class attributes holding their stored int; a plain
        value assigned in a subclass body to an inherited parameter name is validated the same way."""
        super().__init_subclass__(**kwargs)
        params, given = dict(cls._params), dict(cls._param_given)
        for name, value in list(vars(cls).items()):
            if isinstance(value, Param):
                params[name], given[name] = value, value.default
            elif name in params:
                given[name] = value
        cls._params, cls._param_given = tuple(params.items()), tuple(given.items())
        for name, param in params.items():
            setattr(cls, name, param.stored(given[name], cls))
        for side, conventional in (("outside", ("wan", "out", "outside")), ("inside", ("lan", "in", "inside"))):
            if not any(side in vars(k) for k in cls.__mro__ if k is not NF):  # undeclared: by the gates' names
                setattr(cls, side, tuple(g for g in cls.gates if g in conventional))
            elif any(g not in cls.gates for g in getattr(cls, side)):
                raise ModelError(f"{cls.__name__}.{side} = {getattr(cls, side)} names a gate that is not in "
                                 f"gates = {cls.gates}")
        check = getattr(cls, "check_params", None)
        if check is not None:
            check()

    @classmethod
    def params(cls) -> dict:
        """name -> Param of every declared parameter."""
        return dict(cls._params)

    @classmethod
    def param_values(cls) -> dict:
        """name -> the int a handler reads."""
        return {name: getattr(cls, name) for name, _ in cls._params}

    @classmethod
    def configure(cls, values: dict) -> "type[NF]":
        """A subclass with parameters set (values in the parameters' units: ints, seconds such as
        "500ms", addresses as text); usable wherever the class is. Unknown names and bad values
        raise ParamError."""
        params = dict(cls._params)
        for name in values:
            if name not in params:
                valid = "; ".join(p.describe(cls) for p in params.values()) or "none"
                raise ParamError(f"{cls.name} has no parameter {name!r}; valid (with defaults): {valid}")
        if not values:
            return cls
        base, earlier = vars(cls).get("_configured_from", (cls, ()))  # only a configured class itself, not its subclasses
        merged = {**dict(earlier), **values}
        return type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                           "_configured_from": (base, tuple(merged.items())), **values})

    def __init__(self, state: dict):
        if type(self) not in _VALIDATED:
            validate(type(self))
        object.__setattr__(self, "state", state)

    def __setattr__(self, name, value):
        """Only declared state persists between packets (and is what strategies protect): an
        assignment to any other attribute is state the strategies would silently lose."""
        if isinstance(getattr(type(self), name, None), Counter):
            return object.__setattr__(self, name, value)
        raise located(ModelError(f"`self.{name} = ...` keeps state in an undeclared attribute; declare it as a "
                                 f"Map, Set or Counter class attribute (e.g. {name} = Counter()), or use a local "
                                 f"variable"))

    @classmethod
    def declarations(cls) -> dict[str, State]:
        out = {}
        for klass in reversed(cls.__mro__):
            out.update({k: v for k, v in vars(klass).items() if isinstance(v, State)})
        return out

    def handle(self, pkt: Packet, ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


_VALIDATED: set = set()


def validate(nf_cls) -> None:
    """The checks an NF class passes before its first packet (a ModelError at the offending line).
    Done once per class; a worker does it while it waits, not on the packet path."""
    if nf_cls not in _VALIDATED:
        check_no_hidden_state(nf_cls)
        check_no_introspection(nf_cls)
        _VALIDATED.add(nf_cls)


_IMMUTABLE = (int, float, str, bytes, type(None), range, type, staticmethod, classmethod, property)


def _constant(value) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_constant(v) for v in value)
    return (isinstance(value, _IMMUTABLE) or callable(value) or type(value).__module__ == __name__
            or isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                                  ipaddress.IPv6Network)))


def _attribute_line(klass, name: str) -> str:
    try:
        lines, first = inspect.getsourcelines(klass)
        for k, line in enumerate(lines):
            if re.match(rf"\s*{re.escape(name)}\s*[:=]", line):
                return f"{inspect.getsourcefile(klass)}:{first + k}"
    except (OSError, TypeError):
        pass
    code = next((f.__code__ for f in vars(klass).values() if hasattr(f, "__code__")), None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else klass.__module__


def check_no_hidden_state(nf_cls) -> None:
    """A class attribute that can change (a list, a dict, an object) is state no strategy
    protects and no proof sees: a ModelError, as is assigning an undeclared attribute."""
    for klass in nf_cls.__mro__:
        if klass is NF or klass is object:
            continue
        for name, value in vars(klass).items():
            if name.startswith("__") or isinstance(value, State) or _constant(value):
                continue
            error = ModelError(f"class attribute `{name}` ({type(value).__name__}) can change between packets: "
                               f"undeclared state; declare it as a Map, Set or Counter, or make it a constant "
                               f"(int, str, tuple)")
            error.location = _attribute_line(klass, name)
            error.args = (f"{error.location}: {error.args[0]}",)
            raise error


INTROSPECTION = ("isinstance", "type", "id", "hasattr", "getattr", "callable", "dir", "vars")  # builtins whose
# answer on a value differs between the interpreters (a term has attributes an int has not)
_LIBRARY_DIRS = tuple({sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")})  # not read
_OWN_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
                  for d in ("verify", "runtime"))  # nor the checkers' wrappers around a model (e.g. replay's frames)


def model_functions(nf_cls, skip=frozenset(), with_checkers: bool = False):
    """The code objects of what a model runs: its NF's methods (not NF's, nor a chain's wrappers), the
    functions nested in them and the module-level functions they name, transitively; never the
    interpreters', the libraries' (nor, unless with_checkers, the checkers' and runtime's: their wrappers
    around a model, e.g. replay's frames). Codes in `skip` are not read."""
    todo = [(f.__code__, f.__globals__) for klass in nf_cls.__mro__
            if klass not in (NF, object) and not klass.__module__.endswith("models.chain")
            for v in vars(klass).values() for f in [getattr(v, "__func__", v)] if inspect.isfunction(f)]
    seen: set = set()
    while todo:
        code, space = todo.pop()
        if code in seen or code in skip or code.co_filename in INTERPRETER_FILES \
                or code.co_filename.startswith(_LIBRARY_DIRS if with_checkers else _LIBRARY_DIRS + _OWN_DIRS):
            continue
        seen.add(code)
        yield code
        todo += [(c, space) for c in code.co_consts if hasattr(c, "co_code")]
        todo += [(f.__code__, f.__globals__) for f in map(space.get, code.co_names) if inspect.isfunction(f)]


def check_no_introspection(nf_cls) -> None:
    """A handler that asks a value's type, identity or attributes (`isinstance(x, int)`, `type(x)`,
    `id(x)`, `hasattr(x, "path")`, `x is True`, ...) gets another answer from each interpreter: the
    concrete one passes ints and bools, the symbolic one terms.
    A ModelError at the call's line. Read: the code of `model_functions` whose source is readable
    (arguments `self`, `pkt` and `ctx` are allowed)."""
    read, nested = [], set()
    for code in model_functions(nf_cls, skip=_NO_INTROSPECTION):
        read.append(code)
        nested.update(c for c in code.co_consts if hasattr(c, "co_code"))
        if code in nested:
            continue   # read with the function around it (yielded before it)
        try:
            lines, first = inspect.getsourcelines(code)
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(textwrap.dedent("".join(lines)))):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops) and any(
                    isinstance(x, ast.Constant) and type(x.value) is bool for x in [node.left, *node.comparators]):
                _introspection_error(code, first + node.lineno - 1,
                                     "`is True` / `is False` on a value: the symbolic and compiled interpreters hold "
                                     "a term where the concrete one holds a bool, so the answers differ; write "
                                     "`if x:`, `if not x:` or `x == True`")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in INTROSPECTION \
                    and node.args and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "pkt", "ctx")):
                _introspection_error(code, first + node.lineno - 1,
                                     f"`{node.func.id}()` of a value: the symbolic interpreter holds a term where "
                                     f"the concrete one holds an int, so the answers differ; compare the value "
                                     f"itself (e.g. `x is None`, `x == 0`)")
    _NO_INTROSPECTION.update(read)  # with every function they call: a configured subclass is not read again


def _introspection_error(code, line: int, text: str):
    error = ModelError(text)
    error.location = f"{code.co_filename}:{line}"
    error.args = (f"{error.location}: {text}",)
    raise error


_NO_INTROSPECTION: set = set()  # code objects read and found clean


def select(values, index):
    """values[index] for a constant tuple or list and an integer index, on both interpreters (a
    symbolic index cannot index a Python sequence: Python needs a concrete int). An index
    outside 0..len-1 is a ModelError."""
    if hasattr(index, "select_from"):
        return index.select_from(tuple(values))
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(values):
        raise ModelError(f"select(): index {index!r} outside 0..{len(values) - 1}")
    return values[index]
