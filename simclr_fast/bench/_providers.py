"""The implementations the loss benchmark compares ("providers"), with their work and memory models.

A provider turns ``(out0, out1)`` into a scalar loss that can be back-propagated. Each one knows

- why it cannot run here (``unavailable_reason``), checked once in the parent process;
- how many FLOPs it spends by its own algorithm (``own_flops``), next to the common "useful work"
  count :func:`useful_flops` used to compare providers on one scale;
- roughly how many bytes one forward+backward needs beyond its inputs (``estimate_bytes``), used to
  skip a case that cannot fit under the memory cap before it is started.

The fused backends come from :func:`simclr_fast.available_backends`, so a backend that lands later
(the C++ ``"cpu"`` kernel, ``"triton"`` on CUDA) shows up without a change here.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Row-block memory of the ``"torch"`` backend's backward (three live ``2**22``-element fp32 blocks,
#: see ``simclr_fast/backends/torch_backend.py``); used only for the pre-run footprint estimate.
_FUSED_BLOCK_BYTES = 3 * (1 << 22) * 4

#: Per-provider footprint models, bytes per ``(2B)²`` element of the similarity matrix, for the
#: pre-run memory check only (an over-estimate skips a case that might have fit; an under-estimate
#: is caught by the allocation failure). ``naive``: docs/design.md §2 counts ≈ 16·(2B)² for the naive
#: loss; measured here 3.4 GB at 2B = 16384 (12.7·(2B)²), 16 kept as the conservative figure.
#: ``naive-compile``: measured 1.5 GB at 2B = 16384 (5.6·(2B)², docs/design.md §2), rounded up to 6.
#: ``lightly``: not measured (not importable here); taken as the naive figure.
_BYTES_PER_N2 = {"naive": 16, "naive-compile": 6, "lightly": 16}
#: pytorch-metric-learning 2.9's ``NTXentLoss`` compares every positive pair with every negative
#: pair: its masks are ``2B × 2B(2B − 2)``, memory cubic in 2B. Measured here (peak RSS beyond
#: inputs, D = 128, fp32, torch 2.13, 2 CPU threads, 2026-11-22): 272 MB at 2B = 256 and 2176 MB at
#: 2B = 512, i.e. 16.2 bytes per (2B)³; at 2B = 1024 that is ≈ 17 GB.
_BYTES_PER_N3 = {"pml": 16.2}

#: FLOP factors (forward, backward) in units of ``(2B)²·D`` for each algorithm (docs/design.md §2).
ROW_WISE = (2, 4)  # one GEMM forward; recompute + G·z backward (or autograd's two GEMMs)
SYMMETRIC = (1, 3)  # tiles on/above the diagonal only

#: FLOP factors of fused backends that use another schedule than row-wise tiles. A backend can
#: also declare its own with a ``flop_factors = (fwd, bwd)`` attribute.
_BACKEND_FLOPS = {"cpu": SYMMETRIC}


def useful_flops(n: int, d: int) -> tuple[float, float]:
    """The common yardstick: FLOPs of the naive loss's GEMMs, ``(2·N²·D, 4·N²·D)`` for (fwd, bwd).

    Every provider's GFLOP/s is reported against this count, so the rates compare like times do;
    a provider that does less work (the symmetric schedule) shows a higher "useful" rate than its
    own arithmetic rate.
    """
    base = float(n) * n * d
    return ROW_WISE[0] * base, ROW_WISE[1] * base


@dataclass(frozen=True)
class Provider:
    """One implementation of the loss under test."""

    name: str
    description: str
    #: (fwd, bwd) FLOPs in units of N²·D by this provider's own algorithm.
    flop_factors: tuple[int, int] = ROW_WISE
    #: bytes per N² element of its working memory (0: O(N·D) memory, fused).
    bytes_per_n2: float = 0.0
    #: bytes per N³ element, for a provider whose memory grows with the cube of 2B.
    bytes_per_n3: float = 0.0
    #: compiled providers compile on their first call at each size: measure memory after that call.
    compiles: bool = False

    def own_flops(self, n: int, d: int) -> tuple[float, float]:
        base = float(n) * n * d
        return self.flop_factors[0] * base, self.flop_factors[1] * base

    def estimate_bytes(self, n: int, d: int, dtype: torch.dtype) -> int:
        """Rough working memory of one forward+backward beyond the inputs, in bytes."""
        elt = torch.empty((), dtype=dtype).element_size()
        vectors = 12 * n * d * 4  # z, its copies, gradients: a generous O(N·D) allowance
        scale = max(elt, 4) / 4
        if self.bytes_per_n2 or self.bytes_per_n3:
            return (
                int((self.bytes_per_n2 * n * n + self.bytes_per_n3 * float(n) ** 3) * scale)
                + vectors
            )
        return _FUSED_BLOCK_BYTES + vectors


def fused_provider(backend: str) -> Provider:
    factors = _BACKEND_FLOPS.get(backend, ROW_WISE)
    try:
        from simclr_fast.backends import get_backend

        factors = tuple(getattr(get_backend(backend), "flop_factors", factors))
    except Exception:  # an unavailable backend is reported by available_backends, not here
        pass
    return Provider(backend, f'simclr_fast.nt_xent(backend="{backend}") (fused)', factors)


STATIC_PROVIDERS = {
    "naive": Provider(
        "naive",
        'naive loss, eager (simclr_fast.nt_xent(backend="reference"))',
        ROW_WISE,
        _BYTES_PER_N2["naive"],
    ),
    "naive-compile": Provider(
        "naive-compile",
        "torch.compile(simclr_fast.reference.nt_xent_reference)",
        ROW_WISE,
        _BYTES_PER_N2["naive-compile"],
        compiles=True,
    ),
    "pml": Provider(
        "pml",
        "pytorch-metric-learning SelfSupervisedLoss(NTXentLoss(temperature))",
        ROW_WISE,
        bytes_per_n3=_BYTES_PER_N3["pml"],
    ),
    "lightly": Provider(
        "lightly", "lightly.loss.NTXentLoss(temperature)", ROW_WISE, _BYTES_PER_N2["lightly"]
    ),
}

#: Names accepted by ``--providers`` besides the fused backends.
BASELINES = tuple(STATIC_PROVIDERS)
FUSED = ("torch", "cpu", "triton")


def get_provider(name: str) -> Provider:
    if name in STATIC_PROVIDERS:
        return STATIC_PROVIDERS[name]
    if name in FUSED:
        return fused_provider(name)
    raise ValueError(f"unknown provider {name!r}; choose from {BASELINES + FUSED}")


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why provider ``name`` cannot run on ``device``/``dtype`` here (with the fix), or ``None``."""
    if name in FUSED:
        from simclr_fast.backends import unavailable_reason as backend_reason

        try:
            return backend_reason(name, device, dtype)
        except Exception as exc:  # e.g. the module of a backend not written yet
            return f"backend {name!r} cannot be loaded: {exc}"
    if name == "naive":
        return None
    if name == "naive-compile":
        if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "torch.compile on CPU needs a C++ compiler (install g++)"
        return None
    if name == "pml":
        try:
            importlib.import_module("pytorch_metric_learning.losses")
        except Exception as exc:
            return f"pytorch-metric-learning not importable ({exc}); pip install pytorch-metric-learning"
        return None
    if name == "lightly":
        try:
            importlib.import_module("lightly.loss")
        except Exception as exc:
            return f"lightly not importable ({type(exc).__name__}: {exc}); pip install lightly torchvision"
        return None
    return f"unknown provider {name!r}"


