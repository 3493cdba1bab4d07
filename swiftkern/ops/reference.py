"""Plain-PyTorch ground truth for every swiftkern op and variant.

These functions are the specification (../shared/SPEC.md) turned into code. They are also the
fallback implementation of every op: a backend that lacks an op, a dtype or a device falls back to
the function of the same name here. They are written for clarity, not speed, and are autograd-
transparent, so the reference backward of every op is ``torch.autograd.grad`` through them.

Conventions shared by all ops
-----------------------------
* Conv-style ops take ``x`` as ``[B, C, H, W]`` in NCHW or channels_last memory format and return
  a tensor of the same shape and memory format.
* "Eval form" ops take BatchNorm already folded into the preceding conv (see :func:`fold_bn`);
  "train form" ops take the raw BN affine parameters, normalize with batch statistics and return
  ``(y, batch_mean, batch_var)`` where ``batch_var`` is the *biased* variance used to normalize.
  The caller updates running statistics (see :func:`update_running_stats`).
* Pointwise (1x1) weights are 2-D: ``[C_out, C_in]``. Depthwise weights are ``[C, 1, 3, 3]``.
* Layer scale ``ls`` is a 1-D ``[C]`` tensor or None (= 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLS = ("sum", "l2", "softmax")
NORM_EPS = 1e-12


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


# --------------------------------------------------------------------------------------------
# Additive attention
# --------------------------------------------------------------------------------------------
def pool_weights(s: torch.Tensor, pool: str) -> torch.Tensor:
    """Token weights ``a`` [B, N, 1] from scores ``s`` [B, N, 1] for one POOL variant."""
    _check_pool(pool)
    if pool == "sum":
        # HF: softmax over a size-1 last dim is exactly 1 for finite s (NaN/Inf still propagate).
        return torch.softmax(s, dim=-1)
    if pool == "l2":
        return F.normalize(s, dim=1, eps=NORM_EPS)
    return torch.softmax(s, dim=1)


def additive_attention_core_ref(
    q: torch.Tensor, k: torch.Tensor, w_g: torch.Tensor, scale: float, pool: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Core of efficient additive attention from already-projected queries and keys.

    q, k: [B, N, D] raw projections (not yet normalized). w_g: [D] (or [D, 1]).
    Returns ``(gk, qn)``, both [B, N, D]: ``gk = G[:, None, :] * normalize(k)`` and
    ``qn = normalize(q)``, with ``G = sum_n a_n * qn_n`` and ``a = POOL(qn @ w_g * scale)``.
    """
    qn = F.normalize(q, dim=-1, eps=NORM_EPS)
    kn = F.normalize(k, dim=-1, eps=NORM_EPS)
    s = (qn @ w_g.reshape(-1, 1)) * scale
    a = pool_weights(s, pool)
    g = torch.sum(a * qn, dim=1, keepdim=True)
    return g * kn, qn


def additive_attention_ref(
    x: torch.Tensor,
    w_qk: torch.Tensor,
    b_qk: torch.Tensor | None,
    w_g: torch.Tensor,
    scale: float,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor | None,
    w_final: torch.Tensor | None,
    b_final: torch.Tensor | None,
    pool: str,
) -> torch.Tensor:
    """Whole efficient additive attention module on tokens-last input.

    x: [B, N, D]. w_qk: [2D, D] (query rows first, then key rows), b_qk: [2D] or None.
    w_proj: [D, D], w_final: [T, D] or None (identity). Returns [B, N, T] (T = D without final).
    """
    d = x.shape[-1]
    qk = F.linear(x, w_qk, b_qk)
    gk, qn = additive_attention_core_ref(qk[..., :d], qk[..., d:], w_g, scale, pool)
    out = F.linear(gk, w_proj, b_proj) + qn
    if w_final is not None:
        out = F.linear(out, w_final, b_final)
    return out


