"""Pure-Python twin of runtime/fast.pyx: identical behaviour, chosen when the extension is absent
or NFPROOF_PUREPYTHON=1. Header parsing is nfproof.traces.headers.

`Pipeline` (the runtime contract, /work/notes/runtime.md, section 6) runs a chain of the bundled
NFs on batches of frames: each frame is parsed, classified (inbound or not), seen as a model
packet (runtime/frames.py), carried through the chain exactly as models/chain.py routes it (run to
completion, depth first in emission order, one input at a time in input order), and every output
is written back onto the frame (in place; a copy for every output but the last of one emission);
an output the frame cannot carry (frames.FrameError) is dropped, "<instance>: cannot write
<field> into the frame".
The NFs are hand-written twins of models/*.py on plain dicts keyed by tuples, not the models'
handlers (that is runtime/generic.py): each twin follows its model line by line, wrapping stored
values at their declared widths, with the model's drop reasons, its clock in its own ticks and its
choices drawn from the instance's seeded stream by the choice protocol (runtime/rng.py).
tests/test_runtime_pure.py holds them to the models' concrete execution.

Inside, a packet is a tuple in models.api.PACKET_FIELDS order (proto, src, sport, dst, dport,
flags, inbound, length, label); a twin's `handle(p, t_ns)` returns [(gate, packet)] in emission
order, or the drop reason (a str)."""
from __future__ import annotations

from nfproof.models.api import Flow, flow_hash
from nfproof.models.chain import ChainError
from nfproof.models.csfq import LABEL_MAX, CsfqCore, CsfqEdge
from nfproof.models.firewall import ACK, FIN, RST, SYN, SYN_ACKED, SYN_SENT, ESTABLISHED, Firewall
from nfproof.models.lb import Lb
from nfproof.models.lb_hash import LbHash
from nfproof.models.monitor import Monitor
from nfproof.models.nat import Nat
from nfproof.models.ratelimit import RateLimit
from nfproof.traces import headers

from .frames import DEFAULT_INSIDE, FLOWS_MAX, FrameError, NotBundled, Sides, view_fields, write_fields  # noqa: F401
from .rng import InstanceRng, choose_all, choose_free

NS = 1_000_000_000
M32 = 0xFFFFFFFF
TCP, UDP = 6, 17


def flow_key(frame, linktype=1, wirelen=None):
    """Flow key of a frame, as nfproof.traces.headers documents it (None for non-IP)."""
    frame = bytes(frame)
    return headers.parse_frame(linktype, frame, len(frame) if wirelen is None else wirelen).flow_key


def parse_frame(linktype, frame, wirelen=None):
    """The full Parsed record of a frame (nfproof.traces.headers.parse_frame)."""
    frame = bytes(frame)
    return headers.parse_frame(linktype, frame, len(frame) if wirelen is None else wirelen)


# -- the bundled NFs, hand-written ---------------------------------------------------------------
class _Twin:
    """A bundled NF's twin: parameters read from the (configured) class, state in plain dicts."""

    model: type = None            # the bundled model class it implements
    methods: tuple = ("handle",)  # model methods a subclass must not override (else: not this NF)

    def __init__(self, cls, rng: InstanceRng, record):
        self.cls, self.rng, self._record = cls, rng, record
        self.tps = cls.ticks_per_second

    def chose(self, value):
        self._record(value)
        return value

    def state(self) -> dict:  # pragma: no cover - every twin defines it
        raise NotImplementedError


def _flows(d: dict) -> dict:
    return {Flow(*k): v for k, v in d.items()}


class _Nat(_Twin):
    model = Nat

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        pool = cls.pool()
        self.external, self.base, self.size = cls.external, pool.base, pool.size
        self.by_flow, self.by_port = {}, {}  # every key of by_port is a pool value: len() counts the used ones

    def handle(self, p, t_ns):
        if p[6]:
            flow = self.by_port.get(p[4])
            if flow is None:
                return "no mapping"
            if flow[3] != p[1] or flow[4] != p[2] or flow[0] != p[0]:
                return "not from the mapped remote"
            return [("lan", p[:3] + (flow[1], flow[2]) + p[5:])]
        flow = p[:5]
        port = self.by_flow.get(flow)
        if port is None:
            port = choose_free(self.rng, self.base, self.size, self.by_port, len(self.by_port))
            if port is None:
                return "pool exhausted"
            self.chose(port)
            self.by_flow[flow] = port & 0xFFFF
            self.by_port[port & 0xFFFF] = flow
        return [("wan", (p[0], self.external, port) + p[3:])]

    def state(self):
        return {"by_flow": _flows(self.by_flow), "by_port": {k: Flow(*v) for k, v in self.by_port.items()}}


