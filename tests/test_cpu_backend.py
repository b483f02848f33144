"""backend="cpu": the fused C++ kernels of csrc/ (simclr_fast._C).

The extension is built in CI (`make test` installs the package in editable mode first), so these
tests fail, not skip, when it is missing; only the tests of the no-extension and wrong-torch paths
run without it, in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import loss_and_grads, max_err

import simclr_fast
from simclr_fast import NTXentLoss, _extension, backends, nt_xent
from simclr_fast.backends.cpu import CPUBackend
from simclr_fast.reference import nt_xent_reference

SHAPES = [(1, 1), (2, 2), (3, 17), (7, 64), (256, 128), (1000, 127)]
# 0.01 takes the safe two-exponential path (|1/τ| > 40), the others the one-exponential path.
TAUS = [0.07, 0.5, 1.0, 10.0, -1.0, 0.01]


@pytest.fixture(autouse=True)
def _require_extension():
    if not _extension.AVAILABLE:
        pytest.fail(f"simclr_fast._C is not usable: {_extension.REASON}")


def _inputs(b: int, d: int, dtype=torch.float32):
    return torch.randn(b, d).to(dtype), torch.randn(b, d).to(dtype)


def _normalized(n: int, d: int, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, dtype=dtype), dim=1)


# ---- the public API against the fp64 reference ------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xD{s[1]}")
@pytest.mark.parametrize("tau", TAUS)
def test_fp32_matches_fp64_reference(shape, tau):
    out0, out1 = _inputs(*shape)
    exp = loss_and_grads(lambda a, b: nt_xent_reference(a, b, tau), out0.double(), out1.double())
    got = loss_and_grads(lambda a, b: nt_xent(a, b, tau, backend="cpu"), out0, out1)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float32
    # |s| grows like 1/|τ|: the fp32 rounding of z alone moves the loss by ~6e-8/|τ|.
    scale = max(1.0, 1.0 / abs(tau))
    torch.testing.assert_close(got[0].double(), exp[0], rtol=1e-5, atol=2e-6 * scale)
    for g, e in zip(got[1:], exp[1:]):
        torch.testing.assert_close(
            g.double(), e, rtol=1e-4, atol=1e-5 * scale * e.abs().max().item() + 1e-9
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 17), (7, 64), (256, 128)], ids=lambda s: f"B{s[0]}xD{s[1]}")
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_half_precision_two_times_rule(dtype, shape, tau):
    """Error against fp64 is at most 2× the naive loss's own error in that dtype, plus a small atol."""
    out0, out1 = _inputs(*shape, dtype=dtype)
    exp = loss_and_grads(lambda a, b: nt_xent_reference(a, b, tau), out0.double(), out1.double())
    naive = loss_and_grads(lambda a, b: nt_xent_reference(a, b, tau), out0, out1)
    got = loss_and_grads(lambda a, b: nt_xent(a, b, tau, backend="cpu"), out0, out1)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == dtype
    for g, n, e in zip(got, naive, exp):
        atol = 1e-3 * e.abs().max().item()
        assert max_err(g, e) <= 2 * max_err(n, e) + atol


def test_auto_picks_cpu_for_cpu_tensors():
    assert "cpu" in simclr_fast.available_backends("cpu")
    assert backends.resolve("auto", torch.device("cpu"), torch.float32) == "cpu"
    assert backends.resolve("auto", torch.device("cpu"), torch.bfloat16) == "cpu"
    assert backends.resolve("auto", torch.device("cpu"), torch.float64) == "torch"


def test_refuses_float64_and_other_devices_with_the_fix():
    cpu = CPUBackend()
    assert "backend='torch'" in cpu.unavailable_reason(torch.device("cpu"), torch.float64)
    assert "CPU tensors only" in cpu.unavailable_reason(torch.device("meta"), torch.float32)
    with pytest.raises(RuntimeError, match="backend='torch'"):
        nt_xent(
            torch.randn(4, 8, dtype=torch.float64),
            torch.randn(4, 8, dtype=torch.float64),
            backend="cpu",
        )


# ---- the contract ops against fp64 evaluations of its formulas ---------------------------------
#
# The references materialize the (small) similarity matrix in fp64 from the same fp32 inputs, so
# what they measure is the kernels' own error: the fp32 tile GEMMs (~|inv_tau|·1e-7 in s), the
# exponents' rounding and the sums.


