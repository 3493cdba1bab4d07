"""bf16 / fp16 MLP kernels (CPU, computed in fp32 between conversions) whose residual is x itself,
as the fused encoder block calls them: x's fp32 copy serves as the residual too
(csrc/cpu/cpu_common.h residual_to_float). The result must be bit-identical to the fp32 route on
separately converted inputs, for the residual x and for any other residual."""

from __future__ import annotations

import pytest
import torch

from swiftkern import _ext

C = torch.ops.swiftkern_C

pytestmark = pytest.mark.skipif(
    _ext.CPU_ISA is None or not hasattr(C, "mlp"), reason="needs the C++ CPU kernels"
)


def _weights(c: int, hd: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return dict(
        fc1_w=torch.randn(hd, c, generator=g) * c**-0.5,
        fc1_b=torch.randn(hd, generator=g),
        fc2_w=torch.randn(c, hd, generator=g) * hd**-0.5,
        fc2_b=torch.randn(c, generator=g),
        ls=torch.rand(c, generator=g) + 0.5,
    )


# (B, C, H, W, hidden): the tile strategy (a 4C hidden at 15x13) and the whole-tensor GEMMs
# (a weight over the 256 KiB channels_last threshold)
SHAPES = [(2, 24, 15, 13, 96), (1, 160, 7, 5, 640)]


def _inputs(shape, dtype, cl, seed=0):
    b, c, h, w, hd = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g).to(dtype)
    other = torch.randn(b, c, h, w, generator=g).to(dtype)
    if cl:
        x, other = (t.contiguous(memory_format=torch.channels_last) for t in (x, other))
    p = {k: v.to(dtype) for k, v in _weights(c, hd, seed + 1).items()}
    return x, other, p


def _mlp_args(p):
    return p["fc1_w"], p["fc1_b"], p["fc2_w"], p["fc2_b"], p["ls"]


def _fp32(p):
    return {k: v.float() for k, v in p.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlp_residual_is_x(shape, dtype, cl):
    x, other, p = _inputs(shape, dtype, cl)
    f = _fp32(p)
    for res in (x, other):
        out = C.mlp(x, *_mlp_args(p), res)
        want = C.mlp(x.float(), *_mlp_args(f), res.float()).to(dtype)
        assert out.dtype == dtype
        assert torch.equal(out, want)
    # the residual x against a copy of it (converted on its own)
    assert torch.equal(C.mlp(x, *_mlp_args(p), x), C.mlp(x, *_mlp_args(p), x.clone()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_mlp_train_residual_is_x(dtype):
    x, other, p = _inputs(SHAPES[0], dtype, True, seed=3)
    f = _fp32(p)
    c = x.shape[1]
    g = torch.Generator().manual_seed(7)
    bn_w = (torch.randn(c, generator=g) * 0.2 + 1).to(dtype)
    bn_b = torch.randn(c, generator=g).to(dtype)
    for res in (x, other):
        got = C.mlp_train(x, bn_w, bn_b, 1e-5, *_mlp_args(p), res)
        want = C.mlp_train(x.float(), bn_w.float(), bn_b.float(), 1e-5, *_mlp_args(f), res.float())
        for a, b in zip(got, want):
            assert torch.equal(a, b.to(dtype))
        grad = torch.randn_like(x)
        mask = [True] * 9  # x, bn_weight, bn_bias, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual
        gb = C.mlp_train_backward(grad, x, bn_w, bn_b, 1e-5, *_mlp_args(p), res, mask)
        gw = C.mlp_train_backward(grad.float(), x.float(), bn_w.float(), bn_b.float(), 1e-5,
                                  *_mlp_args(f), res.float(), mask)
        for a, b in zip(gb, gw):
            assert torch.equal(a, b.to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_mlp_backward_residual_is_x(dtype):
    x, other, p = _inputs(SHAPES[0], dtype, False, seed=5)
    f = _fp32(p)
    grad = torch.randn_like(x)
    mask = [True] * 7
    for res in (x, other):
        got = C.mlp_backward(grad, x, *_mlp_args(p), res, mask)
        want = C.mlp_backward(grad.float(), x.float(), *_mlp_args(f), res.float(), mask)
        for a, b in zip(got, want):
            assert torch.equal(a, b.to(dtype))


@pytest.mark.skipif(
    not hasattr(C, "mlp_packed") or not torch.backends.mkl.is_available(),
    reason="needs the MKL-packed kernels",
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_mlp_packed_residual_is_x(dtype):
    x, other, p = _inputs(SHAPES[1], dtype, True, seed=9)
    f = _fp32(p)
    rows = x.shape[0] * x.shape[2] * x.shape[3]
    p1 = torch.ops.mkl._mkl_reorder_linear_weight(f["fc1_w"], rows)
    p2 = torch.ops.mkl._mkl_reorder_linear_weight(f["fc2_w"], rows)
    for res in (x, other):
        out = C.mlp_packed(x, *_mlp_args(f), res, p1, p2)
        want = C.mlp_packed(x.float(), *_mlp_args(f), res.float(), p1, p2).to(dtype)
        assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mlp_kernel_rejects_a_residual_of_another_shape(dtype):
    """The C++ op (callable without the Python op's validation) checks the residual's shape
    instead of reading past it."""
    x, _, p = _inputs(SHAPES[0], dtype, True)
    bad = torch.randn(x.shape[0], x.shape[1], 2, 2).to(dtype)
    with pytest.raises(RuntimeError, match="residual must have shape"):
        C.mlp(x, *_mlp_args(p), bad)
    with pytest.raises(RuntimeError, match="residual must have shape"):
        C.mlp_train(x, None, None, 1e-5, *_mlp_args(p), bad)