class _Firewall(_Twin):
    model = Firewall
    methods = ("handle", "tcp")

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        self.timeout, self.udp_timeout = cls.timeout, cls.udp_timeout
        self.stage, self.seen, self.udp_seen = {}, {}, {}

    def handle(self, p, t_ns):
        now = t_ns * self.tps // NS
        proto, inbound = p[0], p[6]
        out = "lan" if inbound else "wan"
        key = (proto, p[3], p[4], p[1], p[2]) if inbound else p[:5]
        if proto == TCP:
            return self.tcp(p, key, now, out)
        if proto == UDP:
            last = self.udp_seen.get(key)
            if last is not None and now - last > self.udp_timeout:
                del self.udp_seen[key]
                last = None
            if last is None and inbound:
                return "unsolicited inbound UDP"
            self.udp_seen[key] = now & M32
            return [(out, p)]
        if inbound:
            return "inbound protocol not tracked"
        return [(out, p)]

    def tcp(self, p, key, now, out):
        stage, last = self.stage.get(key), self.seen.get(key)
        if stage is not None and (last is None or now - last > self.timeout):
            self.stage.pop(key, None)
            self.seen.pop(key, None)
            stage = None
        flags, inbound = p[5], p[6]
        syn, ack = flags & SYN != 0, flags & ACK != 0
        if stage is None:
            if inbound:
                return "unsolicited inbound"
            if not syn or ack:
                return "no connection"
            self.stage[key], self.seen[key] = SYN_SENT, now & M32
            return [(out, p)]
        if flags & (FIN | RST) != 0:
            self.stage.pop(key, None)
            self.seen.pop(key, None)
            return [(out, p)]
        if stage == SYN_SENT:
            if inbound and syn and ack:
                self.stage[key] = SYN_ACKED
            elif inbound or not syn or ack:
                return "handshake out of order"
        elif stage == SYN_ACKED:
            if not inbound and ack and not syn:
                self.stage[key] = ESTABLISHED
            elif not (inbound and syn and ack):
                return "handshake out of order"
        self.seen[key] = now & M32
        return [(out, p)]

    def state(self):
        return {"stage": _flows(self.stage), "seen": _flows(self.seen), "udp_seen": _flows(self.udp_seen)}


class _Lb(_Twin):
    model = Lb

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        self.vip, self.first, self.backends = cls.vip, cls.first, cls.backends
        self.backend_of = {}

    def handle(self, p, t_ns):
        if p[6]:
            backend = self.backend_of.get((p[0], p[3], p[4], self.vip, p[2]))
            if backend is not None and backend == p[1]:
                return [("lan", (p[0], self.vip) + p[2:])]
            return [("lan", p)]
        if p[3] != self.vip:
            return [("wan", p)]
        flow = p[:5]
        backend = self.backend_of.get(flow)
        if backend is None:
            backend = self.chose(choose_all(self.rng, self.first, self.backends))
            self.backend_of[flow] = backend & M32
        return [("wan", p[:3] + (backend,) + p[4:])]

    def state(self):
        return {"backend_of": _flows(self.backend_of)}


class _LbHash(_Twin):
    model = LbHash

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        self.vip, self.first, self.backends = cls.vip, cls.first, cls.backends

    def handle(self, p, t_ns):
        if p[6]:
            if self.first + flow_hash((p[0], p[3], p[4], self.vip, p[2]), self.backends) == p[1]:
                return [("lan", (p[0], self.vip) + p[2:])]
            return [("lan", p)]
        if p[3] != self.vip:
            return [("wan", p)]
        return [("wan", p[:3] + (self.first + flow_hash(p[:5], self.backends),) + p[4:])]

    def state(self):
        return {}


class _RateLimit(_Twin):
    model = RateLimit

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        self.capacity, self.rate = cls.capacity, cls.rate
        self.credit, self.refilled = {}, {}

    def handle(self, p, t_ns):
        now = t_ns * self.tps // NS
        cost, full, src = self.tps, self.capacity * self.tps, p[1]
        credit, last = self.credit.get(src), self.refilled.get(src)
        if credit is None or last is None:
            credit = full
        else:
            credit = credit + (now - last) * self.rate
            if credit > full:
                credit = full
        self.refilled[src] = now & M32
        if credit < cost:
            self.credit[src] = credit & M32
            return "over the rate"
        self.credit[src] = (credit - cost) & M32
        return [("lan" if p[6] else "wan", p)]

    def state(self):
        return {"credit": dict(self.credit), "refilled": dict(self.refilled)}


