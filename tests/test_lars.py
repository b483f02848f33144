"""LARS: the update rule against a hand computation, the excluded group, and the parameter split."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from simclr_fast.train.lars import LARS, param_groups


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_two_steps_match_hand_computation():
    w0, grad = [3.0, 4.0], [0.6, 0.8]
    lr, momentum, wd, eta = 0.5, 0.9, 0.1, 0.001
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LARS([p], lr=lr, momentum=momentum, weight_decay=wd, trust_coefficient=eta)

    # by hand: g' = g + wd w;  r = eta |w| / |g'|;  v = m v + r g';  w -= lr v
    w, v = list(w0), [0.0, 0.0]
    for _ in range(2):
        gd = [g + wd * x for g, x in zip(grad, w)]
        r = eta * _norm(w) / _norm(gd)
        v = [momentum * a + r * b for a, b in zip(v, gd)]
        w = [x - lr * a for x, a in zip(w, v)]
        p.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(
            p.detach(), torch.tensor(w, dtype=torch.float64), rtol=1e-12, atol=0
        )
    # first step in closed form: g' = (0.9, 1.2), |g'| = 1.5, r = 0.001 * 5 / 1.5
    assert w[0] != pytest.approx(w0[0] - lr * 0.6)  # the trust ratio changed the step


def test_excluded_group_is_plain_momentum_sgd():
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS(
        [{"params": [p], "weight_decay": 0.0, "lars_exclude": True}],
        lr=0.5,
        momentum=0.9,
        weight_decay=0.1,
    )
    for expected in ([2.7, 3.6], [2.7 - 0.5 * 1.9 * 0.6, 3.6 - 0.5 * 1.9 * 0.8]):
        p.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64))


def test_zero_weight_uses_trust_ratio_one():
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LARS([p], lr=1.0, momentum=0.0, weight_decay=0.0)
    p.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), -p.grad)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    oa, ob = LARS(param_groups(a, 1e-4), lr=0.1), LARS(param_groups(b, 1e-4), lr=0.1)
    x = torch.randn(8, 4)
    for model, opt in ((a, oa), (b, ob)):
        model(x).square().sum().backward()
        opt.step()
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # (load_state_dict may alias the buffers)
    for model, opt in ((a, oa), (b, ob)):
        opt.zero_grad()
        model(x).sin().sum().backward()
        opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_param_groups_exclude_norm_and_bias():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2)
    )
    decay, excluded = param_groups(model, weight_decay=1e-6)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    # conv bias, BN weight + bias, linear bias, LayerNorm weight + bias
    assert len(excluded["params"]) == 6
    assert decay["weight_decay"] == 1e-6 and not decay["lars_exclude"]
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]
