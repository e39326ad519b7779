"""Real failover (issue 8): the driver side of the failover protocol every strategy shares
(DESIGN.md "The failover protocol every strategy shares", models/strategy.py), and the interface
through which a state-management paradigm plugs into the worker processes.

Processes. The driver is the `nfproof run` process. Every chain instance runs as a primary worker
process (`python -m nfproof.runtime.worker`, runtime/worker.py) joined to the driver by a
socketpair; under a stateful strategy each primary has a standby process joined to it by TCP
(any host:port, loopback by default). One spare worker (SPARES when more than one failure is
planned) waits, warmed up, to become the next standby (stateful) or the next fresh instance
(none, stateless). A failure is a SIGKILL.

Per instance the driver keeps the *upstream buffer* (every input not yet covered by the protected
point r, kept for replay), does *duplicate suppression* on the instance's downstream link (the
highest (input, output index) released), injects failures (`--fail NF@PKT`: the primary is
killed when the driver is about to hand it chain input PKT), detects them (a closed socket, or no
message for HEARTBEAT_MISSES heartbeat periods) and fails over: the standby is promoted with the
state S_r, releases the protected outputs the egress has not seen, the driver replays the
buffered inputs > r, and a new standby is attached. Under `none` a fresh instance starts from the
initial state and only the inputs whose outputs were not released are replayed.

Order (models/chain.py: one input at a time, run to completion). A one-instance chain has up to
FailoverSettings.window inputs in flight (default `default_window`; its instance applies them in
order, so nothing changes); a longer chain hands over one chain input at a time (an input going out and one coming back
could otherwise cross at an instance in the wrong order).

Time (DESIGN.md "Time", `--clock pcap`). An instance processes an input at its arrival; after a
failover its replacement processes each input at max(arrival, c + F, its previous time), F the
`--failover-time`, c the crash's time on the capture clock: the arrival of the last input whose
effect the crash left visible (released, protected, or logged), i.e. the crash right after the
primary's last visible event. (The kill comes as input PKT is handed over, but a primary with
inputs still queued has not processed them at their arrival; taking c = a_PKT would stall their
replay beyond F, what no failure-free run may do.) A replayed input whose clock reads were
logged (--log-choices) reuses them.

Trace (traces/README.md): `failure` at c {point, pid, detected_by, released_seq}, `failover` at
c + F {standby, replica_seq (r as a chain input, -1: none), end_ns, crash_ns, failover_time,
detection_ns (kill to closed socket; missed heartbeats: the silence), takeover_ns (from then to
the replacement ready), spare_ready, held, replayed, outputs_lost}, `sync` {seq, input} at each
new protected point, `choice` {seq, name: choose | now, value} for every logged choice and clock
read (--log-choices), and the summary (with failovers, lost inputs, duplicates suppressed).

Interface for a paradigm (stateful: `StandbyBackend` here; stateless: runtime/store.py):

    backend = BACKENDS[paradigm]()            # in every worker process
    handle = backend.open(spec, fresh, info)  # fresh=False: the replacement after a failover
    per input n (1, 2, ... at this instance; replays reuse their n):
        handle.begin(n); models.concrete.step(nf, handle.state, ...); release = handle.end(n, record)
        release True: the outputs of n may be released now; else hold them until protected() >= n
    handle.protected() -> r   handle.flush(wait)   handle.fileno()   handle.log(...)   handle.recover()

The worker (runtime/worker.py) runs that loop for every strategy and releases per `end` and
`protected`; `Policy` says what each strategy's handle must do, so both paradigms agree on it.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import marshal
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

from ..models.api import PACKET_FIELDS, Packet
from ..models.strategy import Strategy
from . import deltas

HEARTBEAT_MISSES = 50     # a primary silent for this many heartbeat periods has failed (a loaded 2-core
                          # machine deschedules a process for 20 ms at times: fewer misses kill live ones)
ASYNC_FLUSH_RECORDS = 64  # async: queued records shipped at the latest when this many are waiting...
ASYNC_FLUSH_SECONDS = 0.001  # ...or when the oldest has waited this long


# -- what a paradigm implements -----------------------------------------------------------------------
@dataclass
class InstanceSpec:
    """What a worker needs to run one chain instance (travels to the worker process as JSON)."""

    chain: str                 # the chain text, e.g. "firewall>nat>lb"
    params: list               # --param settings as given
    instance: str              # the instance name in the chain, e.g. "nat"
    nf: str                    # its model, as models.lookup loads it (models.model_ref: "nat[ports=64512]")
    index: int                 # k: its 0-based position in list(chain.members) (its choice stream)
    seed: int
    generation: int = 0        # 0: the first primary; each standby / fresh instance takes the next
    strategy: str = "none"     # models/strategy.py text, e.g. "stateful.commit:8"
    log_choices: bool = False
    heartbeat_ms: float = 1.0
    options: dict = field(default_factory=dict)  # the paradigm's own (e.g. the store's URL)
    schedule: dict = field(default_factory=dict)  # a schedule's part for this worker (runtime/worker.py)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "InstanceSpec":
        return cls(**json.loads(text))


@dataclass
class Record:
    """What input n left behind at its instance, handed to `Handle.end`: the state change is the
    handle's own (its storages recorded it); the outputs are kept with the protected state until
    they are known released (so a promoted standby can release them)."""

    n: int
    seq: int                   # the chain input it belongs to (for the trace)
    outputs: list              # [(gate, packet tuple)] in emission order
    drops: list                # [reason]
    choices: list              # the values choose() returned, in order
    clocks: list               # the values now() returned, in order
    _out: bytes | None = field(default=None, repr=False, compare=False)

    def wire(self) -> tuple:
        return (self.n, self.seq, self.outputs, self.drops, self.choices, self.clocks)

    def out_message(self) -> bytes:
        """The worker's ("out", n, outputs, drops, choices, clocks) message, marshalled once (the
        driver gets it on release; a standby holds it as it is until the release is known)."""
        if self._out is None:
            self._out = marshal.dumps(("out", self.n, self.outputs, self.drops, self.choices, self.clocks))
        return self._out

    @classmethod
    def from_out_message(cls, seq: int, data: bytes) -> "Record":
        _, n, outputs, drops, choices, clocks = marshal.loads(data)
        return cls(n, seq, outputs, drops, choices, clocks, data)

    @classmethod
    def unwire(cls, t) -> "Record":
        return cls(*t)


@dataclass
class Recovery:
    """What a replacement instance starts from (Handle.recover)."""

    r: int                     # the protected point: the state covers this instance's inputs <= r
    held: list = field(default_factory=list)  # [Record] of inputs <= r whose outputs may be unreleased, in order
    logs: dict = field(default_factory=dict)  # n -> (choices, clocks) logged for inputs > r (--log-choices)


@dataclass(frozen=True)
class Policy:
    """When a strategy protects and releases (models/strategy.py, DESIGN.md's table), as the
    worker and every handle apply it:

    - `flush_every`: the queued records are sent/written when this many are waiting (1: each input);
    - `flush_idle`: also when no input is waiting (commit: opportunistic batches, several in flight);
    - `flush_seconds`: also when the oldest queued record has waited this long (async);
    - `hold`: outputs wait until their record is protected (sync, cache, commit: output commit);
      otherwise they are released as soon as the input is applied, before its state change is sent;
    - `serial`: the next input waits until the previous one is protected (sync, cache)."""

    flush_every: int
    flush_idle: bool = False
    flush_seconds: float | None = None
    hold: bool = False
    serial: bool = False


def configure(spec) -> None:
    """A worker's process-wide settings from its spec: the async shipping interval
    (`nfproof run --async-flush-ms`, in the spec's options)."""
    global ASYNC_FLUSH_SECONDS
    if spec.options.get("async_flush_ms") is not None:
        ASYNC_FLUSH_SECONDS = spec.options["async_flush_ms"] / 1000


def default_window(strategy: Strategy | None) -> int:
    """Inputs in flight at a one-instance chain unless told (`nfproof bench --window`): PIPELINE_WINDOW,
    and under a strategy that holds outputs until their batch is protected (commit:B) COMMIT_WINDOW
    or BATCHES_IN_FLIGHT batches, so the instance goes on with the next inputs while a batch's
    acknowledgement travels. (With 32 in flight commit:32 waited for every round trip, at 0.7 of
    none's throughput, and commit:8 at 0.84; with 128 both were at 0.91-0.99.)"""
    p = policy(strategy) if strategy is not None else None
    if p is None or not p.hold or p.serial:
        return PIPELINE_WINDOW
    return max(COMMIT_WINDOW, BATCHES_IN_FLIGHT * p.flush_every)


def policy(strategy: Strategy) -> Policy:
    mode, param = strategy.mode, strategy.param
    if mode in ("sync", "cache"):
        return Policy(1, hold=True, serial=True)
    if mode == "commit":
        return Policy(param, flush_idle=True, hold=True)
    if mode in ("checkpoint", "batch"):
        return Policy(param)
    if mode == "async":
        return Policy(ASYNC_FLUSH_RECORDS, flush_seconds=ASYNC_FLUSH_SECONDS)
    raise ValueError(f"strategy {strategy} protects nothing: it has no policy")


class Handle(ABC):
    """One instance's protected state, as its primary worker uses it. Inputs are numbered 1, 2, ...
    at the instance (`n`); after a failover the replacement gets the inputs > r again with their
    numbers, then new ones."""

    state: dict                # the storages models.concrete.step runs the handler on
    policy: Policy
    before_ship = None         # set by the worker: called before a state change is sent or written
                               # (it writes the outputs released so far: they go out first)

    def begin(self, n: int) -> None:
        """Input n starts (its handler runs next on `state`)."""

    @abstractmethod
    def end(self, n: int, record: Record) -> bool:
        """Input n's handler is done: its state change is queued or sent as the policy says. True:
        its outputs may be released now; False: hold them until protected() >= n."""

    @abstractmethod
    def protected(self) -> int:
        """r: the highest n whose state change the standby / store acknowledged (0: none). Reads
        the acknowledgements that have arrived; never blocks."""

    @abstractmethod
    def flush(self, wait: bool = False) -> int:
        """Send every queued state change now (closing an open batch early); with `wait`, wait for
        their acknowledgements. Returns protected()."""

    def fileno(self) -> int | None:
        """A descriptor that becomes readable when acknowledgements arrive (the worker waits on it
        with select); None: the worker polls protected() every heartbeat period."""
        return None

    def readable(self) -> None:
        """fileno() is readable; the worker calls protected() next. A handle whose protected()
        reads only when it expects something reads here (so that a closed link is found)."""

    def pending_since(self) -> float | None:
        """When (time.monotonic()) the oldest state change not yet sent was queued; None if none
        is. The worker flushes once it is `policy.flush_seconds` old."""
        return None

    def log(self, n: int, record: Record) -> None:
        """--log-choices: send input n's choices and clock reads now (never batched); they are
        acknowledged before any output of n is released (logged() >= n)."""
        raise NotImplementedError(f"{type(self).__name__} cannot log choices (--log-choices)")

    def logged(self) -> int:
        """The highest n whose logged choices were acknowledged."""
        return 0

    def released(self, n: int) -> None:
        """The outputs of inputs <= n were released: what is held for them may be forgotten."""

    @abstractmethod
    def recover(self) -> Recovery:
        """For a handle opened with fresh=False: where the state it holds stands."""

    def info(self) -> dict:
        """What a replacement's `open` needs to find this instance's state (JSON values), e.g. a
        store's life token; the driver keeps it and hands it to the replacement."""
        return {}

    def close(self) -> None:
        pass


class Backend(ABC):
    """A state-management paradigm: where protected state lives."""

    paradigm = ""

    @classmethod
    def serve(cls, strategy: Strategy, settings: dict) -> tuple[dict, object]:
        """Driver side, once per run before any worker starts: e.g. start a store server.
        Returns (options every worker's spec carries, a `stop()` callable or None)."""
        return {}, None

    @abstractmethod
    def open(self, spec: InstanceSpec, fresh: bool, info: dict | None = None) -> Handle:
        """Worker side: the handle of spec's instance. fresh=True: the initial state; False: a
        replacement after a failover (recover() says what it holds), `info` = the failed
        instance's Handle.info()."""


BACKENDS = {"stateful": "nfproof.runtime.failover:StandbyBackend",
            "stateless": "nfproof.runtime.store:StoreBackend"}


def backend_class(strategy: Strategy) -> type[Backend]:
    paradigm = strategy.name.split(".", 1)[0]
    module, _, name = BACKENDS[paradigm].partition(":")
    return getattr(importlib.import_module(module), name)


# -- the wire: length-prefixed marshal messages ---------------------------------------------------------
_LEN = struct.Struct("<I")
RECV_BYTES = 1 << 18  # read at most this much at once (more waits for the next read)


class Conn:
    """A message connection over a stream socket: `send(tuple)` (or `queue` several, then `flush`:
    one write, so that many small messages do not fill the socket's buffer with per-write
    overhead while the peer is busy sending too), and `read()` -> every complete message that
    has arrived (non-blocking after select said readable); `closed` once the peer is gone (EOF or
    reset)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.out = bytearray()
        self.closed = False
        self.chunk = memoryview(bytearray(RECV_BYTES))  # every read lands here: recv(n) would allocate
        # n bytes each time (glibc maps a fresh region above 128 KiB: mmap, page faults, mremap, munmap)

    def fileno(self) -> int:
        return self.sock.fileno()

    def queue(self, message: tuple) -> None:
        self.queue_marshalled(marshal.dumps(message))

    def queue_marshalled(self, data: bytes) -> None:
        """A message already marshalled (e.g. Record.out_message)."""
        self.out += _LEN.pack(len(data))
        self.out += data

    def flush(self) -> None:
        if self.out:
            out, self.out = self.out, bytearray()
            self.sock.sendall(out)

    def send(self, message: tuple) -> None:
        self.queue(message)
        self.flush()

    def read(self, nowait: bool = False) -> list:
        """The messages that arrived (reads once; call when readable, or with `nowait`: [] when
        nothing has, without a select first)."""
        try:
            got = self.sock.recv_into(self.chunk, RECV_BYTES, socket.MSG_DONTWAIT if nowait else 0)
        except (ConnectionResetError, BrokenPipeError):
            got = 0
        except BlockingIOError:
            return []
        if not got:
            self.closed = True
        buf = self.buf
        buf += self.chunk[:got]
        out, at, end = [], 0, len(buf)
        with memoryview(buf) as view:
            while end - at >= 4:
                (size,) = _LEN.unpack_from(buf, at)
                if end - at - 4 < size:
                    break
                out.append(marshal.loads(view[at + 4:at + 4 + size]))
                at += 4 + size
        del buf[:at]
        return out

    def wait(self, timeout: float | None) -> list:
        """The messages that arrive within `timeout` seconds (at least one, unless it passes)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return self.read() if ready else []

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- the stateful paradigm: a standby process joined to its primary by TCP ----------------------------
def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (PORT 0: any free port); ValueError naming the fix."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:0, port 0 = any free port)")
    return host.strip("[]"), int(port)


class StandbyLink(Handle):
    """The primary's end of the replication link (stateful.*). Its `state` records every write as
    a delta (runtime/deltas.py); `end` queues input n's record (outputs, drops, choices, clock
    reads) and ships the queue as the policy says, in one message: ("rec", last n, the deltas of
    every queued input at once (each entry's value after the last of them), the records whose
    outputs may still be unreleased as one marshalled list of (n, seq, the marshalled out message)
    (None if there are none; the standby keeps it as it is), the released point). The standby applies a message whole and
    acknowledges what it read with the highest input its state covers. Until `connect`, records
    queue up. `before_ship`, if set, is called before anything is shipped (the worker writes the
    outputs it released first: they are out before the state change that follows them)."""

    def __init__(self, nf_cls, strategy: Strategy, state: dict | None = None, log=None, r: int = 0):
        self.policy = policy(strategy)
        self.log_ = log if log is not None else deltas.DeltaLog()
        self.state = state if state is not None else deltas.recording_state(nf_cls, self.log_)
        self.conn: Conn | None = None
        self.queue: list = []       # records not shipped yet
        self.queued_at: float | None = None
        self.r = self.base = self.shipped = r  # acknowledged protected point; base: what the snapshot covered
        self.attached = False       # the standby acknowledged the snapshot
        self._logged = self._log_sent = r
        self._released = 0
        self.before_ship = None

    def connect(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        """Join the standby at `address` and send it the whole state once (covering inputs <= r)."""
        sock = socket.create_connection(address, timeout=timeout)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Conn(sock)
        self.conn.send(("snap", self.base, deltas.snapshot(self.state)))
        if self.queue:
            self.flush()

    def end(self, n: int, record: Record) -> bool:
        self.queue.append((n, record.seq, record.out_message()))  # outputs too: the standby releases
        # those of protected inputs the primary did not release (DESIGN.md, the protocol); the deltas
        # are taken when the batch is shipped
        if self.queued_at is None:
            self.queued_at = time.monotonic()
        if len(self.queue) >= self.policy.flush_every:
            self._ship()  # written with the next protected() or flush(): a round's batches in one write
        return not self.policy.hold

    def pending_since(self) -> float | None:
        """When the oldest unshipped record was queued (monotonic), None if none is."""
        return self.queued_at

    def _ship(self) -> None:
        """The queued records as one message, queued on the link (not written yet)."""
        if self.queue and self.conn is not None:
            if self.before_ship is not None:
                self.before_ship()
            released, last = self._released, self.queue[-1][0]
            held = self.queue if self.queue[0][0] > released else [w for w in self.queue if w[0] > released]
            self.conn.queue(("rec", last, self.log_.take(), marshal.dumps(held) if held else None, released))
            self.shipped = last
            self.queue, self.queued_at = [], None

    def _write(self) -> None:
        """Writes what is queued on the link; a standby that is gone leaves it closed (the worker
        reports that the instance is not protected)."""
        try:
            self.conn.flush()
        except OSError:
            self.conn.closed = True

    def flush(self, wait: bool = False) -> int:
        self._ship()
        self.protected()  # writes what is shipped
        if wait:
            while self.conn is not None and not self.conn.closed and self.r < self.shipped:
                self._take(self.conn.wait(1.0))
        return self.r

    def protected(self) -> int:
        """Also writes the batches end() shipped since the last call (then it does not read: their
        acknowledgement cannot be there yet; select finds any other). Otherwise reads only while an
        acknowledgement is due (the snapshot's, a shipped batch's, a log's): nothing else comes."""
        if self.conn is not None and not self.conn.closed:
            if self.conn.out:
                self._write()
            elif self.r < self.shipped or not self.attached or self._logged < self._log_sent:
                self._take(self.conn.read(nowait=True))
        return self.r

    def readable(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self._take(self.conn.read(nowait=True))

    def _take(self, messages) -> None:
        for m in messages:
            if m[0] == "ack":
                self.r = max(self.r, m[1])
                self.attached = True
            elif m[0] == "logack":
                self._logged = max(self._logged, m[1])

    def fileno(self) -> int | None:
        return self.conn.fileno() if self.conn is not None and not self.conn.closed else None

    def log(self, n: int, record: Record) -> None:
        if self.conn is None:
            raise RuntimeError("--log-choices: no standby attached yet")
        self.conn.send(("log", n, record.choices, record.clocks))
        self._log_sent = max(self._log_sent, n)

    def logged(self) -> int:
        return self._logged

    def released(self, n: int) -> None:
        self._released = max(self._released, n)

    def recover(self) -> Recovery:
        return Recovery(self.base)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Replica:
    """The standby's side: listens for its primary, applies what arrives to its own copy of the
    state, acknowledges every message with the highest input the copy covers (r), keeps the
    records whose outputs are held (until the primary says they were released) and the logged
    choices of inputs > r. `promote()` takes over: the rest of what the dead primary sent is read,
    and the state, r, the held records and the logs are handed on."""

    def __init__(self, nf_cls, listen: tuple[str, int]):
        self.nf_cls = nf_cls
        self.log_ = deltas.DeltaLog()
        self.state = deltas.recording_state(nf_cls, self.log_)
        self.listener = socket.create_server(listen, reuse_port=False)
        self.address = self.listener.getsockname()[:2]
        self.conn: Conn | None = None
        self.r = 0
        self.held: deque = deque()  # (last n, marshalled [(n, seq, marshalled out message)]) per batch, in order
        self.logs: dict = {}        # n -> (choices, clocks)
        self.released = 0

    def fileno(self) -> int:
        return self.conn.fileno() if self.conn is not None else self.listener.fileno()

    def readable(self) -> None:
        """Call when fileno() is readable: accepts the primary, or applies what it sent."""
        if self.conn is None:
            sock, _ = self.listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = Conn(sock)
            return
        messages = self.conn.read()
        self._apply(messages)

    def _apply(self, messages) -> None:
        acks = False
        for m in messages:
            kind = m[0]
            if kind == "snap":
                self.state = deltas.recording_state(self.nf_cls, self.log_)
                deltas.apply(self.state, m[2])
                self.r = m[1]
                acks = True
            elif kind == "rec":
                _, last, changes, held, released = m
                if changes:
                    deltas.apply(self.state, changes)
                self.r = last
                if held is not None:
                    self.held.append((last, held))
                self._forget(released)
                acks = True
            elif kind == "log":
                self.logs[m[1]] = (m[2], m[3])
                if not self.conn.closed:
                    self._send(("logack", m[1]))
        if acks and not self.conn.closed:
            self._send(("ack", self.r))
        if self.logs:
            for n in [n for n in self.logs if n <= self.r]:
                del self.logs[n]

    def _send(self, message) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the primary is gone; what arrived still counts
            self.conn.closed = True

    def _forget(self, released: int) -> None:
        self.released = max(self.released, released)
        held = self.held  # a batch goes once all of its records were released (promote filters the rest)
        while held and held[0][0] <= self.released:
            held.popleft()

    def promote(self, timeout: float = 2.0) -> Recovery:
        """Reads what the primary sent until its connection closes (it is dead), then where the
        copy stands."""
        deadline = time.monotonic() + timeout
        while self.conn is not None and not self.conn.closed and time.monotonic() < deadline:
            self._apply(self.conn.wait(max(0.0, deadline - time.monotonic())))
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
        held = [Record.from_out_message(seq, data) for _, batch in self.held for n, seq, data in marshal.loads(batch)
                if self.released < n <= self.r]
        return Recovery(self.r, held, {n: v for n, v in self.logs.items() if n > self.r})

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()


class StandbyBackend(Backend):
    """stateful.*: the state lives in the instance; a standby process holds a copy."""

    paradigm = "stateful"

    def open(self, spec: InstanceSpec, fresh: bool, info: dict | None = None) -> Handle:
        if not fresh:
            raise ValueError("a stateful replacement is a promoted standby (worker.py), not opened afresh")
        from ..models import lookup
        return StandbyLink(lookup(spec.nf), Strategy.parse(spec.strategy))


# -- the driver ---------------------------------------------------------------------------------------
STORE = "store"           # --fail store@PKT: the stateless strategies' store, not an instance
STORE_FAILOVER = "store-failover"  # --fail store-failover@PKT: its lagging replica promoted
STORE_KILL = "store-kill"  # --fail store-kill@PKT: it dies for good (the run stops with the store's error)
STORE_LAG_INPUTS = 16     # ... which stopped receiving this many chain inputs before
PIPELINE_WINDOW = 32      # inputs in flight at a one-instance chain (longer chains: one chain input at a time)
COMMIT_WINDOW = 128       # ...under a strategy whose outputs wait for their batch: several batches in flight,
BATCHES_IN_FLIGHT = 4     # at least this many
START_SECONDS = 60.0      # a worker must say hello within this (imports on a loaded machine)
REPLY_SECONDS = 30.0
SWEEP_SECONDS = 0.005     # how often the driver reads idle primaries (heartbeats, a closed socket)
SPARES = 2                # spares kept when more than one failure is planned: a second crash soon after the
                          # first finds one started (a spare takes ~0.2 s of imports to start)


class RunFailed(RuntimeError):
    """The run could not go on (a worker reported a model error, a standby vanished, ...)."""


def _die_with_parent() -> None:  # preexec_fn: the worker gets SIGKILL when the driver dies
    import ctypes
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerProcess:
    """A worker process (runtime/worker.py) and the driver's end of its socketpair. Messages read
    ahead of the one being waited for stay in `inbox`, in order."""

    def __init__(self, role: str, spec: InstanceSpec, listen: tuple[str, int] | None = None):
        ours, theirs = socket.socketpair()
        args = [sys.executable, "-m", "nfproof.runtime.worker", "--fd", str(theirs.fileno()), "--role", role,
                "--spec", spec.to_json()]
        if listen is not None:
            args += ["--listen", f"{listen[0]}:{listen[1]}"]
        # NFPROOF_PUREPYTHON: a worker uses neither pipeline; the fallback's import is the lighter
        # (no numpy), and a smaller process dies, and closes its sockets, sooner
        self.popen = subprocess.Popen(args, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                      preexec_fn=_die_with_parent, env={**os.environ, "NFPROOF_PUREPYTHON": "1"})
        theirs.close()
        self.pid, self.role, self.spec = self.popen.pid, role, spec
        self.conn = Conn(ours)
        self.inbox: deque = deque()
        self.last_heard = time.monotonic()
        self.address: tuple | None = None
        self.said_hello = False
        self.closed_at: int | None = None  # perf_counter_ns when its socket was seen closed
        self.cpu0 = self.cpu_end = None

    def fileno(self) -> int:
        return self.conn.fileno()

    def send(self, message: tuple, now: bool = True) -> bool:
        """False if the worker is gone. now=False: queued until `flush` (before the driver waits)."""
        try:
            self.conn.queue(message)
            if now:
                self.conn.flush()
            return True
        except OSError:
            self.gone()
            return False

    def flush(self) -> None:
        try:
            self.conn.flush()
        except OSError:
            self.gone()

    def gone(self) -> None:
        """A write found the worker gone: what it said before it went is read now (else the failover
        would start before its last words, e.g. a store failure, were seen)."""
        self.conn.closed = True
        while self.poll(nowait=True):
            pass

    def poll(self, nowait: bool = False) -> bool:
        messages = self.conn.read(nowait)
        if self.conn.closed and self.closed_at is None:
            self.closed_at = time.perf_counter_ns()
        if messages:
            self.last_heard = time.monotonic()
        for m in messages:
            if m[0] == "hello":
                self.said_hello, self.address = True, (m[3], m[4]) if m[3] is not None else None
        self.inbox.extend(messages)
        return bool(messages)

    def expect(self, kind: str, timeout: float = REPLY_SECONDS) -> tuple:
        """The first message of `kind` (others stay queued); RunFailed if the worker dies first."""
        deadline = time.monotonic() + timeout
        self.flush()
        while True:
            for m in self.inbox:
                if m[0] == kind:
                    self.inbox.remove(m)
                    return m
                if m[0] in ("error", "store-failed"):
                    raise RunFailed(m[1])
            if self.conn.closed:
                raise RunFailed(f"a {self.role} worker (pid {self.pid}) exited before sending {kind!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunFailed(f"a {self.role} worker (pid {self.pid}) did not send {kind!r} within {timeout:g} s")
            ready, _, _ = select.select([self.conn.sock], [], [], left)
            if ready:
                self.poll()

    def greeted(self) -> None:
        """Waits for the worker's hello, unless it came already."""
        if not self.said_hello:
            self.expect("hello", START_SECONDS)
        self.inbox = type(self.inbox)(m for m in self.inbox if m[0] != "hello")
        if self.cpu0 is None:
            self.mark_cpu()

    def cpu(self) -> float | None:
        """Its CPU time so far (user + system, s) from /proc; None once it is gone."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def mark_cpu(self) -> None:
        """Starts counting its CPU time (after start-up)."""
        self.cpu0 = self.cpu()

    def cpu_used(self) -> float:
        """CPU time since mark_cpu, up to now or to its kill."""
        end = self.cpu_end if self.cpu_end is not None else self.cpu()
        return max(0.0, end - self.cpu0) if end is not None and self.cpu0 is not None else 0.0

    def stop(self, grace: float = 2.0) -> None:
        if self.popen.poll() is None:
            self.send(("stop",))
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.conn.close()


@dataclass
class PlannedFailure:
    instance: str
    seq: int                   # kill the primary when it is about to be handed chain input >= seq
    done: bool = False
    cut: bool = False          # store-failover: the replica stopped receiving

    def __str__(self) -> str:
        return f"{self.instance}@{self.seq}"


@dataclass
class FailoverSettings:
    strategy: Strategy | None              # None: `none`
    log_choices: bool = False
    replay_input: bool = True
    dedup: bool = True
    failures: list = field(default_factory=list)   # [PlannedFailure]
    heartbeat_ms: float = 1.0
    failover_ns: int = 1_000_000_000       # F: the failover's duration on the capture clock
    standby: tuple = ("127.0.0.1", 0)      # where standbys listen (port 0: any free; else port, port+1, ...)
    backend: dict = field(default_factory=dict)  # the paradigm's settings for Backend.serve (e.g. redis URL)
    schedule: object = None                # runtime/schedule.py Schedule: forced choices and crash (--schedule)
    window: int | None = None              # inputs in flight at a one-instance chain (None: default_window)
    async_flush_ms: float | None = None    # async: ship queued state changes at the latest after this (default 1 ms)

    @property
    def paradigm(self) -> str:
        return "none" if self.strategy is None else self.strategy.name.split(".", 1)[0]

    def text(self) -> str:
        """The run header's strategy: e.g. `stateful.commit:8 --log-choices`."""
        words = [str(self.strategy) if self.strategy is not None else "none"]
        words += [flag for flag, on in (("--log-choices", self.log_choices), ("--no-replay-input", not self.replay_input),
                                        ("--no-dedup", not self.dedup)) if on]
        return " ".join(words)


@dataclass(slots=True)
class Hop:
    """A packet handed to an instance: what is needed to route its outputs and to replay it."""

    seq: int                   # the chain input
    n: int                     # its number at the instance
    frame: bytes               # the frame as handed over
    parsed: object             # the chain input's parse (frames.write_back needs it)
    packet: object             # the model packet handed over (models.api.Packet)
    wire: tuple                # the packet as sent (label set), for replays
    label: int
    depth: int
    arrival: int               # the chain input's time, ns since the run's first input
    src: tuple                 # the chain input (data, wirelen)
    done: bool = False         # its outputs were released


class Running:
    """One chain instance of the run, as the driver sees it."""

    def __init__(self, name: str, k: int, member):
        self.name, self.k, self.member = name, k, member
        self.generation = 0
        self.primary: WorkerProcess | None = None
        self.standby: WorkerProcess | None = None
        self.attached = True
        self.next_n = 1
        self.hops: dict = {}               # n -> Hop: the upstream buffer (and routing of what is not released)
        self.arrivals: dict = {}           # n -> (seq, arrival ns) for the crash time and the trace
        self.released = 0                  # highest n whose outputs came back
        self.r = 0                         # highest n covered by protected state
        self.last_out = (0, -1)            # duplicate suppression: highest (n, output index) let through
        self.floor: int | None = None      # after a failover: its end (ns since the first input)
        self.prev = 0                      # the replacement's previous processing time
        self.info: dict = {}
        self.killed_at: int | None = None  # perf_counter_ns of the kill, while one is being detected
        self.cause = ""
        self.suspected = False
        self.busy = 0                      # hops handed over whose outputs have not come back
        self.silence_ns = 0                # how long it had been silent when heartbeats were missed


class FailoverDriver:
    """Runs a chain on a Source with every instance in worker processes (see the module
    docstring); `run(source)` returns executor.RunStats, `failovers` the measured failovers."""

    def __init__(self, chain, chain_text: str, params: list, seed: int, settings: FailoverSettings,
                 linktype: int = 1, inside=None, recorder=None, clock: str = "pcap", batch: int = 32, progress=None,
                 sinks=()):
        from .frames import DEFAULT_INSIDE, Sides  # the driver's frame handling: not imported by workers
        chain.validate()
        self.sinks = list(sinks)  # ports the outputs also leave on (runtime/ports.py: live interfaces)
        self.chain, self.chain_text, self.params, self.seed = chain, chain_text, list(params), seed
        self.settings, self.linktype, self.recorder, self.clock = settings, linktype, recorder, clock
        self.batch, self.progress = batch, progress
        self.sides = Sides(DEFAULT_INSIDE if inside is None else inside)
        self.routes = chain._routes()
        self.egresses = chain.egress_names
        self.instances = {name: Running(name, k, m) for k, (name, m) in enumerate(chain.members.items())}
        self.window = max(1, settings.window or default_window(settings.strategy)) if len(self.instances) == 1 else 1
        self.period = settings.heartbeat_ms / 1000
        self.spares: deque = deque()       # started spare workers, oldest first
        self.spares_wanted = 1             # how many are kept (topped up after each failover)
        self.workers: list[WorkerProcess] = []     # every process started (all are stopped at the end)
        self.options: dict = {}
        self.stop_backend = None
        self.pending: dict = {}            # chain input seq -> hops in flight
        self.started: dict = {}            # chain input seq -> perf_counter_ns when it entered
        self.in_flight = 0
        self.out_count: dict = {}          # seq -> outputs recorded so far (out_index)
        self.failovers: list[dict] = []
        self.store_failures: list[dict] = []
        self.failing = False
        self.next_sweep = 0.0
        self.t0 = None
        self.wall0 = None
        self.standbys_started = 0
        self.lost = self.suppressed = 0
        self.digest = hashlib.sha256()
        self.drops: Counter = Counter()
        self.by_egress = dict.fromkeys(self.egresses, 0)
        self.latencies: list = []
        self.packets_out = self.bytes_out = 0

    # -- processes
    def spec(self, running: Running | None, generation: int) -> InstanceSpec:
        from ..models import model_ref
        s = self.settings
        return InstanceSpec(self.chain_text, self.params, running.name if running else "",
                            model_ref(running.member.nf) if running else "", running.k if running else -1,
                            self.seed, generation, str(s.strategy) if s.strategy else "none", s.log_choices,
                            s.heartbeat_ms, self.options,
                            s.schedule.part(running.name, generation) if s.schedule and running else {})

    def start_worker(self, role: str, spec: InstanceSpec, listen=None) -> WorkerProcess:
        w = WorkerProcess(role, spec, listen)
        self.workers.append(w)
        return w

    def standby_address(self) -> tuple[str, int]:
        host, port = self.settings.standby
        self.standbys_started += 1
        return host, port + self.standbys_started - 1 if port else 0

    def start(self) -> None:
        s = self.settings
        if s.strategy is not None:
            self.options, self.stop_backend = backend_class(s.strategy).serve(s.strategy, dict(s.backend))
        if s.async_flush_ms is not None:
            self.options = dict(self.options, async_flush_ms=s.async_flush_ms)
        for x in self.instances.values():
            x.primary = self.start_worker("primary", self.spec(x, 0))
            if s.paradigm == "stateful":
                x.standby = self.start_worker("standby", self.spec(x, 1), self.standby_address())
        if s.failures or s.schedule is not None:
            self.spares_wanted = SPARES if len(s.failures) > 1 else 1
            for _ in range(self.spares_wanted):
                self.spawn_spare()
        for x in self.instances.values():
            x.primary.expect("hello", START_SECONDS)
            if x.standby is not None:
                x.standby.expect("hello", START_SECONDS)
                x.primary.send(("attach", *x.standby.address))
        for x in self.instances.values():
            if x.standby is not None:
                x.primary.expect("attached")
            x.attached = True
        for spare in self.spares:  # started and idle before the first input: no start-up in the measurements
            spare.greeted()

    def spawn_spare(self) -> None:
        self.spares.append(self.start_worker("spare", self.spec(None, 0)))

    def spares_ready(self) -> bool:
        """Whether a spare has started (said hello); reads the hellos that came, without waiting."""
        for w in self.spares:
            if not w.said_hello and select.select([w], [], [], 0)[0]:
                w.poll()
        return any(w.said_hello for w in self.spares)

    def take_spare(self) -> WorkerProcess:
        """A started spare if there is one, else the oldest (waiting for its hello), else a new one."""
        if not self.spares:
            self.spawn_spare()
        spare = next((w for w in self.spares if w.said_hello), self.spares[0])
        self.spares.remove(spare)
        spare.greeted()
        return spare

    def stop(self) -> None:
        """Every worker told to stop, waited for (its socket closes as it exits), killed if it lingers."""
        for w in self.workers:
            if w.popen.poll() is None:
                w.send(("stop",))
        deadline = time.monotonic() + 2.0
        waiting = [w for w in self.workers if not w.conn.closed]
        while waiting and time.monotonic() < deadline:
            for w in select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))[0]:
                w.poll()
            waiting = [w for w in waiting if not w.conn.closed]
        for w in self.workers:
            w.stop(grace=0.5)
        if self.stop_backend is not None:
            self.stop_backend()

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    # -- the run
    def run(self, source):
        from ..traces import parse_frame
        from . import frames
        from .batch import CLASSIFY, FROM_INSIDE, FROM_OUTSIDE
        from .executor import RunStats, percentiles
        stats = RunStats("generic")
        perf = time.perf_counter_ns
        run_start = perf()
        last, seq, error = None, 0, None
        cpu0 = None
        try:
            self.start()
            cpu0 = time.process_time()
            for w in self.workers:
                w.mark_cpu()
            while True:
                frames_in = source.receive(self.batch)
                if not frames_in:
                    break
                for data, wirelen, t, side in frames_in:
                    if t is None or (last is not None and t < last):
                        t = last if last is not None else 0
                    last = t
                    if self.t0 is None:
                        self.t0, self.wall0 = t, time.monotonic_ns()
                        if self.settings.schedule is not None:  # the clock's origin the schedule was made for
                            self.t0 = self.settings.schedule.origin(t)
                        if self.recorder is not None:
                            self.recorder.begin(self.linktype, self.egresses, self.t0)
                    parsed = parse_frame(self.linktype, data, wirelen)
                    inbound = self.sides.inbound(parsed) if side == CLASSIFY else side == FROM_OUTSIDE
                    if self.recorder is not None:
                        self.recorder.input(seq, (data, wirelen), t, FROM_OUTSIDE if inbound else FROM_INSIDE)
                    stats.packets_in += 1
                    stats.bytes_in += wirelen
                    self.enter(seq, data, wirelen, parsed, inbound, t - self.t0, frames)
                    seq += 1
                    while self.in_flight >= self.window:
                        self.pump(self.period)
                for x in self.instances.values():
                    x.primary.flush()
                if self.progress is not None:
                    self.progress(stats.packets_in, *source.progress())
            while self.in_flight:
                self.pump(self.period)
        except BaseException as e:
            error = e
            raise
        finally:
            if cpu0 is not None:  # the CPU time of every process once all were up (not their start-up)
                stats.process_seconds = time.process_time() - cpu0 + sum(w.cpu_used() for w in self.workers)
            try:
                self.stop()
            finally:
                stats.run_seconds = (perf() - run_start) / 1e9
                stats.process_wall_seconds = stats.run_seconds
                stats.packets_out, stats.bytes_out = self.packets_out, self.bytes_out
                stats.dropped = dict(sorted(self.drops.items(), key=lambda rc: (-rc[1], rc[0])))
                stats.by_egress = dict(self.by_egress)
                if self.packets_out:
                    stats.outputs_sha256 = self.digest.hexdigest()
                stats.latency_ns = percentiles([(ns, 1) for ns in self.latencies])
                if self.recorder is not None:
                    summary = stats.summary()
                    summary.update(failovers=len(self.failovers), lost=self.lost, duplicates_suppressed=self.suppressed)
                    if error is not None:
                        summary["error"] = str(error) or type(error).__name__
                    self.recorder.close(summary, self.egresses, self.linktype)
        return stats

    def enter(self, seq, data, wirelen, parsed, inbound, arrival, frames) -> None:
        """Chain input seq at the chain ingress (runtime contract: drops at the ingress first)."""
        packet = frames.view(parsed, inbound, wirelen)
        if isinstance(packet, str):
            self.drops[packet] += 1
            return
        entry = self.chain.ingresses.get("outside" if inbound else "inside")
        if entry is None:
            self.drops[f"the chain has no {'outside' if inbound else 'inside'} ingress"] += 1
            return
        self.fail_store(seq, arrival)
        self.started[seq] = time.perf_counter_ns()
        self.pending[seq] = 0
        self.deliver(self.instances[entry], seq, data, parsed, packet, inbound, 0, 1, arrival, (data, wirelen))
        self.settle(seq)

    def settle(self, seq) -> None:
        if self.pending.get(seq) == 0:
            del self.pending[seq]
            if seq in self.started:  # (an input replayed after it was done, --no-dedup, settles again)
                self.latencies.append(time.perf_counter_ns() - self.started.pop(seq))

    def processing_time(self, x: Running, arrival: int) -> int:
        """When x processes an input that arrived at `arrival` (DESIGN.md "Time"): at its arrival;
        after a failover at max(arrival, the failover's end, x's previous processing time)."""
        if self.clock == "wall":
            arrival = time.monotonic_ns() - self.wall0
        if x.floor is None:
            return arrival
        x.prev = max(arrival, x.floor, x.prev)
        return x.prev

    def deliver(self, x: Running, seq, frame, parsed, packet, inbound, label, depth, arrival, src) -> None:
        """Hands a packet to instance x (models/chain.py routing: run to completion, depth first)."""
        from ..models.chain import ChainError
        if depth > 2 * len(self.instances):
            raise ChainError(f"chain {self.chain.name!r}: a packet crossed more than {2 * len(self.instances)} "
                             f"instances (a routing loop through NFs that turn packets around?)")
        self.inject(x, seq)
        if packet is None:  # outside the models: passes unchanged, away from the side it came from
            gates = x.member.inside if inbound else x.member.outside
            if not gates:
                self.drops[f"{x.name}: outside the model"] += 1
                return
            hop = Hop(seq, 0, frame, parsed, None, (), label, depth, arrival, src, True)
            return self.route(x, hop, gates[0], None)
        n = x.next_n
        x.next_n += 1
        wire = packet_fields_of(packet.rewrite(label=label))
        hop = Hop(seq, n, frame, parsed, packet, wire, label, depth, arrival, src)
        x.hops[n] = hop
        x.arrivals[n] = (seq, arrival)
        self.pending[seq] = self.pending.get(seq, 0) + 1
        self.in_flight += 1
        x.busy += 1
        x.primary.send(("in", n, seq, wire, self.processing_time(x, arrival)), now=False)  # a dead one: pump finds it

    def route(self, x: Running, hop: Hop, gate: str, out) -> None:
        """One output of x for hop, written back onto its frame and carried on."""
        from ..models.chain import _carried
        from . import frames
        buf = bytearray(hop.frame)
        label = hop.label
        if out is not None:
            out = Packet(*out)
            try:
                frames.write_back(buf, hop.parsed, hop.packet, out, x.name)
            except frames.FrameError as e:  # the output is not released; the state change stands
                self.drops[e.drop_reason(x.name)] += 1
                return
            label = out.label
        to = self.routes[(x.name, gate)]
        if to.egress is not None:
            return self.emit(hop.seq, to.egress, x.name, bytes(buf), hop.src, hop.arrival, label)
        carried = None if out is None else _carried(out, to.inbound)
        self.deliver(self.instances[to.target], hop.seq, bytes(buf), hop.parsed, carried, to.inbound, label,
                     hop.depth + 1, hop.arrival, hop.src)

    def emit(self, seq, egress, instance, frame: bytes, src, arrival, label: int) -> None:
        out_index = self.out_count.get(seq, 0)
        self.out_count[seq] = out_index + 1
        data, wirelen = src
        if len(frame) != len(data):
            wirelen = wirelen - len(data) + len(frame)
        if self.recorder is not None:
            self.recorder.output(seq, out_index, egress, instance, frame, self.t0 + arrival, wirelen, label)
        self.digest.update(egress.encode() + b"\0" + struct.pack("<I", len(frame)) + frame)
        self.packets_out += 1
        for sink in self.sinks:
            sink.send(egress, frame, self.t0 + arrival)
        self.bytes_out += wirelen
        self.by_egress[egress] += 1

    # -- what workers say
    def pump(self, timeout: float) -> None:
        """Reads what the workers sent (waiting up to `timeout` for something) and acts on it:
        releases, acknowledgements, failures (a closed socket, or silence: missed heartbeats)."""
        live = [w for w in self.workers if not w.conn.closed]
        for w in live:
            w.flush()
        if any(w.inbox for w in live):
            timeout = 0
        now = time.monotonic()
        sweep = now >= self.next_sweep
        if sweep:  # every socket, now and then: idle primaries' heartbeats need not wake the driver each time
            watch, self.next_sweep = live, now + SWEEP_SECONDS
        else:
            idle = {x.primary for x in self.instances.values() if not x.busy and x.killed_at is None}
            watch = [w for w in live if w not in idle]
            timeout = min(timeout, max(0.0, self.next_sweep - now))
        ready, _, _ = select.select(watch, [], [], timeout)
        for w in ready:
            w.poll()
        for x in list(self.instances.values()):
            w = x.primary
            while w.inbox:
                self.message(x, w.inbox.popleft())
                if x.primary is not w:
                    break
            if w.conn.closed and x.primary is w and not w.inbox:
                self.failover(x)
        for x in self.instances.values() if sweep else ():
            w = x.primary
            if not w.conn.closed and not x.suspected and time.monotonic() - w.last_heard > HEARTBEAT_MISSES * self.period:
                if select.select([w], [], [], 0)[0]:  # it spoke; we were busy (another failover, the trace)
                    w.poll()
                    continue
                x.suspected = True
                silence = time.monotonic() - w.last_heard
                self.kill(x, f"missed heartbeats ({silence * 1000:.1f} ms silent)")
                x.silence_ns = int(silence * 1e9)
        for w in live:  # standbys and spares speak when asked; an early death is fatal
            if w.conn.closed and all(w is not x.primary for x in self.instances.values()):
                if any(w is x.standby for x in self.instances.values()) or w in self.spares:
                    raise RunFailed(f"a {w.role} worker (pid {w.pid}) exited: {w.popen.poll()}")

    def message(self, x: Running, m: tuple) -> None:
        kind = m[0]
        if kind == "out":
            self.released(x, *m[1:])
        elif kind == "ack":
            self.acked(x, m[1])
        elif kind == "attached":
            x.attached = True
            if self.failovers and self.failovers[-1]["instance"] == x.name and "attach_ns" not in self.failovers[-1]:
                f = self.failovers[-1]
                f["attach_ns"] = time.perf_counter_ns() - f["_detected"]
        elif kind == "info":
            x.info = m[1]
        elif kind == "error":
            raise RunFailed(m[1])
        elif kind == "store-failed":  # it exits: the closed socket starts the failover
            x.cause = f"its store failed ({m[1].partition(':')[0]})"

    def released(self, x: Running, n, outputs, drops, choices, clocks) -> None:
        hop = x.hops.get(n)
        if hop is None:  # protected and released before: a promoted standby's copy
            return
        if n > x.released:
            x.released = n
            for reason in drops:
                self.drops[f"{x.name}: {reason}"] += 1
            if self.settings.log_choices and self.recorder is not None:
                t = self.t0 + hop.arrival
                for value in choices:
                    self.recorder.event("choice", t, x.name, {"seq": hop.seq, "name": "choose", "value": value})
                for value in clocks:
                    self.recorder.event("choice", t, x.name, {"seq": hop.seq, "name": "now", "value": value})
        for j, (gate, out) in enumerate(outputs):
            if self.settings.dedup and (n, j) <= x.last_out:
                self.suppressed += 1
                continue
            x.last_out = max(x.last_out, (n, j))
            self.route(x, hop, gate, out)
        if not hop.done:
            self.finish(x, hop)
        if n <= x.r or self.settings.strategy is None:
            del x.hops[n]

    def finish(self, x: Running, hop: Hop) -> None:
        """A hop is over: its outputs came back (or it was lost)."""
        hop.done = True
        self.in_flight -= 1
        x.busy -= 1
        self.pending[hop.seq] -= 1
        self.settle(hop.seq)

    def acked(self, x: Running, r: int) -> None:
        if r <= x.r:
            return
        x.r = r
        for n in [n for n, hop in x.hops.items() if n <= r and hop.done]:
            del x.hops[n]
        if self.recorder is not None and r in x.arrivals:
            seq, arrival = x.arrivals[r]
            self.recorder.event("sync", self.t0 + arrival, x.name, {"seq": seq, "input": r})
        if len(x.arrivals) > 4096:
            keep = min(x.r, x.released)
            for n in [n for n in x.arrivals if n < keep]:
                del x.arrivals[n]

    # -- failures
    def inject(self, x: Running, seq: int) -> None:
        """--fail: kills x's primary when it is about to be handed chain input >= the planned one,
        then waits until the failover is done. Every earlier input was handed over and, unless its
        outputs wait for protection (sync, cache, commit), has been released: the crash point is the
        same on every run, not a race with the primary's batches."""
        if self.failing:
            return
        for plan in self.settings.failures:
            if not plan.done and plan.instance == x.name and seq >= plan.seq:
                plan.done = True
                while not x.attached:  # a new standby still loading the state: wait for it
                    self.pump(self.period)
                x.primary.flush()  # inputs before seq were handed over
                if self.settings.strategy is None or not policy(self.settings.strategy).hold:
                    while x.busy:
                        self.pump(self.period)
                generation = x.generation  # (after the wait: a failover it saw is not this one)
                self.kill(x, f"before input {seq}")
                while x.generation == generation:
                    self.pump(self.period)

    def fail_store(self, seq: int, arrival: int) -> None:
        """--fail store@PKT: the private store is restarted without persistence before chain input
        PKT enters (its state is gone). --fail store-failover@PKT: its replica stops receiving
        STORE_LAG_INPUTS inputs earlier, and before PKT the primary dies and the lagging replica is
        promoted (the writes it missed are gone). --fail store-kill@PKT: it dies and stays dead (the
        run stops with the store's error). Each instance fails as its next access finds out."""
        for plan in self.settings.failures:
            if plan.done or plan.instance not in (STORE, STORE_FAILOVER, STORE_KILL):
                continue
            server = getattr(self.stop_backend, "__self__", None)  # StoreBackend.serve's stop: its server
            if plan.instance == STORE_FAILOVER and not plan.cut and seq >= plan.seq - STORE_LAG_INPUTS:
                plan.cut = True
                server.cut_replica()
            if seq < plan.seq:
                continue
            plan.done, started = True, time.perf_counter_ns()
            if plan.instance == STORE:
                server.restart()
                what = {"kind": "restart", "persistence": False}
            elif plan.instance == STORE_KILL:
                server.kill()
                what = {"kind": "killed"}
            else:
                self.options["redis"] = server.fail_over()  # replacements connect to the promoted replica
                what = {"kind": "replica promoted", "lag_inputs": STORE_LAG_INPUTS}
            what.update(before_seq=seq, took_ns=time.perf_counter_ns() - started)
            if self.recorder is not None:
                self.recorder.event("store-failure", self.t0 + arrival, STORE, what)
            self.store_failures.append(what)

    def kill(self, x: Running, cause: str) -> None:
        x.primary.cpu_end = x.primary.cpu()
        x.killed_at, x.cause = time.perf_counter_ns(), cause
        try:
            os.kill(x.primary.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def failover(self, x: Running) -> None:
        """x's primary is gone: the replacement takes over (see the module docstring)."""
        started = time.perf_counter_ns()
        old = x.primary
        detected = old.closed_at or started
        if not x.cause:  # an exit nobody caused: its status says why (a killed one is reaped later, at
            old.popen.wait()  # stop: waiting for a dying process's teardown took ~2 ms of the takeover)
        killed_at, cause = x.killed_at, x.cause or f"the process exited ({old.popen.returncode})"
        by = "missed heartbeats" if x.suspected else "closed socket"
        s = self.settings
        self.failing = True
        spare_ready = self.spares_ready()  # else the takeover waits for one to start
        try:
            if s.paradigm == "stateful":  # promote the standby and ready the next one, both at once
                x.standby.send(("promote", x.generation + 1, None, None))
                spare = self.take_spare()
                spare.send(("assign", self.spec(x, x.generation + 2).to_json(), "standby", True, {},
                            self.standby_address()))
                ready = x.standby.expect("ready")
                host, port = spare.expect("hello")[3:5]
                x.standby.send(("attach", host, port))
                x.primary, x.standby, x.attached = x.standby, spare, False
                x.primary.role, spare.role = "primary", "standby"
            else:
                spare = self.take_spare()
                spare.send(("assign", self.spec(x, x.generation + 1).to_json(), "primary", s.strategy is None,
                            x.info, None))
                ready = spare.expect("ready")
                x.primary, spare.role = spare, "primary"
            x.primary.last_heard = time.monotonic()
            x.generation += 1
            takeover = time.perf_counter_ns() - started
            while len(self.spares) < self.spares_wanted:
                self.spawn_spare()
            self.takeover(x, ready, killed_at, detected, takeover, cause, by, old.pid, spare_ready)
        finally:
            self.failing = False
            x.killed_at, x.cause, x.suspected = None, "", False

    def takeover(self, x: Running, ready: tuple, killed_at, detected, takeover, cause, by, old_pid,
                 spare_ready: bool) -> None:
        _, r, held, logged, *lost = ready
        lost = lost[0] if lost else None  # the store no longer held the instance's state: a new life
        s = self.settings
        visible = max(x.released, r, max(logged, default=0))
        first = min(x.arrivals, default=None)
        crash = x.arrivals[visible][1] if visible in x.arrivals else x.arrivals[first][1] if first else 0
        if s.schedule is not None and s.schedule.crash_ns is not None and x.name == s.schedule.instance \
                and x.generation == 1:  # the schedule's crash time (its first failover of that instance)
            crash = s.schedule.crash_ns - self.t0
        x.floor = x.prev = crash + s.failover_ns
        base = x.released if s.strategy is None else max(x.r, r)
        behind = x.r - r if s.paradigm == "stateless" and r < x.r else 0  # acknowledged, then lost by the store
        x.r = max(x.r, r)
        replay = [n for n in sorted(x.hops) if n > base]
        held_inputs = {h[0] for h in held}
        # protected, never released, and the replacement does not hold their outputs: they are lost
        # (a stateless store keeps state, not outputs; a stateful standby holds every record's)
        unreleased = [n for n, hop in x.hops.items() if n <= base and not hop.done and n not in held_inputs]
        detection = x.silence_ns if x.suspected else None if killed_at is None else detected - killed_at
        record = {"instance": x.name, "cause": cause, "detected_by": by, "detection_ns": detection,
                  "takeover_ns": takeover, "replica_input": r,
                  "replica_seq": x.arrivals[r][0] if r in x.arrivals else -1, "held": len(held),
                  "replayed": len(replay) if s.replay_input else 0, "crash_ns": self.t0 + crash,
                  "end_ns": self.t0 + crash + s.failover_ns, "generation": x.generation, "spare_ready": spare_ready,
                  "outputs_lost": len(unreleased), "_detected": detected, "state_lost": lost,
                  "store_behind": behind}
        self.failovers.append(record)
        if self.recorder is not None:
            self.recorder.event("failure", self.t0 + crash, x.name,
                                {"point": cause, "pid": old_pid, "detected_by": by,
                                 "released_seq": x.arrivals[x.released][0] if x.released in x.arrivals else -1})
            self.recorder.event("failover", self.t0 + crash + s.failover_ns, x.name,
                                {"standby": f"{x.name}@{x.generation}", "replica_seq": record["replica_seq"],
                                 "end_ns": record["end_ns"], "crash_ns": record["crash_ns"],
                                 "failover_time": s.failover_ns / 1e9, "detection_ns": record["detection_ns"],
                                 "takeover_ns": takeover, "spare_ready": spare_ready, "held": len(held),
                                 "replayed": record["replayed"], "outputs_lost": len(unreleased),
                                 **({"state_lost": lost} if lost else {}),
                                 **({"store_behind": behind} if behind else {})})
        for h in held:  # the standby releases the protected outputs the egress has not seen
            self.released(x, h[0], *h[2:])
        for n in unreleased:
            self.finish(x, x.hops[n])
        for n in [n for n, hop in x.hops.items() if n <= base and hop.done]:
            del x.hops[n]
        for n in replay:
            hop = x.hops[n]
            if not s.replay_input:  # the upstream kept nothing: the input is lost
                del x.hops[n]
                self.lost += 1
                if not hop.done:
                    self.finish(x, hop)
                continue
            x.primary.send(("in", n, hop.seq, hop.wire, self.processing_time(x, hop.arrival)), now=False)


def packet_fields_of(packet) -> tuple:
    return tuple(getattr(packet, f) for f in PACKET_FIELDS)
