"""Deltas: what one input changed in an instance's declared state, recorded as the handler writes
it, and applied elsewhere (a standby, a store). Deltas travel instead of whole states (issue 8).

A delta is `(declaration name, key, value)`, the entry's value after the input:
- Map: key -> new value; `DELETED` (None) for a removed key (Map values are never None);
- Set: member -> True; `DELETED` for a discarded member;
- Counter: key None -> new value.
Keys and values are plain tuples and ints (marshal-able); applying wraps them to the declared
kinds again (a Flow comes back as a Flow).

`recording_state(nf_cls, log)` builds the storages of models/concrete.py (DictMap, PySet, Cell)
that also note every write in `log` (a DeltaLog); `log.take()` returns the deltas since the last
take, one per entry (its last value). A write notes only which entry it touched (the storage and
the key as written); `take` reads the entries' values then, so the deltas of many inputs taken at
once (a batch) cost one read per entry, not one record per write. `apply(state, deltas)` writes deltas into any such state
without recording them; `snapshot(state)` gives the deltas that rebuild a whole state from the
initial one (used once, to fill a new standby)."""
from __future__ import annotations

from ..models.api import Map, Set, wrap
from ..models.concrete import Cell, DictMap, PySet

DELETED = None


def plain(value):
    """A model value as the wire carries it: a Flow (a namedtuple) as a plain tuple."""
    return tuple(value) if isinstance(value, tuple) else value


class DeltaLog:
    """The entries written since the last `take`: (declaration name, key as written) -> storage.
    `take` gives each entry's value now (the last write's)."""

    __slots__ = ("changes",)

    def __init__(self):
        self.changes: dict = {}

    def take(self) -> list:
        if not self.changes:
            return []
        out, seen = [], set()
        for (name, key), storage in self.changes.items():
            k, value = storage.delta(key)
            if (name, k) not in seen:  # two keys as written may wrap to the same entry
                seen.add((name, k))
                out.append((name, k, value))
        self.changes = {}
        return out


class RecordingMap(DictMap):
    """A declared Map that notes every write in a DeltaLog."""

    def __init__(self, decl, log: DeltaLog, items=()):
        super().__init__(decl, items)
        self._log, self._name = log, decl.name

    def __setitem__(self, key, value):
        DictMap.__setitem__(self, key, value)
        self._log.changes[(self._name, key)] = self

    def __delitem__(self, key):
        DictMap.__delitem__(self, key)
        self._log.changes[(self._name, key)] = self

    def delta(self, key) -> tuple:
        """(key, value now) of the entry `key` (as written) names; DELETED if absent."""
        k = wrap(self.decl.key, key)
        return plain(k), plain(dict.get(self, k, DELETED))


class RecordingSet(PySet):
    """A declared Set that notes every write in a DeltaLog (remove goes through discard)."""

    def __init__(self, decl, log: DeltaLog, items=()):
        super().__init__(decl, items)
        self._log, self._name = log, decl.name

    def add(self, key):
        PySet.add(self, key)
        self._log.changes[(self._name, key)] = self

    def discard(self, key):
        PySet.discard(self, key)
        self._log.changes[(self._name, key)] = self

    def delta(self, key) -> tuple:
        k = wrap(self.decl.key, key)
        return plain(k), True if set.__contains__(self, k) else DELETED


class RecordingCell(Cell):
    """A Counter's value that notes every assignment in a DeltaLog."""

    def __init__(self, width: int, name: str, log: DeltaLog, value: int = 0):
        super().__init__(width, value)
        self._log, self._name = log, name

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, v: int) -> None:
        self._value = v & self.mask
        self._log.changes[(self._name, None)] = self

    def delta(self, key) -> tuple:
        return None, self._value


def recording_state(nf_cls, log: DeltaLog) -> dict:
    """The initial state of `nf_cls` (as models.concrete.initial_state) in recording storages."""
    state = {}
    for name, decl in nf_cls.declarations().items():
        if isinstance(decl, Map):
            state[name] = RecordingMap(decl, log)
        elif isinstance(decl, Set):
            state[name] = RecordingSet(decl, log)
        else:
            state[name] = RecordingCell(decl.kind.width, name, log)
    return state


def apply(state: dict, deltas) -> None:
    """Writes `deltas` into `state` (storages of models/concrete.py or this module), not
    recording them; the storages' pool counts (count_in) stay right."""
    for name, key, value in deltas:
        storage = state[name]
        if isinstance(storage, Cell):
            Cell.value.fset(storage, value)
        elif isinstance(storage, dict):
            if value is DELETED:
                DictMap.__delitem__(storage, key)
            else:
                DictMap.__setitem__(storage, key, value)
        elif value is DELETED:
            PySet.discard(storage, key)
        else:
            PySet.add(storage, key)


def snapshot(state: dict) -> list:
    """Deltas that turn the initial state into `state` (every entry, every counter)."""
    out = []
    for name, storage in state.items():
        if isinstance(storage, Cell):
            if storage.value:
                out.append((name, None, storage.value))
        elif isinstance(storage, dict):
            out += [(name, plain(k), plain(v)) for k, v in dict.items(storage)]
        else:
            out += [(name, plain(k), True) for k in set.__iter__(storage)]
    return out


def plain_state(state: dict) -> dict:
    """A state as plain values (name -> dict | set | int), for comparing two states."""
    out = {}
    for name, storage in state.items():
        if isinstance(storage, Cell):
            out[name] = storage.value
        elif isinstance(storage, dict):
            out[name] = {plain(k): plain(v) for k, v in dict.items(storage)}
        else:
            out[name] = {plain(k) for k in set.__iter__(storage)}
    return out
