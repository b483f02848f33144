"""The compiled wheel: `pip wheel --no-build-isolation --no-deps .` gives a platform wheel with _C.

Building the extension takes ~40-60 s on the 2-core box, so the wheel is built once per module.
The full check (a fresh venv with only torch, the wheel installed with its declared dependencies,
the "cpu" backend run from outside the tree) needs another ~2 min, mostly installing torch: it is
tests/wheel_check.sh, which the last test here runs (so `make test`, and CI, run it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "SIMCLR_FAST_NO_EXTENSION"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            str(ROOT),
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("simclr_fast-*.whl")
    return path


@pytest.mark.timeout(1200)  # includes building the wheel (the fixture's subprocess: 900 s at most)
def test_wheel_is_platform_specific_with_extension_and_torch_pin(wheel):
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    assert re.search(r"-cp3\d+-cp3\d+-[a-z0-9_]+\.whl$", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (so,) = [n for n in names if re.fullmatch(r"simclr_fast/_C\..*\.so", n)]
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        library = zf.read(so)
    built_for = torch.__version__.split("+")[0]
    assert f"Requires-Dist: torch=={built_for}" in metadata.splitlines()
    # the version check of simclr_fast/_extension.py reads this marker without loading the library
    assert f"SIMCLR_FAST_BUILD_INFO{{torch={built_for};".encode() in library
    assert "simclr_fast/backends/cpu.py" in names and "simclr_fast/_extension.py" in names


@pytest.mark.timeout(1500)  # a fresh venv, torch installed into it: the script's 1200 s at most
def test_fresh_venv_with_only_torch_runs_the_cpu_backend(wheel):
    proc = subprocess.run(
        ["bash", str(ROOT / "tests" / "wheel_check.sh"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "wheel check: 1 passed, 0 failed" in proc.stdout
