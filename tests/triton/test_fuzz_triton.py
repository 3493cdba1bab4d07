"""Hypothesis fuzzing of the Triton backend in the interpreter (the CPU and reference backends are
fuzzed in tests/reliability/test_fuzz.py). Few, small examples: each program costs ~4 ms here."""

from __future__ import annotations

import torch
from cases import attn_args, conv_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tolerances import assert_close

from swiftkern.ops import reference as R

CI = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


@CI
@given(
    op=st.sampled_from(["dwconv_bn", "conv_block", "mlp", "dwconv_bn_train", "mlp_train"]),
    b=st.integers(1, 2),
    c=st.integers(1, 24),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    ratio=st.sampled_from([1, 4]),
    layout=st.sampled_from(["nchw", "channels_last", "strided"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_triton_conv_ops(op, b, c, h, w, ratio, layout, seed):
    if op.endswith("_train") and b * h * w == 1:
        return
    args = conv_args(op, (b, c, h, w, c * ratio), torch.float32, layout, seed).args
    ref = _first(getattr(R, op + "_ref")(*args))
    out = _first(getattr(torch.ops.swiftkern, op)(*args, "triton"))
    assert_close(out, ref, what=f"{op}[triton]")


@CI
@given(
    b=st.integers(1, 2),
    n=st.integers(1, 40),
    d=st.integers(1, 40),
    pool=st.sampled_from(["sum", "l2", "softmax"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_triton_attention_core(b, n, d, pool, seed):
    args = attn_args("additive_attention_core", (b, n, d), pool, seed=seed).args
    ref = R.additive_attention_core_ref(*args)
    out = torch.ops.swiftkern.additive_attention_core(*args, "triton")
    for o, r in zip(out, ref):
        assert_close(o, r, what=f"core[triton] {pool}")


@settings(CI, max_examples=15)
@given(
    b=st.integers(1, 2),
    n=st.integers(1, 40),
    d=st.integers(1, 40),
    pool=st.sampled_from(["sum", "l2", "softmax"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_triton_attention_core_backward(b, n, d, pool, seed):
    from swiftkern.ops._define import reference_backward

    args = attn_args("additive_attention_core", (b, n, d), pool, seed=seed).args
    g = torch.randn((b, n, d), generator=torch.Generator().manual_seed(seed + 1))
    ref = reference_backward(R.additive_attention_core_ref, (0, 1, 2))(g, *args, [True] * 3)
    got = torch.ops.swiftkern.additive_attention_core_backward(g, *args, "triton", [True] * 3)
    for i, (o, r) in enumerate(zip(got, ref)):
        assert_close(o, r, torch.float32, what=f"core backward[triton] {pool} grad {i}")


TRAIN_IDX = {"dwconv_bn_train": (0, 1, 2, 3, 4), "mlp_train": (0, 1, 2, 4, 5, 6, 7, 8, 9),
             "conv_block_train": (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)}


@settings(CI, max_examples=12)
@given(
    op=st.sampled_from(sorted(TRAIN_IDX)),
    b=st.integers(1, 2),
    c=st.integers(1, 24),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    layout=st.sampled_from(["nchw", "channels_last", "strided"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_triton_train_backward(op, b, c, h, w, layout, seed):
    from swiftkern.ops._define import reference_backward

    if b * h * w == 1:
        return
    args = conv_args(op, (b, c, h, w, 2 * c), torch.float32, layout, seed).args
    g = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(seed + 1))
    mask = [True] * len(TRAIN_IDX[op])
    ref = reference_backward(getattr(R, op + "_ref"), TRAIN_IDX[op])(g, *args, mask)
    got = getattr(torch.ops.swiftkern, op + "_backward")(g, *args, "triton", mask)
    for i, (o, r) in enumerate(zip(got, ref)):
        assert_close(o, r, torch.float32, what=f"{op}_backward[triton] grad {i}")
