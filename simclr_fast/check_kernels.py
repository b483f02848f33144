"""``simclr-fast check-kernels``: compile the launched Triton kernels for sm_80/sm_90, no GPU needed.

The report is about the variants that actually run. Triton's JIT compiles one variant per
*specialization* of a launch: integer arguments divisible by 16 are marked ``tt.divisibility=16``,
integers equal to 1 become constants, pointers are marked 16-byte aligned, and every
``tl.constexpr`` is baked in. A variant compiled with other attributes is a different program (for
sm_90 bf16 at D = 128, the launched forward has 59 registers, 80 KiB of shared memory and a 3-stage
``cp.async`` pipeline; the same kernel with only its pointers and strides marked has 78 registers,
49 KiB and unpipelined scalar loads). So nothing here restates kernel signatures:

1. **Capture.** For every reported ``(loss, τ, dtype, D, precision)`` the public loss
   (``simclr_fast.nt_xent``, ``dcl``, ``supcon_loss``, ``memory_bank_loss`` with
   ``backend="triton"``, forward and backward) runs on CPU probe tensors of the reported shape
   (``2B = --n`` rows, ``D`` columns; a bank of :data:`MEMORY_BANK_SIZE` keys) with
   ``JITFunction.run`` replaced by a recorder: every kernel launch, whichever launcher makes it, is
   recorded with its positional arguments, constexprs and options, and nothing executes. The probe
   tensors are real allocations of realistic size (a few MB): the specialization depends on the
   integers' divisibility and the pointers' 16-byte alignment, not on memory, and torch aligns CPU
   allocations to 64 bytes and CUDA ones to at least 256, so views at the same offsets specialize
   alike on both.
2. **Specialize.** The recorded call is bound and specialized by Triton's own binder
   (``create_function_from_signature`` + ``JITFunction._pack_args``, for a ``GPUTarget`` backend):
   the signature, constexprs, attributes and options are exactly what the JIT would build.
3. **Compile** with ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=...)`` and
   read the cubin back with the ``cuobjdump`` shipped in the Triton wheel.

One row per launched variant × case × architecture (``losses`` lists the losses launching it):

``kernel``              the launched kernel, named from its function (``_ntxent_fwd_kernel`` →
                        ``forward``, ``_ntxent_bwd_kernel`` → ``backward``; others likewise);
``arch``, ``dtype``, ``D``, ``temperature``, ``precision``
                        the target and the reported case; ``precision`` is
                        ``torch.get_float32_matmul_precision()`` during the probe for fp32 inputs
                        (``"highest"`` or ``"high"``), ``"-"`` for fp16/bf16;
``specialization``      ``"launched"``: compiled as the launcher launches it;
``block_m``, ``block_n``, ``num_warps``, ``num_stages``
                        the launch's tile constexprs and options;
``regs``, ``spills``    registers per thread (``cuobjdump --dump-resource-usage``) and local-memory
                        loads + stores in the SASS (``LDL``/``STL``: the kernels declare no local
                        arrays, so any local-memory access is a spill);
``smem_bytes``          shared memory per program (Triton's dynamic allocation + static);
``tensor_core``         the tensor-core instruction inside the hot loop (``HGMMA...`` = sm_90
                        ``wgmma``, ``HMMA...`` = ``mma.sync``), or ``None``;
``instrs_per_element``  hot-loop SASS instructions executed per similarity element on the loop's
                        main path: instructions per thread × ``32 · num_warps`` threads /
                        ``BLOCK_M · BLOCK_N``;
``instrs_per_element_loop``
                        the same over the whole loop body, every branch counted (equal to the
                        above for a loop without branches).

The *hot loop* is the kernel's main loop in the SASS: the largest outermost loop, a loop being the
instructions from a backward branch's target to the branch. Its *main path* is the path through
one iteration with the most tensor-core instructions (FFMA where there are none) and, among those,
the fewest instructions: the iteration that takes no optional branch. In these kernels that is a
tile with no diagonal or excluded column; the masked branch runs on the 2-3 tiles per row block that
hold one (of 128 at 2B = 8192). Loops nested in the hot loop (the D chunks of a wide D) count
``ceil(D / BLOCK_D)`` times when the launch has a ``BLOCK_D`` constexpr (``nested_loops`` says how
many there were; a pipelined inner loop may peel an iteration, so this is approximate there).

The command exits 1 if any compilation fails, spills, exceeds the architecture's shared-memory limit,
or if a 16-bit variant, or an fp32 variant under ``"high"`` precision, has no tensor-core
instruction of the architecture (``HGMMA`` on sm_90, ``HMMA`` on sm_80) in its hot loop. The sm_90
bf16 D = 128 instruction goals of NT-Xent's variants (forward ≤ 8, backward ≤ 15 per element on
the main path) are printed beside the figures and, with :data:`ENFORCE_IPE_GOAL`, fail the check
when missed. Compilations run in
``--jobs`` spawned worker processes (this process may have imported Triton in interpreter mode) and
use Triton's on-disk cache, so a second run takes seconds. Nothing here runs on a GPU: every figure
is a static property of the compiled code.

Examples:
    simclr-fast check-kernels                          # sm_80 and sm_90, every dtype and D
    simclr-fast check-kernels --arch sm_90 --dtype bf16 --d 128
    simclr-fast check-kernels --json > report.json     # JSON list on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

ARCHS = {"sm_80": 80, "sm_90": 90}
#: dtype label -> torch dtype name
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: ``torch.set_float32_matmul_precision`` modes probed for fp32 inputs.
FP32_PRECISIONS = ("highest", "high")
#: D values reported by default: the common widths, a ragged one, one past a single D block.
DEFAULT_D = (64, 100, 128, 256)
#: Rows of the probe (2B): realistic, divisible by 16 as almost every real batch is.
DEFAULT_N = 8192
#: Temperatures probed: the launchers pick kernel modes from τ (a fixed-shift fast path for
#: moderate ``1/|τ|``), so τ is part of what is launched. 0.1 is SimCLR's usual range (0.05-0.5).
DEFAULT_TEMPERATURE = (0.1,)
#: Public losses probed. DCL and SupCon launch the NT-Xent variants (rows list every loss that
#: launches a variant); the memory bank launches the keys-mode kernels.
LOSSES = ("nt_xent", "dcl", "supcon", "memory_bank")
#: Keys of the memory-bank probe (MoCo's queue size).
MEMORY_BANK_SIZE = 65536
#: Largest dynamic shared memory one block may use (opt-in maximum): A100 (sm_80) 163 KiB,
#: H100 (sm_90) 227 KiB (CUDA C Programming Guide, compute capability table).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
#: The tensor-core SASS instruction each architecture's hot loop must hold (sm_90: wgmma).
TC_OPCODE = {80: "HMMA", 90: "HGMMA"}
#: Goals for instructions per similarity element of the variants NT-Xent launches,
#: (kernel, arch, dtype, D) -> bound (issue #15).
IPE_GOAL = {("forward", "sm_90", "bf16", 128): 8.0, ("backward", "sm_90", "bf16", 128): 15.0}
#: Whether missing an :data:`IPE_GOAL` fails the check: yes since the kernels meet the goals
#: (main path 7.6 / 11.4 on 2026-12-02, README "Triton kernels"), so a regression fails it.
ENFORCE_IPE_GOAL = True

_KERNEL_WORDS = {"fwd": "forward", "bwd": "backward"}
_LOSS_ABBREV = {"nt_xent": "ntx", "memory_bank": "bank"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simclr-fast check-kernels``."""
    parser.add_argument(
        "--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS), help="target GPUs"
    )
    parser.add_argument(
        "--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="input dtypes"
    )
    parser.add_argument(
        "--d",
        nargs="+",
        type=int,
        default=list(DEFAULT_D),
        metavar="D",
        help=f"embedding widths to report (default: {' '.join(map(str, DEFAULT_D))})",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=DEFAULT_N,
        metavar="2B",
        help=f"rows of the probe batch, 2B (default: {DEFAULT_N})",
    )
    parser.add_argument(
        "--loss",
        nargs="+",
        choices=LOSSES,
        default=list(LOSSES),
        help="public losses whose launches are checked (default: all)",
    )
    parser.add_argument(
        "--temperature",
        nargs="+",
        type=float,
        default=list(DEFAULT_TEMPERATURE),
        metavar="TAU",
        help="temperatures of the probe losses (default: 0.1; 0.01 shows the launchers' "
        "online-max path)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="compiler processes (default: min(2, cores))",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the rows as a JSON list to PATH, or to stdout without PATH (the table then "
        "goes to stderr)",
    )


