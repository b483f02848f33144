"""NT-Xent across processes: negatives from every rank, exact gradients, light backward traffic.

Each rank passes its local ``out0, out1`` (``B`` rows each). The normalized local rows
``z_r = normalize([out0; out1])`` (``2B × D``) of all ``W`` ranks are all-gathered once, rank by
rank, into ``z`` (``2BW × D``), so rank ``r`` owns rows ``z[r·2B : (r+1)·2B]`` and a row's positive
lies in its own rank's block. Rank ``r`` returns the mean over its own ``2B`` rows of
``lse_i − s_{i,pos(i)}`` against all ``2BW`` columns (lightly's convention: after DDP averages the
gradients, the parameters get exactly the gradient of the single-process loss on the global
batch). DESIGN.md §3.

The gradient rank ``r`` needs on its local rows is the sum over **all** ranks ``q`` of
``g_q · d loss_q / d z_r``, where ``g_q`` is the ``grad_output`` on rank ``q``. With ``G`` the
symmetric matrix of DESIGN.md §2 (``G_ik = e^{s_ik}·(coef_i e^{−lse_i} + coef_k e^{−lse_k})``)::

    coef_j  = g_{rank(j)} / 2B                          for all 2BW global rows
    dz_k    = inv_tau · [ Σ_{j≠k} G_kj z_j − (coef_k + coef_pos(k)) z_pos(k) ]     k local

Row ``k``'s own term needs ``lse_k``; every other row ``j`` that uses ``z_k`` as a negative
needs ``lse_j`` and ``g_{rank(j)}``. So the backward all-gathers ``2B + 1`` numbers per rank (the
row log-sum-exps and the rank's ``grad_output``) and recomputes locally, with the backend's
``backward_rows``, every tile touching the local rows: no all_reduce / reduce_scatter of
embedding-sized tensors. A layer that all-gathers with gradient (and lets autograd differentiate
the gathered columns) instead all-reduces ``2BW × D`` numbers in the backward.

Collectives per call, on the default group (or ``group``), in this order on every rank:

1. forward: all_gather of 5 int64 (``B, D``, dtype, device type, τ) so that mismatched ranks all
   raise instead of hanging;
2. forward: all_gather of the ``2B × D`` normalized local rows (in the backend's kernel dtype);
3. backward: all_gather of ``2B + 1`` floats.

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

from simclr_fast import backends
from simclr_fast._function import positive_logits, subtract_positive_term
from simclr_fast.backends.base import Backend
from simclr_fast.reference import nt_xent_reference_rows

_DTYPE_CODES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DEVICE_CODES = ("cpu", "cuda", "xpu", "mps", "hpu", "meta")


def _all_gather_into(output: torch.Tensor, local: torch.Tensor, group) -> None:
    """``output = cat over ranks of local`` with one collective (torch's single-tensor all_gather)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, local, group=group)


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
    tau_bits = struct.unpack("<q", struct.pack("<d", float(temperature)))[0]
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


class GatheredNTXentFunction(torch.autograd.Function):
    """Rank-local NT-Xent over gathered negatives with the light backward of the module docstring.

    Input: this rank's normalized rows ``z_local`` (``2B × D``, fp32 or fp64). Output: the mean
    over those rows of ``lse_i − s_{i,pos(i)}`` against the rows of every rank.
    """

    @staticmethod
    def forward(
        ctx,
        z_local: torch.Tensor,
        backend: Backend,
        inv_tau: float,
        kernel_dtype: torch.dtype,
        group,
    ):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n = z_local.shape[0]
        zk_local = z_local.to(kernel_dtype).contiguous()
        z = zk_local.new_empty((world * n, zk_local.shape[1]))
        _all_gather_into(z, zk_local, group)
        lse = backend.forward_lse(z, rank * n, n, inv_tau)
        loss = (lse.to(z_local.dtype) - positive_logits(z_local, n // 2, inv_tau)).mean()
        ctx.save_for_backward(z_local, z, lse)
        ctx.backend, ctx.inv_tau, ctx.group = backend, inv_tau, group
        ctx.rank, ctx.world = rank, world
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z_local, z, lse = ctx.saved_tensors
        n, rank, world = z_local.shape[0], ctx.rank, ctx.world
        # One all_gather of [lse (2B); grad_output] per rank: 2B + 1 numbers.
        packed = torch.cat([lse, grad_out.detach().reshape(1).to(lse.dtype)])
        gathered = packed.new_empty(world * (n + 1))
        _all_gather_into(gathered, packed, ctx.group)
        gathered = gathered.view(world, n + 1)
        lse_all = gathered[:, :n].reshape(-1).contiguous()
        coef_rank = gathered[:, n] / n
        coef_all = coef_rank.repeat_interleave(n).contiguous()
        dz = ctx.backend.backward_rows(z, lse_all, coef_all, rank * n, n, ctx.inv_tau).to(
            z_local.dtype
        )
        # Positive pairs: both ends are local, both rows carry this rank's coef.
        coef = coef_rank[rank].to(z_local.dtype)
        subtract_positive_term(dz, z_local, 2 * ctx.inv_tau * coef)
        return dz, None, None, None, None


def gathered_nt_xent(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float,
    backend: str,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """This rank's NT-Xent with negatives from every rank of ``group`` (default: the default group).

    Called by :func:`simclr_fast.nt_xent` with ``gather_distributed=True`` after the inputs and the
    temperature were checked and ``backend`` resolved. The loss is the mean over this rank's ``2B``
    rows; averaging the gradients over ranks (DDP) gives the single-process gradient of the global
    batch of ``B·W`` pairs. A world of one gives the single-process loss.

    Args:
        out0: This rank's first-view embeddings.
        out1: This rank's second-view embeddings.
        temperature: τ (already validated).
        backend: A resolved backend name: ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``.
        group: The process group to gather over; ``None`` for the default group.

    Shape:
        out0, out1: ``(B, D)``, the same ``B`` and ``D`` on every rank. Output: scalar.

    Returns:
        The rank-local loss, fp32 (fp64 for fp64 inputs).

    Raises:
        RuntimeError: no initialized process group, or an NCCL group with non-CUDA inputs.
        ValueError: on every rank, if the ranks' ``B``, ``D``, dtype, device type or temperature
            differ (the message names the ranks).

    Examples:
        >>> import torch, torch.distributed as dist
        >>> from simclr_fast import nt_xent
        >>> dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        >>> out0, out1 = torch.randn(4, 8), torch.randn(4, 8)
        >>> a = nt_xent(out0, out1, gather_distributed=True, backend="torch")
        >>> torch.allclose(a, nt_xent(out0, out1, backend="torch"))
        True
        >>> dist.destroy_process_group()
    """
    rank, _ = _check_process_group(group)
    check_ranks_agree(out0, temperature, group)
    if (
        out0.device.type != "cuda" and dist.get_backend(group) == "nccl"
    ):  # the same on every rank now
        raise RuntimeError(
            f"the process group uses NCCL, which needs CUDA tensors, but the embeddings are on "
            f"{out0.device}; move the model to this rank's GPU or use a gloo process group"
        )
    compute = torch.float64 if out0.dtype == torch.float64 else torch.float32
    if backend == "reference":
        z_local = F.normalize(torch.cat([out0, out1]), dim=1)
        n = z_local.shape[0]
        return nt_xent_reference_rows(
            gather_with_grad(z_local, group), rank * n, n, temperature
        ).to(compute)
    impl = backends.get_backend(backend)
    z_local = F.normalize(torch.cat([out0, out1]).to(compute), dim=1)
    return GatheredNTXentFunction.apply(
        z_local, impl, 1.0 / temperature, impl.kernel_dtype(out0.dtype), group
    )
