"""``simclr-fast bench dist``: the distributed loss, traffic and wall time across processes.

Two ways to give every rank the negatives of all ranks with exact gradients are compared:

``fused/<backend>``
    :func:`simclr_fast.distributed.gathered_nt_xent`: forward all_gathers the ``2B × D``
    normalized local rows; backward all_gathers ``3 · 2B`` floats per rank (each row's shift,
    log-sum-exp and weight, the weight carrying the rank's ``grad_output``) and recomputes the
    local tiles.
``gather-layer/naive``
    An all_gather whose backward all-reduces the gradient of the whole gathered ``2BW × D``
    tensor (:class:`simclr_fast.distributed.GatherWithGrad`: the same traffic as a layer that
    gathers the two views separately and all-reduces ``W·B·D`` twice), then the naive loss on the
    ``2B × 2BW`` logits differentiated by autograd: ``backend="reference"``.

Bytes are counted from the collective sizes, for the bandwidth-optimal ring algorithms (what NCCL's
rings send; gloo may send more): an all_gather of a ``c``-byte chunk per rank sends ``(W − 1)·c``
bytes per rank, an all_reduce of ``S`` bytes sends ``2·(W − 1)/W · S``. Both methods also
all_gather 5 int64 per step (the rank agreement check).

Times are measured: ``W`` processes are spawned on this machine (gloo over 127.0.0.1, one thread
each unless ``--threads``), each step starts after a barrier, a step's time is the slowest rank's,
and the table shows the median over ``--steps`` steps after ``--warmup``. ``comm/...`` rows time
the collectives alone (same sizes, no loss arithmetic).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import torch

from simclr_fast.bench._measure import summarize
from simclr_fast.bench._results import fmt_ms, render_table

BASELINE = "gather-layer/naive"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``bench dist`` flags on ``parser``."""
    parser.add_argument(
        "--worlds",
        type=_positive_int,
        nargs="+",
        default=[2, 4],
        help="process counts W (default 2 4)",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        nargs="+",
        default=[256],
        help="pairs per rank B (default 256)",
    )
    parser.add_argument(
        "--dim", type=_positive_int, default=128, help="embedding size D (default 128)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="fused backends to run (default: torch, and cpu when built)",
    )
    parser.add_argument("--steps", type=_positive_int, default=7, help="timed steps (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: cores // W, at least 1)",
    )
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument(
        "--bytes-only",
        action="store_true",
        help="print the analytic traffic table without spawning processes",
    )


# ------------------------------------------------------------------------------------------ bytes


def traffic_bytes(method: str, world: int, b: int, d: int, elem: int = 4) -> dict[str, float]:
    """Bytes one rank sends per step (ring algorithms), forward and backward, for ``method``.

    ``method`` is ``"fused"`` or ``"gather-layer"``; ``elem`` is the bytes of one gathered
    element (4 for fp32). Returns ``{"fwd": ..., "bwd": ..., "total": ...}``.

    Examples:
        >>> traffic_bytes("fused", world=2, b=4, d=8)["bwd"]  # 3·2B floats from the other rank
        96.0
        >>> traffic_bytes("gather-layer", world=2, b=4, d=8)["bwd"]  # all_reduce of 2·8·8 floats
        512.0
    """
    n = 2 * b
    meta = (world - 1) * 5 * 8
    fwd = meta + (world - 1) * n * d * elem
    if method == "fused":
        bwd = (world - 1) * 3 * n * elem
    elif method == "gather-layer":
        bwd = 2 * (world - 1) / world * (world * n * d * elem)
    else:
        raise ValueError(f"method must be 'fused' or 'gather-layer', got {method!r}")
    return {"fwd": float(fwd), "bwd": float(bwd), "total": float(fwd + bwd)}


