"""Header parsing (the active implementation: Cython unless NFPROOF_PUREPYTHON=1) on the real captures
in ../shared/pcaps, checked against counts taken from tshark 4.x, and on hand-built frames."""
from __future__ import annotations

import collections
import struct

import pytest
from hypothesis import given, settings, strategies as st

from nfproof.traces import IMPLEMENTATION, FlowKeyer, parse_frame, scan_pcap_flow_keys
from nfproof.traces.errors import FormatError
from nfproof.traces.reader import read_records

from captures import CAPTURE_DIR, capture


def parsed(name):
    out = []
    try:
        for r in read_records(capture(name)):
            out.append((r, parse_frame(r.linktype, r.data, r.wirelen)))
    except FormatError:
        pass
    return out


def conversations(name):
    """Bidirectional TCP and UDP conversations (as tshark -z conv,tcp / conv,udp count them)."""
    keyer, conv = FlowKeyer(), collections.defaultdict(set)
    for _, p in parsed(name):
        key = keyer.key(p)
        if p.protocol in ("tcp", "udp") and key[4] is not None:
            a, b = (key[3], key[4]), (key[5], key[6])
            conv[p.protocol].add((key[0], min(a, b), max(a, b)))
    return len(conv["tcp"]), len(conv["udp"])


# tshark -q -z conv,tcp -z conv,udp. E19: tshark also counts one UDP flow decoded from inside an
# OpenFlow payload, which is data, not a flow on the link.
TSHARK_CONVERSATIONS = {
    "E01_mixed_vlan_mpls_v6_dns_http.pcap": (7, 12), "E02_http_49flows.pcap": (49, 0),
    "E03_http_13flows_bro_org.pcap": (13, 0), "E04_ftp_30flows_bruteforce.pcap": (30, 0),
    "E05_mixed_v4v6_80flows_ftpdata.pcap": (80, 75), "E06_tls_68flows_3k.pcap": (68, 40),
    "E07_http_ipv6_4k_1000req.pcap": (1, 0), "E08_dcerpc_53flows_rst.pcap": (53, 0),
    "E09_http_41flows_dlt_null.pcap": (41, 0), "E10_dns_icmp.pcap": (0, 5),
    "E15_sll_redis_15flows.pcap": (15, 0), "E16_sll2_http.pcap": (1, 0),
    "E17_nsec_sll_tcp_handshake.pcap": (1, 0), "E18_bigendian_pptp.pcap": (1, 0),
    "E19_pcapng_openflow.pcapng": (21, 0), "E20_frag_ipv4_udp_afs.pcap": (0, 14),
    "E21_frag_ipv6_dns.pcap": (0, 2), "E22_scan_arp_syn_rst.pcap": (17, 1),
    "S01_stress_500flows_82k.pcap": (500, 0), "T01_snaplen_cut_tcp_878.pcap": (1, 0),
}

# tshark -Y arp / icmp / icmpv6 / vlan frame counts. E05: tshark's icmpv6 also counts 6 Teredo
# (IPv6 in UDP) frames, which are UDP here.
TSHARK_FRAMES = {
    ("E01_mixed_vlan_mpls_v6_dns_http.pcap", "arp"): 1, ("E01_mixed_vlan_mpls_v6_dns_http.pcap", "icmp"): 28,
    ("E05_mixed_v4v6_80flows_ftpdata.pcap", "arp"): 126, ("E05_mixed_v4v6_80flows_ftpdata.pcap", "icmpv6"): 114 - 6,
    ("E06_tls_68flows_3k.pcap", "icmpv6"): 4, ("E10_dns_icmp.pcap", "icmp"): 22, ("E11_icmp_ping_150.pcap", "icmp"): 150,
    ("E12_icmpv6_nd_ping.pcap", "icmpv6"): 49, ("E13_arp.pcap", "arp"): 6, ("E14_vlan123_arp_icmp.pcap", "arp"): 6,
    ("E14_vlan123_arp_icmp.pcap", "icmp"): 9, ("E20_frag_ipv4_udp_afs.pcap", "icmp"): 25,
    ("E22_scan_arp_syn_rst.pcap", "arp"): 503,
}


def test_implementation_is_reported():
    assert IMPLEMENTATION in ("fast", "fallback")


