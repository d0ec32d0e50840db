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

import asyncio
import queue
import threading
from concurrent.futures import Future
from collections.abc import Sequence
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

from ledger.jetstream.datastore import (
    TOPIC,
    TRACKING_ID,
    VERSION,
    JetStreamDatastore,
    StreamSpec,
)

_NOTIFICATION_PAGE = 1000
_SUBSCRIPTION_BUFFER = 10_000


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
        self._insert(stored_events, kwargs.get("tracking"))
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        if not stored_events and tracking is None:
            return []
        return self.datastore.append(self.stream, self.base, stored_events, tracking)

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
        return self._insert(stored_events, kwargs.get("tracking"))

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
                if type(item) is not int:
                    notifications.append(item)
                    if len(notifications) == limit:
                        break
            if len(page) < count:
                break
            last = page[-1]
            seq = (last if type(last) is int else last.id) + 1
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

        def convert(msg: Msg) -> Notification | int:
            headers = msg.headers
            return notification(int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg, wanted)

        return self.datastore.start_reading_range(self.stream, seq, count, convert)

    def _notification(self, seq: int, subject: str, msg: Msg, wanted: frozenset[str]) -> Notification | int:
        """The notification stream message ``seq`` stands for, or ``seq`` itself when it stands
        for none (a tracking record, or an event of a topic not ``wanted``)."""
        headers = msg.headers
        topic = headers.get(TOPIC) if headers else None
        if topic is None or (wanted and topic not in wanted):
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
    """Live notifications after ``gt``, in order, from an ordered push consumer on the stream."""

    _STOP = object()

    def __init__(self, recorder: JetStreamApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()):
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._buffer: queue.Queue[Any] = queue.Queue(maxsize=_SUBSCRIPTION_BUFFER)
        self._wanted = frozenset(topics)
        client = recorder.datastore.client
        self._client = client
        self._sub = client.run(self._start(gt))

    async def _start(self, gt: int | None) -> Any:
        js = self._client.nc.jetstream(timeout=self._client.timeout)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if gt else DeliverPolicy.ALL,
            opt_start_seq=gt + 1 if gt else None,
        )
        # No filter subject: a wildcard filter makes the server walk every aggregate's subject
        # on large streams. Tracking records are skipped here instead.
        return await js.subscribe(
            "",
            stream=self._recorder.stream,
            ordered_consumer=True,
            config=config,
            cb=self._on_message,
        )

    async def _on_message(self, msg: Any) -> None:
        if self._has_been_stopped:
            return
        try:
            notification = self._recorder._notification(
                msg.metadata.sequence.stream, msg.subject, msg, self._wanted
            )
        except Exception as e:  # noqa: BLE001 - surfaced to the iterating thread
            notification = e
        if type(notification) is int:
            return
        while True:  # back-pressure: hold the consumer (flow control) while the reader lags
            try:
                self._buffer.put_nowait(notification)
                return
            except queue.Full:
                if self._has_been_stopped:
                    return
                await asyncio.sleep(0.005)

    def stop(self) -> None:
        if self._has_been_stopped:
            return
        super().stop()
        try:
            self._buffer.put_nowait(self._STOP)
        except queue.Full:
            pass
        try:
            self._client.run(self._sub.unsubscribe(), timeout=self._client.timeout)
        except Exception:  # noqa: BLE001 - the consumer expires on the server by itself
            pass

    def __next__(self) -> Notification:
        while not self._has_been_stopped:
            item = self._buffer.get()
            if item is self._STOP:
                break
            if isinstance(item, BaseException):
                raise OperationalError(f"subscription failed: {item}") from item
            return item
        raise StopIteration


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
