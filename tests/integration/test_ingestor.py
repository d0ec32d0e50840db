"""The Ingestor's verdicts, on the JetStream store: exactly one outcome per message, recorded
with the position; poison is parked per person; conflicts end right (a second writer doing what
a second process would)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from consumers.ingest import UNPROCESSABLE, Delivery, Ingestor, Journal, read_parked
from ledger.application import Actor, Ledger
from ledger.commands import ReceivePayment
from ledger.domain.identity import PersonKeyer
from ledger.jetstream.client import OutcomeUnknownError
from ledger.jetstream.datastore import Fence, WriterFencedError
from ledger.jetstream.server import EmbeddedNatsServer
from tests.conftest import unique_names
from tests.integration.ingest_support import SECRET, T0, people

ALICE, BOB, CAROL = people(3, "ingestor")


def enrollment(msg_id: str, id_number: str, seq: int, **extra: Any) -> Delivery:
    body = {"msg_id": msg_id, "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
            "category": "resident", "channel": "wechat", "district": "340104", **extra}
    return Delivery("upstream.enrollment.requested", json.dumps(body).encode(), stream_seq=seq)


def payment(msg_id: str, id_number: str, seq: int, amount_fen: int = 32000) -> Delivery:
    body = {"msg_id": msg_id, "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
            "amount_fen": amount_fen, "channel": "wechat", "paid_at": T0}
    return Delivery("upstream.payment.received", json.dumps(body).encode(), stream_seq=seq)


def discharge(msg_id: str, id_number: str, spouse: str, seq: int) -> Delivery:
    body = {"msg_id": msg_id, "occurred_at": T0, "id_number": id_number, "discharged_on": "2021-09-01",
            "spouse_id_number": spouse}
    return Delivery("upstream.discharge.registered", json.dumps(body).encode(), stream_seq=seq)


def writer(ledger: Ledger, epoch: int = 1) -> Ingestor:
    """An ingestor that claimed the ingestion's fence with ``epoch`` (as ``ledger serve`` does
    when it takes the writer lease)."""
    datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
    fence = Fence(datastore.tracking_subject("UPSTREAM"), epoch)
    position = datastore.claim(datastore.stream, fence)
    journal = Journal(
        fence=fence, position=position, writer=f"test-{epoch}", parked=read_parked(datastore),
        read_position=lambda: datastore.position(datastore.stream, fence.subject),
        read_parked=lambda: read_parked(datastore),
    )  # fmt: skip
    return Ingestor(ledger, journal, retry_pause=0.0)


def lose_an_ack(ledger: Ledger, *, saving: Callable[[Any], bool], unreachable: int) -> None:
    """Fault injection on a real store: the first append with a message ``saving`` picks is
    committed, then its acknowledgement is lost and the next ``unreachable`` reads of what
    happened fail as if NATS could not be reached."""
    datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
    real_append, real_refresh = datastore.client.append, datastore._refresh
    faults = {"lost_ack": 1, "unreachable": 0}

    def append_losing_the_ack(messages: Any, subjects: Any) -> Any:
        seqs = real_append(messages, subjects)
        if faults["lost_ack"] and any(saving(m) for m in messages):
            faults["lost_ack"] -= 1
            faults["unreachable"] = unreachable
            raise OutcomeUnknownError("the acknowledgement was lost")
        return seqs

    def refresh_while_unreachable(stream: str, subject: str) -> Any:
        if faults["unreachable"]:
            faults["unreachable"] -= 1
            raise OperationalError("NATS is unreachable")
        return real_refresh(stream, subject)

    datastore.client.append = append_losing_the_ack
    datastore._refresh = refresh_while_unreachable


def recorded_decisions(ledger: Ledger) -> list[list[Any]]:
    """Every decision the tracking records hold, in order: [upstream seq, kind, events]."""
    datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
    decided = []
    for m in datastore.read_subject(datastore.stream, datastore.tracking_subject("UPSTREAM")):
        body = json.loads(m.data) if m.data else {}
        decided.extend(body.get("decided", []))
    return decided


class BrokenPayments(Ledger):
    """A ledger whose payments fail for a reason that is not the policy's (a bug)."""

    def receive_payment(self, *args: Any) -> Any:
        raise RuntimeError("payment service bug")


class UnreachablePayments(Ledger):
    """A ledger whose store cannot be reached for payments (an outage)."""

    def receive_payment(self, *args: Any) -> Any:
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


