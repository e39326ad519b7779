"""A batch: the unit of I/O and of calls into a pipeline (`Pipeline.process(batch)`).

Inputs are frames back to back in `data` (a bytearray) with their offsets, captured and wire
lengths, times (ns since the run's first input, never decreasing) and sides (0 arrived from the
inside, 1 from the outside, 2 classify by source address). A pipeline fills the outputs in release
order and the drops; the arrays are numpy so that the Cython path reads and writes them as C
arrays (typed memoryviews) and the Python paths as lists of ints alike.

Every output names the input it descends from (`out_in`), its egress, the instance that released
it onto the egress, its label (packet metadata, models/api.py `Packet.label`) and where its bytes
are: in `data` (rewritten in place) or, for a copy, in `extra`."""
from __future__ import annotations

import numpy as np

FROM_INSIDE, FROM_OUTSIDE, CLASSIFY = 0, 1, 2


class Batch:
    __slots__ = ("capacity", "data", "extra", "n", "off", "caplen", "wirelen", "t_ns", "side", "out_in", "out_egress",
                 "out_inst", "out_off", "out_len", "out_label", "out_copy", "drop_in", "drop_reason", "n_out", "n_drop")

    def __init__(self, capacity: int = 32, outputs_per_input: int = 4):
        self.capacity = capacity
        self.data = bytearray()
        self.extra = bytearray()
        self.n = 0
        self.off = np.zeros(capacity, np.int64)
        self.caplen = np.zeros(capacity, np.int32)
        self.wirelen = np.zeros(capacity, np.int32)
        self.t_ns = np.zeros(capacity, np.int64)
        self.side = np.zeros(capacity, np.uint8)
        self._outputs(capacity * outputs_per_input)
        self.drop_in = np.zeros(capacity * outputs_per_input, np.int32)
        self.drop_reason = np.zeros(capacity * outputs_per_input, np.int16)
        self.n_out = self.n_drop = 0

    def _outputs(self, size: int) -> None:
        self.out_in = np.zeros(size, np.int32)
        self.out_egress = np.zeros(size, np.int16)
        self.out_inst = np.zeros(size, np.int16)
        self.out_off = np.zeros(size, np.int64)
        self.out_len = np.zeros(size, np.int32)
        self.out_label = np.zeros(size, np.uint16)
        self.out_copy = np.zeros(size, np.uint8)

    def clear(self) -> None:
        """Empty inputs and outputs (keeps the allocations)."""
        del self.data[:]
        del self.extra[:]
        self.n = self.n_out = self.n_drop = 0

    def add(self, frame, wirelen: int, t_ns: int, side: int) -> None:
        """Appends one input frame (bytes-like)."""
        i = self.n
        if i == self.capacity:
            raise OverflowError("batch is full")
        self.off[i], self.caplen[i], self.wirelen[i] = len(self.data), len(frame), wirelen
        self.t_ns[i], self.side[i] = t_ns, side
        self.data += frame
        self.n = i + 1

    def frame(self, i: int) -> bytes:
        """Input frame i as it is now (rewritten in place after processing)."""
        o = int(self.off[i])
        return bytes(self.data[o:o + int(self.caplen[i])])

    def output(self, k: int) -> bytes:
        """The bytes of output k."""
        o, n = int(self.out_off[k]), int(self.out_len[k])
        return bytes((self.extra if self.out_copy[k] else self.data)[o:o + n])

    def outputs(self):
        """(input index, egress id, instance id, label, frame bytes) of every output, in order."""
        return [(int(self.out_in[k]), int(self.out_egress[k]), int(self.out_inst[k]), int(self.out_label[k]),
                 self.output(k)) for k in range(self.n_out)]

    def drops(self):
        """(input index, reason id) of every drop, in order."""
        return [(int(self.drop_in[k]), int(self.drop_reason[k])) for k in range(self.n_drop)]

    # -- for Python pipelines: append results, growing the arrays when a model emits a lot -------
    def emit(self, i: int, egress: int, inst: int, label: int, copy=None) -> None:
        """Output of input i: its frame as rewritten in place in `data`, or (`copy`: bytes) a copy
        appended to `extra`."""
        k = self.n_out
        if k == len(self.out_in):
            self._grow_outputs()
        if copy is None:
            self.out_off[k], self.out_len[k], self.out_copy[k] = self.off[i], self.caplen[i], 0
        else:
            self.out_off[k], self.out_len[k], self.out_copy[k] = len(self.extra), len(copy), 1
            self.extra += copy
        self.out_in[k], self.out_egress[k], self.out_inst[k], self.out_label[k] = i, egress, inst, label
        self.n_out = k + 1

    def drop(self, i: int, reason: int) -> None:
        k = self.n_drop
        if k == len(self.drop_in):
            self.drop_in = np.resize(self.drop_in, 2 * k)
            self.drop_reason = np.resize(self.drop_reason, 2 * k)
        self.drop_in[k], self.drop_reason[k] = i, reason
        self.n_drop = k + 1

    def _grow_outputs(self) -> None:
        old = (self.out_in, self.out_egress, self.out_inst, self.out_off, self.out_len, self.out_label, self.out_copy)
        self._outputs(2 * len(old[0]))
        for new, was in zip((self.out_in, self.out_egress, self.out_inst, self.out_off, self.out_len,
                             self.out_label, self.out_copy), old):
            new[:len(was)] = was
