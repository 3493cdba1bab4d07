"""Benchmark models: HF transformers and timm SwiftFormer (random weights, no downloads).

A model spec is a string:
  "xs" | "s" | "l1" | "l3"        HF transformers SwiftFormer of that size (SPEC.md section 4)
  "hf:xs" ...                     the same, explicit
  "timm:xs" ...                   timm ``swiftformer_xs`` ...
  "timm:<name>"                   any other timm model by name (``pretrained=False``)
Every builder returns a module in eval mode whose forward maps ``[B, 3, H, W]`` to logits
``[B, classes]`` (HF's output object is unwrapped), so every provider sees the same callable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

HF_SIZES: dict[str, tuple[list[int], list[int]]] = {
    "xs": ([3, 3, 6, 4], [48, 56, 112, 220]),
    "s": ([3, 3, 9, 6], [48, 64, 168, 224]),
    "l1": ([4, 3, 10, 5], [48, 96, 192, 384]),
    "l3": ([4, 4, 12, 6], [64, 128, 320, 512]),
}
SIZES = tuple(HF_SIZES)
IMAGE_SIZE = 224


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "hf" or "timm"
    name: str  # "xs" ... for SwiftFormer sizes, else the timm model name

    @property
    def label(self) -> str:
        return f"{self.family}:{self.name}"


def parse_spec(spec: str) -> ModelSpec:
    s = spec.strip()
    family, _, name = s.rpartition(":")
    family = family.lower() or "hf"
    if family not in ("hf", "timm"):
        raise ValueError(f"model spec {spec!r}: family must be 'hf' or 'timm'")
    low = name.lower()
    if low.startswith("swiftformer_") and low[len("swiftformer_"):] in HF_SIZES:
        low = low[len("swiftformer_"):]
    if low in HF_SIZES:
        return ModelSpec(family, low)
    if family == "hf":
        raise ValueError(f"model spec {spec!r}: HF sizes are {SIZES}; other models need 'timm:'")
    return ModelSpec("timm", name)


class LogitsOnly(nn.Module):
    """Wraps an HF image classifier so forward(x) returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits


def build_hf(size: str, num_labels: int = 1000) -> nn.Module:
    import transformers

    depths, dims = HF_SIZES[size]
    cfg = transformers.SwiftFormerConfig(depths=depths, embed_dims=dims, num_labels=num_labels)
    return LogitsOnly(transformers.SwiftFormerForImageClassification(cfg))


def build_timm(name: str) -> nn.Module:
    import timm

    if name in HF_SIZES:
        name = f"swiftformer_{name}"
    return timm.create_model(name, pretrained=False)


def build_model(spec: str | ModelSpec, seed: int = 0, randomize: bool = True) -> nn.Module:
    """Build the model of ``spec`` with seeded random weights, randomized per SPEC.md section 3."""
    ms = parse_spec(spec) if isinstance(spec, str) else spec
    torch.manual_seed(seed)
    model = build_hf(ms.name) if ms.family == "hf" else build_timm(ms.name)
    if randomize:
        randomize_(model, seed)
    return model.eval()


_LAYER_SCALE = re.compile(r"(^|\.)(layer_scale(_\d+)?|gamma)$")


def is_layer_scale(name: str, p: torch.Tensor) -> bool:
    """HF ``layer_scale``/``layer_scale_1``/``_2``, timm ``LayerScale2d.gamma`` ([C] or [C,1,1])."""
    return (bool(_LAYER_SCALE.search(name)) and p.dim() in (1, 3)
            and all(s == 1 for s in p.shape[1:]))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomize BatchNorm statistics/affine and layer scales (SPEC.md section 3), in place.

    Default init makes SwiftFormer blocks near-identity (ls = 1e-5, BN = identity), which hides
    wrong kernels and makes output differences meaningless. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, kind: str, a: float, b: float) -> None:
        r = torch.empty(t.shape, dtype=torch.float32)
        if kind == "normal":
            r.normal_(a, b, generator=g)
        else:
            r.uniform_(a, b, generator=g)
        t.copy_(r.to(t.dtype))

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                fill(m.running_mean, "normal", 0.0, 0.5)
                fill(m.running_var, "uniform", 0.5, 2.0)
            if m.weight is not None:
                fill(m.weight, "normal", 1.0, 0.2)
                fill(m.bias, "normal", 0.0, 0.2)
    for name, p in model.named_parameters():
        if is_layer_scale(name, p):
            fill(p, "uniform", 0.5, 1.5)
    return model


def example_input(batch: int, seed: int = 1, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, image_size, image_size, generator=g)


def stage_shapes(size: str, batch: int = 1, image_size: int = IMAGE_SIZE):
    """The four SwiftFormer stage activations ``[(B, C, H, W)]`` (strides 4, 8, 16, 32)."""
    _, dims = HF_SIZES[size]
    strides = (4, 8, 16, 32)
    return [(batch, c, image_size // s, image_size // s)
            for c, s in zip(dims, strides, strict=True)]
