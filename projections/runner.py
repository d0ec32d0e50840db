"""Running the projections: live beside ``ledger serve``, or as a replay for auditors.

``Projections`` starts the library's ``ProjectionRunner`` (the ``LedgerProjection`` subscribed
to the JetStream recorder of the LEDGER stream, its view the SQL database), a reader of the
REJECTED stream into the same views (its own tracking row), and, when asked, the downstream
publisher. ``replay`` rebuilds every view from the start of both streams into a database of its
own and stops when it has caught up with what the streams held when it started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.projection import ProjectionRunner

from contract.rejection import decode_rejection
from contract.subjects import LEDGER_STREAM, REJECTED_STREAM
from ledger.application import Ledger
from ledger.domain.policy import RegionPolicy
from ledger.jetstream import tls as nats_tls
from ledger.jetstream.client import JS_API, DirectReply, NatsClient, NatsUnavailableError
from projections.database import Database
from projections.downstream import CoveragePublisher
from projections.projection import LedgerProjection
from projections.views import REJECTED_TRACKING, LedgerViews

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

log = logging.getLogger("ledger.projections")



def views_env(ledger_env: dict[str, str], views_url: str) -> dict[str, str]:
    """The runner's environment: the ledger's store for the application, the view database
    (prefixed with the projection's name, as the library reads it) for the view."""
    name = LedgerProjection.name.upper()
    return {**ledger_env, f"{name}_PERSISTENCE_MODULE": "projections.views:ViewsFactory", f"{name}_VIEWS_URL": views_url}


class _Rejected(NamedTuple):
    """One REJECTED message as read: from the ordered consumer, or by direct get."""

    seq: int
    subject: str
    data: bytes
    recorded: datetime | None

    @classmethod
    def of_msg(cls, msg: Msg) -> _Rejected:
        recorded = msg.metadata.timestamp
        return cls(msg.metadata.sequence.stream, msg.subject, msg.data, recorded if isinstance(recorded, datetime) else None)

    @classmethod
    def of_direct(cls, msg: DirectReply) -> _Rejected:
        headers = msg.headers
        return cls(int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg.data, _stamped(headers.get("Nats-Time-Stamp")))


def _stamped(stamp: str | None) -> datetime | None:
    """A direct get's ``Nats-Time-Stamp`` (RFC 3339, nanoseconds) as the consumer's metadata
    gives the same instant (nats-py: nanoseconds / 1e9)."""
    if not stamp:
        return None
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = int(datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    nanos = seconds * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))
    return datetime.fromtimestamp(nanos / 1_000_000_000.0, UTC)


