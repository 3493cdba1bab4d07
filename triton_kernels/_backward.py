"""Backward launchers of the eval-form conv ops (``<op>_backward`` contract of
swiftkern/ops/_define.py): ``(grad, <op args...>, grad_mask) -> list[Tensor]``, one tensor per
Tensor argument.

Split into several kernels (allowed for training paths): the dwconv forward recompute, its
backward kernel (triton_kernels._conv.dwconv_bn_backward: dx with the residual gradient added,
and the dw / db partials, in one pass), and the MLP backward (_mlp_grads): up to 256
channels (any weight dtype) the fused two-kernel backward of
triton_kernels._mlp_backward (tl.dot GEMMs, the hidden activation recomputed in registers),
wider the torch path: GEMMs in cuBLAS on fp32 intermediates and one
Triton kernel that recomputes GELU(a) and GELU'(a) from the pre-activation a. Accumulation in
fp32 for every input dtype; gradients are returned in the dtype of their argument.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _mlp_backward
from ._conv import _check, _layout, dwconv_bn, dwconv_bn_backward


@triton.jit
def _gelu_fwd_bwd_kernel(a_ptr, gh_ptr, h_ptr, ga_ptr, n, BLOCK: tl.constexpr):
    """h = GELU(a) (exact) and ga = gh * GELU'(a) over n contiguous fp32 elements."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = i < n
    a = tl.load(a_ptr + i, mask=m, other=0.0)
    gh = tl.load(gh_ptr + i, mask=m, other=0.0)
    cdf = 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476))
    pdf = tl.exp(-0.5 * a * a) * 0.3989422804014327
    tl.store(h_ptr + i, a * cdf, mask=m)
    tl.store(ga_ptr + i, gh * (cdf + a * pdf), mask=m)


GELU_BLOCK = 1024


def _gelu_fwd_bwd(a: torch.Tensor, gh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.empty_like(a)
    ga = torch.empty_like(a)
    n = a.numel()
    if n:
        _gelu_fwd_bwd_kernel[(triton.cdiv(n, GELU_BLOCK),)](a, gh, h, ga, n, BLOCK=GELU_BLOCK,
                                                            num_warps=4)
    return h, ga


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> fp32 [B*H*W, C] (a view for channels_last fp32 inputs)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).float()


def _empty(grad):
    return grad.new_empty(0)


def _mlp_fused(z_shape, w1, w2) -> bool:
    """Whether _mlp_grads takes the fused Triton kernels for a pw1 input of z_shape."""
    b, c, h, w = z_shape
    return (b * h * w > 0 and w1.shape[0] > 0
            and _mlp_backward.bwd_config_key(c, w2.shape[0], w1.dtype) is not None)


def _mlp_grads(grad, z, w1, b1, w2, b2, ls, need, dz_dtype=None, dz_rows_ok=False):
    """need = (z, w1, b1, w2, b2, ls). Returns grads in that order (None where not needed); the
    z gradient as fp32 rows [B*H*W, C], or with dz_dtype as [B, C, H, W] in that dtype (rounded
    once): in z's layout, or with dz_rows_ok channels_last as computed (pixel-major rows), for
    a consumer that reads it beside an NCHW tensor without a copy (_conv._grad_beside). The
    fused Triton backward (_mlp_backward) where its register-resident tiles fit, else the torch
    path below."""
    b, c, h, w = z.shape
    if _mlp_fused(z.shape, w1, w2):
        return _mlp_backward.mlp_grads_fused(grad, z, w1, b1, w2, b2, ls, need,
                                             dz_dtype=dz_dtype, dz_rows_ok=dz_rows_ok)
    out = _mlp_grads_torch(grad, z, w1, b1, w2, b2, ls, need)
    if dz_dtype is not None and out[0] is not None:
        out[0] = out[0].reshape(b, h, w, c).permute(0, 3, 1, 2).to(dz_dtype)
        if not dz_rows_ok:
            out[0] = out[0].contiguous(memory_format=_layout(z))
    return out


def _mlp_grads_torch(grad, z, w1, b1, w2, b2, ls, need):
    """_mlp_grads as ~15 torch ops on fp32 [pixels, hidden] intermediates (any width)."""
    z2 = _rows(z)
    g2 = _rows(grad)
    w1f, w2f = w1.float(), w2.float()
    a = z2 @ w1f.t()
    if b1 is not None:
        a += b1.float()
    gu = g2 if ls is None else g2 * ls.float()
    gh = gu @ w2f
    h, ga = _gelu_fwd_bwd(a, gh)
    out = [None] * 6
    if need[5] and ls is not None:
        u = h @ w2f.t()
        if b2 is not None:
            u += b2.float()
        out[5] = (g2 * u).sum(0).to(ls.dtype)
    if need[4] and b2 is not None:
        out[4] = gu.sum(0).to(b2.dtype)
    if need[3]:
        out[3] = (gu.t() @ h).to(w2.dtype)
    if need[2] and b1 is not None:
        out[2] = ga.sum(0).to(b1.dtype)
    if need[1]:
        out[1] = (ga.t() @ z2).to(w1.dtype)
    if need[0]:
        out[0] = ga @ w1f  # rows layout, fp32
    return out


def mlp_backward(grad, x, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual, grad_mask):
    _check(x)
    mask = list(grad_mask)
    g = _mlp_grads(grad, x, fc1_w, fc1_b, fc2_w, fc2_b, ls, mask[:6], dz_dtype=x.dtype)
    e = _empty(grad)
    gx = g[0] if g[0] is not None else e
    res = [gx] + [t if t is not None else e for t in g[1:]]
    if mask[6] and residual is not None:
        res.append(grad.to(residual.dtype).contiguous(memory_format=_layout(residual)))
    else:
        res.append(e)
    return res


def conv_block_backward(grad, x, dw_w, dw_b, pw1_w, pw1_b, pw2_w, pw2_b, ls, grad_mask):
    _check(x)
    mask = list(grad_mask)
    need_x, need_dww, need_dwb = mask[0], mask[1], mask[2] and dw_b is not None
    need_z = need_x or need_dww or need_dwb
    z = dwconv_bn(x, dw_w, dw_b)
    # dz in x's dtype, as eager rounds it; channels_last rows even beside an NCHW x (the
    # dwconv backward reads it as is)
    g = _mlp_grads(grad, z, pw1_w, pw1_b, pw2_w, pw2_b, ls, [need_z, *mask[3:8]],
                   dz_dtype=x.dtype, dz_rows_ok=True)
    e = _empty(grad)
    gx = gdw = gdb = e
    if need_z:
        gz = g[0]
        # dx = dwconv^T(gz) + grad (the residual), rounded once to x's dtype in one kernel
        gxz, gdw, gdb = dwconv_bn_backward(gz, x, dw_w, dw_b, [need_x, need_dww, need_dwb],
                                           residual=grad)
        if need_x:
            gx = gxz
    return [gx, gdw, gdb] + [t if t is not None else e for t in g[1:]]
