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
from simclr_fast.backends.torch_backend import TorchBackend
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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return max_err(a, b) / max(b.abs().max().item(), 1e-30)


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


def test_op_checks_its_inputs():
    z = _normalized(8, 4, torch.float32)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.simclr_fast.ntxent_fwd_cpu(z.double(), 0, 8, 2.0)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.simclr_fast.ntxent_fwd_cpu(z, 4, 8, 2.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.simclr_fast.ntxent_fwd_cpu(z.t(), 0, 4, 2.0)
    with pytest.raises(RuntimeError, match="lse"):
        torch.ops.simclr_fast.ntxent_bwd_cpu(z, torch.zeros(7), torch.zeros(8), 0, 8, 2.0)


# ---- the contract ops against TorchBackend, many tiles ----------------------------------------


@pytest.mark.parametrize("tile", ["default", "8", "13", "40"])
@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("tau", [0.5, -0.2, 0.01])
@pytest.mark.parametrize(
    "n, d, row_start, row_count",
    [
        (2, 3, 0, 2),
        (150, 19, 0, 150),
        (150, 19, 50, 50),
        (150, 19, 0, 37),
        (150, 19, 113, 37),
        (97, 8, 30, 1),
    ],
)
def test_ops_match_torch_backend(monkeypatch, tile, isa, tau, n, d, row_start, row_count):
    """forward_lse/backward_rows on sub-blocks (the distributed layer's calls) with tiny tiles."""
    if tile != "default":
        monkeypatch.setenv("SIMCLR_FAST_CPU_TILE", tile)
    monkeypatch.setenv("SIMCLR_FAST_CPU_ISA", isa)
    z = _normalized(n, d)
    inv_tau = 1.0 / tau
    ref, cpu = TorchBackend(), CPUBackend()
    lse_all = ref.forward_lse(z, 0, n, inv_tau)
    want = lse_all[row_start : row_start + row_count]
    got = cpu.forward_lse(z.float(), row_start, row_count, inv_tau)
    assert got.dtype == torch.float32 and got.shape == (row_count,)
    # fp32 z moves s by ~6e-8·|1/τ|; lse inherits that.
    assert max_err(got, want) <= 1e-6 * max(1.0, abs(inv_tau)) + 1e-6 * want.abs().max().item()
    coef = torch.rand(n, dtype=torch.float64) / n
    want_dz = ref.backward_rows(z, lse_all, coef, row_start, row_count, inv_tau)
    got_dz = cpu.backward_rows(
        z.float(), lse_all.float(), coef.float(), row_start, row_count, inv_tau
    )
    assert got_dz.dtype == torch.float32 and got_dz.shape == (row_count, d)
    assert _rel(got_dz, want_dz) <= 2e-5 * max(1.0, abs(inv_tau))


def test_unnormalized_z_stays_finite():
    """The fixed shift bounds |s| by |1/τ|·max|z|², so rows longer than 1 cannot overflow."""
    z = 3.0 * _normalized(64, 16)
    ref, cpu = TorchBackend(), CPUBackend()
    lse = ref.forward_lse(z, 0, 64, 2.0)
    assert _rel(cpu.forward_lse(z.float(), 0, 64, 2.0), lse) < 1e-5
    coef = torch.full((64,), 1 / 64, dtype=torch.float64)
    want = ref.backward_rows(z, lse, coef, 0, 64, 2.0)
    assert _rel(cpu.backward_rows(z.float(), lse.float(), coef.float(), 0, 64, 2.0), want) < 1e-4


def test_huge_grad_output_takes_the_safe_backward():
    """coef · e^{c − lse} beyond fp32's range must not turn the gradient into inf/NaN."""
    z = _normalized(32, 8)
    ref, cpu = TorchBackend(), CPUBackend()
    lse = ref.forward_lse(z, 0, 32, 30.0)
    coef = torch.full((32,), 1e30, dtype=torch.float64)
    want = ref.backward_rows(z, lse, coef, 0, 32, 30.0)
    got = cpu.backward_rows(z.float(), lse.float(), coef.float(), 0, 32, 30.0)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < 1e-4


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


@pytest.mark.parametrize("rows", [(0, 12), (3, 5)])
def test_opcheck(rows):
    z = _normalized(12, 6, torch.float32)
    lse = torch.ops.simclr_fast.ntxent_fwd_cpu(z, 0, 12, 2.0)
    coef = torch.full((12,), 1 / 12)
    torch.library.opcheck(torch.ops.simclr_fast.ntxent_fwd_cpu.default, (z, *rows, 2.0))
    torch.library.opcheck(torch.ops.simclr_fast.ntxent_bwd_cpu.default, (z, lse, coef, *rows, 2.0))


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
