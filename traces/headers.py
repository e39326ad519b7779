"""Packet header parsing: the pure-Python reference. traces/_parse.pxi is its Cython twin (used by
the `nfproof.traces._fast` and `nfproof.runtime.fast` extensions) and must behave identically;
tests/test_fast_vs_pure.py holds them to that.

Structure: `parse_frame(linktype, data, wirelen)` walks one frame layer by layer — link header
(`_Parser.link`), VLAN/MPLS tags (`_Parser.ethertype`), IPv4/IPv6 with options and extension
headers (`_Parser.ip4`, `_Parser.ip6`), then the transport header (`_Parser.l4`), which for an
ICMP/ICMPv6 error parses the quoted IP packet with the same IP code — and returns a flat
`Parsed` tuple. It never raises on packet contents: the first problem found is reported in
`Parsed.malformed` and parsing stops there (or, for an IP length beyond the frame, continues on
what is present). `FlowKeyer` gives later fragments the flow key of their first fragment.
`scan_pcap_flow_keys` is the pure twin of the C hot loop `_fast.scan_pcap_flow_keys`.

Link types: 0 NULL and 108 LOOP (family in either byte order: AF_INET 2, AF_INET6 24/28/30),
1 Ethernet (802.1Q/802.1ad/0x9100 tag stacks; MPLS label stacks with IPv4/IPv6 below, or an
RFC 4448 Ethernet pseudowire with control word, whose inner Ethernet is parsed the same way),
12/14/101 raw IP (version from the first nibble), 113 Linux SLL, 228 raw IPv4, 229 raw IPv6,
276 Linux SLL2. Anything else parses as protocol 'other'.

`Parsed.protocol`: 'tcp', 'udp', 'icmp' (over IPv4), 'icmpv6' (over IPv6), 'ipv4-other',
'ipv6-other' (any other transport, an unreadable IPv6 extension chain, ESP, no-next-header),
'arp', or 'other' (non-IP, unknown link type, or an IP header too broken to read).

`Parsed.flow_key` is None without a readable IP header, else the directional tuple
`(vlans, ip_version, proto, src, sport, dst, dport)`: vlans is the tuple of VLAN IDs, outer first
(VLAN 0 included; tags of a pseudowire's inner Ethernet follow; MPLS labels are not part of the
key); src/dst are the 4- or 16-byte addresses; sport/dport are the TCP/UDP ports, the identifier (both slots) for ICMP echo/timestamp and ICMPv6
echo, and None otherwise — in particular for non-first fragments, which `FlowKeyer` maps back to
the key of their first fragment; a fragment seen before its first fragment keeps this port-less key.

`Parsed.malformed` kinds: 'short-frame' (link header or tags cut by the frame's wire length),
'snaplen-cut' (a header needed is beyond the captured bytes but within the wire length),
'vlan-stack' / 'mpls-stack' (more than 8 tags/labels), 'bad-ip-version', 'short-ipv4' /
'short-ipv6' (frame ends inside the IP header), 'bad-ihl' (IHL < 5), 'bad-total-length'
(IPv4 total length < IHL), 'short-ip' (IP length field beyond the end of the frame; parsing
continues), 'bad-ipv6-ext' (extension header beyond the payload), 'short-tcp', 'bad-tcp-offset'
(data offset < 5), 'short-udp' (header beyond the payload, or UDP length < 8), 'bad-udp-length'
(UDP length beyond the payload of an unfragmented packet), 'short-icmp', 'short-icmp-quote' (an
ICMP error's quoted IP header or its first 8 transport bytes are missing), 'bad-icmp-quote'
(quoted header of the wrong IP version or with IHL < 5). A zero IPv4 total length or IPv6 payload
length (TSO captures, jumbograms) means "up to the end of the frame".

For a NAT, every field that needs rewriting has a frame offset: `l3_offset` (IPv4 src/dst at +12/+16
and checksum at +10; IPv6 src/dst at +8/+24), `l4_offset` (ports at +0/+2, ICMP id at +4, TCP
checksum at +16, UDP at +6, ICMP at +2), and the same pair in `quoted` for the IP packet quoted
inside ICMP types 3, 4, 5, 11, 12 and ICMPv6 types 1-4 (quoted is itself a `Parsed`, with the
outer frame's link fields, its own flow key, and malformed/quoted always None; the quoted packet's
own length fields are not checked since quotes are cut by design).
"""
from __future__ import annotations

import mmap

from .errors import FormatError
from typing import NamedTuple

ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MPLS_TYPES = (0x8847, 0x8848)
MAX_TAGS = 8
IPV6_EXT = (0, 43, 44, 51, 60)  # hop-by-hop, routing, fragment, AH, destination options
ICMP4_ID_TYPES, ICMP4_ERRORS = (0, 8, 13, 14), (3, 4, 5, 11, 12)
ICMP6_ID_TYPES, ICMP6_ERRORS = (128, 129), (1, 2, 3, 4)


