"""Named properties (issue 11 item 5): `always` invariants of the egress with `sometimes` twins.

Each verdict of verify.properties.check_property is cross-checked against an explicit enumeration
of the failover runs over a small packet universe, judged by the same property on the concrete
simulation (check_property_concretely)."""
from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from nfproof.models import lookup
from nfproof.models.api import TCP, Packet, addr, flags
from nfproof.models.concrete import backtrack
from nfproof.models.strategy import Strategy
from nfproof.verify.properties import check_property, check_property_concretely, properties_of
from nfproof.verify.simulate import simulate

NAT = lookup("nat").configure({"ports": "2"})
LB = lookup("lb")
HOST1, HOST2, REMOTE, VIP = addr("10.0.0.1"), addr("10.0.0.2"), addr("198.51.100.2"), addr("198.51.100.1")
UNIVERSES = {
    "nat": [Packet(TCP, HOST1, 1000, REMOTE, 80, flags("S")), Packet(TCP, HOST2, 1000, REMOTE, 80, flags("S")),
            Packet(TCP, REMOTE, 80, NAT.external, NAT.base, flags("SA"), inbound=True)],
    "lb": [Packet(TCP, HOST1, 1000, VIP, 80, flags("S")), Packet(TCP, HOST2, 1000, VIP, 80, flags("S"))],
}


def enumerated_violation(nf_cls, prop, strategy: Strategy, bound, universe, log_choices):
    for n in range(1, bound + 1):
        for inputs in itertools.product(universe, repeat=n):
            for cut in strategy.cuts(n):
                for r in cut.protected:
                    def run(chooser, cut=cut, r=r, inputs=inputs):
                        return simulate(nf_cls, strategy, list(inputs), cut, r, lambda i: chooser, lambda i: chooser,
                                        log_choices)
                    for _, failover in backtrack(run):
                        if not check_property_concretely(nf_cls, prop, failover):
                            return failover
    return None


CASES = [("none", False), ("stateful.async", False), ("stateful.async", True), ("stateful.sync", False),
         ("stateful.commit:2", False), ("stateful.checkpoint:2", False)]


@pytest.mark.parametrize("model", ["nat", "lb"])
@pytest.mark.parametrize("strategy,log_choices", CASES, ids=[s + (" --log-choices" if lc else "") for s, lc in CASES])
def test_property_verdicts_agree_with_enumeration(model, strategy, log_choices):
    nf_cls = NAT if model == "nat" else LB
    (prop,) = properties_of(nf_cls).values()
    explicit = enumerated_violation(nf_cls, prop, Strategy.parse(strategy), 2, UNIVERSES[model], log_choices)
    result = check_property(nf_cls, prop, Strategy.parse(strategy), 2, log_choices=log_choices)
    assert result.verdict == ("counterexample" if explicit else "proved"), (result.reason, explicit and explicit.observed)
    if result.run:  # re-executed concretely: the run itself breaks the property
        assert not check_property_concretely(nf_cls, prop, result.run)


def test_expected_property_verdicts():
    """A fresh choice after failover breaks stickiness and the bijection; protection keeps them."""
    (sticky,) = properties_of(LB).values()
    assert check_property(LB, sticky, Strategy.parse("stateful.async"), 2).verdict == "counterexample"
    assert check_property(LB, sticky, Strategy.parse("stateful.async"), 2, log_choices=True).verdict == "proved"


def test_a_property_without_its_situation_is_vacuous():
    """With one packet no flow sends a second one: the twin never happens, so unknown, not proved."""
    (sticky,) = properties_of(LB).values()
    result = check_property(LB, sticky, Strategy.parse("stateful.sync"), 1)
    assert result.verdict == "unknown" and "vacuous" in result.reason


def nfproof(*args):
    return subprocess.run([sys.executable, "-m", "nfproof.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_property():
    r = nfproof("verify", "lb", "--strategy", "stateful.async", "--property", "sticky-backend", "--bound", "2")
    assert r.returncode == 1 and "breaks sticky-backend" in r.stdout and "192.0.2.1" in r.stdout
    r = nfproof("verify", "lb", "--strategy", "stateful.sync", "--property", "all", "--bound", "2")
    assert r.returncode == 0 and r.stdout.startswith("proved: lb under stateful.sync, sticky-backend")
    r = nfproof("verify", "lb", "--strategy", "none", "--property", "nope")
    assert r.returncode == 2 and "valid: sticky-backend, all" in r.stderr
    r = nfproof("verify", "lb-hash", "--strategy", "none", "--property", "all")
    assert r.returncode == 2 and "no named properties" in r.stderr


@pytest.mark.parametrize("model", ["nat", "lb"])
@pytest.mark.parametrize("strategy", ["stateful.sync", "stateful.commit:2", "stateless.sync", "stateful.async"])
def test_queries_skipped_as_already_unsatisfiable_keep_the_verdict(model, strategy):
    """A violation condition proved unsatisfiable under a subset of a point's assumptions (the
    same terms) is not asked again: at bound 3 the verdicts still agree with enumeration, and
    queries were skipped."""
    nf_cls = NAT if model == "nat" else LB
    (prop,) = properties_of(nf_cls).values()
    explicit = enumerated_violation(nf_cls, prop, Strategy.parse(strategy), 3, UNIVERSES[model], False)
    result = check_property(nf_cls, prop, Strategy.parse(strategy), 3)
    assert result.verdict == ("counterexample" if explicit else "proved"), (result.reason, explicit and explicit.observed)
    if result.verdict == "proved":
        assert result.stats.get("identical", 0) > 0, result.stats


@pytest.mark.slow
def test_sticky_backend_under_sync_is_proved_at_bound_4():
    """A query of this proof runs out of resources in the process that built it (its terms'
    numbering) and is decided by its copy in a fresh context (verify/solver.py)."""
    (sticky,) = properties_of(LB).values()
    result = check_property(LB, sticky, Strategy.parse("stateful.sync"), 4)
    assert result.verdict == "proved", result.reason
