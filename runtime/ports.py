"""Ports: where a run's frames come from (a Source) and where its outputs go (a Sink).

The executor (runtime/executor.py) only sees these two interfaces, so a new kind of port is one
small class here and nothing else: a capture file today (`CaptureSource`, `PcapSink`); a live
interface (AF_PACKET raw sockets: `InterfaceSource`, `InterfaceSink`) and, later, a DPDK port (`receive` =
rte_eth_rx_burst, `send` = rte_eth_tx_burst).

A Source yields its input in bursts of `InputFrame`s (frame bytes, wire length, capture time in ns
since the epoch or None when the capture has none, side: batch.FROM_INSIDE, FROM_OUTSIDE or
CLASSIFY), all of one link type (`linktype`, known before the first burst). A Sink takes each output
frame with the egress it left on and its time."""
from __future__ import annotations

import ipaddress
import os
import re
import select
import time
from typing import NamedTuple

from nfproof.traces.errors import FormatError
from nfproof.traces.pcap import PcapWriter
from nfproof.traces.reader import open_capture
from nfproof.traces.record import Record, linktype_name

from .batch import CLASSIFY, FROM_INSIDE, FROM_OUTSIDE
from .frames import DEFAULT_INSIDE, Sides

SIDES = (FROM_INSIDE, FROM_OUTSIDE, CLASSIFY)


class InputFrame(NamedTuple):
    data: bytes
    wirelen: int
    time_ns: int | None
    side: int


