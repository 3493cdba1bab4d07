"""The fused additive attention module backward (_attention_backward_fused: kernel P pools and
reduces dG from x and dy, kernel T writes dx and per-token scalars, kernel W the weight-gradient
partials) against the reference backward (autograd through swiftkern/ops/reference.py) under
TRITON_INTERPRET=1: every pool, every shipped config, odd widths / token counts, T != D, optional
biases / final, split and segment counts (empty ones included), grad masks, half dtypes, and
the op's autograd taking the fused path (spy)."""

from __future__ import annotations

import itertools

import pytest
import torch
from _util import check, check_grad_masks, module_args
from tolerances import assert_close

import swiftkern
from swiftkern.ops import reference as R
from swiftkern.ops._define import reference_backward

pytestmark = pytest.mark.triton

A = pytest.importorskip("swiftkern.triton_kernels._attention")
AB = pytest.importorskip("swiftkern.triton_kernels._attention_backward")
ABF = pytest.importorskip("swiftkern.triton_kernels._attention_backward_fused")

POOLS = ("sum", "l2", "softmax")
MOD_IDX = (0, 1, 2, 3, 5, 6, 7, 8)  # x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final
MOD_REF = reference_backward(R.additive_attention_ref, MOD_IDX)
# a width inside each config's range (SwiftFormer-XS: 48 -> 64, 112 -> 128, 220 -> 256)
CONFIG_WIDTH = {64: 48, 128: 112, 256: 220}


def _args(shape, pool, final=True, biases=True, t_out=None, seed=0):
    """[grad, x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool]"""
    args = module_args(shape, pool, final=final, biases=biases, t_out=t_out, seed=seed)
    t = shape[-1] if args[7] is None else args[7].shape[0]
    g = torch.Generator().manual_seed(seed + 2)
    return [torch.randn(*shape[:2], t, generator=g), *args]


def _fused(key=None, mask=(True,) * 8, **kw):
    """The fused launcher in the op's output form (8 tensors, empty where not wanted)."""

    def run(*a):
        grad, x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool = a
        d = x.shape[-1]
        t = d if w_final is None else w_final.shape[0]
        k = ABF.fused_bwd_config_key(d, t, x.dtype) if key is None else key
        params = (x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final)
        need = [m and p is not None for m, p in zip(mask, params)]
        out = ABF.fused_backward(*a, need, k, **kw)
        return [out.get(i, grad.new_empty(0)) for i in range(8)]

    return run


def _ref(mask=(True,) * 8):
    return lambda *a: MOD_REF(*a, list(mask))


def _nonempty(fn):
    return lambda *a: [t for t in fn(*a) if t.numel()]


def _check(args, dtype=torch.float32, what="", key=None, **kw):
    """check() of every gradient the reference returns (None arguments give empty ones on both
    sides, which are dropped)."""
    return check(_nonempty(_fused(key, **kw)), _nonempty(_ref()), args, dtype, what=what)


@pytest.mark.parametrize("key", sorted(ABF.BWD_FUSED_CONFIGS))
def test_every_fused_backward_config(key):
    d = CONFIG_WIDTH[key]
    assert ABF.fused_bwd_config_key(d, d) == key
    # fp32 wherever it is fused; the half dtypes where their config is not the fp32 one
    dtypes = [torch.float32] if key <= ABF.FP32_MAX_WIDTH else []
    if key > ABF.FP32_MAX_WIDTH or key in ABF.FP32_CONFIGS:
        dtypes += [torch.float16, torch.bfloat16]
    shape = (1, 9, d) if key > 64 else (1, 17, d)  # the interpreter's cost grows with D
    for i, pool in enumerate(POOLS):
        dtype = dtypes[i % len(dtypes)]
        _check(_args(shape, pool, seed=i), dtype, what=f"cfg {key} {pool} {dtype}",
               key=key, max_splits=2, n_seg=2)
    # a narrow width (and T != D) through the config's padded tiles
    _check(_args((2, 9, 33), "softmax", t_out=20), what=f"cfg {key} narrow", key=key)
    if key in ABF.FP32_CONFIGS:  # fp32 kernel T without dx: the override's own variant
        mask = (False,) + (True,) * 7
        check(_nonempty(_fused(key, mask=mask)), _nonempty(_ref(mask)),
              _args((1, 9, 40), "sum", t_out=24), what=f"cfg {key} fp32 no dx")


@pytest.mark.parametrize("pool", POOLS)
def test_fused_odd_shapes(pool):
    # odd widths, N = 1, B = 3, T != D; every (final, biases) combination over the shapes
    cases = (((2, 37, 33), True, True, None), ((1, 1, 16), False, True, None),
             ((3, 5, 8), True, False, 20), ((2, 9, 20), False, False, None),
             ((1, 11, 24), True, True, 40))
    for shape, final, biases, t_out in cases:
        _check(_args(shape, pool, final, biases, t_out),
               what=f"{shape} {pool} final={final} biases={biases} T={t_out}")


