"""Conv2d -> BatchNorm2d pairs inside containers whose forward is `bn(conv(x))`: in eval the BN
is folded into the conv and the BN stand-in only applies what follows the normalization (the
activation of timm's BatchNormAct2d). In train mode both run their original math."""

from __future__ import annotations

import torch
from torch import nn

from ._base import (
    FusedModule,
    bn_uses_batch_stats,
    fold_conv_bn,
    fold_sources,
    folded_conv2d,
    relu_on_output,
)


class FoldedBatchNorm2d(FusedModule):
    """Stand-in for the BN of a folded pair (shares its parameters and buffers)."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        # timm BatchNormAct2d: drop then act after the normalization (names fixed at build).
        self.__dict__["post"] = tuple(n for n in ("drop", "act") if n in self._modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bn_uses_batch_stats(self):
            return self.original_forward(x)
        mods = self._modules
        for name in self.post:
            x = mods[name](x)
        return x


class FoldedReLU(FusedModule):
    """Stand-in for an nn.ReLU right after a folded pair in a plain nn.Sequential: the folded
    conv applies the ReLU itself in eval (in place on its fresh output), so this passes its
    input through then; in train mode (BN on batch statistics) it is the original ReLU."""

    def __init__(self, original: nn.Module, bn: FoldedBatchNorm2d, backend: str = "auto"):
        super().__init__(original, backend)
        self.__dict__["partner_bn"] = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bn_uses_batch_stats(self.partner_bn):
            return self.original_forward(x)
        return x


class FoldedConv2d(FusedModule):
    """Stand-in for the conv of a folded pair. The BN stand-in is referenced, not registered, so
    state_dict keys stay those of the original container. relu: an nn.ReLU after the BN was
    replaced by FoldedReLU, so the folded path applies the ReLU too."""

    def __init__(self, original: nn.Conv2d, bn: FoldedBatchNorm2d, backend: str = "auto",
                 relu: bool = False):
        super().__init__(original, backend)
        self.__dict__["partner_bn"] = bn
        self.__dict__["fused_relu"] = relu
        # private state nn.Conv2d._conv_forward reads for padding_mode != "zeros"
        if hasattr(original, "_reversed_padding_repeated_twice"):
            self.__dict__["_reversed_padding_repeated_twice"] = (
                original._reversed_padding_repeated_twice
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.planned(x, self._plan_sources, lambda record: self._forward(x, record))

    def _plan_sources(self) -> list | None:
        bn = self.partner_bn
        if bn_uses_batch_stats(bn) or self.padding_mode != "zeros":
            return None
        return fold_sources(self, bn)

    def _forward(self, x: torch.Tensor, record: dict | None) -> torch.Tensor:
        bn = self.partner_bn
        if bn_uses_batch_stats(bn):
            return self.original_forward(x)
        w, b = self.cached(
            "conv", fold_sources(self, bn), lambda: fold_conv_bn(self.weight, self.bias, bn)
        )
        if self.padding_mode != "zeros":
            y = self.original_cls._conv_forward(self, x, w, b)
            return relu_on_output(y) if self.fused_relu else y
        return folded_conv2d(self, x, w, b, self, relu=self.fused_relu, record=record)
