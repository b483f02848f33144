"""The autograd layer: the shifted row log-sum-exp as one differentiable op over any backend.

Every loss of the package (NT-Xent, the memory bank, DCL, SupCon) is written as ordinary
``O(N·D)`` PyTorch around one fused op (the contract of :mod:`simclr_fast.backends.base`)::

    x_k = log Σ_{j∈C(k)} exp(s_kj − shift_k),      s_kj = inv_tau · z_k · c_j

:class:`RowLSE` (one process) and :class:`GatheredRowLSE` (negatives from every rank) save ``z``
and ``x`` (``O(N)``), never an ``N × N`` matrix, and ask the backend to recompute tiles in the
backward, with

    ∂L/∂z_k       = backend.backward_rows(weight = ∂L/∂x · e^{−x})
    ∂L/∂shift_k   = −∂L/∂x_k                                (Σ_j of the row's softmax is 1)
    ∂L/∂inv_tau   = ⟨z, ∂L/∂z⟩ / (2·inv_tau)                 (s is homogeneous of degree 2 in z;
                    ⟨q, ∂L/∂q⟩ / inv_tau with memory-bank keys, where s is linear in q)

so a learnable temperature costs no extra kernel reduction. The loss layers choose the shift and
the excluded column so that nothing cancels: for NT-Xent ``shift_k`` is the positive logit, the
positive column is excluded and the row loss is ``softplus(x_k) = log(1 + S_k)`` (docs/design.md
§9). The positive pair's gradient then comes from autograd through ``shift`` as
``−sigmoid(x_k)`` times the row's weight: taken directly, never as ``P_pos − 1``.

The backend calls go through two registered ops, ``simclr_fast::row_lse`` and
``simclr_fast::row_lse_backward``, that take the temperature as a tensor: ``torch.compile(
fullgraph=True)`` traces a learnable temperature without a graph break (the op reads its value;
on CUDA that is one device-to-host copy per call).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from simclr_fast import backends

if dist.is_available():
    # Imported now, while (in the usual script order) no process group exists yet. Its functions
    # take ``group=group.WORLD`` as a default argument, evaluated at import: imported after
    # ``init_process_group`` they hold the default group for good. torch imports it lazily
    # through ``torch._dynamo`` on the first call of any registered op (the two below), so the
    # first loss of a training run would pin the group, ``destroy_process_group`` could no
    # longer join gloo's worker threads, and a worker still releasing the last collective's
    # tensors during interpreter shutdown aborts the process ("terminate called without an
    # active exception"). tests/test_distributed.py::test_destroy_process_group_releases_the_group
    import torch.distributed.nn  # noqa: F401


def _xdtype(t: torch.Tensor) -> torch.dtype:
    """fp64 for the O(N) per-row quantities (x, the weights) wherever the device has it."""
    return torch.float32 if t.device.type == "mps" else torch.float64


@torch.library.custom_op("simclr_fast::row_lse", mutates_args=())
def row_lse_op(
    z: torch.Tensor,
    shift: torch.Tensor,
    inv_tau: torch.Tensor,
    exclude: torch.Tensor | None,
    keys: torch.Tensor | None,
    backend: str,
    row_start: int,
    row_count: int,
) -> torch.Tensor:
    """``backends.get_backend(backend).forward_lse(...)`` with the temperature as a tensor."""
    impl = backends.get_backend(backend)
    return impl.forward_lse(z, row_start, row_count, float(inv_tau), shift, exclude, keys)


@row_lse_op.register_fake
def _(z, shift, inv_tau, exclude, keys, backend, row_start, row_count):
    return shift.new_empty((row_count,))


@torch.library.custom_op("simclr_fast::row_lse_backward", mutates_args=())
def row_lse_backward_op(
    z: torch.Tensor,
    shift: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    inv_tau: torch.Tensor,
    exclude: torch.Tensor | None,
    keys: torch.Tensor | None,
    backend: str,
    row_start: int,
    row_count: int,
) -> torch.Tensor:
    """``backends.get_backend(backend).backward_rows(...)`` with the temperature as a tensor."""
    impl = backends.get_backend(backend)
    return impl.backward_rows(
        z, shift, x, weight, row_start, row_count, float(inv_tau), exclude, keys
    )


@row_lse_backward_op.register_fake
def _(z, shift, x, weight, inv_tau, exclude, keys, backend, row_start, row_count):
    return shift.new_empty((row_count, z.shape[1]))


def inv_tau_tensor(temperature: float | torch.Tensor) -> torch.Tensor:
    """``1/τ`` as a tensor: a CPU fp64 scalar for a number, the autograd-tracked ``1/τ`` for a tensor."""
    if isinstance(temperature, torch.Tensor):
        return temperature.reciprocal()
    return torch.tensor(1.0 / temperature, dtype=torch.float64)


def _backward_terms(
    shift: torch.Tensor, x: torch.Tensor, grad_x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(shift', x', weight')`` for ``backward_rows``: the same gradient, well-scaled in fp32.

    The backward's row terms are ``weight_k e^{s − shift_k}`` with ``weight = ∂L/∂x · e^{−x}``. A
    row whose negatives beat its positive by far has ``x`` of ~100 at τ = 0.01, where ``e^{−x}``
    leaves fp32's range; so part ``r`` of ``x`` moves into the shift: ``shift' = shift + r``,
    ``x' = x − r``, ``weight' = ∂L/∂x · e^{−x'}`` (identical products). ``r = max(x, 0)`` keeps
    peaked rows (``x < 0``, where the digits matter) on their exact shift; ``r = x`` wherever the
    weight would otherwise exceed e^60. Rows with no columns (``x = −inf``) or no gradient get
    weight 0. Computed in fp64 (fp32 on MPS), returned in ``shift``'s dtype.
    """
    gx = grad_x.to(x.dtype)
    dead = (gx == 0) | torch.isneginf(x)
    xs = torch.where(dead, torch.zeros_like(x), x)
    r = torch.where(torch.log(gx.abs()) - xs > 60, xs, xs.clamp_min(0))
    weight = torch.where(dead, torch.zeros_like(gx), gx * torch.exp(r - xs))
    out = shift.dtype
    return (shift.to(x.dtype) + r).to(out), (x - r).to(out), weight.to(out)


