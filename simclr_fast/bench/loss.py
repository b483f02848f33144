"""``simclr-fast bench loss``: the fused NT-Xent against the naive loss — time, memory, scaling.

For every provider (the naive loss eager and under ``torch.compile``, pytorch-metric-learning's and
lightly's NT-Xent when installed, and every fused simclr_fast backend that runs on the device) and
every case (2B × D × dtype) it measures, each case in its own process:

- forward, backward and forward+backward time: median and quartiles over the timed iterations,
  after warm-up (see :mod:`simclr_fast.bench._measure` for the clocks);
- peak memory beyond the inputs of one forward+backward;
- achieved GFLOP/s on one common yardstick, the naive loss's ``6·(2B)²·D`` FLOPs (plus each
  provider's own count in the files), and that rate as a % of a ``torch.mm`` measured in the same run;
- speed-up against the naive loss (eager) and against ``torch.compile`` of it.

A case over the memory cap, out of memory or over the time limit is a result row, not a crash, and
a provider that failed at some 2B is not retried at larger 2B. Output: a table on stdout, rows
appended to ``<out>/results.csv`` and ``<out>/results.jsonl``, and ``<out>/loss.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from simclr_fast.bench import _providers as P
from simclr_fast.bench._measure import machine_info, matmul_rate, total_ram_bytes
from simclr_fast.bench._results import append_rows, fmt_ms, fmt_num, render_table

#: The default run: three sizes that finish in a few minutes on 2 CPU cores and already show the
#: naive loss's memory growing 16× per 4× in 2B.
DEFAULT_SIZES = (1024, 4096, 16384)
#: ``--full``: every power of two from 1024 to 65536 (naive needs ≈ 69 GB at 65536: it stops
#: fitting on most machines; the fused backends carry on).
FULL_SIZES = tuple(1 << k for k in range(10, 17))
#: Default memory cap on CPU, as a fraction of physical RAM (see ``_mem_cap_bytes``).
DEFAULT_RAM_FRACTION = 0.5
DTYPES = ("float32", "float16", "bfloat16", "float64")
#: ``--loss``: which loss the cases run (each mode keeps its providers in its own module).
LOSSES = ("ntxent", "bank", "supcon")
#: The FLOP count the GFLOP/s column divides by, per ``--loss`` (``ntxent``'s where not listed).
_YARDSTICK = {"bank": "4*B*K*D"}
FAILED = ("oom", "over-cap", "timeout")

#: Default time limit of one case (its own process: start-up, warm-up, memory pass, timed
#: iterations). Chosen from the naive loss at 2B = 16384 on the 2-core dev machine (4.4 s per
#: forward+backward, docs/design.md §2) plus ``torch.compile``'s compile time there (tens of seconds).
DEFAULT_TIMEOUT_S = 300.0
FULL_TIMEOUT_S = 1800.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _even_size(text: str) -> int:
    value = _positive_int(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"2B must be even (two views of B images), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The loss benchmark's flags (all optional: no arguments runs the default cases)."""
    g = parser.add_argument_group("loss benchmark: cases")
    g.add_argument(
        "--sizes",
        type=_even_size,
        nargs="+",
        metavar="2B",
        help=f"rows 2B of the similarity matrix (default {' '.join(map(str, DEFAULT_SIZES))})",
    )
    g.add_argument(
        "--full",
        action="store_true",
        help=f"scaling sweep 2B = {FULL_SIZES[0]}..{FULL_SIZES[-1]} (powers of two), "
        f"time limit {FULL_TIMEOUT_S:.0f} s per case",
    )
    g.add_argument(
        "--dims",
        type=_positive_int,
        nargs="+",
        default=[128],
        metavar="D",
        help="embedding widths D (default 128)",
    )
    g.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=DTYPES,
        help="input dtypes (default float32)",
    )
    g.add_argument(
        "--providers",
        nargs="+",
        metavar="NAME",
        help=f"subset of {', '.join(P.BASELINES + P.FUSED)} (default: all that run here)",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)",
    )
    g.add_argument("--temperature", type=float, default=0.5, help="tau (default 0.5)")
    g.add_argument(
        "--loss",
        choices=LOSSES,
        default="ntxent",
        help="ntxent (default): in-batch NT-Xent over 2B rows; bank: NTXentLoss with a memory bank, "
        "B = 2B/2 anchors against --bank-size keys (simclr_fast.bench.bank)",
    )
    g.add_argument(
        "--bank-size",
        type=_positive_int,
        default=None,
        metavar="K",
        help="keys in the memory bank for --loss bank (default 65536)",
    )
    g.add_argument(
        "--classes",
        type=_positive_int,
        default=None,
        metavar="C",
        help="classes of the B samples for --loss supcon: SupCon L_out over 2B rows, two views "
        "per sample, against NT-Xent on the same backend (default 100; simclr_fast.bench.supcon)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the random embeddings (default 0)")
    m = parser.add_argument_group("loss benchmark: measurement")
    m.add_argument(
        "--repeats", type=_positive_int, default=5, help="timed iterations per case (default 5)"
    )
    m.add_argument(
        "--min-repeats",
        type=_positive_int,
        default=3,
        help="timed iterations always run, whatever --budget says (default 3)",
    )
    m.add_argument(
        "--budget",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="stop timing a case after this many seconds once --min-repeats are done (default 10)",
    )
    m.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=f"time limit of one case, process start included; over it the case is recorded as "
        f"'timeout' (default {DEFAULT_TIMEOUT_S:.0f}, {FULL_TIMEOUT_S:.0f} with --full)",
    )
    cap = m.add_mutually_exclusive_group()
    cap.add_argument(
        "--mem-cap-gb",
        type=_positive_float,
        help="memory a case may use beyond its inputs (default: 50%% of RAM on CPU, the GPU's memory on CUDA)",
    )
    cap.add_argument("--mem-cap-mb", type=_positive_float, help="the same in MB")
    m.add_argument(
        "--mem-check",
        choices=("both", "estimate", "rlimit", "none"),
        default="both",
        help="how the cap is enforced: 'estimate' skips a case whose modelled footprint is over it, "
        "'rlimit' runs it under RLIMIT_AS (CPU) so allocations past it fail; default both",
    )
    m.add_argument(
        "--isolation",
        choices=("fork", "subprocess", "none"),
        default="fork",
        help="how each case gets its own process: 'fork' from a server that has imported torch "
        "(default), 'subprocess' (a fresh interpreter per case), 'none' (in this process: "
        "debugging only; no time limit, no memory cap, peaks may mix)",
    )
    m.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help=f"torch threads per case (default: torch's default here, {torch.get_num_threads()})",
    )
    m.add_argument(
        "--matmul-size",
        type=_positive_int,
        default=None,
        help="side of the square torch.mm that measures the device's matmul rate (default 4096 CPU, 8192 CUDA)",
    )
    o = parser.add_argument_group("loss benchmark: output")
    o.add_argument(
        "--out",
        default="bench-results",
        help="directory for results.csv, results.jsonl and loss.png (default bench-results)",
    )
    o.add_argument("--no-save", action="store_true", help="print the table only")
    o.add_argument("--no-plot", action="store_true", help="do not draw loss.png")


