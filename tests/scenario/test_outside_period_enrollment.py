"""Who may enroll after the concentrated period, and from when they are covered (domain.md §4).

Sources: 皖医保发〔2021〕7号 (三) newborns, (七) cross-scheme transfer, discharged soldiers and new
assistance recipients, its second paragraph the 6-month waiting period; 医保发〔2021〕32号 §二 who
has no waiting period. The coverage year is 2022 (funding year 2021, 320 yuan) and the facts are
dated in it, after the 2021 concentrated period ended on Dec 31, 2021.
"""

from __future__ import annotations

import random
from datetime import date

import pytest

from ledger.application import Ledger
from ledger.domain.refusals import NotEligible, OutsideEnrollmentPeriod
from tests.scenario.conftest import at
from tests.scenario.steps_status import (
    STANDARD_Y,
    People,
    Y,
    discharge,
    employee_insurance,
    enroll,
    enroll_and_pay,
    list_on_roster,
    pay,
    recorded,
    register,
)


@pytest.fixture
def people(rng: random.Random) -> People:
    return People(rng)


def assert_covered_from(ledger: Ledger, id_number: str, start: date, *, benefit: date | None = None) -> None:
    """Covered (or waiting) from ``start`` to Dec 31 of Y, benefits from ``benefit`` (default:
    ``start``, no waiting period), and not the day before."""
    benefit = benefit or start
    first = ledger.coverage(id_number, start)
    assert (first.coverage_start, first.coverage_end, first.benefit_start) == (start, date(Y, 12, 31), benefit)
    assert first.status == "enrolled"
    assert first.covered == (benefit == start)
    assert first.in_waiting_period == (benefit != start)
    if start > date(Y, 1, 1):
        before = ledger.coverage(id_number, date.fromordinal(start.toordinal() - 1))
        assert not before.covered and not before.in_waiting_period
    assert ledger.coverage(id_number, date(Y, 12, 31)).covered


# ---- newborns (新生儿, 7号 (三)) ---------------------------------------------------------------


def test_newborn_enrolled_within_three_months_is_covered_from_birth(ledger: Ledger, people: People) -> None:
    # Given a baby born on Mar 10, 2022
    born = date(Y, 3, 10)
    baby = people.born(born)
    # When the parents enroll and pay on Jun 10, the last day of the three months
    enroll(ledger, baby, Y, "newborn", at(Y, 4, 2), birth_date=born)
    pay(ledger, baby, Y, STANDARD_Y, at(Y, 6, 10))
    # Then the baby is covered from the day of birth, with no waiting period
    assert_covered_from(ledger, baby, born)
    assert ledger.coverage(baby, date(Y, 3, 11)).covered


def test_newborn_enrolled_after_three_months_is_covered_from_the_day_after_payment(
    ledger: Ledger, people: People
) -> None:
    # Given a baby born on Jan 15, 2022, whose three months ended on Apr 15
    baby = people.born(date(Y, 1, 15))
    # When the parents enroll and pay on Jun 1
    enroll_and_pay(ledger, baby, Y, "newborn", at(Y, 6, 1))
    # Then the baby is covered from Jun 2, with no waiting period, and not before
    assert_covered_from(ledger, baby, date(Y, 6, 2))
    assert not ledger.coverage(baby, date(Y, 1, 15)).covered


def test_newborn_paid_one_day_after_the_three_months_is_covered_from_the_day_after_payment(
    ledger: Ledger, people: People
) -> None:
    # Given a baby born on Mar 10, 2022
    baby = people.born(date(Y, 3, 10))
    # When enrolled in time but paid on Jun 11, one day after the three months
    enroll(ledger, baby, Y, "newborn", at(Y, 4, 2))
    pay(ledger, baby, Y, STANDARD_Y, at(Y, 6, 11))
    # Then coverage starts on Jun 12, not at birth
    assert_covered_from(ledger, baby, date(Y, 6, 12))


