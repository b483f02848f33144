"""``simclr-fast bench augment``: images per second of SimCLRAugment against a per-image pipeline.

Two configurations (docs/design.md §5): ``simclr-cifar`` at 32 px, batch 512, and ``simclr-imagenet`` at
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
one warm-up, our runs and the baseline's interleaved round by round (so a change in the load of a
shared machine hits both); the spread (min–max) is printed next to them. CPU time per image
(``time.process_time``: this process's threads for ours, the workers' sum for the baseline) is
reported too: on a loaded machine the scheduler gives two worker processes two shares of the CPU
and a one-thread process one share, so wall-clock ratios swing with the load; CPU time per image
does not (much), and ``2 / cpu_time`` is the rate an idle 2-core machine would reach if the work
split perfectly over both cores.

``--backend`` picks SimCLRAugment's path (``auto``: the fused C++ kernel on CPU for the views it
covers; ``torch``: the tensor ops; see simclr_fast/augment.py), so both can be compared with the
same baseline.

On a CPU shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``): with more
OpenMP threads than free cores, spinning threads wait on descheduled ones at every op (measured on
the 2-core dev box under load ≈ 9, 2026-11-22, tensor-op path: simclr-cifar 267 img/s with the
default policy, 1379 with ``PASSIVE``, 1483 with one thread).
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
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "cpu"),
        default="auto",
        help="SimCLRAugment backend: auto (the fused C++ kernel on CPU where it applies), "
        "torch (tensor ops), cpu (the fused kernel)",
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


def make_simclr_augment_runner(
    recipe, size, batch, input_size, device, dtype, channels_last, backend="auto"
):
    """A warmed-up callable that times one batch (two views) of SimCLRAugment, in seconds."""
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
        backend=backend,
    )
    aug(images)  # warm-up
    _sync(device)

    def once() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process, all threads) per batch."""
        start, cpu = time.perf_counter(), time.process_time()
        aug(images)
        _sync(device)
        return time.perf_counter() - start, time.process_time() - cpu

    return once


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


def _worker_run(count: int) -> float:
    """Process ``count`` images (two views each); return the CPU seconds this took."""
    cpu = time.process_time()
    images, size, rng, tv = _WORKER["images"], _WORKER["size"], _WORKER["rng"], _WORKER["tv"]
    for i in range(count):
        img = images[i % len(images)]
        if tv is not None:
            tv(img), tv(img)
        else:
            for vp in _WORKER["views"]:
                _pil_view(img, vp, size, rng)
    return time.process_time() - cpu


class PerImageBaseline:
    """The per-image pipeline in ``workers`` processes; ``once()`` times one round, per image.

    A context manager: the pool (and its decoded images) lives across rounds, so rounds can be
    interleaved with SimCLRAugment's and a change in the machine's load hits both alike.
    """

    def __init__(self, recipe, size, input_size, n_images, workers):
        self.use_torchvision = _torchvision_available()
        self.name = (
            "torchvision.transforms.v2 (PIL)"
            if self.use_torchvision
            else "per-image PIL (torchvision not installed)"
        )
        self.workers = workers
        self.per_worker = max(1, n_images // workers)
        # Never fork this process: it already runs torch's threads, and a fork taken while
        # another thread holds a lock can deadlock the child (a fresh-clone test run hung here).
        # forkserver forks the workers from a clean server process that has imported this module
        # (torch included) but started no threads; spawn where forkserver does not exist.
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
        else:
            ctx = mp.get_context("spawn")
        self.pool = ctx.Pool(
            workers,
            initializer=_worker_init,
            initargs=(recipe, size, input_size, 16, self.use_torchvision, 0),
        )

    def __enter__(self) -> PerImageBaseline:
        self.pool.map(_worker_run, [max(1, self.per_worker // 4)] * self.workers)  # warm-up
        return self

    def __exit__(self, *exc) -> None:
        self.pool.terminate()
        self.pool.join()

    def once(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds summed over the workers) per image."""
        start = time.perf_counter()
        cpu = sum(self.pool.map(_worker_run, [self.per_worker] * self.workers))
        n = self.per_worker * self.workers
        return (time.perf_counter() - start) / n, cpu / n


def _stats(times):
    return statistics.median(times), min(times), max(times)


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
        f"# SimCLRAugment (backend={args.backend}) vs per-image pipeline; "
        f"device={device} ({meta['device']}), "
        f"torch {meta['torch']}, kornia {meta['kornia']}, {meta['torch_threads']} torch threads, "
        f"baseline {args.workers} worker processes"
    )
    rows = []
    for name in names:
        recipe, size, batch = CONFIGS[name]
        batch = args.batch or batch
        input_size = args.input_size or size
        ours_once = make_simclr_augment_runner(
            recipe,
            size,
            batch,
            input_size,
            device,
            _DTYPES[args.dtype],
            args.channels_last,
            args.backend,
        )
        ours_runs, base_runs = [], []
        if args.no_baseline:
            ours_runs = [ours_once() for _ in range(args.repeats)]
        else:
            n_images = args.baseline_images or 2 * batch
            with PerImageBaseline(recipe, size, input_size, n_images, args.workers) as baseline:
                for _ in range(args.repeats):  # interleaved rounds
                    ours_runs.append(ours_once())
                    base_runs.append(baseline.once())
            base_name = baseline.name
        ours = _stats([r[0] for r in ours_runs])
        ours_cpu = statistics.median(r[1] for r in ours_runs) / batch  # CPU s per image
        ours_rate = batch / ours[0]
        row = {
            "config": name,
            "recipe": recipe,
            "size": size,
            "input_size": input_size,
            "batch": batch,
            "repeats": args.repeats,
            "backend": args.backend,
            "ours_img_per_s": ours_rate,
            "ours_img_per_s_range": [batch / ours[2], batch / ours[1]],
            "ours_cpu_s_per_img": ours_cpu,
            **meta,
        }
        line = (
            f"{name:9s} {recipe:16s} {size:4d}px batch {batch:4d}: SimCLRAugment "
            f"{ours_rate:7.0f} img/s [{batch / ours[2]:.0f}-{batch / ours[1]:.0f}]"
        )
        line += f" ({1e3 * ours_cpu:.2f} CPU-ms/img)"
        if base_runs:
            base = _stats([r[0] for r in base_runs])
            base_cpu = statistics.median(r[1] for r in base_runs)
            base_rate = 1.0 / base[0]
            row.update(
                baseline_cpu_s_per_img=base_cpu,
                cpu_speedup=base_cpu / ours_cpu,
                baseline=base_name,
                baseline_workers=args.workers,
                baseline_img_per_s=base_rate,
                baseline_img_per_s_range=[1.0 / base[2], 1.0 / base[1]],
                speedup=ours_rate / base_rate,
            )
            line += (
                f" | {base_name}, {args.workers} procs {base_rate:6.0f} img/s "
                f"[{1.0 / base[2]:.0f}-{1.0 / base[1]:.0f}] ({1e3 * base_cpu:.2f} CPU-ms/img) | "
                f"speed-up {ours_rate / base_rate:.2f}x wall, {base_cpu / ours_cpu:.2f}x CPU"
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
