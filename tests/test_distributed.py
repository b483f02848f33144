"""``gather_distributed=True`` across real processes (gloo on 127.0.0.1) against one process.

Every rank holds DIFFERENT data (a symmetric test once passed a broken gather layer). Each
spawned world runs several checks, because starting a world costs seconds; a failing check raises
in the child and ``torch.multiprocessing.spawn`` re-raises it here with the child's traceback.
Every backend that runs on CPU tensors here is covered; the triton backend runs under
``TRITON_INTERPRET=1`` (in the children's environment).
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import cpu_backends, free_port, loss_and_grads, spawn_world
from torch import nn

import simclr_fast
from simclr_fast import NTXentLoss, nt_xent
from simclr_fast.reference import nt_xent_reference, nt_xent_reference_rows

pytestmark = pytest.mark.distributed

TAU = 0.3


def _spawn(fn, world: int, *args) -> None:
    spawn_world(fn, (world, free_port(), *args), world, 600)


def _init(rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )


def _backends(dtype: torch.dtype = torch.float32) -> list[str]:
    return simclr_fast.available_backends("cpu", dtype)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    # atol relative to the tensor's scale, for entries that are ~0 by cancellation.
    atol = rtol * expected.abs().max().item() * 1e-1
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _global_batch(world: int, b: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """``(world, 2, b, d)``: rank ``r``'s views are ``x[r, 0]`` and ``x[r, 1]``, all different."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(world, 2, b, d, generator=g, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- checks run in a world


def _check_loss_and_grads(rank: int, world: int, b: int, d: int) -> None:
    """Per-rank loss = local-rows reference; per-rank gradients = W × single-process slice."""
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        x = _global_batch(world, b, d, dtype)
        # Single process on the concatenated batch, lightly's layout [all view 0; all view 1].
        x0 = x[:, 0].reshape(world * b, d).clone().requires_grad_(True)
        x1 = x[:, 1].reshape(world * b, d).clone().requires_grad_(True)
        g0, g1 = torch.autograd.grad(nt_xent_reference(x0, x1, TAU), (x0, x1))
        z = F.normalize(x.reshape(world * 2 * b, d), dim=1)  # rank-by-rank layout
        expected_loss = nt_xent_reference_rows(z, rank * 2 * b, 2 * b, TAU)
        for name in _backends(dtype):
            a = x[rank, 0].clone().requires_grad_(True)
            c = x[rank, 1].clone().requires_grad_(True)
            loss = nt_xent(a, c, TAU, backend=name, gather_distributed=True)
            ga, gc = torch.autograd.grad(loss, (a, c))
            what = f"{name} {dtype} rank {rank}/{world}"
            assert loss.dtype == dtype
            _close(loss.detach(), expected_loss.detach(), rtol, f"{what} loss")
            _close(ga, world * g0[rank * b : (rank + 1) * b], rtol, f"{what} grad out0")
            _close(gc, world * g1[rank * b : (rank + 1) * b], rtol, f"{what} grad out1")


def _check_half_inputs(rank: int, world: int, b: int = 4, d: int = 8) -> None:
    """16-bit inputs run on every backend (the gathered rows travel in the kernel dtype):
    fp32 loss close to the fp32-input loss, gradients in the inputs' dtype."""
    x = _global_batch(world, b, d, torch.float32, seed=5)[rank]
    expected = nt_xent(x[0], x[1], TAU, backend="torch", gather_distributed=True)
    for dtype in (torch.float16, torch.bfloat16):
        for name in _backends(dtype):
            a = x[0].to(dtype).requires_grad_(True)
            c = x[1].to(dtype).requires_grad_(True)
            loss = nt_xent(a, c, TAU, backend=name, gather_distributed=True)
            ga, gc = torch.autograd.grad(loss, (a, c))
            assert loss.dtype == torch.float32 and ga.dtype == gc.dtype == dtype, (name, dtype)
            assert torch.isfinite(ga).all() and torch.isfinite(gc).all(), (name, dtype)
            assert abs(loss.item() - expected.item()) < 2e-2 * expected.item(), (name, dtype)


def _check_scaled_grads(rank: int, world: int, b: int, d: int) -> None:
    """Ranks scale their losses differently (rank r by r + 1): gradients stay exact."""
    x = _global_batch(world, b, d, torch.float32, seed=1)
    xr = x.clone().requires_grad_(True)
    z = F.normalize(xr.reshape(world * 2 * b, d), dim=1)
    total = sum((q + 1) * nt_xent_reference_rows(z, q * 2 * b, 2 * b, TAU) for q in range(world))
    (expected,) = torch.autograd.grad(total, (xr,))
    for name in _backends():
        a = x[rank, 0].clone().requires_grad_(True)
        c = x[rank, 1].clone().requires_grad_(True)
        loss = NTXentLoss(TAU, gather_distributed=True, backend=name)(a, c)
        ga, gc = torch.autograd.grad(loss * (rank + 1), (a, c))
        _close(ga, expected[rank, 0], 1e-5, f"{name} scaled grad out0 rank {rank}")
        _close(gc, expected[rank, 1], 1e-5, f"{name} scaled grad out1 rank {rank}")


