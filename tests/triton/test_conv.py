"""Conv-style Triton kernels (dwconv_bn, mlp, conv_block; eval + train forms; backward) against
the reference under TRITON_INTERPRET=1, every shipped config, odd and real shapes."""

from __future__ import annotations

import pytest
import torch
from _util import check, grads_of, to
from cases import CONV_SHAPES, conv_args
from tolerances import assert_close

from swiftkern.ops import reference as R

pytestmark = pytest.mark.triton

K = pytest.importorskip("swiftkern.triton_kernels._conv")
BW = pytest.importorskip("swiftkern.triton_kernels._backward")

LAYOUTS = ("nchw", "channels_last", "strided")
# (B, C, H, W, hidden): odd shapes (SPEC.md section 3) + one real SwiftFormer-XS shape each
ODD = {
    "c33": (2, 33, 5, 7, 132),
    "h1": (1, 8, 1, 9, 32),
    "w1": (3, 20, 4, 1, 20),
    "n1": (1, 16, 1, 1, 64),
    "ragged": (1, 24, 9, 11, 96),  # 99 pixels: not a multiple of any BLOCK_P
}
REAL = {"xs_stage1": CONV_SHAPES["xs_stage1"], "xs_stage4": CONV_SHAPES["xs_stage4"]}
STRIDED_SHAPES = ("c33", "h1")  # the strided-view layout costs a copy per call: two shapes


def _args(op, shape, layout="nchw", seed=0):
    return conv_args(op, shape, torch.float32, layout, seed).args


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", list(ODD))
def test_dwconv_bn(shape, layout):
    args = _args("dwconv_bn", ODD[shape], layout)
    out = check(K.dwconv_bn, R.dwconv_bn_ref, args, what=f"dwconv_bn {shape}")[0]
    if layout == "channels_last" and out.shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", list(ODD))
@pytest.mark.parametrize("op", ["conv_block", "mlp"])
def test_fused_odd_shapes(op, shape):
    for layout in LAYOUTS[:2] + (("strided",) if shape in STRIDED_SHAPES else ()):
        args = _args(op, ODD[shape], layout)
        fn = getattr(K, op)
        check(fn, getattr(R, op + "_ref"), args, what=f"{op} {shape} {layout}")


def test_mlp_without_optional_inputs():
    x, w1, _, w2, _, _, _ = _args("mlp", ODD["c33"])
    check(K.mlp, R.mlp_ref, [x, w1, None, w2, None, None, None], what="mlp bare")
    _, dw, _, pw1, _, pw2, _, _ = _args("conv_block", ODD["c33"])
    check(K.conv_block, R.conv_block_ref, [x, dw, None, pw1, None, pw2, None, None],
          what="conv_block bare")
    x, bn_w, bn_b, eps, w1, b1, w2, b2, ls, _ = _args("mlp_train", ODD["c33"])
    check(K.mlp_train, R.mlp_train_ref, [x, bn_w, bn_b, eps, w1, b1, w2, b2, ls, None],
          what="mlp_train without residual")


def test_mlp_c_out_differs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 20, 3, 5, generator=g)
    w1 = torch.randn(40, 20, generator=g) * 0.2
    w2 = torch.randn(36, 40, generator=g) * 0.2
    res = torch.randn(2, 36, 3, 5, generator=g)
    check(K.mlp, R.mlp_ref, [x, w1, None, w2, None, torch.rand(36, generator=g), res],
          what="mlp 20->36")


# Every shipped fused config, at a channel count it is picked for (and one it is wider than).
CONFIG_SHAPES = {64: (2, 33, 3, 5, 132), 128: (1, 112, 3, 4, 448), 256: (1, 220, 3, 3, 880)}


