"""runtime/pure.py (the pure-Python Pipeline of the bundled NFs) and runtime/rng.py.

- The choice protocol and the splitmix64 streams (published splitmix64 vectors).
- NAT through the Pipeline on real captures (nat.ports=64512), both directions (inbound frames are
  first readdressed to the NAT as a remote would answer it), ICMP errors included: every output's
  checksums are checked by tshark against the input's own status; inbound outputs come back to the
  very bytes captured.
- Pipeline vs the models' concrete execution (models.chain.run_chain) for every bundled NF and for
  chains (firewall>nat>lb, nat>nat, monitor>nat, csfq-edge>csfq-core, a branching graph) on random
  traffic with fixed seeds: the same outputs (frames seen back as model packets), drops, choices
  and state; the model replays the values the pipeline chose. Frames outside the model are held to
  an oracle routed by models/chain.py. Batch size does not change anything.
"""
from __future__ import annotations

import random
import zlib

import pytest

from nfproof.models import lookup
from nfproof.models.api import PACKET_FIELDS, Flow, Map, Packet, Pool, Port, addr
from nfproof.models.chain import Chain, initial_chain_state, run_chain
from nfproof.models.concrete import DictMap, initial_state, plain_state, step
from nfproof.models.firewall import Firewall
from nfproof.models.monitor import Monitor
from nfproof.models.nat import Nat
from nfproof.models.csfq import CsfqEdge
from nfproof.models.ratelimit import RateLimit
from nfproof.runtime.batch import Batch
from nfproof.runtime.frames import NotBundled, layout, refused, view_fields, write_fields
from nfproof.runtime.pure import Pipeline
from nfproof.runtime.rng import FREE_DRAWS, InstanceRng, StreamChooser, choose, choose_all, choose_free
from nfproof.traces.headers import parse_frame

from chain_nfs import StampA
from test_runtime_frames import (STATUS_FIELDS, check_with_tshark, echo, eth, icmp, icmp_error, ipv4, needs_tshark,
                                 records, statuses, tcp, tcp_frame, tshark, udp_frame, write_pcap)

NS = 1_000_000_000


# -- rng ----------------------------------------------------------------------------------------------
def test_splitmix64_published_vectors():
    rng = InstanceRng(0, 0)
    rng.state = 1234567  # Vigna's splitmix64.c seeded with 1234567
    assert [rng.next() for _ in range(5)] == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                              4593380528125082431, 16408922859458223821]
    rng.state = 0
    assert rng.next() == 0xE220A8397B1DCDAF


def test_instance_streams_start_where_the_contract_says():
    for seed, k in ((0, 0), (7, 3), (2 ** 70 + 5, 1), (-1, 0)):
        assert InstanceRng(seed, k).state == (seed * 0x9E3779B97F4A7C15 + (k + 1) * 0xD1B54A32D192ED03) % 2 ** 64
    a, b = InstanceRng(5, 0), InstanceRng(5, 1)
    assert [a.next() for _ in range(3)] != [b.next() for _ in range(3)]
    c = InstanceRng(5, 0)
    assert [c.below(10) for _ in range(50)] == [x % 10 for x in _stream(5, 0, 50)]


def _stream(seed, k, n):
    rng = InstanceRng(seed, k)
    return [rng.next() for _ in range(n)]


def test_choose_all_and_explicit_domains():
    rng, ref = InstanceRng(9, 2), _stream(9, 2, 3)
    assert choose_all(rng, 1000, 7) == 1000 + ref[0] % 7
    before = rng.state
    assert choose_all(rng, 5, 0) is None and rng.state == before  # an empty pool: no draw

    class Explicit:
        def __init__(self, values):
            self.values = values

        def concrete_values(self):
            return self.values

    rng = InstanceRng(9, 2)
    assert choose(rng, Explicit([30, 10, 20])) == [30, 10, 20][ref[0] % 3]
    before = rng.state
    assert choose(rng, Explicit([])) is None and rng.state == before  # no draw


def ports_map(*keys):
    """A model's concrete Map(Port, Port) storage holding `keys`."""
    decl = Map(Port, Port)
    decl.name = "used"
    storage = DictMap(decl)
    for k in keys:
        storage[k] = 1
    return storage


def test_choose_free_draws_then_scans():
    size, base = 100, 2000
    for seed in range(40):
        used = set(range(base, base + size)) - {base + 37}
        rng, ref = InstanceRng(seed, 0), _stream(seed, 0, FREE_DRAWS + 1)
        assert choose_free(rng, base, size, used, len(used)) == base + 37
        draws = [base + x % size for x in ref[:FREE_DRAWS]]
        made = draws.index(base + 37) + 1 if base + 37 in draws else FREE_DRAWS  # then a scan, no draw
        assert rng.state == (InstanceRng(seed, 0).state + made * 0x9E3779B97F4A7C15) % 2 ** 64
    # the scan starts at the last draw: two free values, the one reached first upward wins
    for seed in range(200):
        used = set(range(base, base + size)) - {base + 10, base + 90}
        rng, ref = InstanceRng(seed, 0), _stream(seed, 0, FREE_DRAWS)
        draws = [base + x % size for x in ref]
        hit = next((v for v in draws if v not in used), None)
        if hit is None:
            last = draws[-1] - base
            expect = base + (10 if last <= 10 or last > 90 else 90)
        else:
            expect = hit
        assert choose_free(rng, base, size, used, len(used)) == expect


