"""Output checks run before any timing: max |provider - eager fp32| against SPEC.md section 3."""

from __future__ import annotations

import torch

# SPEC.md section 3: fp32 per block 1e-4 * max(1, max|ref|); end-to-end logits 1e-3 relative.
FP32_REL = {"block": 1e-4, "model": 1e-3}
# Low precision: <= 2x the error of plain PyTorch at that dtype, plus a small floor (relative).
LOWP_FACTOR = 2.0
LOWP_FLOOR_REL = 2.0**-8


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0


def abs_max(t: torch.Tensor) -> float:
    return float(t.detach().float().abs().max()) if t.numel() else 0.0


def tolerance(ref_absmax: float, dtype: str, level: str, eager_lowp_err: float | None) -> float:
    """Allowed max abs error vs the fp32 eager output for a provider running at ``dtype``."""
    scale = max(1.0, ref_absmax)
    if dtype in ("fp32", "fp64"):
        return FP32_REL[level] * scale
    if eager_lowp_err is None:
        raise ValueError("low-precision tolerance needs the eager error at that dtype")
    return LOWP_FACTOR * eager_lowp_err + LOWP_FLOOR_REL * scale
