"""``backend="torch"``: the fused algorithm in plain PyTorch, over row blocks, on any device.

Row block by row block, ``S = z_rows zᵀ · inv_tau`` is formed, reduced and dropped, so memory is
``O(N·D)`` plus one block of ``ROW_BLOCK_ELEMENTS`` floats (and two temporaries of that size in the
backward), whatever the batch. Work is the row-wise schedule: one GEMM in forward, two in backward
(recompute ``S``, then ``G z``): ``6·N²·D`` FLOPs in all. Runs on CPU, CUDA, MPS and XPU alike.
"""

from __future__ import annotations

import torch

from simclr_fast.backends.base import Backend

#: Elements of one ``(rows, N)`` similarity block: 2**22 fp32 = 16 MiB, so the backward's three
#: live blocks stay under 64 MiB. Not tuned by measurement: large enough that each block is a
#: GEMM of at least 32 rows at N = 131072, small enough to meet the memory goal of the README.
ROW_BLOCK_ELEMENTS = 1 << 22


def _row_blocks(row_count: int, n: int):
    step = max(1, ROW_BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, row_count, step):
        yield start, min(row_count, start + step)


#: |inv_tau| up to which one fixed shift c = |inv_tau| is safe: z is normalized, so every
#: similarity lies in [-c, c] and e^{s - c} lies in [e^{-2c}, 1], a normal fp32 number for 2c <= 80
#: (fp32's smallest normal is e^-87.3). Past it the exact per-row max path is used.
FIXED_SHIFT_MAX_INV_TAU = 40.0


def _masked_block(
    z: torch.Tensor, zc: torch.Tensor, lo: int, hi: int, row_start: int, inv_tau: float
) -> torch.Tensor:
    """``S`` for rows ``[lo, hi)`` of the owned block, the diagonal set to ``-inf``."""
    # scaling the (rows, D) operand instead of the (rows, N) product saves a pass over S
    s = torch.mm(z[row_start + lo : row_start + hi] * inv_tau, zc.T)
    idx = torch.arange(hi - lo, device=z.device)
    s[idx, row_start + lo + idx] = float("-inf")
    return s


class TorchBackend(Backend):
    """Memory-light NT-Xent in pure PyTorch (see the module docstring)."""

    name = "torch"

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        return None

    def kernel_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    def forward_lse(
        self, z: torch.Tensor, row_start: int, row_count: int, inv_tau: float
    ) -> torch.Tensor:
        lse = torch.empty(row_count, dtype=z.dtype, device=z.device)
        shift = abs(inv_tau)
        fixed = shift <= FIXED_SHIFT_MAX_INV_TAU
        for lo, hi in _row_blocks(row_count, z.shape[0]):
            s = _masked_block(z, z, lo, hi, row_start, inv_tau)
            if fixed:  # lse = c + log Σ e^{s - c}: no max pass needed
                lse[lo:hi] = s.sub_(shift).exp_().sum(dim=1).log_().add_(shift)
            else:
                lse[lo:hi] = torch.logsumexp(s, dim=1)
        return lse

    def backward_rows(
        self,
        z: torch.Tensor,
        lse: torch.Tensor,
        coef: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
    ) -> torch.Tensor:
        lse = lse.to(z.dtype)
        coef = coef.to(z.dtype)
        dz = torch.empty(row_count, z.shape[1], dtype=z.dtype, device=z.device)
        shift = abs(inv_tau)
        fixed = shift <= FIXED_SHIFT_MAX_INV_TAU
        # G_kj = coef_k e^{s - lse_k} + coef_j e^{s - lse_j}. With the fixed shift this is
        # e^{s - c} (u_k + u_j), u = coef e^{c - lse} (<= coef e^{2c}: finite in fp32 for 2c <= 80),
        # one exponential per entry instead of two.
        u = coef * torch.exp(shift - lse) if fixed else None
        for lo, hi in _row_blocks(row_count, z.shape[0]):
            s = _masked_block(z, z, lo, hi, row_start, inv_tau)
            rows = slice(row_start + lo, row_start + hi)
            if fixed:
                e = s.sub_(shift).exp_()  # exp(-inf) = 0 clears the diagonal
                g = torch.mul(e, u[None, :]).addcmul_(e, u[rows, None])
                del e
            else:
                g = torch.sub(s, lse[rows, None]).exp_().mul_(coef[rows, None])
                g.add_(s.sub_(lse[None, :]).exp_().mul_(coef[None, :]))
            del s
            torch.mm(g, z, out=dz[lo:hi])
        return dz.mul_(inv_tau)
