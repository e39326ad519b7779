# Header parsing in C: the Cython twin of traces/headers.py (the reference; its docstring documents
# link types, protocols, flow keys and malformed kinds). Included by traces/_fast.pyx and
# runtime/fast.pyx so both extensions parse with this one copy.
#
# `parse()` fills a `pkt_t` (no Python objects, nogil); `make_parsed()` turns it into the same
# `Parsed` tuple headers.parse_frame returns; `flow_hash()`/`frag_hash()` hash the flow key and the
# fragment identity to 64 bits for the C flow tables. Fields that are None in Python are -1 here.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

from nfproof.traces.headers import Parsed

cdef enum:
    MAX_TAGS = 8

cdef enum Kind:  # index into MALFORMED_KINDS
    OK, SHORT_FRAME, SNAPLEN_CUT, VLAN_STACK, MPLS_STACK, BAD_IP_VERSION, SHORT_IPV4, SHORT_IPV6,
    BAD_IHL, BAD_TOTAL_LENGTH, SHORT_IP, BAD_IPV6_EXT, SHORT_TCP, BAD_TCP_OFFSET, SHORT_UDP,
    BAD_UDP_LENGTH, SHORT_ICMP, SHORT_ICMP_QUOTE, BAD_ICMP_QUOTE

MALFORMED_KINDS = (None, "short-frame", "snaplen-cut", "vlan-stack", "mpls-stack", "bad-ip-version",
                   "short-ipv4", "short-ipv6", "bad-ihl", "bad-total-length", "short-ip", "bad-ipv6-ext",
                   "short-tcp", "bad-tcp-offset", "short-udp", "bad-udp-length", "short-icmp",
                   "short-icmp-quote", "bad-icmp-quote")

ctypedef struct hdr_t:          # IP and above, of the outer or the quoted packet
    int version, proto, l3, l4  # proto/l3/l4: -1 = None
    int sport, dport, tcp_flags, icmp_type, icmp_code, icmp_id
    int64_t ip_id
    int frag_offset
    bint more_fragments

ctypedef struct pkt_t:
    const uint8_t *d
    Py_ssize_t caplen, wirelen
    int malformed, ethertype, nvlan, nmpls
    int vlans[MAX_TAGS]
    int mpls[MAX_TAGS]
    hdr_t ip, q
    bint has_quoted


cdef inline void hdr_init(hdr_t *h) noexcept nogil:
    h.version = 0
    h.proto = h.l3 = h.l4 = -1
    h.sport = h.dport = h.tcp_flags = h.icmp_type = h.icmp_code = h.icmp_id = -1
    h.ip_id = -1
    h.frag_offset = 0
    h.more_fragments = 0

cdef inline int u16(const uint8_t *d, Py_ssize_t off) noexcept nogil:
    return (d[off] << 8) | d[off + 1]

cdef inline uint32_t u32(const uint8_t *d, Py_ssize_t off) noexcept nogil:
    return (<uint32_t>u16(d, off) << 16) | <uint32_t>u16(d, off + 2)

cdef inline void bad(pkt_t *p, int kind) noexcept nogil:
    if p.malformed == OK:
        p.malformed = kind

cdef inline bint need(pkt_t *p, Py_ssize_t off, Py_ssize_t n, Py_ssize_t end, int kind) noexcept nogil:
    if off + n <= end and off + n <= p.caplen:
        return 1
    bad(p, kind if off + n > end else SNAPLEN_CUT)
    return 0


