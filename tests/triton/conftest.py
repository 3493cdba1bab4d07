"""Triton kernels under the interpreter on CPU tensors (GPU_VERIFY.md).

TRITON_INTERPRET=1 must be set before any @triton.jit kernel module is imported (the decorator
picks the interpreter then); swiftkern imports its kernel modules lazily, on first launch, so
setting it here is early enough. The whole folder is skipped when Triton is missing.
The "triton" backend is registered for CPU tensors only while these tests run, so other test
folders in the same session keep their own backend set.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

# The argument factories of tests/ops (randomized parameters per SPEC.md section 3) are shared.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "ops"))

if importlib.util.find_spec("triton") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ["TRITON_INTERPRET"] = "1"

if os.environ.get("TRITON_INTERPRET") == "1":
    # Every module in this folder needs the interpreter; fail loudly if a kernel module was
    # already imported in compiled mode (it would then need a GPU).
    for _m in ("swiftkern.triton_kernels._conv", "swiftkern.triton_kernels._attention",
               "swiftkern.triton_kernels._attention_backward",
               "swiftkern.triton_kernels._attention_fused",
               "swiftkern.triton_kernels._attention_backward_fused"):
        if _m in sys.modules and not getattr(sys.modules[_m], "INTERPRET", False):
            raise RuntimeError(f"{_m} was imported before TRITON_INTERPRET=1 was set")


@pytest.fixture(autouse=True, scope="module")
def _triton_backend_on_cpu():
    from swiftkern import _registry, triton_kernels

    saved = {k: v for k, v in _registry._TABLE.items() if k[1] == "triton"}
    triton_kernels.register()
    yield
    for k in [k for k in _registry._TABLE if k[1] == "triton"]:
        del _registry._TABLE[k]
    _registry._TABLE.update(saved)


def pytest_configure(config):
    """Record every kernel launch (see _launches.py) for test_spec_coverage.py."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import inspect

    import triton.language as tl
    from _launches import LAUNCHES, PTR_DTYPES, launch_key
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            params = inspect.signature(self.fn).parameters
            ce = {}
            for i, (name, p) in enumerate(params.items()):
                if p.annotation is not tl.constexpr and p.annotation != "tl.constexpr":
                    continue
                if name in kwargs:
                    ce[name] = kwargs[name]
                elif i < len(args):
                    ce[name] = args[i]
                else:
                    ce[name] = p.default
            LAUNCHES.add(launch_key(self.fn.__name__, ce, kwargs.get("num_warps", 4),
                                    kwargs.get("num_stages", 3)))
            # the element type of every tensor given to a pointer argument: the AOT specs type
            # some pointer names fp32 for every kernel (_specs._PTR_FP32)
            for i, name in enumerate(params):
                t = kwargs.get(name, args[i] if i < len(args) else None)
                if name.endswith("_ptr") and hasattr(t, "dtype"):
                    PTR_DTYPES.add((self.fn.__name__, name, str(t.dtype)))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run


def pytest_collection_modifyitems(config, items):
    # the coverage check needs every other test's launches: run it last
    last = [it for it in items if it.fspath.basename == "test_spec_coverage.py"]
    items[:] = [it for it in items if it not in last] + last
    from _launches import FULL_RUN

    here = os.path.dirname(__file__)
    files = {f for f in os.listdir(here) if f.startswith("test_") and f.endswith(".py")}
    opt = config.option
    FULL_RUN[0] = ({it.fspath.basename for it in items} >= files and not opt.keyword
                   and not opt.markexpr and not opt.deselect and not opt.lf)


def pytest_deselected(items):
    from _launches import FULL_RUN

    FULL_RUN[0] = False
