"""The naive reference against SimCLR's Algorithm 1, its closed forms and properties."""

from __future__ import annotations

import math

import pytest
import torch

from simclr_fast.reference import nt_xent_reference, nt_xent_reference_rows


def algorithm1_loss(out0: torch.Tensor, out1: torch.Tensor, tau: float) -> float:
    """SimCLR arXiv 2002.05709, Algorithm 1, written as loops in float64 (mean over the 2B terms)."""
    x = torch.cat([out0, out1]).double()
    z = [v / max(v.norm().item(), 1e-12) for v in x]
    n, b = len(z), len(z) // 2

    def sim(i: int, j: int) -> float:
        return float(z[i] @ z[j]) / tau

    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        denom = sum(math.exp(sim(i, k)) for k in range(n) if k != i)
        total += -math.log(math.exp(sim(i, pos)) / denom)
    return total / n


@pytest.mark.parametrize("b", [1, 2, 4, 7])
@pytest.mark.parametrize("d", [1, 2, 16, 64])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 10.0, -1.0])
def test_reference_matches_algorithm1(b, d, tau):
    out0, out1 = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    expected = algorithm1_loss(out0, out1, tau)
    assert nt_xent_reference(out0, out1, tau).item() == pytest.approx(
        expected, rel=1e-10, abs=1e-12
    )


@pytest.mark.parametrize("b", [1, 3, 32])
def test_collinear_closed_form(b):
    x = torch.randn(1, 8, dtype=torch.float64).expand(b, 8) * torch.rand(
        b, 1, dtype=torch.float64
    ).add(0.5)
    assert nt_xent_reference(x, x, 0.5).item() == pytest.approx(math.log(2 * b - 1), rel=1e-12)


def test_symmetric_in_views():
    out0, out1 = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    torch.testing.assert_close(
        nt_xent_reference(out0, out1, 0.3), nt_xent_reference(out1, out0, 0.3)
    )


def test_invariant_to_input_scale():
    out0, out1 = torch.randn(6, 11, dtype=torch.float64), torch.randn(6, 11, dtype=torch.float64)
    scale = torch.rand(6, 1, dtype=torch.float64) * 100 + 0.01
    torch.testing.assert_close(
        nt_xent_reference(out0, out1, 0.2), nt_xent_reference(out0 * scale, out1 * 7, 0.2)
    )


def test_gradcheck_fp64():
    out0 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_reference(a, b, 0.4), (out0, out1))


def test_rows_of_the_whole_batch_is_the_loss():
    z = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=1)
    whole = nt_xent_reference(z[:5], z[5:], 0.5)
    torch.testing.assert_close(nt_xent_reference_rows(z, 0, 10, 0.5), whole)


def test_rows_of_rank_blocks_average_to_the_global_loss():
    # Two "ranks" of 2B = 6 rows each: the mean of the per-block losses is the mean over all rows.
    z = torch.nn.functional.normalize(torch.randn(12, 4, dtype=torch.float64), dim=1)
    per_rank = [nt_xent_reference_rows(z, r * 6, 6, 0.5) for r in range(2)]
    logits = z @ z.T / 0.5
    logits.fill_diagonal_(float("-inf"))
    pos = torch.tensor([(i % 6 + 3) % 6 + (i // 6) * 6 for i in range(12)])
    expected = torch.nn.functional.cross_entropy(logits, pos)
    torch.testing.assert_close(sum(per_rank) / 2, expected)
