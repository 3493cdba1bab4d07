"""Named bad and edge inputs, each with the exact behaviour expected (issue: reliability)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from cases import attn_args, conv_args  # noqa: E402
from conftest import live_backends  # noqa: E402
from tolerances import assert_close  # noqa: E402

import swiftkern  # noqa: E402
from swiftkern.ops import reference as R  # noqa: E402

SMALL = (2, 5, 3, 4, 12)
TOK = (2, 6, 8)


def conv(op="conv_block", shape=SMALL, dtype=torch.float32):
    return conv_args(op, shape, dtype).args


def attn(op="additive_attention", shape=TOK, pool="l2"):
    return attn_args(op, shape, pool).args


def _set(args, i, v):
    args = list(args)
    args[i] = v(args[i]) if callable(v) else v
    return args


BAD = [
    (
        "x_int32",
        "conv_block",
        lambda: _set(conv(), 0, lambda t: t.to(torch.int32)),
        TypeError,
        "x must be a floating tensor",
    ),
    (
        "x_bool",
        "dwconv_bn",
        lambda: _set(conv("dwconv_bn"), 0, lambda t: t > 0),
        TypeError,
        "x must be a floating tensor",
    ),
    ("x_3d", "conv_block", lambda: _set(conv(), 0, lambda t: t[0]), ValueError, "x must be 4-D"),
    ("x_5d", "mlp", lambda: _set(conv("mlp"), 0, lambda t: t[None]), ValueError, "x must be 4-D"),
    (
        "mixed_dtype_weight",
        "conv_block",
        lambda: _set(conv(), 3, lambda t: t.double()),
        TypeError,
        "pw1_w has dtype torch.float64 but x has dtype torch.float32",
    ),
    (
        "mixed_dtype_bias",
        "dwconv_bn",
        lambda: _set(conv("dwconv_bn"), 2, lambda t: t.half()),
        TypeError,
        "dw_b has dtype",
    ),
    (
        "meta_weight",
        "conv_block",
        lambda: _set(conv(), 1, lambda t: t.to("meta")),
        ValueError,
        "dw_w is on meta but x is on cpu",
    ),
    (
        "dw_5x5",
        "conv_block",
        lambda: _set(conv(), 1, torch.randn(5, 1, 5, 5)),
        ValueError,
        "only 3x3 depthwise kernels are supported",
    ),
    (
        "dw_not_depthwise",
        "dwconv_bn",
        lambda: _set(conv("dwconv_bn"), 1, torch.randn(5, 5, 3, 3)),
        ValueError,
        r"dw_w must be a depthwise weight \[5, 1, 3, 3\]",
    ),
    (
        "dw_channel_mismatch",
        "conv_block",
        lambda: _set(conv(), 1, torch.randn(4, 1, 3, 3)),
        ValueError,
        "dw_w must be a depthwise weight",
    ),
    (
        "pw1_channel_mismatch",
        "conv_block",
        lambda: _set(conv(), 3, torch.randn(12, 4)),
        ValueError,
        r"pw1_w must be \[hidden, 5\]",
    ),
    (
        "pw2_hidden_mismatch",
        "conv_block",
        lambda: _set(conv(), 5, torch.randn(5, 11)),
        ValueError,
        r"pw2_w must be \[C_out, 12\]",
    ),
    (
        "pw2_not_back_to_c",
        "conv_block",
        lambda: _set(_set(_set(conv(), 5, torch.randn(6, 12)), 6, torch.randn(6)), 7, None),
        ValueError,
        "map back to C=5",
    ),
    (
        "ls_wrong_length",
        "conv_block",
        lambda: _set(conv(), 7, torch.randn(4)),
        ValueError,
        r"ls must have shape \(5,\)",
    ),
    (
        "residual_wrong_shape",
        "mlp",
        lambda: _set(conv("mlp"), 6, torch.randn(2, 5, 3, 3)),
        ValueError,
        "residual must have shape",
    ),
    (
        "bn_eps_zero",
        "conv_block_train",
        lambda: _set(conv("conv_block_train"), 5, 0.0),
        ValueError,
        "eps must be > 0",
    ),
    (
        "train_single_value",
        "dwconv_bn_train",
        lambda: conv("dwconv_bn_train", (1, 5, 1, 1, 12)),
        ValueError,
        "Expected more than 1 value per channel when training",
    ),
    (
        "attn_2d_input",
        "additive_attention",
        lambda: _set(attn(), 0, lambda t: t[0]),
        ValueError,
        "x must be 3-D",
    ),
    (
        "attn_w_qk_wrong",
        "additive_attention",
        lambda: _set(attn(), 1, torch.randn(8, 8)),
        ValueError,
        r"w_qk must have shape \(16, 8\)",
    ),
    (
        "attn_w_g_wrong",
        "additive_attention",
        lambda: _set(attn(), 3, torch.randn(7)),
        ValueError,
        r"w_g must have shape \(8,\)",
    ),
    (
        "attn_final_wrong",
        "additive_attention",
        lambda: _set(attn(), 7, torch.randn(8, 7)),
        ValueError,
        r"w_final must have shape \[T, 8\]",
    ),
    (
        "attn_bias_without_final",
        "additive_attention",
        lambda: _set(_set(attn(), 7, None), 8, torch.randn(8)),
        ValueError,
        "b_final given without w_final",
    ),
    (
        "attn_unknown_pool",
        "additive_attention",
        lambda: _set(attn(), 9, "max"),
        ValueError,
        "pool must be one of",
    ),
    (
        "core_k_shape",
        "additive_attention_core",
        lambda: _set(attn("additive_attention_core"), 1, torch.randn(2, 5, 8)),
        ValueError,
        r"k must have shape \(2, 6, 8\)",
    ),
    (
        "attn_int_input",
        "additive_attention",
        lambda: _set(attn(), 0, lambda t: t.long()),
        TypeError,
        "x must be a floating tensor",
    ),
]


@pytest.mark.parametrize("name,op,make,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_fails_clearly(name, op, make, exc, match):
    args = make()
    for backend in ["auto", "reference", *live_backends(op)]:
        with pytest.raises(exc, match=match):
            getattr(torch.ops.swiftkern, op)(*args, backend)


def _all_backends(op, args):
    ref = getattr(R, op + "_ref")(*args)
    ref = ref if isinstance(ref, torch.Tensor) else ref[0]
    for backend in ["reference", *live_backends(op)]:
        out = getattr(torch.ops.swiftkern, op)(*args, backend)
        out = out if isinstance(out, torch.Tensor) else out[0]
        yield backend, out, ref


EDGE = [
    ("batch0_conv_block", "conv_block", lambda: conv(shape=(0, 5, 3, 4, 12))),
    ("batch0_mlp", "mlp", lambda: conv("mlp", (0, 5, 3, 4, 12))),
    ("batch0_dwconv", "dwconv_bn", lambda: conv("dwconv_bn", (0, 5, 3, 4, 12))),
    ("batch0_attention", "additive_attention", lambda: attn(shape=(0, 6, 8))),
    ("tokens0_attention", "additive_attention", lambda: attn(shape=(2, 0, 8))),
    ("n1_attention_softmax", "additive_attention", lambda: attn(shape=(1, 1, 8), pool="softmax")),
    ("n1_conv_block", "conv_block", lambda: conv(shape=(1, 5, 1, 1, 12))),
    ("h1_conv_block", "conv_block", lambda: conv(shape=(2, 5, 1, 7, 12))),
    ("w1_dwconv", "dwconv_bn", lambda: conv("dwconv_bn", (2, 5, 6, 1, 12))),
    ("c1_conv_block", "conv_block", lambda: conv(shape=(2, 1, 3, 3, 4))),
    (
        "sliced_channels",
        "dwconv_bn",
        lambda: (
            _set(conv("dwconv_bn", (2, 10, 4, 4, 12)), 0, lambda t: t[:, ::2])[:1]
            + [torch.randn(5, 1, 3, 3), torch.randn(5)]
        ),
    ),
    ("train_two_values", "conv_block_train", lambda: conv("conv_block_train", (2, 5, 1, 1, 12))),
]


@pytest.mark.parametrize("name,op,make", EDGE, ids=[e[0] for e in EDGE])
def test_edge_input_matches_reference(name, op, make):
    args = make()
    for backend, out, ref in _all_backends(op, args):
        assert out.shape == ref.shape, f"{backend}: {tuple(out.shape)} vs {tuple(ref.shape)}"
        assert_close(out, ref, what=f"{name}[{backend}]")


@pytest.mark.parametrize("op", ["conv_block", "mlp", "dwconv_bn", "additive_attention"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_values_propagate_like_the_reference(op, value):
    args = conv(op) if op != "additive_attention" else attn(pool="softmax")
    x = args[0].clone()
    x.view(-1)[3] = value
    args[0] = x
    for backend, out, ref in _all_backends(op, args):
        assert torch.equal(out.isnan(), ref.isnan()), f"{backend}: NaN positions differ"
        assert torch.equal(out.isinf(), ref.isinf()), f"{backend}: Inf positions differ"
        fin = ref.isfinite()
        assert_close(out[fin], ref[fin], what=f"{op}[{backend}] finite part")


def test_empty_training_batch_leaves_running_stats_like_batchnorm():
    import copy

    from timm.models import swiftformer as tm

    m = tm.ConvEncoder(5, 20).train()
    ref = copy.deepcopy(m)
    holder = swiftkern.optimize(torch.nn.Sequential(m), backend="reference")
    x = torch.randn(0, 5, 4, 4)
    assert holder(x).shape == ref(x).shape == (0, 5, 4, 4)
    for (k, a), b in zip(ref.state_dict().items(), holder[0].state_dict().values()):
        assert torch.equal(a, b), k
