"""The Cython fast path (runtime/fast.pyx `Pipeline`) against its pure-Python twin (runtime/pure.py)
byte for byte: outputs (input, egress, instance, label, copy flag, frame bytes), drops (input,
reason text) and every instance's state, on every capture and on random traffic that talks back
(replies to what the chain released, ICMP errors quoting it, frames outside the model, frames the
runtime drops), through every bundled NF and chains of them, with several seeds and batch sizes;
results never depend on the batch size or the look-ahead distance. Plus what only the fast path has
(the parse-only baseline, the benchmark)."""
from __future__ import annotations

import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

fast = pytest.importorskip("nfproof.runtime.fast", reason="Cython extension not built")

from nfproof.models import lookup
from nfproof.models.api import NF, Packet
from nfproof.models.chain import Chain
from nfproof.models.nat import Nat
from nfproof.runtime import pure
from nfproof.runtime.batch import Batch
from nfproof.runtime.frames import NotBundled
from nfproof.traces.errors import FormatError
from nfproof.traces.headers import parse_frame
from nfproof.traces.reader import read_records

from captures import all_captures
from frames_gen import checksum, echo, eth, icmp_error, ipv4, pad64, tcp, udp
from test_runtime_pure import NS, Traffic

BENCH = Path(__file__).resolve().parents[1] / "bench" / "runtime.py"
CHAINS = ["nat[ports=64512]", "firewall", "lb", "lb-hash", "ratelimit", "monitor", "csfq-edge", "csfq-core[fair=1]",
          "firewall>nat[ports=64512]>lb", "monitor>nat[ports=64512]", "csfq-edge>csfq-core[fair=1]"]
MORE_CHAINS = ["nat", "nat[ports=64]", "firewall[timeout=2,udp_timeout=1]>lb[backends=5]", "lb-hash[backends=3]",
               "ratelimit[capacity=3,rate=2]", "monitor[threshold=1,byte_threshold=300]>nat>monitor",
               "csfq-edge[window=1]>csfq-core[fair=1,levels=8]", "monitor>csfq-edge>csfq-core>ratelimit", "nat>nat"]
CAPTURE_FRAMES = 4000  # per capture (the stress capture is long)


def chain(text: str) -> Chain:
    return Chain.parse(text, lookup)


def records(path):
    """(linktype, frame, wirelen, time_ns) of a capture's records of its first link type."""
    out = []
    try:
        for r in read_records(path):
            if out and r.linktype != out[0][0]:
                continue
            out.append((r.linktype, r.data, r.wirelen, r.time_ns))
            if len(out) == CAPTURE_FRAMES:
                break
    except FormatError:
        pass
    return out


def fill(batch: Batch, inputs) -> None:
    """inputs: (frame, wirelen, t_ns, side); times made non-decreasing as the executor does."""
    batch.clear()
    for frame, wirelen, t, side in inputs:
        batch.add(frame, wirelen, t, side)


def results(pipeline, batch: Batch, base: int = 0):
    outs = [(base + i, pipeline.egresses[e], pipeline.instances[k], label, int(batch.out_copy[j]), frame)
            for j, (i, e, k, label, frame) in enumerate(batch.outputs())]
    return outs, [(base + i, pipeline.reasons[r]) for i, r in batch.drops()]


def run(cls, text: str, inputs, seed: int, batch_size: int, linktype: int = 1, inside=None, **kwargs):
    """Outputs, drops and states of a fresh pipeline over `inputs` in batches of `batch_size`."""
    p = cls(chain(text), seed, linktype, inside, **kwargs)
    outs, drops = [], []
    batch = Batch(batch_size)
    for start in range(0, len(inputs), batch_size):
        fill(batch, inputs[start:start + batch_size])
        p.process(batch)
        o, d = results(p, batch, start)
        outs += o
        drops += d
    return outs, drops, {name: p.state(name) for name in p.instances}


def timed(recs):
    """Capture records as inputs: relative, non-decreasing times; sides by address."""
    inputs, last, t0 = [], None, None
    for _, frame, wirelen, t in recs:
        t = last if t is None or (last is not None and t < last) else t
        t = 0 if t is None else t
        t0 = t if t0 is None else t0
        last = t
        inputs.append((frame, wirelen, t - t0, 2))
    return inputs


