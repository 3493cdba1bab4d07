"""triton_kernels/_partials.sum_partials (the fused backwards' last launch) under
TRITON_INTERPRET=1: several gradients in one launch, strided partial rows, every output dtype,
0 / 1 / many rows, sizes off the block, and its argument checks."""

from __future__ import annotations

import pytest
import torch
from tolerances import assert_close

pytestmark = pytest.mark.triton

PS = pytest.importorskip("swiftkern.triton_kernels._partials")


def test_many_pairs_in_one_launch():
    g = torch.Generator().manual_seed(0)
    ws = torch.randn(7, 2, 37, generator=g)  # strided rows: [:, 0] and [:, 1]
    big = torch.randn(3, PS.BLOCK + 5, generator=g)  # two blocks, a ragged one
    one = torch.randn(1, 4, 3, generator=g)
    none = torch.empty(0, 9)
    outs = [torch.empty(37, dtype=torch.bfloat16), torch.empty(37, dtype=torch.float16),
            torch.empty(PS.BLOCK + 5), torch.empty(4, 3, dtype=torch.bfloat16),
            torch.empty(9, dtype=torch.float16)]
    srcs = [ws[:, 0], ws[:, 1], big, one, none]
    PS.sum_partials(list(zip(srcs, outs)))
    for i, (src, out) in enumerate(zip(srcs, outs)):
        want = src.double().sum(0)
        if out.dtype == torch.float32:
            assert_close(out, want, torch.float32, what=f"pair {i}")
        else:  # one rounding of the fp32 sum: within half an ulp of the exact sum, plus slack
            ulp = 2.0 ** (-8 if out.dtype == torch.bfloat16 else -11)
            err = (out.double() - want).abs()
            assert (err <= ulp * want.abs() + 1e-6).all(), f"pair {i}: {err.max():.3e}"
    assert (outs[4] == 0).all()  # no partial rows: a zero gradient


def test_bad_arguments_are_refused():
    src, dst = torch.zeros(2, 4), torch.empty(4)
    with pytest.raises(ValueError, match="at most"):
        PS.sum_partials([(src, dst)] * (PS.MAX_PAIRS + 1))
    with pytest.raises(ValueError, match="bad pair"):
        PS.sum_partials([(src.half(), dst)])
    with pytest.raises(ValueError, match="bad pair"):
        PS.sum_partials([(src, torch.empty(5))])
    with pytest.raises(ValueError, match="bad pair"):
        PS.sum_partials([(torch.zeros(2, 4, 2)[:, :, 0], torch.empty(4))])
    PS.sum_partials([])  # nothing to do
