"""Statistics and interleaving of the benchmark harness (no timing assertions)."""

from __future__ import annotations

import numpy as np
import pytest

from swiftkern.bench.harness import Provider, Timings, compare, run_rounds
from swiftkern.bench.stats import per_round_ratios, quantile, summarize


@pytest.mark.parametrize("xs", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0],
                                list(np.random.default_rng(0).random(17))])
@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_quantile_matches_numpy(xs, q):
    assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)), rel=1e-12)


def test_summarize_median_iqr():
    s = summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (s.median, s.q1, s.q3, s.n) == (3.0, 2.0, 4.0, 5)
    assert s.iqr == 2.0
    assert np.isnan(summarize([]).median)


def test_per_round_ratios():
    assert per_round_ratios([2.0, 6.0], [1.0, 3.0]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        per_round_ratios([1.0], [1.0, 2.0])


def test_rounds_alternate_and_rotate():
    calls = []
    provs = [Provider(n, (lambda n=n: calls.append(n))) for n in "ABC"]
    t = run_rounds(provs, rounds=4, warmup_s=0.0, min_sample_s=0.0)
    assert all(len(t.samples[n]) == 4 for n in "ABC")
    assert t.inner == {"A": 1, "B": 1, "C": 1}
    timed = calls[-24:]  # after warm-up / calibration calls: (re-warm, timed) per sample
    assert timed[0::2] == timed[1::2], "each sample follows one untimed call of its provider"
    rounds = [timed[1::2][i:i + 3] for i in range(0, 12, 3)]
    assert rounds == [list("ABC"), list("BCA"), list("CAB"), list("ABC")]
    calls.clear()
    run_rounds(provs, rounds=2, warmup_s=0.0, min_sample_s=0.0, rewarm=0)
    assert calls[-6:] == list("ABCBCA")


def test_time_budget_keeps_rounds_equal():
    provs = [Provider(n, lambda: None) for n in "AB"]
    t = run_rounds(provs, rounds=1000, warmup_s=0.0, min_sample_s=0.0, time_budget_s=0.0,
                   min_rounds=3)
    assert len(t.samples["A"]) == len(t.samples["B"]) == 3


def test_calibration_repeats_fast_calls():
    provs = [Provider("fast", lambda: None)]
    t = run_rounds(provs, rounds=1, warmup_s=0.0, min_sample_s=0.001)
    assert t.inner["fast"] > 1


def test_compare_per_round_and_best_peer():
    # Per-round ratios differ from the ratio of medians: eager drifts, swiftkern tracks it.
    t = Timings(samples={
        "eager": [1.0, 2.0, 4.0],
        "ort": [0.9, 1.0, 1.1],
        "swiftkern[cpu]": [0.5, 1.0, 2.0],
        "swiftkern[reference]": [0.1, 0.1, 0.1],
    })
    provs = [Provider("eager", None, family="eager"), Provider("ort", None),
             Provider("swiftkern[cpu]", None, family="swiftkern"),
             Provider("swiftkern[reference]", None, family="swiftkern")]
    c = compare(t, provs, "eager")
    assert c["swiftkern[cpu]"].speedup_vs_eager.median == pytest.approx(2.0)
    assert c["swiftkern[cpu]"].speedup_vs_eager.iqr == pytest.approx(0.0)
    assert c["eager"].speedup_vs_eager.median == 1.0
    # Best peer: fastest non-swiftkern provider other than itself (ort), never a swiftkern one.
    assert c["swiftkern[cpu]"].best_peer == "ort"
    assert c["swiftkern[cpu]"].speedup_vs_best_peer.median == pytest.approx(1.0)
    assert c["ort"].best_peer == "eager"
    assert c["eager"].best_peer == "ort"


def test_best_peer_prefers_same_dtype():
    t = Timings(samples={"eager": [2.0], "eager-bf16": [4.0], "swiftkern-bf16": [1.0],
                         "swiftkern[cpu]": [1.0]})
    provs = [Provider("eager", None, family="eager"),
             Provider("eager-bf16", None, family="eager", dtype="bf16"),
             Provider("swiftkern-bf16", None, family="swiftkern", dtype="bf16"),
             Provider("swiftkern[cpu]", None, family="swiftkern")]
    c = compare(t, provs, "eager")
    assert c["swiftkern-bf16"].best_peer == "eager-bf16"
    assert c["swiftkern-bf16"].speedup_vs_best_peer.median == 4.0
    assert c["swiftkern-bf16"].speedup_vs_eager.median == 2.0
    assert c["swiftkern[cpu]"].best_peer == "eager"
