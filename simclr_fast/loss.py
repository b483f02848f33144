"""``NTXentLoss``: the public ``nn.Module``, a drop-in for lightly's ``NTXentLoss``."""

from __future__ import annotations

import torch
from torch import nn

from simclr_fast import backends
from simclr_fast.functional import check_temperature, nt_xent


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent loss, fused: same constructor, value and gradients as lightly's ``NTXentLoss``.

    The ``2B × 2B`` similarity matrix is never materialized by the fused backends: they keep the
    normalized embeddings and one log-sum-exp per row and recompute tiles in the backward.

    Args:
        temperature: τ, scales the similarities by ``1/τ``; ``abs(τ) >= 1e-8``, negative allowed;
            or a positive 0-dim tensor (e.g. an ``nn.Parameter``) to learn it.
        memory_bank_size: accepted for drop-in compatibility with lightly; only ``0`` (SimCLR, no
            memory bank) is supported.
        gather_distributed: gather negatives from all processes of the default
            ``torch.distributed`` group, with exact gradients (docs/design.md §3). Without an
            initialized process group (or with one process) the loss is the local one, as in
            lightly.
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``; see
            :func:`simclr_fast.nt_xent`.

    Shape:
        out0, out1: ``(B, D)``. Output: scalar (fp32; fp64 for fp64 inputs).

    Raises:
        ValueError: ``abs(temperature) < 1e-8``, a non-zero ``memory_bank_size``, an unknown backend,
            or ``gather_distributed=True`` where ``torch.distributed`` is not available.
        TypeError: arguments of the wrong type.

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
    """

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: int = 0,
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        if isinstance(memory_bank_size, (tuple, list)):
            memory_bank_size = memory_bank_size[0] if memory_bank_size else 0
        if memory_bank_size != 0:
            raise ValueError(
                f"memory_bank_size={memory_bank_size!r} is not supported: simclr_fast implements SimCLR's "
                "in-batch negatives; use memory_bank_size=0 (the default) and a larger batch, or "
                "gather_distributed=True for negatives from every process"
            )
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
        self.memory_bank_size = 0
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """The mean NT-Xent over the ``2B`` rows of ``cat(out0, out1)``."""
        return nt_xent(
            out0,
            out1,
            temperature=self.temperature,
            backend=self.backend,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, backend={self.backend!r}"
