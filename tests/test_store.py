"""runtime/store.py: the stateless paradigm's store layer, against real redis-server processes on
free loopback ports (and a real 3-master Redis Cluster): nothing mocked.

- Servers: the private server (no persistence, stopped with its files), connect()'s three forms,
  one-line errors for bad URLs and cluster specs.
- Keys and encodings: one hash-tagged namespace (one cluster slot), Maps as hashes, Sets as sets,
  Counters as strings, ints in decimal, Flows in 13 bytes, odd record widths; pool counts kept
  by the write script, right across writers and deletions.
- Every mode's semantics: what is in Redis after each input, what end() and protected() say;
  read_cache (batched modes reading their own local view) reads once.
- Atomic read-modify-write: two NAT instances sharing a namespace never take the same port (in
  an interleaving that forces the race and in two real processes), where the unvalidated async
  mode does take it twice (so the test can fail).
- Store failures: a restart without persistence loses the state, and says so (StoreUnavailable,
  StoreLost), never silently; a lagging replica promoted holds less than was acknowledged
  (StoreBehind), and WAIT-acknowledged writes (replicas=1) refuse to acknowledge instead.
- Handlers of nat, firewall, ratelimit, monitor (and a model with every kind of declaration)
  stepping on the store-backed state give the outputs, drops, choices and state of
  models/concrete.py's storages, for random inputs, in every mode; a fresh instance reads it back
  and goes on alike; count_in on a 64512-port pool is one command; a new life empties only its
  own namespace.
- runtime/failover.py's interface: StoreBackend.serve/open, records held until released,
  --log-choices logs, recover().
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import socket
import time
from typing import NamedTuple

import pytest
import redis
from redis.crc import key_slot

from nfproof.models.api import NF, TCP, UDP, Bits, Counter, Flow, Map, ModelError, Packet, Pool, Set, flags
from nfproof.models.concrete import freeze_state, initial_state, step
from nfproof.models.firewall import Firewall
from nfproof.models.monitor import Monitor
from nfproof.models.nat import Nat
from nfproof.models.ratelimit import RateLimit
from nfproof.runtime.failover import InstanceSpec, Record, backend_class
from nfproof.runtime.rng import InstanceRng, StreamChooser
from nfproof.models.strategy import Strategy
from nfproof.runtime.store import (RedisClusterServers, RedisServer, Store, StoreBehind, StoreConflict, StoreError,
                                   StoreInstance, StoreLost, StoreUnavailable, codec, connect, namespace)

MODES = ["sync", "cache", "async", "batch:3", "commit:3", "batch:3+read_cache", "commit:3+read_cache"]
EXTERNAL = Nat.external


# ---- fixtures: every server is stopped, whatever the test does ---------------------------------------

@pytest.fixture(scope="module")
def server():
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="module")
def store(server):
    with connect(server.url) as st:
        yield st


@pytest.fixture
def own_server():
    with RedisServer() as s:
        yield s


def raw(server_or_store) -> redis.Redis:
    if isinstance(server_or_store, Store):
        return server_or_store.client()
    return server_or_store.client()


def chooser(seed=1, k=0):
    return StreamChooser(InstanceRng(seed, k))


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# ---- a model with every kind of declaration --------------------------------------------------------

Slot = Bits(10, "Slot")
Total = Bits(6, "Total")


class Pair(NamedTuple):  # a record kind of odd widths: the codec's generic path
    low: int
    slot: int


Pair.widths = (3, 12)
FIN = flags("F")


class Ledger(NF):
    """Outbound: a new flow takes a free slot of 16 (a pool choice from an int-keyed Map) and is
    remembered three ways; a FIN frees it. Inbound: toggles a slot in an int-keyed Set and picks a
    free one of it into the label. Every packet counts in a 6-bit Counter (wraps at 64)."""

    name = "ledger"
    gates = ("wan", "lan")
    owner = Map(Slot, Flow)
    pairs = Map(Flow, Pair)
    seen = Set(Flow)
    ring = Set(Slot)
    total = Counter(Total)

    def handle(self, pkt, ctx):
        self.total = self.total + 1
        if pkt.inbound:
            k = pkt.dport & 15
            if k in self.ring:
                self.ring.discard(k)
            else:
                self.ring.add(k)
            pick = ctx.choose(Pool(0, 16, Slot).free(self.ring))
            return ctx.emit(pkt.rewrite(label=0 if pick is None else pick), "lan")
        flow = pkt.flow
        if flow in self.seen:
            pair = self.pairs[flow]
            if pkt.flags & FIN:
                del self.owner[pair.slot]
                del self.pairs[flow]
                self.seen.discard(flow)
            return ctx.emit(pkt.rewrite(sport=pair.slot, label=self.total), "wan")
        slot = ctx.choose(Pool(0, 16, Slot).free(self.owner))
        if slot is None:
            return ctx.drop("full")
        self.owner[slot] = flow
        self.pairs[flow] = Pair(pkt.sport, slot)
        self.seen.add(flow)
        ctx.emit(pkt.rewrite(sport=slot), "wan")


# ---- random traffic, per model ---------------------------------------------------------------------

HOSTS = [0x0A000001 + k for k in range(4)]
REMOTES = [0xC6336401, 0xC0000A0A]
FLAG_MIX = [flags("S"), flags("SA"), flags("A"), flags("F"), flags("R"), 0]


HANDSHAKE = [(False, flags("S")), (True, flags("SA")), (False, flags("A")), (False, flags("A")), (True, flags("A"))]


def random_inputs(rng: random.Random, nf_cls, n: int) -> list[tuple[Packet, int]]:
    """(packet, clock ticks) pairs: flows from a few hosts that mostly follow a TCP handshake and
    then exchange data both ways (UDP likewise), with stray flags, unsolicited inbound packets and
    ends (FIN, RST) mixed in; inbound packets answer the flow (at the NAT: its external address and
    a pool port); the clock advances by 0..3 ticks."""
    out, now, progress = [], 0, {}
    pool = list(range(Nat.base, Nat.base + 8))
    for _ in range(n):
        now += rng.choice([0, 0, 1, 3])
        proto = rng.choice([TCP, TCP, UDP])
        host, remote, sport = rng.choice(HOSTS), rng.choice(REMOTES), rng.choice([1000, 1001, 1002])
        key = (proto, host, sport, remote)
        k = progress.get(key, 0)
        inbound, fl = HANDSHAKE[min(k, len(HANDSHAKE) - 1)] if k < len(HANDSHAKE) else (rng.random() < 0.5, flags("A"))
        if rng.random() < 0.15:
            inbound, fl = rng.random() < 0.5, rng.choice(FLAG_MIX)
        progress[key] = 0 if fl & (flags("F") | flags("R")) else k + 1
        length = rng.choice([0, 60, 1500])
        if not inbound:
            pkt = Packet(proto, host, sport, remote, 80, fl, False, length)
        elif nf_cls.name == "nat":
            pkt = Packet(proto, remote, 80, EXTERNAL, rng.choice(pool), fl, True, length)
        else:
            pkt = Packet(proto, remote, 80, host, sport if rng.random() < 0.9 else 1003, fl, True, length)
        out.append((pkt, now))
    return out


MODELS = {
    "nat": Nat.configure({"ports": 8}),
    "firewall": Firewall,
    "ratelimit": RateLimit.configure({"capacity": 2}),
    "monitor": Monitor.configure({"threshold": 3, "byte_threshold": 3000}),
    "ledger": Ledger,
}


def result_of(res):
    return res.outputs, res.drops, res.choices, res.clock_reads


# ---- servers and connect() -------------------------------------------------------------------------

def test_private_server_has_no_persistence_and_stops_with_its_files():
    s = RedisServer()
    try:
        client = s.client(decode_responses=True)
        assert client.ping()
        assert client.config_get("save") == {"save": ""} and client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        pid, port, directory = s.pid, s.port, s.dir
        client.close()
    finally:
        s.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert port_is_free(port) and not os.path.exists(directory)


def test_connect_embedded_default_starts_and_stops_a_private_server():
    st = connect()
    try:
        assert st.server is not None and st.url == st.server.url
        pid = st.server.pid
        assert st.client().ping()
    finally:
        st.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_connect_url_uses_the_existing_server(server):
    with connect(server.url) as st:
        assert st.server is None and st.kwargs["port"] == server.port
    assert server.client().ping()  # closing a store that did not start the server leaves it running


def test_bad_store_addresses_are_one_line_errors(server):
    dead = RedisServer()
    dead_port = dead.port
    dead.stop()
    cases = [(lambda: connect(f"redis://127.0.0.1:{dead_port}/0"), "cannot reach the server"),
             (lambda: connect("http://x"), "redis://host:port/db"),
             (lambda: connect(cluster="127.0.0.1"), "is not host:port"),
             (lambda: connect(server.url, cluster=f"127.0.0.1:{server.port}"), "not both"),
             (lambda: StoreInstance(None, Nat, "c", "nat", "stateful.sync"), "keeps state in the instance"),
             (lambda: StoreInstance(None, Nat, "c", "nat", "commit"), "needs a positive integer"),
             (lambda: StoreInstance(None, Nat, "c", "nat", "fast"), "is unknown; valid: sync, async")]
    for make, text in cases:
        with pytest.raises(StoreError) as info:
            make()
        message = str(info.value)
        assert text in message and "\n" not in message, message


# ---- keys and encodings ----------------------------------------------------------------------------

def test_namespace_keys_encodings_and_one_slot(store):
    nat = Nat.configure({"ports": 50})
    inst = store.instance(nat, "fw>nat", "nat", "sync")
    flow = Flow(TCP, HOSTS[0], 1000, REMOTES[0], 80)
    res, release = inst.run(1, Packet(*flow), chooser())
    assert release and res.outputs
    port = res.choices[0]
    client = raw(store)
    prefix = "nfproof:{fw>nat:nat}"
    keys = sorted(k.decode() for k in client.keys(prefix + "*"))
    assert keys == [f"{prefix}:by_flow", f"{prefix}:by_port", f"{prefix}:by_port:counts", f"{prefix}:meta"]
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one instance: one cluster slot
    assert client.type(f"{prefix}:by_flow") == b"hash"
    assert client.hgetall(f"{prefix}:by_flow") == {bytes([TCP]) + HOSTS[0].to_bytes(4, "big") + (1000).to_bytes(2, "big")
                                                    + REMOTES[0].to_bytes(4, "big") + (80).to_bytes(2, "big"): b"%d" % port}
    assert client.hgetall(f"{prefix}:by_port") == {b"%d" % port: codec(Flow)[0](flow)}
    assert len(codec(Flow)[0](flow)) == 13
    assert client.hgetall(f"{prefix}:by_port:counts") == {b"%d,%d" % (nat.base, nat.base + nat.ports): b"1"}
    assert client.hget(f"{prefix}:meta", "applied:0") == b"1"
    assert namespace("a{b}c", "x") == "nfproof:{a%7Bb%7Dc:x}"  # braces escaped: the tag stays the tag
    inst.close()


def test_sets_counters_and_odd_record_widths(store):
    inst = store.instance(Ledger, "c", "ledger", "sync")
    flow = Flow(TCP, HOSTS[1], 1005, REMOTES[1], 80)
    inst.run(1, Packet(*flow), chooser())
    inst.run(2, Packet(TCP, REMOTES[1], 80, HOSTS[1], 3, 0, True), chooser())
    client, prefix = raw(store), "nfproof:{c:ledger}"
    assert client.type(f"{prefix}:seen") == b"set" and client.type(f"{prefix}:total") == b"string"
    assert client.get(f"{prefix}:total") == b"2"
    assert client.smembers(f"{prefix}:ring") == {b"3"}
    slot = int(next(iter(client.hkeys(f"{prefix}:owner"))))
    assert client.hget(f"{prefix}:pairs", codec(Flow)[0](flow)) == bytes([1005 & 7]) + slot.to_bytes(2, "big")
    encode, decode = codec(Pair)
    assert decode(encode(Pair(5, 4000))) == Pair(5, 4000) and len(encode(Pair(5, 4000))) == 3
    assert dict(inst.state["pairs"].copy()) == {flow: Pair(1005 & 7, slot)}
    inst.close()


def test_pool_counts_stay_right_across_deletions_and_writers(store):
    """The count of keys in a pool range is kept by the write script, whoever writes: checked
    against the keys themselves after every input of two writers sharing the namespace."""
    a = store.instance(Ledger, "c", "counts", "sync")
    b = StoreInstance(store, Ledger, "c", "counts", "sync", writer=1, attach="join")
    rng = random.Random(5)
    client, prefix = raw(store), "nfproof:{c:counts}"
    for n in range(1, 121):
        inst = a if rng.random() < 0.5 else b
        host, sport = rng.choice(HOSTS), rng.choice([1000, 1001, 1002, 1003])
        pkt = Packet(TCP, host, sport, REMOTES[0], 80, rng.choice([0, 0, FIN]), rng.random() < 0.3, 0)
        inst.run(n, pkt, chooser(n))
        owners = {int(k) for k in client.hkeys(f"{prefix}:owner")}
        ring = {int(k) for k in client.smembers(f"{prefix}:ring")}
        counts = client.hgetall(f"{prefix}:owner:counts")
        assert counts == {b"0,16": b"%d" % len(owners)}
        ring_counts = client.hgetall(f"{prefix}:ring:counts")
        assert ring_counts in ({}, {b"0,16": b"%d" % len(ring)})
    assert 0 < len(owners) <= 16
    fresh = a.fresh_instance(expect_written=0)
    assert fresh.state["owner"].count_in(0, 16) == len(owners)  # one read of the kept count
    fresh.close()
    a.close()
    b.close()


def test_count_in_is_one_command_on_a_large_pool(store):
    nat = Nat.configure({"ports": 64512})
    inst = store.instance(nat, "c", "big", "batch:64")
    flows = [Packet(UDP, 0x0A000000 + k // 1000, k % 1000, REMOTES[0], 53) for k in range(3000)]
    draws = chooser()
    for n, pkt in enumerate(flows, 1):
        inst.run(n, pkt, draws)
    inst.flush(wait=True)
    fresh = inst.fresh_instance()
    calls, call = [], fresh._link.call
    fresh._link.call = lambda *commands: (calls.append(commands), call(*commands))[1]
    assert fresh.state["by_port"].count_in(nat.base, nat.ports) == 3000
    assert len(calls) == 1 and len(calls[0]) == 1        # one command: the kept count, no scan of the keys
    assert fresh.state["by_port"].count_in(nat.base, nat.ports) == 3000 and len(calls) == 1  # then local
    fresh.close()
    inst.close()


def test_a_new_life_empties_its_namespace_and_nothing_else(store):
    client = raw(store)
    other = store.instance(Monitor, "aXb", "monitor", "sync")  # a namespace the glob a*b would match
    other.run(1, new_flow(1), chooser())
    second = StoreInstance(store, Monitor, "a*b", "monitor", "sync", writer=1, attach="join")
    second.begin(1)
    step(Monitor, second.state, new_flow(1), chooser())
    second.end(1, record(1))                                  # leaves writer 1's held record
    assert client.exists("nfproof:{a*b:monitor}:held:1")
    fresh = store.instance(Monitor, "a*b", "monitor", "sync")  # a new life: writer 1's records go too
    assert client.keys("nfproof:{a\\*b:monitor}*") == [b"nfproof:{a*b:monitor}:meta"]
    assert client.hlen("nfproof:{aXb:monitor}:packets") == 1
    for inst in (other, second, fresh):
        inst.close()


def test_iterating_store_state_in_a_handler_is_a_model_error(store):
    class Lister(NF):
        name = "lister"
        gates = ("wan",)
        seen = Map(Flow, Bits(8, "N"))

        def handle(self, pkt, ctx):
            for _ in self.seen:
                pass
            ctx.emit(pkt, "wan")

    inst = store.instance(Lister, "c", "lister", "sync")
    with pytest.raises(ModelError, match="iterating a Map is not supported"):
        inst.run(1, Packet(), chooser())
    inst.close()


# ---- the modes: what is in Redis after each input, and what end() and protected() say -------------------

def stored_flows(store, chain) -> int:
    return raw(store).hlen(f"nfproof:{{{chain}:monitor}}:packets")


def new_flow(n):
    return Packet(UDP, HOSTS[0], 2000 + n, REMOTES[0], 53, 0, False, 100)


def wait_protected(inst, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while inst.protected() < n and time.monotonic() < deadline:
        time.sleep(0.0005)
    return inst.protected()


def test_sync_applies_each_input_before_end_returns(store):
    inst = store.instance(Monitor, "m-sync", "monitor", "sync")
    for n in range(1, 6):
        inst.begin(n)
        step(Monitor, inst.state, new_flow(n), chooser())
        assert stored_flows(store, "m-sync") == n - 1  # nothing reaches the store during the handler
        assert inst.end(n) is True
        assert stored_flows(store, "m-sync") == n and inst.protected() == n
    assert raw(store).hget("nfproof:{m-sync:monitor}:meta", "applied:0") == b"5"
    inst.close()


def test_cache_reads_locally_and_writes_through(store):
    inst = store.instance(Monitor, "m-cache", "monitor", "cache")
    flow = new_flow(1)
    for n in (1, 2):
        res, release = inst.run(n, flow, chooser())
        assert release and inst.protected() == n
    key = codec(Flow)[0](flow.flow)
    client = raw(store)
    assert client.hget("nfproof:{m-cache:monitor}:packets", key) == b"2"
    client.hset("nfproof:{m-cache:monitor}:packets", key, b"40")  # another writer, behind the cache's back
    inst.begin(3)
    assert inst.state["packets"].get(flow.flow) == 2          # read from the cache, not the store
    step(Monitor, inst.state, flow, chooser())
    with pytest.raises(StoreConflict):                        # the write-through finds the change
        inst.end(3)
    assert client.hget("nfproof:{m-cache:monitor}:packets", key) == b"40"  # nothing of input 3 applied
    inst.run(3, flow, chooser())                              # run again: fresh reads
    assert client.hget("nfproof:{m-cache:monitor}:packets", key) == b"41"
    inst.close()


def test_async_sends_when_64_inputs_wait_not_awaited(store):
    inst = store.instance(Monitor, "m-async", "monitor", "async")
    assert inst.policy.flush_every == 64 and inst.policy.flush_seconds == 0.001
    inst.policy = dataclasses.replace(inst.policy, flush_seconds=None)  # the count alone (no deadline)
    for n in range(1, 65):
        res, release = inst.run(n, new_flow(n), chooser())
        assert release is True                                # released at once
        if n < 64:
            assert stored_flows(store, "m-async") == 0 and inst.protected() == 0
    assert wait_protected(inst, 64) == 64 and stored_flows(store, "m-async") == 64
    inst.close()


def test_async_sends_what_waited_1ms(store):
    inst = store.instance(Monitor, "m-async1", "monitor", "async")
    inst.run(1, new_flow(1), chooser())
    assert stored_flows(store, "m-async1") == 0               # queued: nothing sends in the background
    time.sleep(0.002)
    assert wait_protected(inst, 1) == 1 and stored_flows(store, "m-async1") == 1  # protected() sent it
    inst.close()


def test_batch_sends_every_b_inputs_and_releases_at_once(store):
    inst = store.instance(Monitor, "m-batch", "monitor", "batch:3")
    for n in range(1, 8):
        res, release = inst.run(n, new_flow(n), chooser())
        assert release is True
        if n % 3:
            assert stored_flows(store, "m-batch") == n - n % 3
    assert wait_protected(inst, 6) == 6 and stored_flows(store, "m-batch") == 6
    assert inst.flush(wait=True) == 7 and stored_flows(store, "m-batch") == 7
    inst.close()


def test_commit_holds_outputs_until_the_batch_is_acknowledged(store):
    inst = store.instance(Monitor, "m-commit", "monitor", "commit:3")
    assert inst.policy.hold and inst.policy.flush_idle
    releases = []
    for n in range(1, 6):
        res, release = inst.run(n, new_flow(n), chooser())
        releases.append(release)
        if n < 3:
            assert release is False and stored_flows(store, "m-commit") == 0 and inst.protected() == 0
    assert releases[:2] == [False, False]
    assert wait_protected(inst, 3) == 3 and stored_flows(store, "m-commit") == 3
    assert releases[3] is False and inst.protected() == 3   # input 4 waits for the next batch
    assert inst.flush(wait=True) == 5 and stored_flows(store, "m-commit") == 5  # closed early (idle)
    inst.close()


def test_read_cache_reads_once_and_is_for_the_unvalidated_modes(store):
    inst = store.instance(Monitor, "m-rc", "monitor", "commit:4", read_cache=True)
    calls, call = [], inst._link.call
    inst._link.call = lambda *commands: (calls.append(commands), call(*commands))[1]
    flow = new_flow(1)
    for n in range(1, 9):
        inst.run(n, flow, chooser())
    assert len(calls) == 1                                    # one read of the flow's three entries, then local
    inst.flush(wait=True)
    assert inst.fresh_instance().state["packets"].get(flow.flow) == 8
    for mode in ("sync", "cache"):
        with pytest.raises(StoreError, match="read_cache is for async, batch and commit"):
            store.instance(Monitor, "m-rc", "monitor", mode, read_cache=True)
    inst.close()


def test_reads_see_the_inputs_not_sent_yet(store):
    """Under batch and commit the store lags the instance: the handler reads its own unsent writes."""
    inst = store.instance(Monitor, "m-own", "monitor", "batch:50")
    flow = new_flow(1)
    for n in range(1, 6):
        inst.run(n, flow, chooser())
    assert stored_flows(store, "m-own") == 0 and inst.state["packets"].get(flow.flow) == 5
    inst.flush(wait=True)
    assert inst.fresh_instance().state["packets"].get(flow.flow) == 5
    inst.close()


# ---- the atomic port race ---------------------------------------------------------------------------

RACE_NAT = Nat.configure({"ports": 400})


def _race_flow(who, k):
    return Packet(TCP, HOSTS[who], 1000 + k, REMOTES[0], 80, flags("S"))


@pytest.mark.parametrize("mode", ["sync", "cache"])
def test_two_instances_racing_for_a_port_never_share_it(store, mode):
    """A reads a free port, B takes that very port (same choice stream), then A's write comes: the
    script finds by_port[p] taken, applies nothing, and A runs again onto another port."""
    a = store.instance(RACE_NAT, "race", "nat", mode)
    b = StoreInstance(store, RACE_NAT, "race", "nat", mode, writer=1, attach="join")
    a.begin(1)
    res_a = step(RACE_NAT, a.state, _race_flow(0, 0), chooser(7))
    res_b, _ = b.run(1, _race_flow(1, 0), chooser(7))
    assert res_a.choices == res_b.choices                     # the race: both chose the same port
    with pytest.raises(StoreConflict):
        a.end(1)
    res_a, _ = a.run(1, _race_flow(0, 0), chooser(8))
    by_port = raw(store).hgetall("nfproof:{race:nat}:by_port")
    assert len(by_port) == 2 and res_a.choices != res_b.choices
    a.close()
    b.close()


def test_unvalidated_writes_do_take_a_port_twice(store):
    """The same interleaving under async (writes not validated): both flows get port p, and the
    second write overwrites the first one's reverse mapping: what the validation prevents."""
    a = store.instance(RACE_NAT, "race-async", "nat", "async")
    b = StoreInstance(store, RACE_NAT, "race-async", "nat", "async", writer=1, attach="join")
    a.begin(1)
    res_a = step(RACE_NAT, a.state, _race_flow(0, 0), chooser(7))
    res_b, _ = b.run(1, _race_flow(1, 0), chooser(7))
    b.flush(wait=True)
    a.end(1)
    a.flush(wait=True)
    client = raw(store)
    assert res_a.choices == res_b.choices
    assert len(client.hgetall("nfproof:{race-async:nat}:by_port")) == 1
    assert len(set(client.hvals("nfproof:{race-async:nat}:by_flow"))) == 1  # two flows, one port
    a.close()
    b.close()


