"""End-to-end models (HF and timm SwiftFormer) per provider: eager NCHW, channels_last,
ONNX Runtime, swiftkern per backend (and torch.compile with SWIFTKERN_BENCH_COMPILE=1). Same
builders and output checks as ``swiftkern bench model``; see conftest.py for options."""

from __future__ import annotations

import functools
import tempfile

import pytest
import torch
from bench_common import COMPILE, DEVICE, FULL, THREADS, run_benchmark

from swiftkern.bench import suite
from swiftkern.bench.models import build_model, example_input

MODELS = [f"{fam}:{size}" for fam in ("hf", "timm")
          for size in (("xs", "s", "l1", "l3") if FULL else ("xs",))]
BATCHES = (1, 8) if FULL else (1,)
DTYPES_ = ["fp32", "bf16"] if FULL else ["fp32"]
PROVIDERS = ["eager", "channels_last", "onnxruntime", "swiftkern"] + (["compile"] if COMPILE
                                                                      else [])
_TMP = tempfile.TemporaryDirectory(prefix="swiftkern-bench-")


def _names():
    names = ["eager", "channels_last"]
    if COMPILE:
        names.append("compile")
    if DEVICE == "cpu":
        names.append("onnxruntime")
    names += [f"swiftkern[{b}]" for b in ("cpu", "cuda", "triton", "reference")
              if suite._backend_live(b, DEVICE) and suite._wanted(b, None, DEVICE)]
    if "bf16" in DTYPES_:
        names += ["eager-bf16", "channels_last-bf16", "swiftkern-bf16"]
    return names


@functools.lru_cache(maxsize=2)
def _checked_case(spec, batch):
    s = suite.Settings(threads=THREADS, device=DEVICE)
    model = build_model(spec).to(DEVICE)
    if COMPILE:
        suite._reset_compiler()
    x = example_input(batch).to(DEVICE)
    with torch.no_grad():
        ref = model(x).float()
    cands = suite.model_candidates(model, x, PROVIDERS, DTYPES_, None, s, _TMP.name)
    suite._check_all(cands, ref, None, "model", s)
    return {c.name: c for c in cands}


@pytest.mark.parametrize("provider", _names())
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("spec", MODELS)
def test_model(benchmark, bench_settings, spec, batch, provider):
    cands = _checked_case(spec, batch)
    if provider not in cands:
        pytest.skip(f"{provider} not built for {spec}")
    run_benchmark(benchmark, cands[provider], f"{spec} b{batch}",
                  dict(model=spec, batch=batch), bench_settings)
