"""Fused ConvEncoder / LocalRepresentation (HF transformers and timm SwiftFormer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..ops.conv_block import CONV_BLOCK
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

    def _ls_source(self):
        """The layer-scale tensor as the module holds it, or None."""
        if self.roles.ls is None:
            return None
        try:
            return _dotted(self, self.roles.ls)
        except AttributeError:  # timm: layer_scale may be nn.Identity
            return None

    def _ls(self):
        return vector(self._ls_source())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.planned(x, self._plan_sources, lambda record: self._forward(x, record))

    def _plan_sources(self) -> list | None:
        """What the eval path reads (see FusedModule.planned); None in train mode or with BN on
        batch statistics."""
        if self.training:
            return None
        r = self.roles
        mods = self._modules
        dw, bn, pw1, pw2 = mods[r.dw], mods[r.bn], mods[r.pw1], mods[r.pw2]
        if bn_uses_batch_stats(bn):
            return None
        return [*fold_sources(dw, bn, pw1, pw2), self._ls_source()]

    def _forward(self, x: torch.Tensor, record: dict | None) -> torch.Tensor:
        r = self.roles
        mods = self._modules
        if r.drop_path and drop_active(mods.get(r.drop_path), self.training):
            return self.original_forward(x)
        dw, bn, pw1, pw2 = mods[r.dw], mods[r.bn], mods[r.pw1], mods[r.pw2]
        if bn_uses_batch_stats(bn):
            ls = self._ls()
            y, mean, var = ops.conv_block_train(
                x,
                dw.weight,
                dw.bias,
                bn.weight,
                bn.bias,
                bn.eps,
                pw1.weight.reshape(pw1.weight.shape[0], -1),
                pw1.bias,
                pw2.weight.reshape(pw2.weight.shape[0], -1),
                pw2.bias,
                ls,
                backend=self.backend,
            )
            bn_after_forward(bn, mean, var, x)
            return y
        ls = self._ls_source()
        # every argument after x (folded dwconv, [hidden, C] / [C, hidden] views of the pointwise
        # weights, flat layer scale), rebuilt when any source changes
        args = self.cached(
            "args",
            [*fold_sources(dw, bn, pw1, pw2), ls],
            lambda: (
                *fold_conv_bn(dw.weight, dw.bias, bn),
                pw1.weight.reshape(pw1.weight.shape[0], -1),
                pw1.bias,
                pw2.weight.reshape(pw2.weight.shape[0], -1),
                pw2.bias,
                vector(ls),
            ),
        )
        return self.call_op(CONV_BLOCK, x, *args, self.backend, record=record)
