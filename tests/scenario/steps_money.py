"""Steps shared by the scenario tests of years and money, the enrollment period and channels,
and subsidised enrollment (domain.md §1–3, §5).

Each step sends one upstream fact to the ``Ledger`` application, with the fields the contract
names; tests read as given / when / then over these steps. Figures the policy states (the
contribution table, the subsidy shares) are written out here from domain.md, never read back
from the ledger's own policy object, so a wrong table in the ledger makes a test fail.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import pytest

from ledger.application import Actor, Ledger, Outcome
from ledger.commands import ListSubsidy, ReceivePayment, RegisterPerson, RemitCash, RequestEnrollment
from ledger.domain.refusals import Refusal
from tests.scenario.conftest import WECHAT

# ---- who sends the facts ----------------------------------------------------------------------

COMMUNITY_QR = Actor(system="community", channel="community_qr", operator_id="op-shushan-07", org_id="340104-sq-12")
"""A community committee (社区居委会) registering residents and taking QR-code payments."""
COMMUNITY_CASH = Actor(system="community", channel="community_cash", operator_id="op-shushan-07", org_id="340104-sq-12")
"""The same committee taking cash from an elderly resident (专用票据)."""
TAX_OFFICE = Actor(system="tax", channel="tax", org_id="shushan-tax")
"""The district tax office that receives a committee's cash (税收缴款书)."""
UNIVERSITY = Actor(system="university", channel="university", org_id="univ-hefei-01")
"""A university collecting the contribution with tuition (统一代收代缴)."""
CIVIL_AFFAIRS = Actor(system="civil_affairs")
RURAL_REVITALISATION = Actor(system="rural_revitalisation")
HEALTH_COMMISSION = Actor(system="health_commission")

DEPARTMENT_OF: dict[str, tuple[str, Actor]] = {
    # 方案 §五(五): which department sends which roster.
    "extreme_poverty": ("civil_affairs", CIVIL_AFFAIRS),
    "scattered_orphan": ("civil_affairs", CIVIL_AFFAIRS),
    "family_planning_special": ("health_commission", HEALTH_COMMISSION),
    "dibao": ("civil_affairs", CIVIL_AFFAIRS),
    "low_income_elderly": ("civil_affairs", CIVIL_AFFAIRS),
    "poverty_returned": ("rural_revitalisation", RURAL_REVITALISATION),
    "poverty_unstable": ("rural_revitalisation", RURAL_REVITALISATION),
    "monitored_low_income": ("civil_affairs", CIVIL_AFFAIRS),
}

# ---- the policy's figures (domain.md §1, §5) ----------------------------------------------------

CONTRIBUTION_YUAN: dict[int, int] = {2016: 120, 2017: 150, 2018: 220, 2019: 250, 2020: 280, 2021: 320}
"""个人缴费 per funding year, Hefei (seed 000)."""

SHARE_2021_YUAN: dict[str, int] = {
    # category: what the person still pays of the 2021 contribution of 320 yuan (方案 §五(五))
    "extreme_poverty": 0,
    "scattered_orphan": 0,
    "family_planning_special": 0,
    "dibao": 32,
    "low_income_elderly": 32,
    "poverty_returned": 64,
    "poverty_unstable": 160,
    "monitored_low_income": 160,
}

HOME = "340104"
"""蜀山区, where the tests' residents live unless a test says otherwise."""


def yuan(amount: int) -> int:
    """Yuan in fen, the contract's unit of money."""
    return amount * 100


_numbers = itertools.count(1)


def new_msg_id(kind: str) -> str:
    """A msg_id no other message in the test session carries."""
    return f"{kind}-{next(_numbers):06d}"


# ---- what the ledger recorded -------------------------------------------------------------------


def events_recorded(ledger: Ledger) -> int:
    """How many events the ledger holds, across every aggregate (the last notification id)."""
    return ledger.recorder.max_notification_id() or 0


def person_events(ledger: Ledger, id_number: str) -> list[Any]:
    """The person's events, oldest first, as stored."""
    person = ledger.person(id_number)
    assert person is not None, "the person is not in the ledger"
    return list(ledger.repository.event_store.get(person.id))


@contextmanager
def refused(ledger: Ledger, reason: str) -> Iterator[pytest.ExceptionInfo[Refusal]]:
    """Expects the fact in the block to be refused with ``reason`` (the contract's vocabulary)
    and, since a refusal records nothing, the ledger to hold exactly the events it held before."""
    before = events_recorded(ledger)
    with pytest.raises(Refusal) as caught:
        yield caught
    assert caught.value.reason == reason, f"refused with {caught.value.reason!r}: {caught.value.detail}"
    assert events_recorded(ledger) == before, "a refused fact recorded events"


# ---- upstream facts -------------------------------------------------------------------------------


