"""Python cost of a fused module call over its kernel's own time, with and without call plans
(SWIFTKERN_PLANS=1 / 0), on tiny inputs where the arithmetic is small: a stage-1 and a stage-4
conv block and the stem's second folded convolution of an optimized HF SwiftFormer-XS. Best of
three timeit repeats each; the kernel alone is the plan's recorded call.

    python benchmarks/plan_overhead.py [--threads 2] [--number 3000]
"""

from __future__ import annotations

import os
import timeit

import torch
from bench_common import restored_env, threads_parser

import swiftkern
from swiftkern.bench.models import build_model

CASES = (
    ("model.swiftformer.encoder.network.0.blocks.0", (1, 48, 4, 4)),
    ("model.swiftformer.encoder.network.6.blocks.0", (1, 220, 2, 2)),
    ("model.swiftformer.patch_embed.patch_embedding.3", (1, 24, 8, 8)),
)


def main() -> None:
    a = threads_parser(__doc__, number=3000).parse_args()
    torch.set_num_threads(a.threads)
    mods = dict(swiftkern.optimize(build_model("hf:xs").eval()).named_modules())

    def best_us(fn) -> float:
        return min(timeit.repeat(fn, number=a.number, repeat=3)) / a.number * 1e6

    with restored_env("SWIFTKERN_PLANS"), torch.no_grad():
        for name, shape in CASES:
            m = mods[name]
            x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
            os.environ["SWIFTKERN_PLANS"] = "1"
            m(x)
            m(x)
            plan = next(iter(m._plans.values()))
            args = list(plan.args)
            for i in plan.inputs:
                args[i] = x
            raw = best_us(lambda: plan.fn(*args))  # noqa: B023 (called right here)
            on = best_us(lambda: m(x))  # noqa: B023
            os.environ["SWIFTKERN_PLANS"] = "0"
            off = best_us(lambda: m(x))  # noqa: B023
            print(f"{type(m).__name__} {tuple(shape)}: kernel {raw:.1f} us; module call "
                  f"with plans +{on - raw:.1f} us, without +{off - raw:.1f} us")


if __name__ == "__main__":
    main()
