"""One NATS connection strategy per process: ``ledger serve`` reaches the server through two
connections — the broker's (ingestion consumer, coverage.query) on the main event loop, and the
store's (event store, projections' readers of LEDGER and REJECTED, downstream publisher) on one
loop of its own — whatever it is doing. Counted by the server itself (its monitoring endpoint)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path

from ledger.jetstream.server import EmbeddedNatsServer, free_port
from service.bootstrap import running
from service.settings import Settings
from tests.integration.ingest_support import CIPHER_KEY, SECRET, ingestion_finished, publish_all, season, signing_key_for_tests, wait_for


def _connections(monitor: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz?limit=1000", timeout=5) as reply:
        return json.loads(reply.read())["connections"] or []


def test_given_serve_ingesting_projecting_and_publishing_then_it_holds_two_connections_and_one_store_loop(
    tmp_path: Path,
) -> None:
    """Given `ledger serve` (in this process) on a server that counts its clients, when it has
    ingested a season, projected it and published coverage downstream, then the server sees
    exactly two connections from it, and the process runs one store event loop thread — not one
    per part (the event store, the projections' LEDGER reader, the REJECTED reader, the publisher)."""
    monitor = free_port()
    with EmbeddedNatsServer(tmp_path / "nats", extra_config=f"http: 127.0.0.1:{monitor}") as server:
        settings = Settings.read(
            {"LEDGER_PERSON_KEY_SECRET": SECRET, "LEDGER_CIPHER_KEY": CIPHER_KEY}, nats_url=server.url, data_dir=tmp_path / "data",
            batch_size=50, signing_key_file=signing_key_for_tests(),
        )
        messages = season(40, "connections")

        async def run() -> tuple[int, list[str]]:
            async with running(settings) as service:
                wait = asyncio.to_thread
                await publish_all(server.url, messages)
                await wait(wait_for, lambda: ingestion_finished(server.url, len(messages)), 60, "the ingestion")
                ledger_end = service.ledger.recorder.max_notification_id() or 0
                await wait(service.projections.wait, ledger_end, 0, 60)
                publisher = service.projections.publisher
                assert publisher is not None
                await wait(wait_for, lambda: publisher.published > 0, 30, "coverage published downstream")
                loops = [t.name for t in threading.enumerate() if t.name.startswith("nats-")]
                return len(_connections(monitor)), loops

        connections, loops = asyncio.run(run())
    assert connections == 2, f"serve holds {connections} connections"
    assert len(loops) == 1, loops
