"""Backward of the train-form conv ops (BatchNorm with batch statistics): ``dwconv_bn_train``,
``mlp_train`` and ``conv_block_train`` (contract of swiftkern/ops/_define.py:
``(grad, <op args...>, grad_mask) -> list[Tensor]``; only the first output y is differentiable,
the batch statistics are not).

BN backward through the batch statistics, per channel over the M = B*H*W pixels, with
z the BN input (dwconv(x) or x), d = z - mean, inv = rsqrt(var + eps), g the gradient of BN(z):
  d bn_bias = sum g,   d bn_weight = inv * sum g d,   dz = A g + B d + C0  with
  A = gamma inv,   B = -gamma inv^3 (sum g d) / M,   C0 = -gamma inv (sum g) / M
Kernels (this module; pixel tiles as in _conv, NCHW and channels_last through strides):
  _bn_bwd_reduce_kernel: per-segment partial (sum g, sum g d) into a workspace, one row per
    segment of pixel tiles (_conv.stats_segments; deterministic, no atomics); recomputes
    z = dwconv(x) on the fly (HAS_DW).
  _bn_bwd_coef_kernel: sums the segment rows and forms the per-channel A, B, C0 and the BN
    parameter gradients in one launch.
  _bn_affine_kernel: out = A g + B d + C0 per channel in fp32 math (the dz above, stored in x's
    dtype: the dwconv backward's input, or mlp_train's dx), or without g the BN forward
    (B = scale, C0 = shift) that the MLP backward reads.
Reused: the batch statistics (_conv._batch_stats: a statistics kernel with a per-segment Chan
merge, then a merge kernel), the dwconv backward kernel (_conv.dwconv_bn_backward: dx in x's
dtype, dw / db partials), and the MLP backward (_backward._mlp_grads: the fused kernels of
_mlp_backward up to 256 channels, GEMMs in torch wider). The forward's batch
statistics are recomputed (the backward op receives the forward's inputs only). Math in fp32
for every input dtype; gradients are returned in the dtype of their argument, x's gradient in
x's memory format.
Intermediates between the kernels are rounded to x's dtype where eager autograd rounds them
(the gradients of the BN output and of the BN input: fp16 / bf16 tensors in an eager fp16 /
bf16 model), and the BN output z where the fused MLP backward reads it, whose tensor-core dots
take z in x's dtype anyway. The torch path (wider MLPs) keeps z in fp32 for its fp32 GEMMs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backward import _empty, _mlp_fused, _mlp_grads
from ._conv import (
    DW_CONFIGS,
    MERGE_CONFIG,
    Unsupported,
    _batch_stats,
    _cast_out,
    _check,
    _dw_args,
    _grad_beside,
    _layout,
    _off,
    _pixel_coords,
    _s4,
    _segment,
    _unit_stride,
    _vec,
    _z_tile,
    dwconv_bn_backward,
    stats_segments,
)


@triton.jit
def _bn_bwd_reduce_kernel(
    g_ptr, x_ptr, dww_ptr, dwb_ptr, mean_ptr, ws_ptr,
    P, C, H, W, TILES,
    sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw,
    HAS_DW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """ws[seg, 0, C] = sum_p g, ws[seg, 1, C] = sum_p g (z - mean) over a segment of TILES pixel
    tiles (_conv.stats_segments), visited last to first from the last segment on, as the
    statistics kernel does: the affine kernel launched after it reads g and x from their start."""
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    mu = tl.load(mean_ptr + cc, mask=cmask, other=0.0)
    sg = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sgd = tl.zeros((BLOCK_C,), dtype=tl.float32)
    seg, t_end, count = _segment(TILES, P, BLOCK_P)
    for i in range(0, count):
        t = t_end - 1 - i
        bb, hh, ww, pmask = _pixel_coords(t, P, H, W, BLOCK_P)
        z = _z_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                    sxb, sxc, sxh, sxw, HAS_DW)
        g = tl.load(g_ptr + _off(bb, hh, ww, sgb, sgh, sgw)[:, None]
                    + cc.to(tl.int64)[None, :] * sgc,
                    mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        sg += tl.sum(g, axis=0)
        # masked pixels load g = 0, so their z (the bias there) drops out of the product
        sgd += tl.sum(g * (z - mu[None, :]), axis=0)
    base = ws_ptr + seg.to(tl.int64) * 2 * C
    tl.store(base + cc, sg, mask=cmask)
    tl.store(base + C + cc, sgd, mask=cmask)


@triton.jit
def _bn_bwd_coef_kernel(
    ws_ptr, stat_ptr, bnw_ptr, coef_ptr, dgw_ptr, dgb_ptr,
    NSEG, C, M, eps,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The reduce kernel's segment rows summed, then per channel (stat rows 0, 1: mean, var):
    inv = 1 / sqrt(var + eps), A = gamma inv, coef[3, C] = [A; -A inv^2 (sum g d) / M;
    -A (sum g) / M] (the affine kernel's dz = A g + B d + C0), dgw = inv sum g d (d bn_weight)
    and dgb = sum g (d bn_bias), fp32 [C]. One launch for what took 14 torch ops."""
    cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    acc_g = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    acc_gd = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, NSEG, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < NSEG)[:, None] & cmask[None, :]
        base = ws_ptr + r.to(tl.int64)[:, None] * 2 * C + cc[None, :]
        acc_g += tl.load(base, mask=m, other=0.0)
        acc_gd += tl.load(base + C, mask=m, other=0.0)
    sg = tl.sum(acc_g, axis=0)
    sgd = tl.sum(acc_gd, axis=0)
    var = tl.load(stat_ptr + C + cc, mask=cmask, other=1.0)
    inv = 1.0 / tl.where(cmask, tl.sqrt_rn(var + eps), 1.0)
    a = tl.load(bnw_ptr + cc, mask=cmask, other=0.0) * inv
    mf = M.to(tl.float32)
    tl.store(coef_ptr + cc, a, mask=cmask)
    tl.store(coef_ptr + C + cc, -a * inv * inv * sgd / mf, mask=cmask)
    tl.store(coef_ptr + 2 * C + cc, -a * sg / mf, mask=cmask)
    tl.store(dgw_ptr + cc, sgd * inv, mask=cmask)
    tl.store(dgb_ptr + cc, sg, mask=cmask)


