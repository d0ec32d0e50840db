"""Ingestion on a real nats-server: every upstream message gets exactly one outcome — its events
in LEDGER, or its rejection on REJECTED — through duplicates, crashes and restarts."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

from consumers.app import IngestService, IngestSettings
from ledger.application import Ledger
from ledger.domain.cash import collector_id
from ledger.domain.identity import PersonKeyer
from ledger.jetstream.server import EmbeddedNatsServer
from service.bootstrap import ingestion
from tests.integration.ingest_support import (
    CIPHER_KEY,
    SECRET,
    T0,
    ServeProcess,
    ingestion_finished,
    outcomes,
    people,
    publish_all,
    rejections,
    season,
    wait_for,
)


def serving(
    url: str, messages: list[tuple[str, dict[str, Any]]], *, then: Callable[[Ledger], Any] | None = None
) -> tuple[IngestService, Any]:
    """Run the ingestion service in this process, publish ``messages``, wait until each has an
    outcome, and return the service (and ``then(ledger)``, called while it still runs)."""
    return _serve_while(url, lambda: publish_all(url, messages), len(messages), then=then)


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


ID, SPOUSE, OTHER, STRANGER, NEWCOMER = people(5, "ingestion")


def test_each_upstream_subject_becomes_its_ledger_events(server: EmbeddedNatsServer) -> None:
    messages = [
        ("upstream.person.registered", {"msg_id": "r", "occurred_at": T0, "id_number": ID, "name": "王五", "district": "340104"}),
        ("upstream.target.set", {"msg_id": "t", "occurred_at": T0, "district": "340104", "coverage_year": 2022, "target_count": 9}),
        ("upstream.enrollment.requested", {"msg_id": "e", "occurred_at": T0, "id_number": ID, "coverage_year": 2022,
                                           "category": "resident", "channel": "community_cash", "district": "340104"}),
        ("upstream.payment.received", {"msg_id": "p", "occurred_at": T0, "id_number": ID, "coverage_year": 2022,
                                       "amount_fen": 32000, "channel": "community_cash", "paid_at": T0,
                                       "receipt_no": "R-1", "collector_id": "C-1"}),
        ("upstream.cash.remitted", {"msg_id": "c", "occurred_at": T0, "collector_id": "C-1", "amount_fen": 32000,
                                    "voucher_no": "V-1", "remitted_at": "2021-09-20T10:00:00+08:00"}),
        ("upstream.subsidy.listed", {"msg_id": "s", "occurred_at": T0, "id_number": OTHER, "coverage_year": 2022,
                                     "subsidy_category": "extreme_poverty", "department": "civil_affairs", "roster": "2021-08"}),
        ("upstream.employee_insurance.changed", {"msg_id": "w", "occurred_at": T0, "id_number": SPOUSE,
                                                 "insured_from": "2018-01-01", "insured_until": "2021-06-30", "continuous_months": 42}),
        ("upstream.discharge.registered", {"msg_id": "d", "occurred_at": T0, "id_number": OTHER, "discharged_on": "2021-07-01",
                                           "spouse_id_number": SPOUSE}),
        ("upstream.death.registered", {"msg_id": "x", "occurred_at": "2022-05-02T09:00:00+08:00", "id_number": ID,
                                       "date_of_death": "2022-05-01"}),
    ]

    def check(ledger: Ledger) -> dict[str, Any]:
        return {
            "covered_before_death": ledger.coverage(ID, date(2022, 4, 30)).covered,
            "ended_after_death": ledger.coverage(ID, date(2022, 5, 2)).status,
            "subsidised_enrolled": ledger.coverage(OTHER, date(2022, 1, 1)).covered,
            "cash_on_hand": ledger.repository.get(collector_id("C-1")).balance_fen,
            "spouse_discharge": ledger.person(SPOUSE).discharged_on,
        }

    service, state = serving(server.url, messages, then=check)

    assert service.stats.recorded == len(messages) and service.stats.rejected == 0
    assert state == {
        "covered_before_death": True,
        "ended_after_death": "ended",
        "subsidised_enrolled": True,  # the 100% roster enrolled them automatically
        "cash_on_hand": 0,
        "spouse_discharge": date(2021, 7, 1),
    }


REFUSED = {
    "malformed": ("upstream.enrollment.requested", {"id_number": OTHER, "coverage_year": 2022, "category": "resident", "district": "340104"}),
    "invalid_id_number": ("upstream.enrollment.requested", {"id_number": "340104199001011235", "coverage_year": 2022,
                                                             "category": "resident", "channel": "wechat", "district": "340104"}),
    "unknown_district": ("upstream.person.registered", {"id_number": OTHER, "name": "赵六", "district": "110101"}),
    "outside_enrollment_period": ("upstream.enrollment.requested", {"id_number": OTHER, "coverage_year": 2021,
                                                                     "category": "resident", "channel": "wechat", "district": "340104"}),
    "not_eligible": ("upstream.enrollment.requested", {"id_number": NEWCOMER, "coverage_year": 2022, "category": "residence_permit",
                                                        "channel": "wechat", "district": "340104"}),
    "already_enrolled": ("upstream.enrollment.requested", {"id_number": ID, "coverage_year": 2022, "category": "resident",
                                                            "channel": "community_qr", "district": "340104"}),
    "in_employee_insurance": ("upstream.enrollment.requested", {"id_number": SPOUSE, "coverage_year": 2022, "category": "resident",
                                                                 "channel": "wechat", "district": "340104"}),
    "amount_mismatch": ("upstream.payment.received", {"id_number": ID, "coverage_year": 2022, "amount_fen": 1,
                                                       "channel": "wechat", "paid_at": T0}),
    "no_enrollment": ("upstream.payment.received", {"id_number": STRANGER, "coverage_year": 2022, "amount_fen": 32000,
                                                     "channel": "wechat", "paid_at": T0}),
    "duplicate_receipt": ("upstream.payment.received", {"id_number": ID, "coverage_year": 2022, "amount_fen": 32000,
                                                         "channel": "community_cash", "paid_at": T0, "receipt_no": "R-9", "collector_id": "C-9"}),
    "no_policy_for_year": ("upstream.subsidy.listed", {"id_number": OTHER, "coverage_year": 2031, "subsidy_category": "dibao",
                                                        "department": "civil_affairs", "roster": "2030-08"}),
    "deceased": ("upstream.enrollment.requested", {"id_number": SPOUSE, "coverage_year": 2022, "category": "resident",
                                                    "channel": "wechat", "district": "340104", "occurred_at": "2022-10-01T10:00:00+08:00"}),
}


def test_every_rejection_reason_is_stored_with_the_original_bytes_and_records_nothing(
    server: EmbeddedNatsServer,
) -> None:
    setup = [
        ("upstream.enrollment.requested", {"msg_id": "s1", "occurred_at": T0, "id_number": ID, "coverage_year": 2022,
                                           "category": "resident", "channel": "wechat", "district": "340104"}),
        ("upstream.employee_insurance.changed", {"msg_id": "s2", "occurred_at": T0, "id_number": SPOUSE,
                                                 "insured_from": "2020-01-01", "continuous_months": 20}),
        # a cash payment elsewhere uses receipt R-9 first
        ("upstream.enrollment.requested", {"msg_id": "s3", "occurred_at": T0, "id_number": OTHER, "coverage_year": 2022,
                                           "category": "resident", "channel": "community_cash", "district": "340104"}),
        ("upstream.payment.received", {"msg_id": "s4", "occurred_at": T0, "id_number": OTHER, "coverage_year": 2022,
                                       "amount_fen": 32000, "channel": "community_cash", "paid_at": T0,
                                       "receipt_no": "R-9", "collector_id": "C-9"}),
        ("upstream.death.registered", {"msg_id": "s5", "occurred_at": "2022-03-02T10:00:00+08:00", "id_number": SPOUSE,
                                       "date_of_death": "2022-03-01"}),
    ]
    refused = [
        (subject, {"msg_id": f"bad-{reason}", "occurred_at": T0, **body}) for reason, (subject, body) in REFUSED.items()
    ]

    service, _ = serving(server.url, setup + refused)

    assert service.stats.recorded == len(setup)
    stored = {r.reason: r for r in asyncio.run(rejections(server.url))}
    assert set(stored) == set(REFUSED)
    for (subject, body), reason in zip(refused, REFUSED, strict=True):
        rejection = stored[reason]
        assert rejection.msg_id == body["msg_id"] and rejection.subject == subject
        assert json.loads(base64.b64decode(rejection.payload)) == body, "the original bytes are kept"
        assert rejection.detail
    assert not outcomes(server.url).recorded & {body["msg_id"] for _, body in refused}, "nothing recorded"


def test_the_same_msg_id_sent_twice_has_one_outcome(server: EmbeddedNatsServer) -> None:
    enrollment = {"msg_id": "once", "occurred_at": T0, "id_number": ID, "coverage_year": 2022,
                  "category": "resident", "channel": "wechat", "district": "340104"}
    bad = {"msg_id": "bad-once", "occurred_at": T0, "id_number": "1234", "coverage_year": 2022,
           "category": "resident", "channel": "wechat", "district": "340104"}

    async def send_twice() -> None:
        import nats

        nc = await nats.connect(server.url)
        js = nc.jetstream()
        for header in ("first", "first", "later"):  # a retry inside the window, then a late resend
            for body in (enrollment, bad):
                await js.publish(
                    "upstream.enrollment.requested",
                    json.dumps(body).encode(),
                    headers={"Nats-Msg-Id": f"{header}-{body['msg_id']}"},
                )
        await nc.close()

    service, _ = _serve_while(server.url, send_twice, 4)

    assert (service.stats.recorded, service.stats.duplicates) == (1, 1), "the stream dropped the retry"
    result = outcomes(server.url)
    assert result.of("once") == "recorded" and not result.doubled_events
    # A bad message sent again is answered again: its rejection is the answer to that sending.
    assert result.rejected["bad-once"] == 2


def test_a_consumer_killed_in_the_middle_of_5000_messages_loses_and_doubles_nothing(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    messages = season(2500, seed="kill-consumer")
    serve = ServeProcess(server.url, tmp_path / "serve.log").start()
    wait_for(lambda: _consumer_exists(server.url), 60, "the service to be ready")
    # The first half is published while the service applies it, the second half only after the
    # kill: so the kill lands in the middle of the 5,000 however fast either side is (published
    # all at once, they were at times all applied before a look at the count found 1,000).
    first, second = messages[: len(messages) // 2], messages[len(messages) // 2 :]
    with ThreadPoolExecutor(1) as publisher:
        published = publisher.submit(asyncio.run, publish_all(server.url, first))
        wait_for(lambda: _acked(server.url) >= 1000, 60, "some messages to be applied")
        serve.kill()  # SIGKILL: in the middle of a batch, most likely
        done_at_kill = _acked(server.url)
        published.result(120)
    asyncio.run(publish_all(server.url, second))
    serve = ServeProcess(server.url, tmp_path / "serve.log").start()
    wait_for(lambda: ingestion_finished(server.url, len(messages)), 120, "every message to be applied")
    assert serve.stop() == 0

    assert 1000 <= done_at_kill < len(messages), "killed in the middle"
    _assert_one_outcome_each(server.url, messages, cipher_key=CIPHER_KEY)


def test_a_nats_server_restarted_in_the_middle_of_ingestion_loses_and_doubles_nothing(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    messages = season(2500, seed="restart-server")
    serve = ServeProcess(server.url, tmp_path / "serve.log").start()
    wait_for(lambda: _consumer_exists(server.url), 60, "the service to be ready")
    first, second = messages[:3000], messages[3000:]
    asyncio.run(publish_all(server.url, first))
    wait_for(lambda: _acked(server.url) >= 1000, 60, "some messages to be applied")
    server.kill()  # SIGKILL the server under the running service
    server.start()  # same port, same data
    asyncio.run(publish_all(server.url, second))
    wait_for(lambda: ingestion_finished(server.url, len(messages)), 180, "every message to be applied")
    assert serve.stop() == 0

    _assert_one_outcome_each(server.url, messages, cipher_key=CIPHER_KEY)


def test_one_person_paying_through_two_channels_at_once_ends_consistent(server: EmbeddedNatsServer) -> None:
    people_ids = people(50, "two-channels")
    enrollments = [
        ("upstream.enrollment.requested", {"msg_id": f"e{i}", "occurred_at": T0, "id_number": p, "coverage_year": 2022,
                                           "category": "resident", "channel": "wechat", "district": "340104"})
        for i, p in enumerate(people_ids)
    ]
    wechat = [("upstream.payment.received", {"msg_id": f"w{i}", "occurred_at": T0, "id_number": p, "coverage_year": 2022,
                                             "amount_fen": 32000, "channel": "wechat", "paid_at": T0})
              for i, p in enumerate(people_ids)]
    qr = [("upstream.payment.received", {"msg_id": f"q{i}", "occurred_at": T0, "id_number": p, "coverage_year": 2022,
                                         "amount_fen": 32000, "channel": "community_qr", "paid_at": T0})
          for i, p in enumerate(people_ids)]

    async def both_channels() -> None:
        await publish_all(server.url, enrollments)
        await asyncio.gather(publish_all(server.url, wechat), publish_all(server.url, qr))

    def state(ledger: Ledger) -> list[int]:
        return [ledger.person(p).enrollments[2022].paid_fen for p in people_ids]

    service, paid = _serve_while(server.url, both_channels, len(enrollments) + len(wechat) + len(qr), then=state)
    assert paid == [32000] * len(people_ids), "each paid once"
    assert service.stats.recorded == 100 and service.stats.rejected == 50
    assert all(r.reason == "already_enrolled" for r in asyncio.run(rejections(server.url)))


def _serve_while(
    url: str, publish: Callable[[], Awaitable[None]], expected: int, *, then: Callable[[Ledger], Any] | None = None
) -> tuple[IngestService, Any]:
    async def run() -> tuple[IngestService, Any]:
        ledger = await asyncio.to_thread(
            Ledger, {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url}, keyer=PersonKeyer(SECRET.encode())
        )
        try:
            async with ingestion(ledger, url, IngestSettings(batch_size=100)) as service:
                await publish()
                await _until(lambda: service.stats.done >= expected, 60)
                return service, (await asyncio.to_thread(then, ledger) if then else None)
        finally:
            await asyncio.to_thread(ledger.close)

    return asyncio.run(run())


def _consumer_exists(url: str) -> bool:
    from tests.integration.ingest_support import api

    return "error" not in asyncio.run(api(url, "$JS.API.CONSUMER.INFO.UPSTREAM.ledger-ingest"))


def _acked(url: str) -> int:
    from tests.integration.ingest_support import api

    info = asyncio.run(api(url, "$JS.API.CONSUMER.INFO.UPSTREAM.ledger-ingest"))
    return 0 if "error" in info else info["ack_floor"]["stream_seq"]


def _assert_one_outcome_each(url: str, messages: list[tuple[str, dict[str, Any]]], cipher_key: str | None = None) -> None:
    """``cipher_key``: ``ledger serve``'s (ServeProcess); the in-process ledgers here store in clear."""
    result = outcomes(url, cipher_key)
    kinds = {body["msg_id"]: result.of(body["msg_id"]) for _, body in messages}
    assert not result.doubled_events, f"events recorded twice: {result.doubled_events[:5]}"
    assert all(n == 1 for n in result.rejected.values()), "a message rejected twice"
    assert set(kinds.values()) <= {"recorded", "rejected"}, [k for k, v in kinds.items() if v not in ("recorded", "rejected")][:5]
    expected_rejected = {body["msg_id"] for _, body in messages if body.get("amount_fen") == 100}
    assert {m for m, kind in kinds.items() if kind == "rejected"} == expected_rejected



