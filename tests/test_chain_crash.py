"""One instance of a chain crashing alone (verify/chain_crash.py).

- With one instance, the per-instance run is the verifier's own failover run (verify/simulate.py):
  every strategy, crash point, protected point, protocol switch, --log-choices and standby choice
  gives the same outputs.
- In firewall>nat>lb, the NAT crashing alone under stateful.async loses a port mapping (a
  violation, named); under safe strategies no run of small input sequences in which any one
  instance crashes alone is unexplained.
- `nfproof verify CHAIN` names the instance whose crash alone shows a chain counterexample."""
from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from nfproof.models import lookup
from nfproof.models.api import TCP, UDP, Packet, addr, flags
from nfproof.models.chain import Chain
from nfproof.models.concrete import backtrack
from nfproof.models.strategy import Strategy
from nfproof.verify.chain_crash import find_instance_crash, simulate_instance_crash
from nfproof.verify.simulate import simulate

from nfproof.cmd_verify import ALL_STRATEGIES

H1, H2, R = addr("10.0.0.1"), addr("10.0.0.2"), addr("198.51.100.7")
EXT, VIP, B1 = addr("203.0.113.1"), addr("198.51.100.1"), addr("192.0.2.10")
ONE = {
    "nat": [Packet(TCP, H1, 1000, R, 80, flags("S")), Packet(TCP, H2, 1000, R, 80, flags("S")),
            Packet(TCP, R, 80, EXT, 1024, flags("SA"), inbound=True)],
    "monitor": [Packet(TCP, H1, 1000, R, 80, flags("A")), Packet(TCP, R, 80, H1, 1000, flags("A"), inbound=True)],
    "firewall": [Packet(TCP, H1, 1000, R, 80, flags("S")), Packet(TCP, R, 80, H1, 1000, flags("SA"), inbound=True),
                 Packet(UDP, H1, 53, R, 53)],
}
SWITCHES = [dict(), dict(replay_input=False), dict(dedup=False)]


@pytest.mark.parametrize("name", sorted(ONE))
def test_one_instance_runs_as_the_verifier_simulates(name):
    chain = Chain.parse(name, lookup)
    (instance,) = chain.members
    nf = chain.members[instance].nf
    egress = {g: chain._routes()[(instance, g)].egress for g in chain.members[instance].gates}
    timed = name == "firewall"
    compared = 0
    for n in (1, 2, 3):
        for inputs in itertools.product(ONE[name], repeat=n):
            arrivals = [0, 2, 7][:n] if timed else None
            for text in ALL_STRATEGIES:
                for switches in SWITCHES:
                    strategy = Strategy.parse(text).switched(**switches)
                    for log in (False, True):
                        for cut in strategy.cuts(n):
                            for r in cut.protected:
                                timing = dict(arrivals=arrivals, failover_time=3) if timed else {}
                                for _, alone in backtrack(lambda ch: simulate_instance_crash(
                                        chain, instance, strategy, list(inputs), cut, r, ch, log, **timing)):
                                    replaying = _replaying(alone)
                                    expected = simulate(nf, strategy, list(inputs), cut, r,
                                                        lambda i: (lambda options: options[0]),
                                                        lambda i: replaying,
                                                        log, story=False, **timing)
                                    assert alone.observed == [(egress[g], p) for _, g, p in expected.observed], \
                                        (strategy, log, cut, r, inputs, alone.events)
                                    compared += 1
    assert compared > 1000


def _replaying(alone):
    """A chooser that makes the choices the per-instance run's standby made, in order."""
    made = iter(alone.standby_choices)
    return lambda options: next(made)


CHAIN_UNIVERSE = [Packet(TCP, H1, 1000, VIP, 80, flags("S")), Packet(TCP, H2, 1001, VIP, 80, flags("S")),
                  Packet(TCP, H1, 1000, VIP, 80, flags("A")), Packet(TCP, B1, 80, EXT, 1024, flags("SA"), inbound=True)]


def test_the_nat_crashing_alone_under_async_is_named():
    chain = lookup("firewall>nat>lb").chain()
    inputs = [CHAIN_UNIVERSE[0], CHAIN_UNIVERSE[1]]
    found = find_instance_crash(chain, Strategy.parse("stateful.async"), inputs, arrivals=[0, 1], failover_time=1,
                                max_stall=1)
    assert found is not None and found.instance == "nat"
    assert "nat crashes alone (firewall, lb keep running)" in found.story()
    assert any("the upstream replays nat's input 1" in e for e in found.events)


@pytest.mark.parametrize("strategy,log", [("stateful.sync", False), ("stateful.commit:2", True),
                                          ("stateless.sync", False)])
def test_no_single_instance_crash_breaks_a_safe_strategy_on_small_inputs(strategy, log):
    chain = lookup("firewall>nat>lb").chain()
    for n in (1, 2):
        for inputs in itertools.product(CHAIN_UNIVERSE, repeat=n):
            found = find_instance_crash(chain, Strategy.parse(strategy), list(inputs), log,
                                        arrivals=[0, 2][:n], failover_time=1, max_stall=1)
            assert found is None, found.story()