@triton.jit
def _bn_affine_kernel(
    g_ptr, x_ptr, dww_ptr, dwb_ptr, mean_ptr, coef_ptr, out_ptr,
    P, C, H, W,
    sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw, sob, soc, soh, sow,
    HAS_G: tl.constexpr, HAS_DW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out = A g + B (z - mean) + C0 with per-channel coef rows [A; B; C0] (fp32 [3, C]); without
    g (HAS_G False) A is unused: the BN forward (z - mean) * scale + shift, mean subtracted first
    (folding it into the shift cancels when |mean| >> std)."""
    bb, hh, ww, pmask = _pixel_coords(tl.program_id(0), P, H, W, BLOCK_P)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    c64 = cc.to(tl.int64)
    m2 = pmask[:, None] & cmask[None, :]
    z = _z_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                sxb, sxc, sxh, sxw, HAS_DW)
    mu = tl.load(mean_ptr + cc, mask=cmask, other=0.0)
    cb = tl.load(coef_ptr + C + cc, mask=cmask, other=0.0)
    c0 = tl.load(coef_ptr + 2 * C + cc, mask=cmask, other=0.0)
    out = (z - mu[None, :]) * cb[None, :] + c0[None, :]
    if HAS_G:
        ca = tl.load(coef_ptr + cc, mask=cmask, other=0.0)
        g = tl.load(g_ptr + _off(bb, hh, ww, sgb, sgh, sgw)[:, None] + c64[None, :] * sgc,
                    mask=m2, other=0.0).to(tl.float32)
        out += g * ca[None, :]
    tl.store(out_ptr + _off(bb, hh, ww, sob, soh, sow)[:, None] + c64[None, :] * soc,
             _cast_out(out, out_ptr), mask=m2)


def _grid(x: torch.Tensor, cfg: dict) -> tuple[int, int]:
    b, c, h, w = x.shape
    return triton.cdiv(b * h * w, cfg["BLOCK_P"]), triton.cdiv(c, cfg["BLOCK_C"])


def _f32_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, device=x.device, dtype=torch.float32, memory_format=_layout(x))


def _bn_affine(g, x, dw_w, dw_b, mean, coef, out, config="default"):
    cfg = DW_CONFIGS[config]
    b, c, h, w = x.shape
    dww, dwb = _dw_args(dw_w, dw_b, mean, c)
    gg = out if g is None else g
    _bn_affine_kernel[_grid(x, cfg)](
        gg, x, dww, dwb, mean, coef, out, b * h * w, c, h, w, *_s4(gg), *_s4(x), *_s4(out),
        HAS_G=g is not None, HAS_DW=dw_w is not None,
        BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
    )
    return out


def _bn_forward(x, dw_w, dw_b, stat, w1, w2):
    """BN(z) with batch statistics, x's layout: the input of the MLP's fc1 / pw1 (w1, w2), from
    _conv._batch_stats' stat rows (mean, var, scale, shift): the affine kernel without g reads
    its coefficient rows 1 and 2 (scale, shift) and never row 0, so stat[1:] serves as coef.
    In x's dtype where the fused MLP backward reads it (its dots take z in that dtype: no bit
    changes, half the bytes), else fp32 (the torch path's fp32 GEMMs)."""
    out = _f32_like(x) if not _mlp_fused(x.shape, w1, w2) else torch.empty(
        x.shape, device=x.device, dtype=x.dtype, memory_format=_layout(x))
    return _bn_affine(None, x, dw_w, dw_b, stat[0], stat[1:], out)


def _bn_backward(g, x, dw_w, dw_b, stat, bn_w, eps, need_dz, config="default"):
    """(dz in x's layout and dtype, or None; d bn_weight fp32, d bn_bias fp32) from
    g = dL/dBN(z) (in x's layout, or channels_last beside an NCHW x: _grad_beside) and the
    batch statistics' stat rows (mean, var): the reduce kernel, the coefficient kernel, then
    (need_dz) the affine kernel, which rounds dz once."""
    g = _grad_beside(g, x)
    cfg = DW_CONFIGS[config]
    b, c, h, w = x.shape
    m = b * h * w
    nseg, tiles = stats_segments(m, c, config)
    ws = torch.empty((nseg, 2, c), device=x.device, dtype=torch.float32)
    dww, dwb = _dw_args(dw_w, dw_b, stat, c)
    _bn_bwd_reduce_kernel[(nseg, triton.cdiv(c, cfg["BLOCK_C"]))](
        g, x, dww, dwb, stat, ws, m, c, h, w, tiles, *_s4(g), *_s4(x),
        HAS_DW=dw_w is not None,
        BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
    )
    coef = torch.empty((3, c), device=x.device, dtype=torch.float32)
    dgw = torch.empty((c,), device=x.device, dtype=torch.float32)
    dgb = torch.empty((c,), device=x.device, dtype=torch.float32)
    mc = MERGE_CONFIG
    gamma = _vec(None if bn_w is None else bn_w.float(), c, stat, 1.0)
    _bn_bwd_coef_kernel[(triton.cdiv(c, mc["BLOCK_C"]),)](
        ws, stat, gamma, coef, dgw, dgb, nseg, c, m, float(eps),
        BLOCK_R=mc["BLOCK_R"], BLOCK_C=mc["BLOCK_C"], num_warps=mc["num_warps"],
    )
    dz = None
    if need_dz:
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=_layout(x))
        dz = _bn_affine(g, x, dw_w, dw_b, stat[0], coef, out, config)
    return dz, dgw, dgb