@pytest.mark.parametrize("pool,splits,n_seg", [("sum", 1, 1), ("l2", 3, 3), ("softmax", 32, 13)])
def test_fused_splits_and_segments(pool, splits, n_seg):
    # 71 tokens x 2 batches: kernel P in 1 / 3 / 32 splits (32: splits without tokens), kernel W
    # in 1 / 3 / 13 segments (13 > the 9 row tiles: empty segments must write zero partials);
    # W's row tiles and segments straddle the two batches
    _check(_args((2, 71, 24), pool), what=f"{pool} splits={splits} segments={n_seg}",
           max_splits=splits, n_seg=n_seg)


def test_fused_softmax_large_scores():
    args = _args((2, 37, 33), "softmax")
    args[4] = args[4] * 100.0  # w_g
    args[5] = 100.0  # scale
    _check(args, what="softmax large scores", max_splits=3)


def test_fused_grad_mask_and_none():
    args = _args((2, 13, 33), "l2", t_out=24)
    args[3] = None  # b_qk
    masks = ([True, False, False, False, False, False, False, False],
             [False, True, True, False, False, True, True, False],
             [False, False, False, True, True, False, False, True],
             [False, False, False, False, False, False, False, False])
    check_grad_masks(AB.additive_attention_backward, MOD_REF, args, masks, skip=(2,))


# the parameter-gradient subsets of the finalize kernel (dWp, dbp, dWf, dbf): every non-empty
# one with a final linear, those of (dWp, dbp) without; dx with some, not with others
_PARAM_SUBSETS = [(True, m) for m in itertools.product((True, False), repeat=4) if any(m)] + \
                 [(False, m + (False, False)) for m in itertools.product((True, False), repeat=2)
                  if any(m)]


@pytest.mark.parametrize("final,wanted", _PARAM_SUBSETS)
def test_fused_parameter_gradient_subsets(final, wanted):
    i = _PARAM_SUBSETS.index((final, wanted))
    pool = POOLS[i % 3]
    mask = (i % 2 == 0, True, False, i % 3 == 0) + tuple(wanted)
    check(_nonempty(_fused(mask=mask)), _nonempty(_ref(mask)), _args((1, 9, 24), pool, final,
          seed=i), what=f"final={final} wanted={wanted} dx={mask[0]} {pool}")