def assert_same(a, b, what=""):
    for name, x, y in zip(("outputs", "drops", "state"), a, b):
        if x != y:
            if name == "state":
                diff = {k: [d for d in x[k] if x[k][d] != y[k][d]] for k in x if x[k] != y[k]}
                pytest.fail(f"{what}: state differs in {diff}")
            first = next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            pytest.fail(f"{what}: {name} differ first at #{first} of {len(x)}/{len(y)}: "
                        f"fast {x[first] if first < len(x) else None}, pure {y[first] if first < len(y) else None}")


# -- every capture, every bundled NF ------------------------------------------------------------------
CAPTURES = [p for p in all_captures() if records(p)]


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_captures_through_every_bundled_nf_and_chain(path):
    recs = records(path)
    inputs, linktype = timed(recs), recs[0][0]
    for k, text in enumerate(CHAINS):
        seed = 3 + k
        assert_same(run(fast.Pipeline, text, inputs, seed, 32, linktype),
                    run(pure.Pipeline, text, inputs, seed, 32, linktype), f"{path.name} {text}")


@pytest.mark.parametrize("linktype", [101, 228, 12])
def test_raw_ip_link_types(linktype):
    """Frames without a link header (raw IP): the capture's frames with their Ethernet header cut."""
    path = next(p for p in CAPTURES if p.name.startswith("E02"))
    inputs = [(frame[14:], wirelen - 14, t, side) for frame, wirelen, t, side in timed(records(path))
              if frame[12:14] == b"\x08\x00"]
    for text in ("nat[ports=64512]", "firewall>nat[ports=64512]>lb", "monitor[threshold=2]>nat"):
        assert_same(run(fast.Pipeline, text, inputs, 5, 32, linktype), run(pure.Pipeline, text, inputs, 5, 32, linktype),
                    f"linktype {linktype} {text}")


@pytest.mark.parametrize("inside", [("128.2.6.136/32",), ("192.168.0.0/16", "2001:db8::/32"), ()])
def test_sides_by_other_inside_networks(inside):
    for path in CAPTURES[:10]:
        recs = records(path)
        for text in ("firewall>nat[ports=64512]>lb", "ratelimit"):
            assert_same(run(fast.Pipeline, text, timed(recs), 2, 32, recs[0][0], inside),
                        run(pure.Pipeline, text, timed(recs), 2, 32, recs[0][0], inside), f"{path.name} {inside}")


def test_captures_exercise_the_nfs():
    """The captures do reach the interesting paths (else the test above proves little)."""
    reasons, changed, copies = set(), 0, 0
    for path in CAPTURES:
        recs = records(path)
        inputs = timed(recs)
        for text in ("firewall>nat[ports=64512]>lb", "monitor>nat[ports=64512]", "csfq-edge>csfq-core[fair=1]"):
            outs, drops, _ = run(fast.Pipeline, text, inputs, 1, 32, recs[0][0])
            reasons |= {r for _, r in drops}
            changed += sum(1 for i, _, _, _, _, frame in outs if frame != inputs[i][0])
            copies += sum(1 for o in outs if o[4])
    assert changed > 1000 and copies > 100
    assert {"nat: no mapping", "firewall: no connection", "csfq-core: over the fair share", "ipv4 fragment",
            "nat: cannot write sport into the frame"} <= reasons, reasons


# -- traffic that talks back ----------------------------------------------------------------------------
def talk(text: str, n: int, seed: int, sizes=(1, 3, 32, 100), start_ns: int = 0, **traffic):
    """n inputs of Traffic (tests/test_runtime_pure.py) answering what the fast pipeline released,
    in batches of random sizes from `sizes`, through fast and pure side by side: every batch's
    results and, every few batches, the states must be equal."""
    rng = random.Random(seed)
    gen = Traffic(random.Random(seed), **traffic)
    gen.t = start_ns
    ch = chain(text)
    f, p = fast.Pipeline(ch, seed), pure.Pipeline(chain(text), seed)
    done = k = 0
    while done < n:
        inputs = [gen.next() for _ in range(rng.choice(sizes))]
        bf, bp = Batch(len(inputs)), Batch(len(inputs))
        fill(bf, inputs)
        fill(bp, inputs)
        f.process(bf)
        p.process(bp)
        got, want = results(f, bf, done), results(p, bp, done)
        assert got == want, f"{text} seed {seed}, inputs {done}..: {got} != {want}"
        gen.saw([(egress, frame, None) for _, egress, _, _, _, frame in got[0]])
        done += len(inputs)
        k += 1
        if k % 5 == 0:
            assert {name: f.state(name) for name in f.instances} == {name: p.state(name) for name in p.instances}
    assert {name: f.state(name) for name in f.instances} == {name: p.state(name) for name in p.instances}
    return f, p


