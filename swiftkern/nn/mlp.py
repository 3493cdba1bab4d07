"""Fused pre-norm conv MLP (HF SwiftFormerMlp, timm swiftformer Mlp): fc2(GELU(fc1(BN(x))))."""

from __future__ import annotations

import torch

from .. import ops
from ..ops import reference as ref
from ..ops.mlp import MLP
from ._base import FusedModule, bn_after_forward, bn_uses_batch_stats, fold_sources
from .conv_block import drop_active


class FusedMlp(FusedModule):
    """Attribute names norm1 / fc1 / act / fc2 / drop are shared by both families."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fused(x)

    def forward_fused(
        self, x, ls: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ):
        """residual + ls * Mlp(x); without ls and residual this is the module's own forward."""
        if residual is not None and residual is not x:
            return self._forward(x, ls, residual, None)
        # ls is a source (the encoder block hands in the same cached view while its layer
        # scale is unchanged); residual is x or None, part of the plan key
        return self.planned(
            x,
            lambda: self._plan_sources(ls),
            lambda record: self._forward(x, ls, residual, record),
            inputs=(0, 6) if residual is x else (0,),
            extra=residual is x,
        )

    def _plan_sources(self, ls) -> list | None:
        if self.training:
            return None
        mods = self._modules
        bn = mods["norm1"]
        if bn_uses_batch_stats(bn):
            return None
        return [*fold_sources(mods["fc1"], bn, mods["fc2"]), ls]

    def _forward(self, x, ls, residual, record):
        mods = self._modules
        if drop_active(mods.get("drop"), self.training):
            y = self.original_forward(x)
            if ls is not None:
                y = y * ls.reshape(1, -1, 1, 1)
            return y if residual is None else residual + y
        bn, fc1, fc2 = mods["norm1"], mods["fc1"], mods["fc2"]
        if bn_uses_batch_stats(bn):
            y, mean, var = ops.mlp_train(
                x,
                bn.weight,
                bn.bias,
                bn.eps,
                fc1.weight.reshape(fc1.weight.shape[0], -1),
                fc1.bias,
                fc2.weight.reshape(fc2.weight.shape[0], -1),
                fc2.bias,
                ls,
                residual,
                backend=self.backend,
            )
            bn_after_forward(bn, mean, var, x)
            return y
        # fc1 with the BN folded in, fc2 as [C_out, hidden]; rebuilt when any source changes
        w1, b1, w2, b2 = self.cached(
            "args",
            fold_sources(fc1, bn, fc2),
            lambda: (
                *ref.fold_bn_into_next(
                    fc1.weight.reshape(fc1.weight.shape[0], -1),
                    fc1.bias,
                    bn.weight,
                    bn.bias,
                    bn.running_mean,
                    bn.running_var,
                    bn.eps,
                ),
                fc2.weight.reshape(fc2.weight.shape[0], -1),
                fc2.bias,
            ),
        )
        return self.call_op(MLP, x, w1, b1, w2, b2, ls, residual, self.backend, record=record)
