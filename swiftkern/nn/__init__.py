"""Fused nn.Modules, each built from an original module without copying its weights."""

from .attention import FusedAdditiveAttention
from .conv_block import ConvBlockRoles, FusedConvBlock
from .conv_bn import FusedConvBN
from .encoder_block import FusedEncoderBlock
from .mlp import FusedMlp

__all__ = [
    "ConvBlockRoles",
    "FusedAdditiveAttention",
    "FusedConvBN",
    "FusedConvBlock",
    "FusedEncoderBlock",
    "FusedMlp",
]
