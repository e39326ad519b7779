# cython: language_level=3
"""Cython fast path of the trace replay reader (verify/replay_rows.py is the pure-Python reference,
with the documentation): `TraceRows(path)` walks an nfproof trace (a pcapng file, mmapped) block
by block and gives, per packet, the row replay_rows.row_of gives for it -- the packet's
interface, time, annotation and, for an IPv4 frame the models see, its view's fields (the
checker's rules of verify/frames.py: `view`, `writable`, `observable`) computed in C without a
Python `Parsed`; per nfproof custom block its payload (decoded by the caller). The parsing code
is traces/_parse.pxi, the C copy of traces/headers.py.

Anything it does not read exactly as traces/trace.py does -- a corrupt or truncated block, an
unusual block (OPB, SPB), an unusual timestamp scale, a packet without its annotation, an
option that overruns its block -- raises `Fallback`: the caller reads the rest of the file with
the pure-Python reader (from the same item on), which reports the problem as it always did."""
include "../traces/_parse.pxi"

import os

from libc.stdint cimport uint16_t
from libc.string cimport memcmp
from cpython.unicode cimport PyUnicode_DecodeUTF8
from posix.mman cimport mmap, munmap, madvise, PROT_READ, MAP_PRIVATE, MAP_FAILED, MADV_SEQUENTIAL

# the writes classes of verify/frames.writable (replay_rows.WRITES holds the frozensets)
cdef enum:
    W_ADDRESS, W_TCP, W_PORT, W_SPORT, W_DPORT
    PEN = 32473
    OPT_CODE = 2989
    MAX_RECORD = 1 << 26


class Fallback(Exception):
    """The fast reader stops here; `items` blocks after the run header were read before."""


cdef inline uint32_t rd32(const uint8_t *s, bint swap) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, s, 4)
    if swap:
        v = ((v & 0xFF) << 24) | ((v & 0xFF00) << 8) | ((v >> 8) & 0xFF00) | (v >> 24)
    return v


cdef inline int rd16(const uint8_t *s, bint swap) noexcept nogil:
    return (s[1] << 8 | s[0]) if not swap else (s[0] << 8 | s[1])


cdef inline bint quoted_ports(hdr_t *q, int *sport, int *dport) noexcept nogil:
    """frames._quoted_ports: (sport, dport) of a quoted IPv4 packet, 0 if they are not known."""
    if q.proto == 6 or q.proto == 17:
        if q.sport < 0 or q.dport < 0:
            return 0
        sport[0], dport[0] = q.sport, q.dport
        return 1
    if q.proto == 1 and q.icmp_id >= 0:
        if q.icmp_type == 8 or q.icmp_type == 13:
            sport[0], dport[0] = q.icmp_id, 0
            return 1
        if q.icmp_type == 0 or q.icmp_type == 14:
            sport[0], dport[0] = 0, q.icmp_id
            return 1
    return 0


cdef inline bint icmp_error(int t) noexcept nogil:
    return t == 3 or t == 4 or t == 5 or t == 11 or t == 12


cdef object model_row(pkt_t *p, Py_ssize_t wirelen):
    """(observable key, writes class, outer source) of a frame whose view is a Packet (IPv4, not
    malformed, not a later fragment), or None (the caller takes the frame's bytes to Python)."""
    cdef hdr_t *h = &p.ip
    cdef hdr_t *q = &p.q
    cdef const uint8_t *d = p.d
    cdef long long src, dst, q_src, q_dst
    cdef int proto = h.proto, sport = 0, dport = 0, flags = 0, w = W_ADDRESS, qs = 0, qd = 0, t
    if h.version != 4 or p.malformed != OK or h.frag_offset > 0 or proto < 0:
        return None
    src, dst = u32(d, h.l3 + 12), u32(d, h.l3 + 16)
    cdef long long outer = src
    if proto == 6:
        if h.sport < 0 or h.dport < 0 or h.tcp_flags < 0:
            return None
        sport, dport, flags, w = h.sport, h.dport, h.tcp_flags & 0xFF, W_TCP
    elif proto == 17:
        if h.sport < 0 or h.dport < 0:
            return None
        sport, dport, w = h.sport, h.dport, W_PORT
    elif proto == 1 and h.icmp_type >= 0:
        t = h.icmp_type
        if t == 8 or t == 13:
            if h.icmp_id < 0:
                return None
            sport, w = h.icmp_id, W_SPORT
        elif t == 0 or t == 14:
            if h.icmp_id < 0:
                return None
            dport, w = h.icmp_id, W_DPORT
        elif icmp_error(t) and p.has_quoted and q.version == 4 and quoted_ports(q, &qs, &qd):
            # the reverse of the quoted packet
            q_src, q_dst = u32(d, q.l3 + 12), u32(d, q.l3 + 16)
            proto, src, sport, dst, dport = q.proto, q_dst, qd, q_src, qs
            if q.proto == 6 or q.proto == 17:
                w = W_PORT
            else:
                w = W_DPORT if (q.icmp_type == 8 or q.icmp_type == 13) else W_SPORT
    length = wirelen if wirelen < 0xFFFF else 0xFFFF
    return (proto, src, sport, dst, dport, flags, length), w, outer


