"""Tamper evidence: hash chains per aggregate, signed checkpoints, and ``verify`` catching a
changed message — one altered by rewriting the server's data directory offline, and one forged
by an insider publishing straight to an aggregate's subject."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ledger.application import Actor, Ledger
from ledger.commands import ReceivePayment, RequestEnrollment
from ledger.domain.identity import PersonKeyer
from ledger.jetstream.client import NatsClient, OutgoingMessage
from ledger.jetstream.datastore import GENESIS_HASH, HASH, PREV_HASH, JetStreamDatastore, event_hash
from ledger.jetstream.evidence import Checkpointer, SigningKey, verify
from ledger.jetstream.server import EmbeddedNatsServer
from tests.integration.ingest_support import SECRET, people

CST = timezone(timedelta(hours=8))
T = datetime(2021, 10, 8, 10, tzinfo=CST)
WECHAT = Actor("payment", "wechat")


def season(ledger: Ledger, count: int, tag: str) -> list[str]:
    residents = people(count, tag)
    for i, person in enumerate(residents):
        ledger.request_enrollment(RequestEnrollment(msg_id=f"{tag}-e{i}", occurred_at=T, id_number=person, coverage_year=2022,
                                  category="resident", channel="wechat", district="340104"), WECHAT)  # fmt: skip
        ledger.receive_payment(ReceivePayment(msg_id=f"{tag}-p{i}", occurred_at=T, paid_at=T, id_number=person, coverage_year=2022,
                               amount_fen=32_000, channel="wechat"), WECHAT)  # fmt: skip
    return residents


def datastore_on(url: str) -> JetStreamDatastore:
    return JetStreamDatastore(NatsClient(url, timeout=5.0))


def test_every_event_carries_its_aggregates_hash_chain(tmp_path: Path) -> None:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = Ledger({"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode()))
        try:
            # Given a person enrolled and paid (four events on one aggregate)
            (person,) = season(ledger, 1, "chain")
            store = datastore_on(server.url)
            subject = store.aggregate_subject(f"{store.prefix}.evt", ledger.person(person).id)
            messages = store.read_subject(store.stream, subject)
            store.client.close()
        finally:
            ledger.close()
    # Then each names the previous one's hash, and its own hash is that of its content
    assert [m.headers["Ledger-Version"] for m in messages] == ["1", "2", "3", "4"]
    previous = GENESIS_HASH
    for m in messages:
        assert m.headers[PREV_HASH] == previous
        assert m.headers[HASH] == event_hash(previous, m.subject, m.headers["Ledger-Version"], m.headers["Ledger-Topic"], m.data)
        previous = m.headers[HASH]


def test_verify_passes_a_clean_ledger_and_catches_a_message_rewritten_offline(tmp_path: Path) -> None:
    key = SigningKey.local(tmp_path / "signing-key.pem")
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = Ledger({"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode()))
        try:
            # Given a ledger with two signed checkpoints
            season(ledger, 20, "clean")
            store = datastore_on(server.url)
            checkpoints = Checkpointer(store, key)
            first = checkpoints.checkpoint()
            season(ledger, 5, "target")
            second = checkpoints.checkpoint()
            assert first is not None and second is not None and second > first
            assert checkpoints.checkpoint() is None, "nothing new: no checkpoint"
            # When it is verified as written
            clean = verify(store, trusted_keys={key.key_id()})
            store.client.close()
        finally:
            ledger.close()
    # Then every link and both checkpoints hold
    assert clean.ok, clean.findings
    assert (clean.checkpoints, clean.last_checkpoint_seq, clean.events) == (2, second, 100)

    # When someone with the disk rewrites one payment's message id in the stream's files
    before, after = b'"msg_id":"target-p3"', b'"msg_id":"target-p9"'
    blocks = [p for p in (tmp_path / "nats").rglob("*.blk") if before in p.read_bytes()]
    assert blocks, "the message is in a block file of the store"
    for block in blocks:
        block.write_bytes(block.read_bytes().replace(before, after))
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        store = datastore_on(server.url)
        try:
            tampered = verify(store, trusted_keys={key.key_id()})
        finally:
            store.client.close()
    # Then verify reports it (the server may serve the changed bytes, or drop the damaged record:
    # either is caught) at or before the message, not later
    assert not tampered.ok
    finding = str(tampered.findings[0])
    assert "LEDGER" in finding
    assert any(word in finding for word in ("was changed", "missing", "chain is broken", "digest differs", "gone"))


def test_verify_catches_an_event_forged_straight_onto_an_aggregates_subject(tmp_path: Path) -> None:
    key = SigningKey.generate()
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = Ledger({"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode()))
        try:
            (person,) = season(ledger, 1, "forged")
            store = datastore_on(server.url)
            Checkpointer(store, key).checkpoint()
            subject = store.aggregate_subject(f"{store.prefix}.evt", ledger.person(person).id)
            last = store.read_subject(store.stream, subject)[-1]
            # When an insider appends a version 5 whose body was edited after hashing
            body = last.data.replace(b"2022-12-31", b"2099-12-31")  # coverage "extended" to 2099
            assert body != last.data
            headers = {"Ledger-Topic": last.headers["Ledger-Topic"], "Ledger-Version": "5",
                       PREV_HASH: last.headers[HASH], HASH: event_hash(last.headers[HASH], subject, "5", last.headers["Ledger-Topic"], last.data)}  # fmt: skip
            store.client.append([OutgoingMessage(subject, body, headers)], frozenset({subject}))
            report = verify(store)
            store.client.close()
        finally:
            ledger.close()
    # Then verify names that very event
    assert not report.ok
    assert "v5" in str(report.findings[0]) and "was changed" in str(report.findings[0])


def test_a_checkpoint_signed_by_an_unknown_key_is_reported(tmp_path: Path) -> None:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = Ledger({"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode()))
        try:
            season(ledger, 2, "keys")
            store = datastore_on(server.url)
            Checkpointer(store, SigningKey.generate()).checkpoint()
            report = verify(store, trusted_keys={SigningKey.generate().key_id()})
            store.client.close()
        finally:
            ledger.close()
    assert not report.ok and "not a trusted key" in str(report.findings[0])
    assert json.dumps(str(report.findings[0]))


@pytest.mark.parametrize("count", [0])
def test_verify_of_an_empty_ledger_is_clean(tmp_path: Path, count: int) -> None:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = Ledger({"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode()))
        try:
            store = datastore_on(server.url)
            report = verify(store)
            store.client.close()
        finally:
            ledger.close()
    assert report.ok and report.events == count
