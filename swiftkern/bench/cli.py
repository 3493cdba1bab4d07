"""``swiftkern bench [model|ops] ...`` (also ``python -m swiftkern.bench``).

``swiftkern bench`` alone runs ``bench model`` with its defaults: HF SwiftFormer-XS, random
weights, batch 1, fp32, 2 threads, providers eager / channels_last / ONNX Runtime / swiftkern,
which finishes in well under a minute on a 2-core CPU. Exit status: 0 ok; 1 a regression beyond
--fail-if-regression; 2 a provider's output failed its check against eager, or a swiftkern
provider raised (see the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_THREADS = 2


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _ints(s: str) -> list[int]:
    return [int(p) for p in _csv(s)]


def _shape(s: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in s.lower().replace(",", "x").split("x") if p]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--shape wants BxCxHxW, got {s!r}")
    return tuple(parts)  # type: ignore[return-value]


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method")
    g.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="intra-op threads for torch and ONNX Runtime (default %(default)s)")
    g.add_argument("--rounds", type=int, default=None,
                   help="interleaved measurement rounds per case (default 25 model, 15 ops)")
    g.add_argument("--max-time", type=float, default=None,
                   help="seconds of timing per case after which rounds stop (min 5 rounds; "
                        "default 20 model, 10 ops)")
    g.add_argument("--warmup", type=float, default=0.3, help="warm-up seconds per provider")
    g.add_argument("--min-sample", type=float, default=0.01,
                   help="minimum seconds per sample (calls are repeated to reach it)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backends", type=_csv, default=None,
                   help="swiftkern backends to include: auto (what optimize(model) does), "
                   "cpu, cuda, triton, reference (default: auto + every live one)")
    g.add_argument("--no-roofline", action="store_true", help="skip the roofline column")
    g.add_argument("--refresh-roofline", action="store_true",
                   help="re-measure the machine's GEMM/bandwidth roofline (cached otherwise)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="PATH")
    o.add_argument("--csv", metavar="PATH")
    o.add_argument("--plot", metavar="PNG", help="bar chart of latency by case and provider")
    o.add_argument("--compare", metavar="BASELINE_JSON", help="compare with an earlier --json")
    o.add_argument("--compare-metric", choices=("median_ms", "speedup_vs_eager"),
                   default="median_ms")
    o.add_argument("--fail-if-regression", type=float, metavar="PCT", default=None,
                   help="exit 1 if any row is worse than the baseline by more than PCT percent")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from .models import SIZES
    from .workloads import MODES, OPS

    p = argparse.ArgumentParser(prog="swiftkern bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    m = sub.add_parser("model", help="end-to-end models (default)")
    m.add_argument("--models", type=_csv, default=["hf:xs"],
                   help=f"comma list: hf:SIZE, timm:SIZE (SIZE in {SIZES}) or timm:<any timm "
                        "model name> (default hf:xs)")
    m.add_argument("--batch", type=_ints, default=[1], help="comma list of batch sizes")
    m.add_argument("--dtypes", type=_csv, default=["fp32"],
                   help="fp32 and/or bf16 (bf16 adds eager-bf16 and swiftkern-bf16; fp16 on GPU)")
    m.add_argument("--providers", type=_csv, default=None,
                   help="comma list of eager,channels_last,compile,onnxruntime,swiftkern or 'all' "
                        "(default: all but compile, whose inductor build takes minutes on 2 cores)")
    m.add_argument("--image-size", type=int, default=224)
    _common(m)
    o = sub.add_parser("ops", help="each op vs its eager module sequence and torch.compile")
    o.add_argument("--ops", type=_csv, default=list(OPS), help=f"comma list of {OPS}")
    o.add_argument("--models", type=_csv, default=["xs"],
                   help=f"take the stage shapes of these sizes {SIZES} (default xs)")
    o.add_argument("--stages", type=_ints, default=[1, 2, 3, 4], help="which stages (1-4)")
    o.add_argument("--shape", type=_shape, action="append", default=None,
                   help="BxCxHxW instead of stage shapes (repeatable)")
    o.add_argument("--batch", type=int, default=1)
    o.add_argument("--modes", type=_csv, default=["fwd"], help=f"comma list of {MODES}")
    o.add_argument("--dtypes", type=_csv, default=["fp32"], help="fp32,bf16 (fp16 on GPU)")
    o.add_argument("--providers", type=_csv, default=["eager", "compile", "swiftkern"],
                   help="comma list of eager,compile,swiftkern")
    o.add_argument("--write-backend-table", metavar="PATH", default=None,
                   help="on a GPU: write the measured per-op cuda/triton order as JSON; load it "
                        "with SWIFTKERN_CUDA_TABLE=PATH to make backend='auto' follow it")
    _common(o)
    return p


def _normalize_argv(argv: list[str]) -> list[str]:
    if argv and argv[0] == "bench":
        argv = argv[1:]
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["model", *argv]
    return argv


def _model_providers(arg: list[str] | None) -> list[str]:
    from .suite import DEFAULT_MODEL_PROVIDERS, MODEL_PROVIDERS

    if arg is None:
        return list(DEFAULT_MODEL_PROVIDERS)
    if arg == ["all"]:
        return list(MODEL_PROVIDERS)
    bad = [p for p in arg if p not in MODEL_PROVIDERS]
    if bad:
        raise SystemExit(f"unknown providers {bad}; choose from {MODEL_PROVIDERS}")
    return ["eager", *[p for p in arg if p != "eager"]]


def plan_ops(args) -> list[tuple[str, tuple[int, ...], str, str, str]]:
    """(op, shape, mode, dtype, stage label) for every ops case the arguments ask for."""
    from .models import stage_shapes

    shapes: list[tuple[tuple[int, ...], str]] = []
    if args.shape:
        shapes = [(s, "") for s in args.shape]
    else:
        for size in args.models:
            for i, sh in enumerate(stage_shapes(size.lower(), args.batch), start=1):
                if i in args.stages:
                    shapes.append((sh, f"{size}:{i}"))
    return [(op, sh, mode, dt, st) for op in args.ops for sh, st in shapes
            for mode in args.modes for dt in args.dtypes]


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["info"]:  # `swiftkern info` = `python -m swiftkern.info`
        from ..info import main as info_main

        info_main()
        return 0
    argv = _normalize_argv(raw)
    args = build_parser().parse_args(argv)

    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import report, roofline, suite
    from .machine import machine_info, machine_line, set_threads

    set_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True)
    import swiftkern  # noqa: F401  (loads the kernels before the machine line is taken)

    info = machine_info(args.threads)
    mline = machine_line(info)
    if not args.quiet:
        err.print(f"[dim]machine: {escape(mline)}[/dim]")
    roof = None
    if not args.no_roofline:
        if not args.quiet:
            err.print("[dim]roofline: " + ("measuring" if args.refresh_roofline else
                                            "loading (measured once per machine)") + "[/dim]")
        roof = roofline.load_or_measure(device, args.threads, refresh=args.refresh_roofline)
    s = suite.Settings(threads=args.threads, warmup_s=args.warmup, min_sample_s=args.min_sample,
                       device=device, seed=args.seed, roof=roof)

    if args.command == "ops" and args.write_backend_table and device != "cuda":
        raise SystemExit("--write-backend-table needs a CUDA device: the order it writes is "
                         "measured, never guessed")
    if args.command == "ops":
        cases = plan_ops(args)
        s.rounds = args.rounds or 15
        s.time_budget_s = args.max_time if args.max_time is not None else 10.0
        per_case = s.rounds * (len(args.providers) + 1)
        title = "swiftkern bench ops"
    else:
        providers = _model_providers(args.providers)
        cases = [(m, b) for m in args.models for b in args.batch]
        s.rounds = args.rounds or 25
        s.time_budget_s = args.max_time if args.max_time is not None else 20.0
        per_case = s.rounds * (len(providers) + 2)
        title = "swiftkern bench model"

    rows: list[dict] = []
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=args.quiet) as prog:
        task = prog.add_task("", total=per_case * len(cases))
        s.on_step = lambda: prog.advance(task)
        for i, case in enumerate(cases):
            head = f"[{i + 1}/{len(cases)}] "
            s.on_status = lambda msg, head=head: prog.update(task, description=head + msg)
            if args.command == "ops":
                op, shape, mode, dt, stage = case
                rows += suite.run_op_case(op, shape, mode, dt, s, args.providers, args.backends,
                                          stage=stage)
            else:
                rows += suite.run_model_case(case[0], case[1], s, providers, args.dtypes,
                                             args.backends, args.image_size)
            prog.update(task, completed=per_case * (i + 1))
    elapsed = time.perf_counter() - t0

    report.render_table(rows, mline, console, title=title)
    for line in report.headline(rows):
        console.print(escape(line))
    console.print(f"[dim]{len(cases)} case(s) in {elapsed:.0f} s; rounds {s.rounds} (fewer "
                  f"where --max-time ran out); threads {args.threads}; device {device}[/dim]")
    load = info.get("loadavg_1m")
    if load is not None and load > (info.get("cores") or 1):
        console.print(f"[yellow]the machine was busy (load {load:.1f} on {info['cores']} cores): "
                      "medians are inflated and noisy; compare only the per-round ratios, or "
                      "re-run on an idle machine[/yellow]")
    roof_d = None
    if roof is not None:
        roof_d = dict(gflops=roof.gflops, bandwidth_gbs=roof.bandwidth_gbs, device=roof.device,
                      threads=roof.threads, loadavg_1m=roof.loadavg_1m)
        g = ", ".join(
            f"{k} {v:.1f}" + (f" (roofline uses fp32's {roof.peak_gflops(k):.1f})"
                              if roof.peak_gflops(k) > v else "")
            for k, v in roof.gflops.items()
        )
        load = f", measured at load {roof.loadavg_1m:.1f}" if roof.loadavg_1m is not None else ""
        console.print(f"[dim]roofline: GEMM GFLOP/s {g}; bandwidth {roof.bandwidth_gbs:.1f} GB/s "
                      f"(cache {roofline.cache_path()}{load})[/dim]")
    full_argv = ["swiftkern", "bench", *argv]
    if args.json:
        _write(args.json, report.to_json(rows, info, roof_d, full_argv))
    if args.csv:
        _write(args.csv, report.to_csv(rows))
    if args.plot:
        report.plot(rows, args.plot, title=f"{title} | {mline}")
    if args.command == "ops" and args.write_backend_table:
        import json

        order = report.backend_order(rows)
        _write(args.write_backend_table, json.dumps({"machine": mline, "order": order}, indent=1))
        console.print(f"backend order for {len(order)} op(s) written to "
                      f"{args.write_backend_table}; use SWIFTKERN_CUDA_TABLE to apply it")
    status = 0
    if any(r.get("check") == "FAIL" for r in rows):
        console.print("[red]some providers' outputs differ from eager beyond tolerance "
                      "(FAIL)[/red]")
        status = 2
    if any(r.get("check") == "error" and r.get("family") == "swiftkern" for r in rows):
        console.print("[red]a swiftkern provider raised (error rows)[/red]")
        status = 2
    if args.compare:
        cmp = report.compare_rows(rows, report.load_baseline(args.compare), args.compare_metric,
                                  args.fail_if_regression)
        report.render_comparison(cmp, console, args.fail_if_regression)
        if any(c["regression"] for c in cmp):
            console.print(f"[red]regression beyond {args.fail_if_regression}%[/red]")
            status = status or 1
    return status


def _write(path: str, text: str) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    raise SystemExit(main())
