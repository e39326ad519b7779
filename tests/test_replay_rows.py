"""The replay reader's two implementations (verify/_fast.pyx, verify/replay_rows.py) read the same
rows and so the same recordings: every frame of every capture in tests/data (written into a trace
as inputs and outputs), generated failover runs of the bundled models, and traces that end in
corruption, carry other tools' blocks or a bad event (the fast reader hands those to the Python
one, whose errors must be the ones reported)."""
from __future__ import annotations

import os
import random
import struct

import pytest

from nfproof.traces.reader import open_capture
from nfproof.traces.record import Record
from nfproof.traces.trace import PEN, TraceEvent, TraceHeader, TracePacket, TraceWriter, read_trace
from nfproof.traces import parse_frame
from nfproof.verify import replay_rows
from nfproof.verify.replay_load import ReplayInputError, load_trace
from nfproof.verify import replay_stream
from nfproof.verify.replay_stream import check_trace

from replay_traces import EXT, HOST, REMOTE, Run, tcp, udp
from test_replay_agreement import UNIVERSES, random_run, write_trace

DATA = os.path.join(os.path.dirname(__file__), "data")
CAPTURES = sorted(f for f in os.listdir(DATA) if f.endswith((".pcap", ".pcapng")))
needs_fast = pytest.mark.skipif(replay_rows._fast is None, reason="verify/_fast.pyx not built (or NFPROOF_PUREPYTHON=1)")


def frames(path):
    try:
        with open_capture(path) as r:
            return [(x.linktype, x.data, x.wirelen, x.time_ns or 0) for x in r.items() if type(x) is Record]
    except Exception:   # a corrupt capture: the frames before the corruption
        out = []
        try:
            with open_capture(path) as r:
                for x in r.items():
                    if type(x) is Record:
                        out.append((x.linktype, x.data, x.wirelen, x.time_ns or 0))
        except Exception:
            pass
        return out


def rows(path, fast: bool):
    return list(replay_rows.Rows(read_trace(path), fast=fast))


