"""Builds the Cython fast path (runtime/fast.pyx -> nfproof.runtime.fast); everything else is in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("nfproof.runtime.fast", ["runtime/fast.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
)
