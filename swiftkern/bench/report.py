"""Output of benchmark rows: rich table, JSON, CSV, PNG plot, and comparison with a baseline."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable

SCHEMA = 1
CSV_FIELDS = (
    "suite", "case", "name", "stage", "shape", "mode", "dtype", "batch", "threads", "provider",
    "family", "provider_dtype", "backend", "median_ms", "q1_ms", "q3_ms", "iqr_ms", "rounds",
    "inner", "speedup_vs_eager", "speedup_vs_eager_q1", "speedup_vs_eager_q3", "best_peer",
    "speedup_vs_best_peer", "speedup_vs_best_peer_q1", "speedup_vs_best_peer_q3",
    "max_abs_diff", "grad_max_abs_diff", "tol", "ref_absmax", "check", "gflop", "mbytes",
    "roofline_frac", "predicted_ms", "kernel_op", "note",
)


def _num(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(v, fmt)


def fmt_ms(v) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fmt_time(row: dict) -> str:
    if row.get("median_ms") is not None:
        return fmt_ms(row["median_ms"])
    if row.get("predicted_ms") is not None:
        return f"~{fmt_ms(row['predicted_ms'])} (pred.)"
    return "n/a"


def fmt_speedup(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return ""
    lo, hi = row.get(key + "_q1"), row.get(key + "_q3")
    s = f"{v:.2f}x"
    if lo is not None and hi is not None:
        s += f" [{lo:.2f}-{hi:.2f}]"
    return s


def fmt_diff(row: dict) -> str:
    d = row.get("max_abs_diff")
    if d is None:
        return ""
    s = f"{d:.1e}"
    g = row.get("grad_max_abs_diff")
    if g is not None:
        s += f" / {g:.1e}"
    return s


TABLE_COLUMNS = (
    ("case", "case"), ("provider", "provider"), ("median ms", None), ("IQR ms", None),
    ("vs eager", None), ("vs best peer", None), ("max|Δ| vs eager fp32", None), ("check", "check"),
    ("roofline", None), ("note", "note"),
)


def table_cells(row: dict, first_of_case: bool) -> list[str]:
    peer = row.get("best_peer")
    vs_peer = fmt_speedup(row, "speedup_vs_best_peer")
    if vs_peer and peer:
        vs_peer += f" ({peer})"
    rf = row.get("roofline_frac")
    return [
        row["case"] if first_of_case else "",
        row["provider"],
        fmt_time(row),
        _num(row.get("iqr_ms"), ".3f"),
        fmt_speedup(row, "speedup_vs_eager"),
        vs_peer,
        fmt_diff(row),
        row.get("check", ""),
        f"{100 * rf:.1f}%" if rf is not None else "",
        row.get("note") or "",
    ]


def render_table(rows: list[dict], machine_line: str, console=None, title: str = "") -> None:
    """Print the rows as a rich table (one section per case) followed by the machine line."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    t = Table(title=title or None, show_lines=False, header_style="bold")
    for name, _ in TABLE_COLUMNS:
        t.add_column(name, justify="right" if name in ("median ms", "IQR ms", "roofline") else
                     "left", overflow="fold")
    last = None
    for row in rows:
        first = row["case"] != last
        if first and last is not None:
            t.add_section()
        last = row["case"]
        style = "red" if row.get("check") in ("FAIL", "error") else (
            "bold" if row.get("family") == "swiftkern" else None)
        t.add_row(*[escape(c) for c in table_cells(row, first)], style=style)
    console.print(t)
    console.print(f"[dim]machine: {escape(machine_line)}[/dim]")
    console.print("[dim]vs eager / vs best peer: median [IQR] of per-round speedups (>1 = faster); "
                  "max|Δ|: output (/ input grad) vs eager fp32; roofline: roofline time / median."
                  "[/dim]")


def headline(rows: list[dict]) -> list[str]:
    """One line per case: eager vs swiftkern[auto] (what ``optimize(model)`` gives), or, where no
    auto row was measured, the fastest correct swiftkern provider."""
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        eager = next((r for r in rs if r.get("family") == "eager" and r.get("median_ms")), None)
        sk = [r for r in rs if r.get("family") == "swiftkern" and r.get("median_ms")
              and r.get("check") == "ok" and r.get("speedup_vs_eager")]
        if eager is None or not sk:
            continue
        auto = [r for r in sk if r["provider"] == "swiftkern[auto]"]
        best = auto[0] if auto else max(sk, key=lambda r: r["speedup_vs_eager"])
        iqr = ""
        if best.get("speedup_vs_eager_q1") is not None:
            iqr = f" [IQR {best['speedup_vs_eager_q1']:.2f}-{best['speedup_vs_eager_q3']:.2f}]"
        out.append(f"{case}: {eager['provider']} {fmt_ms(eager['median_ms'])} ms -> "
                   f"{best['provider']} {fmt_ms(best['median_ms'])} ms "
                   f"({best['speedup_vs_eager']:.2f}x{iqr}, median of per-round ratios); "
                   f"max |diff| vs eager fp32 {best['max_abs_diff']:.1e}")
    return out