cdef void l4(pkt_t *p, hdr_t *h, Py_ssize_t off, Py_ssize_t end, bint quoted) noexcept nogil:
    cdef const uint8_t *d = p.d
    cdef int proto = h.proto, t, ulen
    cdef bint ident, error
    if proto == 6 or proto == 17:
        if quoted:
            if not need(p, off, 4, end, SHORT_ICMP_QUOTE):
                return
        elif not need(p, off, 20 if proto == 6 else 8, end, SHORT_TCP if proto == 6 else SHORT_UDP):
            return
        h.l4 = <int>off
        h.sport = u16(d, off)
        h.dport = u16(d, off + 2)
        if quoted:
            return
        if proto == 6:
            h.tcp_flags = ((d[off + 12] & 1) << 8) | d[off + 13]
            if d[off + 12] >> 4 < 5:
                bad(p, BAD_TCP_OFFSET)
        else:
            ulen = u16(d, off + 4)
            if ulen < 8:
                bad(p, SHORT_UDP)
            elif not h.more_fragments and off + ulen > end:
                bad(p, BAD_UDP_LENGTH)
    elif (proto == 1 and h.version == 4) or (proto == 58 and h.version == 6):
        if not need(p, off, 8, end, SHORT_ICMP_QUOTE if quoted else SHORT_ICMP):
            return
        t = d[off]
        h.l4 = <int>off
        h.icmp_type = t
        h.icmp_code = d[off + 1]
        if h.version == 4:
            ident = t == 0 or t == 8 or t == 13 or t == 14
            error = t == 3 or t == 4 or t == 5 or t == 11 or t == 12
        else:
            ident = t == 128 or t == 129
            error = 1 <= t <= 4
        if ident:
            h.icmp_id = h.sport = h.dport = u16(d, off + 4)
        elif error and not quoted:
            hdr_init(&p.q)
            if h.version == 4:
                ip4(p, &p.q, off + 8, end, 1)
            else:
                ip6(p, &p.q, off + 8, end, 1)
            p.has_quoted = p.q.version != 0


cdef void ip4(pkt_t *p, hdr_t *h, Py_ssize_t off, Py_ssize_t end, bint quoted) noexcept nogil:
    cdef const uint8_t *d = p.d
    cdef int ihl, fl
    cdef Py_ssize_t total, pend
    if not need(p, off, 20, end, SHORT_ICMP_QUOTE if quoted else SHORT_IPV4):
        return
    if d[off] >> 4 != 4:
        bad(p, BAD_ICMP_QUOTE if quoted else BAD_IP_VERSION)
        return
    h.version = 4
    h.l3 = <int>off
    h.proto = d[off + 9]
    h.ip_id = u16(d, off + 4)
    fl = u16(d, off + 6)
    h.more_fragments = (fl & 0x2000) != 0
    h.frag_offset = (fl & 0x1FFF) * 8
    ihl = (d[off] & 15) * 4
    if ihl < 20:
        bad(p, BAD_ICMP_QUOTE if quoted else BAD_IHL)
        return
    if quoted:
        pend = end
    else:
        total = u16(d, off + 2)
        if total == 0:
            total = p.wirelen - off
        if total < ihl:
            bad(p, BAD_TOTAL_LENGTH)
            return
        pend = off + total
        if pend > p.wirelen:
            bad(p, SHORT_IP)
            pend = p.wirelen
    if need(p, off, ihl, pend, SHORT_ICMP_QUOTE if quoted else SHORT_IPV4) and h.frag_offset == 0:
        l4(p, h, off + ihl, pend, quoted)


cdef void ip6(pkt_t *p, hdr_t *h, Py_ssize_t off, Py_ssize_t end, bint quoted) noexcept nogil:
    cdef const uint8_t *d = p.d
    cdef int nh, fo, ext_kind = SHORT_ICMP_QUOTE if quoted else BAD_IPV6_EXT
    cdef Py_ssize_t pend, plen, n, q
    if not need(p, off, 40, end, SHORT_ICMP_QUOTE if quoted else SHORT_IPV6):
        return
    if d[off] >> 4 != 6:
        bad(p, BAD_ICMP_QUOTE if quoted else BAD_IP_VERSION)
        return
    h.version = 6
    h.l3 = <int>off
    h.proto = nh = d[off + 6]
    if quoted:
        pend = end
    else:
        plen = u16(d, off + 4)
        pend = off + 40 + plen if plen else p.wirelen
        if pend > p.wirelen:
            bad(p, SHORT_IP)
            pend = p.wirelen
    q = off + 40
    while nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60:
        if nh == 44:
            if not need(p, q, 8, pend, ext_kind):
                return
            fo = u16(d, q + 2)
            h.frag_offset = fo & 0xFFF8
            h.more_fragments = (fo & 1) != 0
            h.ip_id = u32(d, q + 4)
            nh = d[q]
            q += 8
            if h.frag_offset:
                h.proto = nh
                return
        else:
            if not need(p, q, 2, pend, ext_kind):
                return
            n = (d[q + 1] + 2) * 4 if nh == 51 else (d[q + 1] + 1) * 8
            if not need(p, q, n, pend, ext_kind):
                return
            nh = d[q]
            q += n
        h.proto = nh
    l4(p, h, q, pend, quoted)


