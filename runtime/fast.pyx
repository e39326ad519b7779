# cython: language_level=3
"""Runtime hot path (Cython). Pure-Python twin: runtime/pure.py; chosen at import by runtime/__init__.py."""

def flow_key(const unsigned char[:] frame):
    """(proto, src, sport, dst, dport) of an Ethernet/IPv4 frame with TCP/UDP, else None."""
    cdef Py_ssize_t n = frame.shape[0]
    if n < 34 or frame[12] != 0x08 or frame[13] != 0x00:
        return None
    cdef int ihl = (frame[14] & 0x0F) * 4
    cdef int proto = frame[23]
    cdef unsigned int src = (frame[26] << 24) | (frame[27] << 16) | (frame[28] << 8) | frame[29]
    cdef unsigned int dst = (frame[30] << 24) | (frame[31] << 16) | (frame[32] << 8) | frame[33]
    cdef Py_ssize_t l4 = 14 + ihl
    if ihl < 20 or (proto != 6 and proto != 17) or n < l4 + 4:
        return (proto, src, 0, dst, 0)
    return (proto, src, (frame[l4] << 8) | frame[l4 + 1], dst, (frame[l4 + 2] << 8) | frame[l4 + 3])
