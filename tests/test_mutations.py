"""Known protocol bugs (DESIGN.md), injected on purpose: the verifier must catch each one where it
matters and, equally, prove the mutated protocol where the bug is harmless for that NF."""
import subprocess
import sys

import pytest
from test_state_kinds import OUT, Numberer, SeenFirewall

from nfproof.models import Nat
from nfproof.models.strategy import MUTATIONS, Strategy
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import verify_failover

EXPECTED = {  # (NF, mutation) -> verdict under stateful.sync and stateful.commit:2
    (Numberer, "replay-protected-input"): "counterexample",   # a counter applies a packet twice
    (Nat, "replay-protected-input"): "proved",                # re-applying a mapped packet is harmless
    (Numberer, "no-protected-release"): "counterexample",     # packets lost under strict
    (Nat, "no-protected-release"): "counterexample",
    (Numberer, "release-before-ack"): "proved",               # deterministic: replay rebuilds the state
    (Nat, "release-before-ack"): "counterexample",            # the released port choice can be lost
    (SeenFirewall, "release-before-ack"): "proved",
}


@pytest.mark.parametrize("nf_cls,mutation", EXPECTED, ids=lambda x: getattr(x, "name", x))
@pytest.mark.parametrize("strategy", ["stateful.sync", "stateful.commit:2"])
def test_mutation_verdicts(nf_cls, mutation, strategy):
    base = Strategy.parse(strategy)
    assert verify_failover(nf_cls, base, 4).verdict == "proved"
    assert verify_failover(nf_cls, base.mutated(mutation), 4).verdict == EXPECTED[nf_cls, mutation]


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutations_agree_with_enumeration(mutation):
    strategy = Strategy.parse("stateful.sync").mutated(mutation)
    for bound in (1, 2, 3):
        explicit = enumerate_failover(Numberer, strategy, bound, [OUT])
        assert (explicit is None) == (verify_failover(Numberer, strategy, bound).verdict == "proved"), bound


def test_cli_mutation_flag():
    r = subprocess.run([sys.executable, "-m", "nfproof", "verify", "nat", "--strategy", "stateful.sync",
                        "--mutation", "release-before-ack", "--bound", "3"], capture_output=True, text=True)
    assert r.returncode == 1 and "mutation: release-before-ack" in r.stdout
