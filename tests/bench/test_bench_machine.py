"""The machine line: CPU, ISA flags, threads and library versions are all named."""

from __future__ import annotations

import torch

from swiftkern.bench.machine import ISA_FLAGS, machine_info, machine_line


def test_machine_line_names_everything():
    info = machine_info(3)
    assert info["threads"] == 3 and info["torch"] == torch.__version__
    assert set(info["isa"]) <= set(ISA_FLAGS)
    line = machine_line(info)
    for part in ("threads 3", f"torch {torch.__version__}", "triton ", "onnxruntime ",
                 info["cpu"], "ISA "):
        assert part in line
