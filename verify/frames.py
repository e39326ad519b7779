"""The trace checker's own view of frames as model packets (the runtime contract, runtime/README.md
sections 1 to 3, re-implemented here from the written rule: verify/ never imports
runtime/, because the checker judges the runtime).

`view(parsed, wirelen, inbound)` says what the chain does with a frame at its ingress:
- `Drop(reason)`: the runtime drops it before any NF (`malformed: <kind>` for an IPv4 frame the
  parser flagged, `ipv4 fragment` for a non-first fragment);
- `OUTSIDE`: not IPv4 (IPv6, ARP, non-IP, unreadable): no model sees it, every instance passes it
  unchanged to its first gate facing away from the side it came from (`outside_route`);
- a `Packet`: the header fields the models act on (ICMP queries by identifier, ICMP errors as the
  reverse of the packet they quote, `length` = min(wire length, 0xFFFF), `label` 0).

`writable(parsed)` is what a model may change in the frame (addresses always; ports, identifiers
and flags where the frame has them; never the protocol or the length): an output that changes
anything else is not released, `refusal` names the field and the chain drops it as "<instance>:
cannot write <field> into the frame" (the runtime contract, section 2); the state change stands.

Outputs are compared by `observable(pkt)`: the fields a frame carries (`inbound` is the side, not
a field), so a model's output and the frame the runtime wrote for it compare equal exactly when
the frame shows what the model emitted; the label, which travels beside the frame, is compared
too when the trace records it (its run header says `labels: true`).

`frame_of(pkt)` builds an Ethernet/IPv4 frame whose view is a given packet (tests, benchmarks and
the agreement check with the verifier's simulated runs use it to turn packets into traces)."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..models.api import ICMP, TCP, UDP, Packet
from ..traces import parse_frame

ICMP_REQUESTS, ICMP_REPLIES, ICMP_ERRORS = (8, 13), (0, 14), (3, 4, 5, 11, 12)
DEFAULT_INSIDE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
OBSERVABLE_FIELDS = ("proto", "src", "sport", "dst", "dport", "flags", "length")


@dataclass(frozen=True, slots=True)
class Drop:
    """A frame the runtime drops at the chain ingress, with its reason (exact text)."""

    reason: str


class _Outside:
    """The marker of a frame outside the model (passed on unchanged by every instance)."""

    def __repr__(self) -> str:
        return "OUTSIDE"


OUTSIDE = _Outside()


def _u32(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _quoted_ports(q) -> tuple[int, int] | None:
    """(sport, dport) of a quoted IPv4 packet by the input rules, None if they are not known."""
    if q.proto in (TCP, UDP):
        return (q.sport, q.dport) if q.sport is not None and q.dport is not None else None
    if q.proto == ICMP and q.icmp_id is not None:
        if q.icmp_type in ICMP_REQUESTS:
            return q.icmp_id, 0
        if q.icmp_type in ICMP_REPLIES:
            return 0, q.icmp_id
    return None


def view(parsed, wirelen: int, inbound: bool):
    """What the chain sees of a parsed frame: a Packet, OUTSIDE, or Drop (see the module doc)."""
    if parsed.ip_version != 4:
        return OUTSIDE
    if parsed.malformed is not None:
        return Drop(f"malformed: {parsed.malformed}")
    if parsed.frag_offset > 0:
        return Drop("ipv4 fragment")
    return Packet(*_fields(parsed), inbound=inbound, length=min(wirelen, 0xFFFF))


def _fields(p) -> tuple[int, int, int, int, int, int]:
    """(proto, src, sport, dst, dport, flags) of a parsed IPv4 packet."""
    proto, src, dst = p.proto, _u32(p.src), _u32(p.dst)
    if proto == TCP:
        return proto, src, p.sport, dst, p.dport, p.tcp_flags & 0xFF
    if proto == UDP:
        return proto, src, p.sport, dst, p.dport, 0
    if proto == ICMP and p.icmp_type is not None:
        t = p.icmp_type
        if t in ICMP_REQUESTS:
            return proto, src, p.icmp_id, dst, 0, 0
        if t in ICMP_REPLIES:
            return proto, src, 0, dst, p.icmp_id, 0
        q = p.quoted
        if t in ICMP_ERRORS and q is not None and q.ip_version == 4:
            ports = _quoted_ports(q)
            if ports is not None:  # the reverse of the quoted packet
                return q.proto, _u32(q.dst), ports[1], _u32(q.src), ports[0], 0
    return proto, src, 0, dst, 0, 0


TCP_WRITES = frozenset(("src", "dst", "sport", "dport", "flags"))
PORT_WRITES = frozenset(("src", "dst", "sport", "dport"))
SPORT_WRITES = frozenset(("src", "dst", "sport"))
DPORT_WRITES = frozenset(("src", "dst", "dport"))
ADDRESS_WRITES = frozenset(("src", "dst"))
REFUSABLE = ("proto", "sport", "dport", "flags", "length")


def writable(parsed) -> frozenset:
    """The fields of an in-model frame's view that an output may change and the frame still carry."""
    proto = parsed.proto
    if proto == TCP:
        return TCP_WRITES
    if proto == UDP:
        return PORT_WRITES
    if proto != ICMP or parsed.icmp_type is None:
        return ADDRESS_WRITES
    t = parsed.icmp_type
    if t in ICMP_REQUESTS:       # the identifier is the view's sport
        return SPORT_WRITES
    if t in ICMP_REPLIES:        # ... and a reply's its dport
        return DPORT_WRITES
    q = parsed.quoted
    if t in ICMP_ERRORS and q is not None and q.ip_version == 4 and _quoted_ports(q) is not None:
        if q.proto in (TCP, UDP):
            return PORT_WRITES
        # the reverse of a quoted request shows its identifier as dport, of a quoted reply as sport
        return DPORT_WRITES if q.icmp_type in ICMP_REQUESTS else SPORT_WRITES
    return ADDRESS_WRITES


