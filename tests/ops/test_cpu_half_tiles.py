"""bf16 / fp16 conv_block and mlp on the CPU tile strategy: x is read, and the output written, in
its own dtype, converted per tile around the fp32 arithmetic (csrc/cpu/conv_block_kernels.cpp
load_as_float / store_from_float). The result must be bit-identical to converting the whole
tensors around the fp32 kernel (what the other strategies do), for both layouts, ragged tiles,
channel counts off the vector width, non-contiguous inputs and both strategies. Also the MLP's
residual when it is x (converted once)."""

from __future__ import annotations

import os

import pytest
import torch

from swiftkern import _ext

C = torch.ops.swiftkern_C

pytestmark = pytest.mark.skipif(
    _ext.CPU_ISA is None or not hasattr(C, "conv_block"), reason="needs the C++ CPU kernels"
)

DTYPES = [torch.bfloat16, torch.float16]
# (B, C, H, W, hidden): odd sizes, channels off the 16-wide vector, a ragged last tile
SHAPES = [(2, 24, 15, 13, 96), (3, 33, 9, 7, 45), (1, 48, 29, 31, 192)]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)


def _params(c: int, hd: int, seed: int, dtype):
    g = torch.Generator().manual_seed(seed)
    p = dict(
        dw_w=torch.randn(c, 1, 3, 3, generator=g) * 0.3,
        dw_b=torch.randn(c, generator=g),
        w1=torch.randn(hd, c, generator=g) * c**-0.5,
        b1=torch.randn(hd, generator=g),
        w2=torch.randn(c, hd, generator=g) * hd**-0.5,
        b2=torch.randn(c, generator=g),
        ls=torch.rand(c, generator=g) + 0.5,
    )
    return {k: v.to(dtype) for k, v in p.items()}


def _x(shape, dtype, layout, seed=0):
    b, c, h, w, _ = shape
    g = torch.Generator().manual_seed(seed)
    if layout == "strided":  # every other column of a wider NCHW tensor
        return (torch.randn(b, c, h, 2 * w, generator=g) * 2).to(dtype)[..., ::2]
    x = (torch.randn(b, c, h, w, generator=g) * 2).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "cl" else x


def _conv_args(p):
    return p["dw_w"], p["dw_b"], p["w1"], p["b1"], p["w2"], p["b2"], p["ls"]


def _mlp_args(p):
    return p["w1"], p["b1"], p["w2"], p["b2"], p["ls"]


def _f32(p):
    return {k: v.float() for k, v in p.items()}


