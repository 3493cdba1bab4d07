"""MKL's packed sgemm against oneDNN's 1x1 convolution on a reordered weight (the two packings
swiftkern.nn._base._pack_kind chooses between) for a conv block's two pointwise GEMMs, at every
SwiftFormer shape (HF XS / S / L1 / L3, stages 2-4, batch 1 and 8) whose channels_last conv block
takes the packed whole-tensor GEMMs (swiftkern_C::pointwise_packable). Interleaved call by call,
in cache; --cold reads a 64 MB buffer before every call. Prints each side's median and the
median of per-pair speed-ups of oneDNN with its IQR. Isolated GEMMs: a rule change still needs
an in-model A/B (packed_ab.py), since the whole model can disagree (README, session 15).

    python benchmarks/pack_kind_gemms.py [--threads 2] [--pairs 40] [--cold]
"""

from __future__ import annotations

import statistics
import time

import torch
from bench_common import FLUSH_FLOATS, threads_parser

import swiftkern  # noqa: F401 - loads the swiftkern_C ops
from swiftkern.nn._base import _pack

WIDTHS = {"xs": (48, 56, 112, 220), "s": (48, 64, 168, 224), "l1": (48, 96, 192, 384),
          "l3": (64, 128, 320, 512)}
SIDES = (56, 28, 14, 7)


def _gemms(d, h, w1, w2, packed):
    """The conv block's pw1 and pw2 products on one packing of (w1, w2)."""
    p1, p2 = packed
    if p1.dim() == 4:
        for inp, pw in ((d, p1), (h, p2)):
            rows, k = inp.shape
            d4 = inp.as_strided((1, k, 1, rows), (rows * k, 1, rows * k, k))
            torch.ops.mkldnn._convolution_pointwise(d4, pw, None, [0, 0], [1, 1], [1, 1], 1,
                                                    "none", [], "")
    else:
        torch.ops.mkl._mkl_linear(d, p1, w1, None, d.shape[0])
        torch.ops.mkl._mkl_linear(h, p2, w2, None, h.shape[0])


def main() -> None:
    ap = threads_parser(__doc__, pairs=40)
    ap.add_argument("--cold", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    flush = torch.ones(FLUSH_FLOATS)
    seen = set()

    def timed(fn) -> float:
        if a.cold:
            flush.sum()
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    with torch.no_grad():
        for b in (1, 8):
            for model, widths in WIDTHS.items():
                for stage in (1, 2, 3):
                    c, side = widths[stage], SIDES[stage]
                    rows = b * side * side
                    x = torch.randn(b, c, side, side).contiguous(
                        memory_format=torch.channels_last)
                    w1, w2 = torch.randn(4 * c, c), torch.randn(c, 4 * c)
                    if (rows, c) in seen or not torch.ops.swiftkern_C.pointwise_packable(
                            x, w1, w2):
                        continue
                    seen.add((rows, c))
                    d, h = torch.randn(rows, c), torch.randn(rows, 4 * c)
                    sides = {kind: tuple(_pack(w, rows, kind) for w in (w1, w2))
                             for kind in ("onednn", "mkl")}
                    fns = {k: (lambda p=p: _gemms(d, h, w1, w2, p)) for k, p in sides.items()}
                    for _ in range(3):
                        for fn in fns.values():
                            fn()
                    t_o, t_m = [], []
                    for _ in range(a.pairs):
                        t_o.append(timed(fns["onednn"]))
                        t_m.append(timed(fns["mkl"]))
                    ratios = [m / o for o, m in zip(t_o, t_m)]
                    q = statistics.quantiles(ratios, n=4)
                    flops = 4.0 * rows * c * 4 * c
                    mo, mm = statistics.median(t_o), statistics.median(t_m)
                    print(f"b{b} {model} stage {stage + 1}: {rows} rows, C {c}: oneDNN "
                          f"{mo * 1e6:.0f} us ({flops / mo / 1e9:.0f} GFLOP/s), MKL "
                          f"{mm * 1e6:.0f} us ({flops / mm / 1e9:.0f}); oneDNN speed-up "
                          f"{statistics.median(ratios):.3f}x [IQR {q[0]:.2f}-{q[2]:.2f}]",
                          flush=True)


if __name__ == "__main__":
    main()