def test_a_message_held_by_a_dead_consumer_does_not_hold_the_rest_back_for_ack_wait(server: EmbeddedNatsServer) -> None:
    """A message out with a consumer that died (or lost on its way) is read from the stream and
    applied in its place: what follows is applied at once, in order, not after ``ack_wait``."""
    messages = season(10, "held")
    held: dict[str, Any] = {}

    async def publish_with_one_held() -> None:
        import nats

        await publish_all(server.url, messages[:1])
        nc = await nats.connect(server.url)
        try:
            # A second process on the durable pulls the first message and dies without an answer.
            sub = await nc.jetstream().pull_subscribe("upstream.>", durable="ledger-ingest", stream="UPSTREAM")
            (msg,) = await sub.fetch(1, timeout=5)
            held["seq"] = msg.metadata.sequence.stream
        finally:
            await nc.close()
        held["at"] = time.monotonic()
        await publish_all(server.url, messages[1:])

    async def run() -> tuple[IngestService, float]:
        ledger = await asyncio.to_thread(
            Ledger, {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode())
        )
        settings = IngestSettings(batch_size=100, ack_wait=30)
        try:
            async with ingestion(ledger, server.url, settings, contend=False):
                pass  # the ledger's durable consumer, made as in production
            await publish_with_one_held()
            async with ingestion(ledger, server.url, settings) as service:
                await _until(lambda: service.stats.done >= len(messages), 20)
                return service, time.monotonic() - held["at"]
        finally:
            await asyncio.to_thread(ledger.close)

    service, took = asyncio.run(run())
    # Then every message has its outcome long before the held one's ack_wait (30 s) runs out
    assert held["seq"] == 1 and took < 15
    _assert_one_outcome_each(server.url, messages)
