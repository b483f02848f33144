"""The public API: every backend against the reference, drop-in compatibility, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cpu_backends, loss_and_grads, max_err

import simclr_fast
from simclr_fast import NTXentLoss, nt_xent
from simclr_fast.reference import nt_xent_reference

SHAPES = [(1, 1), (2, 2), (3, 17), (7, 64), (256, 128), (1000, 127)]
TAUS = [0.02, 0.07, 0.5, 1.0, -1.0]  # 0.02: past the fixed-shift fast paths


def _inputs(b: int, d: int, dtype=torch.float32):
    return torch.randn(b, d).to(dtype), torch.randn(b, d).to(dtype)


def test_torch_backend_is_always_available():
    assert "torch" in simclr_fast.available_backends("cpu")
    assert "reference" in simclr_fast.available_backends("cpu")


@pytest.mark.parametrize("backend", ["reference", *cpu_backends()])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xD{s[1]}")
@pytest.mark.parametrize("tau", TAUS)
def test_fp32_matches_fp64_reference(backend, shape, tau):
    out0, out1 = _inputs(*shape)
    exp = loss_and_grads(lambda a, b: nt_xent_reference(a, b, tau), out0.double(), out1.double())
    got = loss_and_grads(lambda a, b: nt_xent(a, b, tau, backend=backend), out0, out1)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0].double(), exp[0], rtol=1e-5, atol=1e-5)
    for g, e in zip(got[1:], exp[1:]):
        # gradients scale like 1/(B·τ): compare relative to their size
        torch.testing.assert_close(
            g.double(), e, rtol=1e-4, atol=1e-5 * e.abs().max().item() + 1e-9
        )


@pytest.mark.parametrize("backend", cpu_backends(torch.bfloat16))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 17), (256, 128)], ids=lambda s: f"B{s[0]}xD{s[1]}")
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_half_precision_two_times_rule(backend, dtype, shape, tau):
    """Error against fp64 is at most 2× the naive loss's own error in that dtype (plus a small atol)."""
    if simclr_fast.backends.unavailable_reason(backend, torch.device("cpu"), dtype) is not None:
        pytest.skip(f"{backend} does not take {dtype}")
    out0, out1 = _inputs(*shape, dtype=dtype)
    exp = loss_and_grads(lambda a, b: nt_xent_reference(a, b, tau), out0.double(), out1.double())
    naive = loss_and_grads(lambda a, b: nt_xent_reference(a, b, tau), out0, out1)
    got = loss_and_grads(lambda a, b: nt_xent(a, b, tau, backend=backend), out0, out1)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == dtype
    for g, n, e in zip(got, naive, exp):
        atol = 1e-3 * e.abs().max().item()
        assert max_err(g, e) <= 2 * max_err(n, e) + atol


@pytest.mark.parametrize("backend", ["reference", *cpu_backends()])
def test_non_contiguous_inputs(backend):
    base0, base1 = torch.randn(16, 40), torch.randn(40, 16)
    out0, out1 = base0[:, ::2], base1.T[:, 3:23]
    assert not out0.is_contiguous() and not out1.is_contiguous()
    exp = loss_and_grads(lambda a, b: nt_xent_reference(a, b, 0.5), out0.double(), out1.double())
    got = loss_and_grads(lambda a, b: nt_xent(a, b, 0.5, backend=backend), out0, out1)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gradcheck_fp64(backend):
    out0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3, backend=backend), (out0, out1))


@pytest.mark.parametrize("backend", ["reference", *cpu_backends()])
def test_collinear_closed_form_and_symmetry(backend):
    x = torch.randn(1, 32).expand(10, 32).contiguous()
    assert nt_xent(x, 3 * x, 0.5, backend=backend).item() == pytest.approx(math.log(19), rel=1e-5)
    out0, out1 = _inputs(10, 32)
    assert nt_xent(out0, out1, 0.2, backend=backend).item() == pytest.approx(
        nt_xent(out1, out0, 0.2, backend=backend).item(), rel=1e-5
    )


@pytest.mark.parametrize("backend", ["reference", *cpu_backends()])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_give_nan(backend, bad):
    out0, out1 = _inputs(8, 16)
    out1[3, 5] = bad
    assert torch.isnan(nt_xent(out0, out1, 0.5, backend=backend))


def test_module_matches_functional_and_lightly_defaults():
    loss_fn = NTXentLoss()
    assert loss_fn.temperature == 0.5 and loss_fn.gather_distributed is False
    assert loss_fn.memory_bank_size == 0
    out0, out1 = _inputs(12, 24)
    torch.testing.assert_close(loss_fn(out0, out1), nt_xent(out0, out1, 0.5))
    NTXentLoss(temperature=-1.0)(out0, out1)  # lightly's own tests use a negative temperature


