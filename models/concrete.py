"""The concrete interpreter: runs a handler on ints and dicts. Used by the runtime's generic path,
by trace replay, and by the verifier to re-execute and confirm every counterexample.

Choices come from a `chooser(values) -> value`: seeded random (runtime), scripted (a
counterexample's choices), or exhaustive (`all_steps` backtracks over every choice). A chooser
that also has `choose_domain(domain) -> value | None` is given pool domains whole (runtime/rng.py
draws from a 64k-port pool in O(1) that way; `Domain.pool`, `Domain.used`, `Domain.exhausted`)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .api import (_VALIDATED, INTERPRETER_FILES, MAX_CHOICE_WIDTH, NF, Domain, Map, MapStorage, ModelError, Packet, Set,
                  model_code, wrap, wrapper)

INTERPRETER_FILES.add(__file__)


def unsupported(what: str, instead: str, base=None):
    """Constructs the symbolic interpreter cannot follow are model errors here too while a handler
    runs, so that a model runs on both interpreters or on neither (outside a handler, `base` keeps
    the storage an ordinary dict or set for checkers, printers and tests)."""
    def method(self, *args, **kwargs):
        if base is None or _handlers_running:
            raise ModelError(f"{what} is not supported (a proof cannot follow it); {instead}")
        return base(self, *args, **kwargs)
    return method


_handlers_running = 0


_dict_get, _dict_contains, _dict_set, _dict_pop = dict.get, dict.__contains__, dict.__setitem__, dict.pop
_set_contains, _set_add, _set_discard = set.__contains__, set.add, set.discard

NO_ITERATION = "keep what you need in a Counter or another Map, and look keys up with `k in m` / m.get(k)"


class DictMap(dict, MapStorage):
    """A declared Map; keys and values wrap at their declared widths."""

    def __init__(self, decl, items=()):
        super().__init__(items)
        self.decl = decl
        self._counted: dict = {}  # (base, size) -> keys in that range, kept for count_in
        self._wrap_key, self._wrap_value = wrapper(decl.key), wrapper(decl.value)  # wrap(decl.key, .), fast

    def get(self, key, default=None):
        return _dict_get(self, self._wrap_key(key), default)

    def __getitem__(self, key):
        k = self._wrap_key(key)
        if not _dict_contains(self, k):
            raise ModelError(f"{self.decl.name}[key] of an absent key; test `key in m` first or use m.get(key)")
        return dict.__getitem__(self, k)

    __iter__ = unsupported("iterating a Map", NO_ITERATION, dict.__iter__)
    keys = unsupported("iterating a Map", NO_ITERATION, dict.keys)
    values = unsupported("iterating a Map", NO_ITERATION, dict.values)
    items = unsupported("iterating a Map", NO_ITERATION, dict.items)
    __len__ = unsupported("len() of a Map", "count the entries in a Counter", dict.__len__)

    def __contains__(self, key) -> bool:
        return _dict_contains(self, self._wrap_key(key))

    def __setitem__(self, key, value):
        k = self._wrap_key(key)
        if self._counted and not _dict_contains(self, k):
            _count(self._counted, k, 1)
        _dict_set(self, k, self._wrap_value(value))

    def __delitem__(self, key):  # deleting an absent key is a no-op, as in the symbolic arrays
        k = self._wrap_key(key)
        if self._counted and _dict_contains(self, k):
            _count(self._counted, k, -1)
        _dict_pop(self, k, None)

    def absent_from(self, values, kind) -> Domain:
        pool = (values.start, len(values)) if isinstance(values, range) and values.step == 1 else None
        return Domain(((v, True) for v in values if v not in self), kind, pool=pool, used=self)

    def count_in(self, base: int, size: int) -> int:
        """Keys in [base, base+size): counted once, then kept up to date by every insertion and removal."""
        if (base, size) not in self._counted:
            self._counted[(base, size)] = sum(1 for k in self._keys() if isinstance(k, int) and base <= k < base + size)
        return self._counted[(base, size)]

    def _keys(self):
        return dict.keys(self)

    def copy(self):
        return DictMap(self.decl, dict.items(self))

    def frozen(self):
        return frozenset(dict.items(self))


class PySet(set, MapStorage):
    """A declared Set; members wrap at the declared width."""

    def __init__(self, decl, items=()):
        super().__init__(items)
        self.decl = decl
        self._counted: dict = {}
        self._wrap_key = wrapper(decl.key)

    def __contains__(self, key) -> bool:
        return _set_contains(self, self._wrap_key(key))

    def add(self, key):
        k = self._wrap_key(key)
        if self._counted and not _set_contains(self, k):
            _count(self._counted, k, 1)
        _set_add(self, k)

    def discard(self, key):
        k = self._wrap_key(key)
        if self._counted and _set_contains(self, k):
            _count(self._counted, k, -1)
        _set_discard(self, k)

    def remove(self, key):
        k = self._wrap_key(key)
        if not set.__contains__(self, k):
            raise ModelError(f"{self.decl.name}.remove(x) of an absent member; test `x in s` first or use discard(x)")
        self.discard(k)

    __iter__ = unsupported("iterating a Set", NO_ITERATION, set.__iter__)
    __len__ = unsupported("len() of a Set", "count the members in a Counter", set.__len__)
    absent_from, count_in = DictMap.absent_from, DictMap.count_in

    def _keys(self):
        return set.__iter__(self)

    def copy(self):
        return PySet(self.decl, set.__iter__(self))

    def frozen(self):
        return frozenset(set.__iter__(self))


def _count(counted: dict, key, delta: int) -> None:
    if isinstance(key, int):
        for (base, size) in counted:
            if base <= key < base + size:
                counted[(base, size)] += delta


class Cell:
    """A Counter's value, wrapped at the declared width."""

    def __init__(self, width: int, value: int = 0):
        self.mask, self._value = (1 << width) - 1, value

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, v: int) -> None:
        if not isinstance(v, int):   # (as the symbolic interpreter says it)
            raise ModelError(f"a {self.mask.bit_length()}-bit integer cannot hold {v!r}")
        self._value = v & self.mask

    def copy(self):
        return Cell(self.mask.bit_length(), self._value)

    def frozen(self):
        return self._value


