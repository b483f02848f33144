"""``simclr-fast bench step``: peak memory and time of one SimCLR training step against the batch.

Three variants of the same step (two views, encoder + projection head, NT-Xent, SGD update):

- ``naive``: one forward of both views with autograd, the naive loss (``backend="reference"``,
  the ``2B × 2B`` matrix), backward;
- ``fused``: the same with the fused loss (``--loss-backend``, ``auto`` by default);
- ``cached``: :func:`simclr_fast.cached_backward` with the fused loss, ``--micro-batch`` images
  per micro-batch: the encoder's activations of one micro-batch at a time.

Each (variant, batch) case runs in its own process with the loss benchmark's machinery
(:mod:`simclr_fast.bench._case`: a memory cap by ``RLIMIT_AS`` on CPU, a time limit; an
allocation failure is a result row). Peak memory is that of the first full-size step beyond the
inputs, the model and its gradients (a warm-up step at a small batch comes first); time is the
median of the following steps. The largest batch of each variant that ran under the cap is
printed after the table; rows go to ``<out>/results.csv``/``.jsonl`` and the figure to
``<out>/step.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

import torch

from simclr_fast.bench._results import append_rows, fmt_ms, fmt_num, render_table
from simclr_fast.bench.loss import _positive_float, _positive_int

VARIANTS = ("naive", "fused", "cached")
DEFAULT_BATCHES = (256, 512, 1024, 2048, 4096)
MODELS = ("small-cnn", "resnet18", "resnet50")
#: Default micro-batch of the cached variant (images; two views each: 512 rows per forward).
#: A choice, not a tuned constant: large enough that convolutions stay efficient on CPU.
DEFAULT_MICRO_BATCH = 256
DEFAULT_TIMEOUT_S = 900.0
FAILED = ("oom", "over-cap", "timeout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The step benchmark's flags (all optional)."""
    g = parser.add_argument_group("step benchmark: cases")
    g.add_argument(
        "--batches",
        type=_positive_int,
        nargs="+",
        default=list(DEFAULT_BATCHES),
        metavar="B",
        help=f"images per step (two views each; default {' '.join(map(str, DEFAULT_BATCHES))})",
    )
    g.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="naive: plain step, naive loss; fused: plain step, fused loss; cached: "
        "cached_backward with the fused loss (default: all three)",
    )
    g.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="encoder of simclr_fast.train.models with the CIFAR stem and a 128-d projection head "
        "(default: resnet18 on CUDA, small-cnn on CPU)",
    )
    g.add_argument("--image-size", type=_positive_int, default=32, help="pixels (default 32)")
    g.add_argument(
        "--micro-batch",
        type=_positive_int,
        default=DEFAULT_MICRO_BATCH,
        help=f"images per micro-batch of the cached variant (default {DEFAULT_MICRO_BATCH})",
    )
    g.add_argument(
        "--loss-backend",
        default="auto",
        choices=("auto", "torch", "cpu", "triton"),
        help="fused loss backend of the fused and cached variants (default auto)",
    )
    g.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: autocast the encoder",
    )
    g.add_argument("--temperature", type=float, default=0.5, help="tau (default 0.5)")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights and images")
    g.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    m = parser.add_argument_group("step benchmark: measurement")
    m.add_argument(
        "--repeats", type=_positive_int, default=3, help="timed steps per case (default 3)"
    )
    m.add_argument(
        "--budget",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="stop timing a case after this many seconds once one timed step is done (default 60)",
    )
    m.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"time limit of one case (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    cap = m.add_mutually_exclusive_group()
    cap.add_argument(
        "--mem-cap-gb",
        type=_positive_float,
        help="memory a case may use beyond its inputs (default: 50%% of RAM on CPU, the GPU's memory on CUDA)",
    )
    cap.add_argument("--mem-cap-mb", type=_positive_float, help="the same in MB")
    m.add_argument(
        "--isolation",
        choices=("fork", "subprocess", "none"),
        default="fork",
        help="how each case gets its own process (as in bench loss; 'none': debugging only)",
    )
    m.add_argument("--threads", type=_positive_int, default=None, help="torch threads per case")
    o = parser.add_argument_group("step benchmark: output")
    o.add_argument("--out", default="bench-results", help="directory of the result files")
    o.add_argument("--no-save", action="store_true", help="print the table only")
    o.add_argument("--no-plot", action="store_true", help="do not draw step.png")


# -------------------------------------------------------------------------- one case (child)


