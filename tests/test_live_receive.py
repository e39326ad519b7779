"""The two receive paths of a live interface (runtime/ports.py InterfaceSource): fast.FrameReceiver
(recvmmsg, many frames per system call) and `receive_each` (a recvfrom per frame) read the same
frames, in the same order, with the same lengths and sides, skipping frames the host sent, and stop
at --count alike. On veth pairs in a network namespace the test creates. Needs root, `ip` and the
built fast path (else skipped)."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("nfproof.runtime.fast")

from netns import sh, veth_namespace


@pytest.fixture
def netns():
    with veth_namespace("nfproof-recv", mtu=9000) as ns:
        yield ns


# Frames of 60..9014 bytes into vi1 and vo1 (so arriving on vi0 and vo0), and frames sent from vi0
# itself (this host's: skipped); then both sources read everything with receive(7) (time: when read).
BOTH_PATHS = """
import json, random, socket, sys, time
from nfproof.runtime import fast
from nfproof.runtime.ports import InterfaceSource, _enlarge_receive_buffer, receive_each
count = int(sys.argv[1])
rng = random.Random(6)
def frame(n):
    return b"\\xff" * 6 + bytes(rng.getrandbits(8) for _ in range(6)) + b"\\x88\\xb5" + rng.randbytes(n - 14)
ports = {"inside": "vi0", "outside": "vo0"}
batched, each = InterfaceSource(ports, count=count, idle=0.2), InterfaceSource(ports, count=count, idle=0.2)
batched.receiver, each.receiver = fast.FrameReceiver(4), None  # (4: a call of 7 takes two recvmmsg)
senders = {}
for name in ("vi1", "vo1", "vi0"):
    senders[name] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    senders[name].bind((name, 0))
# the plain sockets' view, without PACKET_IGNORE_OUTGOING: the receivers' own filter must skip vi0's
raw = [socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)) for _ in range(2)]
for s in raw:
    s.bind(("vi0", 3)); s.setblocking(False); _enlarge_receive_buffer(s)
sent = []
for k in range(300):
    name = rng.choice(("vi1", "vi1", "vo1", "vi0"))
    f = frame(rng.choice((60, 64, 1514, rng.randrange(60, 9015))))
    senders[name].send(f)
    if name != "vi0":
        sent.append((f.hex(), len(f), 0 if name == "vi1" else 1))
time.sleep(0.3)
t1 = time.time_ns()  # all queued: both read times after this
def drain(source):
    got, times = [], []
    while batch := source.receive(7):
        assert 1 <= len(batch) <= 7
        got += [(f[0].hex(), f[1], f[3]) for f in batch]
        times += [f[2] for f in batch]
    return got, times
got_batched, times_batched = drain(batched)
got_each, times_each = drain(each)
t2 = time.time_ns()
raw_batched, raw_each = [], []
fast.FrameReceiver(16).receive(raw[0].fileno(), 0, 10 ** 6, raw_batched)
receive_each(raw[1], 0, 10 ** 6, raw_each)
print(json.dumps({"sent": sent, "batched": got_batched, "each": got_each,
                  "times_ok": [all(t1 <= t <= t2 for t in ts) and ts == sorted(ts)
                               for ts in (times_batched, times_each)],
                  "counts": [batched.received, each.received, batched.bytes, each.bytes],
                  "raw_batched": [f[0].hex() for f in raw_batched], "raw_each": [f[0].hex() for f in raw_each]}))
"""


def test_batched_and_per_frame_receive_read_the_same_frames(netns):
    done = sh(*netns, sys.executable, "-c", BOTH_PATHS, "1000000")
    r = json.loads(done.stdout)
    sent = [tuple(f) for f in r["sent"]]
    assert 150 < len(sent) < 300  # some were sent from vi0 itself
    assert [tuple(f) for f in r["batched"]] == [tuple(f) for f in r["each"]]
    # every frame, each side's in the order sent (a call reads the inside socket first)
    for side in (0, 1):
        assert [f for f in map(tuple, r["batched"]) if f[2] == side] == [f for f in sent if f[2] == side]
    assert r["times_ok"] == [True, True]
    total = sum(f[1] for f in sent)
    assert r["counts"] == [len(sent), len(sent), total, total]
    inside = [f[0] for f in sent if f[2] == 0]
    assert r["raw_batched"] == r["raw_each"] == inside  # vi0's own frames skipped by both


def test_both_paths_stop_at_the_count(netns):
    r = json.loads(sh(*netns, sys.executable, "-c", BOTH_PATHS, "101").stdout)
    assert len(r["batched"]) == len(r["each"]) == 101
    assert r["batched"] == r["each"]
    assert r["counts"][:2] == [101, 101]