def _columns_mask(n: int, r0: int, rc: int, exclude: torch.Tensor | None) -> torch.Tensor:
    """True where row r0 + i does NOT see column j: the diagonal and its excluded column."""
    mask = torch.zeros(rc, n, dtype=torch.bool)
    rows = torch.arange(rc)
    mask[rows, r0 + rows] = True
    if exclude is not None:
        has = exclude >= 0
        mask[rows[has], exclude[has]] = True
    return mask


def _ref_forward(z, r0, rc, inv_tau, shift, exclude=None, keys=None) -> torch.Tensor:
    """x_k = log Σ_{j∈C(k)} e^{s_kj − shift_k} in fp64 (base.py)."""
    q = z.double()[r0 : r0 + rc]
    if keys is None:
        s = inv_tau * q @ z.double().T
        s = s.masked_fill(_columns_mask(z.shape[0], r0, rc, exclude), float("-inf"))
    else:
        s = inv_tau * q @ keys.double().T
    return torch.logsumexp(s - shift.double()[:, None], dim=1)


def _ref_backward(z, shift, weight, r0, rc, inv_tau, exclude=None, keys=None) -> torch.Tensor:
    """dz_k = inv_tau Σ_{j∈C(k)} (w_k e^{s_kj − shift_k} + w_j e^{s_kj − shift_j}) c_j in fp64."""
    zd, sh, w = z.double(), shift.double(), weight.double()
    if keys is not None:
        s = inv_tau * zd[r0 : r0 + rc] @ keys.double().T
        return inv_tau * (w[:, None] * torch.exp(s - sh[:, None])) @ keys.double()
    n = z.shape[0]
    s = inv_tau * zd @ zd.T
    mask = torch.eye(n, dtype=torch.bool)
    if exclude is not None:  # symmetric: both (k, e) and (e, k)
        rows, has = r0 + torch.arange(rc), exclude >= 0
        mask[rows[has], exclude[has]] = mask[exclude[has], rows[has]] = True
    t = (w[:, None] * torch.exp(s - sh[:, None])).masked_fill(mask, 0.0)
    return inv_tau * ((t + t.T) @ zd)[r0 : r0 + rc]


def _pairs(b: int, d: int, sigma: float) -> torch.Tensor:
    """Normalized fp32 z = [a; a + σ·noise]: positives (k + B) mod 2B, near-duplicates for small σ."""
    a = torch.randn(b, d, dtype=torch.float64)
    return F.normalize(
        torch.cat([a, a + sigma * torch.randn(b, d, dtype=torch.float64)]), dim=1
    ).float()


