#!/usr/bin/env bash
# Everything a GPU machine is lent for, in one command (session 9 did these steps by hand):
#   bash tools/gpu_run.sh [build] [ops] [cpu] [bench]      (default: all four, in that order)
# build: builds swiftkern against the machine's own torch (pip install -e ., CUDA for the GPU's
#        architecture only); carried wheels in .whl/ (e.g. expecttest) are installed first.
# ops:   tests/cuda_build/test_cuda_ops.py -- every op forward (fp32/fp16/bf16) and backward (fp32;
#        fp16/bf16 at all but the largest shape) on both GPU backends (cuda, triton) against the
#        fp64 reference. Forward + fp32 backward took ~6 min on the H100 machine with a cold
#        Triton cache, most of it Triton JIT compiles; OPS_ARGS (extra pytest words, e.g. '-k backward_half')
#        narrows a run to fit one device call.
# cpu:   the CPU op tests on that machine's CPU (often AVX-512: the only place that path runs).
#        Not concurrently with `ops`: both oversubscribe the cores.
# bench: HF SwiftFormer-XS end to end on the GPU (eager / compile / swiftkern per backend), and
#        the per-op cuda-vs-triton table (--write-backend-table).
# Logs and results go to $OUT (the device tool's folder) or ./gpu_out; failures are written to
# fails.txt as they happen (tools/pytest_failwriter.py), so a run cut off at a time limit keeps them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"; export OUT PYTHONUNBUFFERED=1
PY=${PY:-python3}
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(build ops cpu bench)
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --upgrade --target /tmp/sk_site .whl/*.whl
  export PYTHONPATH=/tmp/sk_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/tools${PYTHONPATH:+:$PYTHONPATH}
N=$(nproc)
PT="$PY -m pytest -q -rfE --tb=short -p no:cacheprovider -p no:benchmark -p pytest_failwriter"
for s in "${steps[@]}"; do
  case $s in
    build)
      arch=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
      { $PY -c "import sys, torch, triton; print(sys.version, torch.__version__, triton.__version__)"
        nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; }
      ( time MAX_JOBS=$N SWIFTKERN_CUDA_ARCH=$arch \
          $PY -m pip install -q --no-build-isolation --no-deps -e . ) > "$OUT/build.log" 2>&1
      tail -4 "$OUT/build.log"; $PY -m swiftkern.info | head -5 ;;
    ops)
      OMP_NUM_THREADS=1 timeout "${OPS_TIMEOUT:-540}" $PT -n "$N" tests/cuda_build/test_cuda_ops.py \
        ${OPS_ARGS:-} > "$OUT/gpu_ops.log" 2>&1
      tail -5 "$OUT/gpu_ops.log" ;;
    cpu)
      OMP_NUM_THREADS=1 timeout "${CPU_TIMEOUT:-300}" $PT -n "$N" tests/ops tests/nn \
        > "$OUT/cpu.log" 2>&1
      tail -5 "$OUT/cpu.log" ;;
    bench)
      timeout "${BENCH_TIMEOUT:-240}" $PY -m swiftkern.bench.cli model --device cuda --models hf:xs \
        --batch 1,64 --dtypes fp32,bf16 --providers eager,compile,swiftkern --max-time 2 --quiet \
        --json "$OUT/model.json" > "$OUT/bench.log" 2>&1
      timeout "${BENCH_TIMEOUT:-240}" $PY -m swiftkern.bench.cli ops --device cuda \
        --backends cuda,triton --providers eager,swiftkern --batch 64 --dtypes fp32,bf16 \
        --max-time 1 --quiet --json "$OUT/ops.json" --write-backend-table "$OUT/cuda_table.json" \
        >> "$OUT/bench.log" 2>&1
      tail -40 "$OUT/bench.log" ;;
    *) echo "unknown step $s (build, ops, cpu, bench)"; exit 2 ;;
  esac
done
