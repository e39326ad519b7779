"""Pure-Python twin of runtime/fast.pyx: identical behaviour, chosen when the extension is absent
or NFPROOF_PUREPYTHON=1."""


def flow_key(frame):
    """(proto, src, sport, dst, dport) of an Ethernet/IPv4 frame with TCP/UDP, else None."""
    frame = bytes(frame)
    n = len(frame)
    if n < 34 or frame[12] != 0x08 or frame[13] != 0x00:
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src = int.from_bytes(frame[26:30], "big")
    dst = int.from_bytes(frame[30:34], "big")
    l4 = 14 + ihl
    if ihl < 20 or proto not in (6, 17) or n < l4 + 4:
        return (proto, src, 0, dst, 0)
    return (proto, src, int.from_bytes(frame[l4:l4 + 2], "big"), dst, int.from_bytes(frame[l4 + 2:l4 + 4], "big"))
