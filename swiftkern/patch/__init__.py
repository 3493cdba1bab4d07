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


def rules() -> dict[type, Rule]:
    """All rules for the families whose library is installed (imported lazily)."""
    table: dict[type, Rule] = {}
    from . import hf, timm_swiftformer

    for mod in (hf, timm_swiftformer):
        table.update(mod.rules())
    return table
