"""`python -m swiftkern.info`: what is built and loaded here, and which backend serves each op."""

from __future__ import annotations

import importlib.util
import platform

import torch

from . import _ext, _registry
from .ops import OP_NAMES

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _ver(mod: str) -> str:
    if importlib.util.find_spec(mod) is None:
        return "not installed"
    try:
        return getattr(__import__(mod), "__version__", "?")
    except Exception as e:  # noqa: BLE001
        return f"import failed: {e}"


def serving_table(device: str = "cpu") -> list[tuple[str, str, dict[str, str]]]:
    """[(op, direction, {dtype: backend})] as backend="auto" resolves on `device` now."""
    dev = torch.device(device)
    rows = []
    for op in OP_NAMES:
        for direction, name in (("forward", op), ("backward", op + "_backward")):
            rows.append(
                (
                    op,
                    direction,
                    {
                        str(dt).replace("torch.", ""): _registry.resolve(name, "auto", dev, dt)
                        or "-"
                        for dt in DTYPES
                    },
                )
            )
    return rows


def report() -> str:
    lines = [
        f"swiftkern {__import__('swiftkern').__version__}  torch {torch.__version__}  "
        f"triton {_ver('triton')}  python {platform.python_version()}",
        f"CPU: {platform.processor() or platform.machine()}  kernel ISA in use: {_ext.CPU_ISA}",
        "extensions: " + ", ".join(f"{k}: {v}" for k, v in _ext.STATUS.items()),
        f"CUDA available: {torch.cuda.is_available()}  (CUDA preference: "
        f"{' > '.join(_registry.CUDA_PREFERENCE)}"
        + "".join(f"; {str(dt).removeprefix('torch.')}: {' > '.join(o)}"
                  for dt, o in _registry.CUDA_DTYPE_ORDER.items())
        + ")",
        "",
        "registered kernels: " + ", ".join(sorted({b for (_, b) in _registry.table()})),
    ]
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        lines.append("")
        lines.append(f"backend serving each op with backend='auto' on {device}:")
        rows = serving_table(device)
        dts = list(rows[0][2])
        lines.append(f"  {'op':<26}{'direction':<10}" + "".join(f"{d:<11}" for d in dts))
        for op, direction, cells in rows:
            lines.append(f"  {op:<26}{direction:<10}" + "".join(f"{cells[d]:<11}" for d in dts))
    by_op: dict[str, list[str]] = {}
    for op, backend in _registry.table():
        by_op.setdefault(op, []).append(backend)
    lines.append("")
    lines.append("all backends registered per op (any device):")
    for op in OP_NAMES:
        for name in (op, op + "_backward"):
            lines.append(f"  {name:<36}{', '.join(sorted(by_op.get(name, [])))}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
