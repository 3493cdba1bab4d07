"""ConvEncoder / LocalRepresentation block: x + ls * pw2(GELU(pw1(BN(dwconv3x3(x)))))."""

from __future__ import annotations

import torch

from ._conv_checks import check_bn, check_dw, check_mlp, check_x
from ._define import define_op
from .reference import conv_block_ref, conv_block_train_ref


def _validate(x, dw_w, dw_b, pw1_w, pw1_b, pw2_w, pw2_b, ls):
    c = check_x(x)
    check_dw(x, dw_w, dw_b)
    c_out = check_mlp(x, c, pw1_w, pw1_b, pw2_w, pw2_b, ls, None, names=("pw1", "pw2"))
    if c_out != c:
        raise ValueError(f"pw2_w must map back to C={c} channels for the residual, got {c_out}")


def _validate_train(x, dw_w, dw_b, bn_w, bn_b, eps, pw1_w, pw1_b, pw2_w, pw2_b, ls):
    _validate(x, dw_w, dw_b, pw1_w, pw1_b, pw2_w, pw2_b, ls)
    check_bn(x, x.shape[1], bn_w, bn_b, eps)


_ARGS = "Tensor pw1_w, Tensor? pw1_b, Tensor pw2_w, Tensor? pw2_b, Tensor? ls"
CONV_BLOCK = define_op(
    "conv_block",
    f"Tensor x, Tensor dw_w, Tensor? dw_b, {_ARGS}",
    "Tensor",
    conv_block_ref,
    _validate,
)
CONV_BLOCK_TRAIN = define_op(
    "conv_block_train",
    f"Tensor x, Tensor dw_w, Tensor? dw_b, Tensor? bn_weight, Tensor? bn_bias, float eps, {_ARGS}",
    "(Tensor, Tensor, Tensor)",
    conv_block_train_ref,
    _validate_train,
)


def conv_block(
    x: torch.Tensor,
    dw_w: torch.Tensor,
    dw_b: torch.Tensor | None,
    pw1_w: torch.Tensor,
    pw1_b: torch.Tensor | None,
    pw2_w: torch.Tensor,
    pw2_b: torch.Tensor | None,
    ls: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Eval form of ConvEncoder (hidden = 4C) and LocalRepresentation (hidden = C).

    x: [B, C, H, W] NCHW or channels_last (kept). dw_w/dw_b: depthwise 3x3 weight [C, 1, 3, 3]
    and bias [C] with the BatchNorm folded in (ops.fold_bn). pw1_w: [hidden, C], pw2_w: [C, hidden].
    ls: [C] layer scale or None. GELU is exact (erf).
    """
    return CONV_BLOCK(x, dw_w, dw_b, pw1_w, pw1_b, pw2_w, pw2_b, ls, backend)


def conv_block_train(
    x: torch.Tensor,
    dw_w: torch.Tensor,
    dw_b: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
    pw1_w: torch.Tensor,
    pw1_b: torch.Tensor | None,
    pw2_w: torch.Tensor,
    pw2_b: torch.Tensor | None,
    ls: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train form: the BN after the dwconv uses batch statistics.

    Returns ``(y, batch_mean, batch_var)`` of that BN (biased variance); the caller updates the
    running statistics with ``ops.update_running_stats``.
    """
    return CONV_BLOCK_TRAIN(
        x, dw_w, dw_b, bn_weight, bn_bias, float(eps), pw1_w, pw1_b, pw2_w, pw2_b, ls, backend
    )
