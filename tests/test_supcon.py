"""SupConLoss against pytorch-metric-learning 2.9, HobbitLong's formula and an fp64 oracle.

The oracle (:func:`oracle`) is written here from the formula (docs/design.md §8), materialized in
fp64, with HobbitLong's conventions as options (``base_temperature`` scaling, ``contrast_mode``,
an explicit mask, anchors without positives counted as 0) and PML's as the default (anchors without
positives dropped, no scaling). Rows whose only positive is one other row are evaluated in the
cancellation-free form ``log1p(Σ_{a∉{i,p}} e^{s_ia − s_ip})``, so peaked cases keep their digits.
PML itself is called too. Every fused backend that runs on CPU is checked, Triton under the
interpreter at small sizes; the distributed tests spawn two gloo ranks with different data.
"""

# ruff: noqa: B023  (every lambda in a loop is called in the same iteration)
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import cpu_backends, free_port, spawn_world

import simclr_fast
from simclr_fast import NTXentLoss, SupConLoss, nt_xent, supcon_loss
from simclr_fast.backends import triton_backend
from simclr_fast.reference import nt_xent_exact

PML = pytest.importorskip("pytorch_metric_learning.losses")

TAUS = (0.07, 0.1, 0.2, 0.5)


def oracle(
    features,
    labels=None,
    mask=None,
    tau=0.1,
    base_tau=None,
    mode="all",
    without="drop",
):
    """SupCon L_out in fp64 from the formula; ``features`` (B, V, D) or (N, D)."""
    f = features.double()
    if f.dim() == 2:
        f = f[:, None]
    b, v, _ = f.shape
    z = F.normalize(torch.cat(torch.unbind(f, dim=1)), dim=1)  # view-major, as HobbitLong
    n = v * b
    if mask is None:
        lab = torch.arange(b) if labels is None else labels
        mask = lab[:, None] == lab[None, :]
    w = mask.double().repeat(v, v)
    eye = torch.eye(n, dtype=torch.bool)
    w = w.masked_fill(eye, 0.0)
    s = z @ z.T / tau
    lse = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)
    cnt = w.sum(1)
    ell = lse - (w * s).sum(1) / torch.where(cnt > 0, cnt, torch.ones_like(cnt))
    # a single 0/1 positive: the same value without the cancellation of lse − s_p
    single = (cnt == 1) & ((w == 0) | (w == 1)).all(1)
    p = w.argmax(1)
    drop = eye.clone()
    drop[torch.arange(n), p] = True
    s_p = s[torch.arange(n), p]
    exact = F.softplus(torch.logsumexp((s - s_p[:, None]).masked_fill(drop, float("-inf")), 1))
    ell = torch.where(single, exact, ell)
    anchor = torch.arange(n) < (b if mode == "one" else n)
    valid = anchor & (cnt > 0)
    counted = valid if without == "drop" else anchor
    loss = torch.where(valid, ell, torch.zeros_like(ell)).sum() / counted.sum().clamp_min(1)
    return loss if base_tau is None else loss * tau / base_tau


def _grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def _close(got, exp, rtol, what=""):
    atol = rtol * exp.abs().max().item()
    torch.testing.assert_close(got.double(), exp.double(), rtol=rtol, atol=atol, msg=what)


