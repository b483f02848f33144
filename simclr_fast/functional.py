"""The functional NT-Xent: input checks, backend dispatch, normalization."""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist
import torch.nn.functional as F

from simclr_fast import backends
from simclr_fast._function import GatheredRowLSE, RowLSE, inv_tau_tensor, positive_pair_index
from simclr_fast.reference import nt_xent_reference

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_temperature(temperature: float | torch.Tensor) -> float | torch.Tensor:
    """Validate τ the way lightly does (|τ| ≥ 1e-8, negative allowed) and return it.

    A number comes back as a ``float``. A 0-dim floating tensor (an ``nn.Parameter``, or
    ``1 / logit_scale.exp()`` as in CLIP) is returned as it is, to be learned: its value is not
    read here (that would cost a device sync), and it must be positive (a tensor τ ≤ 0 gives a NaN
    loss, never a finite wrong one).

    Raises:
        TypeError: ``temperature`` is not a real number or a 0-dim floating tensor.
        ValueError: ``temperature`` is not finite or ``abs(temperature) < 1e-8``.
    """
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0 or not temperature.is_floating_point():
            raise TypeError(
                "a tensor temperature must be a 0-dim floating tensor such as "
                f"nn.Parameter(torch.tensor(0.1)), got shape {tuple(temperature.shape)} and "
                f"dtype {temperature.dtype}"
            )
        return temperature
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"temperature must be a real number such as 0.5 (or a 0-dim tensor to learn it), got "
            f"{type(temperature).__name__}"
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
        ValueError: an input is not 2-D, is empty, or the two differ in shape or device. (Different
            floating dtypes are allowed: they are computed in fp32, see :func:`compute_dtypes`.)
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
    if out0.device != out1.device:
        raise ValueError(
            f"out0 and out1 must be on the same device, got {out0.device} and {out1.device}; "
            "move both with .to(device)"
        )


def compute_dtypes(
    out0: torch.Tensor, out1: torch.Tensor, name: str
) -> tuple[torch.dtype, torch.dtype]:
    """``(compute dtype, kernel dtype)`` for the inputs on the resolved backend ``name``.

    The compute dtype (normalization, positive logits, the per-row loss) is fp64 for fp64 inputs
    and fp32 otherwise; the kernel dtype is what the backend's GEMMs read (16-bit inputs stay
    16-bit on Triton's tensor cores). Inputs of two different dtypes (NNCLR's fp32 bank rows next
    to bf16 activations) are computed as fp32 throughout.
    """
    if out0.dtype != out1.dtype:
        return torch.float32, torch.float32
    compute = torch.float64 if out0.dtype == torch.float64 else torch.float32
    if name == "reference":
        return compute, compute
    return compute, backends._INSTANCES[name].kernel_dtype(out0.dtype)


def distributed_world(gather_distributed: bool) -> int:
    """The world size ``gather_distributed`` gathers over: 1 without an initialized process group.

    Like lightly, ``gather_distributed=True`` in a single process (a notebook, one GPU, Lightning
    on one device) computes the local loss.
    """
    if not gather_distributed or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def prepare(
    out0: torch.Tensor, out1: torch.Tensor, temperature: float | torch.Tensor, backend: str
) -> tuple[float | torch.Tensor, str, torch.dtype, torch.dtype]:
    """Checks and dispatch shared by the two-view losses: ``(τ, backend name, compute, kernel)``.

    Validates the temperature and the embeddings, resolves ``backend`` for the inputs and picks
    the compute and kernel dtypes (:func:`compute_dtypes`).
    """
    temperature = check_temperature(temperature)
    check_embeddings(out0, out1)
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a string, one of {backends.BACKENDS}, got {type(backend).__name__}"
        )
    mixed = out0.dtype != out1.dtype
    name = backends.resolve(backend, out0.device, torch.float32 if mixed else out0.dtype)
    compute, kernel = compute_dtypes(out0, out1, name)
    return temperature, name, compute, kernel