# --------------------------------------------------------------------------------------- planning


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def _mem_cap_bytes(args: argparse.Namespace, device: torch.device) -> int:
    if args.mem_cap_mb is not None:
        return int(args.mem_cap_mb * 2**20)
    if args.mem_cap_gb is not None:
        return int(args.mem_cap_gb * 2**30)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    # Half the RAM: the footprint models behind the pre-run check are approximate (±25 %), and a
    # case near the cap must not push a (possibly shared) machine into swap or the OOM killer.
    ram = total_ram_bytes()
    return int(DEFAULT_RAM_FRACTION * ram) if ram else 8 * 2**30


def _providers(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> tuple[list[str], list[str]]:
    """(providers to run, notes on the ones skipped)."""
    known, reason_of = list(P.BASELINES + P.FUSED), P.unavailable_reason
    if getattr(args, "loss", "ntxent") == "bank":
        from simclr_fast.bench import bank

        known, reason_of = list(bank.PROVIDERS), bank.unavailable_reason
    elif getattr(args, "loss", "ntxent") == "supcon":
        from simclr_fast.bench import supcon

        known, reason_of = list(supcon.PROVIDERS), supcon.unavailable_reason
    wanted = args.providers or known
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise SystemExit(f"--providers: unknown {unknown}; choose from {', '.join(known)}")
    run, notes = [], []
    for name in wanted:
        reason = reason_of(name, device, dtype)
        if reason is None:
            run.append(name)
        elif args.providers or name not in P.FUSED or device.type == "cpu" and name != "triton":
            # say why a baseline or a CPU backend is missing; "triton" off CUDA is expected
            notes.append(f"{name} ({dtype}) skipped: {reason}")
    return run, notes


# ---------------------------------------------------------------------------------------- running


def _run_subprocess(spec: dict, timeout: float) -> dict:
    """Run one case in a fresh interpreter; turn every way it can end into a result dict."""
    from simclr_fast.bench._case import RESULT_MARKER

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "simclr_fast.bench._case", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {
            "status": "timeout",
            "note": f"over the {timeout:.0f} s time limit per case (--timeout)",
        }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return _died(proc.returncode, (proc.stderr or proc.stdout))


def _died(returncode: int | None, output: str) -> dict:
    if returncode == -signal.SIGKILL:
        return {"status": "oom", "note": "killed by SIGKILL (the kernel's out-of-memory killer?)"}
    tail = " | ".join(output.strip().splitlines()[-3:])[-300:]
    return {"status": "crashed", "note": f"exit code {returncode}: {tail}"}


class _ForkRunner:
    """Runs each case in a child forked from a server that has already imported torch and simclr_fast.

    The children are fresh processes (own memory, own high-water mark, own caches) without paying
    the interpreter start and ``import torch`` (seconds on a small machine) once per case.
    """

    def __init__(self, preload: list[str]):
        import multiprocessing as mp
        import tempfile

        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload)
        self.tmp = tempfile.TemporaryDirectory(prefix="simclr-fast-bench-")

    def __call__(self, spec: dict, timeout: float) -> dict:
        from simclr_fast.bench._case import run_case_in_child

        log = os.path.join(self.tmp.name, "case.log")
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=run_case_in_child, args=(spec, send, log), daemon=True)
        proc.start()
        send.close()
        result = None
        try:
            if recv.poll(timeout):
                result = recv.recv()
        except EOFError:  # the child died without answering
            pass
        except BaseException:  # Ctrl-C / SIGTERM: take the case down with us
            proc.kill()
            raise
        finally:
            recv.close()
        if result is None and proc.is_alive():
            proc.kill()
            proc.join()
            return {
                "status": "timeout",
                "note": f"over the {timeout:.0f} s time limit per case (--timeout)",
            }
        proc.join()
        if result is None:
            try:
                output = Path(log).read_text(errors="replace")
            except OSError:
                output = ""
            return _died(proc.exitcode, output)
        return result

    def close(self) -> None:
        self.tmp.cleanup()


