"""A PyTorch Lightning DDP run (2 CPU ranks, gloo, gather_distributed=True) ends where one process does.

tests/lightning_ddp_run.py trains a small net with NT-Xent, the memory bank and DCL, all with
``gather_distributed=True``, for a few SGD steps: once with Lightning's ``ddp`` strategy on 2 CPU
processes (each rank a contiguous half of every global batch), once in one process on the whole
global batch. Exact gathered gradients plus DDP's averaging make the two runs the same
optimization: the final parameters and the memory banks must agree. (DCLW is left out on purpose:
its weights come from each rank's local batch, as in lightly, so a 2-rank run is not the
single-process run; tests/test_dcl_bank_distributed.py checks it per rank.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).with_name("lightning_ddp_run.py")


def _run(devices: int, out: Path) -> dict:
    root = str(SCRIPT.parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TRITON_INTERPRET", None)  # CPU tensors: the auto backend is the C++ kernel
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(devices), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.timeout(600)
def test_lightning_ddp_two_ranks_match_one_process(tmp_path):
    single = _run(1, tmp_path / "single.pt")
    ddp = _run(2, tmp_path / "ddp.pt")
    assert single["world"] == 1 and ddp["world"] == 2
    for name, p in single["params"].items():
        assert not torch.allclose(p, single["initial"][name]), f"{name} did not train"
        torch.testing.assert_close(ddp["initial"][name], single["initial"][name], rtol=0, atol=0)
        torch.testing.assert_close(ddp["params"][name], p, rtol=1e-5, atol=1e-6, msg=name)
    # 3 steps of 8 keys into K = 10: 8, then 16 -> fill to the end and wrap to 0, then 8
    assert ddp["bank"]["ptr"] == single["bank"]["ptr"] == 8
    torch.testing.assert_close(ddp["bank"]["bank"], single["bank"]["bank"], rtol=1e-5, atol=1e-6)
