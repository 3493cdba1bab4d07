"""Roofline arithmetic, FLOP counting, byte model and the cache (measurement mocked)."""

from __future__ import annotations

import json

import pytest
import torch

from swiftkern.bench import roofline


def test_time_and_fraction():
    r = roofline.Roofline({"fp32": 100.0, "bf16": 400.0}, 10.0, "cpu", 2)
    # compute bound: 1e9 flops at 100 GFLOP/s = 10 ms; 1e6 bytes at 10 GB/s = 0.1 ms
    assert r.time_s(1e9, 1e6, "fp32") == pytest.approx(0.01)
    assert r.time_s(1e9, 1e6, "bf16") == pytest.approx(0.0025)
    # a bf16 mm slower than fp32's (no bf16 arithmetic): the upcast fp32 rate bounds it
    slow = roofline.Roofline({"fp32": 100.0, "bf16": 10.0}, 10.0, "cpu", 2)
    assert slow.time_s(1e9, 1e6, "bf16") == pytest.approx(0.01)
    # memory bound
    assert r.time_s(1e3, 1e9, "fp32") == pytest.approx(0.1)
    assert r.fraction(1e9, 1e6, "fp32", 0.02) == pytest.approx(0.5)
    assert r.time_s(1e9, 0, "fp16") == pytest.approx(0.01)  # unmeasured dtype: fp32 peak


def test_count_flops_linear():
    lin = torch.nn.Linear(32, 16, bias=False)
    x = torch.randn(8, 32)
    assert roofline.count_flops(lambda: lin(x)) == 2 * 8 * 32 * 16


def test_min_bytes():
    x = torch.zeros(10)  # 40 bytes
    w = torch.zeros(5, dtype=torch.bfloat16)  # 10 bytes
    y = torch.zeros(2)  # 8 bytes
    assert roofline.min_bytes([x], [w], [y]) == 58
    assert roofline.min_bytes([x], [w], [y], backward=True) == 58 + 8 + 2 * 50


def test_cache_measures_once(tmp_path, monkeypatch):
    calls = []

    def fake(device, threads, quick=False):
        calls.append(threads)
        return roofline.Roofline({"fp32": 50.0, "bf16": 1.0}, 8.0, device, threads)

    monkeypatch.setattr(roofline, "measure", fake)
    monkeypatch.setenv("SWIFTKERN_CACHE", str(tmp_path))
    a = roofline.load_or_measure("cpu", 2)
    b = roofline.load_or_measure("cpu", 2)
    assert calls == [2] and a == b
    roofline.load_or_measure("cpu", 1)
    assert calls == [2, 1]
    roofline.load_or_measure("cpu", 2, refresh=True)
    assert calls == [2, 1, 2]
    data = json.loads((tmp_path / "roofline.json").read_text())
    assert len(data) == 2 and all("threads=" in k for k in data)


def test_measure_quick_is_sane():
    r = roofline.measure("cpu", torch.get_num_threads(), quick=True)
    assert r.gflops["fp32"] > 0 and r.gflops["bf16"] > 0 and r.bandwidth_gbs > 0
