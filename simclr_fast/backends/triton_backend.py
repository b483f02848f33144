"""``backend="triton"``: launchers for the fused Triton kernels and their ``torch.library`` ops.

Layers (STYLE.md): the kernels live in :mod:`simclr_fast.backends.triton_kernels`; this module owns
the host work and registers two opaque ops, ``simclr_fast::ntxent_fwd_triton`` and
``simclr_fast::ntxent_bwd_triton`` (the contract of :mod:`simclr_fast.backends.base`: ``shift``,
``exclude`` and ``keys``), with fake (meta) implementations so ``torch.compile(fullgraph=True)``
traces through :class:`TritonBackend` without a graph break.

Host work, per launch, with no host-device sync:

- validation (``ValueError``/``TypeError`` naming the argument and the fix);
- operand dtype: fp16/bf16 as given; fp32 follows ``torch.get_float32_matmul_precision()``
  (:func:`kernel_operand_dtype`: ``"highest"`` exact fp32, else fp16 operands on tensor cores);
- tiles (:func:`pick_config`; :func:`all_configs` and :func:`launch_flags` list every variant
  the launchers can launch) and the column split (:func:`pick_parts`) for small row grids;
- the backward's per-row and per-column factors (:func:`_backward_factors`, in fp64 on the device)
  that give one exponential per element and a per-row scaling of the 16-bit ``G`` tile;
- the launch itself, inside ``torch.cuda.device(z.device)``: Triton launches on the *current*
  device and its stream, not on the tensors' device;
- the combination of the column parts in a fixed order, and the forward's ``x = ln Σ + (C − shift)``
  in fp64 (no fp32 subtraction of two ``~1/τ``-sized numbers).

The ops are ``torch.library.custom_op`` rather than ``triton_op``: ``triton_op`` needs the kernels to
be ``JITFunction`` objects that Inductor can trace, which rules out the interpreter path the CPU CI
runs; an opaque op runs the same launcher on CUDA and under ``TRITON_INTERPRET=1``.

Environment switch:

``TRITON_INTERPRET=1``
    run the kernels with Triton's interpreter on CPU tensors (slow; for tests). Triton reads it
    once, when it is first imported (see :func:`interpreting`): set it before ``import triton``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from simclr_fast.backends.base import Backend

try:
    import triton

    from simclr_fast.backends import triton_kernels

    _TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install raising something else at import
    triton = None
    triton_kernels = None
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

#: Input dtypes the kernels take (fp64 goes to backend="torch").
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (CPU tensors) rather than compiled for CUDA.

    Triton decides when it is imported: with ``TRITON_INTERPRET=1`` in the environment at that
    moment, ``@triton.jit`` (ours and the ``triton.language`` helpers such as ``tl.max``) gives
    interpreted functions. Setting the variable later has no effect, so this looks at the kernel
    object rather than at the environment.
    """
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(triton_kernels._ntxent_fwd_kernel, InterpretedFunction)


def _interpret_reason() -> str:
    """Why CPU tensors cannot run here (the interpreter is not active), with the fix."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return (
            "TRITON_INTERPRET=1 was set after Triton was imported, and Triton reads it only at import; "
            "set it before the first `import triton` (e.g. at the top of conftest.py), or use "
            "backend='cpu' or 'torch' on CPU"
        )
    return (
        "the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for testing); "
        "use backend='cpu' or 'torch' on CPU"
    )


# ---------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration of a kernel (all compile-time constants plus warps/stages)."""

    block_m: int
    block_n: int
    block_d: int
    single_d: bool
    num_warps: int
    num_stages: int

    def label(self) -> str:
        d = f"D{self.block_d}" if self.single_d else f"D{self.block_d}xK"
        return f"M{self.block_m} N{self.block_n} {d} w{self.num_warps} s{self.num_stages}"


