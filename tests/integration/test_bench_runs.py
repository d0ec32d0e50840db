"""The benchmark stays runnable: a quick run finishes and prints every section (no timing checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_benchmark_runs_quickly_and_prints_every_workload() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.store", "--quick", "--skip-postgres"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for section in ("(a) single-event saves", "(b) saves of 100", "(c) read everything back",
                    "(d) aggregate loads", "(e) group commit", "(f) nats-server memory"):
        assert section in run.stdout
    assert "store (sync always)" in run.stdout
    assert "raw nats-py (sync always)" in run.stdout
