"""Cold against warm weights for the batch-1 pointwise GEMMs of SwiftFormer's late stages: MKL's
packed sgemm (what the fused modules run there) and at::mm, timed with a 64 MB buffer read
between calls (weights, input and output evicted from L2) and back to back (all in cache). The
extra time of a cold call is what fetching the weights (and the input, and the output's lines)
from memory adds; the weight bytes over it are shown as a rate, to compare with the bandwidth in
`swiftkern bench`'s roofline line.

    python benchmarks/cold_gemm.py [--threads 2] [--reps 25]
"""

from __future__ import annotations

import torch
from bench_common import FLUSH_FLOATS, median_us, threads_parser

# (rows, in, out): L1 stage 4 pw1 / pw2 at batch 1 (7x7), L1 stage 3 pw1 (14x14), L3 stage 4 pw1,
# L1 stage 4 pw1 at batch 8
SHAPES = ((49, 384, 1536), (49, 1536, 384), (196, 192, 768), (49, 512, 2048), (392, 384, 1536))


def main() -> None:
    a = threads_parser(__doc__, reps=25).parse_args()
    torch.set_num_threads(a.threads)
    flush = torch.ones(FLUSH_FLOATS)

    def cold_us(fn) -> float:
        return median_us(fn, flush.sum, a.reps)

    def warm_us(fn) -> float:
        return median_us(fn, lambda: None, a.reps)

    with torch.no_grad():
        for m, k, n in SHAPES:
            x, w = torch.randn(m, k), torch.randn(n, k)
            wt = w.t().contiguous()
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
            mb = w.numel() * 4 / 1e6
            for name, fn in (
                ("mkl packed", lambda: torch.ops.mkl._mkl_linear(x, packed, w, None, m)),  # noqa: B023
                ("at::mm", lambda: torch.mm(x, wt)),  # noqa: B023
            ):
                cold, warm = cold_us(fn), warm_us(fn)
                extra = cold - warm
                rate = mb * 1e3 / extra if extra > 0 else float("inf")
                print(f"{m}x{k}x{n} {name:10s} weights {mb:.1f} MB: cold {cold:.0f} us, warm "
                      f"{warm:.0f} us ({2 * m * k * n / warm / 1e3:.0f} GFLOP/s); cold - warm = "
                      f"{extra:.0f} us ({rate:.1f} GB/s of weights)")


if __name__ == "__main__":
    main()
