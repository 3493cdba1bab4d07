"""Where a forward's time goes: each fused module of an optimized model timed inside the model
(the median over --forwards forward passes) against the same call repeated on its own right
after (--alone best: the best of five timeit repeats of 20 calls, its weights and input in
cache; --alone median: the median of 60 single calls, the same statistic as the in-model column).
The gap is what the model's ordering costs a module (mostly weights that no longer sit in the
per-core L2 and stream from memory); the forward's time minus the modules' in-model sum is
everything else (HF code between modules, unfused ops, the head). Eval, no grad, call plans as
configured. On a noisy machine the statistic decides the sign: on the session-15 VM (load ~1
with nothing running), two runs minutes apart, XS batch 1 summed 16.05 ms in the model against
12.32 ms alone with best, and 14.33 ms against 18.53 ms with median.

    python benchmarks/inmodel_vs_isolated.py --model hf:xs --batch 1 [--threads 2] [--forwards 15]
        [--alone best|median]
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections import defaultdict

import torch
from bench_common import script_parser

import swiftkern
from swiftkern.bench.models import build_model, example_input
from swiftkern.nn._base import FusedModule

# the entry the fused encoder block calls on these children instead of forward()
ENTRY = {"FusedAdditiveAttention": "forward_tokens", "FusedMlp": "forward_fused"}


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--forwards", type=int, default=15)
    ap.add_argument("--alone", choices=("best", "median"), default="best")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = swiftkern.optimize(build_model(a.model).eval())
    x = example_input(a.batch)
    times: dict[str, list[float]] = defaultdict(list)
    calls: dict[str, tuple] = {}
    leaves = {}
    for name, mod in model.named_modules():
        if isinstance(mod, FusedModule) and not any(
            isinstance(c, FusedModule) for c in mod.children()
        ):
            leaves[name] = mod
            entry = ENTRY.get(type(mod).__name__, "forward")
            fn = getattr(mod, entry)

            def timed(*args, _fn=fn, _name=name, **kw):
                t0 = time.perf_counter()
                out = _fn(*args, **kw)
                times[_name].append(time.perf_counter() - t0)
                calls[_name] = (_fn, args, kw)
                return out

            setattr(mod, entry, timed)  # an instance attribute: the class is untouched
    fwd = []
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times.clear()
        for _ in range(a.forwards):
            t0 = time.perf_counter()
            model(x)
            fwd.append(time.perf_counter() - t0)
        tot_in = tot_alone = 0.0
        print(f"{'module':58s} {'kind':24s} {'in model us':>11s} {'alone us':>9s}")
        for name in leaves:
            if name not in times:
                continue
            med = statistics.median(times[name]) * 1e6
            fn, args, kw = calls[name]
            call = lambda: fn(*args, **kw)  # noqa: B023, E731
            if a.alone == "best":
                alone = min(timeit.repeat(call, number=20, repeat=5)) / 20 * 1e6
            else:
                alone = statistics.median(timeit.repeat(call, number=1, repeat=60)) * 1e6
            tot_in += med
            tot_alone += alone
            print(f"{name:58s} {type(leaves[name]).__name__:24s} {med:11.0f} {alone:9.0f}")
    print(f"forward median {statistics.median(fwd) * 1e3:.2f} ms; fused modules in the model "
          f"{tot_in / 1e3:.2f} ms, the same calls alone ({a.alone}) {tot_alone / 1e3:.2f} ms "
          f"({a.model} batch {a.batch}, {a.threads} threads)")


if __name__ == "__main__":
    main()
