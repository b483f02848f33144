"""``simclr-fast train``: flags, their checks, and the hand-off to :func:`simclr_fast.train.loop.train`.

Flag values are checked here (argparse exits with status 2 and a message naming the flag); paths
and datasets are checked when the run starts (exit status 2 with a one-line message, no traceback).
Defaults left as ``None`` are filled per dataset by :func:`simclr_fast.train.config.resolve`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from simclr_fast.train import checkpoint as ckpt_io
from simclr_fast.train.config import (
    AUGMENTS,
    BACKBONES,
    DATASETS,
    LOSS_BACKENDS,
    OPTIMIZERS,
    PRECISIONS,
    TrainConfig,
    TrainingError,
    resolve,
    resume_config,
)


def _number(kind: type, low: float, inclusive: bool = True, what: str = "") -> callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if value < low or (not inclusive and value == low):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}{what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _temperature(text: str) -> float:
    value = _number(float, 0.0, inclusive=False)(text)
    if value < 1e-3 or value > 100:
        raise argparse.ArgumentTypeError(
            f"must be in [0.001, 100] (SimCLR uses 0.1-1.0), got {text}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` flags to ``parser``."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="digits (embedded in scikit-learn; default), cifar10 (python-pickle dir), imagefolder",
    )
    d.add_argument(
        "--data-dir",
        default=None,
        help="cifar10: the cifar-10-batches-py directory; imagefolder: a directory of class sub-folders",
    )
    d.add_argument(
        "--image-size",
        type=_number(int, 4),
        default=None,
        help="training resolution (default: digits 8, cifar10 32, imagefolder 224)",
    )
    d.add_argument(
        "--augment",
        choices=AUGMENTS,
        default=None,
        help="augmentation recipe of simclr_fast.augment (default: digits / simclr-cifar / simclr-imagenet)",
    )
    d.add_argument(
        "--num-workers",
        type=_number(int, 0),
        default=2,
        help="loader processes (image folders only)",
    )

    m = parser.add_argument_group("model")
    m.add_argument(
        "--backbone",
        choices=BACKBONES,
        default=None,
        help="default: small-cnn for digits, resnet18 otherwise",
    )
    m.add_argument(
        "--proj-dim", type=_number(int, 1), default=128, help="projection head output size"
    )

    o = parser.add_argument_group("optimization")
    o.add_argument(
        "--batch-size",
        type=_number(int, 2),
        default=256,
        help="global batch (images per step over all processes; each view counts once)",
    )
    o.add_argument(
        "--micro-batch",
        type=_number(int, 1),
        default=None,
        metavar="M",
        help="cached-gradient step: embed M images (both views) at a time, so memory does not grow "
        "with --batch-size (M per process under torchrun); BatchNorm then normalizes micro-batches "
        "of M images (default: the plain step, the whole batch at once)",
    )
    o.add_argument(
        "--epochs",
        type=_number(int, 1),
        default=None,
        help="epochs (default 100); with --time-budget, an upper bound",
    )
    o.add_argument(
        "--time-budget",
        type=_number(float, 0.0, inclusive=False),
        default=None,
        help="stop after this many seconds of training; the cosine schedule runs over the budget",
    )
    o.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="default: adam for digits, lars otherwise",
    )
    o.add_argument(
        "--lr",
        type=_number(float, 0.0, inclusive=False),
        default=None,
        help="peak learning rate (default: adam 1e-3; lars 0.3*batch/256; sgd 0.06*batch/256; adamw 1e-3)",
    )
    o.add_argument(
        "--weight-decay",
        type=_number(float, 0.0),
        default=None,
        help="default: 1e-6 for lars/sgd/adam, 1e-4 for adamw",
    )
    o.add_argument(
        "--warmup-epochs",
        type=_number(float, 0.0),
        default=None,
        help="linear warm-up epochs before the cosine decay (default: digits 0, others 10)",
    )
    o.add_argument(
        "--temperature",
        type=_temperature,
        default=None,
        help="NT-Xent temperature (default: digits 1.0, others 0.5)",
    )
    o.add_argument(
        "--loss",
        choices=("ntxent", "supcon"),
        default="ntxent",
        help="ntxent: SimCLR (default); supcon: supervised contrastive, the training labels give "
        "the positives (simclr_fast.SupConLoss)",
    )
    o.add_argument(
        "--loss-backend",
        choices=LOSS_BACKENDS,
        default="auto",
        help="NT-Xent implementation (reference = naive, for comparison)",
    )
    o.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: autocast the encoder (loss sums stay fp32)",
    )
    o.add_argument(
        "--channels-last", action="store_true", help="NHWC memory format (faster convs on GPUs)"
    )
    o.add_argument("--seed", type=_number(int, 0), default=0)

    e = parser.add_argument_group("evaluation and output")
    e.add_argument(
        "--knn-every",
        type=_number(int, 0),
        default=10,
        help="kNN monitor every N epochs (0: only at the end)",
    )
    e.add_argument(
        "--knn-k",
        type=_number(int, 1),
        default=None,
        help="kNN neighbours (default: digits 20, others 200)",
    )
    e.add_argument(
        "--knn-t", type=_number(float, 0.0, inclusive=False), default=0.1, help="kNN temperature"
    )
    e.add_argument(
        "--probe-draws",
        type=_number(int, 1),
        default=5,
        help="label draws per few-label probe budget",
    )
    e.add_argument("--no-probe", action="store_true", help="skip the final linear probes")
    e.add_argument(
        "--output-dir", default="runs/simclr", help="checkpoint, metrics.csv, plot and summary.json"
    )
    e.add_argument(
        "--checkpoint-every",
        type=_number(int, 0),
        default=10,
        help="save every N epochs (0: only at the end and on Ctrl-C)",
    )
    e.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue the run saved in DIR (or a checkpoint.pt): its settings, its directory, "
        "the remaining epochs; only flags that do not change what it computes may be given "
        "(e.g. --epochs to extend it)",
    )
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output-dir that already holds a checkpoint, replacing it",
    )
    e.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    e.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar: one line per epoch (also when the output is not a terminal)",
    )


def _given(args: argparse.Namespace) -> dict:
    """The flags the command line gave explicitly: ``args.explicit_options`` (set by
    :func:`simclr_fast.cli.main`), else the values that differ from the defaults."""
    fields = TrainConfig.__dataclass_fields__
    explicit = getattr(args, "explicit_options", None)
    if explicit is None:
        defaults = argparse.ArgumentParser()
        add_arguments(defaults)
        default = vars(defaults.parse_args([]))
        explicit = {k for k, v in vars(args).items() if k in default and v != default[k]}
    return {k: getattr(args, k) for k in explicit if k in fields}


def checkpoint_path(path: str | os.PathLike) -> Path:
    """``DIR/checkpoint.pt`` for a directory, ``path`` itself for a file."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, list[str], dict | None]:
    """The run's :class:`TrainConfig` for parsed flags, the notices to print, and (when resuming)
    the checkpoint's state.

    A new run gets the flags with the dataset's defaults filled in. A resumed run gets the
    configuration saved in its checkpoint, with the explicitly given flags applied where that is
    safe (:func:`simclr_fast.train.config.resume_config`).

    Raises:
        TrainingError: a missing or unreadable checkpoint, a flag a resumed run cannot change, or
            a new run into a directory that already holds a checkpoint (without ``--overwrite``).
    """
    given = _given(args)
    if args.resume:
        path = checkpoint_path(args.resume)
        try:
            state = ckpt_io.load(path)
        except (FileNotFoundError, ValueError) as exc:
            raise TrainingError(str(exc).splitlines()[0]) from None
        if not isinstance(state.get("config"), dict):
            raise TrainingError(f"--resume {path}: the checkpoint holds no run configuration")
        cfg, notices = resume_config(state["config"], given, str(path.parent))
        return resolve(cfg), notices, state
    fields = TrainConfig.__dataclass_fields__
    cfg = resolve(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    existing = Path(cfg.output_dir) / "checkpoint.pt"
    if existing.exists() and not cfg.overwrite:
        raise TrainingError(
            f"--output-dir {cfg.output_dir} already holds a run ({existing}). Continue it with "
            f"--resume {cfg.output_dir}, start over there with --overwrite (replaces it), or "
            "pick another --output-dir"
        )
    return cfg, [], None


def run(args: argparse.Namespace) -> int:
    """Run ``simclr-fast train``; returns the exit status (0 done, 2 bad input, 130 interrupted)."""
    from simclr_fast.train.loop import train

    try:
        cfg, notices, state = config_from_args(args)
        if state is not None:
            for notice in notices:
                print(f"resuming {cfg.output_dir}: {notice}")
            if is_finished(state, cfg):
                print(finished_message(state, cfg))
                return 0
        result = train(cfg)
    except TrainingError as exc:
        print(f"simclr-fast train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, while the first one's checkpoint was pending
        print("simclr-fast train: interrupted", file=sys.stderr)
        return 130
    return 130 if result.get("interrupted") else 0


def is_finished(state: dict, cfg: TrainConfig) -> bool:
    """Whether the checkpointed run has nothing left to do under ``cfg``: it ended (its epochs,
    or its time budget) and ``cfg.epochs`` does not extend it."""
    if state.get("finished") is None:  # checkpoints written before the flag existed
        ended = state["step"] == 0 and state["epoch"] >= state["config"].get("epochs", 0)
    else:
        ended = bool(state["finished"])
    if not ended:
        return False
    if cfg.time_budget:  # a budget run ends with its budget; more epochs do not restart it
        return True
    return state["epoch"] >= cfg.epochs


def finished_message(state: dict, cfg: TrainConfig) -> str:
    done = state["epoch"] if state["step"] == 0 else state["epoch"] + 1
    how = (
        f"its {cfg.time_budget:g} s time budget is used up"
        if cfg.time_budget
        else f"{done} of {cfg.epochs} epochs done; to train longer: "
        f"simclr-fast train --resume {cfg.output_dir} --epochs N (N > {done})"
    )
    return f"{cfg.output_dir}: the run is finished ({how}); nothing changed"
