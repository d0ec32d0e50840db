"""An audit office for the fraud-rule tests: upstream facts through the real ingestion into the
ledger (refusals onto REJECTED, as in production), then the projections' ``flags`` view.

Each test gets its own nats-server (it starts in ~30 ms): the ingestion's UPSTREAM and REJECTED
streams have fixed names, so one server per test keeps every test's rejections its own.

The policy's dates are old: Hefei's table ends at funding year 2021 (coverage year 2022), so
facts about enrollments are dated 2021–2022 (the ``backdated`` rule compares an effect with the
message's own time, so that alone raises nothing). Tests read the flags of their own rule.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nats
import pytest

from consumers.app import IngestSettings
from consumers.ingest import Verdict
from consumers.streams import wait_for_rejected
from ledger.application import PERSON_KEY_SECRET, Ledger
from ledger.domain.identity import generate_id_number
from ledger.domain.policy import RegionPolicy, load_policy
from ledger.jetstream.server import EmbeddedNatsServer
from projections.runner import Projections, stream_last_seq
from service.bootstrap import ingestion

CST = timezone(timedelta(hours=8))
"""China Standard Time: upstream times carry +08:00."""
SECRET = b"fraud-rule-tests-person-key-secret"
HOME = "340104"
"""蜀山区, where the tests' residents live."""
ELSEWHERE = "340102"
"""瑶海区."""
Y = 2022
"""The last coverage year Hefei's table covers (funding year 2021: 320 yuan)."""
STANDARD_Y = 32_000
"""个人缴费 for coverage year 2022, in fen (新闻: 2021年 320元)."""

Message = tuple[str, dict[str, Any]]

INGEST_SETTINGS = IngestSettings(batch_size=100, ack_wait=1.0)
"""Small batches, and a short ``ack_wait``: now and then a pulled message is delivered but not
handled (the pull's expiry races its arrival) and waits ``ack_wait`` to be redelivered; 10 s by
default is too long for these tests."""


def at(year: int, month: int, day: int, hour: int = 10, minute: int = 0, second: int = 0) -> datetime:
    """A time in Hefei (+08:00)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=CST)


class People:
    """Synthetic, valid and distinct ID numbers (never real ones) from a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.issued: set[str] = set()

    def born(self, born: date, district: str = HOME) -> str:
        while True:
            number = generate_id_number(self.rng, division_code=district, birth_date=born)
            if number not in self.issued:
                self.issued.add(number)
                return number

    def many(self, count: int, first_born: date = date(1960, 1, 1)) -> list[str]:
        return [self.born(first_born + timedelta(days=i)) for i in range(count)]


# ---- upstream messages (contract.md), one builder per subject --------------------------------

_numbers = itertools.count(1)


def _msg_id(kind: str) -> str:
    return f"{kind}-{next(_numbers)}"


def _iso(moment: datetime | date) -> str:
    return moment.isoformat()


def registered(id_number: str, on: datetime, *, phone: str | None = None, household: str | None = None,
               district: str = HOME) -> Message:
    return "upstream.person.registered", {
        "msg_id": _msg_id("person"), "occurred_at": _iso(on), "id_number": id_number, "name": "居民",
        "district": district, "phone": phone, "household_id": household,
    }  # fmt: skip


def enrollment(id_number: str, on: datetime, *, year: int = Y, category: str = "resident", district: str = HOME,
               channel: str = "wechat", operator: str | None = None) -> Message:
    return "upstream.enrollment.requested", {
        "msg_id": _msg_id("enroll"), "occurred_at": _iso(on), "id_number": id_number, "coverage_year": year,
        "category": category, "channel": channel, "district": district, "operator_id": operator,
    }  # fmt: skip


def payment(id_number: str, paid_at: datetime, *, year: int = Y, amount_fen: int = STANDARD_Y, channel: str = "wechat",
            receipt: str | None = None, collector: str | None = None, payer_account: str | None = None,
            reported: datetime | None = None) -> Message:
    """The individual share paid on ``paid_at`` (and reported then, unless ``reported``)."""
    return "upstream.payment.received", {
        "msg_id": _msg_id("pay"), "occurred_at": _iso(reported or paid_at), "id_number": id_number,
        "coverage_year": year, "amount_fen": amount_fen, "channel": channel, "paid_at": _iso(paid_at), "receipt_no": receipt,
        "collector_id": collector, "payer_account": payer_account,
    }  # fmt: skip


