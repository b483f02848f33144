"""The SupCon case of ``simclr-fast bench loss --loss supcon``: providers, work and memory models.

``2B`` rows (``--sizes``, as for NT-Xent): ``B`` samples with two views each, in ``--classes``
classes (default 100; the labels are ``arange(B) % C``, shuffled by ``--seed``), forward+backward
of SupCon L_out at ``--temperature``. Providers:

- ``naive``: :func:`simclr_fast.supcon_loss` with ``backend="reference"`` (the ``2B × 2B`` logits
  and positive mask materialized, autograd backward);
- ``pml``: pytorch-metric-learning's ``SupConLoss(temperature)`` on the ``(2B, D)`` rows and their
  labels, while it fits (its pair masks are quadratic: 782 MiB at 2B = 4096, docs/design.md §8);
- every fused backend (``torch``, ``cpu``, ``triton``): :func:`simclr_fast.supcon_loss`;
- ``ntxent-<backend>``: NT-Xent on the same rows and backend, the yardstick of the issue's "time
  ≤ 1.5× NT-Xent at the same 2B" (the run prints the ratio per backend and 2B).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from simclr_fast.bench import _providers as P

#: The issue's case: 100 classes.
DEFAULT_CLASSES = 100
NTXENT = tuple(f"ntxent-{b}" for b in P.FUSED)
PROVIDERS = ("naive", "pml", *P.FUSED, *NTXENT)

#: Footprint models for the pre-run memory check, bytes per ``(2B)²`` element. ``pml``: measured
#: 782 MiB at 2B = 4096, D = 128 (docs/design.md §8): 48.9 bytes per (2B)², taken as 50.
#: ``naive``: measured here 21.6 bytes per (2B)² (345 MB at 2B = 4096, D = 128, 100 classes, fp32,
#: 2026-12-02, ``simclr-fast bench loss --loss supcon --sizes 1024 4096 --repeats 3``): the fp32
#: logits, their masked copy, the positive weights and their product, autograd's saved copies;
#: taken as 24.
_BYTES_PER_N2 = {"naive": 24, "pml": 50}


def useful_flops(n: int, d: int) -> tuple[float, float]:
    """The naive loss's GEMM FLOPs, as for NT-Xent: ``(2·N²·D, 4·N²·D)``."""
    return P.useful_flops(n, d)


def get_provider(name: str) -> P.Provider:
    """The SupCon-case provider ``name`` (one of :data:`PROVIDERS`)."""
    if name == "naive":
        return P.Provider(
            name,
            'simclr_fast.supcon_loss(backend="reference"): the naive formula',
            P.ROW_WISE,
            _BYTES_PER_N2["naive"],
        )
    if name == "pml":
        return P.Provider(
            name,
            "pytorch-metric-learning SupConLoss(temperature)",
            P.ROW_WISE,
            _BYTES_PER_N2["pml"],
        )
    if name in P.FUSED:
        fused = P.fused_provider(name)
        return P.Provider(
            name, f'simclr_fast.supcon_loss(backend="{name}") (fused)', fused.flop_factors
        )
    if name in NTXENT:
        fused = P.fused_provider(name.removeprefix("ntxent-"))
        return P.Provider(name, f"{fused.description}: NT-Xent yardstick", fused.flop_factors)
    raise ValueError(f"unknown supcon provider {name!r}; choose from {PROVIDERS}")


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why SupCon provider ``name`` cannot run here (with the fix), or ``None``."""
    if name not in PROVIDERS:
        return f"not a provider of the supcon case (choose from {', '.join(PROVIDERS)})"
    return P.unavailable_reason(name.removeprefix("ntxent-"), device, dtype)


def labels_for(b: int, classes: int, seed: int, device: torch.device) -> torch.Tensor:
    """``arange(b) % classes``, shuffled by ``seed``: every provider sees the same labels."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.arange(b) % classes)[torch.randperm(b, generator=gen)].to(device)


def make_loss(
    name: str, temperature: float, classes: int, seed: int, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(out0, out1) -> loss`` for provider ``name``: ``B`` samples with two views each.

    The labels of a batch of ``B`` samples are :func:`labels_for` ``(B, ...)``, made once per ``B``.
    """
    if name in NTXENT:
        from simclr_fast import nt_xent

        backend = name.removeprefix("ntxent-")
        return lambda x0, x1: nt_xent(x0, x1, temperature, backend=backend)
    made: dict[int, torch.Tensor] = {}

    def labels(b: int) -> torch.Tensor:
        if b not in made:
            made[b] = labels_for(b, classes, seed, device)
        return made[b]

    if name == "pml":
        from pytorch_metric_learning.losses import SupConLoss

        loss = SupConLoss(temperature=temperature)
        return lambda x0, x1: loss(torch.cat([x0, x1]), labels(x0.shape[0]).repeat(2))
    from simclr_fast import supcon_loss

    backend = "reference" if name == "naive" else name
    return lambda x0, x1: supcon_loss(
        torch.stack([x0, x1], dim=1), labels(x0.shape[0]), temperature=temperature, backend=backend
    )


def conclusions(cases: list[dict]) -> list[str]:
    """One line per (D, dtype, 2B): each fused backend's SupCon time over its NT-Xent time."""
    ok = {(c["provider"], c["n"], c["d"], c["dtype"]): c for c in cases if c["status"] == "ok"}
    out = []
    for (name, n, d, dtype), c in sorted(ok.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1])):
        ref = ok.get((f"ntxent-{name}", n, d, dtype))
        if name in P.FUSED and ref is not None:
            out.append(
                f"D={d} {dtype} 2B={n}: supcon {name} {c['fwdbwd_ms']:.1f} ms = "
                f"{c['fwdbwd_ms'] / ref['fwdbwd_ms']:.2f}x NT-Xent's {ref['fwdbwd_ms']:.1f} ms on the "
                f"same backend; peak {c['peak_mb']:.0f} MB (NT-Xent {ref['peak_mb']:.0f} MB)"
            )
    return out
