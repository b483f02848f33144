"""NT-Xent across processes: negatives from every rank, exact gradients, light backward traffic.

Each rank passes its local ``out0, out1`` (``B`` rows each). The normalized local rows
``z_r = normalize([out0; out1])`` (``2B × D``) of all ``W`` ranks are all-gathered once, rank by
rank, into ``z`` (``2BW × D``), so rank ``r`` owns rows ``z[r·2B : (r+1)·2B]`` and a row's positive
lies in its own rank's block. Rank ``r`` returns the mean over its own ``2B`` rows of
``lse_i − s_{i,pos(i)}`` against all ``2BW`` columns (lightly's convention: after DDP averages the
gradients, the parameters get exactly the gradient of the single-process loss on the global
batch). docs/design.md §3.

The gradient rank ``r`` needs on its local rows is the sum over **all** ranks ``q`` of
``g_q · d loss_q / d z_r``, where ``g_q`` is the ``grad_output`` on rank ``q``. Every loss is built
on the shifted row log-sum-exp of :mod:`simclr_fast.backends.base` (for NT-Xent
``x_k = log Σ_{j∉{k,pos(k)}} e^{s_kj − s_k,pos}``, row loss ``softplus(x_k)``), whose backward is::

    dz_k = inv_tau · Σ_{j∈C(k)} (w_k e^{s_kj − shift_k} + w_j e^{s_kj − shift_j}) z_j     k local
    w_j  = ∂L_{rank(j)}/∂x_j · e^{−x_j}                                for all 2BW global rows

Row ``k``'s own term needs its own shift and weight; every other row ``j`` that uses ``z_k`` as a
negative needs ``shift_j`` and ``w_j`` (which carries rank ``j``'s ``grad_output``). So the
backward all-gathers ``3 · 2B`` numbers per rank (shifts, ``x`` and weights) and recomputes
locally, with the backend's ``backward_rows``, every tile touching the local rows: no all_reduce /
reduce_scatter of embedding-sized tensors
(:class:`simclr_fast._function.GatheredRowLSE`). The positive pair lies in the rank's own block,
so its gradient (through the shift) stays local. A layer that all-gathers with gradient (and lets
autograd differentiate the gathered columns) instead all-reduces ``2BW × D`` numbers in the
backward.

Collectives per call, on the default group (or ``group``), in this order on every rank:

1. forward: all_gather of 5 int64 (``B, D``, dtype, device type, τ) so that mismatched ranks all
   raise instead of hanging;
2. forward: all_gather of the ``2B × D`` normalized local rows (in the backend's kernel dtype);
3. backward: all_gather of ``3 · 2B`` floats.

``backend="reference"`` is the naive oracle: the ``2B × 2BW`` logits are materialized and
autograd differentiates them through :class:`GatherWithGrad` (all_gather forward, all_reduce of
the gathered gradient backward), the textbook layer; it is exact too, and independent of the
fused path, which is what the tests compare.

Every rank must run the forward and the backward of the loss the same number of times (as DDP
does): the collectives are blocking and a rank that skips one stalls the others.
"""

from __future__ import annotations

import struct

import torch
import torch.distributed as dist
import torch.nn.functional as F

from simclr_fast._function import _all_gather_into
from simclr_fast.reference import nt_xent_reference_rows

_DTYPE_CODES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DEVICE_CODES = ("cpu", "cuda", "xpu", "mps", "hpu", "meta")


