"""Backward of the train-form conv ops in Triton (BatchNorm through batch statistics: reduce +
affine kernels, reusing the dwconv backward and the MLP backward) against the reference backward
(autograd through swiftkern/ops/reference.py) under TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch
from _util import check, to
from cases import CONV_SHAPES, conv_args
from tolerances import assert_close

from swiftkern import ops
from swiftkern.ops import reference as R
from swiftkern.ops._define import reference_backward

pytestmark = pytest.mark.triton

K = pytest.importorskip("swiftkern.triton_kernels._conv")
TB = pytest.importorskip("swiftkern.triton_kernels._train_backward")

# positions of the Tensor arguments (eps is the one float) and their reference backward
IDX = {
    "dwconv_bn_train": (0, 1, 2, 3, 4),
    "mlp_train": (0, 1, 2, 4, 5, 6, 7, 8, 9),
    "conv_block_train": (0, 1, 2, 3, 4, 6, 7, 8, 9, 10),
}
REF = {op: reference_backward(getattr(R, op + "_ref"), idx) for op, idx in IDX.items()}
# (B, C, H, W, hidden): odd shapes (SPEC.md section 3); N = 1 is rejected in train mode
ODD = {
    "c33": (2, 33, 5, 7, 132),
    "h1": (1, 8, 1, 9, 32),
    "w1": (3, 20, 4, 1, 20),
    "ragged": (1, 24, 9, 11, 96),  # 99 pixels: not a multiple of BLOCK_P
}


def _args(op, shape, layout="nchw", seed=0):
    """[grad, *op args]"""
    args = conv_args(op, shape, torch.float32, layout, seed).args
    g = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(seed + 1))
    return [g, *args]


def _bwd(op, mask=None):
    n = len(IDX[op])
    m = [True] * n if mask is None else mask
    return (lambda *a: getattr(TB, op + "_backward")(*a, m)), (lambda *a: REF[op](*a, m))


@pytest.mark.parametrize("shape", list(ODD))
@pytest.mark.parametrize("op", list(IDX))
def test_train_backward(op, shape):
    fn, ref = _bwd(op)
    for layout in ("nchw", "channels_last") + (("strided",) if shape == "c33" else ()):
        args = _args(op, ODD[shape], layout)
        out = check(fn, ref, args, what=f"{op} {shape} {layout}")
        assert len(out) == len(IDX[op])
        lay = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert out[0].is_contiguous(memory_format=lay), f"{op} {layout}: dx layout"


def test_train_backward_mask_and_none():
    op = "conv_block_train"
    args = _args(op, ODD["c33"], "channels_last")
    args[3] = None  # dw_b
    args[4] = None  # bn_weight
    for mask in ([False, True, True, True, True, False, False, False, False, False],
                 [False, False, False, False, True, True, False, True, False, True],
                 [True, False, False, False, False, False, False, False, False, False]):
        fn, ref = _bwd(op, mask)
        got, want = fn(*args), ref(*args)
        for i in range(10):
            if mask[i] and i not in (2, 3):
                assert_close(got[i], want[i], torch.float32, what=f"mask {mask} grad {i}")
            else:
                assert got[i].numel() == 0, f"mask {mask}: grad {i} not empty"
    op = "mlp_train"
    args = _args(op, ODD["w1"])
    args[2] = args[3] = args[10] = None  # bn_weight, bn_bias, residual
    fn, ref = _bwd(op)
    got, want = fn(*args), ref(*args)
    for i in (0, 3, 4, 5, 6, 7):
        assert_close(got[i], want[i], torch.float32, what=f"mlp_train bare grad {i}")
    assert got[1].numel() == got[2].numel() == got[8].numel() == 0


@pytest.mark.parametrize("target", [1, 3])
@pytest.mark.parametrize("op", ["dwconv_bn_train", "mlp_train"])
def test_train_backward_segments(op, target, monkeypatch):
    # Several pixel tiles per program of the statistics and BN-reduce kernels (143 pixels = 5
    # tiles: one segment of 5, or 2 + 2 + 1), summed by the merge / coefficient kernels.
    monkeypatch.setattr(K, "STATS_TARGET_PROGRAMS", target)
    assert K.stats_segments(13 * 11, 24) == {1: (1, 5), 3: (3, 2)}[target]
    fn, ref = _bwd(op)
    check(fn, ref, _args(op, (1, 24, 13, 11, 96), "channels_last"), what=f"{op} {target}")


def test_train_backward_large_mean():
    # |mean| = 1e3 over a unit spread: the BN input is centred (z - mean) in the kernels before
    # any scaling. As in test_conv.test_train_stats_with_large_mean the fp32 reference itself is
    # off from the fp64 truth here, so the bound is 2x its error (+ the usual 1e-4 floor).
    op = "dwconv_bn_train"
    args = _args(op, ODD["ragged"])
    args[3] = args[3] + 1000.0  # dw_b
    fn, ref = _bwd(op)
    truth = ref(*to(args, torch.float64))
    ref32, out = ref(*args), fn(*args)
    for i in (0, 1, 3, 4):  # dw_b's gradient is 0 in exact arithmetic: noise on both sides
        base = (ref32[i].double() - truth[i]).abs().max().item()
        err = (out[i].double() - truth[i]).abs().max().item()
        bound = 2 * base + 1e-4 * max(1.0, truth[i].abs().max().item())
        assert err <= bound, f"grad {i}: {err:.3e} vs fp32 reference {base:.3e}"


def test_train_backward_real_shape():
    op = "conv_block_train"
    fn, ref = _bwd(op)
    check(fn, ref, _args(op, CONV_SHAPES["xs_stage4"], "channels_last"), what="xs_stage4")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", list(IDX))
def test_train_backward_half(op, dtype):
    fn, ref = _bwd(op)
    out = check(fn, ref, _args(op, ODD["c33"], "channels_last"), dtype, what=f"{op} {dtype}")
    assert all(o.dtype == dtype for o in out)


def test_op_autograd_through_triton():
    # through torch.ops.swiftkern (dispatch, layout normalization, autograd formula)
    args = _args("conv_block_train", ODD["c33"], "channels_last")[1:]
    idx = IDX["conv_block_train"]

    def grads(backend):
        a = [t.detach().clone().requires_grad_(True) if i in idx else t
             for i, t in enumerate(args)]
        y, _, _ = ops.conv_block_train(*a, backend=backend)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)))
        return [a[i].grad for i in idx]

    for i, (g, r) in enumerate(zip(grads("triton"), grads("reference"))):
        assert_close(g, r, torch.float32, what=f"op conv_block_train grad {i}")


@pytest.mark.parametrize("op", ["mlp_train", "conv_block_train"])
def test_train_backward_wide(op):
    # C = 257 > 256, past the single-kernel forward's widest config: the backward recomputes no
    # fused forward (channel-tiled BN / dwconv kernels, GEMMs in torch), so any width is served
    fn, ref = _bwd(op)
    args = _args(op, (1, 257, 2, 3, 300), "channels_last")
    out = check(fn, ref, args, what=f"{op} c257")
    assert len(out) == len(IDX[op])


BW = pytest.importorskip("swiftkern.triton_kernels._backward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["conv_block", "conv_block_train", "mlp_train"])
def test_dz_rows_beside_nchw_x(op, dtype, monkeypatch):
    """With an NCHW x, the fused MLP backward's dz (channels_last rows) goes to the dwconv / BN
    backward as it is, without a copy into NCHW (_conv._grad_beside): every gradient
    bit-identical, in the same strides, to the same call with dz copied into NCHW first."""
    mod = BW if op == "conv_block" else TB
    fn = getattr(mod, op + "_backward")
    args = to(_args(op, ODD["c33"], "nchw"), dtype)
    mask = [True] * (8 if op == "conv_block" else len(IDX[op]))
    orig = BW._mlp_grads
    seen = []

    def spy(*a, **k):
        out = orig(*a, **k)
        seen.append(K._layout(out[0]))
        return out

    monkeypatch.setattr(mod, "_mlp_grads", spy)
    got = fn(*args, mask)
    assert seen == [torch.channels_last]  # the rows, not a copy
    monkeypatch.setattr(mod, "_mlp_grads",
                        lambda *a, **k: orig(*a, **dict(k, dz_rows_ok=False)))
    want = fn(*args, mask)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), i
        assert torch.equal(a, b), i


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_gradient_beside_nchw_x(dtype):
    """A channels_last gradient of an NCHW x is read as it is (no copy) by the dwconv backward
    (with and without the residual, dx and / or the weight partials) and by the BN backward
    of the train forms: results bit-identical to the gradient in NCHW."""
    g = torch.Generator().manual_seed(7)
    shape = (2, 33, 5, 7)
    x = torch.randn(shape, generator=g).to(dtype)
    gr = torch.randn(shape, generator=g).to(dtype)
    gcl = gr.contiguous(memory_format=torch.channels_last)
    assert K._grad_beside(gcl, x) is gcl and K._grad_beside(gr, x) is gr
    # the other way round (a channels_last x) the gradient is copied into x's layout
    xcl = x.contiguous(memory_format=torch.channels_last)
    assert K._layout(K._grad_beside(gr, xcl)) == torch.channels_last
    w = torch.randn(33, 1, 3, 3, generator=g).to(dtype)
    b = torch.randn(33, generator=g).to(dtype)
    res = torch.randn(shape, generator=g).to(dtype)
    for mask, r in (([True, True, True], res), ([True, True, True], None),
                    ([True, False, False], res), ([False, True, True], None)):
        got = K.dwconv_bn_backward(gcl, x, w, b, mask, residual=r)
        want = K.dwconv_bn_backward(gr, x, w, b, mask, residual=r)
        for a, c in zip(got, want):
            assert a.stride() == c.stride() and torch.equal(a, c), mask
    bn_w, bn_b = torch.rand(33, generator=g).to(dtype) + 0.5, torch.randn(33, generator=g).to(dtype)
    got = TB.dwconv_bn_train_backward(gcl, x, w, b, bn_w, bn_b, 1e-5, [True] * 5)
    want = TB.dwconv_bn_train_backward(gr, x, w, b, bn_w, bn_b, 1e-5, [True] * 5)
    for a, c in zip(got, want):
        assert a.stride() == c.stride() and torch.equal(a, c)
