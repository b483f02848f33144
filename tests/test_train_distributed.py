"""``simclr-fast train`` under torchrun: two gloo processes, negatives gathered across them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

# torchrun's processes: a hang fails this test (a run takes ~25 s here) instead of the session
pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]


def test_two_process_torchrun_smoke_run(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "simclr_fast", "train",
        "--epochs", "2", "--batch-size", "256", "--knn-every", "2", "--no-probe", "--no-progress",
        "--output-dir", str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # only rank 0 writes: one artefact line, one CSV row per epoch
    assert proc.stdout.count("artefacts in") == 1
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
    assert 0 <= float(rows[1]["knn"]) <= 1
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["world_size"] == 2 and summary["steps"] == 2 * (1197 // 256)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["config"]["batch_size"] == 256
