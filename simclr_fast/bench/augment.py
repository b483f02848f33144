"""``simclr-fast bench augment``: images per second of SimCLRAugment against a per-image pipeline.

Two configurations (DESIGN.md §5): ``simclr-cifar`` at 32 px, batch 512, and ``simclr-imagenet`` at
224 px, batch 64. "Images per second" counts source images, each giving two views. The baseline
is the per-image pipeline most PyTorch SimCLR code runs in its DataLoader workers, with the same
recipe, in ``--workers`` processes (default 2, the cores of the dev box):

* torchvision.transforms.v2 on PIL images when torchvision imports;
* otherwise a per-image PIL implementation of the same recipe (``PIL.Image.resize`` with a crop
  box, bicubic; ``ImageEnhance`` brightness/contrast/colour; hue through PIL's HSV mode;
  ``ImageFilter.GaussianBlur``), and the output says so. PIL's blur is its box approximation of
  a Gaussian (not truncated to 23 taps) and its resize is antialiased: same recipe, PIL's ops.

Inputs are random uint8 images of ``--input-size`` (default: the output size), already decoded:
decoding is the same for both and is not measured. Times are medians over ``--repeats`` runs after
one warm-up; the spread (min–max) is printed next to them.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import time

import torch

CONFIGS = {
    # name: (recipe, output size, batch)
    "cifar": ("simclr-cifar", 32, 512),
    "imagenet": ("simclr-imagenet", 224, 64),
}

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this benchmark's options on ``parser``."""
    parser.add_argument(
        "--configs",
        default="cifar,imagenet",
        help="comma-separated subset of: "
        + ", ".join(f"{k} ({v[0]}, {v[1]} px, batch {v[2]})" for k, v in CONFIGS.items()),
    )
    parser.add_argument(
        "--device", default="cpu", help="device for SimCLRAugment (cpu, cuda, cuda:1)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="override the batch size of every config"
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="input image side (default: output size)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per measurement (median)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32", help="output dtype")
    parser.add_argument("--channels-last", action="store_true", help="channels_last output")
    parser.add_argument("--workers", type=int, default=2, help="baseline worker processes")
    parser.add_argument(
        "--baseline-images",
        type=int,
        default=None,
        help="images per baseline run (default: 2 batches' worth)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="time SimCLRAugment only")
    parser.add_argument("--json", default=None, help="write the results as JSON rows to this path")


# ----------------------------------------------------------------------------- our pipeline


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_simclr_augment(recipe, size, batch, input_size, device, repeats, dtype, channels_last):
    """Seconds per batch (two views) of SimCLRAugment: (median, min, max) over ``repeats``."""
    from simclr_fast.augment import SimCLRAugment

    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(
        0, 256, (batch, 3, input_size, input_size), dtype=torch.uint8, device=device, generator=gen
    )
    aug = SimCLRAugment(
        recipe,
        size=size,
        dtype=dtype,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        generator=gen,
    )
    aug(images)  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        aug(images)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


# ---------------------------------------------------------------------------- the baseline


def _torchvision_available() -> bool:
    try:
        import torchvision.transforms.v2  # noqa: F401
    except Exception:
        return False
    return True


def _torchvision_pipeline(recipe: str, size: int):
    from torchvision.transforms import v2

    from simclr_fast.augment import recipe_params

    vp = recipe_params(recipe)[1][0]
    ops = [
        v2.RandomResizedCrop(
            size,
            scale=vp.crop_scale,
            ratio=vp.crop_ratio,
            interpolation=v2.InterpolationMode.BICUBIC,
        ),
        v2.RandomHorizontalFlip(vp.flip_p),
        v2.RandomApply(
            [v2.ColorJitter(vp.brightness, vp.contrast, vp.saturation, vp.hue)], p=vp.jitter_p
        ),
        v2.RandomGrayscale(vp.grayscale_p),
    ]
    if vp.blur_p > 0:
        k = 2 * (size // 10 // 2) + 1
        ops.append(v2.RandomApply([v2.GaussianBlur(k, vp.blur_sigma)], p=vp.blur_p))
    ops.append(v2.PILToTensor())
    return v2.Compose(ops)


def _pil_crop_box(width, height, scale, ratio, rng):
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = math.sqrt(target * r), math.sqrt(target / r)
        if w <= width and h <= height:
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (x0, y0, x0 + w, y0 + h)
    return (0, 0, width, height)


def _pil_hue(img, shift):
    from PIL import Image

    h, s, v = img.convert("HSV").split()
    delta = int(round(shift * 255))
    h = h.point(lambda p: (p + delta) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def _pil_view(img, vp, size, rng):
    """One view, per image, with PIL: the recipe of ``vp`` (a ViewParams)."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter

    box = _pil_crop_box(img.width, img.height, vp.crop_scale, vp.crop_ratio, rng)
    img = img.resize((size, size), Image.BICUBIC, box=box)
    if rng.random() < vp.flip_p:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < vp.jitter_p:
        order = [0, 1, 2, 3]
        rng.shuffle(order)
        for op in order:
            if op == 0:
                f = rng.uniform(max(0.0, 1 - vp.brightness), 1 + vp.brightness)
                img = ImageEnhance.Brightness(img).enhance(f)
            elif op == 1:
                f = rng.uniform(max(0.0, 1 - vp.contrast), 1 + vp.contrast)
                img = ImageEnhance.Contrast(img).enhance(f)
            elif op == 2:
                f = rng.uniform(max(0.0, 1 - vp.saturation), 1 + vp.saturation)
                img = ImageEnhance.Color(img).enhance(f)
            else:
                img = _pil_hue(img, rng.uniform(-vp.hue, vp.hue))
    if rng.random() < vp.grayscale_p:
        img = img.convert("L").convert("RGB")
    if rng.random() < vp.blur_p:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*vp.blur_sigma)))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


_WORKER: dict = {}


def _worker_init(recipe, size, input_size, n_images, use_torchvision, seed):
    import numpy as np
    from PIL import Image

    from simclr_fast.augment import recipe_params

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    _WORKER["images"] = [
        Image.fromarray(rng.integers(0, 256, (input_size, input_size, 3), dtype=np.uint8))
        for _ in range(n_images)
    ]
    _WORKER["views"] = recipe_params(recipe)[1]
    _WORKER["size"] = size
    _WORKER["rng"] = random.Random(seed)
    _WORKER["tv"] = _torchvision_pipeline(recipe, size) if use_torchvision else None


def _worker_run(count: int) -> int:
    images, size, rng, tv = _WORKER["images"], _WORKER["size"], _WORKER["rng"], _WORKER["tv"]
    for i in range(count):
        img = images[i % len(images)]
        if tv is not None:
            tv(img), tv(img)
        else:
            for vp in _WORKER["views"]:
                _pil_view(img, vp, size, rng)
    return count


def time_per_image_baseline(recipe, size, input_size, n_images, workers, repeats):
    """Seconds per image (two views) of the per-image pipeline in ``workers`` processes."""
    use_tv = _torchvision_available()
    per_worker = max(1, n_images // workers)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(
        workers, initializer=_worker_init, initargs=(recipe, size, input_size, 16, use_tv, 0)
    ) as pool:
        pool.map(_worker_run, [max(1, per_worker // 4)] * workers)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pool.map(_worker_run, [per_worker] * workers)
            times.append((time.perf_counter() - start) / (per_worker * workers))
    name = (
        "torchvision.transforms.v2 (PIL)" if use_tv else "per-image PIL (torchvision not installed)"
    )
    return (statistics.median(times), min(times), max(times)), name


# -------------------------------------------------------------------------------------- run


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
    except Exception:
        return None
    return out.stdout.strip() or None


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table (and write JSON rows); return the exit code."""
    import kornia

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    meta = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kornia": kornia.__version__,
        "commit": _git_commit(),
    }
    print(
        f"# SimCLRAugment vs per-image pipeline; device={device} ({meta['device']}), "
        f"torch {meta['torch']}, kornia {meta['kornia']}, {meta['torch_threads']} torch threads, "
        f"baseline {args.workers} worker processes"
    )
    rows = []
    for name in names:
        recipe, size, batch = CONFIGS[name]
        batch = args.batch or batch
        input_size = args.input_size or size
        ours = time_simclr_augment(
            recipe,
            size,
            batch,
            input_size,
            device,
            args.repeats,
            _DTYPES[args.dtype],
            args.channels_last,
        )
        ours_rate = batch / ours[0]
        row = {
            "config": name,
            "recipe": recipe,
            "size": size,
            "input_size": input_size,
            "batch": batch,
            "ours_img_per_s": ours_rate,
            "ours_img_per_s_range": [batch / ours[2], batch / ours[1]],
            **meta,
        }
        line = (
            f"{name:9s} {recipe:16s} {size:4d}px batch {batch:4d}: SimCLRAugment {ours_rate:9.0f} img/s "
            f"[{batch / ours[2]:.0f}-{batch / ours[1]:.0f}]"
        )
        if not args.no_baseline:
            n_images = args.baseline_images or 2 * batch
            base, base_name = time_per_image_baseline(
                recipe, size, input_size, n_images, args.workers, args.repeats
            )
            base_rate = 1.0 / base[0]
            row.update(
                baseline=base_name,
                baseline_workers=args.workers,
                baseline_img_per_s=base_rate,
                baseline_img_per_s_range=[1.0 / base[2], 1.0 / base[1]],
                speedup=ours_rate / base_rate,
            )
            line += (
                f" | {base_name}, {args.workers} procs {base_rate:7.0f} img/s "
                f"[{1.0 / base[2]:.0f}-{1.0 / base[1]:.0f}] | speed-up {ours_rate / base_rate:.2f}x"
            )
        print(line, flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m simclr_fast.bench.augment", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
