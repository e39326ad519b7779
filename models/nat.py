"""Network address translation (NAPT, port-restricted cone)."""
from .api import NF, Flow, Map, Packet, Pool, Port, addr


class Nat(NF):
    """Theory of operation: an outbound packet (from the LAN) of a flow seen for the first time
    gets an external port chosen nondeterministically from the free ports of the pool; the flow and
    the port are remembered both ways, and the packet leaves on `wan` with the NAT's external
    address and that port as its source. Later packets of the flow reuse the port. An inbound
    packet (from the WAN) addressed to a mapped port and coming from the remote end of that
    mapping is translated back and leaves on `lan`; any other inbound packet is dropped, as is
    a new flow when the pool is exhausted. Mappings never expire (no clock).

    The port choice is the nondeterminism that failover must preserve: once a flow's port has
    been seen outside, every later packet of the flow must carry the same one."""

    name = "nat"
    gates = ("wan", "lan")
    external = addr("203.0.113.1")
    ports = Pool(base=20000, size=4)
    by_flow = Map(Flow, Port)  # LAN flow -> external port
    by_port = Map(Port, Flow)  # external port -> LAN flow

    def handle(self, pkt: Packet, ctx) -> None:
        if pkt.inbound:
            flow = self.by_port.get(pkt.dport)
            if flow is None:
                return ctx.drop("no mapping")
            if flow.dst != pkt.src or flow.dport != pkt.sport or flow.proto != pkt.proto:
                return ctx.drop("not from the mapped remote")
            return ctx.emit(pkt.rewrite(dst=flow.src, dport=flow.sport), "lan")
        port = self.by_flow.get(pkt.flow)
        if port is None:
            port = ctx.choose(self.ports.free(self.by_port))
            if port is None:
                return ctx.drop("pool exhausted")
            self.by_flow[pkt.flow] = port
            self.by_port[port] = pkt.flow
        ctx.emit(pkt.rewrite(src=self.external, sport=port), "wan")