cdef void ethertype_at(pkt_t *p, Py_ssize_t off, int et) noexcept nogil:
    cdef uint32_t w
    cdef int v
    while True:
        p.ethertype = et
        if et != 0x8100 and et != 0x88A8 and et != 0x9100:
            break
        if p.nvlan == MAX_TAGS:
            bad(p, VLAN_STACK)
            return
        if not need(p, off, 4, p.wirelen, SHORT_FRAME):
            return
        p.vlans[p.nvlan] = u16(p.d, off) & 0xFFF
        p.nvlan += 1
        et = u16(p.d, off + 2)
        off += 4
    if et == 0x8847 or et == 0x8848:
        while True:
            if p.nmpls == MAX_TAGS:
                bad(p, MPLS_STACK)
                return
            if not need(p, off, 4, p.wirelen, SHORT_FRAME):
                return
            w = u32(p.d, off)
            p.mpls[p.nmpls] = w >> 12
            p.nmpls += 1
            off += 4
            if w & 0x100:
                break
        if not need(p, off, 1, p.wirelen, SHORT_FRAME):
            return
        v = p.d[off] >> 4
        if v == 4:
            ip4(p, &p.ip, off, p.wirelen, 0)
        elif v == 6:
            ip6(p, &p.ip, off, p.wirelen, 0)
        elif v == 0 and need(p, off, 18, p.wirelen, SHORT_FRAME):
            ethertype_at(p, off + 18, u16(p.d, off + 16))  # Ethernet pseudowire, control word
    elif et == 0x0800:
        ip4(p, &p.ip, off, p.wirelen, 0)
    elif et == 0x86DD:
        ip6(p, &p.ip, off, p.wirelen, 0)


cdef void parse(pkt_t *p, int linktype, const uint8_t *d, Py_ssize_t caplen, Py_ssize_t wirelen) noexcept nogil:
    cdef uint32_t fam
    cdef int v
    p.d = d
    p.caplen = caplen
    p.wirelen = wirelen if wirelen > caplen else caplen
    p.malformed = OK
    p.ethertype = p.nvlan = p.nmpls = 0
    p.has_quoted = 0
    hdr_init(&p.ip)
    if linktype == 1:
        if need(p, 0, 14, p.wirelen, SHORT_FRAME):
            ethertype_at(p, 14, u16(d, 12))
    elif linktype == 113:
        if need(p, 0, 16, p.wirelen, SHORT_FRAME):
            ethertype_at(p, 16, u16(d, 14))
    elif linktype == 276:
        if need(p, 0, 20, p.wirelen, SHORT_FRAME):
            ethertype_at(p, 20, u16(d, 0))
    elif linktype == 0 or linktype == 108:
        if need(p, 0, 4, p.wirelen, SHORT_FRAME):
            fam = d[0] | (d[1] << 8) | (d[2] << 16) | (<uint32_t>d[3] << 24)
            if fam > 0xFFFF:
                fam = u32(d, 0)
            if fam == 2:
                ethertype_at(p, 4, 0x0800)
            elif fam == 24 or fam == 28 or fam == 30:
                ethertype_at(p, 4, 0x86DD)
    elif linktype == 101 or linktype == 12 or linktype == 14:
        if need(p, 0, 1, p.wirelen, SHORT_FRAME):
            v = d[0] >> 4
            if v == 4 or v == 6:
                ethertype_at(p, 0, 0x0800 if v == 4 else 0x86DD)
            else:
                bad(p, BAD_IP_VERSION)
    elif linktype == 228:
        ethertype_at(p, 0, 0x0800)
    elif linktype == 229:
        ethertype_at(p, 0, 0x86DD)


# ---- to Python objects (identical to headers.py) -------------------------------------------------

cdef inline object opt(long long v):
    return None if v < 0 else v

cdef inline object address(pkt_t *p, hdr_t *h, int which):  # which: 0 src, 1 dst
    if h.version == 4:
        return PyBytes_FromStringAndSize(<const char *>p.d + h.l3 + 12 + 4 * which, 4)
    return PyBytes_FromStringAndSize(<const char *>p.d + h.l3 + 8 + 16 * which, 16)

cdef object protocol_name(int version, int proto, int ethertype):
    if version == 0:
        return "arp" if ethertype == 0x0806 else "other"
    if proto == 6:
        return "tcp"
    if proto == 17:
        return "udp"
    if version == 4:
        return "icmp" if proto == 1 else "ipv4-other"
    return "icmpv6" if proto == 58 else "ipv6-other"

