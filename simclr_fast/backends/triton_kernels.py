"""Triton kernels of the shifted row log-sum-exp and its gradient (:mod:`simclr_fast.backends.base`).

Both kernels take *normalized* row embeddings ``z`` (``(N_rows, D)``, row stride ``stride_z``), the
owned rows ``k = row_start + i`` (``0 <= i < row_count``) and a column matrix ``c`` (``(N, D)``,
row stride ``stride_c``): ``c`` is ``z`` itself in self-similarity mode and the memory-bank keys
with ``HAS_KEYS``. ``s_kj = inv_tau · z_k · c_j`` is formed tile by tile with ``tl.dot`` (fp32
accumulation; tensor cores for fp16/bf16), never stored.

``_ntxent_fwd_kernel``
    program ``(m, p)`` takes ``BLOCK_M`` owned rows and the column tiles of part ``p`` (the column
    split, below) and writes, per row, a partial sum of exponentials: with ``FIXED_SHIFT``
    ``l_k = Σ_j 2^{s_kj·log2(e) − K}`` with ``K = |inv_tau|·log2(e)`` (every term lies in
    ``[2^{−2K}, 1]`` because ``|s| <= |inv_tau|`` for unit vectors: no max is needed), otherwise
    a running max ``m_k`` of ``s_kj·log2(e)`` and ``l_k = Σ_j 2^{s_kj·log2(e) − m_k}`` (online
    softmax, Milakov & Gimelshein, arXiv 1805.02867). The launcher adds the parts in a fixed
    order and forms ``x_k = ln l_k + (C − shift_k)`` in fp64, so no fp32 operation ever subtracts
    two numbers of size ``1/τ`` (docs/design.md §9).

``_ntxent_bwd_kernel``
    program ``(m, p)`` recomputes the same tiles and accumulates ``dz_rows += G · c_cols`` over
    the columns of part ``p``, with one exponential per element (``FIXED_SHIFT``, comment above
    the kernel).

Columns that are not in ``C(k)`` -- the diagonal, ``exclude[k]`` and the padding past ``N`` -- are
masked only in the tiles that contain one: each program reads its rows' ``exclude`` entries, whose
min/max (like the block's own row range for the diagonal) tell which column tiles hold an excluded
column; every other tile runs unmasked.

Column split: a second grid axis cuts the columns into ``num_parts`` ranges of ``cols_per_part``
columns (a multiple of ``BLOCK_N``), so a small row grid still fills the GPU. Each part writes its
own slice of the output; the launcher combines the slices in a fixed order, so results stay
bit-identical run to run (no atomics).

Any ``D``: feature columns are loaded in chunks of ``BLOCK_D`` with masks (padding lanes read 0,
which adds 0 to every dot product). With ``SINGLE_D`` (``D <= BLOCK_D``) the row tile is loaded once
and the backward's ``(BLOCK_M, BLOCK_D)`` accumulator lives in registers; otherwise the dot
products loop over the chunks and the backward accumulates into its own rows of the fp32 output
(read-modify-write by the one program that owns those rows and that part: deterministic).

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

# The row-wise schedule, and why (docs/design.md §2, "Work and memory").
#
# Each program owns a block of rows (and one column part) and loops over that part's column tiles,
# so every output element (a partial sum in the forward, a row of partial dz in the backward) is
# produced by exactly one program, summed in one fixed order: the result is bit-identical run to
# run without atomics. Cost: the forward forms every tile (2·N²·D FLOPs), the backward recomputes
# every tile and multiplies it by the columns (4·N²·D): 6·N²·D in all. The symmetric schedule
# (only tiles on/above the diagonal, each tile also serving its columns transposed) needs 4·N²·D,
# but a tile's column contribution lands in rows owned by another program: that needs float
# atomics (order varies run to run, so the bits do too) or a second reduction pass over
# per-program partial sums (O(N·D) per program extra memory). Neither has been measured here (no
# GPU), so the deterministic schedule ships.


@triton.jit
def _load_rows(ptr, off, ok, d_idx, D, UPCAST_OPERANDS: tl.constexpr):
    """The block ptr[rows, d_idx] (``off``: int64 row offsets), 0 outside ``ok`` and beyond D."""
    x = tl.load(
        ptr + off[:, None] + d_idx[None, :],
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
    c_ptr,
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
    """Raw dot products z_rows · c_colsᵀ (fp32), over D in chunks of BLOCK_D."""
    s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        a = _load_rows(z_ptr, row_off, row_ok, d0 + offs_d, D, UPCAST_OPERANDS)
        b = _load_rows(c_ptr, col_off, col_ok, d0 + offs_d, D, UPCAST_OPERANDS)
        s = tl.dot(a, tl.trans(b), s, input_precision=INPUT_PRECISION)
    return s


@triton.jit
def _row_block(
    excl_ptr,
    pid_m,
    row_start,
    row_count,
    BLOCK_M: tl.constexpr,
    HAS_KEYS: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
):
    """Local and global row indices of the block, its ``exclude`` entries, and two column ranges
    (self mode): ``[d_lo, d_hi]`` holds the block's diagonal, ``[e_lo, e_hi]`` its excluded columns
    (empty, ``e_lo > e_hi``, without any)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # local row index in the owned block
    row_ok = offs_m < row_count
    grow = row_start + offs_m  # global row index == its own column index (self mode)
    excl = tl.full((BLOCK_M,), -1, tl.int32)
    d_lo = row_start + pid_m * BLOCK_M
    d_hi = tl.minimum(row_start + row_count, d_lo + BLOCK_M) - 1
    e_lo = 2147483647
    e_hi = -1
    if not HAS_KEYS and HAS_EXCLUDE:
        excl = tl.load(excl_ptr + offs_m, mask=row_ok, other=-1).to(tl.int32)
        e_lo = tl.min(tl.where(excl >= 0, excl, 2147483647), axis=0)
        e_hi = tl.max(excl, axis=0)
    return offs_m, row_ok, grow, excl, d_lo, d_hi, e_lo, e_hi


