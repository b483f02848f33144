"""``backend="triton"``: launchers for the fused Triton kernels and their ``torch.library`` ops.

Layers (STYLE.md): the kernels live in :mod:`simclr_fast.backends.triton_kernels`; this module owns
the host work (validation, tile choice, allocation, launch) and registers two opaque ops,
``simclr_fast::ntxent_fwd_triton`` and ``simclr_fast::ntxent_bwd_triton``, with fake (meta)
implementations so ``torch.compile(fullgraph=True)`` traces through :class:`TritonBackend` without
a graph break. The autograd layer over them is :class:`simclr_fast._function.NTXentFunction`.

The ops are ``torch.library.custom_op`` rather than ``triton_op``: ``triton_op`` needs the kernels to
be ``JITFunction`` objects that Inductor can trace, which rules out the interpreter path the CPU CI
runs; an opaque op runs the same launcher on CUDA and under ``TRITON_INTERPRET=1``.

Environment switch:

``TRITON_INTERPRET=1``
    run the kernels with Triton's interpreter on CPU tensors (slow; for tests). Triton reads it
    once, when it is first imported (see :func:`interpreting`): set it before ``import triton``.
"""

from __future__ import annotations

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
# - bwd, fp16/bf16: it holds the S tile, the G tile and a (BLOCK_M, BLOCK_D) fp32 accumulator.
#   M64 N64 4 warps spills on sm_80 (255 regs, 6 LDL/STL at BLOCK_D 64), M128 N64 8 warps spills
#   on sm_80 at BLOCK_D 128; M64 N32 4 warps: 177/162 regs at BLOCK_D 64, 255/221 at BLOCK_D 128,
#   no spills on either arch, wgmma on sm_90 (BLOCK_M 64 = one warpgroup's M).
# - D > 128 (16-bit) and D > 64 (fp32): chunks of 64. With chunks of 128 every candidate spilled
#   (hundreds of LDL/STL: the G tile stays live across the chunk loop).
# - fp32 (exact, FMA dot products: tl.dot with input_precision="ieee"): the operands and the
#   product live in registers, so tiles are small: M32 N32 4 warps, 2 stages: 70/66 regs at
#   BLOCK_D 64; M64 N32 spilled at BLOCK_D 128 on sm_90 and M64 N64 on sm_80 at BLOCK_D 64.
#   The fp32 backward with D chunks spilled at 2 stages on sm_80 (168 regs, 4 LDL/STL); 1 stage
#   gives 127 regs and no spills (M32 N16 spilled, M16 N32 did not but halves the row reuse).
_CHUNK_D = 64
_BLOCK_D_CHOICES = {"16bit": (64, 128), "fp32": (64,)}
_TILES: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("fwd", "16bit"): (128, 64, 8, 3),
    ("bwd", "16bit"): (64, 32, 4, 3),
    ("fwd", "fp32"): (32, 32, 4, 2),
    ("bwd", "fp32"): (32, 32, 4, 2),
}
#: Overrides for the chunked-D variant (SINGLE_D=False), same reasoning as above.
_TILES_CHUNKED: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("bwd", "fp32"): (32, 32, 4, 1),
}


def _dtype_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def pick_config(kernel: str, dtype: torch.dtype, d: int) -> KernelConfig:
    """The configuration the launcher uses for ``kernel`` ("fwd"/"bwd") on ``dtype`` inputs of width ``d``."""
    cls = _dtype_class(dtype)
    bm, bn, warps, stages = _TILES[(kernel, cls)]
    for bd in _BLOCK_D_CHOICES[cls]:
        if d <= bd:
            return KernelConfig(bm, bn, bd, True, warps, stages)
    bm, bn, warps, stages = _TILES_CHUNKED.get((kernel, cls), (bm, bn, warps, stages))
    return KernelConfig(bm, bn, _CHUNK_D, False, warps, stages)


def all_configs(kernel: str, dtype: torch.dtype) -> list[KernelConfig]:
    """Every configuration ``pick_config`` can return for ``kernel`` and ``dtype`` (for check-kernels)."""
    widths = [*_BLOCK_D_CHOICES[_dtype_class(dtype)], 10**6]
    return list(dict.fromkeys(pick_config(kernel, dtype, d) for d in widths))


#: ``input_precision`` of every ``tl.dot``: fp32 inputs get exact fp32 products (FMA, no TF32);
#: fp16/bf16 products are exact in fp32 anyway, on tensor cores. TF32 is not offered: it would be
#: another set of configurations to check, and bf16 inputs already give tensor-core speed.
INPUT_PRECISION = "ieee"


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
    if z.dim() != 2 or z.shape[1] < 1:
        raise ValueError(f"z must be 2-D (N, D) with D >= 1, got shape {tuple(z.shape)}")
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
    if n < 2:
        # Every row needs at least one non-diagonal column (N = 2B >= 2 in the public API).
        raise ValueError(f"z must have at least 2 rows, got {n}")
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