def refusal(writes: frozenset, old: Packet, new: Packet) -> str | None:
    """The first field (proto, sport, dport, flags, length) that `new` changes from `old` and a
    frame that can write `writes` cannot carry; None when the frame carries every change."""
    for f in REFUSABLE:
        if f not in writes and getattr(old, f) != getattr(new, f):
            return f
    return None


def framed_chain(nf, writes: frozenset):
    """The chain NF (Chain.as_nf) whose instances release only what a frame that can write `writes`
    carries (the runtime contract, section 2: the rest is dropped, the state change stands)."""

    class Framed(nf):
        def released(self, instance, pkt, emitted, ctx):
            kept = []
            for gate, out in emitted:
                field = refusal(writes, pkt, out)
                if field is None:
                    kept.append((gate, out))
                else:
                    ctx.drop(f"{instance}: cannot write {field} into the frame")
            return kept
    return Framed


def frame_view(linktype: int, data: bytes, wirelen: int, inbound: bool):
    return view(parse_frame(linktype, data, wirelen), wirelen, inbound)


def observable(pkt: Packet, labels: bool = False) -> tuple:
    """The fields of a packet a frame shows (what outputs are compared by); with `labels` (a trace
    that records each output's label beside its frame) the label too."""
    if labels:
        return (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.flags, pkt.length, pkt.label)
    return (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.flags, pkt.length)


def observable_text(key: tuple) -> str:
    """An observable key field by field (raw frames by their length and flow)."""
    if key and key[0] == "raw":
        return f"frame outside the model ({len(key[1])} bytes)"
    return str(Packet(*key[:6], length=key[6], label=key[7] if len(key) > 7 else 0))


