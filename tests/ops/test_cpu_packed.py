"""The CPU-only *_packed kernels (pointwise weights packed for MKL's sgemm or for oneDNN's 1x1
convolution, called by the fused modules on plain eager fp32 calls; swiftkern/nn/_base.py
call_op) against the reference, and the rules that decide when they serve
(swiftkern_C::pointwise_packable) and which packing (swiftkern.nn._base._pack_kind)."""

from __future__ import annotations

import pytest
import torch
from tolerances import assert_close, assert_close_half

from swiftkern import _ext
from swiftkern.nn import _base
from swiftkern.ops import reference as R

pytestmark = pytest.mark.skipif(
    _ext.CPU_ISA is None
    or not hasattr(torch.ops.swiftkern_C, "conv_block_packed")
    or not torch.backends.mkl.is_available(),
    reason="needs the C++ CPU kernels and an MKL build of torch",
)


@pytest.fixture(autouse=True)
def two_threads():
    """The strategy rules depend on the thread count; these shapes are chosen for 2."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


KINDS = ["mkl"] + (["onednn"] if _base._PACKED_CONV else [])


def _pack(w, rows, kind="mkl"):
    return _base._pack(w, rows, kind)


def _params(c, hd, co, seed, ls=True, biases=True):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=g) * scale

    return dict(
        dw_w=r(c, 1, 3, 3, scale=0.3),
        dw_b=r(c) if biases else None,
        w1=r(hd, c, scale=c**-0.5),
        b1=r(hd) if biases else None,
        w2=r(co, hd, scale=hd**-0.5),
        b2=r(co) if biases else None,
        ls=r(co) if ls else None,
    )


# (batch, C, H, W): packable shapes (whole-tensor GEMMs, pw1 weight >= 128 KiB), odd sizes;
# 260 channels make both weights > 2 MB together (the wide-weight rule), 97 / 7x5 the few-tiles
# rule, and batch 1 at 7x5 the few-pixel shapes the hidden-split strategy served before.
SHAPES = [(1, 97, 7, 5), (2, 97, 7, 5), (3, 260, 6, 5), (1, 130, 13, 11)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("extras", ["all", "bare"])
def test_packed_ops_match_reference(shape, extras, kind):
    b, c, h, w = shape
    p = _params(c, 4 * c, c, seed=c + b, ls=extras == "all", biases=extras == "all")
    x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
    res = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
    assert torch.ops.swiftkern_C.pointwise_packable(x, p["w1"], p["w2"])
    rows = b * h * w
    p1, p2 = _pack(p["w1"], rows, kind), _pack(p["w2"], rows, kind)
    assert p1.dim() == (4 if kind == "onednn" else 2)  # the rank packed_linear dispatches on
    got = torch.ops.swiftkern_C.conv_block_packed(
        x, p["dw_w"], p["dw_b"], p["w1"], p["b1"], p["w2"], p["b2"], p["ls"], p1, p2
    )
    ref = R.conv_block_ref(x, p["dw_w"], p["dw_b"], p["w1"], p["b1"], p["w2"], p["b2"], p["ls"])
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close(got, ref, what=f"conv_block_packed {kind} {shape}")
    residual = res if extras == "all" else None
    got = torch.ops.swiftkern_C.mlp_packed(
        x, p["w1"], p["b1"], p["w2"], p["b2"], p["ls"], residual, p1, p2
    )
    ref = R.mlp_ref(x, p["w1"], p["b1"], p["w2"], p["b2"], p["ls"], residual)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close(got, ref, what=f"mlp_packed {kind} {shape}")


@pytest.mark.parametrize("kind", KINDS)
def test_packed_for_other_rows_is_still_right(kind):
    """A weight packed for another row count: ATen's mkl_linear then runs its plain linear;
    oneDNN's convolution takes a weight reordered for another input shape as well."""
    b, c, h, w = 1, 97, 7, 5
    p = _params(c, 4 * c, c, seed=3)
    x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
    got = torch.ops.swiftkern_C.conv_block_packed(
        x, p["dw_w"], p["dw_b"], p["w1"], p["b1"], p["w2"], p["b2"], p["ls"],
        _pack(p["w1"], 64, kind), _pack(p["w2"], 64, kind),
    )
    ref = R.conv_block_ref(x, p["dw_w"], p["dw_b"], p["w1"], p["b1"], p["w2"], p["b2"], p["ls"])
    assert_close(got, ref, what=f"{kind} packed for 64 rows, run on 35")


