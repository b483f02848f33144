"""Install torch (the CPU build when one is available) and, only when torch brings none, triton.

Run with the interpreter of the environment to fill (``make`` and ``tests/wheel_check.sh`` do)::

    python tools/install_torch.py [--prefer-cpu] [--triton SPEC] TORCH_SPEC

- torch already importable: left alone, whatever build it is.
- ``--prefer-cpu``: if the package sources pip is configured with already offer a CPU build
  (a ``+cpu`` version, e.g. a local wheel folder) it is used as is; otherwise the PyTorch CPU index
  (https://download.pytorch.org/whl/cpu) is added beside them, where ``torch==X`` resolves to
  ``X+cpu`` (a ~200 MB download instead of PyPI's multi-GB CUDA build on Linux).
- ``--triton SPEC``: installed only on Linux, only when ``import triton`` fails and torch declares
  no triton dependency (CUDA builds of torch pin their own triton; the CPU build has none). The
  Triton kernels then run under ``TRITON_INTERPRET=1`` and compile ahead of time for GPUs.

Standard library only: it runs before torch exists.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    return subprocess.run(cmd, check=not capture, capture_output=capture, text=True)


def resolved_version(spec: str) -> str | None:
    """The torch version pip would install for ``spec`` from its configured sources, or None."""
    proc = pip(
        "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed", "--report", "-", spec,
        capture=True,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None
    versions = [i["metadata"]["version"] for i in report.get("install", [])]
    return versions[0] if versions else None


def install_torch(spec: str, prefer_cpu: bool) -> None:
    if importlib.util.find_spec("torch") is not None:
        print(f"torch {importlib.metadata.version('torch')} already installed: kept")
        return
    extra: list[str] = []
    # macOS wheels on PyPI are already CPU builds; Linux and Windows ones are CUDA builds.
    if prefer_cpu and sys.platform != "darwin":
        version = resolved_version(spec)
        if version is None or not version.endswith("+cpu"):
            extra = ["--extra-index-url", CPU_INDEX]
    print(f"installing {spec}" + (f" (CPU build, from {CPU_INDEX})" if extra else ""))
    pip("install", "--quiet", spec, *extra)


def torch_requires_triton() -> bool:
    requires = importlib.metadata.requires("torch") or []
    return any(re.match(r"(pytorch-)?triton\b", r) for r in requires)


def install_triton(spec: str) -> None:
    if not sys.platform.startswith("linux"):
        print("triton: no wheels for this platform; the triton backend will be unavailable")
        return
    if importlib.util.find_spec("triton") is not None:
        print(f"triton {importlib.metadata.version('triton')} already installed: kept")
        return
    if torch_requires_triton():
        print("torch declares its own triton: not adding another")
        return
    print(f"installing {spec} (this torch brings no triton)")
    pip("install", "--quiet", spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torch_spec", help='what to install, e.g. "torch==2.13.0" or "torch"')
    parser.add_argument("--prefer-cpu", action="store_true", help="use the CPU build of torch")
    parser.add_argument("--triton", metavar="SPEC", help="triton to add if torch brings none")
    args = parser.parse_args(argv)
    install_torch(args.torch_spec, args.prefer_cpu)
    if args.triton:
        install_triton(args.triton)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