def test_newborn_born_in_the_concentrated_period_may_enroll_for_the_current_year_and_the_next(
    ledger: Ledger, people: People
) -> None:
    # Given a baby born on Oct 20, 2021, during the concentrated period for 2022
    born = date(Y - 1, 10, 20)
    baby = people.born(born)
    # When the parents enroll and pay for 2021 (320 − 40 = 280 yuan, funding year 2020) and for 2022
    enroll(ledger, baby, Y - 1, "newborn", at(Y - 1, 11, 1))
    pay(ledger, baby, Y - 1, 28_000, at(Y - 1, 11, 5))
    enroll(ledger, baby, Y, "newborn", at(Y - 1, 11, 1))
    pay(ledger, baby, Y, STANDARD_Y, at(Y - 1, 11, 5))
    # Then the baby is covered from birth through 2021, and all of 2022, without a gap
    this_year = ledger.coverage(baby, born)
    assert this_year.covered and this_year.coverage_year == Y - 1
    assert (this_year.coverage_start, this_year.coverage_end) == (born, date(Y - 1, 12, 31))
    next_year = ledger.coverage(baby, date(Y, 1, 1))
    assert next_year.covered and next_year.coverage_year == Y
    assert (next_year.coverage_start, next_year.coverage_end) == (date(Y, 1, 1), date(Y, 12, 31))
    assert not ledger.coverage(baby, date(Y - 1, 10, 19)).covered


def test_newborn_born_in_december_enrolled_in_january_is_covered_from_january_first(
    ledger: Ledger, people: People
) -> None:
    # Given a baby born on Dec 20, 2021, after the parents could use the concentrated period
    baby = people.born(date(Y - 1, 12, 20))
    # When they enroll the baby for 2022 and pay on Jan 11, 2022, within the three months
    enroll_and_pay(ledger, baby, Y, "newborn", at(Y, 1, 11))
    # Then the baby is covered all of 2022, with no waiting period
    assert_covered_from(ledger, baby, date(Y, 1, 1))


def test_newborn_born_in_december_enrolled_within_three_months_is_covered_from_birth(
    ledger: Ledger, people: People
) -> None:
    # Given a baby born on Dec 20, 2021
    born = date(Y - 1, 12, 20)
    baby = people.born(born)
    # When the parents enroll the baby for the year of birth (当年) on Jan 11, 2022, within the
    # three months, and pay that year's 280 yuan
    enroll(ledger, baby, Y - 1, "newborn", at(Y, 1, 11))
    pay(ledger, baby, Y - 1, 28_000, at(Y, 1, 11))
    # Then the baby is covered from the day of birth (自出生之日起享受当年居民医保待遇)
    answer = ledger.coverage(baby, born)
    assert answer.covered and answer.coverage_start == born


def test_a_newborn_claim_for_a_child_born_years_ago_is_not_eligible(ledger: Ledger, people: People) -> None:
    # Given a child born in 2019
    child = people.born(date(2019, 6, 1))
    before = recorded(ledger)
    # When enrolled as a newborn in 2022
    with pytest.raises(NotEligible):
        enroll(ledger, child, Y, "newborn", at(Y, 3, 1))
    # Then nothing is recorded
    assert recorded(ledger) == before


# ---- cross-scheme transfer from employee insurance (跨制度参保衔接, 7号 (七)) ------------------------


def test_employee_member_of_two_years_lapsed_up_to_three_months_is_covered_from_the_day_after_payment(
    ledger: Ledger, people: People
) -> None:
    # Given 39 continuous months of employee insurance, ended on Mar 31, 2022 (a change of job)
    member = people.born(date(1985, 4, 1))
    employee_insurance(
        ledger, member, at(Y, 4, 2), insured_from=date(2019, 1, 1), insured_until=date(Y, 3, 31), continuous_months=39
    )
    # When they enroll in resident insurance and pay on Jun 30, three months after the lapse
    enroll(ledger, member, Y, "cross_scheme", at(Y, 6, 20))
    pay(ledger, member, Y, STANDARD_Y, at(Y, 6, 30))
    # Then they are covered from Jul 1 with no waiting period (自参保缴费次日起享受待遇)
    assert_covered_from(ledger, member, date(Y, 7, 1))


