"""Which backend serves which op: a table {(op, backend) -> kernel} filled at import time.

A kernel has the same signature as the reference function of its op (swiftkern/ops/reference.py)
and may raise :class:`Unsupported` for inputs it does not handle (a dtype, a device). With backend
"auto" the next candidate is then tried and the reference always serves last; an explicitly named
backend that cannot serve raises instead, so a user never gets a different backend than asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


class Unsupported(Exception):
    """Raised by a kernel for inputs it does not handle; "auto" then falls back."""


@dataclass(frozen=True)
class Kernel:
    fn: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...] | None  # None: any floating dtype


_TABLE: dict[tuple[str, str], Kernel] = {}

# Measured on an H100 (session 9; torch 2.11.0+cu130, triton 3.6.0, README "GPU backends"): HF
# SwiftFormer-XS forward, 224x224, fp32, batch 64, median of per-round ratios vs eager in the same
# run: every op on Triton 0.76x and 0.57x (two runs, host load 65 and 122), every op on CUDA C++
# 1.30x and 1.32x. The Triton fp32 kernels keep fp32 dots in IEEE precision (no tensor cores), which
# eager's cuDNN / cuBLAS path does not pay for the convolutions.
_SLOW_TRITON_FP32 = (
    "Triton fp32 forward: SwiftFormer-XS batch 64 on an H100 ran 0.57-0.76x of eager with every "
    "op on Triton (1.38x at batch 1, launch-bound); CUDA C++ 1.30-1.32x (README, GPU backends)"
)
# (op, backend, dtype) -> why "auto" must not pick that kernel: measured slower than the eager
# PyTorch it replaces (numbers in README "Performance"). Explicitly named backends still run it.
SLOWER: dict[tuple[str, str, torch.dtype], str] = {
    (op, "triton", torch.float32): _SLOW_TRITON_FP32
    for op in ("dwconv_bn", "conv_block", "mlp", "additive_attention")
}

# Default order on CUDA devices (see README "GPU backends").
CUDA_PREFERENCE: list[str] = ["triton", "cuda"]
# Per-dtype order from the same H100 measurement: fp32 runs CUDA C++ first (1.30-1.32x of eager
# at XS batch 64 vs Triton's 0.57-0.76x; equal at batch 1), fp16 / bf16 keep Triton first (XS,
# bf16, mostly on Triton: 1.35x / 1.31x of eager fp32 at batch 1 / 64, ~1.4x of eager bf16 by
# medians; CUDA C++ was not measured end to end in bf16). It also covers every
# fp32 backward, where the paper model (triton_kernels/_roofline.py) had already predicted the
# Triton mlp / conv_block backward slower than eager (XS batch 64: 187 vs 132 us at stage 3).
CUDA_DTYPE_ORDER: dict[torch.dtype, list[str]] = {torch.float32: ["cuda", "triton"]}
# Per-op order measured on a GPU by `swiftkern bench ops --write-backend-table PATH`, loaded from
# $SWIFTKERN_CUDA_TABLE (a JSON {op: ["cuda", "triton"], ...}); it overrides both orders above.
CUDA_TABLE: dict[str, list[str]] = {}


def load_cuda_table(path: str | None = None) -> dict[str, list[str]]:
    """Read a backend-order table (see CUDA_TABLE); invalid entries are rejected loudly."""
    import json
    import os

    path = path or os.environ.get("SWIFTKERN_CUDA_TABLE")
    if not path:
        return {}
    with open(path) as f:
        data = json.load(f)
    table = {}
    for op, order in data.get("order", data).items():
        if not isinstance(order, list) or not set(order) <= {"cuda", "triton"}:
            raise ValueError(f"{path}: {op}: order must be a list of 'cuda'/'triton', got {order}")
        table[op] = list(order)
    return table


def register_kernel(
    op: str,
    backend: str,
    fn: Callable,
    devices: tuple[str, ...],
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> None:
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"unknown backend {backend!r}")
    _TABLE[(op, backend)] = Kernel(fn, devices, dtypes)


def kernel_for(op: str, backend: str) -> Kernel | None:
    return _TABLE.get((op, backend))


def candidates(device: torch.device, backend: str, op: str | None = None,
               dtype: torch.dtype | None = None) -> list[str]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return [backend]
    if device.type == "cpu":
        return ["cpu", "reference"]
    if device.type == "cuda":
        order = CUDA_TABLE.get((op or "").removesuffix("_backward")) or CUDA_DTYPE_ORDER.get(
            dtype, CUDA_PREFERENCE
        )
        return [*order, *[b for b in CUDA_PREFERENCE if b not in order], "reference"]
    return ["reference"]


def _accepts(k: Kernel, device: torch.device, dtype: torch.dtype) -> bool:
    return device.type in k.devices and (k.dtypes is None or dtype in k.dtypes)


def _usable(op: str, name: str, backend: str, device, dtype) -> Kernel | None:
    k = _TABLE.get((op, name))
    if k is None or not _accepts(k, device, dtype):
        return None
    if backend == "auto" and (op, name, dtype) in SLOWER:
        return None
    return k


def dispatch(op: str, backend: str, device: torch.device, dtype: torch.dtype, *args):
    """Run `op` on the first backend that serves (device, dtype); see module docstring."""
    tried = []
    for name in candidates(device, backend, op, dtype):
        k = _usable(op, name, backend, device, dtype)
        if k is None:
            tried.append(f"{name}: not available for {device.type}/{dtype}")
            continue
        try:
            return k.fn(*args)
        except Unsupported as e:
            tried.append(f"{name}: {e}")
    raise NotImplementedError(
        f"swiftkern.{op}: backend {backend!r} cannot serve device={device.type} dtype={dtype} "
        f"({'; '.join(tried)})"
    )


def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Name of the backend `dispatch` would try first for these inputs (None if none)."""
    for name in candidates(device, backend, op, dtype):
        if _usable(op, name, backend, device, dtype) is not None:
            return name
    return None


def table() -> dict[tuple[str, str], Kernel]:
    return dict(_TABLE)
