"""Fused forward of the whole additive attention module (SPEC.md section 1): two kernels that
read x, the weights and a few partials, and write only the output.

  Kernel A (_attn_fused_pool_kernel, grid B x SPLITS): per token tile q = x Wq^T + bq (tl.dot,
  K-loop over the input dim), normalize, score and pool into the split's partial state (the
  layout and helpers of _attention: ws_g / ws_ml, _pool_accumulate). Neither q nor qn is stored.
  Kernel B (_attn_fused_apply_kernel, grid B x token tiles): merges G from the partials, recomputes
  the tile's q (for its row norms) and k, keeps gk = G * normalize(k) in registers as the A operand
  of the proj GEMM ("G * k fused into proj"), and per BLOCK_J-wide chunk j of proj's output
  recomputes q's column chunk: t_j = gk Wp^T[:, j] + bp[j] + q[:, j] / ||q||. With a final linear
  t_j is the K-chunk of out += t_j Wf^T[j, :] (bf added at the end); without one t_j is stored.
  fp32 from width 256 (FP32_CONFIGS, GK_SCRATCH): gk goes instead to the program's own block of
  an fp32 workspace and each t_j K-loops over it (a K = width fp32 dot operand spilled); kernel B
  then runs as a persistent grid of GK_PROGRAMS programs over the (batch, tile) items, so the
  blocks are reused and stay in L2.

DRAM traffic: x twice (A, then B right after: an L2 hit when x is small, see _roofline), the
weights, B*SPLITS*(D+2) fp32 partials, and out once (GK_SCRATCH: the fp32 gk blocks, at most
GK_PROGRAMS x BLOCK_N x D x 4 bytes, are L1/L2 traffic); the eager/torch path moves ~16 token
tensors.
The price is FLOPs: q is computed three times (A, B's norms, B's chunks), 5 D^2 + D T multiply-adds
per token instead of 3 D^2 + D T, which is cheap next to memory for fp16/bf16 on tensor cores.

Numerics: fp32 accumulation everywhere; GEMM operands in the input dtype for fp16/bf16 (as the
eager reference) and fp32 with input_precision="ieee" for fp32 inputs (dot_dtype/_input_prec of
_conv). Every load converts to fp32 at once (the interpreter's bf16 arithmetic is wrong). Token
offsets are int64. x must have a unit channel stride (the launcher copies otherwise).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _attention as A
from ._conv import _cast_out, _input_prec, _vec, dot_dtype, dtype_config


@triton.jit
def _x_linear(x_ptr, xrow, nmask, w_ptr, b_ptr, cols, cmask, D,
              BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr,
              INPUT_PREC: tl.constexpr):
    """fp32 [BLOCK_N, len(cols)] tile of x W[cols]^T + b[cols]: x rows at element offsets xrow
    (int64, unit channel stride), W [*, D] row-major; K-loop over D in BLOCK_K chunks. Masked
    columns come out 0; masked rows hold the bias (callers mask them)."""
    acc = tl.zeros((xrow.shape[0], cols.shape[0]), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < D
        xa = tl.load(x_ptr + xrow[:, None] + kk[None, :], mask=nmask[:, None] & kmask[None, :],
                     other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols[None, :] * D + kk[:, None], mask=kmask[:, None] & cmask[None, :],
                    other=0.0).to(tl.float32)
        acc = tl.dot(xa.to(DOT_DT), w.to(DOT_DT), acc, input_precision=INPUT_PREC,
                     out_dtype=tl.float32)
    acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _attn_fused_pool_kernel(
    x_ptr, wqk_ptr, bqk_ptr, wg_ptr, ws_g_ptr, ws_ml_ptr,
    N, D, TOK_PER_SPLIT, scale,
    sxb, sxn,
    POOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """Kernel A for batch b = pid0, tokens [pid1*TOK_PER_SPLIT, +TOK_PER_SPLIT): the split's
    partial pool state of normalize(x Wq^T + bq) into ws_g[b, pid1], ws_ml[b, pid1]."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    wg = tl.load(wg_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    g, m, acc_l = A._pool_init(BLOCK_N, BLOCK_D)
    start = tl.program_id(1) * TOK_PER_SPLIT
    end = tl.minimum(start + TOK_PER_SPLIT, N)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        xrow = b * sxb + n.to(tl.int64) * sxn
        q = _x_linear(x_ptr, xrow, nmask, wqk_ptr, bqk_ptr, d, dmask, D, BLOCK_K,
                      DOT_DT, INPUT_PREC)
        qn = A._normalize_rows(q, nmask)
        g, m, acc_l = A._pool_accumulate(qn, wg, scale, nmask, g, m, acc_l, POOL)
    A._store_partials(ws_g_ptr, ws_ml_ptr, b, g, m, acc_l)