def test_exactly_twenty_four_months_without_back_payments_is_enough(ledger: Ledger, people: People) -> None:
    # Given 34 continuous months of which 10 were paid afterwards (补缴): 24 count
    member = people.born(date(1986, 4, 1))
    employee_insurance(
        ledger, member, at(Y, 2, 1), insured_from=date(2019, 4, 1), insured_until=date(Y, 1, 31),
        continuous_months=34, back_paid_months=10,
    )  # fmt: skip
    # When they enroll and pay on Mar 15
    enroll_and_pay(ledger, member, Y, "cross_scheme", at(Y, 3, 15))
    # Then they are covered from Mar 16
    assert_covered_from(ledger, member, date(Y, 3, 16))


def test_back_paid_months_do_not_count_towards_the_two_continuous_years(ledger: Ledger, people: People) -> None:
    # Given 30 continuous months of employee insurance, 10 of them paid afterwards (不含补缴)
    member = people.born(date(1987, 4, 1))
    employee_insurance(
        ledger, member, at(Y, 2, 1), insured_from=date(2019, 8, 1), insured_until=date(Y, 1, 31),
        continuous_months=30, back_paid_months=10,
    )  # fmt: skip
    # When they enroll and pay after the concentrated period
    with pytest.raises(NotEligible) as refused:
        enroll_and_pay(ledger, member, Y, "cross_scheme", at(Y, 3, 15))
    # Then they are refused as not eligible, and not covered
    assert refused.value.reason == "not_eligible"
    answer = ledger.coverage(member, date(Y, 4, 1))
    assert not answer.covered and answer.status != "enrolled"


def test_employee_member_lapsed_more_than_three_months_waits_six_months_for_benefits(
    ledger: Ledger, people: People
) -> None:
    # Given 48 continuous months of employee insurance, ended on Jan 31, 2022
    member = people.born(date(1980, 9, 9))
    employee_insurance(
        ledger, member, at(Y, 2, 3), insured_from=date(2018, 2, 1), insured_until=date(Y, 1, 31), continuous_months=48
    )
    # When they enroll and pay on Jun 15, more than three months later (May 1 would have been the last day)
    enroll_and_pay(ledger, member, Y, "cross_scheme", at(Y, 6, 15))
    # Then coverage starts on Jun 16, benefits six months later on Dec 16 (待遇享受等待期)
    assert_covered_from(ledger, member, date(Y, 6, 16), benefit=date(Y, 12, 16))
    waiting = ledger.coverage(member, date(Y, 9, 1))
    assert waiting.in_waiting_period and not waiting.covered and waiting.status == "enrolled"
    last_day_waiting = ledger.coverage(member, date(Y, 12, 15))
    assert last_day_waiting.in_waiting_period and not last_day_waiting.covered
    first_day_of_benefits = ledger.coverage(member, date(Y, 12, 16))
    assert first_day_of_benefits.covered and not first_day_of_benefits.in_waiting_period


def test_employee_member_paying_one_day_after_the_three_months_waits_six_months(ledger: Ledger, people: People) -> None:
    # Given 30 continuous months of employee insurance, ended on Jan 31, 2022: the three months
    # ran to Apr 30
    member = people.born(date(1982, 3, 3))
    employee_insurance(
        ledger, member, at(Y, 2, 3), insured_from=date(2019, 8, 1), insured_until=date(Y, 1, 31), continuous_months=30
    )
    # When they enroll and pay on May 1
    enroll_and_pay(ledger, member, Y, "cross_scheme", at(Y, 5, 1))
    # Then coverage starts on May 2, and benefits six months later, on Nov 2
    assert_covered_from(ledger, member, date(Y, 5, 2), benefit=date(Y, 11, 2))


def test_a_cross_scheme_claim_without_an_ended_employee_spell_is_not_eligible(ledger: Ledger, people: People) -> None:
    # Given a resident the employee-insurance system has never reported
    someone = people.born(date(1975, 5, 5))
    # When they claim a cross-scheme transfer after the period
    with pytest.raises(NotEligible):
        enroll_and_pay(ledger, someone, Y, "cross_scheme", at(Y, 5, 5))
    # Then they are not covered
    assert not ledger.coverage(someone, date(Y, 6, 1)).covered


# ---- soldiers discharged this year and their spouses (退出现役军人及随军未就业配偶) ----------------------


