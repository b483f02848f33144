"""tools/install_torch.py: which torch build and which triton ``make`` installs, without installing.

pip is replaced by a recorder; the decisions are what is tested: an existing torch is kept, the
CPU build comes from pip's own sources when they hold one and from the PyTorch CPU index
otherwise, and triton is added only when torch brings none.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tool(monkeypatch):
    spec = importlib.util.spec_from_file_location("install_torch", ROOT / "tools/install_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(module, "pip", lambda *args, capture=False: calls.append(args))
    monkeypatch.setattr(module.sys, "platform", "linux")
    module.calls = calls
    return module


def _no_module(*missing):
    real = importlib.util.find_spec
    return lambda name, *a: None if name in missing else real(name, *a)


@pytest.mark.parametrize(
    "resolved, expect_index",
    [("2.13.0+cpu", False), ("2.13.0", True), (None, True)],
)
def test_torch_cpu_build_from_configured_sources_or_the_cpu_index(
    tool, monkeypatch, resolved, expect_index
):
    monkeypatch.setattr(tool.importlib.util, "find_spec", _no_module("torch"))
    monkeypatch.setattr(tool, "resolved_version", lambda spec: resolved)
    tool.install_torch("torch==2.13.0", prefer_cpu=True)
    (call,) = tool.calls
    assert call[:3] == ("install", "--quiet", "torch==2.13.0")
    assert (tool.CPU_INDEX in call) == expect_index


def test_an_explicit_spec_without_prefer_cpu_is_installed_as_pip_resolves_it(tool, monkeypatch):
    monkeypatch.setattr(tool.importlib.util, "find_spec", _no_module("torch"))
    monkeypatch.setattr(tool, "resolved_version", lambda spec: pytest.fail("not asked"))
    tool.install_torch("torch", prefer_cpu=False)
    assert tool.calls == [("install", "--quiet", "torch")]


def test_an_installed_torch_is_kept(tool):
    tool.install_torch("torch==2.13.0", prefer_cpu=True)  # this environment has torch
    assert tool.calls == []


@pytest.mark.parametrize(
    "torch_requires, triton_installed, installs",
    [
        (["filelock", "sympy>=1.13"], False, True),  # the CPU build: no triton of its own
        (["filelock", 'triton==3.7.1; platform_system == "Linux"'], False, False),  # a CUDA build
        (["filelock"], True, False),  # triton already there: kept
    ],
)
def test_triton_only_when_torch_brings_none(
    tool, monkeypatch, torch_requires, triton_installed, installs
):
    missing = () if triton_installed else ("triton",)
    monkeypatch.setattr(tool.importlib.util, "find_spec", _no_module(*missing))
    monkeypatch.setattr(tool.importlib.metadata, "requires", lambda name: torch_requires)
    monkeypatch.setattr(tool.importlib.metadata, "version", lambda name: "0")
    tool.install_triton("triton==3.9.0")
    assert tool.calls == ([("install", "--quiet", "triton==3.9.0")] if installs else [])


def test_no_triton_off_linux(tool, monkeypatch):
    monkeypatch.setattr(tool.sys, "platform", "darwin")
    monkeypatch.setattr(tool.importlib.util, "find_spec", _no_module("triton"))
    tool.install_triton("triton==3.9.0")
    assert tool.calls == []
