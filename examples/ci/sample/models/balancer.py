"""A sample project's own NF: a load balancer meant to need no failover protection at all.

This file carries a SEEDED BUG, so that `nfproof check` in examples/ci/sample fails one check
(the report is in examples/ci/README.md). The design: the backend of a new flow is a function of
the flow (`flow_hash`), so a standby that starts empty (strategy `none`, the cheapest: nothing is
replicated) computes the very same backend for every flow, and the check `balancer-none` expects
`proved`. The bug: the marked line picks the backend round robin from the `flows` counter instead;
the counter is state that `none` loses, so after a failover the standby counts from 0 again and a
new flow goes to a backend no failure-free run would pick. The fix is the line's comment.
"""
from nfproof.models.api import NF, Addr, Counter, Flow, Map, Packet, Param, flow_hash


class Balancer(NF):
    """Theory of operation: outbound packets to the virtual address `vip` go to one of `backends`
    servers at consecutive addresses from `first`; the first packet of a flow picks the backend,
    which is remembered (`backend_of`) and reused for every later packet of the flow; `flows`
    counts the flows seen (a statistic). Other packets pass unchanged, inbound ones to `lan`.
    No clock, no choice."""

    name = "balancer"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    vip = Param("198.51.100.1", "the virtual address clients connect to", kind="ipv4")
    first = Param("192.0.2.10", "address of the first backend (the others follow it)", kind="ipv4")
    backends = Param(2, "number of backends", low=1, high=1024)
    backend_of = Map(Flow, Addr)  # flow -> its backend
    flows = Counter()             # flows seen so far

    def handle(self, pkt: Packet, ctx) -> None:
        if pkt.inbound:
            return ctx.emit(pkt, "lan")
        if pkt.dst != self.vip:
            return ctx.emit(pkt, "wan")
        backend = self.backend_of.get(pkt.flow)
        if backend is None:
            self.flows += 1
            backend = self.first + self.flows % self.backends  # SEEDED BUG; fix: self.first + flow_hash(pkt.flow, self.backends)
            self.backend_of[pkt.flow] = backend
        ctx.emit(pkt.rewrite(dst=backend), "wan")
