"""What trace replay reads: a trace (traces/README.md; the conventions of /work/notes/runtime.md
section 8) or a pair of captures, as a `Recording` -- the chain, its inputs (with their side,
arrival time and model view), the observed outputs (with the input each descends from, when
the trace says), and the control events -- plus the chain configured with its parameters.

Interfaces: `ingress:inside` / `ingress:outside` carry the inputs from each side (a plain
`ingress` is classified by source address, runtime.md section 3); `egress:NAME` the outputs of
the chain egress NAME; any other interface (internal links) is counted and not checked.
Arrival times are made non-decreasing (captures can go backwards) and clock readings count from
the run's first input (`t0_ns`). Input errors raise `ReplayInputError` (one line: the file,
where, what, the fix)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..models import lookup
from ..models.api import ModelError, Packet, ParamError
from ..models.chain import Chain
from ..traces import parse_frame
from ..traces.errors import FormatError
from ..traces.reader import _PCAP_MAGICS as PCAP_MAGICS, open_capture
from ..traces.record import CustomBlock, Record
from ..traces.trace import TraceEvent, read_trace
from . import replay_rows
from .replay_rows import WRITES
from .frames import ADDRESS_WRITES, DEFAULT_INSIDE, OUTSIDE, Drop, Sides, observable, view, writable

CLOCK_NAMES = ("now", "clock", "time")


class ReplayInputError(Exception):
    """Bad input to replay: unreadable or corrupt file, unknown chain, a mismatch between the
    trace and the command line. One line, naming the file/field and the fix."""


@dataclass(slots=True)
class Input:
    seq: int
    time_ns: int            # arrival, made non-decreasing
    side: str               # "inside" | "outside"
    view: object            # Packet | OUTSIDE | Drop
    number: int             # packet number in the file (1-based, every packet counted)
    raw_key: tuple | None = None
    lossable: bool = False
    writes: frozenset = ADDRESS_WRITES  # what an output may change in the frame (frames.writable)
    vkey: tuple | None = None  # the view's fields, in Packet's order (a cheap key for the search's memo)


@dataclass(slots=True)
class Output:
    egress: str
    key: tuple              # observable(view) or ("raw", bytes, flow key)
    seq: int | None
    out_index: int | None
    instance: str
    time_ns: int
    number: int             # packet number in the file
    duplicate: bool = False  # repeats an earlier output of the same input on the same egress
    index: int = 0          # position among all observed outputs (trace order)


@dataclass(slots=True)
class Event:
    kind: str
    time_ns: int
    instance: str
    fields: dict
    after_packet: int       # number of packets in the file before it


@dataclass
class Recording:
    path: str
    chain_text: str
    chain: Chain
    params: list
    strategy: str = "none"
    header_fields: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    events: list = field(default_factory=list)
    t0_ns: int = 0
    linktype: int = 1
    annotated: bool = True        # every output names its input (seq)
    other_packets: int = 0        # packets on internal links (not checked)
    foreign_blocks: int = 0       # other tools' custom blocks (skipped)
    output_path: str | None = None

    @property
    def labels(self) -> bool:
        """The trace records each output's label (its run header says so): outputs compare it."""
        return self.header_fields.get("labels") is True

    def flow_of(self, key):
        return key[2] if key[0] == "raw" else key[:5]


def configured_chain(text: str, params: list[str]) -> Chain:
    """The chain `text` (e.g. firewall>nat>lb) with `NF.NAME=VALUE` parameters applied; NF is an
    instance name (nat, nat#2) or an NF's name (every instance of it). ReplayInputError if the
    chain or a parameter is not valid."""
    try:
        plain = Chain.parse(text, lookup)
    except (KeyError, ModelError) as e:
        raise ReplayInputError(f"chain {text!r}: {e.args[0] if e.args else e}") from None
    values: dict[str, dict] = {name: {} for name in plain.members}
    for setting in params:
        m = re.fullmatch(r"\s*([^=\s]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)", setting)
        if not m:
            raise ReplayInputError(f"--param {setting!r}: write NF.NAME=VALUE, e.g. nat.ports=64512")
        target = m.group(1)
        names = [n for n, mem in plain.members.items() if n == target] or \
                [n for n, mem in plain.members.items() if getattr(mem.nf, "name", None) == target]
        if not names:
            raise ReplayInputError(f"--param {setting!r}: the chain {text!r} has no instance or NF {target!r}; "
                                   f"instances: {', '.join(plain.members)}")
        for n in names:
            values[n][m.group(2)] = m.group(3).strip()
    try:
        configured = iter([mem.nf.configure(values[n]) for n, mem in plain.members.items()])
        return Chain.parse(text, lambda ref: next(configured))
    except ParamError as e:
        raise ReplayInputError(str(e)) from None


