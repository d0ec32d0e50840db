"""Every refusal has one reason from the contract's vocabulary, and records nothing
(contract.md: rejection reasons; domain.md §2 who may enroll, §4, §6; style.md principle 5).

Each test sends facts through the ``Ledger`` application and checks three things: the typed
``Refusal`` raised, its ``reason`` string exactly as the contract spells it, and that the store
holds no more events than before the refused fact.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, datetime

import pytest

from ledger.application import Ledger
from ledger.domain.identity import check_character
from ledger.domain.refusals import (
    REASONS,
    AlreadyEnrolled,
    AmountMismatch,
    Deceased,
    DuplicateReceipt,
    InEmployeeInsurance,
    InvalidIdNumber,
    Malformed,
    NoEnrollment,
    NoPolicyForYear,
    NotEligible,
    OutsideEnrollmentPeriod,
    Refusal,
    UnknownDistrict,
)
from tests.scenario import test_senders
from tests.scenario.conftest import at
from tests.scenario.steps_status import (
    COMMUNITY_CASH,
    STANDARD_Y,
    People,
    Y,
    death,
    discharge,
    employee_insurance,
    enroll,
    enroll_and_pay,
    list_on_roster,
    pay,
    recorded,
    register,
)

CONTRACT_REASONS = (
    # contract.md, "Rejection reasons (at least)"
    "malformed", "invalid_id_number", "unknown_district", "outside_enrollment_period", "not_eligible",
    "already_enrolled", "in_employee_insurance", "deceased", "amount_mismatch", "no_enrollment",
    "duplicate_receipt",
)  # fmt: skip


@pytest.fixture
def people(rng: random.Random) -> People:
    return People(rng)


def assert_refused(ledger: Ledger, refusal: type[Refusal], reason: str, fact: Callable[[], object]) -> Refusal:
    """``fact`` is refused with ``refusal`` for ``reason``, and the store records nothing."""
    before = recorded(ledger)
    with pytest.raises(refusal) as refused:
        fact()
    assert type(refused.value) is refusal
    assert refused.value.reason == reason
    assert refused.value.detail
    assert recorded(ledger) == before
    return refused.value


def test_the_ledger_gives_every_reason_of_the_contract_and_each_is_tested_here() -> None:
    assert set(CONTRACT_REASONS) <= set(REASONS)
    assert set(REASONS) == set(TESTED_REASONS)
    assert len(REASONS) == len(set(REASONS))


# ---- malformed ------------------------------------------------------------------------------------


def test_a_time_without_an_offset_is_malformed(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 1))
    assert_refused(
        ledger, Malformed, "malformed",
        lambda: enroll(ledger, someone, Y, "resident", datetime(Y - 1, 9, 2, 10)),
    )  # fmt: skip
    assert ledger.person(someone) is None


def test_a_birth_date_that_differs_from_the_id_number_is_malformed(ledger: Ledger, people: People) -> None:
    baby = people.born(date(Y, 3, 1))
    assert_refused(
        ledger, Malformed, "malformed",
        lambda: enroll(ledger, baby, Y, "newborn", at(Y, 3, 20), birth_date=date(Y, 3, 2)),
    )  # fmt: skip


def test_a_negative_payment_is_malformed(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 2))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 2))
    assert_refused(ledger, Malformed, "malformed", lambda: pay(ledger, someone, Y, -100, at(Y - 1, 9, 3)))


def test_a_cash_payment_without_its_receipt_number_is_malformed_and_leaves_nothing_behind(
    ledger: Ledger, people: People
) -> None:
    # Given an enrollment awaiting payment
    elder = people.born(date(1940, 1, 3))
    enroll(ledger, elder, Y, "resident", at(Y - 1, 9, 2), channel="community_cash")
    # When the committee reports cash without the special receipt (专用票据), it is refused
    assert_refused(
        ledger, Malformed, "malformed",
        lambda: pay(ledger, elder, Y, STANDARD_Y, at(Y - 1, 9, 3), channel="community_cash",
                    collector_id="340104-sq-12", actor=COMMUNITY_CASH),
    )  # fmt: skip
    # Then the person still owes the contribution, and the proper payment goes through
    assert ledger.coverage(elder, date(Y, 1, 1)).status == "awaiting_payment"
    pay(ledger, elder, Y, STANDARD_Y, at(Y - 1, 9, 4), channel="community_cash", receipt_no="R-0001",
        collector_id="340104-sq-12", actor=COMMUNITY_CASH)  # fmt: skip
    assert ledger.coverage(elder, date(Y, 1, 1)).covered


def test_an_unknown_subsidy_category_is_malformed(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1960, 1, 4))
    assert_refused(
        ledger, Malformed, "malformed", lambda: list_on_roster(ledger, someone, Y, "rich_uncle", at(Y - 1, 8, 20))
    )


def test_more_back_paid_months_than_continuous_months_is_malformed(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 5))
    assert_refused(
        ledger, Malformed, "malformed",
        lambda: employee_insurance(ledger, someone, at(Y, 1, 5), insured_from=date(2020, 1, 1),
                                   insured_until=date(Y, 1, 1), continuous_months=12, back_paid_months=13),
    )  # fmt: skip


# ---- invalid ID numbers (GB 11643, domain.md §2) ----------------------------------------------------


def _with_birth_date(first6: str, birth: str, sequence: str = "123") -> str:
    first17 = f"{first6}{birth}{sequence}"
    return first17 + check_character(first17)


@pytest.mark.parametrize(
    "case",
    ["wrong check character", "impossible birth date", "born after the message", "17 characters", "unknown province"],
)
def test_an_invalid_id_number_is_refused(ledger: Ledger, people: People, case: str) -> None:
    valid = people.born(date(1980, 6, 15))
    wrong_check = valid[:17] + ("0" if valid[17] != "0" else "1")
    number = {
        "wrong check character": wrong_check,
        "impossible birth date": _with_birth_date("340104", "19800230"),
        "born after the message": _with_birth_date("340104", f"{Y - 1}1001"),
        "17 characters": valid[:17],
        "unknown province": _with_birth_date("990104", "19800615"),
    }[case]
    # A request dated Sep 2, 2021: a birth date of Oct 1, 2021 lies in its future
    assert_refused(
        ledger, InvalidIdNumber, "invalid_id_number", lambda: enroll(ledger, number, Y, "resident", at(Y - 1, 9, 2))
    )


# ---- unknown district --------------------------------------------------------------------------------


def test_a_district_outside_hefei_is_unknown(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 6))
    assert_refused(
        ledger, UnknownDistrict, "unknown_district",
        lambda: enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 2), district="110101"),
    )  # fmt: skip
    assert_refused(
        ledger, UnknownDistrict, "unknown_district",
        lambda: register(ledger, someone, at(Y - 1, 8, 2), district="340100"),
    )  # fmt: skip


# ---- outside the enrollment period ---------------------------------------------------------------------


def test_an_ordinary_resident_enrolling_after_the_period_is_refused(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 7))
    assert_refused(
        ledger, OutsideEnrollmentPeriod, "outside_enrollment_period",
        lambda: enroll(ledger, someone, Y, "resident", at(Y, 3, 1)),
    )  # fmt: skip


def test_an_enrollment_dated_after_its_coverage_year_is_refused(ledger: Ledger, people: People) -> None:
    # A soldier discharged in 2022 may enroll outside the period, but not for 2022 once it is over
    soldier = people.born(date(1996, 1, 7), sex="male")
    discharge(ledger, soldier, at(Y, 11, 2), date(Y, 11, 1))
    assert_refused(
        ledger, OutsideEnrollmentPeriod, "outside_enrollment_period",
        lambda: enroll(ledger, soldier, Y, "veteran", at(Y + 1, 1, 5)),
    )  # fmt: skip


# ---- not eligible (domain.md §2) ---------------------------------------------------------------------


def test_an_adult_is_not_eligible_as_the_minor_of_an_employee(ledger: Ledger, people: People) -> None:
    adult = people.born(date(2003, 9, 1))  # 18 on Sep 1, 2021
    assert_refused(
        ledger, NotEligible, "not_eligible",
        lambda: enroll(ledger, adult, Y, "minor_of_employee", at(Y - 1, 9, 2)),
    )  # fmt: skip


def test_a_residence_permit_enrollment_needs_a_registered_permit(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1988, 1, 8), )
    register(ledger, someone, at(Y - 1, 8, 1), residence_permit=False)
    assert_refused(
        ledger, NotEligible, "not_eligible",
        lambda: enroll(ledger, someone, Y, "residence_permit", at(Y - 1, 9, 2)),
    )  # fmt: skip


# ---- already enrolled (一人一年一个有效参保) ---------------------------------------------------------------


def test_a_second_enrollment_for_the_same_year_is_refused(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 9))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 2))
    assert_refused(
        ledger, AlreadyEnrolled, "already_enrolled",
        lambda: enroll(ledger, someone, Y, "student", at(Y - 1, 10, 2), channel="school"),
    )  # fmt: skip


def test_paying_twice_for_the_same_year_is_refused(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 10))
    enroll_and_pay(ledger, someone, Y, "resident", at(Y - 1, 9, 2))
    assert_refused(
        ledger, AlreadyEnrolled, "already_enrolled", lambda: pay(ledger, someone, Y, STANDARD_Y, at(Y - 1, 9, 5))
    )


# ---- in employee insurance ---------------------------------------------------------------------------


def test_a_member_of_employee_insurance_for_the_year_may_not_enroll(ledger: Ledger, people: People) -> None:
    worker = people.born(date(1985, 1, 11))
    employee_insurance(ledger, worker, at(2020, 3, 5), insured_from=date(2020, 3, 1), continuous_months=18)
    assert_refused(
        ledger, InEmployeeInsurance, "in_employee_insurance",
        lambda: enroll(ledger, worker, Y, "resident", at(Y - 1, 9, 2)),
    )  # fmt: skip


# ---- deceased -------------------------------------------------------------------------------------------


def test_an_enrollment_after_a_registered_death_is_refused(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1930, 1, 12))
    death(ledger, someone, at(Y - 1, 8, 3), date(Y - 1, 8, 1))
    assert_refused(
        ledger, Deceased, "deceased", lambda: enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 2))
    )


# ---- amount mismatch -------------------------------------------------------------------------------------


def test_a_payment_of_the_wrong_amount_is_refused(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 13))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 2))
    assert_refused(
        ledger, AmountMismatch, "amount_mismatch", lambda: pay(ledger, someone, Y, 28_000, at(Y - 1, 9, 3))
    )
    assert ledger.coverage(someone, date(Y, 1, 1)).status == "awaiting_payment"


def test_a_subsidised_person_paying_the_full_contribution_is_refused(ledger: Ledger, people: People) -> None:
    # 低保: the assistance fund pays 288 of 320 yuan; the person owes 32
    someone = people.born(date(1960, 1, 14))
    list_on_roster(ledger, someone, Y, "dibao", at(Y - 1, 8, 20))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 2))
    assert_refused(
        ledger, AmountMismatch, "amount_mismatch", lambda: pay(ledger, someone, Y, STANDARD_Y, at(Y - 1, 9, 3))
    )


# ---- no enrollment -------------------------------------------------------------------------------------


def test_a_payment_for_someone_the_ledger_does_not_know_is_refused(ledger: Ledger, people: People) -> None:
    stranger = people.born(date(1980, 1, 15))
    assert_refused(
        ledger, NoEnrollment, "no_enrollment", lambda: pay(ledger, stranger, Y, STANDARD_Y, at(Y - 1, 9, 3))
    )


def test_a_payment_for_a_year_without_enrollment_is_refused(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 16))
    enroll_and_pay(ledger, someone, Y - 1, "resident", at(Y - 2, 9, 2), amount_fen=28_000)
    assert_refused(
        ledger, NoEnrollment, "no_enrollment", lambda: pay(ledger, someone, Y, STANDARD_Y, at(Y - 1, 9, 3))
    )


# ---- duplicate receipt (专用票据 used once) ----------------------------------------------------------------


def test_a_cash_receipt_number_used_twice_is_refused(ledger: Ledger, people: People) -> None:
    first, second = people.born(date(1941, 1, 17)), people.born(date(1942, 1, 18))
    for elder in (first, second):
        enroll(ledger, elder, Y, "resident", at(Y - 1, 9, 2), channel="community_cash")
    pay(ledger, first, Y, STANDARD_Y, at(Y - 1, 9, 3), channel="community_cash", receipt_no="HF-2021-000123",
        collector_id="340104-sq-12", actor=COMMUNITY_CASH)  # fmt: skip
    assert_refused(
        ledger, DuplicateReceipt, "duplicate_receipt",
        lambda: pay(ledger, second, Y, STANDARD_Y, at(Y - 1, 9, 4), channel="community_cash",
                    receipt_no="HF-2021-000123", collector_id="340104-sq-12", actor=COMMUNITY_CASH),
    )  # fmt: skip
    assert ledger.coverage(second, date(Y, 1, 1)).status == "awaiting_payment"


# ---- no policy for the year (never guessed) -----------------------------------------------------------------


def test_an_enrollment_for_a_year_no_policy_table_covers_is_refused(ledger: Ledger, people: People) -> None:
    someone = people.born(date(1980, 1, 19))
    assert_refused(
        ledger, NoPolicyForYear, "no_policy_for_year",
        lambda: enroll(ledger, someone, Y + 1, "resident", at(Y, 9, 2)),
    )  # fmt: skip
    assert_refused(
        ledger, NoPolicyForYear, "no_policy_for_year",
        lambda: enroll(ledger, someone, 2016, "resident", at(2015, 9, 2)),
    )  # fmt: skip


TESTED_REASONS = {
    "malformed": test_a_time_without_an_offset_is_malformed,
    "invalid_id_number": test_an_invalid_id_number_is_refused,
    "unknown_district": test_a_district_outside_hefei_is_unknown,
    "outside_enrollment_period": test_an_ordinary_resident_enrolling_after_the_period_is_refused,
    "not_eligible": test_an_adult_is_not_eligible_as_the_minor_of_an_employee,
    "already_enrolled": test_a_second_enrollment_for_the_same_year_is_refused,
    "in_employee_insurance": test_a_member_of_employee_insurance_for_the_year_may_not_enroll,
    "deceased": test_an_enrollment_after_a_registered_death_is_refused,
    "amount_mismatch": test_a_payment_of_the_wrong_amount_is_refused,
    "no_enrollment": test_a_payment_for_someone_the_ledger_does_not_know_is_refused,
    "duplicate_receipt": test_a_cash_receipt_number_used_twice_is_refused,
    "no_policy_for_year": test_an_enrollment_for_a_year_no_policy_table_covers_is_refused,
    "not_authorised": test_senders.test_a_cash_payment_from_the_wechat_system_is_not_authorised,
}
"""One test per reason of ``REASONS`` (more above for the common ones)."""
