"""Issue 8, store failures in real runs: `nfproof run --strategy stateless.* --fail store@PKT`
restarts the run's private redis-server without persistence before input PKT. Every instance finds
out at its next access, fails and fails over to a fresh instance; the store no longer holds its
namespace, so the replacement starts a new life from the initial state, and the trace says so.
`nfproof replay` must then see what the loss did (a violation), where the same run without the
store failure is explained."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfproof.cli import main
from nfproof.traces.trace import read_trace

E02 = Path(__file__).resolve().parent / "data" / "E02_http_49flows.pcap"


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("strategy", ["stateless.sync", "stateless.commit:8"])
def test_a_store_restarted_without_persistence_loses_the_state_and_replay_sees_it(capsys, tmp_path, strategy):
    trace = tmp_path / "t.pcapng"  # input 240: inside a connection (inputs 197-265), so the loss shows
    code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--param", "nat.ports=64512", "--strategy", strategy,
                         "--fail", "store@240", "--seed", 1, "-o", trace, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [(f["kind"], f["before_seq"]) for f in result["store_failures"]] == [("restart", 240)]
    (failover,) = result["failovers"]
    assert failover["instance"] == "nat" and failover["cause"].startswith("its store failed")
    assert "holds no state" in failover["state_lost"]
    with read_trace(str(trace)) as t:
        events = [e for e in t if getattr(e, "kind", None) in ("store-failure", "failover")]
    assert [e.kind for e in events] == ["store-failure", "failover"]
    assert events[0].fields["persistence"] is False and events[0].fields["before_seq"] == 240
    assert events[1].fields["state_lost"]
    code, out, err = cli(capsys, "replay", trace)
    assert code == 1 and out.startswith("error:"), out + err
    code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--param", "nat.ports=64512", "--strategy", strategy,
                         "--fail", "nat@200", "--seed", 1, "-o", trace)
    assert code == 0, err
    assert cli(capsys, "replay", trace)[0] == 0  # the instance's own crash: the store keeps the state


def test_a_missing_redis_server_is_an_input_error_with_the_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    trace = tmp_path / "t.pcapng"
    code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--strategy", "stateless.sync", "-o", trace)
    assert code == 2 and "redis-server not found on PATH: install it" in err and "internal error" not in err, err


def test_store_failures_need_the_private_store_of_a_stateless_strategy(capsys):
    for extra in (["--strategy", "stateful.sync"], ["--strategy", "stateless.sync", "--redis", "redis://127.0.0.1:1/0"]):
        code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--fail", "store@10", *extra)
        assert code == 2 and "--fail store@PKT fails the private redis-server" in err


def test_a_lagging_replica_promoted_loses_acknowledged_updates_and_replay_sees_it(capsys, tmp_path):
    """--fail store-failover@PKT: the private server runs with a replica, cut off 16 inputs before
    PKT; there the primary dies and the replica is promoted. The replacement finds fewer inputs at
    the store than were acknowledged, and the failover says how many: a recorded loss, not a silent
    one. (Whether replay then sees a violation depends on what the lost updates were: the replica's
    lag before the cut is Redis's asynchronous replication, timing-dependent.)"""
    trace = tmp_path / "t.pcapng"
    code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--param", "nat.ports=64512", "--strategy",
                         "stateless.sync", "--fail", "store-failover@200", "--seed", 1, "-o", trace, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [(f["kind"], f["before_seq"], f["lag_inputs"]) for f in result["store_failures"]] == \
           [("replica promoted", 200, 16)]
    (failover,) = result["failovers"]
    assert failover["store_behind"] > 0 and not failover["state_lost"]
    assert failover["replica_seq"] < 200 - 16  # the replica had nothing after the cut
    with read_trace(str(trace)) as t:
        (event,) = [e for e in t if getattr(e, "kind", None) == "failover"]
    assert event.fields["store_behind"] == failover["store_behind"]
    assert cli(capsys, "replay", trace)[0] in (0, 1)


def test_a_store_killed_for_good_stops_the_run_with_its_error(capsys, tmp_path):
    """--fail store-kill@PKT: the server dies and stays dead. No silent loss: the run stops with
    exit 2 naming the store, and the trace written so far is closed, with the store failure in it."""
    trace = tmp_path / "t.pcapng"
    code, out, err = cli(capsys, "run", "nat", "--pcap", E02, "--param", "nat.ports=64512", "--strategy",
                         "stateless.sync", "--fail", "store-kill@200", "-o", trace)
    assert code == 2 and "the run stopped" in err and "cannot reach the server" in err, err
    with read_trace(str(trace)) as t:
        items = list(t)
    assert [e.fields["kind"] for e in items if getattr(e, "kind", None) == "store-failure"] == ["killed"]
    assert "error" in items[-1].fields  # the summary says the run stopped