def recording(path, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(replay_rows, "_fast", None)
        try:
            rec = load_trace(path)
        except ReplayInputError as e:
            return "error", str(e)
    return (rec.inputs, rec.outputs, rec.events, rec.t0_ns, rec.linktype, rec.annotated, rec.other_packets,
            rec.foreign_blocks)


def capture_trace(name: str, path) -> str:
    """Every frame of a capture as a plain `ingress` input (side by source address) and as an
    output on `egress:outside` naming it (frames of a second link type on interfaces of their own,
    counted as internal links)."""
    header = TraceHeader("nat", "none", {"params": ["nat.ports=64512"]})
    got = frames(os.path.join(DATA, name))
    first = got[0][0] if got else 1
    with TraceWriter(str(path), header) as w:
        for seq, (linktype, data, wirelen, t) in enumerate(got):
            own = linktype == first
            w.packet(TracePacket("ingress" if own else f"link{linktype}", t, data, seq=seq, wirelen=wirelen,
                                 linktype=linktype))
            w.packet(TracePacket("egress:outside" if own else f"link{linktype}-out", t, data, "nat", "out", seq, 0,
                                 wirelen, linktype))
    return str(path)


@needs_fast
@pytest.mark.parametrize("name", CAPTURES)
def test_every_frame_has_the_same_row(name):
    from nfproof.verify import _fast
    for linktype, data, wirelen, _ in frames(os.path.join(DATA, name)):
        for w in (wirelen, len(data), max(0, len(data) - 7)):
            assert _fast.frame_row(linktype, data, w) == replay_rows.model_row(parse_frame(linktype, data, w), w), \
                (name, linktype, data.hex(), w)


@needs_fast
@pytest.mark.parametrize("name", CAPTURES)
def test_captures_as_traces_read_the_same(name, tmp_path, monkeypatch):
    path = capture_trace(name, tmp_path / "t.pcapng")
    assert rows(path, True) == rows(path, False)
    assert recording(path, True, monkeypatch) == recording(path, False, monkeypatch)


@needs_fast
@pytest.mark.parametrize("name", sorted(UNIVERSES))
def test_generated_failover_runs_read_the_same(name, tmp_path, monkeypatch):
    rng = random.Random(f"rows-{name}")
    for k in range(8):
        _, run, stall = random_run(name, rng)
        path = str(tmp_path / f"r{k}.pcapng")
        write_trace(name, run, stall, path)
        fast, slow = recording(path, True, monkeypatch), recording(path, False, monkeypatch)
        assert fast == slow
        assert any(e.kind == "failover" for e in fast[2])
        assert replay_stream.scan_events(path) == replay_stream._scan_events(path) == fast[2]


def _run(path) -> str:
    r = Run("nat", ["nat.ports=4"])
    for k in range(20):
        s = r.input(tcp(HOST, 1000 + k, REMOTE, 80, "S"), k * 0.01)
        r.output(s, tcp(EXT, 1024 + k % 4, REMOTE, 80, "S"), "outside", "nat")
        if k == 9:
            r.crash(k * 0.01 + 0.001, "nat", "nat#standby", 0.002)
    r.input(udp(HOST, 5, REMOTE, 53), 1.0)
    return r.write(path)


@needs_fast
def test_corruption_and_foreign_blocks_are_read_by_the_python_reader(tmp_path, monkeypatch):
    good = _run(tmp_path / "good.pcapng")
    data = open(good, "rb").read()
    n_rows = len(rows(good, False))
    assert rows(good, True) == rows(good, False)
    # cut anywhere: the same rows, then the same error
    for cut in sorted({len(data) - 3, len(data) // 2, len(data) // 3 + 1, 400, len(data) - 40}):
        path = tmp_path / f"cut{cut}.pcapng"
        path.write_bytes(data[:cut])
        assert recording(str(path), True, monkeypatch) == recording(str(path), False, monkeypatch)
    # another tool's custom block under PEN 32473, one under another PEN, and our block with bad JSON
    def custom(pen, payload):
        body = struct.pack("<I", pen) + payload
        body += bytes(-len(body) % 4)
        return struct.pack("<II", 0xBAD, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    at = len(data) - 200
    while struct.unpack_from("<I", data, at)[0] != 6 and at > 0:   # the start of an EPB
        at -= 4
    for extra in (custom(PEN, b"XXXX other tool"), custom(12345, b"abc"),
                  custom(PEN, b"NFPT" + struct.pack("<BxxxI", 1, 5) + b"{bad}")):
        path = tmp_path / "extra.pcapng"
        path.write_bytes(data[:at] + extra + data[at:])
        a, b = recording(str(path), True, monkeypatch), recording(str(path), False, monkeypatch)
        assert a == b
        if a[0] != "error":
            assert len(rows(str(path), True)) == n_rows and a[-1] == 1
    # a packet without its annotation, in the middle
    path = tmp_path / "plain.pcapng"
    with TraceWriter(str(path), TraceHeader("nat", "none", {})) as w:
        w.packet(TracePacket("ingress", 1, b"\x00" * 60, seq=0))
        w._w.write_packet(0, 2, b"\x00" * 60)
        w.packet(TracePacket("ingress", 3, b"\x00" * 60, seq=1))
    a, b = recording(str(path), True, monkeypatch), recording(str(path), False, monkeypatch)
    assert a == b and a[0] == "error"


@needs_fast
def test_streamed_verdicts_on_both_readers(tmp_path, monkeypatch):
    path = _run(tmp_path / "t.pcapng")
    fast = check_trace(path)
    with monkeypatch.context() as m:
        m.setattr(replay_rows, "_fast", None)
        slow = check_trace(path)
    assert (fast.verdict, fast.stats["inputs"], fast.stats["outputs"]) == \
           (slow.verdict, slow.stats["inputs"], slow.stats["outputs"])
