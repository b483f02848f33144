"""``backend="cpu"``: the fused C++ kernels of ``csrc/`` (the compiled extension ``simclr_fast._C``).

Symmetric tile schedule (``4·N²·D`` FLOPs for forward + backward, two thirds of the naive loss's
GEMMs), one exponential per pair for ``|τ| >= 0.025``, OpenMP over tiles, ``O(N·D)`` memory; see
the header comment of ``csrc/ntxent.cpp``. The kernels compute in fp32: bf16/fp16 inputs are
converted by the autograd layer, fp64 inputs are refused (use ``backend="torch"``).

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
        self, z: torch.Tensor, row_start: int, row_count: int, inv_tau: float
    ) -> torch.Tensor:
        return torch.ops.simclr_fast.ntxent_fwd_cpu(z, row_start, row_count, inv_tau)

    def backward_rows(
        self,
        z: torch.Tensor,
        lse: torch.Tensor,
        coef: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
    ) -> torch.Tensor:
        return torch.ops.simclr_fast.ntxent_bwd_cpu(z, lse, coef, row_start, row_count, inv_tau)