def cash_payment(id_number: str, paid_at: datetime, *, receipt: str, collector: str) -> Message:
    """The individual share paid in cash at a community committee, against a special receipt."""
    return payment(id_number, paid_at, channel="community_cash", receipt=receipt, collector=collector)


def remittance(collector: str, remitted_at: datetime, *, amount_fen: int, receipts: tuple[str, ...]) -> Message:
    return "upstream.cash.remitted", {
        "msg_id": _msg_id("remit"), "occurred_at": _iso(remitted_at), "collector_id": collector,
        "amount_fen": amount_fen, "voucher_no": _msg_id("voucher"), "remitted_at": _iso(remitted_at),
        "receipt_nos": list(receipts),
    }  # fmt: skip


def roster(id_number: str, on: datetime, category: str, *, year: int = Y) -> Message:
    return "upstream.subsidy.listed", {
        "msg_id": _msg_id("roster"), "occurred_at": _iso(on), "id_number": id_number, "coverage_year": year,
        "subsidy_category": category, "department": "civil_affairs", "roster": f"{on:%Y-%m}",
    }  # fmt: skip


def death(id_number: str, on: datetime, date_of_death: date) -> Message:
    return "upstream.death.registered", {
        "msg_id": _msg_id("death"), "occurred_at": _iso(on), "id_number": id_number,
        "date_of_death": _iso(date_of_death),
    }  # fmt: skip


def employee_insurance(id_number: str, on: datetime, *, insured_from: date, continuous_months: int,
                       insured_until: date | None = None) -> Message:
    return "upstream.employee_insurance.changed", {
        "msg_id": _msg_id("employee"), "occurred_at": _iso(on), "id_number": id_number,
        "insured_from": _iso(insured_from), "continuous_months": continuous_months,
        "insured_until": _iso(insured_until) if insured_until else None,
    }  # fmt: skip


def msg_id(message: Message) -> str:
    return message[1]["msg_id"]


# ---- the office -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """A row of the ``flags`` view, its JSON columns decoded."""

    rule: str
    subject_key: str
    position: str
    coverage_year: int | None
    detail: str
    parameters: dict[str, Any]
    ledger: list[int]
    """Evidence: LEDGER sequences."""
    rejected: list[int]
    """Evidence: REJECTED sequences."""