# Tile table: (kernel, dtype class) -> BLOCK_D choices and (BLOCK_M, BLOCK_N, num_warps, num_stages)
# per BLOCK_D. The launcher takes the smallest single-chunk BLOCK_D that holds D; wider D loops
# over chunks of `_CHUNK_D` (SINGLE_D=False). tl.dot needs every dimension >= 16.
#
# How these were chosen (ahead-of-time compile reports, `simclr-fast check-kernels` and a wider
# sweep of candidates, on the 2-core dev box, 2026-11-22; registers/spills from cuobjdump, no GPU
# timing exists for any of them):
# - fwd, fp16/bf16, BLOCK_D <= 128: M128 N64, 8 warps, 3 stages: 127 regs (sm_80) / 66 (sm_90), no
#   spills, wgmma on sm_90, 49 KiB shared at BLOCK_D 128. 4 warps at M128 needs 236 regs at
#   BLOCK_D 128 (sm_80); M128 N128 8 warps 170 regs: larger tiles were not needed to get wgmma.
#   Fixed-shift kernel, 2026-12-02 (launched specialization, D = 128): sm_90 75 regs / 80 KiB,
#   sm_80 151 regs, no spills; 7.5 SASS instructions per similarity element of an unmasked tile
#   on sm_90 (bf16; 13.1 with the masked-tile branch counted, as check-kernels does).
# - bwd, fp16/bf16: it holds the S tile, the G tile and a (BLOCK_M, BLOCK_D) fp32 accumulator.
#   Re-checked 2026-12-02 for the one-exponential kernel (AOT compile, Triton 3.9, launched
#   specialization, no GPU run): M64 N64 4 warps, 3 stages: sm_90 175 regs / 66 KiB shared at
#   BLOCK_D 128, 159 regs at 64; sm_80 244 / 218 regs; no spills on either arch, wgmma on sm_90.
#   An unmasked tile runs 11.3 SASS instructions per element of G (sm_90, bf16, D = 128) against
#   14.3 for the earlier M64 N32 (the per-tile overhead is spread over twice the elements); M128
#   N64 8 warps gave 10.3 but 196 regs x 256 threads (one program per SM) and half the row
#   programs. (`simclr-fast check-kernels` counts the whole loop body, the masked-tile branch
#   included: 16.9; that branch runs on the 2-3 tiles per row block that hold a diagonal or
#   excluded column, of 128 at 2B = 8192.)
# - D > 128 (16-bit) and D > 64 (fp32): chunks of 64. With chunks of 128 every candidate spilled
#   (hundreds of LDL/STL: the G tile stays live across the chunk loop).
# - fp32 (exact, FMA dot products: tl.dot with input_precision="ieee"): the operands and the
#   product live in registers, so tiles are small: M32 N32 4 warps, 2 stages: 70/66 regs at
#   BLOCK_D 64; M64 N32 spilled at BLOCK_D 128 on sm_90 and M64 N64 on sm_80 at BLOCK_D 64.
#   The fp32 backward with D chunks spilled at 2 stages on sm_80 (168 regs, 4 LDL/STL); 1 stage
#   gave 127 regs and no spills (M32 N16 spilled, M16 N32 did not but halves the row reuse).
#   Re-checked 2026-12-02 for the contract kernels, every flag combination (launch_flags): the
#   backward at 3 stages (both D paths) and the chunked forward at 3 stages compile without
#   spills on sm_80 and sm_90 except the chunked forward's online-max keys variant on sm_90 at 4
#   warps (2 LDL/STL, the row sums kept in local memory across the D loop; |tau| < 0.025 with a
#   memory bank, fp32, D > 64); 2 stages spilled 2-3 in three keys variants on sm_80, 1 stage
#   2-20. 8 warps (2026-12-02, `check-kernels --dtype fp32 --d 128 256 --temperature 0.1 0.01`):
#   64-86 regs and no spills in every flag combination on both archs.
_CHUNK_D = 64
_BLOCK_D_CHOICES = {"16bit": (64, 128), "fp32": (64,)}
_TILES: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("fwd", "16bit"): (128, 64, 8, 3),
    ("bwd", "16bit"): (64, 64, 4, 3),
    ("fwd", "fp32"): (32, 32, 4, 2),
    ("bwd", "fp32"): (32, 32, 4, 3),
}
#: Overrides for the chunked-D variant (SINGLE_D=False), same reasoning as above.
_TILES_CHUNKED: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("fwd", "fp32"): (32, 32, 8, 3),
    ("bwd", "fp32"): (32, 32, 4, 3),
}
#: Overrides when ``D % 16 != 0`` (the JIT then marks neither D nor the row stride divisible by 16
#: and the loads are scalar), 2026-12-02: the 16-bit backward at M64 N64 4 warps used 255 regs and
#: spilled 14 (D = 33, sm_80) and 150 (D = 200, both archs; M64 N32 spilled 100 there, the
#: earlier table's tiles); 8 warps: 246-254 regs, no spills, tensor cores, at D = 33, 100 and 200
#: in every flag combination on sm_80 and sm_90.
_TILES_UNALIGNED: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("bwd", "16bit"): (64, 64, 8, 3),
}
#: Overrides for the chunked-D variant when ``D % 16 != 0`` (the JIT then marks neither D nor the
#: row stride divisible by 16 and the loads are scalar): the fp32 backward at 3 stages used 255
#: regs and spilled 10-20 LDL/STL at D = 100 (sm_80/sm_90, 2026-12-02); 1 stage: 205-240 regs, no
#: spills, in every flag combination.
_TILES_CHUNKED_UNALIGNED: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("fwd", "fp32"): (32, 32, 4, 3),
    ("bwd", "fp32"): (32, 32, 4, 1),
}


