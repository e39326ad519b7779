"""Per-source token-bucket rate limiter driven by the clock."""
from .api import NF, Addr, Bits, Map, Packet, Param, Time

Credit = Bits(32, "Credit")


class RateLimit(NF):
    """Theory of operation: every source address has a token bucket of `capacity` tokens that
    refills at `rate` tokens per second; a packet costs one token. A source seen for the first
    time starts with a full bucket. On each packet the bucket is refilled for the time elapsed
    since its last refill (`ctx.now()`), capped at the capacity; the packet passes if a token is
    left (and spends it), else it is dropped. Packets of both directions are limited, each by its
    own source; a passing packet leaves on the gate opposite the side it arrived from.

    Integer arithmetic only: the bucket holds credit in 1/ticks_per_second tokens (a packet costs
    `ticks_per_second` credit, one tick refills `rate` credit), so no rounding is ever lost.

    State: `credit` and `refilled` (time of the last refill) per source. Nondeterminism: the
    clock reads. Under `none` the standby's buckets start full, which a failure-free run explains
    exactly when the failover time refills a whole bucket (rate x failover time >= capacity).
    Traffic outside the model (non-IPv4 frames) passes unlimited."""

    name = "ratelimit"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    partition = "source"
    capacity = Param(2, "bucket size (tokens: the largest burst)", low=1, high=1 << 16)
    rate = Param(1, "refill rate (tokens per second)", low=0, high=1 << 16)
    credit = Map(Addr, Credit)     # source -> credit (tokens x ticks_per_second)
    refilled = Map(Addr, Time)     # source -> time of the last refill

    def handle(self, pkt: Packet, ctx) -> None:
        now = ctx.now()
        cost, full = self.ticks_per_second, self.capacity * self.ticks_per_second
        credit, last = self.credit.get(pkt.src), self.refilled.get(pkt.src)
        if credit is None or last is None:
            credit = full
        else:
            credit = credit + (now - last) * self.rate
            if credit > full:
                credit = full
        self.refilled[pkt.src] = now
        if credit < cost:
            self.credit[pkt.src] = credit
            return ctx.drop("over the rate")
        self.credit[pkt.src] = credit - cost
        ctx.emit(pkt, "lan" if pkt.inbound else "wan")
