"""LARS (You et al., arXiv 1708.03888) as SimCLR uses it, and the parameter split it needs.

No well-kept package fits: ``torchlars`` (last release 2020) needs a CUDA build, ``torch-optimizer``
(last release 2021) is unmaintained, and lightly's LARS would make all of lightly a dependency for
one class. The update below is google-research/simclr's (``lars_optimizer.py``), with the learning
rate applied outside the momentum buffer as in ``torch.optim.SGD``::

    g  = grad + weight_decay * w                                  (decay, unless excluded)
    r  = trust_coefficient * ||w|| / ||g||  if ||w|| > 0 and ||g|| > 0 else 1   (unless excluded)
    v  = momentum * v + r * g
    w  = w - lr * v

Parameter groups with ``lars_exclude=True`` (BN weights/biases and every bias, see
:func:`param_groups`) get neither decay nor trust scaling: plain momentum SGD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of momentum SGD.

    Args:
        params: parameters or parameter groups; a group with ``lars_exclude=True`` gets no weight
            decay and no trust scaling.
        lr: learning rate (``> 0``).
        momentum: momentum factor in ``[0, 1)``.
        weight_decay: L2 penalty added to the gradient before the trust ratio (``>= 0``).
        trust_coefficient: η of the trust ratio ``η ||w|| / ||g||`` (``> 0``).

    Raises:
        ValueError: an argument outside its range.

    Examples:
        >>> import torch
        >>> from simclr_fast.train.lars import LARS, param_groups
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> opt = LARS(param_groups(model, weight_decay=1e-6), lr=0.3)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not trust_coefficient > 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            exclude = group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not exclude:
                    if group["weight_decay"] != 0:
                        g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s parameters into a decayed group and an excluded group.

    Normalization-layer parameters and every bias go into the group with ``weight_decay=0`` and
    ``lars_exclude=True`` (SimCLR's recipe, docs/design.md §6); the rest get ``weight_decay``. Other
    optimizers ignore the ``lars_exclude`` key.
    """
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    excluded: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, norm_types) or name == "bias":
                excluded.add(id(p))
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) in excluded]
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": rest, "weight_decay": 0.0, "lars_exclude": True},
    ]
