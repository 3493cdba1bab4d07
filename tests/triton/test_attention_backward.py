"""Additive attention backward in Triton (core: split-N recompute + merge for the three pools, the
normalize backward fused; the whole module around it) against the reference backward (autograd
through swiftkern/ops/reference.py) under TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch
from _util import check, check_grad_masks
from cases import ATTN_SHAPES, attn_args
from tolerances import assert_close

from swiftkern import ops
from swiftkern._registry import Unsupported
from swiftkern.ops import reference as R
from swiftkern.ops._define import reference_backward

pytestmark = pytest.mark.triton

A = pytest.importorskip("swiftkern.triton_kernels._attention")
AB = pytest.importorskip("swiftkern.triton_kernels._attention_backward")

POOLS = ("sum", "l2", "softmax")
# (B, N, D): odd shapes (D not a multiple of 8/16, N = 1, B = 3, N past several blocks)
ODD = {"d33": (2, 37, 33), "n1": (1, 1, 16), "b3": (3, 5, 8), "ragged": (2, 71, 48)}
CORE_IDX = (0, 1, 2)  # q, k, w_g
MOD_IDX = (0, 1, 2, 3, 5, 6, 7, 8)  # x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final
CORE_REF = reference_backward(R.additive_attention_core_ref, CORE_IDX)
MOD_REF = reference_backward(R.additive_attention_ref, MOD_IDX)


def _grad(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _core(shape, pool, layout="contiguous", seed=0):
    """[grad, q, k, w_g, scale, pool]"""
    return [_grad(shape), *attn_args("additive_attention_core", shape, pool, torch.float32,
                                     layout, seed).args]


def _module(shape, pool, layout="contiguous", final=True):
    """[grad, x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool] (T = D)"""
    args = attn_args("additive_attention", shape, pool, layout=layout, final=final).args
    return [_grad(shape), *args]


def _check_core(args, dtype=torch.float32, what="", **kw):
    """check() of every core gradient; kw (config, max_splits) goes to the launcher's core."""
    if kw:
        fn = lambda *a: _core_bwd_kw(a, **kw)
    else:
        fn = lambda *a: AB.additive_attention_core_backward(*a, [True] * 3)
    return check(fn, lambda *a: CORE_REF(*a, [True] * 3), args, dtype, what=what)


def _core_bwd_kw(a, config=None, max_splits=A.MAX_SPLITS):
    """The launcher's core with an explicit config / split count, in the op's output form."""
    g, q, k, w_g, scale, pool = a
    dq, dk, dwg = AB.core_backward(g, q, k, w_g, scale, pool, True, True, config=config,
                                   max_splits=max_splits)
    return dq, dk, dwg.to(w_g.dtype)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("shape", list(ODD))
def test_core_backward_odd(shape, pool):
    for layout in ("contiguous", "strided"):
        out = _check_core(_core(ODD[shape], pool, layout), what=f"core bwd {shape} {pool} {layout}")
        assert all(o.is_contiguous() for o in out)


@pytest.mark.parametrize("pool", POOLS)
def test_core_backward_split_merge(pool):
    # 71 tokens over 1, 2, 3 and 32 splits: dG and the recomputed pool state merged from splits
    # that get several, one or no token blocks must give the single-pass gradients.
    args = _core(ODD["ragged"], pool)
    for splits in (1, 2, 3, 32):
        _check_core(args, what=f"{pool} splits={splits}", max_splits=splits)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("need_dq,need_dk", [(True, False), (False, True)])
@pytest.mark.parametrize("with_dqn", [True, False])
def test_core_backward_one_input_gradient(pool, need_dq, need_dk, with_dqn):
    # dq alone or dk alone, with and without an extra gradient of qn (the module backward's)
    grad, q, k, w_g, scale, _ = _core(ODD["d33"], pool)
    dqn = _grad(q.shape, seed=5) if with_dqn else None
    dq, dk, dwg = AB.core_backward(grad, q, k, w_g, scale, pool, need_dq, need_dk, dqn=dqn)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, w_g)]
    gk, qn = R.additive_attention_core_ref(*leaves, scale, pool)
    loss = (gk * grad).sum() + ((qn * dqn).sum() if with_dqn else 0.0)
    ref = torch.autograd.grad(loss, leaves)
    what = f"{pool} dq={need_dq} dk={need_dk} dqn={with_dqn}"
    assert (dq is not None) == need_dq and (dk is not None) == need_dk, what
    if need_dq:
        assert_close(dq, ref[0], torch.float32, what=what + " dq")
        assert_close(dwg.reshape(w_g.shape), ref[2], torch.float32, what=what + " dw_g")
    if need_dk:
        assert_close(dk, ref[1], torch.float32, what=what + " dk")


