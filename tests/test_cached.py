"""``simclr_fast.cached_backward``: the cached-gradient step against the plain full-batch step.

BN-free encoders (GroupNorm, dropout off) must get the plain step's parameter gradients, for
micro-batches that do and do not divide the batch, with every loss backend; BatchNorm gets the
documented ghost-BN semantics and one running-statistics update per micro-batch; dropout masks are
replayed; DDP (two gloo processes) gives the single-process full-batch gradients with one
all-reduce per step.
"""

from __future__ import annotations

import copy
import csv
import datetime
import gc
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import free_port, spawn_world
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import simclr_fast
from simclr_fast import NTXentLoss, cached_backward
from simclr_fast.cached import micro_batches

TAU = 0.5


def _gn_net(dropout: float = 0.0, in_ch: int = 3) -> nn.Module:
    """A small conv net without batch-coupled layers (GroupNorm)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(32, 16),
    )


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16, bias=False),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 8),
    )


def _views(b: int, seed: int = 0, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randn(b, 3, size, size, generator=g)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _plain(model: nn.Module, inputs, loss_fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference step: ``loss_fn(*[model(x) for x in inputs]).backward()``."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn(*[model(x) for x in inputs])
    loss.backward()
    return loss.detach(), _grads(model)


def _cached(model, inputs, loss_fn, m, **kw) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = cached_backward(model, inputs, loss_fn, m, **kw)
    return loss, _grads(model)


def _assert_grads_close(actual, expected, rtol: float, what: str = "") -> None:
    """Per parameter tensor: ``|a - e| <= rtol * max|e|`` everywhere (relative to its scale)."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        scale = e.abs().max().item()
        assert scale > 0, f"{what} parameter {i}: the reference gradient is zero"
        err = (a - e).abs().max().item()
        assert err <= rtol * scale, (
            f"{what} parameter {i}: max error {err:.3g} > {rtol} × {scale:.3g}"
        )


def _backend_loss(backend: str):
    if backend not in simclr_fast.available_backends("cpu", torch.float32):
        pytest.skip(f"the {backend} backend does not run here")
    return NTXentLoss(TAU, backend=backend)


# ------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
@pytest.mark.parametrize("micro_batch", [1, 3, 5, 10, 64])
def test_bn_free_gradients_equal_the_plain_step(backend, micro_batch):
    # B = 10: micro-batches 3 (does not divide: 3+3+3+1), 5 (divides), 1, 10 and 64 (>= B)
    loss_fn = _backend_loss(backend)
    model = _gn_net()
    inputs = _views(10)
    loss0, expected = _plain(model, inputs, loss_fn)
    loss1, actual = _cached(model, inputs, loss_fn, micro_batch)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    _assert_grads_close(actual, expected, 1e-5, f"{backend} micro_batch={micro_batch}")


def test_triton_backend_under_the_interpreter_tiny():
    loss_fn = _backend_loss("triton")
    model = _gn_net()
    inputs = _views(5, seed=1, size=4)
    loss0, expected = _plain(model, inputs, loss_fn)
    loss1, actual = _cached(model, inputs, loss_fn, 2)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    _assert_grads_close(actual, expected, 1e-5, "triton")


def test_shuffled_views_are_exact_without_batchnorm():
    loss_fn = NTXentLoss(TAU, backend="torch")
    model = _gn_net()
    inputs = _views(11)
    _, expected = _plain(model, inputs, loss_fn)
    _, actual = _cached(model, inputs, loss_fn, 4, shuffle_views=True)
    _assert_grads_close(actual, expected, 1e-5, "shuffle_views")