@pytest.mark.parametrize("strategy", ["tile", "unfused", None], ids=["tile", "unfused", "default"])
@pytest.mark.parametrize("layout", ["nchw", "cl", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_block_half_matches_whole_tensor_conversion(shape, dtype, layout, strategy, threads,
                                                         monkeypatch):
    if strategy is None:
        monkeypatch.delenv("SWIFTKERN_CPU_CONV_STRATEGY", raising=False)
    else:
        monkeypatch.setenv("SWIFTKERN_CPU_CONV_STRATEGY", strategy)
    x = _x(shape, dtype, layout)
    p = _params(shape[1], shape[4], 1, dtype)
    out = C.conv_block(x, *_conv_args(p))
    want = C.conv_block(x.float(), *_conv_args(_f32(p))).to(dtype)
    assert out.dtype == dtype and out.shape == x.shape
    if layout == "cl":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()
    assert torch.equal(out, want)


@pytest.mark.parametrize("strategy", ["tile", "unfused"])
@pytest.mark.parametrize("residual", ["x", "other", "none", "fp32"])
@pytest.mark.parametrize("layout", ["nchw", "cl", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
def test_mlp_half_matches_whole_tensor_conversion(shape, dtype, layout, residual, strategy,
                                                  threads, monkeypatch):
    monkeypatch.setenv("SWIFTKERN_CPU_CONV_STRATEGY", strategy)
    x = _x(shape, dtype, layout)
    p = _params(shape[1], shape[4], 2, dtype)
    res = {
        "x": x,
        "other": _x(shape, dtype, layout, seed=5),
        "none": None,
        "fp32": _x(shape, dtype, layout, seed=6).float(),  # another dtype than x: converted
    }[residual]
    out = C.mlp(x, *_mlp_args(p), res)
    want = C.mlp(x.float(), *_mlp_args(_f32(p)), None if res is None else res.float()).to(dtype)
    assert out.dtype == dtype
    assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_half_tiles_empty_batch(dtype):
    p = _params(24, 96, 3, dtype)
    x = torch.empty(0, 24, 5, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)
    assert C.conv_block(x, *_conv_args(p)).shape == x.shape
    assert C.mlp(x, *_mlp_args(p), x).shape == x.shape


# ---- The MLP's residual when it is x itself (as the fused encoder block calls it): x's fp32 copy
# serves as the residual too (csrc/cpu/cpu_common.h residual_to_float), on every strategy and in
# the train / backward / packed forms; each result is bit-identical to the fp32 route on
# separately converted inputs, for the residual x and for any other residual.

# (B, C, H, W, hidden): the tile strategy (a 4C hidden at 15x13) and the whole-tensor GEMMs
# (a weight over the 256 KiB channels_last threshold)
RESIDUAL_SHAPES = [(2, 24, 15, 13, 96), (1, 160, 7, 5, 640)]


def _mlp_inputs(shape, dtype, layout, seed=0):
    """x, another tensor like x, and MLP parameters, all in dtype."""
    return (_x(shape, dtype, layout, seed), _x(shape, dtype, layout, seed + 100),
            _params(shape[1], shape[4], seed + 1, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("shape", RESIDUAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlp_residual_is_x(shape, dtype, layout):
    x, other, p = _mlp_inputs(shape, dtype, layout)
    f = _f32(p)
    for res in (x, other):
        out = C.mlp(x, *_mlp_args(p), res)
        want = C.mlp(x.float(), *_mlp_args(f), res.float()).to(dtype)
        assert out.dtype == dtype
        assert torch.equal(out, want)
    # the residual x against a copy of it (converted on its own)
    assert torch.equal(C.mlp(x, *_mlp_args(p), x), C.mlp(x, *_mlp_args(p), x.clone()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mlp_train_residual_is_x(dtype):
    x, other, p = _mlp_inputs(RESIDUAL_SHAPES[0], dtype, "cl", seed=3)
    f = _f32(p)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mlp_backward_residual_is_x(dtype):
    x, other, p = _mlp_inputs(RESIDUAL_SHAPES[0], dtype, "nchw", seed=5)
    f = _f32(p)
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
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mlp_packed_residual_is_x(dtype):
    x, other, p = _mlp_inputs(RESIDUAL_SHAPES[1], dtype, "cl", seed=9)
    f = _f32(p)
    rows = x.shape[0] * x.shape[2] * x.shape[3]
    p1 = torch.ops.mkl._mkl_reorder_linear_weight(f["w1"], rows)
    p2 = torch.ops.mkl._mkl_reorder_linear_weight(f["w2"], rows)
    for res in (x, other):
        out = C.mlp_packed(x, *_mlp_args(f), res, p1, p2)
        want = C.mlp_packed(x.float(), *_mlp_args(f), res.float(), p1, p2).to(dtype)
        assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mlp_kernel_rejects_a_residual_of_another_shape(dtype):
    """The C++ op (callable without the Python op's validation) checks the residual's shape
    instead of reading past it."""
    x, _, p = _mlp_inputs(RESIDUAL_SHAPES[0], dtype, "cl")
    bad = torch.randn(x.shape[0], x.shape[1], 2, 2).to(dtype)
    with pytest.raises(RuntimeError, match="residual must have shape"):
        C.mlp(x, *_mlp_args(p), bad)
    with pytest.raises(RuntimeError, match="residual must have shape"):
        C.mlp_train(x, None, None, 1e-5, *_mlp_args(p), bad)


def test_forced_isa_is_the_loaded_one():
    """test_cpu_isa.py runs this file with SWIFTKERN_CPU_ISA forced: the library that ran the
    tests above must be that one."""
    want = os.environ.get("SWIFTKERN_CPU_ISA")
    if want:
        assert _ext.CPU_ISA == want


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_half_tiles_switch_off_is_the_same(dtype, monkeypatch):
    """SWIFTKERN_CPU_HALF_TILES=0 (benchmarks/packed_ab.py --switch half-tiles) converts whole
    tensors instead: the same bits."""
    monkeypatch.setenv("SWIFTKERN_CPU_CONV_STRATEGY", "tile")
    x = _x(SHAPES[0], dtype, "cl")
    p = _params(SHAPES[0][1], SHAPES[0][4], 4, dtype)
    on = (C.conv_block(x, *_conv_args(p)), C.mlp(x, *_mlp_args(p), x))
    monkeypatch.setenv("SWIFTKERN_CPU_HALF_TILES", "0")
    off = (C.conv_block(x, *_conv_args(p)), C.mlp(x, *_mlp_args(p), x))
    assert all(torch.equal(a, b) for a, b in zip(on, off))
