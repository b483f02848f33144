"""The reference SimCLR loop: raw uint8 batches -> device-side augmentation -> encoder -> projection
head -> fused NT-Xent, with the schedule, monitors, checkpoints and artefacts of ``simclr-fast train``.

Determinism: every random draw of training comes from generators re-seeded from
``(seed, epoch, step, rank)`` (batch order from ``(seed, epoch)``), so a run is fixed by its seed,
whatever the loss backend, and a checkpoint's ``(epoch, step)`` is all a resumed run needs to draw
the same batches and augmentations as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from simclr_fast.augment import SimCLRAugment
from simclr_fast.loss import NTXentLoss
from simclr_fast.supcon import SupConLoss
from simclr_fast.train import checkpoint as ckpt_io
from simclr_fast.train.config import TrainConfig, TrainingError
from simclr_fast.train.evaluate import PROBE_BUDGETS, extract_features, knn_accuracy, linear_probe
from simclr_fast.train.lars import LARS, param_groups
from simclr_fast.train.models import SimCLRModel, build_backbone
from simclr_fast.train.precision import warn_if_slow_bf16
from simclr_fast.train.sources import (
    Data,
    epoch_permutation,
    eval_batches,
    load_data,
    make_preprocess,
    raw_pixels,
    train_batches,
)
from simclr_fast.train.step import train_step
from simclr_fast.train.supervised import batch_labels, two_view_loss

#: what a run writes into its --output-dir (--overwrite removes them first).
ARTEFACTS = ("checkpoint.pt", "metrics.csv", "loss_knn.png", "summary.json")

CSV_FIELDS = (
    "epoch",
    "step",
    "loss",
    "lr",
    "images_per_s",
    "epoch_seconds",
    "train_seconds",
    "knn",
)


# ---------------------------------------------------------------------------------------------
# processes and devices


class Dist:
    """Rank, world size and device of this process (a single process when not under torchrun)."""

    def __init__(self, device: str | None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise TrainingError(
                    f"--device {device}: CUDA is not available here; use --device cpu"
                )
            if dev.index is None:
                dev = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)
        self.device = dev
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, *values: float) -> list[float]:
        """The element-wise max of ``values`` over all ranks (one small all_reduce)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (SplitMix64-style), so nearby (epoch, step) pairs decorrelate."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# augmentation (simclr_fast.augment)


def build_augment(cfg: TrainConfig, memory_format: torch.memory_format) -> SimCLRAugment:
    """The recipe ``cfg.augment`` at ``cfg.image_size``; views come in fp32 (autocast casts them)."""
    try:
        return SimCLRAugment(cfg.augment, size=cfg.image_size, memory_format=memory_format)
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"--augment {cfg.augment}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# optimizer and schedule


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """LARS / SGD / AdamW / Adam; BN and bias parameters get no weight decay (and no LARS scaling)."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS(
            groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, trust_coefficient=0.001
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        # torch.optim.Adam's weight_decay is an L2 term added to the gradient, like SGD's.
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise TrainingError(f"--optimizer must be one of lars, sgd, adamw, adam; got {cfg.optimizer!r}")


class WarmupCosine:
    """Per-step learning rate: linear warm-up to the peak, then cosine decay to 0.

    The decay runs over the remaining steps, or, with a time budget, over the remaining seconds
    (``progress`` passed to :meth:`step`). Its state is the step count, saved in checkpoints.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, peak_lr: float, warmup_steps: int, total_steps: int
    ) -> None:
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.steps = 0
        self.set_lr(self.lr_at(0, None))

    def lr_at(self, step: int, progress: float | None) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if progress is None:
            progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak_lr * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, progress: float | None = None) -> None:
        """Advance one optimizer step and set the learning rate of the next one."""
        self.steps += 1
        self.set_lr(self.lr_at(self.steps, progress))

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.set_lr(state["lr"])


# ---------------------------------------------------------------------------------------------
# artefacts


