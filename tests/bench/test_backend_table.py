"""The per-op CUDA backend order written by `swiftkern bench ops --write-backend-table`."""

from __future__ import annotations

import pytest

from swiftkern.bench import cli, report


def _row(op, backend, ms, shape="1x48x56x56", check="ok"):
    return dict(
        family="swiftkern",
        backend=backend,
        median_ms=ms,
        check=check,
        kernel_op=op,
        shape=shape,
        mode="fwd",
        dtype="fp32",
    )


def test_order_by_geometric_mean_of_side_by_side_ratios():
    rows = [
        _row("conv_block", "cuda", 1.0),
        _row("conv_block", "triton", 2.0),
        _row("conv_block", "cuda", 3.0, "1x220x7x7"),
        _row("conv_block", "triton", 2.0, "1x220x7x7"),
        _row("mlp", "cuda", 2.0),
        _row("mlp", "triton", 1.0),
        _row("dwconv_bn", "cuda", 0.1),
        _row("dwconv_bn", "triton", 9.0, check="FAIL"),
        dict(
            family="eager",
            backend="",
            median_ms=0.5,
            check="ok",
            kernel_op="mlp",
            shape="1x48x56x56",
            mode="fwd",
            dtype="fp32",
        ),
    ]
    order = report.backend_order(rows)
    # conv_block: ratios 0.5 and 1.5 -> geometric mean 0.87 < 1 -> cuda first
    assert order == {"conv_block": ["cuda", "triton"], "mlp": ["triton", "cuda"]}


def test_writing_a_table_without_a_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        cli.main(["ops", "--write-backend-table", "/tmp/x.json", "--no-roofline", "--quiet"])
