"""Seeded nondeterminism of the runtime (docs: the runtime contract, section 5): one splitmix64
stream per chain instance, and `choose`, the reference of how a choice draws from its domain. Every
pipeline (pure, fast, generic) makes the same draws in the same order, so a run is reproducible
from its seed and the three paths agree byte for byte.

Domains: `Pool.all()` (every value of [base, base+size)), `Pool.free(used)` (the pool's values
that are not keys of `used`) and explicit `Domain`s (values in order). A pool domain is
recognised by its `pool` attribute, (base, size), and its `used` storage (None for all()); an
explicit one by its concrete values."""
from __future__ import annotations

from ..models.api import INTERPRETER_FILES

INTERPRETER_FILES.add(__file__)  # a model error raised while drawing is located at the model's line

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15      # the splitmix64 increment (and the seed's multiplier)
INSTANCE_STEP = 0xD1B54A32D192ED03  # separates the instances' streams
FREE_DRAWS = 64                  # draws before a free-value choice falls back to a scan


class InstanceRng:
    """The splitmix64 stream of chain instance `k` (0-based, in `list(chain.members)` order)."""

    __slots__ = ("state",)

    def __init__(self, seed: int, k: int):
        self.state = (seed * GOLDEN + (k + 1) * INSTANCE_STEP) & MASK64

    def next(self) -> int:
        self.state = z = (self.state + GOLDEN) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n


def choose_all(rng: InstanceRng, base: int, size: int):
    """A value of [base, base+size); None (no draw) for an empty pool."""
    return base + rng.below(size) if size > 0 else None


def choose_free(rng: InstanceRng, base: int, size: int, used, used_in_pool: int):
    """A value of [base, base+size) that is not in `used` (a container), `used_in_pool` being how
    many pool values are in it (kept beside the table: the emptiness test is O(1)). None, without
    a draw, when every pool value is used. Up to FREE_DRAWS draws; if every one hit a used value,
    the first free value scanning upward from the last draw (wrapping from the top to base)."""
    if used_in_pool >= size:
        return None
    v = base
    for _ in range(FREE_DRAWS):
        v = base + rng.below(size)
        if v not in used:
            return v
    top = base + size - 1
    while v in used:
        v = base if v == top else v + 1
    return v


def choose(rng: InstanceRng, domain):
    """The choice protocol for a model domain (models.api.Domain): a pool domain (`domain.pool` =
    (base, size); `domain.used` = the storage of Pool.free(used), None for Pool.all()) or an
    explicit one (its values in order: values[below(len(values))]). None, without a draw, for an
    empty domain. The emptiness test of a free domain is the storage's O(1) `count_in`."""
    pool = getattr(domain, "pool", None)
    if pool is not None:
        base, size = pool
        used = domain.used
        if used is None:
            return choose_all(rng, base, size)
        return choose_free(rng, base, size, used, used.count_in(base, size))
    values = domain.concrete_values()
    return values[rng.below(len(values))] if values else None


class StreamChooser:
    """A `chooser` for models.concrete (the generic pipeline) drawing from an instance stream by
    the same protocol: the concrete interpreter hands pool domains whole to `choose_domain` and the
    (non-empty) value list of any other domain to `__call__`: values[below(len(values))]."""

    __slots__ = ("rng",)

    def __init__(self, rng: InstanceRng):
        self.rng = rng

    def __call__(self, values):
        return values[self.rng.below(len(values))]

    def choose_domain(self, domain):
        return choose(self.rng, domain)