def test_a_message_failing_on_every_try_is_parked_and_holds_back_only_its_person(broken: Ledger) -> None:
    """Given payments that fail for a reason that is not the policy's (a bug), when Alice's
    payment arrives between her enrollment and Bob's, then it is parked after its tries, her
    next message waits behind it (parked, held), and Bob's is recorded: the queue moves on."""
    ingestor = writer(broken)
    verdicts = ingestor.process([
        enrollment("e1", ALICE, 1), payment("p1", ALICE, 2), enrollment("e2", BOB, 3), payment("p1b", ALICE, 4),
    ])
    assert [(v.kind, v.reason) for v in verdicts] == [
        ("recorded", None), ("parked", UNPROCESSABLE), ("recorded", None), ("parked", "held"),
    ]
    assert "payment service bug" in (verdicts[1].detail or "")
    assert sorted(ingestor.journal.parked) == [2, 4]
    assert [d[0] for d in recorded_decisions(broken)] == [1, 2, 3, 4], "each decided once, in order"


def test_parked_messages_are_known_to_the_next_writer_and_still_hold_their_person(broken: Ledger) -> None:
    """Given Alice's payment parked by one writer, when another writer takes over, then it reads
    the parking back and Alice's later enrollment change waits behind it too."""
    writer(broken, epoch=1).process([enrollment("e1", ALICE, 1), payment("p1", ALICE, 2)])
    successor = writer(broken, epoch=2)
    assert sorted(successor.journal.parked) == [2] and successor.journal.position == 2
    (verdict,) = successor.process([payment("p2", ALICE, 3)])
    assert (verdict.kind, verdict.reason) == ("parked", "held")


