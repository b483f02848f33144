"""Tests of simclr_fast.augment.SimCLRAugment: shapes, dtypes, layouts, determinism, recipe
statistics, op semantics against Kornia's functional ops, and input errors."""

from __future__ import annotations

import itertools
import math

import kornia
import pytest
import torch

from simclr_fast.augment import (
    RECIPES,
    SimCLRAugment,
    ViewParams,
    _hue_shift,
    cpu_kernel_unavailable,
)

OFF = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}

# The op semantics are checked on both paths: the tensor ops and the fused C++ kernel
# (csrc/augment.cpp). The kernel is built by `make test`; only a pure-Python install skips it.
NO_KERNEL = cpu_kernel_unavailable()
BACKENDS = [
    "torch",
    pytest.param("cpu", marks=pytest.mark.skipif(NO_KERNEL is not None, reason=str(NO_KERNEL))),
]


def _images(batch=4, channels=3, size=32, seed=0, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, channels, size, size), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 255


# ----------------------------------------------------------------------------- shapes & types


@pytest.mark.parametrize(
    "recipe,channels,in_size,expected",
    [
        ("simclr-cifar", 3, 32, 32),
        ("simclr-imagenet", 3, 48, 224),
        ("byol", 3, 40, 224),
        ("digits", 1, 8, 16),
        ("digits", 3, 8, 16),
    ],
)
def test_default_sizes_and_range(recipe, channels, in_size, expected):
    aug = SimCLRAugment(recipe, seed=0)
    v0, v1 = aug(_images(3, channels, in_size))
    for v in (v0, v1):
        assert v.shape == (3, channels, expected, expected)
        assert v.dtype == torch.float32
        assert v.min() >= 0.0 and v.max() <= 1.0
    assert not torch.equal(v0, v1)


def test_size_override_rectangular():
    v0, v1 = SimCLRAugment("simclr-cifar", size=(12, 20), seed=0)(_images(2, 3, 32))
    assert v0.shape == v1.shape == (2, 3, 12, 20)


