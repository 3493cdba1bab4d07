"""The algorithm of csrc/cuda/additive_attention.cu, step for step in PyTorch (fp64), vs reference.

No GPU here, so the CUDA kernels cannot run. What can be checked on the CPU is the algorithm they
implement: the per-warp online pooling states (flash-style running max for softmax), the merge of
warp states and of split-N partials (including empty splits), and the closed-form backward
(dG = sum dgk*kn, sum_n a_n da_n = dG.G, ds per pool, normalize backward). This file mirrors the
kernel loops (token n of a chunk goes to warp n % 8) so a wrong merge or derivative fails here.
It checks math, not indexing or synchronization (those need a GPU run: tests/ops with --backend).
"""

from __future__ import annotations

import math

import pytest
import torch

from swiftkern.ops.reference import additive_attention_core_ref

WARPS = 8  # kAttnThreads / 32
EPS = 1e-12


def _inv_norm(sumsq):
    return 1.0 / max(math.sqrt(sumsq), EPS)


def _factor(pool, m, big_m):
    if pool != "softmax":
        return 1.0
    return 0.0 if m == -math.inf else math.exp(m - big_m)


def _merge(pool, states):
    """states: list of (m, l, acc) -> (M, L, sum acc * factor), as merge_stats + the d-loop."""
    big_m = max(m for m, _, _ in states)
    fac = [_factor(pool, m, big_m) for m, _, _ in states]
    big_l = sum(lsum * f for (_, lsum, _), f in zip(states, fac))
    acc = sum(a * f for (_, _, a), f in zip(states, fac))
    return big_m, big_l, acc


def _pool_norm(pool, big_l):
    if pool == "sum":
        return 1.0
    if pool == "l2":
        return _inv_norm(big_l)
    return 1.0 / big_l


def _chunk(n_tok, splits, sp):
    chunk = -(-n_tok // splits)
    return chunk * sp, min(n_tok, chunk * sp + chunk)


def model_forward(q, k, wg, scale, pool, splits):
    b_sz, n_tok, d = q.shape
    g_all = torch.zeros(b_sz, d, dtype=q.dtype)
    stats = torch.zeros(b_sz, 2, dtype=q.dtype)
    for b in range(b_sz):
        parts = []
        for sp in range(splits):
            n0, n1 = _chunk(n_tok, splits, sp)
            warp_states = []
            for w in range(WARPS):
                m, lsum, acc = -math.inf, 0.0, torch.zeros(d, dtype=q.dtype)
                for n in range(n0 + w, n1, WARPS):
                    qr = q[b, n]
                    inv = _inv_norm(float((qr * qr).sum()))
                    s = float(qr @ wg) * inv * scale
                    if pool == "sum":
                        a, c = (s - s) + 1.0, 1.0
                    elif pool == "l2":
                        a, c = s, 1.0
                        lsum += s * s
                    else:
                        mn = max(m, s)
                        c = 0.0 if m == -math.inf else math.exp(m - mn)
                        a = 0.0 if mn == -math.inf else math.exp(s - mn)
                        lsum, m = lsum * c + a, mn
                    acc = acc * c + a * (qr * inv)
                warp_states.append((m, lsum, acc))
            parts.append(_merge(pool, warp_states))
        big_m, big_l, acc = _merge(pool, parts)
        g_all[b] = acc * _pool_norm(pool, big_l)
        stats[b] = torch.tensor(
            [big_m if pool == "softmax" else 0.0, 0.0 if pool == "sum" else big_l], dtype=q.dtype
        )
    kn = k / k.norm(dim=-1, keepdim=True).clamp_min(EPS)
    qn = q / q.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return g_all[:, None, :] * kn, qn, g_all, stats


def _norm_grad(gy, y, inv, clamped):
    dot = (y * gy).sum()
    return gy * inv if clamped else (gy - y * dot) * inv


def model_backward(q, k, wg, scale, pool, g_all, stats, dgk, dres):
    b_sz, n_tok, d = q.shape
    dq, dk = torch.zeros_like(q), torch.zeros_like(k)
    dwg = torch.zeros(d, dtype=q.dtype)
    for b in range(b_sz):
        g = g_all[b]
        dg = torch.zeros(d, dtype=q.dtype)
        for n in range(n_tok):  # attn_bwd_reduce_kernel
            dg += dgk[b, n] * k[b, n] * _inv_norm(float((k[b, n] ** 2).sum()))
        ada = float(dg @ g)
        big_m, big_l = float(stats[b, 0]), float(stats[b, 1])
        for n in range(n_tok):  # attn_bwd_apply_kernel
            qr, ss = q[b, n], float((q[b, n] ** 2).sum())
            inv, clamped = _inv_norm(ss), math.sqrt(ss) < EPS
            s = float(qr @ wg) * inv * scale
            da = float(qr @ dg) * inv
            if pool == "sum":
                a, ds = (s - s) + 1.0, 0.0
            elif pool == "l2":
                inv_s = _inv_norm(big_l)
                a = s * inv_s
                ds = da * inv_s if math.sqrt(big_l) < EPS else (da - a * ada) * inv_s
            else:
                a = math.exp(s - big_m) / big_l
                ds = a * (da - ada)
            qn = qr * inv
            dqn = (dres[b, n] if dres is not None else 0.0) + a * dg + ds * scale * wg
            dq[b, n] = _norm_grad(dqn, qn, inv, clamped)
            dwg += ds * scale * qn
            kss = float((k[b, n] ** 2).sum())
            kinv = _inv_norm(kss)
            dk[b, n] = _norm_grad(dgk[b, n] * g, k[b, n] * kinv, kinv, math.sqrt(kss) < EPS)
    return dq, dk, dwg


SHAPES = [(1, 1, 5), (2, 9, 33), (2, 70, 17)]


@pytest.mark.parametrize("pool", ["sum", "l2", "softmax"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("splits", [1, 3, 4])
def test_forward_model_matches_reference(pool, shape, splits):
    torch.manual_seed(0)
    q, k = torch.randn(*shape, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    wg = torch.randn(shape[-1], dtype=torch.float64)
    scale = shape[-1] ** -0.5 * 3.0  # sharpen the softmax so the running max matters
    gk, qn, _, _ = model_forward(q, k, wg, scale, pool, splits)
    gk_ref, qn_ref = additive_attention_core_ref(q, k, wg, scale, pool)
    torch.testing.assert_close(gk, gk_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(qn, qn_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pool", ["sum", "l2", "softmax"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_dres", [False, True])
def test_backward_model_matches_autograd(pool, shape, with_dres):
    torch.manual_seed(1)
    q = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    wg = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
    scale = shape[-1] ** -0.5 * 3.0
    dgk = torch.randn(*shape, dtype=torch.float64)
    dres = torch.randn(*shape, dtype=torch.float64) if with_dres else None
    gk, qn = additive_attention_core_ref(q, k, wg, scale, pool)
    loss = (gk * dgk).sum() + ((qn * dres).sum() if with_dres else 0.0)
    ref = torch.autograd.grad(loss, [q, k, wg])
    with torch.no_grad():
        _, _, g_all, stats = model_forward(q, k, wg, scale, pool, splits=2)
        got = model_backward(q, k, wg, scale, pool, g_all, stats, dgk, dres)
    for name, a, b in zip(("dq", "dk", "dw_g"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")
