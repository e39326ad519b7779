"""Frames as model packets and back: the reference of sections 1-3 of the runtime contract
(/work/notes/runtime.md; runtime/fast.pyx is its C twin).

- `view(parsed, inbound, wirelen)`: what a model sees of a parsed frame: a `Packet`, a runtime
  drop reason (a str: `malformed: <kind>`, `ipv4 fragment`) or `OUTSIDE` (None: not IPv4, no
  model sees it; every instance passes it on unchanged).
- `write_back(buf, parsed, old, new, instance, base=0, caplen=None)`: rewrites, in place in `buf`
  at `base`, the fields in which an NF's output `new` differs from the packet it handled `old`, with
  incremental checksum updates (RFC 1624: HC' = ~(~HC + ~m + m'), one update per checksum over
  every 16-bit word that changed), never recomputed from scratch. A change the frame cannot carry
  is a `FrameError` (nothing is written); the pipelines drop such an output with
  `FrameError.drop_reason` ("<instance>: cannot write <field> into the frame").
- `inbound(parsed, side, inside)` / `Sides`: the side a frame arrived from (batch side 0 inside,
  1 outside, 2 by source address against the `inside` networks; `parse_inside` reads
  `--inside CIDR,...`).

Internally a packet is a tuple in `PACKET_FIELDS` order (proto, src, sport, dst, dport, flags,
inbound, length, label): the pure pipeline works on those; `view`/`write_back` accept Packets.
"""
from __future__ import annotations

import ipaddress
import struct

from nfproof.models.api import PACKET_FIELDS, ModelError, Packet
from nfproof.traces.headers import ICMP4_ERRORS

TCP, UDP, ICMP = 6, 17, 1
ICMP_REQUESTS, ICMP_REPLIES = (8, 13), (0, 14)  # echo / timestamp: identifier in sport / in dport
DEFAULT_INSIDE_TEXT = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
DEFAULT_INSIDE = tuple(ipaddress.ip_network(n) for n in DEFAULT_INSIDE_TEXT.split(","))
FLOWS_MAX = 1 << 24  # Pipeline(flows=...): the connections the tables can be sized for (2^25 slots, 1 GB, each)
assert PACKET_FIELDS == ("proto", "src", "sport", "dst", "dport", "flags", "inbound", "length", "label")
PROTO, SRC, SPORT, DST, DPORT, FLAGS, INBOUND, LENGTH, LABEL = range(9)


class FrameError(ModelError):
    """An NF output that the frame it was emitted for cannot carry (a changed protocol, a port of
    a protocol without ports, ...): one line naming the instance, the field and why. `field` is
    the PACKET_FIELDS name refused. The pipelines do not release such an output: they drop it,
    "<instance>: cannot write <field> into the frame" (`drop_reason`), and the state change stands."""

    location = ""  # about the output, not a model line: interpreters add no location

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field

    def drop_reason(self, instance: str) -> str:
        return f"{instance}: cannot write {self.field} into the frame"


class NotBundled(Exception):
    """The fast and pure pipelines run the bundled NFs only (hand-written twins of models/*.py);
    another NF runs on the generic pipeline (runtime/generic.py)."""

    def __init__(self, instance: str, nf_name):
        if isinstance(nf_name, type):
            nf_name = getattr(nf_name, "name", nf_name.__name__)
        super().__init__(f"instance {instance!r}: NF {nf_name!r} is not a bundled NF (or overrides its handler), "
                         f"which the fast and pure pipelines implement; run it on the generic pipeline "
                         f"(runtime/generic.py)")
        self.instance, self.nf_name = instance, nf_name


OUTSIDE = None  # `view` of a frame outside the model (not IPv4): passed on unchanged, never shown to a model


# -- 1. the view ------------------------------------------------------------------------------------
def _query_ports(icmp_type: int, ident: int) -> tuple[int, int]:
    """(sport, dport) of an ICMP query: the identifier in sport (request) or dport (reply)."""
    return (ident, 0) if icmp_type in ICMP_REQUESTS else (0, ident)


def _quote_ports(q) -> tuple[int, int] | None:
    """("sport", "dport") of the packet quoted in an ICMP error, None if the quote does not show
    them (not IPv4, no TCP/UDP ports, not an ICMP query)."""
    if q is None or q.ip_version != 4:
        return None
    if q.proto == TCP or q.proto == UDP:
        return None if q.sport is None else (q.sport, q.dport)
    if q.proto == ICMP and q.icmp_id is not None and (q.icmp_type in ICMP_REQUESTS or q.icmp_type in ICMP_REPLIES):
        return _query_ports(q.icmp_type, q.icmp_id)
    return None


