"""Tests of simclr_fast.data: the digits split, CIFAR-10 pickles, image folders, batching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from simclr_fast.data import (
    CIFAR10Dataset,
    DigitsDataset,
    ImageFolderDataset,
    TensorImageDataset,
    collate_uint8,
    digits_split,
    to_device,
)

# ------------------------------------------------------------------------------------ digits


def test_digits_split_sizes_stratified_and_fixed():
    x_train, y_train, x_test, y_test = digits_split()
    assert x_train.shape == (1197, 1, 8, 8) and x_test.shape == (600, 1, 8, 8)
    assert x_train.dtype == np.uint8 and x_train.max() == 255 and x_train.min() == 0
    assert y_train.shape == (1197,) and y_test.shape == (600,)
    train_frac = np.bincount(y_train, minlength=10) / 1197
    test_frac = np.bincount(y_test, minlength=10) / 600
    assert np.abs(train_frac - test_frac).max() < 0.01  # stratified
    again = digits_split()
    assert np.array_equal(again[0], x_train) and np.array_equal(again[3], y_test)
    other = digits_split(seed=1)
    assert not np.array_equal(other[1], y_train)


def test_digits_scaling_matches_load_digits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = DigitsDataset("all")
    assert len(ds) == 1797
    # same multiset of images: the scaled raw data, sorted, equals the dataset, sorted
    scaled = np.rint(raw.images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    a = np.sort(scaled.view(f"V{scaled.shape[1]}").ravel())
    b = np.sort(ds.images.numpy().reshape(1797, -1).view(f"V{scaled.shape[1]}").ravel())
    assert np.array_equal(a, b)


def test_digits_dataset_items_and_errors():
    train, test = DigitsDataset("train"), DigitsDataset("test")
    assert len(train) == 1197 and len(test) == 600
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8 and 0 <= label <= 9
    with pytest.raises(ValueError, match="split"):
        DigitsDataset("val")


def test_batches_fast_path():
    ds = DigitsDataset("train")
    batches = list(ds.batches(256))
    assert [b[0].shape[0] for b in batches] == [256, 256, 256, 256, 173]
    assert torch.equal(torch.cat([b[0] for b in batches]), ds.images)
    dropped = list(ds.batches(256, drop_last=True))
    assert len(dropped) == 4
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    s1 = list(ds.batches(100, shuffle=True, generator=g1))
    s2 = list(ds.batches(100, shuffle=True, generator=g2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(s1, s2, strict=True))
    assert not torch.equal(s1[0][1], ds.labels[:100])
    assert torch.equal(torch.cat([b[1] for b in s1]).sort().values, ds.labels.sort().values)
    images, labels = next(iter(ds.batches(8, device="cpu")))
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="batch_size"):
        next(iter(ds.batches(0)))


def test_tensor_dataset_errors():
    with pytest.raises(TypeError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        TensorImageDataset(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long)
        )
    with pytest.raises(TypeError, match="integers"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2))


# ------------------------------------------------------------------------------------- CIFAR


def _write_cifar(folder, n_per_file=5, seed=0, files=None):
    rng = np.random.default_rng(seed)
    names = files or [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_file).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, fh)
        written[name] = (data, labels)
    return written


def test_cifar_reads_real_format(tmp_path):
    written = _write_cifar(tmp_path)
    train = CIFAR10Dataset(tmp_path, train=True)
    test = CIFAR10Dataset(tmp_path, train=False)
    assert len(train) == 25 and len(test) == 5
    assert train.images.shape == (25, 3, 32, 32) and train.images.dtype == torch.uint8
    data, labels = written["data_batch_2"]
    # row-major 3072 = 3 planes of 32x32 (R, G, B)
    assert torch.equal(train.images[5], torch.from_numpy(data[0].reshape(3, 32, 32)))
    assert train[5][1] == labels[0]
    assert torch.equal(test.labels, torch.tensor(written["test_batch"][1]))
    assert train.classes[0] == "airplane" and len(train.classes) == 10


def test_cifar_nested_folder(tmp_path):
    nested = tmp_path / "cifar-10-batches-py"
    nested.mkdir()
    _write_cifar(nested)
    assert len(CIFAR10Dataset(tmp_path, train=False)) == 5


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CIFAR10Dataset(tmp_path / "nope")
    _write_cifar(tmp_path, files=["data_batch_1", "test_batch"])
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        CIFAR10Dataset(tmp_path, train=True)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        CIFAR10Dataset(tmp_path, train=False)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match="3072"):
        CIFAR10Dataset(tmp_path, train=False)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, fh)
    with pytest.raises(ValueError, match="labels"):
        CIFAR10Dataset(tmp_path, train=False)


# ------------------------------------------------------------------------------ image folder


def _write_folder(root, sizes=((10, 12), (10, 12), (7, 9))):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for i, (cls, (h, w)) in enumerate(zip(("cat", "dog", "dog"), sizes, strict=True)):
        (root / cls).mkdir(exist_ok=True)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = root / cls / f"img{i}.png"
        Image.fromarray(arr).save(path)
        arrays[str(path)] = arr
    return arrays


def test_image_folder_decodes_pngs(tmp_path):
    arrays = _write_folder(tmp_path)
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ("cat", "dog") and len(ds) == 3
    image, label = ds[0]
    assert label == 0 and image.dtype == torch.uint8 and image.shape == (3, 10, 12)
    path = ds.samples[0][0]
    assert torch.equal(image, torch.from_numpy(arrays[path]).permute(2, 0, 1))
    assert [s[1] for s in ds.samples] == [0, 1, 1]
    resized = ImageFolderDataset(tmp_path, size=8)
    loader = DataLoader(resized, batch_size=3, collate_fn=collate_uint8)
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="differ in shape"):
        next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_uint8)))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "broken.png").write_bytes(b"garbage")
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="cannot decode"):
        ds[0]
    with pytest.raises(ValueError, match="size"):
        ImageFolderDataset(tmp_path, size=0)


def test_collate_and_to_device():
    items = [
        (torch.zeros(3, 4, 4, dtype=torch.uint8), 1),
        (torch.ones(3, 4, 4, dtype=torch.uint8), 2),
    ]
    images, labels = collate_uint8(items)
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 2]
    assert to_device((images, labels), "cpu")[0].device.type == "cpu"
    with pytest.raises(ValueError, match="empty"):
        collate_uint8([])
    with pytest.raises(TypeError, match="uint8"):
        collate_uint8([(torch.zeros(3, 4, 4), 0)])


def test_digits_batches_feed_the_augmentation():
    from simclr_fast.augment import SimCLRAugment

    images, _ = next(iter(DigitsDataset("train").batches(32)))
    v0, v1 = SimCLRAugment("digits", seed=0)(images)
    assert v0.shape == v1.shape == (32, 1, 16, 16)
