"""The concrete interpreter's and the generic executor's fast paths (issue 6, generic executor) give
what the plain code gives: `wrapper(kind)` what `wrap(kind, .)` gives (values, types, errors), the
Packet constructor what the dataclass's would, `Packet.wrapped` on every kind of field, the
TCP/UDP write-back the bytes of the word-list RFC 1624 update, and a model error raised in a fast
path names the model's line."""
import random
import struct
from collections import namedtuple
from dataclasses import fields

import pytest

from nfproof.models.api import (NF, Addr, Bits, Flow, Map, ModelError, Packet, Port, Set, TCP, UDP, wrap, wrapper)
from nfproof.models.concrete import initial_state, step
from nfproof.runtime import frames
from nfproof.runtime.frames import DPORT, DST, FLAGS, SPORT, SRC, _adjust, _put16, _put32, _u16, _words
from nfproof.traces.headers import parse_frame


def outcome(fn, value):
    try:
        got = fn(value)
        return ("value", got, type(got), tuple(map(type, got)) if isinstance(got, tuple) else None)
    except ModelError as e:
        return ("error", str(e))


Pair = namedtuple("Pair", "a b")
Pair.widths = (4, 8)
ODD = [0, 1, 15, 16, 255, 256, -1, -300, 1 << 40, True, False, 2.0, "x", None, (1, 2), [1, 2]]


@pytest.mark.parametrize("kind", [Port, Addr, Bits(1, "B1"), Bits(3, "B3")])
def test_bits_wrapper_is_wrap(kind):
    for v in ODD:
        assert outcome(wrapper(kind), v) == outcome(lambda x: wrap(kind, x), v), v


@pytest.mark.parametrize("kind", [Flow, Pair])
def test_record_wrapper_is_wrap(kind):
    rng = random.Random(3)
    n = len(kind._fields)
    values = [kind(*[rng.randrange(0, 1 << 16) for _ in range(n)]) for _ in range(50)]
    values += [kind(*[rng.choice(ODD) for _ in range(n)]) for _ in range(200)]
    values += [tuple(kind(*range(n))), tuple(range(n + 1)), tuple.__new__(kind, (1,) * (n - 1))] + ODD
    for v in values:
        try:
            expect = outcome(lambda x: wrap(kind, x), v)
        except Exception as e:  # a malformed record wrap cannot even show: the wrapper fails alike
            with pytest.raises(type(e)):
                wrapper(kind)(v)
            continue
        assert outcome(wrapper(kind), v) == expect, v


def test_wrapper_returns_a_record_that_holds_as_it_is():
    f = Flow(6, 1, 2, 3, 4)
    assert wrapper(Flow)(f) is f
    assert wrapper(Flow)(Flow(6, 1, 2, 3, 1 << 16)) == Flow(6, 1, 2, 3, 0)
    assert type(wrapper(Flow)((6, 1, 2, 3, 4))) is Flow


def test_packet_constructor_as_the_dataclass():
    assert [f.name for f in fields(Packet)] == list(Packet().__dict__)
    p = Packet(UDP, 1, 2, dst=3, label=7)
    assert (p.proto, p.src, p.sport, p.dst, p.dport, p.flags, p.inbound, p.length, p.label) == (UDP, 1, 2, 3, 0, 0,
                                                                                                  False, 0, 7)
    assert Packet() == Packet(TCP) and hash(Packet(1, 2)) == hash(Packet(1, 2))
    with pytest.raises(TypeError):
        Packet(nope=1)
    with pytest.raises(Exception):
        p.src = 5  # still frozen


@pytest.mark.parametrize("changes", [{}, {"src": 1 << 32}, {"sport": -1}, {"flags": True}, {"label": 70000},
                                     {"length": 1.5}, {"dport": "x"}, {"inbound": 1}, {"inbound": None}])
