"""Per op: the fp32 CPU conv_block / mlp kernels with the tile scheduling balanced
(SWIFTKERN_CPU_TILE_BALANCE=1, the default: tiles from a shared counter, rows per tile evened
out over the threads) against the largest tile that fits the cache budget in one fixed chunk
per thread (=0), called in turn (interleaved; each sample the median of --calls calls), on the
SwiftFormer shapes where the rows differ and two where only the scheduling does (channels_last,
fp32 weights: what the fused modules pass). Prints the rows per tile each side ran (0: the
whole-tensor GEMMs), the medians and the median of per-round ratios largest / balanced with its
IQR.

    python benchmarks/tile_balance_ab.py [--threads 2] [--rounds 15] [--calls 9]
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from bench_common import restored_env, threads_parser

import swiftkern  # noqa: F401  (loads the kernels)
from swiftkern.bench.stats import per_round_ratios, summarize

# (B, C, H, W, hidden): XS / S / L1 stage 1, XS stage 2, S stage 2, at batch 1 and 8 (at batch
# 8 only the scheduling differs: the rows are the largest on both sides)
SHAPES = ((1, 48, 56, 56, 192), (1, 56, 28, 28, 224), (1, 64, 28, 28, 256),
          (8, 48, 56, 56, 192), (8, 56, 28, 28, 224))
ENV = "SWIFTKERN_CPU_TILE_BALANCE"


def main() -> None:
    a = threads_parser(__doc__, rounds=15, calls=9).parse_args()
    torch.set_num_threads(a.threads)
    ops = torch.ops.swiftkern_C
    with restored_env(ENV):
        for b, c, h, w, hd in SHAPES:
            x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
            dw = (torch.randn(c, 1, 3, 3) * 0.3, torch.randn(c))
            pw = (torch.randn(hd, c) * c**-0.5, torch.randn(hd), torch.randn(c, hd) * hd**-0.5,
                  torch.randn(c), torch.rand(c) + 0.5)
            rows = {}
            for v in ("1", "0"):
                os.environ[ENV] = v
                rows[v] = ops.pointwise_tile_rows(x, pw[0], pw[2])
            for name in ("conv_block", "mlp"):
                def call(name=name):
                    if name == "conv_block":
                        return ops.conv_block(x, *dw, *pw)
                    return ops.mlp(x, *pw, x)

                times: dict[str, list[float]] = {"1": [], "0": []}
                for v in times:
                    os.environ[ENV] = v
                    call()  # warm-up
                for _ in range(a.rounds):
                    for v, ts in times.items():
                        os.environ[ENV] = v
                        samples = []
                        for _ in range(a.calls):
                            t0 = time.perf_counter()
                            call()
                            samples.append(time.perf_counter() - t0)
                        ts.append(statistics.median(samples))
                r = summarize(per_round_ratios(times["0"], times["1"]))
                med = {k: summarize(v).median * 1e6 for k, v in times.items()}
                print(f"{name} {b}x{c}x{h}x{w}: balanced ({rows['1']} rows) {med['1']:.0f} us, "
                      f"largest ({rows['0']} rows) {med['0']:.0f} us; speed-up "
                      f"{r.median:.3f}x [IQR {r.q1:.3f}-{r.q3:.3f}] over {a.rounds} rounds "
                      f"({a.threads} threads)")


if __name__ == "__main__":
    main()