@triton.jit
def _apply_tile(
    x_ptr, wqk_ptr, bqk_ptr, ws_g_ptr, ws_ml_ptr, wp_ptr, bp_ptr, wf_ptr, bf_ptr, out_ptr,
    ws_gk_ptr, b, tile, slot,
    N, D, T, NSPLIT,
    sxb, sxn,
    HAS_FINAL: tl.constexpr,
    POOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
    GK_SCRATCH: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """Kernel B's work for batch b (int64) and token tile `tile`; GK_SCRATCH: gk through
    block `slot` of ws_gk."""
    G = A._merge_global_query(ws_g_ptr, ws_ml_ptr, b, NSPLIT, POOL, BLOCK_S, BLOCK_D)
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    xrow = b * sxb + n64 * sxn
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    q = _x_linear(x_ptr, xrow, nmask, wqk_ptr, bqk_ptr, d, dmask, D, BLOCK_K, DOT_DT,
                  INPUT_PREC)
    q_inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), 1e-12)
    k = _x_linear(x_ptr, xrow, nmask, wqk_ptr + D * D, bqk_ptr + D, d, dmask, D, BLOCK_K,
                  DOT_DT, INPUT_PREC)
    # the proj GEMM's A operand, rounded to the dot dtype as the eager reference rounds gk
    gk = (G[None, :] * A._normalize_rows(k, nmask)).to(DOT_DT)
    if GK_SCRATCH:
        r = tl.arange(0, BLOCK_N)
        blk = ws_gk_ptr + slot * (BLOCK_N * D)
        tl.store(blk + r[:, None] * D + d[None, :], gk, mask=nmask[:, None] & dmask[None, :])
        tl.debug_barrier()  # every thread's gk stores are visible to the block's chunk loads
    if HAS_FINAL:
        tt = tl.arange(0, BLOCK_T)
        tmask = tt < T
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    for j0 in range(0, D, BLOCK_J):
        jj = j0 + tl.arange(0, BLOCK_J)
        jmask = jj < D
        t = _x_linear(x_ptr, xrow, nmask, wqk_ptr, bqk_ptr, jj, jmask, D, BLOCK_K,
                      DOT_DT, INPUT_PREC) * q_inv[:, None]
        if GK_SCRATCH:
            # K-loop over gk's columns (rows past N are neither written nor read: no DRAM
            # traffic for a ragged last tile)
            for k0 in range(0, D, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                kmask = kk < D
                gkc = tl.load(blk + r[:, None] * D + kk[None, :],
                              mask=nmask[:, None] & kmask[None, :], other=0.0)
                wp = tl.load(wp_ptr + jj[None, :] * D + kk[:, None],
                             mask=kmask[:, None] & jmask[None, :], other=0.0).to(tl.float32)
                t = tl.dot(gkc.to(DOT_DT), wp.to(DOT_DT), t, input_precision=INPUT_PREC,
                           out_dtype=tl.float32)
        else:
            wp = tl.load(wp_ptr + jj[None, :] * D + d[:, None],
                         mask=dmask[:, None] & jmask[None, :], other=0.0).to(tl.float32)
            t = tl.dot(gk, wp.to(DOT_DT), t, input_precision=INPUT_PREC, out_dtype=tl.float32)
        t += tl.load(bp_ptr + jj, mask=jmask, other=0.0).to(tl.float32)[None, :]
        if HAS_FINAL:
            wf = tl.load(wf_ptr + tt[None, :] * D + jj[:, None],
                         mask=jmask[:, None] & tmask[None, :], other=0.0).to(tl.float32)
            acc = tl.dot(t.to(DOT_DT), wf.to(DOT_DT), acc, input_precision=INPUT_PREC,
                         out_dtype=tl.float32)
        else:
            tl.store(out_ptr + (b * N + n64)[:, None] * T + jj[None, :], _cast_out(t, out_ptr),
                     mask=nmask[:, None] & jmask[None, :])
    if HAS_FINAL:
        acc += tl.load(bf_ptr + tt, mask=tmask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + (b * N + n64)[:, None] * T + tt[None, :], _cast_out(acc, out_ptr),
                 mask=nmask[:, None] & tmask[None, :])


@triton.jit
def _attn_fused_apply_kernel(
    x_ptr, wqk_ptr, bqk_ptr, ws_g_ptr, ws_ml_ptr, wp_ptr, bp_ptr, wf_ptr, bf_ptr, out_ptr,
    ws_gk_ptr,
    N, D, T, NSPLIT, TILES, ITEMS,
    sxb, sxn,
    HAS_FINAL: tl.constexpr,
    POOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
    GK_SCRATCH: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """Kernel B: out[b, tile] = final(proj(G * normalize(k)) + normalize(q)) for BLOCK_N tokens;
    out is [B, N, T] contiguous (T = D without a final linear); grid B x TILES.
    GK_SCRATCH (1-D persistent grid of G programs over the B * TILES (batch, tile) items, item
    = pid, pid + G, ...): gk goes to this program's own fp32 [BLOCK_N, D] block pid of ws_gk and
    the proj dot K-loops over it in BLOCK_K chunks (L1/L2 hits) instead of holding gk as a
    K = BLOCK_D dot operand in registers (see FP32_CONFIGS). The G blocks, reused from item to
    item, stay in L2 (GK_PROGRAMS x BLOCK_N x D x 4 bytes) instead of a token-sized workspace
    going to DRAM."""
    if GK_SCRATCH:
        pid = tl.program_id(0)
        for item in range(pid, ITEMS, tl.num_programs(0)):
            _apply_tile(x_ptr, wqk_ptr, bqk_ptr, ws_g_ptr, ws_ml_ptr, wp_ptr, bp_ptr, wf_ptr,
                        bf_ptr, out_ptr, ws_gk_ptr, (item // TILES).to(tl.int64), item % TILES,
                        pid, N, D, T, NSPLIT, sxb, sxn, HAS_FINAL, POOL, BLOCK_N, BLOCK_D,
                        BLOCK_T, BLOCK_K, BLOCK_J, BLOCK_S, GK_SCRATCH, DOT_DT, INPUT_PREC)
            tl.debug_barrier()  # every thread's chunk loads done before the next item's stores
    else:
        _apply_tile(x_ptr, wqk_ptr, bqk_ptr, ws_g_ptr, ws_ml_ptr, wp_ptr, bp_ptr, wf_ptr, bf_ptr,
                    out_ptr, ws_gk_ptr, tl.program_id(0).to(tl.int64), tl.program_id(1), 0,
                    N, D, T, NSPLIT, sxb, sxn, HAS_FINAL, POOL, BLOCK_N, BLOCK_D, BLOCK_T,
                    BLOCK_K, BLOCK_J, BLOCK_S, GK_SCRATCH, DOT_DT, INPUT_PREC)


# Configs by the padded width max(D, T); every one is run in the interpreter and AOT-compiled
# spill-free for sm_80/sm_90 (tools/triton_report.py). Kernel B holds gk [BLOCK_N, BLOCK_D] (the
# proj dot's A operand, K = the whole width) and the final's accumulator [BLOCK_N, BLOCK_T] across
# the proj loop. Measured in the AOT report: num_stages 2 spilled 8-64 B in kernel A (its K-loop
# nests inside the token loop), so nothing is software-pipelined; fp32 (ieee dots on the FMA units,
# operands unpacked to registers) spilled 100-300 B in kernel B at width 256 and ~1.7 KB at 512
# with every tile tried (BLOCK_N 16/32, BLOCK_K 16/32, BLOCK_J 16/32, 4/8/16 warps: 300 B-9.8 KB
# at 256), so fp32 from 256 up uses FP32_CONFIGS instead (fused_config).
FUSED_CONFIGS = {
    64: dict(pool=dict(BLOCK_N=32, BLOCK_K=16, num_warps=8, num_stages=1),
             apply=dict(BLOCK_N=32, BLOCK_K=16, BLOCK_J=16, num_warps=4, num_stages=1)),
    128: dict(pool=dict(BLOCK_N=32, BLOCK_K=16, num_warps=8, num_stages=1),
              apply=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=16, num_warps=8, num_stages=1)),
    256: dict(pool=dict(BLOCK_N=16, BLOCK_K=16, num_warps=8, num_stages=1),
              apply=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=16, num_warps=8, num_stages=1)),
    512: dict(pool=dict(BLOCK_N=16, BLOCK_K=16, num_warps=8, num_stages=1),
              apply=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=16, num_warps=8, num_stages=1)),
}
# fp32 overrides of FUSED_CONFIGS: kernel B with GK_SCRATCH (gk through a per-program fp32 block
# of a global workspace, proj K-looped over it in BLOCK_K chunks: the K = width dot operand is what
# spilled). Width 256, 8 warps, no spills: kernel A 174-176 registers (sm_80) / 172-192 (sm_90),
# kernel B 220-224 / 222-224 with the final linear, 178-180 / 190 without. Not at 512: kernel B
# spilled 128-240 B (8 warps; 160 B at 16, 1.8 KB at 4) and kernel A 8-16 B (72 B at 16 warps,
# 240 B at 4, 944 B with BLOCK_K 32), so fp32 wider than FP32_MAX_WIDTH takes the torch path.
FP32_CONFIGS = {
    256: dict(pool=dict(BLOCK_N=16, BLOCK_K=16, num_warps=8, num_stages=1),
              apply=dict(BLOCK_N=16, BLOCK_K=16, BLOCK_J=16, num_warps=8, num_stages=1,
                         GK_SCRATCH=True)),
}
FP32_MAX_WIDTH = 256  # widest padded width fused for fp32 inputs
# GK_SCRATCH kernel B: persistent programs (about 2 per SM of an H100's 132), each reusing its
# own gk block: 264 x 16 x 256 x 4 B = 4.3 MB of workspace at most, L2-resident
GK_PROGRAMS = 264