def test_wrapped_fast_path_as_the_loop(changes):
    p = Packet(TCP, 5, 6, 7, 8, 2, True, 60, 1).rewrite(**changes)
    try:
        got = p.wrapped()
    except ModelError as e:
        got = str(e)
    try:  # the reference: every field checked and masked in turn
        if not isinstance(p.inbound, bool):
            raise ModelError(f"the `inbound` field holds a bool (True: arrived from the outside), not {p.inbound!r}; "
                             f"write a comparison or bool(...), e.g. inbound=(x == 2)")
        expect = {"inbound": p.inbound}
        for f, width in (("proto", 8), ("src", 32), ("sport", 16), ("dst", 32), ("dport", 16), ("flags", 8),
                         ("length", 16), ("label", 16)):
            value = getattr(p, f)
            if not isinstance(value, int):
                raise ModelError(f"packet field `{f}` holds an integer, not {value!r}")
            expect[f] = value & ((1 << width) - 1)
    except ModelError as e:
        assert got == str(e)
        return
    assert got.__dict__ == expect and list(got.__dict__) == list(expect)
    assert all(type(v) is int for k, v in got.__dict__.items() if k != "inbound")


class BadKey(NF):
    name = "badkey"
    gates = ("wan", "lan")
    by_flow = Map(Flow, Port)
    seen = Set(Port)

    def handle(self, pkt, ctx):
        if pkt.sport == 1:
            return self.by_flow.get("not a flow")  # line A
        if pkt.sport == 2:
            self.seen.add(None)  # line B
        ctx.emit(pkt, "wan")


def test_a_fast_path_error_names_the_model_line():
    import inspect
    lines, first = inspect.getsourcelines(BadKey.handle)
    for sport, marker in ((1, "line A"), (2, "line B")):
        line = first + next(k for k, text in enumerate(lines) if marker in text)
        with pytest.raises(ModelError) as e:
            step(BadKey, initial_state(BadKey), Packet(sport=sport), None)
        assert str(e.value).startswith(f"{__file__}:{line}: "), str(e.value)


def reference_write(buf, parsed, old, new):
    """The word-list write-back of a TCP/UDP frame (frames.write_fields before _write_l4)."""
    tcp = parsed.proto == TCP
    l3 = parsed.l3_offset
    ip_old, ip_new = [], []
    for index, at in ((SRC, l3 + 12), (DST, l3 + 16)):
        if old[index] != new[index]:
            ip_old += _words(_u16(buf, at) << 16 | _u16(buf, at + 2))
            _put32(buf, at, new[index])
            ip_new += _words(new[index])
    l4 = parsed.l4_offset
    l4_old, l4_new = list(ip_old), list(ip_new)
    for index, at in ((SPORT, l4), (DPORT, l4 + 2)):
        if old[index] != new[index]:
            l4_old.append(_u16(buf, at))
            _put16(buf, at, new[index])
            l4_new.append(new[index])
    if tcp:
        if old[FLAGS] != new[FLAGS]:
            l4_old.append(_u16(buf, l4 + 12))
            buf[l4 + 13] = new[FLAGS]
            l4_new.append(_u16(buf, l4 + 12))
        if l4_old:
            _adjust(buf, l4 + 16, l4_old, l4_new)
    elif l4_old:
        _adjust(buf, l4 + 6, l4_old, l4_new, udp=True)
    if ip_old:
        _adjust(buf, l3 + 10, ip_old, ip_new)


def l4_frame(rng, proto):
    src, dst, sport, dport = rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16)
    if proto == TCP:
        seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4 | rng.getrandbits(1), rng.getrandbits(8), 512,
                          rng.getrandbits(16), 0)
    else:
        seg = struct.pack("!HHHH", sport, dport, 8, rng.choice((0, 0xFFFF, rng.getrandbits(16))))
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(seg), 1, 0, 64, proto, rng.getrandbits(16), src, dst)
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + seg


