"""The fused Triton MLP backward (triton_kernels/_mlp_backward.py: dz kernel + dW kernel) under
TRITON_INTERPRET=1: every config and segment count against the torch path of _mlp_grads, the
four backward ops that use it against the reference backward (fp32 / fp16 / bf16, NCHW and
channels_last, odd shapes), and a spy proving those ops take the fused path."""

from __future__ import annotations

import itertools

import pytest
import torch
from _util import check, grads_of, to
from cases import conv_args
from tolerances import HALF_FACTOR, HALF_FLOOR, assert_close

from swiftkern.ops import reference as R
from swiftkern.ops._define import reference_backward

pytestmark = pytest.mark.triton

BW = pytest.importorskip("swiftkern.triton_kernels._backward")
MB = pytest.importorskip("swiftkern.triton_kernels._mlp_backward")
TB = pytest.importorskip("swiftkern.triton_kernels._train_backward")

# (B, C, H, W, hidden, c_out) per config: a width the config is picked for, ragged pixels
CONFIG_SHAPES = {64: (2, 33, 3, 5, 132, 20), 128: (1, 72, 3, 3, 72, 100),
                 256: (1, 150, 3, 5, 40, 200)}
HALF = (torch.float16, torch.bfloat16)


def _config_dtypes(key):
    """fp32 where the config serves fp32 weights; bf16 (and fp16 in the first variant) where
    it serves no fp32 or fp32 runs its own override (BWD_FP32_CONFIGS)."""
    out = [torch.float32] if key <= MB.BWD_FP32_MAX_WIDTH else []
    if key > MB.BWD_FP32_MAX_WIDTH or key in MB.BWD_FP32_CONFIGS:
        out.append(torch.bfloat16)
    return out


def _assert_close_half(out, ref32, half, dtype, what):
    """SPEC.md section 3 half rule for a gradient that may be stored in fp32 (dz rows)."""
    base = (half.double() - ref32.double()).abs().max().item()
    err = (out.double() - ref32.double()).abs().max().item()
    bound = HALF_FACTOR * base + HALF_FLOOR[dtype] * max(1.0, ref32.abs().max().item())
    assert err <= bound, f"{what} {dtype}: err {err:.3e} > {bound:.3e} (torch {base:.3e})"


def _mlp_inputs(shape, layout, seed=0, bias=True, ls=True):
    b, c, h, w, hid, co = shape
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=g) * scale

    z, grad = r(b, c, h, w), r(b, co, h, w)
    if layout == "channels_last":
        z, grad = (t.contiguous(memory_format=torch.channels_last) for t in (z, grad))
    w1, w2 = r(hid, c, scale=c**-0.5), r(co, hid, scale=hid**-0.5)
    b1, b2 = (r(hid, scale=0.3), r(co, scale=0.3)) if bias else (None, None)
    lsv = torch.rand(co, generator=g) + 0.5 if ls else None
    return [grad, z, w1, b1, w2, b2, lsv]


@pytest.mark.parametrize("key", sorted(MB.BWD_CONFIGS))
def test_every_config_and_segment_count(key):
    shape = CONFIG_SHAPES[key]
    for dtype in _config_dtypes(key):
        assert MB.bwd_config_key(shape[1], shape[5], dtype) == key
    if key > MB.BWD_FP32_MAX_WIDTH:  # a half-only config: fp32 weights take the torch path
        assert MB.bwd_config_key(shape[1], shape[5], torch.float32) is None
        with pytest.raises(ValueError, match="not built for fp32"):
            MB.mlp_grads_fused(*_mlp_inputs(shape, "nchw"), [True] * 6, config=key)
    variants = (("nchw", 1, True, True), ("channels_last", 2, True, True),
                ("channels_last", 3, False, False))
    for dtype, (j, (layout, n_seg, bias, ls)) in itertools.product(_config_dtypes(key),
                                                                   enumerate(variants)):
        args = _mlp_inputs(shape, layout, bias=bias, ls=ls)
        need = [True] * 6
        dt = dtype if dtype == torch.float32 or j else torch.float16
        got = MB.mlp_grads_fused(*to(args, dt), need, config=key, n_seg=n_seg)
        want = BW._mlp_grads_torch(*args, need)
        half = BW._mlp_grads_torch(*to(args, dt), need) if dt != torch.float32 else None
        for i, (a, b) in enumerate(zip(got, want)):
            what = f"cfg {key} {dt} seg {n_seg} {layout} grad {i}"
            assert (a is None) == (b is None), what
            if a is None:
                continue
            assert a.dtype == (torch.float32 if i == 0 else dt), what
            if half is None:
                assert_close(a, b, torch.float32, what=what)
            else:
                _assert_close_half(a, b, half[i], dt, what)