def _same_chain(a: str, b: str) -> bool:
    return re.sub(r"\s+", "", a) == re.sub(r"\s+", "", b)


class _Builder:
    """Turns packets into Inputs/Outputs as they are read."""

    def __init__(self, rec: Recording, sides: Sides):
        self.rec, self.sides = rec, sides
        self.last_time = None
        self.egresses = set(rec.chain.egress_names)
        self.by_seq: dict = {}      # seq -> list of (egress, key) seen (for duplicates)
        self.outputs = 0
        self.labels = rec.labels

    def add_input(self, seq, time_ns, data, wirelen, linktype, side, number):
        parsed = parse_frame(linktype, data, wirelen)
        if side is None:
            side = "outside" if self.sides.inbound(parsed) else "inside"
        if self.last_time is not None and time_ns < self.last_time:
            time_ns = self.last_time
        self.last_time = time_ns
        v = view(parsed, wirelen, side == "outside")
        if v is OUTSIDE:
            return Input(seq, time_ns, side, v, number, ("raw", bytes(data), parsed.flow_key))
        return Input(seq, time_ns, side, v, number, writes=writable(parsed) if type(v) is Packet else ADDRESS_WRITES)

    def add_output(self, egress, seq, out_index, instance, time_ns, data, wirelen, linktype, number, where,
                   label=None):
        if egress not in self.egresses:
            self._unknown_egress(egress, where)
        parsed = parse_frame(linktype, data, wirelen)
        v = view(parsed, wirelen, False)
        key = observable(v) if not (v is OUTSIDE or isinstance(v, Drop)) else ("raw", bytes(data), parsed.flow_key)
        return self._output(egress, key, seq, out_index, instance, time_ns, number, label)

    def _unknown_egress(self, egress, where):
        raise ReplayInputError(f"{where}: an output on egress {egress!r}, but the chain "
                               f"{self.rec.chain_text!r} has egresses {', '.join(self.rec.chain.egress_names)}; "
                               f"is --chain right?")

    def _output(self, egress, key, seq, out_index, instance, time_ns, number, label=None):
        if self.labels and key[0] != "raw":  # the label the trace recorded beside the frame
            key = key + (label or 0,)
        seen = self.by_seq.setdefault(seq, []) if seq is not None else None
        duplicate = seen is not None and (egress, key) in seen
        if seen is not None:
            seen.append((egress, key))
        self.outputs += 1
        return Output(egress, key, seq, out_index, instance, time_ns, number, duplicate, self.outputs - 1)

    def add_input_row(self, seq, side, row, number):
        """add_input of a replay_rows row (the view's fields taken out of the frame already)."""
        key = row[8]
        if key is None:
            return self.add_input(seq, row[2], row[7], row[6], row[1], side, number)
        if side is None:
            side = "inside" if self.sides.inside_address(4, row[10].to_bytes(4, "big")) else "outside"
        time_ns = row[2]
        if self.last_time is not None and time_ns < self.last_time:
            time_ns = self.last_time
        self.last_time = time_ns
        inbound = side == "outside"
        v = Packet(key[0], key[1], key[2], key[3], key[4], key[5], inbound, key[6])
        return Input(seq, time_ns, side, v, number, writes=WRITES[row[9]],
                     vkey=(key[0], key[1], key[2], key[3], key[4], key[5], inbound, key[6], 0))

    def add_output_row(self, egress, row, number):
        """add_output of a replay_rows row."""
        key = row[8]
        if key is None:
            return self.add_output(egress, row[3], row[4], row[5], row[2], row[7], row[6], row[1], number,
                                   f"{self.rec.path}: packet {number}", row[11])
        if egress not in self.egresses:
            self._unknown_egress(egress, f"{self.rec.path}: packet {number}")
        return self._output(egress, key, row[3], row[4], row[5], row[2], number, row[11])

    def forget_before(self, seq: int) -> None:
        """Duplicates are looked for among the outputs of recent inputs only (memory stays flat)."""
        for old in [k for k in self.by_seq if k < seq]:
            del self.by_seq[old]


