#!/usr/bin/env python3
"""Compile every csrc/cuda/*.cu standalone for sm_80 and sm_90 and report resource usage.

No GPU needed. Each kernel translation unit is free of torch headers, so this takes seconds. ptxas
runs with -v (resource report) and -warn-spills, and nvcc's `-Werror all-warnings` makes every
warning, spills included, fatal. The table lists per kernel and target: registers, stack frame,
spill stores/loads and static shared memory (dynamic shared memory is sized by the launchers; see
csrc/cuda/README.md).

Exit status: 0 when everything compiled without spills, 1 otherwise, 2 when nvcc is missing.

    python tools/check_cuda.py [--arch 80 90] [--nvcc PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOOLKIT = "/usr/local/cuda-13.0"
# The defines are the ones torch's CUDAExtension adds, so this compiles what setup.py ships.
FLAGS = [
    "-std=c++20",
    "-O3",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "-Xptxas",
    "-v",
    "-Xptxas",
    "-warn-spills",
    "-Werror",
    "all-warnings",
]

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SPILL_ERR = re.compile(r"Registers are spilled to local memory in function '([^']+)'")


def find_nvcc(explicit: str | None) -> str | None:
    """The real nvcc: explicit, $CUDA_HOME/bin, the 13.0 toolkit, then PATH (may be a wrapper)."""
    cands = [explicit] if explicit else []
    if os.environ.get("CUDA_HOME"):
        cands.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    cands += [os.path.join(DEFAULT_TOOLKIT, "bin", "nvcc"), shutil.which("nvcc")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def parse_ptxas(text: str, arch: str) -> dict[str, dict]:
    """Kernel name -> {registers, stack, spill_stores, spill_loads, smem} from ptxas -v output."""
    kernels: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = kernels.setdefault(m.group(1), {"arch": arch})
            continue
        m = _PROPS.search(line)
        if m:
            current = kernels.setdefault(m.group(1), {"arch": arch})
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            current["smem"] = int(s.group(1)) if s else 0
    for m in _SPILL_ERR.finditer(text):
        kernels.setdefault(m.group(1), {"arch": arch})["spill_error"] = True
    # Device functions get a "Function properties" block but no "Used ... registers" line.
    return {k: v for k, v in kernels.items() if "registers" in v or v.get("spill_error")}


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    pretty = out.splitlines()
    if len(pretty) != len(names):
        return {n: n for n in names}
    short = {}
    pools = {"(Pool)0": "sum", "(Pool)1": "l2", "(Pool)2": "softmax"}
    for n, p in zip(names, pretty):
        p = re.sub(r"\(anonymous namespace\)::|swiftkern::cuda::|^void ", "", p)
        depth, cut = 0, len(p)
        for i, ch in enumerate(p):  # drop the argument list: first '(' outside template brackets
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        p = p[:cut]
        for k, v in pools.items():
            p = p.replace(k, v)
        short[n] = p
    return short


def compile_one(nvcc: str, src: str, arch: str, outdir: str) -> tuple[int, str]:
    obj = os.path.join(outdir, f"{os.path.basename(src)}.sm_{arch}.o")
    cmd = [
        nvcc,
        *FLAGS,
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-I",
        os.path.join(ROOT, "csrc", "include"),
        "-c",
        src,
        "-o",
        obj,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["80", "90"])
    ap.add_argument("--nvcc", default=None)
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    nvcc = find_nvcc(args.nvcc)
    if nvcc is None:
        print("check_cuda: nvcc not found", file=sys.stderr)
        return 2
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if not sources:
        print("check_cuda: no csrc/cuda/*.cu files", file=sys.stderr)
        return 1
    jobs = [(s, a) for s in sources for a in args.arch]
    failed = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda j: compile_one(nvcc, j[0], j[1], tmp), jobs))
    for (src, arch), (rc, log) in zip(jobs, results):
        name = os.path.relpath(src, ROOT)
        kernels = parse_ptxas(log, f"sm_{arch}")
        if rc != 0:
            failed = True
            print(f"FAILED: {name} for sm_{arch} (nvcc exit {rc})")
            print(
                "\n".join(
                    line
                    for line in log.splitlines()
                    if "error" in line.lower() or "warning" in line.lower()
                )
            )
        if not kernels and rc == 0:
            failed = True
            print(f"FAILED: no kernels parsed from {name} for sm_{arch}")
        for k, v in kernels.items():
            rows.append({"file": name, "kernel": k, **v})
    pretty = demangle(sorted({r["kernel"] for r in rows}))
    hdr = f"{'arch':6} {'regs':>4} {'stack':>5} {'spill st':>8} {'spill ld':>8} {'smem':>6}  kernel"
    print(hdr)
    print("-" * len(hdr))
    for r in sorted(rows, key=lambda r: (r["file"], pretty[r["kernel"]], r["arch"])):
        spills = r.get("spill_stores", 0) + r.get("spill_loads", 0)
        bad = spills > 0 or r.get("spill_error", False)
        failed |= bad
        print(
            f"{r['arch']:6} {r.get('registers', -1):>4} {r.get('stack', 0):>5} "
            f"{r.get('spill_stores', 0):>8} {r.get('spill_loads', 0):>8} {r.get('smem', 0):>6}  "
            f"{pretty[r['kernel']]}{'   <-- SPILL' if bad else ''}"
        )
    print(
        f"{len(rows)} kernel builds from {len(sources)} files for sm_{', sm_'.join(args.arch)}: "
        + ("FAILED" if failed else "ok (no errors, no spills)")
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
