"""The GPU kernels (backends "cuda" and "triton") against the reference ON A GPU; skipped without
one.

The CPU-only suites cannot run CUDA C++ at all, and run Triton only in its interpreter (which hides
TF32 dots, real rounding and out-of-bounds reads), so this is the file that finds wrong indexing,
precision or synchronization once a GPU is lent (tools/gpu_run.sh runs it there). References run
on the CPU in fp64 (cuDNN would use TF32 for the reference's convolutions on Ampere+ and blur the
comparison); half dtypes use the flash-attention rule of tests/tolerances.py against plain PyTorch
at that dtype on the GPU.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ops"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cases import ATTN_SHAPES, CONV_SHAPES, POOLS, attn_args, conv_args  # noqa: E402
from tolerances import assert_close, assert_close_half  # noqa: E402

import swiftkern  # noqa: E402,F401  (loads the extension, registers backends)
from swiftkern import _registry  # noqa: E402
from swiftkern.ops import reference as R  # noqa: E402
from swiftkern.ops._define import layout_of  # noqa: E402

pytestmark = [
    pytest.mark.cuda_build,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]
GPU_BACKENDS = ("cuda", "triton")


def _need(backend, op):
    """Skip when `backend` has no kernel for `op` on CUDA tensors here (no extension / Triton)."""
    k = _registry.table().get((op, backend))
    if k is None or "cuda" not in k.devices:
        pytest.skip(f"backend {backend!r} has no CUDA kernel for {op} here")

CONV_OPS = ("dwconv_bn", "dwconv_bn_train", "conv_block", "conv_block_train", "mlp", "mlp_train")
BWD_CONV = CONV_OPS  # every conv op, train forms included, has a CUDA backward
ATTN_OPS = ("additive_attention", "additive_attention_core")


def _args(op, shape, layout, pool, dtype=torch.float32):
    if op in CONV_OPS:
        return conv_args(op, CONV_SHAPES[shape], dtype, layout).args
    return attn_args(op, ATTN_SHAPES[shape], pool, dtype, layout).args


def _to(args, device=None, dtype=None):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            fmt = layout_of(a) if a.dim() == 4 else torch.preserve_format
            a = a.to(device=device, dtype=dtype, memory_format=fmt)
        out.append(a)
    return out


def _tuple(o):
    return (o,) if isinstance(o, torch.Tensor) else tuple(o)


def _cases(ops):
    out = []
    for op in ops:
        if op in CONV_OPS:
            # one value per channel is rejected by the train forms, like nn.BatchNorm2d
            # (tests/reliability); every other shape runs
            out += [(op, s, lay, None) for s in CONV_SHAPES for lay in ("nchw", "channels_last")
                    if not (op.endswith("_train") and s == "n1")]
        else:
            out += [
                (op, s, lay, p)
                for s in ATTN_SHAPES
                for lay in ("contiguous", "strided")
                for p in POOLS
            ]
    return out


@pytest.mark.parametrize("op,shape,layout,pool", _cases(CONV_OPS + ATTN_OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_forward(op, shape, layout, pool, dtype, backend):
    _need(backend, op)
    args32 = _args(op, shape, layout, pool)
    ref = _tuple(getattr(R, op + "_ref")(*_to(args32, dtype=torch.float64)))
    args = _to(args32, "cuda", dtype)
    out = _tuple(getattr(torch.ops.swiftkern, op)(*args, backend))
    torch.cuda.synchronize()
    if args[0].dim() == 4:
        assert out[0].is_contiguous(memory_format=layout_of(args[0]))
    if dtype == torch.float32:
        for i, (o, r) in enumerate(zip(out, ref)):
            assert_close(o.cpu(), r.float(), torch.float32, what=f"{backend} {op} output {i}")
    else:
        plain = _tuple(getattr(R, op + "_ref")(*args))
        for i, (o, r, p) in enumerate(zip(out, ref, plain)):
            assert_close_half(o.cpu(), r.float(), p.cpu(), what=f"{backend} {op} output {i}")


def _backward_case(op, shape, layout, pool):
    """fp32 arguments, the indices of the tensor ones, an all-True grad mask, an fp64 output
    gradient and the fp64 reference gradients (autograd through the reference, on the CPU)."""
    args32 = _args(op, shape, layout, pool)
    targs = [i for i, a in enumerate(args32) if isinstance(a, torch.Tensor)]
    mask = [True] * len(targs)
    ref_args = _to(args32, dtype=torch.float64)
    y = _tuple(getattr(R, op + "_ref")(*ref_args))[0]
    grad = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = getattr(torch.ops.swiftkern, op + "_backward")(grad, *ref_args, "reference", mask)
    return args32, targs, mask, grad, ref


@pytest.mark.parametrize("op,shape,layout,pool", _cases(BWD_CONV + ATTN_OPS))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backward_fp32(op, shape, layout, pool, backend):
    _need(backend, op + "_backward")
    args32, targs, mask, grad, ref = _backward_case(op, shape, layout, pool)
    args = _to(args32, "cuda")
    g_in = grad.float().cuda()
    g_keep = g_in.clone()
    got = getattr(torch.ops.swiftkern, op + "_backward")(g_in, *args, backend, mask)
    torch.cuda.synchronize()
    assert torch.equal(g_in, g_keep), f"{backend} {op}: the backward overwrote its input gradient"
    for i, g, r in zip(targs, got, ref):
        assert g.shape == r.shape, f"{op} grad of arg {i}: {tuple(g.shape)} vs {tuple(r.shape)}"
        if r.numel():
            assert_close(g.cpu(), r.float(), torch.float32,
                         what=f"{backend} {op} grad of arg {i}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_launches_on_the_current_stream(backend):
    _need(backend, "additive_attention")
    args = _to(_args("additive_attention", "xs_stage1", "contiguous", "softmax"), "cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = torch.ops.swiftkern.additive_attention(*args, backend)
    s.synchronize()
    ref = R.additive_attention_ref(*_to(args, "cpu", torch.float64))
    assert_close(out.cpu(), ref.float(), torch.float32, what="side stream")


HALF_BWD_SHAPES = {"xs_stage1"}  # left out of the half backward: Triton JIT time, not coverage


@pytest.mark.parametrize(
    "op,shape,layout,pool",
    [c for c in _cases(BWD_CONV + ATTN_OPS) if c[1] not in HALF_BWD_SHAPES],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backward_half(op, shape, layout, pool, dtype, backend):
    """fp16/bf16 gradients against the fp64 reference, within HALF_FACTOR x the error of plain
    PyTorch autograd at that dtype on the GPU (the reference backend) plus the dtype's floor."""
    _need(backend, op + "_backward")
    args32, targs, mask, grad, ref = _backward_case(op, shape, layout, pool)
    args = _to(args32, "cuda", dtype)
    g_in = grad.to(device="cuda", dtype=dtype)
    plain = getattr(torch.ops.swiftkern, op + "_backward")(g_in, *args, "reference", mask)
    got = getattr(torch.ops.swiftkern, op + "_backward")(g_in, *args, backend, mask)
    torch.cuda.synchronize()
    for i, g, r, p in zip(targs, got, ref, plain):
        assert g.shape == r.shape, f"{op} grad of arg {i}: {tuple(g.shape)} vs {tuple(r.shape)}"
        assert g.dtype == dtype, f"{backend} {op} grad of arg {i}: dtype {g.dtype}"
        if r.numel():
            assert_close_half(g.cpu(), r.float(), p.cpu(),
                              what=f"{backend} {op} grad of arg {i}")
