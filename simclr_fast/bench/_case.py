"""One benchmark case in a fresh process: ``python -m simclr_fast.bench._case '<json spec>'``.

Running every (provider, 2B, D, dtype) case in its own process keeps peaks apart: a process's
resident-set high-water mark, the allocator caches and ``torch.compile``'s caches of one case do not
leak into the next. The parent (:mod:`simclr_fast.bench.loss`) enforces the time limit by killing
this process; the memory cap is enforced here with ``RLIMIT_AS`` (CPU only: CUDA reserves address
space far beyond what it uses, and the GPU has its own limit).

The process prints one line, ``RESULT_MARKER`` followed by a JSON object, as its last line of
standard output.
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback

import torch

from simclr_fast.bench._measure import PeakMemory, cap_address_space, summarize, time_fwd_bwd
from simclr_fast.bench._providers import get_provider, make_loss

RESULT_MARKER = "SIMCLR_FAST_BENCH_RESULT "

_OOM_WORDS = (
    "out of memory",
    "not enough memory",
    "can't allocate",
    "cannot allocate",
    "std::bad_alloc",
)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in _OOM_WORDS)


def _oom_note(exc: BaseException, spec: dict) -> str:
    """A short reason: how much could not be allocated, under which cap."""
    text = str(exc)
    m = re.search(r"tried to allocate ([0-9.]+) ?(bytes|[KMG]i?B)", text)
    if m:
        scale = {
            "bytes": 1,
            "KiB": 2**10,
            "MiB": 2**20,
            "GiB": 2**30,
            "KB": 1e3,
            "MB": 1e6,
            "GB": 1e9,
        }
        size = float(m.group(1)) * scale.get(m.group(2), 1)
        if spec["device"].startswith("cuda"):
            return f"allocating {size / 2**20:.1f} MB failed on the GPU"
        cap = spec.get("rlimit_bytes")
        under = f" under the {cap / 2**20:.0f} MB cap (RLIMIT_AS)" if cap else ""
        return f"allocating {size / 2**20:.1f} MB failed{under}"
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}"


def _inputs(
    spec: dict, device: torch.device, dtype: torch.dtype, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings ``(n // 2, D)`` per view, seeded so every provider sees the same numbers."""
    gen = torch.Generator(device="cpu").manual_seed(spec["seed"])
    b = n // 2
    out0 = torch.randn(b, spec["d"], generator=gen).to(device=device, dtype=dtype).requires_grad_()
    out1 = torch.randn(b, spec["d"], generator=gen).to(device=device, dtype=dtype).requires_grad_()
    return out0, out1


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (an interrupted run leaves no orphan
    holding gigabytes). Best effort: a no-op where ``prctl`` is not available."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_case(spec: dict) -> dict:
    """Measure one case; returns the result fields (``status`` is ``ok``, ``oom`` or ``error``)."""
    if spec.get("suite") == "step":  # simclr-fast bench step: a training step, same isolation
        from simclr_fast.bench.step import run_case as run_step_case

        return run_step_case(spec)
    if spec.get("isolated", True):
        _die_with_parent()
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    result: dict = {"status": "ok"}
    if spec.get("loss", "ntxent") == "bank":  # simclr-fast bench loss --loss bank
        from simclr_fast.bench import bank

        provider = bank.get_provider(spec["provider"], spec["bank_size"])
        loss_fn = bank.make_loss(
            spec["provider"], spec["temperature"], spec["bank_size"], spec["d"], device
        )
    elif spec.get("loss") == "supcon":  # simclr-fast bench loss --loss supcon
        from simclr_fast.bench import supcon

        provider = supcon.get_provider(spec["provider"])
        loss_fn = supcon.make_loss(
            spec["provider"], spec["temperature"], spec["classes"], spec["seed"], device
        )
    else:
        provider = get_provider(spec["provider"])
        loss_fn = make_loss(spec["provider"], spec["temperature"])

    # Lazy one-time set-up outside every measurement: the thread pool, BLAS, lazily imported code.
    torch.ones(1 << 20).sum()
    torch.mm(torch.ones(256, 256), torch.ones(256, 256))
    if not provider.compiles:  # a compiled provider would compile for this shape too: skip
        a, b = _inputs({**spec, "d": spec["d"]}, device, dtype, 16)
        loss_fn(a, b).backward()
        del a, b

    out0, out1 = _inputs(spec, device, dtype, spec["n"])
    cap = spec.get("rlimit_bytes")
    if cap and device.type == "cpu":
        soft = cap_address_space(cap)
        if soft is not None:
            result["rlimit_as_bytes"] = soft
    try:
        if provider.compiles:
            t0 = time.perf_counter()
            loss_fn(out0, out1).backward()
            result["compile_s"] = time.perf_counter() - t0
        out0.grad = out1.grad = None
        with PeakMemory(device) as mem:
            loss = loss_fn(out0, out1)
            loss.backward()
        result["peak_bytes"] = mem.bytes
        result["memory_method"] = mem.method
        result["loss"] = float(loss.detach().float())
        del loss
        times = time_fwd_bwd(
            loss_fn, out0, out1, spec["repeats"], spec["min_repeats"], spec["budget_s"]
        )
        result["times"] = {k: summarize(v) for k, v in times.items()}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a result row
        if isinstance(exc, KeyboardInterrupt):
            raise
        if _is_oom(exc):
            result = {
                **result,
                "status": "oom",
                "note": _oom_note(exc, spec),
            }
        else:
            result = {
                **result,
                "status": "error",
                "note": f"{type(exc).__name__}: {str(exc)[:300]}",
                "traceback": traceback.format_exc()[-2000:],
            }
    return result


def run_case_in_child(spec: dict, conn, log_path: str | None = None) -> None:
    """Entry of a case in a forked child (forkserver): run it, send the result over ``conn``.

    The child's standard output and error go to ``log_path`` (compile warnings and the like would
    otherwise interleave with the parent's progress lines); the parent reads its tail on a crash.
    """
    import os

    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        result = run_case(spec)
    except BaseException as exc:  # noqa: BLE001 - reported as a row
        result = {
            "status": "error",
            "note": f"{type(exc).__name__}: {str(exc)[:300]}",
            "traceback": traceback.format_exc()[-2000:],
        }
    conn.send(result)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    result = run_case(spec)
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
