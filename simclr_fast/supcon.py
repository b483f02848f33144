"""Supervised contrastive loss (SupCon, Khosla et al. 2020, arXiv 2004.11362) on the fused kernels.

Rows. ``features`` of shape ``(B, V, D)`` (``V`` views of ``B`` samples, HobbitLong's layout) are
normalized and laid out **view-major**, ``z[v·B + i] = normalize(features[i, v])`` (HobbitLong's
``cat(unbind(features, 1))``), so view 0's rows come first. ``(N, D)`` features (PML's form) are
``V = 1``. Row ``k`` has the label of its sample; ``P(k)`` is every other row with the same label
and ``m_k = |P(k)|``. With ``s_kj = z_k·z_j / τ`` (docs/design.md §8)::

    ℓ_k = log Σ_{j≠k} e^{s_kj} − (1/m_k) Σ_{p∈P(k)} s_kp        × τ/base_τ when base_τ is given

How it is computed (the fused layer of :mod:`simclr_fast._function`, ``O(N·D)`` memory):

- class sums ``S_c = Σ_{y_j=c} z_j`` by ``index_add``; the positive term of row ``k`` is
  ``z_k·(S_{y_k} − z_k)/m_k``, and autograd differentiates it in ``O(N·D)`` too. No ``N × N`` or
  ``B × B`` matrix is formed from labels.
- ``m_k ≥ 2``: ``shift_k`` = the mean positive logit, nothing excluded, ``ℓ_k = x_k = log Σ_{j≠k}
  e^{s_kj − shift_k}`` (the kernels' shifted row log-sum-exp). Nothing cancels: by Jensen
  ``ℓ_k ≥ log m_k ≥ log 2``.
- ``m_k = 1`` (a two-member class; with ``labels=None`` and ``V = 2`` every row): the single
  positive ``p`` is the excluded column (symmetric: ``p``'s only positive is ``k``), ``shift_k =
  s_kp`` and ``ℓ_k = softplus(x_k)``, NT-Xent's cancellation-free form (docs/design.md §9). With
  ``labels=None, V = 2`` the loss *is* :func:`simclr_fast.nt_xent`.
- ``m_k = 0`` (a label seen once): no positive. ``without_positives="drop"`` (default, PML's)
  leaves such anchors out of the mean; ``"zero"`` (HobbitLong's) counts them as 0.

The loss is the mean of ``ℓ`` over the anchors (every row, or view 0's rows with
``contrast_mode="one"``; the columns are still all rows).

An explicit ``mask`` (``B × B``, HobbitLong's) that is an equivalence relation (0/1, reflexive,
symmetric, transitive; ``eye(B)`` is ``labels=None``) is turned into labels, so it takes the path
above. Any other mask (asymmetric, weighted) is a general weighted positive set: the positive sum
is ``z_k · (M Σ_v z_v)_i − M_ii |z_k|²`` (``O(B²·D)`` work on the user's own ``B × B`` mask,
``O(N·D)`` memory) and ``ℓ_k = x_k`` with no exclusion, which is cancellation-free wherever a row
has two or more positives. Checking the mask costs one host sync.

Across processes (``gather_distributed=True``): each rank's rows are gathered with their labels;
rank ``r`` returns ``W · Σ_{its anchors} ℓ / (anchors counted in the global batch)``, so after DDP
averages the gradients the parameters get the single-process gradient of the global batch (for
either ``without_positives``). The rows are gathered once, in the kernel dtype, for both terms.
The kernel part's cross-rank gradient comes from
:class:`~simclr_fast._function.GatheredRowLSE`; the positive term's (rows of another rank in the
class sums) from :class:`_GatheredPositive`, which all-gathers one scalar per row in the backward
and rebuilds the weighted class sums from the gathered rows: backward traffic ``O(N)``, no
embedding-sized all_reduce. A learnable temperature's per-rank gradients average to the global one.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from simclr_fast import backends
from simclr_fast._function import GatheredRowLSE, RowLSE, _all_gather_into, inv_tau_tensor
from simclr_fast.functional import (
    _FLOAT_DTYPES,
    check_temperature,
    compute_dtypes,
    distributed_world,
)

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
CONTRAST_MODES = ("all", "one")
WITHOUT_POSITIVES = ("drop", "zero")


# ------------------------------------------------------------------------------------ input checks


def _check_features(features: torch.Tensor) -> torch.Tensor:
    """``features`` as ``(B, V, D)``: ``(N, D)`` becomes ``(N, 1, D)``, trailing dims are flattened."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(
            f"features must be a torch.Tensor of shape (B, V, D) or (N, D), got "
            f"{type(features).__name__}"
        )
    if features.dim() < 2:
        raise ValueError(
            f"features must be (B, V, D) (V views of B samples) or (N, D) with labels, got shape "
            f"{tuple(features.shape)}"
        )
    if features.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"features must be a floating tensor (float16, bfloat16, float32 or float64), got "
            f"{features.dtype}; convert it with .float()"
        )
    if features.dim() == 2:
        features = features.unsqueeze(1)
    elif features.dim() > 3:
        features = features.flatten(2)
    if features.numel() == 0:
        raise ValueError(
            f"features is empty (shape {tuple(features.shape)}); the loss needs B >= 1, V >= 1, D >= 1"
        )
    return features