class Parsed(NamedTuple):
    protocol: str
    flow_key: tuple | None
    malformed: str | None
    vlans: tuple = ()           # VLAN IDs, outer first
    mpls: tuple = ()            # MPLS labels, outer first
    ethertype: int = 0          # after tags; from the cooked/loopback header; 0 when unknown
    ip_version: int = 0         # 0: no readable IP header
    l3_offset: int | None = None
    src: bytes | None = None
    dst: bytes | None = None
    proto: int | None = None    # IPv4 protocol / last IPv6 next-header reached
    ip_id: int | None = None    # IPv4 identification / IPv6 fragment-header identification
    frag_offset: int = 0        # in bytes
    more_fragments: bool = False
    l4_offset: int | None = None
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None  # 9 bits: NS..FIN
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    quoted: Parsed | None = None  # the IP packet quoted in an ICMP/ICMPv6 error

    @property
    def is_fragment(self) -> bool:
        return self.frag_offset > 0 or self.more_fragments


class _Hdr:
    """IP-and-above fields of one (outer or quoted) packet while it is being parsed."""
    __slots__ = ("version", "l3", "src", "dst", "proto", "ip_id", "frag_offset", "more_fragments",
                 "l4", "sport", "dport", "tcp_flags", "icmp_type", "icmp_code", "icmp_id")

    def __init__(self):
        self.version, self.frag_offset, self.more_fragments = 0, 0, False
        self.l3 = self.src = self.dst = self.proto = self.ip_id = self.l4 = None
        self.sport = self.dport = self.tcp_flags = self.icmp_type = self.icmp_code = self.icmp_id = None


def _protocol(version, proto, ethertype):
    if version == 0:
        return "arp" if ethertype == ETH_ARP else "other"
    if proto == 6:
        return "tcp"
    if proto == 17:
        return "udp"
    if version == 4:
        return "icmp" if proto == 1 else "ipv4-other"
    return "icmpv6" if proto == 58 else "ipv6-other"


