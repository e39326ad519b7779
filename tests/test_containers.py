"""pcap and pcapng readers and writers: round trips, every block kind, errors with offsets."""
from __future__ import annotations

import io
import struct
import tracemalloc

import pytest
from hypothesis import given, strategies as st

from nfproof.traces.errors import FormatError
from nfproof.traces.pcap import PcapReader, PcapWriter
from nfproof.traces.pcapng import EPB, NRB, OPB, PcapngReader, PcapngWriter
from nfproof.traces.reader import open_capture, read_records
from nfproof.traces.record import CustomBlock, Record

packets = st.lists(st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, 999_999_999), st.binary(max_size=80),
                             st.integers(0, 200)), max_size=8)


def _read_all(data: bytes, path="mem"):
    f = io.BytesIO(data)
    f.name = path
    return list(read_records(f))


@given(packets, st.booleans(), st.booleans(), st.sampled_from([0, 1, 101, 113, 276]))
def test_pcap_round_trip(pkts, ns, big, linktype):
    buf = io.BytesIO()
    with PcapWriter(buf, linktype, 65535, nanosecond=ns, big_endian=big) as w:
        for sec, frac, data, extra in pkts:
            w.write(sec * 10**9 + frac, data, len(data) + extra)
    r = open_capture(io.BytesIO(buf.getvalue()))
    assert r.details == {"format": "pcap", "byte_order": "big" if big else "little",
                         "resolution": "ns" if ns else "us", "version": "2.4", "snaplen": 65535}
    got = list(r)
    assert [(x.time_ns, x.data, x.wirelen, x.linktype, x.interface) for x in got] == [
        (sec * 10**9 + (frac if ns else frac // 1000 * 1000), data, len(data) + extra, linktype, 0)
        for sec, frac, data, extra in pkts]


def _pcap(records, version=(2, 4), snaplen=65535) -> bytes:
    buf = io.BytesIO()
    w = PcapWriter(buf, 1, snaplen, version=version)
    for i, data in enumerate(records):
        w.write(i * 1000, data)
    return buf.getvalue()


@pytest.mark.parametrize("major,word", [(1, "archaic"), (3, "unsupported")])
def test_pcap_rejects_other_major_versions(major, word):
    with pytest.raises(FormatError) as e:
        _read_all(_pcap([b"x"], version=(major, 4)))
    assert e.value.offset == 4 and word in e.value.reason and f"{major}.4" in e.value.reason


def test_pcap_error_keeps_records_before_fault():
    good = _pcap([b"a" * 10, b"b" * 20])
    bad = good + struct.pack("<IIII", 0, 0, 3_925_868_813, 60) + b"z" * 40
    r = open_capture(io.BytesIO(bad))
    seen = []
    with pytest.raises(FormatError) as e:
        for rec in r:
            seen.append(rec.data)
    assert seen == [b"a" * 10, b"b" * 20]
    assert e.value.offset == len(good)
    assert e.value.reason == "record 3 claims 3925868813 bytes, 40 remain"
    assert str(e.value) == f"<stream>: offset {len(good)}: record 3 claims 3925868813 bytes, 40 remain"


@pytest.mark.parametrize("cut", [1, 15, 16 + 5])
def test_pcap_truncated_last_record(cut):
    data = _pcap([b"a" * 10, b"b" * 30])
    second = 24 + 16 + 10
    with pytest.raises(FormatError) as e:
        _read_all(data[:second + cut])
    assert e.value.offset == second and "record 2" in e.value.reason


class _Pipe(io.RawIOBase):
    """A non-seekable stream, like a pipe."""

    def __init__(self, data):
        self._b = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self._b.readinto(b)


def test_huge_claim_on_unseekable_stream_is_refused_without_allocating():
    data = _pcap([b"a"]) + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 60) + b"z" * 100
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as e:
            list(read_records(io.BufferedReader(_Pipe(data))))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "record 2 claims 4294967280 bytes, more than the maximum" in e.value.reason
    assert peak < 1 << 20


def test_pcap_over_unseekable_stream_reads_all():
    recs = list(read_records(io.BufferedReader(_Pipe(_pcap([b"a", b"bb", b"ccc"])))))
    assert [r.data for r in recs] == [b"a", b"bb", b"ccc"]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_streaming_memory_is_flat(tmp_path, fmt):
    path = tmp_path / f"big.{fmt}"
    frame = bytes(range(256)) * 5
    if fmt == "pcap":
        with PcapWriter(str(path)) as w:
            for i in range(20_000):
                w.write(i, frame)
    else:
        with PcapngWriter(str(path)) as w:
            iface = w.add_interface(1)
            for i in range(20_000):
                w.write_packet(iface, i, frame)
    assert path.stat().st_size > 25_000_000
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_records(str(path)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 20_000 and peak < 1 << 20


def _multi_section() -> bytes:
    buf = io.BytesIO()
    w = PcapngWriter(buf, comments=["first"], hardware="hw", os="linux", userappl="test")
    eth = w.add_interface(1, 1500, name="eth0", tsresol=6, comments=["uplink"])
    raw = w.add_interface(101, 0, name="tun0", description="raw ip", tsresol=0x80 | 20)
    w.write_packet(eth, 1_500_000_123_456_000, b"\x01" * 14, 64, comments=["c1", "c2"], options=[(2, b"\0\0\0\1")])
    w.write_packet(raw, 2_000_000_000, b"\x45" * 20, custom=[(2989, 32473, b"ann")])
    w.write_block(NRB, b"\0\0\0\0")  # name resolution block: skipped
    w.write_block(0x12345678, b"unknown!")  # unknown block: skipped
    w.write_custom(32473, b"blob", copyable=True)
    w.write_custom(99, b"local", copyable=False)
    w.new_section(big_endian=True)
    sll = w.add_interface(113, 262144, tsresol=9, tsoffset=100)
    w.write_packet(sll, 100_000_000_000 + 7, b"\x00" * 16)
    w.write_simple_packet(b"\x00" * 16, 30)
    w.write_block(OPB, struct.pack(">HHIIII", sll, 0, 0, 5, 4, 4) + b"abcd")
    return buf.getvalue()


def test_pcapng_sections_interfaces_and_block_kinds():
    r = open_capture(io.BytesIO(_multi_section()))
    items = list(r.items())
    recs = [x for x in items if isinstance(x, Record)]
    assert [(x.interface, x.linktype, x.time_ns, x.caplen, x.wirelen) for x in recs] == [
        (0, 1, 1_500_000_123_456_000, 14, 64),
        (1, 101, 2_000_000_000, 20, 20),  # 2^-20 resolution: 2 s is exact
        (2, 113, 100_000_000_007, 16, 16),  # ns resolution plus if_tsoffset 100 s
        (2, 113, None, 16, 30),  # SPB: no timestamp, captured bytes present
        (2, 113, 100_000_000_005, 4, 4),  # OPB
    ]
    assert recs[0].comments == ("c1", "c2") and recs[0].options == ((2, b"\0\0\0\1"),)
    assert recs[1].custom == ((2989, 32473, b"ann"),)
    assert [(c.pen, c.data, c.copyable) for c in items if isinstance(c, CustomBlock)] == [
        (32473, b"blob", True), (99, b"local\0\0\0", False)]
    assert [i.name for i in r.interfaces] == ["eth0", "tun0", None]
    assert r.interfaces[0].comments == ("uplink",) and r.interfaces[1].description == "raw ip"
    assert r.details["sections"] == [
        {"byte_order": "little", "version": "1.0", "interfaces": [0, 1], "comments": ["first"],
         "hardware": "hw", "os": "linux", "application": "test"},
        {"byte_order": "big", "version": "1.0", "interfaces": [2], "comments": []}]
    assert r.count == 5


@pytest.mark.parametrize("tsresol,units_per_s", [(6, 10**6), (9, 10**9), (3, 10**3), (0x80 | 10, 1024), (12, 10**12)])
def test_pcapng_timestamp_resolutions(tsresol, units_per_s):
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(1, tsresol=tsresol)
    units = 3 * units_per_s + 1  # 3 s plus one unit
    w.write_block(EPB, struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, 0, 0))
    (rec,) = _read_all(buf.getvalue())
    assert rec.time_ns == 3 * 10**9 + 10**9 // units_per_s


def _corrupt(mutate) -> tuple[bytes, int]:
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(1)
    w.write_packet(0, 1, b"good")
    at = buf.tell()
    mutate(w)
    return buf.getvalue(), at


@pytest.mark.parametrize("mutate,reason", [
    (lambda w: w.write_block(EPB, struct.pack("<IIIII", 3, 0, 0, 0, 0)), "refers to interface 3, the section has 1"),
    (lambda w: w.f.write(struct.pack("<III", EPB, 14, 14)), "invalid length 14"),
    (lambda w: w.f.write(struct.pack("<II", EPB, 16) + b"abcd" + struct.pack("<I", 20)), "length 16 in header, 20 in trailer"),
    (lambda w: w.f.write(struct.pack("<II", EPB, 4096) + b"\0" * 8), "claims 4096 bytes, 16 remain"),
    (lambda w: w.f.write(b"\x06\0\0"), "header truncated: 3 of 8 bytes"),
    (lambda w: w.write_block(EPB, struct.pack("<IIIII", 0, 0, 0, 9, 9) + b"abcd"), "captured length 9 exceeds the 4 bytes"),
    (lambda w: w.write_block(EPB, struct.pack("<IIIII", 0, 0, 0, 0, 0) + struct.pack("<HH", 1, 200)), "option 1 of length 200 overruns"),
    (lambda w: w.write_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)), "pcapng version 2.0 is not supported"),
])
def test_pcapng_errors_name_offset_and_reason(mutate, reason):
    data, at = _corrupt(mutate)
    r = open_capture(io.BytesIO(data))
    seen = []
    with pytest.raises(FormatError) as e:
        for rec in r:
            seen.append(rec.data)
    assert seen == [b"good"]
    assert e.value.offset == at and reason in e.value.reason


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"), (b"GIF89a....", "unknown magic 47494638"), (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated: 6 of 24"),
    (b"\x0a\x0d\x0d\x0a\x1c\0\0\0\x11\x22\x33\x44", "bad byte-order magic"),
    (struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 2, 0, -1, 28), "block 1 (SHB): pcapng version 2.0 is not"),
])
def test_not_a_capture(data, reason):
    with pytest.raises(FormatError) as e:
        _read_all(data)
    assert reason in e.value.reason and e.value.offset == 0


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError) as e:
        open_capture(tmp_path / "nope.pcap")
    assert e.value.offset is None and str(e.value) == f"{tmp_path / 'nope.pcap'}: cannot open: No such file or directory"


def test_writer_refuses_undeclared_interface():
    with pytest.raises(ValueError, match="interface 0 is not declared"):
        PcapngWriter(io.BytesIO()).write_packet(0, 1, b"x")


def test_pcapng_reader_requires_section_header():
    buf = io.BytesIO()
    PcapngWriter(buf).add_interface(1)
    with pytest.raises(FormatError, match="does not start with a section header"):
        PcapngReader(io.BytesIO(buf.getvalue()[28:]))


def test_readers_work_on_paths_and_close(tmp_path):
    path = tmp_path / "x.pcapng"
    with PcapngWriter(str(path)) as w:
        w.write_packet(w.add_interface(1), 5, b"abc")
    with open_capture(str(path)) as r:
        assert isinstance(r, PcapngReader) and [x.data for x in r] == [b"abc"]
    assert r.src.f.closed
    p2 = tmp_path / "x.pcap"
    with PcapWriter(str(p2)) as w:
        w.write(5000, b"abc")
    with open_capture(p2) as r:
        assert isinstance(r, PcapReader) and [x.time_ns for x in r] == [5000]
