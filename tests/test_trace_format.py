"""The trace format: exact round trips, what tshark makes of a trace, rejection of non-traces."""
from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from nfproof.traces.errors import FormatError
from nfproof.traces.pcapng import PcapngWriter
from nfproof.traces.trace import (PEN, TraceEvent, TraceHeader, TracePacket, TraceWriter, encode_block,
                                  read_trace)

names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False, allow_infinity=False)
    | names, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3), max_leaves=8)
fields = st.dictionaries(names, json_values, max_size=4)
interfaces = st.sampled_from(["ingress", "egress:wan", "egress:lan", "link:nat>fw"])
trace_packets = st.builds(
    TracePacket, interfaces, st.integers(0, (1 << 64) - 1), st.binary(max_size=64), names,
    st.sampled_from(["in", "out"]), st.none() | st.integers(0, (1 << 64) - 1), st.none() | st.integers(0, (1 << 32) - 2),
    st.none(), st.just(1), st.none() | names, st.none() | st.integers(0, 0xFFFF))
trace_events = st.builds(TraceEvent, st.sampled_from(["failure", "failover", "sync", "choice", "future-kind"]),
                         st.integers(-(1 << 63), 1 << 63), names, fields)
headers = st.builds(TraceHeader, names, names, fields)


def _write(header, items, big_endian=False) -> bytes:
    buf = io.BytesIO()
    with TraceWriter(buf, header, big_endian=big_endian) as w:
        for item in items:
            w.write(item)
    return buf.getvalue()


@settings(max_examples=150, deadline=None)
@given(headers, st.lists(trace_packets | trace_events, max_size=12), st.booleans())
def test_round_trip_is_exact(header, items, big_endian):
    data = _write(header, items, big_endian)
    with read_trace(io.BytesIO(data)) as trace:
        assert trace.header == header
        assert list(trace) == items


def test_packet_fields_and_interfaces():
    frame = bytes(range(60))
    items = [TracePacket("ingress", 10, frame, seq=0),
             TracePacket("egress:wan", 20, frame[:40], "nat#1", "out", 0, 0, wirelen=60, comment="held until ack"),
             TraceEvent("failure", 30, "nat#1", {"point": "after-release"}),
             TraceEvent("failover", 40, "nat#2", {"replica_seq": 0, "end_ns": 45}),
             TracePacket("egress:wan", 50, frame, "nat#2", "out", 1, 0, linktype=1),
             TracePacket("egress:wan", 60, frame, "csfq-edge", "out", 2, 0, label=0x1234)]
    trace = read_trace(io.BytesIO(_write(TraceHeader("nat", "stateful.async", {"seed": 7}), items)))
    got = list(trace)
    assert got == items
    assert got[1].wirelen == 60 and len(got[1].data) == 40 and got[1].seq == 0 and got[1].out_index == 0
    assert got[0].out_index is None and got[0].instance == "" and got[0].direction == "in"
    assert got[0].label is None and got[5].label == 0x1234
    assert sorted(trace.interfaces) == ["egress:wan", "ingress"]
    assert trace.interfaces["ingress"].tsresol == 9


def test_writer_validates():
    w = TraceWriter(io.BytesIO(), TraceHeader("c", "s"))
    with pytest.raises(ValueError, match="direction"):
        w.packet(TracePacket("ingress", 0, b"", direction="sideways"))
    with pytest.raises(ValueError, match="reserved"):
        w.event(TraceEvent("run", 0))
    with pytest.raises(ValueError, match="out of range"):
        w.packet(TracePacket("ingress", 0, b"", seq=-1))
    w.packet(TracePacket("ingress", 0, b"", linktype=101))
    with pytest.raises(ValueError, match="link type 101"):
        w.packet(TracePacket("ingress", 0, b"", linktype=1))
    with pytest.raises(ValueError, match="version"):
        TraceWriter(io.BytesIO(), TraceHeader("c", "s", version=2))


def _pcapng(build) -> io.BytesIO:
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    build(w)
    return io.BytesIO(buf.getvalue())


def test_plain_pcapng_is_not_a_trace():
    f = _pcapng(lambda w: w.write_packet(w.add_interface(1), 0, b"x"))
    with pytest.raises(FormatError, match="not an nfproof trace: no run header"):
        read_trace(f)


def test_newer_version_is_refused():
    f = _pcapng(lambda w: w.write_custom(PEN, encode_block({"kind": "run", "version": 2, "chain": "c",
                                                            "strategy": "s", "fields": {}})))
    with pytest.raises(FormatError, match="trace version 2 is newer"):
        read_trace(f)


def _with_header(w):
    w.write_custom(PEN, encode_block({"kind": "run", "version": 1, "chain": "c", "strategy": "s", "fields": {}}))


@pytest.mark.parametrize("extra,reason", [
    (lambda w: w.write_packet(w.add_interface(1, name="ingress"), 0, b"x"), "packet 1: lacks"),
    (lambda w: w.write_packet(w.add_interface(1), 0, b"x", custom=[(2989, PEN, bytes(16))]), "packet 1: lacks"),
    (lambda w: w.write_packet(w.add_interface(1, name="ingress"), 0, b"x", custom=[(2989, PEN, b"\1")]),
     "annotation of 1 bytes"),
    (_with_header, "a second run header"),
    (lambda w: w.write_custom(PEN, b"NFPT\1\0\0\0\xff\0\0\0{}"), "claims 255 bytes of JSON"),
    (lambda w: w.write_custom(PEN, encode_block({"kind": "failure", "time_ns": "soon"})), "integer 'time_ns'"),
])
def test_malformed_trace_content(extra, reason):
    def build(w):
        _with_header(w)
        extra(w)
    trace = read_trace(_pcapng(build))
    with pytest.raises(FormatError, match=reason):
        list(trace)


def test_foreign_custom_blocks_are_ignored():
    def build(w):
        _with_header(w)
        w.write_custom(12345, b"someone else's")
    assert list(read_trace(_pcapng(build))) == []


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (apt-get install tshark)")
def test_tshark_reads_a_trace(tmp_path):
    path = tmp_path / "run.pcapng"
    frame = bytes.fromhex("ffffffffffff0200000000010800") + bytes.fromhex(
        "4500001c0001000040110000c0a80001c0a80002") + bytes.fromhex("d431003500080000")
    items = [TracePacket("ingress", 1_700_000_000_000_000_001, frame, seq=0),
             TraceEvent("failure", 1_700_000_000_000_000_002, "nat#1"),
             TracePacket("egress:wan", 1_700_000_000_000_000_003, frame, "nat#2", "out", 0, 0, comment="after failover")]
    path.write_bytes(_write(TraceHeader("nat", "stateful.sync"), items))
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name",
                          "-e", "frame.comment", "-e", "udp.dstport"], capture_output=True, text=True, timeout=60)
    errors = [line for line in out.stderr.splitlines() if "dangerous" not in line]
    assert out.returncode == 0 and errors == []
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    # tshark lists the run header and the event (custom blocks) as frames too
    assert len(rows) == 4
    assert ["ingress", "", "53"] in rows and ["egress:wan", "after failover", "53"] in rows
