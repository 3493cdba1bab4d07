"""Per-block speed of what optimize() swaps in (the fused modules, with their cached folded and
MKL-packed weights) against the eager HF module it replaces, at SwiftFormer-XS stage 1
(C=48, 56x56) and stage 4 (C=220, 7x7): the issue-4 ">= 3x per fused block" comparison.

    python benchmarks/module_blocks_bench.py [--threads 2] [--batch 1,8] [--pairs 40]

The eager module runs on NCHW and on channels_last input and the faster of the two is the
baseline; the fused module runs on channels_last input (how an optimized SwiftFormer runs inside
on a CPU). Calls alternate (one of each, repeated, after warm-up); medians of each and the median
of per-pair ratios eager / swiftkern (> 1: swiftkern faster) with its IQR.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from transformers import SwiftFormerConfig
from transformers.models.swiftformer import modeling_swiftformer as hf

import swiftkern
from swiftkern.bench.models import randomize_


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--pairs", type=int, default=40)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = SwiftFormerConfig()
    kinds = {
        "ConvEncoder": lambda c: hf.SwiftFormerConvEncoder(cfg, c),
        "LocalRepresentation": lambda c: hf.SwiftFormerLocalRepresentation(cfg, c),
        "Mlp": lambda c: hf.SwiftFormerMlp(cfg, c),
        "Attention (tokens)": lambda c: hf.SwiftFormerEfficientAdditiveAttention(cfg, c),
        "EncoderBlock": lambda c: hf.SwiftFormerEncoderBlock(cfg, c),
    }
    print(f"threads {a.threads}; median ms; ratio = best eager / swiftkern, median [IQR]")
    for b in [int(s) for s in a.batch.split(",")]:
        for stage, (c, hw) in (("stage 1", (48, 56)), ("stage 4", (220, 7))):
            for name, make in kinds.items():
                eager = randomize_(make(c)).eval()
                # (in a Sequential: optimize() swaps children, never the root)
                fused = swiftkern.optimize(nn.Sequential(copy.deepcopy(eager)))
                if name.startswith("Attention"):
                    x = torch.randn(b, hw * hw, c)
                    xs = {"tokens": x}
                    xf = x
                else:
                    x = torch.randn(b, c, hw, hw)
                    xcl = x.contiguous(memory_format=torch.channels_last)
                    xs = {"nchw": x, "cl": xcl}
                    xf = xcl
                with torch.no_grad():
                    for _ in range(5):
                        fused(xf)
                        for v in xs.values():
                            eager(v)
                    te = {k: [] for k in xs}
                    tf = []
                    for _ in range(a.pairs):
                        tf.append(_time(lambda: fused(xf)))
                        for k, v in xs.items():
                            te[k].append(_time(lambda v=v: eager(v)))
                best = min(te, key=lambda k: statistics.median(te[k]))
                ratios = [e / f for e, f in zip(te[best], tf)]
                q = statistics.quantiles(ratios, n=4)
                me = statistics.median(te[best]) * 1e3
                print(
                    f"b{b} {stage} {name:20s} eager[{best}] {me:7.3f}"
                    f"  swiftkern {statistics.median(tf) * 1e3:7.3f}  "
                    f"{statistics.median(ratios):.2f}x [{q[0]:.2f}-{q[2]:.2f}]"
                )


if __name__ == "__main__":
    main()
