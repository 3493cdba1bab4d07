"""CPU kernel library per ISA path: each path is forced with SWIFTKERN_CPU_ISA in a fresh process
(the library is chosen at import) and its kernels are compared with the reference there, with
each conv-block strategy (SWIFTKERN_CPU_CONV_STRATEGY=tile|unfused|split; the fp32 tiles both
through ATen's brgemm entry and, with SWIFTKERN_CPU_BRGEMM=0, through at::mm_out), forward and
backward.

The generic suite (test_ops.py) covers every op in the default process; this file makes sure the
path that process did NOT pick is exercised too wherever the machine can run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import swiftkern  # noqa: F401  (loads swiftkern._C for the cpuid query)
from swiftkern import _ext

_CHECK = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    import swiftkern
    from swiftkern import _ext
    from tolerances import GELU_FP32, assert_close
    assert _ext.CPU_ISA == {isa!r}, _ext.CPU_ISA
    ops = torch.ops.swiftkern
    torch.manual_seed(0)

    def check(name, args, n_tensors):
        ref = getattr(ops, name)(*args, backend="reference")
        out = getattr(ops, name)(*args, backend="cpu")
        ref = (ref,) if isinstance(ref, torch.Tensor) else ref
        out = (out,) if isinstance(out, torch.Tensor) else out
        for o, r in zip(out, ref):
            assert_close(o, r, what=name)
        g = torch.randn_like(ref[0])
        mask = [True] * n_tensors
        bwd = getattr(ops, name + "_backward")
        for o, r in zip(bwd(g, *args, "cpu", mask), bwd(g, *args, "reference", mask)):
            assert_close(o, r, what=name + "_backward")

    for dt in (torch.float32, torch.float64):
        def r(*s, k=1.0):
            return torch.randn(*s, dtype=dt) * k
        for (b, c, h, w) in ((2, 33, 5, 7), (1, 8, 1, 1), (3, 20, 1, 9), (2, 24, 12, 12)):
            hd = 4 * c
            for cl in (False, True):
                x = r(b, c, h, w)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                dw_w, dw_b = r(c, 1, 3, 3, k=0.3), r(c, k=0.2)
                w1, b1 = r(hd, c, k=c ** -0.5), r(hd, k=0.2)
                w2, b2 = r(c, hd, k=hd ** -0.5), r(c, k=0.2)
                ls = torch.empty(c, dtype=dt).uniform_(0.5, 1.5)
                bn_w, bn_b = 1 + r(c, k=0.2), r(c, k=0.2)
                check("dwconv_bn", (x, dw_w, dw_b), 3)
                check("conv_block", (x, dw_w, dw_b, w1, b1, w2, b2, ls), 8)
                check("mlp", (x, w1, b1, w2, b2, ls, x.clone()), 7)
                if b * h * w == 1:
                    continue  # train forms reject one value per channel (like nn.BatchNorm2d)
                check("dwconv_bn_train", (x, dw_w, dw_b, bn_w, bn_b, 1e-5), 5)
                check("conv_block_train", (x, dw_w, dw_b, bn_w, bn_b, 1e-5, w1, b1, w2, b2, ls), 10)
                check("mlp_train", (x, bn_w, bn_b, 1e-5, w1, b1, w2, b2, ls, None), 9)
        for (b, n, d, t) in ((2, 49, 40, 40), (1, 1, 33, 17), (3, 7, 33, None)):
            for pool in ("sum", "l2", "softmax"):
                x = r(b, n, d)
                wf = r(t, d, k=d ** -0.5) if t else None
                bf = r(t) if t else None
                args = (x, r(2 * d, d, k=d ** -0.5), r(2 * d, k=0.2), r(d), d ** -0.5,
                        r(d, d, k=d ** -0.5), r(d), wf, bf, pool)
                check("additive_attention", args, 8)
                check("additive_attention_core", (r(b, n, d), r(b, n, d), r(d), d ** -0.5, pool), 3)
    # The fp32 GELU element by element: an mlp with identity weights and zero biases computes
    # exactly GELU(x) on every channel (the GEMMs add only exact zeros).
    x = torch.linspace(-12, 12, 8 * 64 * 64).reshape(1, 64, 64, 8).permute(0, 3, 1, 2)
    eye, zero = torch.eye(8), torch.zeros(8)
    for xx in (x, x.contiguous()):
        y = torch.ops.swiftkern_C.mlp(xx, eye, zero, eye, zero, None, None).double()
        exact = torch.nn.functional.gelu(xx.double())
        err = ((y - exact).abs() / xx.double().abs().clamp_min(1)).max().item()
        assert err <= GELU_FP32, f"fp32 GELU: {{err:.3g}} > {{GELU_FP32}}"
    # one channel, so a special value cannot reach another through the GEMMs (inf * 0)
    sp = torch.tensor([float("nan"), float("inf"), -float("inf"), -1e4, -4.0, 4.0, 1e4, 0.0])
    y = torch.ops.swiftkern_C.mlp(sp.reshape(1, 1, 1, 8), torch.ones(1, 1), torch.zeros(1),
                                  torch.ones(1, 1), torch.zeros(1), None, None).reshape(8)
    want = torch.nn.functional.gelu(sp.double()).float()
    assert torch.equal(y[:3].isnan(), want[:3].isnan()) and y[1] == want[1], y
    assert y[3] == 0 and y[6] == 1e4 and y[7] == 0, y
    assert abs(y[4] - want[4]) <= GELU_FP32 * 4 and abs(y[5] - want[5]) <= GELU_FP32 * 4, y
    print("ok")
    """
)


