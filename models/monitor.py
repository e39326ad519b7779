"""Traffic monitor: per-flow packet and byte counters, one heavy-hitter alert per flow."""
from .api import NF, Bits, Flow, Map, Packet, Param, Set

Count = Bits(32, "Count")


class Monitor(NF):
    """Theory of operation: every packet passes unchanged (from `lan` to `wan`, from `wan` to
    `lan`) and is counted per flow (its 5-tuple as it travels, so the two directions of a
    connection are two flows): packets, and bytes from the packet's `length` field (0 when the
    frame's length is unknown). When a flow's count reaches `threshold` packets, or its bytes reach
    `byte_threshold` (0: no byte threshold), the monitor emits one alert on the control gate
    `alert`, after the packet itself: a copy of the packet that crossed the threshold. A flow is
    alerted at most once. Counters wrap at 32 bits (never in a proof).

    State: `packets`, `octets` per flow, `alerted` (flows already reported). No nondeterminism.
    A failover that loses the counters makes a flow alert late, twice or not at all, which no
    failure-free run does. Traffic outside the model (non-IPv4 frames) passes uncounted."""

    name = "monitor"
    gates = ("wan", "lan", "alert")
    outside, inside = ("wan",), ("lan",)  # `alert` is an egress of its own
    partition = "flow"
    threshold = Param(3, "packets of a flow that make it a heavy hitter", low=1)
    byte_threshold = Param(0, "bytes of a flow that make it a heavy hitter (0: off)")
    packets = Map(Flow, Count)
    octets = Map(Flow, Count)
    alerted = Set(Flow)

    def handle(self, pkt: Packet, ctx) -> None:
        flow = pkt.flow
        packets, octets = self.packets.get(flow), self.octets.get(flow)
        packets = 1 if packets is None else packets + 1
        octets = pkt.length if octets is None else octets + pkt.length
        self.packets[flow], self.octets[flow] = packets, octets
        ctx.emit(pkt, "lan" if pkt.inbound else "wan")
        heavy = packets >= self.threshold
        if self.byte_threshold:
            heavy = heavy or octets >= self.byte_threshold
        if heavy and flow not in self.alerted:
            self.alerted.add(flow)
            ctx.emit(pkt, "alert")
