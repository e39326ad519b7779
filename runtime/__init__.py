"""The reference runtime. `impl` is the Cython fast path (runtime/fast.pyx) unless it is not built
or NFPROOF_PUREPYTHON=1 forces the pure-Python fallback (runtime/pure.py); both behave identically."""
import os

if os.environ.get("NFPROOF_PUREPYTHON") == "1":
    from . import pure as impl
else:
    try:
        from . import fast as impl
    except ImportError:  # not compiled (e.g. a source checkout without a build)
        from . import pure as impl

IMPLEMENTATION = "fallback" if impl.__name__.endswith("pure") else "fast"
