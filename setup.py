"""Build script: the package, plus the C++ extension ``simclr_fast._C`` from ``csrc/`` when possible.

The extension is built with ``torch.utils.cpp_extension`` (ninja) against the torch found at build
time, so build with ``--no-build-isolation`` (``pip install --no-build-isolation .``). Set
``SIMCLR_FAST_NO_EXTENSION=1`` to skip it: a pure-Python install where the ``reference``, ``torch``
and ``triton`` backends still work.

Compiler flags: the extension is compiled for baseline x86-64 (no ``-march``), so a wheel built
here loads on any x86-64 CPU that torch itself runs on. The hot elementwise kernels exist twice
(csrc/tile_avx2.cpp, compiled for AVX2 + FMA by a ``#pragma GCC target``, and csrc/tile_generic.cpp)
and the AVX2 copy is chosen at run time when the CPU has AVX2 and FMA (Intel Haswell / AMD Zen and
later); the GEMMs are ATen's, which dispatch on the CPU by themselves. ``-fopenmp`` makes ATen's
``at::parallel_for`` parallel inside our code; at run time the process uses the OpenMP runtime that
torch itself loaded (same soname), so there is one thread pool. ``-fno-trapping-math`` lets the
compiler turn the selects of branchy per-pixel loops (csrc/augment.cpp: hue, clipping) into vector
blends; it changes no result (nothing here reads floating-point exception flags).
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

CORE_DEPS = ["kornia>=0.8", "numpy"]


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__.split("+")[0]


def main() -> None:
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    skip = os.environ.get("SIMCLR_FAST_NO_EXTENSION", "0") not in ("", "0")
    torch_version = _torch_version()
    ext_modules, cmdclass = [], {}
    if sources and not skip and torch_version is not None:
        from torch.utils.cpp_extension import BuildExtension, CppExtension

        ext_modules = [
            CppExtension(
                "simclr_fast._C",
                sources,
                depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
                extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
                extra_link_args=["-fopenmp"],
            )
        ]
        cmdclass = {"build_ext": BuildExtension}
        # A compiled extension only loads into the torch it was built against: pin it.
        # (simclr_fast/_extension.py also checks at import and falls back if they differ.)
        torch_dep = f"torch=={torch_version}"
    else:
        torch_dep = "torch>=2.6"
    setup(install_requires=[torch_dep, *CORE_DEPS], ext_modules=ext_modules, cmdclass=cmdclass)


main()
