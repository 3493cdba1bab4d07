"""pytest plugin: append each failure's traceback to $OUT/fails.txt (or ./fails.txt) when it
happens, so a run killed at a time limit still leaves its failures behind (with pytest-xdist the
summary is printed only at the very end). Use: PYTHONPATH=tools pytest -p pytest_failwriter ..."""

import os


def pytest_runtest_logreport(report):
    if report.failed:
        path = os.path.join(os.environ.get("OUT", "."), "fails.txt")
        with open(path, "a") as f:
            f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext[-3000:]}\n")
