"""Who may enroll (domain.md §2, 合肥市2021年方案 §二): a valid resident ID, a district of the
region, not in employee insurance, one active enrollment per person and year, minors of
employees under 18, residence-permit holders only with a permit."""

from __future__ import annotations

import random
from datetime import date

import pytest

from ledger.application import Actor, Ledger
from ledger.commands import ChangeEmployeeInsurance
from ledger.domain.identity import check_character
from tests.scenario.conftest import at, resident
from tests.scenario.steps_money import (
    COMMUNITY_QR,
    enroll,
    new_msg_id,
    pay,
    refused,
    register,
    yuan,
)

EMPLOYEE_SYSTEM = Actor(system="employee_insurance")


def _with_check_character(first17: str) -> str:
    return first17 + check_character(first17)


def _wrong_check_character(rng: random.Random) -> str:
    valid = resident(rng, date(1979, 5, 21))
    wrong = next(c for c in "0123456789X" if c != valid[17])
    return valid[:17] + wrong


@pytest.mark.parametrize(
    "make_id_number",
    [
        pytest.param(_wrong_check_character, id="wrong_check_character"),
        pytest.param(lambda rng: _with_check_character("34010419870230123"), id="february_30th"),
        pytest.param(lambda rng: _with_check_character("34010419871301123"), id="thirteenth_month"),
        pytest.param(lambda rng: resident(rng, date(2021, 9, 16)), id="born_after_the_message_date"),
    ],
)
def test_an_enrollment_with_an_invalid_id_number_is_refused(ledger: Ledger, rng: random.Random, make_id_number) -> None:  # type: ignore[no-untyped-def]
    # Given an ID number whose check character, birth date or birth date relative to the message
    # (sent on Sep 15 2021) breaks GB 11643
    id_number = make_id_number(rng)

    # When it is used to enroll, or to register the person
    # Then both are refused and the person does not appear in the ledger
    with refused(ledger, "invalid_id_number"):
        enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 15))
    with refused(ledger, "invalid_id_number"):
        register(ledger, id_number, on=at(2021, 9, 15))


def test_a_birth_date_is_judged_against_the_message_date_not_the_wall_clock(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a child born on Oct 3 2021 (long past by the wall clock)
    id_number = resident(rng, date(2021, 10, 3))

    # When a message dated the day before the birth uses the number, it is refused
    with refused(ledger, "invalid_id_number"):
        register(ledger, id_number, on=at(2021, 10, 2))
    # and a message dated the day of the birth is accepted
    assert register(ledger, id_number, on=at(2021, 10, 3)).recorded > 0


@pytest.mark.parametrize(
    "district",
    [
        pytest.param("340100", id="hefei_city_code_is_no_district"),
        pytest.param("340202", id="wuhu_jinghu"),
        pytest.param("310101", id="shanghai_huangpu"),
    ],
)
def test_an_enrollment_in_a_district_outside_the_region_is_refused(
    ledger: Ledger, rng: random.Random, district: str
) -> None:
    # Given a resident of 蜀山区 and a first-time resident nobody registered
    registered, unknown = resident(rng, date(1988, 1, 8)), resident(rng, date(1990, 2, 9))
    register(ledger, registered, on=at(2021, 8, 1))

    # When either enrolls giving a division code that is not one of Hefei's districts
    # Then the enrollment is refused
    with refused(ledger, "unknown_district"):
        enroll(ledger, registered, coverage_year=2022, on=at(2021, 9, 8), district=district)
    with refused(ledger, "unknown_district"):
        enroll(ledger, unknown, coverage_year=2022, on=at(2021, 9, 8), district=district)
    assert ledger.person(unknown) is None


def test_a_registration_in_a_district_outside_the_region_is_refused(ledger: Ledger, rng: random.Random) -> None:
    id_number = resident(rng, date(1988, 1, 8))
    with refused(ledger, "unknown_district"):
        register(ledger, id_number, on=at(2021, 8, 1), district="340200")


def test_a_person_in_employee_insurance_for_the_coverage_year_may_not_enroll(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a worker in employee insurance (职工医保) since 2019, still insured
    id_number = resident(rng, date(1985, 3, 3))
    ledger.change_employee_insurance(ChangeEmployeeInsurance(
        msg_id=new_msg_id("emp"), occurred_at=at(2021, 7, 1), id_number=id_number,
        insured_from=date(2019, 1, 1), continuous_months=30,
    ), EMPLOYEE_SYSTEM)  # fmt: skip

    # When they enroll in resident insurance for 2022
    # Then they are refused: one person may not be in both schemes for a year
    with refused(ledger, "in_employee_insurance"):
        enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 10))