def _inv_tau_grad(z: torch.Tensor, dz: torch.Tensor, inv_tau: torch.Tensor, degree: int):
    """``∂L/∂inv_tau`` from the homogeneity of s in z (degree 2 for z·z, 1 for q·keys)."""
    return (torch.linalg.vecdot(z.to(dz.dtype), dz).sum() / (degree * inv_tau.to(dz.dtype))).to(
        inv_tau.dtype
    )


def _no_autocast(fn):
    """Run a Function's forward/backward with autocast off: the contract computes in fp32/fp64.

    The backward runs on the thread that called ``backward()``, under that thread's autocast
    state; without this a backward called inside ``torch.autocast`` would run the torch backend's
    GEMMs in 16 bits.
    """

    def wrapper(ctx, *args):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(ctx, *args)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


class RowLSE(torch.autograd.Function):
    """``x`` of the backend contract for every row of ``z``, differentiable in ``z``, ``shift`` and τ.

    Inputs: ``z`` (``N × D``, normalized, fp32/fp64: the compute dtype), ``shift`` (``N`` or the
    ``row_count`` anchors with ``keys``), ``inv_tau`` (from :func:`inv_tau_tensor`), the resolved
    backend name, the kernel dtype of ``z``, ``exclude`` (``N`` int64 or ``None``) and ``keys``
    (``K × D``, not differentiated, or ``None``). Output: ``x`` in fp64 (fp32 on MPS).
    """

    @staticmethod
    @_no_autocast
    def forward(ctx, z, shift, inv_tau, backend, kernel_dtype, exclude, keys):
        n = z.shape[0]
        zk = z.detach().to(kernel_dtype).contiguous()
        kk = None if keys is None else keys.detach().to(kernel_dtype).contiguous()
        sh = shift.detach().to(z.dtype).contiguous()
        x = row_lse_op(zk, sh, inv_tau.detach(), exclude, kk, backend, 0, n).to(_xdtype(z))
        ctx.save_for_backward(zk, sh, x, inv_tau, exclude, kk)
        ctx.backend, ctx.z_dtype = backend, z.dtype
        return x

    @staticmethod
    @_no_autocast
    def backward(ctx, grad_x):
        zk, sh, x, inv_tau, exclude, kk = ctx.saved_tensors
        shift_b, x_b, weight = _backward_terms(sh, x, grad_x)
        dz = row_lse_backward_op(
            zk, shift_b, x_b, weight, inv_tau.detach(), exclude, kk, ctx.backend, 0, zk.shape[0]
        ).to(ctx.z_dtype)
        d_inv_tau = None
        if ctx.needs_input_grad[2]:
            d_inv_tau = _inv_tau_grad(zk, dz, inv_tau, 2 if kk is None else 1)
        return dz, -grad_x.to(sh.dtype), d_inv_tau, None, None, None, None


