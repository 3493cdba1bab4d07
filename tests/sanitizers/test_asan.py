"""The C++ CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer: no report allowed.

tools/asan_build.sh builds the kernel library and tests/cpp/test_ops with
-fsanitize=address,undefined -fno-sanitize-recover=all (a second CMake configuration, its own build
dir), runs the C++ op test under them (leak detection on), then the Python op tests with the
"cpu" backend served by the sanitized library (tests/sanitizers/asan_plugin.py). Every report is
fatal, so success means none. Slow (a second build of the library: ~2-3 CPU-minutes).
Build dir: $SWIFTKERN_ASAN_BUILD_DIR (default build/asan of this checkout; reused, so reruns are
incremental).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cpp"))
from test_cmake_build import ROOT, check_program_summary, run_ctest_program  # noqa: E402

BUILD = os.environ.get("SWIFTKERN_ASAN_BUILD_DIR", os.path.join(ROOT, "build", "asan"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gcc sanitizers on Linux"),
]


def test_cpu_kernels_clean_under_asan_and_ubsan():
    log = run_ctest_program("asan_build.sh", BUILD, timeout=2400)
    assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log, log[-8000:]
    check_program_summary(log)
    # The Python op tests ran against the sanitized "cpu" backend and all passed.
    assert "swiftkern backend 'cpu' from the sanitized library" in log
    runs = re.findall(r"^(\d+) passed\b.* in [\d.]+s", log, re.M)
    assert len(runs) == 2 and all(int(n) > 0 for n in runs), log[-4000:]
    assert not re.search(r"\b[1-9]\d* (failed|errors?)\b", log), log[-8000:]
    # The sanitizers are really in the library (not silently dropped flags).
    needed = subprocess.run(
        ["readelf", "-d", os.path.join(BUILD, "libswiftkern_ops.so")],
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    assert "libasan.so" in needed and "libubsan.so" in needed, needed
