"""Shared test helpers: the backends that can run on CPU here and the dtype tolerance rule."""

from __future__ import annotations

import os
import signal
import socket
import time

# Triton reads TRITON_INTERPRET once, when it is imported (and `import simclr_fast` imports it via
# torch._dynamo): set it before anything else so tests/test_triton_backend.py runs the kernels on
# CPU tensors in this process. Compilation for sm_80/sm_90 (check-kernels) uses its own processes.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Processes the tests spawn (torch.distributed worlds) inherit this: a child killed by a fatal
# signal prints every thread's Python stack, so a crash in CI says where it happened.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import simclr_fast  # noqa: E402


def cpu_backends(dtype: torch.dtype = torch.float32) -> list[str]:
    """The fused backends that run natively on CPU tensors of ``dtype`` in this installation.

    ``triton`` runs here only under the interpreter (numpy, slow): tests/test_triton_backend.py
    covers it at interpreter-friendly sizes instead.
    """
    return [
        b for b in simclr_fast.available_backends("cpu", dtype) if b not in ("reference", "triton")
    ]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def loss_and_grads(fn, out0: torch.Tensor, out1: torch.Tensor):
    """``fn(out0, out1)`` and the gradients of both views, on fresh leaf copies."""
    a = out0.detach().clone().requires_grad_(True)
    b = out1.detach().clone().requires_grad_(True)
    loss = fn(a, b)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


# pytest-timeout (in .[dev]) gives every test the `timeout` of pyproject.toml and reads the
# per-test `@pytest.mark.timeout(seconds)` of tests that start processes. In an environment
# installed before it was added, the option and the marks must still be known (--strict-markers).
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.hasplugin("timeout"):
        parser.addini("timeout", "per-test timeout in seconds (needs pytest-timeout)")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line(
            "markers", "timeout(seconds): fail the test after this many seconds (pytest-timeout)"
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def join_or_dump(ctx, seconds: float, what: str) -> None:
    """Join the processes of ``torch.multiprocessing.start_processes(..., join=False)`` within
    ``seconds``; past that, every live child gets SIGABRT first, so that faulthandler (on through
    PYTHONFAULTHANDLER, above) prints its threads' stacks into the test's output, then SIGKILL."""
    deadline = time.monotonic() + seconds
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                alive = [p for p in ctx.processes if p.is_alive()]
                for p in alive:
                    os.kill(p.pid, signal.SIGABRT)
                time.sleep(3)
                pytest.fail(f"{what} did not finish within {seconds:.0f} s (stacks above)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a gloo group's ``tcp://`` rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_world(fn, args: tuple, nprocs: int, seconds: float, what: str = "the ranks") -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)`` with a deadline: a child's exception is
    re-raised here with its traceback, and a hang prints the children's stacks (join_or_dump).
    ``seconds`` stays below the test's pytest-timeout, so the stacks come first. The children
    inherit ``TRITON_INTERPRET=1`` (read when they import Triton): the triton backend runs on
    their CPU tensors."""
    import torch.multiprocessing as mp

    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    join_or_dump(ctx, seconds, what)
