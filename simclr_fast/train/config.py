"""The training configuration and its per-dataset defaults (docs/design.md §6)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from simclr_fast.train.models import BACKBONES

DATASETS = ("digits", "cifar10", "imagefolder")
AUGMENTS = ("digits", "simclr-cifar", "simclr-imagenet", "byol")
OPTIMIZERS = ("lars", "sgd", "adamw", "adam")
LOSS_BACKENDS = ("auto", "reference", "torch", "cpu", "triton")
PRECISIONS = ("fp32", "bf16")

__all__ = [
    "AUGMENTS",
    "BACKBONES",
    "DATASETS",
    "LOSS_BACKENDS",
    "OPTIMIZERS",
    "PRECISIONS",
    "TrainConfig",
    "TrainingError",
    "resolve",
    "resume_config",
]


class TrainingError(Exception):
    """A problem with the user's input found when the run starts (bad path, malformed dataset,
    incompatible flags). The CLI prints the message and exits with status 2."""


@dataclass
class TrainConfig:
    """Every setting of a run; ``None`` means "the dataset's default" (see :func:`resolve`)."""

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    augment: str | None = None
    num_workers: int = 2
    backbone: str | None = None
    proj_dim: int = 128
    batch_size: int = 256
    micro_batch: int | None = None
    epochs: int | None = None
    time_budget: float | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    temperature: float | None = None
    loss: str = "ntxent"
    loss_backend: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    seed: int = 0
    knn_every: int = 10
    knn_k: int | None = None
    knn_t: float = 0.1
    probe_draws: int = 5
    no_probe: bool = False
    output_dir: str = "runs/simclr"
    checkpoint_every: int = 10
    resume: str | None = None
    overwrite: bool = False
    device: str | None = None
    no_progress: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Digits defaults: docs/design.md §6 measured a small CNN on native 8x8 inputs with τ 1.0, batch 256,
# Adam 1e-3 and cosine decay at 0.991 / 0.978 / 0.970 / 0.928 (all / 10 / 5 / 1 labels per class)
# after 60 s, against 0.853 at 1 label/class with 16x16 inputs and τ 0.5. Epochs, measured with
# this loop, its SmallCNN and the "digits" recipe of simclr_fast.augment (issue #8, 2-core CPU
# shared with other jobs, load average ~10, one torch thread, linear probe averaged over 5 draws):
# 60 epochs 0.900 / 0.947 / 0.964 / 0.985 (1 / 5 / 10 / all labels per class, 57 s of CPU time),
# 100 epochs 0.907 / 0.954 / 0.968 / 0.983 (95 s of CPU time).
_DIGITS = dict(
    image_size=8,
    augment="digits",
    backbone="small-cnn",
    epochs=100,
    optimizer="adam",
    warmup_epochs=0.0,
    temperature=1.0,
    knn_k=20,
)
# CIFAR-10 / image folders: SimCLR's recipe (docs/design.md §6): LARS, 10 warm-up epochs, τ 0.5, kNN k 200.
_CIFAR = dict(
    image_size=32,
    augment="simclr-cifar",
    backbone="resnet18",
    epochs=100,
    optimizer="lars",
    warmup_epochs=10.0,
    temperature=0.5,
    knn_k=200,
)
_IMAGEFOLDER = dict(_CIFAR, image_size=224, augment="simclr-imagenet")
_DEFAULTS = {"digits": _DIGITS, "cifar10": _CIFAR, "imagefolder": _IMAGEFOLDER}


def default_lr(optimizer: str, batch_size: int) -> float:
    """Peak learning rate: LARS 0.3·B/256 (SimCLR), SGD 0.06·B/256 (not measured here), Adam(W) 1e-3."""
    return {"lars": 0.3 * batch_size / 256, "sgd": 0.06 * batch_size / 256}.get(optimizer, 1e-3)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the ``None`` fields of ``cfg`` with its dataset's defaults and check flag combinations.

    Raises:
        TrainingError: a dataset that needs ``--data-dir`` got none, or flags that do not combine.
    """
    if cfg.dataset not in _DEFAULTS:
        raise TrainingError(f"--dataset must be one of {DATASETS}, got {cfg.dataset!r}")
    out = dataclasses.replace(cfg)
    for key, value in _DEFAULTS[cfg.dataset].items():
        if getattr(out, key) is None:
            setattr(out, key, value)
    if out.lr is None:
        out.lr = default_lr(out.optimizer, out.batch_size)
    if out.weight_decay is None:
        out.weight_decay = 1e-4 if out.optimizer == "adamw" else 1e-6
    if out.dataset != "digits" and not out.data_dir:
        raise TrainingError(
            f"--dataset {out.dataset} needs --data-dir (the directory holding the images)"
        )
    if out.time_budget is not None and cfg.epochs is None:
        out.epochs = 1_000_000  # the budget decides when to stop
    return out