def _prepare(x):
    _check(x)
    if x.numel() == 0:
        raise Unsupported("empty input")
    return _unit_stride(x)


def _param_grad(t, need, like):
    return t.to(like.dtype) if (need and like is not None and t is not None) else None


def dwconv_bn_train_backward(grad, x, dw_w, dw_b, bn_weight, bn_bias, eps, grad_mask):
    x = _prepare(x)
    need_x, need_w, need_b, need_bnw, need_bnb = (list(grad_mask) + [False] * 5)[:5]
    need_b = need_b and dw_b is not None
    stat = _batch_stats(x, dw_w, dw_b, bn_weight, bn_bias, eps)[0]
    need_dz = need_x or need_w or need_b
    dz, dgamma, dbeta = _bn_backward(grad, x, dw_w, dw_b, stat, bn_weight, eps, need_dz)
    e = _empty(grad)
    gx = gw = gb = e
    if need_dz:
        gx, gw, gb = dwconv_bn_backward(dz, x, dw_w, dw_b, [need_x, need_w, need_b])
    out = [gx, gw, gb, _param_grad(dgamma, need_bnw, bn_weight),
           _param_grad(dbeta, need_bnb, bn_bias)]
    return [t if t is not None else e for t in out]


def mlp_train_backward(grad, x, bn_weight, bn_bias, eps, fc1_w, fc1_b, fc2_w, fc2_b, ls,
                       residual, grad_mask):
    x = _prepare(x)
    mask = (list(grad_mask) + [False] * 9)[:9]
    need_x, need_bnw, need_bnb = mask[0], mask[1], mask[2]
    need_z = need_x or need_bnw or need_bnb
    stat = _batch_stats(x, None, None, bn_weight, bn_bias, eps)[0]
    z = _bn_forward(x, None, None, stat, fc1_w, fc2_w)
    # dz in x's dtype (as eager rounds it): the BN backward's input, which reads channels_last
    # rows beside an NCHW x as they are
    gm = _mlp_grads(grad, z, fc1_w, fc1_b, fc2_w, fc2_b, ls, [need_z, *mask[3:8]],
                    dz_dtype=x.dtype, dz_rows_ok=True)
    e = _empty(grad)
    gx = dgamma = dbeta = None
    if need_z:
        gz = gm[0]
        # dx = the affine kernel's output (x's dtype, rounded once)
        gx, dgamma, dbeta = _bn_backward(gz, x, None, None, stat, bn_weight, eps, need_x)
    res = [gx, _param_grad(dgamma, need_bnw, bn_weight), _param_grad(dbeta, need_bnb, bn_bias),
           *gm[1:]]
    res = [t if t is not None else e for t in res]
    if mask[8] and residual is not None:
        res.append(grad.to(residual.dtype).contiguous(memory_format=_layout(residual)))
    else:
        res.append(e)
    return res


