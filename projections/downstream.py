"""Coverage changes for downstream services: the KV bucket ``coverage`` and ``coverage.changed.<district>``.

The projection writes each change of a person's coverage to the ``outbox`` table in the same
transaction as the views. ``CoveragePublisher`` publishes the outbox in ledger order after each
commit, then deletes what the server acknowledged:

- ``$KV.coverage.<person key>``: the person's latest coverage per coverage year (``kv_value``),
  for ``get`` and ``watch``;
- ``coverage.changed.<district>`` on the COVERAGE stream: the contract's coverage reply for the
  day the change takes effect.

Both carry ``Nats-Msg-Id`` derived from the ledger sequence, so a batch published again after a
crash (published, not yet deleted from the outbox) is dropped by the server as a duplicate; on
start the publisher also skips a KV value whose ``ledger_seq`` the bucket already holds, which
covers restarts after the duplicate window. A watcher sees each change once, in ledger order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from ledger.jetstream.client import NatsClient
from ledger.jetstream.datastore import StreamSpec
from projections.database import Database

log = logging.getLogger("ledger.downstream")

COVERAGE_BUCKET = "coverage"
COVERAGE_STREAM = "COVERAGE"
CHANGED_PREFIX = "coverage.changed"


def coverage_stream_spec(replicas: int = 1, duplicate_window_s: float = 600.0) -> StreamSpec:
    """Derived data, rebuildable by a replay: kept without limits but not immutable."""
    return StreamSpec(
        name=COVERAGE_STREAM,
        subjects=(f"{CHANGED_PREFIX}.>",),
        immutable=False,
        replicas=replicas,
        duplicate_window_s=duplicate_window_s,
    )


async def ensure_downstream(nc: Any, replicas: int = 1) -> None:
    """Create the COVERAGE stream and the ``coverage`` KV bucket if missing."""
    from nats.js.api import KeyValueConfig, StorageType

    async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
        return json.loads(reply.data)

    await coverage_stream_spec(replicas).ensure(api)
    js = nc.jetstream()
    try:
        await js.key_value(COVERAGE_BUCKET)  # an existing bucket is used as it is
    except Exception:  # noqa: BLE001 - missing: created
        await js.create_key_value(
            KeyValueConfig(bucket=COVERAGE_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas,
                           description="latest coverage per person and coverage year (ledger projections)")
        )


class CoveragePublisher:
    """Publishes the outbox after each commit (a thread of its own; see the module docstring)."""

    BATCH = 1000

    def __init__(self, database: Database, nats_url: str, *, timeout: float = 10.0, replicas: int = 1) -> None:
        self.db = database
        self.client = NatsClient(nats_url, timeout=timeout)
        self.client.run(ensure_downstream(self.client.nc, replicas))
        self.published = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._first = True
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="coverage-publisher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                while self._publish_some():
                    pass
            except Exception as e:  # noqa: BLE001 - retried; the outbox keeps every change
                self.error = e
                log.warning("event=publish_failed error=%r (retrying)", e)
                self._stopping.wait(1.0)
            if self._stopping.is_set():
                return

    def _publish_some(self) -> bool:
        rows = self.db.query(
            "SELECT ledger_seq, person_key, district, kv_value, message FROM outbox "
            "ORDER BY ledger_seq LIMIT ?",
            (self.BATCH,),
        )
        if not rows:
            return False
        self.client.run(self._publish(rows, check_kv=self._first), timeout=60)
        self._first = False
        with self.db.transaction():
            self.db.executemany("DELETE FROM outbox WHERE ledger_seq = ? AND person_key = ?", [(r[0], r[1]) for r in rows])
        self.published += len(rows)
        self.error = None
        return len(rows) == self.BATCH

    async def _publish(self, rows: list[tuple[Any, ...]], *, check_kv: bool) -> None:
        js = self.client.nc.jetstream(timeout=self.client.timeout)
        kv = await js.key_value(COVERAGE_BUCKET) if check_kv else None
        acks = []
        for seq, key, district, value, message in rows:
            if kv is not None and await _kv_has(kv, key, seq):
                continue  # published before a restart longer ago than the duplicate window
            acks.append(await js.publish_async(
                f"$KV.{COVERAGE_BUCKET}.{key}", value.encode(), headers={"Nats-Msg-Id": f"kv/{seq}/{key}"}
            ))
            acks.append(await js.publish_async(
                f"{CHANGED_PREFIX}.{district or 'unknown'}", message.encode(), headers={"Nats-Msg-Id": f"changed/{seq}/{key}"}
            ))
        if acks:
            # Bounded: an acknowledgement lost with a crashed server must not hold publication
            # (and a graceful stop) for long; the rows stay in the outbox and go again, deduplicated.
            await asyncio.wait_for(asyncio.gather(*acks), timeout=self.client.timeout)

    def drain(self, timeout: float = 30.0) -> None:
        """Publish everything in the outbox now (used before stopping)."""
        import time

        deadline = time.monotonic() + timeout
        while self.db.query("SELECT COUNT(*) FROM outbox")[0][0] and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)

    def close(self) -> None:
        self.drain()
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self.client.close()


async def _kv_has(kv: Any, key: str, seq: int) -> bool:
    from nats.js.errors import KeyNotFoundError

    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return False
    try:
        return int(json.loads(entry.value)["ledger_seq"]) >= seq
    except (ValueError, KeyError, TypeError):
        return False
