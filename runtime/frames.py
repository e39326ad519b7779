"""Frames as model packets and back: the reference of sections 1-3 of the runtime contract
(/work/notes/runtime.md; runtime/fast.pyx is its C twin).

- `view(parsed, inbound, wirelen)`: what a model sees of a parsed frame: a `Packet`, a runtime
  drop reason (a str: `malformed: <kind>`, `ipv4 fragment`) or `OUTSIDE` (None: not IPv4, no
  model sees it; every instance passes it on unchanged).
- `write_back(buf, parsed, old, new, instance, base=0, caplen=None)`: rewrites, in place in `buf`
  at `base`, the fields in which an NF's output `new` differs from the packet it handled `old`, with
  incremental checksum updates (RFC 1624: HC' = ~(~HC + ~m + m'), one update per checksum over
  every 16-bit word that changed), never recomputed from scratch. A change the frame cannot carry
  is a `FrameError`.
- `inbound(parsed, side, inside)` / `Sides`: the side a frame arrived from (batch side 0 inside,
  1 outside, 2 by source address against the `inside` networks; `parse_inside` reads
  `--inside CIDR,...`).

Internally a packet is a tuple in `PACKET_FIELDS` order (proto, src, sport, dst, dport, flags,
inbound, length, label): the pure pipeline works on those; `view`/`write_back` accept Packets.
"""
from __future__ import annotations

import ipaddress

from nfproof.models.api import PACKET_FIELDS, ModelError, Packet
from nfproof.traces.headers import ICMP4_ERRORS

TCP, UDP, ICMP = 6, 17, 1
ICMP_REQUESTS, ICMP_REPLIES = (8, 13), (0, 14)  # echo / timestamp: identifier in sport / in dport
DEFAULT_INSIDE_TEXT = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
DEFAULT_INSIDE = tuple(ipaddress.ip_network(n) for n in DEFAULT_INSIDE_TEXT.split(","))
assert PACKET_FIELDS == ("proto", "src", "sport", "dst", "dport", "flags", "inbound", "length", "label")
PROTO, SRC, SPORT, DST, DPORT, FLAGS, INBOUND, LENGTH, LABEL = range(9)


class FrameError(ModelError):
    """An NF output that the frame it was emitted for cannot carry (a changed protocol, a port of
    a protocol without ports, ...): one line naming the instance, the field and why."""

    location = ""  # about the output, not a model line: interpreters add no location


class NotBundled(Exception):
    """The fast and pure pipelines run the bundled NFs only (hand-written twins of models/*.py);
    another NF runs on the generic pipeline (runtime/generic.py)."""

    def __init__(self, instance: str, nf_name: str):
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


def _refuse(instance: str, name: str, old, new, why: str):
    raise FrameError(f"{instance}: the output changes `{name}` from {old} to {new}, but {why}; an NF may rewrite "
                     f"only what its frame carries (addresses, ports, TCP flags, ICMP identifiers, label)")


def _no_change(instance, old, new, index, why):
    if old[index] != new[index]:
        _refuse(instance, PACKET_FIELDS[index], old[index], new[index], why)


