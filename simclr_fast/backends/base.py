"""The contract every fused backend implements.

A backend computes two things over *normalized* embeddings ``z`` of shape ``(N, D)`` (``N`` columns;
in one process ``N = 2B``, with ``torch.distributed`` it is ``2B·W``, the gathered batch) for the
contiguous block of rows ``z[row_start : row_start + row_count]`` owned by the caller. With
``s_ij = z_i · z_j · inv_tau`` and the diagonal ``j == i`` excluded:

``forward_lse``
    ``lse_i = logsumexp_{j != i} s_ij`` for the owned rows, fp32, shape ``(row_count,)``.

``backward_rows``
    Given ``lse`` and per-row weights ``coef`` for **all** ``N`` rows (fp32, shape ``(N,)``),
    the owned rows of ``dz`` (fp32, shape ``(row_count, D)``)::

        dz_k = inv_tau · Σ_{j != k} (coef_k · e^{s_kj − lse_k} + coef_j · e^{s_kj − lse_j}) · z_j

    This is ``inv_tau · (G z)_k`` with ``G = diag(coef) P + (diag(coef) P)ᵀ`` (DESIGN.md §2): row
    ``k``'s own log-sum-exp term plus every other row's term that has ``z_k`` as a negative. For the
    mean loss in one process ``coef = grad_output / N``; the positive-pair term, the mean and the
    normalization's backward stay in Python (:mod:`simclr_fast._function`), so a backend only sees
    ``z``.

Everything of size ``N²`` lives in tiles: a backend keeps ``O(N·D)`` memory. ``z`` arrives
contiguous, in :meth:`Backend.kernel_dtype` of the input dtype; results are always fp32.
"""

from __future__ import annotations

import torch


class Backend:
    """Base class: one fused NT-Xent implementation (see the module docstring for the math)."""

    #: name used by ``backend=...`` in the public API.
    name: str = ""

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why this backend cannot run on ``device``/``dtype`` here, with the fix; ``None`` if it can."""
        raise NotImplementedError

    def kernel_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype ``z`` is handed to the kernels in, for inputs of ``dtype``."""
        return torch.float32

    def forward_lse(
        self, z: torch.Tensor, row_start: int, row_count: int, inv_tau: float
    ) -> torch.Tensor:
        """Row log-sum-exps of the owned rows, diagonal excluded: fp32 ``(row_count,)``."""
        raise NotImplementedError

    def backward_rows(
        self,
        z: torch.Tensor,
        lse: torch.Tensor,
        coef: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
    ) -> torch.Tensor:
        """``inv_tau · (G z)`` for the owned rows: fp32 ``(row_count, D)``."""
        raise NotImplementedError
