"""The C++ conv-family ops check their arguments' shapes at entry (csrc/cpu/conv_block_kernels.cpp
check_x / check_dw / check_pw / check_grad): the swiftkern_C schemas are callable without the
Python ops' validation (from C++, or torch.ops.swiftkern_C), and their kernels index raw
pointers, so a parameter of the wrong size must raise instead of being read past its end."""

from __future__ import annotations

import pytest
import torch

from swiftkern import _ext

K = torch.ops.swiftkern_C

pytestmark = pytest.mark.skipif(
    _ext.CPU_ISA is None or not hasattr(K, "conv_block"), reason="needs the C++ CPU kernels"
)

B, C, H, W, HD = 2, 8, 5, 6, 16


def _good():
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g)

    return dict(
        x=r(B, C, H, W).contiguous(memory_format=torch.channels_last),
        dw_w=r(C, 1, 3, 3), dw_b=r(C), bn_w=r(C), bn_b=r(C),
        w1=r(HD, C), b1=r(HD), w2=r(C, HD), b2=r(C), ls=r(C),
        grad=r(B, C, H, W),
    )


def _call(op: str, a: dict):
    x, m = a["x"], [True] * 10
    if op == "dwconv_bn":
        return K.dwconv_bn(x, a["dw_w"], a["dw_b"])
    if op == "dwconv_bn_backward":
        return K.dwconv_bn_backward(a["grad"], x, a["dw_w"], a["dw_b"], m[:3])
    if op == "dwconv_bn_train":
        return K.dwconv_bn_train(x, a["dw_w"], a["dw_b"], a["bn_w"], a["bn_b"], 1e-5)
    if op == "dwconv_bn_train_backward":
        return K.dwconv_bn_train_backward(a["grad"], x, a["dw_w"], a["dw_b"], a["bn_w"],
                                          a["bn_b"], 1e-5, m[:5])
    pw = (a["w1"], a["b1"], a["w2"], a["b2"], a["ls"])
    if op == "conv_block":
        return K.conv_block(x, a["dw_w"], a["dw_b"], *pw)
    if op == "conv_block_backward":
        return K.conv_block_backward(a["grad"], x, a["dw_w"], a["dw_b"], *pw, m[:8])
    if op == "conv_block_train":
        return K.conv_block_train(x, a["dw_w"], a["dw_b"], a["bn_w"], a["bn_b"], 1e-5, *pw)
    if op == "conv_block_train_backward":
        return K.conv_block_train_backward(a["grad"], x, a["dw_w"], a["dw_b"], a["bn_w"],
                                           a["bn_b"], 1e-5, *pw, m[:10])
    if op == "mlp":
        return K.mlp(x, *pw, x)
    if op == "mlp_backward":
        return K.mlp_backward(a["grad"], x, *pw, x, m[:7])
    if op == "mlp_train":
        return K.mlp_train(x, a["bn_w"], a["bn_b"], 1e-5, *pw, x)
    if op == "mlp_train_backward":
        return K.mlp_train_backward(a["grad"], x, a["bn_w"], a["bn_b"], 1e-5, *pw, x, m[:9])
    if op == "pointwise_packable":
        return K.pointwise_packable(x, a["w1"], a["w2"])
    raise AssertionError(op)


DW_OPS = ["dwconv_bn", "dwconv_bn_backward", "dwconv_bn_train", "dwconv_bn_train_backward",
          "conv_block", "conv_block_backward", "conv_block_train", "conv_block_train_backward"]
PW_OPS = ["conv_block", "conv_block_backward", "conv_block_train", "conv_block_train_backward",
          "mlp", "mlp_backward", "mlp_train", "mlp_train_backward"]
GRAD_OPS = [op for op in DW_OPS + PW_OPS if op.endswith("_backward")]
BN_OPS = ["dwconv_bn_train", "dwconv_bn_train_backward", "conv_block_train",
          "conv_block_train_backward", "mlp_train", "mlp_train_backward"]

CASES = (
    [(op, "x", torch.randn(C, H, W), "x must be 4-D") for op in DW_OPS + PW_OPS]
    + [(op, "dw_w", torch.randn(C - 1, 1, 3, 3), "dw_w must be") for op in DW_OPS]
    + [(op, "dw_b", torch.randn(C + 1), "dw_b must have") for op in DW_OPS]
    + [(op, "w1", torch.randn(HD, C + 1), "first pointwise weight") for op in PW_OPS]
    + [(op, "w2", torch.randn(C, HD - 1), "second pointwise weight") for op in PW_OPS]
    + [(op, "b1", torch.randn(HD - 3), "first pointwise bias") for op in PW_OPS]
    + [(op, "b2", torch.randn(C - 1), "second pointwise bias") for op in PW_OPS]
    + [(op, "ls", torch.randn(2), "ls must have") for op in PW_OPS]
    + [(op, "w2", torch.randn(C // 2, HD), "output channels") for op in PW_OPS
       if op.startswith("conv_block")]
    + [(op, "grad", torch.randn(B, C, H, W + 1), "grad must be") for op in GRAD_OPS]
    + [(op, "bn_w", torch.randn(C + 2), "bn_weight") for op in BN_OPS]
    + [(op, "bn_b", torch.randn(1), "bn_bias") for op in BN_OPS]
    + [("pointwise_packable", "w1", torch.randn(HD, C - 2), "first pointwise weight")]
)


@pytest.mark.parametrize("op", sorted(set(DW_OPS + PW_OPS + ["pointwise_packable"])))
def test_good_arguments_pass(op):
    _call(op, _good())


@pytest.mark.parametrize("op,name,bad,msg", CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_argument_shape_raises(op, name, bad, msg):
    a = _good()
    a[name] = bad
    with pytest.raises(RuntimeError, match=msg):
        _call(op, a)