def write_csv(path: Path, rows: list[dict]) -> None:
    """(Re)write the metrics CSV from the run's history (used at start and on resume)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def append_csv(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)


def plot_history(path: Path, rows: list[dict]) -> None:
    """Loss and kNN accuracy per epoch, as a PNG (matplotlib, Agg backend: no display needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'simclr-fast[train]')")
        return

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [r["epoch"] for r in rows],
        [r["loss"] for r in rows],
        color="tab:blue",
        label="NT-Xent loss",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    knn = [(r["epoch"], r["knn"]) for r in rows if r["knn"] not in ("", None)]
    if knn:
        ax2 = ax.twinx()
        ax2.plot(*zip(*knn), "o-", color="tab:orange", label="kNN accuracy")
        ax2.set_ylabel("kNN accuracy (held-out)", color="tab:orange")
    ax.set_title("simclr-fast train")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def format_epoch(row: dict, epochs: int | None) -> str:
    """The per-epoch log line: loss, learning rate, images/s, epoch time, kNN when computed."""
    epoch = row["epoch"]
    where = f"{epoch:g}" if float(epoch).is_integer() else f"{epoch:.2f} (stopped)"
    line = (
        f"epoch {where}{f'/{epochs}' if epochs else ''}  loss {row['loss']:.4f}  "
        f"lr {row['lr']:.2e}  {row['images_per_s']:.0f} images/s  {row['epoch_seconds']:.2f} s"
    )
    if row["knn"] not in ("", None):
        line += f"  kNN {row['knn']:.3f}"
    return line


