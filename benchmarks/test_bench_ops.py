"""Each swiftkern op vs its eager module sequence (and torch.compile of it) at SwiftFormer stage
shapes. Same workloads and checks as ``swiftkern bench ops``; see conftest.py for options."""

from __future__ import annotations

import functools

import pytest
import torch
from bench_common import COMPILE, DEVICE, FULL, run_benchmark

from swiftkern.bench import roofline, suite
from swiftkern.bench.models import stage_shapes
from swiftkern.bench.workloads import DTYPES, OPS, kernel_op, make_workload

SIZES = ("xs", "s", "l1", "l3") if FULL else ("xs",)
MODES_ = ("fwd", "fwd+bwd")
DTYPES_ = ("fp32", "bf16") if FULL else ("fp32",)


def _cases():
    for size in SIZES:
        for stage, shape in enumerate(stage_shapes(size, 1), start=1):
            for op in OPS:
                for mode in MODES_:
                    for dt in DTYPES_:
                        yield op, shape, mode, dt, f"{size}:{stage}"


def _providers(op, mode, dt):
    names = ["eager"] + (["compile"] if COMPILE else [])
    live = suite.live_backends(kernel_op(op, mode), DEVICE, DTYPES[dt], mode == "fwd+bwd")
    return names + [f"swiftkern[{b}]" for b in live if suite._wanted(b, None, DEVICE)]


PARAMS = [
    pytest.param(op, shape, mode, dt, prov,
                 id=f"{op}-{stage}-{'x'.join(map(str, shape))}-{mode}-{dt}-{prov}")
    for op, shape, mode, dt, stage in _cases()
    for prov in _providers(op, mode, dt)
]


@functools.lru_cache(maxsize=4)
def _checked_case(op, shape, mode, dt):
    """Workload + candidates, all checked against the fp32 eager module once per case."""
    from swiftkern.bench.suite import Settings

    s = Settings(device=DEVICE)
    w = make_workload(op, shape, mode, dt, DEVICE)
    if COMPILE:
        suite._reset_compiler()
    ref = w.runner(w.ref_module, w.eager_params(w.ref_module), x=w.x.float())
    with torch.enable_grad() if mode == "fwd+bwd" else torch.no_grad():
        r = ref()
    providers = ["eager", "swiftkern"] + (["compile"] if COMPILE else [])
    cands = suite.op_candidates(w, providers, None)
    suite._check_all(cands, suite._first(r), suite._grad_x(r), "block", s)
    flops = roofline.count_flops(w.flop_runner())
    return {c.name: c for c in cands}, dict(kernel_op=w.kernel_op, gflop=flops / 1e9)


@pytest.mark.parametrize("op,shape,mode,dtype,provider", PARAMS)
def test_op(benchmark, bench_settings, op, shape, mode, dtype, provider):
    cands, extra = _checked_case(op, shape, mode, dtype)
    group = f"{op} {'x'.join(map(str, shape))} {mode} {dtype}"
    run_benchmark(benchmark, cands[provider], group, extra, bench_settings)