def _check_args(args: argparse.Namespace) -> None:
    for d in args.d:
        if d < 1:
            raise ValueError(f"--d must be >= 1, got {d}; pass embedding widths such as 64 128")
    if args.n < 2 or args.n % 2:
        raise ValueError(f"--n is 2B, an even number >= 2, got {args.n}; e.g. --n 8192")
    for tau in args.temperature:
        if not (abs(tau) >= 1e-8 and math.isfinite(tau)):
            raise ValueError(
                f"--temperature must be finite with |τ| >= 1e-8, got {tau}; e.g. --temperature 0.1"
            )
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")


def kernel_label(fn_name: str) -> str:
    """Report name of a kernel function: ``_ntxent_fwd_kernel`` -> ``forward``."""
    name = re.sub(r"^_*(?:ntxent_)?", "", fn_name)
    name = re.sub(r"_kernel$", "", name)
    return "_".join(_KERNEL_WORDS.get(word, word) for word in name.split("_"))


# ---------------------------------------------------------------------------------------------
# 1 + 2: capture the launches and specialize them like the JIT (in a worker process)
# ---------------------------------------------------------------------------------------------


def _worker_init() -> None:
    # Triton reads TRITON_INTERPRET when it is imported; a worker must import the compiling flavour.
    os.environ.pop("TRITON_INTERPRET", None)
    import warnings

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


