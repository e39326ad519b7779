"""Runtime-vs-model conformance, Hypothesis stateful testing: for every bundled NF one state machine
drives the Cython fast path, the pure-Python fallback, the generic executor (the model's own
handler on frames, interpreted and compiled: models/compile.py) and the model's concrete execution (models.concrete.step on model packets, no
frames) with the same frames, times and seed, and asserts after every batch: the three pipelines
give byte-identical outputs, drops and state; the model's outputs (written onto the frames and
read back as model packets), its drops and its state are the same. Chains run the three
pipelines against each other."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import frames_gen as g
from nfproof import models
from nfproof.models.chain import Chain
from nfproof.models.concrete import initial_state, plain_state, step
from nfproof.runtime import frames, pure
from nfproof.runtime.batch import Batch
from nfproof.runtime.generic import GenericPipeline, compiled_pipeline
from nfproof.runtime.rng import InstanceRng, StreamChooser
from nfproof.traces import parse_frame

try:
    from nfproof.runtime import fast
    FAST = hasattr(fast, "Pipeline") and os.environ.get("NFPROOF_PUREPYTHON") != "1"
except ImportError:
    FAST = False

NS = 1_000_000_000
INSIDE = ("10.0.0.1", "10.0.0.2")
REMOTE = ("198.51.100.1", "192.0.2.10", "203.0.113.1")  # the lb's vip and first backend, the nat's address
PORTS = (1024, 1025, 80)
TCP_FLAGS = (0x02, 0x12, 0x10, 0x18, 0x01, 0x04, 0x11)  # S, SA, A, PA, F, R, FA
GAPS_NS = (0, 0, 1, NS // 2, NS, 3 * NS, 7 * NS)

# Parameters that make every NF act within a few packets (small pools and timeouts, low thresholds).
PARAMS = {"nat": {"ports": 3}, "firewall": {"timeout": 4, "udp_timeout": 3}, "lb": {"backends": 2},
          "lb-hash": {"backends": 2}, "ratelimit": {"capacity": 2, "rate": 1}, "monitor": {"threshold": 2},
          "csfq-edge": {"window": 2}, "csfq-core": {"fair": 1, "levels": 4}}


def _l4(kind, src, dst, sport, dport, flags):
    if kind == "tcp":
        return g.tcp(src, sport, dst, dport, flags)
    if kind == "udp":
        return g.udp(src, sport, dst, dport)
    if kind == "echo":
        return g.echo(src, dst, sport)
    return g.echo(src, dst, dport, reply=True)


@st.composite
def frames_(draw):
    """A frame from a small world (so flows repeat): TCP, UDP, ICMP echo requests and replies,
    ICMP errors quoting any of those (sent back by the quoted packet's destination or a router),
    VLAN tags, and frames outside the models (IPv6, ARP)."""
    kind = draw(st.sampled_from(["tcp"] * 6 + ["udp"] * 2 + ["echo", "reply", "error", "ipv6", "arp"]))
    if kind == "ipv6":
        return g.eth(g.ipv6_udp("fd00::1", "2001:db8::1", draw(st.sampled_from(PORTS)), 53), ethertype=0x86DD)
    if kind == "arp":
        return g.eth(g.arp_request(draw(st.sampled_from(INSIDE)), draw(st.sampled_from(REMOTE))), ethertype=0x0806)
    ends = [draw(st.sampled_from(INSIDE)), draw(st.sampled_from(REMOTE))]
    if draw(st.booleans()):
        ends.reverse()
    src, dst = ends
    sport, dport, flags = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS)), draw(st.sampled_from(TCP_FLAGS))
    vlans = draw(st.sampled_from([(), (), (7,)]))
    if kind == "error":
        quoted = _l4(draw(st.sampled_from(["tcp", "udp", "echo"])), src, dst, sport, dport, flags)
        reporter = draw(st.sampled_from([dst, "192.0.2.254"]))
        return g.eth(g.icmp_error(reporter, src, quoted), vlans=vlans)
    return g.eth(_l4(kind, src, dst, sport, dport, flags), vlans=vlans)


class Conformance(RuleBasedStateMachine):
    nf_name = "nat"

    @initialize(seed=st.integers(0, 2 ** 64 - 1))
    def start(self, seed):
        self.chain = Chain.parse(self.nf_name, lambda name: models.lookup(name).configure(PARAMS[name]))
        self.nf = self.chain.members[self.chain.ingresses["inside"]].nf
        self.paths = {"fallback": pure.Pipeline(self.chain, seed), "generic": GenericPipeline(self.chain, seed)}
        if FAST:
            self.paths["fast"] = fast.Pipeline(self.chain, seed)
            self.paths["compiled"], why = compiled_pipeline(self.chain, seed)
            assert why is None, why
        self.member = next(iter(self.chain.members.values()))
        self.model_state = initial_state(self.nf)
        self.model_chooser = StreamChooser(InstanceRng(seed, 0))
        self.pending, self.t_ns, self.conversations = [], 0, []

    @rule(frame=frames_(), side=st.sampled_from([0, 1]), gap=st.sampled_from(GAPS_NS))
    def arrive(self, frame, side, gap):
        self.t_ns += gap
        self.pending.append((frame, side, self.t_ns))
        parsed = parse_frame(1, frame, len(frame))
        if parsed.protocol in ("tcp", "udp") and parsed.ip_version == 4:
            self.conversations.append((parsed.protocol, parsed.src, parsed.sport, parsed.dst, parsed.dport, side))

    @rule(k=st.integers(0, 7), reverse=st.booleans(), flags=st.sampled_from(TCP_FLAGS), gap=st.sampled_from(GAPS_NS))
    def converse(self, k, reverse, flags, gap):
        """A later packet of a conversation seen before, either way: handshakes, data, teardown."""
        if not self.conversations:
            return
        proto, src, sport, dst, dport, side = self.conversations[-1 - k % len(self.conversations)]
        if reverse:
            src, sport, dst, dport, side = dst, dport, src, sport, 1 - side
        src, dst = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        l4 = g.tcp(src, sport, dst, dport, flags) if proto == "tcp" else g.udp(src, sport, dst, dport)
        self.t_ns += gap
        self.pending.append((g.eth(l4), side, self.t_ns))

    @rule()
    def flush(self):
        if not self.pending:
            return
        results = {}
        for name, pipeline in self.paths.items():
            batch = Batch(len(self.pending))
            for frame, side, t in self.pending:
                batch.add(frame, len(frame), t, side)
            pipeline.process(batch)
            results[name] = ([(pipeline.egresses[e], inst, label, data) for _, e, inst, label, data in batch.outputs()],
                             [(i, pipeline.reasons[r]) for i, r in batch.drops()])
        reference = results["generic"]
        for name, result in results.items():
            assert result == reference, f"{name} differs from the generic executor"
        if len(self.chain.members) == 1:
            assert reference == self._model(), "the model's concrete execution differs"
        self.pending = []

    def _model(self):
        """What the model does with the same inputs, as (outputs, drops) in the pipelines' terms."""
        outputs, drops = [], []
        hops = self.chain._routes()
        for i, (frame, side, t) in enumerate(self.pending):
            parsed = parse_frame(1, frame, len(frame))
            inbound = bool(side)
            pkt = frames.view(parsed, inbound, len(frame))
            if isinstance(pkt, str):
                drops.append((i, pkt))
                continue
            if pkt is frames.OUTSIDE:
                gate = (self.member.inside if inbound else self.member.outside)[0]
                outputs.append((hops[(self.nf_name, gate)].egress, 0, 0, frame))
                continue
            tps = self.nf.ticks_per_second
            res = step(self.nf, self.model_state, pkt, self.model_chooser, lambda: t * tps // NS)
            drops += [(i, f"{self.nf_name}: {r}") for r in res.drops]
            for gate, out in res.outputs:
                buf = bytearray(frame)
                try:
                    frames.write_back(buf, parsed, pkt, out, self.nf_name)
                except frames.FrameError as e:
                    drops.append((i, e.drop_reason(self.nf_name)))
                    continue
                seen = frames.view(parse_frame(1, bytes(buf), len(buf)), out.inbound, len(buf))
                assert seen == out.rewrite(label=0), f"the frame does not carry the model's output {out}"
                outputs.append((hops[(self.nf_name, gate)].egress, 0, out.label, bytes(buf)))
        return outputs, drops

    @invariant()
    def same_state(self):
        if not hasattr(self, "paths"):
            return
        for instance in self.chain.members:
            expected = self.paths["generic"].state(instance)
            if len(self.chain.members) == 1:
                assert expected == plain_state(self.model_state), "the generic executor's state differs from the model's"
            for name, pipeline in self.paths.items():
                assert pipeline.state(instance) == expected, f"{name}'s state of {instance} differs"


def _machine(nf_name):
    machine = type(f"Conformance_{nf_name}", (Conformance,), {"nf_name": nf_name})
    machine.TestCase.settings = settings(max_examples=40, stateful_step_count=60, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
    return machine.TestCase


BUNDLED = ("nat", "firewall", "lb", "lb-hash", "ratelimit", "monitor", "csfq-edge", "csfq-core")
CHAINS = ("firewall>nat>lb", "csfq-edge>csfq-core", "monitor>nat")  # the three pipelines against each other
for _name in BUNDLED + CHAINS:
    globals()[f"TestConformance_{_name.replace('-', '_').replace('>', '_then_')}"] = _machine(_name)


def test_fast_path_is_tested_when_built():
    if os.environ.get("NFPROOF_PUREPYTHON") == "1":
        pytest.skip("NFPROOF_PUREPYTHON=1: the fallback run of this file")
    assert FAST, "runtime/fast.pyx is not built or has no Pipeline: the conformance tests would skip the fast path"
