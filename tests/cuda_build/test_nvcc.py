"""nvcc compile of every csrc/cuda/*.cu for sm_80 and sm_90 with spills fatal (no GPU needed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "check_cuda", os.path.join(ROOT, "tools", "check_cuda.py")
)
check_cuda = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_cuda)

NVCC = check_cuda.find_nvcc(None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")
pytestmark = pytest.mark.cuda_build


@needs_nvcc
def test_check_cuda_compiles_all_kernels_without_spills(capsys):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "check_cuda.py")],
        capture_output=True,
        text=True,
    )
    with capsys.disabled():  # the table belongs in the CI log (registers, spills per kernel)
        print("\n" + proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout
    # Every kernel family of csrc/cuda, for both targets.
    for kernel in (
        "attn_fwd_fused_kernel",
        "attn_fwd_partial_kernel",
        "attn_fwd_apply_kernel",
        "attn_bwd_reduce_kernel",
        "attn_bwd_apply_kernel",
        "dwconv3x3_kernel",
        "bias_gelu_kernel",
        "bias_scale_residual_kernel",
        "channel_sums_nchw_kernel",
        "channel_sums_nhwc_kernel",
        "channel_affine_kernel",
        "gelu_backward_kernel",
        "dw_weight_grad_nchw_kernel",
        "dw_weight_grad_nhwc_kernel",
    ):
        for arch in ("sm_80", "sm_90"):
            assert any(line.startswith(arch) and kernel in line for line in table.splitlines()), (
                f"{kernel} for {arch} missing from the table"
            )
    assert "no spills" in table


SPILLER = r"""
// __launch_bounds__(1024, 2) caps registers at 32; 48 live values per thread must spill.
__global__ void __launch_bounds__(1024, 2) spiller(const float* __restrict__ x, float* y, int n) {
  float v[48];
#pragma unroll
  for (int i = 0; i < 48; ++i) v[i] = x[threadIdx.x * 48 + i] * x[i + n];
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 48; ++i)
#pragma unroll
    for (int j = 0; j < 48; ++j) acc += v[i] * v[(i * 7 + j) % 48] * x[j];
  y[threadIdx.x] = acc;
}
"""


@needs_nvcc
def test_spills_are_detected_and_fatal(tmp_path):
    """The flags and the parser must catch a spilling kernel (a check that cannot fail is none)."""
    src = tmp_path / "spill.cu"
    src.write_text(SPILLER)
    cmd = [
        NVCC,
        *check_cuda.FLAGS,
        "-gencode=arch=compute_80,code=sm_80",
        "-c",
        str(src),
        "-o",
        str(tmp_path / "spill.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    kernels = check_cuda.parse_ptxas(log, "sm_80")
    assert any(v.get("spill_error") or v.get("spill_stores", 0) > 0 for v in kernels.values()), log


def test_parse_ptxas_sample():
    sample = """ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 504 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
    k = check_cuda.parse_ptxas(sample, "sm_90")
    assert k == {
        "_Z1kPf": {
            "arch": "sm_90",
            "stack": 8,
            "spill_stores": 4,
            "spill_loads": 12,
            "registers": 40,
            "smem": 1024,
        }
    }
