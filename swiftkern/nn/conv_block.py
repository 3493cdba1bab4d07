"""Fused ConvEncoder / LocalRepresentation (HF transformers and timm SwiftFormer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ._base import (
    FusedModule,
    _dotted,
    bn_after_forward,
    bn_uses_batch_stats,
    fold_conv_bn,
    fold_sources,
    vector,
)


@dataclass(frozen=True)
class ConvBlockRoles:
    """Attribute names of the roles in the original module (they differ per model family)."""

    dw: str
    bn: str
    pw1: str
    pw2: str
    ls: str | None  # dotted path to the layer-scale tensor, or None
    drop_path: str | None


def drop_active(m: nn.Module | None, training: bool) -> bool:
    """True when a Dropout / DropPath child would change values in this mode."""
    if m is None or not training:
        return False
    p = getattr(m, "p", getattr(m, "drop_prob", 0.0))
    return bool(p and p > 0)


class FusedConvBlock(FusedModule):
    """x + ls * pw2(GELU(pw1(BN(dwconv3x3(x))))) through swiftkern.ops.conv_block(_train)."""

    def __init__(self, original: nn.Module, roles: ConvBlockRoles, backend: str = "auto"):
        super().__init__(original, backend)
        self.roles = roles

    def _ls(self):
        if self.roles.ls is None:
            return None
        try:
            return vector(_dotted(self, self.roles.ls))
        except AttributeError:  # timm: layer_scale may be nn.Identity
            return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.roles
        drop = getattr(self, r.drop_path) if r.drop_path else None
        if drop_active(drop, self.training):
            return self.original_forward(x)
        dw, bn, pw1, pw2 = (getattr(self, n) for n in (r.dw, r.bn, r.pw1, r.pw2))
        w1 = pw1.weight.reshape(pw1.weight.shape[0], -1)
        w2 = pw2.weight.reshape(pw2.weight.shape[0], -1)
        ls = self._ls()
        if bn_uses_batch_stats(bn):
            y, mean, var = ops.conv_block_train(
                x,
                dw.weight,
                dw.bias,
                bn.weight,
                bn.bias,
                bn.eps,
                w1,
                pw1.bias,
                w2,
                pw2.bias,
                ls,
                backend=self.backend,
            )
            bn_after_forward(bn, mean, var, x)
            return y
        dw_w, dw_b = self.cached(
            "dw",
            fold_sources(dw, bn),
            lambda: fold_conv_bn(dw.weight, dw.bias, bn),
        )
        return ops.conv_block(x, dw_w, dw_b, w1, pw1.bias, w2, pw2.bias, ls, backend=self.backend)