def _record_launches(run_loss) -> list[tuple]:
    """Run ``run_loss()`` with every Triton kernel launch recorded instead of executed.

    Returns ``(jit_function, args, kwargs)`` per launch, in launch order. The triton backend is
    made to accept CPU tensors for the duration (its availability check and device check would
    otherwise ask for CUDA or the interpreter); the kernels themselves never run.
    """
    from triton.runtime.jit import JITFunction

    from simclr_fast.backends import triton_backend

    launches: list[tuple] = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    patches = [
        (JITFunction, "run", record),
        (triton_backend.TritonBackend, "unavailable_reason", lambda self, device, dtype: None),
    ]
    if hasattr(triton_backend, "_check_device"):
        patches.append((triton_backend, "_check_device", lambda *args, **kwargs: None))
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        run_loss()
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
    return launches


def _specialize(fn, args: tuple, kwargs: dict, cc: int) -> dict:
    """The JIT's compile inputs for ``fn[grid](*args, **kwargs)`` on a ``cc`` GPU (Triton 3.7–3.9).

    Mirrors ``JITFunction.run``: the same binder specializes the arguments (divisibility by 16,
    value 1, pointer alignment), ``_pack_args`` builds signature, constexprs, attrs and options.
    """
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):  # Triton 3.9; 3.7 has no such knob
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    names = list(signature)
    return dict(
        module=fn.module,
        qualname=fn.fn.__qualname__,
        cc=cc,
        signature=signature,
        constexprs=constexprs,
        attrs=attrs,
        options=dict(options.__dict__),
        # for the reader: which runtime ints the JIT marked divisible by 16 / folded as 1
        divisible_by_16=[
            names[path[0]]
            for path, vals in attrs.items()
            if len(path) == 1 and ["tt.divisibility", 16] in vals
        ],
        # the runtime (non-constexpr) integer arguments as launched: 1 -> constant, % 16 -> attr
        int_args={
            p.name: bound[p.name]
            for p in fn.params
            if not p.is_constexpr and type(bound[p.name]) is int
        },
        constexpr_values={
            names[path[0]]: value
            for path, value in constexprs.items()
            if len(path) == 1 and isinstance(value, (bool, int, float, str))
        },
    )


