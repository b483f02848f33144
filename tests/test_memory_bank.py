"""NTXentLoss with a memory bank: lightly 1.6's semantics step by step, on every backend.

The fixtures come from lightly's formulas written out here in fp64 (docs/design.md §7): the bank
``normalize(randn((K, D)), dim=-1)`` from the global generator, the anchors ``out0`` against
``[out1_i; bank]`` with the snapshot taken before the enqueue, the enqueue rules (only when
``out0`` requires a gradient; fill to the end, drop the rest, pointer back to 0).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_backends

import simclr_fast
from simclr_fast import NTXentLoss, memory_bank_loss
from simclr_fast.backends import triton_backend

BACKENDS = ["reference", *cpu_backends()] + (["triton"] if triton_backend.interpreting() else [])


def lightly_bank_loss(out0, out1, bank, tau):
    """lightly's bank loss in fp64: CE over [s_pos | z0 @ bankᵀ] / τ with label 0."""
    z0 = out0 / out0.norm(dim=1, keepdim=True).clamp_min(1e-12)
    z1 = out1 / out1.norm(dim=1, keepdim=True).clamp_min(1e-12)
    logits = torch.cat([(z0 * z1).sum(1, keepdim=True), z0 @ bank.T], dim=1) / tau
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


class LightlyBank:
    """lightly's MemoryBankModule queue, written out: fp64 copy of the bank and the pointer."""

    def __init__(self, bank: torch.Tensor):
        self.bank, self.ptr = bank.double().clone(), 0

    def enqueue(self, z1: torch.Tensor) -> None:
        k, b = self.bank.shape[0], z1.shape[0]
        z1 = z1.float().double()  # the bank is fp32
        if self.ptr + b >= k:
            self.bank[self.ptr :] = z1[: k - self.ptr]
            self.ptr = 0
        else:
            self.bank[self.ptr : self.ptr + b] = z1
            self.ptr += b


def _grads(loss, a, b):
    ga, gb = torch.autograd.grad(loss, (a, b))
    return ga, gb


def _assert_rel(got, want, rtol=1e-5):
    got, want = got.double(), want.double()
    scale = want.abs().max().clamp_min(1e-30)
    assert ((got - want).abs().max() / scale).item() <= rtol, (got, want)


