"""The CPU kernel's figures (issue #4): fused C++ vs the naive loss, torch.compile of it and the GEMM floor.

Every case runs in its own subprocess (a clean heap and its own peak-memory count), in one run so
the ratios are taken on the same machine state. Forward + backward, fp32, ``D = 128``:

- ``cpu``: ``simclr_fast.nt_xent(..., backend="cpu")``, 2 threads and 1 thread (scaling);
- ``naive``: the reference loss (:func:`simclr_fast.nt_xent_reference`) in eager mode;
- ``naive-compile``: ``torch.compile`` of the same function (compiled once, before timing);
- ``mm``: a 4096³ ``torch.mm``, whose GFLOP/s sets the floor ``4·N²·D / GFLOP/s`` of the
  symmetric algorithm (forward ``N²·D``, backward ``3·N²·D``).

Peak memory is the growth of the process's peak RSS during one more forward + backward after the
timed runs, above its RSS just before it (inputs, warm-up, compilation and the probe's buffers
excluded): the high-water mark is reset through ``/proc/self/clear_refs`` and read from ``VmHWM``.

Usage::

    .venv/bin/python benchmarks/bench_cpu_kernel.py                 # the issue's figures (~4 min)
    .venv/bin/python benchmarks/bench_cpu_kernel.py --tiles 128x128,256x256,256x1024
    .venv/bin/python benchmarks/bench_cpu_kernel.py --bank 256,65536    # memory-bank mode (#13)

Tile shape (csrc/ntxent.cpp, kDefaultTileRows/Cols): measured with ``--tiles`` on the 2-core AMD
EPYC (Zen 3, AVX2) dev machine, 2026-11-22; the numbers are in ``TILE_MEASUREMENT`` below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

TILE_MEASUREMENT = """
2026-11-22, 2-core AMD EPYC (Zen 3, AVX2), shared box at load average ~10, torch 2.13.0+cpu, D = 128,
`--tiles` (cost = time x probe GFLOP/s / 4·N²·D; medians of 3-4 interleaved rounds):
  2B = 8192, 1 thread:   128x128 1.40, 256x256 1.28, 256x512 1.21, 256x1024 1.31, 512x512 1.40,
                         128x1024 1.40
  2B = 16384, 2 threads: 256x256 1.12, 256x512 1.16, 256x1024 1.07, 512x1024 1.18
Again at load average ~2 (2026-11-22 09:00, 5 and 3 rounds):
  2B = 8192, 1 thread:   128x256 1.25, 256x256 1.17, 256x512 1.20, 256x1024 1.21, 384x768 1.20,
                         512x512 1.18
  2B = 16384, 2 threads: 256x256 1.13, 256x1024 1.24, 512x512 1.23
