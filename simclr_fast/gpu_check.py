"""``simclr-fast gpu-check``: the first thing to run on a GPU box, one prepared run on one GPU.

It is meant to finish within 5 minutes on one GPU (``--budget`` bounds the timing section); that
is a design budget: the command has never run on a GPU, only as its ``--dry-run``.

Three sections, all through the public API (``simclr_fast.nt_xent(..., backend="triton")``), so the
check keeps working whatever the kernels look like inside:

``correctness``
    loss and the gradients of both views against an fp64 reference computed here in row chunks
    (the closed-form gradient of docs/design.md §2, never a ``2B × 2B`` matrix), at
    ``2B ∈ {8192, 65536}``, D = 128, τ = 0.1, in every input mode of :data:`MODES` (bf16; fp32
    under ``torch.set_float32_matmul_precision("highest")``; fp32 under ``"high"``, which the
    launchers run on tensor cores with fp16 operands). The reference sees the same
    (rounded) inputs, upcast to fp64. Errors are relative: ``|Δloss| / |loss|`` and
    ``max|Δgrad| / max|grad|`` over both views; the bounds are in :data:`TOLERANCE`.
``repeatability``
    three runs of loss and gradients on the same inputs must agree bit for bit, at a ragged
    ``2B = 8190`` (not a multiple of any tile) and D ∈ {100, 128, 256}, every mode.
``timing``
    forward and forward + backward of the fused loss, the naive loss
    (:func:`simclr_fast.reference.nt_xent_reference`) and ``torch.compile`` of the naive loss, with
    ``triton.testing.do_bench`` (median ms), at ``2B ∈ {8192, 65536}``, D = 128, every mode (the
    naive loss runs under the same matmul precision: TF32 under "high"); ``bwd`` is the
    difference. Each time comes with TFLOP/s of the row-wise algorithm's work (forward ``2·(2B)²·D``,
    backward ``4·(2B)²·D`` FLOPs, the same count for every provider), the percentage of the device's
    spec-sheet dense peak (:data:`PEAK_TFLOPS`, when the device is listed) and of a matmul timed here.
    A naive case predicted to exceed 70 % of the free device memory (``16·(2B)²`` bytes) is skipped.

The exit code is 0 when every correctness and repeatability row passes, 1 otherwise, 2 when no CUDA
device is visible (without ``--dry-run``). The result is printed as a table; ``--json`` writes it
as JSON too.

``--dry-run`` runs the same code paths on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``; the command re-executes itself with it when needed) at tiny sizes
(:data:`DRY_RUN`), with a wall-clock timer in place of ``do_bench`` and ``torch.compile(...,
backend="aot_eager")`` in place of Inductor (an Inductor CPU build takes longer than the whole dry
run). Its times are CPU interpreter times, never GPU figures.

Examples:
    simclr-fast gpu-check --json gpu-check.json     # on the GPU box
    simclr-fast gpu-check --dry-run                 # anywhere: the same paths, on CPU, tiny
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

#: Sizes of the real run.
GPU_RUN = dict(
    correct_n=(8192, 65536),
    correct_d=128,
    repeat_n=8190,
    repeat_d=(100, 128, 256),
    timing_n=(8192, 65536),
    timing_d=128,
)
#: Sizes of ``--dry-run`` (the interpreter is numpy, slow: 2B <= 512).
DRY_RUN = dict(
    correct_n=(64, 96),
    correct_d=128,
    repeat_n=30,
    repeat_d=(100, 128, 256),
    timing_n=(64,),
    timing_d=128,
)
#: Input modes: label -> (dtype, ``torch.set_float32_matmul_precision`` during the case). fp32
#: under "high" is the launchers' tensor-core path for fp32 inputs.
MODES = {
    "bf16": (torch.bfloat16, "highest"),
    "fp32": (torch.float32, "highest"),
    "fp32/high": (torch.float32, "high"),
}
TEMPERATURE = 0.1
REPEATS = 3
#: (loss, gradient) relative error bounds against fp64. bf16: the rounding of z to bf16 alone
#: costs ~6e-3 on the gradient (docs/design.md §9), so 3e-2 leaves 5x headroom; fp32 (exact fp32
#: products): 1e-5 / 1e-4. Bounds chosen from those floors, not from a GPU run (none exists).
#: fp32 under "high" (operands rounded to fp16, 4x finer than bf16): bf16's bounds / 4.
TOLERANCE = {"bf16": (1e-2, 3e-2), "fp32": (1e-5, 1e-4), "fp32/high": (2.5e-3, 7.5e-3)}
#: Dense spec-sheet peaks in TFLOP/s, (device-name substring, bf16 tensor core, fp32 non-tensor):
#: first match wins. NVIDIA data sheets (H100/H200 SXM, H100 PCIe, A100 SXM/PCIe). fp32 under
#: "high" is compared with the 16-bit tensor-core peak (the fused kernels run fp16 operands).
PEAK_TFLOPS = (
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5),
)
#: Naive cases predicted above this fraction of the free device memory are skipped.
NAIVE_MEMORY_FRACTION = 0.7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simclr-fast gpu-check``."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run the same code paths on CPU under Triton's interpreter at tiny sizes",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the result as JSON to PATH, or to stdout without PATH (the table then goes "
        "to stderr)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="timing cases that would start after this many seconds are skipped (default: 300)",
    )


# ---------------------------------------------------------------------------------------------
# The fp64 reference, in row chunks
# ---------------------------------------------------------------------------------------------


def reference_loss_and_grads(
    out0: torch.Tensor, out1: torch.Tensor, temperature: float, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NT-Xent and the gradients of both views in fp64, computed in row chunks.

    ``loss = mean_i [lse_i − s_i,pos(i)]``, ``dL/dz = [(P + Pᵀ) z − 2 z_pos] / (2B τ)`` with
    ``P_ik = exp(s_ik − lse_i)`` (0 on the diagonal), then through the normalization
    ``dL/dx = (g − (g·z) z) / ‖x‖`` (docs/design.md §2). Memory: ``O(2B·D)`` plus one
    ``(chunk_rows, 2B)`` block.

    Args:
        out0: First view, ``(B, D)``, any floating dtype (upcast to fp64).
        out1: Second view, same shape.
        temperature: τ, non-zero.
        chunk_rows: rows per block (default: blocks of about 2**27 fp64 entries).

    Returns:
        ``(loss, d loss/d out0, d loss/d out1)``, all fp64.

    Examples:
        >>> import torch
        >>> from simclr_fast.reference import nt_xent_reference
        >>> a, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
        >>> loss, g0, g1 = reference_loss_and_grads(a, b, 0.5, chunk_rows=2)
        >>> torch.allclose(loss, nt_xent_reference(a, b, 0.5))
        True
    """
    x = torch.cat([out0, out1]).double()
    norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    z = x / norm
    n = z.shape[0]
    b = n // 2
    chunk = chunk_rows or max(1, 2**27 // n)
    inv_tau = 1.0 / temperature
    idx = torch.arange(n, device=z.device)
    pos = (idx + b) % n

    def logits(r0: int, r1: int) -> torch.Tensor:
        s = (z[r0:r1] @ z.T).mul_(inv_tau)
        local = torch.arange(r1 - r0, device=z.device)
        s[local, r0 + local] = float("-inf")
        return s

    lse = torch.empty(n, dtype=torch.float64, device=z.device)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        lse[r0:r1] = torch.logsumexp(logits(r0, r1), dim=1)
    s_pos = (z * z[pos]).sum(dim=1) * inv_tau
    loss = (lse - s_pos).mean()
    g = torch.zeros_like(z)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        p = logits(r0, r1).sub_(lse[r0:r1, None]).exp_()
        g[r0:r1] += p @ z
        g += p.T @ z[r0:r1]
    g = (g - 2 * z[pos]) * (inv_tau / n)
    dx = (g - (g * z).sum(dim=1, keepdim=True) * z) / norm
    return loss, dx[:b], dx[b:]


# ---------------------------------------------------------------------------------------------
# The three sections
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _matmul_precision(precision: str):
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _inputs(n: int, d: int, dtype: torch.dtype, device: str, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    b = n // 2
    out0 = torch.randn(b, d, generator=gen, device=device).to(dtype)
    out1 = torch.randn(b, d, generator=gen, device=device).to(dtype)
    return out0, out1


def _fused_loss_and_grads(out0, out1):
    import simclr_fast

    a = out0.detach().clone().requires_grad_(True)
    b = out1.detach().clone().requires_grad_(True)
    loss = simclr_fast.nt_xent(a, b, temperature=TEMPERATURE, backend="triton")
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


def check_correctness(sizes: dict, device: str) -> list[dict]:
    """Fused loss and gradients against the fp64 chunked reference (module docstring)."""
    rows = []
    for mode, (dtype, precision) in MODES.items():
        for n in sizes["correct_n"]:
            d = sizes["correct_d"]
            row = dict(section="correctness", mode=mode, N=n, D=d, temperature=TEMPERATURE)
            loss_tol, grad_tol = TOLERANCE[mode]
            row.update(loss_tol=loss_tol, grad_tol=grad_tol)
            try:
                out0, out1 = _inputs(n, d, dtype, device, seed=n)
                with _matmul_precision(precision):
                    loss, g0, g1 = _fused_loss_and_grads(out0, out1)
                ref, r0, r1 = reference_loss_and_grads(out0, out1, TEMPERATURE)
                loss_err = abs(loss.double().item() - ref.item()) / abs(ref.item())
                scale = max(r0.abs().max().item(), r1.abs().max().item())
                diff = max(
                    (g0.double() - r0).abs().max().item(), (g1.double() - r1).abs().max().item()
                )
                grad_err = diff / scale
                ok = loss_err <= loss_tol and grad_err <= grad_tol
                row.update(
                    loss=loss.item(),
                    loss_ref=ref.item(),
                    loss_rel_err=loss_err,
                    grad_rel_err=grad_err,
                    status="ok" if ok else "FAIL",
                )
            except Exception as exc:  # one broken case is a row, not a crash
                row.update(status=f"error: {type(exc).__name__}: {str(exc)[:200]}")
            rows.append(row)
    return rows


def check_repeatability(sizes: dict, device: str) -> list[dict]:
    """Loss and gradients of :data:`REPEATS` runs on the same inputs, compared bit for bit."""
    rows = []
    n = sizes["repeat_n"]
    for mode, (dtype, precision) in MODES.items():
        for d in sizes["repeat_d"]:
            row = dict(section="repeatability", mode=mode, N=n, D=d, runs=REPEATS)
            try:
                out0, out1 = _inputs(n, d, dtype, device, seed=d)
                with _matmul_precision(precision):
                    runs = [_fused_loss_and_grads(out0, out1) for _ in range(REPEATS)]
                equal = all(
                    torch.equal(x, y) for run in runs[1:] for x, y in zip(runs[0], run, strict=True)
                )
                finite = all(bool(torch.isfinite(t).all()) for t in runs[0])
                row.update(
                    bitwise_equal=equal, finite=finite, status="ok" if equal and finite else "FAIL"
                )
            except Exception as exc:
                row.update(status=f"error: {type(exc).__name__}: {str(exc)[:200]}")
            rows.append(row)
    return rows


def _cpu_bench(fn, reps: int = 3) -> float:
    """Median wall-clock ms of ``fn`` over ``reps`` calls after one warm-up (``--dry-run``)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _bench(fn, device: str, grad_to_none=None) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")
    return _cpu_bench(fn)


def device_peak_tflops(name: str) -> dict[str, float] | None:
    """Spec-sheet dense peaks per :data:`MODES` label (TFLOP/s) for a device name, if listed."""
    for key, bf16, fp32 in PEAK_TFLOPS:
        if key in name:
            return {"bf16": bf16, "fp32": fp32, "fp32/high": bf16}
    return None


def _matmul_tflops(dtype: torch.dtype, device: str, dry: bool) -> float:
    size = 256 if dry else 8192
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    ms = _bench(lambda: a @ b, device)
    return 2 * size**3 / (ms * 1e-3) / 1e12


def _time_provider(fn, a, b, n: int, d: int, device: str) -> list[tuple[str, float | None, int]]:
    """``(phase, ms, FLOPs)`` for fwd, bwd and fwd+bwd of ``fn(a, b)``; bwd is the difference of
    the two medians, ``None`` when timing noise makes it non-positive."""
    fwd = _bench(lambda: fn(a, b), device)
    full = _bench(lambda: fn(a, b).backward(), device, grad_to_none=[a, b])
    a.grad = b.grad = None
    return [
        ("fwd", fwd, 2 * n * n * d),
        ("bwd", full - fwd if full > fwd else None, 4 * n * n * d),
        ("fwd+bwd", full, 6 * n * n * d),
    ]


def _naive_too_big(n: int, device: str) -> str | None:
    """Why the naive loss is skipped at ``2B = n`` on this device, or ``None``."""
    if device != "cuda":
        return None
    need = 16 * n * n  # the naive loss's (2B)² temporaries, docs/design.md §2
    free = torch.cuda.mem_get_info()[0]
    if need <= NAIVE_MEMORY_FRACTION * free:
        return None
    return (
        f"skipped: predicted {need / 2**30:.0f} GiB > {NAIVE_MEMORY_FRACTION:.0%} of "
        f"{free / 2**30:.0f} GiB free"
    )


def run_timing(sizes: dict, device: str, dry: bool, deadline: float) -> list[dict]:
    """fwd / bwd / fwd+bwd of fused, naive and ``torch.compile``-d naive (module docstring)."""
    import simclr_fast
    from simclr_fast.reference import nt_xent_reference

    peaks = device_peak_tflops(torch.cuda.get_device_name()) if device == "cuda" else None
    compiled = torch.compile(nt_xent_reference, backend="aot_eager" if dry else "inductor")
    providers = {
        "fused": lambda a, b: simclr_fast.nt_xent(a, b, TEMPERATURE, backend="triton"),
        "naive": lambda a, b: nt_xent_reference(a, b, TEMPERATURE),
        "naive-compile": lambda a, b: compiled(a, b, TEMPERATURE),
    }
    rows = []
    for mode, (dtype, precision) in MODES.items():
        with _matmul_precision(precision):
            try:
                matmul = _matmul_tflops(dtype, device, dry)
            except Exception:  # the percentage is then left out, the times still count
                matmul = None
            for n in sizes["timing_n"]:
                d = sizes["timing_d"]
                out0, out1 = _inputs(n, d, dtype, device, seed=1)
                a, b = out0.requires_grad_(True), out1.requires_grad_(True)
                for provider, fn in providers.items():
                    base = dict(section="timing", provider=provider, mode=mode, N=n, D=d)
                    skip = "skipped: over the --budget" if time.perf_counter() > deadline else None
                    if skip is None and provider != "fused":
                        skip = _naive_too_big(n, device)
                    if skip:
                        rows.append(dict(base, status=skip))
                        continue
                    try:
                        phases = _time_provider(fn, a, b, n, d, device)
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        rows.append(dict(base, status="oom"))
                        continue
                    except Exception as exc:
                        status = f"error: {type(exc).__name__}: {str(exc)[:200]}"
                        rows.append(dict(base, status=status))
                        continue
                    for phase, ms, flops in phases:
                        tflops = flops / (ms * 1e-3) / 1e12 if ms else None
                        pct = 100 * tflops / peaks[mode] if peaks and tflops else None
                        rows.append(
                            dict(
                                base,
                                phase=phase,
                                ms=ms,
                                tflops=tflops,
                                pct_peak=pct,
                                pct_matmul=100 * tflops / matmul if matmul and tflops else None,
                                status="ok",
                            )
                        )
    return rows


# ---------------------------------------------------------------------------------------------
# Output and entry point
# ---------------------------------------------------------------------------------------------


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec or ".3g")
    return str(value)


def format_tables(rows: list[dict]) -> str:
    """The rows as one fixed-width table per section."""
    out = []
    corr = [r for r in rows if r["section"] == "correctness"]
    if corr:
        out.append("correctness against fp64 (relative errors; bound in brackets)")
        out.append(f"{'mode':<9} {'2B':>6} {'D':>4} {'loss err':>18} {'grad err':>18}  status")
        for r in corr:
            le = f"{_fmt(r.get('loss_rel_err'), '.2e')} [{r['loss_tol']:.1e}]"
            ge = f"{_fmt(r.get('grad_rel_err'), '.2e')} [{r['grad_tol']:.1e}]"
            out.append(f"{r['mode']:<9} {r['N']:>6} {r['D']:>4} {le:>18} {ge:>18}  {r['status']}")
    rep = [r for r in rows if r["section"] == "repeatability"]
    if rep:
        out.append("")
        out.append(f"repeatability ({REPEATS} runs, bitwise)")
        out.append(f"{'mode':<9} {'2B':>6} {'D':>4} {'equal':>6}  status")
        for r in rep:
            out.append(
                f"{r['mode']:<9} {r['N']:>6} {r['D']:>4} {_fmt(r.get('bitwise_equal')):>6}  "
                f"{r['status']}"
            )
    tim = [r for r in rows if r["section"] == "timing"]
    if tim:
        out.append("")
        out.append("timing (median ms; TFLOP/s of the row-wise algorithm's work)")
        out.append(
            f"{'provider':<14} {'mode':<9} {'2B':>6} {'phase':<8} {'ms':>9} {'TFLOP/s':>8} "
            f"{'% peak':>7} {'% mm':>6}  status"
        )
        for r in tim:
            out.append(
                f"{r['provider']:<14} {r['mode']:<9} {r['N']:>6} {r.get('phase', '-'):<8} "
                f"{_fmt(r.get('ms'), '.3f'):>9} {_fmt(r.get('tflops'), '.3g'):>8} "
                f"{_fmt(r.get('pct_peak'), '.1f'):>7} {_fmt(r.get('pct_matmul'), '.1f'):>6}  "
                f"{r['status']}"
            )
    return "\n".join(out)


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _interpreting() -> bool:
    from simclr_fast.backends import triton_backend

    return triton_backend.interpreting()


def _reexec_dry_run(args: argparse.Namespace) -> int:
    """Run ``--dry-run`` in a fresh interpreter with ``TRITON_INTERPRET=1`` (Triton reads it at
    import, and this process imported Triton compiled)."""
    argv = [
        sys.executable,
        "-m",
        "simclr_fast",
        "gpu-check",
        "--dry-run",
        "--budget",
        str(args.budget),
    ]
    if args.json:
        argv += ["--json", args.json]
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run(argv, env=env).returncode


def run(args: argparse.Namespace) -> int:
    """Run the check; 0 if correctness and repeatability pass, 1 if not, 2 without CUDA."""
    if args.budget <= 0:
        raise ValueError(f"--budget must be > 0 seconds, got {args.budget}")
    try:
        import triton
    except ImportError as exc:
        print(f"gpu-check needs Triton ({exc}); `pip install triton`", file=sys.stderr)
        return 2
    if args.dry_run:
        if not _interpreting():
            return _reexec_dry_run(args)
        device, sizes = "cpu", DRY_RUN
    else:
        if not torch.cuda.is_available():
            print(
                "gpu-check: no CUDA device is visible, so there is nothing to check here. Run it on "
                "a GPU box, or `simclr-fast gpu-check --dry-run` to run the same code paths on CPU "
                "under Triton's interpreter at tiny sizes.",
                file=sys.stderr,
            )
            return 2
        device, sizes = "cuda", GPU_RUN
    start = time.perf_counter()
    rows = check_correctness(sizes, device) + check_repeatability(sizes, device)
    rows += run_timing(sizes, device, args.dry_run, start + args.budget)
    elapsed = time.perf_counter() - start
    failed = [r for r in rows if r["section"] != "timing" and r["status"] != "ok"] + [
        r for r in rows if r["section"] == "timing" and r["status"].startswith("error")
    ]
    meta = dict(
        dry_run=args.dry_run,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
        capability=list(torch.cuda.get_device_capability()) if device == "cuda" else None,
        torch=torch.__version__,
        triton=triton.__version__,
        commit=_git_commit(),
        temperature=TEMPERATURE,
        elapsed_s=round(elapsed, 1),
        failures=len(failed),
        note="dry run: CPU interpreter times, not GPU figures"
        if args.dry_run
        else "measured on this device",
    )
    table_out = sys.stderr if args.json == "-" else sys.stdout
    print(
        f"gpu-check on {meta['device']} (torch {meta['torch']}, triton {meta['triton']})",
        file=table_out,
    )
    print(format_tables(rows), file=table_out)
    print(
        f"\n{len(failed)} failing; {elapsed:.1f} s. " + meta["note"] + ".",
        file=table_out,
    )
    result = dict(meta=meta, rows=rows)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=1)
        print()
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m simclr_fast.gpu_check``)."""
    parser = argparse.ArgumentParser(
        prog="simclr-fast gpu-check", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
