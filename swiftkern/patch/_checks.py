"""Structural checks shared by the family tables: each returns None or the reason for skipping."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def is_exact_gelu(act: nn.Module) -> bool:
    if type(act) is nn.GELU:
        return act.approximate == "none"
    try:
        from transformers.activations import GELUActivation
    except ImportError:
        return False
    return type(act) is GELUActivation and getattr(act, "act", None) in (F.gelu, act._gelu_python)


def conv_reason(conv, name: str, k: int, groups: int | None, c_in: int | None = None) -> str | None:
    if type(conv) is not nn.Conv2d:
        return f"{name} is {type(conv).__name__}, not nn.Conv2d"
    if conv.kernel_size != (k, k) or conv.stride != (1, 1) or conv.dilation != (1, 1):
        return f"{name} is not a {k}x{k} stride-1 conv"
    if conv.padding != (k // 2, k // 2) or conv.padding_mode != "zeros":
        return f"{name} padding differs from {k // 2} zeros"
    if groups is not None and conv.groups != groups:
        return f"{name} has groups={conv.groups}, expected {groups}"
    if c_in is not None and conv.in_channels != c_in:
        return f"{name} has {conv.in_channels} input channels, expected {c_in}"
    return None


def bn_reason(bn, name: str, c: int) -> str | None:
    if type(bn) is not nn.BatchNorm2d:
        return f"{name} is {type(bn).__name__}, not nn.BatchNorm2d"
    if bn.num_features != c:
        return f"{name} has {bn.num_features} features, expected {c}"
    return None


def drop_reason(m, name: str) -> str | None:
    if m is None or type(m).__name__ in ("Identity", "Dropout", "DropPath", "SwiftFormerDropPath"):
        return None
    return f"{name} is {type(m).__name__}, an unknown regularizer"


def conv_block_reason(m: nn.Module, dw: str, bn: str, pw1: str, pw2: str, drop: str) -> str | None:
    d = getattr(m, dw)
    c = d.in_channels if isinstance(d, nn.Conv2d) else None
    if c is None:
        return f"{dw} is not nn.Conv2d"
    p1 = getattr(m, pw1)
    reasons = [
        conv_reason(d, dw, 3, c, c),
        bn_reason(getattr(m, bn), bn, c),
        conv_reason(p1, pw1, 1, 1, c),
        conv_reason(getattr(m, pw2), pw2, 1, 1, getattr(p1, "out_channels", None)),
        None if is_exact_gelu(m.act) else f"act is {m.act!r}, not exact (erf) GELU",
        drop_reason(getattr(m, drop, None), drop),
    ]
    if getattr(m, pw2).out_channels != c:
        reasons.append(f"{pw2} does not map back to {c} channels")
    return next((r for r in reasons if r), None)


def mlp_reason(m: nn.Module) -> str | None:
    fc1 = m.fc1
    c = getattr(fc1, "in_channels", None)
    if c is None:
        return "fc1 is not nn.Conv2d"
    reasons = [
        bn_reason(m.norm1, "norm1", c),
        conv_reason(fc1, "fc1", 1, 1, c),
        conv_reason(m.fc2, "fc2", 1, 1, fc1.out_channels),
        None if is_exact_gelu(m.act) else f"act is {m.act!r}, not exact (erf) GELU",
        drop_reason(getattr(m, "drop", None), "drop"),
    ]
    return next((r for r in reasons if r), None)


def attention_reason(m: nn.Module) -> str | None:
    lin = [getattr(m, n, None) for n in ("to_query", "to_key", "proj", "final")]
    if any(type(x) is not nn.Linear for x in lin):
        return "to_query / to_key / proj / final are not all nn.Linear"
    q, k, p, f = lin
    d = q.in_features
    if not (q.out_features == k.out_features == d and k.in_features == d):
        return f"query/key projections are not {d}->{d} (multi-head or token_dim != in_dims)"
    if p.in_features != d or p.out_features != d or f.in_features != d:
        return "proj / final shapes do not match the token dimension"
    if (q.bias is None) != (k.bias is None):
        return "to_query and to_key disagree on bias"
    if tuple(m.w_g.shape) not in ((d, 1), (d,)):
        return f"w_g has shape {tuple(m.w_g.shape)}, expected ({d}, 1)"
    return None


def conv_bn_reason(m: nn.Module, conv: str, bn: str) -> str | None:
    c, b = getattr(m, conv), getattr(m, bn)
    if type(c) is not nn.Conv2d:
        return f"{conv} is not nn.Conv2d"
    if c.padding_mode != "zeros" or isinstance(c.padding, str):
        return f"{conv} uses padding {c.padding!r}/{c.padding_mode}"
    return bn_reason(b, bn, c.out_channels)