@pytest.mark.parametrize("name", sorted(TSHARK_CONVERSATIONS))
def test_conversations_match_tshark(name):
    assert conversations(name) == TSHARK_CONVERSATIONS[name]


@pytest.mark.parametrize("name,protocol", sorted(TSHARK_FRAMES))
def test_protocol_frame_counts_match_tshark(name, protocol):
    assert sum(p.protocol == protocol for _, p in parsed(name)) == TSHARK_FRAMES[name, protocol]


def test_real_captures_are_well_formed_except_one_known_frame():
    bad = {(name.name, i): p.malformed for name in sorted(CAPTURE_DIR.glob("[EST]*"))
           for i, (_, p) in enumerate(parsed(name.name), 1) if p.malformed}
    # tshark: "IPv4 total length exceeds packet length (100 bytes)"
    e01 = "E01_mixed_vlan_mpls_v6_dns_http.pcap"
    assert bad == ({(e01, 11): "short-ip"} if (CAPTURE_DIR / e01).exists() else {})


def test_vlan_stack_is_in_the_flow_key():
    frames = parsed("E14_vlan123_arp_icmp.pcap")
    assert all(p.vlans == (123,) for _, p in frames)
    assert all(p.flow_key[0] == (123,) for _, p in frames if p.protocol == "icmp")
    assert all(p.flow_key is None for _, p in frames if p.protocol == "arp")
    # E01: ICMP in 802.1Q VLAN 1 inside an Ethernet pseudowire inside MPLS (labels 18/19, 16)
    if not (CAPTURE_DIR / "E01_mixed_vlan_mpls_v6_dns_http.pcap").exists():
        return
    pw = [p for _, p in parsed("E01_mixed_vlan_mpls_v6_dns_http.pcap") if p.vlans]
    assert len(pw) == 10 and {p.mpls for p in pw} == {(18, 16), (19, 16)}
    assert all(p.protocol == "icmp" and p.flow_key[0] == (1,) and p.sport == p.icmp_id for p in pw)


@pytest.mark.parametrize("name,linktype", [("E09_http_41flows_dlt_null.pcap", 0), ("E15_sll_redis_15flows.pcap", 113),
                                           ("E16_sll2_http.pcap", 276), ("E17_nsec_sll_tcp_handshake.pcap", 113)])
def test_cooked_and_loopback_link_types(name, linktype):
    frames = parsed(name)
    assert frames and all(r.linktype == linktype and p.protocol == "tcp" and p.sport is not None for r, p in frames)


def test_icmpv6_errors_quote_udp_with_rewritable_offsets():
    errors = [(r, p) for r, p in parsed("E12_icmpv6_nd_ping.pcap") if p.quoted]
    assert len(errors) == 13 and {p.icmp_type for _, p in errors} == {1, 3}
    for r, p in errors:
        q = p.quoted
        assert q.protocol == "udp" and q.src == p.dst and q.flow_key[3] == q.src
        assert r.data[q.l3_offset + 8:q.l3_offset + 24] == q.src
        assert struct.unpack_from("!HH", r.data, q.l4_offset) == (q.sport, q.dport)
    assert {p.quoted.dport for _, p in errors} == set(range(33435, 33447)) | {2410}  # traceroute + one DNS reply


def test_ipv4_fragments_follow_their_first_fragment():
    keyer, frames = FlowKeyer(), parsed("E20_frag_ipv4_udp_afs.pcap")
    frags = [p for _, p in frames if p.is_fragment]
    assert len(frags) == 200  # tshark -Y "ip.flags.mf==1 || ip.frag_offset>0"
    later = [p for p in frags if p.frag_offset]
    assert later and all(p.sport is None and p.l4_offset is None for p in later)
    keys = [keyer.key(p) for _, p in frames]
    assert all(k[4] is not None for k, (_, p) in zip(keys, frames) if p.protocol == "udp")


def test_ipv6_fragments_and_an_orphan():
    keyer = FlowKeyer()
    keys = [(p, keyer.key(p)) for _, p in parsed("E21_frag_ipv6_dns.pcap")]
    frag = [(p, k) for p, k in keys if p.ip_id is not None]
    assert [(p.frag_offset, p.more_fragments) for p, _ in frag] == [(2896, False), (0, True), (1432, True), (2864, False)]
    orphan, first, *rest = frag
    assert orphan[1][4] is None  # its first fragment is not in the capture: a key without ports
    assert first[1][4] == 53 and all(k == first[1] for _, k in rest)


