"""``simclr-fast gpu-check``: the chunked fp64 reference, ``--dry-run`` end to end (Triton's
interpreter on CPU, tiny sizes: ~15 s), the exit codes.

tests/conftest.py sets ``TRITON_INTERPRET=1`` before Triton is imported, so the dry run runs in this
process; without it the command re-executes itself under the interpreter.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from simclr_fast import cli, gpu_check  # noqa: E402
from simclr_fast.reference import nt_xent_reference  # noqa: E402


@pytest.mark.parametrize("b, d, tau, chunk", [(5, 7, 0.3, 3), (1, 1, -1.0, 1), (64, 33, 0.07, 50)])
def test_chunked_reference_matches_autograd_of_the_naive_loss(b, d, tau, chunk):
    gen = torch.Generator().manual_seed(b * d)
    out0 = torch.randn(b, d, dtype=torch.float64, generator=gen, requires_grad=True)
    out1 = torch.randn(b, d, dtype=torch.float64, generator=gen, requires_grad=True)
    want = nt_xent_reference(out0, out1, tau)
    w0, w1 = torch.autograd.grad(want, (out0, out1))
    loss, g0, g1 = gpu_check.reference_loss_and_grads(out0.detach(), out1.detach(), tau, chunk)
    torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g0, w0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, w1, rtol=1e-10, atol=1e-12)


def test_dry_run_passes_and_reports_every_section(tmp_path):
    path = tmp_path / "gpu-check.json"
    code = cli.main(["gpu-check", "--dry-run", "--json", str(path)])
    result = json.loads(path.read_text())
    rows, meta = result["rows"], result["meta"]
    assert code == 0, [r for r in rows if r["status"] != "ok"]
    assert meta["dry_run"] is True and "not GPU figures" in meta["note"]
    sizes = gpu_check.DRY_RUN
    corr = [r for r in rows if r["section"] == "correctness"]
    assert {(r["mode"], r["N"]) for r in corr} == {
        (m, n) for m in gpu_check.MODES for n in sizes["correct_n"]
    }
    for r in corr:
        assert r["loss_rel_err"] <= r["loss_tol"] and r["grad_rel_err"] <= r["grad_tol"], r
    rep = [r for r in rows if r["section"] == "repeatability"]
    assert {(r["mode"], r["D"]) for r in rep} == {
        (m, d) for m in gpu_check.MODES for d in sizes["repeat_d"]
    }
    assert all(r["bitwise_equal"] and r["N"] % 16 for r in rep)  # ragged 2B
    timing = [r for r in rows if r["section"] == "timing"]
    assert {(r["provider"], r["phase"]) for r in timing} == {
        (p, ph) for p in ("fused", "naive", "naive-compile") for ph in ("fwd", "bwd", "fwd+bwd")
    }
    for r in timing:
        assert r["pct_peak"] is None, r  # no spec-sheet peak for a CPU
        # bwd is fwd+bwd minus fwd: None when CPU timing noise makes it non-positive
        assert r["ms"] > 0 if r["phase"] != "bwd" else r["ms"] is None or r["ms"] > 0, r


def test_wrong_or_unrepeatable_results_fail(monkeypatch, capsys):
    calls = []

    def noisy(out0, out1):  # a different, wrong gradient every call
        calls.append(1)
        loss, g0, g1 = real(out0, out1)
        return loss * (1 + len(calls) * 1e-3), g0 + len(calls), g1

    real = gpu_check._fused_loss_and_grads
    monkeypatch.setattr(gpu_check, "_fused_loss_and_grads", noisy)
    monkeypatch.setattr(
        gpu_check,
        "DRY_RUN",
        dict(correct_n=(8,), correct_d=5, repeat_n=6, repeat_d=(5,), timing_n=(), timing_d=5),
    )
    assert cli.main(["gpu-check", "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 * len(gpu_check.MODES)  # correctness and repeatability rows
    assert "failing" in out


def test_without_cuda_it_says_so_and_exits_nonzero(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["gpu-check"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--dry-run" in err


def test_bad_budget_names_the_argument():
    with pytest.raises(ValueError, match="--budget must be > 0"):
        cli.main(["gpu-check", "--dry-run", "--budget", "0"])


def test_device_peaks():
    assert gpu_check.device_peak_tflops("NVIDIA H100 PCIe") == {
        "bf16": 756.0,
        "fp32": 51.0,
        "fp32/high": 756.0,  # the fused kernels run fp16 operands under "high"
    }
    assert gpu_check.device_peak_tflops("NVIDIA H100 80GB HBM3")["bf16"] == 989.0
    assert gpu_check.device_peak_tflops("NVIDIA A100-SXM4-80GB")["fp32"] == 19.5
    assert gpu_check.device_peak_tflops("Some Other GPU") is None


def test_naive_cases_that_cannot_fit_are_skipped(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80 * 2**30, 80 * 2**30))
    # 16·(2B)² bytes: 64 GiB at 2B = 65536 is over 70 % of 80 GiB; 4 GiB at 16384 is not
    assert "skipped: predicted 64 GiB" in gpu_check._naive_too_big(65536, "cuda")
    assert gpu_check._naive_too_big(16384, "cuda") is None
    assert gpu_check._naive_too_big(65536, "cpu") is None  # the dry run has no such check
