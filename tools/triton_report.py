#!/usr/bin/env python
"""Ahead-of-time compile report of every shipped Triton kernel config, no GPU needed.

    python tools/triton_report.py               # compile for sm_80 and sm_90, print the table
    python tools/triton_report.py --roofline    # bytes / FLOPs / predicted H100 time per kernel
    python tools/triton_report.py --targets 90 --jobs 2

Each (kernel, config, dtype) of swiftkern.triton_kernels._specs.all_specs() goes through the
full Triton pipeline with the bundled ptxas (triton.compile(ASTSource(...), target=GPUTarget)).
Registers, stack (spills) and local memory come from cuobjdump --dump-resource-usage on the cubin,
shared memory from the kernel metadata. Exit status 1 on a compile error, any spill (STACK or
LOCAL > 0) or shared memory over the target's per-block limit (sm_80: 163 KB, sm_90: 227 KB).
Must run without TRITON_INTERPRET (the interpreter replaces @triton.jit functions): the script
re-executes itself with it removed.
The specs are every variant the launchers produce (each flag combination, tiles at the config's
width); tests/triton/test_spec_coverage.py checks the interpreter tests' launches against them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def _bin(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", path],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    res = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", out)
        res[key] = int(m.group(1)) if m else -1
    return res


def _compile_one(job):
    idx, arch = job
    import triton
    from swiftkern.triton_kernels._specs import all_specs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = all_specs()[idx]
    row = dict(kernel=spec.name, config=spec.config, dtype=spec.dtype, warps=spec.num_warps,
               layout=spec.layout or "-", target=f"sm_{arch}")
    try:
        src = ASTSource(fn=spec.kernel, signature=spec.signature(), constexprs=spec.constants(),
                        attrs=spec.attrs())
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
        ru = _resource_usage(k.asm["cubin"])
        row.update(regs=ru["REG"], stack=ru["STACK"], local=ru["LOCAL"],
                   shared=int(k.metadata.shared), error="")
    except Exception as e:  # noqa: BLE001 - any compile failure is reported and fails the run
        row.update(regs=-1, stack=-1, local=-1, shared=-1,
                   error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    return row


def _problems(row) -> list[str]:
    if row["error"]:
        return [row["error"]]
    out = []
    if row["stack"] > 0 or row["local"] > 0:
        out.append(f"spill (stack {row['stack']}, local {row['local']})")
    arch = int(row["target"][3:])
    if row["shared"] > SHARED_LIMIT[arch]:
        out.append(f"shared {row['shared']} > {SHARED_LIMIT[arch]}")
    return out


def compile_report(targets=(80, 90), jobs: int = 2, only: str = "") -> tuple[list[dict], int]:
    from swiftkern.triton_kernels._specs import all_specs

    specs = all_specs()
    work = [(i, a) for i, s in enumerate(specs)
            if not only or only in f"{s.name} {s.config} {s.dtype} {s.layout}" for a in targets]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            rows = list(ex.map(_compile_one, work, chunksize=4))
    else:
        rows = [_compile_one(w) for w in work]
    bad = sum(1 for r in rows if _problems(r))
    return rows, bad


def print_table(rows) -> None:
    hdr = ("kernel", "config", "dtype", "layout", "warps", "target", "regs", "shared_B", "spill",
           "status")
    lines = [hdr]
    for r in rows:
        p = _problems(r)
        spill = "-" if r["error"] else str(max(r["stack"], 0) + max(r["local"], 0))
        lines.append((r["kernel"], r["config"], r["dtype"], r["layout"], str(r["warps"]),
                      r["target"],
                      str(r["regs"]), str(r["shared"]), spill, "; ".join(p) if p else "ok"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(hdr))]
    for j, line in enumerate(lines):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)))
        if j == 0:
            print("-+-".join("-" * w for w in widths))


def roofline_report(batch: int = 64) -> None:
    from swiftkern.triton_kernels import roofline
    from swiftkern.triton_kernels._roofline import SWIFTFORMER_XS_SHAPES

    print(f"SwiftFormer-XS, 224x224, batch {batch}; bf16 (dtype_bytes 2) unless noted. "
          "Model: swiftkern/triton_kernels/_roofline.py")
    hdr = ("op", "stage", "dtype", "bytes_min_MB", "moved_MB", "moved/min", "eager_MB",
           "GFLOP", "pred_us", "eager_pred_us")
    rows = [hdr]
    ops = ("dwconv_bn", "dwconv_bn_train", "conv_block", "conv_block_train", "mlp", "mlp_train")
    for op in ops:
        for stage, s in SWIFTFORMER_XS_SHAPES.items():
            for e in (2, 4):
                r = roofline(op, dict(B=batch, dtype_bytes=e, **s))
                rows.append(_roofline_row(op, stage, e, r))
    for op in ops:  # backward (every gradient wanted): several kernels + torch ops
        for stage, e in (("stage1", 2), ("stage4", 2), ("stage4", 4)):
            r = roofline(op + "_backward", dict(B=batch, dtype_bytes=e,
                                                **SWIFTFORMER_XS_SHAPES[stage]))
            rows.append(_roofline_row(op + "_backward", stage, e, r))
    for op in ("additive_attention_core", "additive_attention",
               "additive_attention_core_backward", "additive_attention_backward"):
        for stage in ("stage4",):  # SwiftFormer uses attention in the last block of each stage
            s = SWIFTFORMER_XS_SHAPES[stage]
            for e in (2, 4):
                r = roofline(op, dict(B=batch, N=s["H"] * s["W"], D=s["C"], dtype_bytes=e))
                rows.append(_roofline_row(op, stage, e, r))
        for stage in ("stage1", "stage3"):
            s = SWIFTFORMER_XS_SHAPES[stage]
            r = roofline(op, dict(B=batch, N=s["H"] * s["W"], D=s["C"], dtype_bytes=2))
            rows.append(_roofline_row(op, stage, 2, r))
    widths = [max(len(x[i]) for x in rows) for i in range(len(hdr))]
    for j, line in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)))
        if j == 0:
            print("-+-".join("-" * w for w in widths))


def _roofline_row(op, stage, e, r):
    return (op, stage, "bf16" if e == 2 else "fp32", f"{r['bytes_min'] / 1e6:.2f}",
            f"{r['bytes_moved'] / 1e6:.2f}", f"{r['bytes_moved'] / r['bytes_min']:.2f}",
            f"{r['eager_bytes'] / 1e6:.2f}", f"{r['flops'] / 1e9:.2f}",
            f"{r['predicted_h100_us']:.1f}", f"{r['eager_predicted_h100_us']:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roofline", action="store_true", help="print the bytes/FLOPs model instead")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--targets", default="80,90")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="substring of 'kernel config dtype layout'")
    args = ap.parse_args(argv)
    if args.roofline:
        roofline_report(args.batch)
        return 0
    rows, bad = compile_report(tuple(int(t) for t in args.targets.split(",")), args.jobs,
                               args.only)
    print_table(rows)
    print(f"\n{len(rows)} compiles, {bad} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        sys.exit(subprocess.run([sys.executable, *sys.argv], env=env).returncode)
    sys.exit(main())
