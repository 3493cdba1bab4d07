"""Shared settings of the pytest-benchmark suites (imported by name: conftest.py is not unique).

pytest-benchmark suites for swiftkern: ``pytest benchmarks/ --benchmark-only``.

They share the CLI's harness (swiftkern/bench): the same workloads, providers, output checks (a
provider whose output is outside the SPEC.md tolerance fails instead of getting a number) and the
same calibration of calls per sample. Not collected by the normal test run (testpaths = tests).

Environment:
  SWIFTKERN_BENCH_FULL=1     the whole matrix (XS/S/L1/L3, fwd and fwd+bwd, fp32 and bf16)
  SWIFTKERN_BENCH_COMPILE=1  add torch.compile providers (minutes of inductor builds on 2 cores)
  SWIFTKERN_BENCH_THREADS=N  intra-op threads (default 2, as the CLI)
Ratios between providers measured side by side per round are the CLI's job
(``swiftkern bench ops|model``); here each provider is one benchmark, grouped by workload so
``--benchmark-group-by=group`` and ``--benchmark-compare`` line them up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager

import pytest
import torch

from swiftkern.bench.machine import set_threads

FULL = os.environ.get("SWIFTKERN_BENCH_FULL", "0") not in ("", "0")
COMPILE = os.environ.get("SWIFTKERN_BENCH_COMPILE", "0") not in ("", "0")
THREADS = int(os.environ.get("SWIFTKERN_BENCH_THREADS", "2"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

set_threads(THREADS)


def run_benchmark(benchmark, cand, group: str, extra: dict, settings) -> None:
    """Benchmark one checked provider with the CLI's calibration of calls per sample."""
    from swiftkern.bench.harness import Provider, warmup_and_calibrate

    if cand.error:
        pytest.fail(f"{cand.name} could not run: {cand.error}")
    if cand.checks.get("ok") is False:
        pytest.fail(f"{cand.name}: output differs from eager fp32 by "
                    f"{cand.checks['max_abs_diff']:.3g} > tolerance {cand.checks['tol']:.3g}")
    p = Provider(cand.name, cand.fn, device=settings.device)
    inner = warmup_and_calibrate(p, settings.warmup_s, settings.min_sample_s)
    benchmark.group = group
    benchmark.extra_info.update(extra)
    benchmark.extra_info.update(provider=cand.name, threads=settings.threads,
                                max_abs_diff=cand.checks.get("max_abs_diff"),
                                grad_max_abs_diff=cand.checks.get("grad_max_abs_diff"),
                                tol=cand.checks.get("tol"))
    if settings.device == "cuda":
        def fn():
            cand.fn()
            torch.cuda.synchronize()
    else:
        fn = cand.fn
    benchmark.pedantic(fn, rounds=max(5, int(20 / max(1, inner) ** 0.5)), iterations=inner,
                       warmup_rounds=1)


def median_us(fn, before, reps: int) -> float:
    """Median wall time of fn() in us over reps calls, before() run untimed ahead of each (one
    untimed call of fn first)."""
    fn()
    ts = []
    for _ in range(reps):
        before()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def threads_parser(doc: str, **counts: int) -> argparse.ArgumentParser:
    """A script's parser: --threads (default 2) and one int option per keyword, with that
    default (e.g. reps=25 gives --reps)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    for name, default in counts.items():
        ap.add_argument(f"--{name}", type=int, default=default)
    return ap


# 64 MB read before a cold call (read, not written: no dirty lines left behind) by the
# cold-vs-warm scripts (cold_gemm.py, cold_conv.py)
FLUSH_FLOATS = 16 << 20


def script_parser(doc: str) -> argparse.ArgumentParser:
    """The --model / --batch / --threads options shared by the A/B scripts in this folder."""
    ap = threads_parser(doc, batch=1)
    ap.add_argument("--model", default="hf:xs")
    return ap


@contextmanager
def restored_env(name: str):
    """Leaves os.environ[name] as it was (set or not) after an A/B that switches it."""
    saved = os.environ.get(name)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved
