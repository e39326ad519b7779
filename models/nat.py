"""Network address translation (NAPT, port-restricted cone)."""
from .api import NF, Flow, Map, Packet, Param, ParamError, Pool, Port


class Nat(NF):
    """Theory of operation: an outbound packet (from the LAN) of a flow seen for the first time
    gets an external port chosen nondeterministically from the free ports of the pool; the flow and
    the port are remembered both ways, and the packet leaves on `wan` with the NAT's external
    address and that port as its source. Later packets of the flow reuse the port. An inbound
    packet (from the WAN) addressed to a mapped port and coming from the remote end of that
    mapping is translated back and leaves on `lan`; any other inbound packet is dropped, as is
    a new flow when the pool is exhausted. Mappings never expire (no clock). The pool is
    `ports` ports from `base` (parameters: 4 ports in proofs, e.g. --param nat.ports=64512 on
    real traffic). Traffic outside the model (non-IPv4 frames) is not translated: the runtime
    passes it through unchanged, as every bundled NF does. On real frames an IPv4 protocol
    without ports (IGMP, GRE, an outbound echo reply) cannot carry the chosen port: the runtime
    drops that output as `nat: cannot write sport into the frame` (runtime/README.md).

    The port choice is the nondeterminism that failover must preserve: once a flow's port has
    been seen outside, every later packet of the flow must carry the same one."""

    name = "nat"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    partition = "flow"
    external = Param("203.0.113.1", "the NAT's external address", kind="ipv4")
    base = Param(1024, "first external port of the pool", low=1, high=65535)
    ports = Param(4, "pool size (external ports)", low=1, high=65535)
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
            port = ctx.choose(self.pool().free(self.by_port))
            if port is None:
                return ctx.drop("pool exhausted")
            self.by_flow[pkt.flow] = port
            self.by_port[port] = pkt.flow
        ctx.emit(pkt.rewrite(src=self.external, sport=port), "wan")

    @classmethod
    def pool(cls) -> Pool:
        return Pool(base=cls.base, size=cls.ports)

    @classmethod
    def check_params(cls) -> None:
        if cls.base + cls.ports > 65536:
            raise ParamError(f"nat.base={cls.base} + nat.ports={cls.ports} reaches past port 65535; "
                             f"valid: base + ports <= 65536")
