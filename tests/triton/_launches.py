"""The kernel launches of this test session (recorded by conftest.pytest_configure): kernel name,
constexprs, warps and stages of each, for test_spec_coverage.py to check against the variants
the AOT report compiles (swiftkern.triton_kernels._specs). A launch variant missing there was
never checked for compile errors, spills or shared memory."""

from __future__ import annotations

LAUNCHES: set = set()
# (kernel, pointer argument, torch dtype of the tensor launched there)
PTR_DTYPES: set = set()
_IGNORED = ("DOT_DT", "INPUT_PREC")  # the interpreter emulates bf16 dots in fp32


def launch_key(name: str, constexprs: dict, num_warps: int, num_stages: int) -> tuple:
    return (name, tuple(sorted((k, v) for k, v in constexprs.items() if k not in _IGNORED)),
            num_warps, num_stages)


FULL_RUN = [False]  # set by conftest when every test of this folder was collected, none deselected


def split_key(key: tuple) -> tuple[tuple, tuple]:
    """((kernel, feature flags), (kernel, tiles)) of a launch key: what the interpreter runs
    differently (it ignores warps and stages)."""
    name, ce, _, _ = key
    flags = tuple(kv for kv in ce if kv[0].startswith(("HAS_", "NEED_")))
    return (name, flags), (name, tuple(kv for kv in ce if kv not in flags))