def _race_worker(url, who, flows, mode, start, queue):
    st = connect(url)
    inst = StoreInstance(st, RACE_NAT, "race-proc", "nat", mode, writer=who, attach="join")
    ports, draws = [], chooser(11)
    start.wait(30)  # both instances draw from the same stream: the same ports
    for k in range(flows):
        start.wait(30)  # in step, flow by flow: a process that ran ahead would see every port the other took
        res, _ = inst.run(k + 1, _race_flow(who, k), draws)
        ports.append(res.choices[0])
    inst.flush(wait=True)
    queue.put((who, ports, inst.conflicts))
    inst.close()
    st.close()


@pytest.mark.parametrize("mode", ["sync", "cache", "async"])
def test_two_processes_racing_for_nat_ports(server, store, mode):
    """Two processes map 180 flows each onto one 400-port pool, drawing the same ports in the same
    order: validated modes never give a port to two flows (and did run inputs again); async, whose
    writes are neither awaited nor validated, does (the negative control: the check bites)."""
    flows = 180
    st_setup = store.instance(RACE_NAT, "race-proc", "nat", mode)  # a new life for the namespace
    st_setup.close()
    ctx = multiprocessing.get_context("fork")
    queue, start = ctx.Queue(), ctx.Barrier(2)
    workers = [ctx.Process(target=_race_worker, args=(server.url, who, flows, mode, start, queue)) for who in (0, 1)]
    for w in workers:
        w.start()
    try:
        results = dict((who, (ports, conflicts)) for who, ports, conflicts in (queue.get(timeout=60) for _ in workers))
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    ports = results[0][0] + results[1][0]
    client = raw(store)
    by_port = client.hgetall("nfproof:{race-proc:nat}:by_port")
    by_flow = client.hgetall("nfproof:{race-proc:nat}:by_flow")
    if mode == "async":
        assert len(set(ports)) < len(ports) and len(by_port) < len(by_flow)  # ports taken twice
        return
    assert len(ports) == 2 * flows and len(set(ports)) == 2 * flows  # no port given to two flows
    assert len(by_port) == len(by_flow) == 2 * flows
    assert all(by_port[port] == flow for flow, port in by_flow.items())  # both directions agree
    assert client.hget("nfproof:{race-proc:nat}:by_port:counts", b"%d,%d" % (RACE_NAT.base, RACE_NAT.base + 400)) \
        == b"%d" % (2 * flows)
    assert results[0][1] + results[1][1] > 0  # the same draws: the instances did collide, and ran again


