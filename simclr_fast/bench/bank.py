"""The memory-bank case of ``simclr-fast bench loss --loss bank``: providers, work and memory models.

``B`` anchors (``--sizes`` gives 2B as for NT-Xent: 2B = 512 is B = 256) against their positives
and a bank of ``K`` keys (``--bank-size``), forward+backward of a full ``NTXentLoss(memory_bank_size
=(K, D))`` call: the snapshot of the bank, the loss, and the enqueue. Providers:

- ``naive``: the same module with ``backend="reference"``, lightly's formula (the ``B × (K+1)``
  logits materialized, autograd backward);
- ``lightly``: ``lightly.loss.NTXentLoss(memory_bank_size=(K, D))`` when lightly imports;
- every fused backend (``torch``, ``cpu``, ``triton``): keys-mode tiles, ``O(B·D + K·D)`` memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from simclr_fast.bench import _providers as P

#: The issue's case: B = 256 anchors, K = 65536 keys (MoCo's queue), D = 128.
DEFAULT_BANK_SIZE = 65536
PROVIDERS = ("naive", "lightly", *P.FUSED)

#: Footprint model of lightly's formula, bytes per ``B·K`` logit: lightly's bank mode measured
#: 173 MiB at B = 256, K = 65536, D = 128 (docs/design.md §7), i.e. 2.7 fp32 copies of the logits
#: (10.8 bytes per logit; the 32 MiB bank clone included). 16 kept as the conservative figure.
_BYTES_PER_BK = 16


def useful_flops(n: int, d: int, k: int) -> tuple[float, float]:
    """The naive bank loss's GEMM FLOPs ``(2·B·K·D, 2·B·K·D)`` for (fwd, bwd), with ``B = n/2``."""
    base = float(n // 2) * k * d
    return 2 * base, 2 * base


@dataclass(frozen=True)
class BankProvider(P.Provider):
    """A provider of the bank case; ``flop_factors`` are in units of ``B·K·D``."""

    bank_size: int = DEFAULT_BANK_SIZE

    def own_flops(self, n: int, d: int) -> tuple[float, float]:
        base = float(n // 2) * self.bank_size * d
        return self.flop_factors[0] * base, self.flop_factors[1] * base

    def estimate_bytes(self, n: int, d: int, dtype: torch.dtype) -> int:
        elt = max(torch.empty((), dtype=dtype).element_size(), 4)
        bank = 2 * self.bank_size * d * 4  # the buffer's snapshot, and a kernel-dtype copy
        vectors = 12 * n * d * elt
        if self.bytes_per_n2:  # per B·K logit here
            return int(self.bytes_per_n2 * (n // 2) * self.bank_size) + bank + vectors
        return P._FUSED_BLOCK_BYTES + bank + vectors


def get_provider(name: str, bank_size: int) -> BankProvider:
    """The bank-case provider ``name`` (one of :data:`PROVIDERS`)."""
    if name == "naive":
        desc = 'NTXentLoss(memory_bank_size=(K, D), backend="reference"): lightly\'s formula'
        return BankProvider(name, desc, (2, 2), _BYTES_PER_BK, bank_size=bank_size)
    if name == "lightly":
        desc = "lightly.loss.NTXentLoss(memory_bank_size=(K, D))"
        return BankProvider(name, desc, (2, 2), _BYTES_PER_BK, bank_size=bank_size)
    if name in P.FUSED:
        desc = f'NTXentLoss(memory_bank_size=(K, D), backend="{name}") (fused keys mode)'
        return BankProvider(name, desc, (2, 4), bank_size=bank_size)
    raise ValueError(f"unknown bank provider {name!r}; choose from {PROVIDERS}")


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why bank provider ``name`` cannot run here, or ``None``."""
    if name not in PROVIDERS:
        return f"not a provider of the bank case (choose from {', '.join(PROVIDERS)})"
    return P.unavailable_reason(name, device, dtype)


def make_loss(
    name: str, temperature: float, bank_size: int, d: int, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(out0, out1) -> loss`` of one full bank call (snapshot, loss, enqueue) for provider ``name``."""
    if name == "lightly":
        from lightly.loss import NTXentLoss as LightlyNTXent

        module = LightlyNTXent(temperature=temperature, memory_bank_size=(bank_size, d))
    else:
        from simclr_fast import NTXentLoss

        backend = "reference" if name == "naive" else name
        module = NTXentLoss(temperature, memory_bank_size=(bank_size, d), backend=backend)
    module = module.to(device)
    return lambda a, b: module(a, b)