class RejectionsReader:
    """REJECTED messages into the ``rejections`` view (and the rejection-based fraud flags),
    from just after the last one the views committed, in stream order.

    It follows REJECTED on ``client`` — the process's connection to the store, on that client's
    event loop, like the event store and the publisher — and hands each message to a plain thread
    of its own that stages it in the views (staging may wait for a commit: never on the loop).
    A client reading through another account's imports (an auditor's replay), which may make no
    consumer, reads REJECTED by batched direct get instead."""

    DIRECT_BATCH = 256
    POLL_SECONDS = 0.1

    QUEUE_LIMIT = 2000
    """Rejections read ahead of the staging thread at most."""

    def __init__(self, client: NatsClient, projection: LedgerProjection, *, stream: str = REJECTED_STREAM) -> None:
        self.client = client
        self.projection = projection
        self.view = projection.view
        self.stream = stream
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._last = self.view.max_tracking_id(REJECTED_TRACKING) or 0
        """The last REJECTED sequence staged."""
        self._received = self._last
        """The last REJECTED sequence handed to the staging thread (the loop's)."""
        self._generation = 0
        self._queue: queue.SimpleQueue[_Rejected | None] = queue.SimpleQueue()
        self._reconnected = threading.Event()
        self._listening = [client.on_reconnected(self._reconnected.set), client.on_error(self._on_error)]
        self._thread = threading.Thread(target=self._stage_each, name="rejections-reader", daemon=True)
        self._thread.start()
        try:
            self._reading = client.start(self._read())
        except BaseException:
            for stop_listening in self._listening:
                stop_listening()
            self._queue.put(None)
            raise

    def _on_error(self, e: Exception) -> None:
        import nats

        sub = self._sub  # its sid changes when the ordered consumer resets itself
        if isinstance(e, nats.errors.SlowConsumerError) and sub is not None and getattr(e, "sid", None) == sub._id:
            # Never silently lost: a rejection the client dropped stops the projections loudly.
            self._fail(RuntimeError(f"rejections reader fell behind and lost messages: {e!r}"))

    _sub: Any = None

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
            log.error("event=rejections_reader_failed error=%r", e)
        self._stop.set()

    def _stage_each(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None or self.error is not None:
                return
            try:
                self._on(msg)
            except BaseException as e:  # noqa: BLE001 - reported by the owner
                self._fail(e)
                return

    async def _read(self) -> None:
        import nats

        if self.client.through_imports:
            await self._poll()
            return
        try:
            js = self.client.nc.jetstream()
            sub = None
            while not self._stop.is_set():
                try:
                    # Every message of the stream (its subjects are ledger.rejected.<reason>).
                    sub = await self._follow(js)
                    break
                except nats.js.errors.NotFoundError:
                    await asyncio.sleep(0.5)  # the stream is created by the ingestion
                except (nats.errors.Error, OSError, TimeoutError) as e:
                    # Not connected at this moment (the store's connection does not buffer while
                    # it reconnects): tried again, as after a reconnection.
                    log.info("event=rejections_follow_failed error=%r (retrying)", e)
                    await asyncio.sleep(0.25)
            else:
                return
            while not self._stop.is_set():
                if self._reconnected.is_set():
                    # A server restarted: follow again from the next sequence now, instead of
                    # when the ordered consumer has missed enough heartbeats to reset itself.
                    self._reconnected.clear()
                    old, sub = sub, None
                    if old is not None:  # (None: following again failed the last time)
                        try:
                            await old.unsubscribe()
                        except Exception:  # noqa: BLE001 - the old consumer expires on the server
                            pass
                    try:
                        sub = await self._follow(js)
                    except Exception as e:  # noqa: BLE001 - JetStream may still be recovering: retried
                        log.info("event=rejections_resubscribe_failed error=%r", e)
                        self._reconnected.set()
                        await asyncio.sleep(0.1)
                await asyncio.sleep(0.05)
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:  # noqa: BLE001 - closing: the ordered consumer expires on the server
                    pass
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                self._fail(e)
            raise

    async def _poll(self) -> None:
        """REJECTED by batched direct get from just after the last rejection read, until stopped."""
        try:
            while not self._stop.is_set():
                try:
                    page = await self.client.direct_get(
                        self.stream, {"seq": self._received + 1, "batch": self.DIRECT_BATCH}, batch=True, convert=_Rejected.of_direct
                    )
                except NatsUnavailableError as e:  # not connected at this moment, or no stream yet
                    log.info("event=rejections_read_failed error=%r (retrying)", e)
                    page = []
                for read in page:
                    if read.seq > self._received:
                        self._received = read.seq
                        self._queue.put(read)
                while self._queue.qsize() > self.QUEUE_LIMIT and not self._stop.is_set():
                    await asyncio.sleep(0.01)
                if len(page) < self.DIRECT_BATCH:
                    await asyncio.sleep(self.POLL_SECONDS)
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                self._fail(e)
            raise

    async def _follow(self, js: JetStreamContext) -> JetStreamContext.PushSubscription:
        """An ordered consumer from just after the last rejection read (its late messages, once
        another replaced it, are ignored)."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        self._generation += 1
        generation = self._generation
        after = self._received
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after else None,
        )

        async def on(msg: Msg) -> None:
            seq = msg.metadata.sequence.stream
            if generation == self._generation and seq > self._received:
                self._received = seq
                self._queue.put(_Rejected.of_msg(msg))
                # Backpressure: a long catch-up waits here (this subscription's delivery only,
                # not the loop) rather than holding the whole stream in memory.
                while self._queue.qsize() > self.QUEUE_LIMIT and not self._stop.is_set():
                    await asyncio.sleep(0.01)

        sub = await js.subscribe("", stream=self.stream, ordered_consumer=True, config=config, cb=on)
        self._sub = sub
        return sub

    def _on(self, msg: _Rejected) -> None:
        seq = msg.seq
        try:
            rejection = decode_rejection(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            rejection = None
        recorded = msg.recorded
        recorded_at = recorded.isoformat() if isinstance(recorded, datetime) else None
        if rejection is not None:
            self.view.stage(
                "rejections",
                (seq, rejection.person_key, rejection.reason, rejection.subject, rejection.msg_id, rejection.detail, recorded_at),
            )
            self.projection.fraud.on_rejection(
                rejection.reason, rejection.person_key, seq, rejection.detail,
                recorded if isinstance(recorded, datetime) else None, rejection.subject,
            )
        else:
            self.view.stage("rejections", (seq, None, "unreadable", msg.subject, None, "not a rejection record", recorded_at))
        self.view.insert_tracking(Tracking(REJECTED_TRACKING, seq))
        self._last = seq

    def stop(self) -> None:
        self._stop.set()
        try:
            self._reading.result(timeout=10)  # unsubscribed
        except Exception:  # noqa: BLE001 - stopping: an error was reported when it happened
            self._reading.cancel()
        for stop_listening in self._listening:
            stop_listening()
        self._queue.put(None)
        self._thread.join(timeout=10)


class Projections:
    """The live projections of one ledger: runner, rejections reader, downstream publisher."""

    def __init__(
        self,
        *,
        ledger_env: dict[str, str],
        views_url: str,
        nats_url: str,
        policy: RegionPolicy,
        loader: Ledger,
        publish: bool = True,
        until: datetime | None = None,
        rejected_stream: str = REJECTED_STREAM,
        replicas: int = 1,
        standby: bool = False,
    ) -> None:
        """``standby``: keep the outbox (with ``publish``) but publish it only once
        ``publisher.activate()`` is called (a standby taking over).

        One connection to the store per process: the ledger's own (its event store), shared by
        the runner's reader of LEDGER, the rejections reader and the publisher, and given back
        last by ``close``."""
        self._closed = False
        self._client = _shared_client(loader, nats_url)
        try:
            source = _stream_source(self._client, ledger_env.get("NATS_STREAM", LEDGER_STREAM))
            if source is not None:
                views = LedgerViews(Database.open(views_url))
                try:
                    views.bind(source)
                finally:
                    views.close()
            projection_class = LedgerProjection.configured(policy=policy, load=_loader(loader), until=until, publish=publish)
            with ExitStack() as started:
                self.runner: ProjectionRunner[Ledger, LedgerViews] = started.enter_context(
                    ProjectionRunner(
                        application_class=Ledger,
                        projection_class=projection_class,
                        view_class=LedgerViews,
                        env=views_env(ledger_env, views_url),
                    )
                )
                self.view: LedgerViews = self.runner.view
                projection = self.runner.projection
                assert isinstance(projection, LedgerProjection)  # made from projection_class
                self.projection = projection
                self.publisher: CoveragePublisher | None = None
                if publish:
                    self.publisher = CoveragePublisher(
                        self.view.db, nats_url, replicas=replicas, active=not standby, source=source, client=self._client
                    )
                    self.view.after_commit(self.publisher.notify)
                self.rejections = RejectionsReader(self._client, self.projection, stream=rejected_stream)
                self._runner_exit = started.pop_all()
                """Stops the runner (its subscription and thread); closed by ``close``, or here at
                once when a later part fails to start."""
        except BaseException:
            self._client.close()
            raise

    def position(self) -> tuple[int, int]:
        """The committed positions: (LEDGER sequence, REJECTED sequence)."""
        return (self.view.max_tracking_id(Ledger.name) or 0, self.view.max_tracking_id(REJECTED_TRACKING) or 0)

    def wait(self, ledger_seq: int, rejected_seq: int = 0, timeout: float = 30.0) -> None:
        """Block until the views have committed both positions (raises ``TimeoutError``)."""
        deadline = time.monotonic() + timeout
        self.runner.wait(ledger_seq, timeout=max(0.0, deadline - time.monotonic()))
        if rejected_seq:
            self.view.wait(REJECTED_TRACKING, rejected_seq, timeout=max(0.01, deadline - time.monotonic()))

    def check(self) -> None:
        """Raise the error that stopped a part, if any."""
        if self.runner.is_interrupted.is_set():
            self.runner.run_forever(timeout=0)
        if self.rejections.error is not None:
            raise self.rejections.error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.rejections.stop()
        try:
            self._runner_exit.close()
        finally:
            try:
                self.view.commit()
                if self.publisher is not None:
                    self.publisher.close()
            finally:
                try:
                    self.view.close()
                finally:
                    self._client.close()


def _shared_client(loader: Ledger, nats_url: str) -> NatsClient:
    """The ledger's own connection to its store when it is on ``nats_url`` (the process's one),
    else the process's shared client for ``nats_url``; the caller closes (gives back) it."""
    datastore = getattr(loader.recorder, "datastore", None)
    store_client = getattr(datastore, "client", None)
    if isinstance(store_client, NatsClient) and store_client.url == nats_url:
        return store_client.acquire()
    return NatsClient.shared(nats_url)


