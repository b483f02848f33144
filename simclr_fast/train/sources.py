"""Where the loop's batches come from: the datasets of :mod:`simclr_fast.data`, sharded over
processes, in a batch order fixed by ``(seed, epoch)``.

In-memory datasets (digits, CIFAR-10) are moved to the device once and batches are gathered there
by index; image folders are decoded by DataLoader workers (uint8, collated by
:func:`simclr_fast.data.collate_uint8`) and moved to the device as raw bytes. Either way, global
step ``s`` of an epoch uses the images ``perm[s*GB : (s+1)*GB]`` of the epoch's permutation and
rank ``r`` takes its ``GB / W`` slice: W processes see the same global batches as one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from simclr_fast.data import (
    CIFAR10Dataset,
    DigitsDataset,
    ImageFolderDataset,
    TensorImageDataset,
    collate_uint8,
)
from simclr_fast.train.config import TrainConfig, TrainingError

#: image folders without a ``val``/``test`` sub-folder hold out this fraction (stratified, fixed
#: seed 0) for the kNN monitor and the linear probe.
HELD_OUT_FRACTION = 0.1

#: raw-pixel probes use images area-downsampled to at most this size (224 px RGB would give
#: 150k-dimensional features). Not measured.
RAW_PIXELS_MAX_SIZE = 32


@dataclass
class Split:
    """One split: an in-memory uint8 tensor ``images`` (N, C, H, W), or a ``dataset`` to decode."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    dataset: Dataset | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    train: Split
    test: Split
    num_classes: int
    in_channels: int


def _labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, Subset):
        return _labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.tensor([label for _, label in dataset.samples], dtype=torch.int64)


def _folder_splits(root: str, load_size: int) -> tuple[Dataset, Dataset]:
    for train_name, test_name in (("train", "val"), ("train", "test")):
        if os.path.isdir(os.path.join(root, train_name)) and os.path.isdir(
            os.path.join(root, test_name)
        ):
            return (
                ImageFolderDataset(os.path.join(root, train_name), size=load_size),
                ImageFolderDataset(os.path.join(root, test_name), size=load_size),
            )
    full = ImageFolderDataset(root, size=load_size)
    labels = _labels_of(full).numpy()
    rng = np.random.default_rng(0)
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test_idx.extend(
            rng.choice(idx, size=max(1, round(len(idx) * HELD_OUT_FRACTION)), replace=False)
        )
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_idx] = True
    return Subset(full, np.flatnonzero(~test_mask).tolist()), Subset(
        full, np.flatnonzero(test_mask).tolist()
    )


def load_data(cfg: TrainConfig) -> Data:
    """The train and held-out splits of ``cfg.dataset``.

    Raises:
        TrainingError: a missing or malformed dataset directory (the message says what was expected).
    """
    try:
        if cfg.dataset == "digits":
            train, test = DigitsDataset("train"), DigitsDataset("test")
        elif cfg.dataset == "cifar10":
            train, test = (
                CIFAR10Dataset(cfg.data_dir, train=True),
                CIFAR10Dataset(cfg.data_dir, train=False),
            )
        else:
            # decode a little larger than the training size, so random crops keep detail (256 for 224)
            train, test = _folder_splits(
                cfg.data_dir, max(cfg.image_size, round(cfg.image_size * 256 / 224))
            )
    except (FileNotFoundError, NotADirectoryError, ValueError, ImportError) as exc:
        raise TrainingError(f"--dataset {cfg.dataset} --data-dir {cfg.data_dir}: {exc}") from None
    splits = []
    for ds in (train, test):
        if isinstance(ds, TensorImageDataset):
            splits.append(Split(labels=ds.labels, images=ds.images))
        else:
            splits.append(Split(labels=_labels_of(ds), dataset=ds))
    if len(splits[1]) == 0:
        raise TrainingError(f"--data-dir {cfg.data_dir}: the held-out split is empty")
    first = splits[0].images if splits[0].images is not None else splits[0].dataset[0][0][None]
    num_classes = int(torch.cat([splits[0].labels, splits[1].labels]).max()) + 1
    return Data(
        train=splits[0], test=splits[1], num_classes=num_classes, in_channels=first.shape[1]
    )


def epoch_permutation(n: int, seed: int) -> torch.Tensor:
    """The epoch's image order, from a CPU generator seeded with ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def train_batches(
    split: Split,
    device_images: torch.Tensor | None,
    perm: torch.Tensor,
    first_step: int,
    steps: int,
    global_batch: int,
    rank: int,
    world: int,
    device: torch.device,
    num_workers: int,
) -> Iterator[torch.Tensor]:
    """Rank ``rank``'s uint8 batches for steps ``first_step .. steps-1`` of an epoch, on ``device``."""
    local = global_batch // world
    index = [
        perm[s * global_batch + rank * local : s * global_batch + (rank + 1) * local]
        for s in range(first_step, steps)
    ]
    if device_images is not None:
        for idx in index:
            yield device_images[idx.to(device)]
        return
    loader = DataLoader(
        split.dataset,
        batch_sampler=[i.tolist() for i in index],
        num_workers=num_workers,
        collate_fn=collate_uint8,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        multiprocessing_context=_worker_context(num_workers),
    )
    for images, _ in loader:
        yield images.to(device, non_blocking=True)


def _worker_context(num_workers: int):
    """DataLoader workers start by forkserver, never by forking this process: the loop already
    runs torch's threads, and a fork taken while another thread holds a lock can deadlock."""
    if num_workers == 0:
        return None
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["simclr_fast.data"])  # workers fork with torch already imported
    return ctx


def eval_batches(split: Split, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    """All images of ``split`` in order, as uint8 CPU batches."""
    if split.images is not None:
        for i in range(0, len(split), batch_size):
            yield split.images[i : i + batch_size]
        return
    loader = DataLoader(
        split.dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_uint8,
        multiprocessing_context=_worker_context(num_workers),
    )
    for images, _ in loader:
        yield images


def make_preprocess(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation input: uint8 -> float in [0, 1] at ``image_size`` (no augmentation), the
    value range :class:`simclr_fast.augment.SimCLRAugment` gives the training views."""

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255
        if x.shape[-2:] != (image_size, image_size):
            x = F.interpolate(
                x,
                size=(image_size, image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return x

    return preprocess


def raw_pixels(split: Split, num_workers: int) -> np.ndarray:
    """Flattened pixels in [0, 1] (area-downsampled to at most ``RAW_PIXELS_MAX_SIZE``)."""
    out = []
    for x in eval_batches(split, 1024, num_workers):
        x = x.float() / 255
        if max(x.shape[-2:]) > RAW_PIXELS_MAX_SIZE:
            x = F.adaptive_avg_pool2d(x, RAW_PIXELS_MAX_SIZE)
        out.append(x.flatten(1))
    return torch.cat(out).numpy()
