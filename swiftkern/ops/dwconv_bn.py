"""Depthwise 3x3 conv + BatchNorm, eval form (BN folded) and train form (batch statistics)."""

from __future__ import annotations

import torch

from ._conv_checks import check_bn, check_dw, check_x
from ._define import define_op
from .reference import dwconv_bn_ref, dwconv_bn_train_ref


def _validate(x, w, b):
    check_x(x)
    check_dw(x, w, b)


def _validate_train(x, w, b, bn_w, bn_b, eps):
    _validate(x, w, b)
    check_bn(x, x.shape[1], bn_w, bn_b, eps)


DWCONV_BN = define_op(
    "dwconv_bn", "Tensor x, Tensor dw_w, Tensor? dw_b", "Tensor", dwconv_bn_ref, _validate
)
DWCONV_BN_TRAIN = define_op(
    "dwconv_bn_train",
    "Tensor x, Tensor dw_w, Tensor? dw_b, Tensor? bn_weight, Tensor? bn_bias, float eps",
    "(Tensor, Tensor, Tensor)",
    dwconv_bn_train_ref,
    _validate_train,
)


def dwconv_bn(
    x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor | None = None, *, backend: str = "auto"
) -> torch.Tensor:
    """Eval form: depthwise 3x3 conv, stride 1, padding 1, with BN already folded (ops.fold_bn).

    x: [B, C, H, W], NCHW or channels_last (output keeps it). dw_w: [C, 1, 3, 3], dw_b: [C].
    """
    return DWCONV_BN(x, dw_w, dw_b, backend)


def dwconv_bn_train(
    x: torch.Tensor,
    dw_w: torch.Tensor,
    dw_b: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train form: dwconv3x3 then BatchNorm with batch statistics.

    Returns ``(y, batch_mean, batch_var)``; batch_var is biased (as used to normalize). Update
    running statistics with ``ops.update_running_stats`` (what nn.BatchNorm2d does).
    """
    return DWCONV_BN_TRAIN(
        x, dw_w, dw_b, bn_weight, bn_bias, float(eps), backend
    )