def nt_xent(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float | torch.Tensor = 0.5,
    backend: str = "auto",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """NT-Xent (SimCLR's normalized temperature-scaled cross entropy), fused and memory-light.

    ``z = normalize(cat(out0, out1))``, ``s_ij = z_i·z_j / τ`` with the diagonal excluded; the
    positive of row ``i`` is ``(i + B) mod 2B``; the loss is the mean over the ``2B`` rows of
    ``logsumexp_{j≠i}(s_ij) − s_{i,pos(i)}``: the value of lightly's ``NTXentLoss``.

    The fused backends compute each row as ``log(1 + S_i)`` with ``S_i = Σ_{j∉{i,pos(i)}}
    e^{s_ij − s_i,pos}``, so a loss of 1e-10 keeps its digits where the naive difference of two
    ``~1/τ`` numbers loses them (docs/design.md §9). Similarities, exponentials and sums are
    computed in fp32 whatever the input dtype (fp64 inputs stay fp64 on the ``"torch"`` and
    ``"reference"`` backends), also under ``torch.autocast``. The loss is returned as an fp32
    scalar (fp64 for fp64 inputs); gradients come back in the inputs' dtype. Non-finite values in
    the inputs are not checked (that would cost a device sync): they propagate, so the loss is NaN.

    Args:
        out0: Embeddings of the first view.
        out1: Embeddings of the second view (row ``i`` is the same image as ``out0[i]``).
        temperature: τ; any real with ``abs(τ) >= 1e-8``, negative allowed; or a positive 0-dim
            tensor to learn it (``nn.Parameter``, ``1 / logit_scale.exp()``), which gets its exact
            gradient.
        backend: ``"auto"`` (fastest available for the inputs' device), ``"reference"`` (naive,
            materializes the ``2B × 2B`` matrix), ``"torch"`` (memory-light, any device), ``"cpu"``
            (fused C++ kernel) or ``"triton"`` (fused GPU kernels).
        gather_distributed: gather negatives from every process of the default
            ``torch.distributed`` group; each rank gets the mean over its own ``2B`` rows. Without
            an initialized process group (or with one process) this is the local loss.

    Shape:
        out0, out1: ``(B, D)``. Output: scalar.

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        TypeError: non-tensor or non-floating inputs, a temperature that is neither a real number
            nor a 0-dim floating tensor.
        ValueError: bad shapes, empty inputs, mismatched devices, bad temperature, unknown backend.
        RuntimeError: the chosen backend cannot run on these inputs (the message says how to fix it).

    Examples:
        >>> import torch, simclr_fast
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = simclr_fast.nt_xent(out0, out1, temperature=0.5)
        >>> ref = simclr_fast.nt_xent(out0, out1, temperature=0.5, backend="reference")
        >>> torch.allclose(loss, ref)
        True
    """
    temperature, name, compute, kernel = prepare(out0, out1, temperature, backend)
    # Under torch.autocast the matmuls below would run in 16 bits: the loss computes in `compute`.
    with torch.autocast(out0.device.type, enabled=False):
        if distributed_world(gather_distributed) > 1:
            from simclr_fast.distributed import gathered_nt_xent

            return gathered_nt_xent(out0, out1, temperature, name, compute, kernel)
        if name == "reference":
            return nt_xent_reference(out0.to(compute), out1.to(compute), temperature).to(compute)
        z = F.normalize(torch.cat([out0.to(compute), out1.to(compute)]), dim=1)
        return nt_xent_rows(z, 0, z.shape[0], temperature, name, kernel)


def nt_xent_rows(
    z: torch.Tensor,
    row_start: int,
    n: int,
    temperature: float | torch.Tensor,
    backend: str,
    kernel_dtype: torch.dtype,
    gathered: bool = False,
    group=None,
) -> torch.Tensor:
    """Mean NT-Xent of this process's ``n`` rows ``z``, laid out ``[view 0; view 1]``.

    ``z`` holds this process's normalized rows (compute dtype). With ``gathered`` (and
    ``row_start = rank · n``) the negatives are the rows of every rank of ``group`` (``None``: the
    default group); else ``row_start`` is 0.
    Each row's loss is ``softplus(x_k)``, ``x_k = log Σ_{j∉{k,pos(k)}} e^{s_kj − s_k,pos}``.
    """
    b = n // 2
    inv_tau = inv_tau_tensor(temperature)
    # positive logits from the same (possibly 16-bit) rounding of z the kernels read
    zr = z.to(kernel_dtype).to(z.dtype)
    half = torch.linalg.vecdot(zr[:b], zr[b:]) * inv_tau.to(z.dtype)
    shift = torch.cat([half, half])
    exclude = positive_pair_index(b, row_start, device=z.device)
    if not gathered:
        x = RowLSE.apply(z, shift, inv_tau, backend, kernel_dtype, exclude, None)
    else:
        x = GatheredRowLSE.apply(z, shift, inv_tau, backend, kernel_dtype, exclude, group)
    return F.softplus(x).mean().to(z.dtype)
