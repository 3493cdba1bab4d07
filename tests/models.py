"""Model builders for tests (SPEC.md section 4: configs, random weights, never downloads)."""

from __future__ import annotations

import torch
from torch import nn

HF_SIZES = {
    "xs": ([3, 3, 6, 4], [48, 56, 112, 220]),
    "tiny": ([1, 1, 2, 1], [16, 24, 40, 56]),
}


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """SPEC.md 3: BN stats/affine and layer scales randomized so wrong kernels cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.2 + 1.0)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            for name, p in m.named_parameters(recurse=False):
                if "layer_scale" in name or name == "gamma":
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def hf_model(size: str = "tiny", seed: int = 0, **cfg) -> nn.Module:
    import transformers

    depths, dims = HF_SIZES[size]
    torch.manual_seed(seed)
    config = transformers.SwiftFormerConfig(depths=depths, embed_dims=dims, num_labels=10, **cfg)
    return randomize_(transformers.SwiftFormerForImageClassification(config).eval(), seed)


def timm_model(name: str = "swiftformer_xs", seed: int = 0, **kw) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return randomize_(timm.create_model(name, pretrained=False, **kw).eval(), seed)


def logits(out):
    return out.logits if hasattr(out, "logits") else out


class Holder(nn.Module):
    """A parent for a module under test (optimize() never replaces the root it is given)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)