def _machine_isas() -> list[str]:
    best = _ext.machine_isa()
    return {"avx512": ["avx512", "avx2"], "avx2": ["avx2"]}.get(best, [])


def _skip_unless_runnable(isa: str) -> None:
    """Skips unless the isa library is built and this CPU can run it."""
    if _ext.STATUS.get(f"_C_cpu_{isa}") is None and _ext.CPU_ISA is None:
        pytest.skip("CPU kernel libraries not built")
    if isa not in _machine_isas():
        pytest.skip(f"this CPU cannot run the {isa} library")


@pytest.mark.parametrize("strategy", ["tile", "tile-mm", "unfused", "split"])
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_cpu_isa_path_matches_reference(isa: str, strategy: str) -> None:
    _skip_unless_runnable(isa)
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, SWIFTKERN_CPU_ISA=isa, SWIFTKERN_CPU_CONV_STRATEGY=strategy[:4]
               if strategy.startswith("tile") else strategy, OMP_NUM_THREADS="2",
               SWIFTKERN_CPU_BRGEMM="0" if strategy == "tile-mm" else "1")
    code = _CHECK.format(isa=isa, tests=tests_dir)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout + p.stderr


def test_unknown_dtype_is_not_implemented() -> None:
    if _ext.CPU_ISA is None:
        pytest.skip("no CPU kernel library loaded")
    x = torch.randn(1, 4, 3, 3).to(torch.int32)
    w = torch.randn(4, 1, 3, 3).to(torch.int32)
    with pytest.raises(NotImplementedError):
        torch.ops.swiftkern_C.dwconv_bn(x, w, None)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_cpu_isa_path_half_storage(isa: str) -> None:
    """The bf16 / fp16 storage conversions of the conv-block kernels (test_cpu_half_tiles.py,
    bit-identical to whole-tensor conversion) on each ISA path."""
    _skip_unless_runnable(isa)
    if isa == _ext.CPU_ISA:
        pytest.skip("the default process runs these tests on its own path")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, SWIFTKERN_CPU_ISA=isa)
    env.pop("SWIFTKERN_CPU_CONV_STRATEGY", None)
    files = [os.path.join(here, "test_cpu_half_tiles.py")]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                       env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(here)))
    assert p.returncode == 0 and " passed" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
