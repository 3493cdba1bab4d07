"""Each fused module against the original HF / timm module it replaces, for its own variant."""

from __future__ import annotations

import copy

import pytest
import torch
from models import Holder, randomize_
from tolerances import assert_close, assert_close_half

from swiftkern.nn import FusedAdditiveAttention
from swiftkern.optimize import optimize

BACKENDS = ["auto", "reference"]


def _hf():
    import transformers
    from transformers.models.swiftformer import modeling_swiftformer as hf

    return transformers.SwiftFormerConfig(), hf


def _modules():
    """(id, original module, input) for every swappable class of both families."""
    from timm.models import swiftformer as tm

    cfg, hf = _hf()
    out = []
    for c, hw in ((48, 9), (33, 5)):
        x = torch.randn(2, c, hw, hw + 2)
        out += [
            (f"hf-convenc-{c}", hf.SwiftFormerConvEncoder(cfg, c), x),
            (f"hf-localrep-{c}", hf.SwiftFormerLocalRepresentation(cfg, c), x),
            (f"hf-mlp-{c}", hf.SwiftFormerMlp(cfg, c), x),
            (
                f"hf-attn-{c}",
                hf.SwiftFormerEfficientAdditiveAttention(cfg, c),
                torch.randn(2, hw * (hw + 2), c),
            ),
            (f"hf-block-{c}", hf.SwiftFormerEncoderBlock(cfg, c), x),
            (f"timm-convenc-{c}", tm.ConvEncoder(c, 4 * c), x),
            (f"timm-localrep-{c}", tm.LocalRepresentation(c), x),
            (f"timm-mlp-{c}", tm.Mlp(c, 4 * c), x),
            (f"timm-attn-{c}", tm.EfficientAdditiveAttention(c, c), x),
            (f"timm-block-{c}", tm.Block(c), x),
        ]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("idx", range(20))
def test_fused_module_matches_original_eval(idx, layout, backend):
    name, module, x = _modules()[idx]
    module = randomize_(module.eval(), idx)
    if layout == "channels_last":
        if x.dim() != 4:
            pytest.skip("token input")
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = module(x)
        holder, report = optimize(
            Holder(copy.deepcopy(module)), backend=backend, return_report=True
        )
        out = holder(x)
    if backend == "reference":
        assert report.swapped and report.swapped[-1].path == "m", str(report)
    assert_close(out, ref, what=name)


@pytest.mark.parametrize("family", ["hf", "timm"])
def test_attention_variant_follows_family(family):
    from timm.models import swiftformer as tm

    cfg, hf = _hf()
    m = (
        hf.SwiftFormerEfficientAdditiveAttention(cfg, 16)
        if family == "hf"
        else tm.EfficientAdditiveAttention(16, 16)
    )
    holder = optimize(Holder(m), backend="reference")
    assert isinstance(holder.m, FusedAdditiveAttention)
    assert holder.m.pool == {"hf": "sum", "timm": "l2"}[family]
    # The other family's variant gives a different answer on the same weights: swapping the pool
    # would be caught by test_fused_module_matches_original_eval.
    x = torch.randn(2, 16, 3, 5) if family == "timm" else torch.randn(2, 15, 16)
    with torch.no_grad():
        ref = m(x)
        holder.m.pool = {"hf": "l2", "timm": "sum"}[family]
        assert (holder(x) - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("idx", [0, 1, 2, 4, 5, 6, 7, 9])
def test_fused_module_matches_original_train(idx):
    """Train mode: batch statistics, running-stat updates and gradients match the original."""
    name, module, x = _modules()[idx]
    module = randomize_(module, idx).train()
    fused = optimize(Holder(copy.deepcopy(module)), backend="reference").m
    fused.train()
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = module(xa), fused(xb)
    assert_close(yb, ya, what=f"{name} train forward")
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert_close(xb.grad, xa.grad, torch.float32, what=f"{name} input grad")
    pa = dict(module.named_parameters())
    for n, p in fused.named_parameters():
        assert_close(p.grad, pa[n].grad, torch.float32, what=f"{name} grad {n}")
    ba = dict(module.named_buffers())
    for n, b in fused.named_buffers():
        if b.is_floating_point():
            assert_close(b, ba[n], torch.float32, what=f"{name} buffer {n}")
        else:
            assert torch.equal(b, ba[n]), n


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("groups", [1, 3])
def test_folded_conv_packed_weight(layout, groups):
    """Folded convs without autograd on channels_last fp32 CPU input run oneDNN on a weight
    reordered once and cached; the result matches the original pair, keeps the input's layout,
    follows in-place weight updates, and autograd still runs through F.conv2d."""
    from swiftkern.nn import _base

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(6, 9, 3, stride=2, padding=1, groups=groups),
        torch.nn.BatchNorm2d(9),
        torch.nn.ReLU(),
    )
    randomize_(model).eval()
    opt = optimize(copy.deepcopy(model))
    folded = opt[0]
    assert type(folded).__name__ == "FoldedConv2d"
    x = torch.randn(3, 6, 11, 13)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # build, then cache hit
        with torch.no_grad():
            got, ref = opt(x), model(x)
        assert_close(got, ref, torch.float32, what="packed conv")
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert got.is_contiguous(memory_format=fmt)
    # channels_last inputs only (oneDNN would hand back channels_last for NCHW ones)
    assert ("conv_packed" in folded._cache) == (_base._PACKED_CONV and layout == "channels_last")
    with torch.no_grad():
        for m in (model, opt):
            m[0].weight.mul_(-1.5)
            m[1].running_var.mul_(2.0)
        assert_close(opt(x), model(x), torch.float32, what="after in-place updates")
    # with autograd: the graph runs through F.conv2d on the folded weight
    x.requires_grad_(True)
    got = opt(x)
    got.square().sum().backward()
    gx, gw = x.grad.clone(), opt[0].weight.grad.clone()
    x.grad = None
    model(x).square().sum().backward()
    assert_close(gx, x.grad, torch.float32, what="input grad")
    assert_close(gw, model[0].weight.grad, torch.float32, what="weight grad")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("native", [False, True])