@pytest.mark.parametrize("text", CHAINS + MORE_CHAINS)
def test_random_traffic_that_talks_back(text):
    for seed in (1, 2):
        talk(text, 600, seed)


@pytest.mark.parametrize("text", ["firewall>nat>lb", "ratelimit[capacity=3,rate=2]", "csfq-edge>csfq-core[fair=1]",
                                  "firewall[timeout=2,udp_timeout=1]"])
def test_times_past_two_to_the_32_ticks_wrap_as_the_models_maps_do(text):
    """Stored times are Bits(32): a run crossing 2^32 seconds wraps them (the clock itself does not)."""
    talk(text, 400, 5, start_ns=((1 << 32) - 40) * NS)


def test_a_nearly_full_pool_draws_then_scans_then_is_exhausted():
    f, _ = talk("nat[ports=64]", 1500, 9, ports=list(range(1000, 1100)))
    assert len(f.state("nat")["by_port"]) == 64
    assert "nat: pool exhausted" in f.reasons


def test_results_do_not_depend_on_batch_size_or_look_ahead():
    recs = records(next(p for p in CAPTURES if p.name.startswith("E06")))
    inputs = timed(recs)[:1500]
    gen = Traffic(random.Random(4))
    inputs += [gen.next() for _ in range(500)]
    for text in ("firewall>nat[ports=64512]>lb", "monitor[threshold=1]>nat"):
        want = run(fast.Pipeline, text, inputs, 11, len(inputs))
        for size, ahead in ((1, 32), (7, 3), (32, 1), (100, 64), (len(inputs), 8)):
            assert run(fast.Pipeline, text, inputs, 11, size, ahead=ahead) == want, (text, size, ahead)
        assert run(pure.Pipeline, text, inputs, 11, 13) == want


