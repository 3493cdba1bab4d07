"""Fused stand-ins for the depthwise-conv + BN and conv-MLP blocks of other timm ViTs.

Each block below is, in eval, a sum of depthwise conv branches followed by BatchNorm (and / or an
identity) -- re-parameterized into ONE depthwise 3x3 conv with bias and run by
``swiftkern.ops.dwconv_bn`` -- or a conv MLP ``residual + ls * fc2(GELU(fc1(x)))`` whose
conv+BN pairs fold into the pointwise weights, run by ``swiftkern.ops.mlp``:

- timm repvit ``RepVggDw``:   bn(convnorm3x3(x) + conv1x1(x) + x)             -> dwconv_bn
- timm repvit ``RepViTBlock``: y = se(token_mixer(x)); y + mlp(y)              -> mlp (residual y)
- timm fastvit ``RepMixer``:  x + ls * (mixer(x) - norm(x)), MobileOne branches -> dwconv_bn
- timm fastvit ``RepMixerBlock``: x + ls * fc2(GELU(fc1(dwconvbn7x7(x))))      -> mlp (residual x)
- timm efficientvit_msra ``ResidualDrop(ConvNorm dw3x3)``: x + bn(dw3x3(x))    -> dwconv_bn

Re-parameterized weights are derived on every change of their sources (version-keyed cache) and
with autograd when gradients are needed, so eval-mode fine-tuning still trains the original
parameters. Wherever a BatchNorm uses batch statistics (train mode), or an active dropout would
change values, the block runs its original math exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import reference as ref
from ._base import FusedModule, bn_uses_batch_stats, fold_sources
from .conv_block import drop_active


def conv_bn_pair(container: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(conv, bn) children of a timm ConvNorm / ConvNormAct, folded by optimize() or not."""
    kids = list(container._modules.values())
    return kids[0], kids[1]




def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval BatchNorm as y = s * x + t (per channel)."""
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = bn.weight * s
    t = -bn.running_mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s, t


def fold_pair(container: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded (weight, bias) of a ConvNorm-like container: bn(conv(x)) == conv'(x)."""
    conv, bn = conv_bn_pair(container)
    return ref.fold_bn(
        conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
    )


def to_3x3(w: torch.Tensor) -> torch.Tensor:
    """A depthwise 1x1 kernel [C, 1, 1, 1] as the centre of a 3x3 one."""
    return F.pad(w, [1, 1, 1, 1])


def centre(c: int, like: torch.Tensor) -> torch.Tensor:
    """The identity as a depthwise 3x3 kernel."""
    return to_3x3(torch.ones(c, 1, 1, 1, dtype=like.dtype, device=like.device))