def frame_row(int linktype, data, Py_ssize_t wirelen):
    """model_row of one frame (tests compare it with replay_rows.model_row)."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef pkt_t p
    parse(&p, linktype, <const uint8_t *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), wirelen)
    return model_row(&p, wirelen)


cdef struct iface_t:
    int linktype
    unsigned long long mul
    bint plain_time          # ns = units * mul (div 1, offset 0)


cdef class TraceRows:
    """Iterating yields, after the run header: for a packet the row
    (interface name, link type, time_ns, seq, out_index, instance, wirelen, data, key, writes,
    outer source) -- data is None and key/writes/outer set where model_row gives them, else data
    holds the frame and key, writes, outer are None; for an nfproof custom block the tuple
    (None, block offset, payload). Other tools' custom blocks are counted in `foreign_blocks`;
    `offset` is the offset of the block last read; `items` the blocks after the header read;
    `packets` the packets read (with `events_only` set, only counted: no packet rows).""" 

    cdef const uint8_t *m
    cdef Py_ssize_t size, pos
    cdef public Py_ssize_t offset, items
    cdef public long long foreign_blocks, packets
    cdef public bint events_only   # packets are counted, not read (replay_stream.scan_events)
    cdef bint swap, header_seen
    cdef list names            # this section's interfaces: name (str or None)
    cdef iface_t ifs[256]
    cdef int nifs
    cdef bytes last_instance_raw
    cdef object last_instance

    def __cinit__(self):
        self.m = NULL
        self.size = 0

    def __init__(self, path):
        fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(fd).st_size
            if self.size:
                self.m = <const uint8_t *>mmap(NULL, self.size, PROT_READ, MAP_PRIVATE, fd, 0)
                if <void *>self.m == MAP_FAILED:
                    self.m = NULL
                    raise OSError(f"{path}: mmap failed")
                madvise(<void *>self.m, self.size, MADV_SEQUENTIAL)
        finally:
            os.close(fd)
        self.pos, self.offset, self.items, self.foreign_blocks, self.packets = 0, 0, 0, 0, 0
        self.events_only = 0
        self.swap, self.header_seen, self.names, self.nifs = 0, 0, [], 0
        self.last_instance_raw, self.last_instance = b"", ""

    def __dealloc__(self):
        if self.m != NULL:
            munmap(<void *>self.m, self.size)
            self.m = NULL

    def close(self):
        if self.m != NULL:
            munmap(<void *>self.m, self.size)
            self.m = NULL

    def __iter__(self):
        return self

    cdef int options_end(self, const uint8_t *body, Py_ssize_t pos, Py_ssize_t end) except -2:
        """Checks the options from body[pos:end] as traces.pcapng.parse_options reads them: 0, or
        Fallback if one overruns the block."""
        cdef int code, length
        while pos + 4 <= end:
            code, length = rd16(body + pos, self.swap), rd16(body + pos + 2, self.swap)
            pos += 4
            if code == 0:
                break
            if pos + length > end:
                raise Fallback()
            pos += length + (-length % 4)
        return 0

    cdef object section(self, const uint8_t *body, Py_ssize_t n):
        if n < 16 or rd16(body + 4, self.swap) != 1:
            raise Fallback()
        self.options_end(body, 16, n)
        self.names, self.nifs = [], 0

    cdef object interface(self, const uint8_t *body, Py_ssize_t n):
        cdef Py_ssize_t pos = 8
        cdef int code, length, tsresol = 6
        cdef long long tsoffset = 0
        cdef iface_t *f
        if n < 8 or self.nifs >= 256:
            raise Fallback()
        name = None
        while pos + 4 <= n:
            code, length = rd16(body + pos, self.swap), rd16(body + pos + 2, self.swap)
            pos += 4
            if code == 0:
                break
            if pos + length > n:
                raise Fallback()
            if code == 2:
                name = PyUnicode_DecodeUTF8(<const char *>body + pos, length, "replace")
            elif code == 9 and length >= 1:
                tsresol = body[pos]
            elif code == 14 and length >= 8:
                memcpy(&tsoffset, body + pos, 8)
                if self.swap:
                    tsoffset = <long long>((<unsigned long long>rd32(body + pos + 4, 1)) |
                                           (<unsigned long long>rd32(body + pos, 1) << 32))
            pos += length + (-length % 4)
        f = &self.ifs[self.nifs]
        f.linktype = rd16(body, self.swap)
        f.plain_time = not (tsresol & 0x80) and (tsresol & 0x7F) <= 9 and tsoffset == 0
        f.mul = 1
        for _ in range(9 - (tsresol & 0x7F) if f.plain_time else 0):
            f.mul *= 10
        self.names.append(name)
        self.nifs += 1

    cdef object instance_of(self, const uint8_t *s, Py_ssize_t n):
        cdef bytes last = self.last_instance_raw
        if n == PyBytes_GET_SIZE(last) and memcmp(PyBytes_AS_STRING(last), s, n) == 0:
            return self.last_instance
        try:
            text = PyUnicode_DecodeUTF8(<const char *>s, n, NULL)
        except UnicodeDecodeError:
            raise Fallback() from None
        self.last_instance_raw = PyBytes_FromStringAndSize(<const char *>s, n)
        self.last_instance = text
        return text

    cdef object packet(self, const uint8_t *body, Py_ssize_t n):
        cdef uint32_t iface, tsh, tsl, caplen, wirelen, pen
        cdef Py_ssize_t pos, end = n, ann = -1, ann_len = 0
        cdef int code, length, version, flags
        cdef unsigned long long units, seq
        cdef uint32_t out_index
        cdef uint16_t label
        cdef iface_t *f
        cdef pkt_t p
        if n < 20:
            raise Fallback()
        iface, tsh, tsl = rd32(body, self.swap), rd32(body + 4, self.swap), rd32(body + 8, self.swap)
        caplen, wirelen = rd32(body + 12, self.swap), rd32(body + 16, self.swap)
        if caplen > n - 20 or iface >= <uint32_t>self.nifs:
            raise Fallback()
        name = self.names[iface]
        if name is None:
            raise Fallback()
        pos = 20 + caplen + (-<Py_ssize_t>caplen % 4)
        while pos + 4 <= end:  # parse_options; the annotation is the first custom option 2989 of PEN
            code, length = rd16(body + pos, self.swap), rd16(body + pos + 2, self.swap)
            pos += 4
            if code == 0:
                break
            if pos + length > end:
                raise Fallback()
            if ann < 0 and code == OPT_CODE and length >= 4:
                pen = rd32(body + pos, self.swap)
                if pen == PEN:
                    ann, ann_len = pos + 4, length - 4
            pos += length + (-length % 4)
        if ann < 0 or ann_len < 16:
            raise Fallback()
        # traces/trace.py _ANN: "<BBHQI" (little-endian whatever the section's byte order)
        version, flags = body[ann], body[ann + 1]
        if version > 1:
            raise Fallback()
        memcpy(&seq, body + ann + 4, 8)
        memcpy(&out_index, body + ann + 12, 4)
        memcpy(&label, body + ann + 2, 2)
        instance = self.instance_of(body + ann + 16, ann_len - 16)
        f = &self.ifs[iface]
        units = (<unsigned long long>tsh << 32) | tsl
        if not f.plain_time or units > 0xFFFFFFFFFFFFFFFF // f.mul:
            raise Fallback()
        parse(&p, f.linktype, body + 20, caplen, wirelen)
        row = model_row(&p, wirelen)
        if row is None:
            data, key, writes, outer = PyBytes_FromStringAndSize(<const char *>body + 20, caplen), None, None, None
        else:
            data = None
            key, writes, outer = row
        return (name, f.linktype, units * f.mul, seq if flags & 2 else None, out_index if flags & 4 else None,
                instance, wirelen, data, key, writes, outer, label if flags & 8 else None)

    def __next__(self):
        cdef const uint8_t *b
        cdef uint32_t btype, total
        cdef Py_ssize_t at
        while True:
            if self.m == NULL or self.pos >= self.size:
                raise StopIteration
            at = self.pos
            if self.size - at < 12:
                raise Fallback()
            b = self.m + at
            if b[0] == 0x0A and b[1] == 0x0D and b[2] == 0x0D and b[3] == 0x0A:
                if b[8] == 0x4D and b[9] == 0x3C and b[10] == 0x2B and b[11] == 0x1A:
                    self.swap = 0
                elif b[8] == 0x1A and b[9] == 0x2B and b[10] == 0x3C and b[11] == 0x4D:
                    self.swap = 1
                else:
                    raise Fallback()
            btype, total = rd32(b, self.swap), rd32(b + 4, self.swap)
            if total < 12 or total % 4 or (btype == 0x0A0D0D0A and total < 28) or total > MAX_RECORD \
                    or total > self.size - at or rd32(b + total - 4, self.swap) != total:
                raise Fallback()
            self.offset = at
            self.pos = at + total
            if btype == 6:
                if not self.header_seen:
                    raise Fallback()
                if self.events_only:
                    self.packets += 1
                    self.items += 1
                    continue
                row = self.packet(b + 8, total - 12)
                self.packets += 1
                self.items += 1
                return row
            if btype == 0x0BAD or btype == 0x40000BAD:
                if total - 12 < 4:
                    raise Fallback()
                if not self.header_seen:  # the run header (traces.trace.Trace read it)
                    self.header_seen = 1
                    continue
                self.items += 1
                if rd32(b + 8, self.swap) == PEN and total - 12 >= 8 and memcmp(b + 12, b"NFPT", 4) == 0:
                    return (None, at, PyBytes_FromStringAndSize(<const char *>b + 12, total - 16))
                self.foreign_blocks += 1
                continue
            if btype == 0x0A0D0D0A:
                self.section(b + 8, total - 12)
            elif btype == 1:
                self.interface(b + 8, total - 12)
            elif btype == 2 or btype == 3:  # obsolete and simple packet blocks: the Python reader
                raise Fallback()


# -- the search's memo (verify/replay_search.py: _memo_reads is the reference) ------------------------
from cpython.dict cimport PyDict_GetItem
from cpython.set cimport PySet_Contains, PySet_Add
from cpython.object cimport PyObject


def memo_reads(list reads, dict writer, set deps, touched, missing):
    """replay_search._memo_reads in C: whether a recorded step's reads (storage, key, value,
    (sid, key), kind) find their values, each read as Tracker.read does it, up to the first
    that does not."""
    cdef tuple r
    cdef PyObject *d
    cdef PyObject *got
    cdef object raw, wk, storage
    cdef bint track = touched is not None
    cdef set touched_set = touched if track else None
    cdef long kind
    for item in reads:
        r = <tuple>item
        storage, wk = r[0], r[3]
        d = PyDict_GetItem(writer, wk)
        if d != NULL and <object>d:
            deps |= <object>d
        if track:
            PySet_Add(touched_set, wk)
        kind = r[4]
        if kind == 0:
            got = PyDict_GetItem(storage, r[1])
            raw = <object>got if got != NULL else missing
        elif kind == 1:
            raw = True if PySet_Contains(storage, r[1]) else missing
        else:
            raw = storage._value
        if raw != r[2]:
            return False
    return True
