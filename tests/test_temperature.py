"""A learnable temperature: nt_xent, NTXentLoss and SupConLoss with τ a 0-dim tensor.

The fused layer gets ``∂L/∂(1/τ)`` from the homogeneity of ``s = z·z/τ`` (``⟨z, ∂L/∂z⟩ / (2/τ)``,
docs/design.md §8) plus autograd through the shift; here it is compared with autograd through the
naive fp64 formula (``nt_xent_reference`` and the SupCon oracle of ``test_supcon.py``, both
materialized): to 1e-8 in fp64, at fp32's precision on the fp32-only backends. Under two gloo ranks
the per-rank τ-gradients must average to the single-process one (DDP averages them; an extra
all_reduce would make them W× too large). ``torch.compile(fullgraph=True)`` must trace it.
"""

# ruff: noqa: B023  (every lambda in a loop is called in the same iteration)
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import cpu_backends, free_port, spawn_world
from test_supcon import _labels, oracle
from torch import nn

from simclr_fast import NTXentLoss, SupConLoss, nt_xent, supcon_loss
from simclr_fast.backends import triton_backend
from simclr_fast.reference import nt_xent_reference

TAUS = (0.07, 0.2, 0.5)


def _parametrizations(tau: float, dtype: torch.dtype):
    """τ as an nn.Parameter, and as CLIP's ``1 / logit_scale.exp()``: (leaf, τ tensor) pairs."""
    p = nn.Parameter(torch.tensor(tau, dtype=dtype))
    yield "parameter", p, lambda: p
    s = nn.Parameter(torch.tensor(-torch.log(torch.tensor(tau)).item(), dtype=dtype))
    yield "logit_scale", s, lambda: 1 / s.exp()


def _tau_grad(fn, leaf):
    leaf.grad = None
    loss = fn()
    loss.backward()
    return loss.detach(), leaf.grad.detach().clone()


def _fused_backends(dtype):
    names = ["reference"] + cpu_backends(dtype)
    if dtype == torch.float32 and triton_backend.interpreting():
        names.append("triton")
    return names


def _views(b, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, b, d, generator=g, dtype=torch.float64)


def _rtol(dtype):
    return 1e-8 if dtype == torch.float64 else 2e-4


def _close(got, exp, rtol, what):
    torch.testing.assert_close(
        got.double(), exp.double(), rtol=rtol, atol=rtol * exp.abs().item(), msg=what
    )


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_ntxent_tau_gradient(tau, dtype):
    x = _views(6, 9, seed=1)
    for kind, leaf, make in _parametrizations(tau, torch.float64):
        exp_loss, exp_g = _tau_grad(lambda: nt_xent_reference(x[0], x[1], make()), leaf)
        a, b = x[0].to(dtype), x[1].to(dtype)
        for name in _fused_backends(dtype):
            _, lt, lm = next(p for p in _parametrizations(tau, dtype) if p[0] == kind)
            for how, fn in (
                ("functional", lambda: nt_xent(a, b, lm(), backend=name)),
                ("module", lambda: NTXentLoss(lm(), backend=name)(a, b)),
            ):
                loss, g = _tau_grad(fn, lt)
                what = f"{name} {dtype} {kind} {how}"
                _close(loss, exp_loss, _rtol(dtype), what + " loss")
                _close(g, exp_g, _rtol(dtype), what + " tau grad")


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("base", (None, 0.07))
def test_supcon_tau_gradient(tau, dtype, base):
    g = torch.Generator().manual_seed(2)
    f = torch.randn(8, 3, 10, generator=g, dtype=torch.float64)
    for labels in (None, _labels((1, 2, 5), seed=2)):
        for kind, leaf, make in _parametrizations(tau, torch.float64):
            exp_loss, exp_g = _tau_grad(lambda: oracle(f, labels, tau=make(), base_tau=base), leaf)
            for name in _fused_backends(dtype):
                _, lt, lm = next(p for p in _parametrizations(tau, dtype) if p[0] == kind)
                loss_fn = SupConLoss(lm(), base_temperature=base, backend=name)
                loss, gt = _tau_grad(lambda: loss_fn(f.to(dtype), labels), lt)
                what = f"{name} {dtype} {kind} labels={labels is not None}"
                _close(loss, exp_loss, _rtol(dtype), what + " loss")
                _close(gt, exp_g, _rtol(dtype), what + " tau grad")