def _train(model: nn.Module, batches, loss_fn, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for step in range(steps):
        v0, v1 = batches(step)
        opt.zero_grad()
        loss_fn(model(v0), model(v1)).backward()
        opt.step()


def _make_model() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 8))


def _check_ddp(rank: int, world: int, b: int = 4, steps: int = 3) -> None:
    """W processes with DDP end with the parameters of one process on the concatenated batches."""
    data = _global_batch(world, b, 12, torch.float32, seed=2)
    noise = 0.1 * _global_batch(world, b, 12, torch.float32, seed=3)

    def views(step: int, r: int):
        x = data[:, 0] + step  # different every step and every rank
        return x[r], x[r] + noise[r, 0] * (step + 1)

    single = _make_model()
    _train(
        single,
        lambda s: tuple(torch.cat(t) for t in zip(*(views(s, r) for r in range(world)))),
        NTXentLoss(TAU),
        steps,
    )
    for name in _backends():
        ddp = nn.parallel.DistributedDataParallel(_make_model())
        _train(
            ddp,
            lambda s: views(s, rank),
            NTXentLoss(TAU, gather_distributed=True, backend=name),
            steps,
        )
        for (pname, p), q in zip(ddp.module.named_parameters(), single.parameters()):
            assert not torch.equal(p, _make_model().state_dict()[pname]), "training did not move"
            _close(p.detach(), q.detach(), 1e-4, f"{name} DDP parameter {pname} rank {rank}")


def _check_mismatch(rank: int, world: int, bad_rank: int, field: str) -> None:
    """One rank with a different B (or D): every rank raises, naming that rank; the group survives."""
    shape = {"B": 3, "D": 5}
    if rank == bad_rank:
        shape[field] += 1
    x = torch.randn(2, shape["B"], shape["D"])
    with pytest.raises(ValueError, match=f"rank {bad_rank} differs from rank 0") as info:
        nt_xent(x[0], x[1], TAU, backend="torch", gather_distributed=True)
    bad = "B=4, D=5" if field == "B" else "B=3, D=6"
    assert f"rank {bad_rank}: {bad}, float32" in str(info.value)
    assert f"rank 0: B=3, D=5, float32, cpu, temperature={TAU:g}" in str(info.value)
    with pytest.raises(ValueError, match=f"rank {bad_rank} differs"):
        nt_xent(x[0], x[1], TAU, backend="reference", gather_distributed=True)
    # Nobody went on to the embedding all_gather: the next, well-formed call works everywhere.
    y = torch.randn(2, 3, 5)
    assert torch.isfinite(nt_xent(y[0], y[1], TAU, gather_distributed=True))


def _check_traffic(rank: int, world: int, b: int = 3, d: int = 5) -> None:
    """The collectives actually issued: the fused backward all-gathers 2B + 1 floats, nothing else;
    the bytes agree with ``simclr-fast bench dist``'s analytic count for both methods."""
    import simclr_fast.distributed as sd
    from simclr_fast.bench.dist import traffic_bytes

    calls: list[tuple[str, int, int]] = []
    from simclr_fast import _function as sf

    gather, reduce = sd._all_gather_into, dist.all_reduce

    def counting_gather(out, local, group):
        calls.append(("all_gather", local.numel(), local.element_size()))
        gather(out, local, group)

    def counting_reduce(t, *args, **kwargs):
        calls.append(("all_reduce", t.numel(), t.element_size()))
        return reduce(t, *args, **kwargs)

    def sent(phase: list[tuple[str, int, int]]) -> float:  # ring algorithms, bytes per rank
        return sum(
            (world - 1) * k * e if op == "all_gather" else 2 * (world - 1) / world * k * e
            for op, k, e in phase
        )

    x = _global_batch(world, b, d, torch.float32, seed=4)[rank]
    sd._all_gather_into = sf._all_gather_into = counting_gather
    dist.all_reduce = counting_reduce
    try:
        for name in _backends():
            a, c = x[0].clone().requires_grad_(True), x[1].clone().requires_grad_(True)
            calls.clear()
            loss = nt_xent(a, c, TAU, backend=name, gather_distributed=True)
            fwd = list(calls)
            calls.clear()
            loss.backward()
            bwd = list(calls)
            method = "gather-layer" if name == "reference" else "fused"
            if method == "fused":
                assert fwd == [("all_gather", 5, 8), ("all_gather", 2 * b * d, 4)], (name, fwd)
                assert bwd == [("all_gather", 3 * 2 * b, 4)], (name, bwd)
            else:
                assert bwd == [("all_reduce", world * 2 * b * d, 4)], (name, bwd)
            expected = traffic_bytes(method, world, b, d)
            assert sent(fwd) == expected["fwd"] and sent(bwd) == expected["bwd"], (name, fwd, bwd)
    finally:
        sd._all_gather_into = sf._all_gather_into = gather
        dist.all_reduce = reduce


