"""One training step of the reference loop: two views in, one optimizer update out.

Two ways to take it, same result for encoders without batch-coupled layers:

- plain: one forward of both views (``net(cat(view0, view1))``) with autograd, the loss, backward;
  the encoder's activations of the whole batch are alive at once;
- cached (``micro_batch`` set, ``simclr-fast train --micro-batch M``):
  :func:`simclr_fast.cached_backward` embeds ``M`` images (both views) at a time, so memory no
  longer grows with the batch (docs/design.md §10). BatchNorm then normalizes each micro-batch on
  its own (ghost batch norm) and its running statistics are updated once per micro-batch.

In both, only the encoder runs under autocast; the loss sees its (bf16) embeddings outside it, and
computes in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from simclr_fast.cached import cached_backward

__all__ = ["train_step"]


def train_step(
    net: nn.Module,
    views: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    micro_batch: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Zero the gradients, compute them for ``loss_fn(net(view0), net(view1))``, step the optimizer.

    Args:
        net: encoder + projection head (``DistributedDataParallel``-wrapped under torchrun).
        views: the two augmented views, ``(B, C, H, W)`` each.
        loss_fn: the contrastive loss of the two embedding batches.
        optimizer: updated once.
        micro_batch: ``None`` for the plain step; else images per micro-batch of
            :func:`simclr_fast.cached_backward` (both views of each image go in the same one).
        autocast: a factory of the context the encoder runs in (``torch.autocast`` for bf16).
        memory_format: memory format of the encoder's input (``torch.channels_last`` on GPUs).

    Returns:
        The loss, detached.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from simclr_fast import NTXentLoss
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> views = (torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4))
        >>> loss = train_step(net, views, NTXentLoss(0.5), opt, micro_batch=4)
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), False)
    """
    optimizer.zero_grad(set_to_none=True)
    if micro_batch is None:
        x = torch.cat(views).contiguous(memory_format=memory_format)
        with autocast():
            z0, z1 = net(x).chunk(2)
        loss = loss_fn(z0, z1)
        loss.backward()
    else:
        views = tuple(v.contiguous(memory_format=memory_format) for v in views)
        device_type = views[0].device.type

        def loss_outside_autocast(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, enabled=False):
                return loss_fn(z0, z1)

        with autocast():
            loss = cached_backward(net, views, loss_outside_autocast, micro_batch)
    optimizer.step()
    return loss.detach()
