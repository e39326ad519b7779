"""runtime/frames.py (the runtime contract, sections 1-3): the model view of real and hand-built
frames against tshark's own dissection, write-back with incremental checksums whose validity
tshark checks independently (every checksum that was valid stays valid; fields read back as
written), the errors for changes a frame cannot carry, and side classification.

The builders here extend tests/frames_gen.py (whose `checksum` and `eth` they use) with what these
tests need: IPv4 options, fragment flags and explicit total lengths, the TCP NS bit, transport
headers alone (to quote them in ICMP errors); every checksum is computed from scratch.
tests/test_runtime_pure.py uses them too."""
from __future__ import annotations

import ipaddress
import random
import shutil
import struct
import subprocess

import pytest

from nfproof.models.api import ModelError, Packet
from nfproof.runtime.frames import (DEFAULT_INSIDE, OUTSIDE, FrameError, Sides, inbound, parse_inside, reversed_error, view,
                                    view_fields, write_back, write_fields)
from nfproof.traces.headers import parse_frame
from nfproof.traces.pcap import PcapWriter
from nfproof.traces.reader import read_records

from captures import capture
from frames_gen import checksum, eth

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark, "
                                                         "or `make system-deps`): checksums are checked by it")
CAPTURES = ["E02_http_49flows.pcap", "E10_dns_icmp.pcap", "E11_icmp_ping_150.pcap", "E14_vlan123_arp_icmp.pcap",
            "E05_mixed_v4v6_80flows_ftpdata.pcap", "E20_frag_ipv4_udp_afs.pcap", "T01_snaplen_cut_tcp_878.pcap"]


# -- frame builders (checksums from scratch; see tests/frames_gen.py) ------------------------------
def a(addr) -> int:
    """An IPv4 address (text, 4 bytes or int) as an int."""
    if isinstance(addr, bytes):
        return int.from_bytes(addr, "big")
    return int(ipaddress.IPv4Address(addr)) if isinstance(addr, str) else addr


def ipv4(proto: int, src, dst, payload: bytes, ident: int = 0x1234, frag: int = 0, mf: bool = False,
         options: bytes = b"", total: int | None = None) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload) if total is None else total, ident,
                         (0x2000 if mf else 0) | frag // 8, 64, proto, 0, a(src).to_bytes(4, "big"),
                         a(dst).to_bytes(4, "big")) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def _pseudo(src, dst, proto: int, length: int) -> bytes:
    return a(src).to_bytes(4, "big") + a(dst).to_bytes(4, "big") + struct.pack("!BBH", 0, proto, length)


def tcp(src, dst, sport: int, dport: int, flags: int, payload: bytes = b"", ns: bool = False, seq: int = 1000) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, 7, (5 << 4) | ns, flags, 8192, 0, 0) + payload
    return seg[:16] + struct.pack("!H", checksum(_pseudo(src, dst, 6, len(seg)) + seg)) + seg[18:]


def udp(src, dst, sport: int, dport: int, payload: bytes = b"", no_checksum: bool = False) -> bytes:
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = 0 if no_checksum else (checksum(_pseudo(src, dst, 17, len(dgram)) + dgram) or 0xFFFF)
    return dgram[:6] + struct.pack("!H", c) + dgram[8:]


def icmp(icmp_type: int, code: int = 0, rest: bytes = b"\0\0\0\0", payload: bytes = b"") -> bytes:
    msg = struct.pack("!BBH", icmp_type, code, 0) + rest + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def echo(icmp_type: int, ident: int, seq: int = 1, payload: bytes = b"ping" * 4) -> bytes:
    return icmp(icmp_type, 0, struct.pack("!HH", ident, seq), payload)


def tcp_frame(src, sport, dst, dport, flags=0x02, payload=b"", vlans=(), **kw) -> bytes:
    return eth(ipv4(6, src, dst, tcp(src, dst, sport, dport, flags, payload, **kw)), vlans=vlans)


def udp_frame(src, sport, dst, dport, payload=b"data", vlans=(), no_checksum=False) -> bytes:
    return eth(ipv4(17, src, dst, udp(src, dst, sport, dport, payload, no_checksum)), vlans=vlans)


def icmp_error(src, dst, quoted_ip: bytes, icmp_type: int = 3, code: int = 3, vlans=()) -> bytes:
    """An ICMP error from src to dst quoting `quoted_ip` (an IPv4 packet, possibly cut)."""
    return eth(ipv4(1, src, dst, icmp(icmp_type, code, b"\0\0\0\0", quoted_ip)), vlans=vlans)