@pytest.mark.parametrize("key", sorted(K.MLP_CONFIGS))
def test_every_fused_config(key):
    shape = CONFIG_SHAPES[key]
    assert K.mlp_config_key(shape[1], shape[1]) == key
    args = _args("conv_block", shape, "channels_last")
    check(lambda *a: K.conv_block(*a, config=key), R.conv_block_ref, args, what=f"cfg {key}")
    if key != 64:  # a narrower tensor through a wider config (masking of the padded channels)
        args = _args("mlp", ODD["c33"])
        check(lambda *a: K.mlp(*a, config=key), R.mlp_ref, args, what=f"cfg {key} narrow")


def test_too_wide_raises_unsupported():
    # no single-kernel config past 256 channels: the launchers take the two-kernel split there
    from swiftkern._registry import Unsupported

    with pytest.raises(Unsupported):
        K.mlp_config_key(300, 300)
    assert K.fused_config(300, 300) == "split"
    assert K.fused_config(256, 256) == 256
    assert K.fused_config(220, 300) == "split"


# --- wide channels (C > 256): the two-kernel split (_mlp_hidden_kernel + _mlp_out_kernel) --------
# Few pixels: interpreter time grows with programs x K-chunks, and the tiles are width-independent.
WIDE = {
    "c257": (1, 257, 2, 3, 300),  # odd C; hidden not a multiple of the 128-wide hidden tile
    "c320": (1, 320, 2, 3, 1280),  # SwiftFormer-L3 stage 3 width, hidden 4C
    "c260": (1, 260, 3, 2, 1040),
}
# conv_block's dwconv prologue costs (hidden tiles x C chunks x 9 taps) interpreter steps per
# layout (~8 s at C = 320, hidden 1280); the strided view runs as a copy, through mlp.
WIDE_CASES = [("conv_block", "c257", ("nchw", "channels_last")),
              ("conv_block", "c320", ("channels_last",)),
              ("mlp", "c257", LAYOUTS), ("mlp", "c320", ("nchw", "channels_last")),
              ("mlp", "c260", ("nchw", "channels_last"))]
# The split forced on narrow odd shapes: several pixel tiles (99 pixels > BLOCK_P 64), several
# hidden / output tiles with ragged last ones, N = 1, H = 1.
SPLIT_FORCED = {"ragged": ODD["ragged"], "n1": ODD["n1"], "h1": ODD["h1"],
                "tiles": (1, 72, 9, 11, 200)}


@pytest.mark.parametrize("op,shape,layouts", WIDE_CASES)
def test_wide_fused(op, shape, layouts):
    c = WIDE[shape][1]
    assert K.fused_config(c, c) == "split"
    for layout in layouts:
        args = _args(op, WIDE[shape], layout)
        out = check(getattr(K, op), getattr(R, op + "_ref"), args, what=f"{op} {shape} {layout}")
        if layout == "channels_last":
            assert out[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", list(SPLIT_FORCED))
@pytest.mark.parametrize("op", ["conv_block", "mlp"])
def test_wide_split_forced_on_odd_shapes(op, shape):
    for layout in ("nchw", "channels_last"):
        args = _args(op, SPLIT_FORCED[shape], layout)
        check(lambda *a: getattr(K, op)(*a, config="split"), getattr(R, op + "_ref"), args,
              what=f"split {op} {shape} {layout}")


def test_wide_without_optional_inputs_and_c_out_differs():
    x, w1, _, w2, _, _, _ = _args("mlp", WIDE["c257"])
    check(K.mlp, R.mlp_ref, [x, w1, None, w2, None, None, None], what="wide mlp bare")
    _, dw, _, pw1, _, pw2, _, _ = _args("conv_block", WIDE["c257"])
    check(K.conv_block, R.conv_block_ref, [x, dw, None, pw1, None, pw2, None, None],
          what="wide conv_block bare")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 300, 2, 3, generator=g)
    w1 = torch.randn(520, 300, generator=g) * 300**-0.5
    w2 = torch.randn(36, 520, generator=g) * 520**-0.5
    res = torch.randn(1, 36, 2, 3, generator=g)
    check(K.mlp, R.mlp_ref, [x, w1, None, w2, None, torch.rand(36, generator=g), res],
          what="mlp 300->36")


