"""Functional API: every swiftkern op, its reference, and the BN-folding helpers."""

from .additive_attention import additive_attention, additive_attention_core
from .conv_block import conv_block, conv_block_train
from .dwconv_bn import dwconv_bn, dwconv_bn_train
from .mlp import mlp, mlp_train
from .reference import fold_bn, fold_bn_into_next, update_running_stats

OP_NAMES = (
    "additive_attention",
    "additive_attention_core",
    "dwconv_bn",
    "dwconv_bn_train",
    "conv_block",
    "conv_block_train",
    "mlp",
    "mlp_train",
)

__all__ = [
    "OP_NAMES",
    "additive_attention",
    "additive_attention_core",
    "conv_block",
    "conv_block_train",
    "dwconv_bn",
    "dwconv_bn_train",
    "fold_bn",
    "fold_bn_into_next",
    "mlp",
    "mlp_train",
    "update_running_stats",
]
