"""The machine line printed with every benchmark: CPU, ISA flags, threads, library versions."""

from __future__ import annotations

import importlib
import os
import platform

import torch

from .._ext import cpuinfo_field

ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """ISA flags relevant to the kernels, as the kernel (Linux /proc/cpuinfo) reports them."""
    have = set((cpuinfo_field("flags") or "").split())
    return [fl for fl in ISA_FLAGS if fl in have]


def _version(mod: str) -> str | None:
    try:
        return getattr(importlib.import_module(mod), "__version__", "?")
    except Exception:  # noqa: BLE001 - a missing or broken package is reported, not fatal
        return None


def set_threads(threads: int) -> None:
    """Fix the intra-op thread count for torch (ORT sessions get it explicitly)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def machine_info(threads: int) -> dict:
    info: dict = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": cpu_flags(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "onnxruntime": _version("onnxruntime"),
        "transformers": _version("transformers"),
        "timm": _version("timm"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Load at start: on a shared machine, other processes' threads inflate the medians.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        from .. import _ext

        info["swiftkern_cpu_isa"] = _ext.CPU_ISA
    except Exception:  # noqa: BLE001
        info["swiftkern_cpu_isa"] = None
    return info


def machine_line(info: dict) -> str:
    isa = ",".join(info.get("isa") or []) or "?"
    gpu = info.get("gpu") or "no GPU"
    parts = [
        f"{info['cpu']} ({info['cores']} cores; ISA {isa})",
        f"threads {info['threads']}",
        gpu,
        f"torch {info['torch']}",
        f"triton {info.get('triton') or 'n/a'}",
        f"onnxruntime {info.get('onnxruntime') or 'n/a'}",
        f"swiftkern cpu kernels: {info.get('swiftkern_cpu_isa') or 'none'}",
    ]
    if info.get("loadavg_1m") is not None:
        parts.append(f"load {info['loadavg_1m']:.1f}")
    return " | ".join(parts)