def _dtype_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def pick_config(kernel: str, dtype: torch.dtype, d: int) -> KernelConfig:
    """The configuration the launcher uses for ``kernel`` ("fwd"/"bwd") on ``dtype`` inputs of width ``d``."""
    cls = _dtype_class(dtype)
    key = (kernel, cls)
    # rows not 16-element aligned: Triton's JIT marks neither D nor the row stride divisible by
    # 16 and compiles scalar loads, which need other tiles
    aligned = d % 16 == 0
    tiles = _TILES[key] if aligned else _TILES_UNALIGNED.get(key, _TILES[key])
    for bd in _BLOCK_D_CHOICES[cls]:
        if d <= bd:
            return KernelConfig(tiles[0], tiles[1], bd, True, tiles[2], tiles[3])
    tiles = _TILES_CHUNKED.get(key, tiles)
    if not aligned:
        tiles = _TILES_CHUNKED_UNALIGNED.get(key, _TILES_UNALIGNED.get(key, tiles))
    return KernelConfig(tiles[0], tiles[1], _CHUNK_D, False, tiles[2], tiles[3])


def all_configs(kernel: str, dtype: torch.dtype) -> list[KernelConfig]:
    """Every configuration ``pick_config`` can return for ``kernel`` and ``dtype`` (for check-kernels)."""
    widths = [
        w + extra for w in (*_BLOCK_D_CHOICES[_dtype_class(dtype)], 2**20) for extra in (0, -1)
    ]
    return list(dict.fromkeys(pick_config(kernel, dtype, d) for d in widths))


#: ``input_precision`` of every ``tl.dot``. fp16/bf16 products are exact in fp32 (tensor cores);
#: fp32 inputs run exact fp32 products (FMA) under ``torch.get_float32_matmul_precision()
#: == "highest"`` and are otherwise handed to the fp16 kernels (:func:`kernel_operand_dtype`).
INPUT_PRECISION = "ieee"

#: ``|inv_tau|`` up to which the kernels use the fixed shift ``C = |inv_tau|`` (one exponential per
#: element, no running max). Unit vectors give ``|s| <= C``, so the forward's terms
#: ``2^{s·log2(e) − C·log2(e)}`` lie in ``[e^{−2C}, 1]``: normal fp32 numbers while ``2C <= 87``;
#: the backward's row factor is at most ``2^6 e^{2C}`` (kernel comment), finite in fp32 for
#: ``C <= 40``. A range argument, not a timing: past it the online-max forward and the
#: two-exponential backward run.
FIXED_SHIFT_MAX_INV_TAU = 40.0

#: Exponent offset ``E`` of the one-exponential backward (see the comment above the kernel).
_BWD_EXP_OFFSET = 8.0

#: Target magnitude of the scaled rows of ``G`` before the 16-bit cast: ``2^14`` leaves a factor 4
#: of headroom under fp16's largest finite value (65504) and puts fp16's smallest subnormal
#: (``2^−24``) at ``2^−38`` of a row's largest possible entry.
_G_ROW_SCALE = 2.0**14

#: Streaming multiprocessors the column split aims to fill: an H100 SXM has 132. Nominal, not
#: measured on a GPU (none was available): on a smaller GPU the split only makes more, shorter
#: programs. The split is off when the row grid alone has at least this many programs.
NOMINAL_SM_COUNT = 132
#: Fewest column tiles one part of the split keeps (so each program still streams a few tiles and
#: the partial results stay a small multiple of the output); not measured.
_MIN_TILES_PER_PART = 4
#: Most parts: bounds the backward's partial ``dz`` at ``_MAX_PARTS · row_count · D`` floats.
_MAX_PARTS = 16