def frames_valid(frame: bytes) -> dict:
    """From-scratch checksum check of an Ethernet/IPv4 frame built here: {checksum name: valid}
    for the outer IPv4 header, its TCP/UDP/ICMP, and for an ICMP error the quoted IPv4 header
    and the quoted TCP/UDP/ICMP when the quote is whole."""
    p = parse_frame(1, frame, len(frame))
    out = {}

    def ip_and_l4(l3, l4, end, prefix):
        ihl = (frame[l3] & 15) * 4
        out[prefix + "ip"] = checksum(frame[l3:l3 + ihl]) == 0
        proto, body = frame[l3 + 9], frame[l4:end]
        src, dst = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
        if proto in (6, 17):
            if proto == 17 and body[6:8] == b"\0\0":
                out[prefix + "udp"] = "none"
            elif (proto == 6 and len(body) >= 20) or (proto == 17 and len(body) >= struct.unpack("!H", body[4:6])[0]):
                length = len(body) if proto == 6 else struct.unpack("!H", body[4:6])[0]
                out[prefix + ("tcp" if proto == 6 else "udp")] = checksum(
                    src + dst + struct.pack("!BBH", 0, proto, length) + body[:length]) == 0
        elif proto == 1:
            out[prefix + "icmp"] = checksum(body) == 0

    ip_end = p.l3_offset + struct.unpack("!H", frame[p.l3_offset + 2:p.l3_offset + 4])[0]
    ip_and_l4(p.l3_offset, p.l4_offset, ip_end, "")
    if p.quoted is not None:
        q = p.quoted
        q_end = q.l3_offset + struct.unpack("!H", frame[q.l3_offset + 2:q.l3_offset + 4])[0]
        if q_end <= ip_end:
            ip_and_l4(q.l3_offset, q.l4_offset, q_end, "quoted-")
        else:
            ihl = (frame[q.l3_offset] & 15) * 4
            out["quoted-ip"] = checksum(frame[q.l3_offset:q.l3_offset + ihl]) == 0
    return out


# -- tshark -----------------------------------------------------------------------------------------
VIEW_FIELDS = ("frame.len", "ip.version", "ip.proto", "ip.src", "ip.dst", "ip.frag_offset", "tcp.srcport",
               "tcp.dstport", "tcp.flags", "udp.srcport", "udp.dstport", "icmp.type", "icmp.ident", "ipv6.src", "arp")