def _bank_size(args: argparse.Namespace) -> int:
    from simclr_fast.bench.bank import DEFAULT_BANK_SIZE

    return getattr(args, "bank_size", None) or DEFAULT_BANK_SIZE


def _classes(args: argparse.Namespace) -> int:
    from simclr_fast.bench.supcon import DEFAULT_CLASSES

    return getattr(args, "classes", None) or DEFAULT_CLASSES


def _get_provider(name: str, args: argparse.Namespace) -> P.Provider:
    """The provider ``name`` of the loss that ``--loss`` selects."""
    if getattr(args, "loss", "ntxent") == "bank":
        from simclr_fast.bench import bank

        return bank.get_provider(name, _bank_size(args))
    if getattr(args, "loss", "ntxent") == "supcon":
        from simclr_fast.bench import supcon

        return supcon.get_provider(name)
    return P.get_provider(name)


def _run_in_process(spec: dict, timeout: float) -> dict:
    """Debug/smoke mode: the case runs here (no time limit, no RLIMIT_AS, peaks may mix)."""
    from simclr_fast.bench._case import run_case

    return run_case({**spec, "rlimit_bytes": None, "isolated": False})


def _predicted_over_time(
    provider: P.Provider, n: int, last: tuple[int, float] | None, spec: dict, timeout: float
) -> str | None:
    """Why a case would surely pass the time limit, judged from the same provider at a smaller 2B.

    One forward+backward is scaled by ``(2B / 2B_prev)²`` (``³`` for a provider with cubic memory,
    whose work is cubic too) and multiplied by the calls the case makes (the memory pass, a compile
    call, at least ``min_repeats`` timed ones). ``None`` when the case may finish, or nothing ran before.
    """
    if last is None:
        return None
    n0, ms0 = last
    power = 3 if provider.bytes_per_n3 else 2
    per_call_s = ms0 / 1e3 * (n / n0) ** power
    calls = 1 + int(provider.compiles) + spec["min_repeats"]
    predicted = per_call_s * calls
    if predicted <= timeout:
        return None
    return (
        f"not run: predicted ~{predicted:.0f} s > the {timeout:.0f} s limit per case "
        f"({ms0:.0f} ms per fwd+bwd at 2B = {n0}, time ∝ (2B)^{power}, {calls} calls; --timeout to raise it)"
    )