@pytest.mark.parametrize("key", sorted(AB.ATTN_BWD_CONFIGS))
def test_every_backward_config(key):
    d = {128: 100, 256: 220, 512: 300}[key]
    assert A.attn_config_key(d) == key
    for pool in POOLS:
        _check_core(_core((2, 9, d), pool), what=f"cfg {key} {pool}", config=key, max_splits=2)
    # a narrow D through the widest tile: the padded channels stay masked
    _check_core(_core(ODD["d33"], "softmax"), what=f"cfg {key} narrow", config=key)


@pytest.mark.parametrize("pool", POOLS)
def test_core_backward_tiles_per_program(monkeypatch, pool):
    # pass 2 with several token tiles per program: 71 tokens = 9 tiles of 8 in 2 programs per
    # batch (5 + a ragged 4), 3 programs (3 + 3 + 3) or 9 (one tile each); dq / dk of every tile
    # and dw_g accumulated across a program's tiles must match the reference
    args = _core(ODD["ragged"], pool)
    for target in (2 * 2, 3 * 2, 528):
        monkeypatch.setattr(AB, "APPLY_TARGET_PROGRAMS", target)
        _check_core(args, what=f"{pool} pass-2 target {target}", max_splits=3)


def test_batch_groups():
    # SwiftFormer-XS stage 1 at batch 64, bf16: q, k, dgk of one image 903 KB -> 3 groups
    per = 3136 * 48 * 2 * 3
    groups = A.batch_groups(64, per)
    assert groups == [(0, 22), (22, 44), (44, 64)]
    assert all((b1 - b0) * per <= A.L2_GROUP_BYTES for b0, b1 in groups)
    assert A.batch_groups(8, per) == [(0, 8)]  # fits: one sequence
    assert A.batch_groups(64, A.L2_GROUP_BYTES + 1) == [(0, 64)]  # not even one image fits
    assert A.batch_groups(1, 10 * A.L2_GROUP_BYTES) == [(0, 1)]
    for bsz in range(1, 40):  # every image once, in order, each group within the budget
        for per in (1, A.L2_GROUP_BYTES // 7, A.L2_GROUP_BYTES // 3 + 1, A.L2_GROUP_BYTES // 2):
            groups = A.batch_groups(bsz, per)
            assert groups[0][0] == 0 and groups[-1][1] == bsz
            assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
            assert len(groups) == 1 or all((b1 - b0) * per <= A.L2_GROUP_BYTES
                                           for b0, b1 in groups)
    # boundaries at a multiple of group_unit: every sliced tensor's group starts 16-byte aligned
    odd = torch.empty(9, 37, 21)  # 3108-byte batch stride: 4 images per unit
    unit = A.group_unit(odd, torch.empty(9, 37, 48))
    assert unit == 4
    for budget_images in (4, 5, 7, 8):
        per = A.L2_GROUP_BYTES // budget_images
        groups = A.batch_groups(9, per, unit)
        assert groups == [(0, 4), (4, 8), (8, 9)] if budget_images < 8 else [(0, 8), (8, 9)]
        assert all(b0 * odd.stride(0) * 4 % 16 == 0 for b0, _ in groups)
    assert A.batch_groups(9, A.L2_GROUP_BYTES // 3, unit) == [(0, 9)]  # a unit does not fit
    # the roofline model's copy of the rule (group sizes)
    from swiftkern.triton_kernels import _roofline as RL

    for bsz in (1, 2, 7, 64, 65, 128):
        for per in (1, 3136 * 48 * 2 * 3, 3136 * 96 * 2, A.L2_GROUP_BYTES // 3 + 1,
                    A.L2_GROUP_BYTES + 1):
            assert RL.batch_groups(bsz, per) == [b1 - b0 for b0, b1 in A.batch_groups(bsz, per)]


@pytest.mark.parametrize("pool", POOLS)
def test_core_backward_batch_groups(monkeypatch, pool):
    # passes 1 and 2 per batch group (A.batch_groups with a budget of ~2 images): 5 batches as
    # 2 + 2 + 1, each group's dq / dk slices and dw_g partial rows where the whole-batch run puts
    # them; with and without the module backward's extra qn gradient
    shape = (5, 37, 24)
    grad, q, k, w_g, scale, _ = _core(shape, pool)
    dqn = _grad(shape, seed=5)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, w_g)]
    gk, qn = R.additive_attention_core_ref(*leaves, scale, pool)
    ref = torch.autograd.grad((gk * grad).sum() + (qn * dqn).sum(), leaves)
    monkeypatch.setattr(A, "L2_GROUP_BYTES", int(2.5 * 37 * 24 * 4 * 4))
    assert A.batch_groups(5, 37 * 24 * 4 * 4) == [(0, 2), (2, 4), (4, 5)]
    dq, dk, dwg = AB.core_backward(grad, q, k, w_g, scale, pool, True, True, dqn=dqn)
    for got, want, name in ((dq, ref[0], "dq"), (dk, ref[1], "dk"),
                            (dwg.reshape(w_g.shape), ref[2], "dw_g")):
        assert_close(got, want, torch.float32, what=f"{pool} grouped {name}")
    monkeypatch.setattr(A, "L2_GROUP_BYTES", int(2.5 * 37 * 24 * 4 * 3))  # no dqn: 3 tensors
    _check_core(_core(shape, pool), what=f"{pool} grouped, no dqn")
    # D = 21: a 3108-byte batch stride, groups of 4 images (16-byte aligned slices): 4 + 4 + 1
    monkeypatch.setattr(A, "L2_GROUP_BYTES", int(5.5 * 37 * 21 * 4 * 3))
    _check_core(_core((9, 37, 21), pool), what=f"{pool} grouped, aligned units")