# --------------------------------------------------------------------------------------------
# Conv blocks
# --------------------------------------------------------------------------------------------
def fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that FOLLOWS a conv into its weight [C_out, ...] and bias.

    Differentiable: gradients flow to the conv and BN affine parameters.
    """
    inv = torch.rsqrt(running_var + eps)
    s = inv if bn_weight is None else bn_weight * inv
    w = weight * s.reshape(-1, *([1] * (weight.dim() - 1)))
    b = -running_mean * s
    if bias is not None:
        b = b + bias * s
    if bn_bias is not None:
        b = b + bn_bias
    return w, b


def fold_bn_into_next(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that PRECEDES a pointwise layer ([C_out, C_in]) into it.

    fc(BN(x)) = W (s*x + t) + b = (W diag(s)) x + (W t + b).
    """
    inv = torch.rsqrt(running_var + eps)
    s = inv if bn_weight is None else bn_weight * inv
    t = -running_mean * s
    if bn_bias is not None:
        t = t + bn_bias
    w2 = weight.reshape(weight.shape[0], -1)
    w = w2 * s.reshape(1, -1)
    b = w2 @ t
    if bias is not None:
        b = b + bias
    return w.reshape(weight.shape), b


def update_running_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    batch_mean: torch.Tensor,
    batch_var: torch.Tensor,
    count: int,
    momentum: float,
) -> None:
    """In-place running-stat update exactly as nn.BatchNorm2d (unbiased variance, momentum)."""
    with torch.no_grad():
        unbiased = batch_var * (count / max(count - 1, 1))
        running_mean.mul_(1.0 - momentum).add_(batch_mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _bn_train(x: torch.Tensor, bn_weight, bn_bias, eps: float):
    dims = (0, 2, 3)
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=False)
    shape = (1, -1, 1, 1)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
    if bn_weight is not None:
        y = y * bn_weight.reshape(shape)
    if bn_bias is not None:
        y = y + bn_bias.reshape(shape)
    return y, mean, var


def _pointwise(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x, w.reshape(w.shape[0], w.shape[1], 1, 1), b)


def dwconv_bn_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Eval form: depthwise 3x3 conv (stride 1, pad 1), BN folded into weight [C,1,3,3] / bias."""
    return F.conv2d(x, weight, bias, padding=1, groups=x.shape[1])


def dwconv_bn_train_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train form: dwconv3x3 then BN with batch statistics. Returns (y, batch_mean, batch_var)."""
    z = F.conv2d(x, weight, bias, padding=1, groups=x.shape[1])
    return _bn_train(z, bn_weight, bn_bias, eps)


def mlp_ref(
    x: torch.Tensor,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor | None,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor | None,
    ls: torch.Tensor | None,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """Eval form of the pre-norm MLP (BN folded into fc1): ``residual + ls * fc2(GELU(fc1(x)))``.

    fc1_w: [Hd, C], fc2_w: [C_out, Hd]. residual None means no residual add.
    """
    h = F.gelu(_pointwise(x, fc1_w, fc1_b))
    y = _pointwise(h, fc2_w, fc2_b)
    if ls is not None:
        y = y * ls.reshape(1, -1, 1, 1)
    if residual is not None:
        y = residual + y
    return y


def mlp_train_ref(
    x: torch.Tensor,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor | None,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor | None,
    ls: torch.Tensor | None,
    residual: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train form of the pre-norm MLP: BN with batch stats, fc1, GELU, fc2, ls, residual."""
    z, mean, var = _bn_train(x, bn_weight, bn_bias, eps)
    return mlp_ref(z, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual), mean, var


def conv_block_ref(
    x: torch.Tensor,
    dw_w: torch.Tensor,
    dw_b: torch.Tensor | None,
    pw1_w: torch.Tensor,
    pw1_b: torch.Tensor | None,
    pw2_w: torch.Tensor,
    pw2_b: torch.Tensor | None,
    ls: torch.Tensor | None,
) -> torch.Tensor:
    """Eval form of ConvEncoder / LocalRepresentation: ``x + ls * pw2(GELU(pw1(dwbn(x))))``."""
    return mlp_ref(dwconv_bn_ref(x, dw_w, dw_b), pw1_w, pw1_b, pw2_w, pw2_b, ls, x)


def conv_block_train_ref(
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
    ls: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train form of the conv block. Returns (y, batch_mean, batch_var) of the BN after dwconv."""
    z, mean, var = dwconv_bn_train_ref(x, dw_w, dw_b, bn_weight, bn_bias, eps)
    return mlp_ref(z, pw1_w, pw1_b, pw2_w, pw2_b, ls, x), mean, var
