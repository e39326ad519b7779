"""The reference runtime. `impl` is the Cython fast path (runtime/fast.pyx) unless it is not built
or NFPROOF_PUREPYTHON=1 forces the pure-Python fallback (runtime/pure.py); both behave identically.

`impl` and `IMPLEMENTATION` are resolved on first use (PEP 562), not when the package is imported:
importing a submodule (runtime.worker in a failover worker process, runtime.rng, runtime.store)
must not pull in a pipeline and what it imports (numpy, the models' chain code)."""
import os

__all__ = ["impl", "IMPLEMENTATION"]


def _load():
    if os.environ.get("NFPROOF_PUREPYTHON") == "1":
        from . import pure as impl
    else:
        try:
            from . import fast as impl
        except ImportError:  # not compiled (e.g. a source checkout without a build)
            from . import pure as impl
    globals()["impl"] = impl
    globals()["IMPLEMENTATION"] = "fallback" if impl.__name__.endswith("pure") else "fast"


def __getattr__(name):
    if name in ("impl", "IMPLEMENTATION"):
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
