"""``simclr-fast check-kernels``: compile every shipped Triton kernel for sm_80/sm_90, no GPU needed.

For every kernel × launch configuration the launchers of
:mod:`simclr_fast.backends.triton_backend` can pick × target architecture × input dtype, the kernel
is compiled ahead of time with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
and its cubin is read back with the ``cuobjdump`` shipped in the Triton wheel. One row per
compilation reports:

``regs``      registers per thread (``cuobjdump --dump-resource-usage``);
``spills``    local-memory loads + stores in the SASS (``LDL``/``STL``). These kernels declare no local
              arrays, so any local-memory access is a register spill;
``smem``      shared memory per program in bytes (Triton's allocation, the launch's dynamic shared
              memory), checked against the architecture's per-block limit;
``tc``        the tensor-core instruction found in the PTX: ``mma.sync`` on sm_80, ``wgmma`` on sm_90.

The command exits 1 if any compilation fails, spills, exceeds the shared-memory limit, or if an
fp16/bf16 configuration lacks the architecture's tensor-core instruction. On sm_90 that means
``wgmma`` (a warpgroup MMA); ``mma.sync`` alone fails the check there. fp32 rows use exact FMA dot
products by design (no TF32) and are not required to have tensor-core instructions.

Kernels are compiled with the pointer arguments marked 16-byte aligned and the row strides marked
divisible by 16 (Triton's specialization for fresh torch allocations with ``D % 16 == 0``, the
common case of D = 64, 128, ...); other strides compile an unvectorized variant that is not checked.
Compilations run in ``--jobs`` worker processes and use Triton's on-disk cache, so a second run takes
seconds.

Examples:
    simclr-fast check-kernels                      # sm_80 and sm_90, all dtypes
    simclr-fast check-kernels --arch sm_90 --dtype bf16 --json report.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

ARCHS = {"sm_80": 80, "sm_90": 90}
#: dtype label -> (Triton pointer element type, tl.dot input_precision, torch dtype name)
DTYPES = {
    "fp32": ("fp32", "ieee", "float32"),
    "fp16": ("fp16", "ieee", "float16"),
    "bf16": ("bf16", "ieee", "bfloat16"),
}
#: Largest dynamic shared memory one block may use (opt-in maximum): A100 (sm_80) 163 KiB,
#: H100 (sm_90) 227 KiB (CUDA C Programming Guide, compute capability table).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TC_INSTRUCTION = {80: "mma.sync", 90: "wgmma"}
KERNELS = ("fwd", "bwd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simclr-fast check-kernels``."""
    parser.add_argument(
        "--arch",
        nargs="+",
        choices=sorted(ARCHS),
        default=sorted(ARCHS),
        help="target architectures",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        default=list(DTYPES),
        help="input dtypes",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="compiler processes (default: min(4, cores))",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as a JSON list to PATH")


def _signature(kernel: str, elem: str) -> dict[str, str]:
    ptrs = {"z_ptr": f"*{elem}", "lse_ptr": "*fp32"}
    if kernel == "bwd":
        ptrs.update({"coef_ptr": "*fp32", "out_scale_ptr": "*fp32", "dz_ptr": "*fp32"})
    ints = ["N", "D", "row_start", "row_count", "stride_z"] + (
        ["stride_dz"] if kernel == "bwd" else []
    )
    return {**ptrs, **{name: "i32" for name in ints}, "qk_scale": "fp32"}


def _worker_init() -> None:
    # Triton reads TRITON_INTERPRET when it is imported; a worker must import the compiling flavour.
    os.environ.pop("TRITON_INTERPRET", None)


def _disassemble(cubin: bytes, triton) -> tuple[str, str]:
    """``cuobjdump`` resource usage and SASS of ``cubin``, cached beside Triton's cache by content
    hash (disassembly takes ~1.5 s a kernel; Triton's own cache makes the compile itself instant)."""
    import hashlib

    key = hashlib.sha256(cubin).hexdigest()
    cache = os.path.join(triton.knobs.cache.dir, "simclr_fast_check_kernels")
    cached = os.path.join(cache, key + ".json")
    if os.path.exists(cached):
        with open(cached) as f:
            data = json.load(f)
        return data["usage"], data["sass"]
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = [
            subprocess.run(
                [os.path.join(bindir, "cuobjdump"), *flags, path],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for flags in (["--dump-resource-usage"], ["-sass"])
        ]
    # keep only the lines the report reads: resource usage, and local-memory instructions
    usage = out[0]
    sass = "\n".join(line for line in out[1].splitlines() if re.search(r"\b(?:STL|LDL)\b", line))
    try:
        os.makedirs(cache, exist_ok=True)
        tmp_path = f"{cached}.{os.getpid()}"
        with open(tmp_path, "w") as f:
            json.dump({"usage": usage, "sass": sass}, f)
        os.replace(tmp_path, cached)
    except OSError:
        pass  # a read-only cache only costs time
    return usage, sass


def compile_one(spec: dict) -> dict:
    """Compile one kernel configuration and measure its cubin (runs in a worker process)."""
    import warnings

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from simclr_fast.backends import triton_kernels

    row = dict(spec)
    kern = getattr(triton_kernels, f"_ntxent_{spec['kernel']}_kernel")
    fn = kern
    elem, precision, _ = DTYPES[spec["dtype"]]
    signature = _signature(spec["kernel"], elem)
    constexprs = {
        "BLOCK_M": spec["block_m"],
        "BLOCK_N": spec["block_n"],
        "BLOCK_D": spec["block_d"],
        "SINGLE_D": spec["single_d"],
        "INPUT_PRECISION": precision,
        "UPCAST_OPERANDS": False,
    }
    signature.update({name: "constexpr" for name in constexprs})
    if type(fn).__name__ != "JITFunction":
        raise RuntimeError(
            "check-kernels must run in a process that imported Triton without TRITON_INTERPRET=1"
        )
    aligned = [
        i
        for i, name in enumerate(fn.arg_names)
        if name.endswith("_ptr") or name.startswith("stride_")
    ]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    arch = ARCHS[spec["arch"]]
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs, attrs),
            target=GPUTarget("cuda", arch, 32),
            options={
                "num_warps": spec["num_warps"],
                "num_stages": spec["num_stages"],
                "enable_fp_fusion": True,
            },
        )
    except Exception as exc:  # report, don't crash the whole table
        row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return row
    ptx = compiled.asm["ptx"]
    usage, sass = _disassemble(compiled.asm["cubin"], triton)
    regs = re.search(r"REG:(\d+)", usage)
    static_smem = re.search(r"SHARED:(\d+)", usage)
    row.update(
        regs=int(regs.group(1)) if regs else -1,
        spills=len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\s", sass)),
        smem=int(compiled.metadata.shared) + (int(static_smem.group(1)) if static_smem else 0),
        mma_sync="mma.sync" in ptx,
        wgmma="wgmma" in ptx,
        seconds=round(time.perf_counter() - start, 1),
    )
    return row


