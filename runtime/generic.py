"""The generic executor: runs any chain of models (user models included) on real frames by calling
the models' own `handle` through the concrete interpreter (models/concrete.py). The slow path for
new designs, and the reference the fast path and the fallback are held to.

Per input (runtime contract, /work/notes/runtime.md, and README "Runtime"): parse the frame, take
its side, turn it into a model `Packet` (runtime/frames.py), carry it through the chain exactly as
models/chain.py routes (run to completion, depth first in emission order), each instance stepping
its own state with its own seeded choice stream (runtime/rng.py) and the input's time in its clock
ticks; write every output back onto the frame (in place; a copy when one frame gives several
outputs) and hand it to the batch. Frames outside the models pass each instance unchanged.

`compiled_pipeline` is the same executor with the handlers compiled from the same source
(models/compile.py) and run by the fast path's batch loop (runtime/fast.pyx, instances of kind
K_COMPILED): the same outputs, drops, states and choice streams, tens of times faster. It is
what `make_pipeline(generic=True)` takes when the fast path is built and every model compiles;
`GenericPipeline` (interpreting) otherwise, with the reason kept in `not_compiled`."""
from __future__ import annotations

from operator import attrgetter

from ..models.api import PACKET_FIELDS, Packet
from ..models.chain import ChainError, initial_chain_state
from ..models.concrete import plain_state, step
from ..traces import parse_frame
from . import frames
from .batch import CLASSIFY, FROM_OUTSIDE
from .rng import InstanceRng, StreamChooser

NS = 1_000_000_000
_fields_of = attrgetter(*PACKET_FIELDS)  # a packet as frames.write_fields takes it (what write_back builds)
_LENGTH = PACKET_FIELDS.index("length")


class _Instance:
    """What the executor needs of one chain instance, looked up once."""

    __slots__ = ("name", "index", "nf", "ticks", "state", "chooser", "inside", "outside", "hops", "reasons")

    def __init__(self, name, index, member, state, chooser):
        self.name, self.index, self.nf, self.state, self.chooser = name, index, member.nf, state, chooser
        self.ticks = member.nf.ticks_per_second
        self.inside, self.outside = member.inside, member.outside
        self.hops: dict = {}     # gate -> (egress id or None, target _Instance or None, arrives inbound)
        self.reasons: dict = {}  # a drop reason of the model -> the pipeline's reason id


def compiled_pipeline(chain, seed: int = 0, linktype: int = 1, inside=None):
    """(the chain on the fast path's batch loop with every member's handler compiled, None) or
    (None, why not): the fast path is not built (NFPROOF_PUREPYTHON, no Cython build), no C
    compiler, or a model the compiler cannot follow (models.compile.NotCompilable, with its line)."""
    from .. import runtime
    if runtime.IMPLEMENTATION != "fast":
        return None, "the fast path is not built (pure-Python fallback)"
    from ..models.compile import NotCompilable, compiled
    try:
        models = {name: compiled(m.nf) for name, m in chain.members.items()}
    except NotCompilable as e:
        return None, f"not compiled: {e}"
    return runtime.impl.Pipeline(chain, seed, linktype, inside, compiled=models), None


