"""SimCLR / BYOL augmentations for a whole batch, on the batch's device.

:class:`SimCLRAugment` turns a batch of raw images (uint8 or float, NCHW or NHWC, CPU or CUDA) into
the two augmented views that SimCLR trains on. All random parameters are drawn per image on the
images' device (from a :class:`torch.Generator` when one is given); the batch is processed by
whole-batch tensor operations, with no Python loop over images and, on CUDA, no host
synchronisation.

Recipes (docs/design.md §5, from google-research/simclr ``data_util.py`` and the BYOL paper):

=====================  ===================================================================
``"simclr-imagenet"``  224 px; resized crop (area 0.08–1, aspect 3/4–4/3, bicubic); flip 0.5;
                       colour jitter p 0.8 (0.8/0.8/0.8/0.2), ops in random order per image;
                       grayscale p 0.2; Gaussian blur p 0.5, σ ~ U[0.1, 2], kernel 10 % of size
``"simclr-cifar"``     32 px; the same with jitter strength 0.5 (0.4/0.4/0.4/0.1) and no blur
``"byol"``             224 px; jitter 0.4/0.4/0.2/0.1; view 0: blur p 1.0, no solarize;
                       view 1: blur p 0.1, solarize p 0.2 (threshold 0.5)
``"digits"``           16 px grayscale digits: resized crop (area 0.6–1), small rotation and
                       shear, mild brightness/contrast, Gaussian noise, random erasing;
                       no flip, no colour
=====================  ===================================================================

Colour-jitter semantics (the ops Kornia's functional API calls ``adjust_contrast`` (a
multiplication), ``adjust_contrast_with_mean_subtraction``, ``adjust_saturation_with_gray_subtraction``
and ``adjust_hue``; the same as torchvision/PIL's ``ColorJitter``):

* brightness ``b``: ``x * b`` (multiplicative, SimCLR v2), factor ~ U[max(0, 1 - s_b), 1 + s_b];
* contrast ``c``: ``c * x + (1 - c) * mean(gray(x))`` (per-image mean of the grayscale image);
* saturation ``a``: ``a * x + (1 - a) * gray(x)``;
* hue ``h`` ~ U[-s_h, s_h] (fraction of a full turn): rotation of the HSV hue.

Each op is followed by clipping to [0, 1]; the four ops run in an order drawn independently for
every image. (google-research/simclr's TensorFlow ops differ in two details: contrast uses the
per-channel mean and saturation scales HSV saturation. We follow the torchvision/Kornia convention
that most PyTorch SimCLR code uses.)

Where Kornia's own modules do not fit, this module draws its parameters itself and calls Kornia's
functional ops, or a fused equivalent, with the reason next to the code:

* ``kornia.augmentation.ColorJitter`` draws one op order per *batch*, not per image;
* Kornia's augmentation modules draw from the global RNG (no per-call :class:`torch.Generator`);
* ``RandomResizedCrop(cropping_mode="slice")`` (its default) loops over the batch in Python;
  crop, flip and (for ``digits``) rotation/shear are composed here into one affine map and
  resampled with a single ``grid_sample`` call, straight to the output size.

Two paths compute the same views from the same random parameters (``backend``):

* tensor ops (``"torch"``), on any device: whole-batch ops, Kornia's where they fit. On CUDA this
  is the path; its random parameters are drawn on the device and nothing waits for the host.
* the fused C++ kernel (``"cpu"``, csrc/augment.cpp), for CPU tensors: every op of one image runs
  while the image sits in cache, reading uint8 directly. The tensor-op path makes ~20 fp32 passes
  over the batch and measured 18-23 CPU-ms per image at 224 px on the 2-core dev box
  (2026-11-22), slower than the per-image PIL pipeline (12 CPU-ms); the kernel does the same in
  3.2-3.7 CPU-ms (``simclr-fast bench augment``, README "Augmentation"). It runs every op of
  every recipe.

``"auto"`` (the default) takes the kernel when the images are on the CPU and the extension is
built. Tests hold both paths to each other and to Kornia's ops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import kornia
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RECIPES", "SimCLRAugment", "ViewParams", "recipe_params"]

# ITU-R 601 luma weights, the ones kornia.color.rgb_to_grayscale uses.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

# Rejection-sampling attempts for the resized crop; torchvision uses 10. All attempts are drawn at
# once (B × 10 numbers), so the count costs nothing measurable; 10 keeps the fallback (whole image)
# rare: P(fail) < 1e-3 at the default scale/ratio. Not timed: it is a distribution choice.
_CROP_ATTEMPTS = 10

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_DATA_FORMATS = ("NCHW", "NHWC", "auto")
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """Parameters of one view's augmentation pipeline (all overridable).

    The ops run in this order: resized crop (with flip, rotation and shear in the same resampling),
    colour jitter, grayscale, Gaussian blur, solarize, Gaussian noise, random erasing.

    Attributes:
        crop_scale: range of the crop area as a fraction of the input area.
        crop_ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"`` (``grid_sample`` modes).
        flip_p: probability of a horizontal flip.
        rotation: maximum absolute rotation in degrees (uniform in ``[-rotation, rotation]``).
        shear: maximum absolute shear angle in degrees, along x (uniform).
        jitter_p: probability that an image gets colour jitter (all four ops, random order).
        brightness, contrast, saturation: jitter strengths ``s``; the factor is drawn from
            ``U[max(0, 1 - s), 1 + s]``; 0 turns the op off.
        hue: hue strength in fractions of a full turn (``<= 0.5``); the shift is ``U[-hue, hue]``.
        grayscale_p: probability of converting to grayscale (after jitter, independent of it).
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation in output pixels.
        blur_kernel: odd kernel size in taps; ``None`` means 10 % of the output height, made odd
            the way google-research/simclr does (``2 * (height // 10 // 2) + 1``: 23 at 224).
        solarize_p: probability of solarizing (``x >= threshold -> 1 - x``).
        solarize_threshold: solarization threshold in [0, 1].
        noise_p: probability of adding Gaussian noise (then clipping to [0, 1]).
        noise_std: standard deviation of that noise.
        erase_p: probability of erasing one random rectangle (set to 0).
        erase_scale: range of the erased area as a fraction of the image area.
        erase_ratio: range of the erased rectangle's aspect ratio (log-uniform).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    flip_p: float = 0.5
    rotation: float = 0.0
    shear: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    noise_p: float = 0.0
    noise_std: float = 0.0
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.2)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first invalid field."""
        for name in (
            "flip_p",
            "jitter_p",
            "grayscale_p",
            "blur_p",
            "solarize_p",
            "noise_p",
            "erase_p",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a probability (a float in [0, 1]); got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {value!r}. Pass a probability.")
        for name in (
            "brightness",
            "contrast",
            "saturation",
            "hue",
            "rotation",
            "shear",
            "noise_std",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a non-negative number; got {value!r}")
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if self.hue > 0.5:
            raise ValueError(
                f"hue must be in [0, 0.5] (a fraction of a full turn); got {self.hue!r}"
            )
        if self.shear >= 90:
            raise ValueError(f"shear must be below 90 degrees; got {self.shear!r}")
        if not 0.0 <= self.solarize_threshold <= 1.0:
            raise ValueError(
                f"solarize_threshold must be in [0, 1] (images are scaled to [0, 1]); "
                f"got {self.solarize_threshold!r}"
            )
        for name, low_min, high_max in (
            ("crop_scale", 0.0, 1.0),
            ("erase_scale", 0.0, 1.0),
            ("crop_ratio", 0.0, math.inf),
            ("erase_ratio", 0.0, math.inf),
            ("blur_sigma", 0.0, math.inf),
        ):
            value = getattr(self, name)
            if not (isinstance(value, Sequence) and len(value) == 2):
                raise TypeError(f"{name} must be a pair (low, high); got {value!r}")
            low, high = (float(v) for v in value)
            if (
                not (low_min < high or low == high)
                or low <= low_min
                or high > high_max
                or low > high
            ):
                raise ValueError(
                    f"{name} must satisfy {low_min} < low <= high <= {high_max}; got {value!r}"
                )
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}; got {self.interpolation!r}"
            )
        if self.blur_kernel is not None and (
            isinstance(self.blur_kernel, bool)
            or not isinstance(self.blur_kernel, int)
            or self.blur_kernel < 1
            or self.blur_kernel % 2 == 0
        ):
            raise ValueError(
                f"blur_kernel must be None or an odd int >= 1; got {self.blur_kernel!r}"
            )


def _simclr(strength: float, blur_p: float) -> ViewParams:
    return ViewParams(
        brightness=0.8 * strength,
        contrast=0.8 * strength,
        saturation=0.8 * strength,
        hue=0.2 * strength,
        blur_p=blur_p,
    )


_BYOL_BASE = ViewParams(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)

# The digits recipe: docs/design.md §6 measured crop + affine + intensity + erasing ~20 points above
# crop-only at 1 label/class (small SimCLR CNN, 16x16 inputs, 60 s CPU). The exact values below
# (area 0.6-1, +-10 deg rotation, +-10 deg shear, brightness/contrast 0.4, noise 0.05 on half the
# images, erasing p 0.25) were chosen by hand, not tuned: not measured individually.
_DIGITS = ViewParams(
    crop_scale=(0.6, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    interpolation="bilinear",
    flip_p=0.0,
    rotation=10.0,
    shear=10.0,
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.0,
    hue=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
    noise_p=0.5,
    noise_std=0.05,
    erase_p=0.25,
    erase_scale=(0.02, 0.15),
)

#: recipe name -> (default output size, (view 0 params, view 1 params))
RECIPES: dict[str, tuple[int, tuple[ViewParams, ViewParams]]] = {
    "simclr-imagenet": (224, (_simclr(1.0, 0.5), _simclr(1.0, 0.5))),
    "simclr-cifar": (32, (_simclr(0.5, 0.0), _simclr(0.5, 0.0))),
    "byol": (
        224,
        (
            dataclasses.replace(_BYOL_BASE, blur_p=1.0, solarize_p=0.0),
            dataclasses.replace(_BYOL_BASE, blur_p=0.1, solarize_p=0.2),
        ),
    ),
    "digits": (16, (_DIGITS, _DIGITS)),
}


def recipe_params(recipe: str) -> tuple[int, tuple[ViewParams, ViewParams]]:
    """Return ``(default_size, (view0_params, view1_params))`` of a named recipe.

    Raises:
        ValueError: for an unknown recipe name.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[recipe]


# --------------------------------------------------------------------------------------------
# random parameters (drawn on the device, per image)
# --------------------------------------------------------------------------------------------


def _uniform(shape, low, high, *, device, generator) -> torch.Tensor:
    u = torch.rand(shape, device=device, generator=generator)
    return u * (high - low) + low


def _bernoulli(shape, p, *, device, generator) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator) < p


