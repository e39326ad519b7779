# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Runtime hot path (Cython): the `Pipeline` of the runtime contract (/work/notes/runtime.md,
section 6) for the bundled NFs and any chain of them, plus the header-parsing entry points.
Pure-Python twin: runtime/pure.py; chosen at import by runtime/__init__.py.

How it works. `process(batch)` binds the batch's arrays as C pointers (cached while the batch
and its output arrays stay the same objects) and runs one `nogil` loop over the inputs, in input
order, each to completion: parse the frame in place (traces/_parse.pxi, the same C code as
nfproof.traces._fast), drop it at chain ingress (malformed IPv4, non-first fragment), turn it into
the model's view (`view_t`, contract section 1; frames outside the model get none), then carry it
through the chain depth first in gate-emission order exactly as models/chain.py routes (hops from
`chain._routes()`). Each instance is a C handler transcribing its model line by line: values are
64-bit (the model's Python ints never exceed that here) and wrap to the declared widths only when
stored, like the model's Bits(32) maps. State lives in open-addressing flow tables (linear probing,
backward-shift deletion, doubling at half load) in malloc'd memory (large ones mmap'd, on 2 MB
pages where granted): no Python object per packet.
Choices are per-instance splitmix64 streams with the choice protocol of runtime/rng.py; clocks are
(t_ns * ticks_per_second) // 1e9 per NF. Outputs are written back onto the frame in place (or onto
a copy for all but the last of several outputs) with incremental RFC 1624 checksum updates,
including the header quoted inside ICMP errors; copies that leave the chain are appended to
`batch.extra` at the end of the call.

Flow cache. Most packets belong to established flows, and for them most of the chain's work
is fixed: the NAT's mapping and the balancer's backend never change once made. The pipeline
keeps one table keyed by the input's view (addresses, ports, protocol, side) holding a *plan*:
the fields the packet leaves with and an interned path (the instances it crosses, the side it
reaches each on, the gate each emits on, the step that rewrites each field). A plan is recorded
while a cache miss walks the chain (`record_step`, `finish_plan`) and only if every step emitted
exactly one packet, frame fields are rewritten by *stable* steps only and each at most once, and
the frame is plain TCP or UDP. Stable steps (`stable_kind`: nat, lb, lb-hash) are skipped on a
hit: their result is a function of the view and of table entries that are never removed or
changed. *Live* steps (firewall, ratelimit, monitor, csfq-*: state that changes per packet, a
clock, flags, lengths, draws) run their handler on every hit, on the view the stable steps before
them would have given, in path order, so every state change, drop and draw happens as on the
walk. A live step that does not emit on the recorded gate (a drop, a monitor's alert, an expired
firewall entry) hands over to the walk's own code at that point, the frame rewritten as far as
the walk would have it (`run_plan`, `resume`). The one result of a stable step that can change is
a balancer not knowing a reply's flow (passed unchanged until the flow appears): such a plan
carries the version of the key's bucket (65536 per balancer), bumped on every insertion into it;
a version that wraps empties the cache. The frame's rewrite is written at once (`write_back` from
the input's view to the final one): with each field rewritten at most once, the RFC 1624 updates
sum the same terms as step by step, so the bytes are the same. The cache holds at most
`cache_max` slots (default `CACHE_MAX`) and is emptied when full; `cache_stats()` counts hits and
misses. It is on for chains of two or more instances with a stable one (`Pipeline(...,
flow_cache=...)` says otherwise). A plan whose one live step is a firewall (or that has none) is
*express*: when the firewall finds the connection (not timed out) and passes the packet (the
handshake's next step, data, a FIN or RST: `fw_tcp_known`; any UDP packet), its changes are to
that entry only, and `run_express` makes them and the rewrite (branchless, the same bytes as
`write_back`); anything else (a new connection, a drop) goes to `run_plan`. A flow opened from
the inside also gets its reply's plan, a few inputs later (`queue_reply`, `plan_reply`; the
reply's cache slot is prefetched meanwhile): the walk the reply's miss would take, each stable
step's result read from its tables (`stable_step`), each live step a firewall whose handler runs
when the reply comes; so a connection misses the cache once, not once per direction.
`Pipeline(..., flows=N)` sizes every table, and the cache, for N connections at the start, their
pages faulted in then (as an NF on DPDK sizes its tables), at most a quarter full (`table_slots`):
the packets do not pay for the tables' growth, and few keys sit past their home line; results
are the same either way.

Memory latency is hidden by a software pipeline (`run_inputs`): while input j runs, input
j + S*D is parsed and the flow-table line its first instance will read is prefetched, and the predicted
paths of the inputs in between advance one instance each (`predict` reads the slot prefetched D
inputs earlier, read-only, and prefetches the next instance's; for a new NAT flow it simulates
the free-port draws, reading by_port entries prefetched when the previous new flow was
predicted), D = `ahead` (default 4). With the flow cache, the first step looks the input up in
the cache (prefetched at parse): a hit prefetches what its live steps will read, keeps in the
prepared input what it computed for that (the firewall's key and hash, the dependency's version
counter, the slot's values: reused at the input's turn while the slot still holds them) and is
done; a miss goes on predicting every instance (S = instances + 1). Results never depend on the batch
size or D (only memory timing does).

`PassThrough` is the baseline the benchmark compares against: parse every frame and release it
unchanged on egress 0."""
include "../traces/_parse.pxi"

from libc.stdint cimport uint16_t, int16_t, int32_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memcmp
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.ref cimport PyObject
from posix.mman cimport mmap, munmap, madvise, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED, \
    MADV_HUGEPAGE

import ipaddress

import numpy as np

from nfproof.models import NFS
from nfproof.models.api import Flow
from nfproof.models.chain import ChainError

from .frames import DEFAULT_INSIDE, FLOWS_MAX, NotBundled


cdef extern from *:
    """
    static inline int64_t nfp_ticks(int64_t t_ns, int64_t tps) {
        if (tps == 1 && t_ns >= 0) return t_ns / 1000000000;
        if (t_ns >= 0 && tps > 0 && t_ns < (INT64_MAX / tps)) return (t_ns * tps) / 1000000000;
        __int128 p = (__int128)t_ns * tps;
        __int128 q = p / 1000000000;
        if (p < 0 && q * 1000000000 != p) q -= 1;   /* floor, as Python's // */
        return (int64_t)q;
    }
    /* credit + (now - last) * rate, capped at full (ratelimit), exact in 128 bits */
    static inline int64_t nfp_refill(int64_t credit, int64_t elapsed, int64_t rate, int64_t full) {
        __int128 c = (__int128)credit + (__int128)elapsed * rate;
        return c > full ? full : (int64_t)c;
    }
    """
    int64_t ticks_of "nfp_ticks"(int64_t t_ns, int64_t tps) noexcept nogil
    int64_t refill "nfp_refill"(int64_t credit, int64_t elapsed, int64_t rate, int64_t full) noexcept nogil
    void *aligned_alloc(size_t alignment, size_t size) noexcept nogil

cdef extern from *:
    """
    /* a prefetch GCC cannot drop: with __builtin_prefetch, a function that only prefetches is
       deduced side-effect free and every call to it is deleted */
    static inline void nfp_prefetch(const void *p) { __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p)); }
    """
    void prefetch "nfp_prefetch"(const void *addr) noexcept nogil

cdef extern from *:
    """
    #include <string.h>
    static inline uint32_t nfp_ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return __builtin_bswap16(v); }
    static inline uint32_t nfp_ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v); }
    static inline void nfp_st16(uint8_t *p, uint32_t x) { uint16_t v = __builtin_bswap16((uint16_t)x); memcpy(p, &v, 2); }
    static inline void nfp_st32(uint8_t *p, uint32_t x) { uint32_t v = __builtin_bswap32(x); memcpy(p, &v, 4); }
    """
    uint32_t ld16 "nfp_ld16"(const uint8_t *p) noexcept nogil
    uint32_t ld32 "nfp_ld32"(const uint8_t *p) noexcept nogil
    void st16 "nfp_st16"(uint8_t *p, uint32_t x) noexcept nogil
    void st32 "nfp_st32"(uint8_t *p, uint32_t x) noexcept nogil


# ---- header parsing entry points (as before) ------------------------------------------------------

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


# ---- constants ------------------------------------------------------------------------------------

cdef extern from *:
    """
    #define NFP_M32 0xFFFFFFFFULL
    #define NFP_USED 0x8000000000000000ULL
    #define NFP_GOLDEN 0x9E3779B97F4A7C15ULL
    """
    const uint64_t M32 "NFP_M32"
    const uint64_t USED "NFP_USED"        # flow-table key word b: set in every occupied slot
    const uint64_t GOLDEN "NFP_GOLDEN"    # the splitmix64 increment (runtime/rng.py)

cdef enum:
    BIG = 1 << 20                         # allocations from this size on are mmap'd (see zeroed)
    HUGE = 1 << 21                        # a huge page
    REWRITTEN = 0x100                     # a handler's result flag: it changed a field the frame carries
    FREE_DRAWS = 64                       # draws before a free-port choice scans (runtime/rng.py)
    MAX_OUT = 2                           # outputs of one bundled handler call (the monitor: packet + alert)
    MAX_STEPS = 8                         # instances on a flow-cache plan's path
    MAX_PATHS = 4096                      # distinct plan paths (interned; path ids are 16-bit)
    PATH_INDEX = 8192                     # slots of the path interning index (a power of two)
    NO_STEP = 0xFF                        # path_t.chg / dep: no such step
    CACHE_MAX = 1 << 22                   # flow-cache slots at most: past that it is emptied and refilled

INSTANCE_STEP = 0xD1B54A32D192ED03      # separates the instances' streams (runtime/rng.py)
PARAM_MAX = 1 << 62                     # larger parameters act alike (times never get there)

cdef enum NfKind:
    K_NAT, K_FW, K_LB, K_LBH, K_RL, K_MON, K_EDGE, K_CORE, K_COMPILED  # K_COMPILED: models/compile.py

cdef enum:
    MAX_GATES = 8                         # gates of one NF
    MAX_COUT = 16                         # outputs (and drops) of one compiled step (models/compile.py MAX_OUTPUTS)

KINDS = {"nat": K_NAT, "firewall": K_FW, "lb": K_LB, "lb-hash": K_LBH, "ratelimit": K_RL, "monitor": K_MON,
         "csfq-edge": K_EDGE, "csfq-core": K_CORE}
MODEL_REASONS = {  # every reason each bundled model drops with, in its own words
    "nat": ("no mapping", "not from the mapped remote", "pool exhausted"),
    "firewall": ("unsolicited inbound UDP", "inbound protocol not tracked", "unsolicited inbound", "no connection",
                 "handshake out of order"),
    "ratelimit": ("over the rate",),
    "csfq-core": ("over the fair share",),
}
FIELDS = ("proto", "src", "sport", "dst", "dport", "flags", "length")  # order of the cannot-write check

cdef enum Layout:  # how the view maps onto the frame (contract sections 1 and 2)
    L_TCP, L_UDP, L_OTHER, L_ICMP_REQ, L_ICMP_REP, L_ICMP_OTHER, L_ERR_L4, L_ERR_REQ, L_ERR_REP

cdef enum Field:
    F_PROTO, F_SRC, F_SPORT, F_DST, F_DPORT, F_FLAGS, F_LENGTH, N_FIELDS

DEF SPARSE_BYTES = 64 << 20  # table_slots: tables sized ahead are kept a quarter full up to this size

# plan_reply's queue: its length, and how many inputs after the flow's first packet a reply's plan
# is made (its cache slot prefetched meanwhile)
DEF REPLY_QUEUE = 8
DEF REPLY_DELAY = 4

# reasons of the firewall, by index in MODEL_REASONS["firewall"]
cdef enum:
    FW_UDP, FW_UNTRACKED, FW_UNSOLICITED, FW_NOCONN, FW_ORDER


# ---- C structures ---------------------------------------------------------------------------------

ctypedef struct view_t:      # a model Packet
    uint32_t src, dst
    uint16_t sport, dport
    uint8_t proto, flags
    uint16_t length
    int32_t label
    bint inbound

ctypedef struct layout_t:    # where the view's fields are in the input frame (shared by its copies)
    int kind, l4, qproto, l3, ql4, ql3  # (not in the parser's order: copying two adjacent ints the
                                        # parser just stored as one 8-byte load stalls store forwarding)
    Py_ssize_t avail         # end of the bytes an ICMP error's quote may use: min(caplen, IP end)

ctypedef struct slot_t:      # a flow-table slot: key (a, b), up to four 32-bit values
    uint64_t a, b
    uint32_t v0, v1, v2, v3

ctypedef struct table_t:
    slot_t *s
    size_t mask, used

ctypedef struct pent_t:      # the NAT's by_port entry: the LAN flow's key (b == 0: none)
    uint64_t a, b

ctypedef struct cview_t:     # a packet as a compiled model's step takes it (models/compile.py)
    int64_t proto, src, sport, dst, dport, flags, inbound, length, label

ctypedef int (*cstep_t)(void *state, const cview_t *pkt, int64_t now, uint64_t *rng, cview_t *outs, int *gates,
                        int *nout, int *drops, int *ndrop) noexcept nogil

ctypedef struct inst_t:
    int kind
    int gate_wan, gate_lan, gate_alert       # gate indexes in the NF's `gates`
    int away_out, away_in                    # gate of a frame outside the model: from inside / outside
    int hop_target[MAX_GATES]                # per gate: next instance, or -1 (egress)
    int hop_egress[MAX_GATES]
    bint hop_inbound[MAX_GATES]
    uint64_t rng
    int64_t tps
    int64_t p[4]                             # parameters, by NF (see Pipeline._configure)
    table_t tab
    pent_t *by_port                          # NAT: 65536 entries
    int64_t pool_used                        # NAT: by_port keys in the pool
    int64_t peeked                           # NAT: draws the look-ahead has peeked at beyond the stream
    uint16_t *ver                            # LB with a flow cache: insertions per key bucket (see plans)
    int reason[5]                            # model reasons, by MODEL_REASONS index
    int r_outside
    int r_cannot[7]                          # "<instance>: cannot write <field> into the frame"
    void *cstate                             # a compiled model: its state, its step, its reasons' ids
    cstep_t cstep
    int *creason
    int cerror                               # the step's error code (pl.error == 3)

ctypedef struct frame_t:     # a frame travelling the chain: the input's bytes or a copy in `scratch`
    Py_ssize_t off
    bint copy

ctypedef struct path_t:      # a flow-cache plan's path (interned: shared by every flow that takes it)
    uint8_t nsteps, nlive
    uint8_t inst[MAX_STEPS]                  # the instance at each step
    uint8_t inbound[MAX_STEPS]               # the view's side on arrival there
    uint8_t live[MAX_STEPS]                  # 1: the handler runs (its state changes per packet)
    uint8_t gate[MAX_STEPS]                  # the gate the step emits on
    uint8_t chg[4]                           # the step that changes src, dst, sport, dport (NO_STEP: none)
    uint8_t dep                              # the step whose result rests on a key's absence (NO_STEP: none)
    uint8_t lives[MAX_STEPS]                 # the live steps, in order
    uint8_t express                          # run_express may run it: no live step but one firewall
    int16_t egress, last                     # where the packet is released, by which instance

ctypedef struct pl_t:
    int ninst, limit, linktype, error
    int stages                               # of the software pipeline (run_inputs)
    inst_t *insts
    int ingress[2]                           # instance entered from inside / outside (-1: none)
    int r_malformed[19]
    int r_fragment
    int r_no_ingress[2]
    int n4, n6
    uint32_t net4[64]
    uint32_t mask4[64]
    uint64_t net6[128]
    uint64_t mask6[128]
    # the bound batch
    uint8_t *data
    int64_t *off
    int32_t *caplen
    int32_t *wirelen
    int64_t *t_ns
    uint8_t *side
    int32_t *out_in
    int16_t *out_egress
    int16_t *out_inst
    int64_t *out_off
    int32_t *out_len
    uint16_t *out_label
    uint8_t *out_copy
    Py_ssize_t out_cap, n_out
    int32_t *drop_in
    int16_t *drop_reason
    Py_ssize_t drop_cap, n_drop
    PyObject *owner                          # the Pipeline (to grow the batch's arrays, GIL held)
    PyObject *batch
    # the input being processed
    Py_ssize_t cur, cur_caplen
    int64_t cur_t
    layout_t *lay
    uint8_t *scratch                         # copies of the current input's frame
    Py_ssize_t scratch_len, scratch_cap
    uint8_t *stage                           # copies released in this call, for batch.extra
    Py_ssize_t stage_len, stage_cap, extra_base
    # the flow cache (see "Flow cache" in the module docstring)
    bint use_cache
    size_t cache_max                         # slots: a full cache this size is emptied, never grown
    table_t cache                            # input key -> final fields, path id | dependency version << 16
    path_t *paths
    int npaths, last_path                    # (last_path: the one interned last, -1: none)
    int16_t *path_index                      # path hash -> path id + 1 (0: empty)
    Py_ssize_t hits, misses, flushes, express, replies
    view_t replies_due[REPLY_QUEUE]          # plan_reply's queue: reply views, the input each is due at
    Py_ssize_t reply_at[REPLY_QUEUE]
    int reply_head, nreplies
    uint32_t cache_gen                       # bumped whenever the cache's slots move or go (growth, emptying)
    bint rec                                 # recording the current input's path (it is a cache miss)
    path_t rp
    view_t rin                               # the current input's view
    uint16_t rdep_ver


ctypedef struct prepared_t:  # an input parsed ahead of its turn (run_inputs)
    layout_t lay
    view_t v
    int status                # 0: in the model, 1: outside the model, 2: dropped at ingress (reason)
    int reason
    int next                  # prefetching: the instance the packet is predicted to reach next (-1: none)
    view_t ahead              # ... and the view it would arrive with
    int cached                # 0: no flow-cache lookup; 1: the cache slot is prefetched; 2: looked at;
                              # 3: looked at and found (plan_prefetch kept what the plan needs below)
    bint fresh                # `ahead` not set yet
    uint64_t ca, cb, ch       # the flow-cache key and its hash
    slot_t *ce                # cached >= 2: the slot the key was in or would go to, while cache_gen is gen
    uint32_t gen
    uint64_t fa, fb, fh       # a hit's express plan: its firewall step's key and hash (fb == 0: none)
    uint64_t ev0, ev1         # cached == 3: the slot's values then (the plan the above rest on)
    uint16_t *vp              # ... and its dependency's version counter (NULL: none)


# ---- small helpers ----------------------------------------------------------------------------------

cdef inline void put16(uint8_t *d, Py_ssize_t o, uint32_t v) noexcept nogil:
    st16(d + o, v)

cdef inline void put32(uint8_t *d, Py_ssize_t o, uint32_t v) noexcept nogil:
    st32(d + o, v)

cdef inline uint32_t get16(const uint8_t *d, Py_ssize_t o) noexcept nogil:
    return ld16(d + o)

cdef inline uint32_t get32(const uint8_t *d, Py_ssize_t o) noexcept nogil:
    return ld32(d + o)

cdef inline void sum16(uint64_t *acc, uint32_t old, uint32_t new) noexcept nogil:
    """One 16-bit word's change for an RFC 1624 update: ~m + m'."""
    acc[0] += (~old & 0xFFFF) + (new & 0xFFFF)

cdef inline void sum32(uint64_t *acc, uint32_t old, uint32_t new) noexcept nogil:
    sum16(acc, old >> 16, new >> 16)
    sum16(acc, old & 0xFFFF, new & 0xFFFF)

cdef inline uint32_t csum_apply(uint32_t c, uint64_t acc) noexcept nogil:
    """HC' = ~(~HC + sum of (~m + m')), ones' complement (end-around carry)."""
    cdef uint64_t s = (~c & 0xFFFF) + acc  # acc: a few dozen 17-bit terms at most, so three folds do
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