def _loader(ledger: Ledger) -> Callable[[Any, int], Any]:
    def load(aggregate_id: Any, version: int) -> Any:
        return ledger.repository.get(aggregate_id, version=version)

    return load


@dataclass(frozen=True)
class ReplayResult:
    ledger_events: int
    rejections: int
    seconds: float
    views_url: str

    @property
    def rate(self) -> float:
        return self.ledger_events / self.seconds if self.seconds else 0.0


def _stream_source(client: NatsClient, stream: str) -> str | None:
    """``stream_source`` asked on the process's client."""
    info = client.run(client.api(f"$JS.API.STREAM.INFO.{stream}"))
    if "error" in info:
        return None
    return f"{stream}@{info['created']}"


def stream_source(nats_url: str, stream: str) -> str | None:
    """``<stream>@<creation time>``: which stream, and which incarnation of it (None: no stream yet)."""
    async def ask() -> str | None:
        nc = await nats_tls.connect(nats_url)
        try:
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=10)
            info = json.loads(reply.data)
            if "error" in info:
                return None
            return f"{stream}@{info['created']}"
        finally:
            await nc.close()

    return asyncio.run(ask())


def stream_last_seq(nats_url: str, stream: str, api_prefix: str = JS_API) -> int:
    """The last sequence of ``stream`` now (0 when it is empty or missing); ``api_prefix``: where
    the JetStream API is (``NATS_API_PREFIX``: an auditor's import of it)."""
    import nats

    async def ask() -> int:
        nc = await nats_tls.connect(nats_url)
        try:
            try:
                info = await nc.jetstream(prefix=api_prefix).stream_info(stream)
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.state.last_seq)
        finally:
            await nc.close()

    return asyncio.run(ask())


