"""Benchmark model builders: specs, randomization (SPEC.md section 3), stage shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swiftkern.bench import models


@pytest.mark.parametrize("spec,family,name", [
    ("xs", "hf", "xs"), ("hf:L3", "hf", "l3"), ("timm:s", "timm", "s"),
    ("timm:swiftformer_l1", "timm", "l1"), ("timm:resnet18", "timm", "resnet18"),
])
def test_parse_spec(spec, family, name):
    ms = models.parse_spec(spec)
    assert (ms.family, ms.name) == (family, name)


@pytest.mark.parametrize("bad", ["hf:resnet18", "onnx:xs"])
def test_parse_spec_rejects(bad):
    with pytest.raises(ValueError):
        models.parse_spec(bad)


def test_stage_shapes_xs():
    assert models.stage_shapes("xs", 2) == [
        (2, 48, 56, 56), (2, 56, 28, 28), (2, 112, 14, 14), (2, 220, 7, 7)]


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(64)
        self.layer_scale = nn.Parameter(1e-5 * torch.ones(64, 1, 1))
        self.block = nn.Module()
        self.block.gamma = nn.Parameter(torch.ones(64, 1, 1))
        self.conv = nn.Conv2d(64, 64, 1)


def test_randomize_ranges_and_determinism():
    a = models.randomize_(_Tiny(), seed=3)
    b = models.randomize_(_Tiny(), seed=3)
    c = models.randomize_(_Tiny(), seed=4)
    for t in (a.layer_scale.detach(), a.block.gamma.detach()):
        assert 0.5 <= float(t.min()) and float(t.max()) <= 1.5
    assert 0.5 <= float(a.bn.running_var.min()) and float(a.bn.running_var.max()) <= 2.0
    assert float(a.bn.running_mean.std()) > 0.2  # N(0, 0.5), not the default zeros
    assert float((a.bn.weight.detach() - 1).abs().max()) > 0.05
    assert torch.equal(a.bn.running_mean, b.bn.running_mean)
    assert not torch.equal(a.bn.running_mean, c.bn.running_mean)
    assert not models.is_layer_scale("conv.weight", a.conv.weight)


@pytest.mark.parametrize("spec", ["hf:xs", "timm:xs"])
def test_build_model_randomized_eval_logits(spec):
    m = models.build_model(spec, seed=0)
    assert not m.training
    ls = [p for n, p in m.named_parameters() if models.is_layer_scale(n, p)]
    # the 1e-5 inits are gone
    assert len(ls) > 10 and all(float(p.detach().min()) >= 0.5 for p in ls)
    with torch.no_grad():
        y = m(models.example_input(1, image_size=64))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
