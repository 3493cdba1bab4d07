"""Op workloads: the swiftkern side computes what the eager module computes (provider output
checks), and a wrong provider is caught by the check that runs before timing."""

from __future__ import annotations

import pytest
import torch

from swiftkern.bench import check, suite
from swiftkern.bench.workloads import MODES, OPS, make_workload

# Odd shapes (SPEC.md section 3): C not a multiple of 8, H != W, B = 1 / 2.
SHAPES = [(2, 33, 5, 3), (1, 20, 1, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_swiftkern_reference_matches_eager_module(op, mode, shape):
    w = make_workload(op, shape, mode, "fp32", seed=1)
    eager = w.runner(w.module, w.eager_params())()
    sk = w.runner(lambda x: w.sk(x, "reference"), w.sk_params)()
    ye, ys = (eager[0], sk[0]) if mode == "fwd+bwd" else (eager, sk)
    assert ye.shape == ys.shape
    tol = check.tolerance(check.abs_max(ye), "fp32", "block", None)
    assert check.max_abs_diff(ys, ye) <= tol
    if mode == "fwd+bwd":
        gx_e, gx_s = eager[1][0], sk[1][0]
        assert check.max_abs_diff(gx_s, gx_e) <= check.tolerance(check.abs_max(gx_e), "fp32",
                                                                 "block", None)
        assert len(sk[1]) == 1 + len(w.sk_params)
        assert all(g is not None for g in sk[1][1:] if op != "additive_attention_sum")


def test_workload_is_not_near_identity():
    # Randomized layer scales and BN: the block output differs from its input substantially.
    w = make_workload("conv_block", (1, 16, 6, 6), "fwd", "fp32")
    with torch.no_grad():
        assert float((w.module(w.x) - w.x).abs().max()) > 0.1


def test_bf16_workload_dtypes():
    w = make_workload("mlp", (1, 12, 3, 3), "fwd", "bf16")
    assert w.x.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in w.sk_params)
    assert next(w.module.parameters()).dtype == torch.bfloat16
    assert next(w.ref_module.parameters()).dtype == torch.float32


def _settings():
    return suite.Settings(threads=1, rounds=2, warmup_s=0.0, min_sample_s=0.0)


@pytest.mark.parametrize("mode", MODES)
def test_run_op_case_rows(mode):
    rows = suite.run_op_case("dwconv_bn", (1, 8, 4, 4), mode, "fp32", _settings(),
                             ["eager", "swiftkern"])
    by = {r["provider"]: r for r in rows}
    assert by["eager"]["max_abs_diff"] == 0.0 and by["eager"]["check"] == "ok"
    ref = by["swiftkern[reference]"]
    assert ref["check"] == "ok" and ref["rounds"] == 2 and ref["median_ms"] > 0
    assert ref["gflop"] > 0 and ref["mbytes"] > 0
    assert ref["kernel_op"] == ("dwconv_bn" if mode == "fwd" else "dwconv_bn_train")
    if mode == "fwd+bwd":
        assert ref["grad_max_abs_diff"] is not None


def test_bf16_check_is_relative_to_eager_bf16():
    rows = suite.run_op_case("mlp", (1, 12, 3, 3), "fwd", "bf16", _settings(),
                             ["eager", "swiftkern"])
    by = {r["provider"]: r for r in rows}
    e = by["eager"]["max_abs_diff"]
    assert e > 0  # bf16 eager itself differs from the fp32 ground truth
    sk = by["swiftkern[reference]"]
    assert sk["tol"] == pytest.approx(check.tolerance(sk["ref_absmax"], "bf16", "block", e))
    assert sk["tol"] == pytest.approx(2 * e + check.LOWP_FLOOR_REL * max(1.0, sk["ref_absmax"]))


def test_wrong_provider_fails_check():
    ref = torch.ones(4)
    good = suite.Candidate("eager", "eager", "fp32", fn=lambda: ref.clone())
    bad = suite.Candidate("broken", "swiftkern", "fp32", fn=lambda: ref + 1e-2)
    boom = suite.Candidate("boom", "peer", "fp32", fn=lambda: 1 / 0)
    suite._check_all([good, bad, boom], ref, None, "block", _settings())
    assert good.checks["ok"] is True
    assert bad.checks["ok"] is False and bad.checks["max_abs_diff"] == pytest.approx(1e-2)
    assert boom.error.startswith("ZeroDivisionError") and boom.fn is None
    assert suite._check_word(bad) == "FAIL" and suite._check_word(boom) == "error"


def test_predict_gpu_uses_triton_roofline_when_present(monkeypatch):
    from swiftkern import triton_kernels

    seen = []

    def fake_roofline(op, shapes):
        seen.append((op, shapes))
        return {"predicted_h100_us": 25.0}

    monkeypatch.setattr(triton_kernels, "roofline", fake_roofline, raising=False)
    got = suite.predict_gpu_s("conv_block_local", "conv_block_train", (1, 8, 4, 4), "bf16",
                              "fwd+bwd")
    assert got == pytest.approx(50e-6)
    shapes = dict(B=1, C=8, H=4, W=4, dtype_bytes=2, hidden=8)
    assert seen == [("conv_block_train", shapes), ("conv_block_train_backward", shapes)]
    seen.clear()
    suite.predict_gpu_s("additive_attention_l2", "additive_attention", (2, 16, 3, 5), "fp32", "fwd")
    assert seen == [("additive_attention", dict(B=2, N=15, D=16, dtype_bytes=4))]
    seen.clear()
    suite.predict_gpu_s("additive_attention_sum", "additive_attention", (2, 15, 16), "fp32", "fwd")
    assert seen == [("additive_attention", dict(B=2, N=15, D=16, dtype_bytes=4))]
    monkeypatch.delattr(triton_kernels, "roofline")
    assert suite.predict_gpu_s("conv_block", "conv_block", (1, 8, 4, 4), "fp32", "fwd") is None


def test_predict_gpu_real_model_if_present():
    from swiftkern import triton_kernels

    if not hasattr(triton_kernels, "roofline"):
        pytest.skip("swiftkern.triton_kernels.roofline not present")
    t = suite.predict_gpu_s("conv_block", "conv_block", (1, 48, 56, 56), "bf16", "fwd")
    assert t is not None and 0 < t < 1e-2


def test_triton_on_cpu_only_when_named():
    assert not suite._wanted("triton", None, "cpu")
    assert suite._wanted("triton", ["triton"], "cpu")
    assert suite._wanted("triton", None, "cuda")
    assert suite._wanted("cpu", None, "cpu") and not suite._wanted("cpu", ["reference"], "cpu")


@pytest.mark.parametrize("op", ["dwconv_bn", "mlp", "conv_block", "dwconv_bn_train", "mlp_train",
                                "conv_block_train"])
def test_conv_backward_roofline_is_its_own_model(op):
    """The backward ops are modelled as their Triton launchers run them (several kernels and torch
    ops, fp32 intermediates), not as the forward: more bytes than the minimum, more launches."""
    from swiftkern.triton_kernels import roofline

    s = dict(B=8, C=48, H=56, W=56, dtype_bytes=2)
    fwd, bwd = roofline(op, dict(s)), roofline(op + "_backward", dict(s))
    assert bwd["launches"] > fwd["launches"]
    if op != "dwconv_bn":  # (the minimum itself, below)
        assert bwd["bytes_moved"] > bwd["bytes_min"] > 0
    assert bwd["predicted_h100_us"] > fwd["predicted_h100_us"]
    # dwconv backward: one kernel reads grad and x once and writes dx (+ the dW partials, left
    # out): the minimum
    if op == "dwconv_bn":
        assert bwd["bytes_moved"] / bwd["bytes_min"] == pytest.approx(1.0, rel=1e-3)
    # fp32 inputs: no conversions, so fewer bytes per element than bf16 relative to the minimum
    s4 = dict(s, dtype_bytes=4)
    assert roofline(op + "_backward", s4)["bytes_moved"] <= 2 * bwd["bytes_moved"]
    if op.startswith(("mlp", "conv_block")):
        # the fused MLP backward never stores the [pixels, 4C] hidden tensors: its traffic stays
        # within a few activation tensors of the minimum, while past its widest config
        # (C > 256, the torch path with fp32 [pixels, hidden] intermediates) it is ~45-55x
        assert bwd["bytes_moved"] / bwd["bytes_min"] < 16
        wide = roofline(op + "_backward", dict(s, C=264))
        assert wide["bytes_moved"] / wide["bytes_min"] > 2 * bwd["bytes_moved"] / bwd["bytes_min"]
