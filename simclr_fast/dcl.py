"""Decoupled contrastive learning (Yeh et al. 2021, arXiv 2110.06848): lightly's DCL and DCLW, fused.

DCL removes the positive pair from the denominator of NT-Xent. With the ``2B`` normalized rows
``z = [z0; z1]``, ``s_ij = z_i·z_j/τ`` and ``pos(i) = (i + B) mod 2B`` (docs/design.md §7)::

    ℓ_i = −w_i s_i,pos + log Σ_{j∉{i,pos(i)}} e^{s_ij}          loss = mean over the 2B rows

(``w = 1`` for :class:`DCLLoss` without ``weight_fn``). On the shifted row LSE of
:mod:`simclr_fast.backends.base` with ``shift = s_pos`` and the positive excluded in-tile
(exactly NT-Xent's ``x``, ``x_i = log Σ_{j∉{i,pos}} e^{s_ij − s_i,pos}``) this is
``ℓ_i = x_i + (1 − w_i)·s_i,pos``: nothing of size ``2B × 2B`` is stored, nothing cancels.

As in lightly, ``weight_fn(a, b)`` is called with the normalized local views, ``(z0, z1)`` for the
first ``B`` rows and ``(z1, z0)`` for the others, and its result is not detached;
:class:`DCLWLoss`'s weight ``w_i = 2 − B·softmax_i(z0·z1/σ)`` is detached and comes from the local
batch even with ``gather_distributed`` (lightly's behaviour). With ``gather_distributed`` and
more than one process the negatives are every rank's rows, with exact gradients (the
communication-light layer of docs/design.md §3); each rank returns the mean over its own rows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from simclr_fast import backends
from simclr_fast._function import (
    GatheredRowLSE,
    RowLSE,
    inv_tau_tensor,
    positive_pair_index,
)
from simclr_fast.functional import check_temperature, distributed_world, prepare

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def negative_mises_fisher_weights(
    out0: torch.Tensor, out1: torch.Tensor, sigma: float = 0.5
) -> torch.Tensor:
    """DCLW's weights, lightly's ``negative_mises_fisher_weights``: ``2 − B·softmax(out0·out1/σ)``.

    The rows' similarities ``out0_i·out1_i / σ`` (inputs detached) go through a softmax over the
    batch; the result is detached (no gradient flows through the weights).

    Shape:
        out0, out1: ``(B, D)`` (normalized, as :class:`DCLWLoss` passes them). Output: ``(B,)``.

    Examples:
        >>> import torch
        >>> from simclr_fast.dcl import negative_mises_fisher_weights
        >>> negative_mises_fisher_weights(torch.ones(4, 2), torch.ones(4, 2))
        tensor([1., 1., 1., 1.])
    """
    similarity = torch.linalg.vecdot(out0.detach(), out1.detach()) / sigma
    return (2 - out0.shape[0] * F.softmax(similarity, dim=0)).detach()


def dcl_reference(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    weight_fn: WeightFn | None = None,
    out0_all: torch.Tensor | None = None,
    out1_all: torch.Tensor | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """The naive DCL loss in the inputs' dtype: materializes the similarities, autograd backward.

    ``out0``, ``out1`` are this process's views; ``out0_all``/``out1_all`` (``None``: the local
    ones) the normalized views of every rank, rank by rank, gathered with gradient. The oracle of
    the tests and ``backend="reference"``.
    """
    z0 = F.normalize(out0, dim=1)
    z1 = F.normalize(out1, dim=1)
    a0 = z0 if out0_all is None else out0_all
    a1 = z1 if out1_all is None else out1_all
    b = z0.shape[0]
    diag = torch.zeros(b, a0.shape[0], dtype=torch.bool, device=z0.device)
    diag[torch.arange(b), rank * b + torch.arange(b)] = True

    def half(x, y, x_all, y_all):
        s_same = x @ x_all.T / temperature
        s_cross = x @ y_all.T / temperature
        positive = -s_cross[diag]
        if weight_fn:
            positive = positive * weight_fn(x, y)
        negatives = torch.cat([s_same[~diag].view(b, -1), s_cross[~diag].view(b, -1)], dim=1)
        return (positive + torch.logsumexp(negatives, dim=1)).mean()

    return 0.5 * (half(z0, z1, a0, a1) + half(z1, z0, a1, a0))


def _weights(weight_fn: WeightFn | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    if not weight_fn:
        return None
    w = weight_fn(a, b)
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(w, dtype=a.dtype, device=a.device)
    return w.to(device=a.device)


def dcl(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    weight_fn: WeightFn | None = None,
    backend: str = "auto",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """The decoupled contrastive loss (lightly's ``DCLLoss``), fused and memory-light.

    ``ℓ_i = −w_i s_i,pos + log Σ_{j∉{i,pos(i)}} e^{s_ij}`` over the ``2B`` rows of
    ``normalize(cat(out0, out1))``, averaged (module docstring); computed as
    ``x_i + (1 − w_i)·s_i,pos`` on the fused row LSE, with the positive column excluded in-tile.

    Args:
        out0: Embeddings of the first view.
        out1: Embeddings of the second view.
        temperature: τ; ``abs(τ) >= 1e-8``, negative allowed; or a positive 0-dim tensor to learn.
        weight_fn: ``w = weight_fn(a, b)`` of shape ``(B,)`` (or a scalar), called with the
            normalized views ``(z0, z1)`` for the first view's rows and ``(z1, z0)`` for the
            second's; ``None`` for ``w = 1``.
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``.
        gather_distributed: negatives from every process of the default group (exact gradients);
            the weights stay local. Without a process group this is the local loss.

    Shape:
        out0, out1: ``(B, D)``. Output: scalar.

    Returns:
        The mean over this process's ``2B`` rows (fp32; fp64 for fp64 inputs).

    Raises:
        TypeError: non-tensor or non-floating inputs, a bad temperature type.
        ValueError: bad shapes, empty inputs, mismatched devices, bad temperature, unknown backend.

    Examples:
        >>> import torch
        >>> from simclr_fast.dcl import dcl, dcl_reference
        >>> a, b = torch.randn(8, 16), torch.randn(8, 16)
        >>> torch.allclose(dcl(a, b, 0.1), dcl_reference(a, b, 0.1), rtol=1e-5)
        True
    """
    temperature, name, compute, kernel = prepare(out0, out1, temperature, backend)
    world = distributed_world(gather_distributed)
    with torch.autocast(out0.device.type, enabled=False):
        z0 = F.normalize(out0.to(compute), dim=1)
        z1 = F.normalize(out1.to(compute), dim=1)
        if world > 1:
            from simclr_fast.distributed import start_gathered

            rank, _ = start_gathered(out0, temperature)
        else:
            rank = 0
        if name == "reference":
            if world > 1:
                from simclr_fast.distributed import gather_with_grad

                return dcl_reference(
                    z0, z1, temperature, weight_fn, gather_with_grad(z0), gather_with_grad(z1), rank
                ).to(compute)
            return dcl_reference(z0, z1, temperature, weight_fn).to(compute)
        b = z0.shape[0]
        inv_tau = inv_tau_tensor(temperature)
        z = torch.cat([z0, z1])
        zr = z.to(kernel).to(compute)
        half = torch.linalg.vecdot(zr[:b], zr[b:]) * inv_tau.to(compute)
        shift = torch.cat([half, half])
        exclude = positive_pair_index(b, rank * 2 * b, device=z.device)
        if world > 1:
            x = GatheredRowLSE.apply(z, shift, inv_tau, name, kernel, exclude, None)
        else:
            x = RowLSE.apply(z, shift, inv_tau, name, kernel, exclude, None)
        rows = x.to(compute)
        w0, w1 = _weights(weight_fn, z0, z1), _weights(weight_fn, z1, z0)
        if w0 is None:
            return rows.mean()
        loss0 = (rows[:b] + (1 - w0.to(compute)) * half).mean()
        loss1 = (rows[b:] + (1 - w1.to(compute)) * half).mean()
        return 0.5 * (loss0 + loss1)


class DCLLoss(nn.Module):
    """Decoupled contrastive loss: lightly's ``DCLLoss``, same constructor, values and gradients.

    Args:
        temperature: τ, scales the similarities by ``1/τ``; ``abs(τ) >= 1e-8``, negative allowed;
            or a positive 0-dim tensor to learn it.
        weight_fn: the weighting ``w`` of the positive term, ``weight_fn(out0, out1) -> (B,)``,
            called with the normalized local views; ``None``: no weighting.
        gather_distributed: negatives from all processes of the default ``torch.distributed``
            group, with exact gradients; without a process group (or with one process) the local
            loss, as in lightly.
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``; see
            :func:`simclr_fast.nt_xent`.

    Shape:
        out0, out1: ``(B, D)``. Output: scalar.

    Raises:
        ValueError: ``abs(temperature) < 1e-8``, an unknown backend, or ``gather_distributed=True``
            where ``torch.distributed`` is not available.
        TypeError: ``weight_fn`` is not callable, or arguments of the wrong type.

    Examples:
        >>> import torch
        >>> from simclr_fast import DCLLoss
        >>> loss_fn = DCLLoss(temperature=0.1)
        >>> out0 = torch.randn(16, 32, requires_grad=True)
        >>> out1 = torch.randn(16, 32, requires_grad=True)
        >>> loss_fn(out0, out1).backward()
        >>> out1.grad.shape
        torch.Size([16, 32])
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.1,
        weight_fn: WeightFn | None = None,
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        if weight_fn is not None and not callable(weight_fn):
            raise TypeError(
                f"weight_fn must be a callable (out0, out1) -> weights of shape (B,), or None; got "
                f"{type(weight_fn).__name__}"
            )
        if not isinstance(gather_distributed, bool):
            raise TypeError(
                f"gather_distributed must be a bool, got {type(gather_distributed).__name__}"
            )
        if gather_distributed and not dist.is_available():
            raise ValueError(
                "gather_distributed=True needs torch.distributed, which this PyTorch build lacks; "
                "use gather_distributed=False"
            )
        if backend not in backends.BACKENDS:
            raise ValueError(f"backend must be one of {backends.BACKENDS}, got {backend!r}")
        self.weight_fn = weight_fn
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """The mean DCL over the ``2B`` rows of ``cat(out0, out1)``."""
        return dcl(
            out0,
            out1,
            temperature=self.temperature,
            weight_fn=self.weight_fn,
            backend=self.backend,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, "
            f"backend={self.backend!r}"
        )


class DCLWLoss(DCLLoss):
    """Weighted DCL: lightly's ``DCLWLoss``, DCL with the negative von Mises-Fisher weights.

    ``w_i = 2 − B·softmax_i(z0_i·z1_i / σ)`` (:func:`negative_mises_fisher_weights`), detached,
    from the local batch.

    Args:
        temperature: τ (see :class:`DCLLoss`).
        sigma: σ, the weights' temperature.
        gather_distributed: see :class:`DCLLoss`; the weights stay local.
        backend: see :class:`DCLLoss`.

    Raises:
        ValueError: as :class:`DCLLoss`; ``sigma`` zero or not finite.
        TypeError: ``sigma`` not a real number.

    Examples:
        >>> import torch
        >>> from simclr_fast import DCLWLoss
        >>> loss = DCLWLoss(temperature=0.1, sigma=0.5)(torch.randn(8, 16), torch.randn(8, 16))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.1,
        sigma: float = 0.5,
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"sigma must be a real number such as 0.5, got {type(sigma).__name__}")
        if not (sigma == sigma and abs(sigma) != float("inf")) or sigma == 0:
            raise ValueError(f"sigma must be finite and non-zero, got {sigma}; e.g. sigma=0.5")
        super().__init__(
            temperature=temperature,
            weight_fn=partial(negative_mises_fisher_weights, sigma=sigma),
            gather_distributed=gather_distributed,
            backend=backend,
        )
        self.sigma = sigma

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, " + super().extra_repr()
