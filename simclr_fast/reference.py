"""The naive NT-Xent loss in plain PyTorch: the oracle of the tests and the "naive loss" of the benchmarks.

It materializes the ``(2B, 2B)`` similarity matrix, exactly like the hand-rolled losses it stands for,
and lets autograd do the backward. Tests, benchmarks and ``backend="reference"`` import it from here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_reference(
    out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.5
) -> torch.Tensor:
    """NT-Xent over the ``2B`` rows of ``cat(out0, out1)``, computed naively in the inputs' dtype.

    ``loss = mean_i [logsumexp_{j≠i}(s_ij) − s_{i,pos(i)}]`` with ``s = z zᵀ / τ``,
    ``z = normalize(cat(out0, out1))`` and ``pos(i) = (i + B) mod 2B`` (docs/design.md §2).

    Args:
        out0: First view's embeddings.
        out1: Second view's embeddings.
        temperature: τ; any non-zero float, negative allowed.

    Shape:
        out0, out1: ``(B, D)``. Output: scalar.

    Returns:
        The loss in the inputs' dtype (the naive way: no upcast), differentiable by autograd.

    Examples:
        >>> import torch
        >>> from simclr_fast.reference import nt_xent_reference
        >>> x = torch.ones(4, 8)
        >>> round(nt_xent_reference(x, x).item(), 4)  # collinear: log(2B - 1)
        1.9459
    """
    z = F.normalize(torch.cat([out0, out1]), dim=1)
    return nt_xent_reference_rows(z, 0, z.shape[0], temperature)


def nt_xent_exact(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent in a cancellation-free form, materialized: the tests' oracle for peaked cases.

    Each row is ``softplus(log Σ_{j∉{i,pos(i)}} e^{s_ij − s_i,pos}) = log(1 + S_i)``
    (docs/design.md §9): where the positive dominates, the naive ``logsumexp − s_pos`` subtracts two
    numbers of size ``~1/τ`` and loses a loss of 1e-12 even in fp64, this form keeps it. Autograd's
    gradient of it is cancellation-free too (the positive's coefficient is ``−sigmoid(x)``). Call
    it in fp64 as the reference; it materializes ``(2B, 2B)`` like :func:`nt_xent_reference`.

    Examples:
        >>> import torch
        >>> from simclr_fast.reference import nt_xent_exact, nt_xent_reference
        >>> a = torch.randn(4, 8, dtype=torch.float64); b = torch.randn(4, 8, dtype=torch.float64)
        >>> torch.allclose(nt_xent_exact(a, b), nt_xent_reference(a, b))
        True
    """
    z = F.normalize(torch.cat([out0, out1]), dim=1)
    n = z.shape[0]
    b = n // 2
    s = z @ z.T / temperature
    pos = (torch.arange(n, device=z.device) + b) % n
    s_pos = s[torch.arange(n, device=z.device), pos]
    mask = torch.eye(n, dtype=torch.bool, device=z.device)
    mask[torch.arange(n, device=z.device), pos] = True
    x = torch.logsumexp((s - s_pos[:, None]).masked_fill(mask, float("-inf")), dim=1)
    return F.softplus(x).mean()


def nt_xent_reference_rows(
    z: torch.Tensor, row_start: int, row_count: int, temperature: float
) -> torch.Tensor:
    """Mean NT-Xent of the rows ``z[row_start : row_start + row_count]`` against all rows of ``z``.

    ``z`` holds normalized embeddings laid out rank by rank, each rank's block being
    ``[view 0 (B rows); view 1 (B rows)]`` with ``B = row_count // 2``; a row's positive lies in its
    own block. With ``row_start = 0, row_count = len(z)`` this is the single-process loss; with a
    rank's block it is that rank's loss under ``gather_distributed`` (docs/design.md §3).
    """
    n = z.shape[0]
    b = row_count // 2
    rows = z[row_start : row_start + row_count]
    logits = rows @ z.T / temperature
    local = torch.arange(row_count, device=z.device)
    diag = row_start + local
    logits = logits.masked_fill(
        torch.zeros(row_count, n, dtype=torch.bool, device=z.device).index_put_(
            (local, diag), torch.ones((), dtype=torch.bool, device=z.device)
        ),
        float("-inf"),
    )
    pos = row_start + (local + b) % row_count
    return F.cross_entropy(logits, pos)