class _Parser:
    __slots__ = ("d", "caplen", "wirelen", "malformed", "vlans", "mpls", "ethertype", "ip", "quoted")

    def __init__(self, data, wirelen):
        self.d, self.caplen = data, len(data)
        self.wirelen = max(wirelen, self.caplen)
        self.malformed = None
        self.vlans, self.mpls, self.ethertype = [], [], 0
        self.ip, self.quoted = _Hdr(), None

    def bad(self, kind):
        if self.malformed is None:
            self.malformed = kind

    def need(self, off, n, end, kind):
        """True if bytes [off, off+n) are inside both the declared `end` and the capture."""
        if off + n <= end and off + n <= self.caplen:
            return True
        self.bad(kind if off + n > end else "snaplen-cut")
        return False

    def u16(self, off):
        return (self.d[off] << 8) | self.d[off + 1]

    def u32(self, off):
        return (self.u16(off) << 16) | self.u16(off + 2)

    def link(self, linktype):
        d, wl = self.d, self.wirelen
        if linktype == 1:
            if self.need(0, 14, wl, "short-frame"):
                self.ethertype_at(14, self.u16(12))
        elif linktype == 113:
            if self.need(0, 16, wl, "short-frame"):
                self.ethertype_at(16, self.u16(14))
        elif linktype == 276:
            if self.need(0, 20, wl, "short-frame"):
                self.ethertype_at(20, self.u16(0))
        elif linktype == 0 or linktype == 108:
            if self.need(0, 4, wl, "short-frame"):
                fam = d[0] | (d[1] << 8) | (d[2] << 16) | (d[3] << 24)
                if fam > 0xFFFF:
                    fam = self.u32(0)
                if fam == 2:
                    self.ethertype_at(4, ETH_IPV4)
                elif fam == 24 or fam == 28 or fam == 30:
                    self.ethertype_at(4, ETH_IPV6)
        elif linktype == 101 or linktype == 12 or linktype == 14:
            if self.need(0, 1, wl, "short-frame"):
                v = d[0] >> 4
                if v == 4 or v == 6:
                    self.ethertype_at(0, ETH_IPV4 if v == 4 else ETH_IPV6)
                else:
                    self.bad("bad-ip-version")
        elif linktype == 228:
            self.ethertype_at(0, ETH_IPV4)
        elif linktype == 229:
            self.ethertype_at(0, ETH_IPV6)

    def ethertype_at(self, off, et):
        while True:
            self.ethertype = et
            if et not in VLAN_TPIDS:
                break
            if len(self.vlans) == MAX_TAGS:
                return self.bad("vlan-stack")
            if not self.need(off, 4, self.wirelen, "short-frame"):
                return
            self.vlans.append(self.u16(off) & 0xFFF)
            et = self.u16(off + 2)
            off += 4
        if et in MPLS_TYPES:
            while True:
                if len(self.mpls) == MAX_TAGS:
                    return self.bad("mpls-stack")
                if not self.need(off, 4, self.wirelen, "short-frame"):
                    return
                w = self.u32(off)
                self.mpls.append(w >> 12)
                off += 4
                if w & 0x100:
                    break
            if not self.need(off, 1, self.wirelen, "short-frame"):
                return
            v = self.d[off] >> 4
            if v == 4:
                self.ip4(self.ip, off, self.wirelen, False)
            elif v == 6:
                self.ip6(self.ip, off, self.wirelen, False)
            elif v == 0 and self.need(off, 18, self.wirelen, "short-frame"):
                self.ethertype_at(off + 18, self.u16(off + 16))  # Ethernet pseudowire, control word
        elif et == ETH_IPV4:
            self.ip4(self.ip, off, self.wirelen, False)
        elif et == ETH_IPV6:
            self.ip6(self.ip, off, self.wirelen, False)

    def ip4(self, h, off, end, quoted):
        d = self.d
        if not self.need(off, 20, end, "short-icmp-quote" if quoted else "short-ipv4"):
            return
        if d[off] >> 4 != 4:
            return self.bad("bad-icmp-quote" if quoted else "bad-ip-version")
        h.version, h.l3, h.proto = 4, off, d[off + 9]
        h.src, h.dst = d[off + 12:off + 16], d[off + 16:off + 20]
        h.ip_id = self.u16(off + 4)
        fl = self.u16(off + 6)
        h.more_fragments, h.frag_offset = (fl & 0x2000) != 0, (fl & 0x1FFF) * 8
        ihl = (d[off] & 15) * 4
        if ihl < 20:
            return self.bad("bad-icmp-quote" if quoted else "bad-ihl")
        if quoted:
            pend = end
        else:
            total = self.u16(off + 2) or self.wirelen - off
            if total < ihl:
                return self.bad("bad-total-length")
            pend = off + total
            if pend > self.wirelen:
                self.bad("short-ip")
                pend = self.wirelen
        if self.need(off, ihl, pend, "short-icmp-quote" if quoted else "short-ipv4") and h.frag_offset == 0:
            self.l4(h, off + ihl, pend, quoted)

    def ip6(self, h, off, end, quoted):
        d = self.d
        if not self.need(off, 40, end, "short-icmp-quote" if quoted else "short-ipv6"):
            return
        if d[off] >> 4 != 6:
            return self.bad("bad-icmp-quote" if quoted else "bad-ip-version")
        h.version, h.l3, h.proto = 6, off, d[off + 6]
        h.src, h.dst = d[off + 8:off + 24], d[off + 24:off + 40]
        if quoted:
            pend = end
        else:
            plen = self.u16(off + 4)
            pend = off + 40 + plen if plen else self.wirelen
            if pend > self.wirelen:
                self.bad("short-ip")
                pend = self.wirelen
        ext_kind = "short-icmp-quote" if quoted else "bad-ipv6-ext"
        p, nh = off + 40, h.proto
        while nh in IPV6_EXT:
            if nh == 44:
                if not self.need(p, 8, pend, ext_kind):
                    return
                fo = self.u16(p + 2)
                h.frag_offset, h.more_fragments, h.ip_id = fo & 0xFFF8, (fo & 1) != 0, self.u32(p + 4)
                nh = d[p]
                p += 8
                if h.frag_offset:
                    h.proto = nh
                    return
            else:
                if not self.need(p, 2, pend, ext_kind):
                    return
                n = (d[p + 1] + 2) * 4 if nh == 51 else (d[p + 1] + 1) * 8
                if not self.need(p, n, pend, ext_kind):
                    return
                nh = d[p]
                p += n
            h.proto = nh
        self.l4(h, p, pend, quoted)

    def l4(self, h, off, end, quoted):
        d, proto = self.d, h.proto
        if proto == 6 or proto == 17:
            if quoted:
                if not self.need(off, 4, end, "short-icmp-quote"):
                    return
            elif not self.need(off, 20 if proto == 6 else 8, end, "short-tcp" if proto == 6 else "short-udp"):
                return
            h.l4, h.sport, h.dport = off, self.u16(off), self.u16(off + 2)
            if quoted:
                return
            if proto == 6:
                h.tcp_flags = ((d[off + 12] & 1) << 8) | d[off + 13]
                if d[off + 12] >> 4 < 5:
                    self.bad("bad-tcp-offset")
            else:
                ulen = self.u16(off + 4)
                if ulen < 8:
                    self.bad("short-udp")
                elif not h.more_fragments and off + ulen > end:
                    self.bad("bad-udp-length")
        elif (proto == 1 and h.version == 4) or (proto == 58 and h.version == 6):
            if not self.need(off, 8, end, "short-icmp-quote" if quoted else "short-icmp"):
                return
            t = d[off]
            h.l4, h.icmp_type, h.icmp_code = off, t, d[off + 1]
            if h.version == 4:
                ident, error = t in ICMP4_ID_TYPES, t in ICMP4_ERRORS
            else:
                ident, error = t in ICMP6_ID_TYPES, t in ICMP6_ERRORS
            if ident:
                h.icmp_id = h.sport = h.dport = self.u16(off + 4)
            elif error and not quoted:
                q = _Hdr()
                if h.version == 4:
                    self.ip4(q, off + 8, end, True)
                else:
                    self.ip6(q, off + 8, end, True)
                if q.version:
                    self.quoted = q

    def result(self, h, malformed, quoted):
        vlans = tuple(self.vlans)
        key = None if h.version == 0 else (vlans, h.version, h.proto, h.src, h.sport, h.dst, h.dport)
        return Parsed(_protocol(h.version, h.proto, self.ethertype), key, malformed, vlans,
                      tuple(self.mpls), self.ethertype, h.version, h.l3, h.src, h.dst, h.proto,
                      h.ip_id, h.frag_offset, h.more_fragments, h.l4, h.sport, h.dport, h.tcp_flags,
                      h.icmp_type, h.icmp_code, h.icmp_id, quoted)