cdef inline uint64_t rng_next(uint64_t *state) noexcept nogil:
    state[0] += GOLDEN
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)

cdef inline uint64_t below(inst_t *t, uint64_t n) noexcept nogil:
    return rng_next(&t.rng) % n

cdef inline uint64_t rng_peek(uint64_t state, uint64_t k) noexcept nogil:
    """The k-th next output of a stream (k >= 1), without drawing it."""
    cdef uint64_t z = state + k * GOLDEN
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)

cdef inline uint64_t key_a(uint32_t src, uint32_t dst) noexcept nogil:
    return (<uint64_t>src << 32) | dst

cdef inline uint64_t key_b(int proto, int sport, int dport) noexcept nogil:
    return USED | (<uint64_t>proto << 32) | (<uint64_t>sport << 16) | <uint64_t>dport


# ---- flow tables: open addressing, linear probing, backward-shift deletion ----------------------

cdef inline size_t slot_home(table_t *t, uint64_t a, uint64_t b) noexcept nogil:
    """A key's first slot: the first of a cache line's two (probing then reads a whole line)."""
    return <size_t>mum(a ^ K0, b ^ K1) & t.mask & ~(<size_t>1)

cdef void *zeroed(size_t nbytes, bint touch=0) noexcept nogil:
    """nbytes of zeroed memory, cache-line aligned; from 1 MB on, fresh pages from the kernel
    (zeroed once, by it) on 2 MB pages where it grants them (fewer TLB misses on random probes).
    `touch`: every page faulted in now rather than at its first use (a table sized ahead for its
    flows: the packets do not pay the kernel's zeroing). Free with release_zeroed(p, nbytes)."""
    cdef void *p
    cdef size_t size, head, at
    if nbytes >= BIG:  # 2 MB-aligned, whole 2 MB pages: every page of the table can be a huge one
        size = (nbytes + HUGE - 1) & ~(<size_t>HUGE - 1)
        p = mmap(NULL, size + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            return NULL
        head = (HUGE - (<size_t>p & (HUGE - 1))) & (HUGE - 1)
        if head:
            munmap(p, head)
        munmap(<char *>p + head + size, HUGE - head)
        p = <char *>p + head
        madvise(p, size, MADV_HUGEPAGE)
        if touch:
            at = 0
            while at < size:
                (<volatile char *>p)[at] = 0
                at += 4096
        return p
    p = aligned_alloc(64, (nbytes + 63) & ~(<size_t>63))
    if p != NULL:
        memset(p, 0, nbytes)
    return p

cdef void release_zeroed(void *p, size_t nbytes) noexcept nogil:
    if p == NULL:
        return
    if nbytes >= BIG:
        munmap(p, (nbytes + HUGE - 1) & ~(<size_t>HUGE - 1))
    else:
        free(p)

cdef inline slot_t *slots_alloc(size_t n, bint touch=0) noexcept nogil:
    """n zeroed slots."""
    return <slot_t *>zeroed(n * sizeof(slot_t), touch)

cdef int table_init(table_t *t, size_t size, bint touch=0) noexcept nogil:
    t.s = slots_alloc(size, touch)
    t.mask, t.used = size - 1, 0
    return t.s != NULL

cdef inline slot_t *table_find(table_t *t, uint64_t a, uint64_t b) noexcept nogil:
    """The slot holding key (a, b), or the empty slot where it would go (its b is 0)."""
    cdef size_t i = slot_home(t, a, b)
    cdef slot_t *s
    while True:
        s = &t.s[i]
        if (s.b == b and s.a == a) or s.b == 0:
            return s
        i = (i + 1) & t.mask

cdef inline void table_claim(table_t *t, slot_t *s, uint64_t a, uint64_t b) noexcept nogil:
    """Occupies the empty slot table_find returned for (a, b); values to be set by the caller, then
    table_fit (which may move every slot)."""
    s.a, s.b = a, b
    s.v0 = s.v1 = s.v2 = s.v3 = 0
    t.used += 1

cdef inline int table_fit(table_t *t) noexcept nogil:
    """Doubles the table when it is more than half full. 0 on allocation failure."""
    return t.used * 2 <= t.mask + 1 or table_double(t)

cdef int table_double(table_t *t) noexcept nogil:
    cdef size_t n = t.mask + 1, i, j
    cdef slot_t *old = t.s
    cdef slot_t *s
    t.s = slots_alloc(2 * n)
    if t.s == NULL:
        t.s = old
        return 0
    t.mask = 2 * n - 1
    for i in range(n):
        if old[i].b != 0:
            j = slot_home(t, old[i].a, old[i].b)
            while t.s[j].b != 0:
                j = (j + 1) & t.mask
            t.s[j] = old[i]
    release_zeroed(old, n * sizeof(slot_t))
    return 1

cdef void table_delete(table_t *t, slot_t *s) noexcept nogil:
    cdef size_t i = s - t.s, j = i, home
    while True:
        j = (j + 1) & t.mask
        if t.s[j].b == 0:
            break
        home = slot_home(t, t.s[j].a, t.s[j].b)
        # the entry at j may fill the hole at i unless its home lies cyclically in (i, j]
        if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
            t.s[i] = t.s[j]
            i = j
    t.s[i].b = 0
    t.s[i].a = 0
    t.used -= 1

cdef inline void table_prefetch(table_t *t, uint64_t a, uint64_t b) noexcept nogil:
    table_prefetch_h(t, key_hash(a, b))

cdef inline void table_prefetch_h(table_t *t, uint64_t h) noexcept nogil:
    """The key's home line (its slot pair). Not the next line too, where a probe continues when
    the pair holds other keys (one time in ten): on the benchmark's machine (2 vCPUs, Intel Xeon,
    KVM) the extra line per lookup cost more than the probes it saved (3-6 % at 100k flows)."""
    prefetch(&t.s[<size_t>h & t.mask & ~(<size_t>1)])

cdef inline uint64_t key_hash(uint64_t a, uint64_t b) noexcept nogil:
    """The hash slot_home reduces (stays valid across a table's growth)."""
    return mum(a ^ K0, b ^ K1)

cdef inline slot_t *table_find_h(table_t *t, uint64_t a, uint64_t b, uint64_t h) noexcept nogil:
    """table_find with the key's hash already computed (key_hash(a, b))."""
    cdef size_t i = <size_t>h & t.mask & ~(<size_t>1)
    cdef slot_t *s
    while True:
        s = &t.s[i]
        if (s.b == b and s.a == a) or s.b == 0:
            return s
        i = (i + 1) & t.mask

cdef inline uint32_t ver_bucket(uint64_t a, uint64_t b) noexcept nogil:
    return <uint32_t>(key_hash(a, b) >> 48)


# ---- results --------------------------------------------------------------------------------------

cdef void grow_outputs(pl_t *pl) noexcept nogil:
    with gil:
        (<Pipeline>pl.owner)._grow(<object>pl.batch, 0)

cdef void grow_drops(pl_t *pl) noexcept nogil:
    with gil:
        (<Pipeline>pl.owner)._grow(<object>pl.batch, 1)

cdef inline void record_drop(pl_t *pl, int reason) noexcept nogil:
    if pl.n_drop == pl.drop_cap:
        grow_drops(pl)
    pl.drop_in[pl.n_drop] = <int32_t>pl.cur
    pl.drop_reason[pl.n_drop] = <int16_t>reason
    pl.n_drop += 1

cdef inline uint8_t *frame_bytes(pl_t *pl, frame_t *f) noexcept nogil:
    return (pl.scratch if f.copy else pl.data + pl.off[pl.cur]) + f.off

cdef inline Py_ssize_t output_slot(pl_t *pl, int egress, int inst, int label) noexcept nogil:
    """The next output's index (room made), its input, egress, instance, label and length set."""
    cdef Py_ssize_t k = pl.n_out
    if k == pl.out_cap:
        grow_outputs(pl)
    pl.out_in[k] = <int32_t>pl.cur
    pl.out_egress[k] = <int16_t>egress
    pl.out_inst[k] = <int16_t>inst
    pl.out_label[k] = <uint16_t>label
    pl.out_len[k] = <int32_t>pl.cur_caplen
    return k

cdef inline int release_input(pl_t *pl, int egress, int inst, int label) noexcept nogil:
    """release() of the input's own frame (not a copy)."""
    cdef Py_ssize_t k = output_slot(pl, egress, inst, label)
    pl.out_off[k] = pl.off[pl.cur]
    pl.out_copy[k] = 0
    pl.n_out = k + 1
    return 0

cdef int release(pl_t *pl, int egress, int inst, int label, frame_t *f) noexcept nogil:
    cdef Py_ssize_t k, n = pl.cur_caplen
    cdef uint8_t *grown
    if not f.copy:
        return release_input(pl, egress, inst, label)
    k = output_slot(pl, egress, inst, label)
    if pl.stage_len + n > pl.stage_cap:
        grown = <uint8_t *>realloc(pl.stage, 2 * (pl.stage_len + n))
        if grown == NULL:
            pl.error = 2
            return -1
        pl.stage, pl.stage_cap = grown, 2 * (pl.stage_len + n)
    memcpy(pl.stage + pl.stage_len, pl.scratch + f.off, n)
    pl.out_off[k] = pl.extra_base + pl.stage_len
    pl.out_copy[k] = 1
    pl.stage_len += n
    pl.n_out = k + 1
    return 0

cdef int copy_frame(pl_t *pl, frame_t *src, frame_t *dst) noexcept nogil:
    """dst = a copy of src (as it is now) appended to the scratch area."""
    cdef Py_ssize_t n = pl.cur_caplen
    cdef uint8_t *grown
    if pl.scratch_len + n > pl.scratch_cap:
        grown = <uint8_t *>realloc(pl.scratch, 2 * (pl.scratch_len + n))
        if grown == NULL:
            pl.error = 2
            return -1
        pl.scratch, pl.scratch_cap = grown, 2 * (pl.scratch_len + n)
    memcpy(pl.scratch + pl.scratch_len, frame_bytes(pl, src), n)
    dst.off, dst.copy = pl.scratch_len, 1
    pl.scratch_len += n
    return 0


# ---- frames as model packets: the view and the write-back (contract sections 1 and 2) -------------

cdef inline bint icmp_query(int t) noexcept nogil:
    return t == 0 or t == 8 or t == 13 or t == 14

cdef inline bint icmp_request(int t) noexcept nogil:
    return t == 8 or t == 13

cdef inline void make_view(pkt_t *p, layout_t *L, view_t *v) noexcept nogil:
    """The model packet of a well-formed IPv4 frame that is not a later fragment."""
    cdef const uint8_t *d = p.d
    cdef hdr_t *h = &p.ip
    cdef hdr_t *q = &p.q
    cdef int t, qs, qd
    cdef Py_ssize_t total, end
    L.l3, L.l4, L.ql3, L.ql4, L.qproto, L.avail = h.l3, h.l4, -1, -1, -1, 0
    v.proto = h.proto
    v.src = get32(d, h.l3 + 12)
    v.dst = get32(d, h.l3 + 16)
    v.sport = v.dport = v.flags = 0
    if h.proto == 6 or h.proto == 17:
        L.kind = L_TCP if h.proto == 6 else L_UDP
        v.sport, v.dport = h.sport, h.dport
        if h.proto == 6:
            v.flags = h.tcp_flags & 0xFF
    elif h.proto == 1:
        t = h.icmp_type
        if icmp_request(t):
            L.kind = L_ICMP_REQ
            v.sport = h.icmp_id
        elif icmp_query(t):
            L.kind = L_ICMP_REP
            v.dport = h.icmp_id
        elif (t == 3 or t == 4 or t == 5 or t == 11 or t == 12) and p.has_quoted and q.version == 4 and (
                ((q.proto == 6 or q.proto == 17) and q.sport >= 0) or (q.proto == 1 and q.icmp_id >= 0)):
            L.ql3, L.ql4, L.qproto = q.l3, q.l4, q.proto
            total = get16(d, h.l3 + 2)
            end = p.wirelen if total == 0 else h.l3 + total
            if end > p.wirelen:
                end = p.wirelen
            L.avail = end if end < p.caplen else p.caplen
            if q.proto != 1:
                L.kind = L_ERR_L4
                qs, qd = q.sport, q.dport
            elif icmp_request(q.icmp_type):
                L.kind = L_ERR_REQ
                qs, qd = q.icmp_id, 0
            else:
                L.kind = L_ERR_REP
                qs, qd = 0, q.icmp_id
            v.proto = q.proto
            v.src = get32(d, q.l3 + 16)
            v.dst = get32(d, q.l3 + 12)
            v.sport, v.dport = qd, qs
        else:
            L.kind = L_ICMP_OTHER
    else:
        L.kind = L_OTHER


cdef int cannot_write(layout_t *L, view_t *o, view_t *n) noexcept nogil:
    """The first field (Field + 1) that changed and the frame cannot carry; 0: all can be written."""
    cdef int k = L.kind
    if o.proto != n.proto:
        return F_PROTO + 1
    if o.sport != n.sport and not (k == L_TCP or k == L_UDP or k == L_ICMP_REQ or k == L_ERR_L4 or k == L_ERR_REP):
        return F_SPORT + 1
    if o.dport != n.dport and not (k == L_TCP or k == L_UDP or k == L_ICMP_REP or k == L_ERR_L4 or k == L_ERR_REQ):
        return F_DPORT + 1
    if o.flags != n.flags and k != L_TCP:
        return F_FLAGS + 1
    if o.length != n.length:
        return F_LENGTH + 1
    return 0


cdef void write_l4_checksum(uint8_t *d, Py_ssize_t at, uint64_t acc, bint udp) noexcept nogil:
    cdef uint32_t c = get16(d, at)
    if udp and c == 0:  # no checksum: stays none
        return
    c = csum_apply(c, acc)
    if udp and c == 0:
        c = 0xFFFF
    put16(d, at, c)


cdef void write_back_error(uint8_t *d, layout_t *L, view_t *o, view_t *n) noexcept nogil:
    """write_back for an ICMP error, whose view is the reverse of the packet it quotes."""
    cdef int k = L.kind, l3 = L.l3, l4 = L.l4, ql3 = L.ql3, ql4 = L.ql4
    cdef uint64_t ip = 0, tl = 0, icmp = 0, qip = 0, ql = 0
    cdef bint ch_ip = 0, ch_tl = 0, ch_icmp = 0, ch_qip = 0, ch_ql = 0, has_ql, pseudo
    cdef uint32_t old, new, w
    if o.src != n.src:  # the quoted destination, and the outer source if it was the same address
        if get32(d, l3 + 12) == o.src:
            put32(d, l3 + 12, n.src)
            sum32(&ip, o.src, n.src)
            ch_ip = 1
        sum32(&qip, get32(d, ql3 + 16), n.src)
        put32(d, ql3 + 16, n.src)
        ch_qip = 1
    if o.dst != n.dst:
        if get32(d, l3 + 16) == o.dst:
            put32(d, l3 + 16, n.dst)
            sum32(&ip, o.dst, n.dst)
            ch_ip = 1
        sum32(&qip, get32(d, ql3 + 12), n.dst)
        put32(d, ql3 + 12, n.dst)
        ch_qip = 1
    ql = qip  # the quoted transport checksum: the pseudo header (TCP/UDP) and the ports or identifier
    if k != L_ERR_L4:
        ql = 0
    icmp = qip
    ch_icmp = ch_qip
    if o.sport != n.sport:  # the quote's "dport": its destination port, or a quoted reply's identifier
        w = ql4 + 2 if k == L_ERR_L4 else ql4 + 4
        sum16(&ql, get16(d, w), n.sport)
        sum16(&icmp, get16(d, w), n.sport)
        put16(d, w, n.sport)
        ch_ql = ch_icmp = 1
    if o.dport != n.dport:  # the quote's "sport": its source port, or a quoted request's identifier
        w = ql4 if k == L_ERR_L4 else ql4 + 4
        sum16(&ql, get16(d, w), n.dport)
        sum16(&icmp, get16(d, w), n.dport)
        put16(d, w, n.dport)
        ch_ql = ch_icmp = 1
    if ch_qip:
        old = get16(d, ql3 + 10)
        new = csum_apply(old, qip)
        put16(d, ql3 + 10, new)
        sum16(&icmp, old, new)
        if k == L_ERR_L4:
            ch_ql = 1
    # the quoted transport checksum, when its bytes are in the quote
    if L.qproto == 6:
        w, has_ql = ql4 + 16, ql4 + 18 <= L.avail
    elif L.qproto == 17:
        w, has_ql = ql4 + 6, ql4 + 8 <= L.avail
    else:
        w, has_ql = ql4 + 2, ql4 + 8 <= L.avail
    if ch_ql and has_ql:
        old = get16(d, w)
        if L.qproto == 17:
            write_l4_checksum(d, w, ql, 1)
        else:
            put16(d, w, csum_apply(old, ql))
        sum16(&icmp, old, get16(d, w))
    if ch_icmp:
        put16(d, l4 + 2, csum_apply(get16(d, l4 + 2), icmp))
    if ch_ip:
        put16(d, l3 + 10, csum_apply(get16(d, l3 + 10), ip))


cdef inline void write_back(uint8_t *d, layout_t *L, view_t *o, view_t *n) noexcept nogil:
    """Rewrites the frame d (whose view is o) so that its view is n; cannot_write(L, o, n) was 0."""
    cdef int k = L.kind, l3 = L.l3, l4 = L.l4, ql3 = L.ql3, ql4 = L.ql4
    cdef uint64_t ip = 0, tl = 0, icmp = 0, qip = 0, ql = 0
    cdef bint ch_ip = 0, ch_tl = 0, ch_icmp = 0, ch_qip = 0, ch_ql = 0, has_ql, pseudo
    cdef uint32_t old, new, w
    if k >= L_ERR_L4:  # an ICMP error: the view is the reversed quote
        write_back_error(d, L, o, n)
        return
    pseudo = k == L_TCP or k == L_UDP
    if o.src != n.src:
        put32(d, l3 + 12, n.src)
        sum32(&ip, o.src, n.src)
        ch_ip = 1
        if pseudo:
            sum32(&tl, o.src, n.src)
            ch_tl = 1
    if o.dst != n.dst:
        put32(d, l3 + 16, n.dst)
        sum32(&ip, o.dst, n.dst)
        ch_ip = 1
        if pseudo:
            sum32(&tl, o.dst, n.dst)
            ch_tl = 1
    if o.sport != n.sport:  # TCP/UDP source port, or an ICMP request's identifier
        put16(d, l4 if pseudo else l4 + 4, n.sport)
        sum16(&tl, o.sport, n.sport)
        ch_tl = 1
    if o.dport != n.dport:  # TCP/UDP destination port, or an ICMP reply's identifier
        put16(d, l4 + 2 if pseudo else l4 + 4, n.dport)
        sum16(&tl, o.dport, n.dport)
        ch_tl = 1
    if o.flags != n.flags:  # the low 8 bits of the TCP flags; the NS bit (byte l4+12) is kept
        old = get16(d, l4 + 12)
        d[l4 + 13] = n.flags & 0xFF
        sum16(&tl, old, get16(d, l4 + 12))
        ch_tl = 1
    if ch_ip:
        put16(d, l3 + 10, csum_apply(get16(d, l3 + 10), ip))
    if ch_tl:
        if k == L_TCP:
            write_l4_checksum(d, l4 + 16, tl, 0)
        elif k == L_UDP:
            write_l4_checksum(d, l4 + 6, tl, 1)
        elif k == L_ICMP_REQ or k == L_ICMP_REP:
            put16(d, l4 + 2, csum_apply(get16(d, l4 + 2), tl))


# ---- the bundled NFs: each a line-by-line transcription of its model (models/*.py) ----------------

cdef inline int64_t now_of(pl_t *pl, inst_t *t) noexcept nogil:
    return ticks_of(pl.cur_t, t.tps)

cdef inline int drop(pl_t *pl, inst_t *t, int which) noexcept nogil:
    record_drop(pl, t.reason[which])
    return 0

cdef inline int out1(int *gates, int gate) noexcept nogil:
    gates[0] = gate
    return 1

cdef inline int opposite(inst_t *t, view_t *v) noexcept nogil:
    return t.gate_lan if v.inbound else t.gate_wan

cdef int nat_free_port(inst_t *t) noexcept nogil:
    """Pool.free(by_port) by the choice protocol (runtime/rng.py choose_free); -1: exhausted."""
    cdef int64_t base = t.p[1], size = t.p[2], v = base, top
    cdef int k
    if t.pool_used >= size:
        return -1
    for k in range(FREE_DRAWS):
        v = base + <int64_t>below(t, size)
        if t.peeked > 0:
            t.peeked -= 1
        if t.by_port[v].b == 0:
            return <int>v
    top = base + size - 1
    while t.by_port[v].b != 0:
        v = base if v == top else v + 1
    return <int>v

cdef inline int nf_nat(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef pent_t *e
    cdef slot_t *s
    cdef uint64_t a, b
    cdef int port
    if v.inbound:
        e = &t.by_port[v.dport]
        if e.b == 0:
            return drop(pl, t, 0)
        if <uint32_t>e.a != v.src or <int>(e.b & 0xFFFF) != v.sport or <int>((e.b >> 32) & 0xFF) != v.proto:
            return drop(pl, t, 1)
        v.dst = <uint32_t>(e.a >> 32)
        v.dport = (e.b >> 16) & 0xFFFF
        return out1(gates, t.gate_lan) | REWRITTEN
    a, b = key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport)
    s = table_find(&t.tab, a, b)
    if s.b == 0:
        port = nat_free_port(t)
        if port < 0:
            return drop(pl, t, 2)
        table_claim(&t.tab, s, a, b)
        s.v0 = port
        t.by_port[port].a, t.by_port[port].b = a, b
        if t.p[1] <= port < t.p[1] + t.p[2]:
            t.pool_used += 1
        if not table_fit(&t.tab):
            pl.error = 2
    else:
        port = s.v0
    v.src = <uint32_t>t.p[0]
    v.sport = port
    return out1(gates, t.gate_wan) | REWRITTEN

cdef inline int fw_tcp_known(table_t *tab, slot_t *s, int flags, bint inbound, int64_t now) noexcept nogil:
    """The firewall's answer to a TCP packet (flags, side) of the connection in slot s, not timed
    out: -1 when it passes, the entry updated (its stage and time, or gone on FIN or RST); else the
    reason it is dropped, nothing changed."""
    cdef bint syn = (flags & 2) != 0, ack = (flags & 16) != 0
    if flags & 5:  # FIN or RST
        table_delete(tab, s)
        return -1
    if s.v3 == 1:
        if inbound and syn and ack:
            s.v3 = 2
        elif inbound or not syn or ack:
            return FW_ORDER
    elif s.v3 == 2:
        if not inbound and ack and not syn:
            s.v3 = 3
        elif not (inbound and syn and ack):
            return FW_ORDER
    s.v0 = <uint32_t>now
    return -1

cdef inline int nf_firewall(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef int64_t now = now_of(pl, t)
    cdef int out = opposite(t, v), reason
    cdef uint64_t a, b
    cdef slot_t *s
    cdef bint present
    if v.inbound:
        a, b = key_a(v.dst, v.src), key_b(v.proto, v.dport, v.sport)
    else:
        a, b = key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport)
    if v.proto == 6:
        s = table_find(&t.tab, a, b)
        present = s.b != 0
        if present and now - <int64_t>s.v0 > t.p[0]:
            table_delete(&t.tab, s)
            present = 0
        if not present:
            if v.inbound:
                return drop(pl, t, FW_UNSOLICITED)
            if not v.flags & 2 or v.flags & 16:  # not a SYN alone
                return drop(pl, t, FW_NOCONN)
            s = table_find(&t.tab, a, b)
            table_claim(&t.tab, s, a, b)
            s.v3, s.v0 = 1, <uint32_t>now
            if not table_fit(&t.tab):
                pl.error = 2
            return out1(gates, out)
        reason = fw_tcp_known(&t.tab, s, v.flags, v.inbound, now)
        if reason >= 0:
            return drop(pl, t, reason)
        return out1(gates, out)
    if v.proto == 17:
        s = table_find(&t.tab, a, b)
        present = s.b != 0
        if present and now - <int64_t>s.v0 > t.p[1]:
            table_delete(&t.tab, s)
            present = 0
        if not present and v.inbound:
            return drop(pl, t, FW_UDP)
        if present:
            s.v0 = <uint32_t>now
        else:
            s = table_find(&t.tab, a, b)
            table_claim(&t.tab, s, a, b)
            s.v0 = <uint32_t>now
            if not table_fit(&t.tab):
                pl.error = 2
        return out1(gates, out)
    if v.inbound:
        return drop(pl, t, FW_UNTRACKED)
    return out1(gates, out)

cdef inline int nf_lb(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef uint64_t a, b
    cdef slot_t *s
    cdef uint32_t vip = <uint32_t>t.p[0], backend
    if v.inbound:
        s = table_find(&t.tab, key_a(v.dst, vip), key_b(v.proto, v.dport, v.sport))
        if s.b != 0 and s.v0 == v.src:
            v.src = vip
            return out1(gates, t.gate_lan) | REWRITTEN
        return out1(gates, t.gate_lan)
    if v.dst != vip:
        return out1(gates, t.gate_wan)
    a, b = key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport)
    s = table_find(&t.tab, a, b)
    if s.b == 0:
        backend = <uint32_t>(t.p[1] + <int64_t>below(t, t.p[2]))
        table_claim(&t.tab, s, a, b)
        s.v0 = backend
        if not table_fit(&t.tab):
            pl.error = 2
        if t.ver != NULL:
            lb_inserted(pl, t, a, b)
    else:
        backend = s.v0
    v.dst = backend
    return out1(gates, t.gate_wan) | REWRITTEN

cdef inline uint32_t model_flow_hash(int proto, uint32_t src, int sport, uint32_t dst, int dport,
                                     uint32_t buckets) noexcept nogil:
    """models.api.flow_hash."""
    cdef uint64_t h = (src ^ (<uint64_t>dst * 0x9E37) ^ (<uint64_t>sport << 16) ^ <uint64_t>dport
                       ^ (<uint64_t>proto << 8)) & M32
    h = (h * <uint64_t>0x9E3779B1) & M32
    h = h ^ (h >> 16)
    return <uint32_t>((h & 0xFFFF) % buckets)

cdef inline int nf_lb_hash(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef uint32_t vip = <uint32_t>t.p[0]
    if v.inbound:
        if t.p[1] + model_flow_hash(v.proto, v.dst, v.dport, vip, v.sport, <uint32_t>t.p[2]) == v.src:
            v.src = vip
            return out1(gates, t.gate_lan) | REWRITTEN
        return out1(gates, t.gate_lan)
    if v.dst != vip:
        return out1(gates, t.gate_wan)
    v.dst = <uint32_t>(t.p[1] + model_flow_hash(v.proto, v.src, v.sport, v.dst, v.dport, <uint32_t>t.p[2]))
    return out1(gates, t.gate_wan) | REWRITTEN

cdef inline int nf_ratelimit(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef int64_t now = now_of(pl, t), cost = t.tps, full = t.p[0] * t.tps, credit
    cdef slot_t *s = table_find(&t.tab, v.src, USED)
    if s.b == 0:
        credit = full
        table_claim(&t.tab, s, v.src, USED)
    else:
        credit = refill(<int64_t>s.v0, now - <int64_t>s.v1, t.p[1], full)
    s.v1 = <uint32_t>now
    if credit < cost:
        s.v0 = <uint32_t>credit
        if not table_fit(&t.tab):
            pl.error = 2
        return drop(pl, t, 0)
    s.v0 = <uint32_t>(credit - cost)
    if not table_fit(&t.tab):
        pl.error = 2
    return out1(gates, opposite(t, v))

cdef inline int nf_monitor(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef uint64_t a = key_a(v.src, v.dst), b = key_b(v.proto, v.sport, v.dport)
    cdef slot_t *s = table_find(&t.tab, a, b)
    cdef int64_t packets, octets
    cdef bint heavy
    cdef int n = 1
    if s.b == 0:
        packets, octets = 1, v.length
        table_claim(&t.tab, s, a, b)
    else:
        packets, octets = <int64_t>s.v0 + 1, <int64_t>s.v1 + v.length
    s.v0, s.v1 = <uint32_t>packets, <uint32_t>octets
    out1(gates, opposite(t, v))
    heavy = packets >= t.p[0]
    if t.p[1]:
        heavy = heavy or octets >= t.p[1]
    if heavy and not s.v3:
        s.v3 = 1
        gates[1] = t.gate_alert
        n = 2
    if not table_fit(&t.tab):
        pl.error = 2
    return n

cdef inline int nf_csfq_edge(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef int64_t now = now_of(pl, t), count, estimate, label, window = t.p[0]
    cdef uint64_t a = key_a(v.src, v.dst), b = key_b(v.proto, v.sport, v.dport)
    cdef slot_t *s = table_find(&t.tab, a, b)
    if s.b == 0:
        count, estimate = 0, 0
        table_claim(&t.tab, s, a, b)
        s.v0 = <uint32_t>now
    elif now - <int64_t>s.v0 >= window:
        estimate = (<int64_t>s.v2 + <int64_t>s.v1) >> 1 if now - <int64_t>s.v0 < 2 * window else 0
        count = 0
        s.v0 = <uint32_t>now
    else:
        count, estimate = s.v1, s.v2
    count = count + 1
    s.v1, s.v2 = <uint32_t>count, <uint32_t>estimate
    label = estimate if estimate > count else count
    if label > 0xFFFF:
        label = 0xFFFF
    if not table_fit(&t.tab):
        pl.error = 2
    v.label = <int32_t>label  # metadata, not a frame field
    return out1(gates, opposite(t, v))

cdef inline int nf_csfq_core(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef int64_t r
    if v.label > t.p[0]:
        r = <int64_t>below(t, t.p[1])
        if r * v.label >= t.p[1] * t.p[0]:
            return drop(pl, t, 0)
    return out1(gates, opposite(t, v))

cdef inline int handle(pl_t *pl, inst_t *t, view_t *v, int *gates) noexcept nogil:
    cdef int k = t.kind
    if k == K_NAT:
        return nf_nat(pl, t, v, gates)
    if k == K_FW:
        return nf_firewall(pl, t, v, gates)
    if k == K_LB:
        return nf_lb(pl, t, v, gates)
    if k == K_LBH:
        return nf_lb_hash(pl, t, v, gates)
    if k == K_RL:
        return nf_ratelimit(pl, t, v, gates)
    if k == K_MON:
        return nf_monitor(pl, t, v, gates)
    if k == K_EDGE:
        return nf_csfq_edge(pl, t, v, gates)
    return nf_csfq_core(pl, t, v, gates)

cdef inline void prefetch_first(inst_t *t, view_t *v) noexcept nogil:
    """Touches the slot the instance's first lookup for v will read (a hint: never changes results)."""
    cdef int k = t.kind
    if k == K_NAT:
        if v.inbound:
            prefetch(&t.by_port[v.dport])
        else:
            table_prefetch(&t.tab, key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport))
    elif k == K_FW:
        if v.inbound:
            table_prefetch(&t.tab, key_a(v.dst, v.src), key_b(v.proto, v.dport, v.sport))
        else:
            table_prefetch(&t.tab, key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport))
    elif k == K_LB:
        if v.inbound:
            table_prefetch(&t.tab, key_a(v.dst, <uint32_t>t.p[0]), key_b(v.proto, v.dport, v.sport))
        elif v.dst == <uint32_t>t.p[0]:
            table_prefetch(&t.tab, key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport))
    elif k == K_RL:
        table_prefetch(&t.tab, v.src, USED)
    elif k == K_MON or k == K_EDGE:
        table_prefetch(&t.tab, key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport))


cdef int predict(inst_t *t, view_t *v) noexcept nogil:
    """The gate the instance will most likely emit v on, v rewritten as it would be, reading the
    tables only (for prefetching the next instance's slot); -1 when that depends on a choice."""
    cdef int k = t.kind, j, g
    cdef int64_t port
    if k == K_COMPILED:
        return -1
    if not stable_kind(k):
        return opposite(t, v)
    g = stable_step(t, v)
    if g >= 0 or k != K_NAT or v.inbound or t.pool_used >= t.p[2]:
        return g
    # a new NAT flow: its port will most likely be the first free one among the draws not yet
    # peeked at (their by_port entries were prefetched when the previous new flow was predicted)
    for j in range(1, FREE_DRAWS + 1):
        port = t.p[1] + <int64_t>(rng_peek(t.rng, t.peeked + j) % <uint64_t>t.p[2])
        if t.by_port[port].b == 0:
            break
    else:
        return -1
    t.peeked += j
    for j in range(1, 5):
        prefetch(&t.by_port[t.p[1] + <int64_t>(rng_peek(t.rng, t.peeked + j) % <uint64_t>t.p[2])])
    v.src, v.sport = <uint32_t>t.p[0], port
    return t.gate_wan


# ---- the flow cache: plans of established flows ---------------------------------------------------

cdef inline bint stable_kind(int kind) noexcept nogil:
    """An NF whose result for a packet, once it emitted it, is the same for every later packet with
    the same addresses, ports, protocol and side: its state only grows and the entry it read never
    changes (the NAT's mappings, the balancer's backends; lb-hash has no state). Its handler reads no
    clock, draws nothing once the entry exists, looks at no flags or length."""
    return kind == K_NAT or kind == K_LB or kind == K_LBH

cdef inline bint live_kind(int kind) noexcept nogil:
    return not stable_kind(kind)

cdef void cache_clear(pl_t *pl) noexcept nogil:
    memset(pl.cache.s, 0, (pl.cache.mask + 1) * sizeof(slot_t))
    pl.cache.used = 0
    pl.flushes += 1
    pl.cache_gen += 1

cdef void lb_inserted(pl_t *pl, inst_t *t, uint64_t a, uint64_t b) noexcept nogil:
    """The balancer stored key (a, b): plans that rest on its absence (a reply the balancer did not
    recognise) have the old version of its bucket and are void. A version back at 0 could make a
    void plan look valid again: then every plan goes."""
    cdef uint32_t k = ver_bucket(a, b)
    t.ver[k] += 1
    if t.ver[k] == 0:
        cache_clear(pl)

cdef void record_start(pl_t *pl, view_t *v) noexcept nogil:
    memset(&pl.rp, 0, sizeof(path_t))
    memset(pl.rp.chg, NO_STEP, 4)
    pl.rp.dep = NO_STEP
    pl.rin = v[0]
    pl.rdep_ver = 0
    pl.rec = 1

cdef inline bint take_change(path_t *p, int field, int k) noexcept nogil:
    """Step k changes the field: 0 if an earlier step did too (then the path is no plan: a field
    rewritten twice would not get the checksum updates of one rewrite)."""
    if p.chg[field] != NO_STEP:
        return 0
    p.chg[field] = k
    return 1

cdef inline void record_step(pl_t *pl, int inst, inst_t *t, view_t *o, view_t *v, int n, bint changed, int *gates,
                      int bad) noexcept nogil:
    """Step of a cache miss's path (walk, after the handler turned o into v with n outputs on
    gates): appended to pl.rp, or pl.rec = 0 when the path cannot be a plan."""
    cdef path_t *p = &pl.rp
    cdef int k = p.nsteps
    cdef uint64_t a, b
    cdef uint32_t vip
    if n != 1 or bad or k == MAX_STEPS or o.proto != v.proto or o.flags != v.flags or o.length != v.length:
        pl.rec = 0
        return
    p.inst[k], p.inbound[k], p.gate[k] = inst, o.inbound, gates[0]
    if live_kind(t.kind):
        if changed or o.src != v.src or o.dst != v.dst or o.sport != v.sport or o.dport != v.dport:
            pl.rec = 0
            return
        p.live[k] = 1
        p.lives[p.nlive] = k
        p.nlive += 1
    else:
        if o.label != v.label:
            pl.rec = 0
            return
        if ((o.src != v.src and not take_change(p, 0, k)) or (o.dst != v.dst and not take_change(p, 1, k))
                or (o.sport != v.sport and not take_change(p, 2, k))
                or (o.dport != v.dport and not take_change(p, 3, k))):
            pl.rec = 0
            return
        if t.kind == K_LB and o.inbound:
            vip = <uint32_t>t.p[0]
            a, b = key_a(o.dst, vip), key_b(o.proto, o.dport, o.sport)
            if table_find(&t.tab, a, b).b == 0:  # a reply the balancer does not know: until it does
                if p.dep != NO_STEP or t.ver == NULL:
                    pl.rec = 0
                    return
                p.dep = k
                pl.rdep_ver = t.ver[ver_bucket(a, b)]
    p.nsteps = k + 1

cdef int intern_path(pl_t *pl, path_t *p) noexcept nogil:
    """The id of path p (added if new); -1 when MAX_PATHS paths are known."""
    cdef const uint8_t *x = <const uint8_t *>p
    cdef uint64_t h = 0, w
    cdef size_t i
    cdef int id = pl.last_path
    if id >= 0 and memcmp(&pl.paths[id], p, sizeof(path_t)) == 0:
        return id
    for i in range(sizeof(path_t) // 8):  # 8 bytes at a time (record_start zeroed the padding)
        memcpy(&w, x + 8 * i, 8)
        h = mum(h ^ w ^ K0, K1)
    w = 0
    memcpy(&w, x + sizeof(path_t) // 8 * 8, sizeof(path_t) % 8)
    h = mum(h ^ w ^ K0, K1)
    i = <size_t>(h ^ (h >> 29)) & (PATH_INDEX - 1)
    while pl.path_index[i]:
        id = pl.path_index[i] - 1
        if memcmp(&pl.paths[id], p, sizeof(path_t)) == 0:
            pl.last_path = id
            return id
        i = (i + 1) & (PATH_INDEX - 1)
    if pl.npaths == MAX_PATHS:
        return -1
    id = pl.npaths
    pl.paths[id] = p[0]
    pl.path_index[i] = <int16_t>(id + 1)
    pl.npaths += 1
    pl.last_path = id
    return id

cdef inline uint64_t cache_b(view_t *v) noexcept nogil:
    return key_b(v.proto, v.sport, v.dport) | (<uint64_t>v.inbound << 40)

cdef void finish_plan(pl_t *pl, int egress, int inst, view_t *v) noexcept nogil:
    """The recorded input is released on egress by inst as v: its plan goes into the cache."""
    cdef path_t *p = &pl.rp
    cdef int id
    cdef slot_t *s
    cdef uint64_t a = key_a(pl.rin.src, pl.rin.dst), b = cache_b(&pl.rin)
    pl.rec = 0
    p.egress, p.last = egress, inst
    p.express = p.nlive == 0 or (p.nlive == 1 and pl.insts[p.inst[p.lives[0]]].kind == K_FW)
    id = intern_path(pl, p)
    if id < 0:
        return
    s = table_find(&pl.cache, a, b)
    if s.b == 0:
        if pl.cache.used * 2 + 2 > pl.cache.mask + 1 and pl.cache.mask + 1 >= pl.cache_max:
            cache_clear(pl)
            s = table_find(&pl.cache, a, b)
        table_claim(&pl.cache, s, a, b)
    s.v0, s.v1 = v.src, v.dst
    s.v2 = (<uint32_t>v.sport << 16) | v.dport
    s.v3 = <uint32_t>id | (<uint32_t>pl.rdep_ver << 16)
    if pl.cache.used * 2 > pl.cache.mask + 1:
        pl.cache_gen += 1  # table_fit moves every slot
    if not table_fit(&pl.cache):  # no memory for a bigger cache: an emptied one will do
        cache_clear(pl)

cdef inline int stable_step(inst_t *t, view_t *v) noexcept nogil:
    """The gate a stable instance's handler emits v on, v rewritten as it would be, when that
    changes no state; -1 when it would (a new NAT or balancer flow), would drop v (a reply the
    NAT does not know) or the instance is not a stable one. Read-only: the handler's own result."""
    cdef int k = t.kind
    cdef slot_t *s
    cdef pent_t *e
    cdef uint32_t vip = <uint32_t>t.p[0]
    if k == K_NAT:
        if v.inbound:
            e = &t.by_port[v.dport]
            if (e.b == 0 or <uint32_t>e.a != v.src or <int>(e.b & 0xFFFF) != v.sport
                    or <int>((e.b >> 32) & 0xFF) != v.proto):
                return -1
            v.dst = <uint32_t>(e.a >> 32)
            v.dport = (e.b >> 16) & 0xFFFF
            return t.gate_lan
        s = table_find(&t.tab, key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport))
        if s.b == 0:
            return -1
        v.src, v.sport = <uint32_t>t.p[0], s.v0
        return t.gate_wan
    if k == K_LB:
        if v.inbound:
            s = table_find(&t.tab, key_a(v.dst, vip), key_b(v.proto, v.dport, v.sport))
            if s.b != 0 and s.v0 == v.src:
                v.src = vip
            return t.gate_lan
        if v.dst != vip:
            return t.gate_wan
        s = table_find(&t.tab, key_a(v.src, v.dst), key_b(v.proto, v.sport, v.dport))
        if s.b == 0:
            return -1
        v.dst = s.v0
        return t.gate_wan
    if k == K_LBH:
        if v.inbound:
            if t.p[1] + model_flow_hash(v.proto, v.dst, v.dport, vip, v.sport, <uint32_t>t.p[2]) == v.src:
                v.src = vip
            return t.gate_lan
        if v.dst == vip:
            v.dst = <uint32_t>(t.p[1] + model_flow_hash(v.proto, v.src, v.sport, v.dst, v.dport, <uint32_t>t.p[2]))
        return t.gate_wan
    return -1

cdef void queue_reply(pl_t *pl, view_t *out) noexcept nogil:
    """A flow opened from the inside has just left as `out`: its reply (the swapped addresses and
    ports, from the outside) is queued for plan_reply a few inputs on, its cache slot prefetched
    now (a full queue: no plan ahead)."""
    cdef view_t *v
    cdef int k
    if pl.nreplies == REPLY_QUEUE or pl.ingress[1] < 0:
        return
    k = (pl.reply_head + pl.nreplies) % REPLY_QUEUE
    v = &pl.replies_due[k]
    memset(v, 0, sizeof(view_t))
    v.proto, v.src, v.dst, v.sport, v.dport, v.inbound = out.proto, out.dst, out.src, out.dport, out.sport, 1
    pl.reply_at[k] = pl.cur + REPLY_DELAY
    pl.nreplies += 1
    table_prefetch(&pl.cache, key_a(v.src, v.dst), cache_b(v))

cdef void plan_reply(pl_t *pl) noexcept nogil:
    """The queue's first reply: its plan goes into the cache, as the reply's own cache miss would
    record it, unless the cache has one: the walk a miss would take, each stable step's result
    read from its tables (stable_step), each live step a firewall that will pass it (its handler
    runs when the reply comes, as on any hit). Nothing is recorded when a step would change state
    or drop, or a live step is another NF. (The plan rests on the tables as they are now: stable
    results never change, the one that can is versioned, as for any plan.)"""
    cdef view_t v = pl.replies_due[pl.reply_head], o
    cdef inst_t *t
    cdef int inst = pl.ingress[1], depth = 1, g, target
    cdef int gates[1]
    pl.reply_head = (pl.reply_head + 1) % REPLY_QUEUE
    pl.nreplies -= 1
    if table_find(&pl.cache, key_a(v.src, v.dst), cache_b(&v)).b != 0:
        return
    record_start(pl, &v)
    while depth <= pl.limit:
        t = &pl.insts[inst]
        o = v
        if t.kind == K_FW:
            g = opposite(t, &v)
        else:
            g = stable_step(t, &v)
            if g < 0:
                break
        gates[0] = g
        record_step(pl, inst, t, &o, &v, 1, 0, gates, 0)
        if not pl.rec:
            return
        target = t.hop_target[g]
        if target < 0:
            finish_plan(pl, t.hop_egress[g], inst, &v)
            pl.replies += 1
            return
        v.inbound = t.hop_inbound[g]
        inst = target
        depth += 1
    pl.rec = 0

cdef inline void plan_view(path_t *p, int k, slot_t *e, view_t *w) noexcept nogil:
    """w (the input's view) becomes the view arriving at step k."""
    if p.chg[0] < k:
        w.src = e.v0
    if p.chg[1] < k:
        w.dst = e.v1
    if p.chg[2] < k:
        w.sport = e.v2 >> 16
    if p.chg[3] < k:
        w.dport = e.v2 & 0xFFFF
    w.inbound = p.inbound[k]

cdef inline bint plan_valid(pl_t *pl, slot_t *e, view_t *v) noexcept nogil:
    """The plan's one assumption of an absent key still holds."""
    cdef path_t *p = &pl.paths[e.v3 & 0xFFFF]
    cdef view_t w
    cdef inst_t *t
    if p.dep == NO_STEP:
        return 1
    w = v[0]
    plan_view(p, p.dep, e, &w)
    t = &pl.insts[p.inst[p.dep]]
    return t.ver[ver_bucket(key_a(w.dst, <uint32_t>t.p[0]), key_b(w.proto, w.dport, w.sport))] == (e.v3 >> 16)

cdef inline void firewall_key(view_t *w, uint64_t *a, uint64_t *b) noexcept nogil:
    """The firewall's key for the view w: the connection as its inside end opened it."""
    if w.inbound:
        a[0], b[0] = key_a(w.dst, w.src), key_b(w.proto, w.dport, w.sport)
    else:
        a[0], b[0] = key_a(w.src, w.dst), key_b(w.proto, w.sport, w.dport)

cdef void plan_prefetch(pl_t *pl, slot_t *e, view_t *v, prepared_t *r) noexcept nogil:
    """Touches what running the plan will read: the live steps' slots, the dependency's version.
    r keeps the slot's values, the dependency's version counter and, for an express plan with a
    firewall step, the firewall's key and its hash: while the slot holds the same key and values
    (ready_hit), they are what plan_valid and run_express would compute again."""
    cdef path_t *p = &pl.paths[e.v3 & 0xFFFF]
    cdef view_t w
    cdef inst_t *t
    cdef int j, k
    r.ev0, r.ev1 = (<uint64_t *>&e.v0)[0], (<uint64_t *>&e.v0)[1]
    r.vp = NULL
    if p.express and p.nlive == 1:
        k = p.lives[0]
        w = v[0]
        plan_view(p, k, e, &w)
        firewall_key(&w, &r.fa, &r.fb)
        r.fh = key_hash(r.fa, r.fb)
        t = &pl.insts[p.inst[k]]
        table_prefetch_h(&t.tab, r.fh)
    else:
        r.fb = 0
        for j in range(p.nlive):
            k = p.lives[j]
            w = v[0]
            plan_view(p, k, e, &w)
            prefetch_first(&pl.insts[p.inst[k]], &w)
    if p.dep != NO_STEP:
        w = v[0]
        plan_view(p, p.dep, e, &w)
        t = &pl.insts[p.inst[p.dep]]
        r.vp = &t.ver[ver_bucket(key_a(w.dst, <uint32_t>t.p[0]), key_b(w.proto, w.dport, w.sport))]
        prefetch(r.vp)

cdef inline uint64_t field_change(uint32_t old, uint32_t new, uint32_t changed) noexcept nogil:
    """sum32's terms when the 32-bit field changed, else 0 (no branch)."""
    return ((<uint64_t>(~old >> 16 & 0xFFFF) + (new >> 16) + (~old & 0xFFFF) + (new & 0xFFFF))
            & (<uint64_t>0 - changed))

cdef inline void express_write(uint8_t *d, layout_t *L, view_t *o, slot_t *e) noexcept nogil:
    """write_back of a plain TCP or UDP frame (view o) to the plan's final fields, with the same
    bytes: each field's RFC 1624 terms count when it changed (a mask, not a branch), and with none
    csum_apply gives the checksum back unchanged, as write_back leaves it."""
    cdef uint32_t sport = e.v2 >> 16, dport = e.v2 & 0xFFFF
    cdef uint64_t ip = field_change(o.src, e.v0, o.src != e.v0) + field_change(o.dst, e.v1, o.dst != e.v1)
    cdef uint64_t tl = ip + (((~(<uint32_t>o.sport) & 0xFFFF) + sport) & (<uint64_t>0 - (o.sport != sport))) \
        + (((~(<uint32_t>o.dport) & 0xFFFF) + dport) & (<uint64_t>0 - (o.dport != dport)))
    cdef Py_ssize_t l3 = L.l3, l4 = L.l4
    put32(d, l3 + 12, e.v0)
    put32(d, l3 + 16, e.v1)
    put16(d, l4, sport)
    put16(d, l4 + 2, dport)
    put16(d, l3 + 10, csum_apply(get16(d, l3 + 10), ip))
    if L.kind == L_TCP:
        write_l4_checksum(d, l4 + 16, tl, 0)
    else:
        write_l4_checksum(d, l4 + 6, tl, 1)

cdef inline bint ready_hit(prepared_t *r, slot_t *e) noexcept nogil:
    """The look-ahead found the input's plan in slot e, and e holds the same key and values now
    (r.gen is checked by the caller): what plan_prefetch kept in r holds."""
    return (e.b == r.cb and e.a == r.ca and (<uint64_t *>&e.v0)[0] == r.ev0
            and (<uint64_t *>&e.v0)[1] == r.ev1)

cdef inline bint run_express(pl_t *pl, prepared_t *r, slot_t *e, bint ready) noexcept nogil:
    """run_plan for an express plan whose firewall step (if any) finds the packet's connection
    (not timed out) and passes the packet (fw_tcp_known: the handshake's next step, data, FIN,
    RST; any UDP packet): the firewall's changes are to that entry only. 0, with nothing changed,
    when that is not so (a new connection, a drop: then run_plan). ready: r's firewall key and
    hash are the plan's (ready_hit)."""
    cdef path_t *p = &pl.paths[e.v3 & 0xFFFF]
    cdef view_t w
    cdef inst_t *t
    cdef slot_t *s
    cdef uint64_t a, b, h
    cdef int64_t now
    if p.nlive:
        if ready and r.fb != 0:
            a, b, h = r.fa, r.fb, r.fh
        else:
            w = r.v
            plan_view(p, p.lives[0], e, &w)
            firewall_key(&w, &a, &b)
            h = key_hash(a, b)
        t = &pl.insts[p.inst[p.lives[0]]]
        s = table_find_h(&t.tab, a, b, h)
        if s.b == 0:
            return 0
        now = now_of(pl, t)
        if r.v.proto == 6:  # (the plan changes addresses and ports only)
            if now - <int64_t>s.v0 > t.p[0] or fw_tcp_known(&t.tab, s, r.v.flags, p.inbound[p.lives[0]], now) >= 0:
                return 0  # (timed out, or dropped: nothing changed)
        elif now - <int64_t>s.v0 > t.p[1]:
            return 0
        else:
            s.v0 = <uint32_t>now
    express_write(pl.data + pl.off[pl.cur], pl.lay, &r.v, e)
    release_input(pl, p.egress, p.last, 0)
    pl.express += 1
    return 1

cdef int run_plan(pl_t *pl, slot_t *e, view_t *vin) noexcept nogil:
    """The current input (view vin, its frame untouched) through its plan: the live steps' handlers
    run on the views the stable steps give them; the frame gets the stable steps' rewrites at once.
    A live step that does not emit its packet on the recorded gate (a drop, a monitor's alert)
    hands over to the ordinary walk, the frame then rewritten as far as walk would have it."""
    cdef path_t *p = &pl.paths[e.v3 & 0xFFFF]
    cdef view_t v = vin[0], w, o
    cdef int j, k, n, inst
    cdef int gates[MAX_OUT]
    cdef int32_t label = 0
    cdef frame_t f
    f.off, f.copy = 0, 0
    for j in range(p.nlive):
        k = p.lives[j]
        w = v                 # (each built from v: a copy of a struct just written field by field
        o = v                 # would stall store forwarding)
        plan_view(p, k, e, &w)
        plan_view(p, k, e, &o)
        w.label = o.label = label
        inst = p.inst[k]
        n = handle(pl, &pl.insts[inst], &w, gates)
        if n != 1 or gates[0] != p.gate[k]:
            write_back(frame_bytes(pl, &f), pl.lay, &v, &o)
            return resume(pl, inst, f, o, w, n, gates, k + 1)
        label = w.label
    w = v
    w.src, w.dst, w.sport, w.dport = e.v0, e.v1, e.v2 >> 16, e.v2 & 0xFFFF
    write_back(pl.data + pl.off[pl.cur], pl.lay, &v, &w)
    return release_input(pl, p.egress, p.last, label)

cdef int resume(pl_t *pl, int inst, frame_t f, view_t o, view_t v, int n, int *gates, int depth) noexcept nogil:
    """What walk does once instance inst's handler has turned o into v with n outputs on gates
    (the frame showing o), at depth `depth`."""
    cdef inst_t *t = &pl.insts[inst]
    cdef int k, bad
    cdef frame_t fk
    cdef bint changed
    if n == 0:
        return 0
    changed = (n & REWRITTEN) != 0
    n &= 0xFF
    bad = cannot_write(pl.lay, &o, &v) if changed else 0
    for k in range(n - 1):
        if bad:
            record_drop(pl, t.r_cannot[bad - 1])
            continue
        if copy_frame(pl, &f, &fk) < 0:
            return -1
        if changed:
            write_back(frame_bytes(pl, &fk), pl.lay, &o, &v)
        if send(pl, inst, gates[k], fk, v, depth) < 0:
            return -1
    if bad:
        record_drop(pl, t.r_cannot[bad - 1])
        return 0
    if changed:
        write_back(frame_bytes(pl, &f), pl.lay, &o, &v)
    return send(pl, inst, gates[n - 1], f, v, depth)


# ---- routing (models/chain.py Chain.route: run to completion, depth first) ------------------------

cdef int walk(pl_t *pl, int inst, frame_t f, view_t v, bint in_model, int depth) noexcept nogil:
    """The packet v (None when not in_model) on frame f arrives at instance `inst`: each instance
    handles it, what it emits travels on, depth first in emission order; all but the last of
    several outputs on copies of the frame taken before it is rewritten."""
    cdef inst_t *t
    cdef view_t o
    cdef int gates[MAX_OUT]
    cdef int n, k, g, bad, target
    cdef frame_t fk
    cdef bint changed
    while True:
        if depth > pl.limit:
            pl.error = 1
            return -1
        t = &pl.insts[inst]
        if not in_model:  # passes unchanged, away from the side it came from
            g = t.away_in if v.inbound else t.away_out
            if g < 0:
                record_drop(pl, t.r_outside)
                return 0
        elif t.kind == K_COMPILED:
            return step_compiled(pl, inst, t, f, v, depth)
        else:
            o = v
            n = handle(pl, t, &v, gates)
            if n == 0:
                return 0
            changed = (n & REWRITTEN) != 0
            n &= 0xFF
            bad = cannot_write(pl.lay, &o, &v) if changed else 0
            if pl.rec:
                record_step(pl, inst, t, &o, &v, n, changed, gates, bad)
            for k in range(n - 1):
                if bad:
                    record_drop(pl, t.r_cannot[bad - 1])
                    continue
                if copy_frame(pl, &f, &fk) < 0:
                    return -1
                if changed:
                    write_back(frame_bytes(pl, &fk), pl.lay, &o, &v)
                if send(pl, inst, gates[k], fk, v, depth) < 0:
                    return -1
            if bad:
                record_drop(pl, t.r_cannot[bad - 1])
                return 0
            if changed:
                write_back(frame_bytes(pl, &f), pl.lay, &o, &v)
            g = gates[n - 1]
        target = t.hop_target[g]
        if target < 0:
            if pl.rec:
                finish_plan(pl, t.hop_egress[g], inst, &v)
                if not pl.rin.inbound:  # (finish_plan leaves pl.rin as it is)
                    queue_reply(pl, &v)
            return release(pl, t.hop_egress[g], inst, v.label, &f)
        v.inbound = t.hop_inbound[g]
        inst = target
        depth += 1

cdef int step_compiled(pl_t *pl, int inst, inst_t *t, frame_t f, view_t v, int depth) noexcept nogil:
    """A compiled model's step on v (models/compile.py), then what walk does with each output: its
    own view (a step may emit different packets), written onto a copy of the frame taken before
    the frame itself is rewritten for the last one."""
    cdef cview_t cin
    cdef cview_t outs[MAX_COUT]
    cdef int gates[MAX_COUT]
    cdef int drops[MAX_COUT]
    cdef int n = 0, nd = 0, k, rc, bad
    cdef view_t w
    cdef frame_t fk
    cin.proto, cin.src, cin.sport, cin.dst, cin.dport = v.proto, v.src, v.sport, v.dst, v.dport
    cin.flags, cin.inbound, cin.length, cin.label = v.flags, v.inbound, v.length, v.label
    rc = t.cstep(t.cstate, &cin, now_of(pl, t), &t.rng, outs, gates, &n, drops, &nd)
    if rc != 0:
        t.cerror, pl.error = rc, 3
        return -1
    for k in range(nd):
        record_drop(pl, t.creason[drops[k]])
    for k in range(n):
        w.proto, w.src, w.sport = <uint8_t>outs[k].proto, <uint32_t>outs[k].src, <uint16_t>outs[k].sport
        w.dst, w.dport, w.flags = <uint32_t>outs[k].dst, <uint16_t>outs[k].dport, <uint8_t>outs[k].flags
        w.length, w.label, w.inbound = <uint16_t>outs[k].length, <int32_t>outs[k].label, outs[k].inbound != 0
        bad = cannot_write(pl.lay, &v, &w)
        if bad:
            record_drop(pl, t.r_cannot[bad - 1])
            continue
        if k < n - 1:
            if copy_frame(pl, &f, &fk) < 0:
                return -1
        else:
            fk = f
        write_back(frame_bytes(pl, &fk), pl.lay, &v, &w)
        if send(pl, inst, gates[k], fk, w, depth) < 0:
            return -1
    return 0

cdef int send(pl_t *pl, int inst, int gate, frame_t f, view_t v, int depth) noexcept nogil:
    """An output of instance `inst` on `gate` (a packet in the model) to its egress or next instance."""
    cdef inst_t *t = &pl.insts[inst]
    if t.hop_target[gate] < 0:
        return release(pl, t.hop_egress[gate], inst, v.label, &f)
    v.inbound = t.hop_inbound[gate]
    return walk(pl, t.hop_target[gate], f, v, 1, depth + 1)


cdef bint from_outside(pl_t *pl, pkt_t *p) noexcept nogil:
    """Side 2 (contract section 3): from the outside iff the IP source is in no inside network."""
    cdef uint32_t a
    cdef uint64_t hi, lo
    cdef int k
    if p.ip.version == 4:
        a = u32(p.d, p.ip.l3 + 12)
        for k in range(pl.n4):
            if a & pl.mask4[k] == pl.net4[k]:
                return 0
        return 1
    if p.ip.version == 6:
        hi = (<uint64_t>u32(p.d, p.ip.l3 + 8) << 32) | u32(p.d, p.ip.l3 + 12)
        lo = (<uint64_t>u32(p.d, p.ip.l3 + 16) << 32) | u32(p.d, p.ip.l3 + 20)
        for k in range(pl.n6):
            if hi & pl.mask6[2 * k] == pl.net6[2 * k] and lo & pl.mask6[2 * k + 1] == pl.net6[2 * k + 1]:
                return 0
        return 1
    return 0


cdef inline bint quick_view(const uint8_t *d, Py_ssize_t caplen, Py_ssize_t wirelen, layout_t *L,
                            view_t *v) noexcept nogil:
    """The common frame, Ethernet / IPv4 without options / TCP or UDP, well-formed and not a
    fragment, turned into its view as parse() and make_view() would (1); 0: any other frame (then
    nothing is written and parse() decides). Checks exactly what parse() checks for such a frame."""
    cdef Py_ssize_t end = wirelen if wirelen > caplen else caplen, pend, total
    cdef int proto
    if caplen < 34 or ld16(d + 12) != 0x0800 or d[14] != 0x45 or ld16(d + 20) & 0x1FFF:
        return 0
    total = ld16(d + 16)
    if total == 0:
        total = end - 14
    pend = 14 + total
    if total < 20 or pend > end:
        return 0
    proto = d[23]
    if proto == 6:
        if 54 > pend or 54 > caplen or d[46] >> 4 < 5:
            return 0
        L.kind = L_TCP
        v.flags = d[47]
    elif proto == 17:
        if 42 > pend or 42 > caplen or ld16(d + 38) < 8 or (not (d[20] & 0x20) and 34 + ld16(d + 38) > pend):
            return 0
        L.kind = L_UDP
        v.flags = 0
    else:
        return 0
    L.l3, L.l4, L.ql3, L.ql4, L.qproto, L.avail = 14, 34, -1, -1, -1, 0
    v.proto = proto
    v.src = ld32(d + 26)
    v.dst = ld32(d + 30)
    v.sport = ld16(d + 34)
    v.dport = ld16(d + 36)
    return 1

cdef bint outside4(pl_t *pl, uint32_t a) noexcept nogil:
    """from_outside for an IPv4 source address."""
    cdef int k
    for k in range(pl.n4):
        if a & pl.mask4[k] == pl.net4[k]:
            return 0
    return 1

cdef void prepare(pl_t *pl, Py_ssize_t i, prepared_t *r) noexcept nogil:
    cdef pkt_t pkt
    cdef pkt_t *p = &pkt
    cdef view_t *v = &r.v     # written field by field and not read whole until the input's turn:
    cdef int s                # a whole-struct load right after narrow stores stalls store forwarding
    r.status, r.next, r.cached, r.fresh, r.fb = 1, -1, 0, 1, 0
    if pl.linktype == 1 and quick_view(pl.data + pl.off[i], pl.caplen[i], pl.wirelen[i], &r.lay, v):
        r.status = 0
        v.length = pl.wirelen[i] if pl.wirelen[i] < 0xFFFF else 0xFFFF
        v.label = 0
        s = pl.side[i]
        v.inbound = s == 1 or (s != 0 and outside4(pl, v.src))
        entry_ready(pl, r, v)
        return
    parse(p, pl.linktype, pl.data + pl.off[i], pl.caplen[i], pl.wirelen[i])
    if p.ip.version == 4:
        if p.malformed != OK:
            r.status, r.reason = 2, pl.r_malformed[p.malformed]
            return
        if p.ip.frag_offset > 0:
            r.status, r.reason = 2, pl.r_fragment
            return
        make_view(p, &r.lay, v)
        r.status = 0
        v.length = pl.wirelen[i] if pl.wirelen[i] < 0xFFFF else 0xFFFF
    v.label = 0
    s = pl.side[i]
    v.inbound = s == 1 or (s != 0 and from_outside(pl, p))
    entry_ready(pl, r, v)


cdef inline void entry_ready(pl_t *pl, prepared_t *r, view_t *v) noexcept nogil:
    """The prepared input's ingress and first prefetches (its status and view are set)."""
    cdef int entry = pl.ingress[1 if v.inbound else 0]
    if entry < 0:
        r.status, r.reason = 2, pl.r_no_ingress[1 if v.inbound else 0]
    elif r.status == 0:
        r.next = entry
        if pl.use_cache and (r.lay.kind == L_TCP or r.lay.kind == L_UDP):
            r.ca, r.cb = key_a(v.src, v.dst), cache_b(v)
            r.ch = key_hash(r.ca, r.cb)
            table_prefetch_h(&pl.cache, r.ch)
            r.cached = 1
            return  # the first instance is read on a cache miss only: prefetched once that is known
        prefetch_first(&pl.insts[entry], v)


cdef void look_ahead(pl_t *pl, prepared_t *r) noexcept nogil:
    """One step of the predicted path: the slot prefetched one pass ago is read, the next prefetched."""
    cdef inst_t *t
    cdef int g
    cdef slot_t *e
    if r.next < 0:
        return
    if r.cached == 1:  # the first step: the cache slot prefetched at prepare
        r.cached = 2
        e = table_find_h(&pl.cache, r.ca, r.cb, r.ch)
        r.ce, r.gen = e, pl.cache_gen
        if e.b != 0:
            r.cached = 3
            plan_prefetch(pl, e, &r.v, r)
            r.next = -1
            return
        r.ahead, r.fresh = r.v, 0
        prefetch_first(&pl.insts[r.next], &r.ahead)  # not prefetched at prepare
        return
    if r.fresh:  # (r.v was written an input's worth of work ago: a whole copy is safe now)
        r.ahead, r.fresh = r.v, 0
    t = &pl.insts[r.next]
    g = predict(t, &r.ahead)
    if g < 0 or t.hop_target[g] < 0:
        r.next = -1
        return
    r.next = t.hop_target[g]
    r.ahead.inbound = t.hop_inbound[g]
    prefetch_first(&pl.insts[r.next], &r.ahead)


cdef int run_inputs(pl_t *pl, Py_ssize_t start, Py_ssize_t stop, int ahead_by, prepared_t *ring,
                    Py_ssize_t ring_mask) noexcept nogil:
    """Processes inputs [start, stop) in order, as a software pipeline: at step j input j runs
    through the chain, while input j + S*D is parsed (prefetching its first slot) and the predicted
    paths of inputs j + (S-1)*D ... j + D advance one instance each (reading the slot prefetched D
    steps earlier, prefetching the next one); S = number of instances, D = `ahead_by`. So every
    slot is asked for D inputs before it is needed, evenly spread. Hints only: results are those
    of processing the inputs one by one."""
    cdef Py_ssize_t j, k
    cdef Py_ssize_t stages = pl.stages, d = ahead_by
    cdef int st
    cdef prepared_t *r
    cdef frame_t f
    cdef slot_t *e
    cdef bint ready, valid
    for k in range(ring_mask + 1):  # (an input outside [start, stop) is never looked ahead at)
        ring[k].next = -1
    for j in range(start - stages * d, stop):
        k = j + stages * d
        if k < stop:
            prepare(pl, k, &ring[k & ring_mask])
        for st in range(1, stages):
            k = j + (stages - st) * d
            if ring[k & ring_mask].next >= 0:  # (a hit's path ends at the cache)
                look_ahead(pl, &ring[k & ring_mask])
        if j < start:
            continue
        r = &ring[j & ring_mask]
        r.next = -1
        pl.cur, pl.cur_caplen, pl.cur_t = j, pl.caplen[j], pl.t_ns[j]
        if r.status == 2:
            record_drop(pl, r.reason)
            continue
        pl.lay = &r.lay
        pl.scratch_len = 0
        if pl.nreplies and pl.reply_at[pl.reply_head] <= j:
            plan_reply(pl)
        if r.cached:
            e = r.ce
            ready = r.cached == 3 and r.gen == pl.cache_gen and ready_hit(r, e)
            if ready:
                valid = r.vp == NULL or r.vp[0] == (e.v3 >> 16)
            else:
                if r.cached == 1 or r.gen != pl.cache_gen or (e.b != 0 and (e.b != r.cb or e.a != r.ca)):
                    e = table_find_h(&pl.cache, r.ca, r.cb, r.ch)  # (the look-ahead's slot has moved
                valid = e.b != 0 and plan_valid(pl, e, &r.v)      # or holds another key now)
            if valid:
                pl.hits += 1
                if pl.paths[e.v3 & 0xFFFF].express and run_express(pl, r, e, ready):
                    continue
                if run_plan(pl, e, &r.v) < 0 or pl.error:
                    return -1
                continue
            pl.misses += 1
            record_start(pl, &r.v)
        f.off, f.copy = 0, 0
        st = walk(pl, pl.ingress[1 if r.v.inbound else 0], f, r.v, r.status == 0, 1)
        pl.rec = 0
        if st < 0 or pl.error:
            return -1
    for k in range(pl.nreplies):  # due times count from the next call's first input
        pl.reply_at[(pl.reply_head + k) % REPLY_QUEUE] -= stop
    return 0


# ---- the Pipeline -----------------------------------------------------------------------------------

def bundled_kind(instance, nf):
    """The bundled NF whose twin runs `nf` (the class itself, a configured or subclassed one that
    keeps the model's handler and gates: runtime/pure.py twin_of); NotBundled otherwise."""
    for base in NFS.values():
        if isinstance(nf, type) and issubclass(nf, base):
            methods = ("handle", "tcp") if base.name == "firewall" else ("handle",)
            if tuple(nf.gates) == tuple(base.gates) and all(getattr(nf, m) is getattr(base, m) for m in methods):
                return base
            break
    raise NotBundled(instance, getattr(nf, "name", getattr(nf, "__name__", repr(nf))))


def _param(nf, name):
    value = getattr(nf, name)
    return PARAM_MAX if value > PARAM_MAX else value


cdef class Pipeline:
    """The runtime contract's Pipeline (section 6) for chains of bundled NFs."""

    cdef pl_t pl
    cdef prepared_t *ahead
    cdef readonly object chain, egresses, instances, reasons
    cdef object _compiled, _cstates                 # instance -> CompiledModel, CState (models/compile.py)
    cdef readonly int ahead_by
    cdef Py_ssize_t _flows
    cdef Py_ssize_t ring_mask
    cdef dict _reason_id
    cdef object _bound, _bound_out, _bound_drop
    cdef int32_t[::1] _out_in, _out_len, _drop_in, _caplen, _wirelen
    cdef int16_t[::1] _out_egress, _out_inst, _drop_reason
    cdef int64_t[::1] _out_off, _off, _t_ns
    cdef uint16_t[::1] _out_label
    cdef uint8_t[::1] _out_copy, _side
    cdef int linktype

    def __cinit__(self):
        memset(&self.pl, 0, sizeof(pl_t))
        self.ahead = NULL

    def __init__(self, chain, seed: int = 0, linktype: int = 1, inside=None, ahead: int = 4, flow_cache=None,
                 cache_max: int = CACHE_MAX, compiled=None, flows: int = 0):
        """`compiled`: {instance: models.compile.CompiledModel} run from their compiled handlers
        (the generic executor's fast form; runtime/generic.py compiled_pipeline); every other
        member must be a bundled NF. `flows`: the connections the tables are sized for at once,
        their memory faulted in here (a flow and its reply: an entry in each NF's table, two in
        the flow cache), as a DPDK NF sizes its tables at start; 0: they start small and grow."""
        chain.validate()
        members = list(chain.members.values())
        self._compiled, self._cstates = dict(compiled or {}), {}
        kinds = []
        for m in members:
            if m.name in self._compiled:
                if len(m.nf.gates) > MAX_GATES:
                    raise ValueError(f"{m.name}: more than {MAX_GATES} gates")
                kinds.append(K_COMPILED)
            else:
                kinds.append(KINDS[bundled_kind(m.name, m.nf).name])
        if self._compiled:
            flow_cache = False  # plans are for the bundled NFs' known behaviour
        self.chain, self.linktype = chain, linktype
        self.instances = tuple(chain.members)
        self.egresses = tuple(chain.egress_names)
        self.reasons, self._reason_id = [], {}
        if ahead < 1:
            raise ValueError(f"ahead (the look-ahead distance, in inputs) must be at least 1, not {ahead}")
        self.ahead_by = ahead
        if not 0 <= flows <= FLOWS_MAX:
            raise ValueError(f"flows (the connections the tables are sized for) must be from 0 to {FLOWS_MAX}, "
                             f"not {flows}")
        self._flows = flows
        pl = &self.pl
        pl.linktype, pl.ninst, pl.limit = linktype, len(members), 2 * len(members)
        pl.owner = <PyObject *>self
        pl.insts = <inst_t *>calloc(len(members), sizeof(inst_t))
        if flow_cache is None:  # worth it when a stable NF's lookup can be skipped beside another one's
            flow_cache = len(members) >= 2 and any(stable_kind(kind) for kind in kinds)
        pl.use_cache = bool(flow_cache)
        # a cache miss learns that it is one step into the look-ahead, then predicts every instance
        pl.stages = len(members) + 1 if pl.use_cache else len(members)
        ring = 1
        while ring < pl.stages * ahead + 1:
            ring *= 2
        self.ring_mask = ring - 1
        self.ahead = <prepared_t *>malloc(ring * sizeof(prepared_t))
        pl.scratch_cap = pl.stage_cap = 4096
        pl.scratch, pl.stage = <uint8_t *>malloc(4096), <uint8_t *>malloc(4096)
        if pl.insts == NULL or self.ahead == NULL or pl.scratch == NULL or pl.stage == NULL:
            raise MemoryError()
        for k, kind in enumerate(MALFORMED_KINDS):
            pl.r_malformed[k] = self._reason(f"malformed: {kind}") if kind else -1
        pl.r_fragment = self._reason("ipv4 fragment")
        for k, side in enumerate(("inside", "outside")):
            pl.r_no_ingress[k] = self._reason(f"the chain has no {side} ingress")
            pl.ingress[k] = self.instances.index(chain.ingresses[side]) if side in chain.ingresses else -1
        self._inside(DEFAULT_INSIDE if inside is None else inside)
        hops = chain._routes()
        seed = int(seed)
        pl.last_path = -1
        if cache_max < 16 or cache_max & (cache_max - 1):
            raise ValueError(f"cache_max must be a power of two of at least 16, not {cache_max}")
        pl.cache_max = cache_max
        if pl.use_cache:
            pl.paths = <path_t *>calloc(MAX_PATHS, sizeof(path_t))
            pl.path_index = <int16_t *>calloc(PATH_INDEX, sizeof(int16_t))
            if pl.paths == NULL or pl.path_index == NULL or \
                    not table_init(&pl.cache, min(table_slots(2 * flows), cache_max), flows > 0):
                raise MemoryError()
        for k, (m, kind) in enumerate(zip(members, kinds)):
            self._configure(k, m, kind, hops, seed)

    def _reason(self, text):
        rid = self._reason_id.get(text)
        if rid is None:
            if len(self.reasons) >= 0x7FFF:
                raise OverflowError("more than 32767 drop reasons")
            rid = self._reason_id[text] = len(self.reasons)
            self.reasons.append(text)
        return rid

    def _inside(self, inside):
        pl = &self.pl
        for net in inside:
            n = ipaddress.ip_network(net) if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else net
            if n.version == 4:
                if pl.n4 == 64:
                    raise ValueError("at most 64 inside IPv4 networks")
                pl.net4[pl.n4], pl.mask4[pl.n4] = int(n.network_address), int(n.netmask)
                pl.n4 += 1
            else:
                if pl.n6 == 64:
                    raise ValueError("at most 64 inside IPv6 networks")
                a, m = int(n.network_address), int(n.netmask)
                pl.net6[2 * pl.n6], pl.net6[2 * pl.n6 + 1] = a >> 64, a & ((1 << 64) - 1)
                pl.mask6[2 * pl.n6], pl.mask6[2 * pl.n6 + 1] = m >> 64, m & ((1 << 64) - 1)
                pl.n6 += 1

    def _configure(self, int k, m, int kind, hops, seed):
        cdef inst_t *t = &self.pl.insts[k]
        nf, name = m.nf, m.name
        t.kind = kind
        t.tps = nf.ticks_per_second
        t.rng = (seed * 0x9E3779B97F4A7C15 + (k + 1) * INSTANCE_STEP) & ((1 << 64) - 1)
        gates = tuple(nf.gates)
        if kind == K_COMPILED:
            t.gate_wan = t.gate_lan = t.gate_alert = -1
        else:
            t.gate_wan, t.gate_lan = gates.index("wan"), gates.index("lan")
            t.gate_alert = gates.index("alert") if "alert" in gates else -1
        t.away_out = gates.index(m.outside[0]) if m.outside else -1
        t.away_in = gates.index(m.inside[0]) if m.inside else -1
        egress_id = {e: j for j, e in enumerate(self.egresses)}
        for g, gate in enumerate(gates):
            hop = hops[(name, gate)]
            if hop.egress is not None:
                t.hop_target[g], t.hop_egress[g], t.hop_inbound[g] = -1, egress_id[hop.egress], 0
            else:
                t.hop_target[g], t.hop_egress[g] = self.instances.index(hop.target), -1
                t.hop_inbound[g] = bool(hop.inbound)
        for j, reason in enumerate(MODEL_REASONS.get(nf.name, ())):
            t.reason[j] = self._reason(f"{name}: {reason}")
        t.r_outside = self._reason(f"{name}: outside the model")
        for j, field in enumerate(FIELDS):
            t.r_cannot[j] = self._reason(f"{name}: cannot write {field} into the frame")
        if kind == K_COMPILED:
            model = self._compiled[name]
            cstate = self._cstates[name] = model.new_state()
            t.cstate = <void *><size_t>cstate.address
            t.cstep = <cstep_t><size_t>model.step_address
            t.creason = <int *>malloc(max(1, len(model.reasons)) * sizeof(int))
            if t.creason == NULL:
                raise MemoryError()
            for j, reason in enumerate(model.reasons):
                t.creason[j] = self._reason(f"{name}: {reason}")
            return
        if kind == K_NAT:
            t.p[0], t.p[1], t.p[2] = nf.external, nf.base, nf.ports
            t.by_port = <pent_t *>zeroed(65536 * sizeof(pent_t), self._flows > 0)
            if t.by_port == NULL:
                raise MemoryError()
        elif kind == K_FW:
            t.p[0], t.p[1] = _param(nf, "timeout"), _param(nf, "udp_timeout")
        elif kind == K_LB or kind == K_LBH:
            t.p[0], t.p[1], t.p[2] = nf.vip, nf.first, nf.backends
        elif kind == K_RL:
            t.p[0], t.p[1] = nf.capacity, nf.rate
        elif kind == K_MON:
            t.p[0], t.p[1] = _param(nf, "threshold"), _param(nf, "byte_threshold")
        elif kind == K_EDGE:
            t.p[0] = _param(nf, "window")
        elif kind == K_CORE:
            t.p[0], t.p[1] = nf.fair, nf.levels
        if kind != K_LBH and kind != K_CORE:
            if not table_init(&t.tab, table_slots(self._flows), self._flows > 0):
                raise MemoryError()
        if kind == K_LB and self.pl.use_cache:
            t.ver = <uint16_t *>zeroed(65536 * sizeof(uint16_t))
            if t.ver == NULL:
                raise MemoryError()

    def __dealloc__(self):
        cdef int k
        if self.pl.insts != NULL:
            for k in range(self.pl.ninst):
                if self.pl.insts[k].tab.s != NULL:
                    release_zeroed(self.pl.insts[k].tab.s, (self.pl.insts[k].tab.mask + 1) * sizeof(slot_t))
                release_zeroed(self.pl.insts[k].by_port, 65536 * sizeof(pent_t))
                release_zeroed(self.pl.insts[k].ver, 65536 * sizeof(uint16_t))
                free(self.pl.insts[k].creason)
            free(self.pl.insts)
        if self.pl.cache.s != NULL:
            release_zeroed(self.pl.cache.s, (self.pl.cache.mask + 1) * sizeof(slot_t))
        free(self.pl.paths)
        free(self.pl.path_index)
        free(self.ahead)
        free(self.pl.scratch)
        free(self.pl.stage)

    # -- binding a batch ----------------------------------------------------------------------------
    def _bind_outputs(self, batch):
        pl = &self.pl
        self._out_in, self._out_egress, self._out_inst = batch.out_in, batch.out_egress, batch.out_inst
        self._out_off, self._out_len, self._out_label = batch.out_off, batch.out_len, batch.out_label
        self._out_copy = batch.out_copy
        n = len(self._out_in)
        for arr in (batch.out_egress, batch.out_inst, batch.out_off, batch.out_len, batch.out_label, batch.out_copy):
            if len(arr) != n:
                raise ValueError("the batch's output arrays differ in length")
        pl.out_in, pl.out_egress, pl.out_inst = &self._out_in[0], &self._out_egress[0], &self._out_inst[0]
        pl.out_off, pl.out_len, pl.out_label = &self._out_off[0], &self._out_len[0], &self._out_label[0]
        pl.out_copy, pl.out_cap = &self._out_copy[0], n
        self._bound_out = batch.out_in

    def _bind_drops(self, batch):
        pl = &self.pl
        self._drop_in, self._drop_reason = batch.drop_in, batch.drop_reason
        if len(batch.drop_reason) != len(batch.drop_in):
            raise ValueError("the batch's drop arrays differ in length")
        pl.drop_in, pl.drop_reason, pl.drop_cap = &self._drop_in[0], &self._drop_reason[0], len(self._drop_in)
        self._bound_drop = batch.drop_in

    def _bind(self, batch):
        pl = &self.pl
        self._off, self._caplen, self._wirelen = batch.off, batch.caplen, batch.wirelen
        self._t_ns, self._side = batch.t_ns, batch.side
        pl.off, pl.caplen, pl.wirelen = &self._off[0], &self._caplen[0], &self._wirelen[0]
        pl.t_ns, pl.side = &self._t_ns[0], &self._side[0]
        self._bind_outputs(batch)
        self._bind_drops(batch)
        self._bound = batch

    def _grow(self, batch, int drops):
        """Doubles the batch's output (drops=0) or drop arrays, keeping what is in them (GIL held)."""
        pl = &self.pl
        if drops:
            batch.n_drop = pl.n_drop
            k = len(batch.drop_in)
            batch.drop_in = np.resize(batch.drop_in, 2 * k)
            batch.drop_reason = np.resize(batch.drop_reason, 2 * k)
            self._bind_drops(batch)
        else:
            batch.n_out = pl.n_out
            batch._grow_outputs()
            self._bind_outputs(batch)

    def process(self, batch):
        """Fills the batch's outputs and drops for its inputs (runtime contract, section 6)."""
        cdef pl_t *pl = &self.pl
        cdef Py_ssize_t n = batch.n, k
        cdef int rc
        cdef object data = batch.data
        cdef Py_ssize_t size
        if type(data) is not bytearray:
            raise TypeError(f"batch.data must be a bytearray, not {type(data).__name__}")
        if batch is not self._bound or batch.out_in is not self._bound_out or batch.drop_in is not self._bound_drop:
            self._bind(batch)
        if n > len(self._off):
            raise ValueError(f"batch.n = {n} exceeds its capacity {len(self._off)}")
        size = PyByteArray_GET_SIZE(data)
        for k in range(n):
            if pl.off[k] < 0 or pl.caplen[k] < 0 or pl.off[k] + pl.caplen[k] > size:
                raise ValueError(f"batch input {k}: frame at {pl.off[k]}+{pl.caplen[k]} lies outside batch.data "
                                 f"({size} bytes)")
        pl.data = <uint8_t *>PyByteArray_AS_STRING(data)
        pl.batch = <PyObject *>batch
        pl.n_out, pl.n_drop = batch.n_out, batch.n_drop
        pl.extra_base, pl.stage_len, pl.error = len(batch.extra), 0, 0
        with nogil:
            rc = run_inputs(pl, 0, n, self.ahead_by, self.ahead, self.ring_mask)
        batch.n_out, batch.n_drop = pl.n_out, pl.n_drop
        if pl.stage_len:
            batch.extra += PyBytes_FromStringAndSize(<const char *>pl.stage, pl.stage_len)
        pl.batch = NULL
        if pl.error == 1:
            raise ChainError(f"chain {self.chain.name!r}: a packet crossed more than {pl.limit} instances "
                             f"(a routing loop through NFs that turn packets around?)")
        if pl.error == 2:
            raise MemoryError("runtime flow tables: out of memory")
        if pl.error == 3:
            for k in range(pl.ninst):
                if pl.insts[k].cerror:
                    code, pl.insts[k].cerror = pl.insts[k].cerror, 0
                    raise self._compiled[self.instances[k]].error(code)

    # -- state export -----------------------------------------------------------------------------
    def state(self, instance):
        """The instance's state as its model declares it: {declaration: dict | set | int}."""
        if instance not in self.instances:
            raise KeyError(f"no instance {instance!r}; instances: {', '.join(self.instances)}")
        if instance in self._cstates:
            return self._cstates[instance].plain()
        k = self.instances.index(instance)
        cdef inst_t *t = &self.pl.insts[k]
        decls = list(self.chain.members[instance].nf.declarations())
        out = {d: (set() if d == "alerted" else {}) for d in decls}
        cdef size_t i
        cdef slot_t *s
        if t.kind == K_NAT:
            for i in range(65536):
                if t.by_port[i].b:
                    out["by_port"][i] = _flow(t.by_port[i].a, t.by_port[i].b)
        if t.kind == K_LBH or t.kind == K_CORE:
            return out
        for i in range(t.tab.mask + 1):
            s = &t.tab.s[i]
            if s.b == 0:
                continue
            if t.kind == K_RL:
                out["credit"][s.a] = s.v0
                out["refilled"][s.a] = s.v1
                continue
            key = _flow(s.a, s.b)
            if t.kind == K_NAT:
                out["by_flow"][key] = s.v0
            elif t.kind == K_FW:
                if key.proto == 6:
                    out["stage"][key] = s.v3
                    out["seen"][key] = s.v0
                else:
                    out["udp_seen"][key] = s.v0
            elif t.kind == K_LB:
                out["backend_of"][key] = s.v0
            elif t.kind == K_MON:
                out["packets"][key] = s.v0
                out["octets"][key] = s.v1
                if s.v3:
                    out["alerted"].add(key)
            elif t.kind == K_EDGE:
                out["opened"][key] = s.v0
                out["count"][key] = s.v1
                out["estimate"][key] = s.v2
        return out

    def cache_stats(self):
        """The flow cache: {'enabled', 'entries', 'slots', 'paths', 'hits', 'misses', 'flushes',
        'express', 'replies'} (hits and misses: inputs that looked it up; express: hits run_express
        took; replies: plans recorded ahead for the replies of flows opened from the inside)."""
        pl = &self.pl
        return {"enabled": bool(pl.use_cache), "entries": pl.cache.used,
                "slots": pl.cache.mask + 1 if pl.cache.s else 0, "paths": pl.npaths, "hits": pl.hits,
                "misses": pl.misses, "flushes": pl.flushes, "express": pl.express,
                "replies": pl.replies}

    def table_sizes(self):
        """instance -> (entries, slots) of its flow table (for benchmarks and memory checks)."""
        return {name: (self.pl.insts[k].tab.used, self.pl.insts[k].tab.mask + 1 if self.pl.insts[k].tab.s else 0)
                for k, name in enumerate(self.instances)}


cdef size_t table_slots(Py_ssize_t entries):
    """Slots of a table sized for `entries` at the start, 1024 at least: at most a quarter full
    while that is SPARSE_BYTES or less (else at most half full, the growth limit). At half full
    7 % of the keys sit past their home line and a lookup of one reads a line not prefetched; at
    a quarter, 2 % (4-5 ns per frame at 100k flows, bench/runtime.py)."""
    cdef size_t n = 1024
    while n < 2 * <size_t>entries:
        n *= 2
    if n < 4 * <size_t>entries and 2 * n * sizeof(slot_t) <= SPARSE_BYTES:
        n *= 2
    return n


cdef object _flow(uint64_t a, uint64_t b):
    return Flow((b >> 32) & 0xFF, a >> 32, (b >> 16) & 0xFFFF, a & M32, b & 0xFFFF)


# ---- the baseline: parse only --------------------------------------------------------------------

cdef class PassThrough:
    """Parse-only pass-through: every frame is parsed (as a pipeline's ingress does) and released
    unchanged on egress 0 by instance 0. The floor the benchmark measures pipelines against."""

    cdef int linktype
    cdef public Py_ssize_t checksum   # a sum over the parses, so that none is optimised away

    def __init__(self, int linktype=1):
        self.linktype = linktype
        self.checksum = 0

    def process(self, batch):
        cdef Py_ssize_t n = batch.n, i, k = batch.n_out, acc = 0
        cdef int64_t[::1] off = batch.off
        cdef int32_t[::1] caplen = batch.caplen, wirelen = batch.wirelen
        cdef pkt_t p
        cdef uint8_t *data = <uint8_t *>PyByteArray_AS_STRING(batch.data)
        while len(batch.out_in) < k + n:
            batch._grow_outputs()
        cdef int32_t[::1] out_in = batch.out_in, out_len = batch.out_len
        cdef int16_t[::1] out_egress = batch.out_egress, out_inst = batch.out_inst
        cdef int64_t[::1] out_off = batch.out_off
        cdef uint16_t[::1] out_label = batch.out_label
        cdef uint8_t[::1] out_copy = batch.out_copy
        with nogil:
            for i in range(n):
                parse(&p, self.linktype, data + off[i], caplen[i], wirelen[i])
                acc += p.ip.proto + p.malformed + p.ip.sport
                out_in[k], out_egress[k], out_inst[k] = <int32_t>i, 0, 0
                out_off[k], out_len[k], out_label[k], out_copy[k] = off[i], caplen[i], 0, 0
                k += 1
        batch.n_out = k
        self.checksum += acc


# ---- live interfaces: batched receive (runtime/ports.py InterfaceSource) ---------------------------

cdef extern from *:
    """
    #include <errno.h>
    #include <time.h>
    #include <sys/socket.h>
    #include <linux/if_packet.h>
    /* room for `capacity` frames of up to `frame_max` bytes each, received by one recvmmsg(2) */
    typedef struct {
        struct mmsghdr *msgs; struct iovec *iov; struct sockaddr_ll *addr; char *buf;
        int capacity; size_t stride;
    } nfp_rx_t;

    static void nfp_rx_free(nfp_rx_t *rx) {
        if (!rx) return;
        free(rx->msgs); free(rx->iov); free(rx->addr);
        if (rx->buf && rx->buf != MAP_FAILED) munmap(rx->buf, rx->stride * rx->capacity);
        free(rx);
    }

    static nfp_rx_t *nfp_rx_new(int capacity, int frame_max) {
        nfp_rx_t *rx = calloc(1, sizeof *rx);
        if (!rx) return NULL;
        rx->capacity = capacity;
        rx->stride = ((size_t)frame_max + 63) & ~(size_t)63;
        rx->msgs = calloc(capacity, sizeof *rx->msgs);
        rx->iov = calloc(capacity, sizeof *rx->iov);
        rx->addr = calloc(capacity, sizeof *rx->addr);
        /* one mapping; pages are only backed once a frame is written into them */
        rx->buf = mmap(NULL, rx->stride * capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (!rx->msgs || !rx->iov || !rx->addr || rx->buf == MAP_FAILED) { nfp_rx_free(rx); return NULL; }
        for (int i = 0; i < capacity; i++) {
            rx->iov[i].iov_base = rx->buf + rx->stride * i;
            rx->iov[i].iov_len = frame_max;
            rx->msgs[i].msg_hdr.msg_iov = &rx->iov[i];
            rx->msgs[i].msg_hdr.msg_iovlen = 1;
            rx->msgs[i].msg_hdr.msg_name = &rx->addr[i];
        }
        return rx;
    }

    /* the frames queued on fd, up to n (<= capacity), without waiting: their count, or -errno */
    static int nfp_rx_recv(nfp_rx_t *rx, int fd, int n) {
        for (int i = 0; i < n; i++) rx->msgs[i].msg_hdr.msg_namelen = sizeof rx->addr[i];
        int got = recvmmsg(fd, rx->msgs, n, MSG_DONTWAIT, NULL);
        return got < 0 ? -errno : got;
    }

    static int64_t nfp_now_ns(void) {
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    """
    ctypedef struct nfp_rx_t:
        int capacity
        size_t stride
        char *buf
    nfp_rx_t *rx_new "nfp_rx_new"(int capacity, int frame_max) noexcept nogil
    void rx_free "nfp_rx_free"(nfp_rx_t *rx) noexcept nogil
    int rx_recv "nfp_rx_recv"(nfp_rx_t *rx, int fd, int n) noexcept nogil
    unsigned int rx_len "nfp_rx_len"(nfp_rx_t *rx, int i) noexcept nogil
    int rx_pkttype "nfp_rx_pkttype"(nfp_rx_t *rx, int i) noexcept nogil
    int64_t now_ns "nfp_now_ns"() noexcept nogil
    int EAGAIN, EWOULDBLOCK, EINTR, PACKET_OUTGOING

cdef extern from *:
    """
    static inline unsigned int nfp_rx_len(nfp_rx_t *rx, int i) { return rx->msgs[i].msg_len; }
    static inline int nfp_rx_pkttype(nfp_rx_t *rx, int i) { return rx->addr[i].sll_pkttype; }
    """

from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport strerror


cdef class FrameReceiver:
    """Reads a packet socket's queued frames with recvmmsg(2): up to `capacity` frames per system
    call into one preallocated buffer (`frame_max` bytes a frame, as recvfrom(frame_max) would
    read). Same frames, order and fields as runtime/ports.py's recvfrom loop (`receive_each`)."""

    cdef nfp_rx_t *rx

    def __cinit__(self, int capacity=64, int frame_max=65535):
        if capacity < 1 or frame_max < 1:
            raise ValueError("capacity and frame_max must be positive")
        self.rx = rx_new(capacity, frame_max)
        if self.rx == NULL:
            raise MemoryError(f"cannot allocate a receive buffer of {capacity} x {frame_max} bytes")

    def __dealloc__(self):
        rx_free(self.rx)

    def receive(self, int fd, int side, Py_ssize_t limit, list out):
        """Appends to `out` up to `limit` frames queued on the non-blocking packet socket `fd`, as
        (data, length, time_ns, side) tuples in arrival order (time: when the system call that read
        it returned), skipping frames this host sent; returns (frames, bytes) appended."""
        cdef Py_ssize_t appended = 0, nbytes = 0
        cdef int want, got, i
        cdef unsigned int length
        cdef int64_t t
        cdef nfp_rx_t *rx = self.rx
        while appended < limit:
            want = <int>min(limit - appended, rx.capacity)
            got = rx_recv(rx, fd, want)
            if got == -EAGAIN or got == -EWOULDBLOCK:
                break
            if got == -EINTR:
                PyErr_CheckSignals()
                continue
            if got < 0:
                raise OSError(-got, strerror(-got).decode())
            t = now_ns()
            for i in range(got):
                if rx_pkttype(rx, i) == PACKET_OUTGOING:
                    continue
                length = rx_len(rx, i)
                out.append((PyBytes_FromStringAndSize(rx.buf + rx.stride * i, length), length, t, side))
                appended += 1
                nbytes += length
            if got < want:  # the queue is empty (recvmmsg reads until it is or `want` are read)
                break
        return appended, nbytes