# ---- store failures ---------------------------------------------------------------------------------

def nat_flows(n):
    return [Packet(TCP, HOSTS[k % 4], 1000 + k, REMOTES[0], 80, flags("S")) for k in range(n)]


def test_restart_without_persistence_loses_the_state_and_says_so(own_server):
    nat = Nat.configure({"ports": 100})
    st = connect(own_server.url)
    inst = st.instance(nat, "c", "nat", "sync")
    for n, pkt in enumerate(nat_flows(5), 1):
        inst.run(n, pkt, chooser())
    assert raw(own_server).hlen("nfproof:{c:nat}:by_flow") == 5
    own_server.restart()
    assert raw(own_server).keys("*") == []                    # every key is gone
    with pytest.raises(StoreUnavailable, match="connection lost"):
        inst.run(6, nat_flows(6)[5], chooser())
    with pytest.raises(StoreLost, match="no longer holds"):   # reconnected: the read sees the life token gone
        inst.run(6, nat_flows(6)[5], chooser())
    with pytest.raises(StoreLost, match="holds no state"):    # and a failover has nothing to start from
        inst.fresh_instance()
    inst.close()
    st.close()


def test_restart_under_async_fails_the_queued_writes_loudly(own_server):
    st = connect(own_server.url)
    inst = st.instance(Monitor, "c", "monitor", "batch:100")
    for n in range(1, 4):
        inst.run(n, new_flow(n), chooser())
    own_server.restart()
    with pytest.raises((StoreUnavailable, StoreLost)):
        inst.flush(wait=True)
    inst.close()
    st.close()


