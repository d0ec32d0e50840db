"""The benchmarks stay runnable: a quick run finishes and prints every section (no timing checked).
Each runs smaller than its --quick: every section is printed whatever the sizes, and the suite
runs these beside other tests (store 13 s to 7 s, ingestion 15 s to 6 s, query 10 s to 7 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_benchmark_runs_quickly_and_prints_every_workload() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.store", "--quick", "--events", "300", "--aggregates", "5000", "--loads", "50", "--skip-postgres"],
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


def test_the_ingestion_benchmark_runs_quickly_and_prints_both_rates() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--quick", "--messages", "1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "end to end (ledger serve)" in run.stdout
    assert "raw ceiling (pull + ack only)" in run.stdout
    assert "ratio end to end ÷ raw ceiling" in run.stdout
    assert "0 rejections on REJECTED" in run.stdout, "every synthetic message is valid"


def test_the_query_benchmark_runs_quickly_and_prints_both_responders() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.query", "--quick", "--people", "300", "--seconds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for section in ("ledger serve (coverage.query)", "echo (nats-py, canned reply)", "ratio ledger serve p99 ÷ echo p99",
                    "ledger serve in detail", "Load generator", "CPU seconds", "p99 ≤ 5 ms", "p99 ≤ 3× the echo's p99"):
        assert section in run.stdout
    assert "error:" not in run.stdout, "every request is well formed: no reply is an error"


def test_the_replay_benchmark_runs_quickly_and_prints_every_read() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.replay", "--quick", "--events", "8000", "--skip-postgres"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for section in ("Season: ", "Stream LEDGER: ", "raw nats-py ordered consumer",
                    "ApplicationSubscription (decode + map)", "replay → SQLite", "ratio replay into SQLite ÷ raw",
                    "PostgreSQL: skipped (--skip-postgres)", "Views after the replay", "flags ", "≥ 30,000 events/s",
                    "≥ 30% of the raw read rate", "Machine:"):
        assert section in run.stdout, section
    assert "one per ledger event" in run.stdout, "the replay audits every ledger event"
    assert "NOT planned" not in run.stdout, "the synthetic season is refused only where it means to be"
