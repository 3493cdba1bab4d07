"""The C++ deployment build (CMakeLists.txt against libtorch) and its ctest program, from scratch.

tools/cmake_build.sh configures, builds and runs ctest out of the source tree; tests/cpp/test_ops
calls every swiftkern_C op that has a CPU kernel through the dispatcher against hand-computed values
and a libtorch composition. Slow (builds the library: ~2 CPU-minutes).
Build dir: $SWIFTKERN_CMAKE_BUILD_DIR (default build/cmake of this checkout; reused, so reruns are
incremental).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SWIFTKERN_CMAKE_BUILD_DIR", os.path.join(ROOT, "build", "cmake"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed"),
]


def run_ctest_program(script: str, build: str, timeout: int) -> str:
    """Run a build script with the test program's output in the log; returns stdout+stderr."""
    env = dict(os.environ, PYTHON=sys.executable, CTEST_VERBOSE="1")
    proc = subprocess.run(
        [os.path.join(ROOT, "tools", script), build],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    log = proc.stdout
    assert proc.returncode == 0, f"{script} failed (exit {proc.returncode}):\n{log[-8000:]}"
    return log


def check_program_summary(log: str) -> None:
    """The test program's own summary: no failure, and every op with a CPU kernel was exercised."""
    m = re.search(r"(\d+) passed, (\d+) failed \((\d+) swiftkern_C ops with a CPU kernel\)", log)
    assert m, f"no summary line from the test program:\n{log[-4000:]}"
    _passed, failed, served = map(int, m.groups())
    assert failed == 0 and "FAIL " not in log, log[-8000:]
    assert served > 0, "the library registered no CPU kernel"
    assert "100% tests passed" in log
    lines = [re.sub(r"^\d+: ", "", ln) for ln in log.splitlines()]  # ctest -V prefixes "1: "
    kernels = {ln.split()[-1] for ln in lines if ln.startswith("CPU kernel: ")}
    assert len(kernels) == served, (kernels, served)
    tested = {ln.split()[1] for ln in lines if ln.startswith("PASS ")}
    assert kernels <= tested, f"ops with a CPU kernel but no passing check: {kernels - tested}"


def test_cmake_build_and_ctest():
    log = run_ctest_program("cmake_build.sh", BUILD, timeout=1800)
    check_program_summary(log)
    # The library must load without the CUDA libraries: a CPU deployment links torch_cpu only.
    needed = subprocess.run(
        ["readelf", "-d", os.path.join(BUILD, "libswiftkern_ops.so")],
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    assert "libtorch_cpu.so" in needed and "libtorch_cuda" not in needed, needed
