"""Why the folded stem / downsample convolutions run slower inside a forward than alone: oneDNN's
convolution (the route swiftkern's folded convolutions take on channels_last fp32 CPU inputs,
`torch.ops.mkldnn._convolution_pointwise` on a weight reordered once), timed with a 64 MB buffer
read before every call (everything evicted from L2) in three states:

  warm        back to back: code, weights and input in cache;
  input hot   only the input touched after the 64 MB read (as in a model, where the previous
              layer just wrote it): the conv's code, state and weights are cold;
  code warm   the same convolution shape run once on other weights and another input first,
              then the input touched: the code and oneDNN's state are warm, the weights cold.

"input hot" minus "code warm" is what cold code costs; "code warm" minus "warm" what cold weights
cost. Shapes: SwiftFormer-L1's stride-2 3x3 downsamples at batch 1.

    python benchmarks/cold_conv.py [--threads 2] [--reps 40]
"""

from __future__ import annotations

import torch
from bench_common import FLUSH_FLOATS, median_us, threads_parser

# (C_in, C_out, input H = W): L1's downsamples at batch 1 (stage 1 -> 2, stage 3 -> 4)
SHAPES = ((48, 96, 56), (192, 384, 14))
PAD, STRIDE, DIL = [1, 1], [2, 2], [1, 1]


def _conv_args(cin: int, cout: int, hw: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cin, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, generator=g)
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, PAD, STRIDE, DIL, 1, list(x.shape))
    return x, packed, torch.randn(cout, generator=g)


def _conv(x, packed, b):
    return torch.ops.mkldnn._convolution_pointwise.default(
        x, packed, b, PAD, STRIDE, DIL, 1, "none", [], "")


def main() -> None:
    a = threads_parser(__doc__, reps=40).parse_args()
    torch.set_num_threads(a.threads)
    flush = torch.ones(FLUSH_FLOATS)

    with torch.no_grad():
        for cin, cout, hw in SHAPES:
            x, packed, b = _conv_args(cin, cout, hw, 0)
            x2, packed2, b2 = _conv_args(cin, cout, hw, 1)

            def fn(x=x, packed=packed, b=b):
                return _conv(x, packed, b)

            def input_hot(x=x):
                flush.sum()
                x.sum()

            def code_warm(x=x, x2=x2, packed2=packed2, b2=b2):
                flush.sum()
                _conv(x2, packed2, b2)
                x.sum()

            warm = median_us(fn, lambda: None, a.reps)
            hot = median_us(fn, input_hot, a.reps)
            code = median_us(fn, code_warm, a.reps)
            mb = cout * cin * 9 * 4 / 1e6
            print(f"{cin} -> {cout} at {hw}x{hw} (weights {mb:.2f} MB): warm {warm:.0f} us, "
                  f"input hot {hot:.0f} us, code warm {code:.0f} us: cold code "
                  f"{hot - code:+.0f} us, cold weights {code - warm:+.0f} us")


if __name__ == "__main__":
    main()