def view_fields(parsed, inbound: bool, wirelen: int):
    """`view` as a field tuple (PACKET_FIELDS order), a drop reason or OUTSIDE."""
    if parsed.ip_version != 4:
        return OUTSIDE
    if parsed.malformed is not None:
        return "malformed: " + parsed.malformed
    if parsed.frag_offset:
        return "ipv4 fragment"
    proto, length = parsed.proto, wirelen if wirelen < 0xFFFF else 0xFFFF
    src, dst = int.from_bytes(parsed.src, "big"), int.from_bytes(parsed.dst, "big")
    if proto == TCP:
        return (TCP, src, parsed.sport, dst, parsed.dport, parsed.tcp_flags & 0xFF, inbound, length, 0)
    if proto == UDP:
        return (UDP, src, parsed.sport, dst, parsed.dport, 0, inbound, length, 0)
    if proto == ICMP:
        t = parsed.icmp_type
        if t in ICMP_REQUESTS or t in ICMP_REPLIES:
            sport, dport = _query_ports(t, parsed.icmp_id)
            return (ICMP, src, sport, dst, dport, 0, inbound, length, 0)
        if t in ICMP4_ERRORS:
            q = parsed.quoted
            ports = _quote_ports(q)
            if ports is not None:  # the reverse of the quoted packet
                return (q.proto, int.from_bytes(q.dst, "big"), ports[1], int.from_bytes(q.src, "big"), ports[0], 0,
                        inbound, length, 0)
    return (proto, src, 0, dst, 0, 0, inbound, length, 0)


def view(parsed, inbound: bool, wirelen: int):
    """The model packet of a parsed frame (`wirelen`: its length on the wire), or a runtime drop
    reason (str), or OUTSIDE (None)."""
    fields = view_fields(parsed, bool(inbound), wirelen)
    return Packet(*fields) if type(fields) is tuple else fields


# -- 2. write-back -----------------------------------------------------------------------------------
def _words(value: int) -> tuple[int, int]:
    return value >> 16, value & 0xFFFF


def _u16(buf, at: int) -> int:
    return (buf[at] << 8) | buf[at + 1]


def _put16(buf, at: int, value: int) -> None:
    buf[at], buf[at + 1] = value >> 8, value & 0xFF


def _put32(buf, at: int, value: int) -> None:
    buf[at:at + 4] = value.to_bytes(4, "big")


def _adjust(buf, at: int, old: list, new: list, udp: bool = False) -> tuple[int, int]:
    """RFC 1624 update of the checksum at buf[at:at+2] for 16-bit words `old` replaced by `new`;
    returns (old, new) checksum. `udp`: a checksum of 0 (none) stays 0, a computed 0 is 0xFFFF."""
    hc = _u16(buf, at)
    if udp and hc == 0:
        return 0, 0
    s = ~hc & 0xFFFF
    for m in old:
        s += ~m & 0xFFFF
    for m in new:
        s += m
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    hc2 = ~s & 0xFFFF
    if udp and hc2 == 0:
        hc2 = 0xFFFF
    _put16(buf, at, hc2)
    return hc, hc2


# What a frame carries, by its layout (`layout(parsed)`): which view fields can be written.
TCP_L, UDP_L, ICMP_REQUEST, ICMP_REPLY, ICMP_OTHER, OTHER, ERROR_L4, ERROR_REQUEST, ERROR_REPLY = range(9)
CARRIES_SPORT = (TCP_L, UDP_L, ICMP_REQUEST, ERROR_L4, ERROR_REPLY)
CARRIES_DPORT = (TCP_L, UDP_L, ICMP_REPLY, ERROR_L4, ERROR_REQUEST)
_WHY = {  # layout -> why it has no port in a field (sport, dport)
    ICMP_REQUEST: (None, "an ICMP request carries its identifier in sport; its dport is always 0"),
    ICMP_REPLY: ("an ICMP reply carries its identifier in dport; its sport is always 0", None),
    ICMP_OTHER: ("an ICMP message of this type has no ports",) * 2,
    OTHER: ("a packet of this IPv4 protocol has no ports",) * 2,
    ERROR_REQUEST: ("an ICMP error quoting an ICMP request carries the quoted identifier in dport only", None),
    ERROR_REPLY: (None, "an ICMP error quoting an ICMP reply carries the quoted identifier in sport only"),
}