def plan(archs: list[str], dtypes: list[str]) -> list[dict]:
    """Every (kernel, config, arch, dtype) the launchers can pick, as compile specs."""
    import torch

    from simclr_fast.backends import triton_backend

    specs = []
    for kernel in KERNELS:
        for dtype in dtypes:
            torch_dtype = getattr(torch, DTYPES[dtype][2])
            for cfg in triton_backend.all_configs(kernel, torch_dtype):
                for arch in archs:
                    specs.append(
                        dict(
                            kernel=kernel,
                            config=cfg.label(),
                            arch=arch,
                            dtype=dtype,
                            block_m=cfg.block_m,
                            block_n=cfg.block_n,
                            block_d=cfg.block_d,
                            single_d=cfg.single_d,
                            num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages,
                        )
                    )
    return specs


def verdict(row: dict) -> str:
    """``"ok"`` or the reasons the row fails the check."""
    if "error" in row:
        return "FAIL: " + row["error"]
    problems = []
    arch = ARCHS[row["arch"]]
    if row["spills"]:
        problems.append(f"{row['spills']} spill instructions")
    if row["smem"] > SMEM_LIMIT[arch]:
        problems.append(f"shared memory {row['smem']} > {SMEM_LIMIT[arch]}")
    wants_tc = row["dtype"] in ("fp16", "bf16")
    has_tc = row["wgmma"] if arch == 90 else row["mma_sync"]
    if wants_tc and not has_tc:
        problems.append(f"no {TC_INSTRUCTION[arch]} in the PTX")
    return "ok" if not problems else "FAIL: " + "; ".join(problems)


def _tc_label(row: dict) -> str:
    if "error" in row:
        return "-"
    found = [name for name, key in (("wgmma", "wgmma"), ("mma.sync", "mma_sync")) if row[key]]
    return "+".join(found) or "none"


def run(args: argparse.Namespace) -> int:
    """Compile, print the table, return 0 if every row passes, else 1."""
    specs = plan(args.arch, args.dtype)
    start = time.perf_counter()
    jobs = max(1, args.jobs)
    # Always in fresh (spawned) processes: this process may have imported Triton in interpreter
    # mode, which cannot compile. The variable is dropped from the environment the workers inherit.
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=get_context("spawn"), initializer=_worker_init
        ) as pool:
            rows = list(pool.map(compile_one, specs))
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    elapsed = time.perf_counter() - start
    header = f"{'kernel':<6} {'config':<26} {'arch':<6} {'dtype':<5} {'regs':>4} {'spills':>6} {'smem':>7} {'tc':<9} status"
    print(header)
    print("-" * len(header))
    failures = 0
    for row in rows:
        row["status"] = verdict(row)
        failures += row["status"] != "ok"
        regs = row.get("regs", "-")
        spills = row.get("spills", "-")
        smem = row.get("smem", "-")
        print(
            f"{row['kernel']:<6} {row['config']:<26} {row['arch']:<6} {row['dtype']:<5} {regs:>4} {spills:>6} "
            f"{smem:>7} {_tc_label(row):<9} {row['status']}"
        )
    print(
        f"{len(rows)} compilations, {failures} failing, {elapsed:.1f} s with {jobs} processes "
        "(ahead-of-time compile only: nothing was run on a GPU)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m simclr_fast.check_kernels``)."""
    parser = argparse.ArgumentParser(
        prog="simclr-fast check-kernels", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
