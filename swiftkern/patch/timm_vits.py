"""Depthwise-conv + BN blocks and conv-MLP blocks of other timm ViTs (repvit, fastvit,
efficientvit_msra), matched by exact class and checked structure; see swiftkern/nn/reparam.py
for the math of each."""

from __future__ import annotations

import importlib
import sys

from torch import nn

from ..nn.reparam import (
    FusedRepMixer,
    FusedRepMixerBlock,
    FusedRepVggDw,
    FusedRepViTBlock,
    FusedResidualDwConvBN,
    conv_bn_pair,
)
from . import Rule
from ._checks import drop_reason, is_exact_gelu


def base(m: nn.Module | None) -> type | None:
    """The class a module computes: its own, or the one a swiftkern stand-in replaced."""
    if m is None:
        return None
    return getattr(m, "original_cls", type(m))


def conv_like(m, name: str, k: int, c: int | None, depthwise: bool) -> str | None:
    if base(m) is not nn.Conv2d:
        return f"{name} is {type(m).__name__}, not nn.Conv2d"
    if m.kernel_size != (k, k) or m.stride != (1, 1) or m.dilation != (1, 1):
        return f"{name} is not a {k}x{k} stride-1 conv"
    if m.padding != (k // 2, k // 2) or m.padding_mode != "zeros":
        return f"{name} padding differs from {k // 2} zeros"
    if c is not None and m.in_channels != c:
        return f"{name} has {m.in_channels} input channels, expected {c}"
    groups = m.in_channels if depthwise else 1
    if m.groups != groups or (depthwise and m.out_channels != m.in_channels):
        return f"{name} is not {'depthwise' if depthwise else 'dense'} (groups={m.groups})"
    return None


def bn_like(m, name: str, c: int) -> str | None:
    cls = base(m)
    ok = cls is nn.BatchNorm2d
    if not ok and "timm" in sys.modules:
        from timm.layers import BatchNormAct2d

        ok = cls is BatchNormAct2d and all(
            isinstance(getattr(m, a, None), nn.Identity) for a in ("act", "drop")
        )
    if not ok:
        return f"{name} is {type(m).__name__}, not a plain BatchNorm2d"
    if m.num_features != c:
        return f"{name} has {m.num_features} features, expected {c}"
    if m.running_var is None:
        return f"{name} keeps no running statistics"
    return None


def conv_norm(m, name: str, k: int, c: int | None, depthwise: bool) -> str | None:
    """A timm ConvNorm / ConvNormAct(no act) with children (conv, bn) and no extras."""
    kids = list(m._modules.items()) if isinstance(m, nn.Module) else []
    extra = [n for n, mod in kids[2:] if not isinstance(mod, nn.Identity)]
    if len(kids) < 2 or extra:
        return f"{name} is not a (conv, bn) pair"
    if not (isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward):
        from timm.layers import ConvNormAct

        if type(m) is not ConvNormAct:
            return f"{name} is {type(m).__name__}, whose forward is not bn(conv(x))"
    conv, bn = kids[0][1], kids[1][1]
    return conv_like(conv, f"{name}.conv", k, c, depthwise) or bn_like(
        bn, f"{name}.bn", conv.out_channels
    )


def layer_scale_classes() -> tuple[type, ...]:
    """timm's LayerScale2d and fastvit's own copy: both forward x * gamma (per channel)."""
    from timm.layers import LayerScale2d

    out = [LayerScale2d]
    try:
        from timm.models.fastvit import LayerScale2d as FastVitLayerScale2d

        out.append(FastVitLayerScale2d)
    except ImportError:
        pass
    return tuple(out)


def layer_scale_reason(ls, c: int) -> str | None:
    if isinstance(ls, nn.Identity):
        return None
    if type(ls) not in layer_scale_classes() or ls.inplace or ls.gamma.numel() != c:
        return f"layer_scale is {type(ls).__name__}, not a per-channel LayerScale2d"
    return None


def first(*reasons: str | None) -> str | None:
    return next((r for r in reasons if r), None)


# repvit ---------------------------------------------------------------------------------------


def repvggdw_reason(m) -> str | None:
    c = m.dim
    return first(
        conv_norm(m.conv, "conv", 3, c, True),
        conv_norm(m.conv1, "conv1", 1, c, True)
        if m.legacy
        else conv_like(m.conv1, "conv1", 1, c, True),
        None if m.legacy else bn_like(m.bn, "bn", c),
        None if not m.legacy or isinstance(m.bn, nn.Identity) else "legacy RepVggDw with a bn",
    )


def repvit_block_reason(m) -> str | None:
    cm = m.channel_mixer
    if type(cm).__name__ != "RepVitMlp":
        return f"channel_mixer is {type(cm).__name__}"
    (c1, _), (c2, _) = conv_bn_pair(cm.conv1), conv_bn_pair(cm.conv2)
    c, hidden = c1.in_channels, c1.out_channels
    return first(
        conv_norm(cm.conv1, "channel_mixer.conv1", 1, c, False),
        conv_norm(cm.conv2, "channel_mixer.conv2", 1, hidden, False),
        None if is_exact_gelu(cm.act) else f"channel_mixer.act is {cm.act!r}, not exact GELU",
        None if c2.out_channels == c else "channel_mixer does not map back to its input channels",
    )


# fastvit --------------------------------------------------------------------------------------


def mobileone_reason(b, name: str, c: int) -> str | None:
    if getattr(b, "reparam_conv", None) is not None:
        return f"{name} is already re-parameterized"
    if not (isinstance(b.se, nn.Identity) and isinstance(b.act, nn.Identity)):
        return f"{name} has an activation or SE"
    reasons = [None if b.identity is None else bn_like(b.identity, f"{name}.identity", c)]
    if b.conv_scale is not None:
        reasons.append(conv_norm(b.conv_scale, f"{name}.conv_scale", 1, c, True))
    for i, br in enumerate(b.conv_kxk or ()):
        reasons.append(conv_norm(br, f"{name}.conv_kxk.{i}", 3, c, True))
    return first(*reasons)


def repmixer_reason(m) -> str | None:
    if m.reparam_conv is not None:
        return "already re-parameterized (reparam_conv)"
    if m.kernel_size != 3:
        return f"kernel_size {m.kernel_size}: the fused depthwise kernel is 3x3"
    c = m.dim
    return first(
        mobileone_reason(m.mixer, "mixer", c),
        mobileone_reason(m.norm, "norm", c),
        layer_scale_reason(m.layer_scale, c),
    )


def repmixer_block_reason(m) -> str | None:
    mlp = m.mlp
    if type(mlp).__name__ != "ConvMlp" or not hasattr(mlp, "fc1"):
        return f"mlp is {type(mlp).__name__}"
    c = mlp.fc1.in_channels
    return first(
        conv_like(mlp.fc1, "mlp.fc1", 1, c, False),
        conv_like(mlp.fc2, "mlp.fc2", 1, mlp.fc1.out_channels, False),
        None if mlp.fc2.out_channels == c else "mlp does not map back to its input channels",
        None if is_exact_gelu(mlp.act) else f"mlp.act is {mlp.act!r}, not exact GELU",
        drop_reason(mlp.drop, "mlp.drop"),
        drop_reason(m.drop_path, "drop_path"),
        layer_scale_reason(m.layer_scale, c),
    )


# efficientvit_msra ----------------------------------------------------------------------------


def residual_dw_reason(m) -> str | None:
    inner = m.m
    name = type(inner).__name__
    if name != "ConvNorm":
        why = " (ReLU MLP: the fused mlp kernel computes GELU)" if name == "ConvMlp" else ""
        return f"residual around {name}, not a depthwise 3x3 conv+BN{why}"
    return conv_norm(inner, "m", 3, None, True)


# (timm module, class name, family, reason check, fused class, ops); a timm version without the
# module or class simply has no rule for it.
_SPECS = (
    ("repvit", "RepVggDw", "timm-repvit", repvggdw_reason, FusedRepVggDw, ("dwconv_bn",)),
    ("repvit", "RepViTBlock", "timm-repvit", repvit_block_reason, FusedRepViTBlock, ("mlp",)),
    ("fastvit", "RepMixer", "timm-fastvit", repmixer_reason, FusedRepMixer, ("dwconv_bn",)),
    ("fastvit", "RepMixerBlock", "timm-fastvit", repmixer_block_reason, FusedRepMixerBlock,
     ("mlp",)),
    ("efficientvit_msra", "ResidualDrop", "timm-efficientvit", residual_dw_reason,
     FusedResidualDwConvBN, ("dwconv_bn",)),
)


def rules() -> dict:
    if "timm" not in sys.modules:
        return {}
    table: dict[type, Rule] = {}
    for module, cls_name, family, reason, fused, ops in _SPECS:
        try:
            cls = getattr(importlib.import_module(f"timm.models.{module}"), cls_name)
        except (ImportError, AttributeError):
            continue
        table[cls] = Rule(family, reason, lambda m, b, fused=fused: fused(m, b), ops)
    return table
