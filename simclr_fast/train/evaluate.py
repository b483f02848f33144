"""Evaluation of frozen features: the weighted kNN monitor and the few-label linear probe.

Both take features from the backbone (before the projection head), computed on un-augmented images
in eval mode (BN running statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: label budgets of the final linear probe: labelled images per class, and "all"
PROBE_BUDGETS = ("1", "5", "10", "all")

#: the "all labels" probe fits on at most this many training images (a random subset beyond it),
#: so the probe on raw CIFAR pixels (50000 x 3072) stays in minutes on a CPU. Not measured.
PROBE_MAX_TRAIN = 10_000


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``encode(preprocess(batch))`` over raw image batches; fp32 features on the CPU.

    Args:
        encode: the frozen encoder (e.g. ``model.features``), already in eval mode.
        batches: raw uint8 image batches ``(b, C, H, W)``, on any device.
        preprocess: turns a raw batch on ``device`` into the encoder's input.
        device: where the encoder runs.
    """
    out = [encode(preprocess(x.to(device, non_blocking=True))).float().cpu() for x in batches]
    return torch.cat(out)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    t: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> float:
    """Weighted kNN accuracy (Wu et al. 2018, the monitor of docs/design.md §6) on L2-normalized features.

    Each test image votes with its ``k`` most cosine-similar training images, neighbour ``j``
    weighted by ``exp(sim_j / t)``; the class with the largest total weight wins.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    correct = 0
    for i in range(0, test.shape[0], chunk):
        sim = test[i : i + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / t).exp())
        correct += int((votes.argmax(1) == test_labels[i : i + chunk]).sum())
    return correct / test.shape[0]


def sample_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random examples of every class (fewer if a class is smaller)."""
    picks = [
        rng.choice(
            np.flatnonzero(labels == c),
            size=min(per_class, int((labels == c).sum())),
            replace=False,
        )
        for c in np.unique(labels)
    ]
    return np.concatenate(picks)


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    budgets: Sequence[str] = PROBE_BUDGETS,
    draws: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Logistic-regression accuracy on frozen features for each label budget.

    Features are standardized with statistics of the whole (unlabelled) training split. A numeric
    budget ``n`` fits on ``n`` random labelled images per class and averages the test accuracy over
    ``draws`` draws (draw ``d`` uses seed ``seed + d``: every feature set sees the same labelled
    images); ``"all"`` fits once on every training image (at most :data:`PROBE_MAX_TRAIN`).

    Returns:
        ``{budget: accuracy in [0, 1]}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_features)
    xtr, xte = scaler.transform(train_features), scaler.transform(test_features)
    results = {}
    for budget in budgets:
        if budget == "all":
            idx = np.arange(len(train_labels))
            if len(idx) > PROBE_MAX_TRAIN:
                idx = np.random.default_rng(seed).choice(idx, PROBE_MAX_TRAIN, replace=False)
            subsets = [idx]
        else:
            subsets = [
                sample_per_class(train_labels, int(budget), np.random.default_rng(seed + d))
                for d in range(draws)
            ]
        accs = []
        for idx in subsets:
            clf = LogisticRegression(max_iter=1000).fit(xtr[idx], train_labels[idx])
            accs.append(float((clf.predict(xte) == test_labels).mean()))
        results[budget] = float(np.mean(accs))
    return results
