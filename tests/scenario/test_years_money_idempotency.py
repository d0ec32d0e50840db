"""Idempotency and atomicity of the money facts (contract.md; style.md principle 6): a message
delivered again with the same msg_id is a duplicate and changes nothing; a refused message
records nothing at all, so delivering it again gives the same refusal."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date

import pytest

from ledger.application import Ledger
from ledger.domain.cash import collector_id
from tests.scenario.conftest import at, resident
from tests.scenario.steps_money import (
    enroll,
    events_recorded,
    list_on_roster,
    pay,
    pay_cash,
    person_events,
    refused,
    register,
    yuan,
)


def _redelivered_is_duplicate(ledger: Ledger, send: Callable[[], object]) -> None:
    before = events_recorded(ledger)
    outcome = send()
    assert outcome.duplicate and outcome.recorded == 0  # type: ignore[attr-defined]
    assert events_recorded(ledger) == before


def test_a_registration_delivered_twice_is_recorded_once(ledger: Ledger, rng: random.Random) -> None:
    id_number = resident(rng, date(1980, 8, 8))
    first = register(ledger, id_number, on=at(2021, 8, 1), msg_id="reg-1")
    assert first.recorded == 1 and not first.duplicate

    _redelivered_is_duplicate(ledger, lambda: register(ledger, id_number, on=at(2021, 8, 1), msg_id="reg-1"))
    assert len(person_events(ledger, id_number)) == 1


def test_an_enrollment_request_delivered_again_after_payment_is_a_duplicate_not_a_second_enrollment(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident who enrolled (msg enr-1) and paid for 2022
    id_number = resident(rng, date(1980, 8, 8))
    assert enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6), msg_id="enr-1").recorded > 0
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 6))

    # When enr-1 is delivered again
    # Then it is a duplicate (not refused as already enrolled) and the enrollment is unchanged
    _redelivered_is_duplicate(
        ledger, lambda: enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6), msg_id="enr-1")
    )
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered


def test_a_payment_delivered_twice_is_counted_once(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident who enrolled and paid 320 yuan (msg pay-1)
    id_number = resident(rng, date(1980, 8, 8))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 6), msg_id="pay-1")

    # When pay-1 is delivered again
    # Then it is a duplicate: not refused, and 320 yuan stays paid, not 640
    _redelivered_is_duplicate(
        ledger,
        lambda: pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 6), msg_id="pay-1"),
    )
    assert ledger.person(id_number).enrollments[2022].paid_fen == yuan(320)  # type: ignore[union-attr]


def test_a_cash_payment_delivered_twice_is_a_duplicate_not_a_reused_receipt(ledger: Ledger, rng: random.Random) -> None:
    # Given an elder who paid 320 yuan in cash on receipt 0101 (msg cash-1)
    id_number = resident(rng, date(1938, 8, 8))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6), channel="community_cash")

    def send():  # type: ignore[no-untyped-def]
        return pay_cash(
            ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 6),
            receipt_no="AH2021-0101", collector_id="340104-sq-12", msg_id="cash-1",
        )

    send()

    # When cash-1 is delivered again
    # Then it is a duplicate: the committee holds 320 yuan, once
    _redelivered_is_duplicate(ledger, send)
    assert ledger.repository.get(collector_id("340104-sq-12")).balance_fen == yuan(320)


@pytest.mark.parametrize("category", ["dibao", "extreme_poverty"])
def test_a_roster_entry_delivered_twice_is_kept_once(ledger: Ledger, rng: random.Random, category: str) -> None:
    # Given a person listed on the August roster (msg roster-1)
    id_number = resident(rng, date(1945, 8, 8))
    list_on_roster(ledger, id_number, category, on=at(2021, 8, 25), msg_id="roster-1")
    events_before = len(person_events(ledger, id_number))

    # When roster-1 is delivered again
    # Then it is a duplicate: one roster entry, and no second automatic enrollment
    _redelivered_is_duplicate(ledger, lambda: list_on_roster(ledger, id_number, category, on=at(2021, 8, 25), msg_id="roster-1"))
    assert len(ledger.person(id_number).rosters) == 1  # type: ignore[union-attr]
    assert len(person_events(ledger, id_number)) == events_before


def _amount_mismatch(ledger: Ledger, id_number: str) -> None:
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320) - 1, paid_at=at(2021, 9, 7), msg_id="p-bad")


def _outside_the_period(ledger: Ledger, id_number: str) -> None:
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2022, 1, 1, hour=0), msg_id="p-late")


def _cash_without_receipt(ledger: Ledger, id_number: str) -> None:
    pay_cash(
        ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 7),
        receipt_no=None, collector_id="340104-sq-12", msg_id="p-cash",
    )


def _second_enrollment(ledger: Ledger, id_number: str) -> None:
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 8), msg_id="e-again")


def _year_without_policy(ledger: Ledger, id_number: str) -> None:
    enroll(ledger, id_number, coverage_year=2030, on=at(2029, 9, 8), msg_id="e-2030")


def _unknown_district(ledger: Ledger, id_number: str) -> None:
    register(ledger, id_number, on=at(2021, 9, 8), district="340200", msg_id="r-moved")


@pytest.mark.parametrize(
    ("reason", "send"),
    [
        pytest.param("amount_mismatch", _amount_mismatch, id="amount_mismatch"),
        pytest.param("outside_enrollment_period", _outside_the_period, id="outside_enrollment_period"),
        pytest.param("malformed", _cash_without_receipt, id="cash_without_receipt"),
        pytest.param("already_enrolled", _second_enrollment, id="already_enrolled"),
        pytest.param("no_policy_for_year", _year_without_policy, id="no_policy_for_year"),
        pytest.param("unknown_district", _unknown_district, id="unknown_district"),
    ],
)
def test_a_refused_fact_records_nothing_and_is_refused_again_when_redelivered(
    ledger: Ledger, rng: random.Random, reason: str, send: Callable[[Ledger, str], None]
) -> None:
    # Given a registered resident enrolled for 2022, awaiting payment
    id_number = resident(rng, date(1975, 5, 25))
    register(ledger, id_number, on=at(2021, 8, 1))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))
    history = [type(e).__name__ for e in person_events(ledger, id_number)]

    # When a fact is refused
    with refused(ledger, reason):
        send(ledger, id_number)

    # Then the person's history is exactly as before and the enrollment still awaits payment
    assert [type(e).__name__ for e in person_events(ledger, id_number)] == history
    assert ledger.coverage(id_number, date(2022, 1, 1)).status == "awaiting_payment"
    # and the same message delivered again is refused again, not taken for a duplicate
    with refused(ledger, reason):
        send(ledger, id_number)


def test_after_a_refused_payment_the_right_amount_is_accepted(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident whose payment of one fen too little was refused
    id_number = resident(rng, date(1975, 5, 25))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))
    with refused(ledger, "amount_mismatch"):
        _amount_mismatch(ledger, id_number)

    # When they pay the right amount
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 7))

    # Then they are covered, having paid 320 yuan in all
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered
    assert ledger.person(id_number).enrollments[2022].paid_fen == yuan(320)  # type: ignore[union-attr]


def test_the_same_msg_id_from_two_different_senders_is_not_a_duplicate(ledger: Ledger, rng: random.Random) -> None:
    # Given civil affairs listed a 低保 recipient in message "1001" of its own numbering
    id_number = resident(rng, date(1955, 5, 5))
    list_on_roster(ledger, id_number, "dibao", on=at(2021, 8, 25), msg_id="1001")
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))

    # When WeChat Pay reports their 32-yuan payment in its message "1001"
    outcome = pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(32), paid_at=at(2021, 9, 6), msg_id="1001")

    # Then the payment is applied: msg_id is unique per sender, not across senders
    assert not outcome.duplicate
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered
