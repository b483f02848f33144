"""Build script: the package, plus the C++ extension ``simclr_fast._C`` from ``csrc/`` when possible.

The extension is built with ``torch.utils.cpp_extension`` against the torch found at build time, so
build with ``--no-build-isolation`` (``pip install --no-build-isolation .``). Set
``SIMCLR_FAST_NO_EXTENSION=1`` to skip it: a pure-Python install where the ``reference``, ``torch``
and ``triton`` backends still work.
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
                extra_compile_args=["-O3", "-fopenmp", "-march=x86-64-v2"],
                extra_link_args=["-fopenmp"],
            )
        ]
        cmdclass = {"build_ext": BuildExtension}
        # A compiled extension only loads into the torch it was built against: pin it.
        torch_dep = f"torch=={torch_version}"
    else:
        torch_dep = "torch>=2.6"
    setup(install_requires=[torch_dep, *CORE_DEPS], ext_modules=ext_modules, cmdclass=cmdclass)


main()
