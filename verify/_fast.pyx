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
the pure-Python reader (from the same item on), which reports the problem as it always did.

`explain` is replay's fast pass (verify/replay_fast.py documents it): the same reader, no Python
object per packet, the chain's compiled steps called from C. It has no Python twin: without this
extension (NFPROOF_PUREPYTHON) the full check decides, with the same verdicts."""
include "../traces/_parse.pxi"

import os

from libc.stdint cimport uint16_t
from libc.string cimport memcmp
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from posix.mman cimport mmap, munmap, madvise, PROT_READ, MAP_PRIVATE, MAP_FAILED, MADV_SEQUENTIAL, MADV_DONTNEED

# the writes classes of verify/frames.writable (replay_rows.WRITES holds the frozensets)
cdef enum:
    W_ADDRESS, W_TCP, W_PORT, W_SPORT, W_DPORT
    PEN = 32473
    OPT_CODE = 2989
    MAX_RECORD = 1 << 26
    RELEASE_EVERY = 1 << 25   # bytes read between two give-backs of the mapping


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


ctypedef struct vrow_t:      # the view of an in-model frame: key (Packet order), writes class, outer source
    long long key[7]        # proto, src, sport, dst, dport, flags, length
    int writes
    long long outer


cdef bint c_model_row(pkt_t *p, Py_ssize_t wirelen, vrow_t *r) noexcept nogil:
    """The view of a frame whose view is a Packet (IPv4, not malformed, not a later fragment) into
    r; 0 for any other frame (the caller takes its bytes to Python)."""
    cdef hdr_t *h = &p.ip
    cdef hdr_t *q = &p.q
    cdef const uint8_t *d = p.d
    cdef long long src, dst, q_src, q_dst
    cdef int proto = h.proto, sport = 0, dport = 0, flags = 0, w = W_ADDRESS, qs = 0, qd = 0, t
    if h.version != 4 or p.malformed != OK or h.frag_offset > 0 or proto < 0:
        return 0
    src, dst = u32(d, h.l3 + 12), u32(d, h.l3 + 16)
    r.outer = src
    if proto == 6:
        if h.sport < 0 or h.dport < 0 or h.tcp_flags < 0:
            return 0
        sport, dport, flags, w = h.sport, h.dport, h.tcp_flags & 0xFF, W_TCP
    elif proto == 17:
        if h.sport < 0 or h.dport < 0:
            return 0
        sport, dport, w = h.sport, h.dport, W_PORT
    elif proto == 1 and h.icmp_type >= 0:
        t = h.icmp_type
        if t == 8 or t == 13:
            if h.icmp_id < 0:
                return 0
            sport, w = h.icmp_id, W_SPORT
        elif t == 0 or t == 14:
            if h.icmp_id < 0:
                return 0
            dport, w = h.icmp_id, W_DPORT
        elif icmp_error(t) and p.has_quoted and q.version == 4 and quoted_ports(q, &qs, &qd):
            # the reverse of the quoted packet
            q_src, q_dst = u32(d, q.l3 + 12), u32(d, q.l3 + 16)
            proto, src, sport, dst, dport = q.proto, q_dst, qd, q_src, qs
            if q.proto == 6 or q.proto == 17:
                w = W_PORT
            else:
                w = W_DPORT if (q.icmp_type == 8 or q.icmp_type == 13) else W_SPORT
    r.key[0], r.key[1], r.key[2], r.key[3], r.key[4], r.key[5] = proto, src, sport, dst, dport, flags
    r.key[6] = wirelen if wirelen < 0xFFFF else 0xFFFF
    r.writes = w
    return 1


cdef object model_row(pkt_t *p, Py_ssize_t wirelen):
    """(observable key, writes class, outer source) of a frame whose view is a Packet, or None."""
    cdef vrow_t r
    if not c_model_row(p, wirelen, &r):
        return None
    return (r.key[0], r.key[1], r.key[2], r.key[3], r.key[4], r.key[5], r.key[6]), r.writes, r.outer


def frame_row(int linktype, data, Py_ssize_t wirelen):
    """model_row of one frame (tests compare it with replay_rows.model_row)."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef pkt_t p
    parse(&p, linktype, <const uint8_t *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), wirelen)
    return model_row(&p, wirelen)


