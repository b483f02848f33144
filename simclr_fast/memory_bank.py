"""MoCo-style negatives: lightly's memory bank, and the bank loss fused on the shifted row LSE.

:class:`MemoryBank` holds lightly 1.6's ``MemoryBankModule`` state with its exact semantics
(docs/design.md §7): an fp32 ``(K, D)`` buffer built as ``normalize(torch.randn((K, D)), dim=-1)``
from the global generator, a pointer, both registered with ``persistent=False`` (not in
``state_dict``, so a lightly model's checkpoint loads). :class:`simclr_fast.NTXentLoss` with
``memory_bank_size=(K, D)`` uses it; :meth:`MemoryBank.memory_bank_state_dict` and
:meth:`MemoryBank.load_memory_bank_state_dict` save and restore it explicitly.

The loss against a bank snapshot, :func:`memory_bank_loss`, is the anchors ``out0`` (``B`` rows)
against the columns ``[out1_i (own positive); bank_1 … bank_K]``::

    loss = (1/B) Σ_i [ log(e^{s_pos,i} + Σ_k e^{s_ik}) − s_pos,i ]
         = (1/B) Σ_i softplus(x_i),   x_i = log Σ_k e^{s_ik − s_pos,i}

with ``s_pos,i = z0_i·z1_i/τ`` and ``s_ik = z0_i·bank_k/τ``. The fused backends compute ``x`` with
the contract's keys mode (:mod:`simclr_fast.backends.base`: query rows × key columns, no
self-mask, the positive as the shift), so the ``B × (K+1)`` logits never exist and nothing cancels;
``out1`` gets its gradient through the shift only, the bank none: exactly lightly's gradients.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from simclr_fast._function import RowLSE, _all_gather_into, inv_tau_tensor
from simclr_fast.functional import distributed_world, prepare


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def parse_memory_bank_size(memory_bank_size: Any) -> tuple[int, int | None]:
    """``(K, D)`` from lightly's ``memory_bank_size``: ``(K, D)``, or a bare ``K`` (``D = None``).

    ``K = 0`` disables the bank. A bare ``K > 0`` is accepted with a ``UserWarning`` (deprecated, as
    in lightly: ``D`` is taken from the first batch).

    Raises:
        TypeError: not an int or a tuple/list of ints.
        ValueError: a negative size, a sequence that is not ``(K, D)``, or ``K > 0`` with ``D = 0``.
    """
    if _is_int(memory_bank_size):
        k = int(memory_bank_size)
        if k < 0:
            raise ValueError(
                f"memory_bank_size must be non-negative, got {k}; use memory_bank_size=(K, D) "
                "with K > 0 for a bank of K negatives, or 0 for none"
            )
        if k > 0:
            warnings.warn(
                f"memory_bank_size={k} without the feature dimension is deprecated (as in lightly): "
                f"the bank's dimension is taken from the first batch; pass memory_bank_size=({k}, D)",
                UserWarning,
                stacklevel=4,
            )
        return k, None
    if isinstance(memory_bank_size, (tuple, list)):
        if tuple(memory_bank_size) == (0,):  # lightly 1.6 accepts (0,) as "no bank"
            return 0, None
        if len(memory_bank_size) != 2:
            raise ValueError(
                f"memory_bank_size must be a (K, D) pair (bank size, embedding size), got "
                f"{tuple(memory_bank_size)!r} of length {len(memory_bank_size)}; e.g. (4096, 128)"
            )
        k, d = memory_bank_size
        for name, v in (("K", k), ("D", d)):
            if not _is_int(v):
                raise TypeError(
                    f"memory_bank_size=(K, D) must hold integers, got {name}={v!r} "
                    f"({type(v).__name__}); e.g. (4096, 128)"
                )
            if v < 0:
                raise ValueError(
                    f"memory_bank_size=(K, D) must be non-negative, got {name}={v}; e.g. (4096, 128)"
                )
        if k > 0 and d == 0:
            raise ValueError(
                f"memory_bank_size=({k}, 0): a bank of {k} keys needs an embedding size D >= 1"
            )
        return int(k), int(d)
    raise TypeError(
        f"memory_bank_size must be an int K or a (K, D) tuple, got {type(memory_bank_size).__name__}; "
        "e.g. (4096, 128), or 0 for no bank"
    )


class MemoryBank(nn.Module):
    """A FIFO queue of ``K`` detached keys: lightly 1.6's ``MemoryBankModule`` for ``NTXentLoss``.

    Args:
        size: ``(K, D)``; or a bare ``K`` (deprecated: ``D`` from the first batch). ``K = 0``
            disables the bank.
        gather_distributed: enqueue the keys of every process (all-gathered, no gradient) when a
            process group with more than one process is initialized.

    Buffers ``bank`` (fp32 ``(K, D)``) and ``bank_ptr`` (int64 ``(1,)``) are not in ``state_dict``
    (``persistent=False``, as in lightly); see :meth:`memory_bank_state_dict`.

    Raises:
        TypeError, ValueError: a bad ``size`` (see :func:`parse_memory_bank_size`).

    Examples:
        >>> import torch
        >>> from simclr_fast.memory_bank import MemoryBank
        >>> _ = torch.manual_seed(0)
        >>> bank = MemoryBank((8, 4))
        >>> bank.bank.shape, int(bank.bank_ptr)
        (torch.Size([8, 4]), 0)
        >>> bank.enqueue(torch.ones(3, 4))
        >>> int(bank.bank_ptr)
        3
    """

    def __init__(self, size: int | tuple[int, int], gather_distributed: bool = False) -> None:
        super().__init__()
        k, d = parse_memory_bank_size(size)
        self.size = (k,) if d is None else (k, d)
        self.gather_distributed = gather_distributed
        self.register_buffer("bank", torch.empty(0, dtype=torch.float32), persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        self._ptr = 0
        if d is not None:
            self._init_bank(d)

    @property
    def num_keys(self) -> int:
        """``K``; 0 when the bank is disabled."""
        return self.size[0]

    @property
    def initialized(self) -> bool:
        """Whether the ``(K, D)`` buffer exists (a bare ``K`` waits for the first batch)."""
        return self.bank.dim() == 2

    @torch.no_grad()
    def _init_bank(self, d: int) -> None:
        # lightly: randn in the default dtype from the global generator, then fp32, then normalize
        bank = torch.randn((self.size[0], d)).to(dtype=torch.float32, device=self.bank.device)
        self.bank = F.normalize(bank, dim=-1)
        self.size = (self.size[0], d)
        self._set_ptr(0)

    @property
    def ptr(self) -> int:
        """Where the next key goes: the Python copy (no device sync) unless a compiled call moved it."""
        return self._ptr if self._ptr is not None else int(self.bank_ptr)

    def _set_ptr(self, ptr: int) -> None:
        self._ptr = ptr
        self.bank_ptr.fill_(ptr)  # no host sync; the Python copy is what is read

    def keys(self, embedding_dim: int, clone: bool = True) -> torch.Tensor:
        """The ``(K, D)`` bank to use as this call's negatives (built first for a bare ``K``).

        Raises:
            ValueError: the bank's ``D`` differs from ``embedding_dim``.
        """
        if not self.initialized:
            self._init_bank(embedding_dim)
        if self.bank.shape[1] != embedding_dim:
            raise ValueError(
                f"the memory bank holds keys of dimension D={self.bank.shape[1]} but the embeddings "
                f"have D={embedding_dim}; use memory_bank_size=({self.size[0]}, {embedding_dim}) or "
                "project the embeddings to the bank's dimension"
            )
        return self.bank.detach().clone() if clone else self.bank.detach()

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        """Write ``batch`` (``(b, D)``, detached) at the pointer, lightly's way.

        With ``gather_distributed`` and more than one process, ``batch`` is first all-gathered
        (rank by rank). If ``ptr + b >= K`` the bank is filled to its end, the rest of the batch is
        dropped and the pointer goes back to 0; else ``bank[ptr:ptr+b] = batch`` and ``ptr += b``.
        """
        if not self.initialized:
            self._init_bank(batch.shape[1])
        batch = batch.detach().to(self.bank.dtype)
        if distributed_world(self.gather_distributed) > 1:
            local = batch.contiguous()
            batch = local.new_empty((dist.get_world_size() * local.shape[0], local.shape[1]))
            _all_gather_into(batch, local, None)
        if torch.compiler.is_compiling():
            self._enqueue_traced(batch.to(self.bank.device))
            return
        k, b, ptr = self.size[0], batch.shape[0], self.ptr
        if ptr + b >= k:
            self.bank[ptr:] = batch[: k - ptr].to(self.bank.device)
            self._set_ptr(0)
        else:
            self.bank[ptr : ptr + b] = batch.to(self.bank.device)
            self._set_ptr(ptr + b)

    def _enqueue_traced(self, batch: torch.Tensor) -> None:
        """The same enqueue with the pointer kept in the ``bank_ptr`` tensor, for ``torch.compile``.

        A Python-int pointer would be a constant of the traced graph (one graph per pointer value,
        then ``fullgraph=True`` fails at the recompile limit); here row ``j`` of the bank takes
        ``batch[j − ptr]`` where ``0 <= j − ptr < b``: the same rows, written by a ``(K, D)``
        select, one graph for every call.
        """
        k, b = self.size[0], batch.shape[0]
        offset = torch.arange(k, device=self.bank.device) - self.bank_ptr
        write = (offset >= 0) & (offset < b)
        rows = batch[offset.clamp(0, b - 1)]
        self.bank.copy_(torch.where(write[:, None], rows, self.bank))
        moved = self.bank_ptr + b
        self.bank_ptr.copy_(torch.where(moved >= k, torch.zeros_like(moved), moved))
        self._ptr = None  # the tensor holds the pointer now

    def memory_bank_state_dict(self) -> dict[str, Any]:
        """The bank's state for a checkpoint: ``{"size", "bank", "ptr"}`` (``bank`` a CPU copy or ``None``).

        ``state_dict()`` leaves the bank out (lightly's choice, so lightly checkpoints load); save
        this next to it, and restore with :meth:`load_memory_bank_state_dict`, for an exact resume.
        """
        bank = self.bank.detach().cpu().clone() if self.initialized else None
        return {"size": tuple(self.size), "bank": bank, "ptr": self.ptr}

    @torch.no_grad()
    def load_memory_bank_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`memory_bank_state_dict` returned.

        Raises:
            ValueError: the saved bank's shape or pointer does not fit this bank's ``K`` (and ``D``).
        """
        bank, ptr = state.get("bank"), state.get("ptr", 0)
        if bank is None:
            if self.initialized:
                raise ValueError(
                    "the saved memory bank state holds no bank (a bare K not yet used) but this bank "
                    f"has shape {tuple(self.bank.shape)}"
                )
            return
        k = self.size[0]
        want_d = self.size[1] if len(self.size) == 2 else bank.shape[-1]
        if bank.dim() != 2 or tuple(bank.shape) != (k, want_d):
            raise ValueError(
                f"the saved memory bank has shape {tuple(bank.shape)} but this bank is ({k}, {want_d}); "
                "construct the loss with the memory_bank_size it was saved with"
            )
        if not _is_int(ptr) or not 0 <= ptr < k:
            raise ValueError(f"the saved memory bank pointer {ptr!r} is not in [0, {k})")
        if self.initialized:  # in place: a DDP wrapper keeps references to the buffers
            self.bank.copy_(bank)
        else:
            self.bank = bank.to(dtype=torch.float32, device=self.bank.device).clone()
        self.size = (k, want_d)
        self._set_ptr(int(ptr))

    def extra_repr(self) -> str:
        return f"size={self.size}, gather_distributed={self.gather_distributed}"


def memory_bank_reference(
    out0: torch.Tensor, out1: torch.Tensor, bank: torch.Tensor, temperature: float = 0.5
) -> torch.Tensor:
    """The naive bank loss, lightly's formula: materializes the ``B × (K+1)`` logits.

    ``logits = [z0·z1 | z0 @ bankᵀ] / τ`` and the cross entropy with label 0, computed in the
    inputs' dtype (the bank cast to it); autograd gives the backward. The oracle of the tests and
    the "naive bank loss" of the benchmark.

    Examples:
        >>> import torch, math
        >>> from simclr_fast.memory_bank import memory_bank_reference
        >>> x = torch.ones(2, 3)
        >>> bank = torch.nn.functional.normalize(torch.ones(5, 3), dim=1)
        >>> math.isclose(memory_bank_reference(x, x, bank).item(), math.log(6), rel_tol=1e-6)
        True
    """
    z0 = F.normalize(out0, dim=1)
    z1 = F.normalize(out1, dim=1)
    keys = bank.detach().to(dtype=z0.dtype, device=z0.device)
    sim_pos = torch.linalg.vecdot(z0, z1).unsqueeze(-1)
    logits = torch.cat([sim_pos, z0 @ keys.T], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def _bank_loss_normalized(
    z0: torch.Tensor,
    z1: torch.Tensor,
    keys: torch.Tensor,
    temperature: float | torch.Tensor,
    name: str,
    kernel_dtype: torch.dtype,
) -> torch.Tensor:
    """The bank loss of normalized ``z0, z1`` (compute dtype) against ``keys`` on backend ``name``."""
    if name == "reference":
        return memory_bank_reference(z0, z1, keys, temperature).to(z0.dtype)
    inv_tau = inv_tau_tensor(temperature)
    # the positive logit from the same rounding of z the kernels read, so shift and tiles agree
    z0r = z0.to(kernel_dtype).to(z0.dtype)
    z1r = z1.to(kernel_dtype).to(z1.dtype)
    shift = torch.linalg.vecdot(z0r, z1r) * inv_tau.to(z0.dtype)
    keys = keys.to(device=z0.device)
    x = RowLSE.apply(z0, shift, inv_tau, name, kernel_dtype, None, keys)
    return F.softplus(x).mean().to(z0.dtype)


def _check_bank(bank: torch.Tensor, out0: torch.Tensor) -> None:
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2 or not bank.is_floating_point():
        raise TypeError(
            "bank must be a floating (K, D) tensor of keys, got "
            + (
                f"shape {tuple(bank.shape)}, {bank.dtype}"
                if isinstance(bank, torch.Tensor)
                else type(bank).__name__
            )
        )
    if bank.shape[1] != out0.shape[1]:
        raise ValueError(
            f"the bank's keys have D={bank.shape[1]} but the embeddings have D={out0.shape[1]}; "
            "they must match"
        )


def memory_bank_loss(
    out0: torch.Tensor,
    out1: torch.Tensor,
    bank: torch.Tensor,
    temperature: float | torch.Tensor = 0.5,
    backend: str = "auto",
) -> torch.Tensor:
    """The memory-bank (MoCo-style) NT-Xent of ``out0`` against ``[out1_i; bank]``, fused.

    The value and gradients of lightly's ``NTXentLoss(memory_bank_size=(K, D))`` for one call,
    given the bank's snapshot; nothing is enqueued (:class:`simclr_fast.NTXentLoss` does that).
    The fused backends never materialize the ``B × (K+1)`` logits: memory ``O(B·D + K·D)``.

    Args:
        out0: Query embeddings (the anchors).
        out1: Their positives (row ``i`` is ``out0[i]``'s other view).
        bank: ``(K, D)`` keys (normalized, as the bank keeps them); no gradient reaches them.
        temperature: τ; ``abs(τ) >= 1e-8``, negative allowed; or a positive 0-dim tensor to learn.
        backend: ``"auto"``, ``"reference"`` (lightly's naive formula), ``"torch"``, ``"cpu"``,
            ``"triton"``.

    Shape:
        out0, out1: ``(B, D)``; bank: ``(K, D)``. Output: scalar.

    Returns:
        The mean over the ``B`` anchors (fp32; fp64 for fp64 inputs).

    Raises:
        TypeError: non-tensor or non-floating inputs or bank.
        ValueError: bad shapes, a bank whose ``D`` differs from the embeddings', bad temperature.

    Examples:
        >>> import torch, math
        >>> from simclr_fast.memory_bank import memory_bank_loss
        >>> x = torch.ones(4, 8)  # every key collinear with every query: log(K + 1)
        >>> bank = torch.nn.functional.normalize(torch.ones(16, 8), dim=1)
        >>> math.isclose(memory_bank_loss(x, x, bank).item(), math.log(17), rel_tol=1e-6)
        True
    """
    temperature, name, compute, kernel = prepare(out0, out1, temperature, backend)
    _check_bank(bank, out0)
    with torch.autocast(out0.device.type, enabled=False):
        z0 = F.normalize(out0.to(compute), dim=1)
        z1 = F.normalize(out1.to(compute), dim=1)
        return _bank_loss_normalized(z0, z1, bank.detach(), temperature, name, kernel)
