"""Fused backward of the pointwise MLP  y = ls * (W2 GELU(W1 z + b1) + b2)  shared by mlp,
conv_block and their train forms (the ``_backward._mlp_grads`` contract: z is the pw1 input
[B, C, H, W] in NCHW or channels_last, the gradient g has y's shape).

Two kernels, FlashAttention-backward style: the hidden activation a = W1 z + b1 ([pixels, HID],
4x the activations) is recomputed per hidden chunk in registers and never stored, unlike the
torch path that writes a, h, gh, ga in fp32. Deterministic (no atomics): every reduction over
pixels is a per-program partial in fp32, summed by one _partials.sum_partials launch.
  _mlp_bwd_dz_kernel (grid: pixel tiles): per tile of BLOCK_P pixels, loop over hidden chunks
    j: a_j, h_j = GELU(a_j), gh_j = (g ls) W2[:, j], ga_j = gh_j GELU'(a_j); accumulates
    dz += ga_j W1[j] and u += h_j W2[:, j]^T; writes dz as fp32 rows [P, C] and per-tile partials
    sum(g ls) (db2) and sum(g (u + b2)) (dls).
  _mlp_bwd_dw_kernel (grid: hidden chunks x pixel segments): one hidden chunk j over the pixel
    tiles of one segment, recomputing a_j .. ga_j; accumulates dW1[j] += ga_j^T z,
    dW2[:, j] += (g ls)^T h_j and db1[j] += sum ga_j in registers; writes per-segment partials.
Exact (erf) GELU. GEMM operands in the input dtype for fp16/bf16 (tensor cores; the eager
reference rounds at that dtype too) and fp32 with input_precision="ieee" for fp32, fp32
accumulation (_conv.dot_dtype / _input_prec). Pixel offsets in int64. Widths past 256 channels
(register spills, see BWD_CONFIGS; fp32 at 256 runs BWD_FP32_CONFIGS) take the torch path in
_backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._conv import (
    _cast_out,
    _layout,
    _off,
    _pad_c,
    _pixel_coords,
    _s4,
    _unit_stride,
    _vec,
    dot_dtype,
    dtype_config,
)
from ._partials import sum_partials


@triton.jit
def _load_rows(ptr, bb, hh, ww, pmask, cc, cmask, sb, sc, sh, sw):
    """fp32 [BLOCK_P, BLOCK_C] tile of a strided [B, C, H, W] tensor; 0 outside the masks."""
    return tl.load(ptr + _off(bb, hh, ww, sb, sh, sw)[:, None] + cc.to(tl.int64)[None, :] * sc,
                   mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _hidden_chunk(zd, gud, w1_ptr, b1_ptr, w2_ptr, hidx, hmask, ci, cimask, co, comask,
                  C_IN, HID, DOT_DT: tl.constexpr,
                  INPUT_PREC: tl.constexpr):
    """Recompute one hidden chunk: (h, ga, W1[j] as [BH, CI], W2[:, j] as [CO, BH]) with
    a = z W1[j]^T + b1[j], h = GELU(a), ga = ((g ls) W2[:, j]) * GELU'(a), all fp32."""
    w1 = tl.load(w1_ptr + hidx[:, None] * C_IN + ci[None, :],
                 mask=hmask[:, None] & cimask[None, :], other=0.0).to(DOT_DT)
    w2 = tl.load(w2_ptr + co[:, None] * HID + hidx[None, :],
                 mask=comask[:, None] & hmask[None, :], other=0.0).to(DOT_DT)
    a = tl.dot(zd, tl.trans(w1), input_precision=INPUT_PREC, out_dtype=tl.float32)
    a += tl.load(b1_ptr + hidx, mask=hmask, other=0.0).to(tl.float32)[None, :]
    gh = tl.dot(gud, w2, input_precision=INPUT_PREC, out_dtype=tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476))
    pdf = tl.exp(-0.5 * a * a) * 0.3989422804014327
    return a * cdf, gh * (cdf + a * pdf), w1, w2


@triton.jit
def _tile_inputs(z_ptr, g_ptr, ls_ptr, pid, P, H, W, ci, cimask, co, comask,
                 sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
                 BLOCK_P: tl.constexpr):
    """(z, g, g ls, pixel mask) of one pixel tile, fp32."""
    bb, hh, ww, pmask = _pixel_coords(pid, P, H, W, BLOCK_P)
    z = _load_rows(z_ptr, bb, hh, ww, pmask, ci, cimask, sxb, sxc, sxh, sxw)
    g = _load_rows(g_ptr, bb, hh, ww, pmask, co, comask, sgb, sgc, sgh, sgw)
    gu = g * tl.load(ls_ptr + co, mask=comask, other=0.0).to(tl.float32)[None, :]
    return z, g, gu, pmask


