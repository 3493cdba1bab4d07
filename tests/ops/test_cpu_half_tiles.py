"""bf16 / fp16 conv_block and mlp on the CPU tile strategy: x is read, and the output written, in
its own dtype, converted per tile around the fp32 arithmetic (csrc/cpu/conv_block_kernels.cpp
load_as_float / store_from_float). The result must be bit-identical to converting the whole
tensors around the fp32 kernel (what the other strategies do), for both layouts, ragged tiles,
channel counts off the vector width, non-contiguous inputs and both strategies."""

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
