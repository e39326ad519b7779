"""The Cython parser (nfproof.traces._fast, runtime/fast.pyx; code in traces/_parse.pxi) and the
pure-Python reference (nfproof.traces.headers, runtime/pure.py) give equal results: on every packet of
every capture in ../shared/pcaps, on mutated real frames, and on pcap files built from them."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nfproof.runtime import pure as runtime_pure
from nfproof.traces import headers
from nfproof.traces.errors import FormatError
from nfproof.traces.reader import read_records

fast = pytest.importorskip("nfproof.traces._fast", reason="Cython extension not built")
runtime_fast = pytest.importorskip("nfproof.runtime.fast", reason="Cython extension not built")

from captures import all_captures

CAPTURES = all_captures()


def records(path):
    try:
        yield from read_records(path)
    except FormatError:
        return


def seed_frames():
    """One real frame per distinct parse outcome, plus hand-made fragments and ICMP errors."""
    seen, seeds = set(), []
    for path in CAPTURES:
        if path.name.startswith("S01"):
            continue
        for r in records(path):
            p = headers.parse_frame(r.linktype, r.data, r.wirelen)
            kind = (r.linktype, p.protocol, p.malformed, p.vlans, p.mpls, p.is_fragment, p.quoted is None,
                    p.tcp_flags, p.icmp_type)
            if kind not in seen:
                seen.add(kind)
                seeds.append((r.linktype, r.data, r.wirelen))
    mac, udp = b"\x02" * 12, b"\x13\x88\x00\x35\x00\x18\x00\x00" + b"x" * 16
    ip = bytes.fromhex("4500002c00634000401100000a0000010a000002")
    for flags in (b"\x20\x00", b"\x00\x03", b"\x20\x06"):  # IPv4 fragments of one datagram
        seeds.append((1, mac + b"\x08\x00" + ip[:6] + flags + ip[8:] + udp, 58))
    seeds.append((1, mac + b"\x88\xa8\x00\x05\x81\x00\x00\x00\x08\x00" + ip + udp, 66))  # QinQ, VLAN 0
    seeds.append((1, mac + b"\x08\x00\x46" + ip[1:2] + b"\x00\x30" + ip[4:] + b"\x94\x04\x00\x00" + udp, 62))  # IPv4 option
    v6 = bytes.fromhex("6000000000440040") + bytes(range(32))  # next header 0: HBH, routing, AH, frag, dest
    chain = bytes([43, 0]) + bytes(6) + bytes([51, 0]) + bytes(6) + bytes([44, 1]) + bytes(10)
    chain += bytes([60, 0, 0, 0, 0, 0, 0, 9]) + bytes([17, 0]) + bytes(6)
    seeds.append((1, mac + b"\x86\xdd" + v6 + chain + udp, 160))
    quote = ip[:9] + b"\x06" + ip[10:] + b"\x04\xd2\x00\x50\x00\x00\x00\x01"
    icmp_ip = bytes.fromhex("4500003800010000400100000a0000020a000001")
    for t in (3, 11, 0, 8):  # ICMP errors quoting TCP, echo reply/request
        seeds.append((1, mac + b"\x08\x00" + icmp_ip + bytes([t, 1]) + bytes(6) + quote, 70))
    return seeds


SEEDS = seed_frames()


def same(linktype, data, wirelen):
    expected = headers.parse_frame(linktype, data, wirelen)
    assert fast.parse_frame(linktype, data, wirelen) == expected
    assert runtime_fast.parse_frame(linktype, data, wirelen) == expected
    assert runtime_fast.flow_key(data, linktype, wirelen) == runtime_pure.flow_key(data, linktype, wirelen) == expected.flow_key


def test_seeds_cover_the_interesting_cases():
    kinds = {headers.parse_frame(*s).protocol for s in SEEDS}
    assert len(SEEDS) > 40 and {"tcp", "udp", "icmp", "icmpv6", "arp", "other", "ipv4-other"} <= kinds


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_every_packet_of_every_capture(path):
    for r in records(path):
        same(r.linktype, r.data, r.wirelen)


def outcome(scan, path):
    try:
        return scan(str(path))
    except ValueError as e:
        return str(e)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_scan_of_every_capture(path):
    assert outcome(fast.scan_pcap_flow_keys, path) == outcome(headers.scan_pcap_flow_keys, path)


mutation = st.tuples(st.integers(0, 200), st.integers(0, 255))


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(mutation, max_size=4), st.integers(0, 300), st.integers(-50, 50),
       st.sampled_from([None, 0, 1, 101, 108, 113, 229, 276]))
def test_mutated_frames(seed, edits, cut, wire_delta, linktype):
    linktype0, data, wirelen = seed
    data = bytearray(data[:max(cut, 0) + 14] if cut < 200 else data)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    same(linktype0 if linktype is None else linktype, bytes(data), wirelen + wire_delta)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 300), st.binary(max_size=100), st.integers(0, 200))
def test_random_bytes(linktype, data, wirelen):
    same(linktype, data, wirelen)


def write_pcap(path, frames, linktype, big_endian):
    e = ">" if big_endian else "<"
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, (data, wirelen) in enumerate(frames):
            f.write(struct.pack(e + "IIII", i, 0, len(data), wirelen) + data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(SEEDS), st.lists(mutation, max_size=2)), max_size=40),
       st.booleans(), st.integers(0, 20))
def test_scan_of_generated_files(tmp_path, picks, big_endian, chop):
    frames = []
    for (linktype, data, wirelen), edits in picks:
        if linktype == 1:
            data = bytearray(data)
            for pos, value in edits:
                if pos < len(data):
                    data[pos] = value
            frames.append((bytes(data), wirelen))
    path = tmp_path / "gen.pcap"
    write_pcap(path, frames, 1, big_endian)
    if chop:  # a truncated file: both scans raise the same error
        path.write_bytes(path.read_bytes()[:-chop])
    assert outcome(fast.scan_pcap_flow_keys, path) == outcome(headers.scan_pcap_flow_keys, path)


def test_scan_with_tables_that_grow(tmp_path):
    """200k flows and 2k fragmented datagrams: both C tables grow past their initial size."""
    frames, mac = [], b"\x02" * 12 + b"\x08\x00"
    for i in range(200_000):
        ip = struct.pack("!BBHHHBBHI4s", 0x45, 0, 28, i & 0xFFFF, 0, 64, 17, 0, 0x0A000000 + (i >> 4), b"\xc0\x00\x02\x01")
        frames.append((mac + ip + struct.pack("!HHHH", 1024 + (i & 15), 53, 8, 0), 42))
    for i in range(2000):  # first fragment (ports), then a later one (no ports), per datagram
        for flags_frag, l4 in ((0x2000, struct.pack("!HHHH", 7000, 7001, 24, 0)), (0x0002, b"x" * 8)):
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, i, flags_frag, 64, 17, 0, b"\x0a\x01\x00\x01", b"\x0a\x01\x00\x02")
            frames.append((mac + ip + l4, 42))
    path = tmp_path / "many.pcap"
    write_pcap(path, frames, 1, False)
    assert fast.scan_pcap_flow_keys(str(path)) == headers.scan_pcap_flow_keys(str(path)) == (204_000, 200_001, 0)


@st.composite
def structured_frames(draw):
    """Ethernet / tag stack / IPv4 or IPv6 (+ extension headers) / transport / maybe an ICMP quote,
    with random field values and lengths, so the deep paths are reached with odd numbers."""
    byte, u16 = st.integers(0, 255), st.integers(0, 0xFFFF)

    def ip_packet(quoted):
        proto = draw(st.sampled_from([6, 17, 1, 58, 47, 0, 43, 44, 51, 60, 59]))
        body = draw(st.binary(max_size=24))
        if proto in (6, 17):
            body = struct.pack("!HHH", draw(u16), draw(u16), draw(u16)) + body
        elif proto in (1, 58):
            t = draw(st.sampled_from([0, 3, 8, 11, 1, 128, 129, 4, 5, 12, 13]))
            body = bytes([t, draw(byte)]) + bytes(6) + (b"" if quoted else ip_packet(True)[1]) + body
        if draw(st.booleans()):
            hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | draw(st.sampled_from([5, 5, 5, 6, 4, 8])), 0, draw(st.sampled_from([0, 20 + len(body), draw(u16)])),
                              draw(u16), draw(st.sampled_from([0, 0x2000, 0x2003, 3, draw(u16)])), 64, proto, 0, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
            return 4, hdr + draw(st.sampled_from([b"", bytes(4), bytes(8)])) + body
        exts = b""
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from([0, 43, 44, 51, 60]))
            exts = bytes([proto, draw(st.integers(0, 3))]) + bytes(draw(st.sampled_from([6, 14, 22]))) + exts
            proto = kind
        plen = draw(st.sampled_from([len(exts) + len(body)] * 3 + [0, draw(u16)]))
        return 6, struct.pack("!IHBB16s16s", 0x60000000, plen, proto, 64, bytes(15) + b"\x01", bytes(15) + b"\x02") + exts + body

    tags = b"".join(struct.pack("!HH", draw(st.sampled_from([0x8100, 0x88A8])), draw(u16)) for _ in range(draw(st.integers(0, 3))))
    version, packet = ip_packet(False)
    ethertype = b"\x88\x47\x00\x01\x01\x40" if draw(st.booleans()) else b"\x08\x00" if version == 4 else b"\x86\xdd"
    frame = b"\x02" * 12 + tags + ethertype + packet
    return frame[:draw(st.integers(0, len(frame)))] if draw(st.integers(0, 3)) == 0 else frame


@settings(max_examples=1500, deadline=None)
@given(structured_frames(), st.integers(-10, 40))
def test_structured_frames(frame, extra):
    same(1, frame, len(frame) + extra)
