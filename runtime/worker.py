"""A worker process of the failover runtime (runtime/failover.py): one chain instance's primary,
its standby, or a spare waiting to become either.

    python -m nfproof.runtime.worker --fd FD --role primary|standby|spare --spec JSON [--listen HOST:PORT]

`--fd` is the worker's end of a socketpair to the driver (`nfproof run`); the worker exits when
the driver goes away. Messages (runtime/failover.py `Conn`):

driver -> worker: ("in", n, seq, packet, t_ns) input n of this instance (chain input seq, the
    model packet as a tuple of models.api.PACKET_FIELDS, its processing time in ns since the
    run's first input); ("attach", host, port) join the standby there; ("promote", generation,
    host, port) a standby takes over (host None: no new standby); ("assign", spec, role, fresh,
    info, listen) a spare becomes a primary or a standby; ("stop",).
worker -> driver: ("hello", pid, role, host, port); ("out", n, outputs, drops, choices, clocks)
    the release of input n's outputs [(gate, packet tuple)]; ("ack", r) protected point;
    ("attached", r) the standby holds the state; ("ready", r, held records, logged inputs, lost) a
    replacement's starting point (lost: why the store's state is gone, else None); ("info", dict);
    ("hb",) heartbeat; ("error", text); ("store-failed", text) the store failed under it (it exits).

A primary steps its instance with models.concrete.step (the generic executor's semantics) on the
handle's storages, which record every write as a delta, and protects and releases per the
strategy's Policy (runtime/failover.py): it applies queued inputs in order, calls `end` (which
ships the deltas as the policy says), releases outputs when `end` allows it or, held, once
protected() covers them (and, under --log-choices, once their choices and clock reads are
acknowledged) and forwards every new protected point to the driver; a thread sends heartbeats
once the worker has been silent for HEARTBEAT_NAP heartbeat periods, one every period. Choices: the instance's stream of the runtime
contract for generation 0; every later generation (a standby, a fresh instance) draws from its own
stream, except that a replayed input reuses the choices and clock reads logged for it.

A schedule (`nfproof run --schedule`, runtime/schedule.py) reaches a worker as `spec.schedule`:
`choices` {n: values} forces input n's choices (past them, the stream); `crash` {applied,
released, protected} makes a primary die by its own SIGKILL at that point of its timeline: it
replicates inputs <= protected (awaited), runs the inputs after them on a copy of its state that
nothing replicates, releases the outputs of inputs <= released only, and kills itself once input
`applied` is done (before any later input) -- the crash a counterexample of `nfproof verify` names."""
from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from operator import attrgetter

from ..models.api import PACKET_FIELDS, Packet, validate
from ..models.concrete import copy_state, initial_state, step
from ..models.strategy import Strategy
from .deltas import plain
from .failover import (Conn, InstanceSpec, Record, Recovery, Replica, StandbyLink, backend_class, configure,
                       parse_address)
from .rng import MASK64, InstanceRng, StreamChooser

NS = 1_000_000_000
GENERATION_STEP = 0xA24BAED4963EE407  # separates a generation's choice stream from the others
STORE_MODULE = "nfproof.runtime.store"  # its errors are the store's failures (not imported: redis)
APPLY_PER_ROUND = 64                  # inputs applied between two looks at the sockets
RELEASE_BATCH = 8                     # outputs released at once are written to the driver this many at a time
HEARTBEAT_NAP = 8                     # a live worker is silent for at most this many heartbeat periods (the
                                      # driver waits failover.HEARTBEAT_MISSES, 50)
packet_fields = attrgetter(*PACKET_FIELDS)


def generation_rng(seed: int, k: int, generation: int) -> InstanceRng:
    """Instance k's choice stream for one generation: the contract's stream for generation 0."""
    rng = InstanceRng(seed, k)
    rng.state = (rng.state + generation * GENERATION_STEP) & MASK64
    return rng


class LoggedChooser:
    """Reuses an input's logged choices in order, as they are (FTMB); past them, `fresh`."""

    def __init__(self, values, fresh):
        self.pending, self.fresh = list(values), fresh

    def __call__(self, values):
        return self.pending.pop(0) if self.pending else self.fresh(values)

    def choose_domain(self, domain):
        return self.pending.pop(0) if self.pending else self.fresh.choose_domain(domain)


