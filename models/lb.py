"""Load balancer with sticky flows: a backend chosen nondeterministically per new flow."""
from .api import NF, Addr, Flow, Map, Packet, Param, ParamError, Pool


class Lb(NF):
    """Theory of operation: outbound traffic (from the inside, `lan`) addressed to the virtual
    address `vip` is balanced over `backends` servers at consecutive addresses from `first`. The
    first packet of a flow (its 5-tuple) gets a backend chosen nondeterministically
    (`ctx.choose`: any policy, round robin or least loaded, refines this choice); the flow is
    remembered and every later packet of it goes to the same backend (sticky). The packet leaves on
    `wan` with its destination rewritten to the backend. An inbound reply from the backend of a
    remembered flow is rewritten back to come from `vip` and leaves on `lan`; other inbound
    packets, and outbound packets not addressed to the VIP, pass unchanged. Flows are never
    forgotten (no clock). Traffic outside the model (non-IPv4 frames) passes unchanged.

    State: `backend_of` (flow -> backend address). The backend choice is the nondeterminism that
    failover must preserve: a flow moved to another backend after a failover breaks its
    connection, which no failure-free run does."""

    name = "lb"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    partition = "flow"
    vip = Param("198.51.100.1", "the virtual address clients connect to", kind="ipv4")
    first = Param("192.0.2.10", "address of the first backend (the others follow it)", kind="ipv4")
    backends = Param(2, "number of backends", low=1, high=1024)
    backend_of = Map(Flow, Addr)  # outbound flow to the VIP -> its backend

    @classmethod
    def check_params(cls) -> None:
        if cls.first + cls.backends > 1 << 32:
            raise ParamError(f"lb.first + lb.backends reaches past 255.255.255.255; valid: fewer backends or a lower first")

    def handle(self, pkt: Packet, ctx) -> None:
        if pkt.inbound:
            flow = Flow(pkt.proto, pkt.dst, pkt.dport, self.vip, pkt.sport)
            backend = self.backend_of.get(flow)
            if backend is not None and backend == pkt.src:
                return ctx.emit(pkt.rewrite(src=self.vip), "lan")
            return ctx.emit(pkt, "lan")
        if pkt.dst != self.vip:
            return ctx.emit(pkt, "wan")
        backend = self.backend_of.get(pkt.flow)
        if backend is None:
            backend = ctx.choose(Pool(self.first, self.backends, Addr).all())
            self.backend_of[pkt.flow] = backend
        ctx.emit(pkt.rewrite(dst=backend), "wan")
