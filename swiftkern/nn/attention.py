"""Fused efficient additive attention (HF: tokens in, pool "sum"; timm: NCHW in, pool "l2")."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.additive_attention import ADDITIVE_ATTENTION
from ._base import FusedModule, fold_sources


class FusedAdditiveAttention(FusedModule):
    """Calls swiftkern.ops.additive_attention with the q/k projections as one [2D, D] weight.

    layout: "tokens" when the original takes [B, N, D] (HF), "nchw" when it takes [B, C, H, W]
    and flattens inside (timm). The attribute names are the same in both families.
    """

    def __init__(self, original: nn.Module, pool: str, layout: str, backend: str = "auto"):
        super().__init__(original, backend)
        if layout not in ("tokens", "nchw"):
            raise ValueError(f"layout must be 'tokens' or 'nchw', got {layout!r}")
        self.pool = pool
        self.layout = layout
        self.scale_factor = float(original.scale_factor)

    def _args(self):
        """(w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final): q/k projections concatenated
        into one [2D, D] weight, rebuilt when any source changes."""
        m = self._modules
        q, k, proj, final = m["to_query"], m["to_key"], m["proj"], m["final"]
        w_g = self._parameters["w_g"]

        def build():
            b = None if q.bias is None else torch.cat([q.bias, k.bias])
            return (torch.cat([q.weight, k.weight]), b, w_g.reshape(-1), proj.weight, proj.bias,
                    final.weight, final.bias)

        return self.cached("args", [*fold_sources(q, k, proj, final), w_g], build)

    def forward_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, T] (contiguous)."""
        return self.planned(
            t, self._plan_sources, lambda record: self._forward_tokens(t, record),
            extra=(self.scale_factor, self.pool),
        )

    def _plan_sources(self) -> list:
        # no train-form op and no batch statistics: the same path in both modes
        m = self._modules
        return [*fold_sources(m["to_query"], m["to_key"], m["proj"], m["final"]),
                self._parameters["w_g"]]

    def _forward_tokens(self, t: torch.Tensor, record: dict | None) -> torch.Tensor:
        w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final = self._args()
        return self.call_op(ADDITIVE_ATTENTION, t, w_qk, b_qk, w_g, self.scale_factor, w_proj,
                            b_proj, w_final, b_final, self.pool, self.backend, record=record)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "tokens":
            return self.forward_tokens(x)
        b, c, h, w = x.shape
        out = self.forward_tokens(x.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(b, -1, h, w)