@triton.jit
def _mlp_bwd_dz_kernel(
    z_ptr, g_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ls_ptr, dz_ptr, ws_ptr,
    P, H, W, C_IN, HID, C_OUT,
    sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
    NEED_DZ: tl.constexpr, NEED_U: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
    BLOCK_H: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
    RELOAD_G: tl.constexpr = False,
):
    """dz rows [P, C_IN] (rounded once to dz's dtype; NEED_DZ) and ws[pid, 0:C_OUT] = sum_p g ls,
    ws[pid, C_OUT:2 C_OUT] = sum_p g (h W2^T + b2) (NEED_U) for one tile of BLOCK_P pixels.
    RELOAD_G: load g again for the last sum instead of holding it through the hidden loop."""
    pid = tl.program_id(0)
    ci = tl.arange(0, BLOCK_CI)
    cimask = ci < C_IN
    co = tl.arange(0, BLOCK_CO)
    comask = co < C_OUT
    z, g, gu, pmask = _tile_inputs(z_ptr, g_ptr, ls_ptr, pid, P, H, W, ci, cimask, co, comask,
                                   sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw, BLOCK_P)
    zd, gud = z.to(DOT_DT), gu.to(DOT_DT)
    base = ws_ptr + pid.to(tl.int64) * 2 * C_OUT
    tl.store(base + co, tl.sum(gu, axis=0), mask=comask)
    dz = tl.zeros((BLOCK_P, BLOCK_CI), dtype=tl.float32)
    u = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        hidx = h0 + tl.arange(0, BLOCK_H)
        h, ga, w1, w2 = _hidden_chunk(zd, gud, w1_ptr, b1_ptr, w2_ptr, hidx, hidx < HID, ci,
                                      cimask, co, comask, C_IN, HID, DOT_DT, INPUT_PREC)
        if NEED_DZ:
            dz = tl.dot(ga.to(DOT_DT), w1, dz, input_precision=INPUT_PREC, out_dtype=tl.float32)
        if NEED_U:
            u = tl.dot(h.to(DOT_DT), tl.trans(w2), u, input_precision=INPUT_PREC,
                       out_dtype=tl.float32)
    if NEED_DZ:
        rows = (pid * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64) * C_IN
        tl.store(dz_ptr + rows[:, None] + ci[None, :], _cast_out(dz, dz_ptr),
                 mask=pmask[:, None] & cimask[None, :])
    if NEED_U:
        if RELOAD_G:  # g again (from L1/L2) instead of holding the fp32 tile through the loop
            bb, hh, ww, pmask = _pixel_coords(pid, P, H, W, BLOCK_P)
            g = _load_rows(g_ptr, bb, hh, ww, pmask, co, comask, sgb, sgc, sgh, sgw)
        u += tl.load(b2_ptr + co, mask=comask, other=0.0).to(tl.float32)[None, :]
        # masked pixels load g = 0: their u (b2 and GELU(b1) terms) drops out
        tl.store(base + C_OUT + co, tl.sum(g * u, axis=0), mask=comask)