def replay(
    *,
    ledger_env: dict[str, str],
    views_url: str,
    nats_url: str,
    policy: RegionPolicy,
    loader: Ledger,
    until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    rejected_stream: str = REJECTED_STREAM,
    stop_after: int | None = None,
) -> ReplayResult:
    """Rebuild the views from the start of LEDGER and REJECTED into ``views_url`` (resuming a
    replay database that was interrupted), up to the streams' ends at the start.

    ``progress(done, total)`` is called a few times a second. ``stop_after`` stops early once
    that LEDGER sequence is committed (to test an interrupted replay)."""
    ledger_end = loader.recorder.max_notification_id() or 0
    rejected_end = stream_last_seq(nats_url, rejected_stream, ledger_env.get("NATS_API_PREFIX") or JS_API)
    started = time.perf_counter()
    projections = Projections(
        ledger_env=ledger_env, views_url=views_url, nats_url=nats_url, policy=policy, loader=loader,
        publish=False, until=until, rejected_stream=rejected_stream,
    )
    start_ledger, start_rejected = projections.position()
    target = ledger_end if stop_after is None else min(ledger_end, stop_after)
    try:
        while True:
            projections.check()
            done_ledger, done_rejected = projections.position()
            if progress is not None:
                progress(done_ledger, ledger_end)
            if done_ledger >= target and (stop_after is not None or done_rejected >= rejected_end):
                break
            if done_ledger < target:
                try:
                    projections.view.wait(Ledger.name, target, timeout=0.2)
                except TimeoutError:
                    pass
            else:
                time.sleep(0.05)
    finally:
        projections.close()
    done_ledger, done_rejected = view_positions(views_url)
    return ReplayResult(
        ledger_events=done_ledger - start_ledger,
        rejections=done_rejected - start_rejected,
        seconds=time.perf_counter() - started,
        views_url=views_url,
    )


def view_positions(views_url: str) -> tuple[int, int]:
    """The committed positions of the views at ``views_url``: (LEDGER sequence, REJECTED sequence)."""
    from projections.database import Database

    db = Database.open(views_url)
    try:
        rows = dict(db.query("SELECT application_name, notification_id FROM tracking"))
    finally:
        db.close()
    return int(rows.get(Ledger.name, 0)), int(rows.get(REJECTED_TRACKING, 0))