def _loss_call(loss: str, b: int, d: int, dtype, tau: float):
    """A function running the public ``loss`` forward + backward on ``(B, D)`` probe inputs."""
    import torch

    import simclr_fast

    gen = torch.Generator().manual_seed(0)
    out0 = torch.randn(b, d, generator=gen).to(dtype).requires_grad_(True)
    out1 = torch.randn(b, d, generator=gen).to(dtype).requires_grad_(True)
    if loss == "nt_xent":
        return lambda: simclr_fast.nt_xent(out0, out1, tau, backend="triton").backward()
    if loss == "dcl":
        from simclr_fast.dcl import dcl

        return lambda: dcl(out0, out1, tau, backend="triton").backward()
    if loss == "supcon":
        feats = torch.stack([out0.detach(), out1.detach()], dim=1).requires_grad_(True)
        labels = torch.randint(0, 100, (b,), generator=gen)
        return lambda: simclr_fast.supcon_loss(
            feats, labels, temperature=tau, backend="triton"
        ).backward()
    if loss == "memory_bank":
        bank = torch.nn.functional.normalize(torch.randn(MEMORY_BANK_SIZE, d, generator=gen), dim=1)
        return lambda: simclr_fast.memory_bank_loss(out0, out1, bank, tau, "triton").backward()
    raise ValueError(f"unknown loss {loss!r}; one of {LOSSES}")


def probe(case: dict) -> list[dict]:
    """Compile specs of every kernel launch of one loss forward + backward (runs in a worker).

    ``case``: ``loss``, ``dtype`` label, ``d``, ``n`` (2B), ``temperature``, ``precision`` and
    ``archs``.
    """
    import torch

    dtype = getattr(torch, DTYPES[case["dtype"]])
    where = dict(loss=case["loss"], dtype=case["dtype"], D=case["d"], N=case["n"])
    where.update(
        temperature=case["temperature"], precision=case["precision"], specialization="launched"
    )

    def run_loss():
        saved = torch.get_float32_matmul_precision()
        try:
            if case["precision"] != "-":
                torch.set_float32_matmul_precision(case["precision"])
            _loss_call(case["loss"], case["n"] // 2, case["d"], dtype, case["temperature"])()
        finally:
            torch.set_float32_matmul_precision(saved)

    try:
        launches = _record_launches(run_loss)
        if not launches:
            raise RuntimeError("the loss launched no Triton kernel")
    except Exception as exc:  # a row saying why, for every architecture
        error = f"probe: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return [dict(where, kernel="-", arch=arch, error=error) for arch in case["archs"]]
    specs = []
    for fn, args, kwargs in launches:
        for arch in case["archs"]:
            spec = _specialize(fn, args, kwargs, ARCHS[arch])
            spec.update(
                kernel=kernel_label(fn.__name__),
                arch=arch,
                dtype=case["dtype"],
                D=case["d"],
                N=case["n"],
                loss=case["loss"],
                temperature=case["temperature"],
                precision=case["precision"],
            )
            specs.append(spec)
    return specs


# ---------------------------------------------------------------------------------------------
# 3: compile and read the cubin (in a worker process)
# ---------------------------------------------------------------------------------------------


def _cuobjdump(cubin: bytes, triton) -> tuple[str, str]:
    """``cuobjdump`` resource usage and SASS of ``cubin``, cached beside Triton's cache by content."""
    key = hashlib.sha256(cubin).hexdigest()
    cache = os.path.join(triton.knobs.cache.dir, "simclr_fast_check_kernels")
    cached = os.path.join(cache, key + ".v2.json")
    if os.path.exists(cached):
        with open(cached) as f:
            data = json.load(f)
        return data["usage"], data["sass"]
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage, sass = (
            subprocess.run(
                [os.path.join(bindir, "cuobjdump"), *flags, path],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for flags in (["--dump-resource-usage"], ["-sass"])
        )
    try:
        os.makedirs(cache, exist_ok=True)
        tmp_path = f"{cached}.{os.getpid()}"
        with open(tmp_path, "w") as f:
            json.dump({"usage": usage, "sass": sass}, f)
        os.replace(tmp_path, cached)
    except OSError:
        pass  # a read-only cache only costs time
    return usage, sass


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def parse_sass(sass: str) -> list[tuple[int, str]]:
    """``(address, instruction text)`` of every instruction in ``cuobjdump -sass`` output."""
    out = []
    for line in sass.splitlines():
        m = _SASS_LINE.match(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2)))
    return out


