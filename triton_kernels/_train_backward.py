"""Backward of the train-form conv ops (BatchNorm with batch statistics): ``dwconv_bn_train``,
``mlp_train`` and ``conv_block_train`` (contract of swiftkern/ops/_define.py:
``(grad, <op args...>, grad_mask) -> list[Tensor]``; only the first output y is differentiable,
the batch statistics are not).

BN backward through the batch statistics, per channel over the M = B*H*W pixels, with
z the BN input (dwconv(x) or x), d = z - mean, inv = rsqrt(var + eps), g the gradient of BN(z):
  d bn_bias = sum g,   d bn_weight = inv * sum g d,   dz = A g + B d + C0  with
  A = gamma inv,   B = -gamma inv^3 (sum g d) / M,   C0 = -gamma inv (sum g) / M
Kernels (this module; pixel tiles as in _conv, NCHW and channels_last through strides):
  _bn_bwd_reduce_kernel: per-tile partial (sum g, sum g d) into a workspace, summed on the host
    (deterministic, no atomics); recomputes z = dwconv(x) on the fly (HAS_DW).
  _bn_affine_kernel: out = A g + B d + C0 per channel in fp32 math (the dz above, stored in x's
    dtype: the dwconv backward's input, or mlp_train's dx), or without g the BN forward
    (B = scale, C0 = shift) that the MLP backward reads.
Reused: the batch-statistics kernel (_conv._batch_stats: per-tile Chan merge), the dwconv
backward kernel (_conv.dwconv_bn_backward: dx in x's dtype, dw / db partials), and the MLP
backward (_backward._mlp_grads: the fused kernels of _mlp_backward up to 256 channels, 128 in
fp32, GEMMs in torch wider). The forward's batch statistics are recomputed (the backward op
receives the forward's inputs only). Math in fp32 for every input dtype; gradients are returned
in the dtype of their argument, x's gradient in x's memory format.
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
    _unit_stride,
    _z_tile,
    dwconv_bn_backward,
)


@triton.jit
def _bn_bwd_reduce_kernel(
    g_ptr, x_ptr, dww_ptr, dwb_ptr, mean_ptr, ws_ptr,
    P, C, H, W,
    sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw,
    HAS_DW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """ws[pid0, 0, C] = sum_p g, ws[pid0, 1, C] = sum_p g (z - mean) over one pixel tile."""
    pid = tl.program_id(0)
    bb, hh, ww, pmask = _pixel_coords(pid, P, H, W, BLOCK_P)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    z = _z_tile(x_ptr, dww_ptr, dwb_ptr, bb, hh, ww, pmask, cc, cmask, H, W,
                sxb, sxc, sxh, sxw, HAS_DW)
    mu = tl.load(mean_ptr + cc, mask=cmask, other=0.0)
    g = tl.load(g_ptr + _off(bb, hh, ww, sgb, sgh, sgw)[:, None] + cc.to(tl.int64)[None, :] * sgc,
                mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    base = ws_ptr + pid.to(tl.int64) * 2 * C
    tl.store(base + cc, tl.sum(g, axis=0), mask=cmask)
    # masked pixels load g = 0, so their z (the bias there) drops out of the product
    tl.store(base + C + cc, tl.sum(g * (z - mu[None, :]), axis=0), mask=cmask)


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


def _bn_forward(x, dw_w, dw_b, mean, var, bn_w, bn_b, eps, w1, w2):
    """BN(z) with batch statistics, x's layout: the input of the MLP's fc1 / pw1 (w1, w2).
    In x's dtype where the fused MLP backward reads it (its dots take z in that dtype: no bit
    changes, half the bytes), else fp32 (the torch path's fp32 GEMMs)."""
    inv = torch.rsqrt(var + eps)
    scale = inv if bn_w is None else bn_w.float() * inv
    shift = torch.zeros_like(scale) if bn_b is None else bn_b.float()
    coef = torch.stack([torch.zeros_like(scale), scale, shift]).contiguous()
    out = _f32_like(x) if not _mlp_fused(x.shape, w1, w2) else torch.empty(
        x.shape, device=x.device, dtype=x.dtype, memory_format=_layout(x))
    return _bn_affine(None, x, dw_w, dw_b, mean, coef, out)


def _bn_backward(g, x, dw_w, dw_b, mean, var, bn_w, eps, need_dz, config="default"):
    """(dz in x's layout and dtype, or None; d bn_weight fp32, d bn_bias fp32) from
    g = dL/dBN(z) (in x's layout, or channels_last beside an NCHW x: _grad_beside). dz is
    rounded once, by the affine kernel's store."""
    g = _grad_beside(g, x)
    cfg = DW_CONFIGS[config]
    b, c, h, w = x.shape
    m = b * h * w
    nprog, cprog = _grid(x, cfg)
    ws = torch.empty((nprog, 2, c), device=x.device, dtype=torch.float32)
    dww, dwb = _dw_args(dw_w, dw_b, mean, c)
    _bn_bwd_reduce_kernel[(nprog, cprog)](
        g, x, dww, dwb, mean, ws, m, c, h, w, *_s4(g), *_s4(x),
        HAS_DW=dw_w is not None,
        BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
    )
    sg, sgd = ws.sum(0).unbind(0)
    inv = torch.rsqrt(var + eps)
    gamma = torch.ones_like(inv) if bn_w is None else bn_w.float()
    dz = None
    if need_dz:
        a = gamma * inv
        coef = torch.stack([a, -a * inv * inv * sgd / m, -a * sg / m]).contiguous()
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=_layout(x))
        dz = _bn_affine(g, x, dw_w, dw_b, mean, coef, out, config)
    return dz, sgd * inv, sg


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
    mean, var = _batch_stats(x, dw_w, dw_b)
    need_dz = need_x or need_w or need_b
    dz, dgamma, dbeta = _bn_backward(grad, x, dw_w, dw_b, mean, var, bn_weight, eps, need_dz)
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
    mean, var = _batch_stats(x, None, None)
    z = _bn_forward(x, None, None, mean, var, bn_weight, bn_bias, eps, fc1_w, fc2_w)
    # dz in x's dtype (as eager rounds it): the BN backward's input, which reads channels_last
    # rows beside an NCHW x as they are
    gm = _mlp_grads(grad, z, fc1_w, fc1_b, fc2_w, fc2_b, ls, [need_z, *mask[3:8]],
                    dz_dtype=x.dtype, dz_rows_ok=True)
    e = _empty(grad)
    gx = dgamma = dbeta = None
    if need_z:
        gz = gm[0]
        # dx = the affine kernel's output (x's dtype, rounded once)
        gx, dgamma, dbeta = _bn_backward(gz, x, None, None, mean, var, bn_weight, eps, need_x)
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
    mean, var = _batch_stats(x, dw_w, dw_b)
    z = _bn_forward(x, dw_w, dw_b, mean, var, bn_weight, bn_bias, eps, pw1_w, pw2_w)
    # dz in x's dtype (as eager rounds it): the BN backward's input, which reads channels_last
    # rows beside an NCHW x as they are
    gm = _mlp_grads(grad, z, pw1_w, pw1_b, pw2_w, pw2_b, ls, [need_z, *mask[5:10]],
                    dz_dtype=x.dtype, dz_rows_ok=True)
    e = _empty(grad)
    gx = gdw = gdb = e
    dgamma = dbeta = None
    if need_z:
        gz = gm[0]
        dz, dgamma, dbeta = _bn_backward(gz, x, dw_w, dw_b, mean, var, bn_weight, eps, need_dz)
        if need_dz:
            # dx = dwconv^T(dz) + grad (the residual), rounded once to x's dtype in one kernel
            gxz, gdw, gdb = dwconv_bn_backward(dz, x, dw_w, dw_b, [need_x, need_dww, need_dwb],
                                               residual=grad)
            if need_x:
                gx = gxz
    res = [gx, gdw, gdb, _param_grad(dgamma, need_bnw, bn_weight),
           _param_grad(dbeta, need_bnb, bn_bias), *gm[1:]]
    return [t if t is not None else e for t in res]