def test_lagging_replica_promoted_holds_less_than_was_acknowledged():
    nat = Nat.configure({"ports": 100})
    pkts = nat_flows(8)
    with RedisServer() as primary, RedisServer(replicaof=primary) as replica:
        st = connect(primary.url)
        inst = st.instance(nat, "c", "nat", "sync")
        reference = initial_state(nat)
        ref_chooser, inst_chooser = chooser(), chooser()
        for n, pkt in enumerate(pkts[:3], 1):
            inst.run(n, pkt, inst_chooser)
            step(nat, reference, pkt, ref_chooser)
        replica.wait_replicated(primary)
        after_3 = freeze_state(reference)
        replica.pause()                                       # replication stalls...
        assert primary.disconnect_replicas() == 1             # ...and its link closes: writes reach no replica
        for n, pkt in enumerate(pkts[3:], 4):
            res, release = inst.run(n, pkt, inst_chooser)     # acknowledged by the primary alone
            assert release and inst.protected() == n
        primary.kill()
        replica.resume()
        replica.promote()
        with connect(replica.url) as promoted:
            with pytest.raises(StoreBehind, match="inputs 4..8 are lost"):
                inst.fresh_instance(store=promoted)
            lagging = inst.fresh_instance(store=promoted, expect_written=0)
            assert lagging.protected() == 3 and lagging.frozen() == after_3
            lagging.close()
        inst.close()
        st.close()


