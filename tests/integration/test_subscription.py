"""The live subscription of the LEDGER stream (``JetStreamSubscription``), on real nats-servers:
never a notification twice or out of order, and prompt again after a server restart (issue 11,
part 4)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from eventsourcing.persistence import StoredEvent

from ledger.jetstream import recorders
from ledger.jetstream.client import NatsClient
from ledger.jetstream.datastore import JetStreamDatastore
from ledger.jetstream.server import EmbeddedNatsServer
from tests.conftest import Datastores, unique_names
from tests.integration.ingest_support import wait_for


def events(count: int) -> list[StoredEvent]:
    return [StoredEvent(uuid.uuid4(), 1, "topic", b"{}") for _ in range(count)]


def descheduled_when_falling_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader thread loses the CPU for 2 ms at the moment it falls back to pages (counting
    the fallback), as the OS may deschedule it at any instant: late messages of the live
    consumer it is leaving keep arriving meanwhile on the client's event loop."""

    def get(self: recorders.JetStreamSubscription) -> int:
        return self.__dict__.get("_fell_behind_count", 0)

    def set_(self: recorders.JetStreamSubscription, value: int) -> None:
        self.__dict__["_fell_behind_count"] = value
        if value:
            time.sleep(0.002)

    monkeypatch.setattr(recorders.JetStreamSubscription, "fell_behind", property(get, set_), raising=False)


def test_falling_back_from_live_to_pages_never_delivers_a_notification_twice_or_out_of_order(
    datastores: Datastores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a live subscription whose buffer holds only 3 notifications, and writers appending
    while the reader keeps falling behind, and is descheduled for a moment at each fallback to
    pages (late live messages race it),
    when it reads 6,000 notifications,
    then their ids are exactly 1…6000: strictly increasing, none twice, none missing."""
    monkeypatch.setattr(recorders, "_SUBSCRIPTION_BUFFER", 3)
    descheduled_when_falling_back(monkeypatch)
    recorder = recorders.JetStreamApplicationRecorder(datastores.new())
    recorder.create_stream()
    total = 6000
    stop = threading.Event()

    def write() -> None:
        written = 0
        while written < total and not stop.is_set():
            recorder.insert_events(events(20))
            written += 20
            time.sleep(0.001)

    writer = threading.Thread(target=write, daemon=True)
    received: list[int] = []
    subscription = recorder.subscribe(gt=None)
    assert isinstance(subscription, recorders.JetStreamSubscription)
    deadline = time.monotonic() + 120
    with subscription:
        writer.start()
        for notification in subscription:
            received.append(notification.id)
            if len(received) % 50 == 0:
                time.sleep(0.002)  # a reader a little slower than the writer now and then
            if len(received) >= total or time.monotonic() > deadline:
                break
    stop.set()
    writer.join(30)

    duplicates = len(received) - len(set(received))
    disordered = sum(1 for a, b in zip(received, received[1:], strict=False) if b <= a)
    assert duplicates == 0 and disordered == 0, (
        f"{duplicates} delivered twice, {disordered} out of order in {len(received)} "
        f"({subscription.fell_behind} fallbacks to pages)"
    )
    assert received == list(range(1, total + 1))
    assert subscription.fell_behind >= 10, "the reader fell behind the live consumer again and again"


RESTART_TIMEOUT = 5.0
"""Generous for a prompt resubscription (measured: well under a second on two cores), short of
the ordered consumer's own recovery by missed heartbeats (1–17 s measured before)."""


def test_after_a_server_restart_the_live_subscription_delivers_new_events_at_once(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """Given a subscription following the LEDGER stream live,
    when the nats-server restarts (same port, same store) and a new event is appended,
    then the subscription delivers it within a few seconds (it resubscribes on the reconnect
    instead of waiting for missed heartbeats), and nothing twice or out of order."""
    server = EmbeddedNatsServer(tmp_path / "nats").start()
    stream, prefix = unique_names()
    clients = [NatsClient(server.url, timeout=2.0) for _ in range(2)]
    try:
        reading, writing = (JetStreamDatastore(c, stream=stream, subject_prefix=prefix) for c in clients)
        reader = recorders.JetStreamApplicationRecorder(reading)
        writer = recorders.JetStreamApplicationRecorder(writing)
        writer.create_stream()
        writer.insert_events(events(10))
        arrived: dict[int, float] = {}
        order: list[int] = []
        subscription = reader.subscribe(gt=None)
        assert isinstance(subscription, recorders.JetStreamSubscription)

        def read() -> None:
            for notification in subscription:
                order.append(notification.id)
                arrived[notification.id] = time.monotonic()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            wait_for(lambda: len(order) == 10, 10, "the first events, read live")
            writer.insert_events(events(1))
            wait_for(lambda: len(order) == 11, 10, "a live event before the restart")

            # When the server restarts and a new event is appended
            server.stop()
            server.start()
            back = time.monotonic()
            appended, sent_at = append_when_possible(writer, 30)
            waited = wait_for(lambda: appended in arrived, RESTART_TIMEOUT, "the event after the restart", raising=False)
            if waited:  # the figures for the note (no assertion on them)
                lag = arrived[appended] - sent_at
                record_property("delivery_after_append_s", round(lag, 3))
                record_property("delivery_after_server_back_s", round(arrived[appended] - back, 3))
                print(f"\nafter the restart: appended {sent_at - back:.3f} s after the server was back, delivered {lag:.3f} s later")
            assert waited, f"the event appended after the restart was not delivered within {RESTART_TIMEOUT} s"
            writer.insert_events(events(5))
            wait_for(lambda: len(order) == appended + 5, 10, "more events after the restart")
        finally:
            subscription.stop()
            thread.join(10)
        assert order == list(range(1, len(order) + 1)), "in order, none twice, none missing"
    finally:
        for client in clients:
            client.close()
        server.stop()


def append_when_possible(recorder: recorders.JetStreamApplicationRecorder, timeout: float) -> tuple[int, float]:
    """Append one event as soon as the restarted server takes it: its notification id, and when
    the successful append was started."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            started = time.monotonic()
            (seq,) = recorder.insert_events(events(1)) or (0,)
            return seq, started
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
