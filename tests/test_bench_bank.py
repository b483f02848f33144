"""Smoke test of ``simclr-fast bench loss --loss bank``: rows per provider, each case in its own process.

Tiny sizes only; nothing here asserts on a time.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from simclr_fast.bench import bank
from simclr_fast.cli import main

TINY = ["--dims", "8", "--repeats", "2", "--min-repeats", "1", "--matmul-size", "64"]


@pytest.mark.timeout(300)
def test_bank_mode_rows_and_agreement(tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["bench", "loss", "--loss", "bank", "--bank-size", "40", "--sizes", "16"]
    rc = main(
        [*argv, "--providers", "naive", "torch", "cpu", "--out", str(out), "--no-plot", *TINY]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "memory bank of K = 40 keys" in text
    assert "naive loss's 4*B*K*D FLOPs per forward+backward" in text
    assert "warning:" not in text  # the fused losses agree with the naive one
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cases = {(r["provider"], r["metric"]): r for r in rows if r["provider"] != "torch.mm"}
    for name in ("naive", "torch", "cpu"):
        assert cases[(name, "fwdbwd_ms")]["status"] == "ok"
        extra = json.loads(cases[(name, "fwdbwd_ms")]["extra"] or "{}")
        assert extra.get("loss") == "bank" and extra.get("bank_size") == 40
    losses = {n: float(cases[(n, "loss")]["value"]) for n in ("naive", "torch", "cpu")}
    assert losses["torch"] == pytest.approx(losses["naive"], rel=1e-5)
    assert losses["cpu"] == pytest.approx(losses["naive"], rel=1e-5)


def test_bank_models():
    naive, fused = bank.get_provider("naive", 65536), bank.get_provider("cpu", 65536)
    assert bank.useful_flops(512, 128, 65536) == (2 * 256 * 65536 * 128,) * 2
    # the naive model holds B·K logits, the fused one only the bank's copies and O(B·D)
    assert naive.estimate_bytes(512, 128, torch.float32) > 16 * 256 * 65536
    assert fused.estimate_bytes(512, 128, torch.float32) < 16 * 256 * 65536
    with pytest.raises(ValueError, match="unknown bank provider"):
        bank.get_provider("pml", 10)


def test_unknown_bank_provider_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "loss", "--loss", "bank", "--providers", "pml", "--no-save", *TINY])
