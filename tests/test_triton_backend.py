"""The Triton backend under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors).

How the interpreter is switched on: Triton 3.9 reads ``TRITON_INTERPRET`` once, when ``@triton.jit``
decorates a function, and that includes the ``triton.language`` helpers decorated when Triton is
first imported (``tl.max``/``tl.sum`` combine functions): a kernel re-wrapped later in an
``InterpretedFunction`` fails with "Cannot call @triton.jit'd outside of the scope of a kernel".
So the variable must be in the environment before the first ``import triton`` of the process.

- Run alone (``pytest tests/test_triton_backend.py``), or after modules that do not import Triton,
  this module sets the variable itself before importing Triton and its tests run in-process.
- In a session where another module imported Triton first (``tests/test_loss.py`` does, when it
  asks which backends are available), the in-process tests skip and
  ``test_interpreter_suite_in_subprocess`` re-runs this module in a fresh interpreter with the
  variable set. A ``conftest.py`` that sets ``TRITON_INTERPRET=1`` before anything imports Triton
  makes every test here run in-process.

The compiled (GPU) flavour of the same kernels is checked by ``tests/test_check_kernels.py``.
Sizes stay small (2B <= 600): the interpreter executes each program's tile operations with numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton's first import; see the module docstring

pytest.importorskip("triton")

from conftest import loss_and_grads, max_err  # noqa: E402

import simclr_fast  # noqa: E402
from simclr_fast import NTXentLoss, nt_xent  # noqa: E402
from simclr_fast.backends import triton_backend  # noqa: E402
from simclr_fast.backends.torch_backend import TorchBackend  # noqa: E402
from simclr_fast.reference import nt_xent_reference  # noqa: E402

IN_PROCESS = triton_backend.interpreting()
#: Set in the child process of test_interpreter_suite_in_subprocess (guards against recursion).
_CHILD_FLAG = "SIMCLR_FAST_TRITON_TEST_CHILD"

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TAUS = [0.07, 0.5, -1.0]

interpreted = pytest.mark.skipif(
    not IN_PROCESS,
    reason="Triton was imported without TRITON_INTERPRET=1; run in a subprocess instead",
)


@pytest.mark.skipif(IN_PROCESS or os.environ.get(_CHILD_FLAG) == "1", reason="runs in-process here")
def test_interpreter_suite_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1", _CHILD_FLAG: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    # only the child's copy of this test may skip (it runs in-process there)
    assert " passed" in last and ("skipped" not in last or "1 skipped" in last), last


def _inputs(b: int, d: int, dtype: torch.dtype):
    return torch.randn(b, d).to(dtype), torch.randn(b, d).to(dtype)


def _triton(tau):
    return lambda a, b: nt_xent(a, b, tau, backend="triton")


def _check_against_fp64(b: int, d: int, tau: float, dtype: torch.dtype) -> None:
    """Loss and both gradients vs the fp64 reference: fp32 tight, 16-bit by the 2x rule."""
    out0, out1 = _inputs(b, d, dtype)
    # The reference sees the same (already rounded) inputs, so only compute error is compared.
    exp = loss_and_grads(lambda x, y: nt_xent_reference(x, y, tau), out0.double(), out1.double())
    naive = loss_and_grads(lambda x, y: nt_xent_reference(x, y, tau), out0, out1)
    got = loss_and_grads(_triton(tau), out0, out1)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == dtype
    # Natural sizes: the loss is O(1/|tau|), a gradient entry O(1/(2B |tau|)).
    sizes = (1 / abs(tau), 1 / (2 * b * abs(tau)), 1 / (2 * b * abs(tau)))
    for what, g, n, e, size in zip(("loss", "grad out0", "grad out1"), got, naive, exp, sizes):
        err, naive_err = max_err(g, e), max_err(n, e)
        if dtype == torch.float32:
            # tight; or as good as the naive loss run in fp32 (gradients that are exactly 0 in
            # exact arithmetic, e.g. D = 1 where the normalization removes them, are rounding noise)
            bound = max(1e-5 * max(e.abs().max().item(), size), 2 * naive_err)
        else:
            # 2x rule plus one rounding of z to the kernel dtype: the kernels see z in fp16/bf16
            # while the positive-pair term is formed from fp32 z (simclr_fast._function), so at
            # B = 1 (loss exactly 0 in any consistent rounding) the two differ by ~eps/|tau|.
            eps = torch.finfo(dtype).eps
            bound = 2 * naive_err + 1e-3 * e.abs().max().item() + eps * size
        assert err <= bound, f"{what}: error {err:.3g} > bound {bound:.3g} (naive {naive_err:.3g})"


# Full grid at small B; at B = 129 and 256 (several row blocks, ragged last tiles) one temperature
# per dtype, rotating, to keep the interpreter's time down.
@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("d", [1, 17, 64, 128])
@pytest.mark.parametrize("b", [1, 3, 64])
def test_matches_fp64_reference_small(b, d, tau, dtype):
    _check_against_fp64(b, d, tau, dtype)


@interpreted
@pytest.mark.parametrize(
    "b, d, tau, dtype",
    [
        (129, 1, 0.5, torch.float32),
        (129, 17, -1.0, torch.float16),
        (129, 64, 0.07, torch.bfloat16),
        (129, 128, 0.07, torch.float32),
        (256, 17, 0.5, torch.bfloat16),
        (256, 64, -1.0, torch.float32),
        (256, 128, 0.5, torch.float16),
        (256, 128, 0.07, torch.bfloat16),
    ],
    ids=str,
)
def test_matches_fp64_reference_large(b, d, tau, dtype):
    _check_against_fp64(b, d, tau, dtype)


# D beyond the largest BLOCK_D (128) takes the chunked path (SINGLE_D=False), odd B and D included.
@interpreted
@pytest.mark.parametrize(
    "b, d, tau, dtype",
    [
        (5, 129, 0.5, torch.float32),
        (37, 300, 0.07, torch.float32),
        (37, 300, 0.5, torch.bfloat16),
        (2, 257, -1.0, torch.float16),
    ],
    ids=str,
)
def test_wide_embeddings_loop_over_feature_chunks(b, d, tau, dtype):
    assert not triton_backend.pick_config("bwd", dtype, d).single_d
    _check_against_fp64(b, d, tau, dtype)


@interpreted
def test_odd_sizes_not_multiple_of_any_block():
    # 2B = 2 * 97 = 194 rows: not a multiple of any BLOCK_M/BLOCK_N (16..128), D = 127 not of BLOCK_D.
    for kernel in ("fwd", "bwd"):
        cfg = triton_backend.pick_config(kernel, torch.float32, 127)
        assert 194 % cfg.block_m and 194 % cfg.block_n and 127 % cfg.block_d
    _check_against_fp64(97, 127, 0.3, torch.float32)


@interpreted
def test_collinear_closed_form():
    x = torch.ones(5, 7)
    loss = nt_xent(x, 3 * x, 0.5, backend="triton")
    assert abs(loss.item() - torch.log(torch.tensor(9.0)).item()) < 1e-6


@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic_bits(dtype):
    out0, out1 = _inputs(70, 33, dtype)
    first = loss_and_grads(_triton(0.2), out0, out1)
    second = loss_and_grads(_triton(0.2), out0, out1)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("row_start, row_count", [(0, 50), (37, 81), (100, 200), (299, 1)])
def test_row_sub_block_matches_torch_backend(dtype, row_start, row_count):
    """The contract's owned-rows case (used by gather_distributed) against TorchBackend in fp64."""
    n, d, inv_tau = 300, 40, 1 / 0.3
    z = torch.nn.functional.normalize(torch.randn(n, d), dim=1).to(dtype)
    z64 = z.double()
    ref = TorchBackend()
    tri = simclr_fast.backends.get_backend("triton")
    lse = tri.forward_lse(z, row_start, row_count, inv_tau)
    lse_all = ref.forward_lse(z64, 0, n, inv_tau)
    assert lse.shape == (row_count,) and lse.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 1e-4
    torch.testing.assert_close(
        lse.double(), lse_all[row_start : row_start + row_count], rtol=tol, atol=tol
    )
    # coef of mixed sign and size (as with a weighted or distributed loss)
    coef = torch.randn(n) / n
    dz = tri.backward_rows(z, lse_all.float(), coef, row_start, row_count, inv_tau)
    exp = ref.backward_rows(z64, lse_all, coef.double(), row_start, row_count, inv_tau)
    assert dz.shape == (row_count, d) and dz.dtype == torch.float32
    scale = exp.abs().max().item()
    # 16-bit: G is cast to the input dtype for the tensor-core dot (relative 2^-8 for bf16)
    rel = 1e-5 if dtype == torch.float32 else (2e-3 if dtype == torch.float16 else 1e-2)
    assert max_err(dz, exp) <= rel * scale + 1e-9