def parse_frame(linktype: int, data: bytes, wirelen: int) -> Parsed:
    """Parse one captured frame (`data`, the captured bytes; `wirelen`, its length on the wire)."""
    p = _Parser(bytes(data), wirelen)
    p.link(linktype)
    quoted = None if p.quoted is None else p.result(p.quoted, None, None)
    return p.result(p.ip, p.malformed, quoted)


class FlowKeyer:
    """Flow keys that make non-first fragments follow the flow of their first fragment, matched by
    (vlans, IP version, src, dst, protocol/next header, identification). Remembers the `limit`
    most recent first fragments (None: no limit)."""

    def __init__(self, limit: int | None = 1 << 16):
        self.limit, self.first = limit, {}

    def key(self, p: Parsed):
        key = p.flow_key
        if key is None or not (p.frag_offset or p.more_fragments):
            return key
        frag = (p.vlans, p.ip_version, p.src, p.dst, p.proto, p.ip_id)
        if p.frag_offset == 0:
            self.first[frag] = key
            if self.limit is not None and len(self.first) > self.limit:
                del self.first[next(iter(self.first))]
            return key
        return self.first.get(frag, key)


def pcap_records(path):
    """(linktype, data, wirelen) of each record of a classic pcap file; FormatError naming the file and
    byte offset on a bad header or a record that runs past the end. Shared message texts with C."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise FormatError(path, 0, f"{size} bytes, too short for a pcap header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            magic = int.from_bytes(m[0:4], "little")
            if magic in (0xA1B2C3D4, 0xA1B23C4D):
                order = "little"
            elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
                order = "big"
            else:
                raise FormatError(path, 0, f"not a classic pcap file (magic {magic:#010x})")
            major, minor = int.from_bytes(m[4:6], order), int.from_bytes(m[6:8], order)
            if major != 2:
                raise FormatError(path, 4, f"unsupported pcap version {major}.{minor}")
            linktype = int.from_bytes(m[20:24], order) & 0x0FFFFFFF
            off, i = 24, 0
            while off < size:
                i += 1
                if size - off < 16:
                    raise FormatError(path, off, f"record {i}: header cut short, {size - off} bytes remain")
                caplen = int.from_bytes(m[off + 8:off + 12], order)
                wirelen = int.from_bytes(m[off + 12:off + 16], order)
                if caplen > size - off - 16:
                    raise FormatError(path, off, f"record {i} claims {caplen} bytes, {size - off - 16} remain")
                yield linktype, m[off + 16:off + 16 + caplen], wirelen
                off += 16 + caplen


def scan_pcap_flow_keys(path) -> tuple[int, int, int]:
    """(packets, distinct flow keys after fragment following, malformed packets) of a classic pcap."""
    keyer, flows, packets, malformed = FlowKeyer(limit=None), set(), 0, 0
    for linktype, data, wirelen in pcap_records(path):
        p = parse_frame(linktype, data, wirelen)
        packets += 1
        malformed += p.malformed is not None
        key = keyer.key(p)
        if key is not None:
            flows.add(key)
    return packets, len(flows), malformed
