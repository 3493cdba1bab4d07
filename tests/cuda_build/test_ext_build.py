"""The whole extension builds with CUDA, links and imports without a GPU (tools/build_cuda_ext.sh).

Out of tree (never in place: other builds share the source tree). ~3-5 min on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tools", "build_cuda_ext.sh")

pytestmark = [pytest.mark.slow, pytest.mark.cuda_build]


def _have_nvcc() -> bool:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0")
    return os.path.exists(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc") is not None


@pytest.mark.skipif(not _have_nvcc(), reason="nvcc not found")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU-only build")
def test_cuda_extension_builds_links_and_imports(tmp_path):
    # `make build` (the README's install) already builds swiftkern._C with CUDA in place when nvcc
    # and a CUDA torch exist: then verify that build instead of compiling everything a second
    # time (~20 min on 2 cores). SWIFTKERN_TEST_CUDA_BUILD=1 forces the separate build.
    from swiftkern import _ext
    from swiftkern.ops import OP_NAMES

    if _ext.STATUS.get("_C") == "loaded" and os.environ.get("SWIFTKERN_TEST_CUDA_BUILD") != "1":
        if "cuda" in torch.ops.swiftkern_C.build_info():
            for op in OP_NAMES:
                for name in (op, op + "_backward"):
                    assert torch._C._dispatch_has_kernel_for_dispatch_key(
                        f"swiftkern_C::{name}", "CUDA"
                    ), name
            return
    out = os.environ.get("SWIFTKERN_CUDA_BUILD_DIR", str(tmp_path / "skcuda"))
    proc = subprocess.run(["bash", SCRIPT, out], capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # The import check of the script ran in its own process and printed what it verified.
    assert "import ok: build_info=['cuda']" in log, log[-3000:]
    for op in ("additive_attention_backward", "dwconv_bn_backward", "conv_block_train", "mlp"):
        assert op in log.split("import ok:")[1]
