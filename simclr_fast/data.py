"""Datasets that yield raw uint8 images, so the training loop moves bytes and augments on the device.

Three sources, all giving ``(image, label)`` with ``image`` a uint8 ``(C, H, W)`` tensor:

* :class:`DigitsDataset`: scikit-learn's ``load_digits`` (1797 8×8 grayscale images shipped in the
  wheel, values 0–16 scaled to 0–255) with a fixed stratified split of 1197 train / 600 test
  (:func:`digits_split`, docs/design.md §6).
* :class:`CIFAR10Dataset`: the CIFAR-10 "python version" pickles from a local directory.
* :class:`ImageFolderDataset`: ``root/<class>/<image>`` decoded with PIL.

The first two are in memory (:class:`TensorImageDataset`): :meth:`TensorImageDataset.batches`
yields whole uint8 batches by indexing, which is much faster than a per-item ``DataLoader`` for
tiny images. For any dataset, :func:`collate_uint8` stacks items into a batch for a
``torch.utils.data.DataLoader`` and :func:`to_device` moves a batch to the device.

Example (the training loop's path)::

    train = DigitsDataset("train")
    aug = SimCLRAugment("digits")
    for images, labels in train.batches(256, shuffle=True, drop_last=True, device="cuda"):
        view0, view1 = aug(images)
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "CIFAR10_CLASSES",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_SIZE",
    "CIFAR10Dataset",
    "DigitsDataset",
    "ImageFolderDataset",
    "TensorImageDataset",
    "collate_uint8",
    "digits_split",
    "to_device",
]

#: seed of the fixed stratified digits split (scikit-learn ``train_test_split(random_state=...)``)
DIGITS_SPLIT_SEED = 0
#: size of the digits test split (the train split has the other 1197 images)
DIGITS_TEST_SIZE = 600

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch",)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class TensorImageDataset(Dataset):
    """An in-memory dataset of uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``.

    Args:
        images: uint8 tensor ``(N, C, H, W)``.
        labels: integer tensor ``(N,)``.
        classes: optional class names, index = label.

    Raises:
        TypeError: images not a uint8 tensor, labels not integer.
        ValueError: wrong ranks or mismatched lengths.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise TypeError(f"images must be a uint8 torch.Tensor; got {_describe(images)}")
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integers; got {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must be (N,) with N = {images.shape[0]} images; got {tuple(labels.shape)}"
            )
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.classes = tuple(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` batches by indexing the whole tensor (no per-item collate).

        Args:
            batch_size: images per batch (> 0).
            shuffle: draw a new permutation for this pass (from ``generator`` if given, a CPU
                generator).
            drop_last: skip the last batch if it is smaller than ``batch_size``.
            generator: CPU :class:`torch.Generator` for the permutation (reproducible order).
            device: move each batch there (uint8, non-blocking from pinned memory on CUDA).

        Yields:
            uint8 ``(b, C, H, W)`` images and int64 ``(b,)`` labels.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                images = self.images[start : start + batch_size]
                labels = self.labels[start : start + batch_size]
            else:
                index = order[start : start + batch_size]
                images = self.images.index_select(0, index)
                labels = self.labels.index_select(0, index)
            yield to_device((images, labels), device) if device is not None else (images, labels)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__


# ------------------------------------------------------------------------------------- digits


def digits_split(
    seed: int = DIGITS_SPLIT_SEED, test_size: int = DIGITS_TEST_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split of scikit-learn's digits, as uint8 images.

    ``load_digits`` pixel values 0–16 are scaled to 0–255 (``round(v * 255 / 16)``).
    The split is ``sklearn.model_selection.train_test_split(test_size=600, stratify=labels,
    random_state=seed)``: 1197 train and 600 test images with the class proportions of the whole.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``(N, 1, 8, 8)`` images and int64 labels.

    Raises:
        ImportError: scikit-learn is not installed (``pip install scikit-learn``).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install scikit-learn "
            "(or pip install 'simclr-fast[examples]')"
        ) from exc
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    return x_train, y_train, x_test, y_test


class DigitsDataset(TensorImageDataset):
    """scikit-learn's digits, one split of :func:`digits_split`: uint8 ``(1, 8, 8)`` images.

    Args:
        split: ``"train"`` (1197 images), ``"test"`` (600) or ``"all"`` (1797, train then test).
        seed: split seed (default :data:`DIGITS_SPLIT_SEED`; keep it to compare with others).

    Examples:
        >>> train = DigitsDataset("train")
        >>> len(train), train.images.shape[1:], train.images.dtype
        (1197, torch.Size([1, 8, 8]), torch.uint8)
    """

    def __init__(self, split: str = "train", seed: int = DIGITS_SPLIT_SEED) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all'; got {split!r}")
        x_train, y_train, x_test, y_test = digits_split(seed)
        if split == "train":
            x, y = x_train, y_train
        elif split == "test":
            x, y = x_test, y_test
        else:
            x, y = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
        super().__init__(
            torch.from_numpy(x), torch.from_numpy(y), classes=[str(i) for i in range(10)]
        )
        self.split = split


# -------------------------------------------------------------------------------------- CIFAR


def _find_cifar_dir(root: str | os.PathLike) -> str:
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"CIFAR-10 directory {root!r} does not exist; pass the folder holding data_batch_1..5 "
            "and test_batch (the extracted cifar-10-python.tar.gz)"
        )
    nested = os.path.join(root, "cifar-10-batches-py")
    if not os.path.exists(os.path.join(root, "test_batch")) and os.path.isdir(nested):
        return nested
    return root


def _read_cifar_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CIFAR-10 file {path!r} is missing; the directory must hold data_batch_1..5 and "
            "test_batch from the 'CIFAR-10 python version' archive"
        )
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
    except Exception as exc:
        raise ValueError(f"CIFAR-10 file {path!r} is not a readable pickle: {exc}") from exc
    if not isinstance(entry, dict):
        raise ValueError(f"CIFAR-10 file {path!r} holds a {type(entry).__name__}, not a dict")
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(b"labels", entry.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"CIFAR-10 file {path!r} has no 'data'/'labels' entries")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"CIFAR-10 file {path!r}: 'data' must be uint8 (N, 3072); got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"CIFAR-10 file {path!r}: labels must be N values in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10Dataset(TensorImageDataset):
    """CIFAR-10 from the python pickles in a local directory: uint8 ``(3, 32, 32)`` images.

    Args:
        root: the directory holding ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` (or
            its parent, holding ``cifar-10-batches-py``). Nothing is downloaded.
        train: the 50,000 training images (True) or the 10,000 test images (False).

    Raises:
        FileNotFoundError: the directory or one of the files is missing.
        ValueError: a file is not a CIFAR-10 pickle (wrong keys, dtype or shape).
    """

    def __init__(self, root: str | os.PathLike, train: bool = True) -> None:
        folder = _find_cifar_dir(root)
        names = _CIFAR_TRAIN_FILES if train else _CIFAR_TEST_FILES
        parts = [_read_cifar_file(os.path.join(folder, name)) for name in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        super().__init__(torch.from_numpy(images), torch.from_numpy(labels), CIFAR10_CLASSES)
        self.root = folder
        self.train = train


# -------------------------------------------------------------------------------- image folder


class ImageFolderDataset(Dataset):
    """Images in ``root/<class name>/<file>``, decoded with PIL to uint8 ``(3, H, W)`` RGB.

    Classes are the sub-directory names in sorted order (label = index). Images are decoded when
    indexed; give ``size`` to resize every image to ``(size, size)`` (bilinear, PIL) so that
    batches stack, or keep the original sizes and batch with a sampler of equal sizes.

    Args:
        root: the folder holding one sub-folder per class.
        size: optional square size (int) or ``(height, width)`` to resize to.
        extensions: file suffixes to take (case-insensitive).

    Raises:
        FileNotFoundError: ``root`` is not a directory, or it holds no class folder with images.
        ValueError: ``size`` is not positive; (when indexed) a file PIL cannot decode.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | tuple[int, int] | None = None,
        extensions: Sequence[str] = _IMAGE_EXTENSIONS,
    ) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"size must be a positive int or (height, width); got {size!r}")
        self.size = size
        exts = tuple(e.lower() for e in extensions)
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        samples = []
        for label, name in enumerate(classes):
            folder = os.path.join(root, name)
            for dirpath, _, files in sorted(os.walk(folder)):
                for file in sorted(files):
                    if file.lower().endswith(exts):
                        samples.append((os.path.join(dirpath, file), label))
        if not samples:
            raise FileNotFoundError(
                f"no images with suffixes {exts} under class sub-folders of {root!r}; expected "
                "root/<class>/<image>"
            )
        self.root = root
        self.classes = tuple(classes)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if self.size is not None:
                    img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8).copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image {path!r}: {exc}") from exc
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), label


# ---------------------------------------------------------------------------------- batching


def collate_uint8(
    items: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``collate_fn`` for a DataLoader: stack uint8 ``(C, H, W)`` images and int labels.

    Returns:
        uint8 ``(B, C, H, W)`` and int64 ``(B,)``.

    Raises:
        ValueError: empty batch, or images of different shapes (resize them in the dataset).
        TypeError: an image that is not a uint8 tensor.
    """
    if len(items) == 0:
        raise ValueError("cannot collate an empty batch")
    images, labels = zip(*items, strict=True)
    for img in images:
        if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8:
            raise TypeError(f"collate_uint8 expects uint8 tensors; got {_describe(img)}")
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(
            f"images in a batch differ in shape {sorted(shapes)}; give the dataset a size "
            "(e.g. ImageFolderDataset(root, size=256))"
        )
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)


def to_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move an ``(images, labels)`` batch to ``device`` (pinned + non-blocking for CUDA)."""
    if device is None:
        return batch
    device = torch.device(device)
    images, labels = batch
    if device.type == "cuda":
        images = images.pin_memory().to(device, non_blocking=True)
        labels = labels.pin_memory().to(device, non_blocking=True)
        return images, labels
    return images.to(device), labels.to(device)
