"""Shared test helpers: the backends that can run on CPU here and the dtype tolerance rule."""

from __future__ import annotations

import pytest
import torch

import simclr_fast


def cpu_backends(dtype: torch.dtype = torch.float32) -> list[str]:
    """The non-reference backends that run on CPU tensors of ``dtype`` in this installation."""
    return [b for b in simclr_fast.available_backends("cpu", dtype) if b != "reference"]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def loss_and_grads(fn, out0: torch.Tensor, out1: torch.Tensor):
    """``fn(out0, out1)`` and the gradients of both views, on fresh leaf copies."""
    a = out0.detach().clone().requires_grad_(True)
    b = out1.detach().clone().requires_grad_(True)
    loss = fn(a, b)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