@pytest.mark.parametrize("op,layouts", [("conv_block_train", ("channels_last",)),
                                        ("mlp_train", ("nchw", "channels_last"))])
def test_wide_train_forms(op, layouts):
    for layout in layouts:
        args = _args(op, WIDE["c257"], layout)
        check(getattr(K, op), getattr(R, op + "_ref"), args, what=f"{op} c257 {layout}")


@pytest.mark.parametrize("op,dtype,shape,layout", [
    ("conv_block", torch.bfloat16, "c257", "channels_last"),
    ("mlp", torch.float16, "c257", "nchw"),
])
def test_wide_half(op, dtype, shape, layout):
    args = _args(op, WIDE[shape], layout)
    check(getattr(K, op), getattr(R, op + "_ref"), args, dtype, what=f"{op} {shape} {dtype}")


def test_conv_block_real_shape():
    # xs_stage4 in full; stage 1 (56x56, C=48) costs ~30 s in the interpreter for the fused
    # block, so stage 1 runs through the dwconv kernel only.
    args = _args("conv_block", REAL["xs_stage4"], "channels_last")
    check(K.conv_block, R.conv_block_ref, args, what="conv_block xs_stage4")
    args = _args("dwconv_bn", REAL["xs_stage1"], "nchw")
    check(K.dwconv_bn, R.dwconv_bn_ref, args, what="dwconv_bn xs_stage1")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["dwconv_bn", "conv_block", "mlp"])
def test_half_dtypes(op, dtype):
    args = _args(op, ODD["c33"], "channels_last")
    check(getattr(K, op), getattr(R, op + "_ref"), args, dtype, what=f"{op} {dtype}")


def test_half_real_shape():
    args = _args("conv_block", REAL["xs_stage4"], "nchw")
    check(K.conv_block, R.conv_block_ref, args, torch.bfloat16, what="conv_block xs4 bf16")


# --- train forms -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["c33", "h1", "n1", "ragged"])
@pytest.mark.parametrize("op", ["dwconv_bn_train", "conv_block_train", "mlp_train"])
def test_train_forms(op, shape):
    for layout in ("nchw", "channels_last"):
        args = _args(op, ODD[shape], layout)
        check(getattr(K, op), getattr(R, op + "_ref"), args, what=f"{op} {shape} {layout}")


def test_train_stats_with_large_mean():
    # Batch statistics are merged per tile (Chan), not from E[z^2]-E[z]^2, and the mean is
    # subtracted before scaling: with a mean of 1e3 over a unit spread the naive forms lose ~1e-1.
    # At this offset the fp32 reference itself is off by ~4e-4 from fp64, so the bound is the
    # flash-attention rule against the fp64 truth: 2x the fp32 reference's own error.
    args = _args("dwconv_bn_train", ODD["ragged"])
    args[2] = args[2] + 1000.0
    truth = R.dwconv_bn_train_ref(*to(args, torch.float64))
    ref32 = R.dwconv_bn_train_ref(*args)
    out = K.dwconv_bn_train(*args)
    for i in range(3):
        base = (ref32[i].double() - truth[i]).abs().max().item()
        err = (out[i].double() - truth[i]).abs().max().item()
        assert err <= 2 * base + 1e-6, f"output {i}: {err:.3e} vs fp32 reference {base:.3e}"


