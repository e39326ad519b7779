"""Independent proofs side by side, in forked worker processes (`nfproof verify --jobs N`).

A chain's verdict needs its proof as one failing unit and, where that is proved, one proof per
instance crashing alone (verify/chain_alone.py); `--strategy all` needs one of each per strategy.
`run` starts every unit's proof first, an instance's proof as soon as its unit is proved, and,
while a worker would otherwise sit idle, an instance's proof before its unit is decided (its
process is killed if the unit is not proved). The results are the sequential loop's,
whatever order the workers finish in: each proof is one call with its own budget."""
from __future__ import annotations

import io
import os
import pickle
import traceback
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Callable

_TASKS: list = []    # the calls the workers make, by number: inherited at fork, never pickled
_CLASSES: dict = {}  # id -> class: classes made at run time (a chain, --param settings), sent by reference


def default_jobs() -> int:
    return len(os.sched_getaffinity(0))


def register_classes(nf_cls) -> None:
    """Make nf_cls and its chain's members travel back from a worker as references to the
    parent's own classes (they exist in both: the workers are forked after this)."""
    _CLASSES[id(nf_cls)] = nf_cls
    chain = getattr(nf_cls, "chain", None)
    if callable(chain):
        for member in chain().members.values():
            _CLASSES[id(member.nf)] = member.nf


class _Silent:
    """No progress shown."""

    def of(self, label):
        return None

    def side_by_side(self, done, running):
        pass


SILENT = _Silent()


def _known_class(ident: int):
    return _CLASSES[ident]


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, type) and _CLASSES.get(id(obj)) is obj:
            return _known_class, (id(obj),)
        return NotImplemented


def _dumps(value) -> bytes:
    out = io.BytesIO()
    _Pickler(out, pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getvalue()


def _child(index: int, conn) -> None:
    def progress(n, bound):
        conn.send_bytes(pickle.dumps(("progress", (n, bound))))
    try:
        data = _dumps(("ok", _TASKS[index][1](progress)))
    except BaseException as e:  # re-raised in the parent (a model error names its file and line)
        try:
            data = _dumps(("error", e))
        except Exception:
            data = _dumps(("error", RuntimeError("".join(traceback.format_exception(e)))))
    conn.send_bytes(data)
    conn.close()


def run(units: list[tuple], followers: list[list[tuple]], jobs: int, progress) -> tuple[list, list]:
    """units[k] = (label, call): call(progress) -> a Result, progress(n, bound) its callback;
    followers[k]: the same, needed only if units[k] is proved. Returns the units' results and,
    per unit, its followers' results (None where the unit is not proved). With jobs > 1 each
    call runs in a forked process of its own, at most `jobs` at a time, and one no longer needed
    (its unit not proved) is killed. `progress`: `of(label)` gives a call's callback when they run
    one after the other, `side_by_side(done, {label: (n, bound)})` shows those running."""
    if jobs <= 1 or len(units) + sum(map(len, followers)) <= 1:
        results = [call(progress.of(label)) for label, call in units]
        return results, [[call(progress.of(label)) for label, call in fs] if r.verdict == "proved" else None
                         for r, fs in zip(results, followers)]
    global _TASKS
    offsets = [len(units)]
    for fs in followers[:-1]:
        offsets.append(offsets[-1] + len(fs))
    _TASKS = list(units) + [f for fs in followers for f in fs]
    unit_of = {offsets[k] + j: k for k, fs in enumerate(followers) for j in range(len(fs))}
    context = get_context("fork")
    results: dict = {}
    running: dict = {}  # reading end -> (task number, process)
    shown: dict = {}    # task number -> (n, bound) last reported

    def needed(i):  # a unit, or a follower of a unit proved or not decided yet
        k = unit_of.get(i)
        return k is None or k not in results or results[k].verdict == "proved"

    def candidates():
        yield from range(len(units))
        yield from (i for i in unit_of if unit_of[i] in results)  # followers of decided units first
        yield from unit_of  # then before their unit is decided

    started = set()
    try:
        while True:
            for conn, (i, process) in list(running.items()):
                if not needed(i):
                    process.kill()
                    process.join()
                    conn.close()
                    del running[conn]
            for i in candidates():
                if len(running) >= jobs:
                    break
                if i not in started and needed(i):
                    started.add(i)
                    reader, writer = context.Pipe(duplex=False)
                    process = context.Process(target=_child, args=(i, writer), daemon=True)
                    process.start()
                    writer.close()
                    running[reader] = (i, process)
            if not running:
                break
            for conn in wait(list(running)):
                i, process = running[conn]
                try:
                    kind, value = pickle.loads(conn.recv_bytes())
                except EOFError:
                    process.join()
                    kind, value = "error", RuntimeError(f"a proof's worker process died (exit code {process.exitcode})")
                if kind == "progress":
                    shown[i] = value
                    continue
                del running[conn]
                conn.close()
                process.join()
                if kind == "error":
                    raise value
                results[i] = value
            progress.side_by_side(sum(1 for j in results if needed(j)),
                                  {_TASKS[i][0]: shown.get(i) for i, _ in running.values()})
    finally:
        for conn, (i, process) in running.items():
            process.kill()
            process.join()
            conn.close()
    return ([results[k] for k in range(len(units))],
            [[results[offsets[k] + j] for j in range(len(fs))] if results[k].verdict == "proved" else None
             for k, fs in enumerate(followers)])