def pointwise(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def any_batch_stats(*bns: nn.Module | None) -> bool:
    return any(b is not None and bn_uses_batch_stats(b) for b in bns)


def gamma(layer_scale: nn.Module) -> torch.Tensor | None:
    g = getattr(layer_scale, "gamma", None)
    return None if g is None else g.reshape(-1)


class FusedRepVggDw(FusedModule):
    """timm repvit RepVggDw (kernel 3): bn(ConvNorm3x3(x) + conv1x1(x) + x) as one dwconv_bn."""

    def _bns(self):
        bns = [conv_bn_pair(self.conv)[1]]
        if self.legacy:
            bns.append(conv_bn_pair(self.conv1)[1])
        elif not isinstance(self.bn, nn.Identity):
            bns.append(self.bn)
        return bns

    def _build(self):
        w, b = fold_pair(self.conv)
        if self.legacy:
            w1, b1 = fold_pair(self.conv1)
        else:
            w1, b1 = self.conv1.weight, self.conv1.bias
        w = w + to_3x3(w1) + centre(w.shape[0], w)
        if b1 is not None:
            b = b + b1
        if not self.legacy:
            bn = self.bn
            w, b = ref.fold_bn(w, b, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bns = self._bns()
        if any_batch_stats(*bns):
            return self.original_forward(x)
        convs = [conv_bn_pair(self.conv)[0], self.conv1]
        if self.legacy:
            convs[1] = conv_bn_pair(self.conv1)[0]
        w, b = self.cached("dw", fold_sources(*convs, *bns), self._build)
        return ops.dwconv_bn(x, w, b, backend=self.backend)


class FusedRepViTBlock(FusedModule):
    """timm repvit RepViTBlock: y = se(token_mixer(x)); y + conv2(GELU(conv1(y))) with both
    ConvNorms folded, the channel mixer and its residual in one swiftkern.ops.mlp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cm = self.channel_mixer
        (c1, bn1), (c2, bn2) = conv_bn_pair(cm.conv1), conv_bn_pair(cm.conv2)
        if any_batch_stats(bn1, bn2):
            return self.original_forward(x)
        y = self.se(self.token_mixer(x))

        def build():
            w1, b1 = fold_pair(cm.conv1)
            w2, b2 = fold_pair(cm.conv2)
            return pointwise(w1), b1, pointwise(w2), b2

        w1, b1, w2, b2 = self.cached("mlp", fold_sources(c1, bn1, c2, bn2), build)
        return ops.mlp(y, w1, b1, w2, b2, None, y, backend=self.backend)


def mobileone_branches(block: nn.Module, c: int, like: torch.Tensor):
    """A MobileOneBlock (no act / SE, stride 1, depthwise) as one 3x3 depthwise (weight, bias)."""
    w = torch.zeros(c, 1, 3, 3, dtype=like.dtype, device=like.device)
    b = torch.zeros(c, dtype=like.dtype, device=like.device)
    if block.identity is not None:
        s, t = bn_scale_shift(block.identity)
        w = w + to_3x3(s.reshape(c, 1, 1, 1))
        b = b + t
    if block.conv_scale is not None:
        ws, bs = fold_pair(block.conv_scale)
        w, b = w + to_3x3(ws), b + bs
    for branch in block.conv_kxk or ():
        wk, bk = fold_pair(branch)
        w, b = w + wk, b + bk
    return w, b


def mobileone_modules(block: nn.Module) -> list:
    mods: list = [block.identity]
    for cont in ([block.conv_scale] if block.conv_scale is not None else []) + list(
        block.conv_kxk or ()
    ):
        mods.extend(conv_bn_pair(cont))
    return mods


class FusedRepMixer(FusedModule):
    """timm fastvit RepMixer (not yet re-parameterized): x + ls * (mixer(x) - norm(x)), both
    MobileOne blocks sums of depthwise conv+BN branches and BN identities, as one dwconv_bn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = mobileone_modules(self.mixer) + mobileone_modules(self.norm)
        bns = [m for m in mods if m is not None and hasattr(m, "running_var")]
        if any_batch_stats(*bns):
            return self.original_forward(x)

        def build():
            like = next((t for t in srcs if t is not None), x)  # dtype / device of the weights
            wm, bm = mobileone_branches(self.mixer, self.dim, like)
            wn, bn = mobileone_branches(self.norm, self.dim, like)
            g = gamma(self.layer_scale)
            dw, db = wm - wn, bm - bn
            if g is not None:
                dw, db = dw * g.reshape(-1, 1, 1, 1), db * g
            return dw + centre(self.dim, dw), db

        srcs = fold_sources(*mods, self.layer_scale)
        w, b = self.cached("dw", srcs, build)
        return ops.dwconv_bn(x, w, b, backend=self.backend)


class FusedRepMixerBlock(FusedModule):
    """timm fastvit RepMixerBlock: y = token_mixer(x); y + ls * fc2(GELU(fc1(convbn7x7(y)))):
    the 7x7 conv+BN runs folded, fc1 / GELU / fc2 / layer scale / residual in one ops.mlp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.mlp
        if drop_active(mlp.drop, self.training) or drop_active(self.drop_path, self.training):
            return self.original_forward(x)
        x = self.token_mixer(x)
        z = mlp.conv(x)
        w1, w2 = pointwise(mlp.fc1.weight), pointwise(mlp.fc2.weight)
        return ops.mlp(
            z,
            w1,
            mlp.fc1.bias,
            w2,
            mlp.fc2.bias,
            gamma(self.layer_scale),
            x,
            backend=self.backend,
        )


class FusedResidualDwConvBN(FusedModule):
    """timm efficientvit_msra ResidualDrop(ConvNorm dw3x3): x + bn(dw3x3(x)) as one dwconv_bn
    (the identity is the centre tap)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = conv_bn_pair(self.m)
        if bn_uses_batch_stats(bn) or (self.training and self.drop > 0):
            return self.original_forward(x)

        def build():
            w, b = fold_pair(self.m)
            return w + centre(w.shape[0], w), b

        w, b = self.cached("dw", fold_sources(conv, bn), build)
        return ops.dwconv_bn(x, w, b, backend=self.backend)
