import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import swiftkern  # noqa: E402,F401  (registers ops and backends)
from swiftkern import _registry  # noqa: E402


def live_backends(op: str, device: str = "cpu", dtype: torch.dtype | None = None) -> list[str]:
    """Non-reference backends that have a kernel for `op` on `device` (and `dtype`) here."""
    return sorted(
        b
        for (o, b), k in _registry.table().items()
        if o == op
        and b != "reference"
        and device in k.devices
        and (dtype is None or k.dtypes is None or dtype in k.dtypes)
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