@pytest.mark.skipif(not _base._PACKED_CONV, reason="needs oneDNN's convolution ops")
@pytest.mark.parametrize("which", ["pw1 in", "pw1 out", "pw2 out"])
def test_onednn_packed_weight_of_other_shape_is_refused(which):
    """A oneDNN-packed weight of another shape than the weight it stands for (the kernels index
    the product by the weight's shape): a clear error, not a read past a buffer."""
    b, c, h, w = 1, 97, 7, 5
    p = _params(c, 4 * c, c, seed=5)
    x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
    rows = b * h * w
    shape = {"pw1 in": (4 * c, c + 1), "pw1 out": (4 * c - 8, c), "pw2 out": (c - 1, 4 * c)}
    wrong = _pack(torch.randn(*shape[which]), rows, "onednn")
    p1, p2 = _pack(p["w1"], rows, "onednn"), _pack(p["w2"], rows, "onednn")
    p1, p2 = (wrong, p2) if which.startswith("pw1") else (p1, wrong)
    with pytest.raises(RuntimeError, match="does not match"):
        torch.ops.swiftkern_C.conv_block_packed(
            x, p["dw_w"], p["dw_b"], p["w1"], p["b1"], p["w2"], p["b2"], p["ls"], p1, p2
        )


@pytest.mark.parametrize(
    "amd, op, rows, c, forced, kind",
    [
        (True, "conv_block", 49, 384, None, "onednn"),  # measured 1.20x over MKL (Zen 3)
        (True, "mlp", 49, 512, None, "onednn"),  # 1.32x
        (True, "conv_block", 49, 220, None, "mkl"),  # 0.93x: MKL stays
        (True, "conv_block", 196, 384, None, "mkl"),  # more than 64 rows
        (True, "additive_attention", 49, 384, None, "mkl"),  # w_qk 1.2 MB: 1.02x, MKL stays
        (True, "additive_attention", 49, 512, None, "onednn"),  # w_qk 2.1 MB: 1.11x
        (False, "conv_block", 49, 384, None, "mkl"),  # Intel keeps MKL
        (True, "conv_block", 49, 384, "mkl", "mkl"),  # SWIFTKERN_CPU_PACK forces
        (False, "conv_block", 49, 97, "onednn", "onednn"),
        (True, "conv_block", 49, 384, "auto", "onednn"),  # any other value: the rule
    ],
)
def test_pack_kind_rule(monkeypatch, amd, op, rows, c, forced, kind):
    if kind == "onednn" and not _base._PACKED_CONV:
        pytest.skip("needs oneDNN's convolution ops")
    monkeypatch.setattr(_base, "_ONEDNN_PACK", amd and _base._PACKED_CONV)
    if forced is None:
        monkeypatch.delenv("SWIFTKERN_CPU_PACK", raising=False)
    else:
        monkeypatch.setenv("SWIFTKERN_CPU_PACK", forced)
    w1 = torch.empty(4 * c, c) if op != "additive_attention" else torch.empty(2 * c, c)
    assert _base._pack_kind(rows, w1) == kind


