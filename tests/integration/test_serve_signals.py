"""Stopping ``ledger serve`` as an operator does: Ctrl-C at the terminal (SIGINT to the whole
foreground process group) and SIGTERM from a supervisor. A real serve with its embedded
nats-server, in processes of their own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.ingest_support import ROOT, publish_all, season, wait_for


def _accepts(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_given_serve_with_its_embedded_server_when_stopped_then_it_stops_the_server_last_without_a_traceback(
    tmp_path: Path, stop: signal.Signals, code: int
) -> None:
    """Given `ledger serve` on embedded defaults, ingesting, in a process group of its own as a
    shell runs a foreground job; when the group gets ``stop`` (Ctrl-C reaches every process of
    the terminal's foreground group), then serve stops gracefully: exit code 130 after Ctrl-C
    and 0 after SIGTERM, no traceback, its embedded nats-server stopped (by serve, after the
    rest), its serve.url removed, and the log ends with event=stopped."""
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data)], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT, process_group=0,
        )  # fmt: skip
    try:
        wait_for(lambda: (data / "serve.url").exists() or serve.poll() is not None, 60, "serve to be ready")
        assert serve.poll() is None, log.read_text()
        url = (data / "serve.url").read_text()
        import asyncio

        asyncio.run(publish_all(url, season(5, "signals")))
        os.killpg(serve.pid, stop)
        serve.wait(60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(10)
    output = log.read_text()
    assert serve.returncode == code, output
    assert "Traceback" not in output, output
    assert "event=stopped" in output.splitlines()[-1], output[-2000:]
    assert not (data / "serve.url").exists()
    # The signal reached serve alone; serve stopped its nats-server (SIGTERM), after the rest.
    server_log = (data / "nats" / "nats-server.log").read_text(errors="replace")
    assert "Trapped \"terminated\" signal" in server_log and "interrupt" not in server_log, server_log[-2000:]
    assert "checkpoint_failed" not in output and "error" not in output.lower(), output[-3000:]
    deadline = time.monotonic() + 5
    while _accepts(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _accepts(url), "the embedded nats-server outlived serve"