def _supcon(z: torch.Tensor, labels: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
    """SupCon L_out on one batch of rows (Khosla et al. 2020), a learnable temperature."""
    z = F.normalize(z, dim=1)
    s = z @ z.T / log_tau.exp()
    eye = torch.eye(len(z), dtype=torch.bool)
    s = s.masked_fill(eye, float("-inf"))
    log_p = s - s.logsumexp(1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    return -(log_p.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp(min=1)).mean()


def test_one_tensor_a_closure_over_labels_and_the_losss_own_parameter():
    # SupCon with labels through a closure, a learnable temperature, and an input that needs grad
    model = _gn_net()
    x = torch.randn(13, 3, 8, 8, requires_grad=True)
    labels = torch.arange(13) % 4
    log_tau = torch.tensor(-1.0, requires_grad=True)

    def loss_fn(z):
        return _supcon(z, labels, log_tau)

    loss0, expected = _plain(model, (x,), loss_fn)
    gx, gt = x.grad.clone(), log_tau.grad.clone()
    x.grad = log_tau.grad = None
    loss1, actual = _cached(model, x, loss_fn, 5)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    _assert_grads_close(actual, expected, 1e-5, "supcon")
    _assert_grads_close([x.grad, log_tau.grad], [gx, gt], 1e-5, "input and temperature")


def test_supconloss_with_labels_through_a_closure():
    supcon = simclr_fast.SupConLoss(temperature=0.2, backend="torch")
    labels = torch.arange(9) % 3
    model = _gn_net()
    inputs = _views(9)

    def loss_fn(z0, z1):
        return supcon(torch.stack([z0, z1], dim=1), labels)

    loss0, expected = _plain(model, inputs, loss_fn)
    loss1, actual = _cached(model, inputs, loss_fn, 4)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    _assert_grads_close(actual, expected, 1e-5, "SupConLoss")


def test_channels_last_and_autocast_bf16():
    loss_fn = NTXentLoss(TAU, backend="torch")
    model = _gn_net().to(memory_format=torch.channels_last)
    inputs = tuple(x.contiguous(memory_format=torch.channels_last) for x in _views(9))
    _, expected = _plain(model, inputs, loss_fn)
    _, actual = _cached(model, inputs, loss_fn, 4)
    _assert_grads_close(actual, expected, 1e-5, "channels_last")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss0, expected = _plain(model, inputs, loss_fn)
        loss1, actual = _cached(model, inputs, loss_fn, 4)
    # bf16 activations: the two steps round micro-batches differently; a few bf16 ulps apart
    torch.testing.assert_close(loss1, loss0, rtol=2e-2, atol=0)
    _assert_grads_close(actual, expected, 5e-2, "bf16 autocast")
    assert all(torch.isfinite(g).all() for g in actual)


def test_torch_compiled_model():
    loss_fn = NTXentLoss(TAU, backend="torch")
    model = _gn_net()
    compiled = torch.compile(model, backend="aot_eager")
    inputs = _views(8)
    _, expected = _plain(model, inputs, loss_fn)
    _, actual = _cached(compiled, inputs, loss_fn, 3)
    _assert_grads_close(actual, expected, 1e-5, "torch.compile")


@pytest.mark.slow  # inductor compiles two graphs (with and without autograd): ~2 min on 2 cores
def test_inductor_compiled_model_with_dropout_replays_its_masks():
    torch.manual_seed(0)
    model = _gn_net(dropout=0.5)
    compiled = torch.compile(model)
    outputs = []
    compiled.register_forward_hook(lambda mod, args, out: outputs.append(out.detach().clone()))
    inputs = _views(8)
    cached_backward(compiled, inputs, NTXentLoss(TAU, backend="torch"), 3)
    n = len(outputs) // 2
    assert n == 3 and all(torch.equal(outputs[n + k], outputs[k]) for k in range(n))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------- dropout: RNG replay


def test_dropout_masks_are_replayed_in_the_second_pass():
    torch.manual_seed(0)
    model = _gn_net(dropout=0.5)
    outputs = []
    model.register_forward_hook(lambda mod, args, out: outputs.append(out.detach().clone()))
    inputs = _views(10)
    loss = cached_backward(model, inputs, NTXentLoss(TAU, backend="torch"), 3)
    n = len(micro_batches(10, 2, 3))
    assert len(outputs) == 2 * n and torch.isfinite(loss)
    for k in range(n):  # second pass of micro-batch k == its first pass, bit for bit
        assert torch.equal(outputs[n + k], outputs[k]), k
    assert not torch.equal(outputs[0][:3], outputs[1][:3])  # different micro-batches, other masks
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_dropout_with_one_micro_batch_is_the_plain_step_and_leaves_the_rng_alike():
    # micro_batch >= B: one micro-batch, model(cat(views)) like simclr-fast train; same seed, same
    # masks, same gradients, and the generator ends where the plain step leaves it
    model = _gn_net(dropout=0.5)
    inputs = _views(10)
    loss_fn = NTXentLoss(TAU, backend="torch")

    def plain_cat(*z):
        return loss_fn(*z)

    torch.manual_seed(1)
    model.zero_grad()
    z0, z1 = model(torch.cat(inputs)).chunk(2)
    loss_fn(z0, z1).backward()
    expected, after_plain = _grads(model), torch.rand(4)
    torch.manual_seed(1)
    _, actual = _cached(model, inputs, loss_fn, 10)
    _assert_grads_close(actual, expected, 1e-6, "dropout, one micro-batch")
    assert torch.equal(torch.rand(4), after_plain)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dropout_masks_are_replayed_and_gradients_match_one_micro_batch():
    device = torch.device("cuda")
    model = _gn_net(dropout=0.5).to(device)
    outputs = []
    model.register_forward_hook(lambda mod, args, out: outputs.append(out.detach().clone()))
    inputs = tuple(x.to(device) for x in _views(10))
    loss_fn = NTXentLoss(TAU, backend="torch")
    cached_backward(model, inputs, loss_fn, 3)
    n = len(outputs) // 2
    assert all(torch.equal(outputs[n + k], outputs[k]) for k in range(n))
    torch.cuda.manual_seed(2)
    model.zero_grad()
    z0, z1 = model(torch.cat(inputs)).chunk(2)
    loss_fn(z0, z1).backward()
    expected, after = _grads(model), torch.rand(4, device=device)
    torch.cuda.manual_seed(2)
    _, actual = _cached(model, inputs, loss_fn, 10)
    _assert_grads_close(actual, expected, 1e-5, "cuda dropout, one micro-batch")
    assert torch.equal(torch.rand(4, device=device), after)


# ---------------------------------------------------------------------------- BatchNorm


def _ghost_bn_reference(model, inputs, loss_fn, m, shuffle=False):
    """The full-batch step whose BN layers normalize each micro-batch on its own."""
    b = inputs[0].shape[0]
    model.zero_grad(set_to_none=True)
    pieces: list[dict[int, torch.Tensor]] = [{} for _ in inputs]
    for segments in micro_batches(b, len(inputs), m, shuffle):
        out = model(torch.cat([inputs[s.view][s.start : s.stop] for s in segments]))
        for s, piece in zip(segments, out.split([s.rows for s in segments])):
            pieces[s.view][s.start] = piece
    z = [torch.cat([p[k] for k in sorted(p)]) for p in pieces]
    loss_fn(*z).backward()
    return _grads(model)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batchnorm_is_ghost_bn_and_running_stats_update_once(shuffle):
    torch.manual_seed(0)
    model = _bn_net()
    inputs = _views(10)
    loss_fn = NTXentLoss(TAU, backend="torch")
    first_pass_only = copy.deepcopy(model)
    expected = _ghost_bn_reference(copy.deepcopy(model), inputs, loss_fn, 4, shuffle)
    _, actual = _cached(model, inputs, loss_fn, 4, shuffle_views=shuffle)
    _assert_grads_close(actual, expected, 1e-5, f"ghost BN shuffle={shuffle}")
    plan = micro_batches(10, 2, 4, shuffle)
    with torch.no_grad():
        for segments in plan:
            first_pass_only(torch.cat([inputs[s.view][s.start : s.stop] for s in segments]))
    for (name, a), b in zip(model.named_buffers(), first_pass_only.buffers()):
        assert torch.equal(a, b), name
    assert model[1].num_batches_tracked.item() == len(plan) == 3


def test_micro_batch_layout_covers_every_row_once_and_shuffle_keeps_views_apart():
    for b, v, m in ((10, 2, 3), (8, 2, 4), (9, 3, 2), (7, 2, 7)):
        for shuffle in (False, True):
            if shuffle and -(-b // m) < v:
                continue
            plan = micro_batches(b, v, m, shuffle)
            rows = sorted(
                (s.view, r) for segs in plan for s in segs for r in range(s.start, s.stop)
            )
            assert rows == [(view, r) for view in range(v) for r in range(b)]
            assert all(sum(s.rows for s in segs) <= v * m for segs in plan)
            for segs in plan:
                images = [set(range(s.start, s.stop)) for s in segs]
                together = set.intersection(*images) if len(images) > 1 else set()
                assert (not together) == shuffle or (not shuffle and v == 1), (b, v, m, segs)


# ---------------------------------------------------------------------------- bad input


def _ok_loss(z0, z1):
    return NTXentLoss(TAU, backend="torch")(z0, z1)


@pytest.mark.parametrize(
    "kwargs, exc, needle",
    [
        ({"micro_batch": 0}, ValueError, "micro_batch must be >= 1"),
        ({"micro_batch": -3}, ValueError, "got -3"),
        ({"micro_batch": 2.0}, TypeError, "micro_batch must be an int"),
        ({"micro_batch": True}, TypeError, "micro_batch must be an int"),
        ({"inputs": (torch.randn(4, 3, 8, 8), torch.randn(5, 3, 8, 8))}, ValueError, "[4, 5]"),
        ({"inputs": ()}, ValueError, "inputs is empty"),
        ({"inputs": [torch.randn(4, 3, 8, 8), "x"]}, TypeError, "inputs[1]"),
        ({"inputs": (torch.randn(0, 3, 8, 8),) * 2}, ValueError, "batch size 0"),
        ({"loss_fn": lambda z0, z1: z0.sum(1)}, ValueError, "must return a scalar"),
        ({"loss_fn": lambda z0, z1: 1.0}, TypeError, "scalar tensor, got float"),
        ({"loss_fn": lambda z0, z1: _ok_loss(z0.detach(), z1.detach())}, ValueError, "depend"),
        ({"loss_fn": "ntxent"}, TypeError, "loss_fn must be callable"),
        ({"micro_batch": 6, "shuffle_views": True}, ValueError, "micro_batch <= 2"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, exc, needle):
    args = {"inputs": _views(4), "loss_fn": _ok_loss, "micro_batch": 2, **kwargs}
    model = _gn_net()
    with pytest.raises(exc) as info:
        cached_backward(model, args["inputs"], args["loss_fn"], args["micro_batch"],
                        shuffle_views=args.get("shuffle_views", False))  # fmt: skip
    assert needle in str(info.value)
    assert all(p.grad is None for p in model.parameters())  # raised before touching gradients


def test_eval_mode_with_batchnorm_raises_unless_allowed():
    model = _bn_net().eval()
    with pytest.raises(ValueError, match=r"eval mode and has BatchNorm layers \('1'.*model.train"):
        cached_backward(model, _views(4), _ok_loss, 2)
    cached_backward(model, _views(4), _ok_loss, 2, allow_eval=True)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # without BatchNorm, eval mode is fine (and exact)
    gn = _gn_net(dropout=0.5).eval()
    _, expected = _plain(gn, _views(4), _ok_loss)
    _, actual = _cached(gn, _views(4), _ok_loss, 3)
    _assert_grads_close(actual, expected, 1e-5, "eval mode, no BN")


def test_no_grad_context_raises():
    with torch.no_grad(), pytest.raises(RuntimeError, match="autograd disabled"):
        cached_backward(_gn_net(), _views(4), _ok_loss, 2)


def test_model_output_must_have_one_row_per_input_row():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            return self.lin(x.mean((2, 3))).sum(0, keepdim=True)  # (1, 4): the rows are gone

    with pytest.raises(ValueError, match="one embedding per input row"):
        cached_backward(Bad(), _views(4), _ok_loss, 2)


# ------------------------------------------------------------------------------- DDP (gloo)

WORLD, B_RANK, MICRO = 2, 7, 3


def _ddp_checks(rank: int) -> None:
    torch.manual_seed(0)
    model = _gn_net()
    # different data on every rank; the single-process reference sees all of it
    data = [_views(B_RANK, seed=10 + r) for r in range(WORLD)]
    full = tuple(torch.cat([d[v] for d in data]) for v in range(2))
    for backend in ("reference", "torch"):
        _, expected = _plain(model, full, NTXentLoss(TAU, backend=backend))
        ddp = nn.parallel.DistributedDataParallel(copy.deepcopy(model))
        calls = []

        def hook(state, bucket, calls=calls):
            calls.append(bucket.index())
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, hook)
        loss_fn = NTXentLoss(TAU, backend=backend, gather_distributed=True)
        loss = cached_backward(ddp, data[rank], loss_fn, MICRO)
        actual = _grads(ddp.module)
        _assert_grads_close(actual, expected, 1e-5, f"rank {rank} {backend}")
        assert torch.isfinite(loss)
        buckets = len(calls)
        calls.clear()  # a plain DDP step all-reduces each bucket once: so must the cached one
        ddp.zero_grad()
        loss_fn(*ddp(torch.cat(data[rank])).chunk(2)).backward()
        assert buckets == len(calls) >= 1, (buckets, len(calls))


def _ddp_worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),  # a stuck collective fails instead of hanging
    )
    try:
        _ddp_checks(rank)
    finally:
        # The DDP wrappers must be gone before the group is destroyed. If a wrapper's reducer held
        # the group's last reference, its destructor would join gloo's worker threads with the GIL
        # held, while a worker may still be releasing the Python comm hook of the last all-reduce
        # (which takes the GIL): a deadlock (seen in 1 of 5 fresh-clone runs, gdb stacks).
        # destroy_process_group releases the group without the GIL.
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_two_ranks_equal_the_single_process_full_batch():
    spawn_world(_ddp_worker, (free_port(),), WORLD, 240, "the DDP workers")


# ------------------------------------------------------------------------ simclr-fast bench step


def test_bench_step_smoke_table_rows_and_plot(tmp_path, capsys, one_thread):
    # in this process (--isolation none): the case sets the thread count, one_thread restores it
    from simclr_fast.cli import main

    out = tmp_path / "bench"
    argv = ["bench", "step", "--batches", "8", "32", "--micro-batch", "4", "--image-size", "8",
            "--repeats", "1", "--threads", "1", "--isolation", "none", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    for variant in ("naive", "fused", "cached"):
        assert f"largest batch under the cap, {variant}: 32" in text
    with open(out / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["suite"] == "step"]
    peaks = {(r["provider"], r["n"]): float(r["value"]) for r in rows if r["metric"] == "peak_mb"}
    assert set(peaks) == {(v, b) for v in ("naive", "fused", "cached") for b in ("8", "32")}
    losses = {
        r["provider"]: float(r["value"]) for r in rows if r["metric"] == "loss" and r["n"] == "32"
    }
    # the same first step of the same model on the same images: the same loss whatever the variant
    # (cached: BatchNorm normalizes micro-batches of 4 images, so only close)
    assert abs(losses["naive"] - losses["fused"]) < 1e-4 * losses["naive"]
    assert abs(losses["cached"] - losses["fused"]) < 0.1 * losses["fused"]
    with open(out / "step.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bench_step_a_case_over_the_memory_cap_is_a_row(tmp_path, capsys):
    from simclr_fast.cli import main

    argv = ["bench", "step", "--batches", "512", "1024", "--variants", "naive", "--image-size", "16",
            "--mem-cap-mb", "4", "--repeats", "1", "--threads", "1", "--timeout", "120",
            "--no-save"]  # fmt: skip
    assert main(argv) == 1  # nothing ran
    text = capsys.readouterr().out
    assert "OOM" in text and "under the 4 MB cap" in text
    assert "not run: oom already at batch 512" in text
    assert "largest batch under the cap, naive: none of the batches run" in text


# --------------------------------------------------------------------- simclr-fast train --micro-batch

QUICK_TRAIN = ["--knn-every", "0", "--no-probe", "--no-progress", "--batch-size", "512"]


@pytest.fixture
def one_thread():
    """The training tests run in this process: one thread keeps them steady on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_with_micro_batch_runs_and_writes_its_artefacts(tmp_path, one_thread):
    from simclr_fast.cli import main

    out = tmp_path / "mb"
    assert main(["train", "--output-dir", str(out), *QUICK_TRAIN, "--epochs", "1",
                 "--micro-batch", "64"]) == 0  # fmt: skip
    for name in ("checkpoint.pt", "metrics.csv", "loss_knn.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["micro_batch"] == 64 and summary["steps"] == 1197 // 512
    assert 0 < summary["final_loss"] < 10
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["micro_batch"] == 64


def test_train_with_micro_batch_resumes_exactly(tmp_path, monkeypatch, one_thread):
    from simclr_fast.cli import main
    from simclr_fast.train import loop

    class StopAfterOneStep(loop.StopRequest):
        """A Ctrl-C after the first training step (the loop reads the flag once per step)."""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        @property
        def requested(self):
            return True

        @requested.setter
        def requested(self, value):
            pass

    flags = [*QUICK_TRAIN, "--epochs", "2", "--micro-batch", "200"]  # 200: does not divide 512
    straight, parted = str(tmp_path / "straight"), str(tmp_path / "parted")
    assert main(["train", "--output-dir", straight, *flags]) == 0
    monkeypatch.setattr(loop, "StopRequest", StopAfterOneStep)
    assert main(["train", "--output-dir", parted, *flags]) == 130
    state = torch.load(os.path.join(parted, "checkpoint.pt"), weights_only=False)
    assert (state["epoch"], state["step"]) == (0, 1)
    monkeypatch.undo()
    assert main(["train", "--output-dir", parted, *flags, "--resume", parted]) == 0
    a, b = (
        torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False)["model"]
        for d in (straight, parted)
    )
    assert a.keys() == b.keys()
    for key in a:  # weights and BatchNorm running statistics, bit for bit
        assert torch.equal(a[key], b[key]), key


@pytest.mark.distributed
def test_train_with_micro_batch_under_torchrun(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "simclr_fast", "train", *QUICK_TRAIN, "--epochs", "1", "--micro-batch", "64",
           "--output-dir", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["config"]["micro_batch"] == 64
    assert summary["steps"] == 1197 // 512 and 0 < summary["final_loss"] < 10
