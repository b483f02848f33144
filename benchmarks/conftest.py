"""Fixtures of the pytest-benchmark suite (``pytest benchmarks/ --benchmark-only``).

The device is CUDA when one is visible, else the CPU; set ``SIMCLR_FAST_BENCH_DEVICE=cpu`` (or
``cuda:1``) to choose. Inputs are seeded: every provider of a case sees the same embeddings.
"""

from __future__ import annotations

import os

import pytest
import torch


def bench_device() -> torch.device:
    name = os.environ.get("SIMCLR_FAST_BENCH_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return bench_device()


def make_inputs(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Two views of ``n // 2`` random embeddings each, requiring grad (the same numbers as the CLI's)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out0 = torch.randn(n // 2, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    out1 = torch.randn(n // 2, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    return out0, out1


def free_memory_bytes(device: torch.device) -> int:
    """Memory a case may take: the free GPU memory, or the ``simclr-fast bench`` default cap on CPU
    (half the RAM, and no more than 90 % of what is available now). A case whose estimated
    footprint is larger is skipped rather than run into the out-of-memory killer
    (``simclr-fast bench`` records such cases as rows instead)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    from simclr_fast.bench._measure import total_ram_bytes
    from simclr_fast.bench.loss import DEFAULT_RAM_FRACTION

    cap = int(DEFAULT_RAM_FRACTION * (total_ram_bytes() or 8 * 2**30))
    try:
        import psutil

        cap = min(cap, int(0.9 * psutil.virtual_memory().available))
    except ImportError:
        pass
    return cap
