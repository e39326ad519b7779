"""Real failover (issue 8): the driver side of the failover protocol every strategy shares
(DESIGN.md "The failover protocol every strategy shares", models/strategy.py), and the interface
through which a state-management paradigm plugs into the worker processes.

Processes. The driver is the `nfproof run` process. Every chain instance runs as a primary worker
process (`python -m nfproof.runtime.worker`, runtime/worker.py) joined to the driver by a
socketpair; under a stateful strategy each primary has a standby process joined to it by TCP
(any host:port, loopback by default). One spare worker waits, warmed up, to become the next
standby (stateful) or the next fresh instance (none, stateless). A failure is a SIGKILL.

Per instance the driver keeps the *upstream buffer* (every input not yet covered by the protected
point r, kept for replay), does *duplicate suppression* on the instance's downstream link (the
highest (input, output index) released), injects failures (`--fail NF@PKT`: the primary is
killed when the driver is about to hand it chain input PKT), detects them (a closed socket, or no
message for HEARTBEAT_MISSES heartbeat periods) and fails over: the standby is promoted with the
state S_r, releases the protected outputs the egress has not seen, the driver replays the
buffered inputs > r, and a new standby is attached. Under `none` a fresh instance starts from the
initial state and only the inputs whose outputs were not released are replayed.

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

import json
import marshal
import select
import socket
import struct
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

from ..models.strategy import Strategy

HEARTBEAT_MISSES = 20     # a primary silent for this many heartbeat periods has failed
ASYNC_FLUSH_RECORDS = 64  # async: queued records shipped at the latest when this many are waiting...
ASYNC_FLUSH_SECONDS = 0.001  # ...or when the oldest has waited this long


# -- what a paradigm implements -----------------------------------------------------------------------
@dataclass
class InstanceSpec:
    """What a worker needs to run one chain instance (travels to the worker process as JSON)."""

    chain: str                 # the chain text, e.g. "firewall>nat>lb"
    params: list               # --param settings as given
    instance: str              # the instance name in the chain, e.g. "nat"
    index: int                 # k: its 0-based position in list(chain.members) (its choice stream)
    seed: int
    generation: int = 0        # 0: the first primary; each standby / fresh instance takes the next
    strategy: str = "none"     # models/strategy.py text, e.g. "stateful.commit:8"
    log_choices: bool = False
    heartbeat_ms: float = 1.0
    options: dict = field(default_factory=dict)  # the paradigm's own (e.g. the store's URL)

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

    def wire(self) -> tuple:
        return (self.n, self.seq, self.outputs, self.drops, self.choices, self.clocks)

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
    - `serial`: the next input waits until the previous one is protected (sync, cache)."""

    flush_every: int
    flush_idle: bool = False
    flush_seconds: float | None = None
    hold: bool = False
    serial: bool = False


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
    import importlib
    paradigm = strategy.name.split(".", 1)[0]
    module, _, name = BACKENDS[paradigm].partition(":")
    return getattr(importlib.import_module(module), name)


# -- the wire: length-prefixed marshal messages ---------------------------------------------------------
_LEN = struct.Struct("<I")


class Conn:
    """A message connection over a stream socket: `send(tuple)`, and `read()` -> every complete
    message that has arrived (non-blocking after select said readable); `closed` once the peer
    is gone (EOF or reset)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: tuple) -> None:
        data = marshal.dumps(message)
        self.sock.sendall(_LEN.pack(len(data)) + data)

    def read(self) -> list:
        """The messages that arrived (reads once; call when readable)."""
        try:
            chunk = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        except BlockingIOError:
            return []
        if not chunk:
            self.closed = True
        self.buf += chunk
        out, buf, at = [], self.buf, 0
        while len(buf) - at >= 4:
            (size,) = _LEN.unpack_from(buf, at)
            if len(buf) - at - 4 < size:
                break
            out.append(marshal.loads(bytes(buf[at + 4:at + 4 + size])))
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
