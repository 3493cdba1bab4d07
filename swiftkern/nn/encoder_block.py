"""Fused SwiftFormer encoder block: LocalRep -> x + ls1*Attn(x) -> x + ls2*Mlp(x)."""

from __future__ import annotations

import torch
from torch import nn

from ._base import FusedModule, _dotted, vector
from .attention import FusedAdditiveAttention
from .conv_block import drop_active
from .mlp import FusedMlp


class FusedEncoderBlock(FusedModule):
    """The second residual (ls2 * Mlp) is fused into the MLP op; the attention runs on a token
    view of x (free when x is channels_last).

    ls1 / ls2: dotted paths to the layer scales ("layer_scale_1" in HF, "layer_scale_1.gamma" in
    timm) or None when the block has no layer scale.
    """

    def __init__(
        self, original: nn.Module, ls1: str | None, ls2: str | None, backend: str = "auto"
    ):
        super().__init__(original, backend)
        self.ls_paths = (ls1, ls2)

    def _ls(self, i: int):
        path = self.ls_paths[i]
        if path is None:
            return None
        try:
            src = _dotted(self, path)
        except AttributeError:  # timm: nn.Identity when use_layer_scale=False
            return None
        # the same view object while src is unchanged: the MLP's fp32 parameter cache
        # (call_op) keys on it
        return self.cached(f"ls{i}", [src], lambda: vector(src))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules
        attn, mlp = mods["attn"], mods["linear"]
        if (
            drop_active(mods.get("drop_path"), self.training)
            or not isinstance(attn, FusedAdditiveAttention)
            or not isinstance(mlp, FusedMlp)
        ):
            return self.original_forward(x)
        x = mods["local_representation"](x)
        b, c, h, w = x.shape
        res = attn.forward_tokens(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        res = res.view(b, h, w, res.shape[-1]).permute(0, 3, 1, 2)  # explicit: B may be 0
        ls1 = self._ls(0)
        if ls1 is None:
            x = x + res
        elif torch.is_grad_enabled():  # the original's ops, so autograd's graph is the same
            x = x + ls1.reshape(1, -1, 1, 1) * res
        else:  # inference: one pass instead of two (mul, then add)
            x = torch.addcmul(x, ls1.reshape(1, -1, 1, 1), res)
        return mlp.forward_fused(x, ls=self._ls(1), residual=x)