class _Monitor(_Twin):
    model = Monitor

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        self.threshold, self.byte_threshold = cls.threshold, cls.byte_threshold
        self.packets, self.octets, self.alerted = {}, {}, set()

    def handle(self, p, t_ns):
        flow = p[:5]
        packets, octets = self.packets.get(flow), self.octets.get(flow)
        packets = 1 if packets is None else packets + 1
        octets = p[7] if octets is None else octets + p[7]
        self.packets[flow], self.octets[flow] = packets & M32, octets & M32
        out = [("lan" if p[6] else "wan", p)]
        heavy = packets >= self.threshold
        if self.byte_threshold:
            heavy = heavy or octets >= self.byte_threshold
        if heavy and flow not in self.alerted:
            self.alerted.add(flow)
            out.append(("alert", p))
        return out

    def state(self):
        return {"packets": _flows(self.packets), "octets": _flows(self.octets),
                "alerted": {Flow(*f) for f in self.alerted}}


class _CsfqEdge(_Twin):
    model = CsfqEdge

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        self.window = cls.window
        self.opened, self.count, self.estimate = {}, {}, {}

    def handle(self, p, t_ns):
        now, flow = t_ns * self.tps // NS, p[:5]
        opened, count, estimate = self.opened.get(flow), self.count.get(flow), self.estimate.get(flow)
        if opened is None or count is None or estimate is None:
            count, estimate = 0, 0
            self.opened[flow] = now & M32
        elif now - opened >= self.window:
            estimate = (estimate + count) >> 1 if now - opened < 2 * self.window else 0
            count = 0
            self.opened[flow] = now & M32
        count = count + 1
        self.count[flow], self.estimate[flow] = count & M32, estimate & M32
        label = estimate if estimate > count else count
        if label > LABEL_MAX:
            label = LABEL_MAX
        return [("lan" if p[6] else "wan", p[:8] + (label,))]

    def state(self):
        return {"opened": _flows(self.opened), "count": _flows(self.count), "estimate": _flows(self.estimate)}


class _CsfqCore(_Twin):
    model = CsfqCore

    def __init__(self, cls, rng, record):
        super().__init__(cls, rng, record)
        self.fair, self.levels = cls.fair, cls.levels

    def handle(self, p, t_ns):
        out = "lan" if p[6] else "wan"
        label = p[8]
        if label > self.fair:
            r = self.chose(choose_all(self.rng, 0, self.levels))
            if r * label >= self.levels * self.fair:
                return "over the fair share"
        return [(out, p)]

    def state(self):
        return {}


TWINS = (_Nat, _Firewall, _Lb, _LbHash, _RateLimit, _Monitor, _CsfqEdge, _CsfqCore)


def twin_of(instance: str, nf_cls: type):
    """The twin class of a bundled NF class (a configured or subclassed one included, as long as it
    keeps the model's handler and gates); NotBundled otherwise."""
    for twin in TWINS:
        model = twin.model
        if isinstance(nf_cls, type) and issubclass(nf_cls, model):
            if tuple(nf_cls.gates) == tuple(model.gates) and all(
                    getattr(nf_cls, m) is getattr(model, m) for m in twin.methods):
                return twin
            break
    raise NotBundled(instance, getattr(nf_cls, "name", getattr(nf_cls, "__name__", repr(nf_cls))))