#: (B, no_grad) per call: K = 10 is not a multiple of any B; the bank fills (4 + 4 + 1 + 3 = 12
#: wraps at 10, dropping 2 rows), an evaluation call sits in the middle, B = 1 is included.
CALLS = [(4, False), (4, False), (3, True), (1, False), (3, False), (5, False), (2, False)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau", [0.2, -1.0])
def test_sequence_matches_lightly_step_by_step(backend, tau):
    k, d = 10, 6
    torch.manual_seed(1)
    want_bank = F.normalize(torch.randn((k, d)), dim=-1)
    torch.manual_seed(1)
    loss_fn = NTXentLoss(temperature=tau, memory_bank_size=(k, d), backend=backend)
    assert torch.equal(loss_fn.memory_bank.bank, want_bank)  # same seed, same numbers as lightly
    fixture = LightlyBank(want_bank)
    gen = torch.Generator().manual_seed(2)
    for step, (b, eval_call) in enumerate(CALLS):
        out0 = torch.randn(b, d, generator=gen, dtype=torch.float64)
        out1 = torch.randn(b, d, generator=gen, dtype=torch.float64)
        a0, a1 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
        want = lightly_bank_loss(a0, a1, fixture.bank, tau)
        g0, g1 = _grads(want, a0, a1)
        x0, x1 = out0.float().requires_grad_(), out1.float().requires_grad_()
        if eval_call:
            with torch.no_grad():
                got = loss_fn(x0, x1)
            assert loss_fn.memory_bank.ptr == fixture.ptr, "an eval call must not enqueue"
        else:
            got = loss_fn(x0, x1)
            h0, h1 = _grads(got, x0, x1)
            _assert_rel(h0, g0)
            _assert_rel(h1, g1)
            fixture.enqueue(F.normalize(out1.float(), dim=1))
        _assert_rel(got.detach(), want.detach())
        assert got.dtype == torch.float32
        assert int(loss_fn.memory_bank.bank_ptr) == fixture.ptr == loss_fn.memory_bank.ptr, step
        torch.testing.assert_close(loss_fn.memory_bank.bank.double(), fixture.bank, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_collinear_filled_bank_gives_log_k_plus_1(backend):
    k, d = 12, 5
    loss_fn = NTXentLoss(temperature=0.3, memory_bank_size=(k, d), backend=backend)
    x = torch.ones(4, d, requires_grad=True)
    for _ in range(3):  # 12 rows enqueued: the bank is all ones now
        loss_fn(x, x)
    loss = loss_fn(x, x)
    assert math.isclose(loss.item(), math.log(k + 1), rel_tol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bank_gets_no_gradient_and_out1_only_through_its_positive(backend):
    """d loss/d out1_i depends only on out0_i and out1_i: changing another row leaves it."""
    loss_fn = NTXentLoss(temperature=0.5, memory_bank_size=(16, 8), backend=backend)
    out0, out1 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    bank = loss_fn.memory_bank_state_dict()["bank"]
    loss = memory_bank_loss(out0, out1, bank, 0.5, backend=backend)
    g1 = torch.autograd.grad(loss, out1)[0]
    out1b = out1.detach().clone()
    out1b[1:] = torch.randn(3, 8)
    out1b.requires_grad_()
    g1b = torch.autograd.grad(memory_bank_loss(out0, out1b, bank, 0.5, backend=backend), out1b)[0]
    torch.testing.assert_close(g1[0], g1b[0], rtol=1e-5, atol=1e-7)
    assert not loss_fn.memory_bank.bank.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_learnable_temperature_gradient(backend):
    bank = F.normalize(torch.randn(9, 6, dtype=torch.float64), dim=1)
    out0, out1 = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    t64 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(lightly_bank_loss(out0, out1, bank, t64), t64)[0]
    t32 = torch.nn.Parameter(torch.tensor(0.3))
    got = memory_bank_loss(out0.float(), out1.float(), bank.float(), t32, backend=backend)
    got.backward()
    _assert_rel(t32.grad, want, rtol=1e-4)


def test_bare_int_size_warns_and_takes_d_from_the_first_batch():
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="deprecated"):
        loss_fn = NTXentLoss(memory_bank_size=7)
    assert not loss_fn.memory_bank.initialized
    assert loss_fn.memory_bank_state_dict()["bank"] is None
    torch.manual_seed(4)
    want = F.normalize(torch.randn((7, 5)), dim=-1)
    torch.manual_seed(4)
    out0, out1 = torch.randn(2, 5, requires_grad=True), torch.randn(2, 5)
    torch.manual_seed(4)  # the bank is drawn at the first call, from the global generator
    loss_fn(out0, out1)
    torch.testing.assert_close(loss_fn.memory_bank.bank[2:], want[2:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="D=5 but the embeddings have D=3"):
        loss_fn(torch.randn(2, 3), torch.randn(2, 3))


def test_bank_is_not_in_state_dict_so_lightly_checkpoints_load():
    loss_fn = NTXentLoss(memory_bank_size=(32, 4))
    assert loss_fn.state_dict() == {}
    loss_fn.load_state_dict({}, strict=True)  # what a lightly NTXentLoss checkpoint holds
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.criterion = loss_fn
    assert set(model.state_dict()) == {"0.weight", "0.bias"}


def test_save_and_restore_the_bank_resumes_exactly():
    torch.manual_seed(5)
    a = NTXentLoss(temperature=0.2, memory_bank_size=(11, 4))
    batches = [(torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)) for _ in range(6)]
    for x0, x1 in batches[:4]:
        a(x0, x1)
    state = a.memory_bank_state_dict()
    torch.manual_seed(99)  # a fresh run draws another bank; the restore replaces it
    b = NTXentLoss(temperature=0.2, memory_bank_size=(11, 4))
    b.load_memory_bank_state_dict(state)
    for x0, x1 in batches[4:]:
        assert torch.equal(a(x0, x1), b(x0, x1))
    assert torch.equal(a.memory_bank.bank, b.memory_bank.bank)
    assert a.memory_bank.ptr == b.memory_bank.ptr
    with pytest.raises(ValueError, match=r"shape \(11, 4\) but this bank is \(12, 4\)"):
        NTXentLoss(memory_bank_size=(12, 4)).load_memory_bank_state_dict(state)


def test_gather_distributed_in_one_process_is_the_local_loss():
    torch.manual_seed(6)
    a = NTXentLoss(memory_bank_size=(8, 4), gather_distributed=True)
    torch.manual_seed(6)
    b = NTXentLoss(memory_bank_size=(8, 4))
    for _ in range(3):
        x0, x1 = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
        assert torch.equal(a(x0, x1), b(x0, x1))
    assert torch.equal(a.memory_bank.bank, b.memory_bank.bank)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype1", [torch.bfloat16, torch.float64])
def test_mixed_dtypes_compute_in_fp32(backend, dtype1):
    bank = F.normalize(torch.randn(9, 6), dim=1)
    out0, out1 = torch.randn(3, 6), torch.randn(3, 6).to(dtype1)
    got = memory_bank_loss(out0, out1, bank, 0.4, backend=backend)
    want = lightly_bank_loss(out0.double(), out1.double(), bank.double(), 0.4)
    assert got.dtype == torch.float32
    _assert_rel(got, want)


@pytest.mark.parametrize(
    ("size", "exc", "match"),
    [
        (-1, ValueError, "non-negative, got -1"),
        ((8, -2), ValueError, "non-negative, got D=-2"),
        ((-8, 4), ValueError, "non-negative, got K=-8"),
        ((8.0, 4), TypeError, "must hold integers, got K=8.0"),
        ((8, 4.5), TypeError, "must hold integers, got D=4.5"),
        (2.5, TypeError, "an int K or a .K, D. tuple, got float"),
        (True, TypeError, "got bool"),
        ((8, 4, 2), ValueError, "a .K, D. pair .* of length 3"),
        ((8,), ValueError, "of length 1"),
        ((8, 0), ValueError, "needs an embedding size D >= 1"),
    ],
)
def test_bad_sizes_raise_clearly(size, exc, match):
    with pytest.raises(exc, match=match):
        NTXentLoss(memory_bank_size=size)


def test_bank_d_differs_from_embedding_d_names_both():
    loss_fn = NTXentLoss(memory_bank_size=(8, 16))
    with pytest.raises(ValueError, match="D=16 but the embeddings have D=12"):
        loss_fn(torch.randn(4, 12), torch.randn(4, 12))
    with pytest.raises(ValueError, match="D=16 but the embeddings have D=12"):
        memory_bank_loss(torch.randn(4, 12), torch.randn(4, 12), torch.randn(8, 16))


def test_zero_sizes_disable_the_bank():
    x0, x1 = torch.randn(4, 8), torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for size in (0, (0,), (0, 8), (0, 0)):
            loss_fn = NTXentLoss(memory_bank_size=size)
            assert torch.equal(loss_fn(x0, x1), simclr_fast.nt_xent(x0, x1))


def test_train_checkpoint_helpers_carry_the_bank(tmp_path):
    """simclr-fast train saves checkpoint["loss"] = loss_state(loss_fn) and restores it on resume."""
    from simclr_fast.train import checkpoint as ckpt_io

    assert ckpt_io.loss_state(NTXentLoss()) is None  # SimCLR: nothing beyond state_dict
    ckpt_io.set_loss_state(NTXentLoss(), None)  # an older checkpoint without the key
    torch.manual_seed(8)
    a = NTXentLoss(memory_bank_size=(9, 3))
    for _ in range(2):
        a(torch.randn(4, 3, requires_grad=True), torch.randn(4, 3))
    ckpt_io.save_atomic({"model": {}, "epoch": 1, "loss": ckpt_io.loss_state(a)}, tmp_path / "c.pt")
    b = NTXentLoss(memory_bank_size=(9, 3))
    ckpt_io.set_loss_state(b, ckpt_io.load(tmp_path / "c.pt")["loss"])
    assert torch.equal(a.memory_bank.bank, b.memory_bank.bank) and b.memory_bank.ptr == 8
    x0, x1 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    assert torch.equal(a(x0, x1), b(x0, x1))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_peaked_rows_keep_their_digits(backend):
    """Positive far above every key (loss ~1e-12): the fused form keeps fp32 digits, naive does not."""
    gen = torch.Generator().manual_seed(9)
    out0 = torch.randn(8, 32, generator=gen, dtype=torch.float64)
    out1 = out0 + 5e-2 * torch.randn(8, 32, generator=gen, dtype=torch.float64)
    bank = F.normalize(torch.randn(64, 32, generator=gen, dtype=torch.float64), dim=1)
    # the fixture sees the fp32-rounded inputs: the check is of the arithmetic, not the rounding
    out0, out1, bank = (t.float().double() for t in (out0, out1, bank))
    tau = 0.02

    def exact(a, b):  # cancellation-free fp64: softplus(log Σ_k e^{s_ik − s_pos,i})
        z0, z1 = F.normalize(a, dim=1), F.normalize(b, dim=1)
        s_pos = (z0 * z1).sum(1, keepdim=True) / tau
        return F.softplus(torch.logsumexp(z0 @ bank.T / tau - s_pos, dim=1)).mean()

    a0, a1 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    want = exact(a0, a1)
    g0, g1 = _grads(want, a0, a1)
    assert want.item() < 1e-6
    x0, x1 = out0.float().requires_grad_(), out1.float().requires_grad_()
    got = memory_bank_loss(x0, x1, bank.float(), tau, backend=backend)
    h0, h1 = _grads(got, x0, x1)
    _assert_rel(got, want, rtol=1e-4)
    _assert_rel(h0, g0, rtol=1e-4)
    _assert_rel(h1, g1, rtol=1e-4)
    naive = memory_bank_loss(x0, x1, bank.float(), tau, backend="reference")
    assert abs(naive.item() - want.item()) > 1e-2 * want.item()  # what the fused form avoids


@pytest.mark.timeout(300)
def test_torch_compile_fullgraph_one_graph_through_the_wrap():
    """The compiled enqueue keeps the pointer in a tensor: one graph for every pointer value."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(10)
    compiled = NTXentLoss(0.2, memory_bank_size=(10, 6), backend="cpu")
    torch.manual_seed(10)
    eager = NTXentLoss(0.2, memory_bank_size=(10, 6), backend="cpu")
    fn = torch.compile(compiled, fullgraph=True)
    torch._dynamo.utils.counters.clear()
    for step in range(
        9
    ):  # 3 rows a call into K = 10: pointers 3, 6, 9, 0, 3, 6, 9, 0, 3: wraps twice
        x0, x1 = torch.randn(3, 6, requires_grad=True), torch.randn(3, 6)
        got, want = fn(x0, x1), eager(x0, x1)
        _assert_rel(got.detach(), want.detach())
        assert compiled.memory_bank.ptr == eager.memory_bank.ptr, step
        torch.testing.assert_close(compiled.memory_bank.bank, eager.memory_bank.bank)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    state = compiled.memory_bank_state_dict()  # read back after compiled calls
    assert state["ptr"] == eager.memory_bank.ptr == 3