def _build(spec: dict, device: torch.device) -> torch.nn.Module:
    from simclr_fast.train.models import SimCLRModel, build_backbone

    torch.manual_seed(spec["seed"])
    backbone = build_backbone(spec["model"], 3, spec["image_size"], prefer_torchvision=False)
    return SimCLRModel(backbone, 128).to(device)


def _views(spec: dict, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    s = spec["image_size"]
    return tuple(torch.rand(b, 3, s, s, generator=g).to(device) for _ in range(2))


def make_step(spec: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """``step(view0, view1) -> loss``: one training step of the variant ``spec["variant"]``."""
    from simclr_fast import NTXentLoss, cached_backward

    variant = spec["variant"]
    backend = "reference" if variant == "naive" else spec["loss_backend"]
    loss_fn = NTXentLoss(spec["temperature"], backend=backend)
    device_type = next(model.parameters()).device.type
    bf16 = spec["precision"] == "bf16"

    def autocast():
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)

    def step(v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        if variant == "cached":
            with autocast():
                loss = cached_backward(
                    model, (v0, v1), _outside_autocast(loss_fn, device_type), spec["micro_batch"]
                )
        else:
            with autocast():
                z0, z1 = model(torch.cat([v0, v1])).chunk(2)
            loss = loss_fn(z0, z1)
            loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _outside_autocast(loss_fn, device_type: str):
    def loss(*z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, enabled=False):
            return loss_fn(*z)

    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(spec: dict) -> dict:
    """Measure one (variant, batch) case; the result fields (``status`` ok / oom / error)."""
    import traceback

    from simclr_fast.bench._case import _die_with_parent, _is_oom, _oom_note
    from simclr_fast.bench._measure import PeakMemory, cap_address_space, summarize

    if spec.get("isolated", True):
        _die_with_parent()
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    result: dict = {"status": "ok"}
    model = _build(spec, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step = make_step(spec, model, optimizer)
    # warm-up outside every measurement: kernels, thread pool, gradient and momentum buffers
    step(*_views(spec, min(spec["batch"], 16), device))
    v0, v1 = _views(spec, spec["batch"], device)
    cap = spec.get("rlimit_bytes")
    if cap and device.type == "cpu":
        cap_address_space(cap)
    try:
        t0 = time.perf_counter()
        with PeakMemory(device) as mem:
            loss = step(v0, v1)
            _sync(device)
        first = (time.perf_counter() - t0) * 1e3
        result.update(peak_bytes=mem.bytes, memory_method=mem.method, loss=float(loss))
        times, cpu, start = [], [], time.perf_counter()
        for _ in range(spec["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            step(v0, v1)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
            if time.perf_counter() - start > spec["budget_s"]:
                break
        result["times"] = summarize(times)
        result["cpu_times"] = summarize(cpu)
        result["first_step_ms"] = first
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a result row
        if isinstance(exc, KeyboardInterrupt):
            raise
        if _is_oom(exc):
            result = {"status": "oom", "note": _oom_note(exc, spec)}
        else:
            result = {
                "status": "error",
                "note": f"{type(exc).__name__}: {str(exc)[:300]}",
                "traceback": traceback.format_exc()[-2000:],
            }
    return result


# ------------------------------------------------------------------------- the sweep (parent)


def collect(args: argparse.Namespace) -> dict:
    """Run every (variant, batch) case; ``{"cases", "meta"}``."""
    from simclr_fast.bench._measure import machine_info
    from simclr_fast.bench.loss import (
        _device,
        _ForkRunner,
        _mem_cap_bytes,
        _run_in_process,
        _run_subprocess,
    )

    device = _device(args.device)
    threads = args.threads or torch.get_num_threads()
    model = args.model or ("resnet18" if device.type == "cuda" else "small-cnn")
    cap = _mem_cap_bytes(args, device)
    meta = {**machine_info(device, threads), "mem_cap_bytes": cap, "model": model}
    if args.isolation == "fork":
        runner = _ForkRunner(["torch", "simclr_fast", "simclr_fast.bench._case"])
    else:
        runner = _run_subprocess if args.isolation == "subprocess" else _run_in_process
    cases, failed_at = [], {}
    plan = [(v, b) for b in sorted(set(args.batches)) for v in args.variants]
    try:
        for i, (variant, batch) in enumerate(plan, 1):
            spec = {
                "suite": "step",
                "variant": variant,
                "batch": batch,
                "model": model,
                "image_size": args.image_size,
                "micro_batch": args.micro_batch,
                "loss_backend": args.loss_backend,
                "precision": args.precision,
                "temperature": args.temperature,
                "seed": args.seed,
                "device": str(device),
                "threads": threads,
                "repeats": args.repeats,
                "budget_s": args.budget,
                "rlimit_bytes": cap if device.type == "cpu" else None,
            }
            t0 = time.perf_counter()
            if variant in failed_at:
                b0, status = failed_at[variant]
                result = {"status": status, "note": f"not run: {status} already at batch {b0}"}
            else:
                result = runner(spec, args.timeout)
            case = {
                "variant": variant,
                "batch": batch,
                "status": result.get("status", "error"),
                "note": result.get("note", ""),
            }
            if case["status"] == "ok":
                t = result["times"]
                case.update(
                    step_ms=t["median"],
                    cpu_ms=result["cpu_times"]["median"],
                    q1=t["q1"],
                    q3=t["q3"],
                    samples=t["n"],
                    first_step_ms=result["first_step_ms"],
                    peak_mb=result["peak_bytes"] / 2**20,
                    memory_method=result["memory_method"],
                    loss=result["loss"],
                )
            elif case["status"] in FAILED and variant not in failed_at:
                failed_at[variant] = (batch, case["status"])
            cases.append(case)
            summary = (
                f"{fmt_ms(case['step_ms'])} ms, peak {fmt_num(case['peak_mb'])} MB"
                if case["status"] == "ok"
                else f"{case['status']}: {case['note']}"
            )
            _log(
                f"[{i}/{len(plan)}] {variant:<7} batch={batch:<5}: {summary} "
                f"({time.perf_counter() - t0:.1f} s)"
            )
            if result.get("traceback"):
                _log(result["traceback"])
    finally:
        if isinstance(runner, _ForkRunner):
            runner.close()
    return {"cases": cases, "meta": meta}


def largest_fitting(cases: list[dict]) -> dict[str, int | None]:
    """Per variant, the largest batch that ran (``None``: none did)."""
    out: dict[str, int | None] = {}
    for c in cases:
        out.setdefault(c["variant"], None)
        if c["status"] == "ok":
            out[c["variant"]] = max(out[c["variant"]] or 0, c["batch"])
    return out


def format_table(result: dict) -> str:
    cases = result["cases"]
    by = {(c["variant"], c["batch"]): c for c in cases}
    header = [
        "variant",
        "batch",
        "step ms",
        "CPU ms",
        "peak MB",
        "time vs fused",
        "CPU vs fused",
        "memory vs fused",
    ]
    rows = []
    order = {v: i for i, v in enumerate(VARIANTS)}
    for c in sorted(cases, key=lambda c: (c["batch"], order[c["variant"]])):
        key = [c["variant"], str(c["batch"])]
        if c["status"] != "ok":
            rows.append(key + [f"{c['status'].upper()}: {c['note']}"])
            continue
        ref = by.get(("fused", c["batch"]))
        ok = ref is not None and ref["status"] == "ok"
        spread = (c["q3"] - c["q1"]) / 2
        rows.append(
            key
            + [
                f"{fmt_ms(c['step_ms'])} ±{fmt_ms(spread)}",
                fmt_ms(c["cpu_ms"]),
                fmt_num(c["peak_mb"]),
                f"{c['step_ms'] / ref['step_ms']:.2f}x" if ok else "-",
                f"{c['cpu_ms'] / ref['cpu_ms']:.2f}x" if ok else "-",
                f"{c['peak_mb'] / max(ref['peak_mb'], 1e-9):.3f}x" if ok else "-",
            ]
        )
    return render_table(header, rows, align="lr" + "r" * 6)


def format_header(result: dict, args: argparse.Namespace) -> str:
    meta = result["meta"]
    return (
        f"simclr-fast bench step: {meta['model']} (CIFAR stem, 128-d head) at {args.image_size} px, "
        f"two views, SGD; {meta['device_name']} ({meta['device']}, {meta['threads']} threads), "
        f"torch {meta['torch']}, commit {meta['git_commit']}\n"
        f"cached: micro-batch {args.micro_batch} images; fused loss backend {args.loss_backend}; "
        f"precision {args.precision}; memory cap per case {meta['mem_cap_bytes'] / 2**20:.0f} MB"
    )


def format_footer(result: dict) -> str:
    method = next((c["memory_method"] for c in result["cases"] if c.get("memory_method")), "n/a")
    lines = [
        "step ms: wall-clock median over the timed steps (± half the interquartile range); CPU ms: "
        "the process's CPU time per step, median (all threads: on a shared machine, the work "
        "rather than the wait); peak MB: the first full-size step beyond inputs, weights and "
        f"gradients ({method}).",
    ]
    for variant, batch in largest_fitting(result["cases"]).items():
        lines.append(
            f"largest batch under the cap, {variant}: "
            + (str(batch) if batch is not None else "none of the batches run")
        )
    return "\n".join(lines)


def to_rows(result: dict, args: argparse.Namespace) -> list[dict]:
    meta = result["meta"]
    common = {
        "suite": "step",
        "temperature": args.temperature,
        "seed": args.seed,
        "dtype": "bfloat16" if args.precision == "bf16" else "float32",
        "model": meta["model"],
        "image_size": args.image_size,
        "micro_batch": args.micro_batch,
        "loss_backend": args.loss_backend,
        "mem_cap_mb": round(meta["mem_cap_bytes"] / 2**20, 1),
    }
    rows = []
    for c in result["cases"]:
        key = {**common, "provider": c["variant"], "n": c["batch"], "status": c["status"]}
        if c["status"] != "ok":
            rows.append({**key, "metric": "status", "value": "", "note": c["note"]})
            continue
        rows.append(
            {
                **key,
                "metric": "step_ms",
                "value": c["step_ms"],
                "unit": "ms",
                "q1": c["q1"],
                "q3": c["q3"],
                "samples": c["samples"],
            }
        )
        rows.append(
            {
                **key,
                "metric": "peak_mb",
                "value": c["peak_mb"],
                "unit": "MB",
                "note": c["memory_method"],
            }
        )
        rows.append({**key, "metric": "cpu_ms", "value": c["cpu_ms"], "unit": "ms"})
        rows.append({**key, "metric": "loss", "value": c["loss"], "unit": ""})
    return rows


def plot(result: dict, path: str | Path) -> Path | None:
    """Step time and peak memory against the batch, one line per variant; ``None`` without
    matplotlib. A case that did not fit is a cross on the top edge."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases, meta = result["cases"], result["meta"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, variant in enumerate(VARIANTS):
        ok = sorted(
            (c for c in cases if c["variant"] == variant and c["status"] == "ok"),
            key=lambda c: c["batch"],
        )
        bad = [c for c in cases if c["variant"] == variant and c["status"] in FAILED]
        for ax, key in zip(axes, ("step_ms", "peak_mb")):
            if ok:
                ax.plot([c["batch"] for c in ok], [c[key] for c in ok], "o-", color=f"C{i}",
                        label=variant)  # fmt: skip
            if bad:
                ax.plot([c["batch"] for c in bad], [1.0] * len(bad), "x", color=f"C{i}",
                        markersize=10, mew=2, transform=ax.get_xaxis_transform(), clip_on=False,
                        label=f"{variant}: did not fit")  # fmt: skip
    batches = sorted({c["batch"] for c in cases})
    for ax, label in zip(axes, ("step time (ms), median", "peak memory beyond inputs (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch (images, two views each)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].axhline(meta["mem_cap_bytes"] / 2**20, color="grey", linestyle="--", label="memory cap")
    axes[1].legend(fontsize=8)
    fig.suptitle(
        f"one SimCLR step: {meta['model']} on {meta['device_name']}, {meta['threads']} threads, "
        f"commit {meta['git_commit']}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the sweep, print the table, append the rows, draw the figure; 0 unless a case failed
    for a reason other than memory or time."""
    from simclr_fast.bench.loss import command_line

    start = time.perf_counter()
    now = _dt.datetime.now(_dt.timezone.utc)
    result = collect(args)
    print()
    print(format_header(result, args))
    print()
    print(format_table(result))
    print()
    print(format_footer(result))
    if not args.no_save:
        meta = {k: v for k, v in result["meta"].items() if k not in ("mem_cap_bytes", "model")}
        defaults = {
            "timestamp": now.isoformat(timespec="seconds"),
            "run_id": now.strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}",
            "command": command_line(),
            **meta,
        }
        csv_path, jsonl_path = append_rows(to_rows(result, args), args.out, defaults)
        print(f"rows appended to {csv_path} and {jsonl_path}")
        if not args.no_plot:
            png = plot(result, Path(args.out) / "step.png")
            print(f"plot written to {png}" if png else "plot skipped: matplotlib is not installed")
    print(f"finished in {time.perf_counter() - start:.0f} s")
    bad = [c for c in result["cases"] if c["status"] in ("error", "crashed")]
    return 1 if bad or not any(c["status"] == "ok" for c in result["cases"]) else 0