@pytest.mark.parametrize("target", [1, 2, 3])
@pytest.mark.parametrize("op", ["dwconv_bn_train", "mlp_train"])
def test_train_stats_segments(op, target, monkeypatch):
    # Several pixel tiles per statistics program (merged in registers with Chan's formula,
    # visited last to first), then the merge kernel over the segments. 143 pixels = 5 tiles of
    # 32: one segment of 5 (target 1), 3 + 2 (target 2: the last segment's third tile does not
    # exist), 2 + 2 + 1 (target 3). A mean of 1e3 over a unit spread on the dwconv input.
    monkeypatch.setattr(K, "STATS_TARGET_PROGRAMS", target)
    shape = (1, 24, 13, 11, 96)
    nseg, tiles = K.stats_segments(13 * 11, 24)
    assert (nseg, tiles) == {1: (1, 5), 2: (2, 3), 3: (3, 2)}[target]
    args = _args(op, shape, "channels_last")
    args[0] = args[0] + 1000.0
    check(getattr(K, op), getattr(R, op + "_ref"), args, what=f"{op} segments {target}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dwconv_bn_train_fold_without_bias(dtype):
    # the merge kernel folds BN into the dwconv (w * scale, (b - mean) * scale + shift) with an
    # absent dwconv bias as 0 and absent BN parameters as 1 / 0
    args = _args("dwconv_bn_train", ODD["c33"], "channels_last")
    args[2] = args[3] = args[4] = None  # dw_b, bn_weight, bn_bias
    check(K.dwconv_bn_train, R.dwconv_bn_train_ref, args, dtype, what=f"fold no bias {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_train_half(dtype):
    args = _args("conv_block_train", ODD["c33"], "channels_last")
    check(K.conv_block_train, R.conv_block_train_ref, args, dtype, what=f"train {dtype}",
          n_check=1)


def test_train_real_shape():
    args = _args("conv_block_train", REAL["xs_stage4"], "channels_last")
    check(K.conv_block_train, R.conv_block_train_ref, args, what="train xs4")


# --- backward ----------------------------------------------------------------------------------
BWD = {
    "dwconv_bn": (K.dwconv_bn_backward, R.dwconv_bn_ref, (0, 1, 2)),
    "mlp": (BW.mlp_backward, R.mlp_ref, (0, 1, 2, 3, 4, 5, 6)),
    "conv_block": (BW.conv_block_backward, R.conv_block_ref, (0, 1, 2, 3, 4, 5, 6, 7)),
}


@pytest.mark.parametrize("shape", ["c33", "w1", "n1", "ragged"])
@pytest.mark.parametrize("op", list(BWD))
def test_backward(op, shape):
    bwd, ref, idx = BWD[op]
    for layout in ("nchw", "channels_last"):
        args = _args(op, ODD[shape], layout)
        g, ref_grads = grads_of(ref, args, idx)
        got = bwd(g, *args, [True] * len(idx))
        assert len(got) == len(idx)
        for i, (a, b) in enumerate(zip(got, ref_grads)):
            assert_close(a, b, torch.float32, what=f"{op} {shape} {layout} grad {i}")
        assert K._layout(got[0]) == K._layout(args[0]), f"{op} {layout}: dx layout"


def test_backward_mask_and_none():
    bwd, ref, idx = BWD["conv_block"]
    args = _args("conv_block", ODD["c33"])
    args[2] = None  # dw_b
    g, ref_grads = grads_of(ref, args, (0, 1, 3, 4, 5, 6, 7))
    mask = [False, True, True, True, False, True, True, True]
    got = bwd(g, *args, mask)
    assert got[0].numel() == 0 and got[2].numel() == 0 and got[4].numel() == 0
    for j, i in enumerate((0, 1, 3, 4, 5, 6, 7)):
        if mask[i]:
            assert_close(got[i], ref_grads[j], torch.float32, what=f"masked grad {i}")


def test_backward_real_shape():
    bwd, ref, idx = BWD["conv_block"]
    args = _args("conv_block", REAL["xs_stage4"], "channels_last")
    g, ref_grads = grads_of(ref, args, idx)
    for i, (a, b) in enumerate(zip(bwd(g, *args, [True] * 8), ref_grads)):
        assert_close(a, b, torch.float32, what=f"xs4 grad {i}")


def test_backward_half():
    bwd, ref, idx = BWD["conv_block"]
    args = to(_args("conv_block", ODD["c33"], "channels_last"), torch.bfloat16)
    g, _ = grads_of(ref, to(args, torch.float32), idx)
    _, ref32 = grads_of(ref, to(args, torch.float32), idx)
    _, ref16 = grads_of(ref, args, idx)
    got = bwd(g.bfloat16(), *args, [True] * 8)
    for i, (a, r32, r16) in enumerate(zip(got, ref32, ref16)):
        assert a.dtype == torch.bfloat16
        base = (r16.double() - r32.double()).abs().max().item()
        err = (a.double() - r32.double()).abs().max().item()
        mx = r32.abs().max().item()
        assert err <= 2 * base + 1e-3 * max(1.0, mx), f"grad {i}: {err} vs {base}"


@pytest.mark.parametrize("x_layout", ["nchw", "channels_last"])
def test_dx_with_residual_in_one_rounding(x_layout):
    """dwconv_bn_backward's bf16 dx with the block's residual gradient added in the same kernel:
    equal to the fp32 dx of the same values plus the residual, rounded once; x's layout even
    when the gradient arrives in the other one."""
    g = torch.Generator().manual_seed(5)
    shape = (2, 20, 5, 7)
    other = torch.channels_last if x_layout == "nchw" else torch.contiguous_format
    lay = torch.channels_last if x_layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=g).bfloat16().contiguous(memory_format=lay)
    dz = torch.randn(shape, generator=g).bfloat16().contiguous(memory_format=other)
    res = torch.randn(shape, generator=g).bfloat16()
    w = torch.randn(20, 1, 3, 3, generator=g).bfloat16()
    fp32 = K.dwconv_bn_backward(dz.float(), x.float(), w.float(), None, [True])[0]
    got = K.dwconv_bn_backward(dz, x, w, None, [True], residual=res)[0]
    assert got.dtype == torch.bfloat16 and K._layout(got) == K._layout(x)
    assert torch.equal(got, (fp32 + res.float()).bfloat16())
    with pytest.raises(ValueError, match="residual"):
        K.dwconv_bn_backward(dz, x, w, None, [True], residual=res[:, :4])
    # the weight gradients of the same call match the plain one's
    b = torch.randn(20, generator=g).bfloat16()
    plain = K.dwconv_bn_backward(dz, x, w, b, [False, True, True])
    both = K.dwconv_bn_backward(dz, x, w, b, [True, True, True], residual=res)
    assert plain[0].numel() == 0 and torch.equal(both[0], got)
    assert torch.equal(both[1], plain[1]) and torch.equal(both[2], plain[2])


@pytest.mark.parametrize("op", ["conv_block", "mlp"])
def test_wide_backward(op):
    # the backward never ran the fused forward (GEMMs in torch, dwconv tiled over channels):
    # checked at a width the single kernel does not serve
    bwd, ref, idx = BWD[op]
    args = _args(op, WIDE["c257"], "channels_last")
    g, ref_grads = grads_of(ref, args, idx)
    got = bwd(g, *args, [True] * len(idx))
    for i, (a, b) in enumerate(zip(got, ref_grads)):
        assert_close(a, b, torch.float32, what=f"wide {op} grad {i}")


def test_roofline_stats_model_matches_kernels():
    from swiftkern.triton_kernels import _roofline as RL

    cfg = K.DW_CONFIGS["default"]
    assert (RL.STATS_BLOCK_P, RL.STATS_BLOCK_C) == (cfg["BLOCK_P"], cfg["BLOCK_C"])
    assert RL.STATS_TARGET_PROGRAMS == K.STATS_TARGET_PROGRAMS
    for p, c in ((143, 24), (200704, 48), (3136, 220), (1, 1), (50176, 56)):
        assert RL.stats_segments(p, c) == K.stats_segments(p, c)[0]
    # x read from DRAM once while it fits the L2 rule, twice past it; two launches either way
    small = RL.roofline("conv_block_train", dict(B=64, C=220, H=7, W=7))
    big = RL.roofline("conv_block_train", dict(B=64, C=48, H=56, W=56, dtype_bytes=4))
    for r, x_bytes, reads in ((small, 64 * 220 * 49 * 2, 1), (big, 64 * 48 * 3136 * 4, 2)):
        extra = r["bytes_moved"] - r["bytes_min"]
        assert (reads - 1) * x_bytes <= extra < (reads - 1) * x_bytes + 1e6, (extra, x_bytes)
