"""Fused backward of the whole additive attention module (SPEC.md section 1; the math is in
_attention_backward's docstring): three kernels that read x, the output gradient dy, the weights
and small fp32 partials, and write dx plus per-segment weight-gradient partials. No token-sized
intermediate (q, k, qn, gk, o1, dout1, dgk, dq, dk) ever goes through memory.

Algebra that keeps every GEMM on tiles (dout1 = dy Wf, or dy without a final linear):
  dgk = dout1 Wp = dy Wfp with Wfp = Wf Wp, a [T, D] matrix formed once on the host.
  dWp = dout1^T gk = Wf^T E,  dWf = dy^T o1 = E Wp^T + F + (sum dy) bp^T,  dbp = (sum dy) Wf,
  with E = dy^T gk and F = dy^T qn: column chunk i of E / F needs only column chunk i of gk / qn,
  so no kernel needs o1 or a full dout1 row for the weight gradients.

  Kernel P (_attn_bwd_fused_pool_kernel, grid B x SPLITS): per token tile q, k = x Wqk^T + bqk
    and dgk = dy Wfp (tl.dot, K-loops); the forward's split pool state (_attention helpers) and
    the partial dG = sum_n dgk_n * normalize(k_n) into ws_g / ws_ml / ws_dg.
  Kernel T (_attn_bwd_fused_token_kernel, grid B x token tiles): merges G, dG and the pool
    normalizer; recomputes q, k, dout1, dgk; dq, dk in registers (pool + normalize backward);
    dx = dq Wq + dk Wk per BLOCK_J-wide output chunk (dq / dk are the A operands). Writes dx,
    the merged G / dG rows ([B, 2, BLOCK_D] fp32) and six fp32 scalars per token that make
    every column chunk of dq / dk / qn / gk a linear function of the chunk of q, k, dout1, dgk:
      dq_i = qinv a dG_i + qinv ds wg_i + qinv dout1_i - qinv^2 (qn . dqn) q_i
      dk_i = kinv G_i dgk_i - kinv^2 (kn . dkn) k_i,   gk_i = kinv G_i k_i,   qn_i = qinv q_i
    (ds includes `scale`; the row dots are 0 where the norm is clamped at eps, as F.normalize).
  Kernel W (_attn_bwd_fused_weight_kernel, grid 4 parts x D-chunks x token segments): per
    token tile (rows of all batches, flattened) recomputes the chunk-wide q_i / k_i / dout1_i /
    dgk_i its part needs (K-looped tl.dot on x / dy tiles), forms dq_i, dk_i, gk_i or qn_i from
    the scalars and accumulates one of dWq[i, :] += dq_i^T x (+ dbq, dw_g), dWk[i, :] +=
    dk_i^T x (+ dbk), E[:, i], F[:, i] (+ sum dy) in registers. One fp32 partial block per
    segment: deterministic (no atomics), like the MLP backward; one _partials.sum_partials
    launch sums the segments and stores dWq / dWk / their biases / dw_g in their dtype.
Kernel F (_attn_bwd_finalize_kernel, one launch) then forms dWp, dbp, dWf, dbf from E, F and
sum dy (small fp32 GEMMs on [T, D] / [D, D] tiles), each rounded once to its parameter's dtype.

Numerics: fp32 arithmetic after every load; GEMM operands in the input dtype for fp16/bf16 (as
the eager reference rounds dqk, gk, ...) and fp32 with input_precision="ieee" for fp32. Token
offsets int64. x needs a unit channel stride (the launcher copies otherwise); dy is made
contiguous. Widths: padded max(D, T) <= max(BWD_FUSED_CONFIGS) = 256 for every dtype (512, the
SwiftFormer-L1/L3 stage 3-4 widths, not tried); fp32 at 256 runs FP32_CONFIGS (kernel T's dq / dk
through an fp32 workspace, DQK_SCRATCH; kernel W at 16 warps). Wider shapes take the torch-GEMM
path of _attention_backward.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _attention as A
from ._conv import _cast_out, _input_prec, _vec, dot_dtype, dtype_config
from ._partials import sum_partials


@triton.jit
def _rows_dot(a_ptr, arow, rmask, K, w_ptr, swk, swc, cols, cmask,
              BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr):
    """fp32 [len(arow), len(cols)] tile of A[rows, :K] @ W[:K, cols]: A rows at element offsets
    arow (int64, unit column stride), W element (k, c) at w_ptr + k * swk + c * swc; K-loop in
    BLOCK_K chunks. Masked rows / columns come out 0."""
    acc = tl.zeros((arow.shape[0], cols.shape[0]), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < K
        a = tl.load(a_ptr + arow[:, None] + kk[None, :], mask=rmask[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        w = tl.load(w_ptr + kk[:, None] * swk + cols[None, :] * swc,
                    mask=kmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(a.to(DOT_DT), w.to(DOT_DT), acc, input_precision=INPUT_PREC,
                     out_dtype=tl.float32)
    return acc


@triton.jit
def _qk_tiles(x_ptr, xrow, nmask, wqk_ptr, bqk_ptr, d, dmask, D,
              BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr):
    """Full-width fp32 q, k tiles of x Wqk^T + bqk (0 in masked rows and columns)."""
    q = _rows_dot(x_ptr, xrow, nmask, D, wqk_ptr, 1, D, d, dmask, BLOCK_K, DOT_DT, INPUT_PREC)
    k = _rows_dot(x_ptr, xrow, nmask, D, wqk_ptr + D * D, 1, D, d, dmask, BLOCK_K, DOT_DT,
                  INPUT_PREC)
    msk = nmask[:, None] & dmask[None, :]
    q = tl.where(msk, q + tl.load(bqk_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :],
                 0.0)
    k = tl.where(msk, k + tl.load(bqk_ptr + D + d, mask=dmask, other=0.0).to(tl.float32)[None, :],
                 0.0)
    return q, k


@triton.jit
def _attn_bwd_fused_pool_kernel(
    x_ptr, dy_ptr, wqk_ptr, bqk_ptr, wg_ptr, wfp_ptr, ws_g_ptr, ws_ml_ptr, ws_dg_ptr,
    N, D, T, TOK_PER_SPLIT, scale,
    sxb, sxn,
    POOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """Kernel P for batch b = pid0, tokens [pid1*TOK_PER_SPLIT, +TOK_PER_SPLIT): the forward's
    partial pool state into ws_g / ws_ml and the partial dG into ws_dg[b, pid1, :]."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    wg = tl.load(wg_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    g, m, acc_l = A._pool_init(BLOCK_N, BLOCK_D)
    dg = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = tl.program_id(1) * TOK_PER_SPLIT
    end = tl.minimum(start + TOK_PER_SPLIT, N)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        n64 = n.to(tl.int64)
        q, k = _qk_tiles(x_ptr, b * sxb + n64 * sxn, nmask, wqk_ptr, bqk_ptr, d, dmask, D,
                         BLOCK_K, DOT_DT, INPUT_PREC)
        g, m, acc_l = A._pool_accumulate(A._normalize_rows(q, nmask), wg, scale, nmask, g, m,
                                         acc_l, POOL)
        dgk = _rows_dot(dy_ptr, (b * N + n64) * T, nmask, T, wfp_ptr, D, 1, d, dmask, BLOCK_K,
                        DOT_DT, INPUT_PREC)
        dg += tl.sum(dgk * A._normalize_rows(k, nmask), axis=0)
    A._store_partials(ws_g_ptr, ws_ml_ptr, b, g, m, acc_l)
    tl.store(ws_dg_ptr + (b * tl.num_programs(1) + tl.program_id(1)) * BLOCK_D + d, dg)


