"""Unbounded proofs: induction on lockstep with the reference run. They must hold where theory
says (output commit, logged choices, deterministic NFs) and fail -- unknown, never proved --
where a bounded proof is only lucky in its bound."""
import pytest
from test_model_semantics import TwoOut
from test_state_kinds import Lottery, Numberer, SeenFirewall

from nfproof.models import Nat
from nfproof.models.api import NF, Bits, Counter, Domain
from nfproof.models.strategy import Strategy
from nfproof.verify.failover import verify_failover
from nfproof.verify.induction import prove_unbounded
from nfproof.verify.solver import Budget


class LateReveal(NF):
    """Draws a bit on the first packet and shows it only on the fourth: within 3 packets the
    draw is never seen, so a failover cannot be caught there; from 4 packets on it can."""

    name = "late-reveal"
    seen = Counter(Bits(3, "N"))
    bit = Counter(Bits(1, "B"))

    def handle(self, pkt, ctx):
        if self.seen == 0:
            self.bit = ctx.choose(Domain([(0, True), (1, True)], Bits(1, "B")))
        if self.seen < 4:
            self.seen += 1
        ctx.emit(pkt.rewrite(dport=self.bit if self.seen == 4 else 7), "out")


@pytest.mark.parametrize("nf_cls,strategy,log", [
    (Nat, "stateful.sync", False), (Nat, "stateful.commit:4", False), (Nat, "stateless.cache", False),
    (Nat, "stateful.async", True), (Nat, "stateful.checkpoint:2", True), (Lottery, "stateful.async", True),
    (Numberer, "stateful.async", False), (Numberer, "stateful.checkpoint:3", False), (SeenFirewall, "stateless.batch:2", False),
])
def test_proved_for_every_length(nf_cls, strategy, log):
    result = verify_failover(nf_cls, Strategy.parse(strategy), 3, log_choices=log, unbounded=True)
    assert result.verdict == "proved" and result.unbounded, result.reason


def test_idempotent_nat_survives_replaying_the_protected_input_at_any_length():
    strategy = Strategy.parse("stateful.sync").mutated("replay-protected-input")
    result = verify_failover(Nat, strategy, 3, unbounded=True)
    assert result.unbounded and "twice" in result.stats["induction"]


def test_a_lucky_bound_is_not_an_unbounded_proof():
    strategy = Strategy.parse("stateful.async")
    bounded = verify_failover(LateReveal, strategy, 3)
    assert bounded.verdict == "proved"                      # the bit never shows within 3 packets
    unbounded = verify_failover(LateReveal, strategy, 3, unbounded=True)
    assert unbounded.verdict == "unknown" and not unbounded.unbounded
    assert "fresh choices" in unbounded.reason
    assert verify_failover(LateReveal, strategy, 5).verdict == "counterexample"  # and it is real


def test_none_is_unbounded_only_without_state():
    assert verify_failover(Numberer, Strategy.parse("none"), 2, unbounded=True).verdict == "counterexample"
    assert "starts empty" in prove_unbounded(Nat, Strategy.parse("none"), False, Budget()).reason
    stateless = verify_failover(TwoOut, Strategy.parse("none"), 2, unbounded=True)
    assert stateless.verdict == "proved" and stateless.unbounded