def _labels(sizes, seed=0):
    """Shuffled labels with the given class sizes (any ids, not 0..C−1)."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.cat([torch.full((k,), 7 * c - 3) for c, k in enumerate(sizes)])
    return lab[torch.randperm(len(lab), generator=g)]


def _features(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _backends(dtype):
    names = ["reference"] + cpu_backends(dtype)
    return names


#: (B, V, D, class sizes in samples or None for labels=None): members per class = V × size
CASES = [
    (9, 2, 16, None),  # multi-view SimCLR, 2 members: NT-Xent
    (7, 3, 8, None),  # 3 members
    (5, 4, 33, None),  # 4 members
    (12, 2, 16, (1, 2, 3, 6)),  # 2 to 12 members
    (20, 3, 17, (2, 3, 15)),  # 6 to 45 members
    (30, 2, 24, (25, 5)),  # 10 and 50 members
]


def _case_id(c):
    return f"B{c[0]}V{c[1]}D{c[2]}" + ("-inst" if c[3] is None else "-lab")


# ------------------------------------------------------------------ values and gradients: fp64


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("tau", TAUS)
def test_fp64_matches_oracle_and_pml(case, tau):
    b, v, d, sizes = case
    x = _features(b, v, d)
    labels = None if sizes is None else _labels(sizes)
    exp_loss, exp_g = _grad(lambda f: oracle(f, labels, tau=tau), x)
    # PML on the (N, D) rows with the repeated labels: the same number
    rows_labels = (torch.arange(b) if labels is None else labels).repeat(v)
    pml = PML.SupConLoss(temperature=tau)
    pml_loss, pml_g = _grad(lambda f: pml(torch.cat(torch.unbind(f, 1)), rows_labels), x)
    _close(pml_loss, exp_loss, 1e-10, "PML vs oracle")
    _close(pml_g, exp_g, 1e-8, "PML grad vs oracle")
    for name in _backends(torch.float64):
        loss, g = _grad(lambda f: supcon_loss(f, labels, temperature=tau, backend=name), x)
        _close(loss, exp_loss, 1e-8, f"{name} loss")
        _close(g, exp_g, 1e-8, f"{name} grad")


@pytest.mark.parametrize("tau", TAUS)
def test_pml_form_n_by_d(tau):
    """(N, D) embeddings with (N,) labels, classes of 2 to 50 members, as PML is called."""
    lab = _labels((2, 3, 5, 10, 50), seed=1)
    x = _features(len(lab), 20, seed=1)
    pml = PML.SupConLoss(temperature=tau)
    for dtype, rtol in ((torch.float64, 1e-8), (torch.float32, 1e-4)):
        exp_loss, exp_g = _grad(lambda e: pml(e, lab), x.to(dtype))
        for name in _backends(dtype):
            loss, g = _grad(lambda e: SupConLoss(tau, backend=name)(e, lab), x.to(dtype))
            assert loss.dtype == dtype
            _close(loss, exp_loss, rtol, f"{name} {dtype} loss")
            _close(g, exp_g, rtol, f"{name} {dtype} grad")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("tau", (0.07, 0.5))
def test_fp32_matches_oracle(case, tau):
    b, v, d, sizes = case
    x = _features(b, v, d, dtype=torch.float32, seed=2)
    labels = None if sizes is None else _labels(sizes, seed=2)
    exp_loss, exp_g = _grad(lambda f: oracle(f, labels, tau=tau), x.double())
    for name in _backends(torch.float32):
        loss, g = _grad(lambda f: supcon_loss(f, labels, temperature=tau, backend=name), x)
        assert loss.dtype == torch.float32 and g.dtype == torch.float32
        _close(loss, exp_loss, 1e-4, f"{name} loss")
        _close(g, exp_g, 1e-4, f"{name} grad")


# ------------------------------------------------------------------------ HobbitLong's conventions


@pytest.mark.parametrize("mode", ("all", "one"))
@pytest.mark.parametrize("tau", (0.07, 0.2))
def test_hobbitlong_conventions(mode, tau):
    """base_temperature scaling, contrast_mode, labels and labels=None, on normalized features."""
    x = F.normalize(_features(10, 3, 12, seed=3), dim=-1)
    for labels in (None, _labels((2, 3, 5), seed=3)):
        exp_loss, exp_g = _grad(lambda f: oracle(f, labels, tau=tau, base_tau=0.07, mode=mode), x)
        for name in _backends(torch.float64):
            fn = SupConLoss(tau, base_temperature=0.07, contrast_mode=mode, backend=name)
            loss, g = _grad(lambda f: fn(f, labels), x)
            _close(loss, exp_loss, 1e-8, f"{name} {mode} loss")
            _close(g, exp_g, 1e-8, f"{name} {mode} grad")


def test_contrast_mode_one_differs_from_all():
    x, lab = _features(6, 2, 8, seed=4), _labels((2, 4), seed=4)
    a = supcon_loss(x, lab, contrast_mode="all", backend="torch")
    o = supcon_loss(x, lab, contrast_mode="one", backend="torch")
    assert abs(a.item() - o.item()) > 1e-3
    _close(o, oracle(x, lab, mode="one"), 1e-10)


def test_equivalence_mask_is_labels():
    x, lab = _features(8, 2, 8, seed=5), _labels((2, 2, 4), seed=5)
    mask = (lab[:, None] == lab[None, :]).float()
    for name in _backends(torch.float64):
        _close(
            supcon_loss(x, mask=mask, backend=name), supcon_loss(x, lab, backend=name), 1e-12, name
        )
    eye = torch.eye(8, dtype=torch.bool)
    _close(supcon_loss(x, mask=eye, backend="torch"), supcon_loss(x, backend="torch"), 1e-12)


@pytest.mark.parametrize("mode", ("all", "one"))
def test_general_mask(mode):
    """An asymmetric, weighted mask (not an equivalence): HobbitLong's weighted mean."""
    b = 7
    g = torch.Generator().manual_seed(6)
    mask = (torch.rand(b, b, generator=g) < 0.4).double() * torch.rand(b, b, generator=g)
    mask[0] = 0  # sample 0 has no positive except its other view
    mask[1, 1] = 0
    x = _features(b, 3, 10, seed=6)
    for without in ("drop", "zero"):
        exp_loss, exp_g = _grad(
            lambda f: oracle(f, mask=mask, tau=0.2, mode=mode, without=without), x
        )
        for name in _backends(torch.float64):
            kw = dict(temperature=0.2, contrast_mode=mode, without_positives=without)
            loss, grad = _grad(lambda f: supcon_loss(f, mask=mask, backend=name, **kw), x)
            _close(loss, exp_loss, 1e-8, f"{name} {without} loss")
            _close(grad, exp_g, 1e-8, f"{name} {without} grad")