def _launch_meta(cfg, z: torch.Tensor) -> dict:
    """Compile-time constants and launch options shared by the forward and backward launches."""
    return dict(
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=cfg.block_d,
        SINGLE_D=cfg.single_d,
        INPUT_PRECISION=INPUT_PRECISION,
        UPCAST_OPERANDS=interpreting() and z.dtype == torch.bfloat16,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def ntxent_fwd(z: torch.Tensor, row_start: int, row_count: int, inv_tau: float) -> torch.Tensor:
    """Launch the forward kernel: fp32 log-sum-exp of the owned rows, shape ``(row_count,)``."""
    _check_z(z, row_start, row_count, inv_tau)
    n, d = z.shape
    cfg = pick_config("fwd", z.dtype, d)
    lse = torch.empty(row_count, dtype=torch.float32, device=z.device)
    grid = (triton.cdiv(row_count, cfg.block_m),)
    triton_kernels._ntxent_fwd_kernel[grid](
        z,
        lse,
        n,
        d,
        row_start,
        row_count,
        z.stride(0),
        float(inv_tau) * LOG2E,
        **_launch_meta(cfg, z),
    )
    return lse


def ntxent_bwd(
    z: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    row_start: int,
    row_count: int,
    inv_tau: float,
) -> torch.Tensor:
    """Launch the backward kernel: ``inv_tau · (G z)`` for the owned rows, fp32 ``(row_count, D)``."""
    _check_z(z, row_start, row_count, inv_tau)
    n, d = z.shape
    for name, t in (("lse", lse), ("coef", coef)):
        if not isinstance(t, torch.Tensor) or t.shape != (n,) or t.dtype != torch.float32:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a float32 tensor of shape ({n},) (one per row of z), got {got}"
            )
        if t.device != z.device:
            raise ValueError(f"{name} is on {t.device} but z is on {z.device}")
    lse, coef = lse.contiguous(), coef.contiguous()
    # Scale coef to max |coef| = 1 so G fits fp16 when cast for the tensor cores (see the kernel).
    coef_scale = coef.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    coef = coef / coef_scale
    out_scale = (coef_scale * inv_tau).reshape(1).to(torch.float32)
    cfg = pick_config("bwd", z.dtype, d)
    alloc = torch.empty if cfg.single_d else torch.zeros  # multi-chunk D accumulates in place
    dz = alloc((row_count, d), dtype=torch.float32, device=z.device)
    grid = (triton.cdiv(row_count, cfg.block_m),)
    triton_kernels._ntxent_bwd_kernel[grid](
        z,
        lse,
        coef,
        out_scale,
        dz,
        n,
        d,
        row_start,
        row_count,
        z.stride(0),
        dz.stride(0),
        float(inv_tau) * LOG2E,
        **_launch_meta(cfg, z),
    )
    return dz


# ---------------------------------------------------------------------------------------------
# torch.library ops (traceable by torch.compile; fake impls give shapes without running Triton)
# ---------------------------------------------------------------------------------------------

if triton is not None:

    @torch.library.custom_op("simclr_fast::ntxent_fwd_triton", mutates_args=())
    def ntxent_fwd_triton(
        z: torch.Tensor, row_start: int, row_count: int, inv_tau: float
    ) -> torch.Tensor:
        """Op form of :func:`ntxent_fwd`."""
        return ntxent_fwd(z, row_start, row_count, inv_tau)

    @ntxent_fwd_triton.register_fake
    def _(z, row_start, row_count, inv_tau):
        return z.new_empty((row_count,), dtype=torch.float32)

    @torch.library.custom_op("simclr_fast::ntxent_bwd_triton", mutates_args=())
    def ntxent_bwd_triton(
        z: torch.Tensor,
        lse: torch.Tensor,
        coef: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
    ) -> torch.Tensor:
        """Op form of :func:`ntxent_bwd`."""
        return ntxent_bwd(z, lse, coef, row_start, row_count, inv_tau)

    @ntxent_bwd_triton.register_fake
    def _(z, lse, coef, row_start, row_count, inv_tau):
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
        self, z: torch.Tensor, row_start: int, row_count: int, inv_tau: float
    ) -> torch.Tensor:
        return torch.ops.simclr_fast.ntxent_fwd_triton(z, row_start, row_count, inv_tau)

    def backward_rows(
        self,
        z: torch.Tensor,
        lse: torch.Tensor,
        coef: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
    ) -> torch.Tensor:
        return torch.ops.simclr_fast.ntxent_bwd_triton(z, lse, coef, row_start, row_count, inv_tau)