def to_json(rows: list[dict], machine: dict, roof: dict | None, argv: list[str]) -> str:
    return json.dumps({"schema": SCHEMA, "machine": machine, "roofline": roof, "argv": argv,
                       "results": rows}, indent=1, default=str)


def to_csv(rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def plot(rows: list[dict], path: str, title: str = "") -> None:
    """Grouped bars: median latency (IQR as error bars) by case and provider; log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("median_ms") is not None]
    cases = list(dict.fromkeys(r["case"] for r in timed))
    provs = list(dict.fromkeys(r["provider"] for r in timed))
    if not cases:
        raise ValueError("no timed rows to plot")
    width = 0.8 / max(1, len(provs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.9 * len(cases) * max(1, len(provs)) * 0.35),
                                    4.5))
    for i, p in enumerate(provs):
        xs, ys, lo, hi = [], [], [], []
        for j, c in enumerate(cases):
            r = next((r for r in timed if r["case"] == c and r["provider"] == p), None)
            if r is None:
                continue
            xs.append(j + (i - (len(provs) - 1) / 2) * width)
            ys.append(r["median_ms"])
            lo.append(r["median_ms"] - (r.get("q1_ms") or r["median_ms"]))
            hi.append((r.get("q3_ms") or r["median_ms"]) - r["median_ms"])
        ax.bar(xs, ys, width, yerr=[lo, hi], label=p, capsize=2)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("median latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title(title or "swiftkern bench", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Comparison with a baseline
# ----------------------------------------------------------------------------------------------
METRICS = {"median_ms": "lower", "speedup_vs_eager": "higher"}


def row_key(r: dict) -> tuple:
    return (r.get("suite"), r.get("case"), r.get("provider"))


def load_baseline(path: str) -> list[dict]:
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict):
        return data.get("results", [])
    return data


def compare_rows(current: list[dict], baseline: list[dict], metric: str = "median_ms",
                 threshold_pct: float | None = None) -> list[dict]:
    """Match rows by (suite, case, provider); change_pct > 0 means worse (slower).

    For "median_ms" the change is cur/base - 1; for "speedup_vs_eager" it is base/cur - 1, so a
    regression threshold reads the same way for both. Rows missing on either side are skipped.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {tuple(METRICS)}")
    base = {row_key(r): r for r in baseline}
    out = []
    for r in current:
        b = base.get(row_key(r))
        if b is None:
            continue
        cur, old = r.get(metric), b.get(metric)
        if cur is None or old is None or cur <= 0 or old <= 0:
            continue
        change = (cur / old - 1) if METRICS[metric] == "lower" else (old / cur - 1)
        out.append(dict(case=r["case"], provider=r["provider"], metric=metric, baseline=old,
                        current=cur, change_pct=100 * change,
                        regression=threshold_pct is not None and 100 * change > threshold_pct))
    return out


def render_comparison(cmp: list[dict], console=None, threshold_pct: float | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    t = Table(title="comparison with baseline" + (f" (regression: worse by > {threshold_pct}%)"
                                                  if threshold_pct is not None else ""))
    for c in ("case", "provider", "metric", "baseline", "current", "change", ""):
        t.add_column(c)
    for c in cmp:
        word = "worse" if c["change_pct"] > 0 else "better"
        t.add_row(escape(c["case"]), escape(c["provider"]), c["metric"], f"{c['baseline']:.4g}",
                  f"{c['current']:.4g}", f"{c['change_pct']:+.1f}% {word}",
                  "REGRESSION" if c["regression"] else "", style="red" if c["regression"] else None)
    console.print(t)


def backend_order(rows: list[dict]) -> dict[str, list[str]]:
    """Per kernel op, "cuda" and "triton" ordered by measured speed (for SWIFTKERN_CUDA_TABLE).

    For every case both backends ran and passed their check, the ratio of medians is taken; the
    faster backend by geometric mean of those ratios comes first. Ops where the two never ran
    side by side are left out (they keep the default order).
    """
    import math

    cases: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r.get("family") != "swiftkern" or r.get("backend") not in ("cuda", "triton"):
            continue
        if r.get("check") != "ok" or r.get("median_ms") is None:
            continue
        op = r.get("kernel_op") or r.get("name")
        key = (op, r.get("shape"), r.get("mode"), r.get("dtype"))
        cases.setdefault(key, {})[r["backend"]] = r["median_ms"]
    logs: dict[str, list[float]] = {}
    for (op, *_), t in cases.items():
        if "cuda" in t and "triton" in t:
            logs.setdefault(op, []).append(math.log(t["cuda"] / t["triton"]))
    return {op: (["cuda", "triton"] if sum(v) / len(v) < 0 else ["triton", "cuda"])
            for op, v in logs.items()}