@pytest.mark.parametrize("pool", POOLS)
def test_fused_no_final_no_dx(pool):
    mask = (False,) + (True,) * 7
    check(_nonempty(_fused(mask=mask)), _nonempty(_ref(mask)), _args((2, 9, 33), pool, False),
          what=f"no final, no dx, {pool}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half(dtype):
    for pool in POOLS:
        out = _check(_args((2, 19, 33), pool, t_out=40), dtype, what=f"{pool} {dtype}")
        assert all(o.dtype == dtype for o in out)


def _spy(monkeypatch):
    calls = []
    real = ABF.fused_backward

    def spy(*a, **k):
        calls.append(tuple(a[1].shape))
        return real(*a, **k)

    monkeypatch.setattr(ABF, "fused_backward", spy)
    return calls


@pytest.mark.parametrize("pool", POOLS)
def test_op_backward_takes_fused_path(monkeypatch, pool):
    calls = _spy(monkeypatch)
    args = _args((2, 9, 20), pool, t_out=12)[1:]
    x = args[0].transpose(1, 2).contiguous().transpose(1, 2)  # strided tokens (NCHW view)
    args[0] = x

    def run(fn, **kw):
        a = [t.detach().clone().requires_grad_(True) if i in MOD_IDX else t
             for i, t in enumerate(args)]
        y = fn(*a, **kw)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
        return [a[i].grad for i in MOD_IDX]

    grads = run(swiftkern.ops.additive_attention, backend="triton")
    assert calls == [(2, 9, 20)], "the triton backward did not run the fused kernels"
    for i, (g, gr) in zip(MOD_IDX, zip(grads, run(R.additive_attention_ref))):
        if pool == "sum" and i == 3:  # w_g has no effect under "sum" (zero gradient)
            assert g is None or g.abs().max().item() == 0.0
            continue
        assert_close(g, gr, torch.float32, what=f"grad {i} {pool}")


def test_fp32_wide_takes_torch_path(monkeypatch):
    calls = _spy(monkeypatch)
    wide = ABF.FP32_MAX_WIDTH + 1
    assert ABF.fused_bwd_config_key(wide, wide, torch.float32) is None
    top = max(ABF.BWD_FUSED_CONFIGS)
    assert (ABF.fused_bwd_config_key(wide, wide, torch.float16) is None) == (wide > top)
    assert ABF.fused_bwd_config_key(top + 1, top + 1, torch.float16) is None
    assert ABF.fused_bwd_config_key(8, wide, torch.float32) is None  # T counts too
    args = _args((1, 3, wide), "sum")
    got = AB.additive_attention_backward(*args, [True] * 8)
    for i, (a, b) in enumerate(zip(got, MOD_REF(*args, [True] * 8))):
        assert_close(a, b, torch.float32, what=f"fp32 wide grad {i}")
    assert calls == []


@pytest.mark.parametrize("pool", POOLS)
def test_fused_batch_groups(monkeypatch, pool):
    # kernels P, T, W per batch group (A.batch_groups with a budget of ~2 images of x + dy):
    # 5 batches as 2 + 2 + 1, every group's dx slice, tok / gm scratch and W segment partials
    # (default segments, and 3 forced per group, some empty) where the whole-batch run puts them
    shape, t_out = (5, 23, 24), 20
    monkeypatch.setattr(A, "L2_GROUP_BYTES", int(2.5 * 23 * (24 + t_out) * 4))
    assert A.batch_groups(5, 23 * (24 + t_out) * 4) == [(0, 2), (2, 4), (4, 5)]
    args = _args(shape, pool, t_out=t_out)
    _check(args, what=f"{pool} grouped")
    _check(args, what=f"{pool} grouped, 3 segments per group", max_splits=3, n_seg=3)
    mask = (False,) + (True,) * 7  # no dx: T still writes each group's scratch for W
    check(_nonempty(_fused(mask=mask)), _nonempty(_ref(mask)), args, what=f"{pool} grouped no dx")
    # D = 21, T = 19: 4-image units (16-byte aligned slices) and W segment counts rounded to
    # even ones (1762-float partial rows), the added segments empty: 9 batches as 4 + 4 + 1
    monkeypatch.setattr(A, "L2_GROUP_BYTES", int(5.5 * 23 * (21 + 19) * 4))
    _check(_args((9, 23, 21), pool, t_out=19), what=f"{pool} grouped, aligned units",
           max_splits=3, n_seg=3)


def test_weight_segments():
    # SwiftFormer-XS stage 4 at batch 64 (3136 rows, 14 chunks of 16 channels): about one
    # program per SM, each segment at least MIN_SEG_ROWS rows; one segment for tiny inputs
    nseg, per = ABF.weight_segments(3136, 14, 16)
    assert nseg * per >= 3136 and per % 16 == 0 and per >= ABF.MIN_SEG_ROWS
    assert nseg * 14 * ABF.W_PARTS >= ABF.TARGET_PROGRAMS
    assert ABF.weight_segments(10, 14, 16) == (1, 16)


def test_roofline_model_matches_configs():
    from swiftkern.triton_kernels import _roofline as RL

    assert RL.ATTN_BWD_FUSED_MAX_WIDTH == max(ABF.BWD_FUSED_CONFIGS)
    assert RL.ATTN_BWD_FUSED_MAX_WIDTH_FP32 == ABF.FP32_MAX_WIDTH
    assert RL.ATTN_BWD_TILES == {k: (c["pool"]["BLOCK_N"], c["token"]["BLOCK_N"],
                                     c["weight"]["BLOCK_N"], c["weight"]["BLOCK_I"])
                                 for k, c in ABF.BWD_FUSED_CONFIGS.items()}
    for k, c in ABF.FP32_CONFIGS.items():  # the model's tiles hold for the fp32 overrides too
        assert RL.ATTN_BWD_TILES[k] == (c["pool"]["BLOCK_N"], c["token"]["BLOCK_N"],
                                        c["weight"]["BLOCK_N"], c["weight"]["BLOCK_I"])
    assert RL.ATTN_BWD_DQK_SCRATCH_FP32 == tuple(
        k for k, c in sorted(ABF.FP32_CONFIGS.items()) if c["token"].get("DQK_SCRATCH"))
    assert (RL.ATTN_BWD_TARGET_PROGRAMS, RL.ATTN_BWD_MIN_SEG_ROWS) == (ABF.TARGET_PROGRAMS,
                                                                      ABF.MIN_SEG_ROWS)
    # the measure at SwiftFormer-XS shapes, batch 64 (bf16): at most ~3x the minimum
    # bytes (11-13x before the fused path) and under a third of eager autograd's. (At batch 1
    # the fp32 weight partials and host casts dominate: stage 4 moves more than eager there.)
    for s in RL.SWIFTFORMER_XS_SHAPES.values():
        r = RL.roofline("additive_attention_backward", dict(B=64, N=s["H"] * s["W"], D=s["C"]))
        assert r["launches"] < 19, r
        assert r["bytes_moved"] <= 3.1 * r["bytes_min"], (s, r)
        assert r["bytes_moved"] < r["eager_bytes"] / 3, (s, r)
    # XS stage 1, bf16, batch 64: x + dy are 38.5 MB, so P, T, W run in two batch groups of
    # 19.3 MB whose re-reads count as L2 hits; 3 more launches than one sequence
    s = RL.SWIFTFORMER_XS_SHAPES["stage1"]
    r = RL.roofline("additive_attention_backward", dict(B=64, N=s["H"] * s["W"], D=s["C"]))
    assert RL.batch_groups(64, s["H"] * s["W"] * 2 * s["C"] * 2) == [32, 32]
    assert r["launches"] == 10 and r["bytes_moved"] <= 1.25 * r["bytes_min"], r
