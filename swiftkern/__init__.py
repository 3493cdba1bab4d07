"""swiftkern: fused kernels for efficient vision transformers.

import swiftkern
model = swiftkern.optimize(model)
"""

from __future__ import annotations

from . import _ext, ops
from .ops import OP_NAMES

_ext.load(OP_NAMES)

from . import triton_kernels as _triton_kernels  # noqa: E402  (registers the "triton" backend)
from .optimize import OptimizeReport, optimize  # noqa: E402

__version__ = "0.1.0"
__all__ = ["OptimizeReport", "ops", "optimize", "__version__"]

_triton_kernels.register()
