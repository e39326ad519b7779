"""The nfproof trace format, version 1 (specification: traces/README.md).

A trace is a pcapng file: one interface per chain port (`ingress`, `egress:NAME`, ...), each packet
an EPB annotated with a custom option (PEN 32473) naming the instance that handled it, its direction,
input sequence number and output index; the run header and the control events are custom blocks
(0x00000BAD, PEN 32473) holding JSON."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Iterator

from .errors import FormatError
from .pcapng import PcapngReader, PcapngWriter
from .record import CustomBlock, Interface, Record

VERSION = 1
PEN = 32473  # RFC 5612 documentation PEN
BLOCK_MAGIC = b"NFPT"
OPT_CODE = 2989  # custom option, binary, copyable
EVENT_KINDS = ("failure", "failover", "sync", "choice")  # documented kinds; others are accepted
DIRECTIONS = ("in", "out")
_ANN = struct.Struct("<BBHQI")  # version, flags, label, seq, out_index; then the instance name
_F_OUT, _F_SEQ, _F_OUTIDX, _F_LABEL = 1, 2, 4, 8
_U32_NONE = 0xFFFFFFFF


@dataclass(slots=True)
class TraceHeader:
    """The run: chain and strategy descriptions plus free-form fields (JSON values)."""

    chain: str
    strategy: str
    fields: dict = field(default_factory=dict)
    version: int = VERSION


@dataclass(slots=True)
class TracePacket:
    """A packet seen at `interface` ('ingress', 'egress:wan', ...) by `instance`, going `direction`.

    `seq` is the chain-ingress input sequence number it descends from; `out_index` the index of this
    output among the outputs of that input (None for inputs); `label` the packet's label metadata
    (models/api.py `Packet.label`, 16 bits, carried beside the frame), None when not recorded."""

    interface: str
    time_ns: int
    data: bytes
    instance: str = ""
    direction: str = "in"
    seq: int | None = None
    out_index: int | None = None
    wirelen: int | None = None
    linktype: int = 1
    comment: str | None = None
    label: int | None = None

    def __post_init__(self):
        if self.wirelen is None:
            self.wirelen = len(self.data)


@dataclass(slots=True)
class TraceEvent:
    """A control event: `kind` is 'failure', 'failover', 'sync', 'choice' or another name."""

    kind: str
    time_ns: int
    instance: str = ""
    fields: dict = field(default_factory=dict)


def encode_block(obj: dict) -> bytes:
    """Custom-block payload: magic, version, JSON length, JSON (UTF-8)."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return BLOCK_MAGIC + struct.pack("<BxxxI", VERSION, len(body)) + body


def is_trace_block(block: CustomBlock) -> bool:
    """Is a custom block one of nfproof's? PEN 32473 is the documentation PEN (RFC 5612), which
    other tools use too: only a payload starting with the "NFPT" magic is ours."""
    return block.pen == PEN and block.data[:4] == BLOCK_MAGIC


