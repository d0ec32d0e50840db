"""Reading back what the store holds, following it live, and the limits of one save."""

from __future__ import annotations

import threading
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import ProgrammingError, StoredEvent, Tracking

from ledger.jetstream.datastore import JetStreamDatastore
from ledger.jetstream.recorders import JetStreamApplicationRecorder, JetStreamProcessRecorder
from tests.conftest import Datastores


def stored(originator_id: UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, f"tests:Event{version % 3}", f'{{"v":{version}}}'.encode())


@pytest.fixture
def recorder(datastores: Datastores) -> JetStreamApplicationRecorder:
    recorder = JetStreamApplicationRecorder(datastores.new())
    recorder.create_stream()
    return recorder


def test_a_long_aggregate_reads_back_whole_and_by_version_range(recorder: JetStreamApplicationRecorder) -> None:
    aggregate_id = uuid4()
    for first in range(1, 2501, 500):  # 2,500 events: more than one page of direct get
        recorder.insert_events([stored(aggregate_id, v) for v in range(first, first + 500)])

    versions = [e.originator_version for e in recorder.select_events(aggregate_id)]
    assert versions == list(range(1, 2501))
    assert [e.originator_version for e in recorder.select_events(aggregate_id, gt=1200, lte=1203)] == [
        1201,
        1202,
        1203,
    ]
    assert [e.originator_version for e in recorder.select_events(aggregate_id, desc=True, limit=3)] == [
        2500,
        2499,
        2498,
    ]
    assert [e.originator_version for e in recorder.select_events(aggregate_id, lte=1000, desc=True, limit=1)] == [
        1000
    ]
    assert [e.originator_version for e in recorder.select_events(aggregate_id, gt=2498, limit=5)] == [2499, 2500]


def test_notifications_follow_the_stream_order_across_pages_and_topics(
    recorder: JetStreamApplicationRecorder,
) -> None:
    ids = [uuid4() for _ in range(1500)]
    for chunk in range(0, 1500, 300):
        recorder.insert_events([stored(i, 1) for i in ids[chunk : chunk + 300]])

    everything = recorder.select_notifications(start=None, limit=5000)
    assert [n.id for n in everything] == list(range(1, 1501))
    assert [n.originator_id for n in everything] == ids

    page = recorder.select_notifications(start=1000, limit=10, inclusive_of_start=False)
    assert [n.id for n in page] == list(range(1001, 1011))

    only_one_topic = recorder.select_notifications(start=None, limit=5000, topics=["tests:Event1"])
    assert len(only_one_topic) == 1500  # version 1 of every aggregate: topic tests:Event1
    assert recorder.select_notifications(start=None, limit=5000, topics=["tests:Event2"]) == []
    assert recorder.select_notifications(start=100, stop=109, limit=5000)[-1].id == 109


def test_a_process_recorder_skips_tracking_records_in_its_notifications(datastores: Datastores) -> None:
    recorder = JetStreamProcessRecorder(datastores.new())
    recorder.create_stream()
    first, second = uuid4(), uuid4()
    recorder.insert_events([stored(first, 1)], tracking=Tracking("upstream", 1))
    recorder.insert_events([], tracking=Tracking("upstream", 2))
    recorder.insert_events([stored(second, 1)], tracking=Tracking("upstream", 3))
    recorder.insert_events([], tracking=Tracking("upstream", 4))

    notifications = recorder.select_notifications(start=None, limit=10)
    assert [n.originator_id for n in notifications] == [first, second]
    assert recorder.max_notification_id() == notifications[-1].id
    assert recorder.max_tracking_id("upstream") == 4