ctypedef struct prow_t:      # a packet block's fields (TraceRows.packet_c)
    uint32_t iface, caplen, wirelen, out_index
    unsigned long long time_ns, seq
    uint16_t label
    int flags
    const uint8_t *frame
    PyObject *instance      # borrowed: TraceRows.last_instance holds it


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
    cdef Py_ssize_t size, pos, released   # the mapping before `released` is given back (read already)
    cdef public Py_ssize_t offset, items
    cdef public long long foreign_blocks, packets
    cdef public bint events_only   # packets are counted, not read (replay_stream.scan_events)
    cdef bint swap, header_seen
    cdef int sections          # sections begun (each one restarts the interface numbers)
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
        self.pos, self.offset, self.items, self.foreign_blocks, self.packets, self.released = 0, 0, 0, 0, 0, 0
        self.events_only = 0
        self.swap, self.header_seen, self.names, self.nifs, self.sections = 0, 0, [], 0, 0
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
        self.sections += 1

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

    cdef int packet_c(self, const uint8_t *body, Py_ssize_t n, prow_t *r) except -1:
        """The packet block's fields into r, checked as traces/trace.py reads them (Fallback where
        the fast reader does not follow)."""
        cdef uint32_t iface, tsh, tsl, caplen, wirelen, pen
        cdef Py_ssize_t pos, end = n, ann = -1, ann_len = 0
        cdef int code, length, version
        cdef unsigned long long units
        cdef iface_t *f
        if n < 20:
            raise Fallback()
        iface, tsh, tsl = rd32(body, self.swap), rd32(body + 4, self.swap), rd32(body + 8, self.swap)
        caplen, wirelen = rd32(body + 12, self.swap), rd32(body + 16, self.swap)
        if caplen > n - 20 or iface >= <uint32_t>self.nifs:
            raise Fallback()
        if self.names[iface] is None:
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
        version, r.flags = body[ann], body[ann + 1]
        if version > 1:
            raise Fallback()
        memcpy(&r.seq, body + ann + 4, 8)
        memcpy(&r.out_index, body + ann + 12, 4)
        memcpy(&r.label, body + ann + 2, 2)
        self.instance_of(body + ann + 16, ann_len - 16)
        r.instance = <PyObject *>self.last_instance
        f = &self.ifs[iface]
        units = (<unsigned long long>tsh << 32) | tsl
        if not f.plain_time or units > 0xFFFFFFFFFFFFFFFF // f.mul:
            raise Fallback()
        r.iface, r.time_ns, r.caplen, r.wirelen, r.frame = iface, units * f.mul, caplen, wirelen, body + 20
        return 0

    cdef object packet(self, const uint8_t *body, Py_ssize_t n):
        cdef prow_t r
        cdef pkt_t p
        self.packet_c(body, n, &r)
        f = &self.ifs[r.iface]
        parse(&p, f.linktype, r.frame, r.caplen, r.wirelen)
        row = model_row(&p, r.wirelen)
        if row is None:
            data, key, writes, outer = PyBytes_FromStringAndSize(<const char *>r.frame, r.caplen), None, None, None
        else:
            data = None
            key, writes, outer = row
        return (self.names[r.iface], f.linktype, r.time_ns, r.seq if r.flags & 2 else None,
                r.out_index if r.flags & 4 else None, <object>r.instance, r.wirelen, data, key, writes, outer,
                r.label if r.flags & 8 else None)

    cdef int next_block(self, const uint8_t **body, Py_ssize_t *n) except -1:
        """The next packet block (1) or nfproof custom block (2) after the run header, its body and
        length; 0 at the end. Sections, interfaces and other tools' blocks are taken in passing."""
        cdef const uint8_t *b
        cdef uint32_t btype, total
        cdef Py_ssize_t at, cut
        while True:
            if self.m == NULL or self.pos >= self.size:
                return 0
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
            if self.pos - self.released > RELEASE_EVERY:   # memory flat in the file's length: the rows
                cut = (self.pos - RELEASE_EVERY // 2) & ~(<Py_ssize_t>4095)   # hold copies, not the map
                madvise(<void *>(self.m + self.released), cut - self.released, MADV_DONTNEED)
                self.released = cut
            if btype == 6:
                if not self.header_seen:
                    raise Fallback()
                if self.events_only:
                    self.packets += 1
                    self.items += 1
                    continue
                body[0], n[0] = b + 8, total - 12
                return 1   # counted by the caller once read (a Fallback leaves it to the Python reader)
            if btype == 0x0BAD or btype == 0x40000BAD:
                if total - 12 < 4:
                    raise Fallback()
                if not self.header_seen:  # the run header (traces.trace.Trace read it)
                    self.header_seen = 1
                    continue
                self.items += 1
                if rd32(b + 8, self.swap) == PEN and total - 12 >= 8 and memcmp(b + 12, b"NFPT", 4) == 0:
                    body[0], n[0] = b + 12, total - 16
                    return 2
                self.foreign_blocks += 1
                continue
            if btype == 0x0A0D0D0A:
                self.section(b + 8, total - 12)
            elif btype == 1:
                self.interface(b + 8, total - 12)
            elif btype == 2 or btype == 3:  # obsolete and simple packet blocks: the Python reader
                raise Fallback()

    def __next__(self):
        cdef const uint8_t *body
        cdef Py_ssize_t n
        cdef int got = self.next_block(&body, &n)
        if got == 0:
            raise StopIteration
        if got == 1:
            row = self.packet(body, n)
            self.packets += 1
            self.items += 1
            return row
        return (None, self.offset, PyBytes_FromStringAndSize(<const char *>body, n))


# -- the search's memo (verify/replay_search.py: _memo_reads is the reference) ------------------------
from cpython.dict cimport PyDict_GetItem
from cpython.set cimport PySet_Contains, PySet_Add


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


# -- the fast pass (verify/replay_fast.py documents it) --------------------------------------------------
cdef extern from *:
    """
    /* models/compile.py's ABI: cview_t, nf_step, and in a guided build guide_t, nf_mark, nf_undo */
    typedef struct { int64_t proto, src, sport, dst, dport, flags, inbound, length, label; } nfp_cview_t;
    typedef int (*nfp_step_t)(void *, const nfp_cview_t *, int64_t, uint64_t *, nfp_cview_t *, int *, int *, int *, int *);
    typedef int (*nfp_mark_t)(void);
    typedef int (*nfp_undo_t)(int);
    typedef void (*nfp_prefetch_t)(void *, const nfp_cview_t *);
    #define NFP_CHOICES 8
    typedef struct {
        int n, bad;
        uint8_t how[NFP_CHOICES], kind[NFP_CHOICES];
        uint64_t forced[NFP_CHOICES], base[NFP_CHOICES], size[NFP_CHOICES], value[NFP_CHOICES];
    } nfp_guide_t;
    /* ticks of a clock at tps per second dt ns after the origin; -1 past int64 */
    static inline int64_t nfp_ticks(int64_t dt, int64_t tps) {
        __int128 t = (__int128)dt * tps / 1000000000;
        return t > INT64_MAX ? -1 : (int64_t)t;
    }
    """
    ctypedef struct nfp_cview_t:
        int64_t proto, src, sport, dst, dport, flags, inbound, length, label
    ctypedef int (*nfp_step_t)(void *, const nfp_cview_t *, int64_t, uint64_t *, nfp_cview_t *, int *, int *,
                               int *, int *) noexcept nogil
    ctypedef int (*nfp_mark_t)() noexcept nogil
    ctypedef int (*nfp_undo_t)(int) noexcept nogil
    ctypedef void (*nfp_prefetch_t)(void *, const nfp_cview_t *) noexcept nogil
    enum: NFP_CHOICES
    ctypedef struct nfp_guide_t:
        int n, bad
        uint8_t how[NFP_CHOICES]
        uint8_t kind[NFP_CHOICES]
        uint64_t forced[NFP_CHOICES]
        uint64_t base[NFP_CHOICES]
        uint64_t size[NFP_CHOICES]
        uint64_t value[NFP_CHOICES]
    int64_t nfp_ticks(int64_t dt, int64_t tps) noexcept nogil

cdef enum:
    MAX_OBS = 16          # outputs of one input (models/compile.py MAX_OUTPUTS)
    MAX_CANDIDATES = 4    # values inferred for one choice from its outputs
    SMALL_DOMAIN = 64     # a choice among at most this many values is tried value by value
    MAX_GATES = 64
    AHEAD = 4             # inputs ahead whose state slots are prefetched


ctypedef struct obs_t:
    int gate
    int64_t key[8]        # observable: proto, src, sport, dst, dport, flags, length, label
    const uint8_t *raw    # a frame outside the model: its bytes (in the trace's mapping), else NULL
    uint32_t rawlen


ctypedef struct pending_t:   # an input read, waiting for its outputs
    unsigned long long seq
    long long number, time_ns
    int writes, nobs
    int route             # -2 a Packet view; -3 dropped before the chain (Drop); else outside the model:
    const uint8_t *raw    # the egress its route releases it on (-1: an instance drops it), its bytes
    uint32_t rawlen
    uint32_t seen         # bit i: the output with out_index i was observed
    nfp_cview_t view
    obs_t obs[MAX_OBS]    # by out_index


ctypedef struct try_t:    # one input's search for the choices that explain it
    nfp_step_t step
    nfp_undo_t undo
    void *state
    pending_t *p
    int64_t now
    bint labels
    int trials, max_trials, code, fatal
    nfp_guide_t g
    nfp_cview_t outs[MAX_OBS]
    int gates[MAX_OBS]
    int drops[MAX_OBS]
    int nout, ndrop


cdef inline int64_t out_field(const nfp_cview_t *o, int f) noexcept nogil:
    return (<const int64_t *>o)[f]


cdef bint emits_observed(try_t *c) noexcept nogil:
    cdef pending_t *p = c.p
    cdef int j
    cdef const nfp_cview_t *o
    cdef const int64_t *k
    if c.nout != p.nobs:
        return 0
    for j in range(c.nout):
        o, k = &c.outs[j], p.obs[j].key
        if p.obs[j].raw != NULL or c.gates[j] != p.obs[j].gate or o.proto != k[0] or o.src != k[1] or o.sport != k[2] or o.dst != k[3] \
                or o.dport != k[4] or o.flags != k[5] or o.length != k[6] or (c.labels and o.label != k[7]):
            return 0
    return 1


cdef bint attempt(try_t *c) noexcept nogil:
    """The step with the guide's choices: 1 if it emits exactly the observed outputs (its writes
    kept), else 0 (its writes undone)."""
    c.trials += 1
    c.g.n = 0
    c.g.bad = 0
    c.code = c.step(c.state, &c.p.view, c.now, <uint64_t *>&c.g, c.outs, c.gates, &c.nout, c.drops, &c.ndrop)
    if c.code == 0 and not c.g.bad and emits_observed(c):
        return 1
    if c.undo(0) != 0:
        c.fatal = 1
    return 0


cdef bint explain_from(try_t *c, int j) noexcept nogil:
    """Choices before j fixed: whether some values of choice j on (each inferred from the outputs or,
    in a small domain, tried one by one) explain the input."""
    cdef nfp_cview_t a[MAX_OBS]
    cdef int na, nb, k, o, f, n = 0, fk
    cdef uint64_t va, vb, base, size, cands[SMALL_DOMAIN]
    cdef int64_t fa, fb, cand
    cdef int kind
    for k in range(j, NFP_CHOICES):
        c.g.how[k] = 0
    if attempt(c):
        return 1
    if c.fatal or c.trials > c.max_trials or c.code != 0 or c.g.bad or c.g.n <= j:
        return 0
    kind, base, size, va, na = c.g.kind[j], c.g.base[j], c.g.size[j], c.g.value[j], c.nout
    memcpy(a, c.outs, na * sizeof(nfp_cview_t))
    c.g.how[j] = 2            # the domain's second value: which output fields move with the choice
    if attempt(c):
        return 1
    if c.fatal or c.trials > c.max_trials:
        return 0
    if c.code == 0 and not c.g.bad and c.g.n > j:
        vb, nb = c.g.value[j], c.nout
        for o in range(min(na, nb, c.p.nobs)):
            for f in range(9):
                if f == 6 or (f == 8 and not c.labels):
                    continue   # inbound is not observed
                fk = f if f < 6 else f - 1
                fa, fb = out_field(&a[o], f), out_field(&c.outs[o], f)
                if fa == fb or fa - <int64_t>va != fb - <int64_t>vb:
                    continue
                cand = c.p.obs[o].key[fk] - (fa - <int64_t>va)   # the field is the choice plus a constant
                if (kind == 1 and <uint64_t>cand - base >= size) or (kind == 0 and <uint64_t>cand >= size):
                    continue
                for k in range(n):
                    if cands[k] == <uint64_t>cand:
                        break
                else:
                    if n < MAX_CANDIDATES:
                        cands[n] = <uint64_t>cand
                        n += 1
    if n == 0 and kind == 0 and size <= SMALL_DOMAIN:
        for k in range(<int>size):
            cands[k] = k
        n = <int>size
    elif n == 0:          # the outputs do not show this choice: keep its default, infer the later ones
        cands[0], n = va, 1
    for k in range(n):
        c.g.how[j], c.g.forced[j] = 1, cands[k]
        if j + 1 < NFP_CHOICES:
            if explain_from(c, j + 1):
                return 1
        elif attempt(c):
            return 1
        if c.fatal or c.trials > c.max_trials:
            return 0
    return 0


def explain(path, variant, kind_of, bint labels, long long t0, long long tps, tuple routes,
            int lag=4096, int max_trials=64):
    """The fast pass over the trace at `path` (verify/replay_fast.py): ("explained", counts) when
    the chain's compiled steps, with choices inferred from each input's outputs and the clock read
    at each input's arrival, emit exactly the observed outputs in order on every egress; else
    ("stopped", packet number, why). `variant(writes)` gives the guided build for a frame's writes
    class: (step, mark, undo, prefetch, state) addresses, or None; `kind_of(interface name)` -1 for an
    internal link, 0 / 1 the inside / outside ingress, 2 + g egress g, -3 one left to the full check.
    t0 < 0: the first input's arrival.
    `routes`: (inside, outside) the egress a frame outside the model from that side goes to (-1: dropped;
    frames.outside_route)."""
    cdef TraceRows rows = TraceRows(path)
    cdef const uint8_t *body
    cdef Py_ssize_t n
    cdef prow_t r
    cdef pkt_t pk
    cdef vrow_t v
    cdef int got, kind, g, w, sections = -1
    cdef int kinds[256]
    cdef nfp_step_t fns[5]
    cdef nfp_mark_t marks[5]
    cdef nfp_undo_t undos[5]
    cdef nfp_prefetch_t prefetches[5]
    cdef bint built[5]
    cdef void *state = NULL
    cdef long long number = 0, last_time = -1, outputs = 0, others = 0, inputs = 0, steps = 0
    cdef unsigned long long seq, next_seq = 0, head = 0, count = 0, oi
    cdef unsigned long long last_seq[MAX_GATES]
    cdef long long last_oi[MAX_GATES]
    cdef pending_t *e
    cdef pending_t *ring
    cdef try_t *c
    cdef unsigned long long cap = lag
    cdef int64_t now
    cdef int route_in = routes[0], route_out = routes[1], route
    cdef const uint8_t *raw
    for w in range(5):
        built[w] = 0
    for g in range(MAX_GATES):
        last_oi[g] = -1
    ring = <pending_t *>PyMem_Malloc(cap * sizeof(pending_t))
    c = <try_t *>PyMem_Malloc(sizeof(try_t))
    if ring == NULL or c == NULL:
        PyMem_Free(ring)
        PyMem_Free(c)
        raise MemoryError()
    c.labels, c.max_trials, c.fatal = labels, max_trials, 0
    try:
        while True:
            got = rows.next_block(&body, &n)
            if got == 2:
                continue      # control events: a failure-free execution ignores them
            if got == 1:
                rows.packet_c(body, n, &r)
                rows.packets += 1
                rows.items += 1
                number += 1
                if rows.sections != sections:
                    sections = rows.sections
                    for g in range(256):
                        kinds[g] = -2
                kind = kinds[r.iface]
                if kind == -2:
                    kind = kinds[r.iface] = kind_of(rows.names[r.iface])
                    if kind == -3 or kind - 2 >= MAX_GATES:
                        return "stopped", number, f"interface {rows.names[r.iface]!r} (the full check reads it)"
                if kind == -1:
                    others += 1
                    continue
                parse(&pk, rows.ifs[r.iface].linktype, r.frame, r.caplen, r.wirelen)
                raw, v.writes = NULL, 0
                if c_model_row(&pk, r.wirelen, &v):
                    route = -2
                elif pk.ip.version != 4:    # frames.view: OUTSIDE, passed on as they are
                    raw, route = r.frame, (route_out if kind == 1 else route_in)
                elif kind <= 1 and (pk.malformed != OK or pk.ip.frag_offset > 0):
                    route = -3              # frames.view: Drop (the runtime drops it before the chain)
                else:
                    return "stopped", number, "a frame the C reader leaves to the full check"
                if kind <= 1:     # an input
                    seq = r.seq if r.flags & 2 else <unsigned long long>inputs
                    if inputs and seq != next_seq:
                        return "stopped", number, "inputs out of seq order"
                    if t0 < 0:
                        t0 = r.time_ns
                    if <long long>r.time_ns > last_time:
                        last_time = r.time_ns
                    if count == cap:
                        e = &ring[(head + AHEAD) % cap]
                        if e.route == -2 and built[e.writes] and fns[e.writes] != NULL:
                            prefetches[e.writes](state, &e.view)
                        if not _explain_input(c, &ring[head % cap], fns, undos, marks, prefetches, built, &state,
                                              variant, t0, tps):
                            return "stopped", ring[head % cap].number, _why(c)
                        steps += c.trials
                        head += 1
                        count -= 1
                    if count == 0:
                        head = seq
                    e = &ring[seq % cap]
                    e.seq, e.number, e.time_ns, e.writes, e.nobs, e.seen = seq, number, last_time, v.writes, 0, 0
                    e.view.proto, e.view.src, e.view.sport, e.view.dst = v.key[0], v.key[1], v.key[2], v.key[3]
                    e.view.dport, e.view.flags, e.view.inbound, e.view.length = v.key[4], v.key[5], kind == 1, v.key[6]
                    e.view.label = 0
                    e.route, e.raw, e.rawlen = route, raw, r.caplen
                    count += 1
                    inputs += 1
                    next_seq = seq + 1
                    continue
                g = kind - 2          # an output on egress g
                if not (r.flags & 2 and r.flags & 4):
                    return "stopped", number, "an output without its input's seq and out_index"
                seq, oi = r.seq, r.out_index
                if count == 0 or seq < head:
                    return "stopped", number, "an output after its input was taken as complete"
                if seq >= next_seq:
                    return "stopped", number, "an output of an input not read yet"
                e = &ring[seq % cap]
                if oi >= MAX_OBS or e.seen & (1u << oi):
                    return "stopped", number, "a repeated output"
                if last_oi[g] >= 0 and (seq < last_seq[g] or (seq == last_seq[g] and <long long>oi <= last_oi[g])):
                    return "stopped", number, "outputs out of order on an egress"
                last_seq[g], last_oi[g] = seq, oi
                e.obs[oi].gate, e.obs[oi].raw, e.obs[oi].rawlen = g, raw, r.caplen
                memcpy(e.obs[oi].key, v.key, 7 * sizeof(int64_t))
                e.obs[oi].key[7] = r.label if labels and r.flags & 8 else 0
                e.seen |= 1u << oi
                e.nobs += 1
                outputs += 1
                continue
            while count:
                if not _explain_input(c, &ring[head % cap], fns, undos, marks, prefetches, built, &state, variant,
                                      t0, tps):
                    return "stopped", ring[head % cap].number, _why(c)
                steps += c.trials
                head += 1
                count -= 1
            return "explained", dict(inputs=inputs, outputs=outputs, other_packets=others,
                                     foreign_blocks=rows.foreign_blocks, packets=number,
                                     steps=steps)
    finally:
        rows.close()
        PyMem_Free(ring)
        PyMem_Free(c)


cdef str _why(try_t *c):
    if c.fatal:
        return "a step wrote more than the undo journal holds"
    if c.code == -9:
        return "no compiled step for the frame"
    if c.code == -8:
        return "a processing time before the run's start"
    return "no choices found that emit its observed outputs at its arrival time"


cdef bint _explain_input(try_t *c, pending_t *p, nfp_step_t *steps, nfp_undo_t *undos, nfp_mark_t *marks,
                         nfp_prefetch_t *prefetches, bint *built, void **state, variant, long long t0,
                         long long tps) except -1:
    cdef int w = p.writes
    if p.route != -2:     # no step: a Drop emits nothing, a frame outside the model goes its route unchanged
        c.code, c.trials = 0, 0
        if p.seen != (1u << p.nobs) - 1:
            return 0
        if p.route < 0:
            return p.nobs == 0
        return p.nobs == 1 and p.obs[0].gate == p.route and p.obs[0].raw != NULL and \
            p.obs[0].rawlen == p.rawlen and memcmp(p.obs[0].raw, p.raw, p.rawlen) == 0
    if not built[w]:
        got = variant(w)
        built[w] = 1
        if got is None:
            steps[w] = NULL
        else:
            steps[w], marks[w], undos[w] = <nfp_step_t><size_t>got[0], <nfp_mark_t><size_t>got[1], \
                <nfp_undo_t><size_t>got[2]
            prefetches[w], state[0] = <nfp_prefetch_t><size_t>got[3], <void *><size_t>got[4]
    if steps[w] == NULL:
        c.code = -9
        return 0
    if p.seen != (1u << p.nobs) - 1:
        c.code = 0   # an out_index missing: some output was lost
        return 0
    if p.time_ns < t0:
        c.code = -8
        return 0
    c.step, c.undo, c.state, c.p, c.trials = steps[w], undos[w], state[0], p, 0
    c.now = nfp_ticks(p.time_ns - t0, tps)
    marks[w]()
    return explain_from(c, 0)