def test_folded_conv_half_in_fp32(monkeypatch, dtype, layout, native):
    """A bf16 / fp16 folded conv on a CPU whose oneDNN has no kernels for that dtype (ATen's slow
    reference conv otherwise) runs in fp32 on the same half values and rounds once: bit for bit
    the fp32 conv of the upcast operands, within the SPEC half rule of the fp32 module, in the
    input's layout. Where the dtype is native, or autograd needs a graph, F.conv2d runs as is."""
    from swiftkern.nn import _base

    monkeypatch.setattr(_base, "_native_half_conv", lambda dt: native)
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(5, 7, 3, stride=2, padding=1), torch.nn.BatchNorm2d(7)
    )
    randomize_(model).eval()
    opt = optimize(copy.deepcopy(model), dtype=dtype)
    folded = opt[0]
    x32 = torch.randn(2, 5, 9, 11)
    if layout == "channels_last":
        x32 = x32.contiguous(memory_format=torch.channels_last)
    x = x32.to(dtype)
    with torch.no_grad():
        got = opt(x)
        w, b = folded.cached("conv", _base.fold_sources(folded, opt[1]), None)  # built above
        plain = torch.nn.functional.conv2d(x, w, b, 2, 1)
        upcast = torch.nn.functional.conv2d(x.float(), w.float(), b.float(), 2, 1).to(dtype)
        ref32 = model(x32)
        eager_half = copy.deepcopy(model).to(dtype)(x)
    assert got.dtype == dtype
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)
    assert torch.equal(got, plain if native else upcast)
    assert ("conv_fp32_w" in folded._cache) == (not native)
    assert_close_half(got, ref32, eager_half, what=f"{dtype} folded conv")
    # with autograd the graph runs through F.conv2d on the half operands
    xg = x.clone().requires_grad_(True)
    assert torch.equal(opt(xg).detach(), plain)


def test_folded_conv_traces_as_a_plain_conv():
    """torch.jit.trace / ONNX export of an optimized model see F.conv2d, not the oneDNN op with
    its opaque weight."""
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
    randomize_(model).eval()
    opt = optimize(copy.deepcopy(model))
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        traced = torch.jit.trace(opt, (x,))
        assert "mkldnn" not in str(traced.inlined_graph)
        assert_close(traced(x), model(x), torch.float32, what="traced")


@pytest.mark.parametrize("native_flags", [(False, False), (True, False), (False, True)])
def test_native_half_conv_needs_half_arithmetic(monkeypatch, native_flags):
    """oneDNN says bf16 is "supported" on any AVX-512 CPU, where it emulates bf16 and ran the
    stem / downsample convs 2.5-3.6x slower than fp32: only AVX512-BF16 or AMX counts as native."""
    from swiftkern.nn import _base

    avx512_bf16, amx = native_flags
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    expected = (avx512_bf16 or amx) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert _base._native_half_conv(torch.bfloat16) == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("idx", [0, 1, 2, 3, 4, 5, 7, 8, 9])
def test_half_cpu_modules_use_cached_fp32_params(idx, dtype):
    """bf16 / fp16 activations on a CPU: the fused modules hand the C++ kernels cached fp32
    up-conversions of their parameters instead of letting them convert on every call. Outputs
    are bit for bit those of the plain op call; an in-place parameter change rebuilds the copies;
    under autograd the plain call runs (its graph needs the half parameters)."""
    from swiftkern import _registry
    from swiftkern.nn import _base

    if _registry.resolve("conv_block", "auto", torch.device("cpu"), dtype) != "cpu":
        pytest.skip("no C++ CPU kernels loaded")
    _name, original, x = _modules()[idx]
    randomize_(original).eval()
    opt = optimize(Holder(copy.deepcopy(original)), dtype=dtype)
    x = x.to(dtype)

    def plain(self, op, *args, record=None):
        return op(*args)

    def run():
        with torch.no_grad():
            return opt(x)

    def fp32_caches():
        return [k for m in opt.modules() if isinstance(m, _base.FusedModule)
                for k in m._cache if k.startswith("fp32:")]

    got = run()
    assert fp32_caches(), "the fp32 parameter path was not taken"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_base.FusedModule, "call_op", plain)
        mp.setenv("SWIFTKERN_PLANS", "0")  # no replay of the call recorded by run()
        want = run()
    assert torch.equal(got, want)
    # an in-place change to a parameter (an optimizer step) must not leave a stale copy
    with torch.no_grad():
        for p in opt.parameters():
            p.mul_(1.25)
    got = run()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_base.FusedModule, "call_op", plain)
        mp.setenv("SWIFTKERN_PLANS", "0")
        want = run()
    assert torch.equal(got, want)
    # autograd: the plain op call (gradients flow to the half parameters)
    for m in opt.modules():
        if isinstance(m, _base.FusedModule):
            m._cache.clear()
    xg = x.clone().requires_grad_(True)
    out = opt(xg)
    assert not fp32_caches()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_base.FusedModule, "call_op", plain)
        assert torch.equal(out, opt(xg))


