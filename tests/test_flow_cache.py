"""The fast path's flow cache (runtime/fast.pyx, "Flow cache"): established flows skip the NAT's and
the balancer's lookups and get their rewrite at once, while every per-packet state change still
happens. Each case below makes a cached plan meet what must end it or route around it -- a
firewall entry that expires, a NAT pool that runs out, a monitor that crosses its threshold on a
cached flow, a balancer that learns a flow whose replies it passed unchanged, a full cache -- and
compares the fast path with the cache, the fast path without it and the pure-Python fallback byte
for byte (outputs with their copies, drops with their reasons, every instance's state), in several
batch sizes. Every case also checks that the cache was used (else it would prove nothing)."""
from __future__ import annotations

import random
import struct

import pytest

fast = pytest.importorskip("nfproof.runtime.fast", reason="Cython extension not built")

from nfproof.models import lookup
from nfproof.models.chain import Chain
from nfproof.runtime import pure
from nfproof.runtime.batch import Batch
from nfproof.traces.headers import parse_frame

from frames_gen import eth, pad64, tcp, udp
from test_runtime_pure import NS, Traffic

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
VIP = "198.51.100.1"


def chain(text: str) -> Chain:
    return Chain.parse(text, lookup)


def run(make, inputs, batch_size: int):
    """Outputs (input, egress, instance, label, copy flag, bytes), drops (input, reason) and states
    of a fresh pipeline `make()` over `inputs` (frame, wirelen, t_ns, side) in batches."""
    p = make()
    outs, drops = [], []
    batch = Batch(batch_size)
    for start in range(0, len(inputs), batch_size):
        batch.clear()
        for frame, wirelen, t, side in inputs[start:start + batch_size]:
            batch.add(frame, wirelen, t, side)
        p.process(batch)
        outs += [(start + i, p.egresses[e], p.instances[k], label, int(batch.out_copy[j]), frame)
                 for j, (i, e, k, label, frame) in enumerate(batch.outputs())]
        drops += [(start + i, p.reasons[r]) for i, r in batch.drops()]
    return (outs, drops, {name: p.state(name) for name in p.instances}), p


def same_everywhere(text: str, inputs, seed: int = 3, sizes=(1, 7, 64), **kwargs):
    """Runs `inputs` through fast (cache on; its tables sized ahead or not), fast (cache off) and
    pure; all equal. Returns the results and the cache's counters of the last cached run."""
    want, _ = run(lambda: pure.Pipeline(chain(text), seed), inputs, 16)
    stats = None
    for size, flows in [(size, 0) for size in sizes] + [(32, 3), (32, 5000)]:
        got, p = run(lambda: fast.Pipeline(chain(text), seed, flow_cache=True, flows=flows, **kwargs), inputs, size)
        assert got == want, f"{text}, batches of {size}, flows={flows}: the cached fast path differs from the fallback"
        if flows == 0:
            stats = p.cache_stats()
    got, p = run(lambda: fast.Pipeline(chain(text), seed, flow_cache=False), inputs, 32)
    assert got == want, f"{text}: the uncached fast path differs from the fallback"
    assert p.cache_stats()["hits"] == 0
    return want, stats


