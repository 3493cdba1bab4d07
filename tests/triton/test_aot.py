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
