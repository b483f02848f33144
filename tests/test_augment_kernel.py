"""The fused CPU kernel of SimCLRAugment (csrc/augment.cpp, ``backend="cpu"``) against the
tensor-op path (``backend="torch"``): same random parameters, same views up to fp32 rounding, for
every op of every recipe; plus backend selection, unbatched input (``keepdim``), the border padding
of the resized crop, and the op's own checks."""

from __future__ import annotations

import pytest
import torch

import simclr_fast.augment as augment_mod
from simclr_fast.augment import SimCLRAugment, cpu_kernel_unavailable

NO_KERNEL = cpu_kernel_unavailable()
needs_kernel = pytest.mark.skipif(NO_KERNEL is not None, reason=str(NO_KERNEL))
OFF = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}


def _images(batch, channels, height, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, height, width or height)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def _both(recipe, x, **kw):
    """(views, params) of the tensor-op path and of the kernel, from the same seed."""
    ref, p_ref = SimCLRAugment(recipe, backend="torch", seed=9, **kw)(x, return_params=True)
    out, p_out = SimCLRAugment(recipe, backend="cpu", seed=9, **kw)(x, return_params=True)
    for a, b in zip(p_ref, p_out, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return ref, out


@needs_kernel
@pytest.mark.parametrize("recipe", ["simclr-imagenet", "simclr-cifar", "byol"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
    "in_shape,size",
    [((6, 3, 40, 40), 32), ((5, 3, 17, 29), (24, 20)), ((3, 3, 64, 48), 96), ((1, 3, 9, 9), 9)],
)
def test_kernel_matches_tensor_ops(recipe, interpolation, in_shape, size):
    x = _images(*in_shape, seed=sum(in_shape))
    ref, out = _both(recipe, x, size=size, interpolation=interpolation, blur_kernel=3)
    for a, b in zip(ref, out, strict=True):
        assert b.shape == a.shape and b.dtype == torch.float32
        torch.testing.assert_close(b, a, atol=2e-5, rtol=0)


@needs_kernel
@needs_kernel
@pytest.mark.parametrize("channels", [1, 3])
def test_kernel_matches_tensor_ops_digits(channels):
    """Rotation and shear (zeros padding, sampled pixel by pixel), noise and erasing."""
    x = _images(64, channels, 8, seed=channels)
    kw = {"erase_p": 0.5, "noise_p": 0.5}  # more of both than the recipe, to see them
    ref, out = _both("digits", x, **kw)
    for a, b in zip(ref, out, strict=True):
        assert b.shape == a.shape == (64, channels, 16, 16)
        torch.testing.assert_close(b, a, atol=2e-5, rtol=0)
    _, (p, _) = SimCLRAugment("digits", seed=9, **kw)(x, return_params=True)
    assert p["noise"].any() and p["erase"].any() and (p["angle"] != 0).all()


@needs_kernel
@pytest.mark.parametrize(
    "kw",
    [
        {"interpolation": "nearest"},
        {"interpolation": "bicubic", "rotation": 25.0},
        {"interpolation": "bilinear", "shear": 20.0, "flip_p": 1.0},
        {"interpolation": "nearest", "crop_scale": (0.02, 0.1)},
    ],
    ids=["nearest", "bicubic-rotation", "bilinear-shear-flip", "nearest-upscale"],
)
def test_kernel_matches_tensor_ops_other_samplings(kw):
    x = _images(12, 3, 20, 28, seed=7)
    ref, out = _both("simclr-cifar", x, size=(18, 14), **kw)
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=0)


@needs_kernel
def test_kernel_matches_tensor_ops_full_recipe_at_224():
    """The default recipe at full size (23-tap blur, every op drawn on some images)."""
    x = _images(8, 3, 256, 240, seed=3)
    ref, out = _both("simclr-imagenet", x)
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=0)


@needs_kernel
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_dtypes_layouts_normalization(in_dtype, out_dtype, channels_last):
    x = _images(4, 3, 20, seed=5)
    x = x if in_dtype == torch.uint8 else (x.to(torch.float32) / 255).to(in_dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    kw = {"size": 16, "dtype": out_dtype, "memory_format": fmt}
    kw.update(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    ref, out = _both("simclr-cifar", x, **kw)
    for a, b in zip(ref, out, strict=True):
        assert b.dtype == out_dtype and b.is_contiguous(memory_format=fmt)
        # The two paths round to the output dtype from fp32 values ~1e-6 apart: allow one step
        # of the output dtype (|x| <= 4 after normalization).
        step = 4 * torch.finfo(out_dtype).eps if out_dtype != torch.float32 else 1e-4
        torch.testing.assert_close(b.float(), a.float(), atol=step, rtol=0)


@needs_kernel
def test_kernel_nhwc_and_same_on_batch():
    x = _images(5, 3, 24, seed=2)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    ref, out = _both("simclr-imagenet", nhwc, size=16, data_format="NHWC", same_on_batch=True)
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=0)


@needs_kernel
def test_kernel_results_do_not_depend_on_threads():
    x = _images(7, 3, 40, seed=8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = SimCLRAugment("simclr-imagenet", size=32, seed=1, backend="cpu")(x)
        torch.set_num_threads(max(2, threads))
        many = SimCLRAugment("simclr-imagenet", size=32, seed=1, backend="cpu")(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_kernel)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_flat_image_stays_flat_under_any_crop(backend, interpolation):
    """Taps beyond the image edge repeat it (border padding): a flat image gives flat views for
    every crop, including small up-scaled crops at the image corners, whose edge rows zero
    padding would darken."""
    x = torch.full((64, 3, 20, 20), 200, dtype=torch.uint8)
    kw = {"crop_scale": (0.05, 0.2), "interpolation": interpolation, **OFF}
    v0, v1 = SimCLRAugment("simclr-cifar", size=32, seed=0, backend=backend, **kw)(x)
    torch.testing.assert_close(v0, torch.full_like(v0, 200 / 255), atol=1e-5, rtol=0)
    torch.testing.assert_close(v1, torch.full_like(v1, 200 / 255), atol=1e-5, rtol=0)


def test_auto_backend_takes_the_kernel_on_cpu(monkeypatch):
    calls = []
    real = augment_mod._fused_view

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(augment_mod, "_fused_view", counting)
    SimCLRAugment("simclr-cifar", seed=0)(_images(2, 3, 16))
    SimCLRAugment("digits", seed=0)(_images(2, 1, 8))
    assert len(calls) == (0 if NO_KERNEL else 4)
    calls.clear()
    SimCLRAugment("simclr-cifar", seed=0, backend="torch")(_images(2, 3, 16))
    assert calls == []


def test_backend_argument_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        SimCLRAugment("simclr-cifar", backend="cuda")


def test_backend_cpu_without_kernel_says_how_to_build(monkeypatch):
    monkeypatch.setattr(
        augment_mod, "cpu_kernel_unavailable", lambda: "not built; run `make install`"
    )
    with pytest.raises(RuntimeError, match="make install"):
        SimCLRAugment("simclr-cifar", backend="cpu")
    # auto quietly takes the tensor ops
    v0, _ = SimCLRAugment("simclr-cifar", seed=0)(_images(2, 3, 16))
    assert v0.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_kernel)])