def test_wait_acknowledged_writes_refuse_to_run_ahead_of_the_replica():
    with RedisServer() as primary, RedisServer(replicaof=primary) as replica:
        replica.wait_replicated(primary)
        st = connect(primary.url)
        inst = st.instance(Monitor, "c", "monitor", "sync", replicas=1, replica_timeout_ms=300)
        res, release = inst.run(1, new_flow(1), chooser())
        assert release and inst.protected() == 1
        replica.pause()
        with pytest.raises(StoreError, match="reached 0 of 1 replicas"):
            inst.run(2, new_flow(2), chooser())
        assert inst.protected() == 1                           # never acknowledged ahead of the replica
        replica.resume()
        inst.close()
        st.close()


# ---- handlers on the store-backed state: exactly models/concrete.py's behaviour ---------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_handlers_step_alike_on_the_store_and_on_concrete_storages(store, name, mode):
    nf_cls = MODELS[name]
    rng = random.Random(f"{name}/{mode}")
    inputs = random_inputs(rng, nf_cls, 160)
    reference = initial_state(nf_cls)
    inst = store.instance(nf_cls, f"eq-{mode}", name, mode.split("+")[0], read_cache=mode.endswith("+read_cache"))
    ref_chooser, inst_chooser = chooser(3), chooser(3)
    emitted = dropped = 0
    for n, (pkt, now) in enumerate(inputs, 1):
        want = step(nf_cls, reference, pkt, ref_chooser, lambda now=now: now)
        got, _ = inst.run(n, pkt, inst_chooser, lambda now=now: now)
        assert result_of(got) == result_of(want), (n, pkt)
        emitted, dropped = emitted + len(want.outputs), dropped + len(want.drops)
        if n % 40 == 0:
            assert inst.frozen() == freeze_state(reference)
    assert emitted > 30 and (dropped > 0) == (name != "monitor")
    inst.flush(wait=True)
    assert inst.frozen() == freeze_state(reference)
    fresh = inst.fresh_instance()
    assert fresh.frozen() == freeze_state(reference) and fresh.protected() == inst.written() <= inst.protected()
    # the fresh instance goes on exactly as the concrete state does
    for n, (pkt, now) in enumerate(random_inputs(rng, nf_cls, 30), len(inputs) + 1):
        want = step(nf_cls, reference, pkt, ref_chooser, lambda now=now + 100: now)
        got, _ = fresh.run(n, pkt, inst_chooser, lambda now=now + 100: now)
        assert result_of(got) == result_of(want)
    fresh.flush(wait=True)
    assert fresh.frozen() == freeze_state(reference)
    fresh.close()
    inst.close()