class Office:
    """Sends upstream facts through the ingestion, and reads what the projections made of them."""

    def __init__(self, server: EmbeddedNatsServer, workdir: Path) -> None:
        self.url = server.url
        self.workdir = workdir
        self.env = {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": self.url, PERSON_KEY_SECRET: SECRET.decode()}
        self._ledgers: list[Ledger] = []
        self.policy: RegionPolicy = load_policy()
        """The table the auditors' projections judge by: Hefei's file."""
        self.ledger = self.ledger_applying(self.policy)
        self.projections: Projections | None = None

    def ledger_applying(self, policy: RegionPolicy) -> Ledger:
        """A ledger on this office's store that decides by ``policy``."""
        ledger = Ledger(self.env, policy=policy)
        self._ledgers.append(ledger)
        return ledger

    def key(self, id_number: str) -> str:
        return self.ledger.keyer(id_number)

    # ---- given / when: the ingestion service ------------------------------------------------

    def send(self, *messages: Message, resent: bool = False, ledger: Ledger | None = None) -> dict[str, Verdict]:
        """Publish ``messages`` on UPSTREAM, in order, and run ``ledger serve``'s ingestion until
        each has its outcome; returns the verdicts by ``msg_id``. ``resent``: without the
        ``Nats-Msg-Id`` header, as a sender resending after the stream's duplicate window."""
        verdicts: dict[str, Verdict] = {}
        expected = {msg_id(m) for m in messages}

        def collect(batch: list[Verdict]) -> None:
            for verdict in batch:
                if verdict.final and verdict.msg_id is not None:
                    verdicts.setdefault(verdict.msg_id, verdict)  # a redelivery comes back a duplicate

        async def run() -> None:
            async with ingestion(ledger or self.ledger, self.url, INGEST_SETTINGS, on_batch=collect):
                await _publish(self.url, messages, resent=resent)
                deadline = time.monotonic() + 60
                while not expected <= verdicts.keys():
                    if time.monotonic() > deadline:
                        raise AssertionError(f"ingestion: no outcome for {sorted(expected - verdicts.keys())[:5]}")
                    await asyncio.sleep(0.01)

        asyncio.run(run())
        return verdicts

    # ---- then: the views ---------------------------------------------------------------------

    def flags(self, rule: str) -> list[Flag]:
        """The flags of ``rule`` once the views hold everything LEDGER and REJECTED hold now."""
        rows = self._caught_up().db.query_dicts("SELECT * FROM flags WHERE rule = ? ORDER BY position", (rule,))
        flags = []
        for row in rows:
            evidence = json.loads(row["evidence"])
            flags.append(
                Flag(
                    rule=row["rule"], subject_key=row["subject_key"], position=row["position"],
                    coverage_year=row["coverage_year"], detail=row["detail"], parameters=json.loads(row["parameters"]),
                    ledger=evidence["ledger"], rejected=evidence["rejected"],
                )
            )  # fmt: skip
        return flags

    def audit(self, ledger_seq: int) -> dict[str, Any]:
        """The audit row of a LEDGER sequence (the event, its subject, source and times)."""
        (row,) = self._caught_up().db.query_dicts("SELECT * FROM audit WHERE ledger_seq = ?", (ledger_seq,))
        return row

    def audit_of(self, message: Message, event: str) -> dict[str, Any]:
        """The audit row of the ``event`` that ``message`` recorded."""
        (row,) = self._caught_up().db.query_dicts(
            "SELECT * FROM audit WHERE msg_id = ? AND event = ?", (msg_id(message), event)
        )
        return row

    def rejection(self, rejected_seq: int) -> dict[str, Any]:
        """The rejections row of a REJECTED sequence (reason, upstream subject, msg_id, detail)."""
        (row,) = self._caught_up().db.query_dicts("SELECT * FROM rejections WHERE rejected_seq = ?", (rejected_seq,))
        return row

    def _caught_up(self) -> Any:
        if self.projections is None:
            self.projections = Projections(
                ledger_env=self.env, views_url=f"sqlite:///{self.workdir}/views.sqlite", nats_url=self.url,
                policy=self.policy, loader=self.ledger, publish=False, rejected_stream="REJECTED",
            )  # fmt: skip
        # REJECTED is copied from LEDGER by the server a moment after the rejection is recorded:
        # wait for it to hold them all before asking how far it goes.
        asyncio.run(wait_for_rejected(self.url))
        self.projections.wait(self.ledger.recorder.max_notification_id() or 0, stream_last_seq(self.url, "REJECTED"))
        self.projections.check()
        return self.projections.view

    def close(self) -> None:
        try:
            if self.projections is not None:
                self.projections.close()
        finally:
            for ledger in self._ledgers:
                ledger.close()


async def _publish(url: str, messages: tuple[Message, ...], *, resent: bool) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        acks = []
        for subject, body in messages:  # one connection: the stream keeps this order
            headers = None if resent else {"Nats-Msg-Id": body["msg_id"]}
            data = json.dumps({k: v for k, v in body.items() if v is not None}, ensure_ascii=False).encode()
            acks.append(await js.publish_async(subject, data, headers=headers))
        await asyncio.gather(*acks)
    finally:
        await nc.close()


@pytest.fixture
def office(tmp_path: Path) -> Iterator[Office]:
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        office = Office(server, tmp_path)
        try:
            yield office
        finally:
            office.close()


@pytest.fixture
def people(request: pytest.FixtureRequest) -> People:
    """ID numbers from a generator seeded with the test's name, so failures repeat."""
    return People(random.Random(request.node.nodeid))