cdef tuple vlan_tuple(pkt_t *p):
    return tuple([p.vlans[i] for i in range(p.nvlan)])

cdef object make_key(pkt_t *p, hdr_t *h, tuple vlans):
    if h.version == 0:
        return None
    return (vlans, h.version, h.proto, address(p, h, 0), opt(h.sport), address(p, h, 1), opt(h.dport))

cdef object make_hdr(pkt_t *p, hdr_t *h, object malformed, object quoted):
    cdef tuple vlans = vlan_tuple(p)
    cdef bint ip = h.version != 0
    return Parsed(protocol_name(h.version, h.proto, p.ethertype), make_key(p, h, vlans), malformed,
                  vlans, tuple([p.mpls[i] for i in range(p.nmpls)]), p.ethertype, h.version,
                  opt(h.l3), address(p, h, 0) if ip else None, address(p, h, 1) if ip else None,
                  opt(h.proto), opt(h.ip_id), h.frag_offset, bool(h.more_fragments), opt(h.l4),
                  opt(h.sport), opt(h.dport), opt(h.tcp_flags), opt(h.icmp_type), opt(h.icmp_code),
                  opt(h.icmp_id), quoted)

cdef object make_parsed(pkt_t *p):
    quoted = make_hdr(p, &p.q, None, None) if p.has_quoted else None
    return make_hdr(p, &p.ip, MALFORMED_KINDS[p.malformed], quoted)


# ---- 64-bit hashes of the flow key and of a fragment's identity ----------------------------------
# wyhash-style: one 64x64->128-bit multiply folds 16 bytes; the hashes only need to tell flows apart.

cdef extern from *:
    """
    static inline uint64_t nfproof_mum(uint64_t a, uint64_t b) {
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    }
    #define NFPROOF_K0 0xa0761d6478bd642fULL
    #define NFPROOF_K1 0xe7037ed1a0b428dbULL
    #define NFPROOF_K2 0x8ebc6af09c88c6e3ULL
    #define NFPROOF_K3 0x589965cc75374cc3ULL
    """
    uint64_t mum "nfproof_mum"(uint64_t a, uint64_t b) noexcept nogil
    const uint64_t K0 "NFPROOF_K0"
    const uint64_t K1 "NFPROOF_K1"
    const uint64_t K2 "NFPROOF_K2"
    const uint64_t K3 "NFPROOF_K3"

cdef inline uint64_t vlan_word(pkt_t *p) noexcept nogil:
    cdef uint64_t v = p.nvlan
    cdef int i
    for i in range(p.nvlan):
        v = v * 0x1003 + <uint64_t>p.vlans[i] + 1
    return v

cdef inline uint64_t ip_hash(pkt_t *p, hdr_t *h, uint64_t meta) noexcept nogil:
    cdef uint64_t a[4]
    cdef uint64_t x
    cdef const uint8_t *s = p.d + h.l3
    meta |= (<uint64_t>h.proto << 48) | (<uint64_t>h.version << 56)
    if h.version == 4:
        memcpy(a, s + 12, 8)        # src and dst are adjacent
        x = mum(a[0] ^ K0, meta ^ K1)
    else:
        memcpy(a, s + 8, 32)
        x = mum(a[0] ^ K0, a[1] ^ K1)
        x = mum(x ^ a[2], a[3] ^ K2)
        x = mum(x ^ meta, K3)
    if p.nvlan:
        x = mum(x ^ K2, vlan_word(p) ^ K3)
    x = mum(x ^ K3, K0 ^ h.version)
    return x if x else 1  # 0 marks an empty slot

cdef inline uint64_t flow_hash(pkt_t *p, hdr_t *h) noexcept nogil:
    """Hash of make_key(): None ports (-1) hash apart from port 0."""
    return ip_hash(p, h, <uint64_t>(h.sport + 1) | (<uint64_t>(h.dport + 1) << 17))

cdef inline uint64_t frag_hash(pkt_t *p, hdr_t *h) noexcept nogil:
    """Hash of FlowKeyer's fragment identity (vlans, version, src, dst, proto, ip_id)."""
    return ip_hash(p, h, <uint64_t>h.ip_id | (<uint64_t>1 << 40))
