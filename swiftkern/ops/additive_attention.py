"""Efficient additive attention (SPEC.md section 1): whole module and reusable core."""

from __future__ import annotations

import torch

from ._checks import check_shape, check_tensor
from ._define import define_op
from .reference import POOLS, additive_attention_core_ref, additive_attention_ref


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


def _validate(x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool):
    check_tensor(x, "x", dim=3)
    d = x.shape[-1]
    check_shape(w_qk, "w_qk", (2 * d, d), x)
    check_shape(b_qk, "b_qk", (2 * d,), x, optional=True)
    check_shape(w_g, "w_g", (d,), x)
    check_shape(w_proj, "w_proj", (d, d), x)
    check_shape(b_proj, "b_proj", (d,), x, optional=True)
    if w_final is None:
        if b_final is not None:
            raise ValueError("b_final given without w_final")
    else:
        check_tensor(w_final, "w_final", dim=2, like=x)
        if w_final.shape[1] != d:
            raise ValueError(f"w_final must have shape [T, {d}], got {tuple(w_final.shape)}")
        check_shape(b_final, "b_final", (w_final.shape[0],), x, optional=True)
    _check_pool(pool)


def _validate_core(q, k, w_g, scale, pool):
    check_tensor(q, "q", dim=3)
    check_shape(k, "k", tuple(q.shape), q)
    check_shape(w_g, "w_g", (q.shape[-1],), q)
    _check_pool(pool)


ADDITIVE_ATTENTION = define_op(
    "additive_attention",
    "Tensor x, Tensor w_qk, Tensor? b_qk, Tensor w_g, float scale, Tensor w_proj, "
    "Tensor? b_proj, Tensor? w_final, Tensor? b_final, str pool",
    "Tensor",
    additive_attention_ref,
    _validate,
)

ADDITIVE_ATTENTION_CORE = define_op(
    "additive_attention_core",
    "Tensor q, Tensor k, Tensor w_g, float scale, str pool",
    "(Tensor, Tensor)",
    additive_attention_core_ref,
    _validate_core,
)


def additive_attention(
    x: torch.Tensor,
    w_qk: torch.Tensor,
    b_qk: torch.Tensor | None,
    w_g: torch.Tensor,
    scale: float,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor | None,
    w_final: torch.Tensor | None = None,
    b_final: torch.Tensor | None = None,
    pool: str = "l2",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Efficient additive attention on tokens-last input.

    Args:
        x: [B, N, D] tokens (any strides; a channels_last NCHW tensor viewed as [B, N, C] is free).
        w_qk: [2D, D], the query projection's rows then the key projection's rows; b_qk: [2D].
        w_g: [D] query weights; scale: multiplies the scores (D**-0.5 in SwiftFormer).
        w_proj, b_proj: [D, D], [D]. w_final, b_final: [T, D], [T] or None (no final layer).
        pool: "sum" (HF transformers), "l2" (timm / fixed original), "softmax" (Fastformer-style).
        backend: "auto", "cpu", "cuda", "triton" or "reference".
    Returns:
        [B, N, T] contiguous, dtype of x. Differentiable in x and every weight.
    """
    return ADDITIVE_ATTENTION(
        x,
        w_qk,
        b_qk,
        w_g.reshape(-1),
        float(scale),
        w_proj,
        b_proj,
        w_final,
        b_final,
        pool,
        backend,
    )


def additive_attention_core(
    q: torch.Tensor,
    k: torch.Tensor,
    w_g: torch.Tensor,
    scale: float,
    pool: str = "l2",
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooling core of additive attention, for ViTs that project q and k themselves.

    Args:
        q, k: [B, N, D] raw (un-normalized) projections. w_g: [D]. scale: score multiplier.
        pool: "sum", "l2" or "softmax" (SPEC.md section 1).
    Returns:
        ``(gk, qn)``, both [B, N, D] contiguous: ``gk = G * normalize(k)`` with the global query
        ``G = sum_n POOL(s)_n * normalize(q)_n`` and ``qn = normalize(q)`` (for the residual).
    """
    return ADDITIVE_ATTENTION_CORE(
        q, k, w_g.reshape(-1), float(scale), pool, backend
    )
