"""A/B of optimize()'s channels_last-inside default against the same optimized model with
channels_last=False (the caller's NCHW layout throughout), timed alternately in one process.

    python benchmarks/layout_ab.py --model hf:xs --batch 1 --threads 2 --rounds 21

Prints the median latency of each and the median [IQR] of the per-round ratios NCHW / default
(> 1: channels_last inside is faster), plus the max |logit diff| of both against eager.
"""

from __future__ import annotations

import copy
import time

import torch
from bench_common import script_parser

import swiftkern
from swiftkern.bench.models import build_model, example_input
from swiftkern.bench.stats import per_round_ratios, summarize


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model(args.model).eval()
    x = example_input(args.batch)
    nchw = swiftkern.optimize(copy.deepcopy(model), channels_last=False)
    default = swiftkern.optimize(copy.deepcopy(model))
    with torch.no_grad():
        ref = model(x)
        diffs = [(m(x) - ref).abs().max().item() for m in (nchw, default)]
        for _ in range(2):
            nchw(x)
            default(x)
        ta, tb = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            nchw(x)
            t1 = time.perf_counter()
            default(x)
            t2 = time.perf_counter()
            ta.append(t1 - t0)
            tb.append(t2 - t1)
    r = summarize(per_round_ratios(ta, tb))
    print(f"{args.model} batch {args.batch}, {args.threads} threads, {args.rounds} rounds: "
          f"NCHW {summarize(ta).median * 1e3:.2f} ms, channels_last inside "
          f"{summarize(tb).median * 1e3:.2f} ms, speed-up {r.median:.2f}x [{r.q1:.2f}-{r.q3:.2f}]; "
          f"max |diff| vs eager {diffs[0]:.1e} / {diffs[1]:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
