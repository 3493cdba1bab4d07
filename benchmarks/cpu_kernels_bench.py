"""Per-block speed of the swiftkern CPU kernels against the eager PyTorch module sequence they
replace (HF SwiftFormer modules in eval mode, BN statistics randomized), measured side by side.

    python benchmarks/cpu_kernels_bench.py [--threads 2] [--reps 60] [--dtype float32|bfloat16]

Shapes: SwiftFormer-XS stage 1 (C=48, 56x56) and stage 4 (C=220, 7x7), batch 1 and 8. A and B
are timed alternately (one call each, repeated), the median of each is reported with the ratio
eager / swiftkern (> 1 means swiftkern is faster). Inputs NCHW unless the row says "cl".
On a shared machine use --threads 1 --cpu-time (thread CPU clock) for stable ratios.
Environment: SWIFTKERN_CPU_CONV_STRATEGY=tile|unfused forces the conv-block strategy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import SwiftFormerConfig
from transformers.models.swiftformer.modeling_swiftformer import (
    SwiftFormerConvEncoder,
    SwiftFormerEfficientAdditiveAttention,
    SwiftFormerMlp,
)

from swiftkern.ops.reference import fold_bn, fold_bn_into_next

ops = torch.ops.swiftkern


def randomize_(mod: torch.nn.Module) -> torch.nn.Module:
    """SPEC.md section 3: randomized BN statistics/affine and layer scales."""
    with torch.no_grad():
        for m in mod.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
        for name, p in mod.named_parameters():
            if "layer_scale" in name:
                p.uniform_(0.5, 1.5)
    return mod.eval()


CLOCK = time.perf_counter


def alternate(fa, fb, reps: int) -> tuple[float, float]:
    for _ in range(3):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(reps):
        t0 = CLOCK()
        fa()
        t1 = CLOCK()
        fb()
        t2 = CLOCK()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def conv_block_args(m: SwiftFormerConvEncoder, dtype):
    bn = m.norm
    dw_w, dw_b = fold_bn(m.depth_wise_conv.weight, m.depth_wise_conv.bias, bn.weight, bn.bias,
                         bn.running_mean, bn.running_var, bn.eps)
    c = dw_w.shape[0]
    args = (dw_w, dw_b, m.point_wise_conv1.weight.flatten(1), m.point_wise_conv1.bias,
            m.point_wise_conv2.weight.flatten(1), m.point_wise_conv2.bias, m.layer_scale.reshape(c))
    return tuple(a.detach().to(dtype) for a in args)


def mlp_args(m: SwiftFormerMlp, ls: torch.Tensor, dtype):
    bn = m.norm1
    w1, b1 = fold_bn_into_next(m.fc1.weight.flatten(1), m.fc1.bias, bn.weight, bn.bias,
                               bn.running_mean, bn.running_var, bn.eps)
    args = (w1, b1, m.fc2.weight.flatten(1), m.fc2.bias, ls)
    return tuple(a.detach().to(dtype) for a in args)


def attention_args(m: SwiftFormerEfficientAdditiveAttention, dtype):
    w_qk = torch.cat([m.to_query.weight, m.to_key.weight])
    b_qk = torch.cat([m.to_query.bias, m.to_key.bias])
    args = (w_qk, b_qk, m.w_g.reshape(-1))
    rest = (m.proj.weight, m.proj.bias, m.final.weight, m.final.bias)
    return tuple(a.detach().to(dtype) for a in args), tuple(a.detach().to(dtype) for a in rest), \
        m.scale_factor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--only", default="",
                    help="comma list of blocks: conv_block,mlp,dwconv_bn,attention")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the thread's CPU clock (needs --threads 1): robust on a shared "
                    "machine where wall time includes time other processes held the core")
    args = ap.parse_args()
    if args.cpu_time:
        if args.threads != 1:
            ap.error("--cpu-time needs --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    only = set(args.only.split(",")) if args.only else None
    cfg = SwiftFormerConfig()
    from swiftkern import _ext

    print(f"torch {torch.__version__}, threads {args.threads}, swiftkern CPU ISA {_ext.CPU_ISA}, "
          f"dtype {args.dtype} (eager runs the same dtype)")
    print(f"{'block':<22}{'shape':<18}{'eager ms':>10}{'swiftkern ms':>14}{'speedup':>9}")

    def row(name, shape, fa, fb):
        try:
            fb()
        except NotImplementedError as e:
            why = str(e).splitlines()[0][:60]
            print(f"{name:<22}{shape:<18}  swiftkern cpu kernel missing: {why}")
            return
        ta, tb = alternate(fa, fb, args.reps)
        print(f"{name:<22}{shape:<18}{ta:>10.3f}{tb:>14.3f}{ta / tb:>8.2f}x")

    with torch.no_grad():
        for b, c, hw in [(1, 48, 56), (1, 220, 7), (8, 48, 56), (8, 220, 7)]:
            shape = f"B{b} C{c} {hw}x{hw}"
            x = torch.randn(b, c, hw, hw, dtype=dtype)
            xcl = x.contiguous(memory_format=torch.channels_last)
            if only is None or "conv_block" in only:
                m = randomize_(SwiftFormerConvEncoder(cfg, c)).to(dtype)
                ka = conv_block_args(m, dtype)
                row("conv_block", shape, lambda: m(x), lambda: ops.conv_block(x, *ka, "cpu"))
                row("conv_block cl", shape, lambda: m(xcl), lambda: ops.conv_block(xcl, *ka, "cpu"))
            if only is None or "mlp" in only:
                m = randomize_(SwiftFormerMlp(cfg, c)).to(dtype)
                ls = torch.empty(c, dtype=dtype).uniform_(0.5, 1.5)
                ls4 = ls.reshape(c, 1, 1)
                ka = mlp_args(m, ls, dtype)
                row("mlp (x + ls*Mlp(x))", shape, lambda: x + ls4 * m(x),
                    lambda: ops.mlp(x, *ka, x, "cpu"))
                row("mlp cl", shape, lambda: xcl + ls4 * m(xcl),
                    lambda: ops.mlp(xcl, *ka, xcl, "cpu"))
            if only is None or "dwconv_bn" in only:
                conv = torch.nn.Conv2d(c, c, 3, padding=1, groups=c).to(dtype)
                bn = randomize_(torch.nn.BatchNorm2d(c)).to(dtype)
                w, bb = fold_bn(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                                bn.running_var, bn.eps)
                w, bb = w.detach(), bb.detach()
                row("dwconv_bn", shape, lambda: bn(conv(x)), lambda: ops.dwconv_bn(x, w, bb, "cpu"))
                row("dwconv_bn cl", shape, lambda: bn(conv(xcl)),
                    lambda: ops.dwconv_bn(xcl, w, bb, "cpu"))
            if only is None or "attention" in only:
                m = SwiftFormerEfficientAdditiveAttention(cfg, c).eval().to(dtype)
                (w_qk, b_qk, w_g), rest, scale = attention_args(m, dtype)
                t = torch.randn(b, hw * hw, c, dtype=dtype)
                row("attention (sum)", shape, lambda: m(t),
                    lambda: ops.additive_attention(t, w_qk, b_qk, w_g, scale, *rest, "sum", "cpu"))


if __name__ == "__main__":
    main()
