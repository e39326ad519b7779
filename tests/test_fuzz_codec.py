"""Fuzzing the codec with Hypothesis: mutated pcap, pcapng and trace bytes raise nothing but
FormatError, and a truncated file yields exactly a prefix of its records. A bounded run here;
bench/fuzz_long.py runs the same properties for as long as asked."""
from __future__ import annotations

import io
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from nfproof.cmd_inspect import summarise
from nfproof.traces.errors import FormatError
from nfproof.traces.pcapng import NRB, OPB, PcapngWriter
from nfproof.traces.reader import open_capture
from nfproof.traces.trace import TraceEvent, TraceHeader, TracePacket, TraceWriter, read_trace

DATA = Path(__file__).parent / "data"
SEED_FILES = ["E17_nsec_sll_tcp_handshake.pcap", "E16_sll2_http.pcap", "E13_arp.pcap", "E14_vlan123_arp_icmp.pcap",
              "E18_bigendian_pptp.pcap", "E10_dns_icmp.pcap", "E24_empty.pcapng", "E23_empty.pcap"]


def _pcapng_seed() -> bytes:
    buf = io.BytesIO()
    w = PcapngWriter(buf, comments=["seed"])
    a = w.add_interface(1, 1500, name="eth0", tsresol=6)
    b = w.add_interface(101, 64, tsresol=0x80 | 16, tsoffset=3)
    frame = bytes(12) + b"\x08\x00" + bytes.fromhex("4500001c0001000040110000c0a80001c0a80002d431003500080000")
    w.write_packet(a, 10**15, frame, comments=["c"], options=[(2, b"\0\0\0\1")])
    w.write_packet(b, 5 * 10**9, frame[14:], custom=[(2989, 32473, b"x" * 5)])
    w.write_block(NRB, b"\0\0\0\0")
    w.write_custom(1, b"blob", copyable=False)
    w.new_section(big_endian=True)
    w.add_interface(113, 0)
    w.write_simple_packet(frame[:20], 80)
    w.write_block(OPB, struct.pack(">HHIIII", 0, 0, 0, 5, 4, 4) + b"abcd")
    return buf.getvalue()


def _trace_seed() -> bytes:
    buf = io.BytesIO()
    with TraceWriter(buf, TraceHeader("nat->fw", "stateful.commit:2", {"seed": 1})) as w:
        w.packet(TracePacket("ingress", 5, bytes(60), seq=0))
        w.event(TraceEvent("failure", 6, "nat#1", {"point": "mid-batch"}))
        w.packet(TracePacket("egress:wan", 7, bytes(60), "nat#2", "out", 0, 0, comment="c"))
    return buf.getvalue()


SEEDS = [(DATA / name).read_bytes() for name in SEED_FILES] + [_pcapng_seed()]
TRACE = _trace_seed()
INTERESTING = [0, 1, 3, 4, 7, 8, 11, 12, 15, 16, 27, 28, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFF, 0x0A0D0D0A, 0x1A2B3C4D, 0xA1B2C3D4]


def boundaries(data: bytes) -> list[int]:
    """Offsets of the file header, each record or block, and each header field: where lengths live."""
    out = [0]
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        pos, order = 0, "<"
        while pos + 12 <= len(data):
            if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
                order = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            out.append(pos)
            pos += max(struct.unpack_from(order + "I", data, pos + 4)[0], 12)
    elif len(data) >= 24:
        order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        pos = 24
        while pos + 16 <= len(data):
            out.append(pos)
            pos += 16 + struct.unpack_from(order + "I", data, pos + 8)[0]
    return [b + k for b in out for k in range(0, 32, 4)]


@st.composite
def mutate(draw, data: bytes) -> bytes:
    """A few edits, mostly on header fields: byte flips, interesting 16/32-bit values, cuts,
    deletions, insertions, duplicated chunks."""
    b = bytearray(data)
    fields = boundaries(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "u32", "u32", "u32", "u16", "cut", "delete", "insert", "dup"]))
        anywhere = st.integers(0, max(len(b) - 1, 0))
        pos = min(draw(st.sampled_from(fields) | anywhere) if op != "cut" else draw(anywhere), max(len(b) - 1, 0))
        if op == "flip" and b:
            b[pos] ^= draw(st.integers(1, 255))
        elif op in ("u32", "u16"):
            v = draw(st.sampled_from(INTERESTING)) & (0xFFFFFFFF if op == "u32" else 0xFFFF)
            b[pos:pos + (4 if op == "u32" else 2)] = struct.pack(
                draw(st.sampled_from("<>")) + ("I" if op == "u32" else "H"), v)
        elif op == "cut":
            del b[pos:]
        elif op == "delete":
            del b[pos:pos + draw(st.integers(1, 16))]
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "dup":
            b[pos:pos] = b[pos:pos + draw(st.integers(1, 64))]
    return bytes(b)


captures = st.sampled_from(SEEDS).flatmap(mutate)
traces = mutate(TRACE)


def read_capture(data: bytes) -> int:
    """Reads everything; only FormatError may escape."""
    n = 0
    try:
        with open_capture(io.BytesIO(data)) as r:
            for item in r.items():
                n += 1
    except FormatError:
        pass
    return n


def read_mutated_trace(data: bytes) -> int:
    n = 0
    try:
        with read_trace(io.BytesIO(data)) as t:
            for item in t:
                n += 1
    except FormatError:
        pass
    return n


def inspect_bytes(data: bytes) -> dict:
    s = summarise(io.BytesIO(data))
    assert all(isinstance(e, str) for e in s["errors"])
    return s


FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(captures)
def test_mutated_captures_raise_only_format_errors(data):
    read_capture(data)


@FUZZ
@given(traces)
def test_mutated_traces_raise_only_format_errors(data):
    read_mutated_trace(data)


@settings(max_examples=500, deadline=None)
@given(captures | traces)
def test_inspect_survives_mutations(data):
    inspect_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS + [TRACE]), st.data())
def test_truncation_yields_a_prefix(seed, data):
    full = list(open_capture(io.BytesIO(seed)).items())
    cut = data.draw(st.integers(0, len(seed)))
    got, error = [], None
    try:
        for item in open_capture(io.BytesIO(seed[:cut])).items():
            got.append(item)
    except FormatError as e:
        error = e
    assert got == full[:len(got)]
    if error is None and cut < len(seed):
        assert len(got) < len(full) or not full  # the cut fell on a boundary and lost the rest
    elif error is not None:
        assert error.offset is not None and error.offset <= cut