def test_soldier_discharged_this_year_is_covered_from_the_day_after_payment(ledger: Ledger, people: People) -> None:
    # Given a soldier discharged on Mar 1, 2022
    soldier = people.born(date(1995, 7, 7), sex="male")
    discharge(ledger, soldier, at(Y, 3, 2), date(Y, 3, 1))
    # When he enrolls and pays on Mar 15
    enroll_and_pay(ledger, soldier, Y, "veteran", at(Y, 3, 15))
    # Then he is covered from Mar 16, with no waiting period
    assert_covered_from(ledger, soldier, date(Y, 3, 16))


def test_non_working_spouse_who_followed_a_discharged_soldier_is_covered_from_the_day_after_payment(
    ledger: Ledger, people: People
) -> None:
    # Given a soldier discharged on Mar 1, 2022, with his non-working spouse (随军未就业配偶)
    soldier = people.born(date(1994, 8, 8), sex="male")
    spouse = people.born(date(1996, 9, 9), sex="female")
    discharge(ledger, soldier, at(Y, 3, 2), date(Y, 3, 1), spouse=spouse)
    # When she enrolls and pays on Apr 20
    enroll_and_pay(ledger, spouse, Y, "veteran", at(Y, 4, 20))
    # Then she is covered from Apr 21, with no waiting period
    assert_covered_from(ledger, spouse, date(Y, 4, 21))


def test_a_soldier_discharged_last_year_may_not_enroll_outside_the_period(ledger: Ledger, people: People) -> None:
    # Given a soldier discharged in November 2021, who missed the concentrated period
    soldier = people.born(date(1993, 1, 3), sex="male")
    discharge(ledger, soldier, at(Y - 1, 11, 2), date(Y - 1, 11, 1))
    # When he enrolls as a veteran in March 2022, then he is refused
    with pytest.raises(NotEligible):
        enroll_and_pay(ledger, soldier, Y, "veteran", at(Y, 3, 15))
    assert not ledger.coverage(soldier, date(Y, 4, 1)).covered


# ---- newly identified assistance recipients (动态新增的特困人员、低保对象、返贫致贫人口) ----------------


def test_newly_identified_assistance_recipient_is_covered_from_the_day_after_payment(
    ledger: Ledger, people: People
) -> None:
    # Given a resident newly listed as 低保 (90% subsidised) on Apr 1, 2022
    recipient = people.born(date(1962, 2, 2))
    register(ledger, recipient, at(Y - 1, 5, 1))
    list_on_roster(ledger, recipient, Y, "dibao", at(Y, 4, 1))
    # When they enroll and pay their share of 32 yuan on Apr 12
    enroll(ledger, recipient, Y, "assistance_new", at(Y, 4, 10))
    pay(ledger, recipient, Y, 3_200, at(Y, 4, 12))
    # Then they are covered from Apr 13, with no waiting period
    assert_covered_from(ledger, recipient, date(Y, 4, 13))
    assert ledger.coverage(recipient, date(Y, 4, 13)).subsidy_category == "dibao"


def test_fully_subsidised_recipient_listed_during_the_year_is_enrolled_and_covered_from_the_day_after_the_grant(
    ledger: Ledger, people: People
) -> None:
    # Given a resident who never enrolled for 2022
    recipient = people.born(date(1950, 3, 3))
    register(ledger, recipient, at(Y - 1, 5, 1))
    # When civil affairs lists them as 特困 (100% subsidised) on May 10, 2022
    list_on_roster(ledger, recipient, Y, "extreme_poverty", at(Y, 5, 10))
    # Then they are enrolled without paying and covered from May 11
    assert_covered_from(ledger, recipient, date(Y, 5, 11))
    assert ledger.coverage(recipient, date(Y, 5, 11)).subsidy_category == "extreme_poverty"
    enrollment = ledger.person(recipient).enrollments[Y]  # type: ignore[union-attr]
    assert (enrollment.due_fen, enrollment.subsidy_fen, enrollment.paid_fen) == (0, STANDARD_Y, 0)


STALE_REQUEST = (
    "decide_coverage judges the enrollment's requested category (resident), not the person's new "
    "status, and the unpaid request from the period blocks a new one (already_enrolled)"
)