def test_core_roofline_tiles_match_configs():
    from swiftkern.triton_kernels import _roofline as RL

    assert RL.ATTN_CORE_BWD_TILES == {k: (c["P1_BLOCK_N"], c["BLOCK_N"])
                                      for k, c in AB.ATTN_BWD_CONFIGS.items()}
    assert RL.ATTN_CORE_APPLY_PROGRAMS == AB.APPLY_TARGET_PROGRAMS
    assert RL.L2_REUSE_BYTES == A.L2_GROUP_BYTES


def test_too_wide_raises_unsupported():
    args = _module((1, 2, 520), "l2")
    with pytest.raises(Unsupported):
        AB.additive_attention_backward(*args, [True] * 8)


def test_core_backward_softmax_large_scores():
    g, q, k, w_g, scale, pool = _core(ODD["ragged"], "softmax")
    # scores up to ~1e4: exp without the max shift overflows to inf
    _check_core([g, q, k, w_g * 100.0, 100.0, pool], what="softmax large scores")


@pytest.mark.parametrize("pool", ["l2", "softmax"])
def test_core_backward_below_eps(pool):
    # F.normalize clamps the norm at 1e-12: a query / key row and (l2) a score vector with a norm
    # of 0.5e-12 take the clamped branch of the backward (1/eps scaling, no projection term; the
    # projection would change these gradients by ~50%). A zero row must give finite gradients.
    g, q, k, w_g, scale, _ = _core(ODD["b3"], pool)
    q[1, 2] *= 0.5e-12 / q[1, 2].norm()
    k[0, 4] *= 0.5e-12 / k[0, 4].norm()
    q[2, 0] = 0.0
    _check_core([g, q, k, w_g, scale, pool], what=f"{pool} tiny rows")
    if pool == "l2":
        g, q, k, w_g, scale, _ = _core(ODD["b3"], pool)
        s = (torch.nn.functional.normalize(q, dim=-1) @ w_g) * scale
        w_g = w_g * (0.5e-12 / s.norm(dim=1).max())
        _check_core([g, q, k, w_g, scale, pool], what="l2 tiny scores")


