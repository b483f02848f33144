"""Worst relative error of each backend over the peaked sweep of issue #12 (the README's table).

Relative errors ``‖got − ref‖/‖ref‖`` of the loss and of both input gradients against
:func:`simclr_fast.reference.nt_xent_exact` in fp64, for fp32 inputs ``out0 = a``,
``out1 = a + σ·noise``, over B ∈ {3, 64, 257} × D ∈ {16, 128, 130} × τ ∈ {0.02, 0.05, 0.1, 0.5} ×
σ ∈ {0.05, 0.3, 1.0}. ``--triton`` runs the Triton kernels under the interpreter on three shapes
(slow: numpy underneath).

    .venv/bin/python benchmarks/numerics_sweep.py            # naive fp32, torch, cpu
    .venv/bin/python benchmarks/numerics_sweep.py --triton   # triton (interpreter)
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_numerics import errors, peaked  # noqa: E402

from simclr_fast import nt_xent  # noqa: E402
from simclr_fast.reference import nt_xent_exact, nt_xent_reference  # noqa: E402

SHAPES = [(b, d) for b in (3, 64, 257) for d in (16, 128, 130)]
TAUS = [0.02, 0.05, 0.1, 0.5]
SIGMAS = [0.05, 0.3, 1.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton", action="store_true", help="the Triton kernels (interpreter)")
    args = parser.parse_args()
    shapes = SHAPES
    if args.triton:
        providers = {"triton": "triton"}
        shapes = [(3, 16), (64, 130), (257, 128)]
    else:
        providers = {"naive fp32": None, "torch": "torch", "cpu": "cpu"}
    worst = {k: [0.0, 0.0, 0.0] for k in providers}
    lo, hi = float("inf"), 0.0
    for (b, d), tau, sigma in itertools.product(shapes, TAUS, SIGMAS):
        a, c = peaked(b, d, sigma)
        loss = nt_xent_exact(a.double(), c.double(), tau).item()
        lo, hi = min(lo, loss), max(hi, loss)
        for name, backend in providers.items():

            def fn(x, y, t=tau, be=backend):
                if be is None:
                    return nt_xent_reference(x, y, t)
                return nt_xent(x, y, t, backend=be)

            worst[name] = [max(w, e) for w, e in zip(worst[name], errors(fn, a, c, tau))]
    print(f"torch {torch.__version__}; losses from {lo:.2g} to {hi:.2g}")
    print(f"{'provider':<12} {'loss':>9} {'grad out0':>10} {'grad out1':>10}")
    for name, (e0, e1, e2) in worst.items():
        print(f"{name:<12} {e0:>9.1e} {e1:>10.1e} {e2:>10.1e}")


if __name__ == "__main__":
    main()