def kernel_operand_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels' ``tl.dot`` operands take for inputs of ``dtype``.

    fp16/bf16 stay as they are. fp32 follows ``torch.get_float32_matmul_precision()`` as cuBLAS
    does: ``"highest"`` keeps exact fp32 products; ``"high"`` and ``"medium"`` round ``z`` once to
    fp16 and run the tensor-core kernels (fp16 products are exact in the fp32 accumulator). For
    unit vectors fp16 carries the same 10-bit mantissa as TF32, and the 16-bit kernels' tiles are
    the ones checked ahead of time, so fp16 rather than TF32.
    """
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return torch.float16
    return dtype


def launch_flags() -> list[dict[str, bool]]:
    """Every combination of the kernels' mode flags the launchers pass (with :func:`all_configs`,
    the full list of compiled variants): keys mode never has ``exclude``."""
    return [
        dict(FIXED_SHIFT=fixed, HAS_KEYS=keys, HAS_EXCLUDE=excl)
        for fixed in (True, False)
        for keys, excl in ((False, True), (False, False), (True, False))
    ]


def pick_parts(row_programs: int, n_cols: int, block_n: int) -> int:
    """How many column parts the launcher splits ``n_cols`` columns into for a row grid of
    ``row_programs`` programs (1: no split), see :data:`NOMINAL_SM_COUNT`."""
    tiles = triton.cdiv(n_cols, block_n)
    parts = min(NOMINAL_SM_COUNT // max(row_programs, 1), tiles // _MIN_TILES_PER_PART, _MAX_PARTS)
    return max(1, parts)


def _column_parts(n_cols: int, block_n: int, parts: int) -> tuple[int, int]:
    """``(num_parts, cols_per_part)``: ``parts`` ranges of whole column tiles, none empty."""
    tiles = triton.cdiv(n_cols, block_n)
    per = triton.cdiv(tiles, max(1, min(parts, tiles))) * block_n
    return triton.cdiv(n_cols, per), per


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise ValueError(f"{name} is on {t.device}: {_interpret_reason()}")


def _check_z(z: torch.Tensor, row_start: int, row_count: int, inv_tau: float) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2 or z.shape[1] < 1 or z.shape[0] < 1:
        raise ValueError(f"z must be 2-D (N, D) with N >= 1 and D >= 1, got shape {tuple(z.shape)}")
    if z.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"z has dtype {z.dtype}; the triton kernels take float16, bfloat16 or float32 "
            "(use backend='torch' for float64)"
        )
    if z.stride(1) != 1:
        raise ValueError(
            f"z must have unit stride along D, got strides {z.stride()}; pass z.contiguous()"
        )
    n = z.shape[0]
    if not (row_start >= 0 and row_count >= 1 and row_start + row_count <= n):
        raise ValueError(
            f"rows [row_start, row_start + row_count) = [{row_start}, {row_start + row_count}) must lie "
            f"inside the {n} rows of z, with row_count >= 1"
        )
    if not (abs(inv_tau) > 0 and abs(inv_tau) <= 1e8 * (1 + 1e-6)):
        raise ValueError(
            f"inv_tau must satisfy 0 < |inv_tau| <= 1e8 (|tau| >= 1e-8), got {inv_tau}"
        )
    _check_device(z, "z")


def _article(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return ("an " if name[0] in "aeiou" else "a ") + name


def _check_vector(t, name: str, length: int, what: str, z: torch.Tensor, dtype=torch.float32):
    if not isinstance(t, torch.Tensor) or t.shape != (length,) or t.dtype != dtype:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(
            f"{name} must be {_article(dtype)} tensor of shape ({length},) ({what}), got {got}"
        )
    if t.device != z.device:
        raise ValueError(f"{name} is on {t.device} but z is on {z.device}; move it to {z.device}")
    return t.contiguous()


def _check_columns(z, row_count, exclude, keys):
    """Validated ``exclude`` and ``keys``; returns them (contiguous) or ``None``."""
    if keys is not None:
        if exclude is not None:
            raise ValueError(
                "exclude must be None when keys are given (keys mode has no excluded columns); "
                "drop one of them"
            )
        if not isinstance(keys, torch.Tensor):
            raise TypeError(f"keys must be a torch.Tensor or None, got {type(keys).__name__}")
        if keys.dim() != 2 or keys.shape[0] < 1 or keys.shape[1] != z.shape[1]:
            raise ValueError(
                f"keys must be 2-D (K, D) with K >= 1 and D = {z.shape[1]} (z's width), "
                f"got shape {tuple(keys.shape)}"
            )
        if keys.dtype != z.dtype:
            raise TypeError(
                f"keys has dtype {keys.dtype} but z has {z.dtype}; cast keys to {z.dtype}"
            )
        if keys.device != z.device:
            raise ValueError(
                f"keys is on {keys.device} but z is on {z.device}; move it to {z.device}"
            )
        if keys.stride(1) != 1:
            raise ValueError(
                f"keys must have unit stride along D, got strides {keys.stride()}; pass "
                "keys.contiguous()"
            )
    if exclude is not None:
        exclude = _check_vector(
            exclude,
            "exclude",
            row_count,
            "one global column index per owned row, -1 for none",
            z,
            torch.int64,
        )
    return exclude, keys


def _operands(z: torch.Tensor, keys: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column operands in :func:`kernel_operand_dtype` (fp32 under "high"/"medium" -> fp16)."""
    dtype = kernel_operand_dtype(z.dtype)
    z = z.to(dtype)
    return z, (z if keys is None else keys.to(dtype))


