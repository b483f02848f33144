"""``backend="cpu"``: the fused C++ kernels of ``csrc/`` (the compiled extension ``simclr_fast._C``).

Implements the contract of :mod:`simclr_fast.backends.base` (the shifted row log-sum-exp
``x_k = log Σ_{j∈C(k)} e^{s_kj − shift_k}`` and its gradient), in both column modes: self
similarity with an optional symmetric ``exclude`` (NT-Xent's positives), and a memory bank of
``keys`` (rectangular query × key tiles, no self-mask, ``O(B·D + K·D)`` memory).

Self mode uses the symmetric tile schedule (``4·N²·D`` FLOPs for forward + backward, two thirds of
the naive loss's GEMMs), one exponential per pair for ``|τ| >= 0.025`` on normalized rows, OpenMP
over tiles, ``O(N·D)`` memory; ``x`` is assembled in fp64 so nothing of size ``1/τ`` cancels in
fp32. See the header comment of ``csrc/ntxent.cpp``. The kernels compute in fp32: bf16/fp16 inputs
are converted by the autograd layer, fp64 inputs are refused (use ``backend="torch"``).

The ops are registered with torch (``torch.ops.simclr_fast.ntxent_fwd_cpu`` / ``ntxent_bwd_cpu``)
with fake implementations, so ``torch.compile(fullgraph=True)`` traces through them.
"""

from __future__ import annotations

import torch

from simclr_fast import _extension
from simclr_fast.backends.base import Backend


class CPUBackend(Backend):
    """Fused NT-Xent C++ kernels for CPU tensors (see the module docstring)."""

    name = "cpu"

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if not _extension.AVAILABLE:
            return _extension.REASON
        if torch.device(device).type != "cpu":
            return (
                f"the C++ kernels run on CPU tensors only, got tensors on {device}; move them with "
                ".cpu(), or use backend='triton' (CUDA) or backend='torch' (any device)"
            )
        if dtype == torch.float64:
            return (
                "the C++ kernels compute in float32 and do not take float64 inputs; use backend='torch' "
                "(fused, float64 throughout) or convert the inputs with .float()"
            )
        return None

    def kernel_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float32

    def forward_lse(
        self,
        z: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        shift: torch.Tensor,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.ops.simclr_fast.ntxent_fwd_cpu(
            z, row_start, row_count, inv_tau, shift, exclude, keys
        )

    def backward_rows(
        self,
        z: torch.Tensor,
        shift: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # ``x`` is not needed here: the fp32 G tile holds weight · e^{s − shift} at full range.
        return torch.ops.simclr_fast.ntxent_bwd_cpu(
            z, shift, weight, row_start, row_count, inv_tau, exclude, keys
        )