@pytest.mark.parametrize(
    "case, packable",
    [
        ((1, 97, 7, 5, "cl", torch.float32), True),
        ((1, 97, 7, 5, "nchw", torch.float32), False),  # channel-major GEMMs are not packed
        ((1, 97, 7, 5, "cl", torch.float64), False),
        ((1, 97, 7, 5, "cl", torch.bfloat16), True),  # computed in fp32 on fp32 weights
        ((1, 56, 28, 28, "cl", torch.float32), False),  # 50 KB pw1 weight: measured 0.96x
        # many tiles: with one thread the tile strategy; with two, weights over 256 KiB run
        # the whole-tensor GEMMs anyway (kUnfusedWeightBytesCl)
        ((16, 97, 56, 56, "cl", torch.float32, 1), False),
        ((16, 97, 56, 56, "cl", torch.float32, 2), True),
    ],
)
def test_pointwise_packable_rule(case, packable):
    b, c, h, w, layout, dtype, *threads = case
    if threads:
        torch.set_num_threads(threads[0])  # restored by the two_threads fixture
    x = torch.randn(b, c, h, w, dtype=dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    w1, w2 = torch.randn(4 * c, c, dtype=dtype), torch.randn(c, 4 * c, dtype=dtype)
    assert torch.ops.swiftkern_C.pointwise_packable(x, w1, w2) == packable


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_ops_half_x_fp32_weights(dtype, kind):
    """bf16 / fp16 x with fp32 weights (the fused modules' cached fp32 copies of half
    parameters): computed in fp32, rounded once; within the half rule of the fp32 reference."""
    b, c, h, w = 2, 97, 7, 5
    p = _params(c, 4 * c, c, seed=11)
    p = {k: (v.to(dtype).float() if v is not None else None) for k, v in p.items()}
    x = torch.randn(b, c, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
    assert torch.ops.swiftkern_C.pointwise_packable(x, p["w1"], p["w2"])
    p1, p2 = _pack(p["w1"], b * h * w, kind), _pack(p["w2"], b * h * w, kind)
    args = (p["dw_w"], p["dw_b"], p["w1"], p["b1"], p["w2"], p["b2"], p["ls"])
    got = torch.ops.swiftkern_C.conv_block_packed(x, *args, p1, p2)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    ref32 = R.conv_block_ref(x.float(), *args)
    eager_half = R.conv_block_ref(x, *[a.to(dtype) if a is not None else None for a in args])
    assert_close_half(got, ref32, eager_half, what=f"conv_block_packed {dtype}")
    margs = (p["w1"], p["b1"], p["w2"], p["b2"], p["ls"])
    got = torch.ops.swiftkern_C.mlp_packed(x, *margs, x, p1, p2)
    ref32 = R.mlp_ref(x.float(), *margs, x.float())
    eager_half = R.mlp_ref(x, *[a.to(dtype) for a in margs], x)
    assert_close_half(got, ref32, eager_half, what=f"mlp_packed {dtype}")


@pytest.mark.parametrize("pool", ["sum", "l2", "softmax"])
@pytest.mark.parametrize("shape", [(1, 49, 131), (3, 10, 130)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_final", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_attention_packed_matches_reference(pool, shape, with_final, kind):
    b, n, d = shape
    g = torch.Generator().manual_seed(d + n)

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=g) * scale

    x = r(b, n, d)
    w_qk, b_qk, w_g = r(2 * d, d, scale=d**-0.5), r(2 * d), r(d)
    w_proj, b_proj = r(d, d, scale=d**-0.5), r(d)
    w_final, b_final = (r(d + 3, d, scale=d**-0.5), r(d + 3)) if with_final else (None, None)
    args = (x, w_qk, b_qk, w_g, d**-0.5, w_proj, b_proj, w_final, b_final, pool)
    pq = _pack(w_qk, b * n, kind)
    pf = _pack(w_final, b * n, kind) if with_final else None
    got = torch.ops.swiftkern_C.additive_attention_packed(*args, pq, pf)
    ref = R.additive_attention_ref(*args)
    assert_close(got, ref, what=f"attention_packed {kind} {shape} {pool}")
    if with_final:  # the packed final weight is required exactly with w_final
        with pytest.raises(RuntimeError, match="w_final_packed"):
            torch.ops.swiftkern_C.additive_attention_packed(*args, pq, None)
    # bf16 x with the fp32 weights (the fused modules' cached copies): the half rule
    xh = x.to(torch.bfloat16)
    w32 = [a.to(torch.bfloat16).float() if isinstance(a, torch.Tensor) else a for a in args[1:]]
    pq = _pack(w32[0], b * n, kind)
    pf = _pack(w32[6], b * n, kind) if with_final else None
    got = torch.ops.swiftkern_C.additive_attention_packed(xh, *w32, pq, pf)
    assert got.dtype == torch.bfloat16
    ref32 = R.additive_attention_ref(xh.float(), *w32)
    eager_half = R.additive_attention_ref(
        xh, *[a.to(torch.bfloat16) if isinstance(a, torch.Tensor) else a for a in w32]
    )
    assert_close_half(got, ref32, eager_half, what=f"attention_packed bf16 {shape} {pool}")


def test_unfused_weight_threshold_override(monkeypatch):
    """SWIFTKERN_CPU_UNFUSED_BYTES moves the channels_last tile / whole-tensor GEMM switch (A/B
    benchmarks): above the weights' size, many tiles run the tile strategy again."""
    x = torch.randn(16, 97, 56, 56).contiguous(memory_format=torch.channels_last)
    w1, w2 = torch.randn(4 * 97, 97), torch.randn(97, 4 * 97)
    assert torch.ops.swiftkern_C.pointwise_packable(x, w1, w2)
    monkeypatch.setenv("SWIFTKERN_CPU_UNFUSED_BYTES", str(2 << 20))
    assert not torch.ops.swiftkern_C.pointwise_packable(x, w1, w2)