def test_snaplen_cut_capture_still_parses_headers():
    frames = parsed("T01_snaplen_cut_tcp_878.pcap")
    assert sum(len(r.data) < r.wirelen for r, _ in frames) == 691
    assert all(p.malformed is None and p.sport is not None for _, p in frames)


@pytest.mark.parametrize("name,expected", [
    ("E20_frag_ipv4_udp_afs.pcap", (601, 30, 0)), ("E21_frag_ipv6_dns.pcap", (8, 5, 0)),
    ("E14_vlan123_arp_icmp.pcap", (15, 2, 0)), ("E01_mixed_vlan_mpls_v6_dns_http.pcap", (179, 47, 1)),
    ("E23_empty.pcap", (0, 0, 0))])
def test_scan(name, expected):
    assert scan_pcap_flow_keys(str(capture(name))) == expected


@pytest.mark.parametrize("name,message", [
    ("C01_corrupt_record_len.pcap", "offset 3695: record 19 claims 3925868813 bytes, 125497 remain"),
    ("C02_corrupt_pcap_version.pcap", "unsupported pcap version 1.4"),
    ("E24_empty.pcapng", "not a classic pcap file")])
def test_scan_rejects_bad_files(name, message):
    with pytest.raises(ValueError, match=message):
        scan_pcap_flow_keys(str(capture(name)))


# ---- hand-built frames -----------------------------------------------------------------------------

A4, B4 = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 7])
A6, B6 = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")


def tcp(sport=1234, dport=80, flags=0x12, offset=5):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 1024, 0, 0)


def udp(sport=5353, dport=53, payload=b"abcd", length=None):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + payload


def icmp(type_, code=0, rest=b"\x00\x07\x00\x01", payload=b""):
    return bytes([type_, code, 0, 0]) + rest + payload


def ipv4(proto, payload, src=A4, dst=B4, options=b"", total=None, ihl=None, ident=7, flags_frag=0):
    ihl = (20 + len(options)) // 4 if ihl is None else ihl
    total = 20 + len(options) + len(payload) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags_frag, 64, proto, 0, src, dst) + options + payload


def ipv6(nh, payload, src=A6, dst=B6, plen=None):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload) if plen is None else plen, nh, 64, src, dst) + payload


def ext(nh, length_units=0, fill=b""):
    """A generic IPv6 extension header (hop-by-hop, routing, destination options): 8*(n+1) bytes."""
    return bytes([nh, length_units]) + fill.ljust(6 + 8 * length_units, b"\x00")


def eth(payload, ethertype=0x0800, tags=()):
    head = b"\x02" * 6 + b"\x04" * 6
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", ethertype) + payload


def parse(frame, linktype=1, wirelen=None):
    return parse_frame(linktype, frame, len(frame) if wirelen is None else wirelen)


def test_tcp_over_qinq_with_vlan_0():
    p = parse(eth(ipv4(6, tcp()), tags=((0x88A8, 0x2064), (0x8100, 0))))
    assert p.vlans == (0x064, 0) and p.ethertype == 0x0800 and p.protocol == "tcp"
    assert p.flow_key == ((0x064, 0), 4, 6, A4, 1234, B4, 80)
    assert (p.l3_offset, p.l4_offset, p.tcp_flags, p.malformed) == (22, 42, 0x12, None)
    assert parse(eth(ipv4(6, tcp()))).flow_key[0] == ()  # untagged: a different flow


def test_ipv4_options_move_the_transport_header():
    p = parse(eth(ipv4(17, udp(), options=b"\x94\x04\x00\x00")))  # router alert, IHL 6
    assert (p.l4_offset, p.sport, p.dport, p.malformed) == (14 + 24, 5353, 53, None)