def test_fully_subsidised_recipient_listed_during_the_year_is_covered_despite_an_unpaid_request_from_the_period(
    ledger: Ledger, people: People
) -> None:
    # Given a resident who registered for 2022 in the concentrated period but never paid
    recipient = people.born(date(1951, 4, 4))
    enroll(ledger, recipient, Y, "resident", at(Y - 1, 11, 1))
    # When civil affairs newly lists them as 特困 (100% subsidised) on Mar 1, 2022
    list_on_roster(ledger, recipient, Y, "extreme_poverty", at(Y, 3, 1))
    # Then they are enrolled without paying and covered from Mar 2 (not left awaiting a payment of 0)
    assert_covered_from(ledger, recipient, date(Y, 3, 2))


def test_newly_identified_recipient_with_an_unpaid_request_from_the_period_is_covered_once_they_pay_their_share(
    ledger: Ledger, people: People
) -> None:
    # Given a resident who registered for 2022 in the concentrated period but never paid
    recipient = people.born(date(1952, 5, 5))
    enroll(ledger, recipient, Y, "resident", at(Y - 1, 11, 1))
    # And who is newly listed as 低保 (90%) on Mar 1, 2022: the enrollment now owes 32 yuan
    list_on_roster(ledger, recipient, Y, "dibao", at(Y, 3, 1))
    assert ledger.person(recipient).enrollments[Y].outstanding_fen == 3_200  # type: ignore[union-attr]
    # When they pay the 32 yuan on Mar 10
    pay(ledger, recipient, Y, 3_200, at(Y, 3, 10))
    # Then they are covered from Mar 11
    assert_covered_from(ledger, recipient, date(Y, 3, 11))


def test_soldier_discharged_this_year_with_an_unpaid_request_from_the_period_is_covered_once_he_pays(
    ledger: Ledger, people: People
) -> None:
    # Given a man registered for 2022 in the concentrated period, never paid, then discharged on Mar 1
    soldier = people.born(date(1997, 6, 6), sex="male")
    enroll(ledger, soldier, Y, "resident", at(Y - 1, 11, 1))
    discharge(ledger, soldier, at(Y, 3, 2), date(Y, 3, 1))
    # When he pays 320 yuan on Mar 10
    pay(ledger, soldier, Y, STANDARD_Y, at(Y, 3, 10))
    # Then he is covered from Mar 11
    assert_covered_from(ledger, soldier, date(Y, 3, 11))


def test_an_assistance_claim_without_a_roster_entry_this_year_is_not_eligible(ledger: Ledger, people: People) -> None:
    # Given a resident on no roster
    someone = people.born(date(1961, 6, 6))
    # When they claim to be a new assistance recipient after the period, then they are refused
    with pytest.raises(NotEligible):
        enroll_and_pay(ledger, someone, Y, "assistance_new", at(Y, 6, 6))
    assert not ledger.coverage(someone, date(Y, 7, 1)).covered


# ---- everyone else (Hefei [choice]: refused) -----------------------------------------------------


ORDINARY_CATEGORIES = (
    "resident", "minor_of_employee", "residence_permit", "student", "university_new", "foreign_expert_family",
)  # fmt: skip


@pytest.mark.parametrize("category", ORDINARY_CATEGORIES)
def test_everyone_else_is_refused_outside_the_enrollment_period_at_once(
    ledger: Ledger, people: People, category: str
) -> None:
    # Given a 10-year-old with a residence permit, who qualifies for every ordinary category
    child = people.born(date(2012, 5, 5))
    register(ledger, child, at(Y - 1, 3, 1), residence_permit=True)
    before = recorded(ledger)
    # When enrolled on Mar 1, 2022, after the concentrated period
    with pytest.raises(OutsideEnrollmentPeriod) as refused:
        enroll(ledger, child, Y, category, at(Y, 3, 1))
    # Then the request itself is refused, and nothing is recorded
    assert refused.value.reason == "outside_enrollment_period"
    assert recorded(ledger) == before
    assert ledger.coverage(child, date(Y, 3, 2)).status == "not_enrolled"