def test_a_person_whose_employee_insurance_ended_before_the_coverage_year_may_enroll(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a worker whose employee insurance ended in June 2021
    id_number = resident(rng, date(1985, 3, 3))
    ledger.change_employee_insurance(ChangeEmployeeInsurance(
        msg_id=new_msg_id("emp"), occurred_at=at(2021, 7, 1), id_number=id_number,
        insured_from=date(2019, 1, 1), insured_until=date(2021, 6, 30), continuous_months=30,
    ), EMPLOYEE_SYSTEM)  # fmt: skip

    # When they enroll and pay for 2022 in the concentrated period
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 10))
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 10))

    # Then they are covered in 2022
    assert ledger.coverage(id_number, date(2022, 3, 1)).covered


@pytest.mark.parametrize("paid_first", [False, True], ids=["while_awaiting_payment", "once_paid"])
def test_a_person_has_one_active_enrollment_per_coverage_year(
    ledger: Ledger, rng: random.Random, paid_first: bool
) -> None:
    # Given a resident who enrolled for 2022 through WeChat (and perhaps paid)
    id_number = resident(rng, date(1972, 12, 12))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 3))
    if paid_first:
        pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 3))

    # When the community committee enrolls them again for 2022 (a new request, not a redelivery)
    # Then the second enrollment is refused
    with refused(ledger, "already_enrolled"):
        enroll(ledger, id_number, coverage_year=2022, on=at(2021, 10, 9), channel="community_qr", actor=COMMUNITY_QR)
    assert len(ledger.person(id_number).enrollments) == 1  # type: ignore[union-attr]


def test_one_enrollment_per_year_does_not_stop_enrolling_for_the_next_year(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident enrolled and paid for 2021
    id_number = resident(rng, date(1972, 12, 12))
    enroll(ledger, id_number, coverage_year=2021, on=at(2020, 9, 3))
    pay(ledger, id_number, coverage_year=2021, amount_fen=yuan(280), paid_at=at(2020, 9, 3))

    # When they enroll and pay for 2022 a year later
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 3))
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 3))

    # Then both years are covered
    assert ledger.coverage(id_number, date(2021, 6, 1)).covered
    assert ledger.coverage(id_number, date(2022, 6, 1)).covered


def test_a_minor_of_an_employee_aged_18_on_the_enrollment_day_is_not_eligible(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a child of an insured employee who turns 18 on Sep 10 2021
    id_number = resident(rng, date(2003, 9, 10))

    # When they enroll as a minor of an employee that very day
    # Then they are refused: they are no longer a minor
    with refused(ledger, "not_eligible"):
        enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 10), category="minor_of_employee")


def test_a_minor_of_an_employee_under_18_may_enroll(ledger: Ledger, rng: random.Random) -> None:
    # Given a child of an insured employee who turns 18 on Sep 11 2021
    id_number = resident(rng, date(2003, 9, 11))

    # When they enroll as a minor of an employee on Sep 10 and pay
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 10), category="minor_of_employee")
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 10))

    # Then they are covered in 2022
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered


@pytest.mark.parametrize("registered", [False, True], ids=["never_registered", "registered_without_permit"])
def test_a_residence_permit_enrollment_without_a_permit_is_not_eligible(
    ledger: Ledger, rng: random.Random, registered: bool
) -> None:
    # Given someone from Henan living in 蜀山区, with no residence permit (居住证) on record
    id_number = resident(rng, date(1991, 4, 4), district="410102")
    if registered:
        register(ledger, id_number, on=at(2021, 8, 1), residence_permit=False)

    # When they enroll as a residence-permit holder
    # Then they are refused
    with refused(ledger, "not_eligible"):
        enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 14), category="residence_permit")


def test_a_residence_permit_holder_may_enroll(ledger: Ledger, rng: random.Random) -> None:
    # Given someone from Henan registered in 蜀山区 with a residence permit
    id_number = resident(rng, date(1991, 4, 4), district="410102")
    register(ledger, id_number, on=at(2021, 8, 1), residence_permit=True)

    # When they enroll as a residence-permit holder and pay
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 14), category="residence_permit")
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 14))

    # Then they are covered in 2022
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered
