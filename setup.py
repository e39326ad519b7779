"""Builds the Cython fast paths; everything else is in pyproject.toml.
nfproof.runtime.fast (runtime/fast.pyx), nfproof.traces._fast (traces/_fast.pyx) and
nfproof.verify._fast (verify/_fast.pyx, the replay reader) include traces/_parse.pxi, the one C copy
of the header parser."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            # -funroll-loops: 1-7 % on bench/runtime.py (BENCHMARKS.md, thirteenth session)
            Extension("nfproof.runtime.fast", ["runtime/fast.pyx"], extra_compile_args=["-O3", "-funroll-loops"]),
            Extension("nfproof.traces._fast", ["traces/_fast.pyx"], extra_compile_args=["-O3"]),
            Extension("nfproof.verify._fast", ["verify/_fast.pyx"], extra_compile_args=["-O3"]),
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
)