def write_fields(buf, base: int, caplen: int, parsed, old: tuple, new: tuple, instance: str) -> None:
    """`write_back` on field tuples (PACKET_FIELDS order)."""
    if old[:6] == new[:6] and old[LENGTH] == new[LENGTH]:
        return
    _no_change(instance, old, new, PROTO, "the IPv4 protocol of a frame is not rewritten")
    _no_change(instance, old, new, LENGTH, "the frame's length is what the wire carried")
    proto, l3 = old[PROTO], base + parsed.l3_offset
    if reversed_error(parsed):
        return _write_icmp_error(buf, base, caplen, parsed, old, new, instance)
    ip_old, ip_new = [], []  # outer IPv4 header words (its checksum)
    for index, at in ((SRC, l3 + 12), (DST, l3 + 16)):
        if old[index] != new[index]:
            ip_old += _words(_u16(buf, at) << 16 | _u16(buf, at + 2))
            _put32(buf, at, new[index])
            ip_new += _words(new[index])
    if proto == TCP or proto == UDP:
        l4 = base + parsed.l4_offset
        l4_old, l4_new = list(ip_old), list(ip_new)  # the pseudo header holds the addresses
        for index, at in ((SPORT, l4), (DPORT, l4 + 2)):
            if old[index] != new[index]:
                l4_old.append(_u16(buf, at))
                _put16(buf, at, new[index])
                l4_new.append(new[index])
        if proto == TCP:
            if old[FLAGS] != new[FLAGS]:
                l4_old.append(_u16(buf, l4 + 12))
                buf[l4 + 13] = new[FLAGS]
                l4_new.append(_u16(buf, l4 + 12))
            if l4_old:
                _adjust(buf, l4 + 16, l4_old, l4_new)
        else:
            _no_change(instance, old, new, FLAGS, "only TCP carries flags")
            if l4_old:
                _adjust(buf, l4 + 6, l4_old, l4_new, udp=True)
    elif proto == ICMP and (parsed.icmp_type in ICMP_REQUESTS or parsed.icmp_type in ICMP_REPLIES):
        _no_change(instance, old, new, FLAGS, "only TCP carries flags")
        request = parsed.icmp_type in ICMP_REQUESTS
        ident, fixed = (SPORT, DPORT) if request else (DPORT, SPORT)
        _no_change(instance, old, new, fixed, f"an ICMP {'request' if request else 'reply'} carries its identifier "
                                              f"in {PACKET_FIELDS[ident]}; its {PACKET_FIELDS[fixed]} is always 0")
        if old[ident] != new[ident]:
            l4 = base + parsed.l4_offset
            was = _u16(buf, l4 + 4)
            _put16(buf, l4 + 4, new[ident])
            _adjust(buf, l4 + 2, [was], [new[ident]])
    else:
        what = "an ICMP message of this type" if proto == ICMP else f"an IPv4 protocol {proto} packet"
        _no_change(instance, old, new, SPORT, f"{what} has no ports")
        _no_change(instance, old, new, DPORT, f"{what} has no ports")
        _no_change(instance, old, new, FLAGS, "only TCP carries flags")
    if ip_old:
        _adjust(buf, l3 + 10, ip_old, ip_new)


def _write_icmp_error(buf, base, caplen, parsed, old, new, instance) -> None:
    """An ICMP error seen as the reverse of the packet it quotes: `src` is the quoted dst, `dst`
    the quoted src, `sport` the quoted "dport", `dport` the quoted "sport"; the outer addresses
    follow when they equal the old ones. Checksums: the outer IPv4 header (outer addresses), the
    quoted IPv4 header (quoted addresses), the quoted transport checksum when its bytes are quoted
    (TCP/UDP: addresses and ports; a quoted ICMP query: its identifier), and the ICMP checksum for
    every word of the message that changed."""
    q = parsed.quoted
    l3, l4, ql3 = base + parsed.l3_offset, base + parsed.l4_offset, base + q.l3_offset
    ql4 = base + q.l4_offset
    _no_change(instance, old, new, FLAGS, "an ICMP error carries no flags")
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
    if q.proto == TCP or q.proto == UDP:
        moves = ((SPORT, ql4 + 2), (DPORT, ql4))  # the error's sport is the quoted dport
    else:  # a quoted ICMP query: its identifier is the error's dport (request) or sport (reply)
        request = q.icmp_type in ICMP_REQUESTS
        ident, fixed = (DPORT, SPORT) if request else (SPORT, DPORT)
        _no_change(instance, old, new, fixed, f"an ICMP error quoting an ICMP {'request' if request else 'reply'} "
                                              f"carries the quoted identifier in {PACKET_FIELDS[ident]} only")
        moves = ((ident, ql4 + 4),)
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
    if q.proto == TCP or q.proto == UDP:
        at, needed, words_old, words_new = ((ql4 + 16, 18) if q.proto == TCP else (ql4 + 6, 8)) + \
            (addr_old + port_old, addr_new + port_new)  # the pseudo header holds the quoted addresses
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
    return parsed.proto == ICMP and parsed.icmp_type in ICMP4_ERRORS and _quote_ports(parsed.quoted) is not None


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