def _all_gather_into(output: torch.Tensor, local: torch.Tensor, group) -> None:
    """``output = cat over ranks of local`` with one collective (torch's single-tensor all_gather)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, local, group=group)


class GatheredRowLSE(torch.autograd.Function):
    """:class:`RowLSE` for this rank's rows against the rows of every rank (docs/design.md §3).

    Input ``z_local`` is this rank's ``n × D`` normalized rows and ``shift_local`` their shifts;
    ``exclude`` holds *global* column indices (this rank's rows start at ``rank · n``). The forward
    all-gathers ``z`` once (in the kernel dtype); the backward all-gathers ``[shift, x, weight]`` of
    every rank (``3n`` numbers per rank) and recomputes every tile touching the local rows, so
    rank ``r`` gets ``Σ_q ∂L_q/∂z_r`` with no all_reduce of embedding-sized tensors. Each rank's
    τ-gradient is its share: after DDP averages them they are the global batch's.

    A caller that has gathered the rows already (SupCon, for its positive term) passes them as
    ``z_all``: ``z_local.detach().to(kernel_dtype)`` of every rank, rank by rank, so the forward
    sends nothing more.
    """

    @staticmethod
    @_no_autocast
    def forward(
        ctx, z_local, shift_local, inv_tau, backend, kernel_dtype, exclude, group, z_all=None
    ):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n = z_local.shape[0]
        z = z_all
        if z is None:
            zk_local = z_local.detach().to(kernel_dtype).contiguous()
            z = zk_local.new_empty((world * n, zk_local.shape[1]))
            _all_gather_into(z, zk_local, group)
        sh = shift_local.detach().to(z_local.dtype).contiguous()
        x = row_lse_op(z, sh, inv_tau.detach(), exclude, None, backend, rank * n, n)
        x = x.to(_xdtype(z_local))
        ctx.save_for_backward(z, sh, x, inv_tau, exclude)
        ctx.backend, ctx.group, ctx.rank, ctx.world = backend, group, rank, world
        ctx.z_dtype = z_local.dtype
        return x

    @staticmethod
    @_no_autocast
    def backward(ctx, grad_x):
        z, sh, x, inv_tau, exclude = ctx.saved_tensors
        n, rank, world = sh.shape[0], ctx.rank, ctx.world
        packed = torch.cat(_backward_terms(sh, x, grad_x))
        gathered = packed.new_empty(world * 3 * n)
        _all_gather_into(gathered, packed, ctx.group)
        gathered = gathered.view(world, 3, n)
        shift_all, x_all, weight_all = (gathered[:, i].reshape(-1).contiguous() for i in range(3))
        dz = row_lse_backward_op(
            z,
            shift_all,
            x_all,
            weight_all,
            inv_tau.detach(),
            exclude,
            None,
            ctx.backend,
            rank * n,
            n,
        ).to(ctx.z_dtype)
        d_inv_tau = None
        if ctx.needs_input_grad[2]:
            d_inv_tau = _inv_tau_grad(z[rank * n : (rank + 1) * n], dz, inv_tau, 2)
        return dz, -grad_x.to(sh.dtype), d_inv_tau, None, None, None, None, None


def positive_pair_index(b: int, offset: int = 0, device=None) -> torch.Tensor:
    """``pos(i) = (i + B) mod 2B`` for rows laid out ``[view 0; view 1]``, plus ``offset`` (int64)."""
    idx = torch.arange(2 * b, device=device)
    return (idx + b) % (2 * b) + offset
