"""Triton kernels and launchers, installed as ``swiftkern.triton_kernels``.

Importing this package never imports Triton. ``register()`` only checks that Triton is installed
(``importlib.util.find_spec``, no import) and registers thin launchers in swiftkern's backend table
under the name "triton": for CUDA tensors, plus CPU tensors when ``TRITON_INTERPRET=1`` (how CI runs
these kernels without a GPU). Triton itself is imported on the first call of a launcher: importing
it costs 0.4-1.8 s here (measured), too much for ``import swiftkern``.

Modules: ``_conv`` (dwconv_bn, mlp, conv_block and their train forms / backward), ``_backward``
(mlp / conv_block backward), ``_attention`` (additive attention core and module),
``_attention_fused`` (the module forward as two fused kernels, GEMMs included),
``_attention_backward`` (their backward), ``_attention_backward_fused`` (the module backward as
three fused kernels), ``_train_backward`` (backward of the train forms:
BatchNorm through batch statistics), ``_specs`` (every shipped config, for the AOT report),
``_roofline`` (bytes / FLOPs model, no Triton needed).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from ._roofline import roofline

__all__ = ["available", "register", "roofline", "LAUNCHERS"]

# op name -> (module, function). Every entry has a Triton launcher with the reference signature.
LAUNCHERS: dict[str, tuple[str, str]] = {
    "dwconv_bn": ("_conv", "dwconv_bn"),
    "dwconv_bn_train": ("_conv", "dwconv_bn_train"),
    "mlp": ("_conv", "mlp"),
    "mlp_train": ("_conv", "mlp_train"),
    "conv_block": ("_conv", "conv_block"),
    "conv_block_train": ("_conv", "conv_block_train"),
    "additive_attention_core": ("_attention", "additive_attention_core"),
    "additive_attention": ("_attention", "additive_attention"),
    "dwconv_bn_backward": ("_conv", "dwconv_bn_backward"),
    "mlp_backward": ("_backward", "mlp_backward"),
    "conv_block_backward": ("_backward", "conv_block_backward"),
    "additive_attention_core_backward": ("_attention_backward", "additive_attention_core_backward"),
    "additive_attention_backward": ("_attention_backward", "additive_attention_backward"),
    "dwconv_bn_train_backward": ("_train_backward", "dwconv_bn_train_backward"),
    "mlp_train_backward": ("_train_backward", "mlp_train_backward"),
    "conv_block_train_backward": ("_train_backward", "conv_block_train_backward"),
}


def available() -> bool:
    """True when Triton is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _lazy(module: str, fn: str):
    target = None

    def launcher(*args):
        nonlocal target
        if target is None:
            from swiftkern._registry import Unsupported

            try:
                mod = importlib.import_module(f"{__name__}.{module}")
            except ImportError as e:  # a broken Triton install degrades to the next backend
                raise Unsupported(f"triton import failed: {e}") from e
            target = getattr(mod, fn)
        return target(*args)

    launcher.__name__ = f"triton_{fn}"
    launcher.__qualname__ = launcher.__name__
    return launcher


def register() -> None:
    """Register every Triton launcher in swiftkern's backend table (no-op without Triton)."""
    if not available():
        return
    import torch

    from swiftkern._registry import register_kernel

    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    devices = ("cuda", "cpu") if interpret else ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    for op, (module, fn) in LAUNCHERS.items():
        register_kernel(op, "triton", _lazy(module, fn), devices=devices, dtypes=dtypes)