# -- sides ------------------------------------------------------------------------------------------
class Sides:
    """Classification of a frame's side by its source address (runtime.md section 3): inbound iff
    an IPv4/IPv6 source is in none of the `inside` networks; frames without a readable IP source
    count as from the inside. An ICMP error is classified by its outer source."""

    def __init__(self, inside=DEFAULT_INSIDE):
        try:
            nets = [ipaddress.ip_network(n, strict=False) for n in inside]
        except ValueError as e:
            raise ValueError(f"inside network: {e}; give CIDRs such as 10.0.0.0/8") from None
        self.v4 = [(int(n.network_address), int(n.netmask)) for n in nets if n.version == 4]
        self.v6 = [(int(n.network_address), int(n.netmask)) for n in nets if n.version == 6]
        self.texts = tuple(str(n) for n in nets)

    def inbound(self, parsed) -> bool:
        if parsed.ip_version == 0 or parsed.src is None:
            return False
        return not self.inside_address(parsed.ip_version, parsed.src)

    def inside_address(self, version: int, address: bytes | None) -> bool:
        if not version or address is None:
            return False
        a = int.from_bytes(address, "big")
        return any(a & mask == net for net, mask in (self.v4 if version == 4 else self.v6))


# -- frames outside the model -----------------------------------------------------------------------
def outside_route(chain, side: str) -> tuple[str | None, str | None, tuple[str, ...]]:
    """Where a frame outside the model entering from `side` goes: (egress or None, the instance
    that releases it onto the egress or drops it, the instances it crosses). Each instance passes
    it to its first gate facing away from the side it arrived on; with no such gate it drops it
    (`"<instance>: outside the model"`)."""
    entry = chain.ingresses.get(side)
    if entry is None:
        return None, None, ()
    hops, instance, from_outside, path = chain._routes(), entry, side == "outside", []
    for _ in range(2 * len(chain.members) + 1):
        path.append(instance)
        member = chain.members[instance]
        gates = member.inside if from_outside else member.outside
        if not gates:
            return None, instance, tuple(path)
        hop = hops[(instance, gates[0])]
        if hop.egress is not None:
            return hop.egress, instance, tuple(path)
        instance, from_outside = hop.target, hop.inbound
    return None, instance, tuple(path)


# -- building frames ----------------------------------------------------------------------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


MACS = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")


def frame_of(pkt: Packet, payload: bytes = b"", ttl: int = 64, ip_id: int = 0) -> bytes:
    """An Ethernet/IPv4 frame with valid checksums whose view (`view`) has the packet's proto,
    addresses, ports and flags. TCP and UDP carry their ports; ICMP is an echo request
    (identifier = sport, dport 0) or an echo reply (identifier = dport, sport 0); another protocol
    carries no ports. ValueError for a packet no frame shows (e.g. ICMP with both ports set)."""
    src, dst = struct.pack("!I", pkt.src), struct.pack("!I", pkt.dst)
    if pkt.proto == TCP:
        header = struct.pack("!HHIIBBHHH", pkt.sport, pkt.dport, 0, 0, 5 << 4, pkt.flags & 0xFF, 65535, 0, 0)
        l4 = header + payload
        pseudo = src + dst + struct.pack("!BBH", 0, TCP, len(l4))
        l4 = l4[:16] + struct.pack("!H", _checksum(pseudo + l4)) + l4[18:]
    elif pkt.proto == UDP:
        if pkt.flags:
            raise ValueError(f"{pkt}: a UDP frame has no flags")
        l4 = struct.pack("!HHHH", pkt.sport, pkt.dport, 8 + len(payload), 0) + payload
        pseudo = src + dst + struct.pack("!BBH", 0, UDP, len(l4))
        l4 = l4[:6] + struct.pack("!H", _checksum(pseudo + l4) or 0xFFFF) + l4[8:]
    elif pkt.proto == ICMP:
        if pkt.sport and pkt.dport or pkt.flags:
            raise ValueError(f"{pkt}: an ICMP echo frame carries one identifier and no flags")
        kind, ident = (0, pkt.dport) if pkt.dport else (8, pkt.sport)
        l4 = struct.pack("!BBHHH", kind, 0, 0, ident, 0) + payload
        l4 = l4[:2] + struct.pack("!H", _checksum(l4)) + l4[4:]
    else:
        if pkt.sport or pkt.dport or pkt.flags:
            raise ValueError(f"{pkt}: protocol {pkt.proto} carries no ports or flags")
        l4 = payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ip_id, 0, ttl, pkt.proto, 0, src, dst)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return MACS + b"\x08\x00" + header + l4