def test_tensor_tau_equals_float_tau():
    x = _views(5, 7, seed=3).float()
    for name in _fused_backends(torch.float32):
        a = nt_xent(x[0], x[1], torch.tensor(0.3), backend=name)
        torch.testing.assert_close(a, nt_xent(x[0], x[1], 0.3, backend=name))
        f = x.transpose(0, 1)
        b = supcon_loss(f, temperature=torch.tensor(0.3), backend=name)
        torch.testing.assert_close(b, supcon_loss(f, temperature=0.3, backend=name))


@pytest.mark.parametrize(
    "backend", ["reference", "torch"] + [b for b in cpu_backends() if b == "cpu"]
)
def test_torch_compile_fullgraph_learnable_tau(backend):
    model = nn.Linear(8, 4)
    logit_scale = nn.Parameter(torch.tensor(1.5))
    lab = _labels((2, 3, 1), seed=4)

    def step(x):
        tau = 1 / logit_scale.exp()
        e = model(x)
        return nt_xent(e[:6], e[6:], tau, backend=backend) + supcon_loss(
            e.view(6, 2, 4), lab, temperature=tau, backend=backend
        )

    x = torch.randn(12, 8)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    (g_got,) = torch.autograd.grad(got, logit_scale)
    exp = step(x)
    (g_exp,) = torch.autograd.grad(exp, logit_scale)
    torch.testing.assert_close(got, exp)
    torch.testing.assert_close(g_got, g_exp)
    assert g_exp.abs().item() > 0


# ------------------------------------------------------------------------------- two processes


def _world_checks(rank, world, port):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        b = 4
        g = torch.Generator().manual_seed(5)
        views = torch.randn(2, world * b, 9, generator=g, dtype=torch.float64)
        f = torch.randn(world * b, 3, 9, generator=g, dtype=torch.float64)
        lab = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])[: world * b]
        mine = slice(rank * b, (rank + 1) * b)
        tau = 0.2
        cases = {
            "nt_xent": (
                lambda t: nt_xent_reference(views[0], views[1], t),
                lambda t, name, dt: nt_xent(
                    views[0, mine].to(dt),
                    views[1, mine].to(dt),
                    t,
                    backend=name,
                    gather_distributed=True,
                ),
            ),
            "supcon": (
                lambda t: oracle(f, lab, tau=t, base_tau=0.1),
                lambda t, name, dt: SupConLoss(
                    t, base_temperature=0.1, backend=name, gather_distributed=True
                )(f[mine].to(dt), lab[mine]),
            ),
        }
        for what, (single, per_rank) in cases.items():
            for kind, leaf, make in _parametrizations(tau, torch.float64):
                exp_loss, exp_g = _tau_grad(lambda: single(make()), leaf)
                for dtype in (torch.float64, torch.float32):
                    for name in ["reference"] + cpu_backends(dtype):
                        _, lt, lm = next(p for p in _parametrizations(tau, dtype) if p[0] == kind)
                        loss, gt = _tau_grad(lambda: per_rank(lm(), name, dtype), lt)
                        both = torch.stack([loss.double(), gt.double()])
                        gathered = [torch.zeros_like(both) for _ in range(world)]
                        dist.all_gather(gathered, both)
                        mean = torch.stack(gathered).mean(0)
                        label = f"rank {rank} {what} {name} {dtype} {kind}"
                        _close(mean[0], exp_loss, _rtol(dtype), label + " mean loss")
                        _close(mean[1], exp_g, _rtol(dtype), label + " mean tau grad")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_two_ranks_tau_gradients_average_to_global():
    spawn_world(_world_checks, (2, free_port()), 2, 200)
