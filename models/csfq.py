"""Core-stateless fair queueing (CSFQ, the HCSFQ line of work): rate labels at the edge,
probabilistic drops in the core."""
from .api import NF, Bits, Flow, Map, Packet, Param, Pool, Time

Count = Bits(32, "Count")
LABEL_MAX = 0xFFFF  # Packet.label is 16 bits


class CsfqEdge(NF):
    """Theory of operation: the edge estimates each flow's rate and writes it into the packet's
    `label` (packets per `window`), so that core routers can drop fairly without per-flow state.
    Time is cut into windows per flow: the first packet of a flow opens a window (`ctx.now()`);
    a packet arriving `window` or more after the window opened closes it and opens a new one at
    its arrival. The estimate is an exponentially weighted average kept in integers: when a window
    closes, estimate = (estimate + packets in the window) >> 1 if the flow was active in the
    previous window, else 0 (it was idle for a whole window). The label is the larger of the
    estimate and the count of the current window (so a burst is labelled at once), capped at
    the label's 16 bits. Every packet passes (from `lan` to `wan` and back), labelled.

    State: `opened`, `count`, `estimate` per flow (its 5-tuple as it travels). Nondeterminism:
    the clock reads. A failover that loses the estimates labels flows too low for a while.
    Traffic outside the model (non-IPv4 frames) passes unlabelled."""

    name = "csfq-edge"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    partition = "flow"
    window = Param(2, "length of a rate-estimation window", kind="time", low=0)
    opened = Map(Flow, Time)       # flow -> start of its current window
    count = Map(Flow, Count)       # flow -> packets in the current window
    estimate = Map(Flow, Count)    # flow -> rate estimate (packets per window)

    def handle(self, pkt: Packet, ctx) -> None:
        now, flow = ctx.now(), pkt.flow
        opened, count, estimate = self.opened.get(flow), self.count.get(flow), self.estimate.get(flow)
        if opened is None or count is None or estimate is None:
            count, estimate = 0, 0
            self.opened[flow] = now
        elif now - opened >= self.window:
            estimate = (estimate + count) >> 1 if now - opened < 2 * self.window else 0
            count = 0
            self.opened[flow] = now
        count = count + 1
        self.count[flow], self.estimate[flow] = count, estimate
        label = estimate if estimate > count else count
        if label > LABEL_MAX:
            label = LABEL_MAX
        ctx.emit(pkt.rewrite(label=label), "lan" if pkt.inbound else "wan")


class CsfqCore(NF):
    """Theory of operation: a core router with no per-flow state. A packet whose rate label is at
    most the fair share `fair` passes. Above it, the packet is dropped with probability
    1 - fair/label, drawn as a nondeterministic choice r of `levels` equally likely values
    0..levels-1: dropped iff r * label >= levels * fair (the share of such r is the drop
    probability, rounded to 1/levels). Unlabelled packets (label 0) always pass. Passing packets
    keep their label and leave on the gate opposite the side they arrived from.

    State: none. Nondeterminism: the drop draw, one `choose` per packet above the fair share. A
    failover loses nothing; a replayed packet may draw again, which is another failure-free draw.
    Traffic outside the model (non-IPv4 frames) passes."""

    name = "csfq-core"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    partition = "stateless"
    fair = Param(2, "fair share (label units: packets per edge window)", low=0, high=LABEL_MAX)
    levels = Param(4, "resolution of the drop probability (choices per draw)", low=1, high=256)

    def handle(self, pkt: Packet, ctx) -> None:
        out = "lan" if pkt.inbound else "wan"
        if pkt.label > self.fair:
            r = ctx.choose(Pool(0, self.levels, Bits(8, "Draw")).all())
            if r * pkt.label >= self.levels * self.fair:
                return ctx.drop("over the fair share")
        ctx.emit(pkt, out)
