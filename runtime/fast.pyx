# cython: language_level=3
"""Runtime hot path (Cython). Pure-Python twin: runtime/pure.py; chosen at import by runtime/__init__.py.
Header parsing is traces/_parse.pxi, the same C code as nfproof.traces._fast."""
include "../traces/_parse.pxi"


def flow_key(frame, int linktype=1, wirelen=None):
    """Flow key of a frame, as nfproof.traces.headers documents it (None for non-IP)."""
    cdef bytes b = frame if type(frame) is bytes else bytes(frame)
    cdef pkt_t p
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    parse(&p, linktype, <const uint8_t *>PyBytes_AS_STRING(b), n, n if wirelen is None else wirelen)
    return make_key(&p, &p.ip, vlan_tuple(&p))


def parse_frame(int linktype, frame, wirelen=None):
    """The full Parsed record of a frame (nfproof.traces.headers.parse_frame)."""
    cdef bytes b = frame if type(frame) is bytes else bytes(frame)
    cdef pkt_t p
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    parse(&p, linktype, <const uint8_t *>PyBytes_AS_STRING(b), n, n if wirelen is None else wirelen)
    return make_parsed(&p)