def test_snapshot_is_a_concrete_state(store):
    inst = store.instance(Ledger, "c", "snap", "commit:4")
    reference = initial_state(Ledger)
    for n, (pkt, now) in enumerate(random_inputs(random.Random(2), Ledger, 30), 1):
        step(Ledger, reference, pkt, chooser(n))
        inst.run(n, pkt, chooser(n))
    snap = inst.snapshot()
    assert freeze_state(snap) == freeze_state(reference)
    assert type(snap["owner"]).__name__ == "DictMap" and type(snap["total"]).__name__ == "Cell"
    inst.close()


# ---- runtime/failover.py's interface ------------------------------------------------------------------

def record(n, outputs=(("wan", (6, 1, 2, 3, 4)),), choices=(), clocks=()):
    return Record(n, n, list(outputs), [], list(choices), list(clocks))


def test_records_are_held_until_released_and_recovered_with_r(store):
    inst = store.instance(Monitor, "held", "monitor", "sync")
    client, held = raw(store), "nfproof:{held:monitor}:held:0"
    for n in range(1, 4):
        inst.begin(n)
        step(Monitor, inst.state, new_flow(n), chooser())
        assert inst.end(n, record(n)) is True
    assert sorted(int(k) for k in client.hkeys(held)) == [1, 2, 3]
    inst.released(2)
    inst.begin(4)
    step(Monitor, inst.state, new_flow(4), chooser())
    inst.end(4, record(4))                                    # the forgets travel with the next application
    assert sorted(int(k) for k in client.hkeys(held)) == [3, 4]
    fresh = inst.fresh_instance()
    recovery = fresh.recover()
    assert recovery.r == 4 and [r.n for r in recovery.held] == [3, 4]
    assert recovery.held[0] == record(3)
    fresh.close()
    inst.close()