def layout(parsed) -> int:
    """The kind of an in-model frame, as write-back needs it."""
    proto = parsed.proto
    if proto == TCP:
        return TCP_L
    if proto == UDP:
        return UDP_L
    if proto != ICMP:
        return OTHER
    t = parsed.icmp_type
    if t in ICMP_REQUESTS:
        return ICMP_REQUEST
    if t in ICMP_REPLIES:
        return ICMP_REPLY
    if t in ICMP4_ERRORS and _quote_ports(parsed.quoted) is not None:
        q = parsed.quoted
        if q.proto == TCP or q.proto == UDP:
            return ERROR_L4
        return ERROR_REQUEST if q.icmp_type in ICMP_REQUESTS else ERROR_REPLY
    return ICMP_OTHER


def refused(kind: int, old: tuple, new: tuple) -> tuple[int, str] | None:
    """(index, why) of the first field, in PACKET_FIELDS order, that changed and a frame of this
    layout cannot carry; None when every change can be written."""
    if old[PROTO] != new[PROTO]:
        return PROTO, "the IPv4 protocol of a frame is not rewritten"
    if old[SPORT] != new[SPORT] and kind not in CARRIES_SPORT:
        return SPORT, _WHY[kind][0]
    if old[DPORT] != new[DPORT] and kind not in CARRIES_DPORT:
        return DPORT, _WHY[kind][1]
    if old[FLAGS] != new[FLAGS] and kind != TCP_L:
        return FLAGS, "only TCP carries flags"
    if old[LENGTH] != new[LENGTH]:
        return LENGTH, "the frame's length is what the wire carried"
    return None


def write_fields(buf, base: int, caplen: int, parsed, old: tuple, new: tuple, instance: str) -> None:
    """`write_back` on field tuples (PACKET_FIELDS order). Nothing is written when a change is refused."""
    if old[:6] == new[:6] and old[LENGTH] == new[LENGTH]:
        return
    kind = layout(parsed)
    refusal = refused(kind, old, new)
    if refusal is not None:
        index, why = refusal
        raise FrameError(f"{instance}: the output changes `{PACKET_FIELDS[index]}` from {old[index]} to "
                         f"{new[index]}, but {why}; an NF may rewrite only what its frame carries (addresses, "
                         f"ports, TCP flags, ICMP identifiers, label)", field=PACKET_FIELDS[index])
    if kind >= ERROR_L4:
        return _write_icmp_error(buf, base, caplen, parsed, old, new, kind)
    if kind == TCP_L or kind == UDP_L:
        return _write_l4(buf, base, parsed, old, new, kind == TCP_L)
    l3 = base + parsed.l3_offset
    ip_old, ip_new = [], []  # outer IPv4 header words (its checksum)
    for index, at in ((SRC, l3 + 12), (DST, l3 + 16)):
        if old[index] != new[index]:
            ip_old += _words(_u16(buf, at) << 16 | _u16(buf, at + 2))
            _put32(buf, at, new[index])
            ip_new += _words(new[index])
    if kind == TCP_L or kind == UDP_L:
        l4 = base + parsed.l4_offset
        l4_old, l4_new = list(ip_old), list(ip_new)  # the pseudo header holds the addresses
        for index, at in ((SPORT, l4), (DPORT, l4 + 2)):
            if old[index] != new[index]:
                l4_old.append(_u16(buf, at))
                _put16(buf, at, new[index])
                l4_new.append(new[index])
        if kind == TCP_L:
            if old[FLAGS] != new[FLAGS]:
                l4_old.append(_u16(buf, l4 + 12))
                buf[l4 + 13] = new[FLAGS]  # the NS bit (in byte 12) stays
                l4_new.append(_u16(buf, l4 + 12))
            if l4_old:
                _adjust(buf, l4 + 16, l4_old, l4_new)
        elif l4_old:
            _adjust(buf, l4 + 6, l4_old, l4_new, udp=True)
    elif kind == ICMP_REQUEST or kind == ICMP_REPLY:
        ident = SPORT if kind == ICMP_REQUEST else DPORT
        if old[ident] != new[ident]:
            l4 = base + parsed.l4_offset
            was = _u16(buf, l4 + 4)
            _put16(buf, l4 + 4, new[ident])
            _adjust(buf, l4 + 2, [was], [new[ident]])
    if ip_old:
        _adjust(buf, l3 + 10, ip_old, ip_new)