def test_need_flags_and_too_many_segments():
    args = _mlp_inputs((1, 20, 5, 7, 20, 20), "nchw", seed=2)
    want = BW._mlp_grads_torch(*args, [True] * 6)
    # the last mask (db2 alone) runs kernel P for the sum of g ls only (neither dz nor u)
    for need in ([True, False, False, False, False, False], [False, True, False, True, False,
                 False], [False, False, True, False, True, True],
                 [False, False, False, False, True, False]):
        # 9 segments for 2 tiles: empty segments must write zero partials
        got = MB.mlp_grads_fused(*args, need, n_seg=9)
        for i in range(6):
            if need[i]:
                assert_close(got[i], want[i], torch.float32, what=f"need {need} grad {i}")
            else:
                assert got[i] is None, f"need {need}: grad {i} computed"


def test_segments_fill_the_gpu():
    assert MB.segments(64 * 56 * 56, 192, 16, 16) * 12 >= 132 * 2
    assert MB.segments(10, 4096, 16, 16) == 1  # one tile: one segment
    # SwiftFormer-XS stage 4 (C = 220): fused for every weight dtype (fp32 through its own
    # config); everything past 256 takes the torch path
    for dt in (*HALF, torch.float32):
        assert MB.bwd_config_key(220, 220, dt) == 256
        assert MB.bwd_config_key(8, 257, dt) is None and MB.bwd_config_key(257, 8, dt) is None
    assert MB.bwd_config(256, torch.float32) is MB.BWD_FP32_CONFIGS[256]
    assert MB.bwd_config(256, torch.bfloat16) is MB.BWD_CONFIGS[256]


# --- the ops through the fused path --------------------------------------------------------------
IDX = {"mlp": (0, 1, 2, 3, 4, 5, 6), "conv_block": (0, 1, 2, 3, 4, 5, 6, 7),
       "mlp_train": (0, 1, 2, 4, 5, 6, 7, 8, 9),
       "conv_block_train": (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)}
LAUNCHER = {"mlp": BW.mlp_backward, "conv_block": BW.conv_block_backward,
            "mlp_train": TB.mlp_train_backward, "conv_block_train": TB.conv_block_train_backward}
REF = {op: reference_backward(getattr(R, op + "_ref"), idx) for op, idx in IDX.items()}


def _op_args(op, shape, layout):
    args = conv_args(op, shape, torch.float32, layout, 0).args
    g = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1))
    return [g, *args]


def _fns(op):
    m = [True] * len(IDX[op])
    return (lambda *a: LAUNCHER[op](*a, m)), (lambda *a: REF[op](*a, m))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["mlp", "conv_block"])
def test_eval_backward_half(op, dtype):
    fn, ref = _fns(op)
    layout = "nchw" if dtype == torch.float16 else "channels_last"
    out = check(fn, ref, _op_args(op, (2, 20, 3, 5, 80), layout), dtype, what=f"{op} {dtype}")
    assert all(o.dtype == dtype for o in out)


# (C, dtype, layout, the config the op must take): a narrow fp32 case, and C = 150 (padded 256,
# like XS stage 4's 220) in fp16/bf16: the half-only config
FUSED_CASES = [(24, torch.float32, "channels_last", 64), (150, torch.float16, "nchw", 256),
               (150, torch.bfloat16, "channels_last", 256)]


