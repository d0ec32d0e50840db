"""The sender is its credentials: each upstream account may send only its own facts
(docs/contract.md "Who sent it"; docs/policy.md §5 rosters by department).

Given a fact, when an account that is not entitled to it sends it, then it is refused
``not_authorised`` and nothing is recorded; when the right account sends it, it applies. A
``msg_id`` is unique per sender: the same id from two accounts is two messages.
"""

from __future__ import annotations

import random
from datetime import date

import msgspec
import pytest

from ledger import commands as c
from ledger.application import Actor, Ledger
from ledger.domain.refusals import NotAuthorised
from ledger.senders import SENDERS
from tests.scenario.conftest import at, resident
from tests.scenario.steps_status import STANDARD_Y, Y, recorded

HOME = "340104"


def sent_by(account: str | None, channel: str | None = None, org_id: str | None = None, operator: str | None = None) -> Actor:
    return Actor(system="upstream", channel=channel, org_id=org_id, operator_id=operator, account=account)


def registration(id_number: str, msg_id: str = "reg-1") -> c.RegisterPerson:
    return c.RegisterPerson(msg_id=msg_id, occurred_at=at(Y - 1, 9, 1), id_number=id_number, name="居民", district=HOME)


def enrollment(id_number: str, channel: str, msg_id: str = "enr-1") -> c.RequestEnrollment:
    return c.RequestEnrollment(
        msg_id=msg_id, occurred_at=at(Y - 1, 9, 2), id_number=id_number, coverage_year=Y, category="resident",
        channel=channel, district=HOME,
    )  # fmt: skip


def payment(id_number: str, channel: str, msg_id: str = "pay-1", **cash: str) -> c.ReceivePayment:
    return c.ReceivePayment(
        msg_id=msg_id, occurred_at=at(Y - 1, 9, 3), id_number=id_number, coverage_year=Y, amount_fen=STANDARD_Y,
        channel=channel, paid_at=at(Y - 1, 9, 3), **cash,
    )  # fmt: skip


def roster_line(id_number: str, category: str, department: str) -> c.ListSubsidy:
    return c.ListSubsidy(
        msg_id=f"roster-{category}", occurred_at=at(Y - 1, 8, 20), id_number=id_number, coverage_year=Y,
        subsidy_category=category, department=department, roster=f"{Y - 1}-08",
    )  # fmt: skip


@pytest.fixture
def someone(rng: random.Random) -> str:
    return resident(rng, date(1980, 5, 1), HOME)


def refused(ledger: Ledger, command: c.Command, actor: Actor) -> NotAuthorised:
    before = recorded(ledger)
    with pytest.raises(NotAuthorised) as refusal:
        ledger.handle(command, actor)
    assert refusal.value.reason == "not_authorised" and refusal.value.detail
    assert recorded(ledger) == before
    return refusal.value


def test_a_cash_payment_from_the_wechat_system_is_not_authorised(ledger: Ledger, someone: str) -> None:
    ledger.handle(registration(someone), sent_by("public_security"))
    ledger.handle(enrollment(someone, "wechat"), sent_by("wechat_pay", "wechat"))
    cash = payment(someone, "community_cash", receipt_no="R-1", collector_id="collector-7")
    refused(ledger, cash, sent_by("wechat_pay", "community_cash", "collector-7"))
    # the receipt number was not used up: the community's own cash payment with it applies
    assert ledger.handle(cash, sent_by("community", "community_cash", "collector-7")).recorded


def test_a_wechat_payment_naming_a_cash_collector_is_not_authorised(ledger: Ledger, someone: str) -> None:
    ledger.handle(registration(someone), sent_by("public_security"))
    ledger.handle(enrollment(someone, "wechat"), sent_by("wechat_pay", "wechat"))
    refused(ledger, payment(someone, "wechat", collector_id="collector-7"), sent_by("wechat_pay", "wechat", "collector-7"))


