"""Model parameters (issue 11): declared with proof-sized defaults, read as plain ints, set per run
(`configure`, `--param NF.NAME=VALUE`), validated with one-line errors; directions of gates."""
from __future__ import annotations

import subprocess
import sys

import pytest

from nfproof.models import NFS, Firewall, Nat
from nfproof.models.api import NF, TCP, ModelError, Packet, Param, ParamError, addr, parse_seconds
from nfproof.models.concrete import initial_state, seeded, step
from nfproof.models.strategy import Strategy
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover


class Clocked(NF):
    """A test NF with a millisecond clock: emits when `gap` has passed since the last packet."""

    name = "clocked"
    gates = ("wan", "lan")
    ticks_per_second = 1000
    gap = Param("1.5", "gap", kind="time", low=0, high=60)
    size = Param(3, "a size", low=1, high=10)
    peer = Param("192.0.2.9", "an address", kind="ipv4")

    def handle(self, pkt, ctx):
        ctx.emit(pkt.rewrite(dst=self.peer, dport=self.gap), "wan")


def test_defaults_are_plain_ints_in_the_models_units():
    assert Nat.ports == 4 and Nat.base == 1024 and Nat.external == addr("203.0.113.1")
    assert Firewall.timeout == 6 and Firewall.ticks_per_second == 1
    assert Clocked.gap == 1500 and type(Clocked.gap) is int and Clocked.peer == addr("192.0.2.9")
    assert set(Nat.params()) == {"external", "base", "ports"}
    [(gate, out)] = step(Clocked, initial_state(Clocked), Packet(), seeded(0)).outputs
    assert out.dst == addr("192.0.2.9") and out.dport == 1500  # what the handler read


def test_configure_converts_values_given_in_the_parameters_units():
    c = Clocked.configure({"gap": "250ms", "size": "7", "peer": "10.1.2.3"})
    assert (c.gap, c.size, c.peer) == (250, 7, addr("10.1.2.3"))
    assert Clocked.configure({"gap": "2"}).gap == 2000 and Clocked.configure({"gap": "3000us"}).gap == 3
    assert Clocked.configure({"gap": 1}).gap == 1000
    assert issubclass(c, Clocked) and c.name == "clocked" and Clocked.gap == 1500  # the original is untouched
    again = c.configure({"size": 2})
    assert (again.gap, again.size) == (250, 2) and dict(again._configured_from[1]) == {"gap": "250ms", "size": 2,
                                                                                        "peer": "10.1.2.3"}
    assert Clocked.configure({}) is Clocked
    faster = type("Faster", (Clocked,), {"ticks_per_second": 1_000_000})
    assert faster.gap == 1_500_000  # a time parameter follows the clock's resolution


@pytest.mark.parametrize("values,needle", [
    ({"gapp": "1"}, "clocked has no parameter 'gapp'; valid (with defaults): clocked.gap=1.5s (gap); "
                    "clocked.size=3 (a size); clocked.peer=192.0.2.9 (an address)"),
    ({"size": "11"}, "clocked.size=11 is out of range; valid: an integer from 1 to 10"),
    ({"size": "0"}, "valid: an integer from 1 to 10"),
    ({"size": "two"}, "'two' is not an integer; valid: an integer from 1 to 10"),
    ({"size": True}, "not an integer"),
    ({"gap": "61"}, "out of range; valid: a duration from 0 to 60 seconds"),
    ({"gap": "1us"}, "not a whole number of the NF's clock ticks (1000 per second)"),
    ({"gap": "soon"}, "is not a duration"),
    ({"peer": "10.0.0.256"}, "valid: an IPv4 address"),
])
def test_bad_names_and_values_are_one_line_errors(values, needle):
    with pytest.raises(ParamError) as e:
        Clocked.configure(values)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ModelError) and isinstance(e.value, ValueError)


def test_parse_seconds():
    assert parse_seconds("1.5") == parse_seconds("1500ms") == parse_seconds("1500000us") == parse_seconds("1.5s")
    assert parse_seconds(".25") * 4 == 1
    for bad in ("", "-1", "1h", "1e3", "ms"):
        with pytest.raises(ValueError):
            parse_seconds(bad)


