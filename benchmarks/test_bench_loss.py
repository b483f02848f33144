"""pytest-benchmark suite: the cases of ``simclr-fast bench loss`` as pytest-benchmark groups.

Run: ``.venv/bin/pytest benchmarks/ --benchmark-only`` (add ``-m slow`` or ``-m "slow or not slow"``
for 2B = 16384; ``--benchmark-json out.json`` to keep the numbers). One group per (pass, 2B, D,
dtype), one benchmark per provider, so pytest-benchmark's table compares providers side by side.

What this suite measures: time (pytest-benchmark's rounds after a warm-up round; CUDA calls are
followed by ``torch.cuda.synchronize()`` inside the timed function). What it does not: peak memory,
the matmul yardstick and out-of-memory cases; ``simclr-fast bench`` measures those, each case in its
own process. ``extra_info`` carries the FLOP counts, so GFLOP/s = ``useful_gflop / median``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import bench_device, free_memory_bytes, make_inputs

from simclr_fast.bench import _providers as P

TEMPERATURE = 0.5
D = 128
#: 2B = 16384 takes seconds per call for the naive loss on a small CPU: opt in with -m slow.
SIZES = [1024, 4096, pytest.param(16384, marks=pytest.mark.slow)]
PASSES = ["fwd", "bwd", "fwdbwd"]


def _all_providers() -> list[str]:
    device = bench_device()
    return list(P.BASELINES) + [
        b for b in P.FUSED if P.unavailable_reason(b, device, torch.float32) is None
    ]


@pytest.mark.parametrize("provider", _all_providers())
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("which", PASSES)
def test_loss(benchmark, device, provider, n, which):
    reason = P.unavailable_reason(provider, device, torch.float32)
    if reason is not None:
        pytest.skip(reason)
    dtype = torch.float32
    meta = P.get_provider(provider)
    est = meta.estimate_bytes(n, D, dtype)
    free = free_memory_bytes(device)
    if est > free:
        pytest.skip(
            f"needs ~{est / 2**30:.1f} GB (estimated), over this run's memory allowance of {free / 2**30:.1f} GB"
        )
    loss_fn = P.make_loss(provider, TEMPERATURE)
    out0, out1 = make_inputs(n, D, dtype, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def clear():
        out0.grad = out1.grad = None

    if which == "fwd":

        def setup():
            clear()
            return (), {}

        def target():
            loss = loss_fn(out0, out1)
            sync()
            return loss

    elif which == "bwd":

        def setup():
            clear()
            loss = loss_fn(out0, out1)
            sync()
            return (loss,), {}

        def target(loss):
            loss.backward()
            sync()

    else:

        def setup():
            clear()
            return (), {}

        def target():
            loss_fn(out0, out1).backward()
            sync()

    benchmark.group = f"{which} 2B={n} D={D} float32 {device.type}"
    useful = P.useful_flops(n, D)
    own = meta.own_flops(n, D)
    pick = {"fwd": lambda f: f[0], "bwd": lambda f: f[1], "fwdbwd": lambda f: f[0] + f[1]}[which]
    benchmark.extra_info.update(
        {
            "provider": provider,
            "n": n,
            "d": D,
            "useful_gflop": pick(useful) / 1e9,
            "own_gflop": pick(own) / 1e9,
        }
    )
    benchmark.pedantic(
        target, setup=setup, rounds=5 if n <= 4096 else 3, warmup_rounds=1, iterations=1
    )