def decode_block(data: bytes) -> dict:
    """The JSON object of a custom-block payload; ValueError if it is not one of ours."""
    if len(data) < 12 or data[:4] != BLOCK_MAGIC:
        raise ValueError("not an nfproof trace block")
    version, n = struct.unpack_from("<BxxxI", data, 4)
    if version > VERSION:
        raise ValueError(f"trace block version {version} is newer than this reader ({VERSION})")
    if n > len(data) - 12:
        raise ValueError(f"trace block claims {n} bytes of JSON, {len(data) - 12} present")
    try:
        obj = json.loads(data[12:12 + n].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"trace block is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise ValueError("trace block is not a JSON object with a 'kind'")
    return obj


def event_from_json(obj: dict) -> TraceEvent | TraceHeader:
    kind, fields_ = obj["kind"], obj.get("fields", {})
    if not isinstance(fields_, dict):
        raise ValueError("trace block 'fields' is not an object")
    if kind == "run":
        chain, strategy, version = obj.get("chain"), obj.get("strategy"), obj.get("version")
        if not (isinstance(chain, str) and isinstance(strategy, str) and type(version) is int):
            raise ValueError("run header needs string 'chain', 'strategy' and integer 'version'")
        return TraceHeader(chain, strategy, fields_, version)
    t, instance = obj.get("time_ns"), obj.get("instance", "")
    if type(t) is not int or not isinstance(instance, str):
        raise ValueError(f"{kind} event needs an integer 'time_ns' and a string 'instance'")
    return TraceEvent(kind, t, instance, fields_)


def encode_annotation(p: TracePacket) -> bytes:
    flags = (_F_OUT if p.direction == "out" else 0) | (_F_SEQ if p.seq is not None else 0) \
        | (_F_OUTIDX if p.out_index is not None else 0) | (_F_LABEL if p.label is not None else 0)
    if p.out_index == _U32_NONE:
        raise ValueError(f"out_index {_U32_NONE} is reserved")
    try:
        return _ANN.pack(VERSION, flags, p.label or 0, p.seq or 0, _U32_NONE if p.out_index is None else p.out_index) \
            + p.instance.encode()
    except struct.error as e:
        raise ValueError(f"seq, out_index or label out of range: {e}") from None


def decode_annotation(data: bytes) -> tuple[str, str, int | None, int | None, int | None]:
    """(instance, direction, seq, out_index, label) of an EPB annotation; ValueError if malformed."""
    if len(data) < _ANN.size:
        raise ValueError(f"packet annotation of {len(data)} bytes is shorter than {_ANN.size}")
    version, flags, label, seq, out_index = _ANN.unpack_from(data)
    if version > VERSION:
        raise ValueError(f"packet annotation version {version} is newer than this reader ({VERSION})")
    try:
        instance = data[_ANN.size:].decode()
    except UnicodeDecodeError:
        raise ValueError("packet annotation instance name is not UTF-8") from None
    return (instance, "out" if flags & _F_OUT else "in", seq if flags & _F_SEQ else None,
            out_index if flags & _F_OUTIDX else None, label if flags & _F_LABEL else None)


def annotation_of(record: Record) -> bytes | None:
    for code, pen, data in record.custom:
        if code == OPT_CODE and pen == PEN:
            return data
    return None


class TraceWriter:
    """Writes a trace; interfaces are declared on first use (or with `interface`)."""

    def __init__(self, path_or_file, header: TraceHeader, *, big_endian: bool = False):
        if header.version != VERSION:
            raise ValueError(f"this writer writes trace version {VERSION}, not {header.version}")
        self._w = PcapngWriter(path_or_file, big_endian=big_endian, userappl=f"nfproof trace v{VERSION}")
        self._ifaces: dict[str, tuple[int, int]] = {}
        self._w.write_custom(PEN, encode_block({"kind": "run", "version": header.version, "chain": header.chain,
                                                "strategy": header.strategy, "fields": header.fields}))

    def interface(self, name: str, linktype: int = 1, snaplen: int = 0) -> None:
        if not name or name in self._ifaces:
            raise ValueError(f"interface name {name!r} is empty or already declared")
        self._ifaces[name] = (self._w.add_interface(linktype, snaplen, name=name, tsresol=9), linktype)

    def packet(self, p: TracePacket) -> None:
        if p.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'in' or 'out', not {p.direction!r}")
        annotation = encode_annotation(p)
        if p.interface not in self._ifaces:
            self.interface(p.interface, p.linktype)
        iface, linktype = self._ifaces[p.interface]
        if linktype != p.linktype:
            raise ValueError(f"interface {p.interface!r} has link type {linktype}, packet has {p.linktype}")
        self._w.write_packet(iface, p.time_ns, p.data, p.wirelen, comments=() if p.comment is None else (p.comment,),
                             custom=((OPT_CODE, PEN, annotation),))

    def event(self, e: TraceEvent) -> None:
        if not e.kind or e.kind == "run":
            raise ValueError(f"event kind {e.kind!r} is reserved or empty")
        self._w.write_custom(PEN, encode_block({"kind": e.kind, "time_ns": e.time_ns, "instance": e.instance,
                                                "fields": e.fields}))

    def write(self, item: TracePacket | TraceEvent) -> None:
        (self.packet if isinstance(item, TracePacket) else self.event)(item)

    def close(self) -> None:
        self._w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Trace:
    """An open trace: `header`, `interfaces` (by name, grows while reading); iterating yields
    TracePackets and TraceEvents in file order, then closes the file. Custom blocks of other
    tools (another PEN, or PEN 32473 without the "NFPT" magic) are skipped and counted in
    `foreign_blocks`."""

    def __init__(self, path_or_file):
        self._r = PcapngReader(path_or_file)
        self.path = self._r.src.path
        self.interfaces: dict[str, Interface] = {}
        self.foreign_blocks = 0
        self._items = self._r.items()
        try:
            first = next(self._items, None)
            header = self._decode(first) if isinstance(first, CustomBlock) else None
        except BaseException:
            self.close()
            raise
        if not isinstance(header, TraceHeader):
            self.close()
            other = " (its first custom block is another tool's)" if isinstance(first, CustomBlock) else ""
            raise FormatError(self.path, 0, f"not an nfproof trace: no run header after the section header{other}")
        if header.version > VERSION:
            self.close()
            raise FormatError(self.path, 0, f"trace version {header.version} is newer than this reader ({VERSION})")
        self.header = header

    def _decode(self, block: CustomBlock):
        if not is_trace_block(block):
            return None
        try:
            return event_from_json(decode_block(block.data))
        except ValueError as e:
            raise FormatError(self.path, block.offset, str(e)) from None

    def __iter__(self) -> Iterator[TracePacket | TraceEvent]:
        try:
            for item in self._items:
                if type(item) is Record:
                    yield self._packet(item)
                elif is_trace_block(item):
                    ev = self._decode(item)
                    if isinstance(ev, TraceHeader):
                        raise FormatError(self.path, item.offset, "a second run header")
                    yield ev
                else:
                    self.foreign_blocks += 1
        finally:
            self.close()

    def _packet(self, rec: Record) -> TracePacket:
        info = self._r.interfaces[rec.interface]
        ann = annotation_of(rec)
        try:
            if info.name is None or ann is None:
                raise ValueError("lacks an interface name or nfproof annotation")
            instance, direction, seq, out_index, label = decode_annotation(ann)
        except ValueError as e:
            raise FormatError(self.path, self._r.block_offset, f"packet {self._r.count}: {e}") from None
        self.interfaces.setdefault(info.name, info)
        return TracePacket(info.name, rec.time_ns, rec.data, instance, direction,
                           seq, out_index, rec.wirelen, rec.linktype, rec.comments[0] if rec.comments else None, label)

    def close(self) -> None:
        self._r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_trace(path_or_file) -> Trace:
    """Open a trace: reads the header now, streams packets and events on iteration."""
    return Trace(path_or_file)