def _check_labels(labels, features: torch.Tensor, name: str = "labels") -> None:
    b = features.shape[0]
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape ({b},), got {type(labels).__name__}"
        )
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(
            f"{name} must be an integer tensor (class ids), got {labels.dtype}; convert it with "
            ".long()"
        )
    if labels.dim() != 1 or labels.shape[0] != b:
        raise ValueError(
            f"{name} must have shape ({b},), one label per sample of features {tuple(features.shape)}, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.device != features.device:
        raise ValueError(
            f"{name} must be on the features' device {features.device}, got {labels.device}; move "
            f"it with .to(features.device)"
        )


def _check_mask(mask, features: torch.Tensor) -> None:
    b = features.shape[0]
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"mask must be a torch.Tensor of shape ({b}, {b}), got {type(mask).__name__}"
        )
    if mask.shape != (b, b):
        raise ValueError(
            f"mask must have shape ({b}, {b}) (mask[i, j] = 1 if sample j is a positive of sample "
            f"i) for features {tuple(features.shape)}, got shape {tuple(mask.shape)}"
        )
    if mask.is_complex():
        raise TypeError(f"mask must be a bool, integer or real tensor, got {mask.dtype}")
    if mask.device != features.device:
        raise ValueError(
            f"mask must be on the features' device {features.device}, got {mask.device}; move it "
            "with .to(features.device)"
        )


def check_supcon_options(
    base_temperature, contrast_mode: str, without_positives: str, backend: str
) -> float | None:
    """Validate the options shared by :func:`supcon_loss` and :class:`SupConLoss`; returns base_τ."""
    if contrast_mode not in CONTRAST_MODES:
        raise ValueError(
            f"contrast_mode must be 'all' (every row is an anchor) or 'one' (view 0's rows only), "
            f"got {contrast_mode!r}"
        )
    if without_positives not in WITHOUT_POSITIVES:
        raise ValueError(
            f"without_positives must be 'drop' (PML: left out of the mean) or 'zero' (HobbitLong: "
            f"counted as 0), got {without_positives!r}"
        )
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a string, one of {backends.BACKENDS}, got {type(backend).__name__}"
        )
    if backend not in backends.BACKENDS:
        raise ValueError(f"backend must be one of {backends.BACKENDS}, got {backend!r}")
    if base_temperature is None:
        return None
    if isinstance(base_temperature, bool) or not isinstance(base_temperature, numbers.Real):
        raise TypeError(
            f"base_temperature must be None or a real number such as 0.07, got "
            f"{type(base_temperature).__name__}"
        )
    base_temperature = float(base_temperature)
    if not (abs(base_temperature) >= 1e-8 and abs(base_temperature) < float("inf")):
        raise ValueError(
            f"base_temperature must be finite with abs(base_temperature) >= 1e-8, got "
            f"{base_temperature}; HobbitLong's default is 0.07"
        )
    return base_temperature


