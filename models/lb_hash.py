"""Load balancer by flow hash: the backend is a function of the flow, no state, no choice."""
from .api import NF, Flow, Packet, Param, ParamError, flow_hash


class LbHash(NF):
    """Theory of operation: outbound traffic (from `lan`) addressed to the virtual address `vip`
    goes to backend number `flow_hash(flow, backends)` of `backends` servers at consecutive
    addresses from `first`: the destination is rewritten and the packet leaves on `wan`. Every
    packet of a flow hashes alike, so flows are sticky without any state. An inbound packet from
    a backend address is a reply if its flow, read back to the VIP, hashes to that very backend:
    then its source is rewritten to the VIP; every other packet (inbound or not addressed to the
    VIP) passes unchanged. Traffic outside the model (non-IPv4 frames) passes unchanged.

    State: none. Nondeterminism: none. Failover cannot lose anything (every strategy is
    equivalent to a failure-free run, `none` included); changing `backends` re-hashes flows, which
    is a reconfiguration, not a failover."""

    name = "lb-hash"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    partition = "stateless"
    vip = Param("198.51.100.1", "the virtual address clients connect to", kind="ipv4")
    first = Param("192.0.2.10", "address of the first backend (the others follow it)", kind="ipv4")
    backends = Param(2, "number of backends", low=1, high=1024)

    @classmethod
    def check_params(cls) -> None:
        if cls.first + cls.backends > 1 << 32:
            raise ParamError(f"lb-hash.first + lb-hash.backends reaches past 255.255.255.255; valid: fewer backends")

    def handle(self, pkt: Packet, ctx) -> None:
        if pkt.inbound:
            flow = Flow(pkt.proto, pkt.dst, pkt.dport, self.vip, pkt.sport)
            if self.first + flow_hash(flow, self.backends) == pkt.src:
                return ctx.emit(pkt.rewrite(src=self.vip), "lan")
            return ctx.emit(pkt, "lan")
        if pkt.dst != self.vip:
            return ctx.emit(pkt, "wan")
        ctx.emit(pkt.rewrite(dst=self.first + flow_hash(pkt.flow, self.backends)), "wan")
