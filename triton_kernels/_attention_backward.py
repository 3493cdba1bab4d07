"""Backward of efficient additive attention (SPEC.md section 1): the ops
``additive_attention_core_backward`` and ``additive_attention_backward`` (contract of
swiftkern/ops/_define.py: ``(grad, <op args...>, grad_mask) -> list[Tensor]``, one tensor per
Tensor argument, empty where the argument is None or its gradient is not wanted).

Math per batch (kn = normalize(k), qn = normalize(q), s = scale * qn @ w_g, a = POOL(s),
G = sum_n a_n qn_n, gk = G * kn; dgk is the incoming gradient of gk, dqn' an extra gradient of qn
(the module's residual)):
  dG    = sum_n dgk_n * kn_n                      (split-N reduction, like the forward's G)
  dkn_n = dgk_n * G
  da_n  = qn_n . dG,  and sum_m a_m da_m = G . dG (no second reduction over tokens)
  ds_n  = sum: 0;  l2: (da_n - a_n G.dG) / ||s|| (da_n / eps below eps);  softmax: a_n (da_n - G.dG)
  dqn_n = a_n dG + scale ds_n w_g + dqn'_n,   dw_g = scale sum_{b,n} ds_n qn_n
  dq, dk: F.normalize's backward (dv - vn (vn . dv)) / max(||v||, eps), fused into the same pass
Two kernels: pass 1 (grid B x SPLITS) recomputes the forward's split state (g, m, l / ss:
_attention._pool_accumulate, so the softmax stays max-shifted and never overflows) and the
partial dG of its token range; pass 2 (grid B x token blocks) merges G, dG and the pool
normalizer from the SPLITS rows and writes dq, dk and a per-block partial dw_g (summed on the
host: deterministic, no atomics). fp32 arithmetic after every load.
The module backward, where _attention_backward_fused has a config (padded max(D, T) <= 256 for
every dtype), runs that file's three fused kernels (GEMMs included as tl.dot, no
token-sized intermediate in memory). Wider shapes take the path below: the
module's GEMMs (qk, proj, final and their gradients) in cuBLAS through torch at the input dtype,
around the two core kernels above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _attention as A
from . import _attention_backward_fused as ABF
from ._conv import INTERPRET, SUPPORTED, Unsupported, _cast_out


@triton.jit
def _normalize_bwd_rows(v, dvn, rmask):
    """Gradient w.r.t. v of v / max(||v||, eps) (per row) given dvn: the F.normalize backward
    (below eps the norm is clamped, so only the 1/eps scaling remains)."""
    nrm = tl.sqrt(tl.sum(v * v, axis=1))
    inv = 1.0 / tl.maximum(nrm, 1e-12)
    vn = v * inv[:, None]
    dot = tl.where(nrm >= 1e-12, tl.sum(vn * dvn, axis=1), 0.0)
    return tl.where(rmask[:, None], (dvn - vn * dot[:, None]) * inv[:, None], 0.0)


@triton.jit
def _attn_bwd_partial_kernel(
    q_ptr, k_ptr, wg_ptr, dgk_ptr, ws_g_ptr, ws_ml_ptr, ws_dg_ptr,
    N, D, TOK_PER_SPLIT, scale,
    sqb, sqn, sqd, skb, skn, skd,
    POOL: tl.constexpr, NEED_DG: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Pass 1 for batch b = pid0, tokens [pid1*TOK_PER_SPLIT, +TOK_PER_SPLIT): the forward's
    partial pool state into ws_g / ws_ml and (NEED_DG) the partial dG into ws_dg[b, pid1, :]."""
    b = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    nsplit = tl.num_programs(1)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    d64 = d.to(tl.int64)
    wg = tl.load(wg_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    g = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dg = tl.zeros((BLOCK_D,), dtype=tl.float32)
    m = tl.max(tl.full((BLOCK_N,), -float("inf"), tl.float32), axis=0)
    acc_l = tl.sum(tl.zeros((BLOCK_N,), tl.float32), axis=0)
    start = sp * TOK_PER_SPLIT
    end = tl.minimum(start + TOK_PER_SPLIT, N)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        n64 = n.to(tl.int64)
        msk = nmask[:, None] & dmask[None, :]
        q = tl.load(q_ptr + b * sqb + n64[:, None] * sqn + d64[None, :] * sqd,
                    mask=msk, other=0.0).to(tl.float32)
        qn = A._normalize_rows(q, nmask)
        g, m, acc_l = A._pool_accumulate(qn, wg, scale, nmask, g, m, acc_l, POOL)
        if NEED_DG:
            k = tl.load(k_ptr + b * skb + n64[:, None] * skn + d64[None, :] * skd,
                        mask=msk, other=0.0).to(tl.float32)
            dgk = tl.load(dgk_ptr + (b * N + n64)[:, None] * D + d64[None, :],
                          mask=msk, other=0.0).to(tl.float32)
            dg += tl.sum(dgk * A._normalize_rows(k, nmask), axis=0)
    row = b * nsplit + sp
    tl.store(ws_g_ptr + row * BLOCK_D + d, g)
    tl.store(ws_ml_ptr + row * 2, m)
    tl.store(ws_ml_ptr + row * 2 + 1, acc_l)
    if NEED_DG:
        tl.store(ws_dg_ptr + row * BLOCK_D + d, dg)


@triton.jit
def _attn_bwd_apply_kernel(
    q_ptr, k_ptr, wg_ptr, dgk_ptr, dqn_ptr, ws_g_ptr, ws_ml_ptr, ws_dg_ptr,
    dq_ptr, dk_ptr, ws_dw_ptr,
    N, D, NSPLIT, TILES_PER_PROG, scale,
    sqb, sqn, sqd, skb, skn, skd, sdqb, sdqn, sdkb, sdkn,
    POOL: tl.constexpr, HAS_DQN: tl.constexpr, NEED_DQ: tl.constexpr, NEED_DK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Pass 2 for batch b = pid0 and the BLOCK_N-token tiles [pid1 * TILES_PER_PROG,
    +TILES_PER_PROG): dk (NEED_DK), dq and the program's partial dw_g into ws_dw[b, pid1, :]
    (NEED_DQ; dw_g only for the l2 / softmax pools). G and dG are merged once per program."""
    b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    G = A._merge_global_query(ws_g_ptr, ws_ml_ptr, b, NSPLIT, POOL, BLOCK_S, BLOCK_D)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    d64 = d.to(tl.int64)
    dG = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if NEED_DQ:
        for sp in range(0, NSPLIT):
            dG += tl.load(ws_dg_ptr + (b * NSPLIT + sp) * BLOCK_D + d)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    t0 = pid * TILES_PER_PROG
    for blk in range(t0, tl.minimum(t0 + TILES_PER_PROG, tl.cdiv(N, BLOCK_N))):
        n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < N
        n64 = n.to(tl.int64)
        msk = nmask[:, None] & dmask[None, :]
        goff = (b * N + n64)[:, None] * D + d64[None, :]
        if NEED_DK:
            # k's half first: its tiles are dead before q's are loaded (registers at D = 512)
            k = tl.load(k_ptr + b * skb + n64[:, None] * skn + d64[None, :] * skd,
                        mask=msk, other=0.0).to(tl.float32)
            dgk = tl.load(dgk_ptr + goff, mask=msk, other=0.0).to(tl.float32)
            dk = _normalize_bwd_rows(k, dgk * G[None, :], nmask)
            tl.store(dk_ptr + b * sdkb + n64[:, None] * sdkn + d64[None, :],
                     _cast_out(dk, dk_ptr), mask=msk)
        if NEED_DQ:
            q = tl.load(q_ptr + b * sqb + n64[:, None] * sqn + d64[None, :] * sqd,
                        mask=msk, other=0.0).to(tl.float32)
            qn = A._normalize_rows(q, nmask)
            if POOL == 0:
                dqn = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32) + dG[None, :]
            else:
                # w_g loaded per tile (an L1 hit) rather than held through the loop: 8-16 B
                # spilled at D <= 512 with it live (AOT report)
                wg = tl.load(wg_ptr + d, mask=dmask, other=0.0).to(tl.float32)
                a, ds = A._pool_backward(qn, wg, G, dG, scale, nmask, ws_ml_ptr, b, NSPLIT,
                                       POOL, BLOCK_S)
                dqn = a[:, None] * dG[None, :] + ds[:, None] * wg[None, :]
                dw += tl.sum(ds[:, None] * qn, axis=0)
            if HAS_DQN:
                dqn += tl.load(dqn_ptr + goff, mask=msk, other=0.0).to(tl.float32)
            dq = _normalize_bwd_rows(q, dqn, nmask)
            tl.store(dq_ptr + b * sdqb + n64[:, None] * sdqn + d64[None, :],
                     _cast_out(dq, dq_ptr), mask=msk)
    if NEED_DQ and POOL != 0:
        tl.store(ws_dw_ptr + (b * tl.num_programs(1) + pid) * BLOCK_D + d, dw)


# Tiles by padded D (every one AOT-checked spill-free at sm_80 / sm_90). Pass 2 (BLOCK_N,
# num_warps) holds several tiles at once (k, dgk, then q, qn's gradient, the extra gradient): at
# 16 fp32 per thread per tile it needs 128-143 registers; the forward's 32 per thread reached
# 207-249, and 16 per thread in other BLOCK_N / warp splits spilled 8 bytes at sm_80. Pass 1
# (P1_BLOCK_N, p1_warps) streams its token range: the forward's 32 per thread needed 226
# registers at D <= 128, 16 per thread 124. Pass 2 at D <= 128 / 256 runs 4 / 8 warps (8 fp32 per
# thread per tile): at 2 / 4 warps its variants without dk (D <= 128, l2, fp32) or without the
# extra gradient (D <= 256, sum, all dtypes) spilled 8 B at sm_90. Since session 16 a pass-2
# program loops over consecutive token tiles (about APPLY_TARGET_PROGRAMS programs, ~4 per SM of
# an H100's 132: one dw_g partial row and one G / dG merge per program instead of per 8-token
# tile; at XS stage 1, batch 64, the partial rows were 12.8 MB of fp32): with the loop, D <= 512
# at BLOCK_N 8 spilled 8-16 B (8 and 16 warps, also with w_g reloaded per tile), so it runs
# BLOCK_N 4 at 4 warps (spill-free; BLOCK_N 4 at 8 warps spilled 8-16 B).
APPLY_TARGET_PROGRAMS = 528
ATTN_BWD_CONFIGS = {
    128: dict(BLOCK_N=8, num_warps=4, P1_BLOCK_N=16, p1_warps=4),
    256: dict(BLOCK_N=8, num_warps=8, P1_BLOCK_N=16, p1_warps=4),
    512: dict(BLOCK_N=4, num_warps=4, P1_BLOCK_N=8, p1_warps=4),
}


def _check(q: torch.Tensor) -> None:
    if q.dtype not in SUPPORTED:
        raise Unsupported(f"dtype {q.dtype}")
    if q.device.type != "cuda" and not INTERPRET:
        raise Unsupported("Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1)")


def _unit_d(t: torch.Tensor) -> torch.Tensor:
    # only the unit channel stride variant is AOT-verified (tools/triton_report.py)
    return t if t.stride(2) == 1 else t.contiguous()


def core_backward(dgk, q, k, w_g, scale, pool, need_dq, need_dk, dqn=None, dq=None, dk=None,
                  config=None, max_splits=A.MAX_SPLITS):
    """dq, dk ([B, N, D], written into the given views when passed, else new tensors in q's
    dtype; None when not needed) and dw_g (fp32 [D], None unless need_dq) of the core.

    dgk: gradient of gk; dqn: optional extra gradient of qn. need_dq covers dq and dw_g (both
    come from qn's gradient). q, k, dq, dk may be strided views with a unit channel stride."""
    bsz, n, d = q.shape
    pid = A.POOL_IDS[pool]
    key = A.attn_config_key(d) if config is None else config
    cfg = ATTN_BWD_CONFIGS[key]
    if triton.next_power_of_2(d) > key:
        raise ValueError(f"config {key} too narrow for D={d}")
    block_d = key  # tiles always at the config's width: only those variants are AOT-compiled
    if need_dq and dq is None:
        dq = torch.empty((bsz, n, d), device=q.device, dtype=q.dtype)
    if need_dk and dk is None:
        dk = torch.empty((bsz, n, d), device=q.device, dtype=q.dtype)
    dwg = None
    if need_dq:
        dwg = torch.zeros(d, device=q.device, dtype=torch.float32)
    if q.numel() == 0 or not (need_dq or need_dk):
        return (dq if need_dq else None), (dk if need_dk else None), dwg
    q, k, dgk = _unit_d(q), _unit_d(k), dgk.contiguous()
    for t in (dq, dk):
        if t is not None and t.stride(2) != 1:
            raise ValueError("dq / dk outputs need a unit channel stride")
    wg = w_g.reshape(-1).contiguous()
    f32 = dict(device=q.device, dtype=torch.float32)
    need_dw = need_dq and pid != 0
    has_dqn = dqn is not None
    dqn = dqn.contiguous() if has_dqn else dgk
    # pass 2 re-reads q, k, dgk (and dqn): batch groups that fit L2 (A.batch_groups)
    sliced = [t for t in (q, k, dgk, dqn, dq, dk) if t is not None]
    groups = A.batch_groups(bsz, n * d * q.element_size() * (4 if has_dqn else 3),
                            A.group_unit(*sliced))
    tiles = triton.cdiv(n, cfg["BLOCK_N"])
    plan = []  # per group: (b0, b1, pass-2 programs per batch, tiles per program)
    for b0, b1 in groups:
        # pass 2: about APPLY_TARGET_PROGRAMS programs, each over consecutive token tiles (one
        # dw_g partial row and one G / dG merge per program, not per tile)
        per_prog = triton.cdiv(tiles, max(1, min(tiles, triton.cdiv(APPLY_TARGET_PROGRAMS,
                                                                    b1 - b0))))
        plan.append((b0, b1, triton.cdiv(tiles, per_prog), per_prog))
    # every group's dw_g partial rows in one buffer, summed once at the end
    ws_dw = (torch.empty((sum((b1 - b0) * nblk for b0, b1, nblk, _ in plan), block_d), **f32)
             if need_dw else None)
    row = 0
    for b0, b1, nblk, per_prog in plan:
        bg = b1 - b0
        qg, kg, dgkg = q[b0:b1], k[b0:b1], dgk[b0:b1]
        nsplit, per = A._splits(bg, n, cfg["P1_BLOCK_N"], max_splits)
        ws_g = torch.empty((bg * nsplit, block_d), **f32)
        ws_ml = torch.empty((bg * nsplit, 2), **f32)
        ws_dg = torch.empty((bg * nsplit, block_d), **f32) if need_dq else ws_g
        _attn_bwd_partial_kernel[(bg, nsplit)](
            qg, kg, wg, dgkg, ws_g, ws_ml, ws_dg, n, d, per, float(scale), *qg.stride(),
            *kg.stride(), POOL=pid, NEED_DG=need_dq, BLOCK_N=cfg["P1_BLOCK_N"],
            BLOCK_D=block_d, num_warps=cfg["p1_warps"],
        )
        wsd = ws_dw[row:row + bg * nblk] if need_dw else ws_g
        row += bg * nblk
        dqo = dq[b0:b1] if need_dq else qg
        dko = dk[b0:b1] if need_dk else qg
        _attn_bwd_apply_kernel[(bg, nblk)](
            qg, kg, wg, dgkg, dqn[b0:b1], ws_g, ws_ml, ws_dg, dqo, dko, wsd, n, d, nsplit,
            per_prog, float(scale),
            *qg.stride(), *kg.stride(), dqo.stride(0), dqo.stride(1), dko.stride(0),
            dko.stride(1),
            POOL=pid, HAS_DQN=has_dqn, NEED_DQ=need_dq, NEED_DK=need_dk,
            BLOCK_N=cfg["BLOCK_N"], BLOCK_D=block_d, BLOCK_S=A.MAX_SPLITS,
            num_warps=cfg["num_warps"],
        )
    if need_dw:
        dwg = ws_dw.sum(0)[:d]
    return (dq if need_dq else None), (dk if need_dk else None), dwg


def additive_attention_core_backward(grad, q, k, w_g, scale, pool, grad_mask):
    _check(q)
    need_q, need_k, need_w = (list(grad_mask) + [False] * 3)[:3]
    dq, dk, dwg = core_backward(grad, q, k, w_g, scale, pool, need_q or need_w, need_k)
    e = grad.new_empty(0)
    return [dq if need_q else e, dk if need_k else e,
            dwg.to(w_g.dtype).reshape(w_g.shape) if need_w else e]


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def additive_attention_backward(grad, x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final,
                                b_final, pool, grad_mask):
    """Gradients of (x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final). Fused kernels
    (_attention_backward_fused) where a config fits; otherwise the forward is recomputed (qk
    GEMM + the core's Triton forward where gk / qn are needed) around torch GEMMs."""
    _check(x)
    mask = (list(grad_mask) + [False] * 8)[:8]
    need_x, need_wqk, need_bqk, need_wg, need_wp, need_bp, need_wf, need_bf = mask
    need_bqk = need_bqk and b_qk is not None
    need_bp = need_bp and b_proj is not None
    need_wf = need_wf and w_final is not None
    need_bf = need_bf and b_final is not None
    need_dk = need_x or need_wqk or need_bqk
    need_dq = need_dk or need_wg
    d = x.shape[-1]
    bsz, n = x.shape[0], x.shape[1]
    key = ABF.fused_bwd_config_key(d, d if w_final is None else w_final.shape[0], x.dtype)
    if key is not None and x.dim() == 3:
        out = ABF.fused_backward(grad, x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final,
                                 b_final, pool, [need_x, need_wqk, need_bqk, need_wg, need_wp,
                                                 need_bp, need_wf, need_bf], key)
        e = grad.new_empty(0)
        return [out.get(i, e) for i in range(8)]
    A.attn_config_key(d)  # raises Unsupported past the widest config, before any work
    qk = F.linear(x, w_qk, b_qk)
    q, k = qk[..., :d], qk[..., d:]
    gk = qn = None
    if need_wp or need_wf:
        gk, qn = A.additive_attention_core(q, k, w_g, scale, pool)
    out = {}
    dy = grad
    if w_final is not None:
        if need_wf:
            o1 = torch.baddbmm(qn, gk, w_proj.t().expand(bsz, d, d))
            if b_proj is not None:
                o1 = o1 + b_proj
            out[6] = _rows(dy).t() @ _rows(o1)
        if need_bf:
            out[7] = _rows(dy).sum(0)
        dout1 = dy @ w_final if (need_dq or need_wp or need_bp) else None
    else:
        dout1 = dy
    if need_wp:
        out[4] = _rows(dout1).t() @ _rows(gk)
    if need_bp:
        out[5] = _rows(dout1).sum(0)
    if need_dq:
        dgk = dout1 @ w_proj
        dqk = torch.empty((bsz, n, 2 * d), device=x.device, dtype=x.dtype)
        _, _, dwg = core_backward(dgk, q, k, w_g, scale, pool, True, need_dk, dqn=dout1,
                                  dq=dqk[..., :d], dk=dqk[..., d:] if need_dk else None)
        if need_wg:
            out[3] = dwg.to(w_g.dtype).reshape(w_g.shape)
        if need_x:
            out[0] = dqk @ w_qk
        if need_wqk:
            out[1] = _rows(dqk).t() @ _rows(x)
        if need_bqk:
            out[2] = _rows(dqk).sum(0)
    e = grad.new_empty(0)
    return [out.get(i, e) for i in range(8)]
