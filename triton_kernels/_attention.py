"""Triton kernels for efficient additive attention (SPEC.md section 1): the core (normalize, pool,
global query, G * normalize(k)) and the whole module around it.

The pooling over tokens is a split-N reduction: pass 1 (grid B x SPLITS) normalizes q, writes qn,
and reduces its token range to a partial global query; pass 2 (grid B x token blocks) merges the
partials (each program redoes the tiny merge of SPLITS rows) and writes G * normalize(k).
Per-variant partial state:
  sum     : g = sum qn                                      (a_n = 1)
  l2      : g = sum s_n qn_n, ss = sum s_n^2                 merged G = g / max(sqrt(ss), eps)
  softmax : m = max s, l = sum exp(s - m), g = sum exp(s - m) qn   (online softmax; the merge
            rescales each split by exp(m_i - max m), so no exp ever overflows)
Bytes: q and k read once, qn and gk written once, plus B*SPLITS*(D+2) fp32 of partials.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._conv import INTERPRET, SUPPORTED, Unsupported, _cast_out

POOL_IDS = {"sum": 0, "l2": 1, "softmax": 2}
EPS = 1e-12


@triton.jit
def _normalize_rows(v, rmask):
    n = tl.sqrt(tl.sum(v * v, axis=1))
    inv = 1.0 / tl.maximum(n, 1e-12)
    return tl.where(rmask[:, None], v * inv[:, None], 0.0)


@triton.jit
def _pool_accumulate(qn, wg, scale, nmask, g, m, acc_l, POOL: tl.constexpr):
    """Adds one [BLOCK_N, BLOCK_D] tile of normalized queries to a split's partial pool state
    (g, m, acc_l) (module docstring); shared by the forward and the backward's recompute."""
    s = tl.sum(qn * wg[None, :], axis=1) * scale
    if POOL == 0:
        g += tl.sum(qn, axis=0)
    elif POOL == 1:
        s = tl.where(nmask, s, 0.0)
        g += tl.sum(s[:, None] * qn, axis=0)
        acc_l += tl.sum(s * s, axis=0)
    else:
        s = tl.where(nmask, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        pexp = tl.exp(s - m_new)
        acc_l = acc_l * alpha + tl.sum(pexp, axis=0)
        g = g * alpha + tl.sum(pexp[:, None] * qn, axis=0)
        m = m_new
    return g, m, acc_l


@triton.jit
def _pool_init(BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Empty partial pool state (g, m, acc_l): zeros, m = -inf (fp32 scalars)."""
    g = tl.zeros((BLOCK_D,), dtype=tl.float32)
    m = tl.max(tl.full((BLOCK_N,), -float("inf"), tl.float32), axis=0)
    acc_l = tl.sum(tl.zeros((BLOCK_N,), tl.float32), axis=0)
    return g, m, acc_l


@triton.jit
def _store_partials(ws_g_ptr, ws_ml_ptr, b, g, m, acc_l):
    """Split pid1 of batch b: ws_g[b, pid1, :BLOCK_D] = g, ws_ml[b, pid1, 0:2] = (m, acc_l)."""
    row = b * tl.num_programs(1) + tl.program_id(1)
    tl.store(ws_g_ptr + row * g.shape[0] + tl.arange(0, g.shape[0]), g)
    tl.store(ws_ml_ptr + row * 2, m)
    tl.store(ws_ml_ptr + row * 2 + 1, acc_l)


@triton.jit
def _attn_pool_partial_kernel(
    q_ptr, wg_ptr, qn_ptr, ws_g_ptr, ws_ml_ptr,
    N, D, TOK_PER_SPLIT, scale,
    sqb, sqn, sqd,
    POOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Pass 1 for batch b = pid0, tokens [pid1*TOK_PER_SPLIT, +TOK_PER_SPLIT): writes qn and the
    split's partial state ws_g[b, pid1, :D], ws_ml[b, pid1, 0:2] = (m, l or ss)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    wg = tl.load(wg_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    g, m, acc_l = _pool_init(BLOCK_N, BLOCK_D)
    start = tl.program_id(1) * TOK_PER_SPLIT
    end = tl.minimum(start + TOK_PER_SPLIT, N)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        n64 = n.to(tl.int64)
        msk = nmask[:, None] & dmask[None, :]
        q = tl.load(q_ptr + b * sqb + n64[:, None] * sqn + d[None, :].to(tl.int64) * sqd,
                    mask=msk, other=0.0).to(tl.float32)
        qn = _normalize_rows(q, nmask)
        tl.store(qn_ptr + (b * N + n64)[:, None] * D + d[None, :],
                 _cast_out(qn, qn_ptr), mask=msk)
        g, m, acc_l = _pool_accumulate(qn, wg, scale, nmask, g, m, acc_l, POOL)
    _store_partials(ws_g_ptr, ws_ml_ptr, b, g, m, acc_l)


@triton.jit
def _merge_pool_norm(ws_ml_ptr, b, NSPLIT, POOL: tl.constexpr, BLOCK_S: tl.constexpr):
    """(mmax, z) of batch b from its NSPLIT partial rows: softmax: mmax = max of the split maxima,
    z = sum_n exp(s_n - mmax); l2: z = ||s||_2 over all tokens; sum: unused (z = 1)."""
    sidx = tl.arange(0, BLOCK_S)
    smask = sidx < NSPLIT
    rows = b * NSPLIT + sidx
    mmax = tl.sum(tl.zeros((BLOCK_S,), tl.float32), axis=0)
    z = mmax + 1.0
    if POOL == 2:
        m = tl.load(ws_ml_ptr + rows * 2, mask=smask, other=-float("inf"))
        lsum = tl.load(ws_ml_ptr + rows * 2 + 1, mask=smask, other=0.0)
        mmax = tl.max(m, axis=0)
        # empty splits carry m = -inf -> weight 0
        z = tl.sum(tl.where(smask, tl.exp(m - mmax), 0.0) * lsum, axis=0)
    if POOL == 1:
        z = tl.sqrt(tl.sum(tl.load(ws_ml_ptr + rows * 2 + 1, mask=smask, other=0.0), axis=0))
    return mmax, z


@triton.jit
def _pool_backward(qn, wg, G, dG, scale, nmask, ws_ml_ptr, b, NSPLIT, POOL: tl.constexpr,
                   BLOCK_S: tl.constexpr):
    """Pool weights a_n and score gradients ds_n (times `scale`: the gradient reaching qn . w_g)
    of the l2 (POOL 1) or softmax (POOL 2) pooling, from the merged split state; 0 on masked
    rows. Formulas: _attention_backward's docstring."""
    mmax, z = _merge_pool_norm(ws_ml_ptr, b, NSPLIT, POOL, BLOCK_S)
    s = tl.sum(qn * wg[None, :], axis=1) * scale
    da = tl.sum(qn * dG[None, :], axis=1)
    gdg = tl.sum(G * dG, axis=0)
    if POOL == 1:
        inv = 1.0 / tl.maximum(z, 1e-12)
        a = s * inv
        # below eps the norm is a clamped constant: no projection term
        ds = (da - a * tl.where(z >= 1e-12, gdg, 0.0)) * inv
    else:
        a = tl.exp(s - mmax) / z
        ds = a * (da - gdg)
    return tl.where(nmask, a, 0.0), tl.where(nmask, ds, 0.0) * scale


@triton.jit
def _merge_global_query(ws_g_ptr, ws_ml_ptr, b, NSPLIT, POOL: tl.constexpr,
                        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """G [BLOCK_D] of batch b from its NSPLIT partial rows; one row live at a time (a
    [splits, D] tile would spill at D=512)."""
    mmax, z = _merge_pool_norm(ws_ml_ptr, b, NSPLIT, POOL, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    G = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for sp in range(0, NSPLIT):
        row = b * NSPLIT + sp
        g = tl.load(ws_g_ptr + row * BLOCK_D + d)
        if POOL == 2:
            G += tl.exp(tl.load(ws_ml_ptr + row * 2) - mmax) * g
        else:
            G += g
    if POOL == 1:
        G = G / tl.maximum(z, 1e-12)
    if POOL == 2:
        G = G / z
    return G


@triton.jit
def _attn_apply_kernel(
    k_ptr, ws_g_ptr, ws_ml_ptr, gk_ptr,
    N, D, NSPLIT,
    skb, skn, skd,
    POOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Pass 2: gk[b, n, :] = G_b * normalize(k[b, n, :]) for a block of BLOCK_N tokens."""
    b = tl.program_id(0).to(tl.int64)
    G = _merge_global_query(ws_g_ptr, ws_ml_ptr, b, NSPLIT, POOL, BLOCK_S, BLOCK_D)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    msk = nmask[:, None] & dmask[None, :]
    k = tl.load(k_ptr + b * skb + n64[:, None] * skn + d[None, :].to(tl.int64) * skd,
                mask=msk, other=0.0).to(tl.float32)
    kn = _normalize_rows(k, nmask)
    tl.store(gk_ptr + (b * N + n64)[:, None] * D + d[None, :],
             _cast_out(G[None, :] * kn, gk_ptr), mask=msk)


# Configs by padded D: a BLOCK_N x BLOCK_D tile of 4096 fp32 (32 per thread at 4 warps); larger
# tiles spilled at sm_90 (AOT report). MAX_SPLITS bounds the partial state per batch.
ATTN_CONFIGS = {
    128: dict(BLOCK_N=32, num_warps=4),
    256: dict(BLOCK_N=16, num_warps=4),
    512: dict(BLOCK_N=8, num_warps=4),
}
MAX_SPLITS = 32


def attn_config_key(d: int) -> int:
    w = triton.next_power_of_2(d)
    for key in sorted(ATTN_CONFIGS):
        if w <= key:
            return key
    raise Unsupported(f"D={d} > {max(ATTN_CONFIGS)}")


def _splits(b: int, n: int, block_n: int, max_splits: int = MAX_SPLITS) -> tuple[int, int]:
    """(splits, tokens per split): enough programs to fill a GPU (~4 per SM of 132) at small B.
    The merges always run BLOCK_S = MAX_SPLITS wide (the AOT-compiled variant)."""
    if not 1 <= max_splits <= MAX_SPLITS:
        raise ValueError(f"max_splits {max_splits} outside [1, {MAX_SPLITS}]")
    blocks = triton.cdiv(n, block_n)
    want = max(1, min(max_splits, blocks, triton.cdiv(528, max(b, 1))))
    per = triton.cdiv(blocks, want) * block_n
    return triton.cdiv(n, per), per


# The backwards' multi-pass launch sequences (the core's passes 1 and 2, the module's kernels P,
# T and W) each re-read the token tensors the pass before them read. Where those tensors exceed
# this many bytes the batch runs as several groups, the whole sequence launched per group, so the
# re-reads find one group's tensors in L2 (H100: 50 MB) instead of going back to DRAM: the
# L2_REUSE_BYTES rule of _roofline, which mirrors this value. Each group costs one more launch
# per kernel of the sequence.
L2_GROUP_BYTES = 20_000_000


def batch_groups(bsz: int, per_image: int, unit: int = 1) -> list[tuple[int, int]]:
    """[b0, b1) ranges of the batch, each one launch sequence: the fewest about equal groups
    whose images' bytes (per_image each) fit L2_GROUP_BYTES, every group boundary a multiple of
    unit images (group_unit: so each group's tensors start 16-byte aligned, the pointer
    alignment the AOT-verified kernel variants assume); the whole batch when it fits, or when not
    even one unit of images does (the re-reads go to DRAM either way)."""
    total = bsz * per_image
    if bsz <= unit or total <= L2_GROUP_BYTES or unit * per_image > L2_GROUP_BYTES:
        return [(0, bsz)]
    size = triton.cdiv(bsz, triton.cdiv(total, L2_GROUP_BYTES))
    size = triton.cdiv(size, unit) * unit
    while size * per_image > L2_GROUP_BYTES:  # rounding up can overshoot
        size -= unit
    return [(b0, min(bsz, b0 + size)) for b0 in range(0, bsz, size)]


def group_unit(*tensors: torch.Tensor) -> int:
    """Images per batch_groups unit: the fewest whose batch stride in bytes is a multiple of 16
    for every tensor sliced by batch."""
    unit = 1
    for t in tensors:
        unit = math.lcm(unit, 16 // math.gcd(16, t.stride(0) * t.element_size()))
    return unit


def _check(t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED:
        raise Unsupported(f"dtype {t.dtype}")
    if t.device.type != "cuda" and not INTERPRET:
        raise Unsupported("Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1)")


def additive_attention_core(q, k, w_g, scale, pool, config=None, max_splits=MAX_SPLITS):
    _check(q)
    bsz, n, d = q.shape
    # only the unit channel stride variant is AOT-verified (tools/triton_report.py)
    q = q if q.stride(2) == 1 else q.contiguous()
    k = k if k.stride(2) == 1 else k.contiguous()
    qn = torch.empty((bsz, n, d), device=q.device, dtype=q.dtype)
    gk = torch.empty((bsz, n, d), device=q.device, dtype=q.dtype)
    if qn.numel() == 0:
        return gk, qn
    key = attn_config_key(d) if config is None else config
    cfg = ATTN_CONFIGS[key]
    if triton.next_power_of_2(d) > key:
        raise ValueError(f"config {key} too narrow for D={d}")
    block_d = key  # tiles always at the config's width: only those variants are AOT-compiled
    nsplit, per = _splits(bsz, n, cfg["BLOCK_N"], max_splits)
    ws_g = torch.empty((bsz * nsplit, block_d), device=q.device, dtype=torch.float32)
    ws_ml = torch.empty((bsz * nsplit, 2), device=q.device, dtype=torch.float32)
    pid = POOL_IDS[pool]
    _attn_pool_partial_kernel[(bsz, nsplit)](
        q, w_g.reshape(-1).contiguous(), qn, ws_g, ws_ml, n, d, per, float(scale),
        *q.stride(), POOL=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=block_d,
        num_warps=cfg["num_warps"],
    )
    _attn_apply_kernel[(bsz, triton.cdiv(n, cfg["BLOCK_N"]))](
        k, ws_g, ws_ml, gk, n, d, nsplit, *k.stride(),
        POOL=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=block_d,
        BLOCK_S=MAX_SPLITS, num_warps=cfg["num_warps"],
    )
    return gk, qn


def additive_attention(x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool):
    """The whole module, [B, N, D] -> [B, N, T]. Widths with a fused config (padded max(D, T) <=
    max(_attention_fused.FUSED_CONFIGS)) run the two fused kernels of _attention_fused (GEMMs
    included, x read twice, only the output written). Wider ones: GEMMs through cuBLAS (torch),
    the pooling core in Triton; qk is one GEMM, q and k strided views of it, which the core reads
    through their strides (no split copy)."""
    from . import _attention_fused as AF

    _check(x)
    d = x.shape[-1]
    key = AF.fused_config_key(d, d if w_final is None else w_final.shape[0], x.dtype)
    if key is not None and x.dim() == 3:
        return AF.fused_forward(x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final,
                                pool, key)
    qk = F.linear(x, w_qk, b_qk)
    gk, qn = additive_attention_core(qk[..., :d], qk[..., d:], w_g, scale, pool)
    out = torch.baddbmm(qn, gk, w_proj.t().expand(x.shape[0], d, d)) if x.dim() == 3 else None
    if b_proj is not None:
        out = out + b_proj
    if w_final is not None:
        out = F.linear(out, w_final, b_final)
    return out.contiguous()
