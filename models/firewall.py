"""Stateful firewall: TCP connection tracking and UDP pseudo-connections with idle timeouts."""
from .api import NF, TCP, UDP, Bits, Flow, Map, Packet, Param, Time, flags

Stage = Bits(8, "Stage")

SYN, ACK, FIN, RST = flags("S"), flags("A"), flags("F"), flags("R")
SYN_SENT, SYN_ACKED, ESTABLISHED = 1, 2, 3


class Firewall(NF):
    """Theory of operation: connections are keyed by their inside-oriented 5-tuple (proto, inside
    host and port, remote host and port), so both directions of a connection find the same entry.

    TCP: an outbound SYN (without ACK) opens a connection (SYN_SENT); the inbound SYN-ACK moves it
    to SYN_ACKED, the outbound ACK that completes the handshake to ESTABLISHED. Once established,
    traffic passes both ways. A FIN or RST from either side passes and tears the connection down
    (a simplification: no half-closed state, a later segment of the closing side is unsolicited).
    A segment that does not fit the connection's stage (e.g. inbound data before the handshake
    completes) is dropped and leaves the connection as it was. Any inbound segment without a
    connection is unsolicited and dropped; so is an outbound non-SYN segment without one.

    UDP: an outbound datagram opens or refreshes a pseudo-connection; inbound datagrams pass while
    it exists. Other IP protocols (ICMP, ...) pass outbound and are dropped inbound (not tracked).

    Time: every packet reads the clock once (`ctx.now()`, in seconds: `ticks_per_second = 1`). A
    connection idle for longer than its timeout (`timeout` for TCP, `udp_timeout` for UDP) is gone:
    the next packet finds no connection. Every packet a connection passes refreshes it. The
    defaults (6 s and 5 s) are longer than the default failover time, so losing the table in a
    failover is a violation, not something a timeout explains.

    State: `stage` (TCP stage) and `seen` (last activity) per TCP connection, `udp_seen` per UDP
    pseudo-connection. No choices: the clock reads are the only nondeterminism. Traffic outside
    the model (non-IPv4 frames) passes unchanged on the real runtime."""

    name = "firewall"
    gates = ("wan", "lan")
    outside, inside = ("wan",), ("lan",)
    partition = "flow"
    timeout = Param(6, "TCP idle timeout", kind="time")
    udp_timeout = Param(5, "UDP idle timeout", kind="time")
    stage = Map(Flow, Stage)     # TCP connection -> SYN_SENT | SYN_ACKED | ESTABLISHED
    seen = Map(Flow, Time)       # TCP connection -> time of its last packet
    udp_seen = Map(Flow, Time)   # UDP pseudo-connection -> time of its last packet

    def handle(self, pkt: Packet, ctx) -> None:
        now = ctx.now()
        out = "lan" if pkt.inbound else "wan"
        if pkt.inbound:
            key = Flow(pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport)
        else:
            key = pkt.flow
        if pkt.proto == TCP:
            return self.tcp(pkt, key, now, out, ctx)
        if pkt.proto == UDP:
            last = self.udp_seen.get(key)
            if last is not None and now - last > self.udp_timeout:
                del self.udp_seen[key]
                last = None
            if last is None and pkt.inbound:
                return ctx.drop("unsolicited inbound UDP")
            self.udp_seen[key] = now
            return ctx.emit(pkt, out)
        if pkt.inbound:
            return ctx.drop("inbound protocol not tracked")
        ctx.emit(pkt, out)

    def tcp(self, pkt: Packet, key: Flow, now, out: str, ctx) -> None:
        stage, last = self.stage.get(key), self.seen.get(key)
        if stage is not None and (last is None or now - last > self.timeout):
            del self.stage[key]
            del self.seen[key]
            stage = None
        syn, ack = pkt.flags & SYN != 0, pkt.flags & ACK != 0
        if stage is None:
            if pkt.inbound:
                return ctx.drop("unsolicited inbound")
            if not syn or ack:
                return ctx.drop("no connection")
            self.stage[key], self.seen[key] = SYN_SENT, now
            return ctx.emit(pkt, out)
        if pkt.flags & (FIN | RST) != 0:
            del self.stage[key]
            del self.seen[key]
            return ctx.emit(pkt, out)
        if stage == SYN_SENT:
            if pkt.inbound and syn and ack:
                self.stage[key] = SYN_ACKED
            elif pkt.inbound or not syn or ack:  # only the SYN-ACK, or a retransmitted SYN
                return ctx.drop("handshake out of order")
        elif stage == SYN_ACKED:
            if not pkt.inbound and ack and not syn:
                self.stage[key] = ESTABLISHED
            elif not (pkt.inbound and syn and ack):  # a retransmitted SYN-ACK passes
                return ctx.drop("handshake out of order")
        self.seen[key] = now
        ctx.emit(pkt, out)