# ------------------------------------------------------------------------------- labels to classes


def _class_ids(labels: torch.Tensor) -> torch.Tensor:
    """Labels → compact class ids in ``[0, len)`` (int64), by a sort: no host sync, static shapes."""
    order = torch.argsort(labels, stable=True)
    sl = labels[order]
    new = torch.ones_like(sl, dtype=torch.int64)
    new[1:] = (sl[1:] != sl[:-1]).to(torch.int64)
    ids = torch.empty_like(new)
    ids[order] = torch.cumsum(new, 0) - 1
    return ids


def _row_classes(cid: torch.Tensor, world: int, v: int) -> torch.Tensor:
    """Class id of every row, for samples laid out rank by rank and rows view-major per rank."""
    b = cid.shape[0] // world
    return cid.view(world, 1, b).expand(world, v, b).reshape(-1)


def _positives(row_cid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, partner)``: positives per row, and the single positive's row where ``m == 1`` (else −1)."""
    n = row_cid.shape[0]
    idx = torch.arange(n, device=row_cid.device)
    size = torch.zeros(n, dtype=torch.int64, device=row_cid.device).index_add_(
        0, row_cid, torch.ones_like(idx)
    )
    m = size[row_cid] - 1
    isum = torch.zeros_like(size).index_add_(0, row_cid, idx)
    partner = torch.where(m == 1, isum[row_cid] - idx, torch.full_like(idx, -1))
    return m, partner


def _mask_as_labels(mask: torch.Tensor) -> torch.Tensor | None:
    """Class ids if ``mask`` is an equivalence relation given as 0/1 entries, else ``None``.

    One host sync (the verdict). Row ``i``'s class is the first ``j`` it marks; the mask is an
    equivalence relation exactly when it equals "same class" for those ids and is reflexive.
    """
    mb = mask != 0
    rep = mb.to(torch.uint8).argmax(dim=1)
    ok = (
        ((mask == 0) | (mask == 1)).all()
        & mb.diagonal().all()
        & (mb == (rep[:, None] == rep[None, :])).all()
    )
    return rep if bool(ok) else None


# ------------------------------------------------------------------------------ the positive terms


