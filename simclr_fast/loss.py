"""``NTXentLoss``: the public ``nn.Module``, a drop-in for lightly's ``NTXentLoss`` (memory bank included)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simclr_fast import backends
from simclr_fast.functional import check_temperature, nt_xent, prepare
from simclr_fast.memory_bank import MemoryBank, _bank_loss_normalized


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent loss, fused: same constructor, value and gradients as lightly's ``NTXentLoss``.

    Without a memory bank (``memory_bank_size=0``) the loss is over the ``2B`` rows of
    ``cat(out0, out1)`` with in-batch negatives; the ``2B × 2B`` similarity matrix is never
    materialized by the fused backends (they keep the normalized embeddings and one log-sum-exp
    per row, and recompute tiles in the backward).

    With ``memory_bank_size=(K, D)`` it is lightly 1.6's MoCo-style loss (docs/design.md §7): the
    anchors are ``out0``'s ``B`` rows, each against its own positive ``out1_i`` and the ``K``
    bank keys (a snapshot taken before this call's enqueue); the loss is the mean over ``B``. Then
    ``out1`` (normalized, detached) is enqueued, but only when ``out0`` requires a gradient (an
    evaluation call under ``torch.no_grad()`` leaves the bank as it is). The bank is an fp32
    buffer made at construction as ``normalize(torch.randn((K, D)), dim=-1)`` from the global
    generator (the same seed gives lightly's numbers); like lightly it is not in ``state_dict``:
    save it with :meth:`memory_bank_state_dict`. The fused backends never form the ``B × (K+1)``
    logits: memory ``O(B·D + K·D)``.

    Args:
        temperature: τ, scales the similarities by ``1/τ``; ``abs(τ) >= 1e-8``, negative allowed;
            or a positive 0-dim tensor (e.g. an ``nn.Parameter``) to learn it.
        memory_bank_size: ``0`` (SimCLR, no bank) or ``(K, D)`` (a bank of ``K`` keys of size
            ``D``). A bare int ``K > 0`` is accepted with a ``UserWarning`` (deprecated, as on
            lightly's main branch; lightly 1.6.0 raises): ``D`` is then taken from the first
            batch, and the bank is drawn at that first call.
        gather_distributed: without a bank, gather negatives from all processes of the default
            ``torch.distributed`` group, with exact gradients (docs/design.md §3); with a bank,
            enqueue every process's ``out1`` (all-gathered without gradient) while the loss stays
            local. Without an initialized process group (or with one process) this changes
            nothing, as in lightly.
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``; see
            :func:`simclr_fast.nt_xent`.

    Shape:
        out0, out1: ``(B, D)``. Output: scalar (fp32; fp64 for fp64 inputs; fp32 for two
        different dtypes).

    Raises:
        ValueError: ``abs(temperature) < 1e-8``, a negative or malformed ``memory_bank_size``, an
            unknown backend, ``gather_distributed=True`` where ``torch.distributed`` is not
            available; in ``forward``, embeddings whose ``D`` differs from the bank's.
        TypeError: arguments of the wrong type (e.g. a non-integer bank size).

    Examples:
        >>> import torch
        >>> from simclr_fast import NTXentLoss
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> out0 = torch.randn(16, 128, requires_grad=True)
        >>> out1 = torch.randn(16, 128, requires_grad=True)
        >>> loss = loss_fn(out0, out1)
        >>> loss.backward()
        >>> out0.grad.shape
        torch.Size([16, 128])
        >>> moco = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))
        >>> loss = moco(out0, out1)  # against 4096 bank keys; then out1 is enqueued
        >>> moco.memory_bank_state_dict()["ptr"]
        16
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.5,
        memory_bank_size: int | tuple[int, int] = 0,
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        if not isinstance(gather_distributed, bool):
            raise TypeError(
                f"gather_distributed must be a bool, got {type(gather_distributed).__name__}"
            )
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError(
                "gather_distributed=True needs torch.distributed, which this PyTorch build lacks; "
                "use gather_distributed=False"
            )
        if backend not in backends.BACKENDS:
            raise ValueError(f"backend must be one of {backends.BACKENDS}, got {backend!r}")
        self.memory_bank = MemoryBank(memory_bank_size, gather_distributed=gather_distributed)
        self.memory_bank_size = memory_bank_size
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """The loss of this batch (and, with a bank in training, the enqueue of ``out1``)."""
        if self.memory_bank.num_keys == 0:
            return nt_xent(
                out0,
                out1,
                temperature=self.temperature,
                backend=self.backend,
                gather_distributed=self.gather_distributed,
            )
        temperature, name, compute, kernel = prepare(out0, out1, self.temperature, self.backend)
        with torch.autocast(out0.device.type, enabled=False):
            z0 = F.normalize(out0.to(compute), dim=1)
            z1 = F.normalize(out1.to(compute), dim=1)
            update = z0.requires_grad  # lightly: enqueue only when a backward will follow
            keys = self.memory_bank.keys(z0.shape[1], clone=update or z1.requires_grad)
            loss = _bank_loss_normalized(z0, z1, keys, temperature, name, kernel)
            if update:
                self.memory_bank.enqueue(z1)
        return loss

    def memory_bank_state_dict(self) -> dict[str, Any]:
        """The memory bank's keys and pointer, for a checkpoint (``state_dict()`` leaves them out).

        Returns ``{"size", "bank", "ptr"}``; ``bank`` is a CPU copy, ``None`` without a bank (or
        for a bare ``K`` before the first batch). Restore with :meth:`load_memory_bank_state_dict`.
        """
        return self.memory_bank.memory_bank_state_dict()

    def load_memory_bank_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the bank saved by :meth:`memory_bank_state_dict`, so a resumed run is exact.

        Raises:
            ValueError: the saved bank's shape does not match this loss's ``memory_bank_size``.
        """
        self.memory_bank.load_memory_bank_state_dict(state)

    def extra_repr(self) -> str:
        bank = f", memory_bank_size={self.memory_bank.size}" if self.memory_bank.num_keys else ""
        return (
            f"temperature={self.temperature}{bank}, gather_distributed={self.gather_distributed}, "
            f"backend={self.backend!r}"
        )