Round-to-round spread was about ±10-15 %: 128-row tiles were among the slowest; 256x256 had the
best median in both sweeps at low load (at load ~10, 256x512 and 256x1024 led it by < 10 %, inside
the noise) and has the smallest buffers, so it is the default.
"""

GOALS = {"naive_over_cpu": 3.5, "compile_over_cpu": 1.5, "cpu_over_floor": 1.25, "rss_mb": 64.0}


# ---- one case, in a subprocess -------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Probe:
    """GFLOP/s of a 2048³ ``torch.mm`` right now: the machine's speed at the moment of a timed run.

    The dev machine is shared and its load changes from second to second; multiplying each timed
    run by the probe taken just before it (``time × GFLOP/s``, in GFLOP) gives figures that compare
    across cases taken minutes apart. Buffers are allocated once, before the memory baseline.
    """

    SIZE = 2048

    def __init__(self):
        import torch

        self.a, self.b, self.c = (torch.randn(self.SIZE, self.SIZE) for _ in range(3))
        torch.mm(self.a, self.b, out=self.c)

    def __call__(self) -> float:
        import torch

        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.c)
        return 2 * self.SIZE**3 / (time.perf_counter() - t0) / 1e9


def _run_case(spec: dict) -> dict:
    import gc

    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("tile"):
        os.environ["SIMCLR_FAST_CPU_TILE"] = str(spec["tile"])
    torch.manual_seed(0)
    provider, n, d = spec["provider"], spec["n"], spec["d"]

    if provider == "mm":
        a, b, c = (torch.randn(4096, 4096) for _ in range(3))
        torch.mm(a, b, out=c)
        probe = _Probe()
        times, probes = [], []
        for _ in range(spec["repeats"]):
            probes.append(probe())
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - t0)
        gflops = [2 * 4096**3 / t / 1e9 for t in times]
        return {"times": times, "gflops": statistics.median(gflops), "probe_gflops": probes}

    if provider.startswith("bank-"):
        return _run_bank(spec)

    import simclr_fast
    from simclr_fast.reference import nt_xent_reference

    b = n // 2
    out0 = torch.randn(b, d, requires_grad=True)
    out1 = torch.randn(b, d, requires_grad=True)
    if provider == "cpu":

        def fn(x, y):
            return simclr_fast.nt_xent(x, y, 0.5, backend="cpu")

    elif provider == "torch":

        def fn(x, y):
            return simclr_fast.nt_xent(x, y, 0.5, backend="torch")

    elif provider == "naive":

        def fn(x, y):
            return nt_xent_reference(x, y, 0.5)

    elif provider == "naive-compile":
        fn = torch.compile(lambda x, y: nt_xent_reference(x, y, 0.5))
    else:
        raise ValueError(provider)

    def once():
        out0.grad = out1.grad = None
        t0 = time.perf_counter()
        loss = fn(out0, out1)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    compile_s = None
    if spec["warmup"]:
        t0 = time.perf_counter()
        once()
        compile_s = time.perf_counter() - t0
    probe = _Probe()
    fwd, bwd, probes = [], [], []
    for _ in range(spec["repeats"]):
        probes.append(probe())
        f, g = once()
        fwd.append(f)
        bwd.append(g)
    # Memory on one more run of its own, without the probe (whose MKL buffers would count).
    out0.grad = out1.grad = None
    gc.collect()
    exact = _reset_peak()
    base_kb = _rss_kb("VmRSS")
    once()
    peak_kb = _rss_kb("VmHWM")  # without the reset: the all-time peak (an upper bound)
    return {
        "times": [f + g for f, g in zip(fwd, bwd)],
        "fwd": fwd,
        "bwd": bwd,
        "probe_gflops": probes,
        "warmup_s": compile_s,
        "rss_growth_mb": (peak_kb - base_kb) / 1024,
        "peak_reset": exact,
        "isa": _isa(),
    }


def _run_bank(spec: dict) -> dict:
    """Memory-bank mode (issue #13): B anchors against K keys, forward + backward (no key gradient).

    ``bank-cpu`` calls the C++ ops in keys mode (:class:`CPUBackend`, rectangular tiles, the
    ``B × K`` logits never exist); ``bank-naive`` materializes them as lightly does
    (``cat([s_pos, q·bankᵀ]) / τ``, log-sum-exp, autograd). τ = 0.1; the O(B·D) positive term of
    a real loss is left out of the fused case.
    """
    import gc

    import torch
    import torch.nn.functional as F

    b, k, d, inv_tau = spec["n"], spec["k"], spec["d"], 10.0
    q = F.normalize(torch.randn(b, d), dim=1)
    p = F.normalize(torch.randn(b, d), dim=1)
    keys = F.normalize(torch.randn(k, d), dim=1)
    if spec["provider"] == "bank-cpu":
        from simclr_fast.backends.cpu import CPUBackend

        cpu = CPUBackend()
        shift = (inv_tau * (q * p).sum(1)).contiguous()

        def once():
            t0 = time.perf_counter()
            x = cpu.forward_lse(q, 0, b, inv_tau, shift, keys=keys)
            t1 = time.perf_counter()
            cpu.backward_rows(q, shift, x, torch.sigmoid(-x) / b, 0, b, inv_tau, keys=keys)
            return t1 - t0, time.perf_counter() - t1

    else:
        qg = q.clone().requires_grad_(True)

        def once():
            qg.grad = None
            t0 = time.perf_counter()
            pos = (qg * p).sum(1, keepdim=True)
            logits = torch.cat([pos, qg @ keys.T], dim=1) * inv_tau
            loss = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
            t1 = time.perf_counter()
            loss.backward()
            return t1 - t0, time.perf_counter() - t1

    once()
    probe = _Probe()
    fwd, bwd, probes = [], [], []
    for _ in range(spec["repeats"]):
        probes.append(probe())
        f, g = once()
        fwd.append(f)
        bwd.append(g)
    gc.collect()
    exact = _reset_peak()
    base_kb = _rss_kb("VmRSS")
    once()
    return {
        "times": [f + g for f, g in zip(fwd, bwd)],
        "fwd": fwd,
        "bwd": bwd,
        "probe_gflops": probes,
        "rss_growth_mb": (_rss_kb("VmHWM") - base_kb) / 1024,
        "peak_reset": exact,
        "isa": _isa(),
    }


def _bank_report(args) -> int:
    """``--bank B,K``: the fused keys mode (2 threads, 1 thread) against the materialized logits."""
    b, k = (int(v) for v in args.bank.split(","))
    d, results = args.d, {}
    for key, provider, threads in (
        ("bank-cpu", "bank-cpu", 2),
        ("bank-cpu 1 thread", "bank-cpu", 1),
        ("bank-naive", "bank-naive", 2),
    ):
        spec = {"provider": provider, "n": b, "k": k, "d": d, "threads": threads}
        print(f"... {key}", file=sys.stderr, flush=True)
        results[key] = run_case({**spec, "repeats": args.repeats, "warmup": True}, 900)
    print(
        f"\nmemory-bank mode fwd+bwd, fp32, B = {b}, K = {k}, D = {d}, τ = 0.1; {os.cpu_count()} CPUs"
    )
    print(f"{'case':<20} {'median s':>8} {'fwd/bwd s':>13} {'GFLOP/s':>8} {'RSS+ MB':>8}")
    for key, r in results.items():
        if "error" in r:
            print(f"{key:<20} ERROR {r['error'].strip().splitlines()[-1:]}")
            continue
        t = _median(r)
        # Fused: forward 2·B·K·D, backward recompute + G·keys 4·B·K·D; naive: 2 + 2 (no recompute).
        flops = (6 if key.startswith("bank-cpu") else 4) * b * k * d
        fb = f"{_median(r, 'fwd'):.3f}/{_median(r, 'bwd'):.3f}"
        print(f"{key:<20} {t:8.3f} {fb:>13} {flops / t / 1e9:8.1f} {r['rss_growth_mb']:8.1f}")
    two, one = results["bank-cpu"], results["bank-cpu 1 thread"]
    if "error" not in two and "error" not in one:
        print(f"1 -> 2 threads speed-up: {_median(one) / _median(two):.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"b": b, "k": k, "d": d}, "results": results}, f, indent=1)
    return 0


def _isa() -> str | None:
    from simclr_fast import _extension

    return _extension.cpu_isa()


def run_case(spec: dict, timeout: float) -> dict:
    """Run one case in a fresh interpreter; a failure is reported, not raised."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--case", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr or proc.stdout)[-800:]}
    return {**spec, **json.loads(lines[-1])}


