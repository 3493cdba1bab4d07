"""Per op: the bf16 CPU conv_block / mlp kernels converting per tile (SWIFTKERN_CPU_HALF_TILES=1,
the default) against converting the whole tensors around the fp32 kernel (=0), and the fp32
kernel on the same values, called in turn (interleaved) on SwiftFormer-XS stage-1 / stage-2
shapes, channels_last, fp32 weights (what the fused modules pass). Prints the medians and the
median of per-round ratios whole / tiles with its IQR.

    python benchmarks/half_storage_ab.py [--threads 2] [--rounds 30]
"""

from __future__ import annotations

import os
import time

import torch
from bench_common import restored_env, threads_parser

import swiftkern  # noqa: F401  (loads the kernels)
from swiftkern.bench.stats import per_round_ratios, summarize

# (B, C, H, W, hidden)
SHAPES = ((1, 48, 56, 56, 192), (8, 48, 56, 56, 192), (1, 56, 28, 28, 224), (8, 56, 28, 28, 224))


def main() -> None:
    a = threads_parser(__doc__, rounds=30).parse_args()
    torch.set_num_threads(a.threads)
    ops = torch.ops.swiftkern_C
    with restored_env("SWIFTKERN_CPU_HALF_TILES"):
        for b, c, h, w, hd in SHAPES:
            x32 = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
            x16 = x32.bfloat16()
            dw = (torch.randn(c, 1, 3, 3) * 0.3, torch.randn(c))
            pw = (torch.randn(hd, c) * c**-0.5, torch.randn(hd), torch.randn(c, hd) * hd**-0.5,
                  torch.randn(c), torch.rand(c) + 0.5)
            for name in ("conv_block", "mlp"):
                def call(x, name=name):
                    if name == "conv_block":
                        return ops.conv_block(x, *dw, *pw)
                    return ops.mlp(x, *pw, x)

                times: dict[str, list[float]] = {"tiles": [], "whole": [], "fp32": []}
                for _ in range(a.rounds):
                    for k, v in times.items():
                        os.environ["SWIFTKERN_CPU_HALF_TILES"] = "0" if k == "whole" else "1"
                        x = x32 if k == "fp32" else x16
                        t0 = time.perf_counter()
                        call(x)
                        v.append(time.perf_counter() - t0)
                r = summarize(per_round_ratios(times["whole"], times["tiles"]))
                med = {k: summarize(v).median * 1e6 for k, v in times.items()}
                print(f"{name} {b}x{c}x{h}x{w} bf16: per tile {med['tiles']:.0f} us, whole "
                      f"tensors {med['whole']:.0f} us, fp32 kernel {med['fp32']:.0f} us; "
                      f"speed-up {r.median:.3f}x [IQR {r.q1:.3f}-{r.q3:.3f}]")


if __name__ == "__main__":
    main()
