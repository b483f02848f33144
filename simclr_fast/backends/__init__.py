"""Backend registry: which fused implementations exist, which can run here, and what ``"auto"`` picks.

``reference`` is not a :class:`~simclr_fast.backends.base.Backend`: it is the naive formula of
:mod:`simclr_fast.reference`, differentiated by autograd. The others implement the contract of
:mod:`simclr_fast.backends.base` and are imported lazily, so a missing compiled extension or a
missing Triton never breaks ``import simclr_fast``.
"""

from __future__ import annotations

import importlib
from functools import cache

import torch

from simclr_fast.backends.base import Backend

BACKENDS = ("auto", "reference", "torch", "cpu", "triton")

_MODULES = {
    "torch": ("simclr_fast.backends.torch_backend", "TorchBackend"),
    "cpu": ("simclr_fast.backends.cpu", "CPUBackend"),
    "triton": ("simclr_fast.backends.triton_backend", "TritonBackend"),
}


@cache
def get_backend(name: str) -> Backend:
    """The backend object for ``name`` (one of ``"torch"``, ``"cpu"``, ``"triton"``)."""
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(module), cls)()


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` cannot run on ``device``/``dtype`` (with the fix), or ``None`` if it can."""
    if name == "reference":
        return None
    return get_backend(name).unavailable_reason(device, dtype)


def resolve(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn ``"auto"`` into the fastest backend that runs on ``device``/``dtype``; check the others.

    ``"auto"`` picks ``"triton"`` for CUDA tensors when Triton is installed, ``"cpu"`` for CPU
    tensors when the compiled extension is built, and ``"torch"`` otherwise (any device, fp64).

    Raises:
        ValueError: ``name`` is not a known backend.
        RuntimeError: the named backend cannot run on these inputs; the message says why and how
            to fix it.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        preferred = {"cuda": "triton", "cpu": "cpu"}.get(device.type)
        if preferred is not None and unavailable_reason(preferred, device, dtype) is None:
            return preferred
        return "torch"
    reason = unavailable_reason(name, device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} cannot run on {dtype} tensors on {device}: {reason}")
    return name


def available_backends(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run on ``device``/``dtype`` in this installation.

    Examples:
        >>> import simclr_fast
        >>> "torch" in simclr_fast.available_backends("cpu")
        True
    """
    device = torch.device(device)
    return [n for n in BACKENDS[1:] if unavailable_reason(n, device, dtype) is None]