# ------------------------------------------------------------------- anchors without positives


@pytest.mark.parametrize("without", ("drop", "zero"))
def test_anchors_without_positives(without):
    lab = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])  # 0, 2, 4, 5: one row each
    x = _features(9, 24, seed=7)
    exp_loss, exp_g = _grad(lambda e: oracle(e, lab, without=without), x)
    for name in _backends(torch.float64):
        loss, g = _grad(lambda e: supcon_loss(e, lab, without_positives=without, backend=name), x)
        _close(loss, exp_loss, 1e-10, f"{name} loss")
        _close(g, exp_g, 1e-10, f"{name} grad")
    if without == "drop":  # PML drops them too
        _close(PML.SupConLoss(temperature=0.1)(x, lab), exp_loss, 1e-10)
    else:  # counted as 0: the mean over all 9 rows is 5/9 of the mean over the 5 with positives
        drop = oracle(x, lab)
        _close(exp_loss, drop * 5 / 9, 1e-12)


def test_no_anchor_has_a_positive_gives_zero():
    x = _features(5, 8, seed=8).requires_grad_(True)
    loss = supcon_loss(x, torch.arange(5), backend="torch")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


# --------------------------------------------------------------------------- NT-Xent equivalence


@pytest.mark.parametrize("tau", (0.07, 0.5))
def test_two_views_without_labels_is_ntxent(tau):
    a, c = _features(11, 9, dtype=torch.float32, seed=9), _features(11, 9, dtype=torch.float32)
    for name in ["reference"] + cpu_backends():
        a1, c1 = a.clone().requires_grad_(True), c.clone().requires_grad_(True)
        s = SupConLoss(tau, backend=name)(torch.stack([a1, c1], 1))
        gs = torch.autograd.grad(s, (a1, c1))
        a2, c2 = a.clone().requires_grad_(True), c.clone().requires_grad_(True)
        n = NTXentLoss(tau, backend=name)(a2, c2)
        gn = torch.autograd.grad(n, (a2, c2))
        _close(s, n, 1e-6, name)
        for x, y in zip(gs, gn):
            _close(x, y, 1e-5, name)


