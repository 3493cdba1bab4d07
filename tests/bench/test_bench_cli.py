"""The CLI end to end on tiny workloads: argument handling, JSON/CSV/plot, compare exit codes."""

from __future__ import annotations

import csv
import json

import pytest

from swiftkern.bench import cli

FAST = ["--rounds", "2", "--warmup", "0", "--min-sample", "0", "--no-roofline", "--quiet",
        "--threads", "1"]


@pytest.mark.parametrize("argv,first", [
    ([], "model"), (["bench"], "model"), (["bench", "ops"], "ops"), (["--json", "x"], "model"),
    (["bench", "model", "--batch", "2"], "model"), (["--help"], "--help"),
])
def test_normalize_argv(argv, first):
    assert cli._normalize_argv(argv)[0] == first


def test_plan_ops_stage_shapes_and_shape_override():
    p = cli.build_parser()
    a = p.parse_args(["ops", "--ops", "mlp,dwconv_bn", "--stages", "1,4", "--modes", "fwd,fwd+bwd",
                      "--dtypes", "fp32"])
    plan = cli.plan_ops(a)
    assert len(plan) == 2 * 2 * 2
    assert ("mlp", (1, 48, 56, 56), "fwd", "fp32", "xs:1") in plan
    assert ("dwconv_bn", (1, 220, 7, 7), "fwd+bwd", "fp32", "xs:4") in plan
    a = p.parse_args(["ops", "--ops", "mlp", "--shape", "2x33x5x3"])
    assert cli.plan_ops(a) == [("mlp", (2, 33, 5, 3), "fwd", "fp32", "")]


def test_model_providers():
    assert cli._model_providers(None) == ["eager", "channels_last", "onnxruntime", "swiftkern"]
    assert "compile" in cli._model_providers(["all"])
    assert cli._model_providers(["swiftkern"]) == ["eager", "swiftkern"]
    with pytest.raises(SystemExit):
        cli._model_providers(["tensorrt"])


def test_ops_json_csv_plot_and_compare(tmp_path, capsys):
    js, cs, png = tmp_path / "a.json", tmp_path / "a.csv", tmp_path / "a.png"
    argv = ["bench", "ops", "--ops", "dwconv_bn", "--shape", "1x16x4x4", "--providers",
            "eager,swiftkern", *FAST]
    assert cli.main([*argv, "--json", str(js), "--csv", str(cs), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "dwconv_bn 1x16x4x4 fwd fp32" in out and "threads 1" in out
    d = json.loads(js.read_text())
    assert d["machine"]["threads"] == 1 and d["argv"][:3] == ["swiftkern", "bench", "ops"]
    provs = {r["provider"]: r for r in d["results"]}
    assert provs["swiftkern[reference]"]["check"] == "ok"
    assert len(list(csv.DictReader(cs.open()))) == len(d["results"])
    assert png.read_bytes()[:4] == b"\x89PNG"

    # A baseline 1000x faster than anything measurable: every timed row is a regression.
    for r in d["results"]:
        if r.get("median_ms"):
            r["median_ms"] /= 1000
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps(d))
    assert cli.main([*argv, "--compare", str(fast), "--fail-if-regression", "10"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    # Without a threshold the comparison is shown but never fails.
    assert cli.main([*argv, "--compare", str(fast)]) == 0


def test_model_default_path_small(tmp_path):
    js = tmp_path / "m.json"
    rc = cli.main(["bench", "model", "--models", "timm:xs", "--image-size", "64", "--providers",
                   "eager,swiftkern,onnxruntime", *FAST, "--json", str(js)])
    assert rc == 0
    rows = json.loads(js.read_text())["results"]
    by = {r["provider"]: r for r in rows}
    assert set(by) >= {"eager", "onnxruntime", "swiftkern[reference]"}
    for name in ("onnxruntime", "swiftkern[reference]"):
        assert by[name]["check"] == "ok", by[name]
        assert by[name]["max_abs_diff"] is not None and by[name]["median_ms"] > 0