@triton.jit
def _mlp_bwd_dw_kernel(
    z_ptr, g_ptr, w1_ptr, b1_ptr, w2_ptr, ls_ptr, ws1_ptr, ws2_ptr, wsb_ptr,
    P, H, W, C_IN, HID, C_OUT, TILES_PER_SEG,
    sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
    BLOCK_H: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
    ONE_LOAD: tl.constexpr = False,
):
    """Hidden chunk pid0, pixel segment pid1 (TILES_PER_SEG tiles of BLOCK_P pixels):
    ws1[seg, j, :C_IN] = sum ga_j^T z, ws2[seg, :C_OUT, j] = sum (g ls)^T h_j,
    wsb[seg, j] = sum ga_j (fp32 partials of dW1, dW2, db1).
    Works on the transposed hidden tile ([BLOCK_H, BLOCK_P]: a^T = W1[j] z^T) and loads z and g
    in both orientations (the second from L1/L2) instead of tl.trans of register tiles: with the
    transposes the fp32 (FMA) dots spilled 760-5280 B (AOT report). ONE_LOAD (the half-precision
    config at 256 channels) loads each once and transposes the dot-dtype tiles instead."""
    hidx = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hidx < HID
    seg = tl.program_id(1)
    ci = tl.arange(0, BLOCK_CI)
    cimask = ci < C_IN
    co = tl.arange(0, BLOCK_CO)
    comask = co < C_OUT
    w1 = tl.load(w1_ptr + hidx[:, None] * C_IN + ci[None, :],
                 mask=hmask[:, None] & cimask[None, :], other=0.0).to(DOT_DT)  # [BH, CI]
    w2t = tl.load(w2_ptr + co[None, :] * HID + hidx[:, None],
                  mask=hmask[:, None] & comask[None, :], other=0.0).to(DOT_DT)  # [BH, CO]
    b1 = tl.load(b1_ptr + hidx, mask=hmask, other=0.0).to(tl.float32)
    lsv = tl.load(ls_ptr + co, mask=comask, other=0.0).to(tl.float32)
    dw1 = tl.zeros((BLOCK_H, BLOCK_CI), dtype=tl.float32)
    dw2t = tl.zeros((BLOCK_H, BLOCK_CO), dtype=tl.float32)
    db1 = tl.zeros((BLOCK_H,), dtype=tl.float32)
    n_tiles = tl.cdiv(P, BLOCK_P)
    t0 = seg * TILES_PER_SEG
    for t in range(t0, tl.minimum(t0 + TILES_PER_SEG, n_tiles)):
        bb, hh, ww, pmask = _pixel_coords(t, P, H, W, BLOCK_P)
        z = _load_rows(z_ptr, bb, hh, ww, pmask, ci, cimask, sxb, sxc, sxh, sxw)
        gu = _load_rows(g_ptr, bb, hh, ww, pmask, co, comask, sgb, sgc, sgh, sgw)
        gu = gu * lsv[None, :]
        if ONE_LOAD:
            zt = tl.trans(z.to(DOT_DT))
            gut = tl.trans(gu.to(DOT_DT))
        else:
            zoff = _off(bb, hh, ww, sxb, sxh, sxw)
            zt = tl.load(z_ptr + zoff[None, :] + ci.to(tl.int64)[:, None] * sxc,
                         mask=cimask[:, None] & pmask[None, :], other=0.0).to(tl.float32)
            goff = _off(bb, hh, ww, sgb, sgh, sgw)
            gut = tl.load(g_ptr + goff[None, :] + co.to(tl.int64)[:, None] * sgc,
                          mask=comask[:, None] & pmask[None, :], other=0.0).to(tl.float32)
            gut = gut * lsv[:, None]
        at = tl.dot(w1, zt.to(DOT_DT), input_precision=INPUT_PREC, out_dtype=tl.float32)
        at += b1[:, None]
        ght = tl.dot(w2t, gut.to(DOT_DT), input_precision=INPUT_PREC, out_dtype=tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(at * 0.7071067811865476))
        pdf = tl.exp(-0.5 * at * at) * 0.3989422804014327
        # masked pixels: g = 0 -> gh = 0 -> ga = 0, and gu = 0: no contribution
        gat = ght * (cdf + at * pdf)
        dw1 = tl.dot(gat.to(DOT_DT), z.to(DOT_DT), dw1, input_precision=INPUT_PREC,
                     out_dtype=tl.float32)
        dw2t = tl.dot((at * cdf).to(DOT_DT), gu.to(DOT_DT), dw2t, input_precision=INPUT_PREC,
                      out_dtype=tl.float32)
        db1 += tl.sum(gat, axis=1)
    s64 = seg.to(tl.int64)
    h64 = hidx.to(tl.int64)
    tl.store(ws1_ptr + s64 * HID * C_IN + h64[:, None] * C_IN + ci[None, :], dw1,
             mask=hmask[:, None] & cimask[None, :])
    tl.store(ws2_ptr + s64 * C_OUT * HID + co.to(tl.int64)[None, :] * HID + h64[:, None], dw2t,
             mask=hmask[:, None] & comask[None, :])
    tl.store(wsb_ptr + s64 * HID + hidx, db1, mask=hmask)