def test_matches_pytorch_metric_learning():
    """pytorch-metric-learning's SelfSupervisedLoss(NTXentLoss(τ)) has the same value (docs/design.md §2)."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    out0, out1 = _inputs(32, 16, torch.float64)
    tau = 0.2
    pml = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(temperature=tau), symmetric=True)
    exp = loss_and_grads(pml, out0, out1)
    for backend in ["reference", *cpu_backends(torch.float64)]:
        got = loss_and_grads(lambda a, b, be=backend: nt_xent(a, b, tau, backend=be), out0, out1)
        for g, e in zip(got, exp):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_matches_lightly_when_installed():
    lightly_loss = pytest.importorskip(
        "lightly.loss", reason="lightly needs torchvision, absent here"
    )
    out0, out1 = _inputs(32, 16, torch.float64)
    exp = loss_and_grads(lightly_loss.NTXentLoss(temperature=0.3), out0, out1)
    got = loss_and_grads(NTXentLoss(temperature=0.3), out0, out1)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_torch_compile_fullgraph(backend):
    model = torch.nn.Linear(8, 4)
    loss_fn = NTXentLoss(temperature=0.5, backend=backend)

    def step(x0, x1):
        return loss_fn(model(x0), model(x1))

    x0, x1 = torch.randn(6, 8), torch.randn(6, 8)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x0, x1), step(x0, x1))


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tau, exc, match",
    [
        (0.0, ValueError, "1e-8"),
        (1e-9, ValueError, "1e-8"),
        (-5e-9, ValueError, "1e-8"),
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        ("0.5", TypeError, "temperature"),
        (True, TypeError, "temperature"),
    ],
)
def test_bad_temperature(tau, exc, match):
    with pytest.raises(exc, match=match):
        NTXentLoss(temperature=tau)
    with pytest.raises(exc, match=match):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), temperature=tau)


@pytest.mark.parametrize(
    "out0, out1, exc, match",
    [
        (torch.randn(4), torch.randn(4), ValueError, "out0 must be 2-D"),
        (torch.randn(4, 3), torch.randn(4, 3, 1), ValueError, "out1 must be 2-D"),
        (torch.randn(4, 3), torch.randn(5, 3), ValueError, "same shape"),
        (torch.randn(4, 3), torch.randn(4, 2), ValueError, "same shape"),
        (torch.randn(4, 3), torch.randn(4, 3, device="meta"), ValueError, "same device"),
        (
            torch.ones(4, 3, dtype=torch.int64),
            torch.ones(4, 3, dtype=torch.int64),
            TypeError,
            "floating",
        ),
        (
            torch.randn(4, 3, dtype=torch.complex64),
            torch.randn(4, 3, dtype=torch.complex64),
            TypeError,
            "floating",
        ),
        (torch.randn(0, 3), torch.randn(0, 3), ValueError, "empty"),
        (torch.randn(4, 0), torch.randn(4, 0), ValueError, "empty"),
        ([[1.0]], torch.randn(1, 1), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(out0, out1, exc, match):
    with pytest.raises(exc, match=match):
        nt_xent(out0, out1)
    with pytest.raises(exc, match=match):
        NTXentLoss(backend="torch")(out0, out1)


def test_bad_backend_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        NTXentLoss(backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), backend="fast")


def test_bare_memory_bank_size_warns():
    """A bare int K is lightly's deprecated form (tests/test_memory_bank.py covers the bank)."""
    with pytest.warns(UserWarning, match="memory_bank_size=4096 without the feature dimension"):
        NTXentLoss(memory_bank_size=4096)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_backend_that_cannot_run_says_why(backend):
    x = torch.randn(4, 8, device="meta")
    with pytest.raises(RuntimeError, match=f"backend='{backend}' cannot run"):
        nt_xent(x, x, backend=backend)


@pytest.mark.parametrize("backend", ["reference", *cpu_backends()])
@pytest.mark.parametrize("dtype1", [torch.bfloat16, torch.float16, torch.float64])
def test_mixed_dtypes_compute_in_fp32(backend, dtype1):
    """NNCLR passes fp32 bank rows next to bf16 activations: computed in fp32, not refused."""
    a, b = torch.randn(6, 16), torch.randn(6, 16).to(dtype1)
    got = loss_and_grads(lambda x, y: nt_xent(x, y, 0.2, backend=backend), a, b)
    want = loss_and_grads(lambda x, y: nt_xent_reference(x, y.float(), 0.2), a.double(), b.double())
    assert got[0].dtype == torch.float32
    assert got[1].dtype == torch.float32 and got[2].dtype == dtype1
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1].double(), want[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2].double(), want[2].to(dtype1).double(), rtol=1e-2, atol=1e-3)
