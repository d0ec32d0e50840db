"""The event store's promises, each on a real nats-server started by the test.

An application runs end to end on it; acknowledged events survive a crash of the server; a save
is all or nothing; concurrent writers to one aggregate get one winner per version; the LEDGER
stream is never accepted with weaker settings; an unreachable server is an error, not a hang.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent

from ledger.jetstream import JetStreamFactory
from ledger.jetstream.datastore import StreamSettingsError
from ledger.jetstream.recorders import JetStreamApplicationRecorder
from ledger.jetstream.server import EmbeddedNatsServer, free_port
from tests.conftest import Datastores, unique_names


class Account(Aggregate):
    """A small aggregate for the end-to-end tests."""

    @event("Opened")
    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.balance_fen = 0

    @event("Credited")
    def credit(self, amount_fen: int) -> None:
        self.balance_fen += amount_fen


class Bank(Application[UUID]):
    snapshotting_intervals = {Account: 5}

    def open(self, holder: str) -> UUID:
        account = Account(holder)
        self.save(account)
        return account.id

    def credit(self, account_id: UUID, amount_fen: int) -> None:
        account: Account = self.repository.get(account_id)
        account.credit(amount_fen)
        self.save(account)


def app_env(url: str, **extra: str) -> dict[str, str]:
    stream, prefix = unique_names()
    return {
        "PERSISTENCE_MODULE": "ledger.jetstream",
        "NATS_URL": url,
        "NATS_STREAM": stream,
        "NATS_SUBJECT_PREFIX": prefix,
        "IS_SNAPSHOTTING_ENABLED": "yes",
        **extra,
    }


def stored(originator_id: UUID, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Event", state)


def test_application_with_snapshots_runs_end_to_end(nats_server: EmbeddedNatsServer) -> None:
    env = app_env(nats_server.url)
    bank = Bank(env=env)
    try:
        account_id = bank.open("合肥 resident")
        for _ in range(11):
            bank.credit(account_id, 320_00)

        account: Account = bank.repository.get(account_id)
        assert account.version == 12
        assert account.balance_fen == 11 * 320_00
        assert account.holder == "合肥 resident"

        assert bank.snapshots is not None
        snapshots = list(bank.snapshots.get(account_id))
        assert [s.originator_version for s in snapshots] == [5, 10]
        past: Account = bank.repository.get(account_id, version=7)
        assert past.balance_fen == 6 * 320_00

        notifications = bank.recorder.select_notifications(start=None, limit=100)
        assert [n.id for n in notifications] == list(range(1, 13))
        assert bank.recorder.max_notification_id() == 12
    finally:
        bank.close()

    # A second process (another application object) sees the same history.
    again = Bank(env=env)
    try:
        assert again.repository.get(account_id).balance_fen == 11 * 320_00
    finally:
        again.close()


def test_acknowledged_events_survive_a_crash_of_the_server(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats", sync_interval="always").start()
    env = app_env(server.url, NATS_TIMEOUT="2")
    bank = Bank(env=env)
    try:
        ids = [bank.open(f"person {i}") for i in range(50)]
        for account_id in ids:
            bank.credit(account_id, 100)

        server.kill()  # SIGKILL: no clean shutdown, no flush
        with pytest.raises(OperationalError):
            bank.credit(ids[0], 100)
        server.start()  # same port, same data directory

        deadline = time.monotonic() + 10
        while True:  # the client reconnects by itself
            try:
                loaded = [bank.repository.get(account_id) for account_id in ids]
                break
            except OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert all(account.balance_fen == 100 for account in loaded)
        assert bank.recorder.max_notification_id() == 100

        bank.credit(ids[0], 100)  # appends continue where they stopped
        assert bank.repository.get(ids[0]).balance_fen == 200
        assert bank.recorder.max_notification_id() == 101
    finally:
        bank.close()
        server.stop()


def test_a_save_touching_two_aggregates_where_one_conflicts_records_nothing(datastores: Datastores) -> None:
    recorder = JetStreamApplicationRecorder(datastores.new())
    recorder.create_stream()
    first, second = uuid4(), uuid4()
    recorder.insert_events([stored(first, 1)])

    # A stale writer of `first` and a new aggregate, in one save.
    other = JetStreamApplicationRecorder(datastores.new_client_on(recorder.datastore))
    with pytest.raises(IntegrityError):
        other.insert_events([stored(second, 1), stored(first, 1, b'{"stale":true}')])

    assert recorder.select_events(second) == []
    assert [e.state for e in recorder.select_events(first)] == [b"{}"]
    assert recorder.max_notification_id() == 1


def test_concurrent_writers_to_one_aggregate_get_one_winner_per_version(datastores: Datastores) -> None:
    datastore = datastores.new()
    recorder = JetStreamApplicationRecorder(datastore)
    recorder.create_stream()
    aggregate_id = uuid4()
    recorder.insert_events([stored(aggregate_id, 1)])
    writers = 16
    rounds = 30
    wins: list[tuple[int, int]] = []
    losses = 0
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def writer(number: int) -> None:
        nonlocal losses
        # Each writer has its own connection, as separate processes would.
        mine = JetStreamApplicationRecorder(datastores.new_client_on(datastore))
        start.wait()
        for _ in range(rounds):
            last = mine.select_events(aggregate_id, desc=True, limit=1)[0].originator_version
            try:
                mine.insert_events([stored(aggregate_id, last + 1, f'{{"writer":{number}}}'.encode())])
            except IntegrityError:
                with lock:
                    losses += 1
            else:
                with lock:
                    wins.append((last + 1, number))

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))

    recorded = recorder.select_events(aggregate_id)
    versions = [e.originator_version for e in recorded]
    assert versions == list(range(1, len(recorded) + 1)), "no gaps, no duplicates"
    assert sorted(v for v, _ in wins) == versions[1:], "each stored version has exactly one winner"
    assert len(wins) + losses == writers * rounds
    assert losses > 0, "the writers did race"
    for e in recorded[1:]:
        winner = dict(wins)[e.originator_version]
        assert e.state == f'{{"writer":{winner}}}'.encode()


def test_group_commit_fails_only_the_conflicting_save(datastores: Datastores) -> None:
    recorder = JetStreamApplicationRecorder(datastores.new())
    recorder.create_stream()
    taken = uuid4()
    recorder.insert_events([stored(taken, 1)])
    fresh_ids = [uuid4() for _ in range(200)]

    def save(i: int) -> str:
        try:
            if i % 50 == 0:
                # Conflicts the server must find: version 1 of `taken` again, unknown to this writer.
                blind = JetStreamApplicationRecorder(recorder.datastore)
                blind.datastore._last.pop(f"{blind.base}.{taken.hex}", None)
                blind.insert_events([stored(fresh_ids[i], 1), stored(taken, 1)])
            else:
                recorder.insert_events([stored(fresh_ids[i], 1), stored(fresh_ids[i], 2)])
        except IntegrityError:
            return "conflict"
        return "ok"

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(save, range(200)))

    assert outcomes.count("conflict") == 4
    for i, aggregate_id in enumerate(fresh_ids):
        versions = [e.originator_version for e in recorder.select_events(aggregate_id)]
        assert versions == ([] if i % 50 == 0 else [1, 2])
    ids = [n.id for n in recorder.select_notifications(start=None, limit=1000)]
    assert ids == list(range(1, 1 + 1 + 196 * 2)), "the other saves committed, densely numbered"


def test_a_ledger_stream_with_weaker_settings_is_refused(nats_server: EmbeddedNatsServer) -> None:
    import asyncio

    import nats
    from nats.js.api import StreamConfig

    stream, prefix = unique_names()

    async def create_weak_stream() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(
            StreamConfig(name=stream, subjects=[f"{prefix}.evt.>", f"{prefix}.trk.>"], max_age=86400.0)
        )
        await nc.close()

    asyncio.run(create_weak_stream())
    env = {"NATS_URL": nats_server.url, "NATS_STREAM": stream, "NATS_SUBJECT_PREFIX": prefix}
    factory = JetStreamFactory(env)
    try:
        with pytest.raises(StreamSettingsError) as refused:
            factory.application_recorder()
    finally:
        factory.close()
    message = str(refused.value)
    for weakness in ("deny_delete", "deny_purge", "allow_direct", "allow_atomic", "max_age"):
        assert weakness in message


def test_a_missing_stream_is_created_immutable(datastores: Datastores) -> None:
    recorder = JetStreamApplicationRecorder(datastores.new())
    recorder.create_stream()
    info = recorder.datastore.client.run(recorder.datastore.client.api(f"$JS.API.STREAM.INFO.{recorder.stream}"))
    config = info["config"]
    assert config["storage"] == "file"
    assert config["deny_delete"] and config["deny_purge"]
    assert config["allow_direct"] and config["allow_atomic"]
    recorder.insert_events([stored(uuid4(), 1)])
    deleted = recorder.datastore.client.run(
        recorder.datastore.client.api(f"$JS.API.STREAM.MSG.DELETE.{recorder.stream}", {"seq": 1})
    )
    assert "error" in deleted


def test_an_unreachable_server_is_a_clear_error_not_a_hang() -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    errors: list[Exception] = []

    def connect() -> None:
        try:
            JetStreamFactory({"NATS_URL": url, "NATS_CONNECT_TIMEOUT": "1"})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(60)  # liveness, not speed: without a bound a hang would stall the suite
    assert not attempt.is_alive(), "connecting to an unreachable server hung"
    (error,) = errors
    assert isinstance(error, OperationalError)
    assert "cannot connect to NATS" in str(error)


def test_an_event_subject_carries_no_raw_identity(datastores: Datastores) -> None:
    recorder = JetStreamApplicationRecorder(datastores.new(originator_id_type="text"))
    recorder.create_stream()
    recorder.insert_events([StoredEvent("person.3f9a0c", 1, "tests:Event", b"{}")])
    (notification,) = recorder.select_notifications(start=None, limit=10)
    assert notification.originator_id == "person.3f9a0c"
    assert recorder.select_events("person.3f9a0c")[0].originator_version == 1
    with pytest.raises(Exception, match="cannot be a NATS subject"):
        recorder.insert_events([StoredEvent("person 340102", 1, "tests:Event", b"{}")])
