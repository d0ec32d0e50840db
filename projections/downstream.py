"""Coverage changes for downstream services: the KV bucket ``coverage`` and ``coverage.changed.<district>``.

The projection writes each change of what a person shows downstream to the ``outbox`` table in
the same transaction as the views (``projection.py``: an event that changes nothing shown writes
no row). ``CoveragePublisher`` publishes the outbox in ledger order after each commit, then
deletes what the server acknowledged:

- ``$KV.coverage.<person key>``: the person's coverage per coverage year
  (``contract.coverage.CoverageValue``), for ``get`` and ``watch``; every row;
- ``coverage.changed.<district>`` on the COVERAGE stream: ``contract.coverage.CoverageChanged``,
  the coverage reply for the day the change takes effect; only rows that changed a coverage
  year (a row whose ``message`` is empty changed the value alone: the date of death, the
  district of residence).

Both carry ``Nats-Msg-Id`` derived from the ledger sequence, so a batch published again after a
crash (published, not yet deleted from the outbox) is dropped by the server as a duplicate, and
the headers ``Ledger-Seq`` and ``Ledger-Source``. Beyond the duplicate window, publication is
decided per target when the publisher starts: COVERAGE has this ledger's changes up to the
``Ledger-Seq`` of its last message from this source (publication is in ledger order), the bucket
has a row when the person's value is at that ``ledger_seq`` or later. A row is done (deleted)
only when both targets have it. A watcher sees each change once, in ledger order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from contract.subjects import CHANGED_PREFIX, COVERAGE_BUCKET, COVERAGE_STREAM
from contract.subjects import LEDGER_SEQ_HEADER as LEDGER_SEQ
from contract.subjects import LEDGER_SOURCE_HEADER as LEDGER_SOURCE
from ledger.jetstream.client import NatsClient
from ledger.jetstream.datastore import StreamSpec
from projections.database import Database

log = logging.getLogger("ledger.downstream")


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
        await js.key_value(COVERAGE_BUCKET)  # an existing bucket is used as it is (direct gets on, below)
    except Exception:  # noqa: BLE001 - missing: created
        await js.create_key_value(
            KeyValueConfig(bucket=COVERAGE_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas, direct=True,
                           description="latest coverage per person and coverage year (ledger projections)")
        )
    # Direct gets: downstream services in accounts of their own read a key by direct get only
    # (deploy/nats/accounts.conf imports no STREAM.MSG.GET); a bucket made without them gets them.
    info = await api(f"$JS.API.STREAM.INFO.KV_{COVERAGE_BUCKET}")
    if "config" in info and not info["config"].get("allow_direct"):
        updated = await api(f"$JS.API.STREAM.UPDATE.KV_{COVERAGE_BUCKET}", {**info["config"], "allow_direct": True})
        if "error" in updated:
            raise RuntimeError(f"the {COVERAGE_BUCKET} bucket refused direct gets: {updated['error']}")


class CoveragePublisher:
    """Publishes the outbox after each commit (a thread of its own; see the module docstring).

    Publication is decided **per target**. When it starts (or is activated), the publisher
    learns what each target already holds: COVERAGE up to the ledger sequence of the last
    message this ledger published there (publication is in ledger order), and the bucket key by
    key (a person's value and its ``ledger_seq``), for every row that may have gone out before:
    the outbox as it was then, and up to the last value this ledger put in the bucket. A row
    leaves the outbox only when both targets have it — so a crash between the KV put and the
    COVERAGE publish sends the COVERAGE message once on the next start, and a standby taking
    over with views built while another process published re-sends nothing either holds.

    ``active=False``: a standby's publisher, keeping the outbox without publishing it until
    ``activate()``.
    """

    BATCH = 1000
    SCAN_BACK = 4096
    """How far back (messages) a start looks in COVERAGE and the bucket for this ledger's last."""

    def __init__(
        self, database: Database, nats_url: str, *, timeout: float = 10.0, replicas: int = 1, active: bool = True,
        source: str | None = None, client: NatsClient | None = None,
    ) -> None:
        """``client``: the process's connection to share (``ledger serve``'s event store); by
        default one of its own, for ``nats_url``, closed with the publisher."""
        self.db = database
        self._own_client = client is None
        self.client = client if client is not None else NatsClient(nats_url, timeout=timeout)
        self.client.run(ensure_downstream(self.client.nc, replicas))
        # One JetStream context for the publisher's life: each context subscribes an inbox of its
        # own for publish_async's acknowledgements, and never drops it.
        self._js = self.client.nc.jetstream(timeout=self.client.timeout)
        self.published = 0
        self.source = source
        """The ledger stream (``<stream>@<created>``) the changes come from, in the messages'
        ``Ledger-Source`` header; by default the one the views are bound to."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._active = threading.Event()
        if active:
            self._active.set()
        self._resume: _Resume | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="coverage-publisher", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return self._active.is_set()

    def activate(self) -> None:
        """Start publishing (a standby taking over): what the targets hold is looked up first."""
        self._resume = None
        self._active.set()
        self._wake.set()

    def deactivate(self) -> None:
        """Stop publishing after the batch under way (this process is no longer the writer);
        the outbox keeps growing, for a later ``activate()``."""
        self._active.clear()

    def notify(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            if self._active.is_set():
                try:
                    while self._active.is_set() and self._publish_some():
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
        source = self._source()  # the database is read here, never on the store's event loop
        resume = self._resume
        if resume is None:
            backlog = self.db.query("SELECT MAX(ledger_seq) FROM outbox")[0][0] or 0
            resume = self._resume = self.client.run(self._resume_point(source, backlog), timeout=60)
        self.client.run(self._publish(rows, resume, source), timeout=60)
        with self.db.transaction():
            self.db.executemany("DELETE FROM outbox WHERE ledger_seq = ? AND person_key = ?", [(r[0], r[1]) for r in rows])
        self.published += len(rows)
        self.error = None
        return len(rows) == self.BATCH

    def _source(self) -> str | None:
        if self.source is None:
            rows = self.db.query("SELECT value FROM meta WHERE name = 'source'")
            self.source = rows[0][0] if rows else None
        return self.source

    async def _resume_point(self, source: str | None, backlog: int) -> _Resume:
        """What the targets already hold of this ledger's changes (looked up once per start)."""
        changed = await self._last_published(COVERAGE_STREAM, source)
        kv = await self._last_published(f"KV_{COVERAGE_BUCKET}", source)
        resume = _Resume(changed_through=changed, check_kv_through=max(backlog, kv))
        log.info(
            "event=publisher_resumes coverage_through=%d kv_checked_through=%d source=%s",
            resume.changed_through, resume.check_kv_through, source,
        )
        return resume

    async def _last_published(self, stream: str, source: str | None) -> int:
        """The ledger sequence of the last message of ``source`` in ``stream`` (0: none found
        within ``SCAN_BACK`` messages of its end, or no source)."""
        if source is None:
            return 0
        from nats.js.errors import NotFoundError

        js = self._js
        info = await js.stream_info(stream)
        last, first = int(info.state.last_seq), int(info.state.first_seq)
        floor = max(first, last - self.SCAN_BACK + 1, 1)

        async def get(seq: int) -> Any:
            try:
                return await js.get_msg(stream, seq)
            except NotFoundError:  # deleted (a bucket keeps a few values per key)
                return None

        page = 64
        while last >= floor:
            start = max(floor, last - page + 1)
            messages = await asyncio.gather(*(get(seq) for seq in range(start, last + 1)))
            ours = [
                int(m.headers[LEDGER_SEQ]) for m in messages
                if m is not None and m.headers and m.headers.get(LEDGER_SOURCE) == source and LEDGER_SEQ in m.headers
            ]  # fmt: skip
            if ours:
                return max(ours)
            last = start - 1
        return 0

    async def _publish(self, rows: list[tuple[Any, ...]], resume: _Resume, source: str | None) -> None:
        js = self._js
        kv = await js.key_value(COVERAGE_BUCKET) if rows[0][0] <= resume.check_kv_through else None
        in_kv: list[bool] = [False] * len(rows)
        if kv is not None:
            checked = [i for i, row in enumerate(rows) if row[0] <= resume.check_kv_through]
            found = await asyncio.gather(*(_kv_has(kv, rows[i][1], rows[i][0]) for i in checked))
            for i, has in zip(checked, found, strict=True):
                in_kv[i] = has
        acks = []
        for i, (seq, key, district, value, message) in enumerate(rows):
            headers = {LEDGER_SEQ: str(seq)}
            if source is not None:
                headers[LEDGER_SOURCE] = source
            if not in_kv[i]:
                acks.append(await js.publish_async(
                    f"$KV.{COVERAGE_BUCKET}.{key}", value.encode(), headers={**headers, "Nats-Msg-Id": f"kv/{seq}/{key}"}
                ))
            if message and seq > resume.changed_through:
                acks.append(await js.publish_async(
                    f"{CHANGED_PREFIX}.{district or 'unknown'}", message.encode(),
                    headers={**headers, "Nats-Msg-Id": f"changed/{seq}/{key}"},
                ))
        if acks:
            # Bounded: an acknowledgement lost with a crashed server must not hold publication
            # (and a graceful stop) for long; the rows stay in the outbox and go again, deduplicated.
            await asyncio.wait_for(asyncio.gather(*acks), timeout=self.client.timeout)

    def drain(self, timeout: float = 30.0) -> None:
        """Publish everything in the outbox now (used before stopping; nothing while inactive)."""
        import time

        deadline = time.monotonic() + timeout
        while self._active.is_set() and self.db.query("SELECT COUNT(*) FROM outbox")[0][0] and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)

    def close(self) -> None:
        self.drain()
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=self.client.timeout * 2 + 5)
        if self._own_client:
            self.client.close()


@dataclass(frozen=True)
class _Resume:
    """What the targets held when publication (re)started."""

    changed_through: int
    """COVERAGE holds this ledger's changes up to this ledger sequence."""
    check_kv_through: int
    """Rows up to this ledger sequence may already be in the bucket: looked up key by key."""


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
