"""Conv2d -> BatchNorm2d pairs inside containers whose forward is `bn(conv(x))`: in eval the BN
is folded into the conv and the BN stand-in only applies what follows the normalization (the
activation of timm's BatchNormAct2d). In train mode both run their original math."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import FusedModule, bn_uses_batch_stats, fold_conv_bn, fold_sources


class FoldedBatchNorm2d(FusedModule):
    """Stand-in for the BN of a folded pair (shares its parameters and buffers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bn_uses_batch_stats(self):
            return self.original_forward(x)
        # timm BatchNormAct2d: drop then act after the normalization.
        drop, act = getattr(self, "drop", None), getattr(self, "act", None)
        if drop is not None:
            x = drop(x)
        if act is not None:
            x = act(x)
        return x


class FoldedConv2d(FusedModule):
    """Stand-in for the conv of a folded pair. The BN stand-in is referenced, not registered, so
    state_dict keys stay those of the original container."""

    def __init__(self, original: nn.Conv2d, bn: FoldedBatchNorm2d, backend: str = "auto"):
        super().__init__(original, backend)
        self.__dict__["partner_bn"] = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.partner_bn
        if bn_uses_batch_stats(bn):
            return self.original_forward(x)
        w, b = self.cached(
            "conv",
            fold_sources(self, bn),
            lambda: fold_conv_bn(self.weight, self.bias, bn),
        )
        if self.padding_mode != "zeros":
            return self.original_cls._conv_forward(self, x, w, b)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
