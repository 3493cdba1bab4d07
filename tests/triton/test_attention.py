"""Additive attention Triton kernels (core: split-N pooling for the three variants; the whole
module) against the reference under TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch
from _util import check
from cases import ATTN_SHAPES, attn_args

from swiftkern.ops import reference as R

pytestmark = pytest.mark.triton

A = pytest.importorskip("swiftkern.triton_kernels._attention")

POOLS = ("sum", "l2", "softmax")
# (B, N, D): odd shapes + real SwiftFormer-XS ones
ODD = {"d33": (2, 37, 33), "n1": (1, 1, 16), "b3": (3, 5, 8), "ragged": (2, 71, 48)}


def _core(shape, pool, layout="contiguous", seed=0):
    return attn_args("additive_attention_core", shape, pool, torch.float32, layout, seed).args


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("shape", list(ODD))
def test_core_odd(shape, pool):
    for layout in ("contiguous", "strided"):
        check(A.additive_attention_core, R.additive_attention_core_ref,
              _core(ODD[shape], pool, layout), what=f"core {shape} {pool} {layout}")


@pytest.mark.parametrize("pool", POOLS)
def test_core_split_merge(pool):
    # 71 tokens over 1, 2, 3 and 32 splits: the merge (incl. splits that get few or no
    # blocks) must give the single-pass result.
    args = _core(ODD["ragged"], pool)
    for splits in (1, 2, 3, 32):
        check(lambda *a, s=splits: A.additive_attention_core(*a, max_splits=s),
              R.additive_attention_core_ref, args, what=f"{pool} splits={splits}")


@pytest.mark.parametrize("key", sorted(A.ATTN_CONFIGS))
def test_every_attention_config(key):
    d = {128: 100, 256: 220, 512: 300}[key]
    assert A.attn_config_key(d) == key
    for pool in POOLS:
        args = _core((2, 19, d), pool)
        check(lambda *a: A.additive_attention_core(*a, config=key, max_splits=2),
              R.additive_attention_core_ref, args, what=f"cfg {key} {pool}")
    # a narrow D through the widest tile: padded channels stay masked
    args = _core(ODD["d33"], "softmax")
    check(lambda *a: A.additive_attention_core(*a, config=key), R.additive_attention_core_ref,
          args, what=f"cfg {key} narrow")


def test_softmax_is_stable_for_large_scores():
    q, k, w_g, scale, pool = _core(ODD["ragged"], "softmax")
    # scores up to ~1e4: a naive exp overflows to inf
    check(A.additive_attention_core, R.additive_attention_core_ref,
          [q, k, w_g * 100.0, 100.0, pool], what="softmax large scores")


@pytest.mark.parametrize("name", ["xs_stage4"])  # xs_stage1 (3136 tokens) costs ~30 s/pool here
def test_core_real_shapes(name):
    for pool in POOLS:
        check(A.additive_attention_core, R.additive_attention_core_ref,
              _core(ATTN_SHAPES[name], pool), what=f"core {name} {pool}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pool", POOLS)
def test_core_half(pool, dtype):
    check(A.additive_attention_core, R.additive_attention_core_ref, _core(ODD["d33"], pool),
          dtype, what=f"core {pool} {dtype}")


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("pool", POOLS)
def test_module(pool, final):
    for shape in (ODD["d33"], ODD["n1"], ATTN_SHAPES["xs_stage4"]):
        args = attn_args("additive_attention", shape, pool, final=final).args
        check(A.additive_attention, R.additive_attention_ref, args, what=f"module {pool}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_half(dtype):
    args = attn_args("additive_attention", ODD["d33"], "l2", layout="strided").args
    check(A.additive_attention, R.additive_attention_ref, args, dtype, what=f"module {dtype}")
