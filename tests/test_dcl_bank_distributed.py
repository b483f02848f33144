"""DCL, DCLW and the memory bank across 2 real processes (gloo), against lightly's formulas in fp64.

Each rank holds different data. DCL/DCLW: rank ``r``'s loss is lightly's gathered DCL (its own
``2B`` rows against every rank's rows, weights from its local batch) and its gradient is
``∂(Σ_q loss_q)/∂x_r`` (what lightly's all_reduce gather layer gives). The bank: the loss stays
local, the enqueued keys are every rank's ``out1`` in rank order.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import cpu_backends, free_port, spawn_world
from test_dcl import mises_fisher_fp64
from test_memory_bank import LightlyBank, lightly_bank_loss

from simclr_fast import DCLLoss, DCLWLoss, NTXentLoss

pytestmark = pytest.mark.distributed

WORLD, B, D, TAU = 2, 3, 5, 0.3


def lightly_dcl_rank(x, q, tau, weighted):
    """Rank ``q``'s lightly DCL loss, fp64; ``x`` is ``(W, 2, B, D)``, every rank's views."""
    w_, _, b, _ = x.shape
    z = x / x.norm(dim=-1, keepdim=True)
    all0, all1 = z[:, 0].reshape(w_ * b, -1), z[:, 1].reshape(w_ * b, -1)
    diag = torch.zeros(b, w_ * b, dtype=torch.bool)
    diag[torch.arange(b), q * b + torch.arange(b)] = True
    halves = []
    for v in (0, 1):
        mine, other = z[q, v], z[q, 1 - v]
        same, cross = (all0, all1) if v == 0 else (all1, all0)
        s_same, s_cross = mine @ same.T / tau, mine @ cross.T / tau
        w = mises_fisher_fp64(mine, other, 0.5) if weighted else 1.0
        neg = torch.cat([s_same[~diag].view(b, -1), s_cross[~diag].view(b, -1)], 1)
        halves.append((-w * s_cross[diag] + torch.logsumexp(neg, 1)).mean())
    return 0.5 * (halves[0] + halves[1])


def _rel(got, want):
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()


def _worker(rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        backends = ["reference", *cpu_backends(), "triton"]
        g = torch.Generator().manual_seed(7)
        x = torch.randn(world, 2, B, D, generator=g, dtype=torch.float64)
        for weighted in (False, True):
            xr = x.clone().requires_grad_()
            total = sum(lightly_dcl_rank(xr, q, TAU, weighted) for q in range(world))
            want_loss = lightly_dcl_rank(x, rank, TAU, weighted)
            want_grad = torch.autograd.grad(total, xr)[0][rank]
            for name in backends:
                cls = DCLWLoss if weighted else DCLLoss
                loss_fn = cls(temperature=TAU, gather_distributed=True, backend=name)
                a = x[rank, 0].float().requires_grad_()
                c = x[rank, 1].float().requires_grad_()
                loss = loss_fn(a, c)
                ga, gc = torch.autograd.grad(loss, (a, c))
                what = f"{cls.__name__} {name} rank {rank}"
                assert _rel(loss, want_loss) <= 1e-5, what
                assert _rel(ga, want_grad[0]) <= 1e-5, what
                assert _rel(gc, want_grad[1]) <= 1e-5, what

        # memory bank: the same seed on every rank gives the same bank; keys are all-gathered
        k = 7
        for name in backends:
            torch.manual_seed(11)
            loss_fn = NTXentLoss(
                TAU, memory_bank_size=(k, D), gather_distributed=True, backend=name
            )
            fixture = LightlyBank(loss_fn.memory_bank.bank)
            for step in range(3):  # 2 ranks × 3 rows per call: the bank wraps at the 2nd call
                xs = torch.randn(world, 2, B, D, generator=torch.Generator().manual_seed(step))
                a0 = xs[rank, 0].double().requires_grad_()
                a1 = xs[rank, 1].double().requires_grad_()
                want = lightly_bank_loss(a0, a1, fixture.bank, TAU)
                w0, w1 = torch.autograd.grad(want, (a0, a1))
                x0 = xs[rank, 0].clone().requires_grad_()
                x1 = xs[rank, 1].clone().requires_grad_()
                got = loss_fn(x0, x1)
                h0, h1 = torch.autograd.grad(got, (x0, x1))
                what = f"bank {name} rank {rank} step {step}"
                assert _rel(got, want) <= 1e-5 and _rel(h0, w0) <= 1e-5, what
                assert _rel(h1, w1) <= 1e-5, what
                fixture.enqueue(F.normalize(xs[:, 1].reshape(world * B, D), dim=1))
                assert loss_fn.memory_bank.ptr == fixture.ptr, what
                assert torch.equal(loss_fn.memory_bank.bank.double(), fixture.bank), what

        # without gather_distributed each rank enqueues its own batch only (lightly's behaviour)
        torch.manual_seed(11)
        local = NTXentLoss(TAU, memory_bank_size=(k, D))
        fixture = LightlyBank(local.memory_bank.bank)
        xs = torch.randn(world, 2, B, D, generator=torch.Generator().manual_seed(0))
        local(xs[rank, 0].clone().requires_grad_(), xs[rank, 1])
        fixture.enqueue(F.normalize(xs[rank, 1], dim=1))
        assert torch.equal(local.memory_bank.bank.double(), fixture.bank), f"local rank {rank}"
        assert local.memory_bank.ptr == B
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_dcl_dclw_and_bank_two_ranks():
    spawn_world(_worker, (WORLD, free_port()), WORLD, 260)
