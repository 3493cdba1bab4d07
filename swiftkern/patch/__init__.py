"""Patch tables: {original class -> Rule} per model family, and the generic patterns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Rule:
    """How to replace one original class.

    check(module) returns None when the module computes the math the fused module reproduces,
    else the reason it does not. build(module, backend) returns the fused module. ops lists the
    swiftkern ops the fused module calls (used to decide whether a fast kernel serves them).
    """

    family: str
    check: Callable[[nn.Module], str | None]
    build: Callable[[nn.Module, str], nn.Module]
    ops: tuple[str, ...]


def swiftformer_rules(
    family: str,
    classes: tuple[type, type, type, type, type, type],
    roles,
    conv_check: Callable[[nn.Module], str | None],
    pool: str,
    layout: str,
    block: Callable[[nn.Module, str], nn.Module],
    embedding_check: Callable[[nn.Module], str | None],
) -> dict[type, Rule]:
    """The table of one SwiftFormer family. classes: (ConvEncoder, LocalRepresentation,
    attention, Mlp, encoder block, Embedding); the families differ in attribute names (roles),
    the attention pool and input layout, and how layer scales are stored."""
    from ..nn import FusedAdditiveAttention, FusedConvBlock, FusedConvBN, FusedMlp
    from ._checks import attention_reason, mlp_reason

    conv_enc, local_rep, attn, mlp, blk, emb = classes
    conv_rule = Rule(family, conv_check, lambda m, b: FusedConvBlock(m, roles, b), ("conv_block",))
    return {
        conv_enc: conv_rule,
        local_rep: conv_rule,
        attn: Rule(
            family,
            attention_reason,
            lambda m, b: FusedAdditiveAttention(m, pool=pool, layout=layout, backend=b),
            ("additive_attention",),
        ),
        mlp: Rule(family, mlp_reason, lambda m, b: FusedMlp(m, b), ("mlp",)),
        blk: Rule(family, lambda m: None, block, ()),
        emb: Rule(family, embedding_check, lambda m, b: FusedConvBN(m, "proj", "norm", b), ()),
    }


def rules() -> dict[type, Rule]:
    """All rules for the families whose library is installed (imported lazily)."""
    table: dict[type, Rule] = {}
    from . import hf, timm_swiftformer, timm_vits

    for mod in (hf, timm_swiftformer, timm_vits):
        table.update(mod.rules())
    return table