def _write_l4(buf, base: int, parsed, old: tuple, new: tuple, tcp: bool) -> None:
    """write_fields of a TCP or UDP frame, the same bytes by the same arithmetic: an RFC 1624 update
    sums ~m over the old words and m' over the new ones, here kept as their count and the difference
    of their sums (sum of ~m over n words = n * 0xFFFF - sum of m), so that no word list is built."""
    l3, l4 = base + parsed.l3_offset, base + parsed.l4_offset
    ip_words = ip_delta = 0  # outer IPv4 header words replaced (its checksum), and sum(new) - sum(old)
    value = new[SRC]
    if old[SRC] != value:
        at = l3 + 12
        was = _u32_from(buf, at)[0]
        buf[at:at + 4] = value.to_bytes(4, "big")
        ip_words = 2
        ip_delta = (value >> 16) + (value & 0xFFFF) - (was >> 16) - (was & 0xFFFF)
    value = new[DST]
    if old[DST] != value:
        at = l3 + 16
        was = _u32_from(buf, at)[0]
        buf[at:at + 4] = value.to_bytes(4, "big")
        ip_words += 2
        ip_delta += (value >> 16) + (value & 0xFFFF) - (was >> 16) - (was & 0xFFFF)
    words, delta = ip_words, ip_delta  # the pseudo header holds the addresses
    value = new[SPORT]
    if old[SPORT] != value:
        was = (buf[l4] << 8) | buf[l4 + 1]
        buf[l4], buf[l4 + 1] = value >> 8, value & 0xFF
        words += 1
        delta += value - was
    value = new[DPORT]
    if old[DPORT] != value:
        at = l4 + 2
        was = (buf[at] << 8) | buf[at + 1]
        buf[at], buf[at + 1] = value >> 8, value & 0xFF
        words += 1
        delta += value - was
    if tcp:
        if old[FLAGS] != new[FLAGS]:
            was = _u16(buf, l4 + 12)
            buf[l4 + 13] = new[FLAGS]  # the NS bit (in byte 12) stays
            words += 1
            delta += _u16(buf, l4 + 12) - was
        if words:
            _adjust_sum(buf, l4 + 16, words, delta)
    elif words:
        _adjust_sum(buf, l4 + 6, words, delta, udp=True)
    if ip_words:
        _adjust_sum(buf, l3 + 10, ip_words, ip_delta)


_u32_from = struct.Struct("!I").unpack_from


def _adjust_sum(buf, at: int, words: int, delta: int, udp: bool = False) -> None:
    """_adjust for `words` old words replaced by new ones whose sum is `delta` more: the same sum."""
    hc = (buf[at] << 8) | buf[at + 1]
    if udp and hc == 0:
        return
    s = (~hc & 0xFFFF) + words * 0xFFFF + delta
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    hc2 = ~s & 0xFFFF
    if udp and hc2 == 0:
        hc2 = 0xFFFF
    buf[at], buf[at + 1] = hc2 >> 8, hc2 & 0xFF


def _write_icmp_error(buf, base, caplen, parsed, old, new, kind) -> None:
    """An ICMP error seen as the reverse of the packet it quotes: `src` is the quoted dst, `dst`
    the quoted src, `sport` the quoted "dport", `dport` the quoted "sport"; the outer addresses
    follow when they equal the old ones. Checksums: the outer IPv4 header (outer addresses), the
    quoted IPv4 header (quoted addresses), the quoted transport checksum when its bytes are quoted
    (TCP/UDP: addresses and ports; a quoted ICMP query: its identifier), and the ICMP checksum for
    every word of the message that changed."""
    q = parsed.quoted
    l3, l4, ql3, ql4 = base + parsed.l3_offset, base + parsed.l4_offset, base + q.l3_offset, base + q.l4_offset
    ip_old, ip_new, addr_old, addr_new, port_old, port_new = [], [], [], [], [], []
    for index, outer_at, quoted_at in ((SRC, l3 + 12, ql3 + 16), (DST, l3 + 16, ql3 + 12)):
        if old[index] != new[index]:
            if (_u16(buf, outer_at) << 16 | _u16(buf, outer_at + 2)) == old[index]:
                ip_old += _words(old[index])
                _put32(buf, outer_at, new[index])
                ip_new += _words(new[index])
            addr_old += _words(_u16(buf, quoted_at) << 16 | _u16(buf, quoted_at + 2))
            _put32(buf, quoted_at, new[index])
            addr_new += _words(new[index])
    if kind == ERROR_L4:
        moves = ((SPORT, ql4 + 2), (DPORT, ql4))  # the error's sport is the quoted dport
    else:  # a quoted ICMP query: its identifier is the error's dport (request) or sport (reply)
        moves = ((DPORT if kind == ERROR_REQUEST else SPORT, ql4 + 4),)
    for index, at in moves:
        if old[index] != new[index]:
            port_old.append(_u16(buf, at))
            _put16(buf, at, new[index])
            port_new.append(new[index])
    icmp_old, icmp_new = addr_old + port_old, addr_new + port_new
    if addr_old:
        was, now = _adjust(buf, ql3 + 10, addr_old, addr_new)
        icmp_old.append(was)
        icmp_new.append(now)
    if kind == ERROR_L4:
        at, needed = (ql4 + 16, 18) if q.proto == TCP else (ql4 + 6, 8)
        words_old, words_new = addr_old + port_old, addr_new + port_new  # the pseudo header: quoted addresses
    else:
        at, needed, words_old, words_new = ql4 + 2, 8, port_old, port_new
    if words_old and ql4 + needed <= base + min(caplen, _ip_end(buf, base, caplen, parsed)):
        was, now = _adjust(buf, at, words_old, words_new, udp=q.proto == UDP)
        icmp_old.append(was)
        icmp_new.append(now)
    if icmp_old:
        _adjust(buf, l4 + 2, icmp_old, icmp_new)
    if ip_old:
        _adjust(buf, l3 + 10, ip_old, ip_new)


