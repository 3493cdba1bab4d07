"""swiftkern.bench: the microbenchmark CLI (``swiftkern bench``) and its harness.

The harness (harness.py, stats.py), workloads (workloads.py, models.py), checks and roofline are
shared with the pytest-benchmark suites in benchmarks/. Nothing here is imported by ``swiftkern``
itself, and nothing here downloads anything: models are built with random weights.
"""
