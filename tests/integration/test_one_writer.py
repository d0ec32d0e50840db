"""One writer among several ``ledger serve`` processes: the others stand by, a graceful stop hands
over at once, and a second ``serve`` on the same data directory refuses to start (real
nats-servers and real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ledger.jetstream.server import EmbeddedNatsServer
from tests.integration.ingest_support import ROOT, SECRET, ingestion_finished, publish_all, season, wait_for
from tests.trust.cluster import LedgerServe


def _status(url: str, data_dir: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "status", "--nats-url", url, "--data-dir", str(data_dir), "--format", "json"],
        cwd=ROOT, env={**os.environ, "LEDGER_PERSON_KEY_SECRET": SECRET, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_second_serve_on_the_same_data_directory_refuses_and_leaves_the_first_alone(tmp_path: Path) -> None:
    """Given `ledger serve` running on a data directory (its embedded nats-server in it), when a
    second `ledger serve` is started on the same directory, then it exits at once with a clear
    message, starts no second nats-server, and the first keeps its serve.url and serving."""
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: (data / "serve.url").exists() or first.poll() is not None, 60, "the first serve")
        url = (data / "serve.url").read_text()
        second = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data)], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode != 0
        assert "another ledger serve" in second.stderr and str(first.pid) in second.stderr
        assert first.poll() is None and (data / "serve.url").read_text() == url
    finally:
        first.terminate()
        first.wait(60)
    assert first.returncode == 0


def test_of_two_serves_one_writes_the_other_stands_by_and_takes_over_at_once_on_a_graceful_stop(tmp_path: Path) -> None:
    """Given two `ledger serve` on one nats-server, then exactly one writes (its log names its
    epoch) and the other stands by; when the writer is stopped gracefully, the standby takes over
    without waiting for the lease to expire and ingests what comes next."""
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        serves = [
            LedgerServe(server.url, tmp_path / f"serve-{i}", tmp_path / f"serve-{i}.log") for i in (1, 2)
        ]
        env_ttl = "30"  # long: a takeover within seconds can only come from the graceful hand-over
        os.environ["LEDGER_LEASE_SECONDS"] = env_ttl
        try:
            for serve in serves:
                serve.start()
                wait_for(lambda s=serve: (s.data_dir / "serve.url").exists() or not s.alive, 60, "ledger serve")
        finally:
            os.environ.pop("LEDGER_LEASE_SECONDS", None)
        try:
            messages = season(50, "one-writer")
            asyncio.run(publish_all(server.url, messages[:50]))
            wait_for(lambda: ingestion_finished(server.url, 50), 60, "the first half")
            writers = [s for s in serves if "event=writer" in _log(s.log_path)]
            standbys = [s for s in serves if "event=standby" in _log(s.log_path)]
            assert len(writers) == 1 and len(standbys) == 1 and writers != standbys, [_log(s.log_path)[-800:] for s in serves]
            (writer,), (standby,) = writers, standbys
            # `ledger status` names the writer and its position (and exits 0: nothing needs an operator
            # but the policy table of the current funding year, which the Hefei file lacks).
            status = _status(server.url, standby.data_dir)
            assert status["writer"]["holder"].split(":")[1] == str(writer.pid)
            assert status["ingestion"]["position"] == status["ingestion"]["upstream_last_seq"] == 50
            assert status["parked"] == [] and status["views"]["ledger"] == status["views"]["ledger_last_event"]
            stopped_at = time.monotonic()
            assert writer.stop() == 0
            # 20 s < the lease's 30 s: only the graceful hand-over can make it in time.
            wait_for(lambda: "event=writer" in _log(standby.log_path), 20, "the standby to take over")
            took = time.monotonic() - stopped_at
            asyncio.run(publish_all(server.url, messages[50:]))
            wait_for(lambda: ingestion_finished(server.url, len(messages)), 60, "the second half")
            print(f"TRUST-FIGURES graceful hand-over: standby writing {took:.2f} s after SIGTERM (lease TTL {env_ttl} s)")
        finally:
            for serve in serves:
                if serve.alive:
                    serve.stop()