def fused_config(key: int, dtype: torch.dtype) -> dict:
    """The config ({"pool": ..., "apply": ...}) the launcher runs at padded width key for inputs
    of this dtype (kernel B's GK_SCRATCH defaults to False)."""
    return dtype_config(FUSED_CONFIGS, FP32_CONFIGS, key, dtype)


def fused_config_key(d: int, t: int, dtype: torch.dtype = torch.float16) -> int | None:
    """The FUSED_CONFIGS key for widths D -> T at this dtype, or None where no fused config
    fits (the module then runs the torch-GEMM path of _attention)."""
    w = max(16, triton.next_power_of_2(max(d, t)))
    top = FP32_MAX_WIDTH if dtype == torch.float32 else max(FUSED_CONFIGS)
    return next((k for k in sorted(FUSED_CONFIGS) if w <= k <= top), None)


def fused_forward(x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool, key,
                  max_splits=A.MAX_SPLITS):
    """additive_attention_ref's result from kernels A and B with config fused_config(key, dtype).
    x: [B, N, D] (any strides; copied to a unit channel stride), out: [B, N, T] contiguous."""
    x = x if x.stride(2) == 1 else x.contiguous()
    bsz, n, d = x.shape
    t_out = d if w_final is None else w_final.shape[0]
    out = torch.empty((bsz, n, t_out), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    if max(16, triton.next_power_of_2(max(d, t_out))) > key:
        raise ValueError(f"config {key} too narrow for D={d}, T={t_out}")
    # tiles always at the config's width: only those variants are AOT-compiled (_specs)
    block_d = block_t = key
    cfg = fused_config(key, x.dtype)
    ca, cb = cfg["pool"], cfg["apply"]
    scratch = cb.get("GK_SCRATCH", False)
    tiles = triton.cdiv(n, cb["BLOCK_N"])
    nsplit, per = A._splits(bsz, n, ca["BLOCK_N"], max_splits)
    ws_g = torch.empty((bsz * nsplit, block_d), device=x.device, dtype=torch.float32)
    ws_ml = torch.empty((bsz * nsplit, 2), device=x.device, dtype=torch.float32)
    wqk = w_qk.contiguous()
    dummy = wqk
    bqk = _vec(b_qk, 2 * d, wqk)
    dot_dt, prec, pid = dot_dtype(x.dtype), _input_prec(x.dtype), A.POOL_IDS[pool]
    _attn_fused_pool_kernel[(bsz, nsplit)](
        x, wqk, bqk, w_g.reshape(-1).contiguous(), ws_g, ws_ml, n, d, per, float(scale),
        x.stride(0), x.stride(1),
        POOL=pid, BLOCK_N=ca["BLOCK_N"], BLOCK_D=block_d,
        BLOCK_K=ca["BLOCK_K"], DOT_DT=dot_dt, INPUT_PREC=prec, num_warps=ca["num_warps"],
        num_stages=ca["num_stages"],
    )
    # GK_SCRATCH: one fp32 [BLOCK_N, D] gk block per kernel B program
    wp = w_proj.contiguous()
    wf = dummy if w_final is None else w_final.contiguous()
    items = bsz * tiles
    progs = min(items, GK_PROGRAMS)
    ws_gk = (torch.empty((progs * cb["BLOCK_N"], d), device=x.device, dtype=torch.float32)
             if scratch else ws_g)
    _attn_fused_apply_kernel[(progs,) if scratch else (bsz, tiles)](
        x, wqk, bqk, ws_g, ws_ml, wp, _vec(b_proj, d, wp), wf,
        dummy if w_final is None else _vec(b_final, t_out, wf), out, ws_gk,
        n, d, t_out, nsplit, tiles, items, x.stride(0), x.stride(1),
        HAS_FINAL=w_final is not None, POOL=pid, BLOCK_N=cb["BLOCK_N"],
        BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_K=cb["BLOCK_K"], BLOCK_J=cb["BLOCK_J"],
        BLOCK_S=A.MAX_SPLITS, GK_SCRATCH=scratch, DOT_DT=dot_dt,
        INPUT_PREC=prec,
        num_warps=cb["num_warps"], num_stages=cb["num_stages"],
    )
    return out