def _others(x: torch.Tensor, row_cid: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Row ``k`` of the result is ``Σ_{p∈P(k)} x_p``: the class sum minus ``x_k`` (``index_add``),
    and for a row with one positive that row itself (``x[partner]``, exact, no subtraction)."""
    sums = torch.zeros_like(x).index_add_(0, row_cid, x)
    single = x.index_select(0, partner.clamp_min(0))
    return torch.where((partner >= 0)[:, None], single, sums.index_select(0, row_cid) - x)


class _Others(torch.autograd.Function):
    """:func:`_others` with its own backward: the map is symmetric (``p ∈ P(k) ⇔ k ∈ P(p)``), so its
    gradient is the same map applied to the incoming gradient: one ``index_add`` each way, where
    autograd would add an accumulating ``index_put`` (measured several times slower on CPU)."""

    @staticmethod
    def forward(ctx, x, row_cid, partner):
        ctx.save_for_backward(row_cid, partner)
        return _others(x, row_cid, partner)

    @staticmethod
    def backward(ctx, grad):
        row_cid, partner = ctx.saved_tensors
        return _others(grad.contiguous(), row_cid, partner), None, None


def _positive_sum(zr: torch.Tensor, row_cid: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """``Σ_{p∈P(k)} zr_k·zr_p`` per row, from class sums: ``O(N·D)`` both ways."""
    return torch.linalg.vecdot(zr, _Others.apply(zr, row_cid, partner))


class _GatheredPositive(torch.autograd.Function):
    """:func:`_positive_sum` of this rank's rows over the rows of every rank, with exact gradients.

    Forward: class sums of the gathered rows ``zr_all`` (no gradient of their own). Backward, with
    ``g = ∂L_r/∂pos`` on this rank's rows: ``∂L_r/∂zr_k = g_k (S_{y_k} − zr_k)`` for its own rows,
    and every rank ``q``'s rows of class ``c`` reach row ``k`` through ``Σ_q Σ_{i∈q, y_i=c} g_i zr_i``:
    the ``g`` of every rank are all-gathered (one scalar per row) and the weighted class sums are
    rebuilt here from ``zr_all``, which every rank holds.
    """

    @staticmethod
    def forward(ctx, zr_local, zr_all, row_cid_all, partner_all, rank, group):
        n = zr_local.shape[0]
        local = slice(rank * n, (rank + 1) * n)
        cid, partner = row_cid_all[local], partner_all[local]
        sums = zr_all.new_zeros(zr_all.shape).index_add_(0, row_cid_all, zr_all)
        others = torch.where(
            (partner >= 0)[:, None], zr_all[partner.clamp_min(0)], sums[cid] - zr_local
        )
        ctx.save_for_backward(zr_local, zr_all, row_cid_all, others)
        ctx.rank, ctx.group = rank, group
        return torch.linalg.vecdot(zr_local, others)

    @staticmethod
    def backward(ctx, grad):
        zr_local, zr_all, row_cid_all, others = ctx.saved_tensors
        n = zr_local.shape[0]
        g_all = grad.new_empty(zr_all.shape[0])
        _all_gather_into(g_all, grad.contiguous(), ctx.group)
        weighted = zr_all.new_zeros(zr_all.shape).index_add_(
            0, row_cid_all, g_all[:, None] * zr_all
        )
        cid = row_cid_all[ctx.rank * n : (ctx.rank + 1) * n]
        dz = grad[:, None] * others + weighted[cid] - grad[:, None] * zr_local
        return dz, None, None, None, None, None


# ----------------------------------------------------------------------------------- the loss


class _Options(NamedTuple):
    """The checked options of one call, as the row paths below need them."""

    temperature: float | torch.Tensor
    backend: str  # resolved
    kernel_dtype: torch.dtype
    contrast_mode: str
    without_positives: str
    scale: float | torch.Tensor | None  # τ / base_temperature


def _reduce(ell, valid, anchor_all, valid_all, world, without_positives, scale, dtype):
    """``W · Σ_{valid local rows} ℓ / count`` (count over the global batch), times the scale."""
    counted = valid_all if without_positives == "drop" else anchor_all
    count = counted.sum().clamp_min(1)
    total = torch.where(valid, ell, torch.zeros_like(ell)).sum()
    loss = (total * world / count).to(dtype)
    return loss if scale is None else loss * scale


def _reference_rows(rows, z_all, row_start, pos_weight, inv_tau):
    """Naive per-row ``lse_{j≠k} s_kj − Σ_p w_kp s_kp / Σ_p w_kp``, materializing ``rows × N``."""
    n = rows.shape[0]
    logits = rows @ z_all.T * inv_tau.to(rows.dtype)
    local = torch.arange(n, device=rows.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[local, row_start + local] = True
    lse = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
    w = pos_weight.to(rows.dtype).masked_fill(self_mask, 0)
    cnt = w.sum(1)
    mean_pos = (w * logits).sum(1) / torch.where(cnt != 0, cnt, torch.ones_like(cnt))
    return lse - mean_pos, cnt != 0


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.1,
    base_temperature: float | None = None,
    contrast_mode: str = "all",
    without_positives: str = "drop",
    backend: str = "auto",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """The supervised contrastive loss (SupCon L_out), fused and memory-light (module docstring).

    ``ℓ_k = logsumexp_{j≠k}(s_kj) − mean_{p∈P(k)} s_kp`` over normalized rows, ``s = z·z/τ``,
    ``P(k)`` the other rows of ``k``'s class; times ``τ/base_temperature`` when that is given
    (HobbitLong's scaling; ``None``: ×1, PML's). The mean over the anchors is returned. Equal to
    pytorch-metric-learning's ``SupConLoss(τ)(embeddings, labels)`` and HobbitLong's
    ``SupConLoss(τ, base_temperature=...)`` on normalized features whenever every anchor has a
    positive. Similarities, exponentials and sums are computed in fp32 (fp64 for fp64 inputs on the
    ``"torch"``/``"reference"`` backends), also under ``torch.autocast``.

    Args:
        features: ``(B, V, D)``: ``V`` views (crops) of ``B`` samples; or ``(N, D)`` with
            ``labels`` (PML's form, ``V = 1``). Dimensions past the third are flattened.
        labels: ``(B,)`` integer class of each sample (any values). ``None`` with no ``mask``:
            every sample is its own class, i.e. multi-view SimCLR (needs ``V >= 2``; with ``V = 2``
            this is NT-Xent at the same τ).
        mask: ``(B, B)`` explicit positives, ``mask[i, j]`` = 1 if sample ``j`` is a positive of
            sample ``i`` (HobbitLong's; may be asymmetric or weighted). Not with ``labels``, not
            with ``gather_distributed`` across processes.
        temperature: τ, a real with ``abs(τ) >= 1e-8``; or a positive 0-dim tensor to learn it
            (``nn.Parameter``, ``1 / logit_scale.exp()``): it gets its exact gradient.
        base_temperature: ``None`` (no scaling) or HobbitLong's ``base_temperature`` (0.07 there):
            the loss is multiplied by ``τ / base_temperature``.
        contrast_mode: ``"all"``: every row is an anchor; ``"one"``: only view 0's rows are, the
            columns are still all rows.
        without_positives: anchors whose class has no other row: ``"drop"`` leaves them out of the
            mean (PML), ``"zero"`` counts them as 0 (HobbitLong).
        backend: ``"auto"``, ``"reference"`` (naive: materializes ``N × N``), ``"torch"``,
            ``"cpu"`` or ``"triton"``; see :func:`simclr_fast.nt_xent`.
        gather_distributed: rows and labels of every process of the default group are columns
            (and positives); each rank returns its share (module docstring), exact under DDP.

    Shape:
        features: ``(B, V, D)`` or ``(N, D)``; labels: ``(B,)``; mask: ``(B, B)``. Output: scalar.

    Returns:
        The loss, a 0-dim tensor (fp32; fp64 for fp64 features). 0 if no anchor has a positive
        with ``"drop"``.

    Raises:
        TypeError: non-tensor or non-floating features, non-integer labels, a bad temperature type.
        ValueError: labels of the wrong length, a mask of the wrong shape, labels and mask
            together, ``V = 1`` without labels or mask, a mask with ``gather_distributed`` across
            processes, bad options, devices that differ.
        RuntimeError: the chosen backend cannot run on these inputs.

    Examples:
        >>> import torch
        >>> from simclr_fast.supcon import supcon_loss
        >>> features = torch.randn(8, 2, 16)              # 8 samples, 2 views each
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = supcon_loss(features, labels, temperature=0.1)
        >>> ref = supcon_loss(features, labels, temperature=0.1, backend="reference")
        >>> torch.allclose(loss, ref)
        True
    """
    temperature = check_temperature(temperature)
    base_temperature = check_supcon_options(
        base_temperature, contrast_mode, without_positives, backend
    )
    features = _check_features(features)
    b, v, d = features.shape
    if labels is not None and mask is not None:
        raise ValueError(
            "pass labels or mask, not both: labels (B,) say which samples share a class, mask (B, B) "
            "lists the positives explicitly"
        )
    if labels is not None:
        _check_labels(labels, features)
    if mask is not None:
        _check_mask(mask, features)
    if labels is None and mask is None and v == 1:
        raise ValueError(
            f"features of shape {tuple(features.shape)} have one view per sample and no labels, so "
            "no row has a positive; pass labels (N,) (PML's form), or V >= 2 views as (B, V, D)"
        )
    world = distributed_world(gather_distributed)
    if mask is not None and world > 1:
        raise ValueError(
            "mask is not supported with gather_distributed=True across processes (a (B, B) mask "
            "cannot relate samples of different ranks); pass labels, which are gathered with the rows"
        )
    name = backends.resolve(backend, features.device, features.dtype)
    compute, kernel = compute_dtypes(features, features, name)
    scale = None
    if base_temperature is not None:
        scale = temperature / base_temperature
        if isinstance(scale, torch.Tensor):
            scale = scale.to(compute)
    opts = _Options(temperature, name, kernel, contrast_mode, without_positives, scale)
    with torch.autocast(features.device.type, enabled=False):
        # view-major rows: z[v·B + i] is view v of sample i (HobbitLong's cat(unbind(features, 1)))
        z = F.normalize(features.to(compute).transpose(0, 1).reshape(v * b, d), dim=1)
        if mask is not None:
            as_labels = _mask_as_labels(mask)
            if as_labels is None:
                return _masked(z, mask, b, v, opts)
            labels = as_labels
        if world > 1:
            return _gathered(z, labels, b, v, opts)
        cid = _class_ids(labels) if labels is not None else torch.arange(b, device=z.device)
        row_cid = _row_classes(cid, 1, v)
        m, partner = _positives(row_cid)
        anchor = _anchors(v * b, b, contrast_mode, z.device)
        inv_tau = inv_tau_tensor(temperature)
        if name == "reference":
            same = row_cid[:, None] == row_cid[None, :]
            ell, _ = _reference_rows(z, z, 0, same, inv_tau)
        else:
            zr = z.to(kernel).to(compute)
            shift = inv_tau.to(compute) * _positive_sum(zr, row_cid, partner) / m.clamp_min(1)
            x = RowLSE.apply(z, shift, inv_tau, name, kernel, partner, None)
            ell = torch.where(partner >= 0, F.softplus(x), x)
        valid = anchor & (m > 0)
        return _reduce(ell, valid, anchor, valid, 1, without_positives, scale, compute)


def _anchors(n: int, b: int, contrast_mode: str, device) -> torch.Tensor:
    """Which of a rank's ``n`` view-major rows are anchors: all, or view 0's ``b``."""
    idx = torch.arange(n, device=device)
    return idx < (b if contrast_mode == "one" else n)


def _masked(z, mask, b, v, opts: _Options):
    """One process, a general (not an equivalence) mask: weighted positives, ``ℓ = x``."""
    temperature, name, kernel, contrast_mode, without_positives, scale = opts
    compute = z.dtype
    n = z.shape[0]
    w = mask.to(compute)
    i = torch.arange(n, device=z.device) % b
    diag = w.diagonal()
    count = (v * w.sum(1) - diag)[i]
    has = count != 0
    anchor = _anchors(n, b, contrast_mode, z.device)
    inv_tau = inv_tau_tensor(temperature)
    if name == "reference":
        ell, _ = _reference_rows(z, z, 0, w[i][:, i], inv_tau)
    else:
        zr = z.to(kernel).to(compute)
        q = w @ zr.view(v, b, -1).sum(0)
        pos = torch.linalg.vecdot(zr, q[i]) - diag[i] * torch.linalg.vecdot(zr, zr)
        shift = inv_tau.to(compute) * pos / torch.where(has, count, torch.ones_like(count))
        x = RowLSE.apply(z, shift, inv_tau, name, kernel, None, None)
        ell = x
    valid = anchor & has
    return _reduce(ell, valid, anchor, valid, 1, without_positives, scale, compute)


def _gathered(z, labels, b, v, opts: _Options):
    """This rank's SupCon with the rows and labels of every rank (module docstring)."""
    temperature, name, kernel, contrast_mode, without_positives, scale = opts
    from simclr_fast.distributed import gather_with_grad, start_gathered

    compute = z.dtype
    per_sample = z.view(v, b, -1).transpose(0, 1).reshape(b, -1)
    rank, world = start_gathered(per_sample, temperature, what="features")
    n = z.shape[0]
    if labels is None:  # instance labels, unique across ranks
        local = torch.arange(b, device=z.device) + rank * b
    else:
        local = labels.to(torch.int64)
    labels_all = local.new_empty(world * b)
    _all_gather_into(labels_all, local.contiguous(), None)
    row_cid_all = _row_classes(_class_ids(labels_all), world, v)
    m_all, partner_all = _positives(row_cid_all)
    anchor_all = _anchors(n, b, contrast_mode, z.device).repeat(world)
    valid_all = anchor_all & (m_all > 0)
    mine = slice(rank * n, (rank + 1) * n)
    inv_tau = inv_tau_tensor(temperature)
    if name == "reference":
        z_all = gather_with_grad(z)
        same = row_cid_all[mine, None] == row_cid_all[None, :]
        ell, _ = _reference_rows(z, z_all, rank * n, same, inv_tau)
    else:
        zk = z.detach().to(kernel).contiguous()
        zr_all = zk.new_empty((world * n, zk.shape[1]))
        _all_gather_into(zr_all, zk, None)
        zr = z.to(kernel).to(compute)
        pos = _GatheredPositive.apply(zr, zr_all.to(compute), row_cid_all, partner_all, rank, None)
        shift = inv_tau.to(compute) * pos / m_all[mine].clamp_min(1)
        partner = partner_all[mine]
        x = GatheredRowLSE.apply(z, shift, inv_tau, name, kernel, partner, None, zr_all)
        ell = torch.where(partner >= 0, F.softplus(x), x)
    return _reduce(
        ell, valid_all[mine], anchor_all, valid_all, world, without_positives, scale, compute
    )


class SupConLoss(nn.Module):
    """Supervised contrastive loss (SupCon), fused: PML's and HobbitLong's values in ``O(N·D)`` memory.

    No ``N × N`` similarity matrix and no ``B × B`` mask is formed from labels: the row
    log-sum-exp comes from the same fused kernels as :class:`simclr_fast.NTXentLoss` and the
    positive term from per-class sums (:func:`supcon_loss`, docs/design.md §8).

    Args:
        temperature: τ (PML's default 0.1; HobbitLong's is 0.07); or a positive 0-dim tensor to
            learn it (``nn.Parameter``, ``1 / logit_scale.exp()``).
        base_temperature: ``None`` (PML: no scaling) or HobbitLong's ``base_temperature``: the loss
            is multiplied by ``τ / base_temperature``.
        contrast_mode: ``"all"`` (every row is an anchor) or ``"one"`` (view 0's rows only).
        gather_distributed: rows and labels of every process are columns and positives, with
            exact gradients under DDP; the local loss without a process group.
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``.
        without_positives: ``"drop"`` (PML, default) or ``"zero"`` (HobbitLong): what an anchor
            with no positive contributes.

    Shape:
        features: ``(B, V, D)`` or ``(N, D)``; labels: ``(B,)``; mask: ``(B, B)``. Output: scalar.

    Raises:
        ValueError: bad options (at construction), or bad inputs (see :func:`supcon_loss`).
        TypeError: arguments of the wrong type.

    Examples:
        >>> import torch
        >>> from simclr_fast import SupConLoss, NTXentLoss
        >>> out0, out1 = torch.randn(6, 32), torch.randn(6, 32)
        >>> multi_view = SupConLoss(temperature=0.5)(torch.stack([out0, out1], dim=1))
        >>> torch.allclose(multi_view, NTXentLoss(temperature=0.5)(out0, out1))
        True
        >>> embeddings, labels = torch.randn(12, 32), torch.tensor([0, 1, 2] * 4)
        >>> SupConLoss(temperature=0.1)(embeddings, labels).shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.1,
        base_temperature: float | None = None,
        contrast_mode: str = "all",
        gather_distributed: bool = False,
        backend: str = "auto",
        without_positives: str = "drop",
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.base_temperature = check_supcon_options(
            base_temperature, contrast_mode, without_positives, backend
        )
        if not isinstance(gather_distributed, bool):
            raise TypeError(
                f"gather_distributed must be a bool, got {type(gather_distributed).__name__}"
            )
        if gather_distributed and not dist.is_available():
            raise ValueError(
                "gather_distributed=True needs torch.distributed, which this PyTorch build lacks; "
                "use gather_distributed=False"
            )
        self.contrast_mode = contrast_mode
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.without_positives = without_positives

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean SupCon loss over the anchors; see :func:`supcon_loss`."""
        return supcon_loss(
            features,
            labels,
            mask,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            without_positives=self.without_positives,
            backend=self.backend,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"contrast_mode={self.contrast_mode!r}, without_positives={self.without_positives!r}, "
            f"gather_distributed={self.gather_distributed}, backend={self.backend!r}"
        )
