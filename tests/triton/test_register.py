"""The "triton" backend through swiftkern's ops: registration, dispatch, layouts, autograd and
torch.compile, plus the import-time contract (import swiftkern never imports Triton)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from cases import conv_args
from tolerances import assert_close

from swiftkern import _registry, ops, triton_kernels
from swiftkern.ops import reference as R

pytestmark = pytest.mark.triton


def test_import_swiftkern_does_not_import_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys, time; t = time.perf_counter(); import swiftkern; "
            "print('triton' in sys.modules, "
            "sorted(b for (o, b) in swiftkern._registry.table() if o == 'mlp'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "False"
    assert "'triton']" in out[-1] or "'triton'," in " ".join(out[1:])


def test_registered_for_cpu_under_interpreter():
    for op in triton_kernels.LAUNCHERS:
        k = _registry.kernel_for(op, "triton")
        assert k is not None, op
        assert k.devices == ("cuda", "cpu")
        assert torch.float64 not in k.dtypes


def test_op_dispatch_channels_last_and_autograd():
    args = conv_args("conv_block", (2, 33, 5, 7, 132), layout="channels_last").args
    leaf = [a.detach().clone().requires_grad_(True) for a in args]
    y = ops.conv_block(*leaf, backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref_leaf = [a.detach().clone().requires_grad_(True) for a in args]
    yr = R.conv_block_ref(*ref_leaf)
    assert_close(y, yr, torch.float32, what="op conv_block")
    g = torch.randn_like(yr)
    for a, b in zip(torch.autograd.grad(y, leaf, g), torch.autograd.grad(yr, ref_leaf, g)):
        assert_close(a, b, torch.float32, what="op conv_block grad")


def test_fp64_is_not_served():
    args = [a.double() if isinstance(a, torch.Tensor) else a
            for a in conv_args("dwconv_bn", (1, 8, 3, 3, 32)).args]
    with pytest.raises(NotImplementedError):
        ops.dwconv_bn(*args, backend="triton")


def test_torch_compile_fullgraph():
    args = conv_args("mlp", (1, 16, 3, 3, 64)).args
    f = torch.compile(lambda *a: ops.mlp(*a, backend="triton"), fullgraph=True,
                      backend="aot_eager")
    assert_close(f(*args), R.mlp_ref(*args), torch.float32, what="compiled mlp")