# --------------------------------------------------------------------------------------------
# Configs by padded width max(pad(C_in), pad(C_out)) (every one is tested in the interpreter
# and AOT-compiled for sm_80 / sm_90 by tools/triton_report.py)
# --------------------------------------------------------------------------------------------
# Kernel W holds two fp32 accumulators (dW1 [BH, C], dW2^T [BH, C_out]) besides z and g in both
# orientations: 16 x 16 tiles without load pipelining (num_stages 1) is what compiled spill-free
# for fp32 (FMA dots) at sm_80; 32-wide tiles or 2 stages spilled 16-5000 B (AOT report). At
# C <= 128 the NCHW specialization (channel stride > 1) spilled 32-712 B at 4 warps and the
# channels_last one 16 B at 8 (fp32, sm_80; ptxas held 128 registers), 16 warps spilled both:
# the warps there follow the layout (nchw_warps).
# C <= 256 (SwiftFormer-XS/S stage 4, C = 220 / 224): this is the fp16/bf16 config (fp32 weights
# run BWD_FP32_CONFIGS below; until session 16 fp32 took the torch path). Its kernel W
# loads z and g once and transposes the half-precision dot operands (ONE_LOAD; the second strided
# load spilled 160-1030 B in NCHW), and its kernel P re-loads g for the layer-scale sum after
# the hidden loop instead of keeping the fp32 tile live through it (RELOAD_G; 128-890 B spilled
# without). Spill-free at sm_80 / sm_90, both layouts, z in the input dtype or fp32; wider tiles
# (P 32 / H 32 in W, P 32 in P) or 4 warps spilled 8-890 B. Kernel P at C <= 64 runs 8 warps: at 4
# its variant without u (layer scale frozen or absent) spilled 8-16 B in fp16 / bf16 at sm_90.
BWD_CONFIGS = {
    64: dict(dz=dict(BLOCK_P=32, BLOCK_H=32, num_warps=8, num_stages=2),
             dw=dict(BLOCK_P=16, BLOCK_H=16, num_warps=4, num_stages=1)),
    128: dict(dz=dict(BLOCK_P=32, BLOCK_H=32, num_warps=8, num_stages=2),
              dw=dict(BLOCK_P=16, BLOCK_H=16, num_warps=4, num_stages=1, nchw_warps=8)),
    256: dict(dz=dict(BLOCK_P=16, BLOCK_H=32, num_warps=8, num_stages=1, RELOAD_G=True),
              dw=dict(BLOCK_P=16, BLOCK_H=16, num_warps=8, num_stages=1, ONE_LOAD=True)),
}
# fp32 weights at C <= 256 (SwiftFormer-XS/S stage 4) run these overrides (AOT report, session
# 16, both layouts, every flag variant, sm_80 / sm_90, spill-free). The half config spilled 8 B in
# kernel P (sm_80) and 104-376 B in kernel W; BLOCK_H 16 in kernel P holds 128-242 registers.
# Kernel W at 16 warps (512 threads, at most 128 registers each: 93-128 used) with ONE_LOAD:
# without it the NCHW variant spilled 8-104 B; at 4 / 8 warps it spilled 200-2900 B with every
# tile tried earlier. Kernel P at 16 warps (64 registers allotted) spilled 1.1-1.3 KB.
BWD_FP32_CONFIGS = {
    256: dict(dz=dict(BLOCK_P=16, BLOCK_H=16, num_warps=8, num_stages=1, RELOAD_G=True),
              dw=dict(BLOCK_P=16, BLOCK_H=16, num_warps=16, num_stages=1, ONE_LOAD=True)),
}
BWD_FP32_MAX_WIDTH = 256  # widest padded width fused when the weights are fp32


def bwd_config(key: int, dtype: torch.dtype) -> dict:
    """The config ({"dz", "dw"}) the launcher runs at padded width key for weights of this
    dtype (the fp32 overrides included)."""
    return dtype_config(BWD_CONFIGS, BWD_FP32_CONFIGS, key, dtype)
# kernel W grid target: hidden chunks x segments ~ 4 programs per H100 SM (132 SMs)
TARGET_PROGRAMS = 528


def bwd_config_key(c_in: int, c_out: int, dtype: torch.dtype = torch.float16) -> int | None:
    """The BWD_CONFIGS key serving these widths at this weight dtype, None past the widest
    (torch path)."""
    w = max(_pad_c(c_in), _pad_c(c_out))
    top = BWD_FP32_MAX_WIDTH if dtype == torch.float32 else max(BWD_CONFIGS)
    return next((k for k in sorted(BWD_CONFIGS) if w <= k <= top), None)


def segments(p: int, hid: int, block_p: int, block_h: int) -> int:
    """Pixel segments of kernel W: enough programs to fill the GPU, at most one per tile."""
    n_tiles, n_h = triton.cdiv(p, block_p), triton.cdiv(hid, block_h)
    return max(1, min(n_tiles, triton.cdiv(TARGET_PROGRAMS, n_h)))