def _new_storage(decl):
    if isinstance(decl, Map):
        return DictMap(decl)
    if isinstance(decl, Set):
        return PySet(decl)
    return Cell(decl.kind.width)


def initial_state(nf_cls: type[NF]) -> dict:
    return {name: _new_storage(decl) for name, decl in nf_cls.declarations().items()}


def copy_state(state: dict) -> dict:
    return {name: storage.copy() for name, storage in state.items()}


def plain_state(state: dict) -> dict:
    """A state as plain dicts, sets and ints (what the runtime's pipelines report, for comparisons)."""
    return {name: dict(dict.items(s)) if isinstance(s, dict) else set(set.__iter__(s)) if isinstance(s, set)
            else s.value for name, s in state.items()}


def freeze_state(state: dict):
    """A hashable image of a state (for memoising searches)."""
    return tuple((name, storage.frozen()) for name, storage in sorted(state.items()))


@dataclass
class StepResult:
    outputs: list = field(default_factory=list)      # [(gate, Packet)]
    drops: list = field(default_factory=list)        # [reason]
    choices: list = field(default_factory=list)      # values returned by choose(), in order
    choice_kinds: list = field(default_factory=list)  # the domain kind of each (for showing them)
    clock_reads: list = field(default_factory=list)  # values returned by now(), in order


def _empty_result() -> StepResult:
    """StepResult(), without the dataclass's default-factory tests (one per step)."""
    result = _new(StepResult)
    result.outputs, result.drops, result.choices, result.choice_kinds, result.clock_reads = [], [], [], [], []
    return result


