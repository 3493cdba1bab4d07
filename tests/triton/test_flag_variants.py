"""The flag combinations of the Triton kernels that no other test in this folder launches, each
against its reference under TRITON_INTERPRET=1. A kernel's flags come from which inputs exist and
which gradients are wanted; every combination the launchers can produce is AOT-compiled
(_specs), and test_spec_coverage.py checks that each one also ran here at least once."""

from __future__ import annotations

import itertools

import pytest
import torch
from _util import check, module_args
from cases import attn_args, conv_args
from tolerances import assert_close

from swiftkern.ops import reference as R
from swiftkern.ops._define import reference_backward

pytestmark = pytest.mark.triton

AB = pytest.importorskip("swiftkern.triton_kernels._attention_backward")
ABF = pytest.importorskip("swiftkern.triton_kernels._attention_backward_fused")
BW = pytest.importorskip("swiftkern.triton_kernels._backward")
K = pytest.importorskip("swiftkern.triton_kernels._conv")
MB = pytest.importorskip("swiftkern.triton_kernels._mlp_backward")

POOLS = ("sum", "l2", "softmax")
MOD_IDX = (0, 1, 2, 3, 5, 6, 7, 8)  # x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final
MOD_REF = reference_backward(R.additive_attention_ref, MOD_IDX)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("need_dq,need_dk", [(True, False), (False, True)])
@pytest.mark.parametrize("with_dqn", [True, False])
def test_core_backward_one_input_gradient(pool, need_dq, need_dk, with_dqn):
    # dq alone or dk alone, with and without an extra gradient of qn (the module backward's)
    shape = (2, 13, 33)
    q, k, w_g, scale, _ = attn_args("additive_attention_core", shape, pool).args
    g = torch.Generator().manual_seed(5)
    dgk = torch.randn(shape, generator=g)
    dqn = torch.randn(shape, generator=g) if with_dqn else None
    dq, dk, dwg = AB.core_backward(dgk, q, k, w_g, scale, pool, need_dq, need_dk, dqn=dqn)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, w_g)]
    gk, qn = R.additive_attention_core_ref(*leaves, scale, pool)
    loss = (gk * dgk).sum() + ((qn * dqn).sum() if with_dqn else 0.0)
    ref = torch.autograd.grad(loss, leaves)
    what = f"{pool} dq={need_dq} dk={need_dk} dqn={with_dqn}"
    assert (dq is not None) == need_dq and (dk is not None) == need_dk, what
    if need_dq:
        assert_close(dq, ref[0], torch.float32, what=what + " dq")
        assert_close(dwg.reshape(w_g.shape), ref[2], torch.float32, what=what + " dw_g")
    if need_dk:
        assert_close(dk, ref[1], torch.float32, what=what + " dk")


def _fused_masked(mask):
    def run(*a):
        grad, x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final, b_final, pool = a
        d = x.shape[-1]
        t = d if w_final is None else w_final.shape[0]
        params = (x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final)
        need = [m and p is not None for m, p in zip(mask, params)]
        out = ABF.fused_backward(*a, need, ABF.fused_bwd_config_key(d, t, x.dtype))
        return [out[i] for i in range(8) if need[i]]

    return run


def _masked_ref(mask):
    def run(*a):
        out = MOD_REF(*a, list(mask))
        return [o for i, o in enumerate(out) if mask[i] and o.numel()]

    return run


# the parameter-gradient subsets of the finalize kernel (dWp, dbp, dWf, dbf): every non-empty
# one with a final linear, those of (dWp, dbp) without; dx with some, not with others
_FINALIZE_MASKS = [(True, m) for m in itertools.product((True, False), repeat=4) if any(m)] + \
                  [(False, m + (False, False)) for m in itertools.product((True, False), repeat=2)
                   if any(m)]


@pytest.mark.parametrize("final,wanted", _FINALIZE_MASKS)
def test_fused_backward_parameter_subsets(final, wanted):
    i = _FINALIZE_MASKS.index((final, wanted))
    need_x = i % 2 == 0
    pool = POOLS[i % 3]
    args = module_args((1, 9, 24), pool, final=final, seed=i)
    t = 24 if args[7] is None else args[7].shape[0]
    args = [torch.randn(1, 9, t, generator=torch.Generator().manual_seed(i)), *args]
    mask = (need_x, True, False, i % 3 == 0) + tuple(wanted)
    check(_fused_masked(mask), _masked_ref(mask), args,
          what=f"final={final} wanted={wanted} dx={need_x} {pool}")


@pytest.mark.parametrize("pool", POOLS)
def test_fused_backward_no_final_no_dx(pool):
    args = module_args((2, 9, 33), pool, final=False)
    args = [torch.randn(2, 9, 33, generator=torch.Generator().manual_seed(3)), *args]
    mask = (False,) + (True,) * 7
    check(_fused_masked(mask), _masked_ref(mask), args, what=f"no final, no dx, {pool}")


def test_mlp_train_without_residual():
    x, bn_w, bn_b, eps, w1, b1, w2, b2, ls, _ = conv_args(
        "mlp_train", (2, 33, 3, 5, 66), torch.float32, "nchw", 0).args
    check(K.mlp_train, R.mlp_train_ref, [x, bn_w, bn_b, eps, w1, b1, w2, b2, ls, None],
          what="mlp_train, no residual")


def test_mlp_backward_only_b2():
    # db2 alone: kernel P runs for the sum of g ls only (neither dz nor u)
    g = torch.Generator().manual_seed(4)
    z, grad = torch.randn(1, 20, 3, 5, generator=g), torch.randn(1, 20, 3, 5, generator=g)
    w1, w2 = torch.randn(40, 20, generator=g) * 0.2, torch.randn(20, 40, generator=g) * 0.2
    b1, b2, ls = torch.randn(40, generator=g), torch.randn(20, generator=g), torch.rand(20) + 0.5
    need = [False, False, False, False, True, False]
    got = MB.mlp_grads_fused(grad, z, w1, b1, w2, b2, ls, need)
    want = BW._mlp_grads_torch(grad, z, w1, b1, w2, b2, ls, need)
    assert [t is None for t in got] == [True] * 4 + [False, True]
    assert_close(got[4], want[4], torch.float32, what="db2 alone")