@pytest.mark.parametrize("c,dtype,layout,key", FUSED_CASES)
@pytest.mark.parametrize("op", list(IDX))
def test_ops_take_the_fused_path(op, c, dtype, layout, key, monkeypatch):
    """Each op's launcher runs the fused kernels with the expected config (never the torch
    path), against the reference backward (at the half dtype: SPEC.md section 3 half rule)."""
    calls = []
    real = MB.mlp_grads_fused

    def spy(*a, **k):
        calls.append((a[1].shape, a[1].dtype,
                      MB.bwd_config_key(a[1].shape[1], a[4].shape[0], a[2].dtype)))
        return real(*a, **k)

    def torch_path(*a, **k):
        raise AssertionError("torch path taken")

    monkeypatch.setattr(MB, "mlp_grads_fused", spy)
    monkeypatch.setattr(BW, "_mlp_grads_torch", torch_path)
    fn, ref = _fns(op)
    out = check(fn, ref, _op_args(op, (1, c, 3, 3, 24), layout), dtype, what=f"{op} C={c}")
    assert all(o.dtype == dtype for o in out)
    # z in the input dtype, also the train forms' BN output
    assert calls == [(torch.Size((1, c, 3, 3)), dtype, key)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_half_z_changes_no_bit(layout):
    """The train forms store their BN output z in the input dtype where these kernels read it:
    every dot takes z in the weights' half dtype anyway (DOT_DT), so z rounded first gives the
    same gradients bit for bit (fp16, whose dots the interpreter runs in fp16 as a GPU does)."""
    args = _mlp_inputs(CONFIG_SHAPES[64], layout)
    half = to(args, torch.float16)
    unrounded = [half[0], args[1], *half[2:]]  # z in fp32
    got = MB.mlp_grads_fused(*unrounded, [True] * 6, dz_dtype=torch.float16)
    want = MB.mlp_grads_fused(*half, [True] * 6, dz_dtype=torch.float16)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"grad {i}"


def test_mlp_c_out_differs_backward():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 20, 3, 5, generator=g).contiguous(memory_format=torch.channels_last)
    w1 = torch.randn(40, 20, generator=g) * 0.2
    w2 = torch.randn(36, 40, generator=g) * 0.2
    args = [x, w1, torch.randn(40, generator=g), w2, None, torch.rand(36, generator=g), None]
    gy, want = grads_of(R.mlp_ref, args, (0, 1, 2, 3, 5))
    got = BW.mlp_backward(gy, *args, [True, True, True, True, False, True, False])
    for j, i in enumerate((0, 1, 2, 3, 5)):
        assert_close(got[i], want[j], torch.float32, what=f"mlp 20->36 grad {i}")
    assert got[0].is_contiguous(memory_format=torch.channels_last)


def test_roofline_model_matches_configs():
    from swiftkern.triton_kernels import _roofline as RL

    assert RL.MLP_BWD_MAX_C == max(MB.BWD_CONFIGS)
    assert RL.MLP_BWD_MAX_C_FP32 == MB.BWD_FP32_MAX_WIDTH
    assert RL.MLP_BWD_TARGET_PROGRAMS == MB.TARGET_PROGRAMS
    assert RL.MLP_BWD_TILES == {k: tuple((c[n]["BLOCK_P"], c[n]["BLOCK_H"]) for n in ("dz", "dw"))
                                for k, c in MB.BWD_CONFIGS.items()}
    # the model reads kernel P's BLOCK_P and kernel W's tiles: the fp32 overrides share them
    for k, c in MB.BWD_FP32_CONFIGS.items():
        assert (RL.MLP_BWD_TILES[k][0][0], RL.MLP_BWD_TILES[k][1]) == (
            c["dz"]["BLOCK_P"], (c["dw"]["BLOCK_P"], c["dw"]["BLOCK_H"]))


def test_wide_takes_the_torch_path(monkeypatch):
    def fused(*a, **k):
        raise AssertionError("fused path taken past its widest config")

    monkeypatch.setattr(MB, "mlp_grads_fused", fused)
    wide = MB.BWD_FP32_MAX_WIDTH + 1  # fp32 weights
    args = _mlp_inputs((1, wide, 2, 3, 16, 8), "channels_last")
    got = BW._mlp_grads(*args, [True] * 6)
    assert got[0].shape == (6, wide)
    args = to(_mlp_inputs((1, 8, 2, 3, 16, 257), "channels_last"), torch.bfloat16)
    got = BW._mlp_grads(*args, [True] * 6)
    assert got[3].shape == (257, 16) and got[3].dtype == torch.bfloat16
    # dz in the input's dtype and layout, as the fused kernels hand it back: the rows rounded
    for layout in ("nchw", "channels_last"):
        args = _mlp_inputs((1, wide, 2, 3, 16, 8), layout)
        rows = BW._mlp_grads(*args, [True] * 6)[0]
        dz = BW._mlp_grads(*args, [True] * 6, dz_dtype=torch.bfloat16)[0]
        assert dz.dtype == torch.bfloat16 and dz.shape == args[1].shape
        assert BW._layout(dz) == BW._layout(args[1])
        assert torch.equal(dz.permute(0, 2, 3, 1).reshape(6, wide), rows.bfloat16())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_dz_in_the_input_dtype_and_layout(layout):
    """Kernel P writes dz rounded once to the requested dtype; the launcher returns it in z's
    layout: equal to the fp32 rows rounded."""
    args = _mlp_inputs(CONFIG_SHAPES[64], layout)
    rows = MB.mlp_grads_fused(*args, [True] * 6)[0]
    dz = MB.mlp_grads_fused(*args, [True] * 6, dz_dtype=torch.bfloat16)[0]
    assert dz.dtype == torch.bfloat16 and BW._layout(dz) == BW._layout(args[1])
    b, c, h, w = args[1].shape
    assert torch.equal(dz.permute(0, 2, 3, 1).reshape(b * h * w, c), rows.bfloat16())