# ---- the report ----------------------------------------------------------------------------------


def _median(r: dict, key: str = "times") -> float:
    return statistics.median(r[key])


def _norm(r: dict) -> float | None:
    """Median over timed runs of time × probe GFLOP/s: the run's cost in GFLOP of 2048³ sgemm."""
    if "probe_gflops" not in r or "error" in r:
        return None
    return statistics.median(t * g for t, g in zip(r["times"], r["probe_gflops"]))


def _row(name: str, r: dict, flops: float | None, floor: float | None) -> str:
    if "error" in r:
        last = r["error"].strip().splitlines()[-1] if r["error"].strip() else ""
        return f"{name:<24} ERROR {last}"
    t = _median(r)
    spread = f"{min(r['times']):.2f}-{max(r['times']):.2f}"
    rate = f"{flops / t / 1e9:7.1f}" if flops else "      -"
    mem = f"{r['rss_growth_mb']:8.1f}" if "rss_growth_mb" in r else "       -"
    fb = f"{_median(r, 'fwd'):.2f}/{_median(r, 'bwd'):.2f}" if "fwd" in r else "-"
    probe = statistics.median(r["probe_gflops"])
    norm = _norm(r)
    xf = f"{norm / floor:6.2f}" if floor else "     -"
    return f"{name:<24} {t:8.3f} {spread:>11} {fb:>11} {rate} {probe:6.1f} {xf} {mem}"


