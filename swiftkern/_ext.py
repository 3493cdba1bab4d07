"""Loading of the compiled kernel libraries; never raises (STYLE.md: import never fails).

swiftkern._C holds the kernel schemas (and CUDA kernels when built); exactly one CPU kernel
library is loaded next to it: _C_cpu_avx512 when the CPU has AVX-512 (as ATen detects it), else
_C_cpu_avx2. SWIFTKERN_CPU_ISA=avx512|avx2 forces the choice; SWIFTKERN_DISABLE_EXT=1 loads nothing.
Every `swiftkern_C::<op>` with a CPU (CUDA) kernel is then registered as backend "cpu" ("cuda").
"""

from __future__ import annotations

import glob
import os
import warnings

import torch

from . import _registry

_HERE = os.path.dirname(os.path.abspath(__file__))
STATUS: dict[str, str] = {}
CPU_ISA: str | None = None
ISAS = ("avx512", "avx2")


def _find(stem: str) -> str | None:
    hits = sorted(
        glob.glob(os.path.join(_HERE, f"{stem}.*.so"))
        + glob.glob(os.path.join(_HERE, f"{stem}.so"))
    )
    return hits[0] if hits else None


AVX512_NEEDS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}


def cpuinfo_field(key: str) -> str | None:
    """The first `key` line's value in /proc/cpuinfo ("model name", "vendor_id", "flags"), or
    None where there is no such file or line (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_isa() -> str | None:
    """Best CPU kernel ISA this machine runs (cpuid via swiftkern._C; needs _C loaded)."""
    feats = set(torch.ops.swiftkern_C.cpu_features())
    if AVX512_NEEDS <= feats:
        return "avx512"
    if {"avx2", "fma"} <= feats:
        return "avx2"
    return None


def _load(stem: str) -> bool:
    path = _find(stem)
    if path is None:
        STATUS[stem] = "not built"
        return False
    try:
        torch.ops.load_library(path)
    except Exception as e:  # noqa: BLE001 - any load failure degrades to the reference
        STATUS[stem] = f"failed to load: {e}"
        return False
    STATUS[stem] = "loaded"
    return True


def _wrap(fn):
    def call(*args):
        # Kernels run below autograd (inside the custom op), so detaching is free; it keeps
        # requires_grad flags away from ATen calls made on at::parallel_for worker threads, where
        # grad mode is not the caller's (mm(out=) would refuse leaf parameters there).
        args = tuple(
            a.detach() if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args
        )
        try:
            return fn(*args)
        except NotImplementedError as e:
            raise _registry.Unsupported(str(e).splitlines()[0]) from None

    call.raw = fn  # the op itself, for callers that detach and handle errors themselves
    return call


def _has_kernel(qual: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(qual, key)
    except RuntimeError:
        return False


# Dtypes each C++ library declares it serves; tests/test_ext.py calls every op at every declared
# dtype so this table cannot claim more than the kernels do.
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _register(op_names) -> None:
    ns = torch.ops.swiftkern_C
    for op in op_names:
        for name in (op, op + "_backward"):
            qual = f"swiftkern_C::{name}"
            fn = _wrap(getattr(ns, name).default)
            if _has_kernel(qual, "CPU"):
                _registry.register_kernel(name, "cpu", fn, devices=("cpu",), dtypes=CPU_DTYPES)
            if _has_kernel(qual, "CUDA"):
                _registry.register_kernel(name, "cuda", fn, devices=("cuda",), dtypes=CUDA_DTYPES)


def load(op_names) -> None:
    global CPU_ISA
    try:
        _registry.CUDA_TABLE.update(_registry.load_cuda_table())
    except (OSError, ValueError) as e:
        warnings.warn(f"swiftkern: ignoring SWIFTKERN_CUDA_TABLE: {e}", stacklevel=3)
    if os.environ.get("SWIFTKERN_DISABLE_EXT", "0") not in ("", "0"):
        STATUS["swiftkern._C"] = "disabled by SWIFTKERN_DISABLE_EXT"
        return
    if not _load("_C"):
        warnings.warn(
            f"swiftkern: compiled extension unavailable ({STATUS['_C']}); ops use the reference "
            "PyTorch implementation (and Triton on CUDA). See `python -m swiftkern.info`.",
            stacklevel=3,
        )
        return
    forced = os.environ.get("SWIFTKERN_CPU_ISA", "").lower() or None
    if forced is not None and forced not in ISAS:
        warnings.warn(
            f"swiftkern: SWIFTKERN_CPU_ISA={forced!r} is not one of {ISAS}; ignored", stacklevel=3
        )
        forced = None
    isa = forced or machine_isa()
    if isa == "avx512" and machine_isa() != "avx512":
        warnings.warn(
            "swiftkern: SWIFTKERN_CPU_ISA=avx512 but this CPU lacks AVX-512; using avx2",
            stacklevel=3,
        )
        isa = "avx2"
    if isa is not None and _load(f"_C_cpu_{isa}"):
        CPU_ISA = isa
    _register(op_names)