def _sample_crop(
    batch: int, height: int, width: int, scale, ratio, *, device, generator
) -> torch.Tensor:
    """Random resized crop boxes ``(B, 4)`` as ``(x0, y0, w, h)`` in input pixels (continuous).

    Same distribution as torchvision's ``RandomResizedCrop.get_params`` (area uniform in
    ``scale`` × image area, log-uniform aspect ratio, first of ``_CROP_ATTEMPTS`` tries that fits,
    else the largest centred box of a valid ratio), but every attempt for every image is drawn at
    once and boxes are not rounded to whole pixels (the crop is resampled, not sliced).
    """
    area = float(height * width)
    shape = (batch, _CROP_ATTEMPTS)
    target = area * _uniform(shape, scale[0], scale[1], device=device, generator=generator)
    log_r = _uniform(
        shape, math.log(ratio[0]), math.log(ratio[1]), device=device, generator=generator
    )
    r = torch.exp(log_r)
    w = torch.sqrt(target * r)
    h = torch.sqrt(target / r)
    ok = (w <= width) & (h <= height)
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first fitting attempt
    any_ok = ok.any(dim=1)
    w = torch.gather(w, 1, first).squeeze(1)
    h = torch.gather(h, 1, first).squeeze(1)
    # fallback (torchvision's): whole image, or its centre at the nearest allowed ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    ux = torch.rand(batch, device=device, generator=generator)
    uy = torch.rand(batch, device=device, generator=generator)
    x0 = ux * (width - w)
    y0 = uy * (height - h)
    return torch.stack([x0, y0, w, h], dim=1)