def test_two_followers_of_one_upstream_on_one_stream_keep_their_own_positions(datastores: Datastores) -> None:
    """Given two process applications (followers "Billing" and "Audit") recording on one stream
    while both follow the application "upstream", then each has its own tracking subject: both
    record position 1, 2, … without conflicting, and each reads back its own position."""
    shared = datastores.new(follower="Billing")
    billing = JetStreamProcessRecorder(shared)
    billing.create_stream()
    audit = JetStreamProcessRecorder(
        JetStreamDatastore(shared.client, stream=shared.stream, subject_prefix=shared.prefix, follower="Audit")
    )
    billing.insert_events([stored(uuid4(), 1)], tracking=Tracking("upstream", 1))
    audit.insert_events([stored(uuid4(), 1)], tracking=Tracking("upstream", 1))
    billing.insert_events([], tracking=Tracking("upstream", 2))
    assert (billing.max_tracking_id("upstream"), audit.max_tracking_id("upstream")) == (2, 1)
    assert shared.tracking_subject("upstream") != audit.datastore.tracking_subject("upstream")


def test_a_subscription_delivers_live_events_in_order(recorder: JetStreamApplicationRecorder) -> None:
    before = uuid4()
    recorder.insert_events([stored(before, 1)])
    writers_ids = [[uuid4() for _ in range(200)] for _ in range(4)]

    def write(ids: list[UUID]) -> None:
        for aggregate_id in ids:
            recorder.insert_events([stored(aggregate_id, 1), stored(aggregate_id, 2)])

    received = []
    with recorder.subscribe(gt=1) as subscription:
        threads = [threading.Thread(target=write, args=(ids,)) for ids in writers_ids]
        for t in threads:
            t.start()
        for notification in subscription:
            received.append(notification)
            if len(received) == 4 * 200 * 2:
                break
        for t in threads:
            t.join()

    assert [n.id for n in received] == list(range(2, 2 + 1600)), "in stream order, none missed"
    assert before not in {n.originator_id for n in received}
    by_aggregate: dict[UUID, list[int]] = {}
    for n in received:
        by_aggregate.setdefault(n.originator_id, []).append(n.originator_version)
    assert all(versions == [1, 2] for versions in by_aggregate.values())
    assert len(by_aggregate) == 800


def test_a_save_larger_than_an_atomic_batch_is_refused_whole(recorder: JetStreamApplicationRecorder) -> None:
    aggregate_id = uuid4()
    with pytest.raises(ProgrammingError, match="atomic batch limit of 1000"):
        recorder.insert_events([stored(aggregate_id, v) for v in range(1, 1002)])
    assert recorder.select_events(aggregate_id) == []
    assert recorder.max_notification_id() is None

    recorder.insert_events([stored(aggregate_id, v) for v in range(1, 1001)])  # the limit itself is fine
    assert recorder.max_notification_id() == 1000


def test_a_subscription_whose_reader_falls_far_behind_loses_nothing(datastores: Datastores, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live reader slower than the writers: the small live buffer overflows, the subscription
    goes back to reading pages from the first message that did not fit, and every notification
    still arrives once, in order (a push consumer left to run ahead would have the client drop
    messages the ordered consumer never sends again)."""
    import time as _time
    import uuid as _uuid

    from eventsourcing.persistence import StoredEvent

    from ledger.jetstream import recorders

    monkeypatch.setattr(recorders, "_SUBSCRIPTION_BUFFER", 20)
    recorder = recorders.JetStreamApplicationRecorder(datastores.new())
    recorder.create_stream()
    recorder.insert_events([StoredEvent(_uuid.uuid4(), 1, "topic", b"{}") for _ in range(50)])
    subscription = recorder.subscribe(gt=None)
    received: list[int] = []
    with subscription:
        for notification in subscription:
            received.append(notification.id)
            if len(received) == 50:  # caught up and following live: now writers race ahead
                for _ in range(6):
                    recorder.insert_events([StoredEvent(_uuid.uuid4(), 1, "topic", b"{}") for _ in range(200)])
            if len(received) < 120:
                _time.sleep(0.002)  # a slow reader
            if len(received) == 1250:
                break
    assert received == list(range(1, 1251))
    assert subscription.fell_behind >= 1, "the live buffer overflowed and reading went back to pages"
