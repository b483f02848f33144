"""Guarded loading of the compiled extension ``simclr_fast._C`` (the fused C++ CPU kernels).

Importing this module never raises because of ``_C``: it sets :data:`AVAILABLE` and, when the
extension cannot be used, :data:`REASON` (a sentence with the fix), which ``backend="cpu"``
reports and ``backend="auto"`` uses to fall back to ``"torch"``.

A compiled extension only works with the torch it was built against. The build embeds that
version in the library (``SIMCLR_FAST_BUILD_INFO{torch=X.Y.Z;cxx11abi=N}``, csrc/module.cpp); it
is read from the file *before* the library is loaded, so a mismatch gives a warning and the
fallback instead of an undefined-symbol error or a crash.

Setting ``SIMCLR_FAST_NO_EXTENSION=1`` skips the build in ``setup.py`` and the loading here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import warnings

import torch

BUILD_HINT = (
    "build it with `make test` or `pip install --no-build-isolation -e .` (or `pip install "
    "--no-build-isolation .`) from a source checkout, with a C++ compiler available and "
    "SIMCLR_FAST_NO_EXTENSION unset"
)

#: True when the ops of ``simclr_fast._C`` (``torch.ops.simclr_fast.ntxent_fwd_cpu`` / ``ntxent_bwd_cpu``,
#: ``augment_view_cpu``) are registered and usable.
AVAILABLE: bool = False
#: Why the extension is not available (with the fix), or ``None``.
REASON: str | None = None
#: ``{"torch": "2.13.0", "cxx11abi": "1"}`` as embedded at build time, when a built library was found.
BUILD_INFO: dict[str, str] | None = None

_INFO_RE = re.compile(rb"SIMCLR_FAST_BUILD_INFO\{([^}]*)\}")


def _read_build_info(path: str) -> dict[str, str] | None:
    """The build info embedded in the shared library at ``path``, read without loading it."""
    with open(path, "rb") as f:
        match = _INFO_RE.search(f.read())
    if match is None:
        return None
    pairs = (
        item.split("=", 1)
        for item in match.group(1).decode("ascii", "replace").split(";")
        if "=" in item
    )
    return dict(pairs)


def _mismatch(info: dict[str, str]) -> str | None:
    """Why a library built with ``info`` cannot load into the running torch, or ``None``."""
    running = torch.__version__.split("+")[0]
    if info.get("torch") != running:
        return (
            f"simclr_fast._C was built for torch {info.get('torch')} but torch {running} is installed; "
            f"install torch=={info.get('torch')} (the version this wheel pins) or rebuild simclr_fast "
            "against the installed torch"
        )
    abi = str(int(torch._C._GLIBCXX_USE_CXX11_ABI))
    if info.get("cxx11abi", abi) != abi:
        return (
            f"simclr_fast._C was built with _GLIBCXX_USE_CXX11_ABI={info.get('cxx11abi')} but the installed "
            f"torch uses {abi}; rebuild simclr_fast against the installed torch"
        )
    return None


def _register_fakes() -> None:
    """Shape-only implementations, so ``torch.compile`` and FakeTensor tracing see through the ops."""

    @torch.library.register_fake("simclr_fast::ntxent_fwd_cpu")
    def _fwd_fake(
        z: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        shift: torch.Tensor,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        torch._check(z.dim() == 2, lambda: "z must be 2-D (N, D)")
        torch._check(shift.dim() == 1, lambda: "shift must be 1-D (row_count,)")
        return z.new_empty((row_count,), dtype=torch.float32)

    @torch.library.register_fake("simclr_fast::ntxent_bwd_cpu")
    def _bwd_fake(
        z: torch.Tensor,
        shift: torch.Tensor,
        weight: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        torch._check(z.dim() == 2, lambda: "z must be 2-D (N, D)")
        return z.new_empty((row_count, z.shape[1]), dtype=torch.float32)

    @torch.library.register_fake("simclr_fast::augment_view_cpu")
    def _augment_fake(
        images: torch.Tensor,
        theta: torch.Tensor,
        flags: torch.Tensor,
        factors: torch.Tensor,
        order: torch.Tensor,
        sigma: torch.Tensor,
        noise: torch.Tensor | None,
        erase_box: torch.Tensor,
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        out: torch.Tensor,
        interpolation: int,
        zeros_padding: bool,
        blur_kernel: int,
        hue: bool,
        solarize_threshold: float,
        noise_std: float,
    ) -> None:
        torch._check(images.dim() == 4, lambda: "images must be 4-D (B, C, H, W)")
        return None


def _load() -> tuple[bool, str | None]:
    global BUILD_INFO
    flag = os.environ.get("SIMCLR_FAST_NO_EXTENSION", "0")
    if flag not in ("", "0"):
        return (
            False,
            f"the compiled extension is disabled by SIMCLR_FAST_NO_EXTENSION={flag}; unset it, then {BUILD_HINT}",
        )
    try:
        spec = importlib.util.find_spec("simclr_fast._C")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return False, f"the compiled extension simclr_fast._C is not built; {BUILD_HINT}"
    try:
        BUILD_INFO = _read_build_info(spec.origin)
    except OSError as exc:
        return False, f"cannot read {spec.origin} ({exc}); {BUILD_HINT}"
    if BUILD_INFO is None:
        return (
            False,
            f"{spec.origin} carries no build information (a stale or foreign build); {BUILD_HINT}",
        )
    mismatch = _mismatch(BUILD_INFO)
    if mismatch is not None:
        warnings.warn(
            f"{mismatch}. Falling back to the other backends.", RuntimeWarning, stacklevel=3
        )
        return False, mismatch
    try:
        importlib.import_module("simclr_fast._C")
        _register_fakes()
    except Exception as exc:  # an unloadable library must never break `import simclr_fast`
        reason = f"simclr_fast._C failed to load ({type(exc).__name__}: {exc}); {BUILD_HINT}"
        warnings.warn(
            f"{reason}. Falling back to the other backends.", RuntimeWarning, stacklevel=3
        )
        return False, reason
    return True, None


AVAILABLE, REASON = _load()


def cpu_isa() -> str | None:
    """Which elementwise kernels the extension runs on this CPU (``"avx2"`` or ``"generic"``), if built."""
    if not AVAILABLE:
        return None
    from simclr_fast import _C

    return _C.cpu_isa()