def test_commit_records_and_logged_choices_for_a_replacement(store):
    nat = Nat.configure({"ports": 100})
    inst = store.instance(nat, "logs", "nat", "commit:2")
    choices = {}
    for n, pkt in enumerate(nat_flows(3), 1):
        inst.begin(n)
        res = step(nat, inst.state, pkt, chooser(), lambda: 7)
        choices[n] = res.choices
        rec = record(n, choices=res.choices, clocks=[7])
        inst.log(n, rec)                                      # acknowledged on return
        assert inst.logged() == n
        assert inst.end(n, rec) is False or n == 2
    assert wait_protected(inst, 2) == 2
    fresh = inst.fresh_instance()                             # as if the primary died now
    recovery = fresh.recover()
    assert recovery.r == 2 and [r.n for r in recovery.held] == [1, 2]
    assert recovery.held[1].choices == choices[2]
    assert recovery.logs == {3: (choices[3], [7])}            # the choices of the input past r
    fresh.close()
    inst.close()


def test_store_backend_serves_and_opens_workers_handles():
    strategy = Strategy.parse("stateless.sync")
    backend_cls = backend_class(strategy)
    options, stop = backend_cls.serve(strategy, {})
    try:
        assert options["redis"].startswith("redis://127.0.0.1:")
        spec = InstanceSpec(chain="firewall>nat", params=["nat.ports=100"], instance="nat", nf="nat[ports=100]",
                            index=1, seed=1, strategy="stateless.sync", options=options)
        handle = backend_cls().open(spec, fresh=True)
        assert handle.nf_cls.ports == 100 and handle.fileno() is not None
        pkt = nat_flows(1)[0]
        handle.begin(1)
        res = step(handle.nf_cls, handle.state, pkt, chooser())
        assert handle.end(1, record(1, choices=res.choices)) is True and handle.protected() == 1
        info = handle.info()
        handle.close()
        replacement = backend_cls().open(spec, fresh=False, info=info)
        recovery = replacement.recover()
        assert recovery.r == 1 and recovery.held[0].choices == res.choices
        assert replacement.state["by_flow"].get(pkt.flow) == res.choices[0]
        replacement.close()
        with pytest.raises(StoreLost, match="re-created"):
            backend_cls().open(spec, fresh=False, info={"token": "0" * 16})
        assert backend_cls.serve(strategy, {"redis": options["redis"]}) == ({"redis": options["redis"]}, None)
    finally:
        stop()