def conv_block_train_backward(grad, x, dw_w, dw_b, bn_weight, bn_bias, eps, pw1_w, pw1_b,
                              pw2_w, pw2_b, ls, grad_mask):
    x = _prepare(x)
    mask = (list(grad_mask) + [False] * 10)[:10]
    need_x, need_dww, need_dwb, need_bnw, need_bnb = mask[:5]
    need_dwb = need_dwb and dw_b is not None
    need_dz = need_x or need_dww or need_dwb
    need_z = need_dz or need_bnw or need_bnb
    stat = _batch_stats(x, dw_w, dw_b, bn_weight, bn_bias, eps)[0]
    z = _bn_forward(x, dw_w, dw_b, stat, pw1_w, pw2_w)
    # dz in x's dtype (as eager rounds it): the BN backward's input, which reads channels_last
    # rows beside an NCHW x as they are
    gm = _mlp_grads(grad, z, pw1_w, pw1_b, pw2_w, pw2_b, ls, [need_z, *mask[5:10]],
                    dz_dtype=x.dtype, dz_rows_ok=True)
    e = _empty(grad)
    gx = gdw = gdb = e
    dgamma = dbeta = None
    if need_z:
        gz = gm[0]
        dz, dgamma, dbeta = _bn_backward(gz, x, dw_w, dw_b, stat, bn_weight, eps, need_dz)
        if need_dz:
            # dx = dwconv^T(dz) + grad (the residual), rounded once to x's dtype in one kernel
            gxz, gdw, gdb = dwconv_bn_backward(dz, x, dw_w, dw_b, [need_x, need_dww, need_dwb],
                                               residual=grad)
            if need_x:
                gx = gxz
    res = [gx, gdw, gdb, _param_grad(dgamma, need_bnw, bn_weight),
           _param_grad(dbeta, need_bnb, bn_bias), *gm[1:]]
    return [t if t is not None else e for t in res]
