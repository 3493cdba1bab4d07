"""The index arithmetic of csrc/cuda/conv.cu and conv_grad.cu, thread by thread, in Python.

No GPU here, so these loops replay what each CUDA thread does (grid, block, thread indices; the
incremental (b, h, w) / (b, j) counters that replace 64-bit divisions; split chunks; the channel
index (i / inner) % C of the epilogues) on small odd shapes, and compare with PyTorch. A wrong
decode or a skipped / doubled element fails here. Mirrors, not the kernels themselves: keep them in
step with the .cu files.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

WARPS = 8


def chunk_of(n, splits, s):
    chunk = -(-n // splits)
    return chunk * s, min(n, chunk * s + chunk)


def channel_sums_nchw(z_flat, mean, B, C, HW, splits, block):
    partial = torch.zeros(splits, C, dtype=torch.float64)
    for c, s, tid in itertools.product(range(C), range(splits), range(block)):
        e0, e1 = chunk_of(B * HW, splits, s)
        e = e0 + tid
        b, j = e // HW, e - (e // HW) * HW
        while e < e1:
            v = z_flat[(b * C + c) * HW + j]
            partial[s, c] += (v - mean[c]) ** 2 if mean is not None else v
            j += block
            while j >= HW:
                j -= HW
                b += 1
            e += block
    return partial


def channel_sums_nhwc(z_flat, mean, rows, C, splits):
    partial = torch.zeros(splits, C, dtype=torch.float64)
    for bx, s, warp, lane in itertools.product(
        range(-(-C // 32)), range(splits), range(WARPS), range(32)
    ):
        c = bx * 32 + lane
        if c >= C:
            continue
        r0, r1 = chunk_of(rows, splits, s)
        for r in range(r0 + warp, r1, WARPS):
            v = z_flat[r * C + c]
            partial[s, c] += (v - mean[c]) ** 2 if mean is not None else v
    return partial


def dw_taps(acc, g, x_flat, plane, h, w, H, W, sh, sw):
    for i in range(3):
        hh = h + i - 1
        for j in range(3):
            ww = w + j - 1
            if 0 <= hh < H and 0 <= ww < W:
                acc[i * 3 + j] += g * x_flat[plane + hh * sh + ww * sw]
    acc[9] += g


def dw_grad_nchw(g_flat, x_flat, B, C, H, W, splits, block):
    part = torch.zeros(splits, C, 10, dtype=torch.float64)
    HW = H * W
    for c, s, tid in itertools.product(range(C), range(splits), range(block)):
        e0, e1 = chunk_of(B * HW, splits, s)
        for e in range(e0 + tid, e1, block):
            b = e // HW
            j = e - b * HW
            plane = (b * C + c) * HW
            dw_taps(part[s, c], g_flat[plane + j], x_flat, plane, j // W, j % W, H, W, W, 1)
    return part


def dw_grad_nhwc(g_flat, x_flat, B, C, H, W, splits):
    part = torch.zeros(splits, C, 10, dtype=torch.float64)
    for bx, s, warp, lane in itertools.product(
        range(-(-C // 32)), range(splits), range(WARPS), range(32)
    ):
        c = bx * 32 + lane
        if c >= C:
            continue
        r0, r1 = chunk_of(B * H * W, splits, s)
        r = r0 + warp
        w, h, b = r % W, (r // W) % H, r // (W * H)
        while r < r1:
            dw_taps(part[s, c], g_flat[r * C + c], x_flat, b * H * W * C + c, h, w, H, W, W * C, C)
            w += WARPS
            while w >= W:
                w -= W
                h += 1
                if h == H:
                    h = 0
                    b += 1
            r += WARPS
    return part


def dwconv_decode(i, B, C, H, W, channels_last):
    """(c, h, w, plane, sh, sw) of output element i, as dwconv3x3_kernel decodes it."""
    if channels_last:
        c = i % C
        t = i // C
        w = t % W
        h = (t // W) % H
        b = t // (W * H)
        return c, h, w, b * H * W * C + c, W * C, C
    w = i % W
    t = i // W
    h = t % H
    c = (t // H) % C
    return c, h, w, (t // H) * H * W, W, 1


SHAPES = [(2, 3, 3, 5), (1, 33, 1, 4), (3, 2, 4, 1), (1, 1, 1, 1)]


def _flat(t, channels_last):
    return (t.permute(0, 2, 3, 1) if channels_last else t).reshape(-1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_dwconv_forward_decode(shape, channels_last):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    wt = torch.randn(C, 1, 3, 3, dtype=torch.float64, generator=g)
    xf, wf = _flat(x, channels_last), wt.reshape(C, 9)
    out = torch.zeros(B * C * H * W, dtype=torch.float64)
    for i in range(out.numel()):
        c, h, w, plane, sh, sw = dwconv_decode(i, B, C, H, W, channels_last)
        acc = 0.0
        for dh in (-1, 0, 1):
            for dw in (-1, 0, 1):
                hh, ww = h + dh, w + dw
                if 0 <= hh < H and 0 <= ww < W:
                    acc += wf[c, (dh + 1) * 3 + dw + 1] * xf[plane + hh * sh + ww * sw]
        out[i] = acc
    ref = _flat(F.conv2d(x, wt, padding=1, groups=C), channels_last)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("splits,block", [(1, 256), (3, 7), (4, 5)])
def test_channel_sums(shape, splits, block):
    B, C, H, W = shape
    z = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 3.0
    mean = z.mean((0, 2, 3))
    for channels_last in (False, True):
        zf = _flat(z, channels_last)
        for m in (None, mean):
            if channels_last:
                p = channel_sums_nhwc(zf, m, B * H * W, C, splits)
            else:
                p = channel_sums_nchw(zf, m, B, C, H * W, splits, block)
            want = ((z - mean.view(1, -1, 1, 1)) ** 2 if m is not None else z).sum((0, 2, 3))
            torch.testing.assert_close(p.sum(0), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("splits", [1, 3])
def test_dw_weight_grad(shape, splits):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    wt = torch.randn(C, 1, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, wt, bias, padding=1, groups=C)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=g)
    dw, db = torch.autograd.grad(y, [wt, bias], gy)
    for channels_last in (False, True):
        gf, xf = _flat(gy, channels_last), _flat(x, channels_last)
        if channels_last:
            p = dw_grad_nhwc(gf, xf, B, C, H, W, splits)
        else:
            p = dw_grad_nchw(gf, xf, B, C, H, W, splits, block=7)
        tot = p.sum(0)
        torch.testing.assert_close(tot[:, :9], dw.reshape(C, 9))
        torch.testing.assert_close(tot[:, 9], db)


@pytest.mark.parametrize("channels_last", [False, True])
def test_epilogue_channel_index(channels_last):
    """(i / inner) % C with inner = H*W (NCHW) or 1 (NHWC) names the channel of element i."""
    B, C, H, W = 2, 5, 3, 2
    ch = torch.arange(C).view(1, C, 1, 1).expand(B, C, H, W)
    flat = _flat(ch, channels_last)
    inner = 1 if channels_last else H * W
    assert all(int(flat[i]) == (i // inner) % C for i in range(flat.numel()))
