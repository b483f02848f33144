"""Batches beyond memory: the cached-gradient training step (gradient caching, Gao et al. 2021,
arXiv 2101.06983; docs/design.md §10).

The fused loss costs ``O(B·D)`` memory, but the encoder's activations for backward grow with the
batch. :func:`cached_backward` makes the step's memory independent of the batch:

1. embed every micro-batch with autograd off, saving each one's random-number state;
2. compute the loss and ``d loss / d embeddings`` on the full batch (the embeddings are leaves);
3. per micro-batch, restore its random-number state, embed it again with autograd on and
   backpropagate its slice of the cached gradient.

Peak memory is about one micro-batch's activations plus the embeddings; the cost is one extra
forward pass (without autograd) per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["cached_backward", "micro_batches"]


@dataclass(frozen=True)
class Segment:
    """Rows ``start:stop`` of input ``view`` (a contiguous piece of one micro-batch)."""

    view: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def micro_batches(
    batch: int, views: int, micro_batch: int, shuffle_views: bool = False
) -> list[list[Segment]]:
    """Which rows of which input go into each micro-batch.

    The batch's ``batch`` images are cut into blocks of ``micro_batch`` (the last one may be
    smaller). By default micro-batch ``k`` holds block ``k`` of every view, so it is
    ``views × micro_batch`` rows. With ``shuffle_views`` micro-batch ``k`` holds block
    ``(k + v) mod n`` of view ``v`` (``n`` blocks): the views of one image always land in different
    micro-batches, each micro-batch still mixes all views.

    Args:
        batch: images per input (``B``).
        views: number of inputs (``V``, 2 for SimCLR).
        micro_batch: images per block.
        shuffle_views: rotate the blocks of each view as described above.

    Returns:
        One list of :class:`Segment` per micro-batch, in the order the model sees them.

    Examples:
        >>> [[(s.view, s.start, s.stop) for s in mb] for mb in micro_batches(5, 2, 2)]
        [[(0, 0, 2), (1, 0, 2)], [(0, 2, 4), (1, 2, 4)], [(0, 4, 5), (1, 4, 5)]]
        >>> [[(s.view, s.start, s.stop) for s in mb] for mb in micro_batches(5, 2, 2, True)]
        [[(0, 0, 2), (1, 2, 4)], [(0, 2, 4), (1, 4, 5)], [(0, 4, 5), (1, 0, 2)]]
    """
    blocks = [(s, min(s + micro_batch, batch)) for s in range(0, batch, micro_batch)]
    n = len(blocks)
    plan = []
    for k in range(n):
        plan.append(
            [Segment(v, *blocks[(k + v) % n if shuffle_views else k]) for v in range(views)]
        )
    return plan


# ----------------------------------------------------------------------------------- checks


def _check_inputs(inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(
            f"inputs must be a tensor or a tuple of tensors (one batch per view), "
            f"got {type(inputs).__name__}"
        )
    if not inputs:
        raise ValueError("inputs is empty: pass one tensor per view, e.g. (view0, view1)")
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"inputs[{i}] must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError(f"inputs[{i}] is 0-dim; each input needs a batch dimension first")
    sizes = [x.shape[0] for x in inputs]
    if len(set(sizes)) != 1:
        raise ValueError(
            f"inputs have unequal batch sizes {sizes}: every view must hold the same images, "
            "row for row (use drop_last=True in the loader)"
        )
    if sizes[0] == 0:
        raise ValueError("inputs are empty (batch size 0); the step needs at least one image")
    return tuple(inputs)


def _check_micro_batch(micro_batch) -> int:
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int):
        raise TypeError(
            f"micro_batch must be an int (images per micro-batch), got {type(micro_batch).__name__}"
        )
    if micro_batch <= 0:
        raise ValueError(
            f"micro_batch must be >= 1 (images per micro-batch), got {micro_batch}; "
            "e.g. micro_batch=64"
        )
    return micro_batch


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile``'s wrapper (``_orig_mod``), if any."""
    return getattr(model, "_orig_mod", model)


def _check_mode(model: nn.Module, allow_eval: bool) -> None:
    if not torch.is_grad_enabled():
        raise RuntimeError(
            "cached_backward was called with autograd disabled (inside torch.no_grad() or "
            "torch.inference_mode()); call it where gradients are enabled"
        )
    if _unwrap(model).training or allow_eval:
        return
    bns = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if bns:
        raise ValueError(
            f"model is in eval mode and has BatchNorm layers ({bns[0]!r}"
            + (f" and {len(bns) - 1} more" if len(bns) > 1 else "")
            + "): they would normalize with running statistics instead of per-micro-batch "
            "statistics; call model.train() before the step, or pass allow_eval=True if "
            "frozen BatchNorm is intended"
        )