def test_verify_names_the_instance(tmp_path):
    page = tmp_path / "cex.html"
    r = subprocess.run([sys.executable, "-m", "nfproof", "verify", "firewall>nat>lb", "--strategy", "stateful.async",
                        "--bound", "4", "--html", str(page)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the same inputs with one instance crashing alone (the others keep running):" in r.stdout
    assert "nat crashes alone (firewall, lb keep running)" in r.stdout
    assert "nat crashes alone (firewall, lb keep running)" in page.read_text()


UNIT_CASES = [(c, s, lc) for c in ("nat>nat", "count>pick", "pick>alarm", "fork")
              for s, lc in [("none", False), ("stateful.async", False), ("stateful.sync", False),
                            ("stateful.commit:2", False), ("stateful.async", True), ("stateless.sync", False),
                            ("stateless.async", False)]]


@pytest.mark.parametrize("chain_name,strategy,log", UNIT_CASES,
                         ids=[f"{c}-{s}{'-log' if lc else ''}" for c, s, lc in UNIT_CASES])
def test_a_chain_proved_as_one_unit_has_no_run_with_one_instance_crashing_alone(chain_name, strategy, log):
    """The verifier proves chains as one failing unit; the runtime crashes one instance at a time.
    Over small universes the unit's proof must leave no single-instance crash unexplained (else
    the proof would not cover what the runtime does), and its counterexamples have one too."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from test_chain import CHAINS
    from nfproof.verify.chain_crash import enumerate_instance_crashes
    from nfproof.verify.failover import verify_failover
    build, universe = CHAINS[chain_name]
    chain = build()
    unit = verify_failover(chain.as_nf(), Strategy.parse(strategy), 2, log_choices=log)
    found = enumerate_instance_crashes(chain, Strategy.parse(strategy), 2, universe, log)
    assert unit.verdict in ("proved", "counterexample"), unit.reason
    assert (found is not None) == (unit.verdict == "counterexample"), found and found.story()


@pytest.mark.slow
@pytest.mark.parametrize("strategy,log", [("stateful.sync", False), ("stateful.commit:4", True),
                                          ("stateful.async", True), ("stateless.sync", False)])
def test_firewall_nat_lb_proved_as_one_unit_has_no_single_instance_violation(strategy, log):
    from nfproof.verify.chain_crash import enumerate_instance_crashes
    from nfproof.verify.failover import verify_failover
    nf = lookup("firewall>nat>lb")
    assert verify_failover(nf, Strategy.parse(strategy), 2, log_choices=log).verdict == "proved"
    found = enumerate_instance_crashes(nf.chain(), Strategy.parse(strategy), 2, CHAIN_UNIVERSE, log, gaps=(0, 1, 3))
    assert found is None, found.story()


MORE_CHAINS = {
    "nat>lb": CHAIN_UNIVERSE,
    "firewall>nat": [Packet(TCP, H1, 1000, R, 80, flags("S")), Packet(TCP, R, 80, EXT, 1024, flags("SA"), inbound=True),
                     Packet(TCP, H1, 1000, R, 80, flags("A"))],
    "monitor>nat": [Packet(TCP, H1, 1000, R, 80, flags("A")), Packet(TCP, R, 80, EXT, 1024, flags("A"), inbound=True)],
    "nat>monitor": [Packet(TCP, H1, 1000, R, 80, flags("A")), Packet(TCP, R, 80, EXT, 1024, flags("A"), inbound=True)],
}
BUNDLED_CASES = [(c, s, lc) for c in MORE_CHAINS for s, lc in [
    ("none", False), ("stateful.async", False), ("stateful.sync", False), ("stateful.commit:4", True),
    ("stateful.async", True), ("stateless.sync", False), ("stateful.checkpoint:2", False)]]


@pytest.mark.parametrize("chain_name,strategy,log", BUNDLED_CASES,
                         ids=[f"{c}-{s}{'-log' if lc else ''}" for c, s, lc in BUNDLED_CASES])
def test_bundled_two_nf_chains_agree_with_single_instance_crashes(chain_name, strategy, log):
    """The same agreement on chains of bundled NFs (the firewall's clock with arrival gaps)."""
    from nfproof.verify.chain_crash import enumerate_instance_crashes
    from nfproof.verify.failover import reads_clock, verify_failover
    nf = lookup(chain_name)
    unit = verify_failover(nf, Strategy.parse(strategy), 2, log_choices=log)
    found = enumerate_instance_crashes(nf.chain(), Strategy.parse(strategy), 2, MORE_CHAINS[chain_name], log,
                                       gaps=(0, 1, 3) if reads_clock(nf) else None)
    assert unit.verdict in ("proved", "counterexample"), unit.reason
    assert (found is not None) == (unit.verdict == "counterexample"), found and found.story()


# -- one strategy per instance (`--strategy S,INSTANCE=S2`) ----------------------------------------

def verify_json(*args):
    r = subprocess.run([sys.executable, "-m", "nfproof", "verify", *args, "--json"], capture_output=True, text=True,
                       timeout=300)
    return r.returncode, (__import__("json").loads(r.stdout) if r.stdout.strip() else None), r.stderr


def test_one_strategy_per_instance_names_the_unprotected_instance():
    """firewall and lb protected, the NAT not: the counterexample is the NAT crashing alone under
    its own strategy, a run that no failure-free execution of the chain explains (re-judged here)."""
    from nfproof.models.concrete import scripted
    from nfproof.verify.simulate import explain
    code, out, err = verify_json("firewall>nat>lb", "--strategy", "stateful.sync,nat=stateful.async", "--bound", "4")
    assert code == 1, err
    assert out["verdict"] == "counterexample" and out["strategy"] == {
        "firewall": "stateful.sync", "nat": "stateful.async", "lb": "stateful.sync"}
    assert out["instance_crash"]["instance"] == "nat" and out["instance_crash"]["strategy"] == "stateful.async"
    assert "nat crashes alone (firewall, lb keep running)" in out["instance_crash"]["story"]
    assert sorted(map(sorted, (u["instances"] for u in out["units"]))) == [["firewall", "lb"], ["nat"]]
    # the search restricted to one instance, on fixed inputs (concrete: the same on every run), re-executed
    # and re-judged
    chain, nf = lookup("firewall>nat>lb").chain(), lookup("firewall>nat>lb")
    inputs, timing = [CHAIN_UNIVERSE[0], CHAIN_UNIVERSE[1]], dict(arrivals=[0, 1], failover_time=1, max_stall=1)
    found = find_instance_crash(chain, Strategy.parse("stateful.async"), inputs, instances=["nat"], **timing)
    assert found.instance == "nat"
    again = simulate_instance_crash(chain, "nat", found.strategy, found.inputs, found.cut, found.protected,
                                    scripted(found.standby_choices), arrivals=found.arrivals,
                                    crash_time=found.crash_time, failover_time=1)
    assert again.observed == found.observed
    assert not explain(nf, found.inputs, again.observed, found.arrivals, 1).explained
    # two new flows: the balancer crashing alone picks the second one's backend afresh, which a failure-free run may do
    assert find_instance_crash(chain, Strategy.parse("stateful.async"), inputs, instances=["lb"], **timing) is None


def test_one_strategy_per_instance_proved_by_each_instance_alone():
    """A mix of safe strategies is proved instance by instance (verify/chain_alone.py), exit 0."""
    code, out, err = verify_json("firewall>nat>lb", "--strategy", "stateful.sync,lb=stateless.sync", "--bound", "3")
    assert code == 0, err
    assert out["verdict"] == "proved" and [a["verdict"] for a in out["instances"]] == ["proved"] * 3
    assert [(a["instance"], a["strategy"]) for a in out["instances"]] == [
        ("firewall", "stateful.sync"), ("nat", "stateful.sync"), ("lb", "stateless.sync")]


def test_one_strategy_per_instance_without_proof_or_counterexample_is_unknown():
    """Where the reduction does not apply (two instances read the clock) and no run is found, the
    verdict is unknown (exit 3), never proved, and says why for each instance."""
    code, out, err = verify_json("firewall>ratelimit", "--strategy", "stateful.sync,ratelimit=stateless.sync",
                                 "--bound", "3")
    assert code == 3, err
    assert out["verdict"] == "unknown" and [a["verdict"] for a in out["instances"]] == ["unknown"] * 2
    assert "no proof of firewall crashing alone: firewall and ratelimit read the clock" in out["reason"]


PER_INSTANCE = [("nat>lb", "lb", "none"), ("nat>lb", "nat", "stateful.async"), ("firewall>nat", "firewall", "none"),
                ("firewall>nat", "nat", "stateless.async"), ("monitor>nat", "monitor", "none"),
                ("nat>monitor", "nat", "stateful.checkpoint:2")]


@pytest.mark.parametrize("chain_name,crashing,strategy", PER_INSTANCE)
def test_one_strategy_per_instance_finds_what_enumeration_finds(chain_name, crashing, strategy):
    """The other instances under stateful.sync, one under an unsafe strategy: where the enumeration
    of that instance crashing alone over a small universe finds a violation, `nfproof verify` finds
    one too and names the instance (its search starts from the unit's and the instance's own
    counterexamples); where the enumeration finds none, the verdict is a proof (each instance
    alone, verify/chain_alone.py), unknown, or a run the search found outside the universe."""
    from nfproof.verify.chain_crash import enumerate_instance_crashes
    nf = lookup(chain_name)
    code, out, err = verify_json(chain_name, "--strategy", f"stateful.sync,{crashing}={strategy}", "--bound", "2")
    enumerated = enumerate_instance_crashes(nf.chain(), Strategy.parse(strategy), 2, MORE_CHAINS[chain_name],
                                            gaps=(0, 1, 3) if "firewall" in chain_name else None, instances=[crashing])
    assert code in (0, 1, 3), err
    if enumerated is not None:
        assert code == 1 and out["instance_crash"]["instance"] == crashing, out
    if code == 1:
        assert out["instance_crash"]["strategy"] == strategy and f"{crashing} crashes alone" in out["instance_crash"]["story"]
