"""The last step of the fused backward kernels: sum their per-program fp32 partials over the
leading (program) dimension and store each result in its gradient's dtype, for up to MAX_PAIRS
gradients in one launch.

The fused backwards write deterministic partials instead of using atomics; summing them with
torch costs one reduction plus one cast launch per gradient (9 launches in the MLP backward).
`sum_partials` does all of them in one kernel: program ids are handed out gradient by gradient,
each program reduces BLOCK elements over the partial rows in a fixed order (the same fp32 sum
torch's reduction makes, up to the order of the additions) and rounds once on the store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._conv import _cast_out

MAX_PAIRS = 5
BLOCK = 512


@triton.jit
def _sum_rows(src_ptr, dst_ptr, rows, n, stride, blk, BLOCK: tl.constexpr):
    """dst[i] = sum_r src[r * stride + i] for i in block blk of n elements (fp32 sum)."""
    offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = offs < n
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = src_ptr + offs
    for _ in range(rows):
        acc += tl.load(ptrs, mask=m, other=0.0)
        ptrs += stride  # 64-bit pointer arithmetic: no int32 row offset to overflow
    tl.store(dst_ptr + offs, _cast_out(acc, dst_ptr), mask=m)


@triton.jit
def _sum_partials_kernel(
    src0_ptr, dst0_ptr, rows0, n0, stride0,
    src1_ptr, dst1_ptr, rows1, n1, stride1,
    src2_ptr, dst2_ptr, rows2, n2, stride2,
    src3_ptr, dst3_ptr, rows3, n3, stride3,
    src4_ptr, dst4_ptr, rows4, n4, stride4,
    BLOCK: tl.constexpr,
):
    """Program pid serves the gradient whose block range holds it (n = 0: no programs)."""
    pid = tl.program_id(0)
    e0 = tl.cdiv(n0, BLOCK)
    e1 = e0 + tl.cdiv(n1, BLOCK)
    e2 = e1 + tl.cdiv(n2, BLOCK)
    e3 = e2 + tl.cdiv(n3, BLOCK)
    if pid < e0:
        _sum_rows(src0_ptr, dst0_ptr, rows0, n0, stride0, pid, BLOCK)
    elif pid < e1:
        _sum_rows(src1_ptr, dst1_ptr, rows1, n1, stride1, pid - e0, BLOCK)
    elif pid < e2:
        _sum_rows(src2_ptr, dst2_ptr, rows2, n2, stride2, pid - e1, BLOCK)
    elif pid < e3:
        _sum_rows(src3_ptr, dst3_ptr, rows3, n3, stride3, pid - e2, BLOCK)
    else:
        _sum_rows(src4_ptr, dst4_ptr, rows4, n4, stride4, pid - e3, BLOCK)


def sum_partials(pairs):
    """pairs: up to MAX_PAIRS (partials, out) with partials an fp32 tensor [R, ...] whose rows
    are equally strided and each row's trailing dims contiguous, and out a contiguous tensor of
    the trailing shape, any float dtype: out = partials.sum(0) rounded to out's dtype."""
    if not pairs:
        return
    if len(pairs) > MAX_PAIRS:
        raise ValueError(f"sum_partials: at most {MAX_PAIRS} pairs, got {len(pairs)}")
    args, blocks = [], 0
    for src, dst in pairs:
        n = dst.numel()
        rows = src.shape[0]
        if (src.dtype != torch.float32 or not dst.is_contiguous()
                or src.shape[1:] != dst.shape or (rows and not src[0].is_contiguous())):
            raise ValueError(f"sum_partials: bad pair {tuple(src.shape)} {src.dtype} -> "
                             f"{tuple(dst.shape)}")
        args += [src, dst, rows, n, src.stride(0) if rows > 1 else n]
        blocks += triton.cdiv(n, BLOCK)
    dummy_src, dummy_dst = pairs[0]
    for _ in range(MAX_PAIRS - len(pairs)):
        args += [dummy_src, dummy_dst, 0, 0, 0]
    if blocks:
        _sum_partials_kernel[(blocks,)](*args, BLOCK=BLOCK, num_warps=4)