class Source:
    """A port frames arrive on. `name` says what it reads (for messages and the trace header)."""

    name = "?"
    linktype = 1

    def receive(self, max_frames: int) -> list[InputFrame]:
        """The next 1..max_frames frames in arrival order, as InputFrames or plain tuples of the
        same fields; [] once the input has ended. A fault
        in the input (FormatError) is raised only after every frame before it was returned."""
        raise NotImplementedError

    def progress(self) -> tuple[int, int | None]:
        """(bytes consumed, total bytes or None) for a progress display."""
        return 0, None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Sink:
    """A port outputs leave on."""

    def send(self, egress: str, frame: bytes, time_ns: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


PORT_SIDES = {"inside": FROM_INSIDE, "outside": FROM_OUTSIDE, "ingress:inside": FROM_INSIDE,
              "ingress:outside": FROM_OUTSIDE}  # pcapng interface names that say a frame's side


class CaptureSource(Source):
    """The frames of a pcap or pcapng file (any link type the codec reads; a pcapng may have
    several interfaces as long as they share one link type). Every frame gets `side`; with the
    default (CLASSIFY), a frame captured on a pcapng interface named `inside` or `outside` (or
    `ingress:inside`, `ingress:outside`, as nfproof's traces and reproductions name theirs) gets
    that port's side, and the others are classified by source address."""

    def __init__(self, path, side: int = CLASSIFY):
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, not {side!r}")
        self.side, self.name = side, os.fspath(path)
        self._reader = open_capture(path)  # FormatError: cannot open, not a capture, bad header
        self._records = iter(self._reader)
        self._ahead: Record | None = None   # the first record, read to learn the link type
        self._fault: FormatError | None = None
        self._ended = False
        self._port_sides: dict[int, int] = {}
        self.linktype = self._first_linktype()

    def _first_linktype(self) -> int:
        """pcap: its header's; pcapng: the first packet's interface's (read ahead), else the first
        interface declared, else Ethernet for a capture with no interface at all."""
        if self._reader.format == "pcap":
            return self._reader.linktype
        try:
            self._ahead = next(self._records, None)
        except FormatError as e:
            self._fault = e
        if self._ahead is not None:
            return self._ahead.linktype
        self._ended = True
        return self._reader.interfaces[0].linktype if self._reader.interfaces else 1

    def receive(self, max_frames: int) -> list[InputFrame]:
        frames: list[InputFrame] = []
        if self._ahead is not None:
            frames.append(self._frame(self._ahead))
            self._ahead = None
        if not frames and self._fault is not None:
            fault, self._fault = self._fault, None
            raise fault
        if self._ended:
            return frames
        records, linktype, side = self._records, self.linktype, self.side
        try:
            while len(frames) < max_frames:
                rec = next(records, None)
                if rec is None:
                    self._ended = True
                    break
                if rec.linktype != linktype:
                    raise self._mixed(rec)
                frames.append((rec.data, rec.wirelen, rec.time_ns,  # an InputFrame, built faster
                               side if side != CLASSIFY else self._port_side(rec)))
        except FormatError as e:  # hand over what came before the fault first
            self._ended = True
            if not frames:
                raise
            self._fault = e
        return frames

    def _frame(self, rec: Record) -> tuple:
        return (rec.data, rec.wirelen, rec.time_ns, self.side if self.side != CLASSIFY else self._port_side(rec))

    def _port_side(self, rec: Record) -> int:
        """The side its interface's name says (PORT_SIDES), else CLASSIFY."""
        sides = self._port_sides
        side = sides.get(rec.interface)
        if side is None:
            interfaces = self._reader.interfaces
            name = interfaces[rec.interface].name if rec.interface < len(interfaces) else None
            side = sides[rec.interface] = PORT_SIDES.get(name, CLASSIFY)
        return side

    def _mixed(self, rec: Record) -> FormatError:
        n = self._reader.count
        return FormatError(self.name, getattr(self._reader, "block_offset", None),
                           f"packet {n} has link type {rec.linktype} ({linktype_name(rec.linktype)}) but the "
                           f"packets before it {self.linktype} ({linktype_name(self.linktype)}); a run takes one link "
                           f"type: split the capture by interface (e.g. tshark -r {self.name} "
                           f"-Y frame.interface_id==N -w PART)")

    def progress(self) -> tuple[int, int | None]:
        src = self._reader.src
        return src.offset, src.size

    def close(self) -> None:
        self._reader.close()


def capture_inside(path, default=DEFAULT_INSIDE) -> tuple:
    """`--inside auto` for a capture: `default` (the private ranges) if any packet comes from
    them; else the hosts that open connections in it, as /32 or /128 networks in order of first
    appearance: senders of a TCP SYN without ACK, and of the first packet of a UDP flow or of an
    ICMP query flow (echo, timestamp). `default` when there are none. A fault in the capture ends
    the scan (the run reports it)."""
    from nfproof.traces import parse_frame
    private = Sides(default)
    openers: dict[bytes, None] = {}
    flows: set = set()
    try:
        with open_capture(path) as reader:
            for rec in reader:
                p = parse_frame(rec.linktype, rec.data, rec.wirelen)
                if p.ip_version not in (4, 6) or p.src is None or p.dst is None:
                    continue
                if not private.inbound(p):
                    return tuple(default)
                if p.protocol == "tcp":
                    if p.tcp_flags is not None and p.tcp_flags & 0x12 == 0x02:
                        openers.setdefault(p.src)
                elif p.sport is not None and p.protocol in ("udp", "icmp", "icmpv6"):
                    ends = frozenset(((p.src, p.sport), (p.dst, p.dport)))
                    if (p.vlans, p.protocol, ends) not in flows:
                        flows.add((p.vlans, p.protocol, ends))
                        openers.setdefault(p.src)
    except FormatError:
        pass
    return tuple(ipaddress.ip_network((ipaddress.ip_address(a), 8 * len(a))) for a in openers) or tuple(default)


ETH_P_ALL = 0x0003       # every protocol (linux/if_ether.h)
PACKET_OUTGOING = 4      # sll_pkttype of a frame this host sent (linux/if_packet.h)
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23  # (Linux 4.20: the kernel skips them for us)
SO_RCVBUFFORCE = 33      # SO_RCVBUF beyond net.core.rmem_max (CAP_NET_ADMIN)
RECEIVE_BUFFER = 32 << 20  # bytes of kernel queue per receiving socket: a burst waits instead of being dropped
RECEIVE_BATCH = 64       # frames per recvmmsg(2) on the fast path
MAX_FRAME = 65535


class InterfaceError(OSError):
    """A live interface cannot be opened (one line: which, why, and the fix)."""


def _raw_socket(name: str, receive: bool = True):
    """A raw socket on interface `name`: receiving every frame, or (`receive` False) sending only."""
    import socket
    protocol = socket.htons(ETH_P_ALL) if receive else 0
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, protocol)
    except PermissionError:
        raise InterfaceError(f"interface {name}: opening a raw socket needs CAP_NET_RAW (run as root, or "
                             f"setcap cap_net_raw+ep on the Python binary)") from None
    except (AttributeError, OSError) as e:
        raise InterfaceError(f"interface {name}: no AF_PACKET sockets here ({e}); live interfaces need Linux") from None
    try:
        s.bind((name, ETH_P_ALL if receive else 0))  # (bind takes the protocol in host order)
    except OSError as e:
        s.close()
        raise InterfaceError(f"interface {name}: {e.strerror or e} (is it up? `ip link show`)") from None
    if receive:
        _enlarge_receive_buffer(s)
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:  # an older kernel: receive skips them itself
            pass
    return s


def _enlarge_receive_buffer(s) -> None:
    """RECEIVE_BUFFER bytes of queue if allowed (root), else as much as net.core.rmem_max grants."""
    import socket
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def receive_each(sock, side: int, limit: int, out: list) -> tuple[int, int]:
    """Appends to `out` up to `limit` frames queued on the non-blocking packet socket `sock`, one
    recvfrom each, as InputFrames in arrival order (time: when it was read), skipping frames this
    host sent; returns (frames, bytes) appended. The fallback of fast.FrameReceiver.receive."""
    n = nbytes = 0
    while n < limit:
        try:
            data, address = sock.recvfrom(MAX_FRAME)
        except BlockingIOError:
            break
        if address[2] == PACKET_OUTGOING:
            continue
        out.append(InputFrame(data, len(data), time.time_ns(), side))
        n += 1
        nbytes += len(data)
    return n, nbytes