@triton.jit
def _attn_bwd_fused_token_kernel(
    x_ptr, dy_ptr, wqk_ptr, bqk_ptr, wg_ptr, wf_ptr, wfp_ptr, ws_g_ptr, ws_ml_ptr, ws_dg_ptr,
    gm_ptr, tok_ptr, dx_ptr, ws_dqk_ptr,
    N, D, T, NSPLIT, R, scale,
    sxb, sxn,
    HAS_FINAL: tl.constexpr, NEED_DX: tl.constexpr, POOL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_S: tl.constexpr, DQK_SCRATCH: tl.constexpr, DOT_DT: tl.constexpr,
    INPUT_PREC: tl.constexpr,
):
    """Kernel T for batch b = pid0 and BLOCK_N tokens (tile pid1): dx (NEED_DX; [B, N, D]
    contiguous), the six per-token scalars into tok[0:6, b*N + n] and (pid1 == 0) G, dG into
    gm[b, 0:2, :]. DQK_SCRATCH (with NEED_DX): dk, then dq, go to this program's own fp32
    [2, BLOCK_N, D] block of ws_dqk (block pid0 * num_programs(1) + pid1) and dx = dq Wq + dk Wk
    K-loops over it in BLOCK_K chunks (L1/L2 hits) instead of holding dq / dk as K = BLOCK_D
    dot operands in registers (FP32_CONFIGS; the fused forward's GK_SCRATCH, for the same
    reason). A persistent grid reusing L2-resident blocks, as the forward's kernel B does, spilled
    16-160 B at sm_80 (8 / 16 warps, BLOCK_K 8 / 16, BLOCK_J 8 / 16 / 32; AOT report), so the
    workspace here is token-sized."""
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    G = A._merge_global_query(ws_g_ptr, ws_ml_ptr, b, NSPLIT, POOL, BLOCK_S, BLOCK_D)
    dG = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for sp in range(0, NSPLIT):
        dG += tl.load(ws_dg_ptr + (b * NSPLIT + sp) * BLOCK_D + d)
    if tile == 0:
        tl.store(gm_ptr + b * 2 * BLOCK_D + d, G)
        tl.store(gm_ptr + b * 2 * BLOCK_D + BLOCK_D + d, dG)
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    row = b * N + n64
    msk = nmask[:, None] & dmask[None, :]
    q, k = _qk_tiles(x_ptr, b * sxb + n64 * sxn, nmask, wqk_ptr, bqk_ptr, d, dmask, D,
                     BLOCK_K, DOT_DT, INPUT_PREC)
    # k's half first: its tiles are dead before q's backward needs dout1 (registers at 256)
    dgk = _rows_dot(dy_ptr, row * T, nmask, T, wfp_ptr, D, 1, d, dmask, BLOCK_K, DOT_DT,
                    INPUT_PREC)
    knrm = tl.sqrt(tl.sum(k * k, axis=1))
    kinv = 1.0 / tl.maximum(knrm, 1e-12)
    dkn = dgk * G[None, :]
    rk = tl.where(knrm >= 1e-12, tl.sum(k * dkn, axis=1) * kinv, 0.0)
    dk = tl.where(msk, (dkn - k * (kinv * rk)[:, None]) * kinv[:, None], 0.0)
    if NEED_DX and DQK_SCRATCH:
        r = tl.arange(0, BLOCK_N)
        blk = ws_dqk_ptr + (b * tl.num_programs(1) + tile) * (2 * BLOCK_N * D)
        # rows past N are neither written nor read (no traffic for a ragged last tile)
        tl.store(blk + (BLOCK_N + r)[:, None] * D + d[None, :], dk, mask=msk)
    if HAS_FINAL:
        dout1 = _rows_dot(dy_ptr, row * T, nmask, T, wf_ptr, D, 1, d, dmask, BLOCK_K, DOT_DT,
                          INPUT_PREC)
    else:  # T = D
        dout1 = tl.load(dy_ptr + row[:, None] * D + d[None, :], mask=msk,
                        other=0.0).to(tl.float32)
    qnrm = tl.sqrt(tl.sum(q * q, axis=1))
    qinv = 1.0 / tl.maximum(qnrm, 1e-12)
    qn = q * qinv[:, None]
    if POOL == 0:
        a = tl.where(nmask, 1.0, 0.0)
        ds = tl.zeros((BLOCK_N,), dtype=tl.float32)
    else:
        wg = tl.load(wg_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        a, ds = A._pool_backward(qn, wg, G, dG, scale, nmask, ws_ml_ptr, b, NSPLIT, POOL,
                                  BLOCK_S)
        dout1 += ds[:, None] * wg[None, :]
    dqn = a[:, None] * dG[None, :] + dout1
    rq = tl.where(qnrm >= 1e-12, tl.sum(qn * dqn, axis=1), 0.0)
    dq = tl.where(msk, (dqn - qn * rq[:, None]) * qinv[:, None], 0.0)
    rmask = nmask
    tl.store(tok_ptr + row, tl.where(rmask, qinv, 0.0), mask=rmask)
    tl.store(tok_ptr + R + row, qinv * a, mask=rmask)
    tl.store(tok_ptr + 2 * R + row, qinv * ds, mask=rmask)
    tl.store(tok_ptr + 3 * R + row, qinv * qinv * rq, mask=rmask)
    tl.store(tok_ptr + 4 * R + row, tl.where(rmask, kinv, 0.0), mask=rmask)
    tl.store(tok_ptr + 5 * R + row, kinv * rk, mask=rmask)
    if NEED_DX and DQK_SCRATCH:
        tl.store(blk + r[:, None] * D + d[None, :], dq, mask=msk)
        tl.debug_barrier()  # every thread's dq / dk stores are visible to the chunk loads
        for j0 in range(0, D, BLOCK_J):
            jj = j0 + tl.arange(0, BLOCK_J)
            jmask = jj < D
            dx = tl.zeros((BLOCK_N, BLOCK_J), dtype=tl.float32)
            for h in range(0, 2):  # dq Wq, then dk Wk
                for k0 in range(0, D, BLOCK_K):
                    kk = k0 + tl.arange(0, BLOCK_K)
                    kmask = kk < D
                    dch = tl.load(blk + (h * BLOCK_N + r)[:, None] * D + kk[None, :],
                                  mask=nmask[:, None] & kmask[None, :], other=0.0)
                    wch = tl.load(wqk_ptr + h * D * D + kk[:, None] * D + jj[None, :],
                                  mask=kmask[:, None] & jmask[None, :], other=0.0)
                    dx = tl.dot(dch.to(DOT_DT), wch.to(tl.float32).to(DOT_DT), dx,
                                input_precision=INPUT_PREC, out_dtype=tl.float32)
            tl.store(dx_ptr + row[:, None] * D + jj[None, :], _cast_out(dx, dx_ptr),
                     mask=nmask[:, None] & jmask[None, :])
    elif NEED_DX:
        dqd = dq.to(DOT_DT)
        dkd = dk.to(DOT_DT)
        for j0 in range(0, D, BLOCK_J):
            jj = j0 + tl.arange(0, BLOCK_J)
            jmask = jj < D
            wmask = dmask[:, None] & jmask[None, :]
            wq = tl.load(wqk_ptr + d[:, None] * D + jj[None, :], mask=wmask,
                         other=0.0).to(tl.float32)
            dx = tl.dot(dqd, wq.to(DOT_DT), input_precision=INPUT_PREC, out_dtype=tl.float32)
            wk = tl.load(wqk_ptr + D * D + d[:, None] * D + jj[None, :], mask=wmask,
                         other=0.0).to(tl.float32)
            dx = tl.dot(dkd, wk.to(DOT_DT), dx, input_precision=INPUT_PREC,
                        out_dtype=tl.float32)
            tl.store(dx_ptr + row[:, None] * D + jj[None, :], _cast_out(dx, dx_ptr),
                     mask=nmask[:, None] & jmask[None, :])


@triton.jit
def _chunk_dot_t(w_ptr, swi, swk, i, imask, a_ptr, arow, rmask, K,
                 BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr):
    """fp32 [len(i), len(arow)] tile of W[i, :K] @ A[rows, :K]^T: W element (i, k) at
    w_ptr + i * swi + k * swk, A rows at element offsets arow (unit column stride). K-loop in
    BLOCK_K chunks: with K whole, both operands of these skinny dots are replicated in every
    warp (~128 registers at K = 256, AOT report)."""
    acc = tl.zeros((i.shape[0], arow.shape[0]), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < K
        w = tl.load(w_ptr + i[:, None] * swi + kk[None, :] * swk,
                    mask=imask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        a = tl.load(a_ptr + arow[:, None] + kk[None, :], mask=rmask[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        acc = tl.dot(w.to(DOT_DT), tl.trans(a.to(DOT_DT)), acc, input_precision=INPUT_PREC,
                     out_dtype=tl.float32)
    return acc


@triton.jit
def _w_rows(x_ptr, r0, end, N, sxb, sxn, BLOCK_N: tl.constexpr):
    """Kernel W's token tile [r0, r0 + BLOCK_N) of the flattened rows (masked at `end`):
    (rows, row mask, batch of each row, x row offsets)."""
    r = (r0 + tl.arange(0, BLOCK_N)).to(tl.int64)
    rmask = r < end
    bb = r // N
    return r, rmask, bb, bb * sxb + (r - bb * N) * sxn


@triton.jit
def _w_proj_chunk(x_ptr, xrow, rmask, w_ptr, b_ptr, i, imask, D,
                  BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr):
    """q_i^T or k_i^T ([BLOCK_I, BLOCK_N] fp32): W[i, :] x^T + b[i] for W = Wq or Wk."""
    v = _chunk_dot_t(w_ptr, D, 1, i, imask, x_ptr, xrow, rmask, D, BLOCK_K, DOT_DT, INPUT_PREC)
    v += tl.load(b_ptr + i, mask=imask, other=0.0).to(tl.float32)[:, None]
    return v


@triton.jit
def _w_tok(tok_ptr, j, R, r, rmask):
    """Per-token scalar j of kernel T for rows r, as a [1, BLOCK_N] row (0 where masked)."""
    return tl.load(tok_ptr + j * R + r, mask=rmask, other=0.0)[None, :]


@triton.jit
def _attn_bwd_fused_weight_kernel(
    x_ptr, dy_ptr, wqk_ptr, bqk_ptr, wg_ptr, wf_ptr, wfp_ptr, gm_ptr, tok_ptr, ws_w_ptr,
    N, D, T, R, ROWS_PER_SEG,
    sxb, sxn,
    HAS_FINAL: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """Kernel W for channels i = [pid1*BLOCK_I, +BLOCK_I) over the flattened token rows
    [pid2*ROWS_PER_SEG, +ROWS_PER_SEG) into segment pid2's partial ws_w[pid2] (fp32, flat:
    [2D + 2T + 3, D] = dWq, dWk, E, F, then the rows dbq, dbk, dw_g; then sum dy [T]) at rows /
    columns i. pid0 picks one accumulator: 0: dWq[i, :] += dq_i x (+ dbq, dw_g), 1: dWk[i, :]
    += dk_i x (+ dbk), 2: E[:, i] += gk_i^T dy, 3: F[:, i] += qn_i^T dy (+ sum dy at pid1 = 0).
    The programs of one segment are neighbours in launch order (segment slowest), so their
    re-reads of the same x / dy tiles hit L2.
    All four in one program spilled at width 256 (AOT report); split, q_i / k_i are computed
    twice each. Chunk quantities are held transposed ([BLOCK_I, BLOCK_N]): they are then the A
    operands of the weight-gradient dots, every accumulator is [BLOCK_I, width] (E and F are
    stored transposed)."""
    part = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = i < D
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    t = tl.arange(0, BLOCK_T)
    tmask = t < T
    seg = tl.program_id(2)
    start = seg * ROWS_PER_SEG
    end = tl.minimum(start + ROWS_PER_SEG, R)
    base = ws_w_ptr + seg.to(tl.int64) * ((2 * D + 2 * T + 3) * D + T)
    vrow = base + (2 * D + 2 * T) * D
    acc = tl.zeros((BLOCK_I, BLOCK_D), dtype=tl.float32)
    v1 = tl.zeros((BLOCK_I,), dtype=tl.float32)
    v2 = tl.zeros((BLOCK_I,), dtype=tl.float32)
    if part == 0:
        wg_i = tl.load(wg_ptr + i, mask=imask, other=0.0).to(tl.float32)
        for r0 in range(start, end, BLOCK_N):
            r, rmask, bb, xrow = _w_rows(x_ptr, r0, end, N, sxb, sxn, BLOCK_N)
            q_i = _w_proj_chunk(x_ptr, xrow, rmask, wqk_ptr, bqk_ptr, i, imask, D,
                                BLOCK_K, DOT_DT, INPUT_PREC)
            irm = imask[:, None] & rmask[None, :]
            if HAS_FINAL:
                dout1_i = _chunk_dot_t(wf_ptr, 1, D, i, imask, dy_ptr, r * T, rmask, T, BLOCK_K,
                                       DOT_DT, INPUT_PREC)
            else:  # T = D
                dout1_i = tl.load(dy_ptr + r[None, :] * T + i[:, None], mask=irm,
                                  other=0.0).to(tl.float32)
            dG_i = tl.load(gm_ptr + bb[None, :] * 2 * BLOCK_D + BLOCK_D + i[:, None], mask=irm,
                           other=0.0)
            c_s = _w_tok(tok_ptr, 2, R, r, rmask)
            dq_i = _w_tok(tok_ptr, 1, R, r, rmask) * dG_i + c_s * wg_i[:, None] \
                + _w_tok(tok_ptr, 0, R, r, rmask) * dout1_i - _w_tok(tok_ptr, 3, R, r, rmask) * q_i
            xd = tl.load(x_ptr + xrow[:, None] + d[None, :], mask=rmask[:, None] & dmask[None, :],
                         other=0.0).to(tl.float32).to(DOT_DT)
            acc = tl.dot(dq_i.to(DOT_DT), xd, acc, input_precision=INPUT_PREC,
                         out_dtype=tl.float32)
            v1 += tl.sum(dq_i, axis=1)
            v2 += tl.sum(c_s * q_i, axis=1)
        tl.store(base + i[:, None] * D + d[None, :], acc, mask=imask[:, None] & dmask[None, :])
        tl.store(vrow + i, v1, mask=imask)
        tl.store(vrow + 2 * D + i, v2, mask=imask)
    elif part == 1:
        for r0 in range(start, end, BLOCK_N):
            r, rmask, bb, xrow = _w_rows(x_ptr, r0, end, N, sxb, sxn, BLOCK_N)
            k_i = _w_proj_chunk(x_ptr, xrow, rmask, wqk_ptr + D * D, bqk_ptr + D, i, imask, D,
                                BLOCK_K, DOT_DT, INPUT_PREC)
            dgk_i = _chunk_dot_t(wfp_ptr, 1, D, i, imask, dy_ptr, r * T, rmask, T, BLOCK_K,
                                 DOT_DT, INPUT_PREC)
            G_i = tl.load(gm_ptr + bb[None, :] * 2 * BLOCK_D + i[:, None],
                          mask=imask[:, None] & rmask[None, :], other=0.0)
            dk_i = _w_tok(tok_ptr, 4, R, r, rmask) \
                * (G_i * dgk_i - _w_tok(tok_ptr, 5, R, r, rmask) * k_i)
            xd = tl.load(x_ptr + xrow[:, None] + d[None, :], mask=rmask[:, None] & dmask[None, :],
                         other=0.0).to(tl.float32).to(DOT_DT)
            acc = tl.dot(dk_i.to(DOT_DT), xd, acc, input_precision=INPUT_PREC,
                         out_dtype=tl.float32)
            v1 += tl.sum(dk_i, axis=1)
        tl.store(base + (D + i[:, None]) * D + d[None, :], acc,
                 mask=imask[:, None] & dmask[None, :])
        tl.store(vrow + D + i, v1, mask=imask)
    else:
        v_bf = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for r0 in range(start, end, BLOCK_N):
            r, rmask, bb, xrow = _w_rows(x_ptr, r0, end, N, sxb, sxn, BLOCK_N)
            if part == 2:  # gk_i = kinv G_i k_i
                c_i = _w_proj_chunk(x_ptr, xrow, rmask, wqk_ptr + D * D, bqk_ptr + D, i, imask,
                                    D, BLOCK_K, DOT_DT, INPUT_PREC)
                c_i *= _w_tok(tok_ptr, 4, R, r, rmask) \
                    * tl.load(gm_ptr + bb[None, :] * 2 * BLOCK_D + i[:, None],
                              mask=imask[:, None] & rmask[None, :], other=0.0)
            else:  # qn_i = qinv q_i
                c_i = _w_proj_chunk(x_ptr, xrow, rmask, wqk_ptr, bqk_ptr, i, imask, D,
                                    BLOCK_K, DOT_DT, INPUT_PREC) * _w_tok(tok_ptr, 0, R, r, rmask)
            dy = tl.load(dy_ptr + r[:, None] * T + t[None, :],
                         mask=rmask[:, None] & tmask[None, :], other=0.0).to(tl.float32)
            acc = tl.dot(c_i.to(DOT_DT), dy.to(DOT_DT), acc, input_precision=INPUT_PREC,
                         out_dtype=tl.float32)
            v_bf += tl.sum(dy, axis=0)
        itm = imask[:, None] & tmask[None, :]
        tl.store(base + (2 * D + (part - 2) * T + t[None, :]) * D + i[:, None], acc, mask=itm)
        if part == 3:
            if tl.program_id(1) == 0:
                tl.store(vrow + 3 * D + t, v_bf, mask=tmask)


@triton.jit
def _attn_bwd_finalize_kernel(
    e_ptr, f_ptr, dbf_ptr, wf_ptr, wp_ptr, bp_ptr, dwp_ptr, dbp_ptr, dwf_ptr, dbfo_ptr,
    D, T,
    HAS_FINAL: tl.constexpr, NEED_WP: tl.constexpr,
    NEED_BP: tl.constexpr, NEED_WF: tl.constexpr, NEED_BF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The host-side tail of the fused backward in one launch, from kernel W's summed fp32
    E = dy^T gk, F = dy^T qn ([T, D]) and s = sum dy ([T]):
      programs [0, nd^2) (NEED_WP or NEED_BP): the [BLOCK, BLOCK] tile (i, j) of
        dWp = Wf^T E (E itself without a final linear); the j == 0 programs also write
        dbp[i-block] = Wf^T s (s itself);
      programs [nd^2, nd^2 + nt nd) (NEED_WF or NEED_BF): tile (t, j) of
        dWf = E Wp^T + F + s bp^T; the j == 0 programs also write dbf[t-block] = s.
    fp32 FMA dots (input_precision "ieee") on fp32 loads, like the fp32 torch GEMMs they
    replace; every result is rounded once to its gradient's dtype."""
    pid = tl.program_id(0)
    nd = tl.cdiv(D, BLOCK)
    n_p = 0
    if NEED_WP or NEED_BP:
        n_p = nd * nd
    r = tl.arange(0, BLOCK)
    if pid < n_p:
        i = (pid // nd) * BLOCK + r  # dWp rows (D)
        j = (pid % nd) * BLOCK + r  # dWp columns (D)
        im, jm = i < D, j < D
        if HAS_FINAL:
            acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
            bacc = tl.zeros((BLOCK,), dtype=tl.float32)
            for t0 in range(0, T, BLOCK):
                t = t0 + r
                tm = t < T
                wft = tl.load(wf_ptr + t[None, :] * D + i[:, None], mask=im[:, None] & tm[None, :],
                              other=0.0).to(tl.float32)  # Wf^T tile [i, t]
                if NEED_WP:
                    e = tl.load(e_ptr + t[:, None] * D + j[None, :],
                                mask=tm[:, None] & jm[None, :], other=0.0)
                    acc = tl.dot(wft, e, acc, input_precision="ieee", out_dtype=tl.float32)
                if NEED_BP:
                    s = tl.load(dbf_ptr + t, mask=tm, other=0.0)
                    bacc += tl.sum(wft * s[None, :], axis=1)
        else:  # T == D: dWp = E, dbp = s
            acc = tl.load(e_ptr + i[:, None] * D + j[None, :], mask=im[:, None] & jm[None, :],
                          other=0.0)
            bacc = tl.load(dbf_ptr + i, mask=im, other=0.0)
        if NEED_WP:
            tl.store(dwp_ptr + i[:, None] * D + j[None, :], _cast_out(acc, dwp_ptr),
                     mask=im[:, None] & jm[None, :])
        if NEED_BP:
            if pid % nd == 0:
                tl.store(dbp_ptr + i, _cast_out(bacc, dbp_ptr), mask=im)
    else:
        q = pid - n_p
        t = (q // nd) * BLOCK + r  # dWf rows (T)
        j = (q % nd) * BLOCK + r  # dWf columns (D)
        tm, jm = t < T, j < D
        s = tl.load(dbf_ptr + t, mask=tm, other=0.0)
        if NEED_WF:
            acc = tl.load(f_ptr + t[:, None] * D + j[None, :], mask=tm[:, None] & jm[None, :],
                          other=0.0)
            for k0 in range(0, D, BLOCK):
                k = k0 + r
                km = k < D
                e = tl.load(e_ptr + t[:, None] * D + k[None, :], mask=tm[:, None] & km[None, :],
                            other=0.0)
                wpt = tl.load(wp_ptr + j[None, :] * D + k[:, None],
                              mask=km[:, None] & jm[None, :], other=0.0).to(tl.float32)
                acc = tl.dot(e, wpt, acc, input_precision="ieee", out_dtype=tl.float32)
            bp = tl.load(bp_ptr + j, mask=jm, other=0.0).to(tl.float32)
            acc += s[:, None] * bp[None, :]
            tl.store(dwf_ptr + t[:, None] * D + j[None, :], _cast_out(acc, dwf_ptr),
                     mask=tm[:, None] & jm[None, :])
        if NEED_BF:
            if q % nd == 0:
                tl.store(dbfo_ptr + t, _cast_out(s, dbfo_ptr), mask=tm)


FINALIZE_BLOCK, FINALIZE_WARPS = 32, 8


def _finalize(e_mat, f_mat, dbf, w_proj, b_proj, w_final, b_final, need):
    """{4: dWp, 5: dbp, 6: dWf, 7: dbf}, those `need` asks for, in their parameters' dtypes,
    from kernel W's summed fp32 E, F ([T, D]) and s = sum dy ([T]): one launch of
    _attn_bwd_finalize_kernel."""
    t_out, d = e_mat.shape
    out = {i: torch.empty(like.shape, device=e_mat.device, dtype=like.dtype)
           for i, like in ((4, w_proj), (5, b_proj), (6, w_final), (7, b_final)) if need[i]}
    nd, nt = triton.cdiv(d, FINALIZE_BLOCK), triton.cdiv(t_out, FINALIZE_BLOCK)
    n_p = nd * nd if (need[4] or need[5]) else 0
    n_f = nt * nd if (need[6] or need[7]) else 0
    if n_p + n_f == 0:
        return out
    dummy = e_mat
    _attn_bwd_finalize_kernel[(n_p + n_f,)](
        e_mat, f_mat, dbf, dummy if w_final is None else w_final.contiguous(),
        w_proj.contiguous(), _vec(b_proj, d, w_proj),
        *(out.get(i, dummy) for i in (4, 5, 6, 7)), d, t_out,
        HAS_FINAL=w_final is not None, NEED_WP=bool(need[4]),
        NEED_BP=bool(need[5]), NEED_WF=bool(need[6]), NEED_BF=bool(need[7]),
        BLOCK=FINALIZE_BLOCK, num_warps=FINALIZE_WARPS,
    )
    return out


# Configs by the padded width max(D, T) (every one run in the interpreter and AOT-compiled
# spill-free for sm_80 / sm_90 by tools/triton_report.py). Kernel T holds q, k, dgk, dout1 and
# then dq, dk as full [BLOCK_N, BLOCK_D] fp32 tiles: 32 tokens x 4 warps spilled 470-770 B for
# fp32 (operands of ieee dots live in registers), 16 x 8 warps did not. Kernel W holds one
# [BLOCK_I, width] accumulator; its skinny chunk dots run K-loops (whole-K operands are
# replicated per warp: 8-900 B spills at width 256), four accumulators in one program spilled
# 24-5700 B, and BLOCK_N 32 spilled at every width. Nothing is software-pipelined (num_stages
# 1: K-loops nest inside token loops, as in the fused forward).
BWD_FUSED_CONFIGS = {
    64: dict(pool=dict(BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1),
             token=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=32, num_warps=8, num_stages=1),
             weight=dict(BLOCK_N=16, BLOCK_I=16, BLOCK_K=16, num_warps=4, num_stages=1)),
    128: dict(pool=dict(BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1),
              token=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=16, num_warps=8, num_stages=1),
              weight=dict(BLOCK_N=16, BLOCK_I=16, BLOCK_K=16, num_warps=4, num_stages=1)),
    256: dict(pool=dict(BLOCK_N=16, BLOCK_K=16, num_warps=8, num_stages=1),
              token=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=16, num_warps=8, num_stages=1),
              weight=dict(BLOCK_N=16, BLOCK_I=16, BLOCK_K=16, num_warps=8, num_stages=1)),
}
# fp32 overrides of BWD_FUSED_CONFIGS at width 256 (AOT report, sm_80 / sm_90). Kernel T with
# dx spilled 400-408 B at 8 warps (232 B with BLOCK_J 8, 1.0-1.8 KB at 4 / 16 warps, the same
# with BLOCK_K 8 / 32): the dx dots' K = 256 operands dq / dk; DQK_SCRATCH puts them through a
# per-program fp32 workspace and K-loops the dx dots over it. Kernel T without dx: 188-204
# registers at 8 warps, no spill (4 warps, TOKEN_NO_DX, spilled 8-16 B for fp32). Kernel W
# spilled 104 B (sm_90) at 8 warps, 368-424 B at 4, 112-152 B with BLOCK_K 8 / 32; at 16 warps
# 124-128 registers, no spill. Kernel P: 226-254 registers at 8 warps, no spill.
FP32_CONFIGS = {
    256: dict(pool=BWD_FUSED_CONFIGS[256]["pool"],
              token=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=16, num_warps=8, num_stages=1,
                         DQK_SCRATCH=True),
              weight=dict(BLOCK_N=16, BLOCK_I=16, BLOCK_K=16, num_warps=16, num_stages=1)),
}
FP32_MAX_WIDTH = 256  # widest padded width fused for fp32 inputs
# Kernel T without dx (x needs no gradient): the lighter kernel gets its own tiles where the
# config's spilled (AOT report: 8-24 B of stack at D,T <= 128 sum, all dtypes, and D,T <= 64 l2
# fp32 at sm_90; 4 and 16 warps spilled too at 64). Not applied over FP32_CONFIGS.
TOKEN_NO_DX = {64: dict(BLOCK_K=32), 128: dict(num_warps=4), 256: dict(num_warps=4)}


def bwd_fused_config(key: int, dtype: torch.dtype) -> dict:
    """The config ({"pool", "token", "weight"}) the launcher runs at padded width key for
    inputs of this dtype (kernel T's DQK_SCRATCH defaults to False)."""
    return dtype_config(BWD_FUSED_CONFIGS, FP32_CONFIGS, key, dtype)


def token_config(key: int, need_dx: bool, dtype: torch.dtype = torch.float16) -> dict:
    """Kernel T's launch config for config `key` and inputs of this dtype, with or without
    dx."""
    ct = bwd_fused_config(key, dtype)["token"]
    if dtype == torch.float32 and key in FP32_CONFIGS:
        return ct
    return ct if need_dx else {**ct, **TOKEN_NO_DX.get(key, {})}
# Kernel W's grid: about one program per SM of an H100 (132) over the D-chunks x token segments,
# with at least MIN_SEG_ROWS token rows per segment (each segment writes a full fp32 partial of
# the weight gradients: more segments, more partial bytes).
TARGET_PROGRAMS = 132
MIN_SEG_ROWS = 256
W_PARTS = 4  # kernel W's programs per (chunk, segment): one accumulator each


def fused_bwd_config_key(d: int, t: int, dtype: torch.dtype = torch.float16) -> int | None:
    """The BWD_FUSED_CONFIGS key for widths D -> T at this dtype, or None (torch-GEMM path)."""
    w = max(16, triton.next_power_of_2(max(d, t)))
    top = FP32_MAX_WIDTH if dtype == torch.float32 else max(BWD_FUSED_CONFIGS)
    return next((k for k in sorted(BWD_FUSED_CONFIGS) if w <= k <= top), None)


def weight_segments(rows: int, chunks: int, block_n: int) -> tuple[int, int]:
    """(segments, rows per segment) of kernel W for `rows` flattened token rows."""
    want = max(1, min(triton.cdiv(TARGET_PROGRAMS, W_PARTS * chunks),
                      triton.cdiv(rows, MIN_SEG_ROWS)))
    per = triton.cdiv(triton.cdiv(rows, want), block_n) * block_n
    return triton.cdiv(rows, per), per


def fused_backward(grad, x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool,
                   need, key, max_splits=A.MAX_SPLITS, n_seg=None):
    """Gradients {index: tensor} of (x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final) for
    the wanted indices (`need`: 8 flags, already cleared for None arguments) from kernels P, T,
    W with config BWD_FUSED_CONFIGS[key]. grad: [B, N, T], x: [B, N, D] (any strides); dx is
    contiguous, the weight gradients in their parameter's dtype. n_seg forces W's segments."""
    x = x if x.stride(2) == 1 else x.contiguous()
    bsz, n, d = x.shape
    t_out = d if w_final is None else w_final.shape[0]
    if max(16, triton.next_power_of_2(max(d, t_out))) > key:
        raise ValueError(f"config {key} too narrow for D={d}, T={t_out}")
    need_x = need[0]
    need_w = any(need[1:])
    out = {}
    if not (need_x or need_w):
        return out
    if x.numel() == 0:
        return {i: torch.zeros(t.shape, device=x.device, dtype=t.dtype)
                for i, t in enumerate((x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final))
                if need[i]}
    dy = grad.contiguous()
    cfg = bwd_fused_config(key, x.dtype)
    cp, cw = cfg["pool"], cfg["weight"]
    ct = token_config(key, need_x, x.dtype)
    scratch = need_x and ct.get("DQK_SCRATCH", False)
    block = key  # tiles always at the config's width: only those variants are AOT-compiled
    dev = x.device
    f32 = dict(device=dev, dtype=torch.float32)
    wqk = w_qk.contiguous()
    bqk = _vec(b_qk, 2 * d, wqk)
    wg = w_g.reshape(-1).contiguous()
    has_final = w_final is not None
    wf = w_final.contiguous() if has_final else wqk
    # dgk = dout1 Wp = dy (Wf Wp): one [T, D] matrix, rounded to the input dtype (the eager
    # reference rounds dout1 there instead); fp32 accumulation in the GEMM
    wfp = torch.mm(w_final, w_proj).to(x.dtype) if has_final else w_proj.contiguous()
    dot_dt, prec, pid = dot_dtype(x.dtype), _input_prec(x.dtype), A.POOL_IDS[pool]
    flags = dict(DOT_DT=dot_dt, INPUT_PREC=prec)
    dx = torch.empty((bsz, n, d), device=dev, dtype=x.dtype) if need_x else x
    if need_x:
        out[0] = dx
    chunks = triton.cdiv(d, cw["BLOCK_I"])
    mat = (2 * d + 2 * t_out + 3) * d
    # kernels T and W re-read x and dy after kernel P: batch groups that fit L2
    # (A.batch_groups), P, T, W launched per group; W's segment partials of every group go to
    # one buffer, summed once below
    groups = A.batch_groups(bsz, n * (d + t_out) * x.element_size(), A.group_unit(x, dy, dx))
    # a group's first partial row 16-byte aligned: segment counts a multiple of seg_unit where
    # there are several groups (the added segments have no rows and write zero partials)
    seg_unit = 1 if len(groups) == 1 else 4 // math.gcd(4, mat + t_out)
    segs = []  # kernel W's (segments, rows per segment) per group
    for b0, b1 in groups:
        rows = (b1 - b0) * n
        if n_seg is None:
            nseg, per_seg = weight_segments(rows, chunks, cw["BLOCK_N"])
        else:  # segments past the rows write zero partials
            nseg = n_seg
            per_seg = triton.cdiv(triton.cdiv(rows, n_seg), cw["BLOCK_N"]) * cw["BLOCK_N"]
        segs.append((triton.cdiv(nseg, seg_unit) * seg_unit, per_seg))
    ws_w = torch.empty((sum(sg for sg, _ in segs), mat + t_out), **f32) if need_w else None
    s0 = 0
    for (b0, b1), (nseg, per_seg) in zip(groups, segs):
        bg, rows = b1 - b0, (b1 - b0) * n
        xg, dyg = x[b0:b1], dy[b0:b1]
        nsplit, per = A._splits(bg, n, cp["BLOCK_N"], max_splits)
        ws_g = torch.empty((bg * nsplit, block), **f32)
        ws_ml = torch.empty((bg * nsplit, 2), **f32)
        ws_dg = torch.empty((bg * nsplit, block), **f32)
        _attn_bwd_fused_pool_kernel[(bg, nsplit)](
            xg, dyg, wqk, bqk, wg, wfp, ws_g, ws_ml, ws_dg, n, d, t_out, per, float(scale),
            xg.stride(0), xg.stride(1), POOL=pid, BLOCK_N=cp["BLOCK_N"], BLOCK_D=block,
            BLOCK_K=cp["BLOCK_K"], num_warps=cp["num_warps"], num_stages=cp["num_stages"],
            **flags,
        )
        gm = torch.empty((bg, 2, block), **f32)
        tok = torch.empty((6, rows), **f32)
        tiles = triton.cdiv(n, ct["BLOCK_N"])
        # DQK_SCRATCH: one fp32 [2, BLOCK_N, D] dq / dk block per kernel T program
        ws_dqk = (torch.empty((bg * tiles * 2 * ct["BLOCK_N"], d), **f32) if scratch
                  else ws_dg)
        _attn_bwd_fused_token_kernel[(bg, tiles)](
            xg, dyg, wqk, bqk, wg, wf, wfp, ws_g, ws_ml, ws_dg, gm, tok,
            dx[b0:b1] if need_x else xg, ws_dqk, n, d, t_out, nsplit, rows, float(scale),
            xg.stride(0), xg.stride(1),
            HAS_FINAL=has_final, NEED_DX=need_x, POOL=pid, BLOCK_N=ct["BLOCK_N"],
            BLOCK_D=block, BLOCK_K=ct["BLOCK_K"], BLOCK_J=ct["BLOCK_J"], BLOCK_S=A.MAX_SPLITS,
            DQK_SCRATCH=scratch, num_warps=ct["num_warps"], num_stages=ct["num_stages"],
            **flags,
        )
        if not need_w:
            continue
        _attn_bwd_fused_weight_kernel[(W_PARTS, chunks, nseg)](
            xg, dyg, wqk, bqk, wg, wf, wfp, gm, tok, ws_w[s0:s0 + nseg], n, d, t_out, rows,
            per_seg, xg.stride(0), xg.stride(1),
            HAS_FINAL=has_final, BLOCK_N=cw["BLOCK_N"], BLOCK_D=block, BLOCK_T=block,
            BLOCK_I=cw["BLOCK_I"], BLOCK_K=cw["BLOCK_K"], num_warps=cw["num_warps"],
            num_stages=cw["num_stages"], **flags,
        )
        s0 += nseg
    if not need_w:
        return out
    # one launch sums the segments: dWqk, dbqk, dwg straight into their dtype; E, F and
    # (sum dy) stay fp32 for the finalize kernel
    tv = 2 * d + 2 * t_out  # ws_w rows of d: dWqk (2d), E (t_out), F (t_out), dbqk (2), dwg
    pairs = []
    for i, r0, r1, like in ((1, 0, 2 * d, w_qk), (2, tv, tv + 2, b_qk), (3, tv + 2, tv + 3, w_g)):
        if need[i]:
            out[i] = like.new_empty(like.shape)
            pairs.append((ws_w[:, r0 * d:r1 * d], out[i].view(-1)))
    need_ef = any(need[4:])
    if need_ef:
        ef = torch.empty((2 * t_out, d), **f32)
        dbf = torch.empty((t_out,), **f32)
        pairs += [(ws_w[:, 2 * d * d:tv * d], ef.view(-1)), (ws_w[:, mat:], dbf)]
    sum_partials(pairs)
    if not need_ef:
        return out
    e_mat, f_mat = ef[:t_out], ef[t_out:]
    # dWp = Wf^T E, dbp = Wf^T s, dWf = E Wp^T + F + s bp^T (dWf = dy^T o1 with
    # o1 = gk Wp^T + bp + qn), dbf = s: one launch
    out.update(_finalize(e_mat, f_mat, dbf, w_proj, b_proj, w_final, b_final, need))
    return out
