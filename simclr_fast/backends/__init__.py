"""Backend registry: which fused implementations exist, which can run here, and what ``"auto"`` picks.

``reference`` is not a :class:`~simclr_fast.backends.base.Backend`: it is the naive formula of
:mod:`simclr_fast.reference`, differentiated by autograd. The others implement the contract of
:mod:`simclr_fast.backends.base` and are imported lazily, so a missing compiled extension or a
missing Triton never breaks ``import simclr_fast``.
"""

from __future__ import annotations

import importlib

import torch

from simclr_fast.backends.base import Backend

BACKENDS = ("auto", "reference", "torch", "cpu", "triton")

_MODULES = {
    "torch": ("simclr_fast.backends.torch_backend", "TorchBackend"),
    "cpu": ("simclr_fast.backends.cpu", "CPUBackend"),
    "triton": ("simclr_fast.backends.triton_backend", "TritonBackend"),
}


def _assume_constant_result(fn):
    """``torch._dynamo.assume_constant_result`` without importing ``torch._dynamo`` here.

    Importing Dynamo costs more than importing torch itself (≈ 1.5 s of ≈ 3 s, measured with
    ``python -X importtime -c "import simclr_fast"``, 2026-12-02), and that decorator only sets
    this attribute, which Dynamo reads when it traces a call. tests/test_import.py checks that the
    two agree, so a torch that changes the decorator fails a test instead of silently breaking the
    graph.
    """
    fn._dynamo_marked_constant = True
    return fn


#: backend objects, created on first use by :func:`get_backend`.
_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend object for ``name`` (one of ``"torch"``, ``"cpu"``, ``"triton"``)."""
    if name not in _INSTANCES:
        module, cls = _MODULES[name]
        _INSTANCES[name] = getattr(importlib.import_module(module), cls)()
    return _INSTANCES[name]


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` cannot run on ``device``/``dtype`` (with the fix), or ``None`` if it can."""
    if name == "reference":
        return None
    try:
        backend = get_backend(name)
    except ImportError as exc:  # e.g. triton not installed; the backend module says more
        return f"it could not be imported ({exc})"
    return backend.unavailable_reason(device, dtype)


# Host logic (imports, availability checks): under torch.compile it runs once at trace time and
# its answer is baked into the graph, so a model using NTXentLoss compiles with fullgraph=True.
@_assume_constant_result
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
            name = preferred
        else:
            name = "torch"
    reason = unavailable_reason(name, device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} cannot run on {dtype} tensors on {device}: {reason}")
    if name != "reference":
        get_backend(name)  # loaded here, outside any compiled graph
    return name


def available_backends(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> list[str]:
    """Names of the backends that can run on ``device``/``dtype`` in this installation.

    Examples:
        >>> import simclr_fast
        >>> "torch" in simclr_fast.available_backends("cpu")
        True
    """
    device = torch.device(device)
    return [n for n in BACKENDS[1:] if unavailable_reason(n, device, dtype) is None]