def reversed_error(parsed) -> bool:
    """Is the frame an ICMP error that the view shows as the reverse of its quoted packet?"""
    return layout(parsed) >= ERROR_L4


def _ip_end(buf, base: int, caplen: int, parsed) -> int:
    """Offset (from the frame start) of the end of the outer IPv4 packet, as the parser bounds it."""
    total = _u16(buf, base + parsed.l3_offset + 2)
    return parsed.l3_offset + total if total else caplen


def write_back(buf, parsed, old: Packet, new: Packet, instance: str, base: int = 0, caplen: int | None = None) -> None:
    """Rewrites the frame at buf[base:base+caplen] (default: all of buf; parsed as `parsed`, seen
    as `old`) to carry the output `new` (wrapped). FrameError for a change the frame cannot carry."""
    write_fields(buf, base, len(buf) - base if caplen is None else caplen, parsed, tuple(getattr(old, f) for f in PACKET_FIELDS),
                 tuple(getattr(new, f) for f in PACKET_FIELDS), instance)


# -- 3. sides -------------------------------------------------------------------------------------------
def parse_inside(text: str) -> tuple:
    """The networks of `--inside CIDR,...` (IPv4 or IPv6); ValueError naming the bad one."""
    networks = []
    for item in (s.strip() for s in str(text).split(",")):
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as e:
            hint = ""
            try:
                hint = f" (did you mean {ipaddress.ip_network(item, strict=False)}?)"
            except ValueError:
                pass
            raise ValueError(f"--inside {text}: {item!r} is not a network: {e}{hint}; write CIDR networks separated "
                             f"by commas, e.g. --inside {DEFAULT_INSIDE_TEXT}") from None
    return tuple(networks)


def inbound(parsed, side: int, inside=DEFAULT_INSIDE) -> bool:
    """Did the frame arrive from the outside? `side` as a batch gives it: 0 from the inside, 1 from
    the outside, 2 by its source address (`inside`: networks, texts or a Sides)."""
    if side == 0:
        return False
    if side == 1:
        return True
    return _sides(inside).inbound(parsed)


_SIDES: dict = {}


def _sides(inside) -> "Sides":
    if isinstance(inside, Sides):
        return inside
    key = tuple(str(n) for n in inside)
    sides = _SIDES.get(key)
    if sides is None:
        sides = _SIDES[key] = Sides(inside)
    return sides


class Sides:
    """Which side a frame arrived from, by its (outer) source address: inbound (from the outside)
    iff the address is in none of the `inside` networks; a frame without a readable IPv4 or IPv6
    header (ARP, non-IP) counts as from the inside."""

    def __init__(self, inside=DEFAULT_INSIDE):
        nets = [n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else ipaddress.ip_network(n)
                for n in inside]
        self.networks = tuple(nets)
        self.v4 = tuple((int(n.network_address), int(n.netmask)) for n in nets if n.version == 4)
        self.v6 = tuple((int(n.network_address), int(n.netmask)) for n in nets if n.version == 6)

    def inbound(self, parsed) -> bool:
        version = parsed.ip_version
        if version == 4:
            nets = self.v4
        elif version == 6:
            nets = self.v6
        else:
            return False
        a = int.from_bytes(parsed.src, "big")
        for net, mask in nets:
            if a & mask == net:
                return False
        return True