def _tile_sweep(args) -> int:
    """Compare tile shapes ROWSxCOLS in one process, interleaved, each run paired with a probe."""
    import torch

    from simclr_fast.backends.cpu import CPUBackend

    torch.set_num_threads(args.threads)
    n, d = args.n, args.d
    z = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    # NT-Xent's calls: shift = the positive logit, the positive excluded, weight ~ coef.
    pos = (torch.arange(n) + n // 2) % n
    shift = (2.0 * (z * z[pos]).sum(1)).contiguous()
    weight = torch.full((n,), 1.0 / n)
    backend, probe = CPUBackend(), _Probe()
    shapes = [tuple(t.split("x")) for t in args.tiles.split(",")]
    costs: dict[tuple, list[tuple[float, float, float]]] = {shape: [] for shape in shapes}
    for _ in range(args.repeats):
        for rows, cols in shapes:
            os.environ["SIMCLR_FAST_CPU_TILE"], os.environ["SIMCLR_FAST_CPU_TILE_COLS"] = rows, cols
            g = probe()
            t0 = time.perf_counter()
            x = backend.forward_lse(z, 0, n, 2.0, shift, pos)
            t1 = time.perf_counter()
            backend.backward_rows(z, shift, x, weight, 0, n, 2.0, pos)
            t2 = time.perf_counter()
            costs[(rows, cols)].append(((t2 - t0) * g * 1e9 / (4 * n * n * d), t1 - t0, t2 - t1))
    print(
        f"tile sweep: 2B = {n}, D = {d}, {args.threads} threads, {args.repeats} interleaved rounds"
    )
    print("rows x cols   cost/floor (median, min; 2048³-probe units)   fwd s   bwd s")
    for (rows, cols), v in costs.items():
        med = statistics.median(x[0] for x in v)
        fwd, bwd = statistics.median(x[1] for x in v), statistics.median(x[2] for x in v)
        print(
            f"{rows:>4} x {cols:<6} {med:8.2f} {min(x[0] for x in v):6.2f} {fwd:31.3f} {bwd:7.3f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=16384, help="2B, rows of z (default 16384)")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--big", type=int, default=65536, help="2B of the run the naive loss cannot do")
    p.add_argument("--no-big", action="store_true", help="skip the 2B = --big run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--skip-naive", action="store_true", help="skip the eager and compiled naive loss"
    )
    p.add_argument(
        "--tiles", help="compare tile shapes instead, e.g. 256x256,256x1024 (rows x columns)"
    )
    p.add_argument("--threads", type=int, default=2, help="threads for --tiles (default 2)")
    p.add_argument(
        "--bank", help="memory-bank (keys) mode instead, B,K, e.g. 256,65536 (issue #13's figure)"
    )
    p.add_argument("--json", help="write all results to this file")
    args = p.parse_args(argv)

    if args.case:
        print(json.dumps(_run_case(json.loads(args.case))))
        return 0
    if args.bank:
        return _bank_report(args)

    import torch

    n, d = args.n, args.d
    work = 4 * n * n * d  # the symmetric algorithm's FLOPs, forward + backward
    results: dict[str, dict] = {}

    def case(
        key, provider, threads=2, n_=n, repeats=args.repeats, warmup=True, timeout=900, tile=None
    ):
        spec = {
            "provider": provider,
            "n": n_,
            "d": d,
            "threads": threads,
            "repeats": repeats,
            "warmup": warmup,
        }
        if tile:
            spec["tile"] = tile
        print(f"... {key}", file=sys.stderr, flush=True)
        results[key] = run_case(spec, timeout)

    case("mm", "mm", repeats=5)
    if args.tiles:
        return _tile_sweep(args)
    else:
        case("cpu", "cpu")
        case("cpu 1 thread", "cpu", threads=1)
        if not args.skip_naive:
            case("naive", "naive", repeats=max(2, args.repeats - 1))
            case("naive-compile", "naive-compile", repeats=max(2, args.repeats - 1))
        if not args.no_big:
            case(f"cpu 2B={args.big}", "cpu", n_=args.big, repeats=1, warmup=False, timeout=1800)
    case("mm (after)", "mm", repeats=5)

    probes = [g for key in ("mm", "mm (after)") for g in results[key].get("probe_gflops", [])]
    big = [results[key]["gflops"] for key in ("mm", "mm (after)") if "gflops" in results[key]]
    # 4096³ runs faster per FLOP than the 2048³ probe: the floor in probe units is work / ratio.
    calib = statistics.median(big) / statistics.median(probes) if big and probes else None
    floor = work / calib / 1e9 if calib else None  # in GFLOP of probe sgemm

    isa = next((r.get("isa") for r in results.values() if r.get("isa")), None)
    print(
        f"\nNT-Xent fwd+bwd, fp32, 2B = {n}, D = {d}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, elementwise kernels: {isa}"
    )
    head = (
        f"{'case':<24} {'median s':>8} {'spread s':>11} {'fwd/bwd s':>11} {'GFLOP/s':>7} "
        f"{'probe':>6} {'xfloor':>6} {'RSS+ MB':>8}"
    )
    print(head)
    print("-" * len(head))
    flops_of = {"naive": 6 * n * n * d, "naive-compile": 6 * n * n * d}
    for key, r in results.items():
        if key.startswith("mm"):
            if "gflops" in r:
                probe = statistics.median(r["probe_gflops"])
                print(
                    f"{key:<24} {_median(r):8.3f} {'':>11} {'':>11} {r['gflops']:7.1f} {probe:6.1f}  4096³ sgemm"
                )
            else:
                print(_row(key, r, None, None))
            continue
        scale = (r["n"] / n) ** 2
        print(
            _row(
                key, r, flops_of.get(r["provider"], work) * scale, floor * scale if floor else None
            )
        )
    if big:
        print(
            f"{'GEMM floor 4·N²·D':<24} {work / statistics.median(big) / 1e9:8.3f}   (at the median 4096³ rate)"
        )
    print(
        "probe: GFLOP/s of a 2048³ mm just before each timed run (the box is shared; its speed moves).\n"
        "xfloor: median of (time × probe) / (4·N²·D / calibration), the time over the GEMM floor at\n"
        "the moment of the run; ratios below use the same load-normalized costs, raw ratios beside."
    )

    cpu = results.get("cpu")
    if cpu and "error" not in cpu:
        t, nc = _median(cpu), _norm(cpu)
        print("\nratios (goal)                    normalized    raw")
        for key, goal_key, label in (
            ("naive", "naive_over_cpu", "naive eager / cpu"),
            ("naive-compile", "compile_over_cpu", "torch.compile naive / cpu"),
        ):
            r = results.get(key)
            if r and "error" not in r:
                ratio = _norm(r) / nc
                ok = "ok" if ratio >= GOALS[goal_key] else "MISS"
                print(
                    f"  {label:<26} >= {GOALS[goal_key]:<4} {ratio:8.2f}x {_median(r) / t:7.2f}x  {ok}"
                )
        if floor:
            ratio = nc / floor
            raw = t / (work / statistics.median(big) / 1e9)
            ok = "ok" if ratio <= GOALS["cpu_over_floor"] else "MISS"
            print(
                f"  {'cpu / GEMM floor':<26} <= {GOALS['cpu_over_floor']:<4} {ratio:8.2f}x {raw:7.2f}x  {ok}"
            )
        ok = "ok" if cpu["rss_growth_mb"] <= GOALS["rss_mb"] else "MISS"
        print(
            f"  {'cpu peak RSS growth, MB':<26} <= {GOALS['rss_mb']:<4.0f} {cpu['rss_growth_mb']:8.1f}            {ok}"
        )
        one = results.get("cpu 1 thread")
        if one and "error" not in one:
            print(f"  {'1 -> 2 threads speed-up':<26}         {'':>8}  {_median(one) / t:7.2f}x")
    if args.json:
        meta = {
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "n": n,
            "d": d,
            "time": time.time(),
        }
        with contextlib.suppress(OSError):
            meta["commit"] = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(__file__),
            ).stdout.strip()
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
