"""Triton kernels of the fused NT-Xent (the contract of :mod:`simclr_fast.backends.base`).

Two kernels, both over *normalized* embeddings ``z`` of shape ``(N, D)`` (row-major, row stride
``stride_z``) and the owned rows ``z[row_start : row_start + row_count]``:

``_ntxent_fwd_kernel``
    one program per block of ``BLOCK_M`` owned rows; it walks every column tile, forms
    ``s = z_rows · z_colsᵀ · inv_tau`` in fp32 (``tl.dot``; tensor cores for fp16/bf16), masks the
    diagonal and the padded columns and keeps an online log-sum-exp (running max and rescaled sum,
    Milakov & Gimelshein, arXiv 1805.02867). It writes only ``lse`` (``row_count`` floats).

``_ntxent_bwd_kernel``
    one program per block of owned rows; it recomputes every tile of ``s`` from ``z`` and ``lse``
    and accumulates ``dz_rows += G · z_cols``.

Nothing of size ``N²`` touches global memory. The kernels work in base 2: the launcher passes
``qk_scale = inv_tau · log2(e)``, so ``exp(s − lse) = exp2(s·log2(e) − lse·log2(e))`` (one ``ex2``
instruction per element).

Any ``D``: feature columns are loaded in chunks of ``BLOCK_D`` with masks (padding lanes read 0,
which adds 0 to every dot product). With ``SINGLE_D`` (``D <= BLOCK_D``) the row tile is loaded once
and the backward's ``(BLOCK_M, BLOCK_D)`` accumulator lives in registers; otherwise the dot
products loop over the chunks and the backward accumulates into its own rows of the fp32 output
(read-modify-write by the one program that owns those rows: still deterministic, no atomics).

``UPCAST_OPERANDS`` is set only by the launchers under ``TRITON_INTERPRET=1`` for bfloat16 inputs: the
Triton 3.9 interpreter's ``tl.dot`` multiplies the raw uint16 bit patterns of bfloat16 operands.
Widening the (already bf16-rounded) operands to fp32 gives the same products a tensor core forms
(exact, accumulated in fp32); compiled kernels never set it.

Row and column indices are widened to int64 before they are multiplied by the stride, so
``N · D`` may exceed 2³¹.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The row-wise schedule, and why (DESIGN.md §2, "Work and memory").
#
# Each program owns a block of rows and loops over *all* column tiles, so every output element
# (an lse in the forward, a row of dz in the backward) is produced by exactly one program, summed
# in one fixed order: the result is bit-identical run to run without atomics. Cost: the forward
# forms every tile (2·N²·D FLOPs), the backward recomputes every tile and multiplies it by
# z_cols (4·N²·D): 6·N²·D in all. The symmetric schedule (only tiles on/above the diagonal, each
# tile also serving its columns transposed) needs 4·N²·D, but a tile's column contribution lands
# in rows owned by another program: that needs float atomics (order varies run to run, so the
# bits do too) or a second reduction pass over per-program partial sums (O(N·D) per program
# extra memory). Neither has been measured here (no GPU), so the deterministic schedule ships.


@triton.jit
def _load_rows(z_ptr, off, ok, d_idx, D, UPCAST_OPERANDS: tl.constexpr):
    """The block z[rows, d_idx] (``off``: int64 row offsets), 0 outside ``ok`` and beyond D."""
    x = tl.load(
        z_ptr + off[:, None] + d_idx[None, :],
        mask=ok[:, None] & (d_idx[None, :] < D),
        other=0.0,
    )
    if UPCAST_OPERANDS:
        x = x.to(tl.float32)
    return x


@triton.jit
def _similarity_tile(
    z_ptr,
    row_off,
    row_ok,
    col_off,
    col_ok,
    offs_d,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
):
    """Raw dot products z_rows · z_colsᵀ (fp32), over D in chunks of BLOCK_D."""
    s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        a = _load_rows(z_ptr, row_off, row_ok, d0 + offs_d, D, UPCAST_OPERANDS)
        b = _load_rows(z_ptr, col_off, col_ok, d0 + offs_d, D, UPCAST_OPERANDS)
        s = tl.dot(a, tl.trans(b), s, input_precision=INPUT_PRECISION)
    return s


@triton.jit
def _ntxent_fwd_kernel(
    z_ptr,
    lse_ptr,
    N,
    D,
    row_start,
    row_count,
    stride_z,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
):
    LN2: tl.constexpr = 0.6931471805599453
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # local row index in the owned block
    row_ok = offs_m < row_count
    grow = row_start + offs_m  # global row index == its own column index
    offs_d = tl.arange(0, BLOCK_D)
    row_off = grow.to(tl.int64) * stride_z

    if SINGLE_D:  # all of D in one block: the row block stays in registers
        zr = _load_rows(z_ptr, row_off, row_ok, offs_d, D, UPCAST_OPERANDS)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of s·log2(e)
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(s·log2(e) − m_i)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        col_off = cols.to(tl.int64) * stride_z
        if SINGLE_D:
            zc = _load_rows(z_ptr, col_off, col_ok, offs_d, D, UPCAST_OPERANDS)
            s = tl.dot(zr, tl.trans(zc), input_precision=INPUT_PRECISION)
        else:
            s = _similarity_tile(
                z_ptr,
                row_off,
                row_ok,
                col_off,
                col_ok,
                offs_d,
                D,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                INPUT_PRECISION,
                UPCAST_OPERANDS,
            )
        s = s * qk_scale
        keep = col_ok[None, :] & (cols[None, :] != grow[:, None])
        s = tl.where(keep, s, float("-inf"))
        # N >= 2 (checked by the launcher) and BLOCK_N >= 2, so the first tile holds a finite
        # entry for every row: m_new is finite from the first tile on, and exp2(-inf) = 0.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new

    lse = (m_i + tl.log2(l_i)) * LN2
    tl.store(lse_ptr + offs_m, lse, mask=row_ok)


# The gradient (SimCLR, Chen et al., arXiv 2002.05709; DESIGN.md §2), with the online softmax's
# lse from the forward (arXiv 1805.02867) so that P is recomputed tile by tile, never stored:
#     P_kj = exp(s_kj − lse_k)  (j != k),   s_kj = z_k · z_j · inv_tau
#     G_kj = coef_k · P_kj + coef_j · P_jk   (symmetric s, so P_jk = exp(s_kj − lse_j); G_kk = 0)
#     dz_k = inv_tau · Σ_j G_kj · z_j       (the positive term is added by simclr_fast._function)
#
# `coef` arrives divided by `coef_scale` = max|coef| (the launcher's doing), so every G entry lies
# in [-2, 2] and survives the cast to fp16/bf16 that feeds the tensor cores in the second dot; the
# result is multiplied back by coef_scale · inv_tau (`out_scale_ptr`, a 1-element fp32 tensor so
# the launcher needs no host sync).
@triton.jit
def _ntxent_bwd_kernel(
    z_ptr,
    lse_ptr,
    coef_ptr,
    out_scale_ptr,
    dz_ptr,
    N,
    D,
    row_start,
    row_count,
    stride_z,
    stride_dz,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
):
    LOG2E: tl.constexpr = 1.4426950408889634
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < row_count
    grow = row_start + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    row_off = grow.to(tl.int64) * stride_z
    out_off = offs_m.to(tl.int64) * stride_dz

    # Padded rows get coef 0 and lse 0; the keep mask below zeroes their G rows.
    lse_k = tl.load(lse_ptr + grow, mask=row_ok, other=0.0) * LOG2E
    c_k = tl.load(coef_ptr + grow, mask=row_ok, other=0.0)
    out_scale = tl.load(out_scale_ptr)

    if SINGLE_D:  # all of D in one block: the row block stays in registers
        zr = _load_rows(z_ptr, row_off, row_ok, offs_d, D, UPCAST_OPERANDS)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)

    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        col_off = cols.to(tl.int64) * stride_z
        lse_j = tl.load(lse_ptr + cols, mask=col_ok, other=0.0) * LOG2E
        c_j = tl.load(coef_ptr + cols, mask=col_ok, other=0.0)
        if SINGLE_D:
            zc = _load_rows(z_ptr, col_off, col_ok, offs_d, D, UPCAST_OPERANDS)
            s = tl.dot(zr, tl.trans(zc), input_precision=INPUT_PRECISION)
        else:
            s = _similarity_tile(
                z_ptr,
                row_off,
                row_ok,
                col_off,
                col_ok,
                offs_d,
                D,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                INPUT_PRECISION,
                UPCAST_OPERANDS,
            )
        s = s * qk_scale
        g = c_k[:, None] * tl.exp2(s - lse_k[:, None]) + c_j[None, :] * tl.exp2(s - lse_j[None, :])
        # Padding rows too: their lse_k = c_k = 0 leaves c_j·2^(s − lse_j) unbounded (2^20 at
        # τ = 0.07), which overflowed the fp16 cast below (inf in rows that are never stored).
        keep = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != grow[:, None])
        g = tl.where(keep, g, 0.0)
        g = g.to(z_ptr.dtype.element_ty)  # fp16/bf16 inputs: the second dot runs on tensor cores
        if UPCAST_OPERANDS:
            g = g.to(tl.float32)
        if SINGLE_D:
            acc = tl.dot(g, zc, acc, input_precision=INPUT_PRECISION)
        else:
            # This program alone owns these rows of dz: read-modify-write them chunk by chunk.
            # The barrier orders each chunk's stores before any later load of the same rows
            # (bar.sync makes a CTA's global writes visible to the whole CTA).
            for d0 in range(0, D, BLOCK_D):
                b = _load_rows(z_ptr, col_off, col_ok, d0 + offs_d, D, UPCAST_OPERANDS)
                out_ptrs = dz_ptr + out_off[:, None] + (d0 + offs_d)[None, :]
                out_mask = row_ok[:, None] & ((d0 + offs_d)[None, :] < D)
                part = tl.load(out_ptrs, mask=out_mask, other=0.0)
                part = tl.dot(g, b, part, input_precision=INPUT_PRECISION)
                tl.store(out_ptrs, part, mask=out_mask)
            tl.debug_barrier()

    if SINGLE_D:
        tl.store(
            dz_ptr + out_off[:, None] + offs_d[None, :],
            acc * out_scale,
            mask=row_ok[:, None] & (offs_d[None, :] < D),
        )
    else:
        for d0 in range(0, D, BLOCK_D):
            out_ptrs = dz_ptr + out_off[:, None] + (d0 + offs_d)[None, :]
            out_mask = row_ok[:, None] & ((d0 + offs_d)[None, :] < D)
            part = tl.load(out_ptrs, mask=out_mask, other=0.0)
            tl.store(out_ptrs, part * out_scale, mask=out_mask)
