"""Clocks, memory gauges and the matmul yardstick shared by the benchmarks.

CPU times are wall-clock (:func:`time.perf_counter`) around calls that finish before they return.
CUDA times come from ``torch.cuda.Event`` pairs recorded on the current stream and read after one
synchronisation. Peak memory on CPU is the process's resident-set high-water mark (``VmHWM``),
reset just before the measured call (``/proc/self/clear_refs``), minus the resident set at that
moment; on CUDA it is ``torch.cuda.max_memory_allocated`` minus what was allocated before the call.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, quartiles, extremes and count of ``samples`` (milliseconds in, milliseconds out)."""
    s = sorted(samples)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {
        "median": statistics.median(s),
        "q1": q1,
        "q3": q3,
        "min": s[0],
        "max": s[-1],
        "n": len(s),
    }


# --------------------------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """The current resident set of this process (Linux ``VmRSS``; ``ru_maxrss`` elsewhere)."""
    kb = _status_kb("VmRSS")
    if kb is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
            1 if platform.system() == "Darwin" else 1024
        )
    return kb * 1024


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark (Linux ≥ 4.0); ``False`` where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The resident-set high-water mark: ``VmHWM`` (resettable), else ``ru_maxrss`` (since start)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
            1 if platform.system() == "Darwin" else 1024
        )
    return kb * 1024


def virtual_bytes() -> int | None:
    kb = _status_kb("VmSize")
    return None if kb is None else kb * 1024


def cap_address_space(cap_bytes: int) -> int | None:
    """Limit this process's address space to what it maps now plus ``cap_bytes`` (Linux).

    An allocation past the cap then fails with an out-of-memory error in this case's own process
    instead of swapping the machine. Returns the soft limit set, or ``None`` where the current
    size cannot be read.
    """
    import resource

    vm = virtual_bytes()
    if vm is None:
        return None
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = vm + int(cap_bytes)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return soft


class PeakMemory:
    """Measure the peak memory a block of code needs beyond what is live when it starts.

    CPU: peak resident set minus the resident set at entry; CUDA: peak allocated minus allocated
    at entry. ``self.bytes`` holds the result after the ``with`` block.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        else:
            resettable = reset_peak_rss()
            self._base = rss_bytes()
            self.method = (
                "peak RSS (VmHWM reset)" if resettable else "peak RSS (ru_maxrss, not resettable)"
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.bytes = max(0, peak_rss_bytes() - self._base)


# ---------------------------------------------------------------------------------------------- time


def time_fwd_bwd(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    out0: torch.Tensor,
    out1: torch.Tensor,
    repeats: int,
    min_repeats: int,
    budget_s: float,
) -> dict[str, list[float]]:
    """Time forward and backward of ``loss_fn`` separately, ``repeats`` times (fewer past ``budget_s``).

    Each iteration: clear the input gradients (not timed), time ``loss = loss_fn(out0, out1)``, then
    time ``loss.backward()``; fwd+bwd is their sum. Stops early once ``min_repeats`` iterations are
    done and ``budget_s`` seconds have passed. Returns milliseconds per iteration.
    """
    cuda = out0.device.type == "cuda"
    fwd, bwd = [], []
    start = time.perf_counter()
    events = []
    for i in range(repeats):
        out0.grad = out1.grad = None
        if cuda:
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            loss = loss_fn(out0, out1)
            e1.record()
            loss.backward()
            e2.record()
            events.append((e0, e1, e2))
            torch.cuda.synchronize()  # keeps the budget check honest; the events carry the times
        else:
            t0 = time.perf_counter()
            loss = loss_fn(out0, out1)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
        del loss
        if i + 1 >= min_repeats and time.perf_counter() - start > budget_s:
            break
    if cuda:
        fwd = [e0.elapsed_time(e1) for e0, e1, _ in events]
        bwd = [e1.elapsed_time(e2) for _, e1, e2 in events]
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": [f + b for f, b in zip(fwd, bwd)]}


def matmul_rate(
    device: torch.device, dtype: torch.dtype, size: int, repeats: int = 3
) -> dict[str, float]:
    """GFLOP/s of one ``size × size`` by ``size × size`` ``torch.mm`` (best and median of ``repeats``).

    The yardstick for "% of matmul peak": the rate this device reaches on the GEMM the losses are
    made of, measured in the same run, same threads, same dtype.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    flops = 2.0 * size**3
    torch.mm(a, b)  # warm-up: thread pool, BLAS/cuBLAS handles, page faults of the output
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            e0.record()
            torch.mm(a, b)
            e1.record()
            torch.cuda.synchronize(device)
            times.append(e0.elapsed_time(e1) / 1e3)
        else:
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
    return {
        "gflops_best": flops / min(times) / 1e9,
        "gflops_median": flops / statistics.median(times) / 1e9,
        "size": size,
    }


# ----------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def git_commit() -> str:
    """Short commit of the simclr_fast checkout (``+dirty`` with local changes), or ``"unknown"``."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device, threads: int) -> dict[str, object]:
    """Where and with what a result was measured: goes into every result row."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = ""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": device.type,
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "host_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "",
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
