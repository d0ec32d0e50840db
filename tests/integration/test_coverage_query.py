"""``coverage.query`` over NATS request/reply, answered by ``ledger serve``'s responder."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nats
import pytest

from ledger.application import Actor, Ledger
from ledger.commands import ReceivePayment, RequestEnrollment
from ledger.domain.identity import PersonKeyer
from ledger.jetstream.server import EmbeddedNatsServer
from service.bootstrap import answering, connected_broker
from tests.integration.ingest_support import SECRET, people

CST = timezone(timedelta(hours=8))
ALICE, BOB = people(2, "coverage-query")
WECHAT = Actor("payment", "wechat")


def ask(url: str, ledger: Ledger, requests: list[Any]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with connected_broker(url) as (broker, _), answering(ledger, broker):
            nc = await nats.connect(url)
            try:
                replies = []
                for request in requests:
                    data = request if isinstance(request, bytes) else json.dumps(request).encode()
                    replies.append(json.loads((await nc.request("coverage.query", data, timeout=5)).data))
                return replies
            finally:
                await nc.close()

    return asyncio.run(run())


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        app = Ledger({"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode()))
        yield server.url, app
        app.close()


def test_a_covered_person_an_unknown_one_and_bad_requests(ledger: Any) -> None:
    url, app = ledger
    september = datetime(2021, 9, 2, 10, tzinfo=CST)
    app.request_enrollment(RequestEnrollment(msg_id="e", occurred_at=september, id_number=ALICE, coverage_year=2022,
                           category="resident", channel="wechat", district="340104"), WECHAT)
    app.receive_payment(ReceivePayment(msg_id="p", occurred_at=september, id_number=ALICE, coverage_year=2022, amount_fen=32000,
                        channel="wechat", paid_at=september), WECHAT)

    covered, unknown, not_json, bad_id, no_date = ask(url, app, [
        {"id_number": ALICE, "date": "2022-03-01"},
        {"id_number": BOB, "date": "2022-03-01"},
        b"\xffnot json",
        {"id_number": "123", "date": "2022-03-01"},
        {"id_number": ALICE},
    ])

    assert covered["covered"] is True and covered["status"] == "enrolled"
    assert (covered["coverage_start"], covered["coverage_end"], covered["benefit_start"]) == (
        "2022-01-01", "2022-12-31", "2022-01-01",
    )
    assert covered["ledger_seq"] == app.recorder.max_notification_id()
    assert ALICE not in json.dumps(covered), "the reply never carries the ID number"
    assert unknown["status"] == "not_enrolled" and unknown["covered"] is False
    assert not_json["error"] == "malformed"
    assert bad_id["error"] == "invalid_id_number"
    assert no_date["error"] == "malformed" and "date" in no_date["detail"]


def test_as_of_answers_what_the_ledger_knew_at_that_recorded_time(ledger: Any) -> None:
    url, app = ledger
    september = datetime(2021, 9, 2, 10, tzinfo=CST)
    app.request_enrollment(RequestEnrollment(msg_id="e", occurred_at=september, id_number=ALICE, coverage_year=2022,
                           category="resident", channel="wechat", district="340104"), WECHAT)
    time.sleep(0.01)
    before_payment = datetime.now(CST)
    time.sleep(0.01)
    app.receive_payment(ReceivePayment(msg_id="p", occurred_at=september, id_number=ALICE, coverage_year=2022, amount_fen=32000,
                        channel="wechat", paid_at=september), WECHAT)

    then, now = ask(url, app, [
        {"id_number": ALICE, "date": "2022-03-01", "as_of": before_payment.isoformat()},
        {"id_number": ALICE, "date": "2022-03-01"},
    ])
    assert (then["status"], then["covered"]) == ("awaiting_payment", False)
    assert then["as_of"] is not None
    assert (now["status"], now["covered"]) == ("enrolled", True)
