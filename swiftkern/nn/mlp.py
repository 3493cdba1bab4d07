"""Fused pre-norm conv MLP (HF SwiftFormerMlp, timm swiftformer Mlp): fc2(GELU(fc1(BN(x))))."""

from __future__ import annotations

import torch

from .. import ops
from ..ops import reference as ref
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
        if drop_active(self.drop, self.training):
            y = self.original_forward(x)
            if ls is not None:
                y = y * ls.reshape(1, -1, 1, 1)
            return y if residual is None else residual + y
        bn, fc1, fc2 = self.norm1, self.fc1, self.fc2
        w2 = fc2.weight.reshape(fc2.weight.shape[0], -1)
        if bn_uses_batch_stats(bn):
            w1 = fc1.weight.reshape(fc1.weight.shape[0], -1)
            y, mean, var = ops.mlp_train(
                x,
                bn.weight,
                bn.bias,
                bn.eps,
                w1,
                fc1.bias,
                w2,
                fc2.bias,
                ls,
                residual,
                backend=self.backend,
            )
            bn_after_forward(bn, mean, var, x)
            return y
        w1, b1 = self.cached(
            "fc1",
            fold_sources(fc1, bn),
            lambda: ref.fold_bn_into_next(
                fc1.weight.reshape(fc1.weight.shape[0], -1),
                fc1.bias,
                bn.weight,
                bn.bias,
                bn.running_mean,
                bn.running_var,
                bn.eps,
            ),
        )
        return ops.mlp(x, w1, b1, w2, fc2.bias, ls, residual, backend=self.backend)
