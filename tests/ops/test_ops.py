"""Every op on every live backend against its reference: values, layouts, dtypes, gradients,
opcheck, fp64 gradcheck and torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
from cases import (
    ATTN_SHAPES,
    CONV_SHAPES,
    POOLS,
    SMALL_ATTN,
    SMALL_CONV,
    attn_args,
    cast,
    conv_args,
)
from conftest import live_backends
from tolerances import assert_close, assert_close_half

from swiftkern.ops import reference as R
from swiftkern.ops._define import layout_of

CONV_OPS = ("dwconv_bn", "dwconv_bn_train", "conv_block", "conv_block_train", "mlp", "mlp_train")
ATTN_OPS = ("additive_attention", "additive_attention_core")
ALL_OPS = CONV_OPS + ATTN_OPS
REF = {name: getattr(R, name + "_ref") for name in ALL_OPS}


def _op(name):
    return getattr(torch.ops.swiftkern, name)


def _tuple(out):
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _backends(op, dtype=None):
    # "reference" runs through the op machinery too (layout normalization, validation).
    return ["reference", *live_backends(op, dtype=dtype)]


def _bwd_backends(op):
    # Backends with a kernel for both directions (an explicitly named backend never falls back).
    return [b for b in _backends(op) if b == "reference" or b in live_backends(op + "_backward")]


def _cases(op, shapes, small_only=False):
    out = []
    names = (SMALL_CONV if op in CONV_OPS else SMALL_ATTN) if small_only else shapes
    for s in names:
        if op.endswith("_train") and s == "n1":
            continue  # one value per channel: rejected like nn.BatchNorm2d (reliability tests)
        if op in CONV_OPS:
            for layout in ("nchw", "channels_last", "strided"):
                out.append(pytest.param(op, s, layout, None, id=f"{op}-{s}-{layout}"))
        else:
            for pool in POOLS:
                for layout in ("contiguous", "strided"):
                    out.append(pytest.param(op, s, layout, pool, id=f"{op}-{s}-{layout}-{pool}"))
    return out


def make(op, shape_name, layout, pool, dtype=torch.float32, seed=0):
    if op in CONV_OPS:
        return conv_args(op, CONV_SHAPES[shape_name], dtype, layout, seed).args
    return attn_args(op, ATTN_SHAPES[shape_name], pool, dtype, layout, seed).args


FWD_CASES = [
    c for op in ALL_OPS for c in _cases(op, CONV_SHAPES if op in CONV_OPS else ATTN_SHAPES)
]


@pytest.mark.parametrize("op,shape,layout,pool", FWD_CASES)
def test_forward_fp32_matches_reference(op, shape, layout, pool):
    args = make(op, shape, layout, pool)
    ref = _tuple(REF[op](*args))
    for backend in _backends(op):
        out = _tuple(_op(op)(*args, backend))
        assert len(out) == len(ref)
        for i, (o, r) in enumerate(zip(out, ref)):
            assert o.dtype == r.dtype
            assert_close(o, r, what=f"{op}[{backend}] output {i}")
        if args[0].dim() == 4:
            assert out[0].is_contiguous(memory_format=layout_of(args[0])), "layout not kept"
        else:
            assert out[0].is_contiguous()


@pytest.mark.parametrize(
    "op,shape,layout,pool", [c for op in ALL_OPS for c in _cases(op, None, True)]
)
def test_forward_fp64_matches_reference(op, shape, layout, pool):
    args = make(op, shape, layout, pool, dtype=torch.float64)
    ref = _tuple(REF[op](*args))
    for backend in _backends(op, torch.float64):
        out = _tuple(_op(op)(*args, backend))
        for i, (o, r) in enumerate(zip(out, ref)):
            assert o.dtype == torch.float64
            assert_close(o, r, what=f"{op}[{backend}] fp64 output {i}")


HALF_CASES = [
    c for op in ALL_OPS for c in _cases(op, None, small_only=True) if "strided" not in c.id
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("op,shape,layout,pool", HALF_CASES)
def test_forward_half_precision(op, shape, layout, pool, dtype):
    args32 = make(op, shape, layout, pool)
    args = cast(args32, dtype)
    ref32 = _tuple(REF[op](*args32))
    torch_half = _tuple(REF[op](*args))
    for backend in _backends(op, dtype):
        out = _tuple(_op(op)(*args, backend))
        assert out[0].dtype == dtype
        assert_close_half(out[0], ref32[0], torch_half[0], what=f"{op}[{backend}] {dtype}")


def _grads(fn, args, grad_seed=1):
    args = [
        a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args
    ]
    y = _tuple(fn(*args))[0]
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
    y.backward(g)
    return [a.grad for a in args if isinstance(a, torch.Tensor)]


BWD_CASES = [c for op in ALL_OPS for c in _cases(op, None, small_only=True)]


@pytest.mark.parametrize("op,shape,layout,pool", BWD_CASES)
def test_backward_fp32_matches_reference(op, shape, layout, pool):
    args = make(op, shape, layout, pool)
    ref = _grads(REF[op], args)
    for backend in _bwd_backends(op):
        got = _grads(lambda *a, backend=backend: _op(op)(*a, backend), args)
        for i, (g, r) in enumerate(zip(got, ref)):
            if r is None:
                assert g is None or not g.abs().any(), f"{op}[{backend}] grad {i} should be 0"
                continue
            assert g is not None, f"{op}[{backend}]: grad {i} missing"
            assert_close(g, r, torch.float32, what=f"{op}[{backend}] grad {i}")


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_leaves_its_input_gradient_untouched(op, dtype):
    """The incoming gradient belongs to autograd (and may be shared): no backend may write to it.
    The CUDA backward once did, through g.to(kFloat).mul_(...) -- a no-op cast for fp32."""
    shape = "odd_c33" if op in CONV_OPS else "odd_d33"
    args = make(op, shape, "channels_last" if op in CONV_OPS else "contiguous", "l2", dtype)
    y = _tuple(REF[op](*args))[0]
    mask = [True] * sum(isinstance(a, torch.Tensor) for a in args)
    grads = [torch.randn(y.shape).to(dtype)]
    if y.dim() == 4:
        grads.append(grads[0].contiguous(memory_format=torch.channels_last))
    for backend in _bwd_backends(op):
        for g in grads:
            keep = g.clone()
            getattr(torch.ops.swiftkern, op + "_backward")(g, *args, backend, mask)
            assert torch.equal(g, keep), f"{op}[{backend}] {dtype}: overwrote the gradient"


def test_sum_pool_gives_w_g_zero_gradient():
    args = make("additive_attention", "odd_d33", "contiguous", "sum")
    for backend in _bwd_backends("additive_attention"):
        grads = _grads(lambda *a, backend=backend: _op("additive_attention")(*a, backend), args)
        assert grads[3] is not None and grads[3].abs().max().item() == 0.0


def test_pool_variants_differ():
    # With randomized inputs the three POOL variants must give different results (SPEC.md 1);
    # a kernel that ignored `pool` would fail the per-variant reference comparisons above.
    outs = [
        R.additive_attention_ref(*make("additive_attention", "odd_d33", "contiguous", p))
        for p in POOLS
    ]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (outs[i] - outs[j]).abs().max().item() > 1e-3


TINY_CONV = (2, 5, 3, 4, 12)
TINY_ATTN = (2, 4, 6)


def tiny(op, dtype, layout=None, pool="l2"):
    if op in CONV_OPS:
        return conv_args(op, TINY_CONV, dtype, layout or "nchw").args
    return attn_args(op, TINY_ATTN, pool, dtype, layout or "contiguous").args


OPCHECK_CASES = [(op, pool) for op in CONV_OPS for pool in [None]] + [
    (op, pool) for op in ATTN_OPS for pool in POOLS
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("op,pool", OPCHECK_CASES)
def test_opcheck(op, pool, dtype):
    for layout in (None, "channels_last") if op in CONV_OPS else (None, "strided"):
        args = tiny(op, dtype, layout, pool or "l2")
        args = [a.requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
        torch.library.opcheck(_op(op).default, (*args, "auto"))


@pytest.mark.parametrize("op,pool", OPCHECK_CASES)
def test_gradcheck_fp64(op, pool):
    args = tiny(op, torch.float64, None, pool or "l2")
    idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    for backend in _bwd_backends(op):

        def f(*ts, backend=backend):
            full = list(args)
            for i, t in zip(idx, ts):
                full[i] = t
            return _tuple(_op(op)(*full, backend))[0]

        inputs = [args[i].detach().clone().requires_grad_(True) for i in idx]
        try:
            assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
        except NotImplementedError:
            # an explicitly named backend without fp64: that is a clear error, not a wrong result
            assert backend != "reference"


@pytest.mark.parametrize("op", ALL_OPS)
def test_compile_fullgraph(op):
    torch._dynamo.reset()
    args = tiny(op, torch.float32, None, "softmax")

    def f(*a):
        return _tuple(_op(op)(*a))[0]

    ref_args = [a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    cmp_args = [a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    y_ref = f(*ref_args)
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(*cmp_args)
    assert_close(y, y_ref, what=f"{op} compiled")
    y.sum().backward()
    y_ref.sum().backward()
    for a, b in zip(cmp_args, ref_args):
        if isinstance(a, torch.Tensor):
            assert_close(a.grad, b.grad, torch.float32, what=f"{op} compiled grad")


def test_unknown_backend_is_rejected():
    args = tiny("conv_block", torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        _op("conv_block")(*args, "gpu")


def test_explicit_backend_without_kernel_raises():
    args = tiny("conv_block", torch.float32)
    with pytest.raises(NotImplementedError, match="cannot serve"):
        _op("conv_block")(*args, "cuda")  # CPU tensors: the CUDA backend cannot serve them


@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda a: [a[0].to(torch.int32), *a[1:]], "floating"),
        (lambda a: [a[0][0], *a[1:]], "4-D"),
        (lambda a: [a[0], a[1][:, :, :2, :2], *a[2:]], "3x3"),
        (lambda a: [a[0], a[1], a[2], a[3][:, :3], *a[4:]], "pw1_w"),
        (lambda a: [a[0], a[1].double(), *a[2:]], "dtype"),
    ],
)
def test_bad_inputs_name_the_argument(bad, match):
    args = tiny("conv_block", torch.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        _op("conv_block")(*bad(args))