#: Settings a resumed run may change: they decide how long it runs, where it runs and how it is
#: observed, not what a step computes. ``--epochs`` extends (or shortens) the cosine schedule from
#: the saved step on; ``--loss-backend`` gives the same loss up to rounding (not bit-identical).
RESUME_CHANGEABLE = (
    "epochs",
    "loss_backend",
    "device",
    "num_workers",
    "knn_every",
    "knn_k",
    "knn_t",
    "probe_draws",
    "no_probe",
    "checkpoint_every",
    "no_progress",
)
#: Not settings of the run: where it lives and how this invocation started.
_RESUME_OWN = ("resume", "output_dir", "overwrite")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_config(saved: dict, given: dict, run_dir: str) -> tuple[TrainConfig, list[str]]:
    """The configuration of a resumed run: the saved one, with the explicitly given flags applied.

    Args:
        saved: the resolved configuration stored in the checkpoint (``TrainConfig.to_dict()``).
        given: the flags given on this command line (field name -> value), ``resume`` included.
        run_dir: the directory of the checkpoint: the resumed run writes there.

    Returns:
        The configuration, and one notice per setting that changed.

    Raises:
        TrainingError: a given flag would change a setting that fixes what the run computes
            (batch size, seed, temperature, model, data, optimizer ...), ``--output-dir`` names
            another directory, or ``--overwrite`` was combined with ``--resume``.
    """
    fields = TrainConfig.__dataclass_fields__
    base = {k: v for k, v in saved.items() if k in fields and k not in _RESUME_OWN}
    if given.get("overwrite"):
        raise TrainingError(
            "--overwrite starts a new run and does not combine with --resume; "
            f"drop --overwrite to continue the run in {run_dir}"
        )
    out = given.get("output_dir")
    if out is not None and os.path.abspath(out) != os.path.abspath(run_dir):
        raise TrainingError(
            f"--output-dir {out}: a resumed run stays in its own directory ({run_dir}); "
            "drop --output-dir, or start a new run there without --resume"
        )
    refused, notices = [], []
    for key, value in given.items():
        if key in _RESUME_OWN or key not in fields or base.get(key) == value:
            continue
        if key not in RESUME_CHANGEABLE:
            refused.append(f"{_flag(key)} {value} (the run has {base.get(key)})")
            continue
        notices.append(f"{_flag(key)}: {base.get(key)} -> {value}")
        base[key] = value
    if refused:
        allowed = ", ".join(_flag(k) for k in RESUME_CHANGEABLE)
        raise TrainingError(
            f"--resume {run_dir}: cannot change {'; '.join(refused)}: these fix what the run "
            f"computes. Resume without them, or start a new run with --output-dir. Flags a resumed "
            f"run may change: {allowed}"
        )
    cfg = TrainConfig(**base, resume=given.get("resume", run_dir), output_dir=run_dir)
    return cfg, notices
