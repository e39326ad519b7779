"""Small NFs for the chain tests (tests/test_chain.py): each declares its outside- and
inside-facing gates, and each is small enough for Z3 and the enumerator at bounds <= 2."""
from __future__ import annotations

from nfproof.models.api import NF, Bits, Counter, Map, Pool, Port


class Stamp(NF):
    """Stateless: appends its `mark` to the packet's label (label * 4 + mark), so an output's
    label spells the instances it crossed, in order. Outbound leaves on `up`, inbound on `down`."""

    name = "stamp"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    mark = 1

    def handle(self, pkt, ctx):
        out = pkt.rewrite(label=pkt.label * 4 + self.mark)
        ctx.emit(out, "down" if pkt.inbound else "up")


class StampA(Stamp):
    name, mark = "a", 1


class StampB(Stamp):
    name, mark = "b", 2


class StampC(Stamp):
    name, mark = "c", 3


class Count(NF):
    """Theory of operation: deterministic; counts every packet (8 bits) and writes the running
    count into `flags`. Replay rebuilds its state, so only `none` loses it."""

    name = "count"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    seen = Counter(Bits(8, "Count"))

    def handle(self, pkt, ctx):
        self.seen += 1
        ctx.emit(pkt.rewrite(flags=self.seen), "down" if pkt.inbound else "up")


class Pick(NF):
    """Theory of operation: an outbound packet of a source port seen for the first time gets a
    backend (dport) chosen from two, remembered per source port; inbound packets pass unchanged.
    The choice is what failover must preserve."""

    name = "pick"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    backends = Pool(base=7001, size=2)
    by_src = Map(Port, Port)

    def handle(self, pkt, ctx):
        if pkt.inbound:
            return ctx.emit(pkt, "down")
        backend = self.by_src.get(pkt.sport)
        if backend is None:
            backend = ctx.choose(self.backends.all())
            self.by_src[pkt.sport] = backend
        ctx.emit(pkt.rewrite(dport=backend), "up")


class Split(NF):
    """Stateless splitter: outbound packets with an even source port leave on `left`, odd ones
    on `right` (both face outside); inbound ones leave on `back`."""

    name = "split"
    gates = ("left", "right", "back")
    outside, inside = ("left", "right"), ("back",)

    def handle(self, pkt, ctx):
        if pkt.inbound:
            return ctx.emit(pkt, "back")
        ctx.emit(pkt, "left" if pkt.sport % 2 == 0 else "right")


class Alarm(NF):
    """Theory of operation: counts packets; forwards each (outbound on `up`, inbound on `down`)
    and, when the count reaches 2, emits one copy labelled 2 on `alert` right after it (an extra
    gate: a chain egress of its own)."""

    name = "alarm"
    gates = ("up", "down", "alert")
    outside, inside = ("up",), ("down",)
    seen = Counter(Bits(8, "Count"))

    def handle(self, pkt, ctx):
        self.seen += 1
        ctx.emit(pkt, "down" if pkt.inbound else "up")
        if self.seen == 2:
            ctx.emit(pkt.rewrite(label=2), "alert")


class Reject(NF):
    """Stateless: an outbound packet to port 23 is answered with a reply back towards the inside
    (turned around on `down`); everything else passes."""

    name = "reject"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)

    def handle(self, pkt, ctx):
        if not pkt.inbound and pkt.dport == 23:
            return ctx.emit(pkt.rewrite(src=pkt.dst, sport=pkt.dport, dst=pkt.src, dport=pkt.sport, flags=4), "down")
        ctx.emit(pkt, "down" if pkt.inbound else "up")


class AlwaysUp(NF):
    """Sends everything out on `up` (outside-facing), whichever side it came from."""

    name = "always-up"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)

    def handle(self, pkt, ctx):
        ctx.emit(pkt, "up")


class AlwaysDown(NF):
    """Sends everything back on `down` (inside-facing), whichever side it came from."""

    name = "always-down"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)

    def handle(self, pkt, ctx):
        ctx.emit(pkt, "down")


TEST_NFS = {cls.name: cls for cls in (StampA, StampB, StampC, Count, Pick, Split, Alarm, Reject, AlwaysUp, AlwaysDown)}


def lookup(name: str) -> type[NF]:
    """As models.lookup, over the test NFs."""
    try:
        return TEST_NFS[name]
    except KeyError:
        raise KeyError(f"unknown NF {name!r}; valid: {', '.join(sorted(TEST_NFS))}") from None


class Inc(NF):
    """Stateless: adds one to the source port (65535 + 1 wraps to 0 on the link to the next NF)."""

    name = "inc"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)

    def handle(self, pkt, ctx):
        ctx.emit(pkt.rewrite(sport=pkt.sport + 1), "down" if pkt.inbound else "up")


class DropZero(NF):
    """Stateless: drops packets from source port 0, passes the rest."""

    name = "drop-zero"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)

    def handle(self, pkt, ctx):
        if pkt.sport == 0:
            return ctx.drop("source port 0")
        ctx.emit(pkt, "down" if pkt.inbound else "up")


TEST_NFS.update({cls.name: cls for cls in (Inc, DropZero)})
