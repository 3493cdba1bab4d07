"""HF transformers SwiftFormer: attention pool "sum" (softmax over a size-1 dim, SPEC.md 1)."""

from __future__ import annotations

import sys

from ..nn import ConvBlockRoles, FusedEncoderBlock
from . import swiftformer_rules
from ._checks import conv_block_reason, conv_bn_reason

FAMILY = "hf-swiftformer"
ROLES = ConvBlockRoles(
    dw="depth_wise_conv",
    bn="norm",
    pw1="point_wise_conv1",
    pw2="point_wise_conv2",
    ls="layer_scale",
    drop_path="drop_path",
)
_CONV_CHECK = lambda m: conv_block_reason(
    m, ROLES.dw, ROLES.bn, ROLES.pw1, ROLES.pw2, ROLES.drop_path
)


def _block(m, backend):
    ls = ("layer_scale_1", "layer_scale_2") if m.use_layer_scale else (None, None)
    return FusedEncoderBlock(m, *ls, backend=backend)


def rules() -> dict:
    if "transformers" not in sys.modules:  # a model of this family implies it was imported
        return {}
    try:
        from transformers.models.swiftformer import modeling_swiftformer as hf
    except ImportError:
        return {}
    classes = (
        hf.SwiftFormerConvEncoder,
        hf.SwiftFormerLocalRepresentation,
        hf.SwiftFormerEfficientAdditiveAttention,
        hf.SwiftFormerMlp,
        hf.SwiftFormerEncoderBlock,
        hf.SwiftFormerEmbeddings,
    )
    return swiftformer_rules(
        FAMILY,
        classes,
        ROLES,
        _CONV_CHECK,
        "sum",
        "tokens",
        _block,
        lambda m: conv_bn_reason(m, "proj", "norm"),
    )
