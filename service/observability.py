"""Operating ``ledger serve``: Prometheus metrics, liveness and readiness, JSON logs.

One small HTTP server on the service's own event loop (``asyncio.start_server``, no framework)
answers three paths:

    /metrics   Prometheus' text format (or OpenMetrics when the scraper asks for it)
    /healthz   200 while the process's event loop answers (a blocked loop answers nothing)
    /readyz    200 when connected to NATS, the projections run, and this process either writes or
               stands by behind a known writer; 503 with a JSON reason otherwise

The metrics are read from the live objects when Prometheus scrapes (``LedgerCollector``): the
ingestion's counts (``IngestService.stats``), its role and position, the views' committed
positions. What needs a NATS round trip (UPSTREAM's last sequence, the recorded position, LEDGER's
last event, REJECTED, the last signed checkpoint, the lease holder) is refreshed by a background
task every few seconds (``ClusterState``), never per scrape. Nothing on the ingestion's hot path
is added: ``docs/operations.md`` ("Metrics") lists every metric with its labels.

``JsonFormatter`` turns each log record into one JSON object (``--log-format json``), with the
``key=value`` pairs of the message as fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from consumers.ingest import UNPROCESSABLE, Journal, read_parked
from contract.subjects import (
    LEDGER_FOLLOWER,
    LEDGER_PREFIX,
    LEDGER_STREAM,
    REJECTED_STREAM,
    UPSTREAM_STREAM,
    WRITER_BUCKET,
    WRITER_KEY,
    checkpoints_stream,
)
from ledger.domain.refusals import REASONS

log = logging.getLogger("ledger.observability")

REFRESH_SECONDS = 5.0
"""How often the values that need NATS are read again."""

NATS_TIMEOUT = 2.0
"""Seconds one request of the refresh may take (NATS away: the refresh fails, is tried again)."""

QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""``coverage.query`` answers from memory take well under a millisecond; from the store, tens."""

REJECTION_REASONS = tuple(dict.fromkeys((*REASONS, UNPROCESSABLE)))
PARKING_REASONS = (UNPROCESSABLE, "held")


# ---- what the refresh reads from NATS ---------------------------------------------------------------


@dataclass
class ClusterState:
    """The values that take a NATS round trip, as last read (None: not read yet)."""

    upstream_last_seq: int | None = None
    recorded_position: int | None = None
    """The ingestion's position on the tracking subject (whoever writes)."""
    ledger_last_seq: int | None = None
    ledger_last_event: int | None = None
    rejections_recorded: int | None = None
    rejected_messages: int | None = None
    rejected_last_seq: int | None = None
    checkpoint_seq: int | None = None
    checkpoint_signed_at: float | None = None
    """Unix time of the last signed checkpoint (None: none yet, or not read yet)."""
    checkpoint_read: bool = False
    holder: str | None = None
    """Who holds the writer lease (None: nobody, or not read yet)."""
    holder_read: bool = False
    parked: int | None = None
    """Parked messages as read from LEDGER (a standby's count; the writer knows its own)."""
    refreshed_at: float | None = None
    """``time.time()`` of the last refresh that went through."""
    failures: int = 0