# ---- a real Redis Cluster ------------------------------------------------------------------------------

def test_three_master_cluster():
    with RedisClusterServers() as cluster:
        st = connect(cluster=cluster.spec)
        try:
            nat = Nat.configure({"ports": 50})
            by_node = {}
            for k in range(100):  # instance names whose hash tags fall on each of the three nodes
                name = f"nat{k}"
                node = st.cluster_client.get_node_from_key(namespace("c", name).encode())
                by_node.setdefault(node.port, name)
            assert len(by_node) == 3
            nodes_used = set()
            for name, mode in zip(by_node.values(), ("sync", "commit:4", "cache")):
                inst = st.instance(nat, "c", name, mode)
                reference, ref_chooser, inst_chooser = initial_state(nat), chooser(), chooser()
                for n, (pkt, now) in enumerate(random_inputs(random.Random(name), nat, 60), 1):
                    want = step(nat, reference, pkt, ref_chooser)
                    got, _ = inst.run(n, pkt, inst_chooser)
                    assert result_of(got) == result_of(want)
                inst.flush(wait=True)
                assert inst.fresh_instance().frozen() == freeze_state(reference)
                prefix = namespace("c", name)
                holders = []
                for node in cluster.nodes:
                    keys = node.client().keys(prefix + "*")
                    if keys:
                        holders.append(node.port)
                        assert {key_slot(k) for k in keys} == {key_slot(prefix.encode())}
                assert len(holders) == 1              # one instance's keys: one slot, one node
                nodes_used.add(holders[0])
                inst.close()
            assert len(nodes_used) == 3
        finally:
            st.close()
