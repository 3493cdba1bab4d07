"""pytest hooks and fixtures of the benchmark suites; settings live in bench_common.py."""

from __future__ import annotations

import pytest
from bench_common import DEVICE, THREADS

from swiftkern.bench.machine import machine_info, machine_line


def pytest_report_header(config):
    import swiftkern  # noqa: F401  (loads kernels so the machine line names their ISA)

    return f"swiftkern bench machine: {machine_line(machine_info(THREADS))}"


@pytest.fixture(scope="session")
def bench_settings():
    from swiftkern.bench.suite import Settings

    return Settings(threads=THREADS, device=DEVICE, warmup_s=0.2, min_sample_s=0.01)