def _check_process_group(group) -> tuple[int, int]:
    """``(rank, world_size)`` of ``group``; a clear RuntimeError if there is no process group."""
    if not dist.is_available():
        raise RuntimeError(
            "gather_distributed=True needs torch.distributed, which this PyTorch build lacks; "
            "use gather_distributed=False"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            "gather_distributed=True needs an initialized default process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the environment for "
            "it), or use gather_distributed=False for a single-process loss"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def start_gathered(
    rows: torch.Tensor, temperature, group=None, what: str = "embeddings"
) -> tuple[int, int]:
    """The checks every gathered loss makes first; returns ``(rank, world_size)`` of ``group``.

    A clear error without a process group, the ranks' agreement on ``rows``' shape, dtype, device
    type and the temperature (:func:`check_ranks_agree`), and an NCCL group given non-CUDA
    ``rows`` (named ``what`` in the message).
    """
    rank, world = _check_process_group(group)
    check_ranks_agree(rows, temperature, group)
    if rows.device.type != "cuda" and dist.get_backend(group) == "nccl":  # the same on every rank
        raise RuntimeError(
            f"the process group uses NCCL, which needs CUDA tensors, but the {what} are on "
            f"{rows.device}; move the model to this rank's GPU or use a gloo process group"
        )
    return rank, world


def _meta_device(group, device: torch.device) -> torch.device:
    """Where the small metadata tensor lives: a CUDA device for an NCCL-only group, else the CPU.

    For NCCL it is the inputs' own GPU when they are on one (each rank's device, whatever
    ``torch.cuda.set_device`` says), else the current CUDA device, so that a rank with CPU inputs
    still takes part in the check and every rank reports the mismatch.
    """
    if dist.get_backend(group) == "nccl":
        return (
            device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
        )
    return torch.device("cpu")


def _describe(meta: list[int]) -> str:
    b, d, dtype_code, device_code, tau_bits = meta
    dtype = (
        str(_DTYPE_CODES[dtype_code]).replace("torch.", "")
        if 0 <= dtype_code < len(_DTYPE_CODES)
        else "?"
    )
    device = _DEVICE_CODES[device_code] if 0 <= device_code < len(_DEVICE_CODES) else "other"
    tau = struct.unpack("<d", struct.pack("<q", tau_bits))[0]
    return f"B={b}, D={d}, {dtype}, {device}, temperature={tau:g}"


def check_ranks_agree(out0: torch.Tensor, temperature: float, group=None) -> None:
    """All-gather ``(B, D, dtype, device type, τ)`` and raise on every rank if any rank differs.

    One all_gather of 5 int64 per call (on CUDA for NCCL groups, so it syncs the host once). It
    must run before the embedding all_gather, which would hang or fail obscurely on mismatched
    sizes.

    Raises:
        ValueError: on every rank, naming the ranks that differ from rank 0 and what each holds.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    dtype_code = _DTYPE_CODES.index(out0.dtype) if out0.dtype in _DTYPE_CODES else -1
    device_code = _DEVICE_CODES.index(out0.device.type) if out0.device.type in _DEVICE_CODES else -1
    # a learnable (tensor) temperature is not read here (a device sync); it is checked as NaN
    tau = float("nan") if isinstance(temperature, torch.Tensor) else float(temperature)
    tau_bits = struct.unpack("<q", struct.pack("<d", tau))[0]
    device = _meta_device(group, out0.device)
    local = torch.tensor(
        [out0.shape[0], out0.shape[1], dtype_code, device_code, tau_bits], dtype=torch.int64
    )
    gathered = torch.empty(world * 5, dtype=torch.int64, device=device)
    _all_gather_into(gathered, local.to(device), group)
    rows = gathered.view(world, 5).tolist()
    bad = [q for q in range(world) if rows[q] != rows[0]]
    if bad:
        listing = "; ".join(f"rank {q}: {_describe(rows[q])}" for q in range(world))
        names = ", ".join(f"rank {q}" for q in bad)
        raise ValueError(
            f"gather_distributed=True needs the same batch size B, embedding size D, dtype, device type "
            f"and temperature on every rank, but {names} differ{'s' if len(bad) == 1 else ''} from rank 0 "
            f"(this is rank {rank}). Per rank: {listing}. Give every rank the same per-rank batch "
            "(e.g. DataLoader(..., drop_last=True) with a DistributedSampler)"
        )


class GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the gathered tensor.

    Forward: one all_gather of the local ``(n, D)`` rows into ``(W·n, D)``. Backward: one
    all_reduce (sum) of the ``(W·n, D)`` gradient, then the local slice: exact for any per-rank
    loss scaling, but ``W·n·D`` numbers all-reduced per backward (the traffic the fused layer
    avoids). Used by ``backend="reference"`` and as the baseline in ``simclr-fast bench dist``.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        local = local.contiguous()
        out = local.new_empty((world * local.shape[0], *local.shape[1:]))
        _all_gather_into(out, local, group)
        ctx.rank, ctx.n, ctx.group = rank, local.shape[0], group
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def gather_with_grad(local: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather ``local`` (rank by rank along dim 0) with an exact, all_reduce-based backward."""
    return GatherWithGrad.apply(local, group)


def gathered_nt_xent(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float | torch.Tensor,
    backend: str,
    compute: torch.dtype,
    kernel_dtype: torch.dtype,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """This rank's NT-Xent with negatives from every rank of ``group`` (default: the default group).

    Called by :func:`simclr_fast.nt_xent` with ``gather_distributed=True`` and more than one
    process, after the inputs and the temperature were checked and ``backend`` resolved. The loss
    is the mean over this rank's ``2B`` rows; averaging the gradients over ranks (DDP) gives the
    single-process gradient of the global batch of ``B·W`` pairs.

    Args:
        out0: This rank's first-view embeddings.
        out1: This rank's second-view embeddings.
        temperature: τ (already validated): a number, or a 0-dim tensor to learn.
        backend: A resolved backend name: ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``.
        compute: The compute dtype (fp32, or fp64 for fp64 inputs).
        kernel_dtype: The dtype the backend's kernels read ``z`` in.
        group: The process group to gather over; ``None`` for the default group.

    Shape:
        out0, out1: ``(B, D)``, the same ``B`` and ``D`` on every rank. Output: scalar.

    Returns:
        The rank-local loss, in ``compute``.

    Raises:
        RuntimeError: no initialized process group, or an NCCL group with non-CUDA inputs.
        ValueError: on every rank, if the ranks' ``B``, ``D``, dtype, device type or temperature
            differ (the message names the ranks).

    Examples:
        >>> import torch, torch.distributed as dist
        >>> from simclr_fast.distributed import gathered_nt_xent
        >>> from simclr_fast import nt_xent
        >>> dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        >>> out0, out1 = torch.randn(4, 8), torch.randn(4, 8)
        >>> a = gathered_nt_xent(out0, out1, 0.5, "torch", torch.float32, torch.float32)
        >>> torch.allclose(a, nt_xent(out0, out1, backend="torch"))
        True
        >>> dist.destroy_process_group()
    """
    from simclr_fast.functional import nt_xent_rows

    rank, _ = start_gathered(out0, temperature, group)
    z_local = F.normalize(torch.cat([out0.to(compute), out1.to(compute)]), dim=1)
    n = z_local.shape[0]
    if backend == "reference":
        return nt_xent_reference_rows(
            gather_with_grad(z_local, group), rank * n, n, temperature
        ).to(compute)
    return nt_xent_rows(z_local, rank * n, n, temperature, backend, kernel_dtype, True, group)