def _opcode(text: str) -> str:
    words = text.split()
    if words and words[0].startswith("@"):  # predicate
        words = words[1:]
    return words[0] if words else ""


def _branch_target(text: str) -> int | None:
    m = re.search(r"\b0x([0-9a-f]+)\b", text)
    return int(m.group(1), 16) if m else None


def _main_path(body: list[tuple[int, str, int]], end: int) -> tuple[int, list[str]] | None:
    """Instructions and opcodes of the main path through one iteration of a loop body.

    ``body``: ``(address, text, weight)`` of the loop's instructions, in address order, from the
    loop head to its backward branch at ``end``. Paths follow forward branches and fall-throughs
    (backward branches of nested loops are not taken: their bodies carry their trip count as
    ``weight``). The main path holds the most tensor-core instructions (FFMA where there are none)
    and, among those, the fewest instructions: an iteration that takes no optional branch (in these
    kernels, a tile that needs no diagonal or exclusion mask).
    """
    index = {addr: i for i, (addr, _, _) in enumerate(body)}
    has_mma = any(_opcode(t).split(".")[0] in ("HGMMA", "HMMA") for _, t, _ in body)
    math_ops = ("HGMMA", "HMMA") if has_mma else ("FFMA",)
    best: list[tuple[int, int] | None] = [None] * len(body)  # (math, -instructions)
    prev: list[int | None] = [None] * len(body)

    def score(i):
        _, text, weight = body[i]
        return (weight if _opcode(text).split(".")[0] in math_ops else 0, -weight)

    best[0] = score(0)
    for i, (addr, text, _) in enumerate(body):
        if best[i] is None or addr == end:
            continue
        op = _opcode(text)
        conditional = text.startswith("@") and not text.startswith("@PT ")
        succ = []
        if op.startswith("BRA"):
            target = _branch_target(text)
            if target is not None and target > addr and target in index:
                succ.append(index[target])
            if conditional:
                succ.append(i + 1)
        elif not (op.startswith("EXIT") and not conditional):
            succ.append(i + 1)
        for j in succ:
            if j < len(body):
                s_i, s_j = best[i], score(j)
                cand = (s_i[0] + s_j[0], s_i[1] + s_j[1])
                if best[j] is None or cand > best[j]:
                    best[j], prev[j] = cand, i
    last = index[end]
    if best[last] is None:
        return None
    opcodes, i = [], last
    while i is not None:
        opcodes.append(_opcode(body[i][1]))
        i = prev[i]
    return -best[last][1], sorted(set(opcodes))


