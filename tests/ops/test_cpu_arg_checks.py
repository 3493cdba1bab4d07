"""The C++ CPU ops check their arguments' shapes at entry (csrc/cpu/conv_block_kernels.cpp
check_x / check_dw / check_pw / check_grad; attention_kernels.cpp check_attention / check_core):
the swiftkern_C schemas are callable without the Python ops' validation (from C++, or
torch.ops.swiftkern_C), and their kernels index raw pointers, so a parameter of the wrong size
must raise instead of being read past its end."""

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


# ---- attention: additive_attention (module, also _packed / _backward) and its core
N, D, T = 7, 8, 5


def _attn_good():
    g = torch.Generator().manual_seed(1)

    def r(*s):
        return torch.randn(*s, generator=g)

    return dict(x=r(B, N, D), w_qk=r(2 * D, D), b_qk=r(2 * D), w_g=r(D), w_proj=r(D, D),
                b_proj=r(D), w_final=r(T, D), b_final=r(T), grad=r(B, N, T))


def _attn_call(op: str, a: dict):
    args = (a["x"], a["w_qk"], a["b_qk"], a["w_g"], D**-0.5, a["w_proj"], a["b_proj"],
            a["w_final"], a["b_final"], "l2")
    if op == "additive_attention":
        return K.additive_attention(*args)
    if op == "additive_attention_backward":
        return K.additive_attention_backward(a["grad"], *args, [True] * 8)
    if op == "additive_attention_packed":  # plain weights stand in: the check comes first
        return K.additive_attention_packed(*args, a["w_qk"], a["w_final"])
    raise AssertionError(op)


ATTN_OPS = ["additive_attention", "additive_attention_backward", "additive_attention_packed"]
ATTN_CASES = [
    (op, name, bad, msg)
    for op in ATTN_OPS
    for name, bad, msg in (
        ("x", torch.randn(N, D), "x must be"),
        ("w_qk", torch.randn(2 * D - 1, D), "w_qk must be"),
        ("b_qk", torch.randn(3), "b_qk must have"),
        ("w_g", torch.randn(D + 1), "w_g must have"),
        ("w_proj", torch.randn(D, D - 2), "w_proj must be"),
        ("b_proj", torch.randn(2), "b_proj must have"),
        ("w_final", torch.randn(T, D + 1), "w_final must be"),
        ("b_final", torch.randn(T + 1), "b_final must have"),
    )
] + [("additive_attention_backward", "grad", torch.randn(B, N, D), "grad must be")]


@pytest.mark.parametrize("op", ATTN_OPS)
def test_attention_good_arguments_pass(op):
    if op == "additive_attention_packed":
        pytest.skip("needs MKL-packed weights (tests/ops/test_cpu_packed.py)")
    _attn_call(op, _attn_good())


@pytest.mark.parametrize("op,name,bad,msg", ATTN_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in ATTN_CASES])
def test_attention_bad_argument_shape_raises(op, name, bad, msg):
    a = _attn_good()
    a[name] = bad
    with pytest.raises(RuntimeError, match=msg):
        _attn_call(op, a)


CORE_CASES = [
    ("q", torch.randn(N, D), "q must be"),
    ("k", torch.randn(B, N - 1, D), "k must have"),
    ("w_g", torch.randn(D - 1), "w_g must have"),
]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("name,bad,msg", CORE_CASES + [("grad", torch.randn(B, N, D + 1),
                                                        "grad must have")],
                         ids=[c[0] for c in CORE_CASES] + ["grad"])
def test_attention_core_bad_argument_shape_raises(name, bad, msg, backward):
    if name == "grad" and not backward:
        pytest.skip("the forward takes no grad")
    a = dict(q=torch.randn(B, N, D), k=torch.randn(B, N, D), w_g=torch.randn(D),
             grad=torch.randn(B, N, D))
    K.additive_attention_core(a["q"], a["k"], a["w_g"], 0.5, "l2")  # good arguments pass
    a[name] = bad
    with pytest.raises(RuntimeError, match=msg):
        if backward:
            K.additive_attention_core_backward(a["grad"], a["q"], a["k"], a["w_g"], 0.5, "l2",
                                               [True] * 3)
        else:
            K.additive_attention_core(a["q"], a["k"], a["w_g"], 0.5, "l2")