def load_trace(path: str, chain_text: str | None = None, params: list[str] | None = None,
               inside=None, progress=None) -> Recording:
    """Read a whole trace into memory. `chain_text` must match the run header's chain (if given);
    `params` add to (and override) the header's; `inside` overrides the header's inside networks."""
    rec, items = open_trace(path, chain_text, params, inside, progress)
    for item in items:
        (rec.inputs if type(item) is Input else rec.outputs if type(item) is Output else rec.events).append(item)
    _finish(rec, rec.header_fields.get("t0_ns"))
    return rec


DUPLICATE_WINDOW = 1 << 16   # inputs back that duplicates are looked for among (streaming)


def open_trace(path: str, chain_text: str | None = None, params: list[str] | None = None, inside=None,
               progress=None):
    """(Recording with the run's description and no packets yet, iterator over its Inputs, Outputs
    and Events in file order): the one way traces are read, streamed. `rec.t0_ns` is set by the
    first input; `rec.foreign_blocks` and the counts when the iterator ends."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic in PCAP_MAGICS:
            raise ReplayInputError(f"{path}: offset 0: not an nfproof trace: a classic pcap capture (traces are pcapng)")
        trace = read_trace(path)
    except FormatError as e:
        raise ReplayInputError(str(e)) from None
    except OSError as e:
        raise ReplayInputError(f"{path}: cannot read: {e.strerror}") from None
    header = trace.header
    if chain_text is not None and not _same_chain(chain_text, header.chain):
        trace.close()
        raise ReplayInputError(f"{path}: the run header names chain {header.chain!r}, --chain says {chain_text!r}; "
                               f"drop --chain or give the trace's")
    fields = header.fields if isinstance(header.fields, dict) else {}
    recorded = fields.get("params", [])
    recorded = [str(p) for p in recorded] if isinstance(recorded, list) else []
    try:
        chain = configured_chain(header.chain, recorded + list(params or []))
    except ReplayInputError:
        trace.close()
        raise
    rec = Recording(str(path), header.chain, chain, recorded + list(params or []), header.strategy, fields)
    t0 = fields.get("t0_ns")
    rec.t0_ns = t0 if isinstance(t0, int) else None
    nets = inside if inside is not None else fields.get("inside") or DEFAULT_INSIDE
    try:
        sides = Sides(nets)
    except ValueError as e:
        trace.close()
        raise ReplayInputError(f"{path}: {e}") from None
    return rec, _items(rec, trace, _Builder(rec, sides), progress)


INGRESS = {"ingress": None, "ingress:inside": "inside", "ingress:outside": "outside"}


def _interface_kind(name: str):
    """(0, egress) for `egress:NAME`, (1, side or None) for an ingress, (2, None) for an internal
    link, (3, None) for an interface named like an ingress that is none."""
    if name.startswith("egress:"):
        return 0, name[7:]
    if name in INGRESS:
        return 1, INGRESS[name]
    if name.startswith("ingress"):
        return 3, None
    return 2, None


def _items(rec: Recording, trace, b: _Builder, progress):
    path, number, inputs_seen = rec.path, 0, 0
    rows = replay_rows.rows(trace)
    kinds: dict = {}
    add_input, add_output = b.add_input_row, b.add_output_row
    try:
        for row in rows:
            if type(row) is not tuple:
                yield Event(row.kind, row.time_ns, row.instance, row.fields, number)
                continue
            number += 1
            if progress and number % 65536 == 0:
                progress(number, rows.offset())
            name = row[0]
            kind = kinds.get(name)
            if kind is None:
                kind = kinds[name] = _interface_kind(name)
            rec.linktype = row[1]
            what = kind[0]
            if what == 0:
                if row[3] is None:
                    rec.annotated = False
                yield add_output(kind[1], row, number)
            elif what == 1:
                seq = row[3] if row[3] is not None else inputs_seen
                inputs_seen += 1
                if rec.t0_ns is None:
                    rec.t0_ns = row[2]
                if inputs_seen % DUPLICATE_WINDOW == 0:
                    b.forget_before(seq - DUPLICATE_WINDOW)
                yield add_input(seq, kind[1], row, number)
            elif what == 3:
                raise ReplayInputError(f"{path}: packet {number} is on interface {name!r}; ingress interfaces are "
                                       f"'ingress', 'ingress:inside' and 'ingress:outside'")
            else:
                rec.other_packets += 1
    except FormatError as e:
        raise ReplayInputError(f"{e} (the trace is corrupt after packet {number}; the first {number} packets "
                               f"were read)") from None
    finally:
        trace.close()
    rec.foreign_blocks = rows.foreign_blocks()


def _finish(rec: Recording, t0) -> None:
    rec.t0_ns = t0 if isinstance(t0, int) else (rec.inputs[0].time_ns if rec.inputs else 0)
    for k, o in enumerate(rec.outputs):
        o.index = k
    seqs = set()
    for u in rec.inputs:
        if u.seq in seqs:
            raise ReplayInputError(f"{rec.path}: packet {u.number}: a second input with seq {u.seq}")
        seqs.add(u.seq)
    rec.inputs.sort(key=lambda u: u.seq)


def load_captures(input_path: str, outputs: list[tuple[str | None, str]], chain_text: str, params=(),
                  inside=None) -> Recording:
    """An input capture (every frame an input, side by source address) and output captures:
    (egress, path) pairs; egress None: a pcapng's `egress:NAME` interfaces name it, else an
    output goes to `inside` if its destination is an inside address, else to `outside`."""
    chain = configured_chain(chain_text, list(params))
    rec = Recording(input_path, chain_text, chain, list(params), "unknown", annotated=False,
                    output_path=", ".join(p for _, p in outputs))
    try:
        sides = Sides(inside or DEFAULT_INSIDE)
    except ValueError as e:
        raise ReplayInputError(str(e)) from None
    b = _Builder(rec, sides)
    for number, (rec_, _) in enumerate(_records(input_path, rec), 1):
        rec.inputs.append(b.add_input(number - 1, rec_.time_ns or 0, rec_.data, rec_.wirelen, rec_.linktype, None,
                                      number))
        rec.linktype = rec_.linktype
    egresses = chain.egress_names
    for egress, path in outputs:
        for number, (r, iface_name) in enumerate(_records(path, rec), 1):
            target = egress
            if target is None and iface_name and iface_name.startswith("egress:"):
                target = iface_name[len("egress:"):]
            if target is None:
                parsed = parse_frame(r.linktype, r.data, r.wirelen)
                to_inside = sides.inside_address(parsed.ip_version, parsed.dst)
                target = "inside" if to_inside and "inside" in egresses else "outside"
            rec.outputs.append(b.add_output(target, None, None, "", r.time_ns or 0, r.data, r.wirelen, r.linktype,
                                            number, f"{path}: packet {number}"))
    _finish(rec, None)
    return rec


def _records(path: str, rec: Recording):
    """(Record, interface name) of every packet of a capture; other tools' blocks skipped."""
    try:
        reader = open_capture(path)
    except FormatError as e:
        raise ReplayInputError(str(e)) from None
    except OSError as e:
        raise ReplayInputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        with reader:
            for item in reader.items() if hasattr(reader, "items") else reader:
                if type(item) is CustomBlock:
                    rec.foreign_blocks += 1
                    continue
                if type(item) is Record:
                    yield item, reader.interfaces[item.interface].name if reader.interfaces else None
    except FormatError as e:
        raise ReplayInputError(str(e)) from None


def lossable_inputs(rec: Recording) -> None:
    """Mark the inputs in flight at a crash (loss-at-failover): those not released when an
    instance failed -- no output of them or of a later input came out before the failure event
    -- that arrived before the next failover event (or before the end, without one)."""
    outputs = sorted((o.number, o.seq) for o in rec.outputs if o.seq is not None)
    for k, failure in enumerate(rec.events):
        if failure.kind != "failure":
            continue
        released = max((seq for number, seq in outputs if number <= failure.after_packet), default=-1)
        recovery = next((e.after_packet for e in rec.events[k + 1:] if e.kind == "failover"), None)
        for u in rec.inputs:
            if u.seq > released and (recovery is None or u.number <= recovery):
                u.lossable = True
