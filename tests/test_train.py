"""``simclr-fast train``: a short digits run and its artefacts, exact resume, the loss backends giving
the same curve, the other data sources, the models, and clear errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import warnings

import numpy as np
import pytest
import torch

from simclr_fast.cli import main
from simclr_fast.train import loop
from simclr_fast.train.evaluate import knn_accuracy, linear_probe
from simclr_fast.train.models import ProjectionHead, SimCLRModel, build_backbone

# small and quick: 8x8 digits, no periodic kNN, one label draw per probe budget
QUICK = ["--knn-every", "0", "--probe-draws", "1", "--no-progress"]


def _train(tmp_path, *flags: str, name: str = "run") -> tuple[int, str]:
    out = str(tmp_path / name)
    return main(["train", "--output-dir", out, *QUICK, *flags]), out


def _rows(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_two_epochs_on_digits_write_every_artefact(tmp_path):
    rc, out = _train(tmp_path, "--epochs", "2", "--batch-size", "256", "--knn-every", "1")
    assert rc == 0
    for name in ("checkpoint.pt", "metrics.csv", "loss_knn.png", "summary.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    rows = _rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])  # the loss goes down
    assert all(0 <= float(r["knn"]) <= 1 for r in rows)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    for key in ("linear_probe", "raw_pixels", "random_init"):
        assert set(summary[key]) == {"1", "5", "10", "all"}
        assert all(0 <= v <= 1 for v in summary[key].values())
    assert summary["train_seconds"] > 0 and summary["epochs_done"] == 2
    assert summary["config"]["backbone"] == "small-cnn" and summary["config"]["temperature"] == 1.0
    # the held-out split is the fixed 600 images: accuracies are multiples of 1/600 for "all"
    assert round(summary["raw_pixels"]["all"] * 600, 6) == int(
        round(summary["raw_pixels"]["all"] * 600)
    )
    with open(os.path.join(out, "loss_knn.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert (
        ckpt["epoch"] == 2 and ckpt["step"] == 0 and ckpt["scheduler"]["steps"] == 2 * (1197 // 256)
    )


class _StopAfter(loop.StopRequest):
    """A Ctrl-C that arrives after ``n`` training steps (the loop reads the flag once per step)."""

    n = 0

    def __enter__(self):
        self.reads = 0
        return self

    def __exit__(self, *exc):
        return None

    @property
    def requested(self):
        self.reads += 1
        return self.reads >= self.n

    @requested.setter
    def requested(self, value):
        pass


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    # 2 epochs of 2 steps (batch 512) straight, against a run stopped mid-epoch (after step 1), resumed
    # and stopped at the epoch boundary (after step 2), then resumed to the end
    flags = ["--epochs", "2", "--batch-size", "512", "--no-probe"]
    rc, straight = _train(tmp_path, *flags, name="straight")
    assert rc == 0
    monkeypatch.setattr(loop, "StopRequest", _StopAfter)
    resume: list[str] = []
    for stop_after, where in ((1, (0, 1)), (1, (1, 0))):
        monkeypatch.setattr(_StopAfter, "n", stop_after)
        rc, parted = _train(tmp_path, *flags, *resume, name="parted")
        assert rc == 130  # interrupted: checkpoint saved, exit status of a Ctrl-C
        state = torch.load(os.path.join(parted, "checkpoint.pt"), weights_only=False)
        assert (state["epoch"], state["step"]) == where
        resume = ["--resume", parted]
    monkeypatch.undo()
    rc, _ = _train(tmp_path, *flags, *resume, name="parted")
    assert rc == 0
    a = torch.load(os.path.join(straight, "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(parted, "checkpoint.pt"), weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scheduler"] == b["scheduler"] and (b["epoch"], b["step"]) == (2, 0)
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _rows(straight)[-1]["loss"] == _rows(parted)[-1]["loss"]


def test_fused_and_reference_backends_give_the_same_loss_curve(tmp_path):
    # same seed -> same batches and augmentations whatever the backend: the runs differ only by
    # the loss's rounding
    flags = ["--epochs", "1", "--batch-size", "256", "--no-probe"]
    rc0, fused = _train(tmp_path, *flags, "--loss-backend", "auto", name="fused")
    rc1, ref = _train(tmp_path, *flags, "--loss-backend", "reference", name="reference")
    assert rc0 == rc1 == 0
    a, b = ([float(r["loss"]) for r in _rows(out)] for out in (fused, ref))
    np.testing.assert_allclose(a, b, rtol=1e-5)
    wa, wb = (
        torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["model"]
        for out in (fused, ref)
    )
    for key in wa:
        # Adam divides by sqrt(v): rounding-level gradient differences move weights by up to ~1e-4
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-3)


def test_stop_request_turns_sigint_into_a_flag_then_interrupts():
    with loop.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _fake_cifar(root, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    os.makedirs(root)
    for i in range(1, 6):
        batch = {
            b"data": rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n_train // 5)),
        }
        with open(os.path.join(root, f"data_batch_{i}"), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(root, "test_batch"), "wb") as f:
        pickle.dump(
            {
                b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                b"labels": list(rng.integers(0, 10, n_test)),
            },
            f,
        )


def test_cifar10_pickles_run(tmp_path):
    _fake_cifar(tmp_path / "cifar")
    flags = "--dataset cifar10 --epochs 1 --batch-size 16 --backbone small-cnn --image-size 16 --optimizer sgd"
    rc, out = _train(tmp_path, *flags.split(), "--no-probe", "--data-dir", str(tmp_path / "cifar"))
    assert rc == 0
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["config"]["augment"] == "simclr-cifar" and summary["steps"] == 40 // 16


def test_image_folder_runs_with_a_held_out_split(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        os.makedirs(tmp_path / "imgs" / c)
        for i in range(10):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    flags = "--dataset imagefolder --epochs 1 --batch-size 8 --backbone small-cnn --image-size 16 --optimizer adamw"
    rc, out = _train(
        tmp_path,
        *flags.split(),
        "--num-workers",
        "0",
        "--no-probe",
        "--data-dir",
        str(tmp_path / "imgs"),
    )
    assert rc == 0
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["steps"] == 18 // 8  # 2 of the 20 images held out (10 %, stratified)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--batch-size", "1"], "--batch-size"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--temperature", "0"], "--temperature"),
        (["--weight-decay", "-1e-6"], "--weight-decay"),
        (["--time-budget", "0"], "--time-budget"),
        (["--dataset", "mnist"], "--dataset"),
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--epochs", "two"], "--epochs"),
    ],
)
def test_bad_flag_values_exit_2_with_a_message(flags, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *flags])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def _garbage_cifar(root):
    os.makedirs(root)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(b"not a pickle")


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing-cifar", "does not exist"),
        ("cifar-without-dir", "needs --data-dir"),
        ("garbage-cifar", "not a readable pickle"),
        ("empty-folder", "no images"),
        ("missing-checkpoint", "no such checkpoint"),
        ("batch-too-large", "larger than the 1197 training images"),
    ],
)
def test_bad_paths_and_data_give_a_clear_error(tmp_path, capsys, case, needle):
    flags = {
        "missing-cifar": ["--dataset", "cifar10", "--data-dir", str(tmp_path / "nope")],
        "cifar-without-dir": ["--dataset", "cifar10"],
        "garbage-cifar": ["--dataset", "cifar10", "--data-dir", str(tmp_path / "bad")],
        "empty-folder": ["--dataset", "imagefolder", "--data-dir", str(tmp_path)],
        "missing-checkpoint": ["--resume", str(tmp_path / "nope.pt")],
        "batch-too-large": ["--batch-size", "5000"],
    }[case]
    if case == "garbage-cifar":
        _garbage_cifar(tmp_path / "bad")
    rc, _ = _train(tmp_path, "--epochs", "1", *flags)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("simclr-fast train: error:") and needle in err
    assert "Traceback" not in err


def test_models_features_and_heads():
    x = torch.randn(2, 3, 16, 16)
    r18 = build_backbone("resnet18", 3, 32, prefer_torchvision=False)
    assert r18.out_dim == 512 and r18(x).shape == (2, 512)
    assert 11_000_000 < sum(p.numel() for p in r18.parameters()) < 11_300_000  # ResNet-18 trunk
    assert isinstance(r18.features[0], torch.nn.Conv2d) and r18.features[0].kernel_size == (
        3,
        3,
    )  # CIFAR stem
    big = build_backbone("resnet18", 3, 224, prefer_torchvision=False)
    assert big.features[0].kernel_size == (7, 7) and isinstance(big.features[3], torch.nn.MaxPool2d)
    r50 = build_backbone("resnet50", 3, 32)
    assert r50.out_dim == 2048 and r50(x).shape == (2, 2048)
    model = SimCLRModel(build_backbone("small-cnn", 1, 8), proj_dim=128)
    img = torch.randn(4, 1, 8, 8)
    assert model.features(img).shape == (4, 192) and model(img).shape == (4, 128)
    head = ProjectionHead(512, 512, 128)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("vgg", 3, 32)


def test_knn_and_linear_probe_on_separable_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 5
    ytr, yte = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 10)
    xtr, xte = centers[ytr] + rng.normal(size=(60, 8)), centers[yte] + rng.normal(size=(30, 8))
    acc = knn_accuracy(
        torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte), k=5
    )
    assert acc == 1.0
    # labels that ignore the features: kNN is near chance
    shuffled = torch.tensor(rng.permutation(ytr))
    assert (
        knn_accuracy(torch.tensor(xtr), shuffled, torch.tensor(xte), torch.tensor(yte), k=5) < 0.8
    )
    res = linear_probe(xtr, ytr, xte, yte, draws=2)
    assert (
        set(res) == {"1", "5", "10", "all"}
        and res["all"] == 1.0
        and all(0 <= v <= 1 for v in res.values())
    )


# ---------------------------------------------------------------------------------------------
# resuming, refusing to clobber a run, logs, bf16 on CPUs without bf16 units

# non-default settings of the run the resume tests interrupt: the resume must not need them again
RUN = ["--epochs", "2", "--batch-size", "512", "--temperature", "0.5", "--seed", "7"]
RUN += ["--lr", "2e-3", "--no-probe", *QUICK]


def _bytes(out: str, name: str = "checkpoint.pt") -> bytes:
    with open(os.path.join(out, name), "rb") as f:
        return f.read()


def _interrupted_run(monkeypatch, out: str, after_steps: int = 1) -> None:
    with monkeypatch.context() as m:
        m.setattr(loop, "StopRequest", _StopAfter)
        m.setattr(_StopAfter, "n", after_steps)
        assert main(["train", "--output-dir", out, *RUN]) == 130


def test_resume_with_only_the_directory_finishes_the_run_in_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--output-dir", "straight", *RUN]) == 0
    _interrupted_run(monkeypatch, os.path.join("runs", "exp"))
    assert "simclr-fast train --resume runs/exp" in capsys.readouterr().out  # the printed hint
    assert main(["train", "--resume", "runs/exp"]) == 0
    assert not os.path.exists("runs/simclr")  # nothing written to the default directory
    a, b = (torch.load(f"{o}/checkpoint.pt", weights_only=False) for o in ("straight", "runs/exp"))
    assert b["config"]["temperature"] == 0.5 and b["config"]["seed"] == 7
    assert b["config"]["batch_size"] == 512 and b["config"]["epochs"] == 2
    assert (b["epoch"], b["step"], b["finished"]) == (2, 0, True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scheduler"] == b["scheduler"]
    assert _rows("straight")[-1]["loss"] == _rows("runs/exp")[-1]["loss"]


def test_resume_refuses_flags_that_change_what_the_run_computes(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    _interrupted_run(monkeypatch, out)
    before = _bytes(out)
    # --seed 0 is the default value, but given explicitly it asks for another seed than 7
    for flags, needle in (
        (["--batch-size", "256"], "--batch-size 256"),
        (["--seed", "0"], "--seed 0"),
        (["--temperature", "0.2"], "--temperature 0.2"),
        (["--overwrite"], "--overwrite"),
        (["--output-dir", str(tmp_path / "elsewhere")], "--output-dir"),
    ):
        capsys.readouterr()
        assert main(["train", "--resume", out, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("simclr-fast train: error:") and needle in err, err
        assert _bytes(out) == before
    # repeating the run's own settings is fine, and so is changing how it is observed
    assert main(["train", "--resume", out, "--seed", "7", "--knn-every", "1"]) == 0
    text = capsys.readouterr().out
    assert f"resuming {out}: --knn-every: 0 -> 1" in text and "--seed" not in text
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["finished"]


def test_resuming_a_finished_run_changes_nothing_unless_epochs_extend_it(tmp_path, capsys):
    rc, out = _train(tmp_path, "--epochs", "1", "--batch-size", "512", "--knn-every", "1")
    assert rc == 0
    files = {name: _bytes(out, name) for name in loop.ARTEFACTS}
    capsys.readouterr()
    assert main(["train", "--resume", out]) == 0
    text = capsys.readouterr().out
    assert "the run is finished" in text and "--epochs N" in text
    assert {name: _bytes(out, name) for name in loop.ARTEFACTS} == files
    assert main(["train", "--resume", out, "--epochs", "2"]) == 0
    assert f"resuming {out}: --epochs: 1 -> 2" in capsys.readouterr().out
    assert [int(r["epoch"]) for r in _rows(out)] == [1, 2]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["epochs_done"] == 2 and 0 <= summary["knn"] <= 1


def test_a_new_run_into_a_checkpointed_directory_needs_overwrite(tmp_path, capsys):
    rc, out = _train(tmp_path, "--epochs", "1", "--batch-size", "512", "--no-probe")
    assert rc == 0
    before = _bytes(out)
    capsys.readouterr()
    rc, _ = _train(tmp_path, "--epochs", "1", "--batch-size", "256", "--no-probe")
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err and "--overwrite" in err and out in err
    assert _bytes(out) == before
    rc, _ = _train(tmp_path, "--epochs", "1", "--batch-size", "256", "--no-probe", "--overwrite")
    assert rc == 0
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert state["config"]["batch_size"] == 256 and not os.path.exists(
        os.path.join(out, "summary.json.tmp")
    )


@pytest.mark.parametrize("flag", ["--no-progress", None])
def test_logs_one_line_per_epoch_without_a_terminal(tmp_path, capsys, flag):
    # pytest captures stdout/stderr: not a terminal, so even without --no-progress no bar is drawn
    flags = ["--epochs", "2", "--batch-size", "512", "--knn-every", "2", "--no-probe"]
    out = str(tmp_path / "run")
    rc = main(["train", "--output-dir", out, *flags, *([flag] if flag else [])])
    assert rc == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, captured.out
    for line in lines:
        for field in ("loss ", "lr ", "images/s"):
            assert field in line, line
    assert lines[0].startswith("epoch 1/2") and "kNN" not in lines[0]
    assert lines[1].startswith("epoch 2/2") and "kNN 0." in lines[1]
    assert "train " in captured.out and "s over 2 epochs" in captured.out  # the final summary
    assert "\r" not in captured.err and "step/s" not in captured.err  # no progress-bar frames


def test_bf16_on_a_cpu_without_bf16_units_warns_once(monkeypatch):
    from simclr_fast.train import precision

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN held to AVX2: no bf16 units
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(precision, "_warned", False)
    try:
        assert precision.cpu_has_native_bf16() is False
        with pytest.warns(UserWarning, match=r"--precision bf16 .* 14x slower than fp32"):
            assert precision.warn_if_slow_bf16("bf16", torch.device("cpu"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not precision.warn_if_slow_bf16("bf16", torch.device("cpu"))  # once
            assert not precision.warn_if_slow_bf16("fp32", torch.device("cpu"))
    finally:
        precision.cpu_has_native_bf16.cache_clear()