@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(in_dtype, out_dtype):
    aug = SimCLRAugment("simclr-cifar", size=16, dtype=out_dtype, seed=1)
    v0, v1 = aug(_images(3, 3, 16, dtype=in_dtype))
    assert v0.dtype == v1.dtype == out_dtype
    assert torch.isfinite(v0.float()).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_and_float_inputs_agree(backend):
    x8 = _images(4, 3, 24)
    a = SimCLRAugment("simclr-cifar", backend=backend, seed=3)(x8)
    b = SimCLRAugment("simclr-cifar", backend=backend, seed=3)(x8.float() / 255)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nhwc_matches_nchw_and_auto_detects(backend):
    x = _images(4, 3, 20)
    ref = SimCLRAugment("simclr-cifar", backend=backend, seed=5)(x)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    for fmt, inp in (("NHWC", nhwc), ("auto", nhwc), ("auto", x)):
        out = SimCLRAugment("simclr-cifar", backend=backend, seed=5, data_format=fmt)(inp)
        torch.testing.assert_close(out[0], ref[0])
        torch.testing.assert_close(out[1], ref[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_output(backend):
    v0, v1 = SimCLRAugment(
        "simclr-cifar", backend=backend, seed=0, memory_format=torch.channels_last
    )(_images())
    assert v0.is_contiguous(memory_format=torch.channels_last)
    assert v1.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalization(backend):
    x = _images(4, 3, 16)
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    plain = SimCLRAugment("simclr-cifar", backend=backend, seed=2)(x)
    normed = SimCLRAugment("simclr-cifar", backend=backend, seed=2, mean=mean, std=std)(x)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    for p, n in zip(plain, normed, strict=True):
        torch.testing.assert_close(n, (p - m) / s)


def test_kernel_size_is_ten_percent():
    aug = SimCLRAugment("simclr-imagenet")
    from simclr_fast.augment import _blur_kernel_size

    assert _blur_kernel_size(aug.view_params[0], 224) == 23
    assert _blur_kernel_size(aug.view_params[0], 96) == 9


# ------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_and_generator_reproducible(backend):
    x = _images(8, 3, 32)
    a = SimCLRAugment("simclr-imagenet", backend=backend, size=32, seed=7)(x)
    b = SimCLRAugment("simclr-imagenet", backend=backend, size=32, seed=7)(x)
    c = SimCLRAugment("simclr-imagenet", backend=backend, size=32, seed=8)(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    aug = SimCLRAugment("simclr-imagenet", backend=backend, size=32)
    g1 = aug(x, generator=torch.Generator().manual_seed(11))
    g2 = aug(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])


def test_seeded_module_advances_between_calls():
    x = _images(8, 3, 32)
    aug = SimCLRAugment("simclr-cifar", seed=0)
    first, second = aug(x), aug(x)
    assert not torch.equal(first[0], second[0])
    again = SimCLRAugment("simclr-cifar", seed=0)
    assert torch.equal(again(x)[0], first[0]) and torch.equal(again(x)[0], second[0])


def test_generator_argument_does_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    SimCLRAugment("digits", seed=1)(_images(4, 1, 8))
    assert torch.equal(torch.rand(1), before)


# ----------------------------------------------------------------------- recipe statistics


@pytest.fixture(scope="module")
def big_params():
    aug = SimCLRAugment("simclr-imagenet", size=8, seed=123)
    x = _images(20000, 3, 16, seed=1)
    (_, _), (p0, p1) = aug(x, return_params=True)
    return p0, p1


def test_flag_frequencies(big_params):
    p0, _ = big_params
    tol = 0.015  # ~5 standard deviations at n = 20000
    assert abs(p0["jitter"].float().mean().item() - 0.8) < tol
    assert abs(p0["grayscale"].float().mean().item() - 0.2) < tol
    assert abs(p0["blur"].float().mean().item() - 0.5) < tol
    assert abs(p0["flip"].float().mean().item() - 0.5) < tol
    assert not p0["solarize"].any()
    # grayscale independent of jitter: P(both) = 0.8 * 0.2
    both = (p0["jitter"] & p0["grayscale"]).float().mean().item()
    assert abs(both - 0.16) < tol


def test_crop_area_and_ratio_distribution(big_params):
    p0, _ = big_params
    x0, y0, w, h = p0["crop"].unbind(1)
    area = w * h / (16 * 16)
    assert area.min() >= 0.08 - 1e-5 and area.max() <= 1 + 1e-5
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + w <= 16 + 1e-4).all() and (y0 + h <= 16 + 1e-4).all()
    ratio = w / h
    fits = area < 0.99  # the fallback (whole image) is rare
    assert fits.float().mean() > 0.98
    assert ratio[fits].min() >= 0.75 - 1e-4 and ratio[fits].max() <= 4 / 3 + 1e-4
    # area uniform on [0.08, 1] minus the boxes that do not fit: mean a little under 0.54, spread
    assert 0.45 < area.mean().item() < 0.56
    hist = torch.histc(area, bins=4, min=0.08, max=1.0) / area.numel()
    # flat below ~0.8 of the area; the top quarter loses the boxes that do not fit (ratio != 1)
    assert (hist[:3] - 0.29).abs().max() < 0.02 and 0.08 < hist[3] < 0.2


def test_sigma_range(big_params):
    p0, _ = big_params
    assert p0["sigma"].min() >= 0.1 and p0["sigma"].max() <= 2.0
    assert 0.95 < p0["sigma"].mean().item() < 1.15


def test_jitter_orders_per_image(big_params):
    p0, p1 = big_params
    order = p0["order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand_as(order))
    counts = {}
    for row in order.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) == set(itertools.permutations(range(4)))
    expected = order.shape[0] / 24
    assert all(abs(c - expected) < 6 * math.sqrt(expected) for c in counts.values())
    assert not torch.equal(p0["order"], p1["order"])


def test_factor_ranges(big_params):
    p0, _ = big_params
    f = p0["factors"]
    for k in range(3):
        assert f[:, k].min() >= 0.2 - 1e-6 and f[:, k].max() <= 1.8 + 1e-6
    assert f[:, 3].abs().max() <= 0.2 + 1e-6
    cifar = RECIPES["simclr-cifar"][1][0]
    assert (cifar.brightness, cifar.contrast, cifar.saturation, cifar.hue) == pytest.approx(
        (0.4, 0.4, 0.4, 0.1)
    )
    assert cifar.blur_p == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_byol_asymmetry(backend):
    aug = SimCLRAugment("byol", backend=backend, size=8, seed=9)
    (_, _), (p0, p1) = aug(_images(20000, 3, 16, seed=2), return_params=True)
    assert p0["blur"].all() and not p0["solarize"].any()
    assert abs(p1["blur"].float().mean().item() - 0.1) < 0.015
    assert abs(p1["solarize"].float().mean().item() - 0.2) < 0.015
    f = p0["factors"]
    assert (
        f[:, 0].max() <= 1.4 + 1e-6 and f[:, 2].max() <= 1.2 + 1e-6 and f[:, 3].abs().max() <= 0.1
    )
    assert aug.view_params[0].blur_p == 1.0 and aug.view_params[1].solarize_threshold == 0.5


def test_digits_recipe_has_no_flip_or_colour():
    aug = SimCLRAugment("digits", seed=0)
    (v0, _), (p0, _) = aug(_images(500, 1, 8), return_params=True)
    assert not p0["flip"].any() and not p0["grayscale"].any() and not p0["blur"].any()
    assert p0["angle"].abs().max() <= 10 and p0["angle"].abs().max() > 5
    area = p0["crop"][:, 2] * p0["crop"][:, 3] / 64
    assert area.min() >= 0.6 - 1e-5
    assert v0.shape == (500, 1, 16, 16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_erase_noise_and_rotation_do_what_they_say(backend):
    x = _images(32, 1, 16, seed=12)
    kw = {"size": 16, "seed": 5, "backend": backend, "crop_scale": (1.0, 1.0)}
    kw.update(crop_ratio=(1.0, 1.0), rotation=0.0, shear=0.0, jitter_p=0.0)
    plain = SimCLRAugment("digits", erase_p=0.0, noise_p=0.0, **kw)(x)[0]
    torch.testing.assert_close(plain, x.float() / 255, atol=1e-5, rtol=0)  # identity crop
    # erasing: exactly 0 on the pixels whose centres lie in the drawn box, untouched elsewhere
    (erased, _), (p, _) = SimCLRAugment("digits", erase_p=1.0, noise_p=0.0, **kw)(
        x, return_params=True
    )
    centres = (torch.arange(16) + 0.5) / 16
    x0, y0, w, h = p["erase_box"].unbind(1)
    in_x = (centres >= x0[:, None]) & (centres < (x0 + w)[:, None])
    in_y = (centres >= y0[:, None]) & (centres < (y0 + h)[:, None])
    inside = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)
    assert inside.any(dim=(1, 2, 3)).all()
    assert (erased[inside] == 0).all() and torch.equal(erased[~inside], plain[~inside])
    # noise: clip(view + std * n) with the drawn n, on the images drawn for it
    std = 0.1
    (noisy, _), (p, _) = SimCLRAugment("digits", erase_p=0.0, noise_p=0.5, noise_std=std, **kw)(
        x, return_params=True
    )
    on = p["noise"].view(-1, 1, 1, 1)
    expected = torch.where(on, (plain + std * p["noise_values"]).clamp(0, 1), plain)
    torch.testing.assert_close(noisy, expected, atol=1e-5, rtol=0)
    assert 0 < p["noise"].sum() < 32
    # rotation about the centre, black outside the image: a flat image keeps its centre value
    # and loses its corners when the angle is large
    flat = torch.full((64, 1, 16, 16), 200, dtype=torch.uint8)
    kw.update(rotation=45.0)
    (rot, _), (p, _) = SimCLRAugment("digits", erase_p=0.0, noise_p=0.0, **kw)(
        flat, return_params=True
    )
    torch.testing.assert_close(rot[:, :, 7:9, 7:9], torch.full_like(rot[:, :, 7:9, 7:9], 200 / 255))
    steep = p["angle"].abs() > 20
    assert steep.sum() > 10 and (rot[steep, 0, 0, 0] < 0.5 * 200 / 255).all()


# --------------------------------------------------------------- op semantics against Kornia


def _kornia_jitter(img, factors, order):
    """Reference: Kornia's functional ops on one image, in its own order, clip after each."""
    img = img.unsqueeze(0)
    for op in order.tolist():
        f = factors[op]
        if op == 0:
            img = kornia.enhance.adjust_contrast(img, f.view(1))  # multiplicative = brightness
        elif op == 1:
            img = kornia.enhance.adjust_contrast_with_mean_subtraction(img, f.view(1))
        elif op == 2:
            img = kornia.enhance.adjust_saturation_with_gray_subtraction(img, f.view(1))
        else:
            img = kornia.enhance.adjust_hue(img, (2 * math.pi * f).view(1)).clamp(0, 1)
    return img.squeeze(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_color_jitter_matches_kornia_per_image_order(backend):
    x = _images(48, 3, 16, seed=4)
    jittered, (p0, _) = SimCLRAugment(
        "simclr-imagenet", backend=backend, size=12, seed=21, grayscale_p=0.0, blur_p=0.0
    )(x, return_params=True)
    plain = SimCLRAugment("simclr-imagenet", backend=backend, size=12, seed=21, **OFF)(x)
    assert len({tuple(r) for r in p0["order"].tolist()}) > 10
    for i in range(x.shape[0]):
        if p0["jitter"][i]:
            expected = _kornia_jitter(plain[0][i], p0["factors"][i], p0["order"][i])
        else:
            expected = plain[0][i]
        torch.testing.assert_close(jittered[0][i], expected, atol=2e-5, rtol=1e-5)


def test_hue_shift_matches_kornia():
    x = torch.rand(6, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    x[0, :, :2] = 0.5  # gray pixels (zero chroma)
    shift = torch.tensor([-0.5, -0.2, 0.0, 0.1, 0.33, 0.5])
    ref = kornia.enhance.adjust_hue(x, 2 * math.pi * shift)
    torch.testing.assert_close(_hue_shift(x, shift), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_blur_flip_applied_where_drawn(backend):
    x = _images(64, 3, 32, seed=6)
    kw = {"size": 32, "seed": 31}
    (full, _), (p, _) = SimCLRAugment("simclr-imagenet", backend=backend, jitter_p=0.0, **kw)(
        x, return_params=True
    )
    (plain, _) = SimCLRAugment("simclr-imagenet", backend=backend, **OFF, **kw)(x)
    (noflip, _) = SimCLRAugment("simclr-imagenet", backend=backend, **OFF, flip_p=0.0, **kw)(x)
    assert p["grayscale"].any() and p["blur"].any() and p["flip"].any()
    ksize = 2 * (32 // 10 // 2) + 1
    for i in range(64):
        expected = plain[i : i + 1]
        if p["grayscale"][i]:
            expected = kornia.color.rgb_to_grayscale(expected).expand(-1, 3, -1, -1)
        if p["blur"][i]:
            s = p["sigma"][i].item()
            expected = kornia.filters.gaussian_blur2d(expected, (ksize, ksize), (s, s))
        torch.testing.assert_close(full[i : i + 1], expected, atol=1e-5, rtol=1e-5)
        if p["grayscale"][i]:
            assert torch.equal(full[i, 0], full[i, 1])
        if p["flip"][i]:
            # a flip mirrors the same crop; bicubic sampling is symmetric up to rounding
            torch.testing.assert_close(plain[i], noflip[i].flip(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncropped_identity(backend):
    """Full-image crop, no flip, nothing else: the output is the input (resampled 1:1)."""
    x = _images(4, 3, 16)
    out, _ = SimCLRAugment(
        "simclr-cifar",
        backend=backend,
        size=16,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        **OFF,
    )(x)
    torch.testing.assert_close(out, x.float() / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_solarize_and_per_view_overrides(backend):
    x = _images(16, 3, 16)
    aug = SimCLRAugment(
        "simclr-cifar", backend=backend, size=16, seed=0, **OFF, view1={"solarize_p": 1.0}
    )
    (v0, v1), (p0, p1) = aug(x, return_params=True)
    assert aug.view_params[0].solarize_p == 0.0 and p1["solarize"].all()
    plain = SimCLRAugment("simclr-cifar", backend=backend, size=16, seed=0, **OFF)(x)[1]
    torch.testing.assert_close(v1, torch.where(plain >= 0.5, 1 - plain, plain))


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"recipe": "simclr-mnist"}, ValueError, "unknown recipe"),
        ({"size": 0}, ValueError, "size must be positive"),
        ({"size": (32, -1)}, ValueError, "size must be positive"),
        ({"size": 3.5}, TypeError, "size"),
        ({"flip_p": 1.5}, ValueError, "flip_p must be in"),
        ({"blur_p": -0.1}, ValueError, "blur_p must be in"),
        ({"jitter_p": "0.8"}, TypeError, "jitter_p"),
        ({"hue": 0.7}, ValueError, "hue"),
        ({"brightness": -1.0}, ValueError, "brightness"),
        ({"crop_scale": (0.5, 0.2)}, ValueError, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, ValueError, "crop_scale"),
        ({"blur_kernel": 4}, ValueError, "blur_kernel"),
        ({"interpolation": "area"}, ValueError, "interpolation"),
        ({"colour_p": 0.1}, TypeError, "unknown override"),
        ({"view1": {"solarise_p": 0.2}}, TypeError, "unknown view1"),
        ({"data_format": "CHW"}, ValueError, "data_format"),
        ({"dtype": torch.float64}, TypeError, "dtype"),
        ({"mean": (0.5, 0.5, 0.5)}, ValueError, "both mean and std"),
        ({"mean": (0.5,), "std": (0.0,)}, ValueError, "std must be positive"),
        ({"seed": 0, "generator": torch.Generator()}, ValueError, "at most one"),
        ({"cpu_block_bytes": 0}, ValueError, "cpu_block_bytes"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    kwargs = dict(kwargs)
    recipe = kwargs.pop("recipe", "simclr-cifar")
    with pytest.raises(exc, match=match):
        SimCLRAugment(recipe, **kwargs)


@pytest.mark.parametrize(
    "images,kwargs,exc,match",
    [
        (torch.zeros(32, 32, dtype=torch.uint8), {}, ValueError, "4-D batch"),
        (torch.zeros(2, 1, 3, 32, 32, dtype=torch.uint8), {}, ValueError, "4-D batch"),
        (torch.zeros(0, 3, 32, 32, dtype=torch.uint8), {}, ValueError, "empty batch"),
        (torch.zeros(2, 4, 32, 32, dtype=torch.uint8), {}, ValueError, "4 channels"),
        (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), {}, ValueError, "colour ops need RGB"),
        (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), {"recipe": "digits"}, ValueError, "1 or 3"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int32), {}, TypeError, "uint8"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.bool), {}, TypeError, "uint8"),
        (torch.zeros(2, 3, 8, 3, dtype=torch.uint8), {"data_format": "auto"}, ValueError, "auto"),
        (torch.zeros(2, 3, 32, 32).numpy(), {}, TypeError, "torch.Tensor"),
        (torch.zeros(2, 3, 4, 4), {"mean": (0.1, 0.2), "std": (1.0, 1.0)}, ValueError, "mean/std"),
    ],
)
def test_input_errors(images, kwargs, exc, match):
    kwargs = dict(kwargs)
    aug = SimCLRAugment(kwargs.pop("recipe", "simclr-cifar"), **kwargs)
    with pytest.raises(exc, match=match):
        aug(images)


def test_view_params_validate_directly():
    with pytest.raises(ValueError, match="solarize_threshold"):
        ViewParams(solarize_threshold=2.0).validate()
    ViewParams().validate()


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stays_on_device_without_sync():
    x = _images(64, 3, 64).cuda()
    aug = SimCLRAugment(
        "simclr-imagenet", size=32, generator=torch.Generator("cuda").manual_seed(0)
    )
    aug(x)  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        v0, v1 = aug(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert v0.is_cuda and v1.is_cuda and v0.shape == (64, 3, 32, 32)
    cpu_gen = torch.Generator()
    with pytest.raises(ValueError, match="generator is on"):
        aug(x, generator=cpu_gen)


@pytest.mark.parametrize("recipe,channels", [("simclr-imagenet", 3), ("byol", 3), ("digits", 1)])
def test_cpu_blocking_does_not_change_results(recipe, channels):
    x = _images(10, channels, 24)
    kw = {"size": 16, "seed": 4, "dtype": torch.bfloat16, "memory_format": torch.channels_last}
    kw["backend"] = "torch"  # blocks are the tensor-op path's; the kernel goes image by image
    whole = SimCLRAugment(recipe, cpu_block_bytes=None, **kw)(x)
    blocks = SimCLRAugment(recipe, cpu_block_bytes=3 * 4 * 16 * 16 * 3, **kw)(x)  # 3 images
    assert blocks[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(whole[0], blocks[0]) and torch.equal(whole[1], blocks[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_on_batch(backend):
    x = _images(1, 3, 24).expand(6, -1, -1, -1).contiguous()
    (v0, v1), (p0, _) = SimCLRAugment(
        "simclr-imagenet", backend=backend, size=16, seed=0, same_on_batch=True
    )(x, return_params=True)
    assert p0["crop"].shape == (6, 4) and (p0["crop"] == p0["crop"][:1]).all()
    assert (v0 == v0[:1]).all() and (v1 == v1[:1]).all()
    varied, _ = SimCLRAugment("simclr-imagenet", backend=backend, size=16, seed=0)(x)
    assert not (varied == varied[:1]).all()
    with pytest.raises(TypeError, match="same_on_batch"):
        SimCLRAugment("simclr-cifar", backend=backend, same_on_batch=1)
