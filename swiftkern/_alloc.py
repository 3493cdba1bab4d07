"""Heap tuning for CPU inference: keep freed memory for reuse instead of handing it back.

With glibc's defaults, a model's activations of a few MB each are, depending on the order of
frees, returned to the OS (heap trimming, mmap'd chunks) and faulted in again, zeroed page by page,
on the next forward. On the 2-core CI VM an optimized HF SwiftFormer-XS took ~1,100 minor page
faults per forward at batch 1 and 6,000-9,000 at batch 8, at ~3 us each. ONNX Runtime allocates
from its own arena and took none. Fixing both thresholds (which also stops glibc's dynamic
adjustment of them) removed them all. ``python benchmarks/malloc_ab.py --model hf:xs --batch 8``
measures the speed-up (process pairs, medians): 1.09x [IQR 1.02-1.23] at batch 8 (4 of 5 pairs
faster), 1.03x [0.98-1.24] at batch 1 (4 of 6).

It is process-wide and changes only where glibc gets memory from, never a result. The cost is
memory: up to TRIM_THRESHOLD of free heap per malloc arena stays with the process.
SWIFTKERN_NO_MALLOC_TUNING=1 leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations up to this size come from the heap instead of a fresh mmap (glibc's own dynamic
# ceiling on 64-bit; the largest SwiftFormer L3 activation at batch 8 is 26 MB).
MMAP_THRESHOLD = 32 << 20
# Free memory a heap keeps at its top before glibc returns it to the OS.
TRIM_THRESHOLD = 128 << 20

_lock = threading.Lock()
_state: dict[str, bool] = {}


def _glibc():
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such symbol)
        return libc
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Set glibc's M_MMAP_THRESHOLD / M_TRIM_THRESHOLD (see the module docstring), once per
    process. Returns whether they are set: False without glibc or with
    SWIFTKERN_NO_MALLOC_TUNING=1."""
    if os.environ.get("SWIFTKERN_NO_MALLOC_TUNING", "") not in ("", "0"):
        return False
    with _lock:
        if "applied" not in _state:
            libc = _glibc()
            ok = libc is not None
            if ok:
                ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
            _state["applied"] = ok
        return _state["applied"]
