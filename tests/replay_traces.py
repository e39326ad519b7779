"""Hand-built traces for the replay tests: a `Run` collects inputs, outputs and events as a run of
the runtime would record them (runtime.md section 8) and writes them with the TraceWriter."""
from __future__ import annotations

from nfproof.models.api import TCP, UDP, Packet, addr, flags
from nfproof.traces.trace import TraceEvent, TraceHeader, TracePacket, TraceWriter
from nfproof.verify.frames import frame_of

T0 = 1_700_000_000 * 10 ** 9
S = 10 ** 9
HOST, HOST2, REMOTE, EXT = addr("10.0.0.1"), addr("10.0.0.2"), addr("198.51.100.1"), addr("203.0.113.1")


def tcp(src, sport, dst, dport, f="A", inbound=False) -> Packet:
    return Packet(TCP, src, sport, dst, dport, flags(f), inbound=inbound)


def udp(src, sport, dst, dport, inbound=False) -> Packet:
    return Packet(UDP, src, sport, dst, dport, inbound=inbound)


class Run:
    def __init__(self, chain: str, params=(), strategy: str = "none", **fields):
        self.header = TraceHeader(chain, strategy, {"params": list(params), "t0_ns": T0, **fields})
        self.items: list = []
        self.seq = 0

    def input(self, pkt: Packet, at: float) -> int:
        """An input arriving at `at` seconds; returns its seq."""
        seq = self.seq
        self.seq += 1
        side = "outside" if pkt.inbound else "inside"
        self.items.append(TracePacket(f"ingress:{side}", T0 + int(at * S), frame_of(pkt), seq=seq))
        return seq

    def output(self, seq: int, pkt: Packet, egress: str, instance: str, out_index: int = 0, at: float | None = None):
        t = T0 + int(at * S) if at is not None else self._time_of(seq)
        self.items.append(TracePacket(f"egress:{egress}", t, frame_of(pkt), instance, "out", seq, out_index))

    def event(self, kind: str, at: float, instance: str = "", **fields):
        self.items.append(TraceEvent(kind, T0 + int(at * S), instance, fields))

    def crash(self, at: float, instance: str, standby: str, failover_s: float, replica_seq: int = -1):
        self.event("failure", at, instance, point="after-release")
        self.event("failover", at + failover_s, standby, standby=standby, replica_seq=replica_seq,
                   end_ns=T0 + int((at + failover_s) * S))

    def _time_of(self, seq: int) -> int:
        return next(p.time_ns for p in self.items if isinstance(p, TracePacket) and p.direction == "in" and p.seq == seq)

    def write(self, path) -> str:
        with TraceWriter(str(path), self.header) as w:
            for item in self.items:
                w.write(item)
        return str(path)
