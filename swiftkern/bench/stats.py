"""Robust statistics of timing samples: median and inter-quartile range, per-round ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default "linear" method); NaN for no samples."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def summarize(xs: Sequence[float]) -> Summary:
    return Summary(quantile(xs, 0.5), quantile(xs, 0.25), quantile(xs, 0.75), len(xs))


def per_round_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """``num[r] / den[r]`` for each round r: both were measured back to back in the same round,
    so slow drift of the machine (other processes, clocks) cancels in the ratio."""
    if len(num) != len(den):
        raise ValueError(f"rounds differ: {len(num)} vs {len(den)}")
    return [a / b for a, b in zip(num, den, strict=True) if b > 0]