def test_core_backward_grad_mask():
    args = _core(ODD["d33"], "l2")
    for mask in ([True, False, False], [False, True, False], [False, False, True]):
        got = AB.additive_attention_core_backward(*args, mask)
        ref = CORE_REF(*args, mask)
        for i in range(3):
            if mask[i]:
                assert_close(got[i], ref[i], torch.float32, what=f"mask {mask} grad {i}")
            else:
                assert got[i].numel() == 0, f"mask {mask}: grad {i} not empty"


@pytest.mark.parametrize("name", ["xs_stage4"])  # xs_stage1 (3136 tokens) costs ~1 min/pool here
def test_core_backward_real_shape(name):
    for pool in POOLS:
        _check_core(_core(ATTN_SHAPES[name], pool), what=f"core bwd {name} {pool}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pool", POOLS)
def test_core_backward_half(pool, dtype):
    out = _check_core(_core(ODD["d33"], pool), dtype, what=f"core bwd {pool} {dtype}")
    assert all(o.dtype == dtype for o in out)


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("pool", POOLS)
def test_module_backward(pool, final):
    mask = [True] * 8
    cases = [(ODD["d33"], "strided"), (ODD["n1"], "contiguous"), (ODD["b3"], "contiguous")]
    if final:
        cases.append((ATTN_SHAPES["xs_stage4"], "contiguous"))
    for shape, layout in cases:
        args = _module(shape, pool, layout, final)
        got = AB.additive_attention_backward(*args, mask)
        ref = MOD_REF(*args, mask)
        assert len(got) == 8
        for i, (a, b) in enumerate(zip(got, ref)):
            assert_close(a, b, torch.float32, what=f"module {pool} {shape} {layout} grad {i}")
        if not final:
            assert got[6].numel() == 0 and got[7].numel() == 0


def test_module_backward_grad_mask_and_none():
    args = _module(ODD["d33"], "softmax")
    args[3] = None  # b_qk
    masks = ([False, False, False, True, False, False, False, False],
             [False, True, True, False, False, True, True, False],
             [True, False, False, False, True, False, False, True])
    check_grad_masks(AB.additive_attention_backward, MOD_REF, args, masks, skip=(2,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pool", POOLS)
def test_module_backward_half(pool, dtype):
    args = _module(ODD["d33"], pool, "strided")
    out = check(lambda *a: AB.additive_attention_backward(*a, [True] * 8),
                lambda *a: MOD_REF(*a, [True] * 8), args, dtype, what=f"module bwd {pool}")
    assert all(o.dtype == dtype for o in out)


@pytest.mark.parametrize("pool", POOLS)
def test_op_autograd_through_triton(pool):
    # through torch.ops.swiftkern (dispatch, layout normalization, autograd formula)
    args = attn_args("additive_attention", ODD["d33"], pool, layout="strided").args
    idx = MOD_IDX

    def grads(backend):
        a = [t.detach().clone().requires_grad_(True) if i in idx else t
             for i, t in enumerate(args)]
        y = ops.additive_attention(*a, backend=backend)
        y.backward(_grad(y.shape))
        return [a[i].grad for i in idx]

    for i, (g, r) in enumerate(zip(grads("triton"), grads("reference"))):
        assert_close(g, r, torch.float32, what=f"op {pool} grad {i}")


def test_torch_compile_fullgraph_backward():
    # the backward op inside a compiled graph (fake impl of additive_attention_backward)
    args = attn_args("additive_attention", (2, 9, 16), "softmax").args

    def grads(compiled):
        a = [t.detach().clone().requires_grad_(True) if i in MOD_IDX else t
             for i, t in enumerate(args)]
        f = lambda *t: ops.additive_attention(*t, backend="triton" if compiled else "reference")
        if compiled:
            f = torch.compile(f, fullgraph=True, backend="aot_eager")
        f(*a).sum().backward()
        return [a[i].grad for i in MOD_IDX]

    torch._dynamo.reset()
    for i, (g, r) in enumerate(zip(grads(True), grads(False))):
        assert_close(g, r, torch.float32, what=f"compiled grad {i}")
