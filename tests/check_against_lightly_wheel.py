"""Run lightly's own loss modules, from its wheel, against simclr_fast: ``python ... LIGHTLY.whl``.

lightly cannot be imported beside a CPU torch without torchvision (its package ``__init__`` pulls
it in), so this one-off check takes the three source files the losses need out of a downloaded
wheel (``lightly/loss/ntx_ent_loss.py``, ``lightly/loss/dcl_loss.py``,
``lightly/models/modules/memory_bank.py``, and ``lightly/utils/dist.py``) into a temporary
package whose other ``__init__`` files are empty, and compares, step by step::

    pip download lightly==1.6.0 --no-deps -d /tmp/lightly
    python tests/check_against_lightly_wheel.py /tmp/lightly/lightly-1.6.0-py3-none-any.whl

- ``NTXentLoss(memory_bank_size=(10, 6))`` over a sequence that fills and wraps the bank (B = 4,
  4, 3 under ``torch.no_grad()``, 1, 3, 5, 2), τ = 0.2 and −1: the banks must be bitwise equal
  after every call, the loss and both gradients close;
- ``DCLLoss`` and ``DCLWLoss`` at a few shapes and temperatures;

on every backend that runs here. It prints the worst relative difference and exits 1 above 1e-5.
Not part of the test suite (it needs the wheel); the tests hold fp64 fixtures of the formulas.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

FILES = (
    "lightly/loss/ntx_ent_loss.py",
    "lightly/loss/dcl_loss.py",
    "lightly/models/modules/memory_bank.py",
    "lightly/utils/dist.py",
)
#: lightly.models.utils imports torchvision; the bank needs only its all-gather, never called in
#: one process (world size 1).
MODELS_UTILS_STUB = (
    "def concat_all_gather(x):\n    raise RuntimeError('not used by a one-process check')\n"
)


def _unpack(wheel: str, root: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in FILES:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    for pkg in (
        "lightly",
        "lightly/loss",
        "lightly/models",
        "lightly/models/modules",
        "lightly/utils",
    ):
        (root / pkg / "__init__.py").touch()
    (root / "lightly/models/utils.py").write_text(MODELS_UTILS_STUB)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _run(fn, x0, x1, grad: bool):
    a0, a1 = x0.clone().requires_grad_(), x1.clone().requires_grad_()
    if not grad:
        with torch.no_grad():
            return fn(a0, a1), None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lightly's DCLW weights: torch.tensor(tensor)
        value = fn(a0, a1)
    return (value, *torch.autograd.grad(value, (a0, a1)))


def compare() -> float:
    from lightly.loss.dcl_loss import DCLLoss as LightlyDCL
    from lightly.loss.dcl_loss import DCLWLoss as LightlyDCLW
    from lightly.loss.ntx_ent_loss import NTXentLoss as LightlyNTXent

    import simclr_fast
    from simclr_fast import DCLLoss, DCLWLoss, NTXentLoss

    worst = 0.0
    for backend in ["reference", *simclr_fast.available_backends("cpu")]:
        if backend == "triton":
            continue
        for tau in (0.2, -1.0):
            torch.manual_seed(0)
            theirs = LightlyNTXent(tau, memory_bank_size=(10, 6))
            torch.manual_seed(0)
            ours = NTXentLoss(tau, memory_bank_size=(10, 6), backend=backend)
            gen = torch.Generator().manual_seed(1)
            for b, grad in (
                (4, True),
                (4, True),
                (3, False),
                (1, True),
                (3, True),
                (5, True),
                (2, True),
            ):
                x0, x1 = torch.randn(b, 6, generator=gen), torch.randn(b, 6, generator=gen)
                want, got = _run(theirs, x0, x1, grad), _run(ours, x0, x1, grad)
                worst = max(worst, *(_rel(g, w) for g, w in zip(got, want) if w is not None))
                if not torch.equal(theirs.memory_bank.bank, ours.memory_bank.bank):
                    raise SystemExit(f"{backend} tau={tau} B={b}: the banks differ")
        for theirs_cls, ours_cls, kw in (
            (LightlyDCL, DCLLoss, {}),
            (LightlyDCLW, DCLWLoss, {"sigma": 0.5}),
        ):
            for b, d, tau in ((2, 2, 0.1), (3, 17, 0.5), (8, 32, -1.0)):
                x0, x1 = torch.randn(b, d), torch.randn(b, d)
                want = _run(theirs_cls(temperature=tau, **kw), x0, x1, True)
                got = _run(ours_cls(temperature=tau, backend=backend, **kw), x0, x1, True)
                worst = max(worst, *(_rel(g, w) for g, w in zip(got, want)))
    return worst


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        _unpack(argv[0], Path(tmp))
        sys.path.insert(0, tmp)
        worst = compare()
    print(f"worst relative difference against {Path(argv[0]).name}: {worst:.2e}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
