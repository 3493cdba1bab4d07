"""Loading: import never fails, one warning without the extension, ISA selection, info report."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import swiftkern
from swiftkern import _ext, info
from swiftkern.ops import OP_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        env=e,
        cwd=ROOT,
        timeout=300,
    )


def test_import_without_extension_warns_once_and_ops_still_work():
    code = (
        "import torch, swiftkern\n"
        "from swiftkern import ops\n"
        "x = torch.randn(1, 4, 3, 3)\n"
        "y = ops.dwconv_bn(x, torch.randn(4, 1, 3, 3), torch.randn(4))\n"
        "print('shape', tuple(y.shape), swiftkern._registry.resolve('dwconv_bn', 'auto', x.device,"
        " x.dtype))\n"
    )
    r = _py(code, SWIFTKERN_DISABLE_EXT="1")
    assert r.returncode == 0, r.stderr
    assert "shape (1, 4, 3, 3) reference" in r.stdout


def test_missing_extension_gives_exactly_one_warning(tmp_path):
    # A copy of the pure-Python package without any .so: the situation of SWIFTKERN_NO_EXT=1.
    import shutil

    dst = tmp_path / "swiftkern"
    shutil.copytree(
        os.path.join(ROOT, "swiftkern"), dst, ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    code = (
        f"import warnings, sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import swiftkern\n"
        "msgs = [str(x.message) for x in w if 'swiftkern' in str(x.message)]\n"
        "print(len(msgs)); print(msgs)\n"
    )
    r = _py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "1", r.stdout


def test_isa_selection_and_forcing():
    if _ext.STATUS.get("_C") != "loaded":
        pytest.skip("built without C++ (SWIFTKERN_NO_EXT=1): no ISA to select")
    feats = set(torch.ops.swiftkern_C.cpu_features())
    isa = _ext.machine_isa()
    assert isa == (
        "avx512" if _ext.AVX512_NEEDS <= feats else "avx2" if {"avx2", "fma"} <= feats else None
    )
    r = _py("import swiftkern; print(swiftkern._ext.CPU_ISA)", SWIFTKERN_CPU_ISA="avx512")
    assert r.returncode == 0, r.stderr
    if isa != "avx512":
        assert "lacks AVX-512" in r.stderr
    r = _py("import swiftkern; print(swiftkern._ext.CPU_ISA)", SWIFTKERN_CPU_ISA="bogus")
    assert "not one of" in r.stderr


def test_info_lists_every_op_with_a_backend():
    text = info.report()
    for op in OP_NAMES:
        assert op in text and op + "_backward" in text
    for op, _direction, cells in info.serving_table("cpu"):
        assert cells["float32"] != "-", op
    r = _py("import runpy; runpy.run_module('swiftkern.info', run_name='__main__')")
    assert r.returncode == 0 and "backend serving each op" in r.stdout


def test_version():
    assert swiftkern.__version__


def test_declared_cpu_dtypes_are_really_served():
    """Every (op, "cpu", dtype) the registry advertises runs without falling back."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ops.cases import attn_args, conv_args

    from swiftkern import _registry

    checked = 0
    for (name, backend), k in _registry.table().items():
        if backend != "cpu":
            continue
        base = name.removesuffix("_backward")
        for dt in k.dtypes or ():
            if base.startswith("additive"):
                args = attn_args(base, (2, 5, 8), "softmax", dt).args
            else:
                args = conv_args(base, (2, 5, 3, 4, 12), dt).args
            if name.endswith("_backward"):
                y = _registry.kernel_for(base, "reference").fn(*args)
                y = y if isinstance(y, torch.Tensor) else y[0]
                n_t = sum(isinstance(a, torch.Tensor) or a is None for a in args)
                args = [torch.ones_like(y), *args, [True] * n_t]
            try:
                k.fn(*args)
            except _registry.Unsupported as e:
                raise AssertionError(f"{name} advertises {dt} on cpu but: {e}") from None
            checked += 1
    if _ext.CPU_ISA is not None:
        assert checked > 0