@pytest.mark.parametrize("pack", ["mkl", "onednn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["convenc", "block"])
def test_cpu_modules_use_packed_weights(monkeypatch, kind, dtype, pack):
    """channels_last CPU calls whose shape runs whole-tensor pointwise GEMMs use fp32 weights
    (bf16: the modules' fp32 copies) packed once (for MKL, or oneDNN's 1x1 convolution: forced
    here by SWIFTKERN_CPU_PACK) and cached per row count (at most two): results within the
    dtype's rule of the original module, repacked after an in-place change, never under
    autograd."""
    from swiftkern import _registry
    from swiftkern.nn import _base

    if pack == "onednn" and not _base._PACKED_CONV:
        pytest.skip("needs oneDNN's convolution ops")
    monkeypatch.setenv("SWIFTKERN_CPU_PACK", pack)

    if not _base._MKL_PACK or _registry.resolve(
        "conv_block", "auto", torch.device("cpu"), torch.float32
    ) != "cpu":
        pytest.skip("needs the C++ CPU kernels and an MKL build of torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the strategy rules depend on it; the shapes are chosen for 2
    try:
        _check_packed_module(monkeypatch, kind, dtype, _base, pack)
    finally:
        torch.set_num_threads(threads)


def _check_packed_module(monkeypatch, kind, dtype, _base, pack):
    cfg, hf = _hf()
    c = 130  # pw1 weight 270 KB: packable at 7x5 with few tiles
    cls = hf.SwiftFormerConvEncoder if kind == "convenc" else hf.SwiftFormerEncoderBlock
    original = cls(cfg, c)
    randomize_(original).eval()
    opt = optimize(Holder(copy.deepcopy(original)), dtype=dtype)
    half = copy.deepcopy(original).to(dtype)  # eager at the dtype (the half rule's baseline)

    def packed_keys():
        return [k for m in opt.modules() if isinstance(m, _base.FusedModule)
                for k in m._cache if k.startswith(f"{pack}:")]

    def x_of(b):
        return torch.randn(b, c, 7, 5).contiguous(memory_format=torch.channels_last)

    def check(got, x32, what):
        if dtype == torch.float32:
            assert_close(got, original(x32), what=what)
        else:
            assert_close_half(got, original(x32), half(x32.to(dtype)), what=what)

    x = x_of(1)
    with torch.no_grad():
        got = opt(x.to(dtype))
        assert packed_keys(), "the packed path was not taken"
        if kind == "block":  # attention's w_qk (260 x 130 fp32) is over the 128 KiB floor
            assert any(k.startswith(f"{pack}:additive_attention:") for k in packed_keys())
        check(got, x, f"{kind} packed vs original")
        monkeypatch.setenv("SWIFTKERN_CPU_PACKED", "0")
        check(opt(x.to(dtype)), x, f"{kind} unpacked vs original")
        monkeypatch.delenv("SWIFTKERN_CPU_PACKED")
        for m in (opt, original, half):
            for p in m.parameters():
                p.mul_(1.25)
        check(opt(x.to(dtype)), x, f"{kind} after an in-place change")
        for b in (2, 3, 1):
            xb = x_of(b)
            check(opt(xb.to(dtype)), xb, f"{kind} batch {b}")
        mods = [m for m in opt.modules() if isinstance(m, _base.FusedModule)]
        for m in mods:
            packed = [k for k in m._cache if k.startswith(("mkl:", "onednn:"))]
            assert len(packed) <= _base._MAX_PACKED
    for m in mods:
        m._cache.clear()
    xg = x.to(dtype).requires_grad_(True)
    out = opt(xg)
    out.float().sum().backward()
    assert not packed_keys()
    with torch.no_grad():
        check(out.detach(), x, f"{kind} under autograd")
