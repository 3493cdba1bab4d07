"""In-process A/B of the MKL-packed pointwise path (SWIFTKERN_CPU_PACKED=1 vs 0, read per call)
on an optimized model: the two settings alternate call by call on the same model, so machine
drift hits both alike. Prints the medians and the median of per-pair ratios with its IQR.

    python benchmarks/packed_ab.py --model hf:l3 --batch 1 --pairs 15 [--dtype bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import swiftkern
from swiftkern.bench.models import build_model, example_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hf:l3")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "fp32" else torch.bfloat16
    model = swiftkern.optimize(build_model(a.model).eval(), dtype=dtype)
    x = example_input(a.batch).to(dtype)

    def timed(flag: str) -> tuple[float, torch.Tensor]:
        os.environ["SWIFTKERN_CPU_PACKED"] = flag
        model(x)  # steady state: one untimed call of this setting first
        t = time.perf_counter()
        y = model(x)
        return time.perf_counter() - t, y

    with torch.no_grad():
        _, y_on = timed("1")
        _, y_off = timed("0")
        on, off = [], []
        for _ in range(a.pairs):
            on.append(timed("1")[0])
            off.append(timed("0")[0])
    ratios = [b / p for p, b in zip(on, off)]
    q = statistics.quantiles(ratios, n=4)
    med_on = statistics.median(on) * 1e3
    print(
        f"{a.model} b{a.batch} {a.dtype}, {a.threads} threads: packed {med_on:.2f}"
        f" ms, unpacked {statistics.median(off) * 1e3:.2f} ms, speed-up "
        f"{statistics.median(ratios):.3f}x [IQR {q[0]:.3f}-{q[2]:.3f}] over {a.pairs} pairs; "
        f"max |packed - unpacked| {(y_on.float() - y_off.float()).abs().max().item():.1e}"
    )


if __name__ == "__main__":
    main()