def _world_checks(rank: int, world: int, port: int, bad_rank: int, field: str) -> None:
    torch.set_num_threads(1)  # W processes share the cores
    _init(rank, world, port)
    try:
        _check_loss_and_grads(rank, world, b=3, d=17)
        _check_scaled_grads(rank, world, b=2, d=8)
        _check_half_inputs(rank, world)
        _check_ddp(rank, world)
        _check_traffic(rank, world)
        _check_mismatch(rank, world, bad_rank, field)
    finally:
        dist.destroy_process_group()


def _loss_and_grads(x: torch.Tensor, name: str):
    a = x[0].clone().requires_grad_(True)
    c = x[1].clone().requires_grad_(True)
    loss = nt_xent(a, c, TAU, backend=name)
    return (loss.detach(), *torch.autograd.grad(loss, (a, c)))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("world", "bad_rank", "field"), [(2, 1, "B"), (4, 2, "D")])
def test_world_matches_single_process(world, bad_rank, field):
    """Loss, gradients (equal and unequal loss scales), DDP training, traffic, mismatch errors."""
    _spawn(_world_checks, world, bad_rank, field)


def test_world_of_one_equals_single_process():
    """A one-process group, in this process (no spawn needed): same loss and gradients as without."""
    _init(0, 1, free_port())
    try:
        x = torch.randn(2, 5, 9)
        for name in _backends():
            a = x[0].clone().requires_grad_(True)
            c = x[1].clone().requires_grad_(True)
            loss = nt_xent(a, c, TAU, backend=name, gather_distributed=True)
            ga, gc = torch.autograd.grad(loss, (a, c))
            ref_loss, ref_a, ref_c = _loss_and_grads(x, name)
            _close(loss.detach(), ref_loss, 1e-6, f"{name} world of 1 loss")
            _close(ga, ref_a, 1e-6, f"{name} world of 1 grad out0")
            _close(gc, ref_c, 1e-6, f"{name} world of 1 grad out1")
    finally:
        dist.destroy_process_group()


def test_without_process_group_is_the_local_loss():
    """lightly's behaviour: gather_distributed=True in one process (a notebook, one GPU, Lightning
    on one device) computes the local loss, value and gradients, on every backend."""
    if dist.is_initialized():
        pytest.skip("another test left a process group initialized in this process")
    x = torch.randn(2, 4, 8)
    for name in ["reference", *cpu_backends()]:
        got = loss_and_grads(
            lambda a, b, be=name: nt_xent(a, b, TAU, backend=be, gather_distributed=True),
            x[0],
            x[1],
        )
        want = loss_and_grads(lambda a, b, be=name: nt_xent(a, b, TAU, backend=be), x[0], x[1])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        module = NTXentLoss(temperature=TAU, gather_distributed=True, backend=name)
        torch.testing.assert_close(module(x[0], x[1]), want[0], rtol=0, atol=0)


def test_constructor_raises_without_torch_distributed(monkeypatch):
    monkeypatch.setattr(dist, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch.distributed"):
        NTXentLoss(gather_distributed=True)
    NTXentLoss(gather_distributed=False)  # no distributed needed


def _gloo_threads() -> list[str]:
    """Names of this process's gloo worker threads (torch names them ``pt_gloo_*`` on Linux)."""
    tasks = Path("/proc/self/task")
    names = ((t / "comm").read_text().strip() for t in tasks.iterdir())
    return [n for n in names if n.startswith("pt_gloo")]


def _release_checks(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    _init(rank, world, port)
    group = dist.distributed_c10d._get_default_group()
    refs = sys.getrefcount(group)
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(rank))
    for name in ["reference", *cpu_backends()]:
        a, c = (v.clone().requires_grad_(True) for v in x)
        nt_xent(a, c, TAU, backend=name, gather_distributed=True).backward()
        labels = torch.tensor([0, 1, 0])
        f = torch.stack([a, c], 1).detach().requires_grad_(True)
        simclr_fast.SupConLoss(TAU, backend=name, gather_distributed=True)(f, labels).backward()
    assert _gloo_threads(), "expected gloo worker threads while the group is up"
    # the first loss call imports torch._dynamo (and with it torch.distributed.nn); nothing of
    # that may keep a reference to the group
    assert sys.getrefcount(group) == refs, (sys.getrefcount(group), refs)
    del group
    dist.destroy_process_group()
    gc.collect()
    # the group is gone, so its worker threads are joined: none is left to release a collective's
    # tensors while the interpreter shuts down (which aborts the process)
    assert _gloo_threads() == [], _gloo_threads()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc")
def test_destroy_process_group_releases_the_group():
    """After the losses ran, ``destroy_process_group`` really destroys the group (regression: a
    lazily imported torch.distributed.nn pinned it, and processes aborted at exit)."""
    _spawn(_release_checks, 2)