def _device_guard(z: torch.Tensor):
    """Triton launches on ``torch.cuda.current_device()`` and its stream, not on the tensors'
    device: make ``z``'s device current for the launch."""
    return torch.cuda.device(z.device) if z.device.type == "cuda" else contextlib.nullcontext()


def _launch_meta(cfg, z: torch.Tensor, fixed: bool, keys: bool, exclude: bool) -> dict:
    """Compile-time constants and launch options shared by the forward and backward launches."""
    return dict(
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=cfg.block_d,
        SINGLE_D=cfg.single_d,
        FIXED_SHIFT=fixed,
        HAS_KEYS=keys,
        HAS_EXCLUDE=exclude,
        INPUT_PRECISION=INPUT_PRECISION,
        UPCAST_OPERANDS=interpreting() and z.dtype == torch.bfloat16,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _fp32(value: float) -> float:
    """``value`` rounded to fp32, as Triton passes a Python float to a kernel."""
    return float(torch.tensor(value, dtype=torch.float32))


def ntxent_fwd(
    z: torch.Tensor,
    row_start: int,
    row_count: int,
    inv_tau: float,
    shift: torch.Tensor,
    exclude: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    num_parts: int | None = None,
) -> torch.Tensor:
    """Launch the forward kernel: ``x_k = log Σ_{j∈C(k)} e^{s_kj − shift_k}``, fp32 ``(row_count,)``.

    ``shift`` holds the owned rows' shifts, ``(row_count,)``; in self mode the ``(N,)`` vector of
    every row is accepted too (the owned slice is used). ``num_parts`` forces the column split
    (default: :func:`pick_parts`).
    """
    _check_z(z, row_start, row_count, inv_tau)
    exclude, keys = _check_columns(z, row_count, exclude, keys)
    whole = isinstance(shift, torch.Tensor) and shift.shape == (z.shape[0],)
    if keys is None and row_count != z.shape[0] and whole:
        shift = shift[row_start : row_start + row_count]
    shift = _check_vector(shift, "shift", row_count, "one per owned row", z)
    zk, ck = _operands(z, keys)
    d, n_cols = zk.shape[1], ck.shape[0]
    cfg = pick_config("fwd", zk.dtype, d)
    c = abs(float(inv_tau))
    fixed = c <= FIXED_SHIFT_MAX_INV_TAU
    row_programs = triton.cdiv(row_count, cfg.block_m)
    parts = num_parts if num_parts is not None else pick_parts(row_programs, n_cols, cfg.block_n)
    parts, cols_per_part = _column_parts(n_cols, cfg.block_n, parts)
    sums = torch.empty((parts, row_count), dtype=torch.float32, device=z.device)
    maxes = sums if fixed else torch.empty_like(sums)
    k_shift = _fp32(c * LOG2E) if fixed else 0.0  # the kernel's constant, exactly as it sees it
    excl = exclude if exclude is not None else torch.empty(1, dtype=torch.int64, device=z.device)
    with _device_guard(z):
        triton_kernels._ntxent_fwd_kernel[(row_programs, parts)](
            zk,
            ck,
            excl,
            maxes,
            sums,
            n_cols,
            d,
            row_start,
            row_count,
            zk.stride(0),
            ck.stride(0),
            cols_per_part,
            float(inv_tau) * LOG2E,
            k_shift,
            **_launch_meta(cfg, zk, fixed, keys is not None, exclude is not None),
        )
    # Combine the parts in a fixed order, then x = ln Σ + (shift constant − shift_k) in fp64: the
    # two O(1/τ) terms never meet in fp32.
    if fixed:
        total = sums.double().sum(dim=0)
        const = torch.full_like(total, k_shift * LN2)
    else:
        m64 = maxes.double()
        top = m64.amax(dim=0)
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        total = (sums.double() * torch.exp2(m64 - top)).sum(dim=0)
        const = top * LN2
    return (torch.log(total) + (const - shift.double())).to(torch.float32)


def _backward_factors(shift, x, weight, row_start, row_count, inv_tau, fixed, keys_mode):
    """Per-row and per-column factors of the scaled ``G`` (comment above the backward kernel),
    computed on ``weight``'s device in fp64 with no host sync. Returns fp32 tensors
    ``row_a, row_b, row_s, col_v, col_s, out_scale`` and the kernel's shift constant."""
    w, sh = weight.double(), shift.double()
    total = w.abs() * torch.exp(x.double())  # T_j = |weight_j| e^{x_j}: row j's own terms' sum
    tiny = 1e-300
    if keys_mode:
        t_max = torch.zeros((), dtype=torch.float64, device=w.device)
        t_k, w_k, sh_k = total, w, sh
    else:
        t_max = total.amax()
        rows = slice(row_start, row_start + row_count)
        t_k, w_k, sh_k = total[rows], w[rows], sh[rows]
    sigma = _G_ROW_SCALE / (t_k + t_max).clamp_min(tiny)
    row_b = sigma * t_max
    k_shift = _fp32(abs(float(inv_tau)) * LOG2E - _BWD_EXP_OFFSET) if fixed else 0.0
    if fixed:
        row_a = sigma * w_k * torch.exp2(k_shift - sh_k * LOG2E)
        col_v = w * torch.exp2(k_shift - sh * LOG2E) / t_max.clamp_min(tiny)
        row_s = col_s = None
    else:
        row_a = torch.log2((sigma * w_k).abs()) - sh_k * LOG2E
        row_b = torch.log2(row_b)
        col_v = torch.log2(w.abs() / t_max.clamp_min(tiny)) - sh * LOG2E
        row_s, col_s = torch.sign(w_k), torch.sign(w)
    out_scale = float(inv_tau) / sigma
    f32 = [None if t is None else t.to(torch.float32) for t in (row_a, row_b, row_s, col_v, col_s)]
    return (*f32, out_scale.to(torch.float32), k_shift)


def ntxent_bwd(
    z: torch.Tensor,
    shift: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    row_start: int,
    row_count: int,
    inv_tau: float,
    exclude: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    num_parts: int | None = None,
) -> torch.Tensor:
    """Launch the backward kernel: the owned rows of ``dz``, fp32 ``(row_count, D)``.

    ``dz_k = inv_tau Σ_{j∈C(k)} (weight_k e^{s_kj − shift_k} + weight_j e^{s_kj − shift_j}) c_j``
    (keys mode: the row term only). ``shift``, ``x`` (the forward's result) and ``weight`` cover
    all ``N`` rows in self mode and the owned rows in keys mode. ``num_parts`` forces the column
    split (default: :func:`pick_parts`); the parts are added in a fixed order.
    """
    _check_z(z, row_start, row_count, inv_tau)
    exclude, keys = _check_columns(z, row_count, exclude, keys)
    length, what = (
        (row_count, "one per owned row (keys mode)")
        if keys is not None
        else (z.shape[0], "one per row of z")
    )
    shift, x, weight = (
        _check_vector(t, name, length, what, z)
        for t, name in ((shift, "shift"), (x, "x"), (weight, "weight"))
    )
    zk, ck = _operands(z, keys)
    d, n_cols = zk.shape[1], ck.shape[0]
    cfg = pick_config("bwd", zk.dtype, d)
    fixed = abs(float(inv_tau)) <= FIXED_SHIFT_MAX_INV_TAU
    row_a, row_b, row_s, col_v, col_s, out_scale, k_shift = _backward_factors(
        shift, x, weight, row_start, row_count, inv_tau, fixed, keys is not None
    )
    row_programs = triton.cdiv(row_count, cfg.block_m)
    parts = num_parts if num_parts is not None else pick_parts(row_programs, n_cols, cfg.block_n)
    parts, cols_per_part = _column_parts(n_cols, cfg.block_n, parts)
    alloc = torch.empty if cfg.single_d else torch.zeros  # multi-chunk D accumulates in place
    dz = alloc((parts * row_count, d), dtype=torch.float32, device=z.device)
    excl = exclude if exclude is not None else torch.empty(1, dtype=torch.int64, device=z.device)
    unused = out_scale  # a valid pointer for arguments the launched variant does not read
    with _device_guard(z):
        triton_kernels._ntxent_bwd_kernel[(row_programs, parts)](
            zk,
            ck,
            excl,
            row_a,
            row_b,
            unused if row_s is None else row_s,
            col_v,
            unused if col_s is None else col_s,
            out_scale,
            dz,
            n_cols,
            d,
            row_start,
            row_count,
            zk.stride(0),
            ck.stride(0),
            dz.stride(0),
            cols_per_part,
            float(inv_tau) * LOG2E,
            k_shift,
            **_launch_meta(cfg, zk, fixed, keys is not None, exclude is not None),
        )
    if parts == 1:
        return dz
    dz = dz.view(parts, row_count, d)
    out = dz[0].clone()
    for p in range(1, parts):  # a fixed order: bit-identical run to run
        out += dz[p]
    return out


# ---------------------------------------------------------------------------------------------
# torch.library ops (traceable by torch.compile; fake impls give shapes without running Triton)
# ---------------------------------------------------------------------------------------------

if triton is not None:

    @torch.library.custom_op("simclr_fast::ntxent_fwd_triton", mutates_args=())
    def ntxent_fwd_triton(
        z: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        shift: torch.Tensor,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Op form of :func:`ntxent_fwd`."""
        return ntxent_fwd(z, row_start, row_count, inv_tau, shift, exclude, keys)

    @ntxent_fwd_triton.register_fake
    def _(z, row_start, row_count, inv_tau, shift, exclude=None, keys=None):
        return z.new_empty((row_count,), dtype=torch.float32)

    @torch.library.custom_op("simclr_fast::ntxent_bwd_triton", mutates_args=())
    def ntxent_bwd_triton(
        z: torch.Tensor,
        shift: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Op form of :func:`ntxent_bwd`."""
        return ntxent_bwd(z, shift, x, weight, row_start, row_count, inv_tau, exclude, keys)

    @ntxent_bwd_triton.register_fake
    def _(z, shift, x, weight, row_start, row_count, inv_tau, exclude=None, keys=None):
        return z.new_empty((row_count, z.shape[1]), dtype=torch.float32)


class TritonBackend(Backend):
    """Fused NT-Xent in Triton: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""

    name = "triton"

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if triton is None:
            return (
                f"Triton is not importable ({_TRITON_IMPORT_ERROR}); CUDA builds of torch on Linux ship "
                "it, otherwise `pip install triton`"
            )
        if dtype not in KERNEL_DTYPES:
            return f"the triton kernels take float16, bfloat16 or float32, not {dtype}; use backend='torch'"
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "no CUDA device is available"
            return None
        if device.type == "cpu":
            return None if interpreting() else _interpret_reason()
        return f"the triton backend needs CUDA tensors, not {device.type}; use backend='torch'"

    def kernel_dtype(self, dtype: torch.dtype) -> torch.dtype:
        # 16-bit inputs stay 16-bit so tl.dot runs on tensor cores; the kernels accumulate in fp32.
        return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32

    def forward_lse(
        self,
        z: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        shift: torch.Tensor,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.ops.simclr_fast.ntxent_fwd_triton(
            z, row_start, row_count, inv_tau, shift, exclude, keys
        )

    def backward_rows(
        self,
        z: torch.Tensor,
        shift: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.ops.simclr_fast.ntxent_bwd_triton(
            z, shift, x, weight, row_start, row_count, inv_tau, exclude, keys
        )