def test_a_subclass_body_value_is_validated_too():
    class Small(Nat):
        ports = 2
    assert Small.ports == 2 and Small.pool().size == 2
    with pytest.raises(ParamError, match="nat.ports"):
        class Broken(Nat):
            ports = "many"


def test_the_nat_pool_is_parameters_and_a_64k_pool_constructs():
    big = Nat.configure({"ports": "64512"})
    assert big.pool().values() == range(1024, 65536)
    state = initial_state(big)
    res = step(big, state, Packet(TCP, addr("10.0.0.1"), 1000, addr("198.51.100.1"), 80), seeded(0))
    [(gate, pkt)] = res.outputs
    assert gate == "wan" and 1024 <= pkt.sport < 65536 and res.choices == [pkt.sport]
    with pytest.raises(ParamError, match="base \\+ ports <= 65536"):
        Nat.configure({"ports": "64512", "base": "20000"})


def test_a_configured_model_is_verified_like_a_class():
    one_port = Nat.configure({"ports": 1})
    # one port: a second LAN flow finds the pool exhausted, so the failure-free NAT drops it ...
    result = verify_failover(one_port, Strategy.parse("stateful.sync"), 3)
    assert result.verdict == "proved" and result.nf == "nat"
    universe = [Packet(TCP, addr("10.0.0.1"), 1000, addr("198.51.100.1"), 80),
                Packet(TCP, addr("10.0.0.2"), 1000, addr("198.51.100.1"), 80)]
    v = enumerate_failover(one_port, Strategy.parse("none"), 2, universe)
    assert v is not None and len(v.run.inputs) == 2
    assert verify_failover(one_port, Strategy.parse("none"), 2).verdict == "counterexample"


def test_every_bundled_model_declares_proof_sized_parameters():
    for name, cls in NFS.items():
        assert cls.params(), name
        for pname, p in cls.params().items():
            assert p.doc and cls.configure({pname: p.default}).param_values() == cls.param_values()


def test_directions_are_checked_against_the_gates():
    class Declared(NF):
        gates = ("up", "down", "log")
        outside, inside = ("up",), ("down",)
    assert (Declared.outside, Declared.inside) == (("up",), ("down",))

    class Conventional(NF):  # undeclared: gates named wan/lan face outside/inside
        gates = ("wan", "lan", "alert")
    assert (Conventional.outside, Conventional.inside) == (("wan",), ("lan",))
    with pytest.raises(ModelError, match="not in gates"):
        class Wrong(NF):
            gates = ("wan", "lan")
            outside = ("uplink",)


def nfproof(*args):
    return subprocess.run([sys.executable, "-m", "nfproof", *args], capture_output=True, text=True, timeout=300)


def test_cli_param_reaches_the_proof():
    # the monitor's alert at 3 packets is lost by `none`; with a threshold beyond the bound it never fires
    assert nfproof("verify", "monitor", "--strategy", "none", "--bound", "4").returncode == 1
    r = nfproof("verify", "monitor", "--strategy", "none", "--bound", "4", "--param", "monitor.threshold=5")
    assert r.returncode == 0, r.stdout + r.stderr
    r = nfproof("verify", "nat", "--strategy", "stateful.sync", "--bound", "2", "--param", "nat.ports=2",
                "--param", "nat.base=5000", "--json")
    assert r.returncode == 0 and '"verdict": "proved"' in r.stdout


@pytest.mark.parametrize("param,needle", [
    ("nat.port=3", "nat has no parameter 'port'; valid (with defaults): nat.external=203.0.113.1"),
    ("nat.ports=0", "nat.ports=0 is out of range; valid: an integer from 1 to 65535"),
    ("lb.backends=3", "names NF 'lb', but the NF verified is 'nat'"),
    ("ports=3", "write NF.NAME=VALUE"),
    ("nat.external=1.2.3", "valid: an IPv4 address"),
])
def test_cli_param_errors_exit_2_in_one_line(param, needle):
    r = nfproof("verify", "nat", "--strategy", "none", "--param", param)
    assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
