"""The functional NT-Xent: input checks, backend dispatch, normalization."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from simclr_fast import backends
from simclr_fast._function import NTXentFunction
from simclr_fast.reference import nt_xent_reference

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_temperature(temperature: float) -> float:
    """Validate τ the way lightly does (|τ| ≥ 1e-8, negative allowed) and return it as a float.

    Raises:
        TypeError: ``temperature`` is not a real number.
        ValueError: ``temperature`` is not finite or ``abs(temperature) < 1e-8``.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"temperature must be a real number such as 0.5, got {type(temperature).__name__}"
        )
    temperature = float(temperature)
    if not math.isfinite(temperature):
        raise ValueError(
            f"temperature must be finite, got {temperature}; typical values are 0.05 to 1.0"
        )
    if abs(temperature) < 1e-8:
        raise ValueError(
            f"Illegal temperature: abs({temperature}) < 1e-8; use a temperature such as 0.5 "
            "(it divides the similarities)"
        )
    return temperature


def check_embeddings(out0: torch.Tensor, out1: torch.Tensor) -> None:
    """Check the two views before any work is done.

    Raises:
        TypeError: an input is not a tensor, or its dtype is not a floating dtype
            (float16, bfloat16, float32, float64).
        ValueError: an input is not 2-D, is empty, or the two differ in shape, dtype or device.
    """
    for name, t in (("out0", out0), ("out1", out1)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (B, D), got {type(t).__name__}"
            )
        if t.dim() != 2:
            raise ValueError(
                f"{name} must be 2-D (B, D), got shape {tuple(t.shape)}; flatten the features first, "
                "e.g. x.flatten(1)"
            )
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {t.dtype}; "
                "convert it with .float()"
            )
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(
                f"{name} is empty (shape {tuple(t.shape)}); the loss needs B >= 1 and D >= 1"
            )
    if out0.shape != out1.shape:
        raise ValueError(
            f"out0 and out1 must have the same shape (B, D), got {tuple(out0.shape)} and {tuple(out1.shape)}; "
            "pass the two views of the same B images"
        )
    if out0.dtype != out1.dtype:
        raise ValueError(
            f"out0 and out1 must have the same dtype, got {out0.dtype} and {out1.dtype}"
        )
    if out0.device != out1.device:
        raise ValueError(
            f"out0 and out1 must be on the same device, got {out0.device} and {out1.device}; "
            "move both with .to(device)"
        )


def nt_xent(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float = 0.5,
    backend: str = "auto",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """NT-Xent (SimCLR's normalized temperature-scaled cross entropy), fused and memory-light.

    ``z = normalize(cat(out0, out1))``, ``s_ij = z_i·z_j / τ`` with the diagonal excluded; the
    positive of row ``i`` is ``(i + B) mod 2B``; the loss is the mean over the ``2B`` rows of
    ``logsumexp_{j≠i}(s_ij) − s_{i,pos(i)}``: the value of lightly's ``NTXentLoss``.

    Similarities, exponentials and sums are computed in fp32 whatever the input dtype (fp64 inputs
    stay fp64 on the ``"torch"`` and ``"reference"`` backends). The loss is returned as an fp32
    scalar (fp64 for fp64 inputs); gradients come back in the inputs' dtype. Non-finite values in
    the inputs are not checked (that would cost a device sync): they propagate, so the loss is NaN.

    Args:
        out0: Embeddings of the first view.
        out1: Embeddings of the second view (row ``i`` is the same image as ``out0[i]``).
        temperature: τ; any real with ``abs(τ) >= 1e-8``, negative allowed.
        backend: ``"auto"`` (fastest available for the inputs' device), ``"reference"`` (naive,
            materializes the ``2B × 2B`` matrix), ``"torch"`` (memory-light, any device), ``"cpu"``
            (fused C++ kernel) or ``"triton"`` (fused GPU kernels).
        gather_distributed: gather negatives from every process of the default
            ``torch.distributed`` group; each rank gets the mean over its own ``2B`` rows.

    Shape:
        out0, out1: ``(B, D)``. Output: scalar.

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        TypeError: non-tensor or non-floating inputs, non-real temperature.
        ValueError: bad shapes, empty inputs, mismatched dtypes/devices, bad temperature, unknown
            backend.
        RuntimeError: the chosen backend cannot run on these inputs (the message says how to fix it),
            or ``gather_distributed=True`` without an initialized process group.

    Examples:
        >>> import torch, simclr_fast
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = simclr_fast.nt_xent(out0, out1, temperature=0.5)
        >>> ref = simclr_fast.nt_xent(out0, out1, temperature=0.5, backend="reference")
        >>> torch.allclose(loss, ref)
        True
    """
    temperature = check_temperature(temperature)
    check_embeddings(out0, out1)
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a string, one of {backends.BACKENDS}, got {type(backend).__name__}"
        )
    name = backends.resolve(backend, out0.device, out0.dtype)
    if gather_distributed:
        from simclr_fast.distributed import gathered_nt_xent

        return gathered_nt_xent(out0, out1, temperature, name)
    compute = torch.float64 if out0.dtype == torch.float64 else torch.float32
    if name == "reference":
        return nt_xent_reference(out0, out1, temperature).to(compute)
    impl = backends._INSTANCES[name]  # loaded by resolve(); a plain lookup keeps compile traceable
    z = F.normalize(torch.cat([out0, out1]).to(compute), dim=1)
    return NTXentFunction.apply(z, impl, 1.0 / temperature, impl.kernel_dtype(out0.dtype))
