"""Table, JSON, CSV, plot and baseline comparison of benchmark rows."""

from __future__ import annotations

import csv
import io
import json

import pytest

from swiftkern.bench import report


def _rows():
    base = dict(suite="model", case="hf:xs b1", name="hf:xs", mode="fwd", dtype="fp32", batch=1)
    return [
        dict(base, provider="eager", family="eager", median_ms=40.0, q1_ms=39.0, q3_ms=42.0,
             iqr_ms=3.0, speedup_vs_eager=1.0, max_abs_diff=0.0, check="ok"),
        dict(base, provider="swiftkern[reference]", family="swiftkern", median_ms=20.0,
             q1_ms=19.0, q3_ms=21.0, iqr_ms=2.0, speedup_vs_eager=2.0, speedup_vs_eager_q1=1.9,
             speedup_vs_eager_q3=2.1, best_peer="eager", speedup_vs_best_peer=2.0,
             max_abs_diff=1.5e-6, check="ok", roofline_frac=0.25),
        dict(base, provider="swiftkern[triton]", family="swiftkern", predicted_ms=0.5,
             check="n/a", note="predicted by roofline (no GPU)"),
        dict(base, case="hf:xs b8", provider="swiftkern[cpu]", family="swiftkern", check="FAIL",
             max_abs_diff=3.0, median_ms=5.0),
    ]


def test_table_shows_values_and_escapes_brackets():
    from rich.console import Console

    con = Console(record=True, width=250)
    report.render_table(_rows(), "cpu X | threads 2", con)
    text = con.export_text()
    assert "swiftkern[reference]" in text  # not eaten as rich markup
    assert "2.00x [1.90-2.10]" in text
    assert "~0.500 (pred.)" in text
    assert "25.0%" in text
    assert "1.5e-06" in text
    assert "FAIL" in text
    assert "threads 2" in text


def test_headline_picks_fastest_correct_swiftkern():
    lines = report.headline(_rows())
    # hf:xs b8 has only a FAILing swiftkern row and no eager: no headline for it.
    assert lines == ["hf:xs b1: eager 40.00 ms -> swiftkern[reference] 20.00 ms (2.00x [IQR "
                     "1.90-2.10], median of per-round ratios); max |diff| vs eager fp32 1.5e-06"]


def test_csv_roundtrip():
    text = report.to_csv(_rows())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(report.CSV_FIELDS)
    assert [r["provider"] for r in rows] == [r["provider"] for r in _rows()]
    assert float(rows[1]["median_ms"]) == 20.0
    assert rows[2]["median_ms"] == ""


def test_json_has_machine_and_results():
    d = json.loads(report.to_json(_rows(), {"cpu": "x", "threads": 2}, None, ["swiftkern"]))
    assert d["schema"] == report.SCHEMA
    assert d["machine"]["threads"] == 2
    assert len(d["results"]) == 4


def test_compare_median_regression():
    base = _rows()
    cur = [dict(r) for r in base]
    cur[1]["median_ms"] = 26.0  # 30% slower
    cmp = report.compare_rows(cur, base, "median_ms", threshold_pct=10)
    by = {c["provider"]: c for c in cmp}
    assert by["swiftkern[reference]"]["change_pct"] == pytest.approx(30.0)
    assert by["swiftkern[reference]"]["regression"]
    assert not by["eager"]["regression"]
    assert "swiftkern[triton]" not in by  # untimed rows are not compared
    assert not any(c["regression"] for c in report.compare_rows(cur, base, "median_ms", 50))


def test_compare_speedup_regression_reads_like_latency():
    base = _rows()
    cur = [dict(r) for r in base]
    cur[1]["speedup_vs_eager"] = 1.0  # was 2.0: twice as slow relative to eager
    cmp = report.compare_rows(cur, base, "speedup_vs_eager", threshold_pct=5)
    c = next(c for c in cmp if c["provider"] == "swiftkern[reference]")
    assert c["change_pct"] == pytest.approx(100.0) and c["regression"]


def test_compare_faster_is_not_regression():
    base = _rows()
    cur = [dict(r) for r in base]
    cur[0]["median_ms"] = 10.0
    cmp = report.compare_rows(cur, base, "median_ms", 0.0)
    c = next(c for c in cmp if c["provider"] == "eager")
    assert c["change_pct"] < 0 and not c["regression"]


def test_plot_writes_png(tmp_path):
    path = tmp_path / "p.png"
    report.plot(_rows(), str(path), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
