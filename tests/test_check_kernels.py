"""``simclr-fast check-kernels``: every shipped kernel compiles for sm_80 and sm_90 without a GPU,
with no spills and with tensor-core instructions for fp16/bf16.

The first run compiles 32 kernels (minutes on 2 cores); Triton's on-disk cache makes later runs take
seconds. The compilation runs in spawned worker processes, so it works whether or not this pytest
process imported Triton in interpreter mode.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from simclr_fast import check_kernels, cli  # noqa: E402
from simclr_fast.backends import triton_backend  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "report.json"
    code = cli.main(
        ["check-kernels", "--arch", "sm_80", "sm_90", "--jobs", "2", "--json", str(path)]
    )
    return code, json.loads(path.read_text())


def test_exit_code_zero(report):
    code, rows = report
    assert code == 0, [r for r in rows if r["status"] != "ok"]


def test_one_row_per_kernel_config_arch_dtype(report):
    _, rows = report
    expected = set()
    for kernel in ("fwd", "bwd"):
        for dtype, torch_dtype in (
            ("fp32", torch.float32),
            ("fp16", torch.float16),
            ("bf16", torch.bfloat16),
        ):
            for cfg in triton_backend.all_configs(kernel, torch_dtype):
                for arch in ("sm_80", "sm_90"):
                    expected.add((kernel, cfg.label(), arch, dtype))
    got = [(r["kernel"], r["config"], r["arch"], r["dtype"]) for r in rows]
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    # every D the launchers see maps to a checked configuration
    for kernel in ("fwd", "bwd"):
        for dtype, torch_dtype in (
            ("fp32", torch.float32),
            ("fp16", torch.float16),
            ("bf16", torch.bfloat16),
        ):
            for d in (1, 17, 64, 65, 127, 128, 129, 256, 512, 2048):
                label = triton_backend.pick_config(kernel, torch_dtype, d).label()
                assert (kernel, label, "sm_80", dtype) in expected


def test_rows_show_resources_and_tensor_cores(report):
    _, rows = report
    for r in rows:
        assert (
            0 < r["regs"] <= 255
            and r["spills"] == 0
            and 0 < r["smem"] <= check_kernels.SMEM_LIMIT[int(r["arch"][3:])]
        )
        if r["dtype"] in ("fp16", "bf16"):
            assert r["wgmma"] if r["arch"] == "sm_90" else r["mma_sync"], r


def test_verdict_flags_spills_and_missing_tensor_cores():
    row = dict(
        kernel="bwd",
        config="x",
        arch="sm_90",
        dtype="bf16",
        regs=255,
        spills=3,
        smem=1024,
        mma_sync=True,
        wgmma=False,
    )
    status = check_kernels.verdict(row)
    assert status.startswith("FAIL") and "spill" in status and "no wgmma" in status
    row.update(spills=0, wgmma=True)
    assert check_kernels.verdict(row) == "ok"
    row.update(smem=10**6)
    assert "shared memory" in check_kernels.verdict(row)
    assert check_kernels.verdict(dict(row, error="CompilationError: boom")).startswith("FAIL")
