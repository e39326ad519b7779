"""Output equivalence (DESIGN.md "Output equivalence"), each relation defined once, here.

Two output sequences are compared by egress: `observed` (what the egresses let out) and `produced`
(what one failure-free execution emits), each a list of (egress, item) where an item is anything
comparable (a Packet for the verifier, the observable fields of a frame for trace replay).

- `strict`: on every egress the observed sequence is exactly the produced one.
- `per-flow`: the same, per egress and flow (`flow_of(item)`): order counts within a flow only.
- `loss-at-failover`: as strict, except that produced outputs marked `lossable` (of packets in
  flight at the crash) may be missing, as a network may drop them.
- duplicates: an observed output equal to an earlier observed one on the same channel is an
  extra output, a violation, unless `allow_duplicates`; then it may be skipped.

`compare(observed, produced, eq)` decides one pair of sequences (the form `nfproof verify` can use
for a failover run and a failure-free run). Trace replay, where every observed output names the
input it descends from, splits the same relation in two: `order_violation` (the observed order
on each channel is the order a failure-free chain releases: by input) and `compare` per input
(that input's observed outputs against what the execution emits for it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

RELATIONS = ("strict", "per-flow", "loss-at-failover")


@dataclass(frozen=True)
class Equivalence:
    relation: str = "strict"
    allow_duplicates: bool = False

    def __post_init__(self):
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown equivalence {self.relation!r}; valid: {', '.join(RELATIONS)}")

    @property
    def lossy(self) -> bool:
        return self.relation == "loss-at-failover"

    def channel(self, egress: str, item, flow_of: Callable | None) -> Hashable:
        """What order is compared within: the egress, or (egress, flow) for per-flow."""
        if self.relation == "per-flow":
            return egress, (flow_of or default_flow)(item)
        return egress

    def __str__(self) -> str:
        return self.relation + (" (duplicates allowed)" if self.allow_duplicates else "")


STRICT = Equivalence()


def in_flight(released: int, handed: int) -> range:
    """The inputs (1-based) in flight at a crash of a failover run: handed to the instance, their
    outputs not released. Under loss-at-failover a failure-free execution may have lost them."""
    return range(released + 1, handed + 1)


def default_flow(item) -> Hashable:
    """The 5-tuple of a Packet-like item (proto, src, sport, dst, dport), else the item itself."""
    flow = getattr(item, "flow", None)
    if flow is not None:
        return tuple(flow)
    if isinstance(item, tuple) and len(item) >= 5 and item[0] != "raw":
        return item[:5]
    return item


@dataclass
class Mismatch:
    """Why two sequences are not equivalent: the first observed output that cannot be matched
    (`observed`, an index into the observed list), or None when every observed output matched
    and the execution emits more (`missing`: index into produced of the first one left over);
    `expected`: what the execution would have emitted on that channel instead."""

    channel: Hashable
    observed: int | None
    missing: int | None = None
    expected: list = field(default_factory=list)
    duplicate: bool = False   # the unmatched observed output repeats an earlier one

    @property
    def rank(self) -> float:
        """Position in the observed sequence where the divergence shows (for picking the first)."""
        return self.observed if self.observed is not None else self._after + 0.5

    _after: int = -1


def compare(observed: Sequence, produced: Sequence, eq: Equivalence, *, flow_of: Callable | None = None,
            lossable: Callable[[int], bool] | None = None) -> Mismatch | None:
    """None if `observed` is equivalent to `produced` under `eq`, else the first Mismatch."""
    channels: dict = {}
    for j, (egress, item) in enumerate(observed):
        channels.setdefault(eq.channel(egress, item, flow_of), ([], []))[0].append(j)
    for i, (egress, item) in enumerate(produced):
        channels.setdefault(eq.channel(egress, item, flow_of), ([], []))[1].append(i)
    worst = None
    for channel, (obs, prod) in channels.items():
        m = _match_channel(channel, [observed[j][1] for j in obs], [produced[i][1] for i in prod], eq,
                           [bool(lossable and eq.lossy and lossable(i)) for i in prod])
        if m is None:
            continue
        if m.observed is not None:
            m.observed = obs[m.observed]
        else:
            m._after = obs[m._after] if m._after >= 0 else -1
            m.missing = prod[m.missing]
        if worst is None or m.rank < worst.rank:
            worst = m
    return worst


def _match_channel(channel, obs: list, prod: list, eq: Equivalence, lossable: list) -> Mismatch | None:
    """Can `obs` be read as `prod` with lossable produced items deleted and (if allowed) repeated
    observed items skipped? A search over (produced, observed) positions, linear when nothing is
    lossable (matching then never needs a choice)."""
    duplicate = [any(obs[k] == obs[j] for k in range(j)) for j in range(len(obs))]
    skippable = duplicate if eq.allow_duplicates else [False] * len(obs)
    seen, frontier, best = set(), [(0, 0)], (-1, [])
    while frontier:
        i, j = frontier.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(prod) and j == len(obs):
            return None
        if j > best[0]:
            best = (j, [])
        if j == best[0] and i < len(prod) and prod[i] not in best[1]:
            best[1].append(prod[i])
        moves = []
        if j < len(obs) and skippable[j]:
            moves.append((i, j + 1))
        if i < len(prod) and lossable[i]:
            moves.append((i + 1, j))
        if i < len(prod) and j < len(obs) and prod[i] == obs[j]:
            moves.append((i + 1, j + 1))  # popped first: matching is tried before losing or skipping
        frontier += moves
    j, expected = best
    if j < len(obs):
        return Mismatch(channel, j, None, expected, duplicate[j])
    i = max(i for i, k in seen if k == j and i < len(prod))  # the furthest state: prod[i] cannot be lost
    return Mismatch(channel, None, i, expected, _after=j - 1)


def order_inversions(outputs: Sequence, eq: Equivalence, *, flow_of: Callable | None = None,
                     skip: Callable[[int], bool] | None = None):
    """For observed outputs that name their input, `outputs` = [(egress, item, input)] in the
    order the egresses let them out: a failure-free chain releases each channel's outputs in
    input order, so an output after one of a later input on its channel is out of order. Yields
    (index of such an output, index of the later input's output it follows). `skip(k)`: outputs
    left out of the order (allowed duplicates)."""
    latest: dict = {}
    for k, (egress, item, seq) in enumerate(outputs):
        if skip is not None and skip(k):
            continue
        channel = eq.channel(egress, item, flow_of)
        before = latest.get(channel)
        if before is not None and outputs[before][2] > seq:
            yield k, before
        else:
            latest[channel] = k


def order_violation(outputs: Sequence, eq: Equivalence, *, flow_of: Callable | None = None,
                    skip: Callable[[int], bool] | None = None) -> tuple[int, int] | None:
    """The first of `order_inversions`, or None."""
    return next(order_inversions(outputs, eq, flow_of=flow_of, skip=skip), None)
