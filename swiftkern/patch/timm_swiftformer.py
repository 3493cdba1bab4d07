"""timm swiftformer_*: attention pool "l2" (F.normalize over tokens, SPEC.md 1), NCHW input."""

from __future__ import annotations

import sys

from torch import nn

from ..nn import ConvBlockRoles, FusedEncoderBlock
from . import swiftformer_rules
from ._checks import conv_block_reason, conv_bn_reason

FAMILY = "timm-swiftformer"
ROLES = ConvBlockRoles(
    dw="dwconv",
    bn="norm",
    pw1="pwconv1",
    pw2="pwconv2",
    ls="layer_scale.gamma",
    drop_path="drop_path",
)


def _conv_check(m) -> str | None:
    if not isinstance(m.layer_scale, nn.Identity) and getattr(m.layer_scale, "inplace", False):
        return "layer_scale is in-place"
    return conv_block_reason(m, ROLES.dw, ROLES.bn, ROLES.pw1, ROLES.pw2, ROLES.drop_path)


def _ls_path(m, name: str) -> str | None:
    return None if isinstance(getattr(m, name), nn.Identity) else f"{name}.gamma"


def _block(m, backend):
    return FusedEncoderBlock(
        m, _ls_path(m, "layer_scale_1"), _ls_path(m, "layer_scale_2"), backend=backend
    )


def _embedding_reason(m) -> str | None:
    if isinstance(m.norm, nn.Identity):
        return "no BatchNorm to fold"
    return conv_bn_reason(m, "proj", "norm")


def rules() -> dict:
    if "timm" not in sys.modules:
        return {}
    try:
        from timm.models import swiftformer as tm
    except ImportError:
        return {}
    classes = (
        tm.ConvEncoder,
        tm.LocalRepresentation,
        tm.EfficientAdditiveAttention,
        tm.Mlp,
        tm.Block,
        tm.Embedding,
    )
    return swiftformer_rules(
        FAMILY, classes, ROLES, _conv_check, "l2", "nchw", _block, _embedding_reason
    )