class Worker:
    def __init__(self, conn: Conn, spec: InstanceSpec):
        self.conn, self.spec = conn, spec
        configure(spec)
        self.last_sent = time.monotonic()
        self.batching = False  # the primary's loop sends a round's messages in one write
        self.lock = threading.Lock()  # the heartbeat thread writes to the driver too

    def send(self, message: tuple) -> None:
        """Queued; `flush` writes every queued message at once (the primary's loop, each round)."""
        with self.lock:
            self.conn.queue(message)
            self.last_sent = time.monotonic()
        if not self.batching:
            self.flush()

    def flush(self) -> None:
        try:
            with self.lock:
                self.conn.flush()
        except OSError:  # the driver is gone
            os._exit(0)

    def heartbeats(self, period: float) -> None:
        """A primary's heartbeat thread: once the worker has been silent for HEARTBEAT_NAP periods,
        a heartbeat every period until it speaks again, also while the loop waits on its standby
        or its store (a slow write is a stall, not a failure; a stopped or dead process sends
        nothing). While the worker talks the thread sleeps until HEARTBEAT_NAP periods after its
        last message: each wake takes the GIL from the loop."""
        nap = period * HEARTBEAT_NAP
        while True:
            quiet = time.monotonic() - self.last_sent  # read without the lock: the loop need not wait
            if quiet < period:  # it spoke meanwhile
                time.sleep(nap - quiet)
                continue
            with self.lock:
                due = time.monotonic() - self.last_sent >= period
                if due:
                    self.conn.queue(("hb",))
                    self.last_sent = time.monotonic()
            if due:
                self.flush()
            time.sleep(period)

    def driver_messages(self, timeout: float | None) -> list:
        messages = self.conn.wait(timeout)
        if self.conn.closed:
            sys.exit(0)
        return messages

    # -- roles
    def spare(self) -> None:
        """Waits, warmed up (the paradigm's modules and the chain's models loaded), to be assigned."""
        if self.strategy is not None:
            warm = getattr(backend_class(self.strategy), "warm", None)
            if warm is not None:  # e.g. the store connected before it is needed
                warm(self.spec)
        if self.spec.chain:
            from ..models import lookup
            from ..models.chain import Chain
            for member in Chain.parse(self.spec.chain, lookup).members.values():
                validate(member.nf)
        self.send(("hello", os.getpid(), "spare", None, None))
        while True:
            for m in self.driver_messages(None):
                if m[0] == "assign":
                    _, spec_json, role, fresh, info, listen = m
                    self.spec = InstanceSpec.from_json(spec_json)
                    configure(self.spec)
                    if role == "standby":
                        return self.standby(tuple(listen))
                    return self.replacement(fresh, info)
                if m[0] == "stop":
                    return

    @property
    def nf(self):
        """The instance's model (loaded once: a spare learns its instance on "assign")."""
        if getattr(self, "_nf", None) is None:
            from ..models import lookup
            self._nf = lookup(self.spec.nf)
        return self._nf

    @property
    def strategy(self) -> Strategy | None:
        return None if self.spec.strategy == "none" else Strategy.parse(self.spec.strategy)

    def primary(self) -> None:
        """Generation 0: the initial state (a stateful handle attaches its standby on "attach")."""
        handle = None
        validate(self.nf)
        if self.strategy is not None:
            handle = backend_class(self.strategy)().open(self.spec, True)
        self.send(("hello", os.getpid(), "primary", None, None))
        if handle is not None and handle.info():
            self.send(("info", handle.info()))
        self.serve(handle, handle.state if handle else initial_state(self.nf), {})

    def replacement(self, fresh: bool, info: dict) -> None:
        """A spare made the instance's next primary: none starts from the initial state, a
        stateless instance from what the store holds."""
        handle, recovery, lost = None, Recovery(0), None
        validate(self.nf)  # before "ready", not on the first packet (a new primary reading the model's
        # source under load was silent for 50 ms and killed for missed heartbeats)
        if self.strategy is not None:
            backend = backend_class(self.strategy)()
            try:
                handle = backend.open(self.spec, fresh, info)
            except Exception as e:  # the store lost the namespace (restarted without persistence):
                if fresh or type(e).__name__ != "StoreLost":  # a new life, from the initial state
                    raise
                lost, handle = str(e), backend.open(self.spec, True, info)
            recovery = handle.recover() if not fresh and lost is None else recovery
        self.send(("ready", recovery.r, [h.wire() for h in recovery.held], sorted(recovery.logs), lost))
        if handle is not None and handle.info():
            self.send(("info", handle.info()))
        self.serve(handle, handle.state if handle else initial_state(self.nf), recovery.logs)

    def standby(self, listen: tuple[str, int]) -> None:
        validate(self.nf)  # now, not once promoted
        replica = Replica(self.nf, listen)
        self.send(("hello", os.getpid(), "standby", *replica.address))
        driver = self.conn.sock
        while True:
            link = replica.fileno()
            ready, _, _ = select.select([driver, link], [], [])
            if link in ready:
                replica.readable()
            if driver in ready:
                for m in self.driver_messages(0):
                    if m[0] == "promote":
                        _, self.spec.generation, host, port = m
                        return self.promoted(replica, None if host is None else (host, port))
                    if m[0] == "stop":
                        return

    def promoted(self, replica: Replica, standby) -> None:
        recovery = replica.promote()
        handle = StandbyLink(self.nf, self.strategy, replica.state, replica.log_, recovery.r)
        self.send(("ready", recovery.r, [h.wire() for h in recovery.held], sorted(recovery.logs)))
        if standby is not None:
            handle.connect(standby)
        self.serve(handle, handle.state, recovery.logs)

    # -- the primary's loop
    def serve(self, handle, state: dict, logs: dict) -> None:
        spec, nf = self.spec, self.nf
        ticks = nf.ticks_per_second
        log_choices = spec.log_choices and handle is not None
        pol = handle.policy if handle is not None else None
        serial = pol is not None and pol.serial
        chooser = StreamChooser(generation_rng(spec.seed, spec.index, spec.generation))
        period = spec.heartbeat_ms / 1000
        queue: deque = deque()   # inputs waiting: (n, seq, packet, t_ns)
        held: deque = deque()    # (record, needs protection) waiting for their release
        forwarded, attached = -1, False
        r = logged = 0
        forced = {int(n): list(values) for n, values in spec.schedule.get("choices", {}).items()}
        crash = spec.schedule.get("crash")
        release_cap = crash["released"] if crash else float("inf")
        detached = None  # a scheduled crash, past its protected point: the copy of the state nothing replicates
        self.batching = True
        if handle is not None:
            handle.before_ship = self.flush
        threading.Thread(target=self.heartbeats, args=(period,), daemon=True).start()

        def release_ready(now_r: int | None = None) -> None:
            """Releases the held records whose conditions hold, in order; forwards r (now_r: what
            handle.flush() has just returned, so protected() need not read again)."""
            nonlocal r, logged, forwarded, attached
            if handle is None:
                return
            r = handle.protected() if now_r is None else now_r
            limit = release_cap
            if log_choices:
                logged = handle.logged()
                limit = min(limit, logged)
            ready, released = [], 0
            while held:
                record, needs = held[0]
                if record.n > limit or (needs and record.n > r):
                    break
                held.popleft()
                ready.append(record.out_message())
                released = record.n
            if ready:
                with self.lock:
                    for data in ready:
                        self.conn.queue_marshalled(data)
                    self.last_sent = time.monotonic()
            if r > forwarded:
                self.send(("ack", r))
                forwarded = r
            if released:  # on the wire before the standby may forget what it holds for them
                self.flush()
                handle.released(released)
            if not attached and getattr(handle, "attached", False):
                self.send(("attached", r))
                attached = True

        def after_protected(item) -> None:
            """A scheduled crash's inputs after its protected point: applied on a copy of the state
            that nothing replicates (choices still logged first under --log-choices), then the crash."""
            nonlocal detached
            if item[0] > crash["applied"]:
                self.crash(handle, release_ready)
            if detached is None:
                if handle is not None:  # the protected point is reached: awaited, and no further
                    handle.flush(wait=True)
                    release_ready()
                detached = copy_state(state)
            record = self.apply(None, detached, item, chooser, logs, ticks, forced)
            if log_choices:
                handle.log(record.n, record)
                while handle.logged() < record.n:
                    handle.protected()
                    time.sleep(0.0005)
            if record.n <= release_cap:
                self.release(record)
            if record.n == crash["applied"]:
                self.crash(handle, release_ready)

        while True:
            self.flush()
            now = time.monotonic()
            timeout = 0.0 if queue and not (serial and held) else None
            since = handle.pending_since() if pol is not None and pol.flush_seconds else None
            if since is not None:
                timeout = min(timeout if timeout is not None else 1.0, max(0.0, since + pol.flush_seconds - now))
            if timeout is None and handle is not None and handle.fileno() is None:
                timeout = period  # a handle without a descriptor is polled
            fds = [self.conn.sock]
            link = handle.fileno() if handle is not None else None
            if link is not None:
                fds.append(link)
            ready, _, _ = select.select(fds, [], [], timeout)
            if link is not None and link in ready:
                handle.readable()
            if self.conn.sock in ready:
                for m in self.driver_messages(0):
                    kind = m[0]
                    if kind == "in":
                        queue.append(m[1:])
                    elif kind == "attach":
                        handle.connect((m[1], m[2]))
                    elif kind == "stop":
                        return
            release_ready()
            if getattr(handle, "conn", None) is not None and handle.conn.closed:
                self.send(("error", f"{spec.instance}: the standby went away; the instance is not protected"))
                self.flush()
                sys.exit(1)
            applied = unflushed = 0
            while queue and not (serial and held) and applied < APPLY_PER_ROUND:
                if crash is not None and queue[0][0] > crash["protected"]:
                    after_protected(queue.popleft())
                    continue
                record = self.apply(handle, state, queue.popleft(), chooser, logs, ticks, forced)
                applied += 1
                if log_choices:
                    handle.log(record.n, record)
                if record.n > release_cap:  # a scheduled crash: protected, not released before it
                    handle.end(record.n, record)
                    held.append((record, True))
                elif pol is None or not (pol.hold or log_choices or held):
                    # released at once (none, async, checkpoint, batch): the outputs go out before the
                    # state change is shipped, as models/strategy.py orders release and protect (the
                    # handle calls before_ship = self.flush first; else the round's end writes them)
                    self.release(record)
                    unflushed += 1
                    if unflushed >= RELEASE_BATCH:  # the driver works on them meanwhile
                        self.flush()
                        unflushed = 0
                    if handle is not None:
                        handle.end(record.n, record)
                        handle.released(record.n)
                else:
                    release_now = handle.end(record.n, record)
                    held.append((record, not release_now))
                if crash is not None and record.n == crash["applied"]:
                    self.crash(handle, release_ready)
            if applied:
                release_ready()  # what end() let out at once (a store's awaited write), acks that came meanwhile
            if pol is not None:
                now_r = None
                if pol.flush_idle and not queue:
                    now_r = handle.flush()
                since = handle.pending_since() if pol.flush_seconds else None
                if since is not None and time.monotonic() - since >= pol.flush_seconds:
                    now_r = handle.flush()
                release_ready(now_r)  # flush() may have read the acknowledgements select would wait for

    def apply(self, handle, state, item, chooser, logs: dict, ticks: int, forced: dict) -> Record:
        n, seq, packet, t_ns = item
        logged = logs.pop(n, None)
        now_ticks = t_ns * ticks // NS
        if logged is not None:  # a replay of an input whose choices and clock reads were logged
            choices, clocks = logged
            use, reads = LoggedChooser(choices, chooser), list(clocks)
            clock = lambda: reads.pop(0) if reads else now_ticks  # noqa: E731
        else:
            use, clock = chooser, lambda: now_ticks  # noqa: E731
            if n in forced:  # a schedule's choices
                use = LoggedChooser(forced.pop(n), chooser)
        if handle is not None:
            handle.begin(n)
        try:
            result = step(self.nf, state, Packet(*packet), use, clock)
        except Exception as e:  # a model error: the run cannot go on (a store's failure: main() sees it)
            if type(e).__module__ == STORE_MODULE:
                raise
            self.send(("error", f"{self.spec.instance}: {type(e).__name__}: {e}"))
            self.flush()
            sys.exit(1)
        return Record(n, seq, [(gate, packet_fields(p)) for gate, p in result.outputs], result.drops,
                      [plain(c) for c in result.choices], list(result.clock_reads))

    def crash(self, handle, release_ready) -> None:
        """A schedule's crash: what the timeline reached is protected and released, then SIGKILL."""
        if handle is not None:
            handle.flush(wait=True)
        release_ready()
        self.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def release(self, record: Record) -> None:
        """Queues the release of record's outputs (the round's flush writes it)."""
        with self.lock:
            self.conn.queue_marshalled(record.out_message())
            self.last_sent = time.monotonic()
        if not self.batching:
            self.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nfproof.runtime.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--fd", type=int, required=True, help="this worker's end of the socketpair to the driver")
    p.add_argument("--role", choices=("primary", "standby", "spare"), required=True)
    p.add_argument("--spec", required=True, help="the instance (runtime/failover.py InstanceSpec as JSON)")
    p.add_argument("--listen", default="127.0.0.1:0", help="a standby's replication address HOST:PORT")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles ^C and stops the workers
    conn = Conn(socket.socket(fileno=args.fd))
    worker = Worker(conn, InstanceSpec.from_json(args.spec))
    profile = os.environ.get("NFPROOF_WORKER_PROFILE")  # a directory: cProfile stats per worker (role-pid.prof)
    if profile:
        import atexit
        import cProfile
        profiler = cProfile.Profile()
        atexit.register(lambda: (profiler.disable(), profiler.dump_stats(
            os.path.join(profile, f"{args.role}-{os.getpid()}.prof"))))
        profiler.enable()
    try:
        if args.role == "spare":
            worker.spare()
        elif args.role == "standby":
            worker.standby(parse_address(args.listen))
        else:
            worker.primary()
    except Exception as e:
        if type(e).__module__ != STORE_MODULE:
            raise
        worker.send(("store-failed", f"{type(e).__name__}: {e}"))  # the store failed under this instance:
        worker.flush()                                              # it fails, and fails over
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
