"""The ``eventsourcing`` recorders on NATS JetStream.

- ``JetStreamAggregateRecorder``: events (or snapshots) per aggregate subject;
- ``JetStreamApplicationRecorder``: adds the application sequence (stream sequence =
  notification id) and live subscriptions;
- ``JetStreamTrackingRecorder``: tracking records on ``<prefix>.trk.<application>``;
- ``JetStreamProcessRecorder``: events and their tracking record in one atomic batch.

Tracking records take stream sequences too, so notification ids of a process recorder have
gaps (``EXPECT_CONTIGUOUS_NOTIFICATION_IDS`` does not hold for it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from ledger.jetstream.client import DirectReply
from ledger.jetstream.datastore import (
    TOPIC,
    TRACKING_ID,
    VERSION,
    Decisions,
    JetStreamDatastore,
    StreamSpec,
)

log = logging.getLogger("ledger.jetstream")

_NOTIFICATION_PAGE = 1000
_SUBSCRIPTION_BUFFER = 10_000
_POLL_SECONDS = 0.05
"""How often a reader without a live consumer (through another account's imports) asks for more."""


class JetStreamAggregateRecorder(AggregateRecorder):
    """Stored events of aggregates, one subject per aggregate, read by batched direct get."""

    def __init__(self, datastore: JetStreamDatastore, purpose: str = "events") -> None:
        self.datastore = datastore
        if purpose == "events":
            self.spec: StreamSpec = datastore.events_spec()
            self.base = f"{datastore.prefix}.evt"
        else:
            self.spec = datastore.purpose_spec(purpose)
            self.base = f"{datastore.prefix}.{purpose}"
        self.stream = self.spec.name

    def create_stream(self, *, create: bool = True) -> None:
        self.datastore.ensure_stream(self.spec, create=create)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._insert(stored_events, kwargs.get("tracking"), kwargs.get("decisions"))
        return None

    def _insert(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking | None, decisions: Decisions | None = None
    ) -> list[int]:
        """``decisions`` (not a library argument): what an ingestion decided beside its events,
        recorded in the same atomic append behind its writer's fence."""
        if not stored_events and tracking is None and decisions is None:
            return []
        return self.datastore.append(self.stream, self.base, stored_events, tracking, decisions)

    def last_versions(self, originator_ids: Sequence[UUID | str]) -> dict[UUID | str, int]:
        """The last version of each of the aggregates that exist, in a few round trips (not a
        library method: the ledger uses it, when present, to learn at once which are new)."""
        subjects = {self.datastore.aggregate_subject(self.base, i): i for i in originator_ids}
        return {
            subjects[m.subject]: int(m.headers[VERSION])
            for m in self.datastore.last_messages(self.stream, list(subjects))
        }

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        subject = self.datastore.aggregate_subject(self.base, originator_id)
        if desc and limit == 1 and lte is None:
            last = self.datastore.last_message(self.stream, subject)
            messages = [last] if last is not None else []
        else:
            messages = self.datastore.read_subject(self.stream, subject)
        events = []
        for m in messages:
            version = int(m.headers[VERSION])
            if (gt is not None and version <= gt) or (lte is not None and version > lte):
                continue
            events.append(StoredEvent(originator_id, version, m.headers[TOPIC], m.data))
        if desc:
            events.reverse()
        return events if limit is None else events[:limit]


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    """Events in the application sequence: the LEDGER stream's sequence is the notification id."""

    def __init__(self, datastore: JetStreamDatastore) -> None:
        super().__init__(datastore, "events")
        self._ahead: tuple[tuple[int, int, frozenset[str]], Future[list[Notification | int]]] | None = None
        self._ahead_lock = threading.Lock()

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, kwargs.get("tracking"), kwargs.get("decisions"))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        seq = 1 if start is None else (start if inclusive_of_start else start + 1)
        seq = max(seq, 1)
        wanted = frozenset(topics)
        notifications: list[Notification] = []
        while len(notifications) < limit and (stop is None or seq <= stop):
            count = _NOTIFICATION_PAGE if wanted else min(_NOTIFICATION_PAGE, limit - len(notifications))
            if stop is not None:
                count = min(count, stop - seq + 1)
            page = self._read_page(seq, count, wanted)
            for item in page:
                if not isinstance(item, int):
                    notifications.append(item)
                    if len(notifications) == limit:
                        break
            if len(page) < count:
                break
            last = page[-1]
            seq = (last if isinstance(last, int) else last.id) + 1
        return notifications

    def _read_page(self, seq: int, count: int, wanted: frozenset[str]) -> list[Notification | int]:
        """Messages ``seq``… as notifications (an int: the sequence of one that is not).

        Reading is sequential (replays, projections catching up), so after a full page the next
        one is requested at once, to arrive while the caller works through this one.
        """
        key = (seq, count, wanted)
        with self._ahead_lock:
            ahead, self._ahead = self._ahead, None
        page = None
        if ahead is not None:
            if ahead[0] == key:
                page = self.datastore.wait(ahead[1])
                if len(page) < count:
                    page = None  # it reached the end of the stream then; there may be more now
            else:
                ahead[1].cancel()
        if page is None:
            page = self.datastore.wait(self._start_page(seq, count, wanted))
        if len(page) == count:
            following = self._start_page(seq + count, count, wanted)
            with self._ahead_lock:
                replaced, self._ahead = self._ahead, ((seq + count, count, wanted), following)
            if replaced is not None:
                replaced[1].cancel()
        return page

    def _start_page(self, seq: int, count: int, wanted: frozenset[str]) -> Future[list[Notification | int]]:
        notification = self._notification

        def convert(msg: DirectReply) -> Notification | int:
            headers = msg.headers
            return notification(int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg, wanted)

        return self.datastore.start_reading_range(self.stream, seq, count, convert)

    def _notification(self, seq: int, subject: str, msg: Msg | DirectReply, wanted: frozenset[str]) -> Notification | int:
        """The notification stream message ``seq`` stands for, or ``seq`` itself when it stands
        for none (a tracking record, or an event of a topic not ``wanted``)."""
        headers = msg.headers
        topic = headers.get(TOPIC) if headers else None
        if headers is None or topic is None or (wanted and topic not in wanted):
            return seq
        return Notification(
            id=seq,
            originator_id=self.datastore.originator_id(self.base, subject),
            originator_version=int(headers[VERSION]),
            topic=topic,
            state=msg.data,
        )

    def max_notification_id(self) -> int | None:
        """The sequence of the stream's last event (tracking records at the end are skipped)."""
        last_seq = self.datastore.last_sequence(self.stream)
        window = 64
        while last_seq > 0:
            first = max(1, last_seq - window + 1)
            page = self.datastore.read_range(self.stream, first, last_seq - first + 1)
            for m in reversed(page):
                if TOPIC in m.headers and m.seq <= last_seq:
                    return m.seq
            last_seq = first - 1
            window = min(window * 4, _NOTIFICATION_PAGE)
        return None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return JetStreamSubscription(self, gt=gt, topics=topics)


