# cython: language_level=3
"""Cython fast path of nfproof.traces.headers (the reference, with the documentation): the same
`parse_frame`, and the C hot loop `scan_pcap_flow_keys`, which mmaps a classic pcap and parses every
record to a 64-bit flow hash counted in an open-addressing table, following fragments to their
first fragment's flow as FlowKeyer does. The parsing code is traces/_parse.pxi."""
include "_parse.pxi"

import os
from .errors import FormatError

from libc.stdlib cimport calloc, free
from libc.string cimport memset
from posix.mman cimport (mmap, munmap, madvise, PROT_READ, MAP_PRIVATE, MAP_FAILED, MAP_POPULATE,
                         MADV_SEQUENTIAL, MADV_HUGEPAGE)

cdef extern from "<stdlib.h>":
    void *aligned_alloc(size_t alignment, size_t size) noexcept nogil



def parse_frame(int linktype, data, Py_ssize_t wirelen):
    """Parse one captured frame; identical to nfproof.traces.headers.parse_frame."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef pkt_t p
    parse(&p, linktype, <const uint8_t *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), wirelen)
    return make_parsed(&p)


cdef extern from *:
    void prefetch "__builtin_prefetch"(const void *addr) noexcept nogil


ctypedef struct table_t:  # open addressing, linear probing; key 0 = empty; vals NULL for a set
    uint64_t *keys
    uint64_t *vals
    size_t mask, used


cdef int table_init(table_t *t, size_t size, bint with_vals) noexcept nogil:
    cdef size_t nbytes = size * sizeof(uint64_t)
    if nbytes >= 2 << 20:  # 2 MB pages for the keys: fewer TLB misses on random probes
        t.keys = <uint64_t *>aligned_alloc(2 << 20, nbytes)
        if t.keys:
            madvise(t.keys, nbytes, MADV_HUGEPAGE)
            memset(t.keys, 0, nbytes)
    else:
        t.keys = <uint64_t *>calloc(size, sizeof(uint64_t))
    t.vals = <uint64_t *>calloc(size, sizeof(uint64_t)) if with_vals else NULL
    t.mask, t.used = size - 1, 0
    return t.keys != NULL and (t.vals != NULL or not with_vals)


cdef void table_free(table_t *t) noexcept nogil:
    free(t.keys)
    free(t.vals)


cdef inline size_t table_slot(table_t *t, uint64_t key) noexcept nogil:
    cdef size_t i = key & t.mask
    while t.keys[i] != 0 and t.keys[i] != key:
        i = (i + 1) & t.mask
    return i


cdef int table_grow(table_t *t) noexcept nogil:
    """Double the table; 1, or -1 if out of memory."""
    cdef table_t bigger
    cdef size_t i, j
    if not table_init(&bigger, 2 * (t.mask + 1), t.vals != NULL):
        table_free(&bigger)
        return -1
    for j in range(t.mask + 1):
        if t.keys[j]:
            i = table_slot(&bigger, t.keys[j])
            bigger.keys[i] = t.keys[j]
            if t.vals:
                bigger.vals[i] = t.vals[j]
    bigger.used = t.used
    table_free(t)
    t[0] = bigger
    return 1


cdef inline int table_put(table_t *t, uint64_t key, uint64_t val) noexcept nogil:
    """Insert or overwrite; 1 if the key was new, 0 if not, -1 if out of memory."""
    cdef size_t i = table_slot(t, key)
    if t.keys[i] == key:
        if t.vals:
            t.vals[i] = val
        return 0
    t.keys[i] = key
    if t.vals:
        t.vals[i] = val
    t.used += 1
    if 10 * t.used > 7 * t.mask:  # load factor 0.7
        return table_grow(t)
    return 1


cdef inline uint32_t rd32(const uint8_t *s, bint swap) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, s, 4)
    if swap:
        v = ((v & 0xFF) << 24) | ((v & 0xFF00) << 8) | ((v >> 8) & 0xFF00) | (v >> 24)
    return v


def scan_pcap_flow_keys(path):
    """(packets, distinct flow keys after fragment following, malformed packets) of a classic pcap;
    identical to nfproof.traces.headers.scan_pcap_flow_keys (flows counted by 64-bit hash)."""
    cdef Py_ssize_t size, off = 24, caplen, wirelen
    cdef const uint8_t *m
    cdef uint32_t magic
    cdef bint swap
    cdef int linktype, err = 0, major, minor
    cdef long long packets = 0, malformed = 0, i = 0
    cdef table_t flows, frags
    cdef pkt_t p
    cdef uint64_t h, fh
    cdef uint64_t ring[8]  # hashes waiting for insertion while their slots are prefetched
    cdef unsigned long long r = 0, j
    cdef size_t slot
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < 24:
            raise FormatError(path, 0, f"{size} bytes, too short for a pcap header")
        m = <const uint8_t *>mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0)
        if <void *>m == MAP_FAILED:
            raise OSError(f"{path}: mmap failed")
    finally:
        os.close(fd)
    flows.keys = flows.vals = frags.keys = frags.vals = NULL
    try:
        madvise(<void *>m, size, MADV_SEQUENTIAL)
        memcpy(&magic, m, 4)
        if magic == 0xA1B2C3D4 or magic == 0xA1B23C4D:
            swap = 0
        elif magic == 0xD4C3B2A1 or magic == 0x4D3CB2A1:
            swap = 1
        else:
            raise FormatError(path, 0, f"not a classic pcap file (magic {magic:#010x})")
        major = (m[5] << 8 | m[4]) if not swap else (m[4] << 8 | m[5])
        minor = (m[7] << 8 | m[6]) if not swap else (m[6] << 8 | m[7])
        if major != 2:
            raise FormatError(path, 4, f"unsupported pcap version {major}.{minor}")
        linktype = rd32(m + 20, swap) & 0x0FFFFFFF
        if not table_init(&flows, 1 << 18, 0) or not table_init(&frags, 1 << 10, 1):
            raise MemoryError()
        with nogil:
            while off < size:
                i += 1
                if size - off < 16:
                    err = 1
                    break
                caplen = rd32(m + off + 8, swap)
                wirelen = rd32(m + off + 12, swap)
                if caplen > size - off - 16:
                    err = 2
                    break
                parse(&p, linktype, m + off + 16, caplen, wirelen)
                packets += 1
                malformed += p.malformed != OK
                if p.ip.version:
                    h = flow_hash(&p, &p.ip)
                    if p.ip.frag_offset or p.ip.more_fragments:
                        fh = frag_hash(&p, &p.ip)
                        if p.ip.frag_offset == 0:
                            if table_put(&frags, fh, h) < 0:
                                err = 3
                                break
                        else:
                            slot = table_slot(&frags, fh)
                            if frags.keys[slot] == fh:
                                h = frags.vals[slot]
                    prefetch(&flows.keys[h & flows.mask])
                    if r >= 8 and table_put(&flows, ring[r & 7], 1) < 0:
                        err = 3
                        break
                    ring[r & 7] = h
                    r += 1
                off += 16 + caplen
            for j in range(r - 8 if r > 8 else 0, r):
                if not err and table_put(&flows, ring[j & 7], 1) < 0:
                    err = 3
        if err == 1:
            raise FormatError(path, off, f"record {i}: header cut short, {size - off} bytes remain")
        if err == 2:
            raise FormatError(path, off, f"record {i} claims {caplen} bytes, {size - off - 16} remain")
        if err == 3:
            raise MemoryError()
        return packets, flows.used, malformed
    finally:
        table_free(&flows)
        table_free(&frags)
        munmap(<void *>m, size)
