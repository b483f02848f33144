"""lightly 1.6's own NTXentLoss and DCLLoss test cases, restated against simclr_fast.

The issue (#13) ran lightly's test file unchanged against ``simclr_fast.NTXentLoss`` and most
cases failed (memory banks refused, ``gather_distributed=True`` raising in one process). lightly
cannot be imported here, so its cases are written out: the same parameter grids, inputs and
assertions (its manual NT-Xent loop from the SimCLR paper's Algorithm 1, the collinear
``log(K + 1)`` with a bare-int bank filled over several rounds, view symmetry, and that
``gather_distributed=True`` asks ``torch.distributed.is_available()`` exactly once).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import distributed as dist

from simclr_fast import DCLLoss, DCLWLoss, NTXentLoss
from simclr_fast.dcl import negative_mises_fisher_weights


def _manual_ntxent(out0: torch.Tensor, out1: torch.Tensor, temperature: float) -> float:
    """SimCLR's Algorithm 1 as loops (lightly's test helper, restated)."""
    z = np.concatenate([out0.numpy(), out1.numpy()]).astype(np.float64)
    n = len(out0)
    sim = np.array(
        [
            [z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j])) for j in range(2 * n)]
            for i in range(2 * n)
        ]
    )
    e = np.exp(sim / temperature)
    loss = 0.0
    for k in range(n):
        for i, j in ((k, k + n), (k + n, k)):
            denominator = sum(e[i, m] for m in range(2 * n) if m != i)
            loss += -np.log(e[i, j] / denominator)
    return loss / (2.0 * n)


@pytest.mark.parametrize("cls", [NTXentLoss, DCLLoss, DCLWLoss])
@pytest.mark.parametrize("available", [True, False])
def test_gather_distributed_asks_is_available_once(monkeypatch, cls, available):
    calls = []
    monkeypatch.setattr(dist, "is_available", lambda: calls.append(1) or available)
    if available:
        cls(gather_distributed=True)
    else:
        with pytest.raises(ValueError):
            cls(gather_distributed=True)
    assert len(calls) == 1


@pytest.mark.parametrize("n_samples", [1, 2, 4])
@pytest.mark.parametrize("dimension", [1, 2, 16, 64])
@pytest.mark.parametrize("temperature", [0.1, 1, 10])
@pytest.mark.parametrize("gather_distributed", [False, True])
def test_with_values(n_samples, dimension, temperature, gather_distributed):
    rng = np.random.default_rng(n_samples * 1000 + dimension)
    out0 = torch.FloatTensor(rng.normal(0, 1, size=(n_samples, dimension)))
    out1 = torch.FloatTensor(rng.normal(0, 1, size=(n_samples, dimension)))
    loss_function = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)
    l1 = float(loss_function(out0, out1))
    l2 = float(loss_function(out1, out0))
    assert l1 == pytest.approx(l2, abs=1e-5)
    assert l1 == pytest.approx(_manual_ntxent(out0, out1, temperature), abs=1e-5)


@pytest.mark.parametrize("n_samples", [1, 2, 8, 16])
@pytest.mark.parametrize("memory_bank_size", [0, 1, 2, 8, 15, 16, 17])
@pytest.mark.parametrize("temperature", [0.1, 1, 7])
@pytest.mark.parametrize("gather_distributed", [False, True])
def test_with_correlated_embedding(n_samples, memory_bank_size, temperature, gather_distributed):
    rng = np.random.default_rng(n_samples + 100 * memory_bank_size)
    out0_np, out1_np = rng.random((n_samples, 1)), rng.random((n_samples, 1))
    out0 = torch.FloatTensor(np.concatenate([out0_np, 2 * out0_np], axis=1))
    out1 = torch.FloatTensor(np.concatenate([out1_np, 2 * out1_np], axis=1))
    out0.requires_grad = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a bare int size: lightly warns too
        loss_function = NTXentLoss(
            temperature=temperature,
            memory_bank_size=memory_bank_size,
            gather_distributed=gather_distributed,
        )
    if memory_bank_size > 0:
        for _ in range(int(memory_bank_size / n_samples) + 2):  # fill the bank over rounds
            loss = float(loss_function(out0, out1))
        expected_loss = -1 * np.log(1 / (memory_bank_size + 1))
    else:
        loss = float(loss_function(out0, out1))
        expected_loss = -1 * np.log(1 / (2 * n_samples - 1))
    assert loss == pytest.approx(expected_loss)


@pytest.mark.parametrize("kwargs", [{}, {"temperature": -1.0}])
@pytest.mark.parametrize("d", [1, 32])
def test_forward_pass_symmetry(kwargs, d):
    loss = NTXentLoss(memory_bank_size=0, **kwargs)
    for bsz in range(1, 20):
        batch_1, batch_2 = torch.randn((bsz, d)), torch.randn((bsz, d))
        assert (loss(batch_1, batch_2) - loss(batch_2, batch_1)).pow(2).item() == pytest.approx(0.0)


def test_forward_pass_memory_bank():
    with pytest.warns(UserWarning):
        loss = NTXentLoss(memory_bank_size=64)
    for bsz in range(1, 20):
        value = loss(torch.randn((bsz, 32)), torch.randn((bsz, 32)))
        assert torch.isfinite(value)


@pytest.mark.parametrize("batch_size", [2, 3])
@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("gather_distributed", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_dclloss_forward(batch_size, dim, temperature, gather_distributed, weighted):
    torch.manual_seed(0)
    out0, out1 = torch.rand((batch_size, dim)), torch.rand((batch_size, dim))
    criterion = DCLLoss(
        temperature=temperature,
        gather_distributed=gather_distributed,
        weight_fn=negative_mises_fisher_weights if weighted else None,
    )
    loss0, loss1 = criterion(out0, out1), criterion(out1, out0)
    assert loss0 > 0
    assert loss0 == pytest.approx(loss1)


def test_dclloss_backprop():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 5)
    out0, out1 = layer(torch.rand(3, 5)), layer(torch.rand(3, 5))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    DCLLoss()(out0, out1).backward()
    optimizer.step()
    assert not torch.equal(before, layer.weight)


@pytest.mark.parametrize("sigma", [0.0000001, 0.5, 10000])
def test_negative_mises_fisher_weights(sigma):
    torch.manual_seed(0)
    w = negative_mises_fisher_weights(torch.rand((3, 5)), torch.rand((3, 5)), sigma)
    assert w.shape == (3,) and torch.isfinite(w).all()