class Script:
    """Builds inputs one by one, answering what the chain released: `out` sends a packet of a flow
    from the inside, `back` sends the reply to the flow's last packet that left on `outside`
    (addressed as the chain rewrote it, so the NAT and the balancer recognise it)."""

    def __init__(self, text: str, seed: int = 3):
        self.p = pure.Pipeline(chain(text), seed)
        self.inputs, self.t, self.left = [], 0, {}

    def _send(self, frame: bytes, side: int, flow, dt: int):
        self.t += dt
        self.inputs.append((frame, len(frame), self.t, side))
        batch = Batch(1)
        batch.add(frame, len(frame), self.t, side)
        self.p.process(batch)
        for _, e, _, _, out in batch.outputs():
            if self.p.egresses[e] == "outside" and flow is not None:
                self.left[flow] = out
        return [(self.p.egresses[e], out) for _, e, _, _, out in batch.outputs()], \
            [self.p.reasons[r] for _, r in batch.drops()]

    def out(self, flow, flags: int = ACK, payload: bytes = b"", dt: int = NS // 100):
        proto, src, sport, dst, dport = flow
        frame = tcp(src, sport, dst, dport, flags, payload) if proto == 6 else udp(src, sport, dst, dport, payload)
        return self._send(pad64(eth(frame)), 0, flow, dt)

    def back(self, flow, flags: int = ACK, payload: bytes = b"", dt: int = NS // 100):
        p = parse_frame(1, self.left[flow], len(self.left[flow]))
        src, dst = ".".join(map(str, p.dst)), ".".join(map(str, p.src))
        frame = tcp(src, p.dport, dst, p.sport, flags, payload) if flow[0] == 6 else \
            udp(src, p.dport, dst, p.sport, payload)
        return self._send(pad64(eth(frame)), 1, None, dt)

    def handshake(self, flow, data: int = 4, dt: int = NS // 100):
        self.out(flow, SYN, dt=dt)
        self.back(flow, SYN | ACK, dt=dt)
        self.out(flow, ACK, dt=dt)
        for _ in range(data):
            self.out(flow, ACK | PSH, b"out", dt=dt)
            self.back(flow, ACK | PSH, b"in", dt=dt)


def reasons(drops):
    return {r for _, r in drops}


def test_a_firewall_entry_expires_under_a_cached_plan():
    text = "firewall[timeout=2,udp_timeout=1]>nat[ports=64512]>lb[backends=3]"
    s = Script(text)
    web, other, dns = (6, "10.0.0.1", 4000, VIP, 80), (6, "10.0.0.2", 4001, "93.184.216.34", 443), \
        (17, "10.0.0.3", 5353, "93.184.216.34", 53)
    for flow in (web, other):
        s.handshake(flow)
    s.out(dns, payload=b"q")
    s.back(dns, payload=b"a")
    s.out(dns, payload=b"q")
    s.back(dns, payload=b"a")
    # idle past the timeouts: the NAT and the balancer still map the flows, the firewall forgot them
    assert s.out(web, ACK | PSH, b"late", dt=3 * NS)[1] == ["firewall: no connection"]
    assert s.back(other, ACK | PSH, b"late")[1] == ["firewall: unsolicited inbound"]
    assert s.back(dns, payload=b"late")[1] == ["firewall: unsolicited inbound UDP"]
    s.out(dns, payload=b"again")   # a new UDP entry; the plan's rewrite is still right
    s.back(dns, payload=b"again")
    s.handshake(web, data=3)       # reopened: the same port and backend, cached again
    s.out(web, FIN | ACK)          # closed: the firewall deletes its entry on a cached plan's run
    assert s.out(web, ACK | PSH, b"after")[1] == ["firewall: no connection"]
    want, stats = same_everywhere(text, s.inputs)
    assert {"firewall: no connection", "firewall: unsolicited inbound",
            "firewall: unsolicited inbound UDP"} <= reasons(want[1])
    assert stats["hits"] >= 20 and stats["express"] >= 10, stats


def test_a_nat_pool_running_out_is_never_cached():
    text = "firewall>nat[ports=2]>lb"
    s = Script(text)
    flows = [(6, f"10.0.0.{k}", 4000 + k, "93.184.216.34", 80) for k in range(1, 5)]
    s.handshake(flows[0], data=2)
    s.handshake(flows[1], data=2)
    for _ in range(3):
        assert s.out(flows[2], SYN)[1] == ["nat: pool exhausted"]
        s.out(flows[0], ACK | PSH, b"x")
        s.back(flows[1], ACK | PSH, b"y")
    assert s.out(flows[3], SYN)[1] == ["nat: pool exhausted"]
    want, stats = same_everywhere(text, s.inputs)
    assert sum(r == "nat: pool exhausted" for _, r in want[1]) == 4
    assert stats["hits"] >= 10, stats


@pytest.mark.parametrize("text", ["monitor[threshold=5]>nat[ports=64512]", "nat[ports=64512]>monitor[threshold=5]",
                                  "monitor[threshold=100,byte_threshold=400]>nat>lb",
                                  "firewall>monitor[threshold=4]>nat>monitor[threshold=6]>lb"])
def test_a_monitor_crossing_its_threshold_on_a_cached_flow(text):
    """The alert's extra output is not in the plan: the walk takes over at the monitor, the packet
    travels on as a copy (rewritten by the NAT when it comes later), the alert keeps the frame."""
    s = Script(text)
    flows = [(6, "10.0.0.1", 4000, VIP, 80), (17, "10.0.0.2", 5000, "93.184.216.34", 53)]
    s.handshake(flows[0], data=8)
    for _ in range(8):
        s.out(flows[1], payload=b"u" * 40)
        s.back(flows[1], payload=b"v" * 40)
    want, stats = same_everywhere(text, s.inputs)
    assert any(o[1].startswith("monitor") for o in want[0]) and any(o[4] for o in want[0])
    assert stats["hits"] >= 10, stats


def test_a_balancer_learning_a_flow_whose_replies_it_passed():
    """A reply the balancer does not know passes unchanged -- until an outbound packet makes the
    flow known: then the same reply is rewritten to come from the VIP. The plan that passed it
    rests on the key's absence and must be dropped when the key appears."""
    text = "monitor[threshold=1000]>lb[backends=1]"
    backend, host = "192.0.2.10", "10.0.0.1"
    inputs, t = [], 0
    reply = pad64(eth(tcp(backend, 80, host, 4000, ACK | PSH, b"r")))
    request = pad64(eth(tcp(host, 4000, VIP, 80, SYN)))
    for frame, side, repeat in ((reply, 1, 4), (request, 0, 1), (reply, 1, 4)):
        for _ in range(repeat):
            t += NS // 10
            inputs.append((frame, len(frame), t, side))
    want, stats = same_everywhere(text, inputs)
    srcs = [parse_frame(1, f, len(f)).src for i, e, _, _, _, f in want[0] if inputs[i][0] == reply]
    assert srcs == [bytes([192, 0, 2, 10])] * 4 + [bytes([198, 51, 100, 1])] * 4, srcs
    assert stats["hits"] >= 5, stats


def test_many_balancer_insertions_and_replies_it_does_not_know():
    """Replies of flows the balancer does not balance, cached, while it learns thousands of new
    flows (each bumping a bucket's version), some of them the replies' own."""
    text = "firewall>nat[ports=64512]>lb[backends=4]"
    s = Script(text, seed=5)
    rng = random.Random(5)
    flows = [(6, f"10.0.{k // 250}.{k % 250 + 1}", 2000 + k, VIP if k % 3 else "93.184.216.34", 80) for k in range(400)]
    opened = []
    for k, flow in enumerate(flows):
        s.handshake(flow, data=0)
        opened.append(flow)
        for old in rng.sample(opened, min(3, len(opened))):
            s.back(old, ACK | PSH, b"d")
            s.out(old, ACK)
    _, stats = same_everywhere(text, s.inputs, sizes=(32,))
    assert stats["hits"] > len(s.inputs) // 3, stats


def test_a_full_cache_is_emptied_and_refilled():
    text = "firewall>nat[ports=64512]>lb"
    s = Script(text)
    flows = [(6, f"10.1.{k // 200}.{k % 200 + 1}", 3000 + k, VIP if k % 2 else "93.184.216.34", 443) for k in range(60)]
    for flow in flows:
        s.handshake(flow, data=1)
    for _ in range(3):
        for flow in flows:
            s.out(flow, ACK | PSH, b"z")
            s.back(flow, ACK | PSH, b"z")
    _, stats = same_everywhere(text, s.inputs, cache_max=64)
    assert stats["flushes"] > 0 and stats["slots"] == 64 and stats["hits"] > 100, stats


def test_crowded_tables_under_churn():
    """Tables that start at 1024 slots and grow, the cache emptied every 32 plans or never:
    connections open, talk, close (FIN: the firewall's delete moves the slots after it), time out
    and reopen, interleaved."""
    text = "firewall[timeout=2]>nat[ports=64512]>lb[backends=3]"
    rng = random.Random(5)
    s = Script(text)
    flows = [(6, f"10.2.{k // 250}.{k % 250 + 1}", 2000 + k, VIP if k % 3 else "93.184.216.34", 443) for k in range(900)]
    opened, dt = [], NS // 10000
    for k, flow in enumerate(flows):
        s.handshake(flow, data=0, dt=dt)
        opened.append(flow)
        for old in rng.sample(opened, min(3, len(opened))):
            r = rng.random()
            if r < 0.04:
                s.out(old, FIN | ACK, dt=dt)
                opened.remove(old)
            elif r < 0.52:
                s.out(old, ACK | PSH, b"o", dt=dt)
            else:
                s.back(old, ACK | PSH, b"i", dt=dt)
    s.out(flows[0], ACK, dt=3 * NS)  # every entry times out: the next packets find them expired
    for old in opened[:60]:
        s.handshake(old, data=1)
        s.out(old, FIN | ACK)
    for cache_max in (64, 1 << 22):
        want, stats = same_everywhere(text, s.inputs, sizes=(32,), cache_max=cache_max)
        assert (stats["slots"], stats["flushes"] > 10) == ((64, True) if cache_max == 64 else (4096, False)), stats
        assert stats["express"] > len(s.inputs) // (6 if cache_max == 64 else 3), stats
    assert "firewall: no connection" in reasons(want[1])


def test_checksums_of_any_value_get_the_step_by_step_bytes():
    """The cache writes a flow's rewrite at once; the fallback writes it instance by instance. For
    frames whose checksums are anything (0, 0xFFFF, wrong), the bytes must still agree."""
    text = "firewall>nat[ports=64512]>lb[backends=3]"
    s = Script(text)
    flows = [(6, "10.0.0.1", 4000, VIP, 80), (17, "10.0.0.2", 5000, VIP, 53), (17, "10.0.0.3", 5001, "93.184.216.34", 53)]
    for flow in flows:
        if flow[0] == 6:
            s.handshake(flow, data=1)
        else:
            s.out(flow)
            s.back(flow)
    inputs = []
    rng = random.Random(8)
    for frame, wirelen, t, side in s.inputs:
        inputs.append((frame, wirelen, t, side))
        for value in (0, 0xFFFF, 1, rng.randrange(65536)):
            f = bytearray(frame)
            p = parse_frame(1, frame, len(frame))
            at = p.l4_offset + (16 if p.proto == 6 else 6) if rng.random() < 0.7 else p.l3_offset + 10
            struct.pack_into("!H", f, at, value)
            inputs.append((bytes(f), wirelen, t, side))
    want, stats = same_everywhere(text, inputs)
    assert stats["express"] > len(inputs) // 2, stats


@pytest.mark.parametrize("text", ["firewall>nat[ports=64512]>lb", "monitor[threshold=3]>nat[ports=64512]>lb",
                                  "csfq-edge>nat[ports=64512]>csfq-core[fair=1]", "nat[ports=64]>monitor[threshold=2]",
                                  "ratelimit[capacity=3,rate=2]>lb-hash[backends=3]", "nat>nat", "lb>firewall>nat[ports=64512]",
                                  "nat[ports=64512]>monitor[threshold=3]>nat[ports=64512]",
                                  "firewall[timeout=2,udp_timeout=1]>lb[backends=5]"])
def test_random_traffic_that_talks_back_cached_or_not(text):
    """Traffic that answers what the chain released (tests/test_runtime_pure.py Traffic), the
    same inputs through every path."""
    for seed in (1, 2):
        gen = Traffic(random.Random(seed))
        p = pure.Pipeline(chain(text), seed)
        inputs = []
        while len(inputs) < 1500:
            batch = Batch(8)
            for _ in range(8):
                frame, wirelen, t, side = gen.next()
                batch.add(frame, wirelen, t, side)
                inputs.append((frame, wirelen, t, side))
            p.process(batch)
            gen.saw([(p.egresses[e], f, None) for _, e, _, _, f in batch.outputs()])
        _, stats = same_everywhere(text, inputs, seed=seed, sizes=(1, 32))
        if text.count("nat") < 2:  # (nat>...>nat rewrites the port twice: no plan)
            assert stats["hits"] > 25, (text, stats)


@pytest.mark.parametrize("text, express", [("firewall>nat[ports=64512]>lb", True), ("nat[ports=64512]>lb", True),
                                           ("lb>firewall>nat[ports=64512]", True),
                                           ("monitor[threshold=1000]>nat[ports=64512]>lb", False)])
def test_the_express_path_takes_open_connections(text, express):
    """A hit whose plan's one live step is a firewall that finds the connection open (or that has
    no live step) takes run_express; a packet that opens or closes the connection, or a plan with
    another live step, takes run_plan; every byte and state agrees either way (same_everywhere)."""
    s = Script(text)
    flows = [(6, f"10.0.0.{k}", 4000 + k, VIP if k % 2 else "93.184.216.34", 80) for k in range(1, 9)]
    for flow in flows:
        s.handshake(flow, data=6)
    for flow in flows[:4]:
        s.out(flow, FIN | ACK)
        s.out(flow, RST)
    for flow in flows[4:]:
        s.back(flow, SYN | ACK)  # a late duplicate: stage 3 already
    _, stats = same_everywhere(text, s.inputs)
    if express:
        assert stats["express"] >= 8 * 6, stats
    else:
        assert stats["express"] == 0 and stats["hits"] >= 8 * 6, stats


@pytest.mark.parametrize("text", ["firewall>nat[ports=64512]>lb", "lb>firewall>nat[ports=64512]"])
def test_the_express_path_follows_the_handshake(text):
    """Hits at each stage of the firewall's handshake: what it passes (a SYN sent again, a SYN-ACK
    sent again, the handshake's last ACK, a FIN) takes run_express, what it drops out of order (an
    ACK before the SYN-ACK, a bare ACK from outside before the handshake's end) goes to run_plan
    and is dropped there; every byte, drop and state agrees with the paths without a cache."""
    s = Script(text)
    flows = [(6, f"10.0.0.{k}", 4000 + k, VIP if k % 2 else "93.184.216.34", 80) for k in range(1, 7)]
    for flow in flows:
        s.out(flow, SYN)           # a miss: the plan is recorded
        s.out(flow, SYN)           # stage 1, sent again: passes
        s.out(flow, ACK)           # stage 1, out of order: dropped
        s.back(flow, SYN | ACK)    # a miss (the reply's first packet): stage 2
        s.back(flow, ACK)          # stage 2, out of order: dropped
        s.back(flow, SYN | ACK)    # stage 2, sent again: passes
        s.out(flow, ACK)           # the handshake's end: stage 3
        s.out(flow, ACK | PSH, b"data")
        s.out(flow, FIN | ACK)     # the entry goes
        s.out(flow, ACK)           # no connection: dropped
    want, stats = same_everywhere(text, s.inputs)
    drops = [reason for _, reason in want[1]]
    assert len(drops) == 3 * len(flows), drops
    assert stats["express"] >= 5 * len(flows), stats


@pytest.mark.parametrize("text, planned", [("firewall>nat[ports=64512]>lb", True), ("lb>firewall>nat[ports=64512]", True),
                                           ("nat[ports=64512]>lb-hash[backends=3]", True),
                                           ("monitor[threshold=1000]>nat[ports=64512]>lb", False)])
def test_replies_are_planned_when_their_flow_opens(text, planned):
    """A flow opened from the inside gets its reply's plan a few inputs later (plan_reply): the
    reply's first packet is a hit, so each connection misses once, at its first packet; every byte,
    drop and state agrees with the paths without a cache. Replies the balancer does not know
    (remote addresses other than the VIP) rest on their key's absence, as any such plan. A reply
    path with a live step other than a firewall is not planned ahead."""
    s = Script(text)
    flows = [(6, f"10.0.0.{k}", 4000 + k, VIP if k % 2 else "93.184.216.34", 80) for k in range(1, 13)]
    flows += [(17, f"10.0.1.{k}", 5000 + k, VIP if k % 2 else "93.184.216.34", 53) for k in range(1, 5)]
    for flow in flows:
        if flow[0] == 6:
            s.out(flow, SYN)
        else:
            s.out(flow, payload=b"q")
    for flow in flows:             # each reply at least REPLY_DELAY inputs after its flow opened
        if flow[0] == 6:
            s.back(flow, SYN | ACK)
            s.out(flow, ACK)
            s.back(flow, ACK | PSH, b"in")
        else:
            s.back(flow, payload=b"a")
    want, _ = same_everywhere(text, s.inputs)
    assert not want[1], want[1]
    for size in (1, 5, 64):  # (a reply's due time carries over from one batch to the next)
        stats = run(lambda: fast.Pipeline(chain(text), 3, flow_cache=True), s.inputs, size)[1].cache_stats()
        if planned:
            assert stats["replies"] == len(flows) and stats["misses"] == len(flows), (size, stats)
        else:
            assert stats["replies"] == 0 and stats["misses"] == 2 * len(flows), (size, stats)


def test_tables_sized_ahead():
    p = fast.Pipeline(chain("firewall>nat>lb"), 0, flows=5000)  # at most a quarter full
    assert p.table_sizes() == {"firewall": (0, 32768), "nat": (0, 32768), "lb": (0, 32768)}
    assert p.cache_stats()["slots"] == 65536
    big = fast.Pipeline(chain("nat"), 0, flows=600_000)  # over 64 MB a quarter full: half full
    assert big.table_sizes() == {"nat": (0, 2097152)}
    assert fast.Pipeline(chain("firewall>nat>lb"), 0, flows=5000, cache_max=1024).cache_stats()["slots"] == 1024
    assert fast.Pipeline(chain("firewall>nat>lb"), 0).table_sizes()["nat"] == (0, 1024)
    for impl in (fast, pure):
        for flows in (-1, (1 << 24) + 1):
            with pytest.raises(ValueError, match="flows"):
                impl.Pipeline(chain("nat"), 0, flows=flows)


def test_the_cache_is_on_where_it_can_help():
    assert fast.Pipeline(chain("firewall>nat>lb"), 0).cache_stats()["enabled"]
    assert fast.Pipeline(chain("monitor>nat"), 0).cache_stats()["enabled"]
    assert not fast.Pipeline(chain("nat"), 0).cache_stats()["enabled"]
    assert not fast.Pipeline(chain("csfq-edge>csfq-core"), 0).cache_stats()["enabled"]
    with pytest.raises(ValueError, match="power of two"):
        fast.Pipeline(chain("firewall>nat"), 0, cache_max=1000)
