"""Smoke tests of ``simclr-fast bench``: the table, the result files, the plot, and failures as rows.

Tiny sizes only; nothing here asserts on a time (timing belongs in the benchmark, not in a test).
"""

from __future__ import annotations

import csv
import json

import pytest

from simclr_fast.bench import cli as bench_cli
from simclr_fast.bench._results import COLUMNS, normalize_row, render_table
from simclr_fast.cli import main

# The benchmarks run cases in child processes (forkserver, subprocesses, a worker pool): a hang
# fails its test after this long (each takes seconds here), with the test's name.
pytestmark = pytest.mark.timeout(300)

TINY = [
    "--dims",
    "16",
    "--repeats",
    "2",
    "--min-repeats",
    "1",
    "--matmul-size",
    "64",
    "--threads",
    "1",
]


def _rows(out):
    with (out / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(COLUMNS)
        return list(reader)


def test_smoke_table_files_and_plot(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(
        [
            "bench",
            "loss",
            "--sizes",
            "64",
            "128",
            "--providers",
            "naive",
            "torch",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("provider"))
    for col in (
        "2B",
        "fwd ms",
        "bwd ms",
        "fwd+bwd ms",
        "peak MB",
        "GFLOP/s",
        "% mm",
        "vs naive",
        "vs compile",
    ):
        assert col in header
    table = [
        line.split() for line in text.splitlines() if line.split()[:1] in (["naive"], ["torch"])
    ]
    assert sorted((r[0], r[1]) for r in table) == [
        ("naive", "128"),
        ("naive", "64"),
        ("torch", "128"),
        ("torch", "64"),
    ]

    rows = _rows(out)
    assert {r["suite"] for r in rows} == {"loss"} and len({r["run_id"] for r in rows}) == 1
    assert all(
        r["git_commit"] and r["torch"] and r["device"] == "cpu" and r["threads"] == "1"
        for r in rows
    )
    ok = [r for r in rows if r["provider"] in ("naive", "torch")]
    assert {r["status"] for r in ok} == {"ok"}
    by = {(r["provider"], int(r["n"]), r["metric"]): r for r in ok}
    for p in ("naive", "torch"):
        for n in (64, 128):
            for m in ("fwd_ms", "bwd_ms", "fwdbwd_ms"):
                r = by[(p, n, m)]
                assert (
                    float(r["min"]) <= float(r["value"]) <= float(r["max"]) and float(r["min"]) > 0
                )
                assert int(r["samples"]) >= 1
            assert float(by[(p, n, "peak_mb")]["value"]) >= 0
            assert float(by[(p, n, "gflops_useful")]["value"]) > 0
            assert float(by[(p, n, "pct_matmul_peak")]["value"]) > 0
            assert float(by[(p, n, "speedup_vs_naive")]["value"]) > 0
            # same seed, same inputs: every provider computes the same loss
            assert float(by[(p, n, "loss")]["value"]) == pytest.approx(
                float(by[("naive", n, "loss")]["value"]), rel=1e-4
            )
        assert float(by[("naive", 64, "speedup_vs_naive")]["value"]) == 1.0
    mm = [r for r in rows if r["metric"] == "matmul_gflops"]
    assert len(mm) == 1 and float(mm[0]["value"]) > 0

    jsonl = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(jsonl) == len(rows) and set(jsonl[0]) == set(COLUMNS)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second run appends, it does not overwrite
    rc = main(
        ["bench", "--sizes", "64", "--providers", "torch", "--out", str(out), "--no-plot", *TINY]
    )
    assert rc == 0
    assert len({r["run_id"] for r in _rows(out)}) == 2


def test_allocation_failure_under_the_cap_is_a_row(tmp_path, capsys):
    """2B = 2048 needs 16 MB per similarity matrix: under an 8 MB RLIMIT_AS the naive loss fails to
    allocate, which is recorded as 'oom' (in a fresh interpreter), and 2B = 4096 is not tried."""
    out = tmp_path / "res"
    rc = main(
        [
            "bench",
            "--providers",
            "naive",
            "--sizes",
            "2048",
            "4096",
            "--mem-cap-mb",
            "8",
            "--mem-check",
            "rlimit",
            "--isolation",
            "subprocess",
            "--no-plot",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert rc == 1  # nothing could be measured; the failures are still recorded
    text = capsys.readouterr().out
    assert "OUT OF MEMORY" in text
    status = {int(r["n"]): r for r in _rows(out) if r["metric"] == "status"}
    assert (
        status[2048]["status"] == "oom"
        and "allocating" in status[2048]["note"]
        and "8 MB" in status[2048]["note"]
    )
    assert status[4096]["status"] == "oom" and "2B = 2048" in status[4096]["note"]


def test_estimated_footprint_over_the_cap_is_a_row_and_plotted(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(
        [
            "bench",
            "--providers",
            "naive",
            "--sizes",
            "4096",
            "--mem-cap-mb",
            "1",
            "--out",
            str(out),
            *TINY,
        ]
    )
    # nothing could run: no ok row, so the exit code says so, but the failure is a recorded result
    assert rc == 1
    text = capsys.readouterr().out
    assert "OVER MEMORY CAP" in text and "stops fitting at 2B = 4096" in text
    (row,) = [r for r in _rows(out) if r["metric"] == "status"]
    assert row["status"] == "over-cap" and "> memory cap 1 MB" in row["note"]
    assert json.loads(row["extra"])["mem_cap_mb"] == 1.0
    assert (out / "loss.png").exists()


def test_time_limit_is_a_row(capsys):
    rc = main(
        [
            "bench",
            "--providers",
            "naive",
            "--sizes",
            "2048",
            "--timeout",
            "0.001",
            "--no-save",
            *TINY,
        ]
    )
    assert rc == 1
    assert "TIMEOUT" in capsys.readouterr().out


def test_missing_mode_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(bench_cli.MODES, "dist", ("simclr_fast.bench._no_such_module", "test"))
    assert main(["bench", "dist", "--anything", "1"]) == 2
    assert "not available" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--sizes", "63"], ["--providers", "nope"], ["--repeats", "0"]])
def test_bad_arguments_are_rejected(argv, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv, "--out", str(tmp_path), "--matmul-size", "16"])
    assert exc.value.code not in (0, None)


def test_rows_keep_unknown_keys_and_table_aligns():
    row = normalize_row(
        {"provider": "x", "metric": "img_per_s", "value": 3.0, "world_size": 2}, {"suite": "dist"}
    )
    assert (
        list(row) == list(COLUMNS)
        and row["suite"] == "dist"
        and json.loads(row["extra"]) == {"world_size": 2}
    )
    text = render_table(["a", "b"], [["x", "1"], ["yy", "22"], ["z", "FAILED: why"]])
    lines = text.splitlines()
    assert lines[2].endswith(" 1") and lines[3].endswith("22") and "FAILED: why" in lines[4]


def test_a_case_predicted_past_the_time_limit_is_not_started():
    from simclr_fast.bench import _providers as P
    from simclr_fast.bench.loss import _predicted_over_time

    spec = {"min_repeats": 3}
    naive, pml = P.get_provider("naive"), P.get_provider("pml")
    # 1 s per call at 2B = 1024 -> 16 s per call at 4096, 4 calls: 64 s
    assert _predicted_over_time(naive, 4096, (1024, 1000.0), spec, timeout=100) is None
    note = _predicted_over_time(naive, 4096, (1024, 1000.0), spec, timeout=60)
    assert note is not None and "predicted ~64 s" in note
    # cubic providers scale by the cube: 8 s per call at 2048, 32 s in all
    assert "predicted ~32 s" in _predicted_over_time(pml, 2048, (1024, 1000.0), spec, timeout=30)
    assert _predicted_over_time(naive, 4096, None, spec, timeout=1) is None


def test_a_mode_returning_rows_shares_the_result_files(monkeypatch, tmp_path, capsys):
    fake = tmp_path / "fake_bench_mode.py"
    fake.write_text(
        "def add_arguments(parser):\n"
        "    parser.add_argument('--world', type=int, default=2)\n"
        "def bench_rows(args):\n"
        "    print('fake table')\n"
        "    return [{'provider': 'fused', 'metric': 'step_ms', 'value': 1.5, 'unit': 'ms', 'world': args.world}]\n"
        "def run(args):\n"
        "    return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(bench_cli.MODES, "dist", ("fake_bench_mode", "test"))
    out = tmp_path / "res"
    assert main(["bench", "dist", "--world", "4", "--out", str(out)]) == 0
    assert "fake table" in capsys.readouterr().out
    (row,) = _rows(out)
    assert row["suite"] == "dist" and row["metric"] == "step_ms" and float(row["value"]) == 1.5
    assert row["device"] == "cpu" and row["git_commit"] and json.loads(row["extra"]) == {"world": 4}


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_augment_mode_compares_with_the_per_image_baseline(backend, tmp_path, capsys):
    out = tmp_path / "aug.json"
    argv = ["bench", "augment", "--configs", "cifar", "--batch", "8", "--repeats", "1"]
    argv += ["--baseline-images", "4", "--threads", "1", "--backend", backend, "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"backend={backend}" in text and "speed-up" in text
    (row,) = json.loads(out.read_text())
    assert row["config"] == "cifar" and row["batch"] == 8 and row["backend"] == backend
    assert row["ours_img_per_s"] > 0 and row["baseline_img_per_s"] > 0
    assert row["baseline_workers"] == 2 and "PIL" in row["baseline"]
