"""pytest plugin (``-p asan_plugin``): the swiftkern "cpu" backend served by a sanitized library.

Used by tools/asan_build.sh. The process starts with SWIFTKERN_DISABLE_EXT=1, so ``import
swiftkern`` loads none of the in-place extensions; this plugin then loads the ASan/UBSan build of
the kernel library (schemas + CPU kernels, SWIFTKERN_SANITIZED_LIB) and registers its CPU kernels
as backend "cpu" exactly as swiftkern/_ext.py does for the normal build. The op tests then run
every CPU kernel under the sanitizers.
"""

from __future__ import annotations

import os

import torch

LIB = os.environ["SWIFTKERN_SANITIZED_LIB"]
if os.environ.get("SWIFTKERN_DISABLE_EXT") != "1":
    raise RuntimeError("asan_plugin needs SWIFTKERN_DISABLE_EXT=1 (no in-place extension may load)")

import swiftkern  # noqa: E402,F401  (import with SWIFTKERN_DISABLE_EXT=1: no extension loads)
from swiftkern import _ext, _registry  # noqa: E402
from swiftkern.ops import OP_NAMES  # noqa: E402

torch.ops.load_library(LIB)
_ext._register(OP_NAMES)
# A CPU kernel library is loaded (the tests that call torch.ops.swiftkern_C directly check this).
_ext.CPU_ISA = "sanitized"

SERVED = sorted(
    name
    for op in OP_NAMES
    for name in (op, op + "_backward")
    if torch._C._dispatch_has_kernel_for_dispatch_key(f"swiftkern_C::{name}", "CPU")
)
_missing = [name for name in SERVED if (name, "cpu") not in _registry.table()]
if not SERVED or _missing:
    raise RuntimeError(f"sanitized library {LIB}: CPU kernels {SERVED}, not registered: {_missing}")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"swiftkern backend 'cpu' from the sanitized library {LIB}: {', '.join(SERVED)}"
    )
