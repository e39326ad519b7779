"""The stateless paradigm's store layer: an NF instance's declared state kept in a real Redis.

- Servers: `RedisServer` (a private `redis-server` on a free loopback port, no persistence; also
  a replica with `replicaof`), `RedisClusterServers` (three masters, `redis-cli --cluster create`);
  both always stopped (context managers, `stop()`, atexit, and the child dies with its parent).
- `connect(url=None, cluster=None) -> Store`: no URL starts a private server (the embedded
  default); `redis://host:port/db` uses an existing server; `cluster="host:port,..."` an existing
  Redis Cluster.
- `Store.instance(nf_cls, chain, instance, mode) -> StoreInstance`: the state of one instance of
  one NF. `StoreInstance.state` is a dict of storages with the interface of models/concrete.py's
  (get, [], in, set/del, add/discard, absent_from/count_in, frozen/copy), so
  `models.concrete.step(nf_cls, inst.state, pkt, chooser, clock)` runs any model's handler on it.

Keys: `nfproof:{CHAIN:INSTANCE}:DECL` (the hash tag puts one instance's keys on one cluster slot):
a Map is a hash, a Set a set, a Counter a string; `...:DECL:counts` holds, per pool range a
`count_in` asked for, how many keys lie in it (kept by the write script, so count_in is O(1));
`...:meta` holds the namespace's life token (`run`: a restarted store without persistence has
none: state lost, never silently) and, per writer, the highest input whose writes it holds
(`applied:W`). Encodings: a Bits value in decimal (Redis stores it as an integer), a Flow or any
record kind as fixed-width big-endian fields (a Flow: 13 bytes).

The instance is runtime/failover.py's Handle for the stateless strategies (`StoreBackend`); when
writes reach the store and when outputs may be released is that module's `policy` (shared with
the stateful paradigm). Per input n the caller runs `begin(n)`, the handler, then
`end(n, record) -> bool` (True: the outputs of n may be released now; else hold them until
`protected() >= n`). Reads during the handler go to the store (`cache`: to a local cache, filled
from the store) with the same key of every declaration keyed alike in the same round trip, and
are memoised within the input; writes collect locally (read-your-writes) and reach the store in
one Lua script call per application, which applies them atomically, keeps the pool counts,
holds the input's record (its outputs, until `released(n)`) and records the input (`applied:W`):

  sync      each input applied and acknowledged before end(n) returns; the script first checks
            that every value the input read is still what it read (optimistic concurrency): if
            another instance sharing the namespace changed one, nothing is applied and end(n)
            raises StoreConflict: run n again (`run` does), so a read-modify-write such as a NAT
            taking a free port is atomic against every other instance.
  cache     sync, reading from a local cache (write-through; a conflict drops what was read).
  async     sent, not awaited, when 64 inputs wait or the oldest waited 1 ms; released at once.
  batch:B   sent, not awaited, every B inputs; released at once.
  commit:B  sent, not awaited, every B inputs or when `flush()` is called because no input is
            waiting (opportunistic batches, several in flight); the outputs of n held until the
            application covering n is acknowledged.

`protected()` = r, the highest input whose writes the store acknowledged (every input <= r is
applied at the store). `fresh_instance()` is what a failover gets: a new instance (new
connection, empty cache) reading the store; it raises StoreLost when the store no longer holds
the namespace (a restart without persistence) and StoreBehind when the store holds fewer inputs
than were acknowledged (a lagging replica promoted). Failure injection for tests and runs:
`RedisServer.restart()` (killed and restarted, state lost); a lagging replica: `replica.pause()`
(SIGSTOP), `primary.disconnect_replicas()` (the link closes: later writes reach no replica),
`primary.kill()`, `replica.resume()`, `replica.promote()` (`REPLICAOF NO ONE`).
"""
from __future__ import annotations

import atexit
import ctypes
import marshal
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections import deque
from typing import Callable

import redis
from hiredis import pack_command
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.retry import Retry

from ..models.api import Bits, Counter, Map, MapStorage, ModelError, Set, wrap
from ..models.concrete import NO_ITERATION, Cell, DictMap, PySet, StepResult, step, unsupported
from ..models.strategy import Strategy, StrategyError
from .failover import Backend, Handle, InstanceSpec, Record, Recovery, policy

MODES = ("sync", "async", "batch", "cache", "commit")
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds for a redis-server to answer PING
NO_RETRY = Retry(NoBackoff(), 0)  # a failed connection is reported at once (redis-py retries for 2 s)
try:  # redis-py >= 7 looks its own version up (importlib.metadata, ~1 ms) for every new client: once here
    from redis.driver_info import DriverInfo
    CLIENT_OPTIONS: dict = {"retry": NO_RETRY, "driver_info": DriverInfo()}
except ImportError:
    CLIENT_OPTIONS = {"retry": NO_RETRY}


class StoreError(Exception):
    """The store failed or was misused (one line: what, where, and the fix)."""


class StoreUnavailable(StoreError):
    """The connection to the store broke (the server died or was restarted)."""


class StoreLost(StoreError):
    """The store no longer holds this instance's state (restarted without persistence, flushed)."""


class StoreBehind(StoreError):
    """The store holds fewer inputs than it acknowledged (a lagging replica was promoted)."""


class StoreConflict(StoreError):
    """Another instance sharing the namespace changed a value this input read: nothing was applied;
    the input must be run again (StoreInstance.run does)."""


# ---------------------------------------------------------------- servers

_LIVE: set = set()  # servers to stop at exit


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def _die_with_parent() -> None:  # preexec_fn: the server gets SIGKILL when this process dies
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StoreError(f"{name} not found on PATH: install it (apt-get install -y redis-server, or make system-deps), "
                         f"or give an existing server with --redis redis://host:port")
    return path


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
            return True
        except OSError:
            return False


