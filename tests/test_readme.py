"""The README's runnable examples run (docs that match the code)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_functional_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    runnable = [b for b in blocks if "from swiftkern import ops" in b]
    assert runnable, "the README lost its functional-ops example"
    for block in runnable:
        scope: dict = {}
        exec(compile(block, str(README), "exec"), scope)  # noqa: S102
        assert scope["y"].shape == (8, 196, 64)
        assert scope["out"].shape == (2, 64, 14, 14)
        assert scope["out"].is_contiguous(memory_format=torch.channels_last)