def test_peaked_pairs_keep_their_digits():
    """Positives far ahead of the negatives (end of training): loss ~1e-12 and its gradient."""
    g = torch.Generator().manual_seed(10)
    base = torch.randn(6, 64, generator=g, dtype=torch.float64)
    f = torch.stack([base, base + 1e-3 * torch.randn(6, 64, generator=g, dtype=torch.float64)], 1)
    exact = nt_xent_exact(f[:, 0], f[:, 1], 0.02)
    assert exact.item() < 1e-6
    lab = torch.arange(6) * 3  # two-member classes given as labels: the same loss
    for name in cpu_backends(torch.float64):  # the fused backends (the naive one loses it all)
        _close(supcon_loss(f, temperature=0.02, backend=name), exact, 1e-8, name)
        _close(supcon_loss(f, lab, temperature=0.02, backend=name), exact, 1e-8, name)
    for name in cpu_backends(torch.float32):
        _close(supcon_loss(f.float(), lab, temperature=0.02, backend=name), exact, 1e-4, name)
    # and the gradient: the positive's coefficient −S/(1 + S) is not formed as P_pos − 1
    _, exp_g = _grad(lambda x: nt_xent_exact(x[:, 0], x[:, 1], 0.02), f)
    for dtype, rtol in ((torch.float64, 1e-8), (torch.float32, 1e-4)):
        for name in cpu_backends(dtype):
            _, g = _grad(lambda x: supcon_loss(x, lab, temperature=0.02, backend=name), f.to(dtype))
            _close(g, exp_g, rtol, f"{name} {dtype} grad")


@pytest.mark.skipif(
    not triton_backend.interpreting(), reason="Triton imported without TRITON_INTERPRET"
)
@pytest.mark.parametrize("labels", (None, "given"))
def test_triton_interpreter(labels):
    x = _features(6, 3, 16, dtype=torch.float32, seed=11)
    lab = None if labels is None else _labels((2, 4), seed=11)
    exp_loss, exp_g = _grad(lambda f: oracle(f, lab, tau=0.1), x.double())
    loss, g = _grad(lambda f: supcon_loss(f, lab, temperature=0.1, backend="triton"), x)
    _close(loss, exp_loss, 1e-4, "triton loss")
    _close(g, exp_g, 1e-4, "triton grad")


# ----------------------------------------------------------------------- compile, dtypes, layout


@pytest.mark.parametrize(
    "backend", ["reference", "torch"] + [b for b in cpu_backends() if b == "cpu"]
)
def test_torch_compile_fullgraph(backend):
    model = torch.nn.Linear(8, 4)
    loss_fn = SupConLoss(0.2, backend=backend)
    lab = _labels((2, 3, 1), seed=12)

    def step(x):
        return loss_fn(model(x).view(6, 2, 4), lab)

    x = torch.randn(12, 8)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), step(x))


def test_half_inputs_compute_in_fp32():
    x = _features(8, 2, 16, dtype=torch.float32, seed=13)
    lab = _labels((2, 2, 4), seed=13)
    ref = oracle(x.bfloat16(), lab)
    for name in cpu_backends(torch.bfloat16):
        loss = supcon_loss(x.bfloat16(), lab, backend=name)
        assert loss.dtype == torch.float32
        _close(loss, ref, 1e-4, name)


