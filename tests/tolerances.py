"""The one tolerance table of the test suite (SPEC.md section 3)."""

from __future__ import annotations

import torch

# fp32/fp64: max |out - ref| <= RTOL[dtype] * max(1, max |ref|).
RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}
# End-to-end logits (whole models), fp32.
MODEL_RTOL = {torch.float32: 1e-3, torch.float64: 1e-8}
# The fp32 CPU kernels' GELU (a rational erf, csrc/cpu/cpu_common.h) per element:
# |gelu(x) - exact| <= GELU_FP32 * max(1, |x|). ATen's own fp32 GELU measures 1.7e-7 on the same
# grid, the rational 1.8e-7 (tools/fit_gelu.py).
GELU_FP32 = 3e-7
# Half types (flash-attention's rule): error vs the fp32 reference <= FACTOR x the error of the
# same computation done in plain PyTorch at that dtype, plus FLOOR * max(1, max |ref|).
HALF_FACTOR = 2.0
HALF_FLOOR = {torch.bfloat16: 1e-3, torch.float16: 1e-4}


def bound(ref: torch.Tensor, dtype: torch.dtype, table=RTOL) -> float:
    return table[dtype] * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)


def assert_close(
    out: torch.Tensor,
    ref: torch.Tensor,
    dtype: torch.dtype | None = None,
    table=RTOL,
    what: str = "",
) -> None:
    dtype = dtype or out.dtype
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0
    b = bound(ref, dtype, table)
    assert err <= b, f"{what}: max|out-ref| = {err:.3e} > {b:.3e} ({dtype})"


def assert_close_half(
    out: torch.Tensor, ref32: torch.Tensor, torch_half: torch.Tensor, what: str = ""
) -> None:
    """out, torch_half: results at a half dtype; ref32: the fp32 reference."""
    assert out.shape == ref32.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    base = (torch_half.double() - ref32.double()).abs().max().item()
    err = (out.double() - ref32.double()).abs().max().item()
    floor = HALF_FLOOR[out.dtype] * max(1.0, ref32.abs().max().item())
    b = HALF_FACTOR * base + floor
    assert err <= b, (
        f"{what}: {out.dtype} error {err:.3e} > {HALF_FACTOR} x plain-PyTorch error "
        f"{base:.3e} + floor {floor:.3e}"
    )