def register(
    ledger: Ledger,
    id_number: str,
    *,
    on: datetime,
    district: str = HOME,
    residence_permit: bool = False,
    name: str = "居民",
    actor: Actor = COMMUNITY_QR,
    msg_id: str | None = None,
) -> Outcome:
    """``upstream.person.registered``."""
    return ledger.register_person(
        RegisterPerson(
            msg_id=msg_id or new_msg_id("reg"),
            occurred_at=on,
            id_number=id_number,
            name=name,
            district=district,
            residence_permit=residence_permit,
        ),
        actor,
    )


def enroll(
    ledger: Ledger,
    id_number: str,
    *,
    coverage_year: int,
    on: datetime,
    category: str = "resident",
    channel: str = "wechat",
    district: str = HOME,
    migrant_worker: bool = False,
    actor: Actor = WECHAT,
    msg_id: str | None = None,
) -> Outcome:
    """``upstream.enrollment.requested``."""
    return ledger.request_enrollment(
        RequestEnrollment(
            msg_id=msg_id or new_msg_id("enr"),
            occurred_at=on,
            id_number=id_number,
            coverage_year=coverage_year,
            category=category,
            channel=channel,
            district=district,
            migrant_worker=migrant_worker,
        ),
        actor,
    )


def pay(
    ledger: Ledger,
    id_number: str,
    *,
    coverage_year: int,
    amount_fen: int,
    paid_at: datetime,
    occurred_at: datetime | None = None,
    channel: str = "wechat",
    receipt_no: str | None = None,
    collector_id: str | None = None,
    actor: Actor = WECHAT,
    msg_id: str | None = None,
) -> Outcome:
    """``upstream.payment.received``; reported when paid unless ``occurred_at`` says later."""
    return ledger.receive_payment(
        ReceivePayment(
            msg_id=msg_id or new_msg_id("pay"),
            occurred_at=occurred_at or paid_at,
            id_number=id_number,
            coverage_year=coverage_year,
            amount_fen=amount_fen,
            channel=channel,
            paid_at=paid_at,
            receipt_no=receipt_no,
            collector_id=collector_id,
        ),
        actor,
    )


def pay_cash(
    ledger: Ledger,
    id_number: str,
    *,
    coverage_year: int,
    amount_fen: int,
    paid_at: datetime,
    receipt_no: str | None,
    collector_id: str | None,
    msg_id: str | None = None,
) -> Outcome:
    """Cash at the community committee, with its special receipt (专用票据)."""
    return pay(
        ledger,
        id_number,
        coverage_year=coverage_year,
        amount_fen=amount_fen,
        paid_at=paid_at,
        channel="community_cash",
        receipt_no=receipt_no,
        collector_id=collector_id,
        actor=COMMUNITY_CASH,
        msg_id=msg_id,
    )


def enroll_and_pay(
    ledger: Ledger,
    id_number: str,
    *,
    coverage_year: int,
    on: datetime,
    amount_fen: int,
    category: str = "resident",
    channel: str = "wechat",
    actor: Actor = WECHAT,
) -> None:
    """Enrolls and pays on the same day through the same channel."""
    enroll(ledger, id_number, coverage_year=coverage_year, on=on, category=category, channel=channel, actor=actor)
    pay(ledger, id_number, coverage_year=coverage_year, amount_fen=amount_fen, paid_at=on, channel=channel, actor=actor)


def list_on_roster(
    ledger: Ledger,
    id_number: str,
    subsidy_category: str,
    *,
    on: datetime,
    coverage_year: int = 2022,
    roster: str = "2021-08",
    effective_from: date | None = None,
    msg_id: str | None = None,
) -> Outcome:
    """``upstream.subsidy.listed`` from the department that keeps ``subsidy_category``'s roster."""
    department, actor = DEPARTMENT_OF[subsidy_category]
    return ledger.list_subsidy(
        ListSubsidy(
            msg_id=msg_id or new_msg_id("roster"),
            occurred_at=on,
            id_number=id_number,
            coverage_year=coverage_year,
            subsidy_category=subsidy_category,
            department=department,
            roster=roster,
            effective_from=effective_from,
        ),
        actor,
    )


def remit(
    ledger: Ledger,
    collector: str,
    *,
    amount_fen: int,
    remitted_at: datetime,
    receipt_nos: tuple[str, ...] = (),
    voucher_no: str | None = None,
    msg_id: str | None = None,
) -> Outcome:
    """``upstream.cash.remitted``: the committee's cash handed to the tax office."""
    return ledger.remit_cash(
        RemitCash(
            msg_id=msg_id or new_msg_id("remit"),
            occurred_at=remitted_at,
            collector_id=collector,
            amount_fen=amount_fen,
            voucher_no=voucher_no or new_msg_id("voucher"),
            remitted_at=remitted_at,
            receipt_nos=receipt_nos,
        ),
        TAX_OFFICE,
    )
