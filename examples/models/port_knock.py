"""An example user model: a port-knocking gate. Copy this file to start your own NF.

Verify it from the repository root (or with the path to wherever you copied it):

    nfproof verify examples/models/port_knock.py:PortKnock --strategy stateful.sync --bound 4
    nfproof verify examples/models/port_knock.py:PortKnock --strategy none --bound 4
    nfproof verify examples/models/port_knock.py:PortKnock --strategy none --param port-knock.knock=7000

The first is proved, the second is a counterexample: under `none` the standby forgets who has
knocked, so a client that knocked before the failover is locked out after it, which no
failure-free run does.

How a model is written (the rules of nfproof/models/api.py):
- State that must survive a failover is declared as class attributes: Map(key, value), Set(key),
  Counter(). Nothing else may change between packets (an assignment to another attribute is an
  error naming the line).
- Sizes and constants are Param(default, doc, kind): proof-sized defaults, set per run with
  --param NAME.PARAM=VALUE (NAME is the model's `name`). In the handler `self.knock` is an int.
- `gates` names the outputs; `outside` / `inside` say which face the WAN and the LAN side.
- handle(pkt, ctx) may branch on the packet and the state, emit with ctx.emit(pkt, gate), drop with
  ctx.drop(reason), choose with ctx.choose(domain), read the clock with ctx.now(). It runs on
  ints concretely and on Z3 terms in proofs: no loops over state, no `is` on values, no I/O.
"""
from nfproof.models.api import NF, TCP, Addr, Packet, Param, Set


class PortKnock(NF):
    """Theory of operation: outbound traffic (from `lan`) passes. An inbound TCP packet to the
    `knock` port is a knock: its source is remembered and the packet is dropped. An inbound TCP
    packet to the `service` port passes to `lan` only from a source that has knocked; every other
    inbound packet is dropped. Knocks never expire (no clock).

    State: `knocked` (the sources that knocked). No nondeterminism. Traffic outside the model
    (non-TCP inbound, non-IPv4 frames) is dropped inbound and passes outbound."""

    name = "port-knock"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    knock = Param(1234, "the port a client knocks on", low=1, high=65535)
    service = Param(22, "the port that opens for clients that knocked", low=1, high=65535)
    knocked = Set(Addr)

    def handle(self, pkt: Packet, ctx) -> None:
        if not pkt.inbound:
            return ctx.emit(pkt, "wan")
        if pkt.proto != TCP:
            return ctx.drop("not TCP")
        if pkt.dport == self.knock:
            self.knocked.add(pkt.src)
            return ctx.drop("knock")
        if pkt.dport == self.service and pkt.src in self.knocked:
            return ctx.emit(pkt, "lan")
        ctx.drop("closed")
