"""Triton kernels for the conv-style ops: dwconv_bn, mlp, conv_block (eval forms), the dwconv_bn
backward and the train forms built from them.

Layout: tensors are addressed through their strides, so NCHW and channels_last inputs run the same
kernel (the output is allocated in x's memory format). A program owns BLOCK_P pixels of the
flattened (b, h, w) index and all channels of the block, which keeps the whole conv block in
registers: dwconv3x3 + folded BN prologue -> tl.dot pw1 -> exact GELU -> tl.dot pw2 (accumulated
over hidden chunks) -> ls + residual epilogue. The 3x3 halo is re-read from L1/L2, not DRAM.
That single kernel spilled registers past a padded width of 256 channels, so wider blocks
(SwiftFormer-L1/L3 stages 3-4: C = 320, 384, 512, hidden 4C) take a two-kernel split:
_mlp_hidden_kernel (prologue + pw1 + b1 + GELU, tiled over (pixels, hidden), K-loop over C) writes
the hidden activation [P, HID] to a scratch buffer, _mlp_out_kernel (pw2 + b2 + ls + residual,
tiled over (pixels, C_out), K-loop over HID) reads it back. The hidden then costs one write and
one read through memory (in x's dtype), which the single kernel avoids. The train forms feed the
same dispatch after the batch-statistics kernel; the backward launchers (_backward,
_train_backward) never run the fused forward (channel-tiled kernels, the MLP backward of
_mlp_backward up to 256 channels and GEMMs in torch wider), so they serve any width.

Pixel indices are int64 before any multiply by a stride, so tensors past 2^31 elements address
correctly. Every load converts to fp32 at once (bf16 arithmetic is wrong in the interpreter, and
fp32 is what the GPU path wants anyway); GEMM operands are cast to DOT_DT: the input dtype for
fp16/bf16 (tensor cores, as the eager reference rounds at that dtype too) and fp32 with
input_precision="ieee" for fp32 inputs (TF32 would miss the 1e-4 tolerance).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from swiftkern._registry import Unsupported

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)
# The interpreter truncates fp32->bf16 casts (the GPU rounds to nearest even): round explicitly
# there so interpreter results match what the GPU stores.
_EMULATE_RNE = tl.constexpr(INTERPRET)


# --------------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def _pixel_coords(pid, P, H, W, BLOCK_P: tl.constexpr):
    # Pixel index in int32 (the launcher checks B*H*W < 2^31): 64-bit div/mod would be a
    # subroutine call with a stack frame on the GPU. Coordinates become int64 before any
    # multiply by a stride, so element offsets past 2^31 stay exact.
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    ww = p % W
    t = p // W
    hh = t % H
    bb = t // H
    return bb, hh, ww, pmask


@triton.jit
def _segment(TILES, P, BLOCK_P: tl.constexpr):
    """(segment, last tile + 1, tile count) of this program's segment of TILES consecutive
    BLOCK_P-pixel tiles, segments taken in reverse program order (program 0 owns the last one,
    which may be short): visiting t_end - 1 - i for i < count reads the pixels from the end of
    the tensor to its start, so a kernel launched next that reads from the start finds them in
    L2 (the statistics kernel, the BN-backward reduce kernel)."""
    seg = tl.num_programs(0) - 1 - tl.program_id(0)
    t_end = tl.minimum((seg + 1) * TILES, tl.cdiv(P, BLOCK_P))
    return seg, t_end, t_end - seg * TILES


@triton.jit
def _off(bb, hh, ww, sb, sh, sw):
    return bb.to(tl.int64) * sb + hh.to(tl.int64) * sh + ww.to(tl.int64) * sw


@triton.jit
def _dw_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
             sxb, sxc, sxh, sxw, HAS_DWB: tl.constexpr):
    """fp32 [BLOCK_P, BLOCK_C] tile of dwconv3x3(x) (+ folded-BN bias); zero padding 1."""
    acc = tl.zeros((bb.shape[0], cc.shape[0]), dtype=tl.float32)
    # one int64 base per pixel and one scalar offset per tap: per-element 64-bit address math
    # for all 9 taps held ~2x the registers (AOT report) without it.
    ptrs = x_ptr + _off(bb, hh, ww, sxb, sxh, sxw)[:, None] + cc.to(tl.int64)[None, :] * sxc
    cm = cmask[None, :]
    for ky in tl.static_range(3):
        ih = hh + (ky - 1)
        mh = pmask & (ih >= 0) & (ih < H)
        for kx in tl.static_range(3):
            iw = ww + (kx - 1)
            m = mh & (iw >= 0) & (iw < W)
            # in the stride args' own int type (i32 unless > 2^31: then the JIT passes i64);
            # a stride of 1 arrives as a constexpr (JIT specialization), hence no .to() here.
            tap = (ky - 1) * sxh + (kx - 1) * sxw
            v = tl.load(ptrs + tap, mask=m[:, None] & cm, other=0.0).to(tl.float32)
            wt = tl.load(dww_ptr + cc * 9 + (ky * 3 + kx), mask=cmask, other=0.0).to(tl.float32)
            acc += v * wt[None, :]
    if HAS_DWB:
        acc += tl.load(dwb_ptr + cc, mask=cmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _cast_out(v, ptr):
    """fp32 -> element type of ptr, bf16 rounded to nearest even also in the interpreter."""
    if _EMULATE_RNE:
        if ptr.dtype.element_ty == tl.bfloat16:
            u = v.to(tl.uint32, bitcast=True)
            u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
            v = u.to(tl.float32, bitcast=True)
    return v.to(ptr.dtype.element_ty)


@triton.jit
def _gelu(h):
    return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _dwconv_bn_fwd_kernel(
    x_ptr, dww_ptr, dwb_ptr, out_ptr,
    P, C, H, W,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out = dwconv3x3(x) + b over a [BLOCK_P pixels, BLOCK_C channels] tile. Grid (P/BP, C/BC)."""
    bb, hh, ww, pmask = _pixel_coords(tl.program_id(0), P, H, W, BLOCK_P)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    z = _dw_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                 sxb, sxc, sxh, sxw, True)
    off = _off(bb, hh, ww, sob, soh, sow)
    tl.store(out_ptr + off[:, None] + cc.to(tl.int64)[None, :] * soc,
             _cast_out(z, out_ptr), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _dwconv_bn_stats_kernel(
    x_ptr, dww_ptr, dwb_ptr, ws_ptr,
    P, C, H, W, TILES,
    sxb, sxc, sxh, sxw,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per-segment (count, mean, M2) of dwconv3x3(x) per channel into ws[seg, 0:3, C]. A segment
    is TILES consecutive BLOCK_P-pixel tiles; each tile's statistics are two-pass in registers
    (no E[z^2]-E[z]^2 cancellation) and merged into the segment's with Chan's formula; the
    segments are merged by _bn_stats_merge_kernel. Reversed order: program 0 takes the last
    segment and every program visits its tiles last to first, so x is read from its end to its
    start and the kernel launched next (which reads x from the start) finds the most recently
    read part of x still in L2."""
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    n_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    mean_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    seg, t_end, count = _segment(TILES, P, BLOCK_P)
    for i in range(0, count):
        t = t_end - 1 - i
        bb, hh, ww, pmask = _pixel_coords(t, P, H, W, BLOCK_P)
        z = _dw_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                     sxb, sxc, sxh, sxw, True)
        z = tl.where(pmask[:, None], z, 0.0)  # masked pixels hold the bias: drop them
        n = tl.sum(pmask.to(tl.float32), axis=0)
        mean = tl.sum(z, axis=0) / n
        d = tl.where(pmask[:, None], z - mean[None, :], 0.0)
        m2 = tl.sum(d * d, axis=0)
        # Chan: the first tile enters exactly (n / tot == 1, n_acc == 0)
        tot = n_acc + n
        delta = mean - mean_acc
        mean_acc = mean_acc + delta * (n / tot)
        m2_acc = m2_acc + m2 + delta * delta * (n_acc * n / tot)
        n_acc = tot
    base = ws_ptr + seg.to(tl.int64) * 3 * C
    tl.store(base + cc, n_acc, mask=cmask)
    tl.store(base + C + cc, mean_acc, mask=cmask)
    tl.store(base + 2 * C + cc, m2_acc, mask=cmask)


@triton.jit
def _bn_stats_merge_kernel(
    ws_ptr, bnw_ptr, bnb_ptr, stat_ptr, mo_ptr, vo_ptr, dww_ptr, dwb_ptr, wfold_ptr, bfold_ptr,
    NSEG, C, P, eps,
    FOLD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The segments' (count, mean, M2) rows ws[NSEG, 3, C] merged per channel (Chan:
    mean = sum n m / P, var = (sum M2 + sum n (m - mean)^2) / P, biased) into
    stat[4, C] fp32 = mean, var, scale = bn_w / sqrt(var + eps), shift = bn_b, and mean / var
    in the output dtype (mo, vo: the op's returned statistics). FOLD (dwconv_bn_train): also the
    BN folded into the dwconv, wfold[C, 9] = w * scale, bfold = (b - mean) * scale + shift (b - mean
    first: a bias-dominated mean cancels exactly instead of in the products), fp32. One launch
    instead of the ~15 small torch ops of a host-side merge (+ 4 for the fold). Grid: C / BLOCK_C.
    """
    cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    pf = P.to(tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, NSEG, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < NSEG)[:, None] & cmask[None, :]
        base = ws_ptr + r.to(tl.int64)[:, None] * 3 * C + cc[None, :]
        acc += tl.load(base, mask=m, other=0.0) * tl.load(base + C, mask=m, other=0.0)
    mean = tl.sum(acc, axis=0) / pf
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, NSEG, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < NSEG)[:, None] & cmask[None, :]
        base = ws_ptr + r.to(tl.int64)[:, None] * 3 * C + cc[None, :]
        n = tl.load(base, mask=m, other=0.0)
        d = tl.load(base + C, mask=m, other=0.0) - mean[None, :]
        acc += tl.load(base + 2 * C, mask=m, other=0.0) + n * d * d  # masked rows: n = M2 = 0
    var = tl.sum(acc, axis=0) / pf
    gamma = tl.load(bnw_ptr + cc, mask=cmask, other=0.0)
    beta = tl.load(bnb_ptr + cc, mask=cmask, other=0.0)
    tl.store(stat_ptr + cc, mean, mask=cmask)
    tl.store(stat_ptr + C + cc, var, mask=cmask)
    # (padded channels divide by 1: no 0 / 0 there when eps is 0)
    scale = gamma / tl.where(cmask, tl.sqrt_rn(var + eps), 1.0)
    tl.store(stat_ptr + 2 * C + cc, scale, mask=cmask)
    tl.store(stat_ptr + 3 * C + cc, beta, mask=cmask)
    if FOLD:
        for tap in tl.static_range(9):
            wt = tl.load(dww_ptr + cc * 9 + tap, mask=cmask, other=0.0).to(tl.float32)
            tl.store(wfold_ptr + cc * 9 + tap, wt * scale, mask=cmask)
        db = tl.load(dwb_ptr + cc, mask=cmask, other=0.0).to(tl.float32)
        tl.store(bfold_ptr + cc, (db - mean) * scale + beta, mask=cmask)
    tl.store(mo_ptr + cc, _cast_out(mean, mo_ptr), mask=cmask)
    tl.store(vo_ptr + cc, _cast_out(var, vo_ptr), mask=cmask)


@triton.jit
def _dwconv_bn_bwd_kernel(
    g_ptr, x_ptr, dwf_ptr, res_ptr, dx_ptr, ws_ptr,
    P, C, H, W,
    sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw, sob, soc, soh, sow, srb, src, srh, srw,
    NEED_DX: tl.constexpr, NEED_W: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Backward of dwconv3x3 + b over one [BLOCK_P pixels, BLOCK_C channels] tile, one pass:
    NEED_DX: dx = dwconv3x3(g) with the 180-degree-rotated kernel dwf (stride 1, pad 1 is
      self-adjoint up to the flip) (+ res), rounded once to dx's dtype;
    NEED_W: partial weight / bias gradients ws[pid0, c * 9 + tap] = sum_p g * x_shift (dw_w's own
      [C, 1, 3, 3] order), ws[pid0, 9 C + c] = sum_p g, summed over pid0 by one
      _partials.sum_partials launch (deterministic, no atomics).
    g is read from memory once: the shifted g loads of dx and the centre load of the weight
    gradient are the same cache lines."""
    pid = tl.program_id(0)
    bb, hh, ww, pmask = _pixel_coords(pid, P, H, W, BLOCK_P)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    c64 = cc.to(tl.int64)
    if NEED_DX:
        z = _dw_tile(g_ptr, dwf_ptr, dwf_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                     sgb, sgc, sgh, sgw, False)
        if HAS_RES:
            z += tl.load(res_ptr + _off(bb, hh, ww, srb, srh, srw)[:, None] + c64[None, :] * src,
                         mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        tl.store(dx_ptr + _off(bb, hh, ww, sob, soh, sow)[:, None] + c64[None, :] * soc,
                 _cast_out(z, dx_ptr), mask=pmask[:, None] & cmask[None, :])
    if NEED_W:
        g = tl.load(g_ptr + _off(bb, hh, ww, sgb, sgh, sgw)[:, None] + c64[None, :] * sgc,
                    mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        base = ws_ptr + pid.to(tl.int64) * 10 * C
        for ky in tl.static_range(3):
            ih = hh + (ky - 1)
            for kx in tl.static_range(3):
                iw = ww + (kx - 1)
                m = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                off = _off(bb, ih, iw, sxb, sxh, sxw)
                v = tl.load(x_ptr + off[:, None] + c64[None, :] * sxc,
                            mask=m[:, None] & cmask[None, :], other=0.0).to(tl.float32)
                tl.store(base + cc * 9 + (ky * 3 + kx), tl.sum(g * v, axis=0), mask=cmask)
        tl.store(base + 9 * C + cc, tl.sum(g, axis=0), mask=cmask)


@triton.jit
def _pw2_epilogue(acc, b2_ptr, ls_ptr, res_ptr, out_ptr, co, comask, bb, hh, ww, pmask,
                  srb, src, srh, srw, sob, soc, soh, sow, HAS_RES: tl.constexpr):
    """out = res + ls * (acc + b2) for a [pixels, C_out] tile (shared by the fused and the
    wide-channel output kernels)."""
    acc += tl.load(b2_ptr + co, mask=comask, other=0.0).to(tl.float32)[None, :]
    acc *= tl.load(ls_ptr + co, mask=comask, other=0.0).to(tl.float32)[None, :]
    omask = pmask[:, None] & comask[None, :]
    co64 = co.to(tl.int64)
    if HAS_RES:
        roff = _off(bb, hh, ww, srb, srh, srw)
        acc += tl.load(res_ptr + roff[:, None] + co64[None, :] * src, mask=omask,
                       other=0.0).to(tl.float32)
    ooff = _off(bb, hh, ww, sob, soh, sow)
    tl.store(out_ptr + ooff[:, None] + co64[None, :] * soc, _cast_out(acc, out_ptr),
             mask=omask)


@triton.jit
def _z_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
            sxb, sxc, sxh, sxw, HAS_DW: tl.constexpr):
    """fp32 [BLOCK_P, BLOCK_C] tile of dwconv3x3(x) + bias (HAS_DW) or of x itself."""
    if HAS_DW:
        z = _dw_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                     sxb, sxc, sxh, sxw, True)
    else:
        z = tl.load(x_ptr + _off(bb, hh, ww, sxb, sxh, sxw)[:, None]
                    + cc.to(tl.int64)[None, :] * sxc,
                    mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    return z


@triton.jit
def _prologue_tile(x_ptr, dww_ptr, dwb_ptr, mean_ptr, scale_ptr, shift_ptr, bb, hh, ww, pmask,
                   cc, cmask, H, W, sxb, sxc, sxh, sxw, HAS_DW: tl.constexpr,
                   HAS_AFFINE: tl.constexpr):
    """The pw1 input tile of the mlp / conv_block kernels: _z_tile, then the optional train-form
    BN (z - mean) * scale + shift (mean first: folding it into the shift cancels when
    |mean| >> std). Padded channels load 0 everywhere, so (0 - 0) * 0 + 0 keeps them out of
    the dot."""
    z = _z_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                sxb, sxc, sxh, sxw, HAS_DW)
    if HAS_AFFINE:
        mu = tl.load(mean_ptr + cc, mask=cmask, other=0.0)
        sc = tl.load(scale_ptr + cc, mask=cmask, other=0.0)
        sh = tl.load(shift_ptr + cc, mask=cmask, other=0.0)
        z = (z - mu[None, :]) * sc[None, :] + sh[None, :]
    return z


@triton.jit
def _fused_mlp_fwd_kernel(
    x_ptr, dww_ptr, dwb_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ls_ptr, res_ptr, out_ptr,
    mean_ptr, scale_ptr, shift_ptr,
    P, H, W, C_IN, HID, C_OUT,
    sxb, sxc, sxh, sxw, srb, src, srh, srw, sob, soc, soh, sow,
    HAS_DW: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
    BLOCK_H: tl.constexpr, DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """res + ls * W2 GELU(W1 z + b1) + b2 with z = dwconv(x) (HAS_DW) or x, optionally followed by
    the train-form BN (z - mean) * scale + shift with batch statistics (subtracting the mean
    first, as the reference does: folding it into the shift cancels catastrophically when
    |mean| >> std). One program owns BLOCK_P pixels and all channels; the hidden activation
    never leaves registers."""
    bb, hh, ww, pmask = _pixel_coords(tl.program_id(0), P, H, W, BLOCK_P)
    ci = tl.arange(0, BLOCK_CI)
    cimask = ci < C_IN
    z = _prologue_tile(x_ptr, dww_ptr, dwb_ptr, mean_ptr, scale_ptr, shift_ptr, bb, hh, ww, pmask,
                       ci, cimask, H, W, sxb, sxc, sxh, sxw, HAS_DW, HAS_AFFINE)
    zd = z.to(DOT_DT)
    co = tl.arange(0, BLOCK_CO)
    comask = co < C_OUT
    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        hidx = h0 + tl.arange(0, BLOCK_H)
        hmask = hidx < HID
        w1 = tl.load(w1_ptr + hidx[None, :] * C_IN + ci[:, None],
                     mask=cimask[:, None] & hmask[None, :], other=0.0).to(tl.float32)
        h = tl.dot(zd, w1.to(DOT_DT), input_precision=INPUT_PREC, out_dtype=tl.float32)
        h += tl.load(b1_ptr + hidx, mask=hmask, other=0.0).to(tl.float32)[None, :]
        h = _gelu(h)
        w2 = tl.load(w2_ptr + co[None, :] * HID + hidx[:, None],
                     mask=hmask[:, None] & comask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(h.to(DOT_DT), w2.to(DOT_DT), acc, input_precision=INPUT_PREC,
                     out_dtype=tl.float32)
    _pw2_epilogue(acc, b2_ptr, ls_ptr, res_ptr, out_ptr, co, comask, bb, hh, ww, pmask,
                  srb, src, srh, srw, sob, soc, soh, sow, HAS_RES)


# --- wide channels (C > 256): two kernels, the hidden activation goes through memory -----------
@triton.jit
def _mlp_hidden_kernel(
    x_ptr, dww_ptr, dwb_ptr, w1_ptr, b1_ptr, h_ptr, mean_ptr, scale_ptr, shift_ptr,
    P, H, W, C_IN, HID,
    sxb, sxc, sxh, sxw,
    HAS_DW: tl.constexpr, HAS_AFFINE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """h[P, HID] = GELU(W1 z + b1) over a [BLOCK_P pixels, BLOCK_N hidden] tile, K-loop over C_IN
    in BLOCK_K chunks; z = dwconv(x) (HAS_DW) or x, then the optional train-form BN
    (z - mean) * scale + shift (mean first, as in _fused_mlp_fwd_kernel). The prologue is
    recomputed per hidden tile: HID / BLOCK_N times the 9-tap dwconv, whose x re-reads hit L2
    because the hidden tiles of one pixel tile are neighbouring program ids (1-D grid, hidden
    tile fastest). h is a row-major scratch buffer in the dtype pw2 consumes (DOT_DT rounding
    happens at the store instead of at the dot: same values, half the bytes for fp16/bf16)."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(HID, BLOCK_N)
    pid_p = pid // n_tiles
    bb, hh, ww, pmask = _pixel_coords(pid_p, P, H, W, BLOCK_P)
    hidx = (pid % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    hmask = hidx < HID
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C_IN, BLOCK_K):
        ci = k0 + tl.arange(0, BLOCK_K)
        cimask = ci < C_IN
        z = _prologue_tile(x_ptr, dww_ptr, dwb_ptr, mean_ptr, scale_ptr, shift_ptr, bb, hh, ww,
                           pmask, ci, cimask, H, W, sxb, sxc, sxh, sxw, HAS_DW, HAS_AFFINE)
        w1 = tl.load(w1_ptr + hidx[None, :] * C_IN + ci[:, None],
                     mask=cimask[:, None] & hmask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(z.to(DOT_DT), w1.to(DOT_DT), acc, input_precision=INPUT_PREC,
                     out_dtype=tl.float32)
    acc += tl.load(b1_ptr + hidx, mask=hmask, other=0.0).to(tl.float32)[None, :]
    acc = _gelu(acc)
    rows = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64) * HID
    tl.store(h_ptr + rows[:, None] + hidx[None, :], _cast_out(acc, h_ptr),
             mask=pmask[:, None] & hmask[None, :])


@triton.jit
def _mlp_out_kernel(
    h_ptr, w2_ptr, b2_ptr, ls_ptr, res_ptr, out_ptr,
    P, H, W, HID, C_OUT,
    srb, src, srh, srw, sob, soc, soh, sow,
    HAS_RES: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DT: tl.constexpr, INPUT_PREC: tl.constexpr,
):
    """out = res + ls * (W2 h + b2) over a [BLOCK_P pixels, BLOCK_N out channels] tile, K-loop over
    HID in BLOCK_K chunks of the scratch h written by _mlp_hidden_kernel. 1-D grid, channel tile
    fastest: the C_OUT / BLOCK_N programs that re-read one pixel tile's h rows run together (L2)."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(C_OUT, BLOCK_N)
    pid_p = pid // n_tiles
    bb, hh, ww, pmask = _pixel_coords(pid_p, P, H, W, BLOCK_P)
    co = (pid % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    comask = co < C_OUT
    rows = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64) * HID
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, HID, BLOCK_K):
        hk = k0 + tl.arange(0, BLOCK_K)
        kmask = hk < HID
        h = tl.load(h_ptr + rows[:, None] + hk[None, :], mask=pmask[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        w2 = tl.load(w2_ptr + co[None, :] * HID + hk[:, None],
                     mask=kmask[:, None] & comask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(h.to(DOT_DT), w2.to(DOT_DT), acc, input_precision=INPUT_PREC,
                     out_dtype=tl.float32)
    _pw2_epilogue(acc, b2_ptr, ls_ptr, res_ptr, out_ptr, co, comask, bb, hh, ww, pmask,
                  srb, src, srh, srw, sob, soc, soh, sow, HAS_RES)


# --------------------------------------------------------------------------------------------
# Configs (every one is tested in the interpreter and AOT-compiled for sm_80/sm_90)
# --------------------------------------------------------------------------------------------
# dwconv tiles: 32 pixels x 32 channels, 8 elements per thread: 64 x 64 spilled at sm_90 (the
# compiler keeps all 9 taps' loads in flight).
DW_CONFIGS = {"default": dict(BLOCK_P=32, BLOCK_C=32, num_warps=4)}

# Fused MLP tiles by the padded channel width max(BLOCK_CI, BLOCK_CO). The dwconv prologue holds a
# BLOCK_P x BLOCK_CI fp32 tile: more than 16 elements per thread spilled at sm_90 (AOT report),
# hence BLOCK_P 16 from C > 128 on. C > 256 (SwiftFormer-L1/L3 stage 4) spilled at every tile
# tried (16 x 512 at 8 and 16 warps): those widths take the two-kernel split (SPLIT_CONFIG).
MLP_CONFIGS = {
    64: dict(BLOCK_P=32, BLOCK_H=64, num_warps=8, num_stages=2),
    128: dict(BLOCK_P=32, BLOCK_H=32, num_warps=8, num_stages=2),
    256: dict(BLOCK_P=16, BLOCK_H=32, num_warps=8, num_stages=2),
}


# Wider channels: _mlp_hidden_kernel then _mlp_out_kernel (the hidden activation goes through a
# [P, HID] scratch buffer). Each program holds one BLOCK_P x BLOCK_N fp32 accumulator and K-loops
# over C_IN / HID, so one config serves every width; picked when the padded width exceeds
# max(MLP_CONFIGS), or forced with config="split". AOT report (fp32 at sm_80 is the tightest: the
# ieee dot runs on FMA units): hidden with BLOCK_K 32 spilled 64 B, out at 4 warps x BLOCK_K 64
# spilled 500-670 B; out with 3 stages sat at 255 registers.
SPLIT_CONFIG = {
    "hidden": dict(BLOCK_P=64, BLOCK_N=128, BLOCK_K=16, num_warps=8, num_stages=2),
    "out": dict(BLOCK_P=64, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=2),
}


def _pad_c(c: int) -> int:
    return max(16, triton.next_power_of_2(c))


def mlp_config_key(c_in: int, c_out: int) -> int:
    """Single-kernel config for these widths; Unsupported past the widest (use "split" there)."""
    w = max(_pad_c(c_in), _pad_c(c_out))
    for k in sorted(MLP_CONFIGS):
        if w <= k:
            return k
    raise Unsupported(f"channels {max(c_in, c_out)} > {max(MLP_CONFIGS)} (no fused config)")


def fused_config(c_in: int, c_out: int) -> int | str:
    """The config the mlp / conv_block launchers pick: a MLP_CONFIGS key, or "split"."""
    if max(_pad_c(c_in), _pad_c(c_out)) > max(MLP_CONFIGS):
        return "split"
    return mlp_config_key(c_in, c_out)


def dtype_config(configs: dict, fp32_configs: dict, key: int, dtype: torch.dtype) -> dict:
    """configs[key], or its fp32 override fp32_configs[key] for fp32 inputs where one exists
    (the fused attention forward / backward and the MLP backward keep such overrides)."""
    if dtype == torch.float32 and key in fp32_configs:
        return fp32_configs[key]
    return configs[key]


def dot_dtype(dtype: torch.dtype):
    if dtype == torch.float16:
        return tl.float16
    # bf16 tl.dot is wrong in the interpreter (operands held as uint16): emulate it in fp32 there.
    if dtype == torch.bfloat16 and not INTERPRET:
        return tl.bfloat16
    return tl.float32


def _input_prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------
# Launchers (signatures of swiftkern/ops/reference.py)
# --------------------------------------------------------------------------------------------
def _layout(t: torch.Tensor) -> torch.memory_format:
    # Same rule as swiftkern.ops._define.layout_of, so the op wrapper never copies our output.
    if t.dim() != 4 or t.is_contiguous():
        return torch.contiguous_format
    if t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    s = t.stride()
    return torch.channels_last if t.shape[1] > 1 and s[1] < min(s[2], s[3]) else \
        torch.contiguous_format


def _grad_beside(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g for a kernel that reads it beside x (g has x's shape): as is when it is channels_last
    while x is NCHW (the fused MLP backward's dz rows, or an autograd gradient that arrived
    channels_last: the "gcl" specializations, AOT-compiled too), else in x's layout. Saves the
    copy of a pixel-major gradient into NCHW (a read and a write of the gradient)."""
    if (_layout(x) == torch.contiguous_format and x.shape[1] > 1 and x.stride(3) == 1
            and g.stride(1) == 1 and _layout(g) == torch.channels_last):
        return g
    return _unit_stride(g.contiguous(memory_format=_layout(x)))


def _check(x: torch.Tensor) -> None:
    if x.dim() == 4 and x.shape[0] * x.shape[2] * x.shape[3] >= 2**31:
        raise Unsupported("more than 2^31 pixels")
    if x.dtype not in SUPPORTED:
        raise Unsupported(f"dtype {x.dtype}")
    if x.device.type != "cuda" and not INTERPRET:
        raise Unsupported("Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1)")


def _unit_stride(t: torch.Tensor | None) -> torch.Tensor | None:
    """t itself when its channel (channels_last) or width (NCHW) stride is 1, else a copy in its
    layout. Only those two JIT specializations are AOT-verified spill-free (tools/triton_report.py);
    a fully generic-stride variant spilled heavily at sm_90."""
    if t is None or t.stride(1) == 1 or t.stride(3) == 1 or t.numel() == 0:
        return t
    return t.contiguous(memory_format=_layout(t))


def _c(t):
    return None if t is None else t.contiguous()


def _vec(t: torch.Tensor | None, n: int, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """A bias (fill 0) or scale (fill 1) vector, contiguous; when absent, n copies of `fill` in
    `like`'s dtype. Kernels always load their biases and scales: one specialization per kernel
    instead of one per present/absent combination (those lighter variants compiled to different
    register allocations, and some of them spilled: session-6 sweep, README). Adding 0 or
    multiplying by 1 in fp32 changes no value (a -0.0 sum may come out +0.0)."""
    if t is not None:
        return t.contiguous()
    return torch.full((n,), fill, device=like.device, dtype=like.dtype)


def _f32_standin(like: torch.Tensor) -> torch.Tensor:
    """A one-element fp32 tensor on like's device for a pointer argument the launch leaves
    unread, where the AOT specs type that name fp32 (_specs._PTR_FP32): the launched variant is
    then the compiled one (tests/triton/test_spec_coverage.py checks the dtypes)."""
    return torch.empty(1, device=like.device, dtype=torch.float32)


def _empty_like_x(x: torch.Tensor, c_out: int | None = None) -> torch.Tensor:
    b, c, h, w = x.shape
    return torch.empty((b, c if c_out is None else c_out, h, w), device=x.device, dtype=x.dtype,
                       memory_format=_layout(x))


def _s4(t: torch.Tensor):
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def dwconv_bn(x, dw_w, dw_b, config: str = "default"):
    _check(x)
    x = _unit_stride(x)
    b, c, h, w = x.shape
    out = _empty_like_x(x)
    p = b * h * w
    if out.numel() == 0:
        return out
    cfg = DW_CONFIGS[config]
    grid = (triton.cdiv(p, cfg["BLOCK_P"]), triton.cdiv(c, cfg["BLOCK_C"]))
    dww = dw_w.contiguous()
    _dwconv_bn_fwd_kernel[grid](
        x, dww, _vec(dw_b, c, dww), out, p, c, h, w, *_s4(x), *_s4(out),
        BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
    )
    return out


def _fused(x, dw_w, dw_b, bn, w1, b1, w2, b2, ls, residual, config=None):
    _check(x)
    x, residual = _unit_stride(x), _unit_stride(residual)
    b, c_in, h, w = x.shape
    hid, c_out = w1.shape[0], w2.shape[0]
    key = fused_config(c_in, c_out) if config is None else config
    if key == "split":
        return _fused_split(x, dw_w, dw_b, bn, w1, b1, w2, b2, ls, residual)
    cfg = MLP_CONFIGS[key]
    if max(_pad_c(c_in), _pad_c(c_out)) > key:
        raise ValueError(f"config {key} too narrow for channels {c_in}->{c_out}")
    out = _empty_like_x(x, c_out)
    p = b * h * w
    if out.numel() == 0:
        return out
    w1c, w2c = w1.contiguous(), w2.contiguous()
    dummy = w1c
    res = residual if residual is not None else out
    grid = (triton.cdiv(p, cfg["BLOCK_P"]),)
    _fused_mlp_fwd_kernel[grid](
        x, *_dw_args(dw_w, dw_b, dummy, c_in), w1c, _vec(b1, hid, w1c), w2c,
        _vec(b2, c_out, w2c), _vec(ls, c_out, w2c, 1.0), res, out,
        *((_f32_standin(x),) * 3 if bn is None else bn),
        p, h, w, c_in, hid, c_out, *_s4(x), *_s4(res), *_s4(out),
        HAS_DW=dw_w is not None, HAS_AFFINE=bn is not None, HAS_RES=residual is not None,
        BLOCK_P=cfg["BLOCK_P"], BLOCK_CI=key, BLOCK_CO=key,  # the AOT-compiled tiles (_specs)
        BLOCK_H=cfg["BLOCK_H"], DOT_DT=dot_dtype(x.dtype), INPUT_PREC=_input_prec(x.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def _dw_args(dw_w, dw_b, dummy, c):
    """(dwconv weight, bias) pointers of the fused kernels: `dummy` twice without a dwconv."""
    if dw_w is None:
        return dummy, dummy
    dww = dw_w.contiguous()
    return dww, _vec(dw_b, c, dww)


def _fused_split(x, dw_w, dw_b, bn, w1, b1, w2, b2, ls, residual):
    """Two-kernel form of _fused for any width: pw1 (+ prologue) + GELU into a [P, HID] scratch in
    x's dtype, then pw2 + epilogue. x and residual already have a unit inner stride."""
    b, c_in, h, w = x.shape
    hid, c_out = w1.shape[0], w2.shape[0]
    out = _empty_like_x(x, c_out)
    p = b * h * w
    if out.numel() == 0:
        return out
    ca, cb = SPLIT_CONFIG["hidden"], SPLIT_CONFIG["out"]
    w1c, w2c = w1.contiguous(), w2.contiguous()
    dummy = w1c
    dot_dt, prec = dot_dtype(x.dtype), _input_prec(x.dtype)
    hbuf = torch.empty((p, hid), device=x.device, dtype=x.dtype)
    if hid > 0:
        grid = (triton.cdiv(p, ca["BLOCK_P"]) * triton.cdiv(hid, ca["BLOCK_N"]),)
        _mlp_hidden_kernel[grid](
            x, *_dw_args(dw_w, dw_b, dummy, c_in), w1c, _vec(b1, hid, w1c), hbuf,
            *((_f32_standin(x),) * 3 if bn is None else bn),
            p, h, w, c_in, hid, *_s4(x),
            HAS_DW=dw_w is not None, HAS_AFFINE=bn is not None,
            BLOCK_P=ca["BLOCK_P"], BLOCK_N=ca["BLOCK_N"], BLOCK_K=ca["BLOCK_K"],
            DOT_DT=dot_dt, INPUT_PREC=prec,
            num_warps=ca["num_warps"], num_stages=ca["num_stages"],
        )
    res = residual if residual is not None else out
    grid = (triton.cdiv(p, cb["BLOCK_P"]) * triton.cdiv(c_out, cb["BLOCK_N"]),)
    _mlp_out_kernel[grid](
        hbuf, w2c, _vec(b2, c_out, w2c), _vec(ls, c_out, w2c, 1.0), res, out,
        p, h, w, hid, c_out, *_s4(res), *_s4(out),
        HAS_RES=residual is not None,
        BLOCK_P=cb["BLOCK_P"], BLOCK_N=cb["BLOCK_N"], BLOCK_K=cb["BLOCK_K"],
        DOT_DT=dot_dt, INPUT_PREC=prec,
        num_warps=cb["num_warps"], num_stages=cb["num_stages"],
    )
    return out


def mlp(x, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual, config=None):
    return _fused(x, None, None, None, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual, config)


def conv_block(x, dw_w, dw_b, pw1_w, pw1_b, pw2_w, pw2_b, ls, config=None):
    return _fused(x, dw_w, dw_b, None, pw1_w, pw1_b, pw2_w, pw2_b, ls, x, config)


# --- train forms: batch statistics pass, then the same fused kernels with a folded affine ------
# Batch statistics: at most about STATS_TARGET_PROGRAMS programs of the statistics kernel (pixel
# segments x channel blocks), so the merge kernel reads few rows; its tiles in MERGE_CONFIG.
STATS_TARGET_PROGRAMS = 528
MERGE_CONFIG = dict(BLOCK_R=32, BLOCK_C=32, num_warps=4)


@functools.lru_cache(maxsize=64)
def _identity_tap(c: int, device: torch.device) -> torch.Tensor:
    """fp32 [C, 1, 3, 3] depthwise kernel with centre tap 1: the statistics kernel then reads x
    itself (mlp_train). Cached per (C, device): read-only, built once instead of two launches
    per call."""
    t = torch.zeros((c, 1, 3, 3), device=device, dtype=torch.float32)
    t[:, 0, 1, 1] = 1.0
    return t


def stats_segments(p: int, c: int, config: str = "default") -> tuple[int, int]:
    """(segments, tiles per segment) of the statistics kernel for p pixels and c channels."""
    cfg = DW_CONFIGS[config]
    ntiles = triton.cdiv(p, cfg["BLOCK_P"])
    want = max(1, min(ntiles, triton.cdiv(STATS_TARGET_PROGRAMS, triton.cdiv(c, cfg["BLOCK_C"]))))
    tiles = triton.cdiv(ntiles, want)
    return triton.cdiv(ntiles, tiles), tiles


def _batch_stats(x, dw_w, dw_b, bn_w=None, bn_b=None, eps=0.0, config="default", fold=False):
    """Batch statistics of dwconv(x), or of x when dw_w is None (identity tap), in two launches
    (the statistics kernel, then _bn_stats_merge_kernel): (stat, mean, var) with stat fp32
    [4, C] = mean, biased var, scale = bn_w / sqrt(var + eps), shift = bn_b (rows contiguous;
    absent bn_w / bn_b count as ones / zeros), and mean / var in x's dtype (the train ops'
    returned statistics); fold: also (w_f, b_f), the BN folded into the dwconv (fp32 [C, 1, 3, 3]
    and [C], from the same launch)."""
    b, c, h, w = x.shape
    p = b * h * w
    cfg = DW_CONFIGS[config]
    if dw_w is None:
        # identity 3x3 kernel: centre tap 1 -> the same stats kernel reads x itself.
        dw_w, dw_b = _identity_tap(c, x.device), None
    nseg, tiles = stats_segments(p, c, config)
    x = _unit_stride(x)
    ws = torch.empty((nseg, 3, c), device=x.device, dtype=torch.float32)
    dww = dw_w.contiguous()
    dwb = _vec(dw_b, c, dww)
    _dwconv_bn_stats_kernel[(nseg, triton.cdiv(c, cfg["BLOCK_C"]))](
        x, dww, dwb, ws, p, c, h, w, tiles, *_s4(x),
        BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
    )
    stat = torch.empty((4, c), device=x.device, dtype=torch.float32)
    mo = torch.empty((c,), device=x.device, dtype=x.dtype)
    vo = torch.empty((c,), device=x.device, dtype=x.dtype)
    gamma = _vec(None if bn_w is None else bn_w.float(), c, stat, 1.0)
    beta = _vec(None if bn_b is None else bn_b.float(), c, stat)
    mc = MERGE_CONFIG
    folded = (torch.empty((c, 1, 3, 3), device=x.device, dtype=torch.float32),
              torch.empty((c,), device=x.device, dtype=torch.float32)) if fold else (stat, stat)
    dw_in = (dww, dwb) if fold else (stat, stat)  # unread without fold: fp32 stand-ins
    _bn_stats_merge_kernel[(triton.cdiv(c, mc["BLOCK_C"]),)](
        ws, gamma, beta, stat, mo, vo, *dw_in, *folded, nseg, c, p, float(eps),
        FOLD=fold, BLOCK_R=mc["BLOCK_R"], BLOCK_C=mc["BLOCK_C"], num_warps=mc["num_warps"],
    )
    return (stat, mo, vo, *folded) if fold else (stat, mo, vo)


def dwconv_bn_train(x, dw_w, dw_b, bn_weight, bn_bias, eps):
    _check(x)
    if x.numel() == 0:
        raise Unsupported("empty input")
    # BN folded into the dwconv by the merge kernel (w_f, b_f fp32)
    _, mo, vo, w_f, b_f = _batch_stats(x, dw_w, dw_b, bn_weight, bn_bias, eps, fold=True)
    y = dwconv_bn(x, w_f, b_f)  # fp32 params: the kernel converts every load to fp32
    return y, mo, vo


def mlp_train(x, bn_weight, bn_bias, eps, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual):
    _check(x)
    if x.numel() == 0:
        raise Unsupported("empty input")
    stat, mo, vo = _batch_stats(x, None, None, bn_weight, bn_bias, eps)
    bn = (stat[0], stat[2], stat[3])
    y = _fused(x, None, None, bn, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual)
    return y, mo, vo


def conv_block_train(x, dw_w, dw_b, bn_weight, bn_bias, eps, pw1_w, pw1_b, pw2_w, pw2_b, ls):
    _check(x)
    if x.numel() == 0:
        raise Unsupported("empty input")
    stat, mo, vo = _batch_stats(x, dw_w, dw_b, bn_weight, bn_bias, eps)
    bn = (stat[0], stat[2], stat[3])
    y = _fused(x, dw_w, dw_b, bn, pw1_w, pw1_b, pw2_w, pw2_b, ls, x)
    return y, mo, vo


# --- backward ----------------------------------------------------------------------------------
def dwconv_bn_backward(grad, x, dw_w, dw_b, grad_mask, residual=None):
    """Gradients of dwconv_bn in one kernel (_dwconv_bn_bwd_kernel): dx in x's layout and
    dtype, plus `residual` (x's shape, e.g. the block's output gradient) before the one
    rounding; dw, db from per-tile partial sums."""
    _check(x)
    b, c, h, w = x.shape
    p = b * h * w
    need_x, need_w, need_b = (list(grad_mask) + [False] * 3)[:3]
    need_b = need_b and dw_b is not None
    empty = grad.new_empty(0)
    gx = gw = gb = empty
    lay = _layout(x)
    if need_x:
        gx = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=lay)
    if p == 0 or c == 0 or not (need_x or need_w or need_b):
        if need_w:
            gw = torch.zeros_like(dw_w)
        if need_b:
            gb = torch.zeros_like(dw_b)
        return [gx, gw, gb]
    # residual in x's layout, grad too unless channels_last beside an NCHW x (_grad_beside):
    # only those specializations are AOT-verified (no copy for autograd's usual gradients)
    x = _unit_stride(x)
    grad = _grad_beside(grad, x)
    res = x  # unused without a residual: x stands in (x's layout, as the specializations say)
    if residual is not None and need_x:
        if residual.shape != x.shape:
            raise ValueError(f"residual {tuple(residual.shape)} must have x's shape")
        res = _unit_stride(residual.contiguous(memory_format=lay))
    cfg = DW_CONFIGS["default"]
    nprog = triton.cdiv(p, cfg["BLOCK_P"])
    need_ws = need_w or need_b
    ws = (torch.empty((nprog, 10, c), device=x.device, dtype=torch.float32) if need_ws
          else _f32_standin(x))
    dx = gx if need_x else x  # (x: an unused stand-in in x's layout)
    dwf = dw_w.flip(2, 3).contiguous()
    _dwconv_bn_bwd_kernel[(nprog, triton.cdiv(c, cfg["BLOCK_C"]))](
        grad, x, dwf, res, dx, ws, p, c, h, w, *_s4(grad), *_s4(x), *_s4(dx), *_s4(res),
        NEED_DX=need_x, NEED_W=need_ws, HAS_RES=need_x and residual is not None,
        BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
    )
    if need_ws:
        from ._partials import sum_partials  # (_partials imports this module)

        flat, pairs = ws.view(nprog, 10 * c), []
        if need_w:
            gw = torch.empty(dw_w.shape, device=x.device, dtype=dw_w.dtype)
            pairs.append((flat[:, :9 * c], gw.view(-1)))
        if need_b:
            gb = torch.empty(dw_b.shape, device=x.device, dtype=dw_b.dtype)
            pairs.append((flat[:, 9 * c:], gb.view(-1)))
        sum_partials(pairs)
    return [gx, gw, gb]