class ConcreteContext:
    def __init__(self, chooser: Callable[[list], object], clock: Callable[[], int], gates: tuple[str, ...]):
        self.chooser, self.clock, self.gates, self.result = chooser, clock, gates, _empty_result()

    def choose(self, domain: Domain):
        if domain.kind.width > MAX_CHOICE_WIDTH:
            raise ModelError(f"a choice from a {domain.kind.width}-bit domain; choices are at most {MAX_CHOICE_WIDTH} bits")
        fits = range(1 << domain.kind.width)
        pick = getattr(self.chooser, "choose_domain", None)
        if pick is not None and domain.pool is not None:  # a seeded draw from a pool, without listing it
            base, size = domain.pool
            if size and (base not in fits or base + size - 1 not in fits):
                raise ModelError(f"a {domain.kind} domain holds a value that does not fit in {domain.kind.width} bits")
            value = pick(domain)
            if value is None:
                return None
        else:
            values = domain.concrete_values()
            if any(not isinstance(v, int) or v not in fits for v in values):
                raise ModelError(f"a {domain.kind} domain holds a value that does not fit in {domain.kind.width} bits")
            if not values:
                return None
            value = self.chooser(values)
        self.result.choices.append(value)
        self.result.choice_kinds.append(domain.kind)
        return value

    def now(self) -> int:
        t = self.clock()
        self.result.clock_reads.append(t)
        return t

    def emit(self, pkt: Packet, gate: str) -> None:
        if gate not in self.gates:
            raise ModelError(f"emit on undeclared gate {gate!r}; the NF declares gates {self.gates}")
        self.result.outputs.append((gate, pkt.wrapped()))

    def drop(self, reason: str = "") -> None:
        self.result.drops.append(reason)


def _time_zero() -> int:
    return 0


_MODEL_CODE = model_code()  # holds nothing: one serves every step
_NF_INIT, _new, _setattr = NF.__init__, object.__new__, object.__setattr__


def step(nf_cls: type[NF], state: dict, pkt: Packet, chooser, clock: Callable[[], int] | None = None) -> StepResult:
    """Apply one packet to `state` in place. `clock` answers now() (default: time 0)."""
    global _handlers_running
    ctx = ConcreteContext(chooser, clock or _time_zero, nf_cls.gates)
    _handlers_running += 1
    try:  # `with model_code():`, its __exit__ called only when the handler raises
        if nf_cls in _VALIDATED and nf_cls.__init__ is _NF_INIT and nf_cls.__new__ is _new \
                and type(nf_cls) is type:  # nf_cls(state), without the calls through type and NF.__init__
            nf = _new(nf_cls)
            _setattr(nf, "state", state)
        else:
            nf = nf_cls(state)
        nf.handle(pkt, ctx)
    except BaseException as error:
        _MODEL_CODE.__exit__(type(error), error, error.__traceback__)
        raise
    finally:
        _handlers_running -= 1
    return ctx.result


def seeded(seed: int = 0):
    rng = random.Random(seed)
    return rng.choice


def scripted(values, fallback=None):
    """Returns the given values in order; past their end (or when a value is not available)
    defers to `fallback` (default: the first available value)."""
    pending = list(values)

    def choose(options):
        if pending:
            wanted = pending.pop(0)
            if wanted in options:
                return wanted
        return fallback(options) if fallback else options[0]

    return choose


def backtrack(run: Callable[[Callable[[list], object]], object]) -> Iterator[tuple[tuple[int, ...], object]]:
    """Calls `run(chooser)` once per combination of choices, depth first, yielding (the indices
    chosen, what run returned): the chooser follows a decision prefix and, past its end, takes
    the first option and queues the others."""
    pending: list[tuple[int, ...]] = [()]
    while pending:
        prefix = pending.pop()
        taken: list[int] = []

        def chooser(options, prefix=prefix, taken=taken):
            k = len(taken)
            if k < len(prefix):
                index = prefix[k]
            else:
                index = 0
                pending.extend(tuple(taken) + (j,) for j in range(len(options) - 1, 0, -1))
            taken.append(index)
            return options[index]

        result = run(chooser)
        yield tuple(taken), result


def all_steps(nf_cls: type[NF], state: dict, pkt: Packet, clock=None):
    """Every (new_state, StepResult) that one packet can lead to, over all choices."""
    def run(chooser):
        new_state = copy_state(state)
        return new_state, step(nf_cls, new_state, pkt, chooser, clock)
    return [result for _, result in backtrack(run)]