# -- random frames --------------------------------------------------------------------------------------
def seed_frames():
    frames = [pad64(eth(tcp("10.0.0.1", 1000, "198.51.100.1", 80, 0x02))),
              eth(udp("10.0.0.2", 53, "93.184.216.34", 53, b"q" * 20)),
              eth(ipv4(1, "10.0.0.1", "93.184.216.34", echo("10.0.0.1", "93.184.216.34", 7)[20:])),
              eth(tcp("198.51.100.7", 80, "203.0.113.1", 1024, 0x12), vlans=(5, 7)),
              eth(icmp_error("198.18.0.1", "203.0.113.1", tcp("203.0.113.1", 1024, "198.51.100.7", 80, 0x02), 11, 0)),
              eth(icmp_error("198.51.100.7", "203.0.113.1", udp("203.0.113.1", 1025, "198.51.100.7", 53), quote=40)),
              eth(icmp_error("198.51.100.7", "203.0.113.1", echo("203.0.113.1", "198.51.100.7", 1026))),
              eth(ipv4(47, "10.0.0.3", "93.184.216.34", b"\0\0\x08\0gre!")),
              eth(ipv4(17, "10.0.0.3", "93.184.216.34", b"frag" * 4, frag=0x2000))]
    for path in CAPTURES[:8]:
        frames += [r[1] for r in records(path)[:40:8] if r[0] == 1]
    return frames


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.choice((1, 1, 2, 4))):
        at = rng.randrange(min(len(b), 80))
        b[at] = rng.randrange(256) if rng.random() < 0.7 else b[at] ^ (1 << rng.randrange(8))
    if rng.random() < 0.2:
        del b[rng.randrange(14, len(b) + 1):]
    return bytes(b)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_mutated_frames(seed):
    rng = random.Random(seed)
    seeds = seed_frames()
    frames = []
    for k in range(1500):
        frame = rng.choice(seeds) if rng.random() < 0.3 or not frames else mutate(rng, rng.choice(seeds + frames[-20:]))
        frames.append(frame)
    t, inputs = 0, []
    for frame in frames:
        t += rng.choice((0, 0, NS // 10, NS, 7 * NS))
        inputs.append((frame, len(frame) + rng.choice((0, 0, 4, 1500)), t, rng.choice((0, 1, 2, 2))))
    for text in CHAINS + ["nat[ports=64]", "monitor[threshold=1]>nat>monitor"]:
        assert_same(run(fast.Pipeline, text, inputs, seed, rng.choice((1, 16, 32))),
                    run(pure.Pipeline, text, inputs, seed, 32), text)


# -- frames stay valid ------------------------------------------------------------------------------------
def checksums_valid(frame: bytes) -> bool:
    """The outer IPv4 header checksum, the TCP/UDP/ICMP checksum when the whole datagram is there,
    and an ICMP error's quoted IPv4 header checksum."""
    p = parse_frame(1, frame, len(frame))
    if p.ip_version != 4 or p.malformed:
        return True
    l3 = p.l3_offset
    ihl = (frame[l3] & 15) * 4
    total = struct.unpack_from("!H", frame, l3 + 2)[0]
    ok = checksum(frame[l3:l3 + ihl]) == 0
    if p.frag_offset or p.more_fragments or l3 + total > len(frame):
        return ok
    seg = frame[l3 + ihl:l3 + total]
    if p.proto in (6, 17):
        if p.proto == 17 and seg[6:8] == b"\0\0":
            return ok
        pseudo = frame[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, p.proto, len(seg))
        ok = ok and checksum(pseudo + seg) == 0
    elif p.proto == 1:
        ok = ok and checksum(seg) == 0
        if p.quoted is not None:
            q = p.quoted.l3_offset
            ok = ok and checksum(frame[q:q + (frame[q] & 15) * 4]) == 0
    return ok


def test_rewritten_frames_keep_valid_checksums():
    f, _ = talk("firewall>nat>lb", 1500, 21, portless=False)
    gen = Traffic(random.Random(21), portless=False)
    pipeline = fast.Pipeline(chain("firewall>nat>lb"), 21)
    rewritten = 0
    for _ in range(300):
        inputs = [gen.next() for _ in range(8)]
        batch = Batch(8)
        fill(batch, inputs)
        pipeline.process(batch)
        outs = results(pipeline, batch)[0]
        gen.saw([(egress, frame, None) for _, egress, _, _, _, frame in outs])
        for i, _, _, _, _, frame in outs:
            if checksums_valid(inputs[i][0]):
                assert checksums_valid(frame), (inputs[i][0].hex(), frame.hex())
                rewritten += frame != inputs[i][0]
    assert rewritten > 200


# -- the interface -----------------------------------------------------------------------------------------
def test_copies_travel_on_and_land_in_extra():
    """A monitor's alert: the packet itself travels on as a copy (rewritten by the NAT), the alert
    keeps the input's bytes; copies are appended to batch.extra."""
    p = fast.Pipeline(chain("monitor[threshold=1]>nat"), 0)
    batch = Batch(4)
    frame = pad64(eth(tcp("10.0.0.1", 1000, "93.184.216.34", 80, 0x02)))
    fill(batch, [(frame, 64, 0, 0)])
    batch.extra += b"old"
    p.process(batch)
    (i0, e0, k0, _, c0, out0), (i1, e1, k1, _, c1, out1) = results(p, batch)[0]
    assert (e0, k0, c0, e1, k1, c1) == ("outside", "nat", 1, "monitor.alert", "monitor", 0)
    assert out1 == frame == batch.frame(0) and out0 != frame and parse_frame(1, out0, 64).src == bytes([203, 0, 113, 1])
    assert bytes(batch.extra) == b"old" + out0 and batch.out_off[0] == 3


def test_jumbo_frames_copied_several_times():
    """Copies of 9000-byte frames outgrow the scratch and release buffers."""
    inputs = [(eth(udp(f"10.0.0.{k % 3 + 1}", 1000 + k, "93.184.216.34", 53, b"j" * 8900)), 8950, k, 0)
              for k in range(12)]
    text = "monitor[threshold=1]>monitor[threshold=1]>nat>monitor[threshold=1]"
    for size in (1, 12):
        got = run(fast.Pipeline, text, inputs, 0, size)
        assert got == run(pure.Pipeline, text, inputs, 0, size)
        assert sum(o[4] for o in got[0]) >= 12 and len(got[0][0][5]) > 8900


def test_output_and_drop_arrays_grow():
    inputs = [(pad64(eth(udp("10.0.0.1", 1000 + k, "93.184.216.34", 53))), 64, k, 0) for k in range(40)]
    text = "monitor[threshold=1]>monitor[threshold=1]>monitor[threshold=1]"
    p = fast.Pipeline(chain(text), 0)
    batch = Batch(40, outputs_per_input=1)
    fill(batch, inputs)
    p.process(batch)
    assert batch.n_out == 160
    assert results(p, batch) == run(pure.Pipeline, text, inputs, 0, 40)[:2]
    p = fast.Pipeline(chain("ratelimit[capacity=1,rate=0]"), 0)
    sources = [(pad64(eth(udp(f"10.0.1.{k}", 1000, "93.184.216.34", 53))), 64, 0, 0) for k in range(40)]
    batch = Batch(40, outputs_per_input=1)
    batch.drop_in, batch.drop_reason = batch.drop_in[:1].copy(), batch.drop_reason[:1].copy()
    fill(batch, sources)
    p.process(batch)
    assert batch.n_drop == 0 and batch.n_out == 40  # every source is new: one token each
    fill(batch, sources)
    p.process(batch)
    assert batch.n_drop == 40 and batch.drop_in[:40].tolist() == list(range(40))
    assert {p.reasons[r] for r in batch.drop_reason[:40].tolist()} == {"ratelimit: over the rate"}


def test_bundled_nfs_and_others():
    class Tweaked(Nat):  # parameters only: still the NAT
        ports = 10

    class Other(Nat):  # its own handler: not the bundled NAT
        def handle(self, pkt: Packet, ctx) -> None:
            ctx.emit(pkt, "wan")

    class Mine(NF):
        name = "mine"
        gates = ("wan", "lan")

        def handle(self, pkt, ctx):
            ctx.emit(pkt, "wan")

    for cls in (Tweaked, lookup("nat[ports=3]")):
        c = Chain("c")
        c.add("n", cls)
        c.egress("n.wan", "outside")
        c.egress("n.lan", "inside")
        c.ingress("inside", "n")
        assert fast.Pipeline(c, 0).instances == ("n",)
    for cls in (Other, Mine):
        c = Chain("c")
        c.add("n", cls)
        c.egress("n.wan", "outside")
        c.egress("n.lan", "inside")
        c.ingress("inside", "n")
        with pytest.raises(NotBundled):
            fast.Pipeline(c, 0)
        with pytest.raises(NotBundled):
            pure.Pipeline(c, 0)


def test_parameters_come_from_the_configured_classes():
    p = fast.Pipeline(chain("nat[external=192.0.2.99,base=40000,ports=1]"), 0)
    batch = Batch(2)
    fill(batch, [(eth(tcp("10.0.0.1", 5, "93.184.216.34", 80, 0x02)), 54, 0, 0),
                 (eth(tcp("10.0.0.2", 5, "93.184.216.34", 80, 0x02)), 54, 0, 0)])
    p.process(batch)
    out = parse_frame(1, batch.output(0), 54)
    assert (out.src, out.sport) == (bytes([192, 0, 2, 99]), 40000)
    assert [p.reasons[r] for _, r in batch.drops()] == ["nat: pool exhausted"]


def test_bad_batches_are_refused():
    p = fast.Pipeline(chain("firewall"), 0)
    batch = Batch(2)
    fill(batch, [(b"\0" * 20, 20, 0, 0)])
    batch.off[0] = 10
    with pytest.raises(ValueError, match="outside batch.data"):
        p.process(batch)
    with pytest.raises(KeyError, match="no instance 'nat'"):
        p.state("nat")


def test_passthrough_baseline():
    recs = records(CAPTURES[0])
    batch = Batch(len(recs))
    fill(batch, timed(recs))
    base = fast.PassThrough(recs[0][0])
    base.process(batch)
    assert batch.n_out == len(recs) and [o[4] for o in batch.outputs()] == [r[1] for r in recs]


def test_the_benchmark_runs():
    r = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    names = {line.split()[1] for line in lines}
    assert all(re.fullmatch(r"RESULT \S+ [0-9.]+ \S+", line) for line in lines), lines
    assert {"firewall_nat_lb_fast_mpps", "firewall_nat_lb_passthrough_mpps", "firewall_nat_lb_fast_vs_passthrough",
            "firewall_nat_lb_pure_mpps"} <= names, r.stdout
