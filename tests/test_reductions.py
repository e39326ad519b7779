"""The failover check's reductions must never prove something false (verify/failover.py):

- `_replay_explained`: the per-input lemma for a replayed released input whose reference borrows
  the standby's or the primary's choice (source "m"); where it is proved for an arbitrary state,
  the failover points skip input i's conditions (a random-drop NF under stateful.async needs no
  query per point). Its models here: the stateless coin toss (the lemma holds), and mutations of
  it where it must not (the coin is remembered, counted, or revealed later), each checked against
  explicit enumeration under the strategies where replay runs ahead of protection.
- the compositional chain step (tests/test_chain_step.py proves it equal to the path-by-path
  step; here: verdicts of a chain of coin tosses against the enumerator)."""
from __future__ import annotations

import pytest

from nfproof.models.api import NF, TCP, Bits, Counter, Map, Packet, Pool, Port
from nfproof.models.chain import Chain
from nfproof.models.strategy import Strategy
from nfproof.verify import solver as smt
from nfproof.verify.enumerate import enumerate_failover
from nfproof.verify.failover import _Runs, _replay_explained, verify_failover


class Coin(NF):
    """Stateless: forwards or drops each packet by a coin toss."""

    name = "coin"
    gates = ("up", "down")
    outside, inside = ("up",), ("down",)
    coin = Pool(0, 2, Bits(1, "Coin"))

    def handle(self, pkt, ctx):
        if ctx.choose(self.coin.all()) == 1:
            return ctx.drop("coin")
        ctx.emit(pkt, "down" if pkt.inbound else "up")


class CountedCoin(Coin):
    """Mutation: counts the packets it forwarded and writes the count into the label (the state
    depends on the coin: a replay that tosses differently leaves another count)."""

    name = "counted-coin"
    forwarded = Counter(Bits(8, "Count"))

    def handle(self, pkt, ctx):
        if ctx.choose(self.coin.all()) == 1:
            return ctx.drop("coin")
        self.forwarded += 1
        ctx.emit(pkt.rewrite(label=self.forwarded), "down" if pkt.inbound else "up")


class StickyCoin(Coin):
    """Mutation: a source port's first packet tosses, later packets of the port obey that toss
    (a choice remembered and revealed later, as a NAT's port)."""

    name = "sticky-coin"
    toss = Map(Port, Bits(1, "Coin"))

    def handle(self, pkt, ctx):
        t = self.toss.get(pkt.sport)
        if t is None:
            t = ctx.choose(self.coin.all())
            self.toss[pkt.sport] = t
        if t == 1:
            return ctx.drop("coin")
        ctx.emit(pkt, "down" if pkt.inbound else "up")


class LabelCoin(Coin):
    """Mutation: stateless, but the toss is written into the packet (the output reveals it)."""

    name = "label-coin"

    def handle(self, pkt, ctx):
        c = ctx.choose(self.coin.all())
        ctx.emit(pkt.rewrite(label=c), "down" if pkt.inbound else "up")


class SplitCoin(Coin):
    """Mutation: stateless, and the toss decides how many outputs there are (label 0: one; label 1:
    two, the second labelled 7). A primary that emitted one output and a replay that emits two
    lets out [label 0, label 7] (duplicate suppression drops the replay's first output only):
    no failure-free run emits that. The violation is in the replayed input itself, which is
    what the lemma must refuse to explain."""

    name = "split-coin"

    def handle(self, pkt, ctx):
        c = ctx.choose(self.coin.all())
        gate = "down" if pkt.inbound else "up"
        ctx.emit(pkt.rewrite(label=c), gate)
        if c == 1:
            ctx.emit(pkt.rewrite(label=7), gate)


P1 = Packet(TCP, 1, 1000, 2, 80)
P2 = Packet(TCP, 1, 1001, 2, 80)
UNIVERSE = [P1, P2]
STRATEGIES = ["stateful.async", "stateful.checkpoint:2", "stateful.commit:2", "none", "stateless.batch:2"]
MODELS = [Coin, CountedCoin, StickyCoin, LabelCoin, SplitCoin]
CASES = [(m, s) for m in MODELS for s in STRATEGIES]


@pytest.mark.parametrize("nf,strategy", CASES, ids=[f"{m.name}-{s}" for m, s in CASES])
def test_verdicts_agree_with_enumeration(nf, strategy):
    for bound in (1, 2, 3):
        explicit = enumerate_failover(nf, Strategy.parse(strategy), bound, UNIVERSE)
        result = verify_failover(nf, Strategy.parse(strategy), bound)
        assert result.verdict != "unknown", result.reason
        assert result.verdict == ("counterexample" if explicit else "proved"), \
            (bound, explicit and [p for p in explicit.run.inputs])
        if explicit:
            assert len(result.counterexample.run.inputs) == len(explicit.run.inputs)
            break


def test_known_verdicts_are_not_vacuous():
    """What the reasoning says (and the enumerator confirms above): tossing again on replay is
    harmless for the stateless coin, a violation when the toss is remembered or counted."""
    verdict = {m: verify_failover(m, Strategy.parse("stateful.async"), 3).verdict for m in MODELS}
    assert verdict == {Coin: "proved", CountedCoin: "counterexample", StickyCoin: "counterexample",
                       LabelCoin: "proved", SplitCoin: "counterexample"}


def test_the_lemma_holds_exactly_where_it_should():
    """Proved for the stateless coin; refuted where the replay leaves another state."""
    for nf, expected in ((Coin, True), (LabelCoin, True), (CountedCoin, False), (StickyCoin, False), (SplitCoin, False)):
        runs = _Runs(nf, 3)
        assert _replay_explained(runs, 2, smt.Budget()) is expected, nf.name


def test_a_lemma_believed_everywhere_proves_something_false(monkeypatch):
    """The tests above can fail: with the lemma taken for granted, the split coin's violation
    (in the replayed input itself) is missed."""
    import nfproof.verify.failover as failover
    monkeypatch.setattr(failover, "_replay_explained", lambda runs, i, budget: True)
    assert verify_failover(SplitCoin, Strategy.parse("stateful.async"), 2).verdict == "proved"
    assert enumerate_failover(SplitCoin, Strategy.parse("stateful.async"), 2, UNIVERSE) is not None


def test_random_drop_async_needs_no_query_per_point():
    result = verify_failover(Coin, Strategy.parse("stateful.async"), 12)
    assert result.verdict == "proved"
    # one lemma per input, the reachability twins, the gates: far fewer than the ~n^2/2 failover
    # points per length (hundreds of queries before)
    assert result.stats["queries"] < 60, result.stats


def test_chain_of_coins_agrees_with_enumeration():
    lookup = {"coin": Coin, "counted-coin": CountedCoin}.__getitem__
    for text, expected in (("coin>coin", "proved"), ("coin>counted-coin", "counterexample")):
        nf = Chain.parse(text, lookup).as_nf()
        for bound in (1, 2):
            explicit = enumerate_failover(nf, Strategy.parse("stateful.async"), bound, UNIVERSE)
            result = verify_failover(nf, Strategy.parse("stateful.async"), bound)
            assert result.verdict == ("counterexample" if explicit else "proved"), (text, bound)
        assert result.verdict == expected, text