def _check_loss(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"loss_fn must return a scalar tensor, got {type(loss).__name__}; return e.g. "
            "loss.mean()"
        )
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar, got shape {tuple(loss.shape)}; reduce it first "
            "(e.g. .mean() or .sum())"
        )
    if not loss.requires_grad:
        raise ValueError(
            "loss_fn's result does not depend on the embeddings (no gradient flows into it); "
            "compute the loss from the tensors passed to loss_fn, without .detach()"
        )
    return loss


def _check_output(out, rows: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"model must return a tensor of embeddings (rows, ...), got {type(out).__name__}"
        )
    if out.dim() == 0 or out.shape[0] != rows:
        raise ValueError(
            f"model returned shape {tuple(out.shape)} for {rows} input rows; it must return one "
            "embedding per input row"
        )
    return out


# ------------------------------------------------------------------------ random-number state


def _cuda_devices(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[int]:
    """CUDA devices whose generators the forward may draw from: the inputs', the parameters' and
    the current device (as ``torch.utils.checkpoint`` does, plus the model's devices)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    devices = {x.device.index for x in inputs if x.is_cuda}
    for t in (*model.parameters(), *model.buffers()):
        if t.is_cuda:
            devices.add(t.device.index)
    if devices:
        devices.add(torch.cuda.current_device())
    return sorted(devices)


def _get_rng(devices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng(state: tuple[torch.Tensor, list[torch.Tensor]], devices: list[int]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for d, s in zip(devices, cuda):
        torch.cuda.set_rng_state(s, d)


# ----------------------------------------------------------------------------------- the step


def _ddp(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    inner = _unwrap(model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


def _gather(tensors: Sequence[torch.Tensor], segments: list[Segment]) -> torch.Tensor:
    parts = [tensors[s.view][s.start : s.stop] for s in segments]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def cached_backward(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    micro_batch: int,
    *,
    shuffle_views: bool = False,
    allow_eval: bool = False,
) -> torch.Tensor:
    """Backpropagate ``loss_fn(*embeddings)`` through ``model`` one micro-batch at a time.

    Accumulates into the parameters' ``.grad`` what
    ``loss_fn(*[model(x) for x in inputs]).backward()`` would, while holding the activations of
    only one micro-batch at a time (gradient caching, Gao et al. 2021, arXiv 2101.06983;
    docs/design.md §10): every micro-batch is embedded without autograd, the loss and its gradient
    with respect to the embeddings are computed on the full batch, then each micro-batch is
    embedded again with autograd and its slice of the cached gradient is backpropagated. Cost:
    one extra forward pass without autograd. Memory: one micro-batch's activations plus the
    embeddings (and whatever ``loss_fn`` needs: ``O(B·D)`` with the fused loss).

    The micro-batches: the ``B`` images are cut into blocks of ``micro_batch``; micro-batch
    ``k`` is block ``k`` of every view concatenated, one ``model`` call on ``V × micro_batch``
    rows (``micro_batch`` need not divide ``B``; the last block is smaller).

    - Exactness: the gradients are those of the full-batch step for encoders without
      batch-coupled layers (GroupNorm, LayerNorm, no norm), up to rounding.
    - Dropout, stochastic depth: each micro-batch's second forward replays the torch random-number
      state of its first (the CPU generator and the CUDA generators of the inputs', the
      parameters' and the current device), so the masks of both passes are the same. After the
      step the generators are where the first pass left them. Other generators (Python,
      NumPy, a ``torch.Generator`` the model keeps) are not replayed.
    - BatchNorm: statistics are per micro-batch (like ghost batch norm), so with BatchNorm the
      gradients are those of a full-batch step whose BN layers normalize each micro-batch on its
      own. Running statistics (every buffer of ``model``) are updated by the first pass only,
      once per micro-batch; the second pass leaves them as the first one did. With
      ``micro_batch >= B`` the step is exactly the plain step on ``model(torch.cat(inputs))``
      (what ``simclr-fast train`` does), BatchNorm included.
    - ``shuffle_views=True`` (shuffle-BN, against BN leaking which rows are positives): view ``v``
      of block ``k`` goes to micro-batch ``(k - v) mod n``, so the views of one image are never
      normalized together. Needs at least ``V`` blocks.
    - DDP: with a ``DistributedDataParallel`` model, all but the last second-pass forward run
      under ``no_sync()``, so the gradients are all-reduced once per step. With
      ``NTXentLoss(gather_distributed=True)`` the result is the single-process full-batch
      gradient. Every rank must use the same ``B`` and ``micro_batch`` (the same number of
      forwards).
    - Works under ``torch.autocast`` (both passes and ``loss_fn`` run in the caller's autocast
      context), with ``channels_last`` inputs and ``torch.compile``-d models (two graphs: one with
      autograd, one without).
    - Gradient hooks on parameters fire once per micro-batch, not once per step. Gradients also
      flow into inputs that require them and into ``loss_fn``'s own parameters (a learnable
      temperature).

    Args:
        model: the encoder (and head): maps a batch of rows to one embedding per row.
        inputs: one batch per view, ``(x0, x1)`` for SimCLR, or one tensor.
        loss_fn: called once as ``loss_fn(*embeddings)`` on the full-batch embeddings (one tensor
            per input) and returns a scalar: :class:`simclr_fast.NTXentLoss`, a closure over
            labels (``lambda z: supcon(z, labels)``), any callable.
        micro_batch: images per micro-batch (rows taken from each input per forward).
        shuffle_views: put the views of an image into different micro-batches (see above).
        allow_eval: accept a model in eval mode that has BatchNorm layers (frozen BN). Without it
            such a model raises, since its BN layers would not see per-micro-batch statistics.

    Shape:
        inputs: ``V`` tensors ``(B, ...)``, same ``B``. ``model(x)``: ``(N, ...) -> (N, D...)``.
        Output: scalar.

    Returns:
        The loss, detached (the value ``loss_fn`` returned).

    Raises:
        TypeError: ``micro_batch`` is not an int, ``inputs`` are not tensors, ``loss_fn`` does not
            return a tensor or ``model`` does not return one.
        ValueError: ``micro_batch <= 0``, inputs with unequal batch sizes or empty, a non-scalar
            loss or one that does not depend on the embeddings, a model output without one row
            per input row, a model in eval mode with BatchNorm layers (see ``allow_eval``),
            ``shuffle_views`` with fewer blocks than views.
        RuntimeError: called under ``torch.no_grad()``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from simclr_fast import NTXentLoss, cached_backward
        >>> model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
        >>> x0, x1 = torch.randn(100, 32), torch.randn(100, 32)
        >>> loss = cached_backward(model, (x0, x1), NTXentLoss(0.5), micro_batch=32)
        >>> plain = [p.grad.clone() for p in model.parameters()]
        >>> model.zero_grad()
        >>> NTXentLoss(0.5)(model(x0), model(x1)).backward()
        >>> all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, model.parameters()))
        True
    """
    micro_batch = _check_micro_batch(micro_batch)
    inputs = _check_inputs(inputs)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_mode(model, allow_eval)
    batch, views = inputs[0].shape[0], len(inputs)
    plan = micro_batches(batch, views, micro_batch, shuffle_views)
    if shuffle_views and len(plan) < views:
        raise ValueError(
            f"shuffle_views=True needs at least {views} micro-batches (one per view) to keep the "
            f"views of an image apart; batch {batch} with micro_batch={micro_batch} gives "
            f"{len(plan)}; use micro_batch <= {batch // views}"
        )
    devices = _cuda_devices(model, inputs)

    # 1. embed every micro-batch without autograd; remember each one's random-number state
    states, embeddings = [], None
    with torch.no_grad():
        for segments in plan:
            states.append(_get_rng(devices))
            rows = sum(s.rows for s in segments)
            out = _check_output(model(_gather(inputs, segments)), rows)
            if embeddings is None:
                embeddings = [out.new_empty((batch, *out.shape[1:])) for _ in range(views)]
            for s, piece in zip(segments, out.split([s.rows for s in segments])):
                embeddings[s.view][s.start : s.stop] = piece
            del out
    after_first_pass = _get_rng(devices)

    # 2. the loss and d loss / d embeddings on the full batch
    leaves = [e.requires_grad_() for e in embeddings]
    loss = _check_loss(loss_fn(*leaves))
    loss.backward()
    grads = [e.grad if e.grad is not None else torch.zeros_like(e) for e in leaves]
    del leaves, embeddings

    # 3. per micro-batch: replay its random-number state, re-embed with autograd, backpropagate
    buffers = [b for b in model.buffers()]
    saved = [b.detach().clone() for b in buffers]
    ddp = _ddp(model)
    try:
        for k, segments in enumerate(plan):
            last = k == len(plan) - 1
            sync = contextlib.nullcontext() if ddp is None or last else ddp.no_sync()
            _set_rng(states[k], devices)
            with sync:
                out = model(_gather(inputs, segments))
                out.backward(_gather(grads, segments))
            del out
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
        _set_rng(after_first_pass, devices)
    return loss.detach()
