"""A/B of optimize()'s CPU heap tuning (swiftkern/_alloc.py) against glibc's defaults.

    python benchmarks/malloc_ab.py --model hf:xs --batch 1 --pairs 8

mallopt settings are process-wide and cannot be undone in-process, so each arm runs in its own
process (default: SWIFTKERN_NO_MALLOC_TUNING=1 unset; untuned: set), the two alternating, `pairs`
times. Prints per process the minor page faults per forward and the median latency, then the
median of the per-pair ratios untuned / tuned (> 1: the tuning is faster).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from bench_common import script_parser

CHILD = r"""
import json, resource, sys, time, statistics, torch, swiftkern
from swiftkern.bench.models import build_model, example_input
spec, batch, threads, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = swiftkern.optimize(build_model(spec).eval())
x = example_input(batch)
with torch.inference_mode():
    for _ in range(5):
        model(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        model(x)
        ts.append(time.perf_counter() - t)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"ms": statistics.median(ts) * 1e3, "faults": (f1 - f0) / calls}))
"""


def _run(args, tuned: bool) -> dict:
    env = dict(os.environ)
    env.pop("SWIFTKERN_NO_MALLOC_TUNING", None)
    if not tuned:
        env["SWIFTKERN_NO_MALLOC_TUNING"] = "1"
    calls = args.calls or (30 if args.batch == 1 else 8)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.threads), str(calls)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--calls", type=int, default=0, help="timed forwards per process")
    args = ap.parse_args(argv)
    ratios = []
    for i in range(args.pairs):
        u, t = _run(args, tuned=False), _run(args, tuned=True)
        ratios.append(u["ms"] / t["ms"])
        print(f"pair {i}: glibc defaults {u['ms']:.2f} ms ({u['faults']:.0f} faults/forward) | "
              f"tuned {t['ms']:.2f} ms ({t['faults']:.0f} faults/forward) | {ratios[-1]:.2f}x",
              flush=True)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"{args.model} batch {args.batch}, {args.threads} threads: tuned is "
          f"{statistics.median(ratios):.2f}x [IQR {q[0]:.2f}-{q[2]:.2f}] the speed of glibc's "
          f"defaults ({sum(r > 1 for r in ratios)} of {len(ratios)} pairs faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
