"""This machine's roofline: GEMM GFLOP/s (fp32, bf16) and memory bandwidth, measured once, cached.

The cache lives in ``$SWIFTKERN_CACHE/roofline.json`` (default ``~/.cache/swiftkern``), keyed by
device, CPU/GPU model, thread count and torch version. A workload's roofline time is
``max(flops / peak_gflops(dtype), bytes / bandwidth)`` (a half dtype's peak is at least fp32's:
see :meth:`Roofline.peak_gflops`); its fraction of roofline is that time over
the measured median (1.0 = at the machine's limit). FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (GEMMs and convolutions, which dominate SwiftFormer);
bytes from a compulsory-traffic model (:func:`min_bytes`): every input, parameter and output moved
once, nothing else -- a lower bound, so the fraction is an upper bound of how close a run gets.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .machine import cpu_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Roofline:
    gflops: dict[str, float]  # dtype name -> measured GEMM GFLOP/s
    bandwidth_gbs: float  # measured copy bandwidth, GB/s (read + write counted)
    device: str
    threads: int
    # Load average when measured: a peak taken on a busy machine is too low (re-measure with
    # `swiftkern bench --refresh-roofline` when idle).
    loadavg_1m: float | None = None

    def peak_gflops(self, dtype: str) -> float:
        """The GEMM rate a `dtype` workload can reach here: its measured torch.mm rate, or the fp32
        rate where that is higher. Upcasting half operands to fp32 is exact, so a half GEMM never
        has to run slower than an fp32 one; on a CPU without bf16 arithmetic ATen's own bf16 mm
        takes a scalar path (~1 GFLOP/s), a library limit rather than the machine's."""
        return max(self.gflops.get(dtype) or 0.0, self.gflops["fp32"])

    def time_s(self, flops: float, nbytes: float, dtype: str) -> float:
        peak = self.peak_gflops(dtype)
        return max(flops / (peak * 1e9), nbytes / (self.bandwidth_gbs * 1e9))

    def fraction(self, flops: float, nbytes: float, dtype: str, measured_s: float) -> float:
        return self.time_s(flops, nbytes, dtype) / measured_s if measured_s > 0 else float("nan")


def cache_path() -> str:
    root = os.environ.get("SWIFTKERN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "swiftkern"
    )
    return os.path.join(root, "roofline.json")


def _key(device: str, threads: int) -> str:
    model = torch.cuda.get_device_name(0) if device == "cuda" else cpu_model()
    return f"{device}|{model}|threads={threads}|torch={torch.__version__}"


def _best_time(fn: Callable[[], object], device: str, reps: int, budget_s: float) -> float:
    fn()
    best = float("inf")
    t_end = time.perf_counter() + budget_s
    for i in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() > t_end:
            break
    return best


def measure(device: str = "cpu", threads: int | None = None, quick: bool = False) -> Roofline:
    """Measure GEMM GFLOP/s per dtype and copy bandwidth (best of a few runs, i.e. the peak)."""
    threads = threads or torch.get_num_threads()
    n_max = 512 if quick else (8192 if device == "cuda" else 1024)
    gflops = {}
    dtypes = ["fp32", "bf16"] + (["fp16"] if device == "cuda" else [])
    for name in dtypes:
        # Grow the GEMM until one call lasts >= 20 ms (or n_max): bf16 without native support
        # runs at well under 1 GFLOP/s on some CPUs, where a fixed 1024^3 would take seconds.
        n = 128
        while True:
            a = torch.randn(n, n, device=device).to(DTYPES[name])
            b = torch.randn(n, n, device=device).to(DTYPES[name])
            t = _best_time(lambda a=a, b=b: torch.mm(a, b), device, 3, 0.0)
            if t >= 0.02 or n >= n_max:
                break
            n *= 2
        t = min(t, _best_time(lambda a=a, b=b: torch.mm(a, b), device, 8, 0.2 if quick else 1.0))
        gflops[name] = 2 * n**3 / t / 1e9
    numel = (4 if quick else 32) * 2**20  # 16 / 128 MiB of fp32: beyond any cache level
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src), device, 8, 1.0 if not quick else 0.2)
    bw = 2 * numel * 4 / t / 1e9
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return Roofline(gflops, bw, device, threads, load)


def load_or_measure(device: str = "cpu", threads: int | None = None, refresh: bool = False,
                    path: str | None = None) -> Roofline:
    """The cached roofline of this machine/thread count, measuring (seconds) on first use."""
    threads = threads or torch.get_num_threads()
    path = path or cache_path()
    key = _key(device, threads)
    data: dict = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
    if not refresh and key in data:
        d = data[key]
        return Roofline(d["gflops"], d["bandwidth_gbs"], d["device"], d["threads"],
                        d.get("loadavg_1m"))
    roof = measure(device, threads)
    data[key] = asdict(roof)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return roof


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as counted by FlopCounterMode (forward and any backward)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def tensor_bytes(ts: Iterable) -> int:
    total = 0
    for t in ts:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, (list, tuple)):
            total += tensor_bytes(t)
    return total


def min_bytes(inputs: Iterable, params: Iterable, outputs: Iterable, backward: bool = False) -> int:
    """Compulsory traffic: read inputs and parameters, write outputs. With ``backward``, also
    read the output gradient and the inputs/parameters again and write their gradients."""
    i, p, o = tensor_bytes(inputs), tensor_bytes(params), tensor_bytes(outputs)
    fwd = i + p + o
    return fwd + (o + 2 * (i + p)) if backward else fwd
