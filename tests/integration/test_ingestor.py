"""The Ingestor's verdicts: retries keep order, poison is parked, conflicts are retried to the
right end (on the JetStream store, with a second writer doing what a second process would)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from consumers.ingest import UNPROCESSABLE, Delivery, Ingestor
from ledger.application import Actor, Ledger
from ledger.domain.identity import PersonKeyer
from ledger.jetstream.server import EmbeddedNatsServer
from tests.conftest import unique_names
from tests.integration.ingest_support import SECRET, T0, people

ALICE, BOB = people(2, "ingestor")


def enrollment(msg_id: str, id_number: str) -> Delivery:
    body = {"msg_id": msg_id, "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
            "category": "resident", "channel": "wechat", "district": "340104"}
    return Delivery("upstream.enrollment.requested", json.dumps(body).encode())


def payment(msg_id: str, id_number: str, deliveries: int = 1) -> Delivery:
    body = {"msg_id": msg_id, "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
            "amount_fen": 32000, "channel": "wechat", "paid_at": T0}
    return Delivery("upstream.payment.received", json.dumps(body).encode(), deliveries=deliveries)


class BrokenPayments(Ledger):
    """A ledger whose payments fail for a reason that is not the policy's (a bug)."""

    def receive_payment(self, **kwargs: Any) -> Any:
        raise RuntimeError("payment service bug")


class UnreachablePayments(Ledger):
    """A ledger whose store cannot be reached for payments (an outage)."""

    def receive_payment(self, **kwargs: Any) -> Any:
        raise OperationalError("cannot connect to NATS")


@pytest.fixture
def store_env(nats_server: EmbeddedNatsServer) -> dict[str, str]:
    stream, prefix = unique_names()
    return {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": nats_server.url,
            "NATS_STREAM": stream, "NATS_SUBJECT_PREFIX": prefix}


@pytest.fixture
def broken(store_env: dict[str, str]) -> Iterator[Ledger]:
    ledger = BrokenPayments(store_env, keyer=PersonKeyer(SECRET.encode()))
    yield ledger
    ledger.close()


def test_a_failing_message_is_retried_with_every_later_one_so_order_is_kept(broken: Ledger) -> None:
    verdicts = Ingestor(broken, max_deliveries=3).process(
        [enrollment("e1", ALICE), payment("p1", ALICE), enrollment("e2", BOB)]
    )
    assert [v.kind for v in verdicts] == ["recorded", "retry", "retry"]
    assert broken.person(ALICE) is not None, "what came before the failure is saved"
    assert broken.person(BOB) is None, "nothing after it is applied"


def test_a_message_failing_for_a_non_policy_reason_is_parked_after_max_deliveries(broken: Ledger) -> None:
    verdicts = Ingestor(broken, max_deliveries=3).process(
        [payment("p1", ALICE, deliveries=3), enrollment("e2", BOB)]
    )
    assert verdicts[0].kind == "rejected" and verdicts[0].reason == UNPROCESSABLE
    assert "payment service bug" in (verdicts[0].detail or "")
    assert verdicts[1].kind == "recorded", "the queue moves on"


def test_an_outage_is_retried_however_long_it_lasts_never_parked(store_env: dict[str, str]) -> None:
    ledger = UnreachablePayments(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        verdicts = Ingestor(ledger, max_deliveries=3).process([payment("p1", ALICE, deliveries=50)])
    finally:
        ledger.close()
    assert [v.kind for v in verdicts] == ["retry"]


def test_a_conflicting_write_by_another_process_is_retried_and_ends_correct(store_env: dict[str, str]) -> None:
    cached = {**store_env, "AGGREGATE_CACHE_MAXSIZE": "1000", "AGGREGATE_CACHE_FASTFORWARD": "n",
              "DEEPCOPY_FROM_AGGREGATE_CACHE": "n"}
    ingesting = Ledger(cached, keyer=PersonKeyer(SECRET.encode()))
    other = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        ingestor = Ingestor(ingesting)
        assert ingestor.process([enrollment("e1", ALICE)])[0].kind == "recorded"  # Alice is now cached
        # Meanwhile another process (say, a second ledger instance) pays for Alice.
        other.receive_payment(
            msg_id="p-elsewhere", occurred_at=datetime.fromisoformat(T0), id_number=ALICE, coverage_year=2022,
            amount_fen=32000, channel="community_qr", paid_at=datetime.fromisoformat(T0), actor=Actor("payment", "community_qr"),
        )
        # The ingesting ledger's cached Alice is stale: its save conflicts, it reloads, and the
        # WeChat payment is refused for what it is — she has paid already.
        verdicts = ingestor.process([payment("p-wechat", ALICE), enrollment("e2", BOB)])
        assert [(v.kind, v.reason) for v in verdicts] == [("rejected", "already_enrolled"), ("recorded", None)]
        alice = other.person(ALICE)
        assert alice is not None and alice.enrollments[2022].paid_fen == 32000
    finally:
        ingesting.close()
        other.close()