# ------------------------------------------------------------------------------------------ worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_times(fn, steps: int, warmup: int) -> list[tuple[float, float]]:
    """``(fwd_ms, bwd_ms)`` per timed step, each the slowest rank's (all ranks get the same list)."""
    import torch.distributed as dist

    out = []
    for i in range(warmup + steps):
        dist.barrier()
        t = fn()
        t = torch.tensor(t, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if i >= warmup:
            out.append(tuple(t.tolist()))
    return out


def _loss_step(out0, out1, temperature, backend):
    from simclr_fast import nt_xent

    def step() -> list[float]:
        a = out0.detach().requires_grad_(True)
        c = out1.detach().requires_grad_(True)
        t0 = time.perf_counter()
        loss = nt_xent(a, c, temperature, backend=backend, gather_distributed=True)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        return [(t1 - t0) * 1e3, (t2 - t1) * 1e3]

    return step


def _comm_step(method: str, world: int, b: int, d: int):
    """The collectives of one step of ``method`` alone, with the real sizes."""
    import torch.distributed as dist

    from simclr_fast.distributed import _all_gather_into

    n = 2 * b
    meta, meta_all = torch.zeros(5, dtype=torch.int64), torch.empty(5 * world, dtype=torch.int64)
    z, z_all = torch.randn(n, d), torch.empty(world * n, d)
    small, small_all = torch.randn(3 * n), torch.empty(world * 3 * n)
    grad = torch.randn(world * n, d)

    def step() -> list[float]:
        t0 = time.perf_counter()
        _all_gather_into(meta_all, meta, None)
        _all_gather_into(z_all, z, None)
        t1 = time.perf_counter()
        if method == "fused":
            _all_gather_into(small_all, small, None)
        else:
            dist.all_reduce(grad)
        t2 = time.perf_counter()
        return [(t1 - t0) * 1e3, (t2 - t1) * 1e3]

    return step


def _worker(rank: int, world: int, port: int, cfg: dict, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(cfg["threads"])
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        results = []
        for b in cfg["batch"]:
            g = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
            out0 = torch.randn(b, cfg["dim"], generator=g)
            out1 = torch.randn(b, cfg["dim"], generator=g)
            cases = [
                (f"fused/{name}", _loss_step(out0, out1, cfg["temperature"], name))
                for name in cfg["backends"]
            ]
            cases.append((BASELINE, _loss_step(out0, out1, cfg["temperature"], "reference")))
            cases += [
                (f"comm/{m}", _comm_step(m, world, b, cfg["dim"]))
                for m in ("fused", "gather-layer")
            ]
            for provider, fn in cases:
                times = _step_times(fn, cfg["steps"], cfg["warmup"])
                results.append({"provider": provider, "b": b, "times": times})
        if rank == 0:
            queue.put(results)
    finally:
        dist.destroy_process_group()


def _run_world(world: int, cfg: dict) -> list[dict]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(world, _free_port(), cfg, queue), nprocs=world, join=True)
    return queue.get()


# ------------------------------------------------------------------------------------------ driver


def _default_backends() -> list[str]:
    import simclr_fast

    return [b for b in ("torch", "cpu") if b in simclr_fast.available_backends("cpu")]


def run_cases(
    worlds: list[int],
    batch: list[int],
    dim: int,
    backends: list[str] | None = None,
    steps: int = 7,
    warmup: int = 2,
    threads: int | None = None,
    temperature: float = 0.5,
    measure: bool = True,
) -> list[dict]:
    """Traffic (analytic) and, if ``measure``, wall time (gloo, spawned processes) for every case.

    Returns one row per metric in the long format of :mod:`simclr_fast.bench._results`
    (``provider``, ``n`` = global rows ``2BW``, ``d``, ``metric``, ``value``, ``unit``, spread
    columns; ``world`` and ``b_per_rank`` go to ``extra``).
    """
    backends = list(backends) if backends is not None else _default_backends()
    rows: list[dict] = []

    def base(provider: str, world: int, b: int) -> dict:
        return {
            "provider": provider,
            "n": 2 * b * world,
            "d": dim,
            "dtype": "float32",
            "status": "ok",
            "temperature": temperature,
            "world": world,
            "b_per_rank": b,
            "process_group": "gloo",
        }

    for world in worlds:
        for b in batch:
            for method in ("fused", "gather-layer"):
                traffic = traffic_bytes(method, world, b, dim)
                for part in ("fwd", "bwd", "total"):
                    rows.append(
                        {
                            **base(f"{method} (analytic)", world, b),
                            "metric": f"bytes_sent_per_rank_{part}",
                            "value": traffic[part],
                            "unit": "B",
                            "note": "ring-algorithm count from the collective sizes",
                        }
                    )
        if not measure:
            continue
        cfg = {
            "batch": batch,
            "dim": dim,
            "backends": backends,
            "steps": steps,
            "warmup": warmup,
            "threads": threads or max(1, (os.cpu_count() or 1) // world),
            "temperature": temperature,
        }
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        print(f"W={world}: spawning {world} processes ...", file=sys.stderr, flush=True)
        for res in _run_world(world, cfg):
            times = res["times"]
            for metric, samples in (
                ("fwd_ms", [t[0] for t in times]),
                ("bwd_ms", [t[1] for t in times]),
                ("step_ms", [t[0] + t[1] for t in times]),
            ):
                s = summarize(samples)
                rows.append(
                    {
                        **base(res["provider"], world, res["b"]),
                        "metric": metric,
                        "value": s["median"],
                        "unit": "ms",
                        "q1": s["q1"],
                        "q3": s["q3"],
                        "min": s["min"],
                        "max": s["max"],
                        "samples": s["n"],
                        "threads": cfg["threads"],
                        "load_avg_1min": load,
                        "note": "slowest rank per step, median over steps",
                    }
                )
    return rows


def _fmt_bytes(x: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def format_table(rows: list[dict]) -> str:
    """The traffic table and, when measured, the time table."""
    out = []
    keys = sorted({(r["world"], r["b_per_rank"], r["d"]) for r in rows})
    traffic = {
        (r["world"], r["b_per_rank"], r["provider"], r["metric"]): r["value"]
        for r in rows
        if r["unit"] == "B"
    }
    body = []
    for world, b, d in keys:
        for method in ("fused", "gather-layer"):
            p = f"{method} (analytic)"
            vals = [
                traffic.get((world, b, p, f"bytes_sent_per_rank_{k}"))
                for k in ("fwd", "bwd", "total")
            ]
            if None in vals:
                continue
            body.append([method, str(world), str(b), str(d), *(_fmt_bytes(v) for v in vals)])
        f_bwd = traffic.get((world, b, "fused (analytic)", "bytes_sent_per_rank_bwd"))
        g_bwd = traffic.get((world, b, "gather-layer (analytic)", "bytes_sent_per_rank_bwd"))
        f_tot = traffic.get((world, b, "fused (analytic)", "bytes_sent_per_rank_total"))
        g_tot = traffic.get((world, b, "gather-layer (analytic)", "bytes_sent_per_rank_total"))
        if f_bwd and g_bwd:
            body.append(
                [
                    "  ratio gather-layer / fused",
                    "",
                    "",
                    "",
                    "",
                    f"{g_bwd / f_bwd:.0f}x",
                    f"{g_tot / f_tot:.2f}x",
                ]
            )
    out.append("Bytes sent per rank per step (ring algorithms, fp32):")
    out.append(render_table(["method", "W", "B/rank", "D", "forward", "backward", "total"], body))
    timed = [r for r in rows if r["unit"] == "ms"]
    if timed:
        med = {(r["world"], r["b_per_rank"], r["provider"], r["metric"]): r for r in timed}
        providers = list(dict.fromkeys(r["provider"] for r in timed))
        body = []
        for world, b, d in keys:
            base = med.get((world, b, BASELINE, "step_ms"))
            for p in providers:
                step = med.get((world, b, p, "step_ms"))
                if step is None:
                    continue
                fwd = med[(world, b, p, "fwd_ms")]["value"]
                bwd = med[(world, b, p, "bwd_ms")]["value"]
                spread = f"{fmt_ms(step['q1'])}-{fmt_ms(step['q3'])}"
                vs = ""
                if base is not None and not p.startswith("comm/") and p != BASELINE:
                    vs = f"{base['value'] / step['value']:.2f}x"
                body.append(
                    [
                        p,
                        str(world),
                        str(b),
                        str(d),
                        fmt_ms(fwd),
                        fmt_ms(bwd),
                        fmt_ms(step["value"]),
                        spread,
                        vs,
                    ]
                )
        load = timed[0].get("load_avg_1min")
        out.append("")
        out.append(
            "Wall time per step, gloo on 127.0.0.1, slowest rank, median (ms)"
            + (
                f"; 1-min load average at start {load:.1f} on {os.cpu_count()} cores"
                if load is not None
                else ""
            )
            + ":"
        )
        out.append(
            render_table(
                [
                    "provider",
                    "W",
                    "B/rank",
                    "D",
                    "fwd",
                    "bwd",
                    "step",
                    "step q1-q3",
                    "vs gather-layer",
                ],
                body,
            )
        )
    return "\n".join(out)


def bench_rows(args: argparse.Namespace) -> list[dict]:
    """Run the benchmark from parsed flags, print the tables, return the result rows."""
    rows = run_cases(
        worlds=args.worlds,
        batch=args.batch,
        dim=args.dim,
        backends=args.backends,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        temperature=args.temperature,
        measure=not args.bytes_only,
    )
    print(format_table(rows))
    return rows


def run(args: argparse.Namespace) -> int:
    """Entry point of ``simclr-fast bench dist`` (prints the tables; exit code 0 on success)."""
    return 0 if bench_rows(args) else 1


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="python -m simclr_fast.bench.dist", description=__doc__.split("\n")[0]
    )
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