def default_providers(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Baselines first, then every fused backend that runs on ``device``/``dtype``."""
    from simclr_fast import available_backends

    fused = [b for b in available_backends(device, dtype) if b in FUSED]
    return list(BASELINES) + fused


def make_loss(
    name: str, temperature: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The callable ``(out0, out1) -> loss`` of provider ``name`` (imports happen here, in the case)."""
    if name in FUSED:
        from simclr_fast import nt_xent

        return lambda a, b: nt_xent(a, b, temperature, backend=name)
    if name == "naive":
        from simclr_fast import nt_xent

        return lambda a, b: nt_xent(a, b, temperature, backend="reference")
    if name == "naive-compile":
        from simclr_fast.reference import nt_xent_reference

        # dynamic=True: one graph for every (2B, D), so the compile (tens of seconds on a small
        # CPU) happens once per dtype and later cases, each in its own process, load it from
        # inductor's on-disk cache instead of compiling again for their shape.
        compiled = torch.compile(nt_xent_reference, dynamic=True)
        return lambda a, b: compiled(a, b, temperature)
    if name == "pml":
        from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

        loss = SelfSupervisedLoss(NTXentLoss(temperature=temperature))
        return lambda a, b: loss(a, b)
    if name == "lightly":
        from lightly.loss import NTXentLoss

        loss = NTXentLoss(temperature=temperature)
        return lambda a, b: loss(a, b)
    raise ValueError(f"unknown provider {name!r}")