@interpreted
def test_zero_coef_gives_zero_gradient():
    z = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    tri = simclr_fast.backends.get_backend("triton")
    lse = tri.forward_lse(z, 0, 10, 2.0)
    dz = tri.backward_rows(z, lse, torch.zeros(10), 0, 10, 2.0)
    assert torch.equal(dz, torch.zeros(10, 8))


# ---- availability and bad input ----------------------------------------------------------------


@interpreted
def test_unavailable_reasons(monkeypatch):
    backend = triton_backend.TritonBackend()
    assert backend.unavailable_reason(torch.device("cpu"), torch.float32) is None
    assert "backend='torch'" in backend.unavailable_reason(torch.device("cpu"), torch.float64)
    assert "CUDA" in backend.unavailable_reason(torch.device("meta"), torch.float32)
    monkeypatch.setattr(triton_backend, "interpreting", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "Triton reads it only at import" in backend.unavailable_reason(
        torch.device("cpu"), torch.float32
    )
    monkeypatch.delenv("TRITON_INTERPRET")
    reason = backend.unavailable_reason(torch.device("cpu"), torch.float32)
    assert "needs CUDA tensors (or TRITON_INTERPRET=1 for testing)" in reason
    assert "backend='cpu' or 'torch'" in reason
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), backend="triton")