def test_ipv6_extension_header_chain():
    chain = ext(43, 1) + ext(51) + bytes([60, 1, 0, 0]) + b"\x00" * 8 + ext(6)  # HBH, routing, AH (12 B), dest
    p = parse(eth(ipv6(0, chain + tcp(40000, 443)), 0x86DD))
    assert (p.protocol, p.proto, p.sport, p.dport, p.l4_offset) == ("tcp", 6, 40000, 443, 14 + 40 + len(chain))
    assert p.flow_key == ((), 6, 6, A6, 40000, B6, 443)


@pytest.mark.parametrize("linktype,head", [
    (0, struct.pack("<I", 2)), (0, struct.pack(">I", 2)), (108, struct.pack(">I", 2)), (108, struct.pack("<I", 2))])
def test_loopback_ipv4_both_byte_orders(linktype, head):
    assert parse(head + ipv4(17, udp()), linktype).flow_key == ((), 4, 17, A4, 5353, B4, 53)


@pytest.mark.parametrize("family", [24, 28, 30])
def test_loopback_ipv6_families(family):
    for head in (struct.pack("<I", family), struct.pack(">I", family)):
        assert parse(head + ipv6(17, udp()), 0).protocol == "udp"
    assert parse(struct.pack("<I", 7) + ipv6(17, udp()), 0).protocol == "other"


@pytest.mark.parametrize("linktype", [12, 14, 101, 228])
def test_raw_ipv4(linktype):
    assert parse(ipv4(6, tcp()), linktype).sport == 1234


@pytest.mark.parametrize("linktype", [12, 14, 101, 229])
def test_raw_ipv6(linktype):
    assert parse(ipv6(6, tcp()), linktype).sport == 1234


def test_sll_and_sll2_headers():
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x86DD)
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 4, 6, b"\x02" * 8)
    assert parse(sll + ipv6(17, udp()), 113).flow_key[1:3] == (6, 17)
    assert parse(sll2 + ipv4(6, tcp()), 276).l3_offset == 20


def test_arp_and_other_frames_pass_through():
    arp = parse(eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, 0x0806))
    assert (arp.protocol, arp.flow_key, arp.malformed, arp.ethertype) == ("arp", None, None, 0x0806)
    lldp = parse(eth(b"\x02\x07\x04" + b"\x00" * 40, 0x88CC))
    assert (lldp.protocol, lldp.flow_key, lldp.malformed) == ("other", None, None)
    assert parse(b"\x00" * 40, 147).protocol == "other"  # unknown link type
    gre = parse(eth(ipv4(47, b"\x00" * 8)))
    assert (gre.protocol, gre.flow_key) == ("ipv4-other", ((), 4, 47, A4, None, B4, None))


def test_icmp_echo_id_is_the_port():
    p = parse(eth(ipv4(1, icmp(8, rest=b"\x12\x34\x00\x01"))))
    assert (p.protocol, p.icmp_type, p.icmp_id, p.sport, p.dport) == ("icmp", 8, 0x1234, 0x1234, 0x1234)
    p6 = parse(eth(ipv6(58, icmp(129, rest=b"\x00\x09\x00\x01")), 0x86DD))
    assert (p6.protocol, p6.icmp_id, p6.flow_key[4]) == ("icmpv6", 9, 9)


@pytest.mark.parametrize("type_", [3, 4, 5, 11, 12])
def test_icmp_error_quote_and_nat_rewrite(type_):
    inner = ipv4(6, tcp(5555, 80)[:8], src=B4, dst=bytes([198, 51, 100, 1]), total=60)
    frame = eth(ipv4(1, icmp(type_, 1, b"\x00" * 4, inner), src=bytes([203, 0, 113, 9]), dst=B4))
    p = parse(frame)
    q = p.quoted
    assert p.malformed is None and q.protocol == "tcp" and (q.sport, q.dport) == (5555, 80)
    assert q.flow_key == ((), 4, 6, B4, 5555, bytes([198, 51, 100, 1]), 80) and q.malformed is None
    # a NAT rewrites the quoted source address and port at the offsets given
    rewritten = bytearray(frame)
    rewritten[q.l3_offset + 12:q.l3_offset + 16] = A4
    rewritten[q.l4_offset:q.l4_offset + 2] = struct.pack("!H", 1024)
    q2 = parse(bytes(rewritten)).quoted
    assert (q2.src, q2.sport, q2.dport) == (A4, 1024, 80)