def _positives(n: int) -> torch.Tensor:
    return (torch.arange(n) + n // 2) % n


def _pos_logits(z: torch.Tensor, inv_tau: float) -> torch.Tensor:
    """s_pos,k in fp64 from the fp32 z, rounded once to fp32 (what the loss layer passes as shift)."""
    zd = z.double()
    return (inv_tau * (zd * zd[_positives(z.shape[0])]).sum(1)).float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return max_err(a, b) / max(b.abs().max().item(), 1e-300)


@pytest.mark.parametrize("tile", ["default", "13"])
@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("exclude", [True, False], ids=["exclude", "no-exclude"])
@pytest.mark.parametrize("tau", [0.5, -0.2, 0.05, 0.01])
@pytest.mark.parametrize(
    "n, d, row_start, row_count",
    [
        (2, 3, 0, 2),
        (150, 19, 0, 150),
        (150, 19, 50, 50),
        (150, 19, 0, 37),
        (150, 19, 113, 37),
        (96, 8, 30, 1),
    ],
)
def test_self_mode_matches_fp64(monkeypatch, tile, isa, exclude, tau, n, d, row_start, row_count):
    """Self mode on sub-blocks (the distributed layer's calls), tiny tiles, both kernel sets.

    τ = 0.01 takes the safe two-exponential path (c = 1/|τ| > 40), the others the fast path; the
    weights have both signs; the shift is the positive logit (so with exclusion x is log S_k).
    """
    if tile != "default":
        monkeypatch.setenv("SIMCLR_FAST_CPU_TILE", tile)
    monkeypatch.setenv("SIMCLR_FAST_CPU_ISA", isa)
    z, inv_tau = _pairs(n // 2, d, 0.3), 1.0 / tau
    shift = _pos_logits(z, inv_tau)
    ex = _positives(n)[row_start : row_start + row_count] if exclude else None
    own = shift[row_start : row_start + row_count].contiguous()
    cpu = CPUBackend()
    x = cpu.forward_lse(z, row_start, row_count, inv_tau, own, ex)
    want = _ref_forward(z, row_start, row_count, inv_tau, own, ex)
    assert x.dtype == torch.float32 and x.shape == (row_count,)
    # |x| and its error scale with |s| ~ |inv_tau|: the fp32 GEMM moves s by ~1e-7·|inv_tau|.
    if exclude and n == 2:  # one pair, excluded: no columns at all, x = −inf
        assert torch.equal(x, torch.full((row_count,), float("-inf")))
        return
    assert max_err(x, want) <= 1e-6 * max(1.0, abs(inv_tau))
    weight = torch.randn(n) / n
    dz = cpu.backward_rows(z, shift, None, weight, row_start, row_count, inv_tau, ex)
    assert dz.dtype == torch.float32 and dz.shape == (row_count, d)
    assert _rel(dz, _ref_backward(z, shift, weight, row_start, row_count, inv_tau, ex)) <= 1e-5


# The grid (#12): B ∈ {3, 64, 257}, D ∈ {16, 128, 130}, τ ∈ {0.02, 0.05, 0.1, 0.5},
# b = a + σ·noise, with NT-Xent's shift (the positive logit) and exclusion (the positive): the row
# losses softplus(x_k) range from ~1e-12 to ~5. The issue asks 1e-5 relative for the loss (the mean
# over rows) and for dz. Each row's loss is held to 4e-7·|1/τ| relative: its error is that of x_k,
# mostly the fp32 tile GEMM's error in s (~1e-7) times 1/τ. Worst over this grid and seeds 0-2
# (2026-12-02): mean loss 5.1e-6, row 2.1e-7·|1/τ| (1.03e-5 at τ = 0.02), dz 6.3e-6.
@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("tau", [0.02, 0.05, 0.1, 0.5])
@pytest.mark.parametrize("d", [16, 128, 130])
@pytest.mark.parametrize("b", [3, 64, 257])
def test_peaked_inputs_keep_relative_accuracy(b, d, tau, sigma):
    z, inv_tau = _pairs(b, d, sigma), 1.0 / tau
    n = 2 * b
    shift, ex = _pos_logits(z, inv_tau), _positives(n)
    cpu = CPUBackend()
    x = cpu.forward_lse(z, 0, n, inv_tau, shift, ex)
    want = _ref_forward(z, 0, n, inv_tau, shift, ex)
    loss, want_loss = F.softplus(x.double()), F.softplus(want)
    assert abs(loss.mean().item() / want_loss.mean().item() - 1) <= 1e-5
    assert ((loss - want_loss).abs() / want_loss).max().item() <= 4e-7 * max(1.0, inv_tau)
    weight = (torch.sigmoid(-want) / n).float()  # NT-Xent's weight_k = coef_k · sigmoid(−x_k)
    dz = cpu.backward_rows(z, shift, x, weight, 0, n, inv_tau, ex)
    assert _rel(dz, _ref_backward(z, shift, weight, 0, n, inv_tau, ex)) <= 1e-5


@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("tau", [0.1, -0.5, 0.01])
@pytest.mark.parametrize(
    "n, row_start, row_count, k, tile",
    [
        (256, 0, 256, 1000, "default"),
        (40, 0, 40, 300, "16"),
        (40, 9, 20, 77, "8"),
        (5, 2, 1, 1, "default"),
    ],
)
def test_keys_mode_matches_fp64(monkeypatch, isa, tau, n, row_start, row_count, k, tile):
    """Memory-bank mode: the owned rows against K keys, rows-only gradient, sub-blocks, odd K."""
    if tile != "default":
        monkeypatch.setenv("SIMCLR_FAST_CPU_TILE", tile)
    monkeypatch.setenv("SIMCLR_FAST_CPU_ISA", isa)
    d, inv_tau = 33, 1.0 / tau
    z, keys = _normalized(n, d, torch.float32), _normalized(k, d, torch.float32)
    shift = (inv_tau * torch.rand(row_count)).float()  # any shift: need not bound s
    cpu = CPUBackend()
    x = cpu.forward_lse(z, row_start, row_count, inv_tau, shift, keys=keys)
    want = _ref_forward(z, row_start, row_count, inv_tau, shift, keys=keys)
    assert x.shape == (row_count,)
    assert max_err(x, want) <= 1e-6 * max(1.0, abs(inv_tau))
    weight = torch.randn(row_count) / row_count
    dz = cpu.backward_rows(z, shift, x, weight, row_start, row_count, inv_tau, keys=keys)
    assert dz.shape == (row_count, d)
    assert (
        _rel(dz, _ref_backward(z, shift, weight, row_start, row_count, inv_tau, keys=keys)) <= 1e-5
    )


def test_keys_mode_splits_key_blocks_across_threads_deterministically(monkeypatch):
    """One row block against many key blocks: the tasks' partials merge in a fixed order."""
    monkeypatch.setenv("SIMCLR_FAST_CPU_TILE", "32")
    z, keys = _normalized(32, 16, torch.float32), _normalized(2048, 16, torch.float32)
    shift, weight = torch.full((32,), 5.0), torch.rand(32)
    cpu = CPUBackend()

    def run():
        x = cpu.forward_lse(z, 0, 32, 5.0, shift, keys=keys)
        return x, cpu.backward_rows(z, shift, x, weight, 0, 32, 5.0, keys=keys)

    many = run()
    assert all(torch.equal(a, b) for a, b in zip(many, run()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(many, one):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(many[0].double(), _ref_forward(z, 0, 32, 5.0, shift, keys=keys))


def test_unnormalized_z_stays_finite():
    """The fixed shift bounds |s| by |inv_tau|·max|z|², so rows longer than 1 cannot overflow."""
    z = 3.0 * _normalized(64, 16, torch.float32)
    shift, ex = _pos_logits(z, 2.0), _positives(64)
    cpu = CPUBackend()
    x = cpu.forward_lse(z, 0, 64, 2.0, shift, ex)
    assert max_err(x, _ref_forward(z, 0, 64, 2.0, shift, ex)) < 1e-5
    weight = torch.full((64,), 1 / 64)
    want = _ref_backward(z, shift, weight, 0, 64, 2.0, ex)
    assert _rel(cpu.backward_rows(z, shift, x, weight, 0, 64, 2.0, ex), want) < 1e-5


def test_huge_weight_takes_the_safe_backward():
    """weight · e^{c − shift} beyond fp32's range must not turn the gradient into inf/NaN.

    One row of length 2 makes c = |inv_tau|·max|z|² = 36 (still the fast path's range); shift =
    each row's log-sum-exp (x = 0), so every G entry is at most the weight, 1e27, but u = weight ·
    e^{c − shift} is past fp32 and the fast backward must step aside.
    """
    z = _normalized(32, 8, torch.float32)
    z[0] *= 2
    shift = _ref_forward(z, 0, 32, 9.0, torch.zeros(32)).float()
    weight = torch.full((32,), 1e27)
    assert (1e27 * torch.exp(36.0 - shift.double())).max() > 1e38  # the premise
    got = CPUBackend().backward_rows(z, shift, None, weight, 0, 32, 9.0)
    assert torch.isfinite(got).all()
    assert _rel(got, _ref_backward(z, shift, weight, 0, 32, 9.0)) < 1e-5


def test_tiny_weight_times_huge_exponential_stays_finite():
    """Early training at τ = 0.01: e^{s − shift} up to e^{130} (past fp32) with weights ~1e-38.

    The product (~1e18) is finite; the safe backward keeps the weight inside the exponent.
    """
    z = _normalized(24, 6, torch.float32)
    shift = torch.full((24,), -30.0)
    weight = 1e-38 * (1 + torch.rand(24))
    got = CPUBackend().backward_rows(z, shift, None, weight, 0, 24, 100.0)
    want = _ref_backward(z, shift, weight, 0, 24, 100.0)
    assert torch.isfinite(want).all() and want.abs().max() > 1e10
    assert _rel(got, want) < 1e-5


def test_generic_and_avx2_kernels_agree(monkeypatch):
    """Both kernel sets on the same inputs (tests run on an AVX2 CPU; 'auto' is avx2 there)."""
    if _extension.cpu_isa() != "avx2":
        pytest.fail("this CPU has no AVX2/FMA: the avx2 kernels cannot be checked here")
    z, inv_tau = _pairs(75, 40, 0.05), 20.0
    shift, ex, weight = _pos_logits(z, inv_tau), _positives(150), torch.rand(150) / 150
    got = {}
    for isa in ("avx2", "generic"):
        monkeypatch.setenv("SIMCLR_FAST_CPU_ISA", isa)
        x = CPUBackend().forward_lse(z, 0, 150, inv_tau, shift, ex)
        got[isa] = (x, CPUBackend().backward_rows(z, shift, x, weight, 0, 150, inv_tau, ex))
    assert max_err(got["avx2"][0], got["generic"][0]) <= 2e-6
    assert _rel(got["avx2"][1], got["generic"][1]) <= 2e-6


def test_op_checks_its_inputs():
    fwd, bwd = torch.ops.simclr_fast.ntxent_fwd_cpu, torch.ops.simclr_fast.ntxent_bwd_cpu
    z = _normalized(8, 4, torch.float32)
    sh8, sh4 = torch.zeros(8), torch.zeros(4)
    ex = _positives(8)
    with pytest.raises(RuntimeError, match="z must be float32"):
        fwd(z.double(), 0, 8, 2.0, sh8)
    with pytest.raises(RuntimeError, match=r"rows \[4, 12\) out of range for N = 8"):
        fwd(z, 4, 8, 2.0, sh8)
    with pytest.raises(RuntimeError, match="z must be contiguous"):
        fwd(z.t(), 0, 4, 2.0, sh4)
    with pytest.raises(RuntimeError, match="inv_tau must be finite"):
        fwd(z, 0, 8, float("inf"), sh8)
    with pytest.raises(RuntimeError, match=r"shift must be .* shape \(4,\)"):
        fwd(z, 0, 4, 2.0, sh8)
    with pytest.raises(RuntimeError, match=r"shift must be .* shape \(8,\) \(one per row of z"):
        bwd(z, sh4, sh8, 0, 4, 2.0)
    with pytest.raises(RuntimeError, match="weight must be .*float32"):
        bwd(z, sh8, sh8.double(), 0, 8, 2.0)
    with pytest.raises(RuntimeError, match="exclude must be a contiguous int64"):
        fwd(z, 0, 8, 2.0, sh8, ex.int())
    with pytest.raises(RuntimeError, match=r"exclude\[2\] = 8 is not a column of z"):
        fwd(z, 0, 8, 2.0, sh8, torch.tensor([4, 5, 8, 7, 0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="exclude must be symmetric: row 0 excludes 4 but row 4"):
        bwd(z, sh8, sh8, 0, 8, 2.0, torch.tensor([4, 5, 6, 7, 1, 0, 2, 3]))
    keys = _normalized(5, 4, torch.float32)
    with pytest.raises(RuntimeError, match="exclude must be None when keys are given"):
        fwd(z, 0, 8, 2.0, sh8, ex, keys)
    with pytest.raises(RuntimeError, match="keys must have D = 4"):
        fwd(z, 0, 8, 2.0, sh8, None, _normalized(5, 3, torch.float32))
    with pytest.raises(
        RuntimeError, match=r"shift must be .* \(3,\) \(the owned rows' values in keys"
    ):
        bwd(z, sh8, sh8, 0, 3, 2.0, None, keys)


def test_nan_input_propagates():
    out0, out1 = torch.randn(5, 8), torch.randn(5, 8)
    out0[2, 3] = float("nan")
    assert torch.isnan(nt_xent(out0, out1, backend="cpu"))


def test_collinear_closed_form():
    x = torch.ones(6, 5)
    for tau in (0.5, 0.01):
        torch.testing.assert_close(
            nt_xent(x, x, tau, backend="cpu"), torch.tensor(11.0).log(), rtol=1e-6, atol=1e-6
        )


# ---- determinism, threads ----------------------------------------------------------------------


def test_bit_identical_run_to_run(monkeypatch):
    monkeypatch.setenv("SIMCLR_FAST_CPU_TILE", "32")
    out0, out1 = _inputs(150, 48)
    first = loss_and_grads(lambda a, b: nt_xent(a, b, 0.1, backend="cpu"), out0, out1)
    for _ in range(2):
        again = loss_and_grads(lambda a, b: nt_xent(a, b, 0.1, backend="cpu"), out0, out1)
        for x, y in zip(first, again):
            assert torch.equal(x, y)


def test_one_thread_agrees_with_many(monkeypatch):
    monkeypatch.setenv("SIMCLR_FAST_CPU_TILE", "32")
    out0, out1 = _inputs(150, 48)
    many = loss_and_grads(lambda a, b: nt_xent(a, b, 0.1, backend="cpu"), out0, out1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = loss_and_grads(lambda a, b: nt_xent(a, b, 0.1, backend="cpu"), out0, out1)
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(many, one):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


# ---- torch.library / torch.compile / gradcheck -------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "exclude", "keys"])
@pytest.mark.parametrize("rows", [(0, 12), (3, 5)])
def test_opcheck(rows, mode):
    z = _normalized(12, 6, torch.float32)
    r0, rc = rows
    ex = _positives(12)[r0 : r0 + rc].contiguous() if mode == "exclude" else None
    keys = _normalized(7, 6, torch.float32) if mode == "keys" else None
    shift = _pos_logits(z, 2.0)
    own = shift[r0 : r0 + rc].contiguous()
    nv = rc if keys is not None else 12
    weight = torch.full((nv,), 1 / 12)
    bwd_shift = own if keys is not None else shift
    fwd, bwd = torch.ops.simclr_fast.ntxent_fwd_cpu, torch.ops.simclr_fast.ntxent_bwd_cpu
    torch.library.opcheck(fwd.default, (z, r0, rc, 2.0, own, ex, keys))
    torch.library.opcheck(bwd.default, (z, bwd_shift, weight, r0, rc, 2.0, ex, keys))


def test_torch_compile_fullgraph_matches_eager():
    """Loss and parameter gradients (the compiled backward calls ntxent_bwd_cpu) match eager."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    loss_fn = NTXentLoss(temperature=0.2, backend="cpu")

    def step(x0, x1):
        return loss_fn(model(x0), model(x1))

    def loss_and_param_grads(fn):
        model.zero_grad()
        loss = fn(x0, x1)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    x0, x1 = torch.randn(6, 8), torch.randn(6, 8)
    want = loss_and_param_grads(step)
    got = loss_and_param_grads(torch.compile(step, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w)


def test_gradcheck_reference_fp64():
    """The oracle itself is right (fp64 gradcheck); the cpu backend is then checked against it."""
    a = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: nt_xent_reference(x, y, 0.3), (a, b))


def test_finite_differences_fp32():
    """The kernel is fp32 only, so no fp64 gradcheck: central differences of its own loss instead."""
    out0, out1 = _inputs(4, 6)
    loss, g0, g1 = loss_and_grads(lambda a, b: nt_xent(a, b, 0.3, backend="cpu"), out0, out1)
    v0, v1 = torch.randn_like(out0), torch.randn_like(out1)
    h = 1e-2
    plus = nt_xent(out0 + h * v0, out1 + h * v1, 0.3, backend="cpu").double()
    minus = nt_xent(out0 - h * v0, out1 - h * v1, 0.3, backend="cpu").double()
    numeric = ((plus - minus) / (2 * h)).item()
    analytic = ((g0 * v0).sum() + (g1 * v1).sum()).double().item()
    assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic))


# ---- without the extension ----------------------------------------------------------------------


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_without_extension_import_works_and_cpu_says_how_to_build():
    proc = _run(
        """
        import torch, simclr_fast
        assert "cpu" not in simclr_fast.available_backends("cpu")
        x = torch.randn(4, 8)
        simclr_fast.nt_xent(x, x + 1)  # auto falls back to "torch"
        try:
            simclr_fast.nt_xent(x, x + 1, backend="cpu")
        except RuntimeError as e:
            print(e)
        """,
        SIMCLR_FAST_NO_EXTENSION="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install --no-build-isolation" in proc.stdout
    assert "SIMCLR_FAST_NO_EXTENSION" in proc.stdout


def test_other_torch_version_warns_and_falls_back():
    proc = _run(
        """
        import warnings, torch
        torch.__version__ = "9.9.9"  # pretend another torch is installed
        import simclr_fast
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = simclr_fast.available_backends("cpu")
        assert "cpu" not in names, names
        print([str(w.message) for w in caught])
        x = torch.randn(4, 8)
        simclr_fast.nt_xent(x, x + 1)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "built for torch" in proc.stdout and "9.9.9" in proc.stdout
    assert "Falling back" in proc.stdout