class GenericPipeline:
    implementation = "generic"
    not_compiled = None  # why make_pipeline interprets the models (None: it was not asked to compile)

    def __init__(self, chain, seed: int = 0, linktype: int = 1, inside=None):
        chain.validate()
        self.chain, self.linktype = chain, linktype
        self.sides = frames.Sides(frames.DEFAULT_INSIDE if inside is None else inside)
        self.hops = chain._routes()
        self.instances = tuple(chain.members)
        self.egresses = chain.egress_names
        self._egress_id = {e: k for k, e in enumerate(self.egresses)}
        self._index = {name: k for k, name in enumerate(self.instances)}
        self.states = initial_chain_state(chain)
        self._choosers = {name: StreamChooser(InstanceRng(seed, k)) for k, name in enumerate(self.instances)}
        self.reasons: list[str] = []
        self._reason_id: dict[str, int] = {}
        self._plan = {name: _Instance(name, k, chain.members[name], self.states[name], self._choosers[name])
                      for k, name in enumerate(self.instances)}
        for (name, gate), hop in self.hops.items():
            self._plan[name].hops[gate] = (None if hop.egress is None else self._egress_id[hop.egress],
                                           None if hop.egress is not None else self._plan[hop.target], hop.inbound)
        self._entries = {side: self._plan[name] for side, name in chain.ingresses.items()}
        self._limit = 2 * len(self.instances)

    def reason(self, text: str) -> int:
        rid = self._reason_id.get(text)
        if rid is None:
            rid = self._reason_id[text] = len(self.reasons)
            self.reasons.append(text)
        return rid

    def state(self, instance: str) -> dict:
        """The instance's state as plain dicts, sets and ints (model values)."""
        return plain_state(self.states[instance])

    def process(self, batch) -> None:
        n = batch.n
        offs, caplens, wirelens = batch.off[:n].tolist(), batch.caplen[:n].tolist(), batch.wirelen[:n].tolist()
        sides, times = batch.side[:n].tolist(), batch.t_ns[:n].tolist()
        data = memoryview(batch.data)
        linktype, view_fields, entries, deliver = self.linktype, frames.view_fields, self._entries, self._deliver
        outs, drops = [], []  # batch.emit's and batch.drop's arguments, in order: written at the end
        drop = drops.append
        try:
            for i in range(n):
                off = offs[i]
                frame = data[off:off + caplens[i]]
                wirelen = wirelens[i]
                parsed = parse_frame(linktype, bytes(frame), wirelen)
                side = sides[i]
                inbound = self.sides.inbound(parsed) if side == CLASSIFY else side == FROM_OUTSIDE
                fields = view_fields(parsed, bool(inbound), wirelen)  # frames.view
                if type(fields) is tuple:
                    packet = Packet(*fields)
                elif fields is not None:  # dropped by the runtime (malformed, fragment)
                    drop((i, self.reason(fields)))
                    continue
                else:
                    packet = None
                entry = entries.get("outside" if inbound else "inside")
                if entry is None:
                    drop((i, self.reason(f"the chain has no {'outside' if inbound else 'inside'} ingress")))
                    continue
                deliver(outs, drops, i, entry, frame, True, parsed, packet, inbound, 0, times[i], 1)
        finally:
            data.release()
            _write_results(batch, outs, drops, offs, caplens)

    def _deliver(self, outs, drops, i, inst, frame, in_place, parsed, packet, inbound, label, t_ns, depth):
        """One instance handles one packet; what it emits travels on (depth first, in order)."""
        if depth > self._limit:
            raise ChainError(f"chain {self.chain.name!r}: a packet crossed more than {self._limit} "
                             f"instances (a routing loop through NFs that turn packets around?)")
        if packet is None:  # outside the models: passes unchanged, away from the side it came from
            gates = inst.inside if inbound else inst.outside
            if not gates:
                return drops.append((i, self.reason(f"{inst.name}: outside the model")))
            emitted = [(gates[0], None)]
        else:
            ticks = inst.ticks
            old = _fields_of(packet)  # what the frame carries (before the handler sees the packet)
            # The handler gets `packet` itself: it already holds `label` (the entry's view has label 0; a
            # carried packet the label of the output it is), so packet.rewrite(label=label) would be a copy.
            result = step(inst.nf, inst.state, packet, inst.chooser, lambda: t_ns * ticks // NS)
            if result.drops:
                reasons = inst.reasons
                for reason in result.drops:
                    rid = reasons.get(reason) if type(reason) is str else None
                    if rid is None:
                        rid = self.reason(f"{inst.name}: {reason}")
                        if type(reason) is str:
                            reasons[reason] = rid
                    drops.append((i, rid))
            emitted = result.outputs
            if not emitted:
                return
        last = len(emitted) - 1
        k = 0
        for gate, out in emitted:
            if k == last:
                buf, own = frame, in_place
            else:
                buf, own = bytearray(frame), False
            k += 1
            if out is not None:
                new = _fields_of(out)
                if new != old and (old[:6] != new[:6] or old[_LENGTH] != new[_LENGTH]):  # else write_back writes nothing
                    try:
                        frames.write_fields(buf, 0, len(buf), parsed, old, new, inst.name)  # frames.write_back
                    except frames.FrameError as e:  # the output is not released; the state change stands
                        drops.append((i, self.reason(e.drop_reason(inst.name))))
                        continue
            egress, target, hop_inbound = inst.hops[gate]
            out_label = label if out is None else out.label
            if egress is not None:
                outs.append((i, egress, inst.index, out_label, None if own else bytes(buf)))
            else:
                if out is None:
                    carried = None
                else:  # models.chain._carried: `out` is wrapped already (emit), so only `inbound` changes;
                    carried = out  # `out` is the step's own copy (ConcreteContext.emit), held by nothing else
                    carried.__dict__["inbound"] = hop_inbound
                self._deliver(outs, drops, i, target, buf, own, parsed, carried, hop_inbound, out_label, t_ns, depth + 1)


def _write_results(batch, outs: list, drops: list, offs: list, caplens: list) -> None:
    """batch.emit(*o) for o in outs and batch.drop(*d) for d in drops, in order: array-wise when
    the arrays have room (else one by one, growing them as those do)."""
    k0, j0 = batch.n_out, batch.n_drop
    k1, j1 = k0 + len(outs), j0 + len(drops)
    if k1 > len(batch.out_in):
        for o in outs:
            batch.emit(*o)
    elif outs:
        extra = batch.extra
        out_off, out_len, out_copy = [], [], []
        for i, _, _, _, copy in outs:
            if copy is None:
                out_off.append(offs[i])
                out_len.append(caplens[i])
                out_copy.append(0)
            else:
                out_off.append(len(extra))
                out_len.append(len(copy))
                out_copy.append(1)
                extra += copy
        batch.out_off[k0:k1], batch.out_len[k0:k1], batch.out_copy[k0:k1] = out_off, out_len, out_copy
        batch.out_in[k0:k1] = [o[0] for o in outs]
        batch.out_egress[k0:k1] = [o[1] for o in outs]
        batch.out_inst[k0:k1] = [o[2] for o in outs]
        batch.out_label[k0:k1] = [o[3] for o in outs]
        batch.n_out = k1
    if j1 > len(batch.drop_in):
        for d in drops:
            batch.drop(*d)
    elif drops:
        batch.drop_in[j0:j1] = [d[0] for d in drops]
        batch.drop_reason[j0:j1] = [d[1] for d in drops]
        batch.n_drop = j1