def test_an_enrollment_through_a_community_channel_from_the_wechat_system_is_not_authorised(
    ledger: Ledger, someone: str
) -> None:
    ledger.handle(registration(someone), sent_by("public_security"))
    refused(ledger, enrollment(someone, "community_qr"), sent_by("wechat_pay", "community_qr"))
    assert ledger.handle(enrollment(someone, "community_qr"), sent_by("community", "community_qr")).recorded


def test_an_enrollment_naming_a_committee_operator_from_the_wechat_system_is_not_authorised(
    ledger: Ledger, someone: str
) -> None:
    """WeChat is self-service: an operator it names would pass for a committee's staff (and the
    operator rules would count its enrollments against them)."""
    ledger.handle(registration(someone), sent_by("public_security"))
    refused(ledger, enrollment(someone, "wechat"), sent_by("wechat_pay", "wechat", operator="op-340104-07"))
    assert ledger.handle(enrollment(someone, "community_qr"), sent_by("community", "community_qr", operator="op-340104-07")).recorded


@pytest.mark.parametrize(
    ("category", "department", "wrong"),
    [
        ("dibao", "civil_affairs", "health_commission"),
        ("family_planning_special", "health_commission", "civil_affairs"),
        ("poverty_returned", "rural_revitalisation", "civil_affairs"),
        ("extreme_poverty", "civil_affairs", "bureau"),
    ],
)
def test_a_roster_category_is_accepted_only_from_its_department(
    ledger: Ledger, someone: str, category: str, department: str, wrong: str
) -> None:
    ledger.handle(registration(someone), sent_by("public_security"))
    refused(ledger, roster_line(someone, category, department), sent_by(wrong, org_id=department))
    assert ledger.handle(roster_line(someone, category, department), sent_by(department, org_id=department)).recorded


def test_a_fact_outside_the_senders_office_is_not_authorised(ledger: Ledger, someone: str) -> None:
    death = c.RegisterDeath(msg_id="death-1", occurred_at=at(Y, 3, 1), id_number=someone, date_of_death=date(Y, 2, 28))
    refused(ledger, registration(someone), sent_by("wechat_pay"))
    refused(ledger, death, sent_by("employee_insurance"))
    refused(ledger, registration(someone), sent_by("no_such_account"))


def test_the_same_msg_id_from_two_senders_is_two_messages(ledger: Ledger, someone: str) -> None:
    """Public security and a community committee both register the person, with one msg_id
    and different content: neither is taken for the other's repeat (or conflict)."""
    ledger.handle(registration(someone, "shared-id"), sent_by("public_security"))
    moved = msgspec.structs.replace(registration(someone, "shared-id"), phone="13800000000")
    outcome = ledger.handle(moved, sent_by("community"))
    assert outcome.recorded and not outcome.duplicate
    person = ledger.person(someone)
    assert person is not None and person.phone == "13800000000"


def test_a_repeat_of_a_msg_id_by_the_same_sender_is_a_duplicate(ledger: Ledger, someone: str) -> None:
    ledger.handle(registration(someone), sent_by("public_security"))
    ledger.handle(enrollment(someone, "wechat"), sent_by("wechat_pay", "wechat"))
    ledger.handle(payment(someone, "wechat", "pay-9"), sent_by("wechat_pay", "wechat"))
    assert ledger.handle(payment(someone, "wechat", "pay-9"), sent_by("wechat_pay", "wechat")).duplicate


def test_an_unattributed_fact_is_not_checked_against_any_sender(ledger: Ledger, someone: str) -> None:
    """A server without accounts cannot say who sent a fact: the ledger records it as the body
    says (the deployment's accounts make such messages impossible; LEDGER_UNATTRIBUTED=refuse
    refuses them at the edge)."""
    assert ledger.handle(registration(someone), sent_by(None)).recorded


def test_every_sender_may_send_something_and_every_channel_belongs_to_one_sender() -> None:
    assert all(entitlement.commands for entitlement in SENDERS.values())
    channels = [channel for entitlement in SENDERS.values() for channel in entitlement.channels]
    assert len(channels) == len(set(channels))
    categories = [k for entitlement in SENDERS.values() for k in entitlement.subsidy_categories]
    assert len(categories) == len(set(categories)) == 8