class JetStreamSubscription(Subscription[JetStreamApplicationRecorder]):
    """Notifications after ``gt``, in order, with nothing lost however far the reader lags.

    While behind the end of the stream it reads pages by batched direct get (with read-ahead):
    the reader sets the pace, nothing piles up. At the end it follows the stream live with an
    ordered push consumer from the next sequence (a reader in another account, through its
    imports, may make no consumer: it keeps asking for pages instead). Should the reader then fall behind by more
    than the live buffer holds, the consumer is dropped at the first message that did not fit
    and reading goes back to pages from there — a push consumer outrunning its reader would
    otherwise have the client drop messages (nats-py's slow-consumer limits) that the ordered
    consumer never delivers again. When the connection reconnects (a server restarted, a
    cluster node lost), the live consumer is started again at once from the next sequence,
    instead of after the ordered consumer's missed heartbeats.

    Each switch (live → pages, live → live again) happens under ``_switch``, the lock the live
    callback holds while it buffers: the generation changes first, so no message of the old
    consumer can be buffered after its position was handed on; and every id handed out is
    above the last one (``_last_id``), so nothing is delivered twice or out of order.
    """

    def __init__(
        self,
        recorder: JetStreamApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        *,
        buffer: int | None = None,
    ):
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._buffer: queue.Queue[Notification | Exception | None] = queue.Queue(maxsize=buffer or _SUBSCRIPTION_BUFFER)
        """What the live consumer received: notifications, an exception to raise in the reader's
        thread, None when the subscription stops."""
        self._wanted = frozenset(topics)
        self._client = recorder.datastore.client
        self._next_seq = (gt or 0) + 1
        """The next stream sequence to read from pages."""
        self._last_id = gt or 0
        """The last notification id handed out."""
        self._page: deque[Notification | int | Exception] = deque()
        self._sub: Any = None
        self._switch = threading.Lock()
        self._generation = 0
        self._live_next = self._next_seq
        """The next stream sequence the current live consumer has not handed on."""
        self._behind_from: int | None = None
        """Set by the live consumer: the first sequence it could not buffer."""
        self._reconnects = self._client.nc.stats["reconnects"]
        """The connection's reconnect count the live consumer was started after."""
        self._restarting = False
        """A restart after a reconnect failed (the server may still be recovering): retried."""
        self._restart_after = 0.0
        self._restart_delay = 0.0
        self.fell_behind = 0
        """How often the reader fell behind the live consumer and went back to pages."""
        self.restarted = 0
        """How often the live consumer was started again after a reconnect."""

    # ---- reading ----------------------------------------------------------------------------

    def __next__(self) -> Notification:
        while not self._has_been_stopped:
            while self._page:
                item = self._page.popleft()
                if isinstance(item, Notification):
                    if item.id > self._last_id:
                        self._last_id = item.id
                        return item
                elif isinstance(item, Exception):  # received live, then handed over to pages
                    raise OperationalError(f"subscription failed: {item}") from item
            if self._sub is None:
                if self._restarting:
                    self._restart_live()
                    if self._restarting:
                        time.sleep(0.02)
                else:
                    self._read_page()
                continue
            try:
                received = self._buffer.get(timeout=0.05)
            except queue.Empty:
                if self._behind_from is not None:
                    self._back_to_pages()
                elif self._client.nc.stats["reconnects"] != self._reconnects:
                    self._restart_live()
                continue
            if received is None:
                break
            if isinstance(received, Exception):
                raise OperationalError(f"subscription failed: {received}") from received
            if received.id <= self._last_id:
                continue
            self._last_id = received.id
            return received
        raise StopIteration

    def _read_page(self) -> None:
        page = self._recorder._read_page(self._next_seq, _NOTIFICATION_PAGE, self._wanted)
        if page:
            last = page[-1]
            self._next_seq = (last if isinstance(last, int) else last.id) + 1
            self._page.extend(page)
        if len(page) < _NOTIFICATION_PAGE:
            if not self._client.through_imports:
                self._follow_live()
            elif not page:
                # A reader in another account (an auditor) may make no consumer: it polls pages.
                time.sleep(_POLL_SECONDS)

    def _follow_live(self) -> None:
        with self._switch:
            self._generation += 1
            self._behind_from = None
            self._live_next = self._next_seq
            generation = self._generation
        self._reconnects = self._client.nc.stats["reconnects"]
        self._sub = self._client.run(self._start(self._next_seq, generation))

    def _stop_live(self) -> int:
        """Stop buffering from the live consumer (its late messages are ignored); the buffered
        ones go to the page queue, in order. Returns the next sequence it did not hand on."""
        with self._switch:
            self._generation += 1  # first: nothing of this consumer is buffered from now on
            next_seq = self._behind_from if self._behind_from is not None else self._live_next
            self._behind_from = None
            while True:
                try:
                    item = self._buffer.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._buffer.put_nowait(item)
                    break
                self._page.append(item)
        sub, self._sub = self._sub, None
        self._unsubscribe(sub)
        return next_seq

    def _back_to_pages(self) -> None:
        self._next_seq = self._stop_live()
        self.fell_behind += 1

    def _restart_live(self) -> None:
        """The connection reconnected: follow live again from the next sequence, now."""
        now = time.monotonic()
        if now < self._restart_after:
            return
        reconnects = self._client.nc.stats["reconnects"]
        if self._sub is not None:
            self._next_seq = self._stop_live()
        self._restarting = True
        try:
            self._follow_live()
        except Exception as e:  # noqa: BLE001 - the server may still be recovering its streams
            self._sub = None
            self._restart_delay = min(1.0, max(0.05, self._restart_delay * 2))
            self._restart_after = time.monotonic() + self._restart_delay
            log.info("event=subscription_restart_failed error=%r retry_in=%.2fs", e, self._restart_delay)
            return
        self._restarting = False
        self._reconnects = reconnects
        self._restart_delay = 0.0
        self.restarted += 1

    # ---- the live consumer (on the client's event loop) -------------------------------------

    async def _start(self, first_seq: int, generation: int) -> Any:
        js = self._client.nc.jetstream(timeout=self._client.timeout)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first_seq)

        async def on_message(msg: Msg) -> None:
            self._on_message(msg, generation)

        # No filter subject: a wildcard filter makes the server walk every aggregate's subject
        # on large streams. Tracking records are skipped here instead.
        return await js.subscribe("", stream=self._recorder.stream, ordered_consumer=True, config=config, cb=on_message)

    def _on_message(self, msg: Msg, generation: int) -> None:
        if self._has_been_stopped or generation != self._generation or self._behind_from is not None:
            return
        seq = msg.metadata.sequence.stream
        notification: Notification | int | Exception
        try:
            notification = self._recorder._notification(seq, msg.subject, msg, self._wanted)
        except Exception as e:  # noqa: BLE001 - surfaced to the iterating thread
            notification = e
        with self._switch:
            if generation != self._generation or self._behind_from is not None or seq < self._live_next:
                return
            if not isinstance(notification, int):
                try:
                    self._buffer.put_nowait(notification)
                except queue.Full:
                    self._behind_from = seq  # the reader reads on from here by pages
                    return
            self._live_next = seq + 1

    # ---- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        if self._has_been_stopped:
            return
        super().stop()
        try:
            self._buffer.put_nowait(None)
        except queue.Full:
            pass
        sub, self._sub = self._sub, None
        self._unsubscribe(sub)

    def _unsubscribe(self, sub: Any) -> None:
        if sub is None:
            return
        try:
            self._client.run(sub.unsubscribe(), timeout=self._client.timeout)
        except Exception:  # noqa: BLE001 - the consumer expires on the server by itself
            pass


class JetStreamTrackingRecorder(TrackingRecorder):
    """Tracking records on the LEDGER stream, one subject per upstream application."""

    def __init__(self, datastore: JetStreamDatastore) -> None:
        self.datastore = datastore
        self.spec = datastore.events_spec()
        self.stream = self.spec.name
        self.base = f"{datastore.prefix}.evt"

    def create_stream(self, *, create: bool = True) -> None:
        self.datastore.ensure_stream(self.spec, create=create)

    def insert_tracking(self, tracking: Tracking) -> None:
        self.datastore.append(self.stream, self.base, (), tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        subject = self.datastore.tracking_subject(application_name)
        last = self.datastore.last_message(self.stream, subject)
        return int(last.headers[TRACKING_ID]) if last is not None else None


class JetStreamProcessRecorder(JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder):
    """Events and the tracking record of the notification that caused them, in one atomic batch."""

    def __init__(self, datastore: JetStreamDatastore) -> None:
        JetStreamApplicationRecorder.__init__(self, datastore)
