"""The autograd layer: one ``torch.autograd.Function`` over any :class:`~simclr_fast.backends.base.Backend`.

It saves the normalized embeddings and the per-row log-sum-exp (``O(N)``), never the ``N × N``
matrix, and asks the backend to recompute tiles in the backward. The positive-pair term, the mean
and the scaling by ``grad_output`` live here; the backends only see ``z`` (DESIGN.md §2)::

    loss = mean_i (lse_i − s_{i,pos(i)})
    dL/dz = [G z − (coef + coef_pos) z_pos] · inv_tau,   coef = grad_output / N
"""

from __future__ import annotations

import torch

from simclr_fast.backends.base import Backend


def positive_logits(z: torch.Tensor, b: int, inv_tau: float) -> torch.Tensor:
    """``s_{i,pos(i)}`` for rows laid out ``[view 0; view 1]`` (``pos(i) = (i + B) mod 2B``)."""
    half = torch.linalg.vecdot(z[:b], z[b:]).mul_(inv_tau)  # s_{i,i+B} = s_{i+B,i}
    return torch.cat([half, half])


def subtract_positive_term(dz: torch.Tensor, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``dz -= scale · z_pos`` in place, for rows laid out ``[view 0; view 1]``.

    Two in-place half updates instead of ``z.roll(...) * scale``: no ``(2B, D)`` temporaries.
    """
    b = z.shape[0] // 2
    dz[:b].addcmul_(z[b:], scale, value=-1.0)
    dz[b:].addcmul_(z[:b], scale, value=-1.0)
    return dz


class NTXentFunction(torch.autograd.Function):
    """Single-process fused NT-Xent on normalized ``z`` (fp32 or fp64) of shape ``(2B, D)``."""

    @staticmethod
    def forward(
        ctx, z: torch.Tensor, backend: Backend, inv_tau: float, kernel_dtype: torch.dtype
    ) -> torch.Tensor:
        n = z.shape[0]
        zk = z.to(kernel_dtype).contiguous()
        lse = backend.forward_lse(zk, 0, n, inv_tau)
        # Positives from the same (possibly 16-bit) rounding of z the kernels saw, so that the
        # positive logit cancels its own term inside lse exactly (loss 0 at B = 1, say).
        zr = zk.to(z.dtype)
        loss = (lse.to(z.dtype) - positive_logits(zr, n // 2, inv_tau)).mean()
        ctx.save_for_backward(zk, lse)
        ctx.backend, ctx.inv_tau, ctx.out_dtype = backend, inv_tau, z.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        zk, lse = ctx.saved_tensors
        n = zk.shape[0]
        coef = grad_out.to(lse.dtype).expand(n) / n
        dz = ctx.backend.backward_rows(zk, lse, coef.contiguous(), 0, n, ctx.inv_tau).to(
            ctx.out_dtype
        )
        scale = (2 * ctx.inv_tau) * (grad_out.to(ctx.out_dtype) / n)  # coef_k + coef_pos(k)
        subtract_positive_term(dz, zk.to(ctx.out_dtype), scale)
        return dz, None, None, None