def test_kernel_dtype():
    backend = triton_backend.TritonBackend()
    assert backend.kernel_dtype(torch.float16) == torch.float16
    assert backend.kernel_dtype(torch.bfloat16) == torch.bfloat16
    assert backend.kernel_dtype(torch.float32) == torch.float32


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((torch.randn(1, 4), 0, 1, 2.0), ValueError, "at least 2 rows"),
        ((torch.randn(4, 4), 2, 3, 2.0), ValueError, "inside the 4 rows"),
        ((torch.randn(4, 4), 0, 0, 2.0), ValueError, "row_count >= 1"),
        ((torch.randn(4, 4).double(), 0, 4, 2.0), TypeError, "backend='torch'"),
        ((torch.randn(4, 4).T, 0, 4, 2.0), ValueError, "unit stride"),
        ((torch.randn(4), 0, 4, 2.0), ValueError, "2-D"),
    ],
)
def test_launcher_rejects_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        triton_backend.ntxent_fwd(*args)


@interpreted
def test_backward_launcher_rejects_bad_lse():
    z = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"lse must be a float32 tensor of shape \(4,\)"):
        triton_backend.ntxent_bwd(z, torch.zeros(3), torch.zeros(4), 0, 4, 2.0)


# ---- torch.library registration and torch.compile ----------------------------------------------


def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z = torch.empty(12, 5, dtype=torch.bfloat16)
        lse = torch.ops.simclr_fast.ntxent_fwd_triton(z, 2, 7, 2.0)
        dz = torch.ops.simclr_fast.ntxent_bwd_triton(z, torch.empty(12), torch.empty(12), 2, 7, 2.0)
    assert lse.shape == (7,) and lse.dtype == torch.float32
    assert dz.shape == (7, 5) and dz.dtype == torch.float32


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_opcheck(dtype):
    z = torch.nn.functional.normalize(torch.randn(20, 9), dim=1).to(dtype)
    torch.library.opcheck(torch.ops.simclr_fast.ntxent_fwd_triton.default, (z, 3, 11, 2.0))
    lse = torch.ops.simclr_fast.ntxent_fwd_triton(z, 0, 20, 2.0)
    torch.library.opcheck(
        torch.ops.simclr_fast.ntxent_bwd_triton.default, (z, lse, torch.rand(20), 3, 11, 2.0)
    )


@interpreted
@pytest.mark.parametrize(
    "compile_backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]
)
def test_torch_compile_fullgraph(compile_backend):
    model = torch.nn.Linear(8, 4)
    loss_fn = NTXentLoss(temperature=0.5, backend="triton")

    def step(x0, x1):
        return loss_fn(model(x0), model(x1))

    x0, x1 = torch.randn(6, 8), torch.randn(6, 8)
    expected = step(x0, x1)
    expected.backward()
    grad_expected = model.weight.grad.clone()
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=compile_backend)
    loss = compiled(x0, x1)
    loss.backward()  # runs the compiled graph's backward, i.e. the bwd op
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.weight.grad, grad_expected)
