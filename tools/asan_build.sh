#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the C++ CPU kernels, and the op tests under
# it. Any sanitizer report is fatal (-fno-sanitize-recover=all, halt_on_error), so a clean exit
# means no report.
#
#   tools/asan_build.sh [BUILD_DIR]        (default build/asan in the source tree)
#
# 1. CMake build with SWIFTKERN_SANITIZE=ON (separate build dir; -O1 -g1 keeps it quick to compile
#    and the reports symbolized) and ctest: tests/cpp/test_ops, a plain C++ process, runs every
#    CPU op (forward + backward, known values + random cases) with leak detection on.
# 2. Python op tests (a selection of tests/ops/test_ops.py, see PYTEST_K, backend "cpu", then the
#    direct-call files test_cpu_half_tiles / test_cpu_arg_checks) in a fresh
#    process that loads the sanitized library instead of the in-place extension
#    (tests/sanitizers/asan_plugin.py). libasan is LD_PRELOADed (it must come first in a process
#    that did not start instrumented) and leak detection is off there (CPython leaks by design).
# Env: PYTHON (default .venv/bin/python), SKIP_PYTEST=1 (only step 1), PYTEST_ARGS (extra args,
#    e.g. "-x"), PYTEST_K (pytest -k selection), plus those of tools/cmake_build.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build/asan}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
export PYTHON

t0=$(date +%s)
"$ROOT/tools/cmake_build.sh" "$BUILD" -DSWIFTKERN_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1"
t1=$(date +%s)
echo "asan_build: C++ build + ctest under ASan/UBSan: $((t1 - t0)) s"
[[ "${SKIP_PYTEST:-0}" != "0" ]] && exit 0

LIB="$BUILD/libswiftkern_ops.so"
LIBASAN="$(${CXX:-c++} -print-file-name=libasan.so)"
# libstdc++ too: python is C, and ASan resolves its __cxa_throw interceptor at start-up; without
# libstdc++ already loaded the first C++ exception (a kernel's NotImplementedError) aborts with
# "CHECK failed: real___cxa_throw != 0".
LIBSTDCXX="$(${CXX:-c++} -print-file-name=libstdc++.so.6)"
[[ -f "$LIBASAN" && -f "$LIBSTDCXX" ]] || { echo "libasan / libstdc++ not found" >&2; exit 2; }
# Default selection: forward + backward vs the reference on the odd shapes (C = 33, D = 33, B = 3;
# every op, every pool, NCHW / channels_last / strided) and the sum-pool zero-gradient check:
# ~30 s under the sanitizers. PYTEST_K="not compile" runs the whole file (~15 CPU-minutes).
PYTEST_K="${PYTEST_K:-(fp32_matches_reference and (odd_c33 or odd_d33 or b3)) or sum_pool}"
cd "$ROOT"
# halt_on_error / abort_on_error: the first report kills the process (pytest then fails).
# verify_asan_link_order=0: python itself is not instrumented; LD_PRELOAD puts the runtime first.
sanitized_pytest() {
  env LD_PRELOAD="$LIBASAN $LIBSTDCXX" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:verify_asan_link_order=0" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    SWIFTKERN_SANITIZED_LIB="$LIB" SWIFTKERN_DISABLE_EXT=1 OMP_NUM_THREADS=2 \
    PYTHONPATH="$ROOT/tests/sanitizers${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -p asan_plugin "$@"
}
sanitized_pytest tests/ops/test_ops.py -k "$PYTEST_K" ${PYTEST_ARGS:-}
# The direct swiftkern_C calls of the bf16 / fp16 tile conversions (dwconv halo rows, per-tile
# residual) and of the argument checks (bad shapes must raise, never read out of bounds): ~10 s.
sanitized_pytest tests/ops/test_cpu_half_tiles.py tests/ops/test_cpu_arg_checks.py ${PYTEST_ARGS:-}
t2=$(date +%s)
echo "asan_build: Python op tests under ASan/UBSan: $((t2 - t1)) s"
