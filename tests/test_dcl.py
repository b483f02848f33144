"""DCLLoss and DCLWLoss against lightly's formulas written out in fp64, on every backend.

The fixture is lightly's DCL written as a loop over the ``2B`` rows (docs/design.md §7): row ``i``
(view ``v``) pays ``−w_i s_i,pos + log Σ_{j∉{i,pos(i)}} e^{s_ij}``; the loss is
``0.5·(mean over view 0 + mean over view 1)``, ``w`` from ``weight_fn(z_v, z_other)`` on the
normalized views; DCLW's ``w = 2 − B·softmax(z0·z1/σ)``, detached.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import cpu_backends

from simclr_fast import DCLLoss, DCLWLoss
from simclr_fast.backends import triton_backend
from simclr_fast.dcl import dcl, negative_mises_fisher_weights

BACKENDS = ["reference", *cpu_backends()] + (["triton"] if triton_backend.interpreting() else [])


def mises_fisher_fp64(a, b, sigma):
    s = (a.detach() * b.detach()).sum(1) / sigma
    return 2 - a.shape[0] * torch.exp(s - torch.logsumexp(s, 0))


def lightly_dcl(out0, out1, tau, weight_fn=None):
    """lightly's DCL as a loop over rows, fp64."""
    z0 = out0 / out0.norm(dim=1, keepdim=True)
    z1 = out1 / out1.norm(dim=1, keepdim=True)
    b = z0.shape[0]
    z = torch.cat([z0, z1])
    halves = []
    for v, (x, y) in enumerate(((z0, z1), (z1, z0))):
        w = weight_fn(x, y) if weight_fn else torch.ones(b, dtype=z.dtype)
        rows = []
        for i in range(b):
            k, pos = v * b + i, (1 - v) * b + i
            neg = [j for j in range(2 * b) if j not in (k, pos)]
            s = z[k] @ z[neg].T / tau
            rows.append(-w[i] * (z[k] @ z[pos]) / tau + torch.logsumexp(s, 0))
        halves.append(torch.stack(rows).mean())
    return 0.5 * (halves[0] + halves[1])


def _rel(got, want):
    """Max error relative to the largest entry (floored at 1e-6: with D = 1 the gradients are 0)."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()


WEIGHTS = {
    "none": None,
    "dclw": partial(mises_fisher_fp64, sigma=0.5),
    "custom": lambda a, b: ((a - b) ** 2).sum(1),  # not detached: lightly differentiates it
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize(("b", "d", "tau"), [(2, 2, 0.1), (3, 17, 0.5), (8, 32, -1.0)])
def test_values_and_gradients_match_lightly(backend, weights, b, d, tau):
    gen = torch.Generator().manual_seed(b * 100 + d)
    out0 = torch.randn(b, d, generator=gen, dtype=torch.float64)
    out1 = torch.randn(b, d, generator=gen, dtype=torch.float64)
    a0, a1 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    want = lightly_dcl(a0, a1, tau, WEIGHTS[weights])
    g0, g1 = torch.autograd.grad(want, (a0, a1))
    if weights == "dclw":
        loss_fn = DCLWLoss(temperature=tau, sigma=0.5, backend=backend)
    else:
        custom = WEIGHTS[weights]
        loss_fn = DCLLoss(temperature=tau, weight_fn=custom, backend=backend)
    x0, x1 = out0.float().requires_grad_(), out1.float().requires_grad_()
    got = loss_fn(x0, x1)
    h0, h1 = torch.autograd.grad(got, (x0, x1))
    assert got.dtype == torch.float32
    assert _rel(got, want) <= 1e-5
    assert _rel(h0, g0) <= 1e-5
    assert _rel(h1, g1) <= 1e-5


def test_mises_fisher_weights_are_lightlys_and_detached():
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(5, 4, requires_grad=True)
    w = negative_mises_fisher_weights(a, b, sigma=0.3)
    torch.testing.assert_close(w.double(), mises_fisher_fp64(a.double(), b.double(), 0.3))
    assert not w.requires_grad
    assert math.isclose(w.sum().item(), 2 * 5 - 5, rel_tol=1e-6)  # Σ softmax = 1


def test_views_swap_symmetry_and_defaults():
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(DCLLoss()(a, b), DCLLoss()(b, a))
    torch.testing.assert_close(DCLWLoss()(a, b), DCLWLoss()(b, a))
    assert DCLLoss().temperature == 0.1 and DCLWLoss().sigma == 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_collinear_closed_form(backend):
    """All rows equal: every logit is 1/τ, ℓ = −1/τ + log(2B − 2) + 1/τ = log(2B − 2)."""
    x = torch.ones(5, 3)
    assert math.isclose(dcl(x, x, 0.2, backend=backend).item(), math.log(8), rel_tol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_compute_in_fp32(backend):
    a, b = torch.randn(4, 8), torch.randn(4, 8).to(torch.bfloat16)
    got = DCLWLoss(backend=backend)(a, b)
    want = lightly_dcl(a.double(), b.double(), 0.1, partial(mises_fisher_fp64, sigma=0.5))
    assert got.dtype == torch.float32
    assert _rel(got, want) <= 1e-5


def test_gather_distributed_in_one_process_is_the_local_loss():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(DCLLoss(gather_distributed=True)(a, b), DCLLoss()(a, b))


def test_bad_arguments_raise_clearly():
    with pytest.raises(TypeError, match="weight_fn must be a callable"):
        DCLLoss(weight_fn=3)
    with pytest.raises(ValueError, match="Illegal temperature"):
        DCLLoss(temperature=0.0)
    with pytest.raises(ValueError, match="sigma must be finite and non-zero, got 0"):
        DCLWLoss(sigma=0)
    with pytest.raises(TypeError, match="sigma must be a real number"):
        DCLWLoss(sigma="0.5")
    with pytest.raises(ValueError, match="backend must be one of"):
        DCLLoss(backend="gpu")
    with pytest.raises(ValueError, match="same shape"):
        DCLLoss()(torch.randn(4, 8), torch.randn(3, 8))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [DCLLoss, DCLWLoss])
def test_learnable_temperature_gradient(backend, cls):
    a, b = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    t64 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    weight = partial(mises_fisher_fp64, sigma=0.5) if cls is DCLWLoss else None
    want = torch.autograd.grad(lightly_dcl(a, b, t64, weight), t64)[0]
    t32 = torch.nn.Parameter(torch.tensor(0.3))
    cls(temperature=t32, backend=backend)(a.float(), b.float()).backward()
    assert _rel(t32.grad, want) <= 1e-4