def format_summary(summary: dict) -> str:
    """The final table: linear-probe accuracy per label budget for each feature set."""
    rows = [
        (
            "SupCon encoder" if summary["config"].get("loss") == "supcon" else "SimCLR encoder",
            "linear_probe",
        ),
        ("random-init encoder", "random_init"),
        ("raw pixels", "raw_pixels"),
    ]
    head = f"{'features':<22}" + "".join(
        f"{(b + ' /class') if b != 'all' else 'all labels':>12}" for b in PROBE_BUDGETS
    )
    lines = []
    if any(key in summary for _, key in rows):
        lines += ["linear probe accuracy (held-out split)", head]
    for name, key in rows:
        if key in summary:
            lines.append(
                f"{name:<22}" + "".join(f"{summary[key][b]:>12.3f}" for b in PROBE_BUDGETS)
            )
    if summary.get("knn") is not None:
        lines.append(f"kNN monitor (k={summary['config']['knn_k']}): {summary['knn']:.3f}")
    lines.append(
        f"train {summary['train_seconds']:.1f} s over {summary['epochs_done']:g} epochs "
        f"({summary['epoch_seconds']:.3f} s/epoch, {summary['images_per_s']:.0f} images/s)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Ctrl-C


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step (it then saves a
    checkpoint and exits); a second one interrupts at once. Handlers are restored on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # signal handlers only install in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train SimCLR as ``cfg`` says; returns the summary (also written to ``summary.json``).

    Args:
        cfg: the run's settings (:func:`simclr_fast.train.cli.config_from_args` builds them from
            flags, and from the checkpoint when resuming).
        state: the checkpoint ``cfg.resume`` names, when the caller has loaded it already.

    Raises:
        TrainingError: bad paths, malformed datasets or flags that do not fit the data.
    """
    d = Dist(cfg.device)
    try:
        return _train(cfg, d, state)
    finally:
        d.close()


def _build_model(cfg: TrainConfig, in_channels: int) -> SimCLRModel:
    torch.manual_seed(cfg.seed)  # the same initial weights for the run and its random-init baseline
    return SimCLRModel(build_backbone(cfg.backbone, in_channels, cfg.image_size), cfg.proj_dim)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_loss_backend(cfg: TrainConfig, device: torch.device) -> None:
    from simclr_fast import backends

    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    try:
        backends.resolve(cfg.loss_backend, device, dtype)
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"--loss-backend {cfg.loss_backend}: {exc}") from None


def _train(cfg: TrainConfig, d: Dist, state: dict[str, Any] | None = None) -> dict[str, Any]:
    device = d.device
    out_dir = Path(cfg.output_dir)
    if d.main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainingError(
                f"--output-dir {out_dir}: cannot create it ({exc.strerror})"
            ) from None
        if cfg.overwrite and not cfg.resume:  # the previous run's artefacts go first
            for name in ARTEFACTS:
                (out_dir / name).unlink(missing_ok=True)
    if cfg.batch_size % d.world:
        raise TrainingError(
            f"--batch-size {cfg.batch_size} must be divisible by the {d.world} processes"
        )
    _check_loss_backend(cfg, device)
    if d.main:
        warn_if_slow_bf16(cfg.precision, device)
    seed_everything(cfg.seed)

    data = load_data(cfg)
    n_train = len(data.train)
    if n_train < cfg.batch_size:
        raise TrainingError(
            f"--batch-size {cfg.batch_size} is larger than the {n_train} training images; use at most {n_train}"
        )
    steps_per_epoch = n_train // cfg.batch_size  # the last partial batch is dropped
    in_channels = data.in_channels

    model = _build_model(cfg, in_channels)
    if d.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(cfg, model)
    sched = WarmupCosine(
        optimizer, cfg.lr, round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch
    )
    loss_fn = NTXentLoss(cfg.temperature, gather_distributed=d.enabled, backend=cfg.loss_backend)
    if cfg.loss == "supcon":  # supervised: the images' labels give the positives
        loss_fn = SupConLoss(
            cfg.temperature, gather_distributed=d.enabled, backend=cfg.loss_backend
        )

    start_epoch, start_step, history, train_seconds, train_cpu_seconds = 0, 0, [], 0.0, 0.0
    if cfg.resume:
        path = Path(cfg.resume)
        path = path / "checkpoint.pt" if path.is_dir() else path
        try:
            if state is None:
                state = ckpt_io.load(path)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
            raise TrainingError(str(exc).splitlines()[0]) from None
        saved_steps = state.get("steps_per_epoch", steps_per_epoch)
        if saved_steps != steps_per_epoch or state["step"] >= steps_per_epoch:
            raise TrainingError(
                f"--resume {path}: the run had {saved_steps} steps per epoch, the data now gives "
                f"{steps_per_epoch} ({n_train} training images at batch {cfg.batch_size}): the "
                "dataset changed; resume with the data the run was started with"
            )
        sched.load_state_dict(state["scheduler"])
        start_epoch, start_step = state["epoch"], state["step"]
        if cfg.epochs < start_epoch or (cfg.epochs == start_epoch and start_step > 0):
            raise TrainingError(
                f"--epochs {cfg.epochs}: the run in {out_dir} has trained past epoch "
                f"{start_epoch}; give --epochs {start_epoch + 1} or more to extend it"
            )
        history, train_seconds = state["history"], state["train_seconds"]
        train_cpu_seconds = state.get("train_cpu_seconds", 0.0)
        ckpt_io.set_rng_state(state["rng"], {})
        ckpt_io.set_loss_state(loss_fn, state.get("loss"))

    device_images = data.train.images.to(device) if data.train.images is not None else None
    aug_gen = torch.Generator(device=device)
    augment = build_augment(cfg, memory_format)
    preprocess = make_preprocess(cfg.image_size)

    def save(epoch: int, step: int, finished: bool = False) -> None:
        if d.main:
            ckpt_io.save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    # a finished run resumed without a longer --epochs changes nothing
                    "finished": finished,
                    "steps_per_epoch": steps_per_epoch,
                    "history": history,
                    "train_seconds": train_seconds,
                    "train_cpu_seconds": train_cpu_seconds,
                    "rng": ckpt_io.rng_state({}),
                    "loss": ckpt_io.loss_state(loss_fn),
                    "config": cfg.to_dict(),
                },
                out_dir / "checkpoint.pt",
            )

    def knn() -> float:
        model.eval()
        ftr, fte = (
            extract_features(
                model.features, eval_batches(split, 512, cfg.num_workers), preprocess, device
            )
            for split in (data.train, data.test)
        )
        model.train()
        return knn_accuracy(
            ftr, data.train.labels, fte, data.test.labels, cfg.knn_k, cfg.knn_t, data.num_classes
        )

    csv_path = out_dir / "metrics.csv"
    if d.main:
        write_csv(csv_path, history)
    # A progress bar only on a terminal; otherwise (and with --no-progress) one line per epoch.
    bar = None
    if d.main and not cfg.no_progress and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:  # the bar is optional (pip install ".[train]")
            tqdm = None
        if tqdm is not None:
            total = None if cfg.time_budget else cfg.epochs * steps_per_epoch
            bar = tqdm(total=total, initial=sched.steps, unit="step", dynamic_ncols=True)

    def log(line: str) -> None:
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)

    interrupted, out_of_time = False, False
    last_knn = None
    epoch = start_epoch
    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            perm = epoch_permutation(n_train, _seed(cfg.seed, epoch))
            first = start_step if epoch == start_epoch else 0
            batches = train_batches(
                data.train,
                device_images,
                perm,
                first,
                steps_per_epoch,
                cfg.batch_size,
                d.rank,
                d.world,
                device,
                cfg.num_workers,
            )
            loss_sum, steps_done = torch.zeros((), device=device), 0
            t_epoch, cpu_epoch = time.perf_counter(), time.process_time()
            step = first
            for step, x in enumerate(batches, start=first):
                aug_gen.manual_seed(_seed(cfg.seed, epoch, step, d.rank))
                view0, view1 = augment(x, generator=aug_gen)
                step_loss = loss_fn
                if cfg.loss == "supcon":
                    labels = batch_labels(
                        data.train.labels, perm, step, cfg.batch_size, d.rank, d.world, device
                    )
                    step_loss = two_view_loss(loss_fn, labels)
                loss = train_step(
                    net,
                    (view0, view1),
                    step_loss,
                    optimizer,
                    micro_batch=cfg.micro_batch,
                    autocast=lambda: _autocast(cfg, device),
                    memory_format=memory_format,
                )
                steps_done += 1
                loss_sum += loss.detach()
                elapsed = train_seconds + time.perf_counter() - t_epoch
                elapsed, stop_flag = d.agree(elapsed, float(stop.requested))
                sched.step(elapsed / cfg.time_budget if cfg.time_budget else None)
                if bar is not None:
                    bar.update(1)
                    if step % 5 == 0 or step == steps_per_epoch - 1:
                        bar.set_description(
                            f"epoch {epoch + 1}/{cfg.epochs}"
                            if not cfg.time_budget
                            else f"epoch {epoch + 1}"
                        )
                        rate = (
                            steps_done * cfg.batch_size / max(time.perf_counter() - t_epoch, 1e-9)
                        )
                        bar.set_postfix(
                            loss=f"{loss.item():.4f}", lr=f"{sched.lr:.2e}", img_s=f"{rate:.0f}"
                        )
                if stop_flag:
                    interrupted = True
                    break
                if cfg.time_budget and elapsed >= cfg.time_budget:
                    out_of_time = True
                    break
            seconds = time.perf_counter() - t_epoch
            train_seconds += seconds
            train_cpu_seconds += time.process_time() - cpu_epoch
            if steps_done == 0:
                break
            if d.enabled:  # log the mean over all ranks' rows, not rank 0's alone
                dist.all_reduce(loss_sum)
                loss_sum /= d.world
            done_epoch = step + 1 == steps_per_epoch
            resume_at = (epoch + 1, 0) if done_epoch else (epoch, step + 1)
            row = {
                "epoch": epoch + 1 if done_epoch else epoch + (step + 1) / steps_per_epoch,
                "step": sched.steps,
                "loss": float(loss_sum) / steps_done,
                "lr": sched.lr,
                "images_per_s": steps_done * cfg.batch_size / seconds,
                "epoch_seconds": seconds,
                "train_seconds": train_seconds,
                "knn": "",
            }
            last = epoch + 1 == cfg.epochs or out_of_time
            if (
                d.main
                and not interrupted
                and ((cfg.knn_every and (epoch + 1) % cfg.knn_every == 0) or last)
            ):
                last_knn = row["knn"] = knn()
            if d.main:
                log(format_epoch(row, cfg.epochs if not cfg.time_budget else None))
            history.append(row)
            if d.main:
                append_csv(csv_path, row)
            if (
                interrupted
                or last
                or (cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0)
            ):
                save(*resume_at, finished=last and not interrupted)
            if interrupted:
                break
            if out_of_time:
                break
    if bar is not None:
        bar.close()
    if start_epoch >= cfg.epochs and not interrupted:
        # resumed at the very end of its epochs (stopped after the last step): evaluate, mark done
        if d.main:
            last_knn = knn()
        save(start_epoch, 0, finished=True)

    epochs_done = history[-1]["epoch"] if history else 0  # fractional after a stop mid-epoch
    timed = [
        r for r in history if r["epoch_seconds"] > 0 and float(r["epoch"]).is_integer()
    ] or history
    summary: dict[str, Any] = {
        "train_seconds": train_seconds,
        # CPU time of this process over the training steps (all its threads): on a shared
        # machine, a measure of the work that does not depend on the other jobs
        "train_cpu_seconds": train_cpu_seconds,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "epochs_done": epochs_done,
        "steps": sched.steps,
        "epoch_seconds": float(np.median([r["epoch_seconds"] for r in timed])) if timed else 0.0,
        "images_per_s": float(np.median([r["images_per_s"] for r in timed])) if timed else 0.0,
        "final_loss": history[-1]["loss"] if history else None,
        "knn": last_knn,
        "interrupted": interrupted,
        "world_size": d.world,
        "device": str(device),
        "config": cfg.to_dict(),
    }
    if interrupted:
        if d.main:
            print(
                f"interrupted: checkpoint saved to {out_dir / 'checkpoint.pt'}; continue with: "
                f"simclr-fast train --resume {out_dir}",
                flush=True,
            )
        return summary
    if not d.main:
        return summary

    if history:
        plot_history(out_dir / "loss_knn.png", history)
    if not cfg.no_probe:
        try:
            summary.update(_probes(cfg, data, model, in_channels, preprocess, device))
        except ImportError as exc:  # scikit-learn is optional for CIFAR-10 / image folders
            print(f"no linear probe: {exc} (pip install 'simclr-fast[train]')")
            cfg = dataclasses.replace(cfg, no_probe=True)
    with open(out_dir / "summary.json.tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(out_dir / "summary.json.tmp", out_dir / "summary.json")
    print(format_summary(summary))
    print(f"artefacts in {out_dir}: {', '.join(ARTEFACTS)}")
    return summary


def _probes(
    cfg: TrainConfig, data: Data, model, in_channels, preprocess, device
) -> dict[str, dict[str, float]]:
    """Linear probes on our encoder, a randomly initialised one and the raw pixels."""
    ytr, yte = data.train.labels.numpy(), data.test.labels.numpy()

    def probe(encode) -> dict[str, float]:
        ftr, fte = (
            extract_features(
                encode, eval_batches(split, 512, cfg.num_workers), preprocess, device
            ).numpy()
            for split in (data.train, data.test)
        )
        return linear_probe(ftr, ytr, fte, yte, draws=cfg.probe_draws, seed=cfg.seed)

    model.eval()
    ours = probe(model.features)
    random_model = _build_model(cfg, in_channels).to(device).eval()
    rand = probe(random_model.features)
    raw_tr, raw_te = raw_pixels(data.train, cfg.num_workers), raw_pixels(data.test, cfg.num_workers)
    raw = linear_probe(raw_tr, ytr, raw_te, yte, draws=cfg.probe_draws, seed=cfg.seed)
    return {"linear_probe": ours, "random_init": rand, "raw_pixels": raw}
