"""In-process A/B of a per-call switch on an optimized model: the MKL-packed pointwise path
(--switch packed: SWIFTKERN_CPU_PACKED=1 vs 0), the fused modules' call plans (--switch plans:
SWIFTKERN_PLANS=1 vs 0) or the fp32 conv-block tiles' GEMMs through ATen's brgemm entry instead
of at::mm_out (--switch brgemm: SWIFTKERN_CPU_BRGEMM=1 vs 0), or bf16 / fp16 conv blocks converting
per tile instead of whole tensors (--switch half-tiles: SWIFTKERN_CPU_HALF_TILES=1 vs 0; use
--dtype bf16), or any per-call variable between two values (--env NAME --on A --off B, e.g.
--env SWIFTKERN_CPU_UNFUSED_BYTES --on 262144 --off 2097152; call plans are turned off for both
sides then, since a plan recorded under one value would replay its packing decision under the
other, unless --keep-plans says the plan key holds the variable, as for SWIFTKERN_CPU_PACK).
Each is read on every call, so the two settings alternate call by call on the same model and
machine drift hits both alike. Prints the medians and the median of per-pair ratios with its IQR.

    python benchmarks/packed_ab.py --model hf:l3 --batch 1 --pairs 15 [--dtype bf16]
    python benchmarks/packed_ab.py --switch plans --model hf:xs --batch 1 --pairs 15
    python benchmarks/packed_ab.py --env SWIFTKERN_CPU_UNFUSED_BYTES --on 262144 --off 2097152
    python benchmarks/packed_ab.py --model hf:l1 --env SWIFTKERN_CPU_PACK --on auto --off mkl \
        --keep-plans
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import swiftkern
from swiftkern.bench.models import build_model, example_input

SWITCHES = {
    "packed": "SWIFTKERN_CPU_PACKED",
    "plans": "SWIFTKERN_PLANS",
    "brgemm": "SWIFTKERN_CPU_BRGEMM",
    "half-tiles": "SWIFTKERN_CPU_HALF_TILES",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hf:l3")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--switch", choices=sorted(SWITCHES), default="packed")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--env", help="any per-call variable instead of --switch")
    ap.add_argument("--on", default="1", help="--env's value timed as 'on'")
    ap.add_argument("--off", default="0", help="--env's value timed as 'off'")
    ap.add_argument("--keep-plans", action="store_true",
                    help="with --env: leave call plans on (variables in the plan key only)")
    a = ap.parse_args()
    var = a.env or SWITCHES[a.switch]
    on_val, off_val = (a.on, a.off) if a.env else ("1", "0")
    if a.env and not a.keep_plans:
        os.environ["SWIFTKERN_PLANS"] = "0"
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "fp32" else torch.bfloat16
    model = swiftkern.optimize(build_model(a.model).eval(), dtype=dtype)
    x = example_input(a.batch, image_size=a.image_size).to(dtype)

    def timed(flag: str) -> tuple[float, torch.Tensor]:
        os.environ[var] = flag
        model(x)  # steady state: one untimed call of this setting first
        t = time.perf_counter()
        y = model(x)
        return time.perf_counter() - t, y

    with torch.no_grad():
        _, y_on = timed(on_val)
        _, y_off = timed(off_val)
        on, off = [], []
        for _ in range(a.pairs):
            on.append(timed(on_val)[0])
            off.append(timed(off_val)[0])
    ratios = [b / p for p, b in zip(on, off)]
    q = statistics.quantiles(ratios, n=4)
    med_on = statistics.median(on) * 1e3
    y_on, y_off = (y.logits if hasattr(y, "logits") else y for y in (y_on, y_off))
    print(
        f"{a.model} b{a.batch} {a.image_size}px {a.dtype}, {a.threads} threads: {var}={on_val} "
        f"{med_on:.2f} ms, ={off_val} {statistics.median(off) * 1e3:.2f} ms, speed-up "
        f"{statistics.median(ratios):.3f}x [IQR {q[0]:.3f}-{q[2]:.3f}] over {a.pairs} pairs; "
        f"max |on - off| {(y_on.float() - y_off.float()).abs().max().item():.1e}"
    )


if __name__ == "__main__":
    main()