def test_choose_free_empty_is_o1_and_draws_nothing():
    rng = InstanceRng(1, 0)
    before = rng.state

    class Huge:  # a storage that must not be scanned: the count says it covers the pool
        def __contains__(self, v):
            raise AssertionError("scanned")

    assert choose_free(rng, 0, 1 << 16, Huge(), 1 << 16) is None and rng.state == before
    # the model's own pool domains (models.api.Pool.free / all): the storage counts its pool keys
    assert choose(InstanceRng(1, 0), Pool(10, 4).free(ports_map(10, 11, 12))) == 13
    assert choose(InstanceRng(1, 0), Pool(10, 4).free(ports_map(10, 11, 12, 13, 99))) is None
    assert choose(InstanceRng(1, 0), Pool(10, 4).free(ports_map(10, 11, 12, 99, 98))) == 13
    assert choose(InstanceRng(3, 0), Pool(10, 4).all()) == 10 + _stream(3, 0, 1)[0] % 4
    used = ports_map(*range(1024, 1024 + 64511))  # all but one of 64512 ports: O(1) draws, then a scan
    assert choose(InstanceRng(3, 0), Pool(1024, 64512).free(used)) == 1024 + 64511
    used[65535] = 1
    assert choose(InstanceRng(3, 0), Pool(1024, 64512).free(used)) is None


def test_stream_chooser_for_the_concrete_interpreter():
    chooser = StreamChooser(InstanceRng(4, 1))
    ref = _stream(4, 1, 3)
    assert chooser([7, 8, 9]) == [7, 8, 9][ref[0] % 3]
    assert chooser.choose_domain(Pool(100, 5).all()) == 100 + ref[1] % 5
    # through the concrete interpreter: the NAT's port choice is a pool domain drawn in O(1)
    state = initial_state(lookup("nat[ports=64512]"))
    res = step(lookup("nat[ports=64512]"), state, Packet(6, 1, 2, 3, 4), chooser)
    assert res.choices == [1024 + ref[2] % 64512]


# -- the harness: pipeline vs the model -----------------------------------------------------------
def out_view(frame: bytes, wirelen: int) -> tuple:
    fields = view_fields(parse_frame(1, frame, wirelen), False, wirelen)
    return fields[:6] + (fields[7],) if type(fields) is tuple else fields


def model_fields(p: Packet) -> tuple:
    return (p.proto, p.src, p.sport, p.dst, p.dport, p.flags, p.length)


