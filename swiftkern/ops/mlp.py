"""Pre-norm conv MLP of the SwiftFormer encoder block: residual + ls * fc2(GELU(fc1(BN(x))))."""

from __future__ import annotations

import torch

from ._conv_checks import check_bn, check_mlp, check_x
from ._define import define_op
from .reference import mlp_ref, mlp_train_ref


def _validate(x, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual):
    check_mlp(x, check_x(x), fc1_w, fc1_b, fc2_w, fc2_b, ls, residual)


def _validate_train(x, bn_w, bn_b, eps, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual):
    _validate(x, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual)
    check_bn(x, x.shape[1], bn_w, bn_b, eps)


_ARGS = "Tensor fc1_w, Tensor? fc1_b, Tensor fc2_w, Tensor? fc2_b, Tensor? ls, Tensor? residual"
MLP = define_op("mlp", f"Tensor x, {_ARGS}", "Tensor", mlp_ref, _validate)
MLP_TRAIN = define_op(
    "mlp_train",
    f"Tensor x, Tensor? bn_weight, Tensor? bn_bias, float eps, {_ARGS}",
    "(Tensor, Tensor, Tensor)",
    mlp_train_ref,
    _validate_train,
)


def mlp(
    x: torch.Tensor,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor | None,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor | None,
    ls: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Eval form: ``residual + ls * fc2(GELU(fc1(x)))`` with the pre-norm BN folded into fc1
    (ops.fold_bn_into_next).

    x: [B, C, H, W] NCHW or channels_last (kept). fc1_w: [hidden, C], fc2_w: [C_out, hidden].
    ls: [C_out] or None. residual: [B, C_out, H, W] or None (no residual add).
    """
    return MLP(x, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual, backend)


def mlp_train(
    x: torch.Tensor,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor | None,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor | None,
    ls: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train form: the pre-norm BN uses batch statistics. Returns (y, batch_mean, batch_var)."""
    return MLP_TRAIN(
        x, bn_weight, bn_bias, float(eps), fc1_w, fc1_b, fc2_w, fc2_b, ls, residual, backend
    )