def _frame_receiver():
    """fast.FrameReceiver (recvmmsg, many frames per system call) when the runtime's fast path is
    in use, else None (`receive_each`, a recvfrom per frame)."""
    from . import IMPLEMENTATION, impl
    return impl.FrameReceiver(RECEIVE_BATCH, MAX_FRAME) if IMPLEMENTATION == "fast" else None


class InterfaceSource(Source):
    """Live frames from network interfaces through AF_PACKET raw sockets (Linux, CAP_NET_RAW): one
    interface per side (`{"inside": "eth1", "outside": "eth2"}`); a frame's side is its interface's,
    its time the moment it was read. Frames this host sends on them (the run's own outputs among
    them) are skipped. The input ends after `count` frames, `duration` seconds, `idle` seconds
    without a frame (each None: no such limit), or at Ctrl-C. On the fast path a system call reads
    a socket's queued frames by the batch (fast.FrameReceiver, recvmmsg), else one each
    (`receive_each`); `receiver` says which (None: the latter)."""

    linktype = 1

    def __init__(self, interfaces: dict[str, str], count: int | None = None, duration: float | None = None,
                 idle: float | None = None):
        self.sockets: dict = {}
        try:
            for side, name in interfaces.items():
                sock = _raw_socket(name)
                sock.setblocking(False)
                self.sockets[sock] = PORT_SIDES[side]
        except BaseException:
            self.close()
            raise
        self.receiver = _frame_receiver()
        self.name = ",".join(f"{side}={name}" for side, name in interfaces.items())
        self.count, self.idle = count, idle
        self.deadline = None if duration is None else time.monotonic() + duration
        self.received = 0
        self.bytes = 0
        self.interrupted = False

    def receive(self, max_frames: int) -> list[InputFrame]:
        out: list[InputFrame] = []
        while not out:
            if self.count is not None and self.received >= self.count:
                return []
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                return []
            waits = [w for w in (self.idle, None if self.deadline is None else self.deadline - now) if w is not None]
            if self.interrupted:
                return []
            try:
                ready = select.select(list(self.sockets), [], [], min(waits) if waits else None)[0]
            except KeyboardInterrupt:  # Ctrl-C ends a live input: the run finishes normally
                self.interrupted = True
                return []
            if not ready and self.idle is not None and (self.deadline is None or time.monotonic() < self.deadline):
                return []  # idle for `idle` seconds
            receiver, received, nbytes_before = self.receiver, self.received, self.bytes
            try:
                for s in ready:  # then whatever is queued, without waiting, up to max_frames
                    limit = max_frames - len(out)
                    if self.count is not None:
                        limit = min(limit, self.count - self.received)
                    if limit <= 0:
                        break
                    if receiver is None:
                        n, nbytes = receive_each(s, self.sockets[s], limit, out)
                    else:
                        n, nbytes = receiver.receive(s.fileno(), self.sockets[s], limit, out)
                    self.received += n
                    self.bytes += nbytes
            except KeyboardInterrupt:  # the frames read so far are this input's last
                self.interrupted = True
                self.received, self.bytes = received + len(out), nbytes_before + sum(len(f[0]) for f in out)
        return out

    def progress(self) -> tuple[int, int | None]:
        return self.bytes, None

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = {}


class InterfaceSink(Sink):
    """Outputs sent on live interfaces: egress `inside` on the inside interface, `outside` on the
    outside one (other egresses, a monitor's alerts, are counted in `unsent`, not sent)."""

    def __init__(self, interfaces: dict[str, str]):
        self.sockets = {}
        try:
            for side, name in interfaces.items():
                self.sockets[side] = _raw_socket(name, receive=False)
        except BaseException:
            self.close()
            raise
        self.unsent = 0

    def send(self, egress: str, frame: bytes, time_ns: int) -> None:
        s = self.sockets.get(egress)
        if s is None:
            self.unsent += 1
            return
        s.send(frame)

    def close(self) -> None:
        for s in self.sockets.values():
            s.close()
        self.sockets = {}


def egress_file_name(egress: str) -> str:
    """A file name for an egress (`monitor.alert` -> `monitor.alert.pcap`)."""
    return re.sub(r"[^A-Za-z0-9_.#-]", "_", egress) + ".pcap"


class PcapSink(Sink):
    """One plain pcap per egress in `directory` (created on first output, ns timestamps)."""

    def __init__(self, directory, linktype: int = 1):
        self.directory, self.linktype = os.fspath(directory), linktype
        self._writers: dict[str, PcapWriter] = {}

    def send(self, egress: str, frame: bytes, time_ns: int) -> None:
        w = self._writers.get(egress)
        if w is None:
            w = self._writers[egress] = PcapWriter(os.path.join(self.directory, egress_file_name(egress)),
                                                   self.linktype, nanosecond=True)
        w.write(time_ns, frame)

    @property
    def paths(self) -> dict[str, str]:
        return {e: os.path.join(self.directory, egress_file_name(e)) for e in self._writers}

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