@pytest.mark.parametrize("data_format,layout", [("NCHW", (3, 20, 24)), ("NHWC", (20, 24, 3))])
def test_unbatched_input_and_keepdim(backend, data_format, layout):
    img = _images(1, 3, 20, 24, seed=4)[0]
    img = img if data_format == "NCHW" else img.permute(1, 2, 0).contiguous()
    assert img.shape == layout
    kw = {"size": 16, "seed": 3, "backend": backend, "data_format": data_format}
    batched = SimCLRAugment("simclr-cifar", **kw)(img.unsqueeze(0))
    flat = SimCLRAugment("simclr-cifar", **kw)(img)
    kept = SimCLRAugment("simclr-cifar", keepdim=True, **kw)(img)
    for b, f, k in zip(batched, flat, kept, strict=True):
        assert b.shape == f.shape == (1, 3, 16, 16) and k.shape == (3, 16, 16)
        assert torch.equal(b, f) and torch.equal(b[0], k)
    with pytest.raises(TypeError, match="keepdim"):
        SimCLRAugment("simclr-cifar", keepdim="yes")


def test_blur_kernel_larger_than_image_rejected():
    with pytest.raises(ValueError, match="blur_kernel 17 is too large"):
        SimCLRAugment("simclr-imagenet", size=8, blur_kernel=17)
    SimCLRAugment("simclr-imagenet", size=8, blur_kernel=17, blur_p=0.0)  # blur off: fine


def _op_args(batch=2, channels=3, size=12, out_dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=g)
    theta = torch.tensor([[[0.6, 0.1, -0.2], [-0.1, 0.5, 0.3]]] * batch)
    flags = torch.ones(batch, 6, dtype=torch.bool)
    factors = torch.tensor([[1.2, 0.7, 1.4, 0.1]] * batch)
    order = torch.tensor([[3, 1, 0, 2]] * batch)
    sigma = torch.full((batch,), 0.8)
    out = torch.empty(batch, channels, 10, 10, dtype=out_dtype)
    noise = torch.randn(out.shape, generator=g)
    box = torch.tensor([[0.2, 0.3, 0.4, 0.25]] * batch)
    # images, theta, flags, factors, order, sigma, noise, erase_box, mean, std, out,
    # interpolation, zeros_padding, blur_kernel, hue, solarize_threshold, noise_std
    tensors = [images, theta, flags, factors, order, sigma, noise, box, None, None, out]
    return [*tensors, 1, True, 3, True, 0.5, 0.05]


@needs_kernel
def test_op_passes_opcheck():
    op = torch.ops.simclr_fast.augment_view_cpu.default
    torch.library.opcheck(op, _op_args())
    args = _op_args(out_dtype=torch.bfloat16)
    args[8], args[9] = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.2, 0.2, 0.2])
    args[6], args[12] = None, False
    torch.library.opcheck(op, args)


@needs_kernel
@pytest.mark.parametrize(
    "index,value,match",
    [
        (0, torch.zeros(2, 3, 12, 12, dtype=torch.int32), "uint8 or float32"),
        (1, torch.zeros(2, 6), r"theta must have shape \(2, 2, 3\)"),
        (2, torch.ones(2, 6, dtype=torch.uint8), "flags must be a contiguous CPU tensor"),
        (4, torch.tensor([[0, 1, 2, 4]] * 2), r"order entries must be in \[0, 3\]"),
        (6, torch.zeros(2, 3, 5, 5), "noise must be .* shaped like out"),
        (7, torch.zeros(2, 3), r"erase_box must have shape \(2, 4\)"),
        (10, torch.empty(2, 3, 10, 10, dtype=torch.float64), "float32, bfloat16 or float16"),
        (10, torch.empty(2, 1, 10, 10), r"out must be a \(2, 3, OH, OW\)"),
        (11, 3, "interpolation must be 0"),
        (13, 4, "blur_kernel must be odd"),
    ],
)
def test_op_checks_its_arguments(index, value, match):
    args = _op_args()
    args[index] = value
    with pytest.raises(RuntimeError, match=match):
        torch.ops.simclr_fast.augment_view_cpu(*args)