def test_l4_write_back_bytes_as_the_word_lists():
    rng = random.Random(6)
    for _ in range(3000):
        frame = l4_frame(rng, rng.choice((TCP, UDP)))
        parsed = parse_frame(1, frame, len(frame))
        old = frames.view_fields(parsed, False, len(frame))
        new = list(old)
        for index, bits in ((SRC, 32), (DST, 32), (SPORT, 16), (DPORT, 16), (FLAGS, 8)):
            if rng.random() < 0.4 and (index != FLAGS or old[0] == TCP):
                new[index] = rng.getrandbits(bits) if rng.random() < 0.9 else old[index]
        new = tuple(new)
        got, expect = bytearray(frame), bytearray(frame)
        frames.write_fields(got, 0, len(got), parsed, old, new, "x")
        if old[:6] != new[:6]:
            reference_write(expect, parsed, old, new)
        assert got == expect, (frame.hex(), old, new)


class Fan(NF):
    """Emits `copies` copies of each outbound packet on `wan`, the k-th with sport + k (wrapping) and
    label k; drops every packet whose dport is 9 with a reason, after emitting; inbound ones pass."""

    name = "fan"
    gates = ("wan", "lan")
    copies = 5

    def handle(self, pkt, ctx):
        if pkt.inbound:
            return ctx.emit(pkt, "lan")
        for k in range(self.copies):
            ctx.emit(pkt.rewrite(sport=pkt.sport + k, label=k), "wan")
        if pkt.dport == 9:
            ctx.drop("nine")


class EvenOnly(NF):
    """Passes packets with an even source port, drops the others."""

    name = "even"
    gates = ("wan", "lan")

    def handle(self, pkt, ctx):
        if pkt.sport % 2:
            return ctx.drop("odd")
        ctx.emit(pkt, "lan" if pkt.inbound else "wan")


@pytest.mark.parametrize("capacity, per_input", [(8, 8), (2, 1), (1, 1)])
def test_generic_results_as_run_chain(capacity, per_input):
    """The generic executor's outputs (egress, instance, label, rewritten frame) and drops are the
    chain's concrete execution (models/chain.py run_chain) written onto the frames, whether its
    result arrays have room or have to grow while it writes them."""
    import frames_gen as g
    from nfproof.models.chain import Chain, run_chain
    from nfproof.models.concrete import initial_state as init
    from nfproof.runtime.batch import Batch
    from nfproof.runtime.generic import GenericPipeline

    lookup = {"fan": Fan, "even": EvenOnly}.__getitem__
    chain = Chain.parse("fan>even", lookup)
    rng = random.Random(capacity)
    inputs = [g.frame_tcp("10.0.0.1", rng.choice((0xFFFE, 1000, 1001)), "198.51.100.7", rng.choice((9, 80)))
              if rng.random() < 0.7 else g.frame_udp("198.51.100.7", 53, "10.0.0.1", rng.choice((1000, 1001)))
              for _ in range(12)]
    pipeline = GenericPipeline(chain, seed=1)
    state = {name: init(m.nf) for name, m in chain.members.items()}
    for start in range(0, len(inputs), capacity):
        batch = Batch(capacity, outputs_per_input=per_input)
        chunk = inputs[start:start + capacity]
        for k, frame in enumerate(chunk):
            batch.add(frame, len(frame), k, 1 if frame[23] == UDP else 0)
        pipeline.process(batch)
        got_out = [(i, pipeline.egresses[e], pipeline.instances[inst], label, frames.view(parse_frame(1, f, len(f)),
                    False, len(f)).rewrite(inbound=False, label=label)) for i, e, inst, label, f in batch.outputs()]
        got_drops = [(i, pipeline.reasons[r]) for i, r in batch.drops()]
        expect_out, expect_drops = [], []
        for i, frame in enumerate(chunk):
            parsed = parse_frame(1, frame, len(frame))
            pkt = frames.view(parsed, frame[23] == UDP, len(frame))
            result = run_chain(chain, state, pkt, None)
            released = [v for v in result.visits]
            expect_out += [(i, egress, "even" if egress == "outside" else "fan", out.label,
                            out.rewrite(inbound=False)) for egress, out in result.outputs]
            expect_drops += [(i, f"{inst}: {reason}") for inst, reason in result.drops]
            assert released
        assert got_out == expect_out
        assert sorted(got_drops) == sorted(expect_drops)
        assert batch.n_out == len(expect_out) and len(batch.out_in) >= batch.n_out