# ---- the HTTP server ----------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; port 0: a free one) → (host, port)."""
    parts = urlsplit(f"//{address.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise SystemExit(f"not a metrics address (HOST:PORT, e.g. 127.0.0.1:9464): {address!r}")
    return parts.hostname, port


class Observability:
    """The metrics, the health endpoints and the refresh of what they need from NATS.

    Start it early (``async with`` or ``start``) and hand it the live objects as ``serve`` builds
    them (``watch``): until then ``/readyz`` says what is missing."""

    def __init__(
        self,
        address: str,
        *,
        checkpoint_interval: float = 60.0,
        refresh_interval: float = REFRESH_SECONDS,
        ledger_stream: str = LEDGER_STREAM,
        ledger_prefix: str = LEDGER_PREFIX,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.checkpoint_interval = checkpoint_interval
        self.refresh_interval = refresh_interval
        self.ledger_stream = ledger_stream
        self.ledger_prefix = ledger_prefix
        self.started = time.time()
        self.service: Any = None
        """The ``consumers.app.IngestService``."""
        self.projections: Any = None
        """The ``projections.runner.Projections``."""
        self.queries: Any = None
        """The ``projections.queries.CoverageQueryService``."""
        self.connection: Any = None
        """A nats-py client (the broker's connection) for the refresh."""
        self.ledger: Any = None
        """The ``Ledger`` (its store reads LEDGER's last event and the parked messages)."""
        self.state = ClusterState()
        self.registry = CollectorRegistry()
        self.query_seconds = Histogram(
            "ledger_coverage_query_seconds", "Time to answer one coverage.query request", buckets=QUERY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.query_failures = Counter(
            "ledger_coverage_query_failures", "coverage.query requests answered 'unavailable' (the ledger could not answer)",
            registry=self.registry,
        )  # fmt: skip
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.collector = LedgerCollector(self)
        self.registry.register(self.collector)
        self._server: asyncio.Server | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._kv: Any = None

    # ---- wiring -------------------------------------------------------------------------------

    def watch(
        self, *, service: Any = None, projections: Any = None, queries: Any = None, connection: Any = None, ledger: Any = None
    ) -> None:
        """Observe these live objects from now on (each given once, as ``serve`` builds it)."""
        if service is not None:
            self.service = service
        if projections is not None:
            self.projections = projections
        if queries is not None:
            self.queries = queries
            queries.observe = self._observe_query
        if connection is not None:
            self.connection = connection
        if ledger is not None:
            self.ledger = ledger
            datastore = ledger.recorder.datastore
            self.ledger_stream, self.ledger_prefix = datastore.stream, datastore.prefix
        if self.connection is not None:
            self._wake.set()  # read at once what the new objects need

    def _observe_query(self, seconds: float, failed: bool) -> None:
        self.query_seconds.observe(seconds)
        if failed:
            self.query_failures.inc()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> Observability:
        self._server = await asyncio.start_server(self._answer, self.host, self.port, limit=16 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._refresher = asyncio.create_task(self._refresh_forever(), name="ledger-observability-refresh")
        log.info("event=metrics url=%s/metrics", self.url)
        return self

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> Observability:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- readiness ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        nc = self.connection
        return nc is not None and bool(nc.is_connected)

    @property
    def writing(self) -> bool:
        return self.service is not None and bool(self.service.writing)

    @property
    def holder(self) -> str | None:
        """The writer: this process while it writes, else the lease holder last read."""
        if self.writing and self.service.lease is not None:
            return str(self.service.lease.holder)
        return self.state.holder

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this process is ready to serve, and why not."""
        reasons = []
        if not self.connected:
            reasons.append("not connected to NATS")
        projections = self.projections
        if projections is None:
            reasons.append("the projections have not started")
        elif projections.runner.is_interrupted.is_set() or projections.rejections.error is not None:
            reasons.append("the projections stopped on an error")
        service = self.service
        role = "starting" if service is None else str(service.role)
        if role == "starting":
            reasons.append("the writer role is not decided yet")
        elif not self.writing and self.state.holder is None:
            reasons.append("standing by, but no writer holds the lease")
        body = {"ready": not reasons, "role": "writer" if self.writing else role, "writer": self.holder, "reasons": reasons}
        return not reasons, body

    # ---- the refresh ----------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            if self.connection is not None and not self.connection.is_closed:
                try:
                    await self.refresh()
                    if failing:
                        log.info("event=metrics_refresh_recovered")
                    failing = False
                except Exception as e:  # noqa: BLE001 - NATS away for a while: the values age, tried again
                    self.state.failures += 1
                    if not failing:
                        log.info("event=metrics_refresh_failed error=%r (the values from NATS age until it answers)", e)
                    failing = True
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_interval)

    async def refresh(self) -> None:
        """Read what needs NATS once: UPSTREAM, LEDGER, REJECTED, the last checkpoint, the lease."""
        nc = self.connection
        state = self.state

        async def request(subject: str, payload: dict[str, Any] | None = None) -> Any:
            return await nc.request(subject, json.dumps(payload).encode() if payload else b"", timeout=NATS_TIMEOUT)

        async def stream_state(stream: str) -> dict[str, Any] | None:
            info = json.loads((await request(f"$JS.API.STREAM.INFO.{stream}")).data)
            return None if "error" in info else dict(info["state"])

        async def last(stream: str, subject: str) -> Any:
            message = await request(f"$JS.API.DIRECT.GET.{stream}", {"last_by_subj": subject})
            return None if (message.headers or {}).get("Status") else message

        upstream = await stream_state(UPSTREAM_STREAM)
        state.upstream_last_seq = int(upstream["last_seq"]) if upstream else 0
        ledger = await stream_state(self.ledger_stream)
        state.ledger_last_seq = int(ledger["last_seq"]) if ledger else 0
        if ledger:
            tracked = await last(self.ledger_stream, f"{self.ledger_prefix}.trk.{LEDGER_FOLLOWER}.{UPSTREAM_STREAM}")
            state.recorded_position = int(tracked.headers.get("Ledger-Tracking-Id", "0")) if tracked is not None else 0
            filtered = json.loads((await request(f"$JS.API.STREAM.INFO.{self.ledger_stream}",
                                                 {"subjects_filter": f"{self.ledger_prefix}.rej.>"})).data)  # fmt: skip
            state.rejections_recorded = sum((filtered.get("state", {}).get("subjects") or {}).values())
        else:
            state.recorded_position = state.rejections_recorded = 0
        rejected = await stream_state(REJECTED_STREAM)
        state.rejected_messages = int(rejected["messages"]) if rejected else 0
        state.rejected_last_seq = int(rejected["last_seq"]) if rejected else 0
        signed = None
        with contextlib.suppress(Exception):  # no checkpoint stream yet: no responders
            signed = await last(checkpoints_stream(self.ledger_stream), f"{self.ledger_prefix}.checkpoint")
        if signed is not None:
            body = json.loads(signed.data).get("checkpoint", {})
            state.checkpoint_seq = int(body.get("last_seq", 0))
            state.checkpoint_signed_at = datetime.fromisoformat(body["signed_at"]).timestamp()
        state.checkpoint_read = True
        state.holder = await self._lease_holder()
        state.holder_read = True
        if self.ledger is not None:
            recorder = self.ledger.recorder
            state.ledger_last_event = 0
            if ledger:
                state.ledger_last_event = await asyncio.to_thread(recorder.max_notification_id) or 0
            if not self.writing:
                parked = await asyncio.to_thread(read_parked, recorder.datastore)
                state.parked = len(Journal(parked=parked).parked)
        state.refreshed_at = time.time()

    async def _lease_holder(self) -> str | None:
        from nats.js.errors import BucketNotFoundError, KeyNotFoundError

        try:
            if self._kv is None:
                self._kv = await self.connection.jetstream(timeout=NATS_TIMEOUT).key_value(WRITER_BUCKET)
            entry = await self._kv.get(WRITER_KEY)
        except (BucketNotFoundError, KeyNotFoundError):
            return None
        if not entry.value:
            return "?"  # taken a moment ago, its holder not written yet
        return str(json.loads(entry.value).get("holder") or "?")

    # ---- HTTP ---------------------------------------------------------------------------------------

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request (``Connection: close``): GET or HEAD of /metrics, /healthz or /readyz."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines if line)}
            status, content_type, body = self._route(method, urlsplit(target).path, headers)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, ConnectionError):
            status, content_type, body, method = 400, "text/plain; charset=utf-8", b"bad request\n", "GET"
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"GET or HEAD only\n"
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            return 200, content_type, encoder(self.registry)
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            ready, body = self.readiness()
            return (200 if ready else 503), "application/json", json.dumps(body).encode() + b"\n"
        return 404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


# ---- the metrics read at scrape time ---------------------------------------------------------------


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()


FAMILIES = [
    _Family("ledger_ingest_decided", "counter", "Upstream messages this process decided (recorded, duplicate, rejected or parked)"),
    _Family("ledger_ingest_messages", "counter", "Upstream messages this process decided, by outcome and reason", ("outcome", "reason")),
    _Family("ledger_ingest_events", "counter", "Events recorded by this process's ingestion"),
    _Family("ledger_ingest_batches", "counter", "Pulls of upstream messages this process handled"),
    _Family("ledger_ingest_retried", "counter", "Messages whose batch was retried because the store could not be reached"),
    _Family("ledger_ingest_redelivered", "counter", "Messages delivered again after their outcome was recorded (acknowledged, not decided again)"),
    _Family("ledger_writer_takeovers", "counter", "Times this process took the writer lease"),
    _Family("ledger_writer_stepdowns", "counter", "Times this process stepped down (lease lost, or fenced by a successor)"),
    _Family("ledger_coverage_queries", "counter", "coverage.query requests this process answered"),
    _Family("ledger_state_refresh_failures", "counter", "Refreshes of the values read from NATS that failed"),
    _Family("ledger_writer", "gauge", "1 while this process holds the writer lease and ingests, 0 while it stands by"),
    _Family("ledger_writer_known", "gauge", "1 when some process holds the writer lease (this one, or the holder last read)"),
    _Family("ledger_nats_connected", "gauge", "1 while this process is connected to NATS"),
    _Family("ledger_ready", "gauge", "1 when /readyz answers 200"),
    _Family("ledger_upstream_last_seq", "gauge", "UPSTREAM's last sequence (refreshed every few seconds)"),
    _Family("ledger_ingest_position", "gauge", "The highest UPSTREAM sequence whose outcome is recorded"),
    _Family("ledger_ingest_lag_messages", "gauge", "UPSTREAM's last sequence minus the ingestion's position"),
    _Family("ledger_parked_messages", "gauge", "Upstream messages parked (waiting for an operator's retry)"),
    _Family("ledger_events_last_seq", "gauge", "LEDGER's last event sequence (refreshed every few seconds)"),
    _Family("ledger_views_position", "gauge", "The last sequence this process's views committed, per stream followed", ("stream",)),
    _Family("ledger_views_lag_messages", "gauge", "How far this process's views are behind, per stream followed", ("stream",)),
    _Family("ledger_rejections_recorded", "gauge", "Rejections LEDGER holds"),
    _Family("ledger_rejected_messages", "gauge", "Rejections REJECTED holds (derived from LEDGER by the server)"),
    _Family("ledger_rejected_lag_messages", "gauge", "Rejections on LEDGER not yet on REJECTED"),
    _Family("ledger_checkpoint_age_seconds", "gauge", "Seconds since the last signed checkpoint (none yet: since this process started)"),
    _Family("ledger_checkpoint_last_seq", "gauge", "The LEDGER sequence the last signed checkpoint covers"),
    _Family("ledger_checkpoint_unsigned_messages", "gauge", "LEDGER messages after the last signed checkpoint"),
    _Family("ledger_checkpoint_interval_seconds", "gauge", "How often the writer signs a checkpoint (LEDGER_CHECKPOINT_SECONDS)"),
    _Family("ledger_state_age_seconds", "gauge", "Seconds since the values read from NATS were last refreshed"),
]


class LedgerCollector(Collector):
    """Reads the ledger's state from the live objects each time Prometheus scrapes."""

    def __init__(self, observed: Observability) -> None:
        self.observed = observed

    def describe(self) -> Iterator[Metric]:
        for family in FAMILIES:
            yield _metric(family)

    def collect(self) -> Iterator[Metric]:
        values: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        for name, labels, value in self._samples():
            if value is not None:
                values.setdefault(name, []).append((labels, float(value)))
        for family in FAMILIES:
            metric = _metric(family)
            for labels, value in values.get(family.name, []):
                metric.add_metric(list(labels), value)
            yield metric

    def _samples(self) -> Iterator[tuple[str, tuple[str, ...], float | None]]:
        o = self.observed
        state = o.state
        now = time.time()
        service = o.service
        if service is not None:
            stats = service.stats
            yield "ledger_ingest_decided", (), stats.done
            yield "ledger_ingest_messages", ("recorded", ""), stats.recorded
            yield "ledger_ingest_messages", ("duplicate", ""), stats.duplicates
            by_reason = dict(stats.by_reason)
            for reason in sorted({*REJECTION_REASONS, *by_reason}):
                yield "ledger_ingest_messages", ("rejected", reason), by_reason.get(reason, 0)
            parked_by_reason = dict(getattr(stats, "parked_by_reason", {}))
            for reason in sorted({*PARKING_REASONS, *parked_by_reason}):
                yield "ledger_ingest_messages", ("parked", reason), parked_by_reason.get(reason, 0)
            yield "ledger_ingest_events", (), stats.events
            yield "ledger_ingest_batches", (), stats.batches
            yield "ledger_ingest_retried", (), stats.retried
            yield "ledger_ingest_redelivered", (), stats.decided_before
            yield "ledger_writer_takeovers", (), stats.takeovers
            yield "ledger_writer_stepdowns", (), stats.stepped_down
        if o.queries is not None:
            yield "ledger_coverage_queries", (), o.queries.answered
        yield "ledger_state_refresh_failures", (), state.failures
        writing = o.writing
        yield "ledger_writer", (), int(writing)
        if writing or state.holder_read:
            yield "ledger_writer_known", (), int(o.holder is not None)
        yield "ledger_nats_connected", (), int(o.connected)
        yield "ledger_ready", (), int(o.readiness()[0])
        journal = service.ingestor.journal if service is not None and service.ingestor is not None else None
        position = state.recorded_position
        if writing and journal is not None:
            position = max(position or 0, journal.position)
        yield "ledger_upstream_last_seq", (), state.upstream_last_seq
        yield "ledger_ingest_position", (), position
        if state.upstream_last_seq is not None and position is not None:
            yield "ledger_ingest_lag_messages", (), max(0, state.upstream_last_seq - position)
        yield "ledger_parked_messages", (), len(journal.parked) if writing and journal is not None else state.parked
        yield "ledger_events_last_seq", (), state.ledger_last_event
        if o.projections is not None:
            views_ledger, views_rejected = o.projections.position()
            yield "ledger_views_position", (o.ledger_stream,), views_ledger
            yield "ledger_views_position", (REJECTED_STREAM,), views_rejected
            if state.ledger_last_event is not None:
                yield "ledger_views_lag_messages", (o.ledger_stream,), max(0, state.ledger_last_event - views_ledger)
            if state.rejected_last_seq is not None:
                yield "ledger_views_lag_messages", (REJECTED_STREAM,), max(0, state.rejected_last_seq - views_rejected)
        yield "ledger_rejections_recorded", (), state.rejections_recorded
        yield "ledger_rejected_messages", (), state.rejected_messages
        if state.rejections_recorded is not None and state.rejected_messages is not None:
            yield "ledger_rejected_lag_messages", (), max(0, state.rejections_recorded - state.rejected_messages)
        if state.checkpoint_read:
            signed = state.checkpoint_signed_at if state.checkpoint_signed_at is not None else o.started
            yield "ledger_checkpoint_age_seconds", (), max(0.0, now - signed)
            yield "ledger_checkpoint_last_seq", (), state.checkpoint_seq or 0
            if state.ledger_last_seq is not None:
                yield "ledger_checkpoint_unsigned_messages", (), max(0, state.ledger_last_seq - (state.checkpoint_seq or 0))
        yield "ledger_checkpoint_interval_seconds", (), o.checkpoint_interval
        if state.refreshed_at is not None:
            yield "ledger_state_age_seconds", (), max(0.0, now - state.refreshed_at)


def _metric(family: _Family) -> CounterMetricFamily | GaugeMetricFamily:
    if family.kind == "counter":
        return CounterMetricFamily(family.name, family.help, labels=list(family.labels))
    return GaugeMetricFamily(family.name, family.help, labels=list(family.labels))


def exported_names() -> set[str]:
    """Every sample name ``ledger serve`` exports (counters with ``_total``, the histogram's
    series), for checking the alert rules against."""
    names = {f"{f.name}_total" if f.kind == "counter" else f.name for f in FAMILIES}
    names |= {f"ledger_coverage_query_seconds{suffix}" for suffix in ("_bucket", "_sum", "_count")}
    names.add("ledger_coverage_query_failures_total")
    return names


# ---- logs ---------------------------------------------------------------------------------------------

_PAIR = re.compile(
    r"""(?<![\w.])([a-z_][a-z0-9_]*)="""
    r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\w+\((?:[^()]|\([^()]*\))*\)|[^\s'"]\S*|)"""
)
_INTEGER = re.compile(r"-?\d{1,18}")
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


def fields_of(message: str) -> dict[str, Any]:
    """The ``key=value`` pairs of a log message (quoted values unquoted, integers as numbers)."""
    found: dict[str, Any] = {}
    for key, raw in _PAIR.findall(message):
        if key in _RESERVED or key in found:
            continue
        value: Any = raw
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = raw[1:-1].replace(f"\\{raw[0]}", raw[0])
        elif _INTEGER.fullmatch(raw):
            value = int(raw)
        found[key] = value
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the message's
    ``key=value`` pairs as fields, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        entry.update(fields_of(message))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)