# -- the pipeline ------------------------------------------------------------------------------------
class Pipeline:
    """A chain of bundled NFs on batches of frames (runtime/batch.py), as the contract defines it.
    `choices`: (input index in the batch, instance, value) of every choice the last `process` made."""

    implementation = "fallback"

    def __init__(self, chain, seed: int, linktype: int = 1, inside=DEFAULT_INSIDE, flows: int = 0):
        """`flows`: as the fast path's (its tables sized ahead); dicts need no sizing."""
        if not 0 <= flows <= FLOWS_MAX:
            raise ValueError(f"flows (the connections the tables are sized for) must be from 0 to {FLOWS_MAX}, "
                             f"not {flows}")
        chain.validate()
        self.chain, self.seed, self.linktype = chain, seed, linktype
        self.sides = Sides(DEFAULT_INSIDE if inside is None else inside)
        self.instances = tuple(chain.members)
        self.egresses = tuple(chain.egress_names)
        self.reasons: list[str] = []
        self._reason_ids: dict[str, int] = {}
        self.choices: list = []
        self._input = 0
        index = {name: k for k, name in enumerate(self.instances)}
        egress_id = {name: k for k, name in enumerate(self.egresses)}
        self._twins, self._hops, self._passes = [], [], []
        routes = chain._routes()
        for k, (name, member) in enumerate(chain.members.items()):
            twin = twin_of(name, member.nf)
            self._twins.append(twin(member.nf, InstanceRng(seed, k),
                                    lambda value, name=name: self.choices.append((self._input, name, value))))
            hops = {}
            for gate in member.gates:
                hop = routes[(name, gate)]
                hops[gate] = (egress_id[hop.egress], None, False) if hop.egress is not None else \
                    (None, index[hop.target], hop.inbound)
            self._hops.append(hops)
            # frames outside the model: passed to the first gate facing away from their side
            self._passes.append((member.outside[0] if member.outside else None,
                                 member.inside[0] if member.inside else None))
        self._entry = {False: index.get(chain.ingresses.get("inside")), True: index.get(chain.ingresses.get("outside"))}
        self._limit = 2 * len(self.instances)

    def reason(self, text: str) -> int:
        """The id of a drop reason (stable for the run)."""
        rid = self._reason_ids.get(text)
        if rid is None:
            rid = self._reason_ids[text] = len(self.reasons)
            self.reasons.append(text)
        return rid

    def state(self, instance: str) -> dict:
        """The instance's state as the model declares it: {declaration: dict | set | int}."""
        return self._twins[self.instances.index(instance)].state()

    def process(self, batch) -> None:
        self.choices = []
        n = batch.n
        data, linktype, sides = batch.data, self.linktype, self.sides
        offs, caplens, wirelens = batch.off[:n].tolist(), batch.caplen[:n].tolist(), batch.wirelen[:n].tolist()
        times, side_of = batch.t_ns[:n].tolist(), batch.side[:n].tolist()
        parse = headers.parse_frame
        for i in range(n):
            self._input = i
            off, caplen, wirelen, side = offs[i], caplens[i], wirelens[i], side_of[i]
            parsed = parse(linktype, data[off:off + caplen], wirelen)
            inbound = side == 1 if side < 2 else sides.inbound(parsed)
            p = view_fields(parsed, inbound, wirelen)
            if type(p) is str:
                batch.drop(i, self.reason(p))
                continue
            entry = self._entry[inbound]
            if entry is None:
                batch.drop(i, self.reason(f"the chain has no {'outside' if inbound else 'inside'} ingress"))
                continue
            self._deliver(batch, i, entry, data, off, caplen, True, parsed, p, inbound, times[i], 1)

    def _deliver(self, batch, i, k, buf, base, caplen, original, parsed, p, inbound, t_ns, depth):
        """Instance k handles packet p (None: a frame outside the model) on the frame at
        buf[base:base+caplen]; what it emits travels on, depth first in emission order."""
        if depth > self._limit:
            raise ChainError(f"chain {self.chain.name!r}: a packet crossed more than {self._limit} instances "
                             f"(a routing loop through NFs that turn packets around?)")
        if p is None:
            gate = self._passes[k][inbound]
            if gate is None:
                return batch.drop(i, self.reason(f"{self.instances[k]}: outside the model"))
            emitted = ((gate, None),)
        else:
            emitted = self._twins[k].handle(p, t_ns)
            if type(emitted) is str:
                return batch.drop(i, self.reason(f"{self.instances[k]}: {emitted}"))
        hops, last = self._hops[k], len(emitted) - 1
        for j, (gate, out) in enumerate(emitted):
            if j == last:
                frame, at, own = buf, base, original
            else:  # all but the last output travel on copies, taken before the frame is rewritten
                frame, at, own = bytearray(buf[base:base + caplen]), 0, False
            if out is not None and out is not p:
                try:
                    write_fields(frame, at, caplen, parsed, p, out, self.instances[k])
                except FrameError as e:  # not released (nothing was written); the state change stands
                    batch.drop(i, self.reason(e.drop_reason(self.instances[k])))
                    continue
            egress, target, hop_inbound = hops[gate]
            if egress is not None:
                batch.emit(i, egress, k, 0 if out is None else out[8], None if own else bytes(frame))
            else:
                carried = None if out is None else out[:6] + (hop_inbound,) + out[7:]
                self._deliver(batch, i, target, frame, at, caplen, own, parsed, carried, hop_inbound, t_ns, depth + 1)
