"""Timing harness shared by the CLI and the pytest-benchmark suites.

Method (what makes the numbers comparable):
* every provider is warmed up, then calibrated to an inner repeat count so that one sample lasts
  at least ``min_sample_s`` (timer resolution and call overhead stay negligible);
* providers are measured in interleaved rounds (A B C A B C ...; the order rotates each round so
  no provider always runs right after another), so drift of a shared machine hits all of them;
* each sample is preceded by ``rewarm`` untimed calls of the same provider: a sample then measures
  the provider in steady state (its weights and buffers in cache, its thread pool awake, the
  previous provider's spinning threads parked), as a model serving requests back to back runs,
  not the cold first call after another framework ran (measured on the 2-core CI machine,
  HF SwiftFormer-XS batch 1: without it ONNX Runtime read 18-21 ms interleaved against 14-16 ms
  run alone, swiftkern 16-18 ms either way);
* per provider: median and IQR of the samples; ratios between providers are computed per round and
  then summarized (median of ratios), never as a ratio of separately taken medians;
* on CUDA, samples are timed with CUDA events around the inner loop; on CPU with perf_counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .stats import Summary, per_round_ratios, summarize


@dataclass
class Provider:
    """One way of computing a workload. ``fn()`` runs it once (inputs are captured)."""

    name: str
    fn: Callable[[], object]
    family: str = "peer"  # "eager" (the baseline), "peer" (other frameworks), "swiftkern"
    dtype: str = "fp32"
    device: str = "cpu"
    note: str = ""
    inner: int = 1


@dataclass
class Timings:
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds per call, per round
    inner: dict[str, int] = field(default_factory=dict)

    def summary(self, name: str) -> Summary:
        return summarize(self.samples[name])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(p: Provider, inner: int) -> float:
    """Seconds per call of ``p.fn`` averaged over ``inner`` back-to-back calls."""
    if p.device.startswith("cuda"):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(inner):
            p.fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        p.fn()
    return (time.perf_counter() - t0) / inner


def warmup_and_calibrate(p: Provider, warmup_s: float, min_sample_s: float,
                         min_warmup_calls: int = 2) -> int:
    """Run ``p`` for ``warmup_s`` (at least ``min_warmup_calls`` calls); return the inner count."""
    calls = 0
    t_end = time.perf_counter() + warmup_s
    best = float("inf")
    while calls < min_warmup_calls or time.perf_counter() < t_end:
        best = min(best, time_once(p, 1))
        calls += 1
        if calls >= 1000:
            break
    inner = max(1, int(min_sample_s / max(best, 1e-9)) + (0 if best >= min_sample_s else 1))
    return min(inner, 10_000)


def run_rounds(
    providers: list[Provider],
    rounds: int,
    warmup_s: float = 0.3,
    min_sample_s: float = 0.01,
    on_step: Callable[[], None] | None = None,
    time_budget_s: float | None = None,
    min_rounds: int = 5,
    rewarm: int = 1,
) -> Timings:
    """Measure ``providers`` in ``rounds`` interleaved rounds (see module docstring), each
    sample after ``rewarm`` untimed calls of its provider.

    With ``time_budget_s``, stop after the first complete round past the budget (but not before
    ``min_rounds``): a loaded machine then yields fewer rounds instead of an endless run. Every
    provider always has the same number of samples.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    t0 = time.perf_counter()
    t = Timings()
    for p in providers:
        p.inner = warmup_and_calibrate(p, warmup_s, min_sample_s)
        t.inner[p.name] = p.inner
        t.samples[p.name] = []
    n = len(providers)
    for r in range(rounds):
        for i in range(n):
            p = providers[(r + i) % n]
            for _ in range(rewarm):
                p.fn()
            _sync(p.device)
            t.samples[p.name].append(time_once(p, p.inner))
            if on_step is not None:
                on_step()
        if (time_budget_s is not None and r + 1 >= min_rounds
                and time.perf_counter() - t0 > time_budget_s):
            break
    return t


@dataclass(frozen=True)
class Comparison:
    speedup_vs_eager: Summary | None  # of per-round eager_time / provider_time
    best_peer: str | None
    speedup_vs_best_peer: Summary | None


def compare(timings: Timings, providers: list[Provider], eager: str) -> dict[str, Comparison]:
    """Per-round speedups of every provider vs ``eager`` and vs its best peer.

    The best peer of a provider is the fastest (by median) provider that is not itself and not of
    the "swiftkern" family: for swiftkern it is the strongest non-swiftkern alternative measured.
    Peers run at the provider's dtype when any does (bf16 is compared with bf16), else any dtype.
    """
    medians = {p.name: timings.summary(p.name).median for p in providers}
    out: dict[str, Comparison] = {}
    for p in providers:
        mine = timings.samples[p.name]
        vs_eager = None
        if eager in timings.samples:
            vs_eager = summarize(per_round_ratios(timings.samples[eager], mine))
        peers = [q for q in providers if q.name != p.name and q.family != "swiftkern"]
        same = [q for q in peers if q.dtype == p.dtype]
        peers = [q.name for q in (same or peers)]
        best = min(peers, key=lambda n: medians[n]) if peers else None
        vs_best = summarize(per_round_ratios(timings.samples[best], mine)) if best else None
        out[p.name] = Comparison(vs_eager, best, vs_best)
    return out
