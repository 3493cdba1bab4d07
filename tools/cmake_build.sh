#!/usr/bin/env bash
# C++ deployment build: configure + build CMakeLists.txt against the venv's libtorch out of the
# source tree, then run ctest (tests/cpp/test_ops: every CPU op through the dispatcher).
#
#   tools/cmake_build.sh [BUILD_DIR [extra cmake -D args...]]     (default build/cmake in the source tree)
#
# Env: PYTHON (default .venv/bin/python; locates torch), CUDA_HOME (default: the toolkit that the
# nvcc on PATH runs, else /usr/local/cuda-13.0), JOBS (default: nproc), SKIP_CTEST=1 (build only),
# CTEST_VERBOSE=1 (print the test program's output even when it passes).
# A CUDA build of torch makes find_package(Torch) enable the CUDA language and look for the CUDA
# toolkit and nvrtc even for a CPU-only library; the hints below give it the toolkit behind nvcc
# and torch's own nvrtc (site-packages/nvidia/cu13/lib; the system toolkit may not ship nvrtc).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build/cmake}"
shift || true
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
JOBS="${JOBS:-$(nproc)}"

command -v cmake >/dev/null || { echo "cmake not found" >&2; exit 2; }

read -r TORCH_PREFIX TORCH_CUDA TORCH_SITE < <("$PYTHON" - <<'PY'
import os

import torch

print(torch.utils.cmake_prefix_path, torch.version.cuda or "none",
      os.path.dirname(os.path.dirname(torch.__file__)))
PY
)

args=(-S "$ROOT" -B "$BUILD" -DCMAKE_PREFIX_PATH="$TORCH_PREFIX")

# Generator: ninja from the venv (pip's ninja) or PATH, else Makefiles.
NINJA="$(dirname "$PYTHON")/ninja"
[[ -x "$NINJA" ]] || NINJA="$(command -v ninja || true)"
if [[ -f "$BUILD/CMakeCache.txt" ]]; then
  :  # keep the generator of an existing build dir
elif [[ -n "$NINJA" ]]; then
  args+=(-G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA")
fi

if [[ "$TORCH_CUDA" != "none" ]]; then
  if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null; then
    # The nvcc on PATH may be a wrapper script (`exec /usr/local/cuda-X/bin/nvcc "$@"`).
    real="$(readlink -f "$(command -v nvcc)")"
    cand="$(grep -o '/[^ "]*/bin/nvcc' "$real" 2>/dev/null | head -n 1 || true)"
    [[ -n "$cand" && -x "$cand" ]] && real="$cand"
    CUDA_HOME="$(dirname "$(dirname "$real")")"
  fi
  CUDA_HOME="${CUDA_HOME:-/usr/local/cuda-13.0}"
  if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
    echo "torch is a CUDA $TORCH_CUDA build: find_package(Torch) needs a CUDA toolkit;" \
         "set CUDA_HOME (no nvcc at $CUDA_HOME/bin/nvcc)" >&2
    exit 2
  fi
  args+=(-DCUDAToolkit_ROOT="$CUDA_HOME" -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME"
         -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCMAKE_CUDA_ARCHITECTURES=80)
  major="${TORCH_CUDA%%.*}"
  nvrtc="$(ls "$TORCH_SITE"/nvidia/cu"$major"/lib/libnvrtc.so* "$TORCH_SITE"/nvidia/cuda_nvrtc/lib/libnvrtc.so* \
           "$CUDA_HOME"/lib64/libnvrtc.so* 2>/dev/null | grep -v builtins | head -n 1 || true)"
  [[ -n "$nvrtc" ]] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi

t0=$(date +%s)
cmake "${args[@]}" "$@"
t1=$(date +%s)
cmake --build "$BUILD" --parallel "$JOBS"
t2=$(date +%s)
echo "cmake_build: configure $((t1 - t0)) s, build $((t2 - t1)) s ($BUILD)"
if [[ "${SKIP_CTEST:-0}" == "0" ]]; then
  ctest --test-dir "$BUILD" --output-on-failure ${CTEST_VERBOSE:+-V}
  t3=$(date +%s)
  echo "cmake_build: ctest $((t3 - t2)) s"
fi