@triton.jit
def _tile_needs_mask(n0, N, d_lo, d_hi, e_lo, e_hi, BLOCK_N: tl.constexpr, HAS_KEYS: tl.constexpr):
    """Whether column tile ``[n0, n0 + BLOCK_N)`` holds padding or (self mode) overlaps the
    block's diagonal or excluded range. For NT-Xent the excluded (positive) columns of a row block
    are one contiguous run ``B`` away from its diagonal: two or three tiles in all, except for the
    one row block that straddles ``B``, whose range spans everything."""
    need = n0 + BLOCK_N > N
    if not HAS_KEYS:
        need = need | ((n0 <= d_hi) & (n0 + BLOCK_N > d_lo))
        need = need | ((n0 <= e_hi) & (n0 + BLOCK_N > e_lo))
    return need


@triton.jit
def _mask_tile(t, cols, N, grow, excl, HAS_KEYS: tl.constexpr):
    """``t`` with −inf at the padding columns, and (self mode) at the diagonal and excluded ones."""
    keep = cols[None, :] < N
    if not HAS_KEYS:
        keep = keep & (cols[None, :] != grow[:, None]) & (cols[None, :] != excl[:, None])
    return tl.where(keep, t, float("-inf"))


@triton.jit
def _ntxent_fwd_kernel(
    z_ptr,
    c_ptr,
    excl_ptr,
    m_ptr,
    l_ptr,
    N,
    D,
    row_start,
    row_count,
    stride_z,
    stride_c,
    cols_per_part,
    qk_scale,
    k_shift,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    FIXED_SHIFT: tl.constexpr,
    HAS_KEYS: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    part = tl.program_id(1)
    offs_m, row_ok, grow, excl, d_lo, d_hi, e_lo, e_hi = _row_block(
        excl_ptr, pid_m, row_start, row_count, BLOCK_M, HAS_KEYS, HAS_EXCLUDE
    )
    offs_d = tl.arange(0, BLOCK_D)
    row_off = grow.to(tl.int64) * stride_z

    if SINGLE_D:  # all of D in one block: the row block stays in registers
        zr = _load_rows(z_ptr, row_off, row_ok, offs_d, D, UPCAST_OPERANDS)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of s·log2(e) (online)
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # sum of 2^(s·log2(e) − K) or 2^(s·log2(e) − m_i)
    col_lo = part * cols_per_part
    col_hi = tl.minimum(N, col_lo + cols_per_part)
    for n0 in range(col_lo, col_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        col_off = cols.to(tl.int64) * stride_c
        if SINGLE_D:
            zc = _load_rows(c_ptr, col_off, col_ok, offs_d, D, UPCAST_OPERANDS)
            s = tl.dot(zr, tl.trans(zc), input_precision=INPUT_PRECISION)
        else:
            s = _similarity_tile(
                z_ptr,
                row_off,
                row_ok,
                c_ptr,
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
        t = s * qk_scale - k_shift  # one FMA (k_shift = 0 without FIXED_SHIFT)
        if _tile_needs_mask(n0, N, d_lo, d_hi, e_lo, e_hi, BLOCK_N, HAS_KEYS):
            t = _mask_tile(t, cols, N, grow, excl, HAS_KEYS)
        if FIXED_SHIFT:
            l_i += tl.sum(tl.exp2(t), axis=1)
        else:
            m_new = tl.maximum(m_i, tl.max(t, axis=1))
            # a row whose columns so far are all excluded keeps m = −inf: shift by 0 instead
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(t - m_use[:, None]), axis=1)
            m_i = m_new

    out = part.to(tl.int64) * row_count + offs_m
    tl.store(l_ptr + out, l_i, mask=row_ok)
    if not FIXED_SHIFT:
        tl.store(m_ptr + out, m_i, mask=row_ok)


# The gradient (SimCLR, Chen et al., arXiv 2002.05709; docs/design.md §2 and §9). With the
# shifted log-sum-exp x_k of the forward (online softmax, arXiv 1805.02867) no tile is stored:
#     x_k  = log Σ_{j∈C(k)} e^{s_kj − shift_k},    s_kj = inv_tau · z_k · c_j
#     G_kj = weight_k e^{s_kj − shift_k} + weight_j e^{s_kj − shift_j}   (j ∈ C(k); keys: row term only)
#     dz_k = inv_tau · Σ_j G_kj c_j
#
# One exponential per element (FIXED_SHIFT, |inv_tau| <= 40): e^{s − shift} = e^{s − C} e^{C − shift}
# with C = |inv_tau|, so G_kj = e^{s_kj − C} (u_k + u_j), u = weight · e^{C − shift}.
#
# Each row of G is scaled by σ_k before the cast that feeds the second dot to the tensor cores:
# row k's own terms add up to T_k = |weight_k| e^{x_k}, and its column terms are bounded by
# T_j <= T_max, so σ_k = 2^14 / (T_k + T_max) puts every entry of the row in [−2^14, 2^14] and
# keeps small entries above fp16's subnormal range. The launcher computes, on the device in fp64:
#     row_a_k = σ_k u_k 2^−E,  row_b_k = σ_k T_max,  col_v_j = u_j / T_max,  out_scale_k = inv_tau / σ_k
# and the kernel forms  σ_k G_kj = 2^{s·log2(e)·inv_tau − (C·log2(e) − E)} · (row_a_k + row_b_k col_v_j)
# (one FMA, one ex2, one FMA, one multiply). E = 8 keeps row_a finite in fp32: |row_a_k| <=
# 2^{14−E} e^{C − lse_k} <= 2^6 e^{2C} < 2^122 for C <= 40.
#
# Otherwise (|inv_tau| > 40) two exponentials with everything but the sign in the exponent:
#     σ_k G_kj = row_s_k 2^{t + row_a_k} + col_s_j 2^{t + col_v_j + row_b_k},   t = s·log2(e)·inv_tau
# row_a_k = log2|σ_k weight_k| − shift_k log2(e), row_b_k = log2(σ_k T_max),
# col_v_j = log2(|weight_j| / T_max) − shift_j log2(e): each term is at most 2^14, nothing overflows.
#
# Entries outside C(k) are masked to 0 in the tiles that hold one; padding rows get row_a = row_b
# = 0 (fixed) or −inf (two exponentials) and so zero rows of G.
@triton.jit
def _ntxent_bwd_kernel(
    z_ptr,
    c_ptr,
    excl_ptr,
    row_a_ptr,
    row_b_ptr,
    row_s_ptr,
    col_v_ptr,
    col_s_ptr,
    out_scale_ptr,
    dz_ptr,
    N,
    D,
    row_start,
    row_count,
    stride_z,
    stride_c,
    stride_dz,
    cols_per_part,
    qk_scale,
    k_shift,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    FIXED_SHIFT: tl.constexpr,
    HAS_KEYS: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    part = tl.program_id(1)
    offs_m, row_ok, grow, excl, d_lo, d_hi, e_lo, e_hi = _row_block(
        excl_ptr, pid_m, row_start, row_count, BLOCK_M, HAS_KEYS, HAS_EXCLUDE
    )
    offs_d = tl.arange(0, BLOCK_D)
    row_off = grow.to(tl.int64) * stride_z
    # this part's slice of the (num_parts · row_count, D) output
    out_off = (part.to(tl.int64) * row_count + offs_m) * stride_dz

    pad = 0.0 if FIXED_SHIFT else float("-inf")
    a_k = tl.load(row_a_ptr + offs_m, mask=row_ok, other=pad)
    if not HAS_KEYS:
        b_k = tl.load(row_b_ptr + offs_m, mask=row_ok, other=pad)
    if not FIXED_SHIFT:
        s_k = tl.load(row_s_ptr + offs_m, mask=row_ok, other=0.0)

    if SINGLE_D:  # all of D in one block: the row block stays in registers
        zr = _load_rows(z_ptr, row_off, row_ok, offs_d, D, UPCAST_OPERANDS)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)

    col_lo = part * cols_per_part
    col_hi = tl.minimum(N, col_lo + cols_per_part)
    for n0 in range(col_lo, col_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        col_off = cols.to(tl.int64) * stride_c
        if not HAS_KEYS:
            v_j = tl.load(col_v_ptr + cols, mask=col_ok, other=pad)
            if not FIXED_SHIFT:
                s_j = tl.load(col_s_ptr + cols, mask=col_ok, other=0.0)
        if SINGLE_D:
            zc = _load_rows(c_ptr, col_off, col_ok, offs_d, D, UPCAST_OPERANDS)
            s = tl.dot(zr, tl.trans(zc), input_precision=INPUT_PRECISION)
        else:
            s = _similarity_tile(
                z_ptr,
                row_off,
                row_ok,
                c_ptr,
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
        t = s * qk_scale - k_shift  # one FMA (k_shift = 0 without FIXED_SHIFT)
        if _tile_needs_mask(n0, N, d_lo, d_hi, e_lo, e_hi, BLOCK_N, HAS_KEYS):
            t = _mask_tile(t, cols, N, grow, excl, HAS_KEYS)
        if FIXED_SHIFT:
            e = tl.exp2(t)
            g = e * a_k[:, None] if HAS_KEYS else e * (a_k[:, None] + b_k[:, None] * v_j[None, :])
        else:
            g = s_k[:, None] * tl.exp2(t + a_k[:, None])
            if not HAS_KEYS:
                g += s_j[None, :] * tl.exp2(t + (v_j[None, :] + b_k[:, None]))
        g = g.to(c_ptr.dtype.element_ty)  # fp16/bf16 inputs: the second dot runs on tensor cores
        if UPCAST_OPERANDS:
            g = g.to(tl.float32)
        if SINGLE_D:
            acc = tl.dot(g, zc, acc, input_precision=INPUT_PRECISION)
        else:
            # This program alone owns these rows of its part of dz: read-modify-write them chunk
            # by chunk. The barrier orders each chunk's stores before any later load of the same
            # rows (bar.sync makes a CTA's global writes visible to the whole CTA).
            for d0 in range(0, D, BLOCK_D):
                b = _load_rows(c_ptr, col_off, col_ok, d0 + offs_d, D, UPCAST_OPERANDS)
                out_ptrs = dz_ptr + out_off[:, None] + (d0 + offs_d)[None, :]
                out_mask = row_ok[:, None] & ((d0 + offs_d)[None, :] < D)
                acc_part = tl.load(out_ptrs, mask=out_mask, other=0.0)
                acc_part = tl.dot(g, b, acc_part, input_precision=INPUT_PRECISION)
                tl.store(out_ptrs, acc_part, mask=out_mask)
            tl.debug_barrier()

    out_scale = tl.load(out_scale_ptr + offs_m, mask=row_ok, other=0.0)
    if SINGLE_D:
        tl.store(
            dz_ptr + out_off[:, None] + offs_d[None, :],
            acc * out_scale[:, None],
            mask=row_ok[:, None] & (offs_d[None, :] < D),
        )
    else:
        for d0 in range(0, D, BLOCK_D):
            out_ptrs = dz_ptr + out_off[:, None] + (d0 + offs_d)[None, :]
            out_mask = row_ok[:, None] & ((d0 + offs_d)[None, :] < D)
            acc_part = tl.load(out_ptrs, mask=out_mask, other=0.0)
            tl.store(out_ptrs, acc_part * out_scale[:, None], mask=out_mask)