def test_an_outage_is_retried_however_long_it_lasts_never_parked(store_env: dict[str, str]) -> None:
    ledger = UnreachablePayments(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        verdicts = writer(ledger).process([payment("p1", ALICE, 1)])
    finally:
        ledger.close()
    assert [v.kind for v in verdicts] == ["retry"]


def test_a_message_at_or_below_the_recorded_position_is_never_decided_again(store_env: dict[str, str]) -> None:
    """Given a payment rejected `no_enrollment` because it came before the enrollment, when the
    same deliveries come again after the enrollment was recorded (a lost acknowledgement), then
    they are acknowledged as decided: the payment is not recorded the second time."""
    ledger = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        ingestor = writer(ledger)
        first = ingestor.process([payment("p1", ALICE, 1), enrollment("e1", ALICE, 2)])
        assert [(v.kind, v.reason) for v in first] == [("rejected", "no_enrollment"), ("recorded", None)]
        again = writer(ledger, epoch=2).process([payment("p1", ALICE, 1), enrollment("e1", ALICE, 2)])
        assert [v.kind for v in again] == ["decided", "decided"]
        alice = ledger.person(ALICE)
        assert alice is not None and alice.enrollments[2022].paid_fen == 0
        assert recorded_decisions(ledger) == [[1, "rejected", 0], [2, "recorded", 2]]
    finally:
        ledger.close()


def test_a_writer_fenced_out_by_a_successor_cannot_write_a_single_event(store_env: dict[str, str]) -> None:
    """Given a writer that lost its lease while paused, when a successor has claimed the fence
    and the old writer wakes with a batch, then its append is refused whole and nothing of it is
    stored."""
    old_ledger = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    new_ledger = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        old = writer(old_ledger, epoch=1)
        old.process([enrollment("e1", ALICE, 1)])
        writer(new_ledger, epoch=2)  # the successor claims
        with pytest.raises(WriterFencedError):
            old.process([enrollment("e2", BOB, 2), payment("p1", ALICE, 3)])
        assert new_ledger.person(BOB) is None
        assert recorded_decisions(new_ledger) == [[1, "recorded", 2]]
    finally:
        old_ledger.close()
        new_ledger.close()


def test_a_repeated_msg_id_with_another_content_is_one_rejection_and_an_identical_repeat_a_duplicate(
    store_env: dict[str, str],
) -> None:
    """Given Alice's enrollment `e1`, when the sender repeats `e1` unchanged and then `e1` naming
    another district, then the first repeat is a harmless duplicate and the second is rejected
    `msg_id_conflict`: the first message stands."""
    ledger = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        verdicts = writer(ledger).process([
            enrollment("e1", ALICE, 1), enrollment("e1", ALICE, 2), enrollment("e1", ALICE, 3, district="340102"),
        ])
        assert [(v.kind, v.reason) for v in verdicts] == [
            ("recorded", None), ("duplicate", None), ("rejected", "msg_id_conflict"),
        ]
        alice = ledger.person(ALICE)
        assert alice is not None and alice.district == "340104"
    finally:
        ledger.close()


def test_a_spouse_equal_to_the_soldier_is_malformed_not_a_poison_conflict(store_env: dict[str, str]) -> None:
    """Given a discharge whose spouse_id_number is the soldier's own, then it is rejected
    `malformed` at once, and the message after it is recorded."""
    ledger = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        verdicts = writer(ledger).process([discharge("d1", CAROL, CAROL, 1), enrollment("e1", BOB, 2)])
        assert [(v.kind, v.reason) for v in verdicts] == [("rejected", "malformed"), ("recorded", None)]
    finally:
        ledger.close()


def test_a_conflicting_write_by_another_process_is_retried_and_ends_correct(store_env: dict[str, str]) -> None:
    cached = {**store_env, "AGGREGATE_CACHE_MAXSIZE": "1000", "AGGREGATE_CACHE_FASTFORWARD": "n",
              "DEEPCOPY_FROM_AGGREGATE_CACHE": "n"}
    ingesting = Ledger(cached, keyer=PersonKeyer(SECRET.encode()))
    other = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        ingestor = writer(ingesting)
        assert ingestor.process([enrollment("e1", ALICE, 1)])[0].kind == "recorded"  # Alice is now cached
        # Meanwhile another process pays for Alice (outside the ingestion, as a repair tool might).
        other.receive_payment(ReceivePayment(
            msg_id="p-elsewhere", occurred_at=datetime.fromisoformat(T0), id_number=ALICE, coverage_year=2022,
            amount_fen=32000, channel="community_qr", paid_at=datetime.fromisoformat(T0),
        ), Actor("payment", "community_qr"))
        # The ingesting ledger's cached Alice is stale: its save conflicts, it reloads, and the
        # WeChat payment is refused for what it is — she has paid already.
        verdicts = ingestor.process([payment("p-wechat", ALICE, 2), enrollment("e2", BOB, 3)])
        assert [(v.kind, v.reason) for v in verdicts] == [("rejected", "already_enrolled"), ("recorded", None)]
        alice = other.person(ALICE)
        assert alice is not None and alice.enrollments[2022].paid_fen == 32000
    finally:
        ingesting.close()
        other.close()


def test_a_save_whose_acknowledgement_was_lost_while_nats_was_away_is_never_decided_again(
    store_env: dict[str, str],
) -> None:
    """Given a payment before its enrollment (rejected `no_enrollment`) and the enrollment, when
    their save is committed but its acknowledgement is lost and NATS cannot be asked what
    happened, then the batch is retried — and when the same deliveries come again they are
    acknowledged as decided: the payment is not recorded after the enrollment it preceded."""
    ledger = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        ingestor = writer(ledger)
        # The save of both is committed, its answer lost, and NATS cannot be asked twice.
        lose_an_ack(ledger, saving=lambda m: "Ledger-Nonce" in m.headers, unreachable=2)
        deliveries = [payment("p1", ALICE, 1), enrollment("e1", ALICE, 2)]
        assert [v.kind for v in ingestor.process(deliveries)] == ["retry", "retry"]
        again = ingestor.process(deliveries)
        assert [v.kind for v in again] == ["decided", "decided"]
        alice = ledger.person(ALICE)
        assert alice is not None and alice.enrollments[2022].paid_fen == 0
        assert recorded_decisions(ledger) == [[1, "rejected", 0], [2, "recorded", 2]]
    finally:
        ledger.close()


def test_a_parking_saved_while_its_answer_was_lost_still_holds_the_person_back(broken: Ledger) -> None:
    """Given Alice's payment parked by a save whose acknowledgement was lost while NATS could not
    be asked, when her next message comes, then it waits behind the parked payment (the parking
    is read back with the position), it is not decided ahead of it."""
    ingestor = writer(broken)
    ingestor.process([enrollment("e1", ALICE, 1)])
    # The parking's save is committed, its answer lost, and NATS cannot be asked what happened.
    lose_an_ack(broken, saving=lambda m: m.subject.endswith(".park.2"), unreachable=1)
    assert [v.kind for v in ingestor.process([payment("p1", ALICE, 2)])] == ["retry"]
    (verdict,) = ingestor.process([enrollment("e2", ALICE, 3, district="340102")])
    assert (verdict.kind, verdict.reason) == ("parked", "held")
    assert sorted(ingestor.journal.parked) == [2, 3]


def test_a_message_delivered_twice_in_one_pull_is_decided_once(store_env: dict[str, str]) -> None:
    """Given a pull that holds Alice's enrollment twice (its redelivery arrived beside the first
    delivery), then it is decided once — recorded — and the second copy is acknowledged as
    decided, not recorded a second time as a duplicate."""
    ledger = Ledger(store_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        verdicts = writer(ledger).process([enrollment("e1", ALICE, 1), enrollment("e1", ALICE, 1), enrollment("e2", BOB, 2)])
        assert [v.kind for v in verdicts] == ["recorded", "decided", "recorded"]
        assert recorded_decisions(ledger) == [[1, "recorded", 2], [2, "recorded", 2]]
    finally:
        ledger.close()