class Replay:
    """A chooser that returns the pipeline's choices in order (and fails on anything else)."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, options):
        assert self.values, "the model made a choice the pipeline did not"
        value = self.values.pop(0)
        assert value in options, f"the pipeline chose {value}, which the model's domain does not hold"
        return value


def passthrough(chain: Chain, inbound: bool):
    """What the contract says happens to a frame outside the model, routed by models/chain.py."""
    outputs, drops = [], []

    def process(instance, p):
        member = chain.members[instance]
        gates = member.inside if p.inbound else member.outside
        if not gates:
            drops.append(f"{instance}: outside the model")
            return []
        return [(gates[0], p)]

    chain.route(Packet(inbound=inbound), process, lambda p, egress: outputs.append(egress), drops.append)
    return outputs, drops


def model_run(chain: Chain, state: dict, pkt: Packet, chooser, clock, kind: int):
    """What run_chain does (models/chain.py routing, every instance stepped by models.concrete.step)
    with the runtime's one addition: an output its frame (of layout `kind`) cannot carry is not
    released but dropped, "<instance>: cannot write <field> into the frame"."""
    outputs, drops, choices = [], [], []

    def process(instance, p):
        res = step(chain.members[instance].nf, state[instance], p, chooser, clock)
        choices.extend(res.choices)
        drops.extend(f"{instance}: {r}" for r in res.drops)
        kept = []
        for gate, out in res.outputs:
            no = refused(kind, astuple(p), astuple(out))
            if no is None:
                kept.append((gate, out))
            else:
                drops.append(f"{instance}: cannot write {PACKET_FIELDS[no[0]]} into the frame")
        return kept

    chain.route(pkt, process, lambda p, egress: outputs.append((egress, p.wrapped())), drops.append)
    return outputs, drops, choices


def astuple(p: Packet) -> tuple:
    return tuple(getattr(p, f) for f in PACKET_FIELDS)


class Checker:
    """Runs inputs one by one through a Pipeline and the model's run_chain and compares them.
    `frames_rule`: the model side is `model_run` (outputs a frame cannot carry are dropped), for
    a NAT given packets without ports; else run_chain itself."""

    def __init__(self, chain: Chain, seed: int = 11, inside=None, frames_rule: bool = False):
        self.chain, self.frames_rule = chain, frames_rule
        self.pipeline = Pipeline(chain, seed, 1, inside) if inside else Pipeline(chain, seed)
        self.state = initial_chain_state(chain)
        self.ticks = {m.nf.ticks_per_second for m in chain.members.values()}
        assert len(self.ticks) == 1, "run_chain has one clock: one ticks_per_second per checked chain"
        self.inputs, self.counts = [], {"outputs": 0, "drops": 0, "choices": 0, "passed": 0}
        self.egress_counts = {e: 0 for e in self.pipeline.egresses}

    def step(self, frame: bytes, wirelen: int, t_ns: int, side: int):
        """[(egress, frame bytes, label)] the pipeline released for this input (checked)."""
        self.inputs.append((frame, wirelen, t_ns, side))
        batch = Batch(1)
        batch.add(frame, wirelen, t_ns, side)
        self.pipeline.process(batch)
        pl = self.pipeline
        got = [(pl.egresses[e], out_view(f, wirelen), label) for _, e, _, label, f in batch.outputs()]
        got_drops = [pl.reasons[r] for _, r in batch.drops()]
        chosen = [v for _, _, v in pl.choices]
        parsed = parse_frame(1, frame, wirelen)
        inbound = side == 1 if side < 2 else pl.sides.inbound(parsed)
        v = view_fields(parsed, inbound, wirelen)
        if type(v) is str:
            assert (got, got_drops) == ([], [v])
        elif v is None:
            egresses, drops = passthrough(self.chain, inbound)
            assert [(e, f, label) for _, e, _, label, f in batch.outputs()] == \
                [(pl.egresses.index(e), frame, 0) for e in egresses]
            assert got_drops == drops
            self.counts["passed"] += 1
        else:
            tps = next(iter(self.ticks))
            clock = lambda: t_ns * tps // NS  # noqa: E731
            if self.frames_rule:
                outputs, expected_drops, choices = model_run(self.chain, self.state, Packet(*v), Replay(chosen), clock,
                                                             layout(parsed))
            else:
                res = run_chain(self.chain, self.state, Packet(*v), Replay(chosen), clock)
                outputs, choices = res.outputs, res.choices
                expected_drops = [f"{inst}: {r}" if inst else r for inst, r in res.drops]
            expected = [(e, model_fields(p), p.label) for e, p in outputs]
            assert got == expected, f"input {len(self.inputs)}: {Packet(*v)}"
            if any("cannot write" in d for d in expected_drops):  # dropped as emitted, not after routing
                got_drops, expected_drops = sorted(got_drops), sorted(expected_drops)
                self.counts["refused"] = self.counts.get("refused", 0) + 1
            assert got_drops == expected_drops, f"input {len(self.inputs)}: {Packet(*v)}"
            assert choices == chosen
        assert batch.n_out + batch.n_drop >= 1
        self.counts["outputs"] += batch.n_out
        self.counts["drops"] += batch.n_drop
        self.counts["choices"] += len(chosen)
        for e, _, _ in got:
            self.egress_counts[e] += 1
        return [(pl.egresses[e], f, label) for _, e, _, label, f in batch.outputs()]

    def check_state(self):
        for name in self.chain.members:
            assert self.pipeline.state(name) == plain_state(self.state[name]), name

    def check_batched(self, size=32):
        """The same inputs in batches of `size` give the same outputs, drops and state."""
        one, many = Pipeline(self.chain, 11, 1, self.pipeline.sides.networks), \
            Pipeline(self.chain, 11, 1, self.pipeline.sides.networks)
        singles, batched = [], []
        for frame, wirelen, t_ns, side in self.inputs:
            b = Batch(1)
            b.add(frame, wirelen, t_ns, side)
            one.process(b)
            singles += [(o[1:], ) for o in b.outputs()] + [("drop", one.reasons[r]) for _, r in b.drops()]
        for start in range(0, len(self.inputs), size):
            b = Batch(size)
            for frame, wirelen, t_ns, side in self.inputs[start:start + size]:
                b.add(frame, wirelen, t_ns, side)
            many.process(b)
            # outputs and drops of one input stay together, inputs in order
            per_input = {}
            for o in b.outputs():
                per_input.setdefault(o[0], []).append((o[1:],))
            for i, r in b.drops():
                per_input.setdefault(i, []).append(("drop", many.reasons[r]))
            for i in sorted(per_input):
                batched += per_input[i]
        assert sorted(map(repr, singles)) == sorted(map(repr, batched))
        assert [x for x in singles if x[0] != "drop"] == [x for x in batched if x[0] != "drop"]
        for name in self.chain.members:
            assert one.state(name) == many.state(name) == self.pipeline.state(name)


INSIDE_HOSTS = ["10.0.0.1", "10.0.0.2", "192.168.7.3"]
REMOTES = ["198.51.100.7", "93.184.216.34"]
VIP, BACKENDS, EXTERNAL, ROUTER = "198.51.100.1", ["192.0.2.10", "192.0.2.11"], "203.0.113.1", "198.18.0.1"
PORTS = [1000, 1001, 80, 53]
GAPS = [0, 0, 0, NS // 3, NS, 2 * NS, 7 * NS]
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


class Traffic:
    """Random traffic that talks back: outbound packets, replies to what left on `outside`,
    continuations of what came back `inside`, ICMP errors quoting outputs, frames outside the model
    and frames the runtime drops. `portless`: outbound packets may have no ports (GRE, echo
    replies, other ICMP), which a NAT cannot translate (a FrameError)."""

    def __init__(self, rng: random.Random, portless: bool = True, ports=PORTS, hosts=INSIDE_HOSTS):
        self.rng, self.portless, self.ports, self.hosts = rng, portless, ports, hosts
        self.outside, self.inside, self.t = [], [], 0

    def next(self):
        r = self.rng
        self.t += r.choice(GAPS)
        k = r.random()
        if k < 0.30 or not (self.outside or self.inside):
            frame, side = self.outbound(), r.choice((0, 0, 2))
        elif k < 0.55 and self.outside:
            frame, side = self.reply(r.choice(self.outside[-12:])), r.choice((1, 1, 2))
        elif k < 0.70 and self.inside:
            frame, side = self.continuation(r.choice(self.inside[-12:])), r.choice((0, 0, 2))
        elif k < 0.80 and self.outside:
            frame, side = self.error(r.choice(self.outside[-12:])), r.choice((1, 2))
        elif k < 0.90:
            frame, side = self.random_inbound(), r.choice((1, 2))
        else:
            frame, side = self.special(), r.choice((0, 1, 2))
        wirelen = len(frame) + (r.choice((0, 0, 0, 4, 100)) if frame[12:14] == b"\x08\x00" else 0)
        return frame, wirelen, self.t, side

    def saw(self, released):
        for egress, frame, _ in released:
            if parse_frame(1, frame, len(frame)).ip_version == 4:
                (self.outside if egress == "outside" else self.inside).append(frame)

    def flags(self, choices=(SYN, SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, 0, SYN | FIN)):
        return self.rng.choice(choices)

    def outbound(self):
        r = self.rng
        src, dst = r.choice(self.hosts), r.choice(REMOTES + [VIP, VIP] + BACKENDS)
        sport, dport = r.choice(self.ports), r.choice(self.ports)
        kinds = ["tcp", "tcp", "udp", "echo"] + (["gre", "reply", "other-icmp"] if self.portless else [])
        kind = r.choice(kinds)
        if kind == "tcp":
            return tcp_frame(src, sport, dst, dport, self.flags((SYN, SYN, ACK, SYN | ACK, FIN | ACK, RST)))
        if kind == "udp":
            return udp_frame(src, sport, dst, dport, b"x" * r.randint(0, 30), no_checksum=r.random() < 0.2)
        if kind == "echo":
            return eth(ipv4(1, src, dst, echo(8, r.choice((7, 8, 1000)))))
        if kind == "reply":
            return eth(ipv4(1, src, dst, echo(0, r.choice((7, 8)))))
        if kind == "gre":
            return eth(ipv4(47, src, dst, b"\0\0\x08\0" + b"g" * 8))
        return eth(ipv4(1, src, dst, icmp(9, 0, b"\1\2\0\x1e", b"\0" * 8)))

    def _reverse(self, frame, flags_choices):
        p = parse_frame(1, frame, len(frame))
        proto, src, sport, dst, dport = view_fields(p, False, len(frame))[:5]
        if proto == 6:
            return tcp_frame(dst, dport, src, sport, self.flags(flags_choices))
        if proto == 17:
            return udp_frame(dst, dport, src, sport)
        if proto == 1 and p.icmp_type == 8:
            return eth(ipv4(1, dst, src, echo(0, sport)))
        if not self.portless:  # a packet without ports back out through a NAT: a new outbound one instead
            return self.outbound()
        return eth(ipv4(proto, dst, src, frame[p.l4_offset or p.l3_offset + 20:] or b"\0" * 8)) if proto != 1 else \
            eth(ipv4(1, dst, src, icmp(9, 0, b"\1\2\0\x1e", b"\0" * 8)))

    def reply(self, frame):
        return self._reverse(frame, (SYN | ACK, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, SYN))

    def continuation(self, frame):
        return self._reverse(frame, (ACK, ACK, ACK | PSH, FIN | ACK, RST, SYN))

    def error(self, frame):
        p = parse_frame(1, frame, len(frame))
        quoted = frame[p.l3_offset:]
        if self.rng.random() < 0.5:
            quoted = quoted[:28]
        dst = frame[p.l3_offset + 12:p.l3_offset + 16]
        origin = frame[p.l3_offset + 16:p.l3_offset + 20] if self.rng.random() < 0.5 else addr(ROUTER).to_bytes(4, "big")
        return icmp_error(int.from_bytes(origin, "big"), int.from_bytes(dst, "big"), quoted,
                          *self.rng.choice(((3, 3), (11, 0), (3, 1))))

    def random_inbound(self):
        r = self.rng
        src, dst = r.choice(REMOTES + BACKENDS), r.choice([EXTERNAL, EXTERNAL] + self.hosts)
        sport, dport = r.choice(self.ports), r.choice(self.ports + [1024, 1025, 1026, 1027])
        kind = r.choice(("tcp", "udp", "echo", "gre"))
        if kind == "tcp":
            return tcp_frame(src, sport, dst, dport, self.flags())
        if kind == "udp":
            return udp_frame(src, sport, dst, dport)
        if kind == "echo":
            return eth(ipv4(1, src, dst, echo(0, dport)))
        return eth(ipv4(47, src, dst, b"\0\0\x08\0"))

    def special(self):
        r = self.rng
        h, x = r.choice(self.hosts), r.choice(REMOTES)
        return r.choice((
            eth(b"\x60" + b"\0" * 7 + b"\xfd" + b"\0" * 31, ethertype=0x86DD),  # IPv6 (outside the model)
            eth(b"\0\1\x08\0\6\4\0\1" + b"\0" * 20, ethertype=0x0806),        # ARP
            eth(ipv4(17, h, x, b"q" * 24, frag=16)),                           # a later fragment: dropped
            eth(ipv4(6, h, x, b"\0" * 10)),                                    # malformed: short-tcp
            tcp_frame(h, 1000, x, 80, SYN, vlans=(12,)),                       # VLAN-tagged
            eth(ipv4(17, h, x, tcp(h, x, 1, 2, 0)[:8] + b"w" * 4, mf=True)),   # a first fragment
        ))


def checked_run(chain, n: int, seed: int, portless=True, inside=None, state_every=50, frames_rule=False, **traffic):
    checker = Checker(chain, inside=inside, frames_rule=frames_rule)
    gen = Traffic(random.Random(seed), portless, **traffic)
    for k in range(n):
        gen.saw(checker.step(*gen.next()))
        if k % state_every == state_every - 1:
            checker.check_state()
    checker.check_state()
    return checker


def configured(text):
    return Chain.parse(text, lookup)


NO_NAT_CHAINS = ["firewall", "lb", "lb-hash", "ratelimit", "monitor", "csfq-edge", "csfq-core",
                 "csfq-edge[window=1]>csfq-core[fair=1,levels=8]", "csfq-edge[window=30]>csfq-core[fair=1]", "monitor[threshold=2,byte_threshold=300]",
                 "ratelimit[capacity=3,rate=2]", "lb[backends=5]", "lb-hash[backends=3]",
                 "firewall[timeout=2,udp_timeout=1]>lb", "monitor>csfq-edge>csfq-core>ratelimit"]
NAT_CHAINS = ["nat", "nat[ports=64512]", "firewall>nat>lb", "firewall>nat[ports=64512]>lb", "nat>nat", "monitor[threshold=2]>nat",
              "firewall>nat[ports=2]>lb-hash", "csfq-edge>nat>csfq-core[fair=1]"]


@pytest.mark.parametrize("text", NO_NAT_CHAINS)
def test_pipeline_matches_the_model(text):
    checker = checked_run(configured(text), 400, seed=zlib.crc32(text.encode()))
    checker.check_batched()
    c = checker.counts
    assert c["outputs"] > 50 and c["passed"] > 5


@pytest.mark.parametrize("text", NAT_CHAINS)
def test_pipeline_matches_the_model_with_a_nat(text):
    checker = checked_run(configured(text), 400, seed=zlib.crc32(text.encode()), portless=False)
    checker.check_batched()
    c = checker.counts
    assert c["outputs"] > 15 and c["choices"] >= 2  # a NAT of 4 ports (the default) is full soon


def test_the_pipeline_covers_every_drop_reason_of_the_models():
    seen = set()
    for text in NO_NAT_CHAINS + NAT_CHAINS:
        checker = checked_run(configured(text), 250, seed=5, portless="nat" not in text)
        seen |= {r.split(": ", 1)[-1] for r in checker.pipeline.reasons} | set(checker.pipeline.reasons)
    assert seen >= {"no mapping", "not from the mapped remote", "pool exhausted", "unsolicited inbound UDP",
                    "inbound protocol not tracked", "unsolicited inbound", "no connection", "handshake out of order",
                    "over the rate", "over the fair share", "ipv4 fragment", "malformed: short-tcp"}


def test_a_nearly_full_pool_scans_and_exhausts():
    """75 flows on a 70-port pool: draws that hit used ports, the scan fallback, then exhaustion."""
    chain = configured("nat[ports=70,base=5000]")
    checker = Checker(chain)
    for k in range(75):
        checker.step(udp_frame("10.0.0.1", 2000 + k, "198.51.100.7", 53), 60, k * NS, 0)
    checker.check_state()
    assert len(checker.pipeline.state("nat")["by_port"]) == 70
    assert checker.pipeline.reasons == ["nat: pool exhausted"]


def test_clock_in_each_nfs_ticks():
    """Clocks finer than seconds, so that 32-bit times wrap (at 4.29 s in nanoseconds)."""
    class MsFirewall(Firewall):
        ticks_per_second = 1000
        timeout, udp_timeout = "1.5", "700ms"

    class NsFirewall(Firewall):
        ticks_per_second = NS

    class NsRateLimit(RateLimit):
        ticks_per_second = NS

    class MsEdge(CsfqEdge):
        ticks_per_second = 1000
        window = "1.2"

    for cls in (MsFirewall, NsFirewall, NsRateLimit, MsEdge):
        chain = Chain.parse("x", lambda ref, cls=cls: cls)
        checker = checked_run(chain, 300, seed=3)
        assert checker.counts["outputs"] > 30


def test_counters_wrap_at_their_declared_width():
    chain = configured("monitor[byte_threshold=100]")
    checker = Checker(chain)
    frame = udp_frame("10.0.0.1", 1, "198.51.100.7", 2)
    flow = Flow(17, addr("10.0.0.1"), 1, addr("198.51.100.7"), 2)
    twin = checker.pipeline._twins[0]
    twin.packets[flow], twin.octets[flow] = 0xFFFFFFFF, 0xFFFFFFF0
    checker.state["monitor"]["packets"][flow], checker.state["monitor"]["octets"][flow] = 0xFFFFFFFF, 0xFFFFFFF0
    released = checker.step(frame, len(frame), 0, 0)
    assert [e for e, _, _ in released] == ["outside", "monitor.alert"]  # 2^32 >= threshold before wrapping
    checker.check_state()
    assert checker.pipeline.state("monitor")["packets"][flow] == 0


def test_copies_travel_on_and_the_original_goes_last():
    """monitor>nat: the monitor emits the packet (to the NAT, on a copy) and then its alert (on the
    original bytes, unchanged by the NAT's rewrite of the copy)."""
    chain = configured("monitor[threshold=1]>nat")
    pipeline = Pipeline(chain, 1)
    frame = tcp_frame("10.0.0.1", 1000, "198.51.100.7", 80, SYN)
    batch = Batch(2)
    batch.add(frame, len(frame), 0, 0)
    batch.add(frame, len(frame), 0, 0)
    pipeline.process(batch)
    outs = batch.outputs()
    assert [(i, pipeline.egresses[e], pipeline.instances[inst]) for i, e, inst, _, _ in outs] == \
        [(0, "outside", "nat"), (0, "monitor.alert", "monitor"), (1, "outside", "nat")]
    assert list(batch.out_copy[:3]) == [1, 0, 0]
    assert outs[1][4] == frame == batch.frame(0)  # the alert: the original bytes, untouched
    assert out_view(outs[0][4], len(frame))[1] == addr(EXTERNAL) and outs[0][4] == outs[2][4]


def test_a_branching_graph_chain():
    """monitor.alert wired to a firewall of its own (not a linear chain)."""
    chain = Chain("branch")
    chain.add("mon", lookup("monitor[threshold=2]"))
    chain.add("nat", Nat)
    chain.add("fw", Firewall)
    chain.connect("mon.wan", "nat")
    chain.connect("mon.alert", "fw", direction="outbound")
    chain.connect("nat.lan", "mon")
    chain.egress("nat.wan", "outside")
    chain.egress("mon.lan", "inside")
    chain.egress("fw.wan", "alerts")
    chain.egress("fw.lan", "alerts-back")
    chain.ingress("inside", "mon")
    chain.ingress("outside", "nat")
    checker = checked_run(chain.validate(), 300, seed=8, portless=False)
    checker.check_batched(7)
    assert all(checker.egress_counts[e] > 0 for e in ("outside", "inside", "alerts"))


def test_no_outside_ingress_and_outside_the_model_drops():
    chain = Chain("one-way")
    chain.add("fw", Firewall)
    chain.egress("fw.wan", "outside")
    chain.egress("fw.lan", "inside")
    chain.ingress("inside", "fw")
    checker = Checker(chain.validate())
    inbound = udp_frame("198.51.100.7", 53, "10.0.0.1", 1000)
    checker.step(inbound, len(inbound), 0, 1)
    assert checker.pipeline.reasons == ["the chain has no outside ingress"]
    v6 = eth(b"\x60" + b"\0" * 39, ethertype=0x86DD)
    assert checker.step(v6, len(v6), 0, 0) == [("outside", v6, 0)]

    class Tap(Monitor):  # its lan gate faces neither side: an egress of its own
        inside = ()

    chain = Chain.parse("monitor>tap=tap", lambda ref: {"monitor": Monitor, "tap": Tap}[ref])
    checker = Checker(chain)
    assert checker.step(v6, len(v6), 0, 1) == [] and checker.pipeline.reasons == ["tap: outside the model"]
    assert checker.step(v6, len(v6), 0, 0) == [("outside", v6, 0)]
    udp = udp_frame("198.51.100.7", 53, "10.0.0.1", 1000)
    assert [e for e, _, _ in checker.step(udp, len(udp), 0, 1)] == ["tap.lan"]


def test_a_nat_cannot_translate_an_outbound_packet_without_ports():
    """The NAT model gives every outbound packet a port; a frame without one (GRE, an echo reply,
    other ICMP) cannot carry it: the output is dropped, the model's state change stands."""
    pipeline = Pipeline(configured("nat"), 1)
    for frame in (eth(ipv4(47, "10.0.0.1", "198.51.100.7", b"\0\0\x08\0")),
                  eth(ipv4(1, "10.0.0.1", "198.51.100.7", echo(0, 5)))):
        batch = Batch(1)
        batch.add(frame, len(frame), 0, 0)
        pipeline.process(batch)
        assert batch.n_out == 0 and [pipeline.reasons[r] for _, r in batch.drops()] == \
            ["nat: cannot write sport into the frame"]
    assert len(pipeline.state("nat")["by_flow"]) == 2


@pytest.mark.parametrize("text", ["nat", "firewall>nat[ports=64512]>lb", "monitor[threshold=2]>nat[ports=64512]>nat[ports=64512]"])
def test_outputs_a_frame_cannot_carry_are_dropped_as_the_model_emits_them(text):
    checker = checked_run(configured(text), 400, seed=zlib.crc32(text.encode()), portless=True, frames_rule=True)
    checker.check_batched()
    assert checker.counts.get("refused", 0) >= 3


def test_not_bundled():
    with pytest.raises(NotBundled) as e:
        Pipeline(Chain.parse("a", lambda ref: StampA), 1)
    assert (e.value.instance, e.value.nf_name) == ("a", "a") and "generic" in str(e.value)

    class OwnNat(Nat):
        def handle(self, pkt, ctx):
            ctx.emit(pkt, "wan")

    with pytest.raises(NotBundled, match="instance 'nat'"):
        Pipeline(Chain.parse("nat", lambda ref: OwnNat), 1)
    # a configured or subclassed bundled NF that keeps the handler is bundled
    Pipeline(Chain.parse("monitor[threshold=9]>nat[ports=9]", lookup), 1)


def test_parameters_come_from_the_configured_classes():
    chain = configured("nat[external=192.0.2.99,base=40000,ports=1]")
    checker = Checker(chain)
    out = checker.step(tcp_frame("10.0.0.1", 5, "198.51.100.7", 80, SYN), 60, 0, 0)
    assert out_view(out[0][1], 60)[1:3] == (addr("192.0.2.99"), 40000)
    checker.step(tcp_frame("10.0.0.2", 5, "198.51.100.7", 80, SYN), 60, 0, 0)
    assert checker.pipeline.reasons == ["nat: pool exhausted"]


# -- NAT on real captures, checksums by tshark --------------------------------------------------------
NAT_CAPTURES = {  # capture -> the inside networks (its clients)
    "E02_http_49flows.pcap": "128.2.6.136/32", "E10_dns_icmp.pcap": "192.168.43.9/32",
    "E11_icmp_ping_150.pcap": "192.168.1.6/32", "E14_vlan123_arp_icmp.pcap": "192.168.123.2/32",
    "E20_frag_ipv4_udp_afs.pcap": "131.151.1.0/24", "T01_snaplen_cut_tcp_878.pcap": "192.168.2.20/32",
    "E05_mixed_v4v6_80flows_ftpdata.pcap": "192.168.0.13/32",
}


def nat_run(name, inside):
    """The capture through chain `nat` (ports=64512), inbound frames first readdressed to the NAT
    (as the remote end would answer the translated flow). [(input frame, output frame or None,
    wirelen, direction, readdressed)], the pipeline."""
    chain = configured("nat[ports=64512]")
    pipeline = Pipeline(chain, 42, 1, inside.split(","))
    nat = pipeline._twins[0]
    done = []
    for t, (linktype, data, wirelen) in enumerate(records(name)):
        p = parse_frame(linktype, data, wirelen)
        inbound = pipeline.sides.inbound(p)
        v = view_fields(p, inbound, wirelen)
        sent = data
        if inbound and type(v) is tuple:
            port = nat.by_flow.get((v[0], v[3], v[4], v[1], v[2]))
            if port is not None:
                buf = bytearray(data)
                write_fields(buf, 0, len(buf), p, v, v[:3] + (nat.external, port) + v[5:], "remote")
                sent = bytes(buf)
        batch = Batch(1)
        batch.add(sent, wirelen, t * NS, 2)
        pipeline.process(batch)
        outs = batch.outputs()
        assert len(outs) <= 1 and len(outs) + batch.n_drop == 1
        done.append((data, outs[0][4] if outs else None, wirelen, inbound, sent is not data,
                     [pipeline.reasons[r] for _, r in batch.drops()]))
    return done, pipeline


@pytest.mark.parametrize("name", sorted(NAT_CAPTURES))
def test_nat_on_real_captures(name):
    done, pipeline = nat_run(name, NAT_CAPTURES[name])
    translated_out = [d for d in done if d[1] is not None and not d[3] and d[1] != d[0]]
    back = [d for d in done if d[1] is not None and d[4]]
    assert translated_out, "the NAT translated nothing outbound"
    refused = 0
    for data, out, wirelen, inbound, readdressed, drops in done:
        p = parse_frame(1, data, wirelen)
        v = view_fields(p, inbound, wirelen)
        if v is None:  # outside the model: unchanged
            assert out == data
        elif type(v) is str:
            assert drops == [v]
        elif inbound:
            # a remote's answer to a translated flow comes back as the very bytes captured
            assert (out == data) if readdressed else (drops == ["nat: no mapping"] and out is None)
        elif out is None:  # a packet without ports (E05: IGMP): the NAT's port cannot be written
            assert drops == ["nat: cannot write sport into the frame"] and v[2] == 0 and v[0] not in (6, 17)
            refused += 1
        else:
            o = view_fields(parse_frame(1, out, wirelen), False, wirelen)
            assert o[1] == addr(EXTERNAL) and o[3:] == v[3:] and o[0] == v[0]
    if name != "E14_vlan123_arp_icmp.pcap":
        assert back, "no answer was translated back"
    assert (refused > 0) == (name == "E05_mixed_v4v6_80flows_ftpdata.pcap")


@needs_tshark
@pytest.mark.parametrize("name", sorted(NAT_CAPTURES))
def test_nat_outputs_have_valid_checksums_per_tshark(name, tmp_path):
    done, _ = nat_run(name, NAT_CAPTURES[name])
    rewritten = [(data, out, wirelen, None) for data, out, wirelen, inbound, _, _ in done
                 if out is not None and out != data]
    assert rewritten
    write_pcap(tmp_path / "in.pcap", [(d, w) for d, _, w, _ in rewritten])
    write_pcap(tmp_path / "out.pcap", [(o, w) for _, o, w, _ in rewritten])
    before, after = tshark(tmp_path / "in.pcap", STATUS_FIELDS), tshark(tmp_path / "out.pcap", STATUS_FIELDS)
    assert [statuses(r) for r in after] == [statuses(r) for r in before]
    assert sum(statuses(r).count("1") for r in after) >= len(rewritten)


@needs_tshark
def test_nat_translates_icmp_errors_both_ways_per_tshark(tmp_path):
    """Hand-built ICMP errors quoting TCP, UDP (whole and cut) and echo requests of translated
    flows, from the remote host and from a router: translated back, every checksum valid."""
    pipeline = Pipeline(configured("nat[ports=64512]"), 3)
    h, r = "10.0.0.5", "93.184.216.34"
    originals = [ipv4(6, h, r, tcp(h, r, 40000, 443, SYN, b"hello")),
                 ipv4(17, h, r, udp_frame(h, 5353, r, 53, b"query")[34:]),
                 ipv4(1, h, r, echo(8, 0x4242))]
    frames, expected = [], []
    for original in originals:
        batch = Batch(1)
        batch.add(eth(original), len(original) + 14, 0, 0)
        pipeline.process(batch)
        translated = batch.output(0)[14:]
        for origin, quote, (t, code) in ((r, translated, (3, 3)), ("198.18.0.1", translated[:28], (11, 0)),
                                         (r, translated[:40], (3, 1))):
            error = icmp_error(origin, EXTERNAL, quote, t, code)
            batch = Batch(1)
            batch.add(error, len(error), NS, 1)
            pipeline.process(batch)
            assert batch.n_out == 1, pipeline.reasons
            out = batch.output(0)
            frames.append((error, out, len(error), None))
            # the error as it would have reached the inside host without a NAT
            expected.append(icmp_error(origin if origin != r else r, h, original[:len(quote)], t, code))
    for (_, out, _, _), want in zip(frames, expected):
        assert out == want  # incremental updates undo the translation exactly
    check_with_tshark(tmp_path, [(e, o, w, view_fields(parse_frame(1, o, w), False, w))
                                 for e, o, w, _ in frames])
    rows = tshark(tmp_path / "out.pcap", STATUS_FIELDS)
    assert all(r["ip.checksum.status"][:2] == ["1", "1"] and r["icmp.checksum.status"][:1] == ["1"] for r in rows)


# -- speed -----------------------------------------------------------------------------------------------
def test_pure_pipeline_speed_on_e02():
    """Not a benchmark gate: prints packets per CPU second for 'firewall>nat>lb' over E02."""
    import time
    recs = records("E02_http_49flows.pcap")
    pipeline = Pipeline(configured("firewall>nat[ports=64512]>lb"), 1, 1, ["128.2.6.136/32"])
    batch, n = Batch(32), 0
    start = time.process_time()
    for rounds in range(3):
        for s in range(0, len(recs), 32):
            batch.clear()
            for _, data, wirelen in recs[s:s + 32]:
                batch.add(data, wirelen, n, 2)
                n += 1
            pipeline.process(batch)
    cpu = time.process_time() - start
    print(f"pure Pipeline firewall>nat>lb over E02: {n / cpu:,.0f} packets/s CPU")
    assert n == 3 * 655
