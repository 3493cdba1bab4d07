"""Argument factories for every op: real SwiftFormer shapes plus odd ones (SPEC.md section 3),
parameters randomized (layer scales ~U(0.5,1.5), folded BN ~ random affine)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# (B, C, H, W, hidden) for the conv-style ops.
CONV_SHAPES = {
    "xs_stage1": (1, 48, 56, 56, 192),
    "xs_stage4": (1, 220, 7, 7, 880),
    "odd_c33": (2, 33, 5, 7, 132),
    "h1": (1, 8, 1, 9, 32),
    "w1": (3, 20, 4, 1, 20),
    "n1": (1, 16, 1, 1, 64),
}
# (B, N, D) for the attention ops.
ATTN_SHAPES = {
    "xs_stage1": (1, 3136, 48),
    "xs_stage4": (1, 49, 220),
    "odd_d33": (2, 37, 33),
    "n1": (1, 1, 16),
    "b3": (3, 5, 8),
}
SMALL_CONV = ("odd_c33", "h1", "w1", "n1")
SMALL_ATTN = ("odd_d33", "n1", "b3")
POOLS = ("sum", "l2", "softmax")


@dataclass
class Case:
    op: str
    args: list
    layout: str


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider tensor
        b, c, h, w = x.shape
        wide = torch.zeros(b, c, h, 2 * w, dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.contiguous()


def conv_args(op: str, shape, dtype=torch.float32, layout="nchw", seed=0) -> Case:
    g = torch.Generator().manual_seed(seed)
    b, c, h, w, hid = shape

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift).to(dtype)

    def u(*s, lo=0.5, hi=1.5):
        return (torch.rand(*s, generator=g) * (hi - lo) + lo).to(dtype)

    x = _layout(r(b, c, h, w), layout)
    dw_w, dw_b = r(c, 1, 3, 3, scale=0.3), r(c, scale=0.2)
    bn_w, bn_b = r(c, scale=0.2, shift=1.0), r(c, scale=0.2)
    c_in = c
    w1, b1 = r(hid, c_in, scale=c_in**-0.5), r(hid, scale=0.1)
    w2, b2 = r(c, hid, scale=hid**-0.5), r(c, scale=0.1)
    ls = u(c)
    res = _layout(r(b, c, h, w), layout)
    eps = 1e-5
    args = {
        "dwconv_bn": [x, dw_w, dw_b],
        "dwconv_bn_train": [x, dw_w, dw_b, bn_w, bn_b, eps],
        "conv_block": [x, dw_w, dw_b, w1, b1, w2, b2, ls],
        "conv_block_train": [x, dw_w, dw_b, bn_w, bn_b, eps, w1, b1, w2, b2, ls],
        "mlp": [x, w1, b1, w2, b2, ls, res],
        "mlp_train": [x, bn_w, bn_b, eps, w1, b1, w2, b2, ls, res],
    }[op]
    return Case(op, args, layout)


def attn_args(
    op: str, shape, pool: str, dtype=torch.float32, layout="contiguous", seed=0, final: bool = True
) -> Case:
    g = torch.Generator().manual_seed(seed)
    b, n, d = shape

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype)

    x = r(b, n, d)
    if layout == "strided":  # tokens viewed from an NCHW tensor: [B, C, N] -> [B, N, C]
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    s = d**-0.5
    if op == "additive_attention_core":
        q, k = r(b, n, d), r(b, n, d)
        if layout == "strided":
            q = q.transpose(1, 2).contiguous().transpose(1, 2)
        return Case(op, [q, k, r(d), s, pool], layout)
    w_final = r(d, d, scale=s) if final else None
    b_final = r(d, scale=0.1) if final else None
    return Case(
        op,
        [
            x,
            r(2 * d, d, scale=s),
            r(2 * d, scale=0.1),
            r(d),
            s,
            r(d, d, scale=s),
            r(d, scale=0.1),
            w_final,
            b_final,
            pool,
        ],
        layout,
    )


def cast(args, dtype):
    return [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args]