def mlp_grads_fused(grad, z, w1, b1, w2, b2, ls, need, config=None, n_seg=None, dz_dtype=None,
                    dz_rows_ok=False):
    """_backward._mlp_grads in two Triton kernels; same outputs (dz as fp32 rows [P, C], or
    with dz_dtype a [B, C, H, W] tensor in that dtype written by kernel P: in z's layout, or
    with dz_rows_ok channels_last as kernel P wrote it, for a consumer that reads it beside an
    NCHW tensor (_conv._grad_beside); no copy into NCHW).
    config: a BWD_CONFIGS key (default: the narrowest that fits); n_seg: kernel W's pixel
    segments (default: segments())."""
    b, c_in, h, w = z.shape
    hid, c_out = w1.shape[0], w2.shape[0]
    p = b * h * w
    key = bwd_config_key(c_in, c_out, w1.dtype) if config is None else config
    if w1.dtype == torch.float32 and key > BWD_FP32_MAX_WIDTH:
        raise ValueError(f"config {key} is not built for fp32 weights (it spills registers)")
    cfg = bwd_config(key, w1.dtype)
    # g in z's layout: only the matching-layout specializations are AOT-verified (a no-op for
    # autograd's usual gradients)
    z = _unit_stride(z)
    grad = _unit_stride(grad.contiguous(memory_format=_layout(z)))
    w1c, w2c = w1.contiguous(), w2.contiguous()
    dummy = w1c
    b1c, b2c, lsc = _vec(b1, hid, w1c), _vec(b2, c_out, w2c), _vec(ls, c_out, w2c, 1.0)
    f32 = dict(device=z.device, dtype=torch.float32)
    dt = w1.dtype
    # tiles always at the config's width: only those variants are AOT-compiled (_specs)
    widths = dict(BLOCK_CI=key, BLOCK_CO=key, DOT_DT=dot_dtype(dt),
                  INPUT_PREC="ieee" if dt == torch.float32 else "tf32")
    strides = (*_s4(z), *_s4(grad))
    out = [None] * 6
    pairs = []  # (fp32 partials, gradient) summed by one kernel at the end
    need_u = bool(need[5] and ls is not None)
    if need[0] or need_u or (need[4] and b2 is not None):
        c = cfg["dz"]
        n_tiles = triton.cdiv(p, c["BLOCK_P"])
        # kernel P writes dz rows [P, C] (pixel-major: the channels_last order) in dz_dtype;
        # a strided store in z's own layout spilled registers in most configs (AOT report)
        dz = torch.empty(z.shape, device=z.device, dtype=dz_dtype or torch.float32,
                         memory_format=torch.channels_last) if need[0] else dummy
        ws = torch.empty((n_tiles, 2, c_out), **f32)
        _mlp_bwd_dz_kernel[(n_tiles,)](
            z, grad, w1c, b1c, w2c, b2c, lsc, dz, ws, p, h, w, c_in, hid, c_out, *strides,
            NEED_DZ=bool(need[0]), NEED_U=need_u, **widths, **c,
        )
        if need[0]:
            out[0] = (dz.permute(0, 2, 3, 1).reshape(p, c_in) if dz_dtype is None
                      else dz if dz_rows_ok
                      else dz.contiguous(memory_format=_layout(z)))  # a copy only for NCHW
        if need[4] and b2 is not None:
            out[4] = b2.new_empty(c_out)
            pairs.append((ws[:, 0], out[4]))
        if need_u:
            out[5] = ls.new_empty(c_out)
            pairs.append((ws[:, 1], out[5]))
    if need[1] or need[3] or (need[2] and b1 is not None):
        c = dict(cfg["dw"])
        nchw_warps = c.pop("nchw_warps", None)
        if nchw_warps is not None and z.stride(1) != 1:
            c["num_warps"] = nchw_warps
        bp, bh = c["BLOCK_P"], c["BLOCK_H"]
        s = segments(p, hid, bp, bh) if n_seg is None else n_seg
        per = triton.cdiv(triton.cdiv(p, bp), s)
        ws1 = torch.empty((s, hid, c_in), **f32)
        ws2 = torch.empty((s, c_out, hid), **f32)
        wsb = torch.empty((s, hid), **f32)
        _mlp_bwd_dw_kernel[(triton.cdiv(hid, bh), s)](
            z, grad, w1c, b1c, w2c, lsc, ws1, ws2, wsb, p, h, w, c_in, hid, c_out, per,
            *strides, **widths, **c,
        )
        for i, src, like in ((1, ws1, w1), (2, wsb, b1), (3, ws2, w2)):
            if need[i] and like is not None:
                out[i] = like.new_empty(like.shape)
                pairs.append((src, out[i]))
    sum_partials(pairs)
    return out