def _case_summary(c: dict) -> str:
    if c["status"] == "ok":
        return f"fwd+bwd {fmt_ms(c['fwdbwd_ms'])} ms, peak {fmt_num(c['peak_mb'])} MB"
    return f"{c['status']}: {c.get('note', '')}"


def _flatten(provider: P.Provider, spec: dict, result: dict) -> dict:
    """Per-case record: the spec, the status, and the times/memory flattened to scalars."""
    case = {
        "provider": provider.name,
        "n": spec["n"],
        "d": spec["d"],
        "dtype": spec["dtype"],
        "status": result.get("status", "error"),
        "note": result.get("note", ""),
    }
    if case["status"] != "ok":
        return case
    for k, s in result["times"].items():
        case[f"{k}_ms"] = s["median"]
        for stat in ("q1", "q3", "min", "max"):
            case[f"{k}_{stat}"] = s[stat]
        case["samples"] = s["n"]
    case["peak_mb"] = result["peak_bytes"] / 2**20
    case["memory_method"] = result.get("memory_method", "")
    case["loss"] = result.get("loss")
    if "compile_s" in result:
        case["compile_s"] = result["compile_s"]
    if spec.get("loss") == "bank":
        from simclr_fast.bench import bank

        useful = sum(bank.useful_flops(spec["n"], spec["d"], spec["bank_size"]))
    else:
        useful = sum(P.useful_flops(spec["n"], spec["d"]))
    own = sum(provider.own_flops(spec["n"], spec["d"]))
    case["gflops_useful"] = useful / (case["fwdbwd_ms"] / 1e3) / 1e9
    case["gflops_own"] = own / (case["fwdbwd_ms"] / 1e3) / 1e9
    return case


def _derive(cases: list[dict], matmul: dict[str, dict]) -> list[str]:
    """Add % of matmul peak and speed-ups to every ok case; return warnings on loss mismatches."""
    warnings = []
    by_key = {(c["provider"], c["n"], c["d"], c["dtype"]): c for c in cases}
    for c in cases:
        if c["status"] != "ok":
            continue
        mm = matmul.get(c["dtype"])
        if mm:
            c["pct_matmul_peak"] = 100.0 * c["gflops_useful"] / mm["gflops_best"]
        for base, key in (("naive", "speedup_vs_naive"), ("naive-compile", "speedup_vs_compile")):
            ref = by_key.get((base, c["n"], c["d"], c["dtype"]))
            if ref is None:
                continue
            if ref["status"] == "ok":
                c[key] = ref["fwdbwd_ms"] / c["fwdbwd_ms"]
            elif ref["status"] in FAILED:
                c[key] = ref["status"]  # the baseline could not run this case
        naive = by_key.get(("naive", c["n"], c["d"], c["dtype"]))
        if (
            naive
            and not c["provider"].startswith("ntxent-")  # --loss supcon's yardstick: another loss
            and naive["status"] == "ok"
            and c["loss"] is not None
            and naive["loss"] is not None
        ):
            tol = 1e-3 if c["dtype"] in ("float32", "float64") else 5e-2
            diff = abs(c["loss"] - naive["loss"]) / max(abs(naive["loss"]), 1e-12)
            if diff > tol:
                warnings.append(
                    f"warning: {c['provider']} 2B={c['n']} D={c['d']} {c['dtype']}: loss {c['loss']:.6g} differs "
                    f"from the naive loss {naive['loss']:.6g} by {diff:.1e} (relative)"
                )
    return warnings