def test_icmpv6_error_quotes_udp_behind_an_extension_header():
    inner = ipv6(60, ext(17) + udp(33434, 33435), src=B6, dst=A6)
    p = parse(eth(ipv6(58, icmp(3, 0, b"\x00" * 4, inner)), 0x86DD))
    assert p.quoted.protocol == "udp" and (p.quoted.sport, p.quoted.dport) == (33434, 33435)
    assert p.quoted.l4_offset == 14 + 40 + 8 + 40 + 8


@pytest.mark.parametrize("frame,wirelen,kind", [
    (eth(ipv4(6, tcp(), ihl=4)), None, "bad-ihl"),
    (eth(ipv4(6, tcp(), total=16)), None, "bad-total-length"),
    (eth(ipv4(6, tcp(), total=200)), None, "short-ip"),
    (eth(ipv4(17, udp(length=4))), None, "short-udp"),
    (eth(ipv4(17, udp()[:6])), None, "short-udp"),
    (eth(ipv4(17, udp(length=400))), None, "bad-udp-length"),
    (eth(ipv4(6, tcp()[:12])), None, "short-tcp"),
    (eth(ipv4(6, tcp(offset=3))), None, "bad-tcp-offset"),
    (eth(ipv4(6, tcp()))[:40], 200, "snaplen-cut"),
    (eth(ipv4(6, tcp()))[:20], None, "short-ipv4"),
    (eth(ipv4(6, tcp()))[:10], None, "short-frame"),
    (eth(ipv6(0, ext(6, 4)[:16] + tcp()), 0x86DD), None, "bad-ipv6-ext"),
    (eth(ipv6(43, ext(6, 30)[:24]), 0x86DD), None, "bad-ipv6-ext"),
    (eth(ipv6(44, b"\x11\x00"), 0x86DD), None, "bad-ipv6-ext"),
    (eth(ipv6(0, ext(6, 4) + tcp()), 0x86DD)[:70], 200, "snaplen-cut"),
    (eth(ipv6(6, tcp()), 0x86DD)[:40], None, "short-ipv6"),
    (eth(ipv6(6, tcp())), None, "bad-ip-version"),
    (eth(ipv4(1, icmp(8)[:5])), None, "short-icmp"),
    (eth(ipv4(1, icmp(3, payload=ipv4(17, b"")[:12]))), None, "short-icmp-quote"),
    (eth(ipv4(1, icmp(3, payload=ipv6(17, udp())))), None, "bad-icmp-quote"),
    (eth(ipv4(6, tcp()), tags=((0x8100, 1),) * 9), None, "vlan-stack"),
])
def test_malformed_kinds(frame, wirelen, kind):
    assert parse(frame, wirelen=wirelen).malformed == kind


def test_zero_ipv4_total_length_is_tso_not_malformed():
    p = parse(eth(ipv4(6, tcp(), total=0)))
    assert p.malformed is None and p.sport == 1234


def test_flow_keyer_fragments():
    first = parse(eth(ipv4(17, udp(payload=b"x" * 16), ident=99, flags_frag=0x2000)))
    later = parse(eth(ipv4(17, b"y" * 16, ident=99, flags_frag=3)))
    other = parse(eth(ipv4(17, b"z" * 16, ident=100, flags_frag=3)))
    assert later.flow_key == ((), 4, 17, A4, None, B4, None) and later.frag_offset == 24
    keyer = FlowKeyer(limit=2)
    assert keyer.key(later) == later.flow_key  # before its first fragment: no ports
    assert keyer.key(first) == first.flow_key == keyer.key(later)
    assert keyer.key(other) == other.flow_key
    for ident in (1, 2):  # pushes the first fragment out of a 2-entry memory
        keyer.key(parse(eth(ipv4(17, udp(), ident=ident, flags_frag=0x2000))))
    assert keyer.key(later) == later.flow_key


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 9999]), st.binary(max_size=120),
       st.integers(0, 300))
def test_never_raises(linktype, data, wirelen):
    p = parse_frame(linktype, data, wirelen)
    assert p.protocol in ("tcp", "udp", "icmp", "icmpv6", "ipv4-other", "ipv6-other", "arp", "other")
    assert (p.flow_key is None) == (p.ip_version == 0)
