"""Verdicts of `nfproof check` kept between runs, so that an unchanged check costs nothing.

A verdict is stored under a hash of everything it depends on: the source of the commands, the
verifier and the model API (every source file of the nfproof package and of its models/, verify/
and traces/ subpackages), the source files of the check's NF classes (each class of each chain
member's MRO outside nfproof: a user model's file), a replay check's trace, the check's options
(`Check.settings`: chain, parameters, strategy, bound, ...; for a check that runs a capture, the
capture and the runtime's sources), and the versions of nfproof, Z3 and
Python. File contents are hashed, not times, so a fresh CI checkout
hits the cache. Only decided verdicts are stored: an unknown (a timeout) is tried again.

The folder (default `.nfproof-cache/` beside the config) holds one JSON file per verdict and a
.gitignore so it is never committed; CI keeps it between runs (actions/cache). A helper module
a user model imports is not hashed: after changing only such a module, run with --no-cache.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import sys
import tempfile

CACHED_VERDICTS = ("proved", "counterexample", "explained", "violation")
PACKAGE_FOLDERS = ("", "models", "verify", "traces")  # nfproof (the commands) and the subpackages deciding verdicts
SOURCE_SUFFIXES = (".py", ".pyx", ".pxi")


@functools.lru_cache(maxsize=None)
def _package_folders() -> dict[str, str]:
    import importlib
    return {name: os.path.dirname(os.path.abspath(importlib.import_module(f"nfproof.{name}".rstrip(".")).__file__))
            for name in PACKAGE_FOLDERS}


@functools.lru_cache(maxsize=None)
def _package_digest() -> str:
    """Hash of nfproof's own verdict-deciding sources and of the versions involved."""
    from importlib import metadata

    import z3

    h = hashlib.sha256()
    try:
        version = metadata.version("nfproof")
    except metadata.PackageNotFoundError:
        version = "unknown"
    h.update(f"nfproof {version}; z3 {z3.get_version_string()}; python {sys.version_info[:2]}\n".encode())
    for name, folder in _package_folders().items():
        for entry in sorted(os.listdir(folder)):
            if entry.endswith(SOURCE_SUFFIXES):
                _hash_file(h, os.path.join(folder, entry), f"{name}/{entry}")
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def runtime_digest() -> str:
    """Hash of the runtime's sources (a check that runs a capture: the runtime's code decides too)."""
    import importlib.util
    folder = os.path.dirname(importlib.util.find_spec("nfproof.runtime").origin)
    h = hashlib.sha256()
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(SOURCE_SUFFIXES):
            _hash_file(h, os.path.join(folder, entry), f"runtime/{entry}")
    return h.hexdigest()


def model_files(nf_cls) -> list[str]:
    """The source files of the NF classes a model is made of (a chain: every member's), outside
    nfproof itself (those are in the package digest)."""
    is_chain = any(k.__name__ == "ChainNF" and k.__module__ == "nfproof.models.chain" for k in nf_cls.__mro__)
    classes = [m.nf for m in nf_cls.chain().members.values()] if is_chain else [nf_cls]
    ours = set(_package_folders().values())
    files = set()
    for cls in classes:
        for klass in cls.__mro__:
            try:
                path = os.path.abspath(inspect.getfile(klass))
            except (TypeError, OSError):  # builtins, classes made at run time
                continue
            if os.path.dirname(path) not in ours and os.path.isfile(path):
                files.add(path)
    return sorted(files)


def key(nf_cls, settings: dict, inputs: tuple[str, ...] = ()) -> str:
    """The cache key of one verifier run: code, model sources, options and input files (a trace)."""
    h = hashlib.sha256(_package_digest().encode())
    for path in model_files(nf_cls) + list(inputs):
        _hash_file(h, path, os.path.basename(path))
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _hash_file(h, path: str, label: str) -> None:
    with open(path, "rb") as f:
        content = f.read()
    h.update(f"{label} {len(content)}\n".encode())
    h.update(content)


class Cache:
    """A folder of verdict records; `folder=None` disables it (--no-cache)."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.hits = 0

    def get(self, run_key: str) -> dict | None:
        if not self.folder:
            return None
        try:
            with open(os.path.join(self.folder, run_key + ".json")) as f:
                record = json.load(f)
        except (OSError, ValueError):  # absent, or unreadable: verify again (and overwrite)
            return None
        if not isinstance(record, dict) or record.get("verdict") not in CACHED_VERDICTS:
            return None
        self.hits += 1
        return record

    def put(self, run_key: str, record: dict) -> None:
        if not self.folder or record.get("verdict") not in CACHED_VERDICTS:
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
            ignore = os.path.join(self.folder, ".gitignore")
            if not os.path.exists(ignore):
                with open(ignore, "w") as f:
                    f.write("# nfproof check's verdict cache (safe to delete)\n*\n")
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, os.path.join(self.folder, run_key + ".json"))  # atomic: readers never see half a record
        except OSError as e:
            print(f"nfproof check: warning: cannot write the cache in {self.folder}: {e.strerror}; "
                  f"verdicts are not kept", file=sys.stderr)
            self.folder = None
