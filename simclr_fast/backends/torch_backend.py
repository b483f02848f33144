"""``backend="torch"``: the fused algorithm in plain PyTorch, over row blocks, on any device.

Row block by row block, ``S = z_rows · colsᵀ · inv_tau`` is formed, reduced and dropped, so memory
is ``O(N·D)`` plus one block of ``ROW_BLOCK_ELEMENTS`` floats (and two temporaries of that size in
the backward), whatever the batch. Work is the row-wise schedule: one GEMM in forward, two in
backward (recompute ``S``, then ``G · cols``): ``6·N²·D`` FLOPs in all. Runs on CPU, CUDA, MPS and
XPU alike; fp64 inputs stay fp64. The math is the contract of :mod:`simclr_fast.backends.base`.
"""

from __future__ import annotations

import torch

from simclr_fast.backends.base import Backend

#: Elements of one ``(rows, N)`` similarity block: 2**22 fp32 = 16 MiB, so the backward's three
#: live blocks stay under 64 MiB. Not tuned by measurement: large enough that each block is a
#: GEMM of at least 32 rows at N = 131072, small enough to meet the memory goal of the README.
ROW_BLOCK_ELEMENTS = 1 << 22

#: Largest shift c = |inv_tau|·max|z|² for the one-exponential path: every similarity lies in
#: [-c, c], so e^{s - c} lies in [e^{-2c}, 1], a normal fp32 number for 2c <= 80 (fp32's smallest
#: normal is e^-87.3). A bound from fp32's range, not a measurement. Past it (or when the bound is
#: not known on the host) the exact per-row max path runs.
FIXED_SHIFT_MAX = 40.0


def _row_blocks(row_count: int, n: int):
    step = max(1, ROW_BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, row_count, step):
        yield start, min(row_count, start + step)


def _fixed_shift(z: torch.Tensor, cols: torch.Tensor, inv_tau: float) -> float | None:
    """The host-known bound c >= |s| when it allows the one-exponential path, else ``None``.

    z (and keys) are normalized by the loss layer, so ``|s| <= |inv_tau|`` up to rounding; a 1e-3
    margin covers 16-bit rounding of z. Reading ``max|z|²`` would cost a device sync on GPUs.
    """
    c = abs(inv_tau) * (1.0 + 1e-3)
    return c if c <= FIXED_SHIFT_MAX else None


def _block(
    z: torch.Tensor,
    cols: torch.Tensor,
    lo: int,
    hi: int,
    row_start: int,
    inv_tau: float,
    exclude: torch.Tensor | None,
    self_mode: bool,
) -> torch.Tensor:
    """``S`` for owned rows ``[lo, hi)``, with the diagonal and excluded columns set to ``-inf``."""
    # scaling the (rows, D) operand instead of the (rows, N) product saves a pass over S
    s = torch.mm(z[row_start + lo : row_start + hi] * inv_tau, cols.T)
    if self_mode:
        idx = torch.arange(hi - lo, device=z.device)
        s[idx, row_start + lo + idx] = float("-inf")
        if exclude is not None:
            ex = exclude[lo:hi]
            # rows without an excluded column (-1) write into their own (already masked) diagonal
            ex = torch.where(ex < 0, row_start + lo + idx, ex)
            s[idx, ex] = float("-inf")
    return s


class TorchBackend(Backend):
    """Memory-light shifted row log-sum-exp in pure PyTorch (see the module docstring)."""

    name = "torch"

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        return None

    def kernel_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

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
        cols = z if keys is None else keys
        out_dtype = shift.dtype
        shift = shift.to(z.dtype)
        x = torch.empty(row_count, dtype=out_dtype, device=z.device)
        c = _fixed_shift(z, cols, inv_tau)
        for lo, hi in _row_blocks(row_count, cols.shape[0]):
            s = _block(z, cols, lo, hi, row_start, inv_tau, exclude, keys is None)
            if c is not None:
                # x = log Σ e^{s - c} + (c - shift): the sum of the exponentials is taken in the
                # working dtype, the combination in fp64 (c - shift is small where the row is
                # peaked; an fp32 lse of size ~1/τ minus the shift would cancel).
                t = s.sub_(c).exp_().sum(dim=1)
                xb = t.to(torch.float64).log_().add_(c).sub_(shift[lo:hi].to(torch.float64))
            else:
                xb = torch.logsumexp(s.sub_(shift[lo:hi, None]), dim=1)
            x[lo:hi] = xb.to(out_dtype)
        return x

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
        self_mode = keys is None
        cols = z if self_mode else keys
        out_dtype = shift.dtype
        dz = torch.empty(row_count, z.shape[1], dtype=z.dtype, device=z.device)
        c = _fixed_shift(z, cols, inv_tau)
        rows_of = (lambda lo, hi: slice(row_start + lo, row_start + hi)) if self_mode else slice
        if c is not None:
            # G_kj = e^{s - c} (u_k + u_j), u = weight · e^{c - shift}: one exponential per entry.
            # u <= |weight| e^{2c}, finite in fp32 for 2c <= 80 and the weights the losses pass.
            u64 = weight.to(torch.float64) * torch.exp(c - shift.to(torch.float64))
            u = u64.to(z.dtype)
        else:
            # Two exponentials, each with its weight folded into the exponent so that neither
            # e^{s - shift} (up to e^{2c}) nor the weight can overflow on its own.
            log_w = torch.log(weight.abs().to(z.dtype))
            sign_w = torch.sign(weight).to(z.dtype)
            b = shift.to(z.dtype) - log_w
        for lo, hi in _row_blocks(row_count, cols.shape[0]):
            s = _block(z, cols, lo, hi, row_start, inv_tau, exclude, self_mode)
            rows = rows_of(lo, hi)
            if c is not None:
                e = s.sub_(c).exp_()  # exp(-inf) = 0 clears the diagonal and excluded pairs
                g = torch.mul(e, u[rows, None])
                if self_mode:
                    g.addcmul_(e, u[None, :])
                del e
            else:
                g = torch.sub(s, b[rows, None]).exp_().mul_(sign_w[rows, None])
                if self_mode:
                    g.addcmul_(s.sub_(b[None, :]).exp_(), sign_w[None, :])
            del s
            torch.mm(g, cols, out=dz[lo:hi])
        return dz.mul_(inv_tau).to(out_dtype)
