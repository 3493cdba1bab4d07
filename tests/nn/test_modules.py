"""Each fused module against the original HF / timm module it replaces, for its own variant."""

from __future__ import annotations

import copy

import pytest
import torch
from models import Holder, randomize_
from tolerances import assert_close

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
