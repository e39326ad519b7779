"""Real frames for runtime tests: Ethernet (with optional VLAN tags) / IPv4 / TCP, UDP or ICMP, with
correct checksums computed from scratch (the runtime only ever updates them incrementally, so a
test can tell the two apart), ICMP errors quoting another frame's IP packet, and IPv6/ARP frames
that are outside the models. Addresses are ints or dotted text."""
from __future__ import annotations

import ipaddress
import struct

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _a4(a) -> bytes:
    return ipaddress.IPv4Address(a).packed


def eth(payload: bytes, ethertype: int = 0x0800, vlans=()) -> bytes:
    tags = b"".join(struct.pack("!HH", 0x8100, v) for v in vlans)
    return MAC_B + MAC_A + tags + struct.pack("!H", ethertype) + payload


def ipv4(proto: int, src, dst, l4: bytes, ident: int = 1, ttl: int = 64, frag: int = 0) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, frag, ttl, proto, 0, _a4(src), _a4(dst))
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + l4


def _pseudo(src, dst, proto: int, length: int) -> bytes:
    return _a4(src) + _a4(dst) + struct.pack("!BBH", 0, proto, length)


def tcp(src, sport, dst, dport, flags: int = 0x02, payload: bytes = b"", seq: int = 1, ack: int = 0) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    seg = head + payload
    c = checksum(_pseudo(src, dst, 6, len(seg)) + seg)
    return ipv4(6, src, dst, seg[:16] + struct.pack("!H", c) + seg[18:])


def udp(src, sport, dst, dport, payload: bytes = b"data", no_checksum: bool = False) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = 0 if no_checksum else (checksum(_pseudo(src, dst, 17, len(seg)) + seg) or 0xFFFF)
    return ipv4(17, src, dst, seg[:6] + struct.pack("!H", c) + seg[8:])


def icmp(src, dst, type_: int, code: int = 0, rest: bytes = b"\0\0\0\0", payload: bytes = b"") -> bytes:
    msg = struct.pack("!BBH", type_, code, 0) + rest + payload
    return ipv4(1, src, dst, msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:])


def echo(src, dst, ident: int, seq: int = 1, reply: bool = False) -> bytes:
    return icmp(src, dst, 0 if reply else 8, rest=struct.pack("!HH", ident, seq), payload=b"ping")


def icmp_error(src, dst, quoted_ip: bytes, type_: int = 3, code: int = 3, quote: int = 28) -> bytes:
    """An ICMP error from src to dst quoting the first `quote` bytes of an IP packet (28: the IP
    header and the 8 transport bytes RFC 792 asks for)."""
    return icmp(src, dst, type_, code, b"\0\0\0\0", quoted_ip[:quote])


def ipv6_udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"v6") -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    head = struct.pack("!IHBB16s16s", 6 << 28, len(seg), 17, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed)
    return head + seg


def arp_request(sender: str, target: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, _a4(sender), b"\0" * 6, _a4(target))


def frame_tcp(src, sport, dst, dport, flags=0x02, payload=b"", vlans=()) -> bytes:
    return eth(tcp(src, sport, dst, dport, flags, payload), vlans=vlans)


def frame_udp(src, sport, dst, dport, payload=b"data", vlans=()) -> bytes:
    return eth(udp(src, sport, dst, dport, payload), vlans=vlans)


def pad64(frame: bytes) -> bytes:
    """Padded to the 60-byte Ethernet minimum (64 with the FCS the capture does not hold)."""
    return frame + b"\0" * max(0, 60 - len(frame))
