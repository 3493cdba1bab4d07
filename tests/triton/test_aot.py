"""Ahead-of-time compile of every shipped kernel config for sm_80 and sm_90 (no GPU needed):
fails on a compile error, a register spill, or shared memory over the target's limit.
Runs tools/triton_report.py in a subprocess without TRITON_INTERPRET (the interpreter replaces
@triton.jit functions, so nothing could be compiled in this process). Compiles are cached by
Triton (~/.triton/cache), so only changed kernels cost time after the first run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.cuda_build]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_aot_compile_every_config(capsys):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "triton_report.py"),
                        "--jobs", "2"], env=env, capture_output=True, text=True, timeout=3600)
    with capsys.disabled():  # the table belongs in the CI log (registers, shared memory, spills)
        print("\n" + p.stdout)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    from swiftkern.triton_kernels._specs import all_specs

    n = len(all_specs()) * 2
    assert f"{n} compiles, 0 with problems" in p.stdout


def test_roofline_report_rows():
    # the paper table (`triton_report.py --roofline`): one row per op, stage and dtype it lists,
    # every number parseable and every moved / minimum ratio at least 1 (the minimum is a floor)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "triton_report.py"),
                        "--roofline"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [[c.strip() for c in line.split("|")] for line in p.stdout.splitlines()
            if line.count("|") == 9 and not line.startswith("op ")]
    keys = {(r[0], r[1], r[2]) for r in rows}
    assert len(keys) == len(rows)
    for op in ("mlp_backward", "conv_block_train_backward", "additive_attention_backward"):
        assert (op, "stage4", "fp32") in keys and (op, "stage1", "bf16") in keys
    for r in rows:
        b_min, moved, ratio = float(r[3]), float(r[4]), float(r[5])
        # MB printed with 2 decimals
        assert ratio >= 0.99 and abs(moved / b_min - ratio) <= 0.005 * ratio + 0.01, r
        assert float(r[8]) > 0 and float(r[9]) > 0, r
