"""Atomic checkpoints and the random-number state a resumed run needs to continue exactly."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state the loop draws from: Python, NumPy, torch (CPU and CUDA), and ours."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def loss_state(loss_fn: torch.nn.Module) -> dict[str, Any] | None:
    """The loss's own state that ``state_dict()`` leaves out: NTXentLoss's memory bank (keys and
    pointer, ``memory_bank_state_dict``), or ``None`` for a loss without one."""
    getter = getattr(loss_fn, "memory_bank_state_dict", None)
    if getter is None or not getattr(loss_fn.memory_bank, "num_keys", 0):
        return None
    return {"memory_bank": getter()}


def set_loss_state(loss_fn: torch.nn.Module, state: dict[str, Any] | None) -> None:
    """Restore what :func:`loss_state` captured (nothing for ``None``: an older checkpoint)."""
    if state and state.get("memory_bank") is not None:
        loss_fn.load_memory_bank_state_dict(state["memory_bank"])


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace`` it over ``path``:
    a reader (or a crash) never sees a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a checkpoint of this loop.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"--resume {path}: not a readable checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise ValueError(f"--resume {path}: not a checkpoint written by simclr-fast train")
    return ckpt