def _sample_view(
    vp: ViewParams,
    batch: int,
    height: int,
    width: int,
    *,
    device,
    generator,
    out_shape: tuple[int, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Draw every random parameter of one view for a batch; all tensors live on ``device``."""
    kw = {"device": device, "generator": generator}
    p: dict[str, torch.Tensor] = {}
    p["crop"] = _sample_crop(batch, height, width, vp.crop_scale, vp.crop_ratio, **kw)
    p["flip"] = _bernoulli(batch, vp.flip_p, **kw)
    p["angle"] = _uniform(batch, -vp.rotation, vp.rotation, **kw)
    p["shear"] = _uniform(batch, -vp.shear, vp.shear, **kw)
    p["jitter"] = _bernoulli(batch, vp.jitter_p, **kw)
    # factors (B, 4): brightness, contrast, saturation (multipliers), hue (fraction of a turn)
    factors = torch.stack(
        [
            _uniform(batch, max(0.0, 1.0 - vp.brightness), 1.0 + vp.brightness, **kw),
            _uniform(batch, max(0.0, 1.0 - vp.contrast), 1.0 + vp.contrast, **kw),
            _uniform(batch, max(0.0, 1.0 - vp.saturation), 1.0 + vp.saturation, **kw),
            _uniform(batch, -vp.hue, vp.hue, **kw),
        ],
        dim=1,
    )
    p["factors"] = factors
    # order[b, t] = which op (0 brightness, 1 contrast, 2 saturation, 3 hue) runs at step t:
    # argsort of i.i.d. uniforms is a uniformly random permutation, independently per image.
    p["order"] = torch.argsort(torch.rand(batch, 4, **kw), dim=1)
    p["grayscale"] = _bernoulli(batch, vp.grayscale_p, **kw)
    p["blur"] = _bernoulli(batch, vp.blur_p, **kw)
    p["sigma"] = _uniform(batch, vp.blur_sigma[0], vp.blur_sigma[1], **kw)
    p["solarize"] = _bernoulli(batch, vp.solarize_p, **kw)
    p["noise"] = _bernoulli(batch, vp.noise_p, **kw)
    p["erase"] = _bernoulli(batch, vp.erase_p, **kw)
    # erased box in output-fraction units: (x0, y0, w, h); drawn like a crop on the unit square
    e_area = _uniform(batch, vp.erase_scale[0], vp.erase_scale[1], **kw)
    e_r = torch.exp(_uniform(batch, math.log(vp.erase_ratio[0]), math.log(vp.erase_ratio[1]), **kw))
    e_w = torch.sqrt(e_area * e_r).clamp(max=1.0)
    e_h = torch.sqrt(e_area / e_r).clamp(max=1.0)
    e_x = torch.rand(batch, **kw) * (1 - e_w)
    e_y = torch.rand(batch, **kw) * (1 - e_h)
    p["erase_box"] = torch.stack([e_x, e_y, e_w, e_h], dim=1)
    if vp.noise_p > 0 and vp.noise_std > 0 and out_shape is not None:
        # (B, C, H, W) standard normal, drawn here so the views do not depend on chunking
        p["noise_values"] = torch.randn((batch, *out_shape), **kw)
    return p


# --------------------------------------------------------------------------------------------
# ops on (B, C, H, W) float images in [0, 1]
# --------------------------------------------------------------------------------------------


def _subset_rows(mask: torch.Tensor) -> torch.Tensor | None:
    """Indices of the images an op applies to, on CPU only.

    On a CPU tensor ``nonzero`` costs nothing beyond the op itself (there is no device to wait
    for), and running an op on the ~20-50 % of images that need it instead of on all of them and
    selecting with ``torch.where`` saves most of its cost (blur/hue/grayscale at 224 px). On
    CUDA this returns None: the op runs on the whole batch and ``torch.where`` selects, so the
    host never waits for the device.
    """
    if mask.device.type != "cpu":
        return None
    return mask.nonzero().squeeze(1)


def _apply_masked(x: torch.Tensor, mask: torch.Tensor, fn, *args: torch.Tensor) -> torch.Tensor:
    """``x[i] = fn(x[i], args[i])`` for the images with ``mask[i]``; in place where possible."""
    idx = _subset_rows(mask)
    if idx is None:
        out = fn(x, *args)
        return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), out, x)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, *args)
    sub = fn(x.index_select(0, idx), *(a.index_select(0, idx) for a in args))
    return x.index_copy_(0, idx, sub)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Grayscale plane ``(B, 1, H, W)`` (kornia.color.rgb_to_grayscale for 3 channels)."""
    if x.shape[1] == 1:
        return x
    return kornia.color.rgb_to_grayscale(x)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images ``x`` by ``shift`` (B,) turns; returns a new tensor.

    Equal to ``kornia.enhance.adjust_hue(x, 2 * pi * shift)`` (tested to 1e-5) without the
    round trip through an HSV image: value ``v = max``, chroma ``c = max - min`` are unchanged by a
    hue rotation, and each output channel is ``v - c * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + h') mod 6`` (n = 5, 3, 1 for R, G, B). Why not Kornia's op: on the 2-core dev box
    (2026-11-22, torch 2.13, 128 images at 224 px) ``adjust_hue`` took ≈1.0 s, about 10 full
    elementwise passes more than this formula needs.
    """
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)  # elementwise: 2x faster than x.amax(dim=1) here
    m = torch.minimum(torch.minimum(r, g), b)
    c = v - m
    inv_c = torch.where(c > 0, c, torch.ones_like(c)).reciprocal_()
    h = torch.where(
        v == r,
        (g - b).mul_(inv_c),
        torch.where(v == g, (b - r).mul_(inv_c).add_(2.0), (r - g).mul_(inv_c).add_(4.0)),
    )
    # h in [-1, 5); zero chroma gives h = 0 (any hue works: c = 0 makes the output v)
    h = h.add_(6.0 * shift.view(-1, 1, 1).to(x.dtype)).remainder_(6.0)
    out = torch.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        # k = (h + n) mod 6 with h in [0, 6): one conditional subtraction (remainder is slower)
        k = h + n
        k = k.sub_((k >= 6.0).to(k.dtype), alpha=6.0)
        k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(v, k.mul_(c), out=out[:, channel])
    return out


def _color_jitter(x: torch.Tensor, p: Mapping[str, torch.Tensor], vp: ViewParams) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in a random order per image, clip after each.

    Kornia's ColorJitter draws one permutation per batch; here ``p["order"][b, t]`` is the op
    image ``b`` runs at step ``t``. Brightness, contrast and saturation are all
    ``clip(f * x + (1 - f) * ref)`` with ``ref`` = 0, the grayscale mean, the grayscale image: at
    each step one fused blend serves every image, whatever its op (``f = 1`` for images whose op
    at this step is hue or that are not jittered). Hue runs on the images that have it at this step.
    """
    batch = x.shape[0]
    jit = p["jitter"]
    factors = p["factors"].to(x.dtype)
    order = p["order"]
    rows = torch.arange(batch, device=x.device)
    want_gray = vp.contrast > 0 or vp.saturation > 0
    for step in range(4):
        op = order[:, step]
        f = factors[rows, op.clamp(max=2)]  # hue's column is not a multiplier; masked below
        f = torch.where(jit & (op < 3), f, torch.ones_like(f)).view(-1, 1, 1, 1)
        if want_gray:
            gray = _gray(x)
            is_c = (op == 1).to(x.dtype).view(-1, 1, 1, 1)
            is_s = (op == 2).to(x.dtype).view(-1, 1, 1, 1)
            mean = gray.mean(dim=(2, 3), keepdim=True)
            ref = gray * (is_s * (1 - f))
            ref = ref.add_(mean * (is_c * (1 - f)))
            x = x.mul_(f).add_(ref).clamp_(0.0, 1.0)
        else:
            x = x.mul_(f).clamp_(0.0, 1.0)
        if vp.hue > 0 and x.shape[1] == 3:
            x = _apply_masked(x, jit & (op == 3), _hue_shift, factors[:, 3])
    return x


def _to_grayscale(x: torch.Tensor) -> torch.Tensor:
    return _gray(x).expand_as(x)


def _blur_kernel_size(vp: ViewParams, height: int) -> int:
    if vp.blur_kernel is not None:
        return vp.blur_kernel
    return 2 * (height // 10 // 2) + 1


def _blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one σ per image (Kornia's kernels and separable filter)."""
    kernel = kornia.filters.get_gaussian_kernel1d(kernel_size, sigma.view(-1, 1).to(x.dtype))
    return kornia.filters.filter2d_separable(x, kernel, kernel, border_type="reflect")


def _erase(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Zero one rectangle per image; ``box`` (B, 4) in fractions of the image: x0, y0, w, h."""
    _, _, height, width = x.shape
    ys = (torch.arange(height, device=x.device, dtype=box.dtype) + 0.5) / height
    xs = (torch.arange(width, device=x.device, dtype=box.dtype) + 0.5) / width
    x0, y0, bw, bh = (box[:, i].view(-1, 1) for i in range(4))
    in_y = (ys >= y0) & (ys < y0 + bh)  # (B, H)
    in_x = (xs >= x0) & (xs < x0 + bw)  # (B, W)
    inside = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)
    return x.masked_fill(inside, 0.0)


def _theta(p: Mapping[str, torch.Tensor], vp: ViewParams, in_h: int, in_w: int) -> torch.Tensor:
    """The affine maps ``(B, 2, 3)`` from output to input coordinates (normalized, [-1, 1]).

    Output pixel (u, v) maps to the input at ``crop_centre + crop_half_size * S · R · F · (u, v)``
    with F the flip, R the rotation, S the shear (``affine_grid``'s theta). Without rotation or
    shear the off-diagonal entries are exactly 0. Shared by both paths, so they sample the same
    points.
    """
    crop = p["crop"].to(torch.float32)
    cx = (2 * crop[:, 0] + crop[:, 2]) / in_w - 1  # crop centre, normalized
    cy = (2 * crop[:, 1] + crop[:, 3]) / in_h - 1
    sx = crop[:, 2] / in_w  # half extent, normalized
    sy = crop[:, 3] / in_h
    sx = torch.where(p["flip"], -sx, sx)
    if vp.rotation == 0 and vp.shear == 0:
        zero = torch.zeros_like(sx)
        rows = [torch.stack([sx, zero, cx], dim=1), torch.stack([zero, sy, cy], dim=1)]
    else:
        angle = torch.deg2rad(p["angle"].to(torch.float32))
        shear = torch.tan(torch.deg2rad(p["shear"].to(torch.float32)))
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotation then shear along x, in output space: [[1, k], [0, 1]] @ [[cos, -sin], [sin, cos]]
        a11, a12 = cos + shear * sin, -sin + shear * cos
        a21, a22 = sin, cos
        rows = [
            torch.stack([sx * a11, sx * a12, cx], dim=1),
            torch.stack([sy * a21, sy * a22, cy], dim=1),
        ]
    return torch.stack(rows, dim=1)


def _padding(vp: ViewParams) -> str:
    """``grid_sample``'s padding for a view.

    An axis-aligned crop lies inside the image, and only the outer interpolation taps of its edge
    pixels fall outside; they repeat the edge (``"border"``, as PIL and torchvision's resize do)
    instead of reading black, which darkened the edge rows of up-scaled crops by up to 40 % with
    bicubic taps. With rotation or shear, corners of the output do leave the image and are filled
    with black (``"zeros"``, Kornia's ``RandomAffine`` default).
    """
    return "border" if vp.rotation == 0 and vp.shear == 0 else "zeros"


def _resample(
    x: torch.Tensor, p: Mapping[str, torch.Tensor], vp: ViewParams, size: tuple[int, int]
) -> torch.Tensor:
    """Resized crop + flip (+ rotation, shear) in one ``grid_sample`` call, to the output size.

    Without rotation or shear the grid is built from two broadcast vectors instead of
    ``affine_grid``, which measured ≈300 ms for 128 × 224² on the dev box (2026-11-22) for what is
    an outer sum.
    """
    batch, _, in_h, in_w = x.shape
    out_h, out_w = size
    theta = _theta(p, vp, in_h, in_w).to(x.dtype)
    if vp.rotation == 0 and vp.shear == 0:
        dtype, device = x.dtype, x.device
        u = (torch.arange(out_w, device=device, dtype=dtype) * 2 + 1) / out_w - 1
        v = (torch.arange(out_h, device=device, dtype=dtype) * 2 + 1) / out_h - 1
        sx, cx = theta[:, 0, 0].view(-1, 1, 1), theta[:, 0, 2].view(-1, 1, 1)
        sy, cy = theta[:, 1, 1].view(-1, 1, 1), theta[:, 1, 2].view(-1, 1, 1)
        gx = (sx * u.view(1, 1, -1) + cx).expand(batch, out_h, out_w)
        gy = (sy * v.view(1, -1, 1) + cy).expand(batch, out_h, out_w)
        grid = torch.stack([gx, gy], dim=-1)
    else:
        grid = F.affine_grid(theta, [batch, 1, out_h, out_w], align_corners=False)
    out = F.grid_sample(
        x, grid, mode=vp.interpolation, padding_mode=_padding(vp), align_corners=False
    )
    if vp.interpolation == "bicubic":
        out = out.clamp_(0.0, 1.0)  # bicubic overshoots
    return out


def _ops_on(vp: ViewParams) -> dict[str, bool]:
    """Which per-image ops a view runs at all (both paths skip the others for every image)."""
    return {
        "jitter": vp.jitter_p > 0 and bool(vp.brightness or vp.contrast or vp.saturation or vp.hue),
        "grayscale": vp.grayscale_p > 0,
        "blur": vp.blur_p > 0,
        "solarize": vp.solarize_p > 0,
        "noise": vp.noise_p > 0 and vp.noise_std > 0,
        "erase": vp.erase_p > 0,
    }


def _augment_view(
    x: torch.Tensor, p: Mapping[str, torch.Tensor], vp: ViewParams, size: tuple[int, int]
) -> torch.Tensor:
    y = _resample(x, p, vp, size)
    channels = y.shape[1]
    on = _ops_on(vp)
    if on["jitter"]:
        y = _color_jitter(y, p, vp)
    if on["grayscale"] and channels == 3:
        y = _apply_masked(y, p["grayscale"], _to_grayscale)
    if on["blur"]:
        ksize = _blur_kernel_size(vp, size[0])
        if ksize > 1:
            y = _apply_masked(y, p["blur"], lambda t, s: _blur(t, s, ksize), p["sigma"])
    if on["solarize"]:
        mask = p["solarize"].view(-1, 1, 1, 1) & (y >= vp.solarize_threshold)
        y = torch.where(mask, 1.0 - y, y)
    if on["noise"]:
        noise = p["noise_values"].to(y.dtype)
        scale = p["noise"].to(y.dtype).view(-1, 1, 1, 1) * vp.noise_std
        y = y.add_(noise * scale).clamp_(0.0, 1.0)
    if on["erase"]:
        y = _apply_masked(y, p["erase"], _erase, p["erase_box"].to(y.dtype))
    return y


# --------------------------------------------------------------------------------------------
# the fused CPU kernel (csrc/augment.cpp)
# --------------------------------------------------------------------------------------------

_BACKENDS = ("auto", "torch", "cpu")
_INTERPOLATIONS_CPU = {"bilinear": 0, "bicubic": 1, "nearest": 2}  # csrc/augment.cpp's Interp


def cpu_kernel_unavailable() -> str | None:
    """Why ``backend="cpu"`` cannot run here (a sentence with the fix), or ``None`` when it can."""
    from simclr_fast import _extension

    if not _extension.AVAILABLE:
        return _extension.REASON
    if not hasattr(torch.ops.simclr_fast, "augment_view_cpu"):
        return f"simclr_fast._C predates the augmentation kernel; {_extension.BUILD_HINT}"
    return None


def _fused_view(
    images: torch.Tensor,
    p: Mapping[str, torch.Tensor],
    vp: ViewParams,
    out: torch.Tensor,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
) -> torch.Tensor:
    """One view through ``torch.ops.simclr_fast.augment_view_cpu``, written into ``out``.

    ``images`` is the raw batch (uint8 or float32, contiguous NCHW): the kernel scales uint8 itself,
    so the batch is never converted to float as a whole. The flags of ops the view does not run
    (``_ops_on``) are cleared, so both paths run the same ops.
    """
    on = _ops_on(vp)
    # the kernel's flag order (csrc/augment.cpp: Flag)
    names = ("jitter", "grayscale", "blur", "solarize", "noise", "erase")
    flags = torch.stack([p[name] & on[name] for name in names], dim=1)
    channels = images.shape[1]
    if mean is not None:
        mean = mean.to(images.device).flatten().expand(channels).contiguous()
        std = std.to(images.device).flatten().expand(channels).contiguous()
    noise = p["noise_values"].to(torch.float32).contiguous() if on["noise"] else None
    torch.ops.simclr_fast.augment_view_cpu(
        images,
        _theta(p, vp, images.shape[2], images.shape[3]).contiguous(),
        flags.contiguous(),
        p["factors"].to(torch.float32).contiguous(),
        p["order"].to(torch.int64).contiguous(),
        p["sigma"].to(torch.float32).contiguous(),
        noise,
        p["erase_box"].to(torch.float32).contiguous(),
        mean,
        std,
        out,
        _INTERPOLATIONS_CPU[vp.interpolation],
        _padding(vp) == "zeros",
        _blur_kernel_size(vp, out.shape[2]),
        vp.hue > 0,
        float(vp.solarize_threshold),
        float(vp.noise_std),
    )
    return out


# --------------------------------------------------------------------------------------------
# the module
# --------------------------------------------------------------------------------------------


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise TypeError(f"size must be an int or (height, width); got {size!r}")
    if isinstance(size, int):
        pair = (size, size)
    elif (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"size must be an int or a pair of ints (height, width); got {size!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"size must be positive; got {size!r}. Pass e.g. size=224.")
    return pair


class SimCLRAugment(nn.Module):
    """Two augmented views of a batch of images, computed on the batch's device.

    Args:
        recipe: ``"simclr-imagenet"``, ``"simclr-cifar"``, ``"byol"`` or ``"digits"`` (see the
            module docstring for their parameters).
        size: output size, an int or ``(height, width)``; default the recipe's (224, 32, 224, 16).
        data_format: layout of the input: ``"NCHW"`` (default), ``"NHWC"`` (e.g. decoded uint8
            images stacked as they come), or ``"auto"``, which takes dim 1 as channels when it is 1
            or 3 and the last dim is not, dim 3 when the reverse holds, and raises when ambiguous.
        mean, std: per-channel normalization applied last, ``(x - mean) / std``; both or neither.
        dtype: output dtype: ``torch.float32`` (default), ``torch.bfloat16`` or ``torch.float16``.
            The augmentation itself runs in float32.
        memory_format: ``torch.contiguous_format`` (default) or ``torch.channels_last``.
        generator: a :class:`torch.Generator` on the images' device used when ``forward`` gets none.
        seed: shortcut for ``generator``: a generator seeded with it is created on first use on each
            device. Give at most one of ``generator`` and ``seed``.
        view0, view1: mappings of :class:`ViewParams` fields overriding one view only.
        cpu_block_bytes: on CPU, process the batch in blocks of images whose float32 output is at
            most this many bytes (cache blocking, see ``_chunk_size``); ``None`` = whole batch.
            Results do not depend on it. Ignored on other devices.
        same_on_batch: Kornia's flag: draw one set of random parameters per view and use it for
            every image of the batch (default False: independent parameters per image).
        keepdim: Kornia's flag: with ``True`` an unbatched input ``(C, H, W)`` gives unbatched
            views ``(C, H, W)``; with ``False`` (default) views always have a batch dimension.
        backend: ``"auto"`` (default): the fused C++ kernel (csrc/augment.cpp) for CPU
            tensors when the extension is built, the tensor ops otherwise; ``"torch"``: always
            the tensor ops (Kornia's functional ops and ours), on any device; ``"cpu"``: always
            the fused kernel, raising when it is not built or the images are not on the CPU.
            Both paths give the same views for the same random parameters (up to fp32
            rounding); on CPU at 224 px the kernel is ~6x faster (see the module docstring).
        **overrides: :class:`ViewParams` fields overriding both views, e.g. ``blur_p=0.0``,
            ``crop_scale=(0.2, 1.0)``. Applied before ``view0`` / ``view1``.

    Shape:
        - Input: ``(B, C, H, W)`` (``data_format="NCHW"``) or ``(B, H, W, C)``, or one image
          ``(C, H, W)`` / ``(H, W, C)``; uint8 (0–255) or floating point (0–1), any device. ``C``
          is 3 for the colour recipes, 1 or 3 for ``digits``.
        - Output: a pair of ``(B, C, size[0], size[1])`` tensors, on the input's device
          (``(C, size[0], size[1])`` for one image with ``keepdim=True``).

    Raises:
        ValueError: unknown recipe, invalid parameter (probability outside [0, 1], size <= 0, ...).
        TypeError: wrong type of a parameter.

    Examples:
        >>> aug = SimCLRAugment("simclr-cifar", seed=0)
        >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        >>> v0, v1 = aug(images)
        >>> v0.shape, v0.dtype
        (torch.Size([8, 3, 32, 32]), torch.float32)
        >>> v0b, _ = SimCLRAugment("simclr-cifar", seed=0)(images)
        >>> torch.equal(v0, v0b)
        True
    """

    def __init__(
        self,
        recipe: str = "simclr-imagenet",
        size: int | Sequence[int] | None = None,
        *,
        data_format: str = "NCHW",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        view0: Mapping[str, Any] | None = None,
        view1: Mapping[str, Any] | None = None,
        same_on_batch: bool = False,
        keepdim: bool = False,
        backend: str = "auto",
        cpu_block_bytes: int | None = 10 * 2**20,
        **overrides: Any,
    ) -> None:
        super().__init__()
        default_size, views = recipe_params(recipe)
        self.recipe = recipe
        self.size = _as_size(default_size if size is None else size)
        if data_format not in _DATA_FORMATS:
            raise ValueError(f"data_format must be one of {_DATA_FORMATS}; got {data_format!r}")
        self.data_format = data_format
        if dtype not in _OUT_DTYPES:
            raise TypeError(f"dtype must be one of {_OUT_DTYPES}; got {dtype!r}")
        self.dtype = dtype
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            raise ValueError(
                "memory_format must be torch.contiguous_format or torch.channels_last; "
                f"got {memory_format!r}"
            )
        self.memory_format = memory_format
        if cpu_block_bytes is not None and (
            isinstance(cpu_block_bytes, bool)
            or not isinstance(cpu_block_bytes, int)
            or cpu_block_bytes <= 0
        ):
            raise ValueError(
                f"cpu_block_bytes must be a positive int or None; got {cpu_block_bytes!r}"
            )
        self.cpu_block_bytes = cpu_block_bytes
        if not isinstance(same_on_batch, bool):
            raise TypeError(f"same_on_batch must be a bool; got {same_on_batch!r}")
        self.same_on_batch = same_on_batch
        if not isinstance(keepdim, bool):
            raise TypeError(f"keepdim must be a bool; got {keepdim!r}")
        self.keepdim = keepdim
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}; got {backend!r}")
        self.backend = backend
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for normalization, or neither")
        if mean is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
            std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
            if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
                raise ValueError(f"mean and std must have one value per channel; got {mean}, {std}")
            if (std_t <= 0).any():
                raise ValueError(f"std must be positive; got {std}")
            self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        else:
            self.mean = None
            self.std = None
        if generator is not None and seed is not None:
            raise ValueError("give at most one of generator and seed")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        self.generator = generator
        self.seed = seed
        self._seeded: dict[torch.device, torch.Generator] = {}
        fields = {f.name for f in dataclasses.fields(ViewParams)}
        for what, mapping in (
            ("override", overrides),
            ("view0", view0 or {}),
            ("view1", view1 or {}),
        ):
            unknown = set(mapping) - fields
            if unknown:
                raise TypeError(
                    f"unknown {what} parameter(s) {sorted(unknown)}; valid: {sorted(fields)}"
                )
        params = []
        for base, own in zip(views, (view0 or {}, view1 or {}), strict=True):
            vp = dataclasses.replace(base, **{**overrides, **own})
            vp.validate()
            ksize = _blur_kernel_size(vp, self.size[0])
            if vp.blur_p > 0 and ksize // 2 >= min(self.size):
                raise ValueError(
                    f"blur_kernel {ksize} is too large for size {self.size}: its reflect border "
                    f"({ksize // 2} px) must be smaller than the image; pass a smaller blur_kernel"
                )
            params.append(vp)
        self.view_params: tuple[ViewParams, ViewParams] = (params[0], params[1])
        if backend == "cpu":
            reason = cpu_kernel_unavailable()
            if reason is not None:
                raise RuntimeError(f"backend='cpu' needs the compiled kernel: {reason}")
        self.last_params: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def extra_repr(self) -> str:
        return (
            f"recipe={self.recipe!r}, size={self.size}, data_format={self.data_format!r}, "
            f"dtype={self.dtype}, normalize={self.mean is not None}, backend={self.backend!r}"
        )

    def _generator_for(self, device: torch.device, generator: torch.Generator | None):
        gen = generator if generator is not None else self.generator
        if gen is None and self.seed is not None:
            gen = self._seeded.get(device)
            if gen is None:
                gen = torch.Generator(device=device).manual_seed(self.seed)
                self._seeded[device] = gen
        if gen is not None and gen.device.type != device.type:
            raise ValueError(
                f"generator is on {gen.device} but the images are on {device}; create it with "
                f"torch.Generator(device={str(device)!r})"
            )
        return gen

    def _to_nchw(self, images: torch.Tensor) -> torch.Tensor:
        """The checked input as a (B, C, H, W) view, dtype unchanged (one image gets B = 1)."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor; got {type(images).__name__}")
        if images.dim() not in (3, 4):
            raise ValueError(
                f"images must be a 4-D batch (B, C, H, W) or (B, H, W, C), or a 3-D image "
                f"(C, H, W) or (H, W, C); got shape {tuple(images.shape)}"
            )
        if images.dim() == 3:
            images = images.unsqueeze(0)
        layout = self.data_format
        if layout == "auto":
            first, last = images.shape[1] in (1, 3), images.shape[3] in (1, 3)
            if first == last:
                raise ValueError(
                    f"data_format='auto' cannot tell the channel dim of shape "
                    f"{tuple(images.shape)}; pass data_format='NCHW' or 'NHWC'"
                )
            layout = "NCHW" if first else "NHWC"
        if layout == "NHWC":
            images = images.permute(0, 3, 1, 2)
        batch, channels = images.shape[:2]
        if batch == 0:
            raise ValueError("images is an empty batch (B = 0); pass at least one image")
        if images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"images has an empty spatial size {tuple(images.shape[2:])}")
        needs_rgb = any(
            vp.saturation > 0 or vp.hue > 0 or vp.grayscale_p > 0 for vp in self.view_params
        )
        allowed = (3,) if needs_rgb else (1, 3)
        if channels not in allowed:
            raise ValueError(
                f"images has {channels} channels (data_format={layout!r}) but recipe "
                f"{self.recipe!r} needs {' or '.join(map(str, allowed))}"
                + (
                    "; colour ops need RGB (set saturation=0, hue=0, grayscale_p=0 for grayscale)"
                    if needs_rgb
                    else ""
                )
            )
        if self.mean is not None and self.mean.numel() not in (1, channels):
            raise ValueError(
                f"mean/std have {self.mean.numel()} values but images have {channels} channels"
            )
        if images.dtype not in (
            torch.uint8,
            torch.float32,
            torch.float64,
            torch.float16,
            torch.bfloat16,
        ):
            raise TypeError(
                f"images must be uint8 (0-255) or floating point (0-1); got {images.dtype}. "
                "Convert with images.to(torch.uint8) or images.float() / 255."
            )
        return images

    def _uses_kernel(self, device: torch.device) -> bool:
        """Whether images on ``device`` go through the fused CPU kernel (see ``backend``)."""
        if self.backend == "torch":
            return False
        if self.backend == "cpu":
            if device.type != "cpu":
                raise ValueError(
                    f"backend='cpu' runs on CPU tensors; the images are on {device}. Use "
                    "backend='auto' or 'torch' for other devices."
                )
            return True
        return device.type == "cpu" and cpu_kernel_unavailable() is None

    def _chunk_size(self, x: torch.Tensor) -> int:
        """Images per block on CPU; the whole batch elsewhere.

        On CPU the ~20 elementwise passes of a view are memory-bound: blocks whose float32 output
        fits in ``cpu_block_bytes`` stay in cache between passes (and below glibc's 32 MiB mmap
        threshold, so buffers are reused instead of page-faulted in again). Measured on the
        2-core dev box (2026-11-22, 1 torch thread, machine shared, simclr-imagenet, 64 × 224²):
        blocks of 64 / 16 / 8 images gave 28 / 44 / 33 img/s, i.e. ≈ 9.6 MB blocks best. Every
        random parameter is drawn for the whole batch first, so the views do not depend on the
        block size. This is a loop over blocks of images, each processed as a batch.
        """
        if x.device.type != "cpu" or self.cpu_block_bytes is None:
            return x.shape[0]
        per_image = 4 * x.shape[1] * self.size[0] * self.size[1]
        return max(1, self.cpu_block_bytes // per_image)

    def _new_output(self, batch: int, channels: int, device: torch.device) -> torch.Tensor:
        """An empty view of the output size, dtype and memory format."""
        return torch.empty(
            (batch, channels, *self.size),
            dtype=self.dtype,
            device=device,
            memory_format=self.memory_format,
        )

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            if self.mean.device != y.device:  # module not moved with .to(device): copy once
                self.mean = self.mean.to(y.device)
                self.std = self.std.to(y.device)
            y = y.sub_(self.mean).div_(self.std)
        return y.to(dtype=self.dtype, memory_format=self.memory_format)

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        return_params: bool = False,
    ):
        """Return ``(view0, view1)`` (plus the sampled parameters if ``return_params``).

        Args:
            images: the batch, see the class's Shape section.
            generator: draws this call's random parameters; overrides the module's own. Must be
                on the images' device.
            return_params: also return ``(params0, params1)``: per-view dicts of per-image tensors
                (``crop`` (B, 4) = x0, y0, w, h in input pixels; ``flip``, ``jitter``,
                ``grayscale``, ``blur``, ``solarize``, ``noise``, ``erase`` (B,) bool;
                ``factors`` (B, 4) = brightness, contrast, saturation, hue; ``order`` (B, 4) the
                op run at each step (0 b, 1 c, 2 s, 3 h); ``sigma``, ``angle``, ``shear`` (B,)).
                A flag is drawn even when its op is off (p = 0 gives all False). The same dicts
                are kept in ``self.last_params``.

        Returns:
            ``(view0, view1)``, or ``((view0, view1), (params0, params1))`` with ``return_params``.
        """
        raw = self._to_nchw(images)
        unbatched = images.dim() == 3
        gen = self._generator_for(raw.device, generator)
        batch, channels, in_h, in_w = raw.shape
        use_kernel = self._uses_kernel(raw.device)
        if use_kernel:  # the kernel reads uint8 or float32 itself
            x = (raw if raw.dtype in (torch.uint8, torch.float32) else raw.float()).contiguous()
        else:
            x = raw.to(torch.float32)
            x = (x.div_(255.0) if raw.dtype == torch.uint8 else x).contiguous()
            chunk = self._chunk_size(x)
        views, params = [], []
        for vp in self.view_params:
            p = _sample_view(
                vp,
                1 if self.same_on_batch else batch,
                in_h,
                in_w,
                device=raw.device,
                generator=gen,
                out_shape=(channels, *self.size),
            )
            if self.same_on_batch:
                p = {k: v.expand(batch, *v.shape[1:]) for k, v in p.items()}
            if use_kernel:
                out = self._new_output(batch, channels, raw.device)
                views.append(_fused_view(x, p, vp, out, self.mean, self.std))
            elif chunk >= batch:
                views.append(self._finish(_augment_view(x, p, vp, self.size)))
            else:
                out = self._new_output(batch, channels, x.device)
                for start in range(0, batch, chunk):
                    part = {k: v[start : start + chunk] for k, v in p.items()}
                    y = _augment_view(x[start : start + chunk], part, vp, self.size)
                    out[start : start + chunk].copy_(self._finish(y))
                views.append(out)
            params.append(p)
        self.last_params = (params[0], params[1])
        if unbatched and self.keepdim:
            views = [v.squeeze(0) for v in views]
        if return_params:
            return (views[0], views[1]), self.last_params
        return views[0], views[1]