def test_trailing_dims_flattened_and_scale_invariant():
    x, lab = _features(6, 2, 4, 3, seed=14), _labels((3, 3), seed=14)
    _close(
        supcon_loss(x, lab, backend="torch"),
        supcon_loss(3.0 * x.flatten(2), lab, backend="torch"),
        1e-12,
    )


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            dict(labels=torch.zeros(5, dtype=torch.long)),
            ValueError,
            r"labels must have shape \(6,\)",
        ),
        (dict(labels=torch.zeros(6)), TypeError, "integer tensor"),
        (dict(labels=torch.zeros(6, 1, dtype=torch.long)), ValueError, "shape"),
        (dict(mask=torch.ones(6, 5)), ValueError, r"mask must have shape \(6, 6\)"),
        (
            dict(labels=torch.zeros(6, dtype=torch.long), mask=torch.ones(6, 6)),
            ValueError,
            "not both",
        ),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(contrast_mode="many"), ValueError, "contrast_mode"),
        (dict(without_positives="nan"), ValueError, "without_positives"),
        (dict(base_temperature=0.0), ValueError, "base_temperature"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        supcon_loss(torch.randn(6, 2, 8), **kwargs)


def test_bad_features():
    with pytest.raises(ValueError, match="one view per sample and no labels"):
        supcon_loss(torch.randn(6, 1, 8))
    with pytest.raises(ValueError, match="one view per sample and no labels"):
        supcon_loss(torch.randn(6, 8))
    with pytest.raises(TypeError, match="floating"):
        supcon_loss(torch.ones(6, 2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        supcon_loss(torch.randn(0, 2, 8))
    with pytest.raises(ValueError, match="features must be"):
        supcon_loss(torch.randn(8))
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(contrast_mode="some")
    with pytest.raises(TypeError, match="gather_distributed"):
        SupConLoss(gather_distributed=1)


# ------------------------------------------------------------------------------- two processes


def _world_checks(rank, world, port):
    import simclr_fast._function as sf
    import simclr_fast.supcon as sc

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        b, v, d = 5, 3, 12
        x = _features(world * b, v, d, seed=20)  # global batch, different data on every rank
        lab = _labels((2, 3, 4, 1), seed=20)[: world * b] % 3  # classes across ranks
        mine = slice(rank * b, (rank + 1) * b)
        for labels in (None, lab):
            for mode, without in (("all", "drop"), ("one", "zero")):
                for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
                    kw = dict(temperature=0.2, contrast_mode=mode, without_positives=without)
                    exp_loss, exp_g = _grad(
                        lambda f: oracle(f, labels, tau=0.2, mode=mode, without=without), x
                    )
                    for name in ["reference"] + cpu_backends(dtype):
                        local_lab = None if labels is None else labels[mine]
                        loss, g = _grad(
                            lambda f: supcon_loss(
                                f, local_lab, backend=name, gather_distributed=True, **kw
                            ),
                            x[mine].to(dtype),
                        )
                        losses = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
                        dist.all_gather(losses, loss.double())
                        what = f"rank {rank} {name} {dtype} {mode} {without} labels={labels is not None}"
                        _close(sum(losses) / world, exp_loss, rtol, what + " mean loss")
                        _close(g, world * exp_g[mine], rtol, what + " grad")
        # forward traffic: the rank-agreement check (5 numbers), the labels and the rows, once;
        # backward traffic: O(N) all_gathers only (3n for the row LSE, n for the positives)
        import simclr_fast.distributed as sd

        calls = []
        gather = sf._all_gather_into

        def counting(out, local, group):
            calls.append(local.numel())
            gather(out, local, group)

        reduce = dist.all_reduce
        sf._all_gather_into = sc._all_gather_into = sd._all_gather_into = counting
        dist.all_reduce = lambda *a, **k: calls.append("all_reduce")
        try:
            for name in cpu_backends():
                f = x[mine].float().requires_grad_(True)
                calls.clear()
                loss = supcon_loss(f, lab[mine], backend=name, gather_distributed=True)
                assert sorted(calls) == sorted([5, b, v * b * d]), (name, "forward", calls)
                calls.clear()
                loss.backward()
                assert sorted(calls) == [v * b, 3 * v * b], (name, calls)
        finally:
            sf._all_gather_into = sc._all_gather_into = sd._all_gather_into = gather
            dist.all_reduce = reduce
        with pytest.raises(ValueError, match="mask is not supported"):
            supcon_loss(x[mine], mask=torch.eye(b), gather_distributed=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_two_ranks_match_one_process():
    spawn_world(_world_checks, (2, free_port()), 2, 200)


def test_gather_without_process_group_is_local():
    x, lab = _features(6, 2, 8, seed=21), _labels((2, 4), seed=21)
    _close(
        supcon_loss(x, lab, backend="torch", gather_distributed=True),
        supcon_loss(x, lab, backend="torch"),
        0,
    )


def test_exported():
    assert simclr_fast.SupConLoss is SupConLoss and simclr_fast.supcon_loss is supcon_loss
    import simclr_fast.supcon as module

    assert module.SupConLoss is SupConLoss
    assert nt_xent is simclr_fast.nt_xent


# ------------------------------------------------------------------ simclr-fast bench --loss supcon


@pytest.mark.timeout(300)
def test_bench_supcon_mode_rows_and_agreement(tmp_path, capsys):
    """Tiny sizes, each case in its own process: every provider agrees with the naive loss."""
    import csv
    import json

    from simclr_fast.cli import main

    out = tmp_path / "res"
    providers = ["naive", "pml", "torch", "ntxent-torch"] + [
        p for p in ("cpu", "ntxent-cpu") if "cpu" in cpu_backends()
    ]
    tiny = ["--dims", "8", "--repeats", "2", "--min-repeats", "1", "--matmul-size", "64"]
    argv = ["bench", "loss", "--loss", "supcon", "--classes", "3", "--sizes", "24"]
    rc = main([*argv, "--providers", *providers, "--out", str(out), "--no-plot", *tiny])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3 classes" in text and "warning:" not in text
    assert "x NT-Xent's" in text  # the yardstick ratio is printed per fused backend
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cases = {(r["provider"], r["metric"]): r for r in rows if r["provider"] != "torch.mm"}
    losses = {}
    for name in providers:
        assert cases[(name, "fwdbwd_ms")]["status"] == "ok", name
        extra = json.loads(cases[(name, "fwdbwd_ms")]["extra"] or "{}")
        assert extra.get("loss") == "supcon" and extra.get("classes") == 3
        losses[name] = float(cases[(name, "loss")]["value"])
    for name in ("pml", "torch", "cpu"):
        if name in losses:
            assert losses[name] == pytest.approx(losses["naive"], rel=1e-5), name
    # the same inputs with the labels made by the benchmark: SupCon's value, not NT-Xent's
    from simclr_fast.bench import supcon as bench_supcon

    g = torch.Generator(device="cpu").manual_seed(0)
    x0, x1 = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    lab = bench_supcon.labels_for(12, 3, 0, torch.device("cpu"))
    assert torch.bincount(lab).tolist() == [4, 4, 4]
    exp = oracle(torch.stack([x0, x1], 1), lab, tau=0.5).item()
    assert losses["naive"] == pytest.approx(exp, rel=1e-5)
    assert losses["ntxent-torch"] == pytest.approx(nt_xent(x0, x1, 0.5).item(), rel=1e-5)


# ------------------------------------------------------------------- simclr-fast train --loss supcon


def test_batch_labels_follow_the_images():
    """The labels of a step are those of the images train_batches yields (rank by rank)."""
    from simclr_fast.train.sources import Split, train_batches
    from simclr_fast.train.supervised import batch_labels

    n = 40
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)  # image i holds the value i
    labels = (torch.arange(n) * 7) % 5
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    split = Split(labels=labels, images=images)
    world, global_batch = 2, 8
    for rank in range(world):
        got = train_batches(split, images, perm, 1, 4, global_batch, rank, world, "cpu", 0)
        for step, x in enumerate(got, start=1):
            ids = x.view(-1).long()
            exp = batch_labels(labels, perm, step, global_batch, rank, world, "cpu")
            assert torch.equal(labels[ids], exp), (rank, step)


@pytest.mark.timeout(300)
def test_train_supcon_runs_on_digits_labels(tmp_path):
    import csv
    import json

    from simclr_fast.cli import main

    out = str(tmp_path / "run")
    flags = ["--loss", "supcon", "--epochs", "2", "--knn-every", "0", "--no-probe"]
    assert main(["train", "--output-dir", out, "--no-progress", *flags]) == 0
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["config"]["loss"] == "supcon"
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    # with ~25 images of each digit in a batch of 256 (two views: m ≈ 50 positives per row) every
    # row's loss is at least log(m) ≈ 3.9 (Jensen) and starts near log(2B − 1) ≈ 6.2
    assert 3.0 < float(rows[0]["loss"]) < 6.3
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
