"""The CPU tile strategy's scheduling (csrc/cpu/conv_block_kernels.cpp balanced_rows,
run_tiles): threads take tiles from a shared counter, and the rows per tile are the largest
that fit the cache budget, shrunk (to no less than half) where that evens out the rows each
thread ends up with. SWIFTKERN_CPU_TILE_BALANCE=0 keeps the largest tile and one fixed chunk of
tiles per thread. Checked: the rows chosen at SwiftFormer shapes, and the results of ragged,
uneven tilings against the reference with the balancing on and off, at 2 and 3 threads."""

from __future__ import annotations

import pytest
import torch
from cases import conv_args
from tolerances import assert_close

from swiftkern import _ext

C = torch.ops.swiftkern_C
S = torch.ops.swiftkern

pytestmark = pytest.mark.skipif(
    _ext.CPU_ISA is None or not hasattr(C, "pointwise_tile_rows"),
    reason="needs the C++ CPU kernels",
)


@pytest.fixture
def threads(request):
    n = torch.get_num_threads()
    yield lambda k: torch.set_num_threads(k)
    torch.set_num_threads(n)


def _rows(b, c, h, w, hd, cl=True):
    x = torch.zeros(b, c, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return C.pointwise_tile_rows(x, torch.zeros(hd, c), torch.zeros(c, hd))


# (B, C, H, W, hidden, threads): rows balanced, rows with SWIFTKERN_CPU_TILE_BALANCE=0
CASES = [
    # XS stage 1 at batch 1: 56 rows, at most 6 per tile -> 30 / 26 rows per thread; 4 -> 28 / 28
    ((1, 48, 56, 56, 192, 2), 4, 6),
    # batch 8: 80 tiles of the largest size, 8 or more per thread: the largest rows stay
    ((8, 48, 56, 56, 192, 2), 6, 6),
    # 100 rows as 17 tiles of <= 6 at 2 threads: 8 or more per thread, so the largest rows stay
    # (under that rule 5 rows would even them out: 20 tiles, 50 / 50 rows instead of 52 / 48)
    ((1, 48, 100, 56, 192, 2), 6, 6),
    # XS stage 2 at batch 1: 3 tiles of <= 10 rows ran the whole-tensor GEMMs (0); 4 of 7 now
    ((1, 56, 28, 28, 224, 2), 7, 0),
    # one thread: nothing to balance
    ((1, 48, 56, 56, 192, 1), 6, 6),
    # three threads dealt 10 tiles of <= 6 rows in turn: 20 / 18 / 18 rows, as even as it gets
    ((1, 48, 56, 56, 192, 3), 6, 6),
    # three threads, 45 rows: 7 tiles of <= 7 rows give 17 / 14 / 14; 9 tiles of 5 give 15 each
    ((1, 48, 45, 45, 192, 3), 5, 7),
]


@pytest.mark.parametrize("case,balanced,largest", CASES, ids=lambda v: str(v))
def test_tile_rows(case, balanced, largest, threads, monkeypatch):
    *shape, nt = case
    threads(nt)
    monkeypatch.delenv("SWIFTKERN_CPU_CONV_STRATEGY", raising=False)
    monkeypatch.delenv("SWIFTKERN_CPU_TILE_BALANCE", raising=False)
    assert _rows(*shape) == balanced
    monkeypatch.setenv("SWIFTKERN_CPU_TILE_BALANCE", "0")
    assert _rows(*shape) == largest


def test_tile_rows_zero_for_the_whole_tensor_gemms(monkeypatch):
    monkeypatch.delenv("SWIFTKERN_CPU_CONV_STRATEGY", raising=False)
    assert _rows(1, 384, 7, 7, 1536) == 0  # 4.7 MB of weights: the unfused / split GEMMs
    monkeypatch.setenv("SWIFTKERN_CPU_CONV_STRATEGY", "unfused")
    assert _rows(1, 48, 56, 56, 192) == 0


def test_tile_rows_rejects_other_dtypes():
    x = torch.zeros(1, 8, 4, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="fp32"):
        C.pointwise_tile_rows(x, torch.zeros(32, 8, dtype=torch.float64),
                              torch.zeros(8, 32, dtype=torch.float64))


# Ragged tilings: rows not a multiple of the tile, tile counts that do not split evenly.
SHAPES = [(1, 48, 56, 56, 192), (3, 40, 23, 29, 160), (1, 56, 28, 28, 224), (2, 30, 61, 17, 120)]


@pytest.mark.parametrize("balance", ["1", "0"])
@pytest.mark.parametrize("nt", [2, 3])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("op", ["conv_block", "mlp"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tiles_match_reference(shape, op, layout, nt, balance, threads, monkeypatch):
    threads(nt)
    monkeypatch.setenv("SWIFTKERN_CPU_CONV_STRATEGY", "tile")
    monkeypatch.setenv("SWIFTKERN_CPU_TILE_BALANCE", balance)
    args = conv_args(op, shape, layout=layout).args
    out = getattr(S, op)(*args, backend="cpu")
    ref = getattr(S, op)(*args, backend="reference")
    assert_close(out, ref, what=f"{op} {shape} {layout} threads={nt} balance={balance}")
