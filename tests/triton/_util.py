"""Helpers shared by the Triton tests: references at fp32 and at the half dtype, and the
SPEC.md section 3 checks from tests/tolerances.py. (The interpreter truncates fp32->bf16 casts; the
kernels round explicitly there, so no extra allowance is needed.)"""

from __future__ import annotations

import torch
from cases import attn_args
from tolerances import HALF_FACTOR, HALF_FLOOR, assert_close


def to(args, dtype):
    return [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]


def tup(out):
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def check(fn, ref, args, dtype=torch.float32, what="", n_check=None):
    """Run fn (a Triton launcher) on args cast to dtype and compare every output with ref."""
    ref32 = tup(ref(*args))
    out = tup(fn(*to(args, dtype)))
    n = len(ref32) if n_check is None else n_check
    if dtype == torch.float32:
        for i in range(n):
            assert out[i].dtype == dtype
            assert_close(out[i], ref32[i], torch.float32, what=f"{what} out{i}")
        return out
    half = tup(ref(*to(args, dtype)))
    for i in range(n):
        assert out[i].dtype == dtype, f"{what}: dtype {out[i].dtype}"
        base = (half[i].double() - ref32[i].double()).abs().max().item()
        err = (out[i].double() - ref32[i].double()).abs().max().item()
        mx = max(1.0, ref32[i].abs().max().item())
        bound = HALF_FACTOR * base + HALF_FLOOR[dtype] * mx
        assert err <= bound, \
            f"{what} out{i} {dtype}: err {err:.3e} > {bound:.3e} (torch {base:.3e})"
    return out


def grads_of(fn, args, tensor_idx, seed=1):
    a = [t.detach().clone().requires_grad_(True) if i in tensor_idx else t
         for i, t in enumerate(args)]
    y = tup(fn(*a))[0]
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    gr = torch.autograd.grad(y, [a[i] for i in tensor_idx], g, allow_unused=True)
    return g, gr


def module_args(shape, pool, final=True, biases=True, t_out=None, seed=0):
    """additive_attention arguments [x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final,
    b_final, pool]; t_out: the final linear maps D -> t_out (timm's token_dim); biases=False
    drops b_qk, b_proj and b_final."""
    args = attn_args("additive_attention", shape, pool, final=final, seed=seed).args
    g = torch.Generator().manual_seed(seed + 1)
    d = shape[-1]
    if final and t_out is not None:
        args[7] = torch.randn(t_out, d, generator=g) * d**-0.5
        args[8] = torch.randn(t_out, generator=g) * 0.1
    if not biases:
        args[2] = args[6] = args[8] = None
    return args


def check_grad_masks(backward, reference, args, masks, n=8, skip=()):
    """For each grad_mask: the wanted gradients match the reference (fp32), the others (and the
    indices in `skip`, e.g. of an argument passed as None) come back empty."""
    for mask in masks:
        got = backward(*args, mask)
        ref = reference(*args, mask)
        for i in range(n):
            if mask[i] and i not in skip:
                assert_close(got[i], ref[i], torch.float32, what=f"mask {mask} grad {i}")
            else:
                assert got[i].numel() == 0, f"mask {mask}: grad {i} not empty"
