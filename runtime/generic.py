"""The generic executor: runs any chain of models (user models included) on real frames by calling
the models' own `handle` through the concrete interpreter (models/concrete.py). The slow path for
new designs, and the reference the fast path and the fallback are held to.

Per input (runtime contract, /work/notes/runtime.md, and README "Runtime"): parse the frame, take
its side, turn it into a model `Packet` (runtime/frames.py), carry it through the chain exactly as
models/chain.py routes (run to completion, depth first in emission order), each instance stepping
its own state with its own seeded choice stream (runtime/rng.py) and the input's time in its clock
ticks; write every output back onto the frame (in place; a copy when one frame gives several
outputs) and hand it to the batch. Frames outside the models pass each instance unchanged."""
from __future__ import annotations

from ..models.chain import ChainError, _carried, initial_chain_state
from ..models.concrete import plain_state, step
from ..traces import parse_frame
from . import frames
from .batch import CLASSIFY, FROM_OUTSIDE
from .rng import InstanceRng, StreamChooser

NS = 1_000_000_000


class GenericPipeline:
    implementation = "generic"

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
        data = memoryview(batch.data)
        for i in range(batch.n):
            off, n = int(batch.off[i]), int(batch.caplen[i])
            frame = data[off:off + n]
            parsed = parse_frame(self.linktype, bytes(frame), int(batch.wirelen[i]))
            side = int(batch.side[i])
            inbound = self.sides.inbound(parsed) if side == CLASSIFY else side == FROM_OUTSIDE
            packet = frames.view(parsed, inbound, int(batch.wirelen[i]))
            if isinstance(packet, str):  # dropped by the runtime (malformed, fragment)
                batch.drop(i, self.reason(packet))
                continue
            entry = self.chain.ingresses.get("outside" if inbound else "inside")
            if entry is None:
                batch.drop(i, self.reason(f"the chain has no {'outside' if inbound else 'inside'} ingress"))
                continue
            t_ns = int(batch.t_ns[i])
            self._deliver(batch, i, entry, frame, True, parsed, packet, inbound, 0, t_ns, 1)
        data.release()

    def _deliver(self, batch, i, instance, frame, in_place, parsed, packet, inbound, label, t_ns, depth):
        """One instance handles one packet; what it emits travels on (depth first, in order)."""
        if depth > 2 * len(self.instances):
            raise ChainError(f"chain {self.chain.name!r}: a packet crossed more than {2 * len(self.instances)} "
                             f"instances (a routing loop through NFs that turn packets around?)")
        member = self.chain.members[instance]
        if packet is None:  # outside the models: passes unchanged, away from the side it came from
            gates = member.inside if inbound else member.outside
            if not gates:
                return batch.drop(i, self.reason(f"{instance}: outside the model"))
            emitted = [(gates[0], None)]
        else:
            ticks = member.nf.ticks_per_second
            result = step(member.nf, self.states[instance], packet.rewrite(label=label), self._choosers[instance],
                          lambda: t_ns * ticks // NS)
            for reason in result.drops:
                batch.drop(i, self.reason(f"{instance}: {reason}"))
            emitted = result.outputs
        last = len(emitted) - 1
        for k, (gate, out) in enumerate(emitted):
            buf, own = (frame, in_place) if k == last else (bytearray(frame), False)
            if out is not None:
                try:
                    frames.write_back(buf, parsed, packet, out, instance)
                except frames.FrameError as e:  # the output is not released; the state change stands
                    batch.drop(i, self.reason(e.drop_reason(instance)))
                    continue
            hop = self.hops[(instance, gate)]
            out_label = label if out is None else out.label
            if hop.egress is not None:
                batch.emit(i, self._egress_id[hop.egress], self._index[instance], out_label,
                           None if own else bytes(buf))
            else:
                carried = None if out is None else _carried(out, hop.inbound)
                self._deliver(batch, i, hop.target, buf, own, parsed, carried, hop.inbound, out_label, t_ns, depth + 1)
