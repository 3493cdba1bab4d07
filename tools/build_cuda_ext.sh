#!/usr/bin/env bash
# Out-of-tree build of the full extension WITH CUDA (no GPU needed), then an import check in a
# fresh process: the CUDA kernels must register for the CUDA dispatch key.
#
#   tools/build_cuda_ext.sh [OUT_DIR]        (default /tmp/skcuda; needs ~3 GB RAM, ~3 min)
#
# Never builds in place (other builds may share the tree). Env: PYTHON (default .venv/bin/python),
# CUDA_HOME (default: the toolkit the nvcc on PATH runs, else /usr/local/cuda-13.0), MAX_JOBS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-/tmp/skcuda}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if [[ -z "${CUDA_HOME:-}" ]]; then
  if [[ -x /usr/local/cuda-13.0/bin/nvcc ]]; then CUDA_HOME=/usr/local/cuda-13.0; fi
fi
export CUDA_HOME
export MAX_JOBS="${MAX_JOBS:-2}"
unset SWIFTKERN_NO_CUDA SWIFTKERN_NO_EXT
mkdir -p "$OUT"
cd "$ROOT"
"$PYTHON" setup.py -q build_ext --build-temp "$OUT/tmp" --build-lib "$OUT/lib"
SO="$(ls "$OUT"/lib/swiftkern/_C.*.so | head -n 1)"
echo "built $SO"
"$PYTHON" - "$SO" <<'PY'
import sys

import torch

torch.ops.load_library(sys.argv[1])
info = list(torch.ops.swiftkern_C.build_info())
assert "cuda" in info, f"extension built without CUDA: build_info() = {info}"
served = ["additive_attention", "additive_attention_backward", "additive_attention_core",
          "additive_attention_core_backward", "dwconv_bn", "dwconv_bn_backward", "conv_block",
          "conv_block_backward", "mlp", "mlp_backward", "dwconv_bn_train", "conv_block_train",
          "mlp_train", "dwconv_bn_train_backward", "conv_block_train_backward",
          "mlp_train_backward"]
missing = [op for op in served
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"swiftkern_C::{op}", "CUDA")]
assert not missing, f"no CUDA kernel registered for {missing}"
print(f"import ok: build_info={info}; CUDA kernels registered: {', '.join(served)}")
PY
