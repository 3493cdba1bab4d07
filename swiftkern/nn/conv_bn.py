"""Conv2d followed by BatchNorm2d, folded into one conv in eval (stem, embeddings, downsamples)."""

from __future__ import annotations

import torch
from torch import nn

from ._base import FusedModule, bn_uses_batch_stats, fold_conv_bn, fold_sources, folded_conv2d


class FusedConvBN(FusedModule):
    """Replaces a module whose forward is `norm(conv(x))` (HF SwiftFormerEmbeddings, timm
    Embedding: attributes proj / norm). In eval the BN is folded into the conv (one pass over the
    output instead of two); in train mode it runs the original math exactly."""

    def __init__(self, original: nn.Module, conv: str, bn: str, backend: str = "auto"):
        super().__init__(original, backend)
        self.names = (conv, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.planned(x, self._plan_sources, lambda record: self._forward(x, record))

    def _plan_sources(self) -> list | None:
        conv, bn = (self._modules[n] for n in self.names)
        if bn_uses_batch_stats(bn) or conv.padding_mode != "zeros":
            return None
        return fold_sources(conv, bn)

    def _forward(self, x: torch.Tensor, record: dict | None) -> torch.Tensor:
        conv, bn = (getattr(self, n) for n in self.names)
        if bn_uses_batch_stats(bn):
            return bn(conv(x))
        w, b = self.cached(
            "conv",
            fold_sources(conv, bn),
            lambda: fold_conv_bn(conv.weight, conv.bias, bn),
        )
        return folded_conv2d(self, x, w, b, conv, record=record)
