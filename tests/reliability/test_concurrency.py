"""Threads: concurrent calls from Python threads, and results independent of the thread count."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from cases import attn_args, conv_args  # noqa: E402
from conftest import live_backends  # noqa: E402
from tolerances import assert_close  # noqa: E402

from swiftkern.ops import reference as R  # noqa: E402

OPS = ["conv_block", "mlp", "dwconv_bn", "additive_attention"]


def _args(op, seed):
    if op == "additive_attention":
        return attn_args(op, (2, 50, 24), "l2", seed=seed).args
    return conv_args(op, (2, 24, 9, 11, 96), seed=seed).args


@pytest.mark.parametrize("op", OPS)
def test_four_python_threads_on_different_inputs(op):
    backends = ["auto", *live_backends(op)]
    inputs = [_args(op, seed) for seed in range(4)]
    refs = [getattr(R, op + "_ref")(*a) for a in inputs]
    errors: list[str] = []

    def work(i):
        try:
            for _ in range(5):
                for b in backends:
                    out = getattr(torch.ops.swiftkern, op)(*inputs[i], b)
                    assert_close(out, refs[i], what=f"thread {i} {b}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("op", OPS)
def test_results_do_not_depend_on_thread_count(op):
    args = _args(op, 0)
    old = torch.get_num_threads()
    try:
        outs = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            outs[n] = {
                b: getattr(torch.ops.swiftkern, op)(*args, b)
                for b in ["reference", *live_backends(op)]
            }
    finally:
        torch.set_num_threads(old)
    for b in outs[1]:
        # Same kernel, other thread count: reductions may be split differently, so allow fp32
        # rounding (the per-op tolerance), not more.
        assert_close(outs[2][b], outs[1][b], what=f"{op}[{b}] 2 vs 1 threads")


@pytest.mark.parametrize("op", ["conv_block", "mlp", "dwconv_bn"])
def test_parameters_requiring_grad_on_worker_threads(op):
    """Regression: kernels whose parallel loops call ATen on worker threads must accept leaf
    parameters (requires_grad=True), with and without grad mode, at a multi-chunk shape."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = conv_args(op, (1, 48, 56, 56, 192)).args
        args = [
            a.requires_grad_(True) if isinstance(a, torch.Tensor) and i > 0 else a
            for i, a in enumerate(args)
        ]
        ref = getattr(R, op + "_ref")(*args).detach()
        for backend in ["auto", *live_backends(op)]:
            with torch.no_grad():
                assert_close(getattr(torch.ops.swiftkern, op)(*args, backend), ref)
            y = getattr(torch.ops.swiftkern, op)(*args, backend)
            assert_close(y.detach(), ref)
            y.sum().backward()
    finally:
        torch.set_num_threads(old)