def free_port(cluster_bus: bool = False) -> int:
    """A loopback port nothing listens on (and port + 10000 too, for a cluster node's bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if not cluster_bus or (port + 10000 < 65536 and _bindable(port + 10000)):
            return port
    raise StoreError("no free loopback port found for redis-server")


class RedisServer:
    """A private redis-server on a loopback port: no persistence (`--save "" --appendonly no`),
    its files in a temporary directory; started at construction, answers PING when it returns.
    `replicaof`: another RedisServer (or (host, port)) to replicate. `cluster`: a cluster node."""

    def __init__(self, port: int | None = None, replicaof=None, cluster: bool = False):
        self.host, self.cluster = LOOPBACK, cluster
        self.replicaof = (replicaof.host, replicaof.port) if isinstance(replicaof, RedisServer) else replicaof
        self.dir = tempfile.mkdtemp(prefix="nfproof-redis-")
        self.process: subprocess.Popen | None = None
        self._chosen = port is None
        self.port = port or free_port(cluster)
        _LIVE.add(self)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def __repr__(self) -> str:
        return f"RedisServer({self.host}:{self.port})"

    def _args(self) -> list[str]:
        args = [_binary("redis-server"), "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--logfile", "server.log",
                "--dbfilename", "dump.rdb", "--repl-diskless-sync-delay", "0"]
        if self.replicaof:
            args += ["--replicaof", str(self.replicaof[0]), str(self.replicaof[1])]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "5000"]
        return args

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it answers PING."""
        for attempt in range(5):
            if self.cluster:  # a restarted cluster node forgets its configuration
                for name in ("nodes.conf",):
                    path = os.path.join(self.dir, name)
                    if os.path.exists(path):
                        os.remove(path)
            self.process = subprocess.Popen(self._args(), cwd=self.dir, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
            if self._wait_ready():
                return
            log = self.log_tail()
            self._reap()
            if self._chosen and "Address already in use" in log:  # lost a race for the port
                self.port = free_port(self.cluster)
                continue
            raise StoreError(f"redis-server on {self.host}:{self.port} did not start: {log or 'no log'}")
        raise StoreError(f"redis-server could not get a free loopback port in 5 attempts")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with redis.Redis(self.host, self.port, socket_timeout=1, **CLIENT_OPTIONS) as client:
                    if client.ping():
                        return True
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.01)
        return False

    def log_tail(self, lines: int = 3) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return " | ".join(line.strip() for line in f.read().splitlines()[-lines:])
        except OSError:
            return ""

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(self.host, self.port, **{**CLIENT_OPTIONS, **kwargs})

    def _reap(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGCONT)  # a paused server cannot die of SIGTERM
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed, and there is no persistence anyway)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Killed and started again on the same port: without persistence every key is gone."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server stops answering and stops replicating (resume() continues it)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def disconnect_replicas(self) -> int:
        """Close this primary's replication links: what it writes from now on reaches no replica
        until one reconnects (pause() the replica first so it cannot). Returns how many closed."""
        with self.client(socket_timeout=5) as client:
            return int(client.execute_command("CLIENT", "KILL", "TYPE", "replica"))

    def promote(self) -> None:
        """A replica becomes a master (`REPLICAOF NO ONE`) with whatever it has received."""
        with self.client(socket_timeout=5) as client:
            client.execute_command("REPLICAOF", "NO", "ONE")
        self.replicaof = None

    def replication(self) -> dict:
        with self.client(socket_timeout=5, decode_responses=True) as client:
            return client.info("replication")

    def wait_replicated(self, primary: "RedisServer", timeout: float = START_TIMEOUT) -> None:
        """Wait until this replica is linked to `primary`, has everything it has written, and has
        acknowledged it (a fresh replica gets the command stream only once it acknowledged; WAIT
        counts it from then on). A probe key written and deleted at the primary moves the stream."""
        deadline = time.monotonic() + timeout
        with primary.client(socket_timeout=5) as client:
            client.set("nfproof:probe", 1)
            client.delete("nfproof:probe")
            while time.monotonic() < deadline:
                client.execute_command("WAIT", 1, 20)  # asks the replicas for their offsets
                mine, theirs = self.replication(), primary.replication()
                seen = [v for k, v in theirs.items() if k.startswith("slave") and isinstance(v, dict)
                        and int(v.get("port", -1)) == self.port]
                if (mine.get("master_link_status") == "up" and seen and seen[0].get("state") == "online"
                        and int(seen[0].get("offset", -1)) >= theirs.get("master_repl_offset", 1) > 0):
                    return
                time.sleep(0.01)
        raise StoreError(f"replica {self.host}:{self.port} did not catch up with {primary.host}:{primary.port} "
                         f"in {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        self._reap()
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> "RedisServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisClusterServers:
    """A Redis Cluster of `masters` (default 3) redis-server nodes on loopback ports, no replicas,
    created with `redis-cli --cluster create ... --cluster-yes`; ready (every node says
    cluster_state:ok) when the constructor returns."""

    def __init__(self, masters: int = 3, timeout: float = 30.0):
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                self.nodes.append(RedisServer(cluster=True))
            create = [_binary("redis-cli"), "--cluster", "create",
                      *(f"{n.host}:{n.port}" for n in self.nodes), "--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                raise StoreError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr).strip()[-300:]}")
            self._wait_ok(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                with node.client(socket_timeout=2, decode_responses=True) as client:
                    states.append(client.cluster("info"))
            if all(s.get("cluster_state") == "ok" and int(s.get("cluster_slots_ok", 0)) == 16384
                   and int(s.get("cluster_known_nodes", 0)) == len(self.nodes) for s in states):
                return
            time.sleep(0.05)
        raise StoreError(f"the cluster on {self.spec} did not reach cluster_state:ok in {timeout} s")

    @property
    def spec(self) -> str:
        """host:port,... as `--redis-cluster` takes it."""
        return ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "RedisClusterServers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- connections

class Link:
    """One connection to the server holding a namespace, used as a pipe: commands are written
    without waiting, replies are read in order and handed to the callback given with each send.
    `call` sends and waits for its own replies (reading every earlier one first)."""

    def __init__(self, host: str, port: int, db: int = 0, **kwargs):
        self.where = f"{host}:{port}"
        self.conn = Connection(host=host, port=port, db=db, **CLIENT_OPTIONS, **kwargs)
        self.pending: deque = deque()  # (number of replies, callback or None)
        self._replies: list | None = None

    def send(self, commands: list, callback: Callable[[list], None] | None) -> None:
        """Write commands (tuples); their replies go to `callback` (a list) when read."""
        try:
            self.conn.send_packed_command([b"".join([pack_command(c) for c in commands])], check_health=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            self._broken(e)
        self.pending.append((len(commands), callback))

    def _read_one(self) -> None:
        count, callback = self.pending[0]
        read = self.conn._parser.read_response  # error replies come back as ResponseError values
        try:
            replies = [read() for _ in range(count)]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            self._broken(e)
        self.pending.popleft()
        if callback is None:
            self._replies = replies
        else:
            callback(replies)

    def call(self, *commands) -> list:
        """Send commands (tuples) and return their replies (errors as ResponseError values)."""
        self.send(list(commands), None)
        while True:
            last = len(self.pending) == 1
            self._read_one()
            if last:
                replies, self._replies = self._replies, None
                return replies

    def poll(self) -> None:
        """Read the replies that have arrived, without waiting."""
        try:
            while self.pending and self.conn.can_read(timeout=0):
                self._read_one()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            self._broken(e)

    def drain(self) -> None:
        while self.pending:
            self._read_one()

    def fileno(self) -> int | None:
        sock = self.conn._sock
        return None if sock is None else sock.fileno()

    def _broken(self, error) -> None:
        self.pending.clear()
        self.conn.disconnect()
        raise StoreUnavailable(f"redis at {self.where}: connection lost ({error}); the store failed: "
                               f"fail over to a fresh instance once it is back (it raises StoreLost if the "
                               f"state is gone)") from None

    def close(self) -> None:
        self.pending.clear()
        self.conn.disconnect()


def _parse_nodes(cluster) -> list[tuple[str, int]]:
    items = cluster.split(",") if isinstance(cluster, str) else list(cluster)
    nodes = []
    for item in items:
        if isinstance(item, tuple):
            nodes.append((item[0], int(item[1])))
            continue
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise StoreError(f"--redis-cluster {cluster!r}: {item!r} is not host:port; give e.g. "
                             f"127.0.0.1:7000,127.0.0.1:7001")
        nodes.append((host, int(port)))
    if not nodes:
        raise StoreError("--redis-cluster: no nodes given; give host:port,...")
    return nodes


class Store:
    """Where namespaces live: one Redis server, or a Redis Cluster (a namespace's node found from
    its hash tag's slot). Made by `connect`; `close()` stops the private server it started."""

    def __init__(self, url: str | None = None, cluster=None, server: RedisServer | None = None):
        self.server, self.cluster_client, self._owned = server, None, False
        self._warm_link: Link | None = None  # a spare's connection made while it waited (warm())
        if cluster is not None:
            from redis.cluster import ClusterNode, RedisCluster
            self.nodes = _parse_nodes(cluster)
            try:
                self.cluster_client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes],
                                                   socket_timeout=10)
            except (redis.RedisError, OSError) as e:
                raise StoreError(f"--redis-cluster {cluster}: cannot reach the cluster ({e}); check the nodes "
                                 f"answer (redis-cli -c -h HOST -p PORT cluster info)") from None
            self.kwargs, self.url = {}, "cluster:" + ",".join(f"{h}:{p}" for h, p in self.nodes)
            return
        if url is None:
            if server is None:
                self.server, self._owned = RedisServer(), True
            url = self.server.url
        try:
            kwargs = redis.connection.parse_url(url)
        except ValueError as e:
            raise StoreError(f"--redis {url!r}: {e}; give redis://host:port/db") from None
        self.kwargs = {k: v for k, v in kwargs.items() if k in ("host", "port", "db", "username", "password")}
        self.kwargs.setdefault("host", "localhost")
        self.kwargs["port"] = int(self.kwargs.get("port", 6379))
        self.url = url
        self.check()

    def warm(self) -> None:
        """Connect one link now (a single server): the next `link` is it, and `check` asks on it."""
        if self.cluster_client is None and self._warm_link is None:
            link = Link(**self.kwargs, socket_timeout=10)
            link.call(("PING",))
            self._warm_link = link

    def check(self) -> None:
        """StoreError unless the server answers a PING now (a single server; a cluster answered at connect).
        Asked on the warm link if there is one (one round trip); if that link broke meanwhile (e.g. the
        server restarted), it is dropped and a new connection asks."""
        if self.cluster_client is not None:
            return
        if self._warm_link is not None:
            try:
                reply = self._warm_link.call(("PING",))[0]
                if not isinstance(reply, Exception):
                    return
            except StoreError:
                pass
            self._warm_link.close()
            self._warm_link = None
        try:
            with redis.Redis(**self.kwargs, socket_timeout=5, **CLIENT_OPTIONS) as client:
                client.ping()
        except (redis.RedisError, OSError) as e:
            raise StoreError(f"--redis {self.url}: cannot reach the server ({e}); start it or give another URL") from None

    def link(self, key: bytes) -> Link:
        """A new connection to the server that holds `key`."""
        if self.cluster_client is not None:
            node = self.cluster_client.get_node_from_key(key)
            return Link(node.host, node.port, socket_timeout=10)
        if self._warm_link is not None:
            link, self._warm_link = self._warm_link, None
            return link
        return Link(**self.kwargs, socket_timeout=10)

    def client(self, key: bytes | None = None) -> redis.Redis:
        """A redis-py client for inspection (the node of `key` on a cluster)."""
        if self.cluster_client is not None:
            if key is None:
                return self.cluster_client
            node = self.cluster_client.get_node_from_key(key)
            return redis.Redis(node.host, node.port)
        return redis.Redis(**self.kwargs)

    def instance(self, nf_cls, chain: str, instance: str, mode, **options) -> "StoreInstance":
        """StoreInstance(self, ...): the state of one instance at this store."""
        return StoreInstance(self, nf_cls, chain, instance, mode, **options)

    def close(self) -> None:
        if self._warm_link is not None:
            self._warm_link.close()
            self._warm_link = None
        if self.cluster_client is not None:
            self.cluster_client.close()
        if self._owned and self.server is not None:
            self.server.stop()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(url: str | None = None, cluster=None) -> Store:
    """The store of a run: `cluster` ("host:port,..." or a list) an existing Redis Cluster; `url`
    (redis://host:port/db) an existing server; neither: a private server on a free loopback port,
    stopped by `Store.close()` (and at exit)."""
    if url is not None and cluster is not None:
        raise StoreError("give --redis or --redis-cluster, not both")
    return Store(url=url, cluster=cluster)


# ---------------------------------------------------------------- encodings

def codec(kind) -> tuple[Callable, Callable]:
    """(encode, decode) of a Bits or record (Flow) value: decimal for Bits, fixed-width big-endian
    fields for a record (1, 2, 4, 8 bytes through struct, any other width in whole bytes)."""
    if isinstance(kind, Bits):
        return (lambda v: b"%d" % v), int
    widths = getattr(kind, "widths", None)
    if widths is None:
        raise ModelError(f"state of kind {kind!r} cannot be stored: declare Bits or a record such as Flow")
    sizes = [(w + 7) // 8 for w in widths]
    letters = {1: "B", 2: "H", 4: "I", 8: "Q"}
    if all(s in letters for s in sizes):
        packer = struct.Struct(">" + "".join(letters[s] for s in sizes))
        make = kind._make
        return (lambda v: packer.pack(*v)), (lambda b: make(packer.unpack(b)))
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]

    def encode(v):
        return b"".join(x.to_bytes(s, "big") for x, s in zip(v, sizes))

    def decode(b):
        return kind._make(int.from_bytes(b[o:o + s], "big") for o, s in zip(offsets, sizes))
    return encode, decode


def _same_kind(a, b) -> bool:
    if isinstance(a, Bits) and isinstance(b, Bits):
        return a is b or (a.width, a.name) == (b.width, b.name)
    return a is b


def _tag_part(text: str) -> str:
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def namespace(chain: str, instance: str) -> str:
    """`nfproof:{CHAIN:INSTANCE}`: the prefix of an instance's keys (braces escaped so the tag holds)."""
    return f"nfproof:{{{_tag_part(chain)}:{_tag_part(instance)}}}"


# ---------------------------------------------------------------- the write and count scripts

_NUMLT = """
local function numlt(a, b)  -- a < b for decimal strings without leading zeros
  if #a ~= #b then return #a < #b end
  return a < b
end
local function inrange(m, range)
  local comma = string.find(range, ',', 1, true)
  return not numlt(m, string.sub(range, 1, comma - 1)) and numlt(m, string.sub(range, comma + 1))
end
"""

# KEYS: meta, held (this writer's records), then the data key of every declaration, then their
# counts keys (n each). ARGV: token, writer field, seq, kinds (one letter per declaration: H/h a
# hash with int/other keys, S/s a set, c a counter), number of checks, number of writes, then
# (decl, field, expected) per check (decl < 0: the counts field of declaration -decl; '' expected:
# absent), then (decl, field, value) per write ('' value: delete), then (n, record) per record to
# hold. Returns 'OK', 'LOST' (the namespace's life is not the writer's) or {'CONFLICT', check}.
APPLY_SCRIPT = _NUMLT + """
local meta, held = KEYS[1], KEYS[2]
if redis.call('HGET', meta, 'run') ~= ARGV[1] then return 'LOST' end
local kinds = ARGV[4]
local n = #kinds
local a = 7
for c = 1, tonumber(ARGV[5]) do
  local d, field, expected = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  local actual
  if d < 0 then
    actual = redis.call('HGET', KEYS[2 + n - d], field) or ''
  else
    local kind, key = string.sub(kinds, d, d), KEYS[2 + d]
    if kind == 'H' or kind == 'h' then
      actual = redis.call('HGET', key, field) or ''
    elseif kind == 'S' or kind == 's' then
      actual = redis.call('SISMEMBER', key, field) == 1 and '1' or ''
    else
      actual = redis.call('GET', key) or '0'
    end
  end
  if actual ~= expected then return {'CONFLICT', c} end
end
local ranges = {}
for w = 1, tonumber(ARGV[6]) do
  local d, field, value = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  local kind, key = string.sub(kinds, d, d), KEYS[2 + d]
  if kind == 'c' then
    redis.call('SET', key, value)
  else
    local change
    if kind == 'H' or kind == 'h' then
      if value == '' then change = -redis.call('HDEL', key, field) else change = redis.call('HSET', key, field, value) end
    elseif value == '' then
      change = -redis.call('SREM', key, field)
    else
      change = redis.call('SADD', key, field)
    end
    if change ~= 0 and (kind == 'H' or kind == 'S') then
      local counts = KEYS[2 + n + d]
      if ranges[d] == nil then ranges[d] = redis.call('HKEYS', counts) end
      for _, range in ipairs(ranges[d]) do
        if inrange(field, range) then redis.call('HINCRBY', counts, range, change) end
      end
    end
  end
end
while a < #ARGV do
  redis.call('HSET', held, ARGV[a], ARGV[a + 1])
  a = a + 2
end
redis.call('HSET', meta, ARGV[2], ARGV[3])
return 'OK'
"""

# KEYS: meta, data key, counts key. ARGV: token, range field "base,end", kind (H or S).
# Returns how many keys lie in the range (counted once, then kept by APPLY_SCRIPT), -1 if LOST.
COUNT_SCRIPT = _NUMLT + """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return -1 end
local known = redis.call('HGET', KEYS[3], ARGV[2])
if known then return tonumber(known) end
local members
if ARGV[3] == 'H' then members = redis.call('HKEYS', KEYS[2]) else members = redis.call('SMEMBERS', KEYS[2]) end
local count = 0
for _, m in ipairs(members) do
  if inrange(m, ARGV[2]) then count = count + 1 end
end
redis.call('HSET', KEYS[3], ARGV[2], count)
return count
"""


# ---------------------------------------------------------------- storages

ABSENT = type("Absent", (), {"__repr__": lambda self: "ABSENT", "__slots__": ()})()
_MISS = object()


class _Stored(MapStorage):
    """What the three store-backed storages share: their place in the instance and their keys."""

    def __init__(self, inst: "StoreInstance", index: int, decl, data_key: bytes, counts_key: bytes):
        self._inst, self.index, self.decl = inst, index, decl
        self.data_key, self.counts_key = data_key, counts_key
        self._counts: dict = {}  # (base, size) -> keys in range (visible to this instance now)

    def count_in(self, base: int, size: int) -> int:
        """Keys in [base, base+size): from the store's count (kept by the write script), then
        kept up to date locally by every insertion and removal: O(1)."""
        if not self.counted:  # record keys are never ints: nothing lies in an int range
            return 0
        count = self._counts.get((base, size))
        if count is None:
            count = self._inst._count(self, base, size)
        elif self._inst._validating:
            self._inst._note_count(self, base, size, count)
        return count


class StoreMap(_Stored):
    """A declared Map kept in a Redis hash; keys and values wrap at their declared widths."""

    kind = "h"

    def __init__(self, inst, index, decl, data_key, counts_key):
        super().__init__(inst, index, decl, data_key, counts_key)
        self.counted = isinstance(decl.key, Bits)
        self.encode_key, self.decode_key = codec(decl.key)
        self.encode_value, self.decode_value = codec(decl.value)

    def get(self, key, default=None):
        value = self._inst._read(self, wrap(self.decl.key, key))
        return default if value is ABSENT else value

    def __getitem__(self, key):
        value = self._inst._read(self, wrap(self.decl.key, key))
        if value is ABSENT:
            raise ModelError(f"{self.decl.name}[key] of an absent key; test `key in m` first or use m.get(key)")
        return value

    def __contains__(self, key) -> bool:
        return self._inst._read(self, wrap(self.decl.key, key)) is not ABSENT

    def __setitem__(self, key, value):
        self._inst._write(self, wrap(self.decl.key, key), wrap(self.decl.value, value))

    def __delitem__(self, key):  # deleting an absent key is a no-op, as in the symbolic arrays
        self._inst._write(self, wrap(self.decl.key, key), ABSENT)

    absent_from = DictMap.absent_from

    def _items(self) -> dict:
        raw = self._inst._link.call(("HGETALL", self.data_key))[0]
        items = {self.decode_key(k): self.decode_value(v) for k, v in raw.items()}
        return self._inst._overlaid(self, items)

    __iter__ = unsupported("iterating a Map", NO_ITERATION, lambda self: iter(self._items()))
    keys = unsupported("iterating a Map", NO_ITERATION, lambda self: self._items().keys())
    values = unsupported("iterating a Map", NO_ITERATION, lambda self: self._items().values())
    items = unsupported("iterating a Map", NO_ITERATION, lambda self: self._items().items())
    __len__ = unsupported("len() of a Map", "count the entries in a Counter", lambda self: len(self._items()))

    def copy(self) -> DictMap:
        return DictMap(self.decl, self._items())

    def frozen(self):
        return frozenset(self._items().items())

    def encode(self, value) -> bytes:
        return b"" if value is ABSENT else self.encode_value(value)

    def decode(self, reply):
        return ABSENT if reply is None else self.decode_value(reply)

    def read_command(self, key) -> tuple:
        return ("HGET", self.data_key, self.encode_key(key))


class StoreSet(_Stored):
    """A declared Set kept in a Redis set; members wrap at the declared width."""

    kind = "s"

    def __init__(self, inst, index, decl, data_key, counts_key):
        super().__init__(inst, index, decl, data_key, counts_key)
        self.counted = isinstance(decl.key, Bits)
        self.encode_key, self.decode_key = codec(decl.key)

    def __contains__(self, key) -> bool:
        return self._inst._read(self, wrap(self.decl.key, key)) is not ABSENT

    def add(self, key):
        self._inst._write(self, wrap(self.decl.key, key), True)

    def discard(self, key):
        self._inst._write(self, wrap(self.decl.key, key), ABSENT)

    def remove(self, key):
        k = wrap(self.decl.key, key)
        if self._inst._read(self, k) is ABSENT:
            raise ModelError(f"{self.decl.name}.remove(x) of an absent member; test `x in s` first or use discard(x)")
        self.discard(k)

    absent_from = DictMap.absent_from

    def _members(self) -> set:
        raw = self._inst._link.call(("SMEMBERS", self.data_key))[0]
        return set(self._inst._overlaid(self, {self.decode_key(m): True for m in raw}))

    __iter__ = unsupported("iterating a Set", NO_ITERATION, lambda self: iter(self._members()))
    __len__ = unsupported("len() of a Set", "count the members in a Counter", lambda self: len(self._members()))

    def copy(self) -> PySet:
        return PySet(self.decl, self._members())

    def frozen(self):
        return frozenset(self._members())

    def encode(self, value) -> bytes:
        return b"" if value is ABSENT else b"1"

    def decode(self, reply):
        return True if reply else ABSENT

    def read_command(self, key) -> tuple:
        return ("SISMEMBER", self.data_key, self.encode_key(key))


class StoreCell(_Stored):
    """A declared Counter kept in a Redis string (absent: 0), wrapped at the declared width."""

    kind = "c"
    counted = False

    def __init__(self, inst, index, decl, data_key, counts_key):
        super().__init__(inst, index, decl, data_key, counts_key)
        self.mask = (1 << decl.kind.width) - 1

    @property
    def value(self) -> int:
        return self._inst._read(self, None)

    @value.setter
    def value(self, v: int) -> None:
        self._inst._write(self, None, v & self.mask)

    def encode_key(self, key) -> bytes:
        return b""

    def copy(self) -> Cell:
        return Cell(self.mask.bit_length(), self.value)

    def frozen(self):
        return self.value

    def encode(self, value) -> bytes:
        return b"%d" % value

    def decode(self, reply):
        return 0 if reply is None else int(reply)

    def read_command(self, key) -> tuple:
        return ("GET", self.data_key)


# ---------------------------------------------------------------- an instance's state at the store

def parse_mode(mode) -> Strategy:
    """A stateless strategy: "sync", "batch:8", "stateless.commit:8" or a models.strategy.Strategy."""
    valid = "valid: sync, async, batch:B, cache, commit:B (or stateless.MODE)"
    if isinstance(mode, Strategy):
        strategy = mode
    else:
        text = str(mode).strip()
        try:
            strategy = Strategy.parse(text if "." in text else "stateless." + text)
        except StrategyError as e:
            if "needs a positive integer" in str(e):
                raise StoreError(f"store mode {mode!r}: {text.split(':')[0]} needs a positive integer "
                                 f"parameter, e.g. {text.split(':')[0]}:8; {valid}") from None
            raise StoreError(f"store mode {mode!r} is unknown; {valid}") from None
    if not strategy.name.startswith("stateless."):
        raise StoreError(f"store mode {mode!r}: {strategy.name} keeps state in the instance, not the store; {valid}")
    return strategy


class StoreInstance(Handle):
    """The state of one instance of one NF at the store, and the protocol of its strategy (the
    module docstring; runtime/failover.py's Handle, its Policy). `state` is what
    models.concrete.step runs a handler on.

    attach: "new" (the namespace is emptied and starts a new life), "join" (share an existing
    namespace, e.g. a second NAT instance of a scale-out group; created if absent), "resume" (a
    failover: the namespace must exist, its life token must match `token` when given). `writer`
    names this instance's progress (`applied:W`) and held records among the namespace's writers.
    `replicas`: every application also waits (`WAIT`) until that many replicas have it, else
    StoreError (so a promoted replica never lags behind what was acknowledged). `read_cache`
    (async, batch, commit): reads served from a local cache of what this instance read and wrote,
    as `cache` does: the same values for a single writer (the namespace changes only through it;
    these modes do not validate against other writers anyway), without a round trip per read."""

    owned_store: Store | None = None  # closed with the instance (StoreBackend.open's connection)

    def __init__(self, store: Store, nf_cls, chain: str, instance: str, mode, writer: int = 0,
                 attach: str = "new", token: bytes | None = None, replicas: int = 0,
                 replica_timeout_ms: int = 1000, read_cache: bool = False):
        if attach not in ("new", "join", "resume"):
            raise StoreError(f"attach={attach!r}: give new, join or resume")
        self.store, self.nf_cls, self.chain, self.instance = store, nf_cls, chain, instance
        self.strategy = parse_mode(mode)
        self.mode, self.policy = self.strategy.mode, policy(self.strategy)
        self.writer, self.replicas, self.replica_timeout_ms = writer, replicas, replica_timeout_ms
        self.prefix = namespace(chain, instance)
        self.meta_key = f"{self.prefix}:meta".encode()
        self.held_key = f"{self.prefix}:held:{writer}".encode()  # records of protected inputs, until released
        self.log_key = f"{self.prefix}:log:{writer}".encode()    # --log-choices: (choices, clocks) per input
        self._writer_field = b"applied:%d" % writer
        self._link = store.link(self.meta_key)
        self._validating = self.mode in ("sync", "cache")
        if read_cache and self.mode not in ("async", "batch", "commit"):
            raise StoreError(f"read_cache is for async, batch and commit (a single writer's own view of its "
                             f"namespace); {self.mode} " + ("reads the store" if self.mode == "sync" else "caches already"))
        self.read_cache = read_cache
        self._cache: dict | None = {} if self.mode == "cache" or read_cache else None
        self._overlay: dict = {}  # (index, key) -> [value or ABSENT, present at the store before?]: unsent writes
        self._seen: dict = {}     # (index, key) -> value the input read from the store or the cache
        self._known: dict = self._cache if self._cache is not None else {}  # read ahead (this input's)
        self._ranges: list = []   # (storage, counts field) of every pool range count_in asked for
        self._count_ahead = False  # sync: read those counts with the input's first read
        self._records: list = []  # (n, packed Record) of the inputs not sent yet
        self._stored: deque = deque()  # n of the records held at the store
        self._logged_at_store: deque = deque()  # n of the logged choices held at the store
        self._forget_records: list = []  # held records (n) released: deleted with the next application
        self._forget_logs: list = []
        self._current: int | None = None
        self._ended = self._closed = self._protected = self._written = self._released = self._logged = 0
        self._queued_since: float | None = None  # when the oldest input not sent yet ended
        self._in_flight = 0       # applications sent, not acknowledged yet
        self._after_pending = 0   # inputs without anything to send, closed while applications were in flight
        self._failure: StoreError | None = None
        self.conflicts = 0        # inputs run again after a StoreConflict (sync, cache)
        self.applications = 0     # script calls that applied writes (for measurements)
        self.state: dict = {}
        self._storages: list[_Stored] = []
        for index, (name, decl) in enumerate(nf_cls.declarations().items(), start=1):
            if not isinstance(decl, (Map, Set, Counter)):
                raise ModelError(f"declaration {name} of {nf_cls.__name__} is not a Map, Set or Counter")
            cls = StoreMap if isinstance(decl, Map) else StoreSet if isinstance(decl, Set) else StoreCell
            storage = cls(self, index, decl, f"{self.prefix}:{name}".encode(), f"{self.prefix}:{name}:counts".encode())
            self._storages.append(storage)
            self.state[name] = storage
        for storage in self._storages:
            storage.siblings = [other for other in self._storages if other is not storage
                                and not isinstance(other, StoreCell) and not isinstance(storage, StoreCell)
                                and _same_kind(other.decl.key, storage.decl.key)]
        self._kinds = "".join(s.kind.upper() if s.counted else s.kind for s in self._storages).encode()
        self._keys = ([self.meta_key, self.held_key] + [s.data_key for s in self._storages]
                      + [s.counts_key for s in self._storages])
        self._load_scripts()
        self.token = self._open(attach, token)

    def __repr__(self) -> str:
        return f"StoreInstance({self.prefix}, {self.strategy}, at {self._link.where})"

    # -- setup

    def _load_scripts(self) -> None:
        apply_sha, count_sha = self._link.call(("SCRIPT", "LOAD", APPLY_SCRIPT), ("SCRIPT", "LOAD", COUNT_SCRIPT))
        for reply in (apply_sha, count_sha):
            if isinstance(reply, Exception):
                raise StoreError(f"redis at {self._link.where}: SCRIPT LOAD failed: {reply}")
        self._apply_sha, self._count_sha = apply_sha, count_sha

    def _open(self, how: str, token: bytes | None) -> bytes:
        if how == "new":  # every key of the namespace goes (other writers' records and logs too)
            new = secrets.token_hex(8).encode()
            self._link.call(("DEL", *self._keys, self.log_key, *self._namespace_keys()),
                            ("HSET", self.meta_key, "run", new, "created_ns", time.time_ns()))
            return new
        if how == "join":
            self._link.call(("HSETNX", self.meta_key, "run", secrets.token_hex(8).encode()))
        run, applied = self._link.call(("HGET", self.meta_key, "run"), ("HGET", self.meta_key, self._writer_field))
        if run is None:
            raise StoreLost(f"redis at {self._link.where} holds no state for {self.prefix} (restarted without "
                            f"persistence, or flushed): every update of {self.instance} is lost; the run cannot "
                            f"fail over onto this store")
        if token is not None and run != token:
            raise StoreLost(f"redis at {self._link.where}: {self.prefix} was re-created since (life {run.decode()}, "
                            f"expected {token.decode()}): the state this instance protected is gone")
        if how == "resume":
            self._ended = self._closed = self._protected = self._written = int(applied or 0)
        return run

    def _namespace_keys(self) -> list:
        """Every key stored under this namespace's prefix (SCAN on its node)."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + ":*"
        keys, cursor = [], b"0"
        while True:
            cursor, batch = self._link.call(("SCAN", cursor, "MATCH", pattern, "COUNT", 1000))[0]
            keys += batch
            if cursor in (b"0", 0):
                return keys

    # -- the per-input protocol (runtime/failover.py's Handle)

    def begin(self, n: int) -> None:
        """Input n starts: reads from now on are n's (memoised until end(n))."""
        self._raise_failure()
        if self._current is not None:
            raise StoreError(f"begin({n}) while input {self._current} is not ended: call end({self._current}) first")
        if n <= self._ended:
            raise StoreError(f"begin({n}) after input {self._ended}: inputs are numbered upwards")
        self._current = n
        self._forget_reads()  # (what was read between inputs, e.g. by frozen())
        if self.mode == "sync":  # other instances may have changed the counts since: read them again
            for s in self._storages:
                s._counts.clear()
            self._count_ahead = bool(self._ranges)
        if self._link.pending:
            self._link.poll()
            self._raise_failure()

    def end(self, n: int, record: Record | None = None) -> bool:
        """Input n's handler is done: its writes (and `record`, kept at the store until released)
        reach the store as the policy says. True when the outputs of n may be released now (else
        hold them until protected() >= n). sync and cache raise StoreConflict when another
        instance changed what n read: nothing of n was applied; run it again."""
        if self._current != n:
            raise StoreError(f"end({n}) without begin({n})" + (f" (input {self._current} is open)"
                                                               if self._current is not None else ""))
        if record is not None:  # (seq, the worker's marshalled out message: marshalled once for both)
            self._records.append((n, marshal.dumps((record.seq, record.out_message()))))
        policy_ = self.policy
        if policy_.serial:
            try:
                self._apply_awaited(n)
            except BaseException:  # a conflict (run n again), or a store failure
                self._current = None
                raise
            self._current, self._ended = None, n
            self._forget_reads()
            return True
        self._current, self._ended = None, n
        self._forget_reads()
        if self._queued_since is None:
            self._queued_since = time.monotonic()
        if n - self._closed >= policy_.flush_every or self._overdue():
            self._close(n)
        elif self._link.pending:
            self._link.poll()
        self._raise_failure()
        return not policy_.hold or self._protected >= n

    def _forget_reads(self) -> None:
        """The input's reads are its own: later reads see the store (and this instance's writes)."""
        self._seen.clear()
        if self._cache is None:
            self._known.clear()

    def pending_since(self) -> float | None:
        """When (time.monotonic()) the oldest input not sent yet ended; None if none waits."""
        return self._queued_since if self._ended > self._closed else None

    def _overdue(self) -> bool:
        seconds = self.policy.flush_seconds
        return (seconds is not None and self._queued_since is not None
                and time.monotonic() - self._queued_since >= seconds)

    def protected(self) -> int:
        """r: the highest input whose writes the store acknowledged (every input <= r is applied).
        Reads the acknowledgements that have arrived (and sends what waited flush_seconds)."""
        if self._current is None and self._ended > self._closed and self._overdue():
            self._close(self._ended)
        if self._link.pending:
            self._link.poll()
        self._raise_failure()
        return self._protected

    def flush(self, wait: bool = False) -> int:
        """Send every write not sent yet (closing an open batch early) and, with `wait`, wait for
        every acknowledgement. Returns protected()."""
        if self._current is not None:
            raise StoreError(f"flush() during input {self._current}: end({self._current}) first")
        if self._ended > self._closed:
            self._close(self._ended)
        if wait:
            self._link.drain()
        return self.protected()

    def fileno(self) -> int | None:
        return self._link.fileno()

    def released(self, n: int) -> None:
        """The outputs of inputs <= n were released: their records are no longer held."""
        if n > self._released:
            self._released = n
            stored = self._stored
            while stored and stored[0] <= n:
                self._forget_records.append(stored.popleft())

    def log(self, n: int, record: Record) -> None:
        """--log-choices: input n's choices and clock reads written now, acknowledged on return."""
        reply, run = self._link.call(("HSET", self.log_key, n, marshal.dumps((record.choices, record.clocks))),
                                     ("HGET", self.meta_key, "run"))
        if isinstance(reply, Exception):
            raise StoreError(f"redis at {self._link.where}: {reply} logging the choices of input {n}")
        if run != self.token:
            self._lost(f"logging the choices of input {n}")
        self._logged = n
        self._logged_at_store.append(n)

    def logged(self) -> int:
        return self._logged

    def recover(self) -> Recovery:
        """Where the store stands for a replacement (attach="resume"): r, the records held for
        inputs <= r (outputs maybe not released), the choices logged for inputs > r."""
        held, logs, applied = self._link.call(("HGETALL", self.held_key), ("HGETALL", self.log_key),
                                              ("HGET", self.meta_key, self._writer_field))
        r = int(applied or 0)
        records = sorted((Record.from_out_message(*marshal.loads(v)) for k, v in held.items() if int(k) <= r),
                         key=lambda x: x.n)
        self._stored.extend(record.n for record in records)
        logged = {}
        for k, v in logs.items():
            if int(k) > r:
                choices, clocks = marshal.loads(v)
                logged[int(k)] = (list(choices), list(clocks))
        return Recovery(r, records, logged)

    def info(self) -> dict:
        return {"token": self.token.decode()}

    def written(self) -> int:
        """The highest input whose application the store acknowledged (what it must still hold)."""
        return self._written

    def run(self, n: int, pkt, chooser, clock=None) -> tuple[StepResult, bool]:
        """begin(n), the handler on `state`, end(n); run again after a StoreConflict (fresh reads,
        fresh choices). Returns (the step's result, whether its outputs may be released now)."""
        while True:
            self.begin(n)
            try:
                result = step(self.nf_cls, self.state, pkt, chooser, clock)
            except BaseException:
                self.abort()
                raise
            try:
                return result, self.end(n)
            except StoreConflict:
                self.conflicts += 1

    def abort(self) -> None:
        """The open input's handler failed: its writes are forgotten (under batch, async and
        commit they stay with the unsent inputs', as a failed handler's writes stay in
        models/concrete.py's storages)."""
        if self._current is not None and self._validating:
            self._discard()
        self._current = None

    def fresh_instance(self, store: Store | None = None, expect_written: int | None = None,
                       mode=None) -> "StoreInstance":
        """What a failover gets: a new instance of this namespace (a new connection, nothing cached)
        reading `store` (default: this one's; e.g. a promoted replica's), protected() = what the
        store holds. Raises StoreLost if the store no longer holds this namespace's life,
        StoreBehind if it holds fewer inputs than `expect_written` (default: what this instance
        saw acknowledged)."""
        fresh = StoreInstance(store or self.store, self.nf_cls, self.chain, self.instance, mode or self.strategy,
                              writer=self.writer, attach="resume", token=self.token, replicas=self.replicas,
                              replica_timeout_ms=self.replica_timeout_ms, read_cache=self.read_cache)
        expected = self.written() if expect_written is None else expect_written
        if fresh._protected < expected:
            fresh.close()
            raise StoreBehind(f"redis at {fresh._link.where} holds the writes of {self.instance} up to input "
                              f"{fresh._protected}, but it acknowledged them up to input {expected}: the updates of "
                              f"inputs {fresh._protected + 1}..{expected} are lost (a lagging replica was promoted); "
                              f"acknowledge writes only once a replica has them (replicas=1, WAIT)")
        return fresh

    def close(self) -> None:
        self._link.close()
        if self.owned_store is not None:
            self.owned_store.close()

    # -- state as plain values (outside handlers)

    def frozen(self):
        """A hashable image of the visible state, as models.concrete.freeze_state gives."""
        return tuple((name, storage.frozen()) for name, storage in sorted(self.state.items()))

    def snapshot(self) -> dict:
        """The visible state as models/concrete.py storages."""
        return {name: storage.copy() for name, storage in self.state.items()}

    # -- reads and writes of the storages

    def _read(self, storage: _Stored, key):
        k = (storage.index, key)
        entry = self._overlay.get(k)
        if entry is not None:
            return entry[0]
        value = self._seen.get(k, _MISS)
        if value is not _MISS:
            return value
        known = self._known
        value = known.get(k, _MISS)
        if value is _MISS:
            value = self._fetch(storage, key, known)
        self._seen[k] = value
        return value

    def _fetch(self, storage: _Stored, key, known: dict):
        """Read `key` of `storage` and, in the same round trip, of every declaration keyed alike
        that this input has not read (a flow's other counters, a source's other fields) into
        `known`, with the store's life token (a restarted store is never read silently)."""
        group = [storage]
        for other in storage.siblings:
            k = (other.index, key)
            if k not in known and k not in self._seen and k not in self._overlay:
                group.append(other)
        commands = [s.read_command(key) for s in group]
        counts = ()
        if self._count_ahead:  # sync: the pool counts this instance uses, fresh with the input's first read
            counts, self._count_ahead = self._ranges, False
            commands += [("HGET", counted.counts_key, field) for counted, field in counts]
        replies = self._link.call(*commands, ("HGET", self.meta_key, "run"))
        for reply in replies:
            if isinstance(reply, Exception):
                raise StoreError(f"redis at {self._link.where}: {reply} reading {storage.data_key.decode()}")
        if replies[-1] != self.token:
            self._lost("a read")
        for s, reply in zip(group, replies):
            known[(s.index, key)] = s.decode(reply)
        for (counted, field), reply in zip(counts, replies[len(group):]):
            if reply is not None:
                known[(-counted.index, field)] = int(reply)
        return known[(storage.index, key)]

    def _write(self, storage: _Stored, key, value) -> None:
        if self._current is None:
            raise StoreError(f"a write to {storage.decl.name} outside an input: call begin(n) first")
        k = (storage.index, key)
        entry = self._overlay.get(k)
        if not storage.counted:
            if entry is None:
                self._overlay[k] = [value, None]
            else:
                entry[0] = value
            return
        before = entry[0] if entry is not None else self._read(storage, key)
        if entry is None:
            self._overlay[k] = [value, before is not ABSENT]
        else:
            entry[0] = value
        change = (value is not ABSENT) - (before is not ABSENT)
        if change and storage._counts:
            for (base, size) in storage._counts:
                if base <= key < base + size:
                    storage._counts[(base, size)] += change

    def _count(self, storage: _Stored, base: int, size: int) -> int:
        field = b"%d,%d" % (base, base + size)
        k = (-storage.index, field)
        observed = self._seen.get(k, _MISS)
        if observed is _MISS:
            observed = self._known.get(k, _MISS)
            if observed is _MISS:  # counted once at the store, then kept there by every application
                observed = self._link.call(("EVALSHA", self._count_sha, 3, self.meta_key, storage.data_key,
                                            storage.counts_key, self.token, field, storage.kind.upper()))[0]
                if isinstance(observed, Exception):
                    self._script_error(observed, "counting a pool")
                if observed < 0:
                    self._lost("a pool count")
                if (storage, field) not in self._ranges:
                    self._ranges.append((storage, field))
            self._seen[k] = observed
        count = observed + self._pending_change(storage, base, size)
        storage._counts[(base, size)] = count
        return count

    def _pending_change(self, storage: _Stored, base: int, size: int) -> int:
        """How the unsent writes change the count of keys in [base, base+size)."""
        change = 0
        for (index, key), (value, before) in self._overlay.items():
            if index == storage.index and base <= key < base + size:
                change += (value is not ABSENT) - before
        return change

    def _note_count(self, storage: _Stored, base: int, size: int, count: int) -> None:
        """A count known locally was read by this input: validate what it was before the input."""
        k = (-storage.index, b"%d,%d" % (base, base + size))
        if k not in self._seen:
            self._seen[k] = count - self._pending_change(storage, base, size)

    def _overlaid(self, storage: _Stored, items: dict) -> dict:
        for (index, key), (value, _) in self._overlay.items():
            if index == storage.index:
                if value is ABSENT:
                    items.pop(key, None)
                else:
                    items[key] = value
        return items

    # -- sending writes

    def _commands(self, seq: int, checks: bool) -> list:
        """The application of the unsent writes and records as inputs <= seq, (WAIT), forgets."""
        args: list = []
        storages = self._storages
        n_checks = 0
        if checks:
            for (index, key), value in self._seen.items():
                if index < 0:
                    args += (index, key, b"%d" % value)
                else:
                    storage = storages[index - 1]
                    args += (index, storage.encode_key(key), storage.encode(value))
                n_checks += 1
        for (index, key), (value, _) in self._overlay.items():
            storage = storages[index - 1]
            args += (index, storage.encode_key(key), storage.encode(value))
        released = self._released
        for n, packed in self._records:
            if n > released:
                args += (n, packed)
                self._stored.append(n)
        commands = [("EVALSHA", self._apply_sha, len(self._keys), *self._keys, self.token, self._writer_field, seq,
                     self._kinds, n_checks, len(self._overlay), *args)]
        if self.replicas:
            commands.append(("WAIT", self.replicas, self.replica_timeout_ms))
        if self._forget_records:
            commands.append(("HDEL", self.held_key, *self._forget_records))
            self._forget_records = []
        if self._forget_logs:
            commands.append(("HDEL", self.log_key, *self._forget_logs))
            self._forget_logs = []
        return commands

    def _apply_awaited(self, n: int) -> None:
        """sync, cache: validate what n read and apply its writes and record, awaited."""
        if (self.mode == "sync" and not self._overlay and not self._records and len(self._seen) <= 1
                and not self._forget_records):
            self._protected = self._closed = n  # nothing to apply, and one fresh read is consistent by itself
            return
        stored_before = len(self._stored)
        replies = self._link.call(*self._commands(n, checks=True))
        outcome = replies[0]
        if isinstance(outcome, list):  # a conflict: another instance changed what n read
            while len(self._stored) > stored_before:
                self._stored.pop()
            self._discard()
            raise StoreConflict(f"input {n}: another instance changed a value it read (check {outcome[1]}); "
                                f"run it again")
        self._check_applied(n, replies)
        if self._cache is not None:
            for k, (value, _) in self._overlay.items():
                self._cache[k] = value
        self._overlay.clear()
        self._records.clear()
        self.applications += 1
        self._acked(n)

    def _check_applied(self, seq: int, replies: list) -> None:
        outcome = replies[0]
        if isinstance(outcome, Exception):
            self._script_error(outcome, f"applying the writes of input {seq}")
        if outcome == b"LOST":
            self._lost(f"the writes of input {seq}")
        if outcome != b"OK":
            raise StoreError(f"redis at {self._link.where}: unexpected reply {outcome!r} to the writes of input {seq}")
        if self.replicas and (isinstance(replies[1], Exception) or replies[1] < self.replicas):
            raise StoreError(f"redis at {self._link.where}: the writes of input {seq} reached {replies[1]} of "
                             f"{self.replicas} replicas within {self.replica_timeout_ms} ms (WAIT): not protected")

    def _close(self, seq: int) -> None:
        """Send the unsent writes and records as one application covering inputs <= seq."""
        self._closed, self._queued_since = seq, None
        if self._overlay or self._records:
            commands = self._commands(seq, checks=False)
            if self._cache is not None:  # read_cache: what was written is what the store will hold
                for k, (value, _) in self._overlay.items():
                    self._cache[k] = value
            self._overlay.clear()
            self._records.clear()
            self._in_flight += 1
            if self.before_ship is not None:  # the worker's released outputs go out first
                self.before_ship()
            self._link.send(commands, lambda replies, seq=seq: self._on_reply(seq, replies))
        elif self._in_flight:
            self._after_pending = seq
        else:
            self._protected = seq
        if self._link.pending:
            self._link.poll()
        self._raise_failure()

    def _on_reply(self, seq: int, replies: list) -> None:
        self._in_flight -= 1
        try:
            self._check_applied(seq, replies)
        except StoreError as e:
            if self._failure is None:
                self._failure = e
            return
        self.applications += 1
        self._acked(seq)
        if not self._in_flight and self._after_pending > seq:  # inputs without writes closed after it
            self._protected, self._after_pending = self._after_pending, 0

    def _acked(self, seq: int) -> None:
        self._protected = self._written = seq
        logged = self._logged_at_store
        while logged and logged[0] <= seq:  # choices of protected inputs are not needed any more
            self._forget_logs.append(logged.popleft())

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _discard(self) -> None:
        """Forget the open input's reads and writes (a conflict): the cache loses what it read."""
        if self._cache is not None:
            for k in self._seen:
                self._cache.pop(k, None)
        self._seen.clear()
        self._overlay.clear()
        self._records.clear()
        for s in self._storages:
            s._counts.clear()

    def _lost(self, what: str):
        raise StoreLost(f"redis at {self._link.where} no longer holds {self.prefix} (restarted without persistence, "
                        f"or flushed) at {what}: the protected state of {self.instance} is gone; stop the run "
                        f"(a failover onto this store cannot recover it)")

    def _script_error(self, error: Exception, what: str):
        if str(error).startswith("NOSCRIPT"):  # the server forgot its scripts: restarted or replaced
            run = self._link.call(("HGET", self.meta_key, "run"))[0]
            if run != self.token:
                self._lost(what)
            raise StoreUnavailable(f"redis at {self._link.where} forgot the store's scripts at {what} (restarted or "
                                   f"failed over): writes in flight may be lost; fail over to a fresh instance")
        raise StoreError(f"redis at {self._link.where}: {error} at {what}")


# ---------------------------------------------------------------- the stateless paradigm for the worker processes

class PrivateStore:
    """A run's private store with a replica, for failures of the store (`nfproof run --fail
    store-failover@PKT`): `cut_replica()` stops the replica receiving (it lags from then on),
    `fail_over()` kills the primary and promotes the replica with what it has, `restart()` restarts
    the serving one without persistence."""

    def __init__(self):
        self.primary = RedisServer()
        try:
            self.replica = RedisServer(replicaof=self.primary)
            self.replica.wait_replicated(self.primary)
        except BaseException:
            self.stop()
            raise
        self.serving = self.primary

    @property
    def url(self) -> str:
        return self.serving.url

    @property
    def pid(self) -> int:
        return self.serving.pid

    def cut_replica(self) -> None:
        self.replica.pause()
        self.primary.disconnect_replicas()

    def fail_over(self) -> str:
        """The primary dies; the replica, resumed, becomes the master. Returns its URL."""
        self.primary.kill()
        self.replica.resume()
        self.replica.promote()
        self.serving = self.replica
        return self.replica.url

    def restart(self) -> None:
        self.serving.restart()

    def kill(self) -> None:
        self.serving.kill()

    def stop(self) -> None:
        for server in (getattr(self, "replica", None), self.primary):
            if server is not None:
                server.stop()


class StoreBackend(Backend):
    """runtime/failover.py's Backend of the stateless strategies: state at the store. The driver's
    `serve` starts the private server unless the settings name one (`redis`: a URL,
    `redis_cluster`: host:port,...); every worker's `open` connects to it."""

    paradigm = "stateless"

    @classmethod
    def serve(cls, strategy: Strategy, settings: dict) -> tuple[dict, object]:
        """settings: `redis` / `redis_cluster` (existing servers), else a private server (`replica`:
        with a replica of it, for a failover of the store); the stop callable is bound to the
        private RedisServer or PrivateStore."""
        parse_mode(strategy)
        options = {k: settings[k] for k in ("replicas", "read_cache") if settings.get(k)}
        url, cluster = settings.get("redis"), settings.get("redis_cluster")
        if url is not None or cluster is not None:
            connect(url, cluster).close()  # reachable now, or a one-line error before any worker starts
            return {**options, ("redis_cluster" if cluster is not None else "redis"): cluster or url}, None
        server = PrivateStore() if settings.get("replica") else RedisServer()
        return {**options, "redis": server.url}, server.stop


    _warm: tuple | None = None  # (redis, redis_cluster) -> the Store a spare connected while it waited

    @classmethod
    def warm(cls, spec: InstanceSpec) -> None:
        """A spare, before it is assigned: connects to the store named in `spec` and opens the link
        its instance will use (redis-py's first connection and command paths run now, not in the
        takeover); `open` PINGs on that link and uses it. A store that does not answer now is left
        for `open` to report."""
        where = (spec.options.get("redis"), spec.options.get("redis_cluster"))
        if where == (None, None):
            return
        cls._warm, store = None, None
        try:
            store = connect(*where)
            store.warm()
            cls._warm = (where, store)
        except StoreError:
            if store is not None:
                store.close()

    def open(self, spec: InstanceSpec, fresh: bool, info: dict | None = None) -> StoreInstance:
        options = spec.options
        if options.get("redis") is None and options.get("redis_cluster") is None:
            raise StoreError(f"instance {spec.instance}: its spec names no store (options redis or redis_cluster); "
                             f"StoreBackend.serve gives them")
        from ..models import lookup
        nf_cls = lookup(spec.nf)
        where, warm = StoreBackend._warm or (None, None)
        StoreBackend._warm = None
        if where == (options.get("redis"), options.get("redis_cluster")):
            store = warm
            try:
                store.check()  # it answered while the spare waited; it must still, as connect() asks
            except StoreError:
                store.close()
                raise
        else:
            if warm is not None:
                warm.close()
            store = connect(options.get("redis"), options.get("redis_cluster"))
        token = info.get("token") if info else None
        try:
            handle = StoreInstance(store, nf_cls, spec.chain, spec.instance, spec.strategy,
                                   writer=int(options.get("writer", 0)), attach="new" if fresh else "resume",
                                   token=token.encode() if token else None, replicas=int(options.get("replicas", 0)),
                                   read_cache=bool(options.get("read_cache", False)))
        except BaseException:
            store.close()
            raise
        handle.owned_store = store
        return handle
