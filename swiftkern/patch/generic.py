"""Generic pattern: Conv2d immediately followed by BatchNorm2d in a container whose forward is
known to be `bn(conv(x))` (nn.Sequential and its subclasses without their own forward, timm's
ConvNormAct / ConvNorm, HF SwiftFormer's stem). Folded in eval, exact original math in train.
In a plain nn.Sequential an nn.ReLU right after the pair is applied by the folded conv too, in
place on the convolution's output (no second activation-sized tensor)."""

from __future__ import annotations

import sys

from torch import nn

from ..nn.folded import FoldedBatchNorm2d, FoldedConv2d, FoldedReLU


def _bn_classes() -> tuple[type, ...]:
    classes: list[type] = [nn.BatchNorm2d]
    if "timm" in sys.modules:
        try:
            from timm.layers import BatchNormAct2d

            classes.append(BatchNormAct2d)
        except ImportError:
            pass
    return tuple(classes)


def _named_containers() -> dict[type, tuple[str, str]]:
    """Containers with named conv / bn children and forward = bn(conv(x)) (+ identity aa)."""
    out: dict[type, tuple[str, str]] = {}
    if "timm" in sys.modules:
        try:
            from timm.layers import ConvNormAct
            from timm.models.efficientformer_v2 import ConvNorm

            out[ConvNormAct] = ("conv", "bn")
            out[ConvNorm] = ("conv", "bn")
        except ImportError:
            pass
    return out


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def pairs(container: nn.Module) -> list[tuple[str, str]]:
    """Names of the (conv, bn) children of `container` that can be folded together."""
    bn_types = _bn_classes()

    def foldable(conv, bn) -> bool:
        if type(conv) is not nn.Conv2d or type(bn) not in bn_types:
            return False
        return bn.num_features == conv.out_channels

    named = _named_containers().get(type(container))
    if named is not None:
        conv, bn = (getattr(container, n, None) for n in named)
        if getattr(container, "aa", None) is not None and not isinstance(container.aa, nn.Identity):
            return []
        return [named] if foldable(conv, bn) else []
    if not _is_plain_sequential(container):
        return []
    kids = list(container._modules.items())
    out = []
    for (n1, a), (n2, b) in zip(kids, kids[1:]):
        if foldable(a, b):
            out.append((n1, n2))
    return out


def relu_after(container: nn.Module, bn_name: str) -> str | None:
    """Name of an nn.ReLU that directly follows `bn_name` in a plain nn.Sequential (its input is
    exactly the BN's output), or None. Plain BatchNorm2d only: BatchNormAct2d applies its own
    drop / act after the normalization, which must stay before the ReLU."""
    if not _is_plain_sequential(container):
        return None
    if type(container._modules[bn_name]) is not nn.BatchNorm2d:
        return None
    names = list(container._modules)
    i = names.index(bn_name)
    if i + 1 < len(names) and type(container._modules[names[i + 1]]) is nn.ReLU:
        return names[i + 1]
    return None


def fold(container: nn.Module, conv_name: str, bn_name: str, backend: str,
         relu_name: str | None = None) -> list[tuple]:
    """Swap in the folded pair (and the ReLU after it); returns the undo log entries
    [(parent, name, old)]."""
    conv, bn = container._modules[conv_name], container._modules[bn_name]
    bn_new = FoldedBatchNorm2d(bn, backend)
    conv_new = FoldedConv2d(conv, bn_new, backend, relu=relu_name is not None)
    log = []
    if relu_name is not None:
        relu = container._modules[relu_name]
        container._modules[relu_name] = FoldedReLU(relu, bn_new, backend)
        log.append((container, relu_name, relu))
    container._modules[bn_name] = bn_new
    container._modules[conv_name] = conv_new
    return log + [(container, bn_name, bn), (container, conv_name, conv)]