STATUS_FIELDS = ("ip.checksum.status", "tcp.checksum.status", "udp.checksum.status", "icmp.checksum.status")
TSHARK_OPTIONS = ("-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                  "-o", "ip.defragment:FALSE", "-o", "tcp.desegment_tcp_streams:FALSE")


def tshark(path, fields) -> list[dict]:
    """One dict per frame: field -> list of its occurrences (outer first)."""
    args = [TSHARK, "-n", "-r", str(path), *TSHARK_OPTIONS, "-T", "fields", "-E", "occurrence=a",
            "-E", "aggregator=;", "-E", "separator=\t"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = []
    for line in out.split("\n")[:-1]:
        values = line.split("\t")
        rows.append({f: (v.split(";") if v else []) for f, v in zip(fields, values)})
    return rows


def tshark_view(row: dict, inbound: bool):
    """What the contract's view is, computed from tshark's dissection of a frame."""
    ips = row["ip.version"]
    if not ips or ips[0] != "4":
        return OUTSIDE
    if int(row["ip.frag_offset"][0]):
        return "ipv4 fragment"
    proto = int(row["ip.proto"][0])
    src, dst = a(row["ip.src"][0]), a(row["ip.dst"][0])
    length = min(int(row["frame.len"][0]), 0xFFFF)
    sport = dport = flags = 0
    if proto == 1:
        t = int(row["icmp.type"][0])
        if t in (8, 13):
            sport = int(row["icmp.ident"][0])
        elif t in (0, 14):
            dport = int(row["icmp.ident"][0])
        elif t in (3, 4, 5, 11, 12) and len(row["ip.proto"]) > 1:
            qproto = int(row["ip.proto"][1])
            if qproto in (6, 17):
                layer = "tcp" if qproto == 6 else "udp"
                qsport, qdport = int(row[layer + ".srcport"][0]), int(row[layer + ".dstport"][0])
            elif qproto == 1 and len(row["icmp.type"]) > 1 and int(row["icmp.type"][1]) in (0, 8, 13, 14):
                ident = int(row["icmp.ident"][0])
                qsport, qdport = (ident, 0) if int(row["icmp.type"][1]) in (8, 13) else (0, ident)
            else:
                return Packet(1, src, 0, dst, 0, 0, inbound, length)
            return Packet(qproto, a(row["ip.dst"][1]), qdport, a(row["ip.src"][1]), qsport, 0, inbound, length)
    elif proto in (6, 17):
        layer = "tcp" if proto == 6 else "udp"
        sport, dport = int(row[layer + ".srcport"][0]), int(row[layer + ".dstport"][0])
        flags = int(row["tcp.flags"][0], 16) & 0xFF if proto == 6 else 0
    return Packet(proto, src, sport, dst, dport, flags, inbound, length)


def statuses(row: dict) -> tuple:
    """The checksum statuses that concern the rewritten headers: the outer IPv4 and its transport,
    and for an ICMP error the quoted IPv4 header and the quoted transport (1 good, 0 bad,
    2 unverified; None when tshark shows none)."""
    ip = row["ip.checksum.status"]
    first = {f: (row[f][0] if row[f] else None) for f in STATUS_FIELDS[1:]}
    return (ip[0] if ip else None, ip[1] if len(ip) > 1 else None, first["tcp.checksum.status"],
            first["udp.checksum.status"], first["icmp.checksum.status"])


def write_pcap(path, frames, linktype=1):
    with PcapWriter(path, linktype) as w:
        for k, (data, wirelen) in enumerate(frames):
            w.write(1_000_000_000 + k * 1000, bytes(data), wirelen)


def records(name):
    return [(r.linktype, bytes(r.data), r.wirelen) for r in read_records(capture(name))]


# -- 1. the view --------------------------------------------------------------------------------------
@needs_tshark
@pytest.mark.parametrize("name", CAPTURES)
def test_view_agrees_with_tshark_on_every_frame(name):
    path = capture(name)
    rows = tshark(path, VIEW_FIELDS)
    recs = records(name)
    assert len(rows) == len(recs)
    kinds = set()
    for k, ((linktype, data, wirelen), row) in enumerate(zip(recs, rows)):
        p = parse_frame(linktype, data, wirelen)
        for arrived in (False, True):
            got = view(p, arrived, wirelen)
            assert got == tshark_view(row, arrived), (name, k + 1)
        kinds.add(got if isinstance(got, str) or got is OUTSIDE else (got.proto, p.icmp_type))
    expected_kinds = {"E14_vlan123_arp_icmp.pcap": {OUTSIDE, (1, 8), (1, 0)},
                      "E20_frag_ipv4_udp_afs.pcap": {"ipv4 fragment", (17, None), (17, 3)},
                      "E05_mixed_v4v6_80flows_ftpdata.pcap": {OUTSIDE, (6, None), (17, None), (2, None)}}
    assert kinds >= expected_kinds.get(name, set())


def test_view_of_a_snaplen_cut_capture_has_the_wire_length():
    lengths = [(view(parse_frame(lt, d, wl), False, wl).length, len(d), wl) for lt, d, wl in
               records("T01_snaplen_cut_tcp_878.pcap")]
    cut = [x for x in lengths if x[1] < x[2]]
    assert len(cut) == 691 and all(length == wl for length, _, wl in lengths)


INSIDE_HOST, REMOTE, ROUTER = "10.0.0.5", "93.184.216.34", "198.51.100.77"


def hand_views():
    """(description, frame, expected view as (proto, src, sport, dst, dport, flags) or a reason or OUTSIDE)."""
    full_tcp = ipv4(6, INSIDE_HOST, REMOTE, tcp(INSIDE_HOST, REMOTE, 40000, 443, 0x12, b"hello"))
    full_udp = ipv4(17, INSIDE_HOST, REMOTE, udp(INSIDE_HOST, REMOTE, 5353, 53, b"query"))
    req = ipv4(1, INSIDE_HOST, REMOTE, echo(8, 0x4242))
    rep = ipv4(1, INSIDE_HOST, REMOTE, echo(0, 0x4343))
    gre = ipv4(47, INSIDE_HOST, REMOTE, b"\0\0\x08\0" + b"x" * 20)
    h, r, x = a(INSIDE_HOST), a(REMOTE), a(ROUTER)
    return [
        ("tcp", tcp_frame(INSIDE_HOST, 40000, REMOTE, 443, 0xD2, ns=True), (6, h, 40000, r, 443, 0xD2)),
        ("vlan tcp", tcp_frame(INSIDE_HOST, 1, REMOTE, 2, 0x10, vlans=(100, 200)), (6, h, 1, r, 2, 0x10)),
        ("udp", udp_frame(INSIDE_HOST, 5353, REMOTE, 53), (17, h, 5353, r, 53, 0)),
        ("echo request", eth(req), (1, h, 0x4242, r, 0, 0)),
        ("echo reply", eth(rep), (1, h, 0, r, 0x4343, 0)),
        ("timestamp request", eth(ipv4(1, h, r, icmp(13, 0, struct.pack("!HH", 7, 1), b"\0" * 12))), (1, h, 7, r, 0, 0)),
        ("timestamp reply", eth(ipv4(1, h, r, icmp(14, 0, struct.pack("!HH", 8, 1), b"\0" * 12))), (1, h, 0, r, 8, 0)),
        ("router advertisement", eth(ipv4(1, r, h, icmp(9, 0, b"\1\2\0\x1e", b"\0" * 8))), (1, r, 0, h, 0, 0)),
        ("error quoting tcp", icmp_error(REMOTE, INSIDE_HOST, full_tcp), (6, r, 443, h, 40000, 0)),
        ("error quoting 8 bytes of tcp", icmp_error(ROUTER, INSIDE_HOST, full_tcp[:28], 11, 0), (6, r, 443, h, 40000, 0)),
        ("error quoting udp", icmp_error(REMOTE, INSIDE_HOST, full_udp), (17, r, 53, h, 5353, 0)),
        ("error quoting an echo request", icmp_error(ROUTER, INSIDE_HOST, req, 11, 0), (1, r, 0, h, 0x4242, 0)),
        ("error quoting an echo reply", icmp_error(ROUTER, INSIDE_HOST, rep), (1, r, 0x4343, h, 0, 0)),
        ("error quoting gre", icmp_error(ROUTER, INSIDE_HOST, gre), (1, x, 0, h, 0, 0)),
        ("error quoting a later fragment", icmp_error(ROUTER, INSIDE_HOST, ipv4(17, h, r, b"z" * 16, frag=1480)),
         (1, x, 0, h, 0, 0)),
        ("vlan error quoting udp", icmp_error(REMOTE, INSIDE_HOST, full_udp, vlans=(7,)), (17, r, 53, h, 5353, 0)),
        ("gre", eth(gre), (47, h, 0, r, 0, 0)),
        ("first fragment", eth(ipv4(17, h, r, udp(h, r, 1, 2, b"q" * 40)[:24], mf=True)), (17, h, 1, r, 2, 0)),
        ("later fragment", eth(ipv4(17, h, r, b"q" * 24, frag=8)), "ipv4 fragment"),
        ("short tcp", eth(ipv4(6, h, r, b"\0" * 12)), "malformed: short-tcp"),
        ("error with a short quote", icmp_error(ROUTER, h, full_udp[:10]), "malformed: short-icmp-quote"),
        ("bad udp length", eth(ipv4(17, h, r, struct.pack("!HHHH", 1, 2, 200, 0))), "malformed: bad-udp-length"),
        ("ipv6", eth(b"\x60" + b"\0" * 39, ethertype=0x86DD), OUTSIDE),
        ("arp", eth(b"\0\1\x08\0\6\4\0\1" + b"\0" * 20, ethertype=0x0806), OUTSIDE),
        ("short ipv4 header", eth(b"\x45\0\0"), OUTSIDE),
    ]


@pytest.mark.parametrize("what,frame,expected", hand_views(), ids=[v[0] for v in hand_views()])
def test_view_of_hand_built_frames(what, frame, expected):
    p = parse_frame(1, frame, len(frame))
    got = view(p, True, len(frame))
    if isinstance(expected, tuple):
        assert got == Packet(*expected, inbound=True, length=len(frame), label=0)
        assert view_fields(p, False, len(frame)) == expected + (False, len(frame), 0)
    else:
        assert got == expected


def test_view_length_is_capped_at_16_bits():
    frame = tcp_frame(INSIDE_HOST, 1, REMOTE, 2, 0x10)
    assert view(parse_frame(1, frame, 70000), False, 70000).length == 0xFFFF
    assert view(parse_frame(1, frame, len(frame)), False, len(frame)).length == len(frame)


def test_unknown_link_type_is_outside_the_model():
    frame = tcp_frame(INSIDE_HOST, 1, REMOTE, 2)
    assert view(parse_frame(147, frame, len(frame)), False, len(frame)) is OUTSIDE


# -- 2. write-back ------------------------------------------------------------------------------------
def random_rewrite(rng: random.Random, p, old: tuple) -> tuple:
    """`old` with every field the frame can carry changed (at random, each with probability 3/4)."""
    new = list(old)

    def maybe(index, bits):
        if rng.random() < 0.75:
            new[index] = rng.getrandbits(bits)

    maybe(1, 32)
    maybe(3, 32)
    proto = old[0]
    if reversed_error(p):
        q = p.quoted
        if proto in (6, 17):
            maybe(2, 16)
            maybe(4, 16)
        else:
            maybe(4 if q.icmp_type in (8, 13) else 2, 16)
    elif proto in (6, 17):
        maybe(2, 16)
        maybe(4, 16)
        if proto == 6:
            maybe(5, 8)
    elif proto == 1 and p.icmp_type in (8, 13):
        maybe(2, 16)
    elif proto == 1 and p.icmp_type in (0, 14):
        maybe(4, 16)
    return tuple(new)


def rewrite_all(frames, seed=1):
    """Every in-model frame rewritten at random: [(input frame, output frame, wirelen, new fields)]."""
    rng, out = random.Random(seed), []
    for linktype, data, wirelen in frames:
        p = parse_frame(linktype, data, wirelen)
        old = view_fields(p, False, wirelen)
        if type(old) is not tuple:
            continue
        new = random_rewrite(rng, p, old)
        buf = bytearray(b"pad" + data + b"tail")  # at an offset in a larger buffer, as in a batch
        write_fields(buf, 3, len(data), p, old, new, "test")
        assert buf[:3] == b"pad" and buf[-4:] == b"tail"
        frame = bytes(buf[3:-4])
        assert view_fields(parse_frame(linktype, frame, wirelen), False, wirelen) == new
        out.append((data, frame, wirelen, new))
    return out


@needs_tshark
@pytest.mark.parametrize("name", ["E02_http_49flows.pcap", "E10_dns_icmp.pcap", "E11_icmp_ping_150.pcap",
                                  "E14_vlan123_arp_icmp.pcap", "E20_frag_ipv4_udp_afs.pcap",
                                  "T01_snaplen_cut_tcp_878.pcap", "E05_mixed_v4v6_80flows_ftpdata.pcap"])
def test_rewritten_capture_frames_keep_their_checksums_per_tshark(name, tmp_path):
    done = rewrite_all(records(name))
    assert done
    check_with_tshark(tmp_path, done)


def check_with_tshark(tmp_path, done, linktype=1):
    """tshark reads each output with the fields written and the checksum statuses of its input."""
    write_pcap(tmp_path / "in.pcap", [(i, w) for i, _, w, _ in done], linktype)
    write_pcap(tmp_path / "out.pcap", [(o, w) for _, o, w, _ in done], linktype)
    before = tshark(tmp_path / "in.pcap", STATUS_FIELDS)
    after = tshark(tmp_path / "out.pcap", STATUS_FIELDS + VIEW_FIELDS)
    assert len(before) == len(after) == len(done)
    good = 0
    for k, ((_, _, _, new), b, o) in enumerate(zip(done, before, after)):
        assert statuses(o) == statuses(b), f"frame {k + 1}: checksum statuses {statuses(b)} -> {statuses(o)}"
        good += statuses(o).count("1")
        assert tshark_view(o, False) == Packet(*new[:6], False, new[7]), f"frame {k + 1}"
    assert good >= len(done)  # most frames had (and kept) valid checksums


def hand_error_frames():
    """ICMP errors (and a VLAN TCP frame) whose whole quote tshark can check, and cut quotes."""
    h, r, x = INSIDE_HOST, REMOTE, ROUTER
    full_tcp = ipv4(6, h, r, tcp(h, r, 40000, 443, 0x18, b"GET / HTTP/1.0\r\n\r\n"))
    full_udp = ipv4(17, h, r, udp(h, r, 5353, 53, b"some query"))
    no_sum_udp = ipv4(17, h, r, udp(h, r, 5353, 53, b"some query", no_checksum=True))
    opts_udp = ipv4(17, h, r, udp(h, r, 1, 2, b"opts"), options=b"\x01\x01\x01\x00")
    return [
        icmp_error(r, h, full_tcp), icmp_error(x, h, full_tcp, 11, 0), icmp_error(r, h, full_tcp[:28]),
        icmp_error(r, h, full_tcp[:40]), icmp_error(r, h, full_udp), icmp_error(x, h, full_udp, 11, 0),
        icmp_error(r, h, full_udp[:28]), icmp_error(r, h, no_sum_udp), icmp_error(r, h, opts_udp),
        icmp_error(x, h, ipv4(1, h, r, echo(8, 0x1111)), 11, 0), icmp_error(x, h, ipv4(1, h, r, echo(0, 0x2222))),
        icmp_error(x, h, ipv4(1, h, r, echo(8, 0x1111))[:28], 11, 0),
        icmp_error(r, h, full_udp, vlans=(5, 6)), icmp_error(r, h, full_udp, 12, 0),
        icmp_error(h, h, full_udp),  # outer src == quoted dst and outer dst == quoted src: both follow
        tcp_frame(h, 1234, r, 80, 0x02, vlans=(42,), ns=True), udp_frame(h, 1, r, 2, no_checksum=True),
        eth(ipv4(47, h, r, b"\0\0\x08\0" + b"g" * 20)), eth(ipv4(1, r, h, icmp(9, 0, b"\1\2\0\x1e", b"\0" * 8))),
    ]


def test_hand_built_rewrites_keep_checksums_valid():
    """From-scratch checksums (no tshark): every checksum valid before is valid after."""
    rng = random.Random(7)
    for k, frame in enumerate(hand_error_frames() * 20):
        before = frames_valid(frame)
        (_, out, _, _), = rewrite_all([(1, frame, len(frame))], seed=rng.getrandbits(32))
        assert frames_valid(out) == before, k


@needs_tshark
def test_hand_built_rewrites_per_tshark(tmp_path):
    frames = [(1, f, len(f)) for f in hand_error_frames() * 10]
    done = rewrite_all(frames, seed=3)
    check_with_tshark(tmp_path, done)
    rows = tshark(tmp_path / "out.pcap", STATUS_FIELDS)
    quoted_good = sum(r["ip.checksum.status"][1:2] == ["1"] for r in rows)
    assert quoted_good >= 10 * 14  # the quoted IPv4 headers are checked too


def test_icmp_error_outer_addresses_follow_only_when_equal():
    h, r, x = INSIDE_HOST, REMOTE, ROUTER
    quoted = ipv4(17, h, r, udp(h, r, 5353, 53, b"q"))
    new_src, new_dst = a("203.0.113.9"), a("192.0.2.1")
    for outer_src, outer_dst, expect_src, expect_dst in ((r, h, new_src, new_dst), (x, h, a(x), new_dst),
                                                          (x, "10.9.9.9", a(x), a("10.9.9.9"))):
        frame = icmp_error(outer_src, outer_dst, quoted)
        p = parse_frame(1, frame, len(frame))
        old = view_fields(p, False, len(frame))
        buf = bytearray(frame)
        write_fields(buf, 0, len(buf), p, old, (17, new_src, 53, new_dst, 5353) + old[5:], "nat")
        out = parse_frame(1, bytes(buf), len(buf))
        assert (a(out.src), a(out.dst)) == (expect_src, expect_dst)
        assert (a(out.quoted.dst), a(out.quoted.src)) == (new_src, new_dst)
        assert all(frames_valid(bytes(buf)).values())


def test_udp_checksum_zero_rule():
    h, r = INSIDE_HOST, REMOTE
    # no checksum: stays none
    frame = udp_frame(h, 1000, r, 53, no_checksum=True)
    p = parse_frame(1, frame, len(frame))
    old = view_fields(p, False, len(frame))
    buf = bytearray(frame)
    write_fields(buf, 0, len(buf), p, old, (17, a("1.2.3.4"), 9, old[3], 7) + old[5:], "t")
    assert buf[p.l4_offset + 6:p.l4_offset + 8] == b"\0\0"
    # a rewrite whose checksum comes out as 0 is written 0xFFFF
    frame = udp_frame(h, 1000, r, 53)
    p = parse_frame(1, frame, len(frame))
    old = view_fields(p, False, len(frame))
    hc = struct.unpack("!H", frame[p.l4_offset + 6:p.l4_offset + 8])[0]
    # HC' = ~(~HC + ~m + m') = 0  <=>  ~HC + ~m + m' = 0xFFFF (one's complement)
    target = (0xFFFF - (~hc & 0xFFFF) - (~1000 & 0xFFFF)) % 0xFFFF
    buf = bytearray(frame)
    write_fields(buf, 0, len(buf), p, old, old[:2] + (target,) + old[3:], "t")
    assert buf[p.l4_offset + 6:p.l4_offset + 8] == b"\xff\xff"
    assert frames_valid(bytes(buf))["udp"] is True


def test_tcp_flags_keep_the_ns_bit():
    frame = tcp_frame(INSIDE_HOST, 1, REMOTE, 2, 0x02, ns=True)
    p = parse_frame(1, frame, len(frame))
    old = view_fields(p, False, len(frame))
    buf = bytearray(frame)
    write_fields(buf, 0, len(buf), p, old, old[:5] + (0x11,) + old[6:], "t")
    assert buf[p.l4_offset + 12] & 1 and buf[p.l4_offset + 13] == 0x11
    assert parse_frame(1, bytes(buf), len(buf)).tcp_flags == 0x111 and frames_valid(bytes(buf))["tcp"]


def test_write_back_of_packets_and_unchanged_outputs():
    frame = tcp_frame(INSIDE_HOST, 1, REMOTE, 2, 0x10)
    p = parse_frame(1, frame, len(frame))
    old = view(p, True, len(frame))
    buf = bytearray(frame)
    write_back(buf, p, old, old.rewrite(inbound=False, label=77), "t")  # not frame fields
    assert bytes(buf) == frame
    write_back(buf, p, old, old.rewrite(dst=a("192.0.2.1"), dport=8080), "t")
    assert view(parse_frame(1, bytes(buf), len(buf)), True, len(buf)) == old.rewrite(dst=a("192.0.2.1"), dport=8080)
    # in place in a larger buffer (a batch's data), and through a memoryview of the frame alone
    big = bytearray(b"x" * 5 + frame + b"y" * 3)
    write_back(big, p, old, old.rewrite(sport=9), "t", base=5, caplen=len(frame))
    assert big[:5] == b"x" * 5 and big[-3:] == b"y" * 3
    assert view(parse_frame(1, bytes(big[5:-3]), len(frame)), True, len(frame)) == old.rewrite(sport=9)
    mv = memoryview(big)[5:5 + len(frame)]
    write_back(mv, p, old.rewrite(sport=9), old.rewrite(sport=10), "t")
    assert view(parse_frame(1, bytes(big[5:-3]), len(frame)), True, len(frame)) == old.rewrite(sport=10)


REFUSED = [
    (lambda f: f.rewrite(proto=17), tcp_frame(INSIDE_HOST, 1, REMOTE, 2), "`proto` from 6 to 17"),
    (lambda f: f.rewrite(length=1), tcp_frame(INSIDE_HOST, 1, REMOTE, 2), "`length`"),
    (lambda f: f.rewrite(flags=1), udp_frame(INSIDE_HOST, 1, REMOTE, 2), "only TCP carries flags"),
    (lambda f: f.rewrite(sport=5), eth(ipv4(47, INSIDE_HOST, REMOTE, b"\0" * 8)), "has no ports"),
    (lambda f: f.rewrite(dport=5), eth(ipv4(1, INSIDE_HOST, REMOTE, echo(8, 9))), "its dport is always 0"),
    (lambda f: f.rewrite(sport=5), eth(ipv4(1, INSIDE_HOST, REMOTE, echo(0, 9))), "its sport is always 0"),
    (lambda f: f.rewrite(sport=5), eth(ipv4(1, REMOTE, INSIDE_HOST, icmp(9))), "has no ports"),
    (lambda f: f.rewrite(flags=2), icmp_error(REMOTE, INSIDE_HOST, ipv4(6, INSIDE_HOST, REMOTE, tcp(
        INSIDE_HOST, REMOTE, 1, 2, 2))), "only TCP carries flags"),
    (lambda f: f.rewrite(sport=5), icmp_error(ROUTER, INSIDE_HOST, ipv4(1, INSIDE_HOST, REMOTE, echo(8, 9))),
     "quoted identifier in dport only"),
]


@pytest.mark.parametrize("change,frame,message", REFUSED, ids=[m for _, _, m in REFUSED])
def test_changes_a_frame_cannot_carry_are_frame_errors(change, frame, message):
    p = parse_frame(1, frame, len(frame))
    old = view(p, False, len(frame))
    buf = bytearray(frame)
    new = change(old).rewrite(src=old.src ^ 1)  # with a change it can carry: nothing is written at all
    with pytest.raises(FrameError, match="^nat#2: the output changes ") as e:
        write_back(buf, p, old, new, "nat#2")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ModelError) and bytes(buf) == frame
    field = str(e.value).split("`")[1]
    assert e.value.field == field and e.value.drop_reason("nat#2") == f"nat#2: cannot write {field} into the frame"


def test_the_first_refused_field_in_packet_field_order_is_named():
    frame = eth(ipv4(47, INSIDE_HOST, REMOTE, b"\0" * 8))
    p = parse_frame(1, frame, len(frame))
    old = view(p, False, len(frame))
    for change, field in ((dict(length=3, flags=1, dport=2, sport=1), "sport"), (dict(length=3, flags=1, dport=2), "dport"),
                          (dict(length=3, flags=1), "flags"), (dict(length=3), "length"),
                          (dict(length=3, proto=4, sport=1), "proto")):
        with pytest.raises(FrameError) as e:
            write_back(bytearray(frame), p, old, old.rewrite(**change), "x")
        assert e.value.field == field


# -- 3. sides -------------------------------------------------------------------------------------------
def test_parse_inside():
    assert parse_inside("10.0.0.0/8, fd00::/8") == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert parse_inside("10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7") == DEFAULT_INSIDE
    for bad, hint in (("10.0.0.1/8", "did you mean 10.0.0.0/8?"), ("10.0.0.0/33", "write CIDR networks"),
                      ("10.0.0.0/8,,", "''"), ("lan", "'lan'")):
        with pytest.raises(ValueError) as e:
            parse_inside(bad)
        text = str(e.value)
        assert text.startswith(f"--inside {bad}: ") and hint in text and "\n" not in text
        assert "e.g. --inside 10.0.0.0/8," in text


@pytest.mark.parametrize("name", ["E05_mixed_v4v6_80flows_ftpdata.pcap", "E02_http_49flows.pcap",
                                  "E14_vlan123_arp_icmp.pcap", "E10_dns_icmp.pcap"])
def test_sides_by_source_address(name):
    default, custom = Sides(), Sides(parse_inside("128.2.0.0/16,2001:db8::/32"))
    seen = set()
    for linktype, data, wirelen in records(name):
        p = parse_frame(linktype, data, wirelen)
        if p.ip_version:
            src = ipaddress.ip_address(p.src)
            seen.add(src.version)
            assert default.inbound(p) == (not any(src in n for n in DEFAULT_INSIDE))
            assert custom.inbound(p) == (not any(src in n for n in custom.networks))
        else:
            assert default.inbound(p) is False and custom.inbound(p) is False  # ARP, non-IP: from inside
    assert seen


def test_inbound_by_batch_side():
    frame = udp_frame(REMOTE, 1, INSIDE_HOST, 2)
    p = parse_frame(1, frame, len(frame))
    assert (inbound(p, 0), inbound(p, 1), inbound(p, 2)) == (False, True, True)
    assert inbound(p, 2, ("93.184.0.0/16",)) is False and inbound(p, 2, Sides(["0.0.0.0/0"])) is False


def test_an_icmp_error_is_classified_by_its_outer_source():
    sides = Sides()
    from_remote = icmp_error(REMOTE, INSIDE_HOST, ipv4(17, INSIDE_HOST, REMOTE, udp(INSIDE_HOST, REMOTE, 1, 2)))
    from_inside = icmp_error("10.1.1.1", REMOTE, ipv4(17, REMOTE, INSIDE_HOST, udp(REMOTE, INSIDE_HOST, 1, 2)))
    assert sides.inbound(parse_frame(1, from_remote, len(from_remote))) is True
    assert sides.inbound(parse_frame(1, from_inside, len(from_inside))) is False