def collect(args: argparse.Namespace) -> dict:
    """Run the benchmark; return ``{"cases", "matmul", "meta", "notes", "warnings"}`` (no printing of the table)."""
    device = _device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    sizes = sorted(set(args.sizes or (FULL_SIZES if args.full else DEFAULT_SIZES)))
    timeout = args.timeout or (FULL_TIMEOUT_S if args.full else DEFAULT_TIMEOUT_S)
    cap = _mem_cap_bytes(args, device)
    meta = machine_info(device, threads)
    meta["mem_cap_bytes"] = cap

    notes: list[str] = []
    plan: list[tuple[str, int, int, str]] = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        names, skipped = _providers(args, device, dtype)
        notes += skipped
        for d in args.dims:
            for n in sizes:
                plan += [(name, n, d, dtype_name) for name in names]
    if not plan:
        raise SystemExit("nothing to run: no provider is available for these options")

    matmul = {}
    mm_size = args.matmul_size or (8192 if device.type == "cuda" else 4096)
    for dtype_name in args.dtypes:
        size = (
            mm_size
            if dtype_name in ("float32", "float64") or device.type == "cuda"
            else min(mm_size, 2048)
        )
        _log(
            f"measuring the matmul rate: torch.mm {size}x{size} {dtype_name} on {meta['device_name']} ..."
        )
        matmul[dtype_name] = matmul_rate(device, getattr(torch, dtype_name), size)

    if args.isolation == "fork":
        preload = ["torch", "simclr_fast", "simclr_fast.bench._case"]
        if any(name == "pml" for name, *_ in plan):
            preload.append("pytorch_metric_learning.losses")
        runner = _ForkRunner(preload)
    else:
        runner = _run_subprocess if args.isolation == "subprocess" else _run_in_process
    cases: list[dict] = []
    failed_at: dict[tuple[str, int, str], tuple[int, str]] = {}
    last_ok: dict[tuple[str, int, str], tuple[int, float]] = {}
    check_estimate = args.mem_check in ("both", "estimate")
    use_rlimit = args.mem_check in ("both", "rlimit") and device.type == "cpu"
    for i, (name, n, d, dtype_name) in enumerate(plan, 1):
        provider = _get_provider(name, args)
        spec = {
            "provider": name,
            "n": n,
            "d": d,
            "dtype": dtype_name,
            "device": str(device),
            "temperature": args.temperature,
            "seed": args.seed,
            "repeats": args.repeats,
            "min_repeats": min(args.min_repeats, args.repeats),
            "budget_s": args.budget,
            "threads": threads,
            "rlimit_bytes": cap if use_rlimit else None,
            "loss": getattr(args, "loss", "ntxent"),
        }
        if spec["loss"] == "bank":
            spec["bank_size"] = _bank_size(args)
        if spec["loss"] == "supcon":
            spec["classes"] = _classes(args)
        t0 = time.perf_counter()
        est = provider.estimate_bytes(n, d, getattr(torch, dtype_name))
        prior = failed_at.get((name, d, dtype_name))
        if prior is not None:
            result = {"status": prior[1], "note": f"not run: {prior[1]} already at 2B = {prior[0]}"}
        elif check_estimate and est > cap:
            result = {
                "status": "over-cap",
                "note": f"needs ~{_fmt_bytes(est)} (estimated) > memory cap {_fmt_bytes(cap)}",
            }
        elif (
            late := _predicted_over_time(
                provider, n, last_ok.get((name, d, dtype_name)), spec, timeout
            )
        ) is not None:
            result = {"status": "timeout", "note": late}
        else:
            result = runner(spec, timeout)
        case = _flatten(provider, spec, result)
        case["estimate_mb"] = est / 2**20
        if case["status"] in FAILED and prior is None:
            failed_at[(name, d, dtype_name)] = (n, case["status"])
        if case["status"] == "ok":
            last_ok[(name, d, dtype_name)] = (n, case["fwdbwd_ms"])
        cases.append(case)
        _log(
            f"[{i}/{len(plan)}] {name:<13} 2B={n:<6} D={d} {dtype_name}: {_case_summary(case)} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        if case["status"] in ("error", "crashed") and result.get("traceback"):
            _log(result["traceback"])
    if isinstance(runner, _ForkRunner):
        runner.close()
    warnings = _derive(cases, matmul)
    if getattr(args, "loss", "ntxent") == "supcon":
        from simclr_fast.bench import supcon

        warnings += supcon.conclusions(cases)
    return {
        "cases": cases,
        "matmul": matmul,
        "meta": meta,
        "notes": notes,
        "warnings": warnings,
        "loss": getattr(args, "loss", "ntxent"),
    }


def command_line() -> str:
    """The command as a user would type it (``simclr-fast ...`` for the console script/``-m``)."""
    import shlex

    head = Path(sys.argv[0]).name if sys.argv else ""
    if head in ("simclr-fast", "__main__.py"):
        return shlex.join(["simclr-fast", *sys.argv[1:]])
    return shlex.join(sys.argv)


def _fmt_bytes(x: float) -> str:
    return f"{x / 2**30:.1f} GB" if x >= 2**30 else f"{x / 2**20:.0f} MB"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- output


def _speedup(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value  # the baseline's status: oom / over-cap / timeout
    return f"{value:.2f}x"


def format_table(result: dict) -> str:
    header = [
        "provider",
        "2B",
        "D",
        "dtype",
        "fwd ms",
        "bwd ms",
        "fwd+bwd ms",
        "peak MB",
        "GFLOP/s",
        "% mm",
        "vs naive",
        "vs compile",
    ]
    order = {p: i for i, p in enumerate(P.BASELINES + P.FUSED)}
    rows = []
    cases = sorted(
        result["cases"], key=lambda c: (c["d"], c["dtype"], c["n"], order.get(c["provider"], 99))
    )
    for c in cases:
        key = [c["provider"], str(c["n"]), str(c["d"]), c["dtype"]]
        if c["status"] != "ok":
            label = {
                "oom": "OUT OF MEMORY",
                "over-cap": "OVER MEMORY CAP",
                "timeout": "TIMEOUT",
            }.get(c["status"], c["status"].upper())
            rows.append(key + [f"{label}: {c['note']}"])
            continue
        spread = (c["fwdbwd_q3"] - c["fwdbwd_q1"]) / 2
        rows.append(
            key
            + [
                fmt_ms(c["fwd_ms"]),
                fmt_ms(c["bwd_ms"]),
                f"{fmt_ms(c['fwdbwd_ms'])} ±{fmt_ms(spread)}",
                fmt_num(c["peak_mb"]),
                fmt_num(c["gflops_useful"]),
                fmt_num(c.get("pct_matmul_peak")),
                _speedup(c.get("speedup_vs_naive")),
                _speedup(c.get("speedup_vs_compile")),
            ]
        )
    return render_table(header, rows, align="llrl" + "r" * 8)


def format_header(result: dict, args: argparse.Namespace) -> str:
    meta = result["meta"]
    lines = [
        f"simclr-fast bench loss: {meta['device_name']} ({meta['device']}, {meta['threads']} threads), "
        f"torch {meta['torch']}"
        + (f", triton {meta['triton']}" if meta["triton"] else "")
        + f", commit {meta['git_commit']}, tau {args.temperature}",
    ]
    if getattr(args, "loss", "ntxent") == "bank":
        lines.append(
            f"loss: NTXentLoss with a memory bank of K = {_bank_size(args)} keys; B = 2B/2 anchors; "
            "one call = bank snapshot + loss + enqueue; GFLOP/s on the naive 4*B*K*D FLOPs"
        )
    if getattr(args, "loss", "ntxent") == "supcon":
        lines.append(
            f"loss: SupCon L_out over 2B rows (B samples x 2 views, {_classes(args)} classes); "
            "ntxent-<backend>: NT-Xent on the same rows and backend"
        )
    for dtype_name, mm in result["matmul"].items():
        lines.append(
            f"matmul yardstick: torch.mm {mm['size']}x{mm['size']} {dtype_name} = "
            f"{mm['gflops_best']:.1f} GFLOP/s (best of 3; median {mm['gflops_median']:.1f})"
        )
    lines.append(
        f"memory cap per case: {_fmt_bytes(meta['mem_cap_bytes'])} (--mem-check {args.mem_check})"
    )
    lines += result["notes"]
    return "\n".join(lines)


def format_footer(result: dict) -> str:
    lines = [
        "times: median over the timed iterations, ± half the interquartile range; fwd+bwd is one iteration's "
        "forward plus its backward.",
        "peak MB: peak memory of one forward+backward beyond its inputs "
        f"({next((c['memory_method'] for c in result['cases'] if c.get('memory_method')), 'n/a')}).",
        f"GFLOP/s: the naive loss's {_YARDSTICK.get(result.get('loss'), '6*(2B)^2*D')} FLOPs per "
        "forward+backward, for every provider (useful work; "
        "each provider's own count is in the CSV); % mm: that rate over the torch.mm rate above.",
        "vs naive / vs compile: the naive loss's (eager / torch.compile) fwd+bwd time over this one's "
        "(>1: faster); 'oom'/'over-cap': the baseline did not fit.",
    ]
    lines += _conclusions(result["cases"])
    lines += result["warnings"]
    return "\n".join(lines)


def _conclusions(cases: list[dict]) -> list[str]:
    """Plain sentences per (D, dtype): where each baseline stops fitting, and at every 2B the
    fastest fused backend against the naive loss (time and memory)."""
    out = []
    for d, dtype in sorted({(c["d"], c["dtype"]) for c in cases}, key=str):
        sel = [c for c in cases if c["d"] == d and c["dtype"] == dtype]
        fused = [c for c in sel if c["provider"] in P.FUSED and c["status"] == "ok"]
        for base in P.BASELINES:
            runs = sorted((c for c in sel if c["provider"] == base), key=lambda c: c["n"])
            first_fail = next((c for c in runs if c["status"] in FAILED), None)
            if first_fail is None:
                continue
            carry = sorted({c["n"] for c in fused if c["n"] >= first_fail["n"]})
            where = (
                f"the fused backends still run at 2B = {', '.join(map(str, carry))}"
                if carry
                else "no fused backend ran there"
            )
            out.append(
                f"D={d} {dtype}: {base} stops fitting at 2B = {first_fail['n']} ({first_fail['status']}); {where}."
            )
        naive = {c["n"]: c for c in sel if c["provider"] == "naive" and c["status"] == "ok"}
        parts = []
        for n in sorted({c["n"] for c in fused}):
            best = min((c for c in fused if c["n"] == n), key=lambda c: c["fwdbwd_ms"])
            if n in naive:
                ref = naive[n]
                parts.append(
                    f"2B={n}: {best['provider']} {ref['fwdbwd_ms'] / best['fwdbwd_ms']:.2f}x naive's speed, "
                    f"{fmt_num(best['peak_mb'])} vs {fmt_num(ref['peak_mb'])} MB"
                )
            else:
                parts.append(
                    f"2B={n}: {best['provider']} {fmt_ms(best['fwdbwd_ms'])} ms, {fmt_num(best['peak_mb'])} MB"
                )
        if parts:
            out.append(f"D={d} {dtype}, fastest fused backend: " + "; ".join(parts) + ".")
    return out


def to_rows(result: dict, run_id: str, timestamp: str, args: argparse.Namespace) -> list[dict]:
    """Long-format rows (one per case × metric) for :func:`simclr_fast.bench._results.append_rows`."""
    meta = result["meta"]
    common = {
        "timestamp": timestamp,
        "run_id": run_id,
        "suite": "loss",
        "temperature": args.temperature,
        "seed": args.seed,
        "loss": getattr(args, "loss", "ntxent"),
        **({"bank_size": _bank_size(args)} if getattr(args, "loss", "ntxent") == "bank" else {}),
        **({"classes": _classes(args)} if getattr(args, "loss", "ntxent") == "supcon" else {}),
        "command": command_line(),
        **{k: v for k, v in meta.items() if k != "mem_cap_bytes"},
    }
    rows = []
    for dtype_name, mm in result["matmul"].items():
        rows.append(
            {
                **common,
                "provider": "torch.mm",
                "n": mm["size"],
                "d": mm["size"],
                "dtype": dtype_name,
                "status": "ok",
                "metric": "matmul_gflops",
                "value": mm["gflops_best"],
                "unit": "GFLOP/s",
                "note": f"best of 3; median {mm['gflops_median']:.2f}",
            }
        )
    for c in result["cases"]:
        key = {
            **common,
            "provider": c["provider"],
            "n": c["n"],
            "d": c["d"],
            "dtype": c["dtype"],
            "status": c["status"],
        }
        if c["status"] != "ok":
            rows.append(
                {
                    **key,
                    "metric": "status",
                    "value": "",
                    "unit": "",
                    "note": c.get("note", ""),
                    "estimate_mb": round(c["estimate_mb"], 1),
                    "mem_cap_mb": round(meta["mem_cap_bytes"] / 2**20, 1),
                }
            )
            continue
        for k in ("fwd", "bwd", "fwdbwd"):
            rows.append(
                {
                    **key,
                    "metric": f"{k}_ms",
                    "value": c[f"{k}_ms"],
                    "unit": "ms",
                    "q1": c[f"{k}_q1"],
                    "q3": c[f"{k}_q3"],
                    "min": c[f"{k}_min"],
                    "max": c[f"{k}_max"],
                    "samples": c["samples"],
                }
            )
        scalar = [
            ("peak_mb", c["peak_mb"], "MB", c.get("memory_method", "")),
            ("gflops_useful", c["gflops_useful"], "GFLOP/s", "naive's 6*N^2*D per fwd+bwd"),
            (
                "gflops_own",
                c["gflops_own"],
                "GFLOP/s",
                "this provider's own FLOP count per fwd+bwd",
            ),
            ("pct_matmul_peak", c.get("pct_matmul_peak"), "%", "gflops_useful / matmul_gflops"),
            ("loss", c.get("loss"), "", ""),
            ("compile_s", c.get("compile_s"), "s", "first call: torch.compile + one fwd+bwd"),
        ]
        for name in ("speedup_vs_naive", "speedup_vs_compile"):
            v = c.get(name)
            if isinstance(v, float):
                scalar.append((name, v, "x", "baseline fwd+bwd median / this one's"))
            elif isinstance(v, str):
                scalar.append((name, None, "x", f"baseline {v}"))
        for metric, value, unit, note in scalar:
            if value is None and not note.startswith("baseline"):
                continue
            rows.append({**key, "metric": metric, "value": value, "unit": unit, "note": note})
    return rows


def _raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    """Run, print the table, append the rows, draw the plot; 0 unless a case failed unexpectedly."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_on_sigterm)  # clean up the running case's process too
    start = time.perf_counter()
    now = _dt.datetime.now(_dt.timezone.utc)
    timestamp = now.isoformat(timespec="seconds")
    run_id = now.strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    result = collect(args)
    print()
    print(format_header(result, args))
    print()
    print(format_table(result))
    print()
    print(format_footer(result))
    if not args.no_save:
        csv_path, jsonl_path = append_rows(to_rows(result, run_id, timestamp, args), args.out)
        print(f"rows appended to {csv_path} and {jsonl_path} (run_id {run_id})")
        if not args.no_plot:
            from simclr_fast.bench._plot import plot_cases

            meta = result["meta"]
            png = plot_cases(
                result["cases"],
                Path(args.out) / "loss.png",
                title=f"NT-Xent fwd+bwd on {meta['device_name']}, {meta['threads']} threads, "
                f"torch {meta['torch']}, commit {meta['git_commit']}",
            )
            print(f"plot written to {png}" if png else "plot skipped: matplotlib is not installed")
    print(f"finished in {time.perf_counter() - start:.0f} s")
    bad = [c for c in result["cases"] if c["status"] in ("error", "crashed")]
    return 1 if bad or not any(c["status"] == "ok" for c in result["cases"]) else 0
