"""``simclr-fast train --loss supcon``: the supervised contrastive loss on the two views of a batch.

The loop's step hands the loss two embedding batches ``(z0, z1)``, each ``(b, D)`` for this rank's
``b`` images; SupCon wants them as ``(b, 2, D)`` with the images' labels, which come from the same
slice of the epoch's permutation that picked the images (:func:`batch_labels`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from simclr_fast.supcon import SupConLoss

LOSSES = ("ntxent", "supcon")


def batch_labels(
    labels: torch.Tensor,
    perm: torch.Tensor,
    step: int,
    global_batch: int,
    rank: int,
    world: int,
    device: torch.device,
) -> torch.Tensor:
    """The labels of rank ``rank``'s images at ``step`` (the slice ``train_batches`` yields).

    Examples:
        >>> import torch
        >>> batch_labels(torch.tensor([5, 6, 7, 8]), torch.tensor([3, 1, 0, 2]), 0, 4, 1, 2, "cpu")
        tensor([5, 7])
    """
    local = global_batch // world
    start = step * global_batch + rank * local
    return labels[perm[start : start + local]].to(device)


def two_view_loss(
    loss_fn: SupConLoss, labels: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(z0, z1) -> loss_fn(stack([z0, z1], 1), labels)``: SupCon in the step's NT-Xent signature."""
    return lambda z0, z1: loss_fn(torch.stack([z0, z1], dim=1), labels)