def hot_loop(instrs: list[tuple[int, str]], inner_trips: int = 1) -> dict | None:
    """The main loop of a kernel's SASS and what one iteration executes.

    A loop is the address range from a backward branch's target to the branch. The hot loop is the
    outermost loop with the most instructions; instructions of loops nested inside it count
    ``inner_trips`` times per nesting level. Its main path is found by :func:`_main_path`.

    Args:
        instrs: the output of :func:`parse_sass`.
        inner_trips: iterations of each nested loop per iteration of the hot loop.

    Returns:
        ``None`` without a loop, else a dict: ``start``, ``end`` (addresses), ``instructions``
        (per thread per iteration along the main path, nested loops weighted), ``loop_instructions``
        (the whole body, every branch counted, nested loops weighted), ``static`` (instructions in
        the range), ``nested_loops``, ``opcodes`` (on the main path, each once) and
        ``loop_opcodes`` (in the range, each once).
    """
    loops = []
    for addr, text in instrs:
        if _opcode(text).startswith("BRA"):
            target = _branch_target(text)
            if target is not None and target < addr:
                loops.append((target, addr))
    if not loops:
        return None

    def inside(a, b):  # loop a strictly inside loop b
        return a != b and b[0] <= a[0] and a[1] <= b[1]

    outer = [lp for lp in loops if not any(inside(lp, other) for other in loops)]
    count = {lp: sum(lo <= a <= hi for a, _ in instrs) for lp in outer for lo, hi in [lp]}
    start, end = max(outer, key=lambda lp: (count[lp], -lp[0]))
    nested = [lp for lp in loops if inside(lp, (start, end))]
    body = [
        (addr, text, inner_trips ** sum(lo <= addr <= hi for lo, hi in nested))
        for addr, text in instrs
        if start <= addr <= end
    ]
    weighted = sum(w for _, _, w in body)
    loop_opcodes = sorted({_opcode(text) for _, text, _ in body})
    path = _main_path(body, end) or (weighted, loop_opcodes)
    return dict(
        start=start,
        end=end,
        instructions=path[0],
        loop_instructions=weighted,
        static=count[(start, end)],
        nested_loops=len(nested),
        opcodes=path[1],
        loop_opcodes=loop_opcodes,
    )


def compile_one(spec: dict) -> dict:
    """Compile one specialized launch and measure its cubin (runs in a worker process)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = importlib.import_module(spec["module"])
    for part in spec["qualname"].split("."):
        fn = getattr(fn, part)
    if type(fn).__name__ != "JITFunction":
        raise RuntimeError(
            "check-kernels must run in a process that imported Triton without TRITON_INTERPRET=1"
        )
    consts = spec["constexprs"]
    names = list(spec["signature"])
    named = {names[p[0]]: v for p, v in consts.items() if len(p) == 1}
    opts = spec["options"]
    row = dict(
        kernel=spec["kernel"],
        arch=spec["arch"],
        dtype=spec["dtype"],
        D=spec["D"],
        precision=spec["precision"],
        specialization="launched",
        N=spec["N"],
        temperature=spec["temperature"],
        block_m=named.get("BLOCK_M"),
        block_n=named.get("BLOCK_N"),
        num_warps=opts.get("num_warps"),
        num_stages=opts.get("num_stages"),
        divisible_by_16=spec["divisible_by_16"],
        int_args=spec["int_args"],
        constexprs=spec["constexpr_values"],
    )
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(fn, spec["signature"], consts, spec["attrs"]),
            target=GPUTarget("cuda", spec["cc"], 32),
            options=opts,
        )
    except Exception as exc:  # report it in the table, don't crash the whole run
        row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return row
    usage, sass = _cuobjdump(compiled.asm["cubin"], triton)
    instrs = parse_sass(sass)
    regs = re.search(r"REG:(\d+)", usage)
    static_smem = re.search(r"SHARED:(\d+)", usage)
    trips = 1
    if isinstance(named.get("BLOCK_D"), int) and not isinstance(named.get("BLOCK_D"), bool):
        trips = max(1, math.ceil(spec["D"] / named["BLOCK_D"]))
    loop = hot_loop(instrs, trips)
    tc = None
    ipe = ipe_loop = None
    if loop is not None:
        tc = next((op for op in loop["opcodes"] if op.split(".")[0] in ("HGMMA", "HMMA")), None)
        if row["block_m"] and row["block_n"] and row["num_warps"]:
            threads = 32 * row["num_warps"]
            elements = row["block_m"] * row["block_n"]
            ipe = round(loop["instructions"] * threads / elements, 2)
            ipe_loop = round(loop["loop_instructions"] * threads / elements, 2)
    row.update(
        regs=int(regs.group(1)) if regs else None,
        spills=sum(_opcode(t).split(".")[0] in ("LDL", "STL") for _, t in instrs),
        smem_bytes=int(compiled.metadata.shared)
        + (int(static_smem.group(1)) if static_smem else 0),
        tensor_core=tc,
        instrs_per_element=ipe,
        instrs_per_element_loop=ipe_loop,
        hot_loop_instructions=loop["instructions"] if loop else None,
        nested_loops=loop["nested_loops"] if loop else None,
        seconds=round(time.perf_counter() - start, 1),
    )
    return row


# ---------------------------------------------------------------------------------------------
# Verdict, table, entry point
# ---------------------------------------------------------------------------------------------


def wants_tensor_cores(row: dict) -> bool:
    """16-bit inputs, and fp32 under ``"high"`` precision, must run on tensor cores."""
    return row["dtype"] in ("fp16", "bf16") or (
        row["dtype"] == "fp32" and row["precision"] == "high"
    )


def ipe_goal(row: dict) -> float | None:
    """The instructions-per-element goal of ``row``'s case, if it has one (NT-Xent's variants)."""
    if "nt_xent" not in row.get("losses", ["nt_xent"]):
        return None
    from simclr_fast.backends.triton_backend import FIXED_SHIFT_MAX_INV_TAU

    tau = row.get("temperature")
    if tau is not None and 1.0 / abs(tau) > FIXED_SHIFT_MAX_INV_TAU:
        return None  # the goal is the fixed-shift hot loop's; |τ| < 0.025 runs the online fallback
    return IPE_GOAL.get((row["kernel"], row["arch"], row["dtype"], row["D"]))


def verdict(row: dict, enforce_goal: bool = ENFORCE_IPE_GOAL) -> str:
    """``"ok"`` or ``"FAIL: "`` and the reasons the row fails the check."""
    if "error" in row:
        return "FAIL: " + row["error"]
    problems = []
    cc = ARCHS[row["arch"]]
    if row["spills"]:
        problems.append(f"{row['spills']} spill instructions")
    if row["regs"] is None:
        problems.append("no register count in the cubin")
    if row["smem_bytes"] > SMEM_LIMIT[cc]:
        problems.append(f"shared memory {row['smem_bytes']} > {SMEM_LIMIT[cc]}")
    if wants_tensor_cores(row):
        tc = row["tensor_core"] or ""
        if tc.split(".")[0] != TC_OPCODE[cc]:
            problems.append(f"no {TC_OPCODE[cc]} in the hot loop (found {tc or 'none'})")
    goal = ipe_goal(row)
    if enforce_goal and goal is not None:
        ipe = row["instrs_per_element"]
        if ipe is None or ipe > goal:
            problems.append(f"{ipe} instructions per element > goal {goal}")
    return "ok" if not problems else "FAIL: " + "; ".join(problems)


def plan(args: argparse.Namespace) -> list[dict]:
    """The probe cases: one per (τ, dtype, D, precision), each probed for every architecture."""
    cases = []
    for loss, tau in itertools.product(args.loss, args.temperature):
        for dtype in args.dtype:
            for d in args.d:
                for precision in FP32_PRECISIONS if dtype == "fp32" else ("-",):
                    cases.append(
                        dict(
                            loss=loss,
                            dtype=dtype,
                            d=d,
                            n=args.n,
                            temperature=tau,
                            precision=precision,
                            archs=args.arch,
                        )
                    )
    return cases


def _compile_key(spec: dict) -> str:
    keep = ("module", "qualname", "cc", "signature", "constexprs", "attrs", "options")
    return repr([spec[k] for k in keep])


_COLUMNS = (
    ("kernel", 9),
    ("arch", 5),
    ("dtype", 5),
    ("D", 4),
    ("temperature", 5),
    ("precision", 9),
    ("block_m", 4),
    ("block_n", 4),
    ("num_warps", 2),
    ("num_stages", 2),
    ("regs", 4),
    ("spills", 6),
    ("smem_bytes", 6),
    ("tensor_core", 24),
    ("instrs_per_element", 6),
    ("instrs_per_element_loop", 6),
    ("losses", 14),
)
_HEADERS = {
    "temperature": "tau",
    "block_m": "BM",
    "block_n": "BN",
    "num_warps": "w",
    "num_stages": "s",
}
_HEADERS.update(smem_bytes="smem", instrs_per_element="i/el", tensor_core="tensor core in hot loop")
_HEADERS.update(instrs_per_element_loop="loop")


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table with a status column."""
    header = " ".join(f"{_HEADERS.get(k, k):<{w}}" for k, w in _COLUMNS) + " status"
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for key, width in _COLUMNS:
            value = row.get(key)
            if key == "smem_bytes" and value is not None:
                value = f"{value / 1024:.0f}K"
            if key == "losses" and value is not None:
                value = ",".join(_LOSS_ABBREV.get(v, v) for v in value)
            cells.append(f"{'-' if value is None else value!s:<{width}}")
        status = row["status"]
        goal = ipe_goal(row)
        if goal is not None and row.get("instrs_per_element") is not None:
            met = row["instrs_per_element"] <= goal
            status += f" (goal <= {goal:g}/el: {'met' if met else 'NOT met'})"
        lines.append(" ".join(cells) + " " + status)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Capture, compile, print the table (and JSON); 0 if every row passes, else 1."""
    _check_args(args)
    start = time.perf_counter()
    jobs = args.jobs
    # Always in fresh (spawned) processes: this process may have imported Triton in interpreter
    # mode, which cannot compile. The variable is dropped from the environment workers inherit.
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=get_context("spawn"), initializer=_worker_init
        ) as pool:
            specs = [spec for specs in pool.map(probe, plan(args)) for spec in specs]
            unique = list({_compile_key(s): s for s in specs if "error" not in s}.values())
            compiled = dict(zip(map(_compile_key, unique), pool.map(compile_one, unique)))
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    rows = []
    merged: dict[tuple, dict] = {}  # one row per variant and case, listing the losses launching it
    for spec in specs:
        if "error" in spec:  # the probe itself failed
            rows.append(dict(spec, losses=[spec["loss"]], status=verdict(spec)))
            continue
        case = (spec["dtype"], spec["D"], spec["temperature"], spec["precision"])
        key = (_compile_key(spec), *case)
        if key in merged:
            if spec["loss"] not in merged[key]["losses"]:
                merged[key]["losses"].append(spec["loss"])
            continue
        row = dict(compiled[_compile_key(spec)])
        row.update(dict(zip(("dtype", "D", "temperature", "precision"), case)))
        row["losses"] = [spec["loss"]]
        row["status"] = verdict(row)
        merged[key] = row
        rows.append(row)
    failures = sum(row["status"] != "ok" for row in rows)
    elapsed = time.perf_counter() - start
    table_out = sys.stderr if args.json == "-" else sys.stdout
    print(format_table(rows), file=table_out)
    print(
        f"{len(rows)} launched variants ({len(unique)} distinct compilations) of "
        f"{', '.join(args.loss)} at 2B = {args.n}, "
        f"{failures} failing, {elapsed:.1f} s with {jobs} processes. Ahead-of-time compile only: "
        "nothing ran on a GPU.",
        file=table_out,
    )
    if args.json == "-":
        json.dump(rows, sys.stdout, indent=1)
        print()
    elif args.json:
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
