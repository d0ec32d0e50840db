"""Universities (合肥市2021年方案 §五(四)): a newly admitted student (新入学大学生) whose fee the
university collects with tuition is covered from the day of collection; one who pays through
WeChat, from the day of payment; both through Dec 31 of the coverage year, with no waiting."""

from __future__ import annotations

import random
from datetime import date

import pytest

from ledger.application import Ledger
from tests.scenario.conftest import WECHAT, at, resident
from tests.scenario.steps_money import UNIVERSITY, enroll, pay, yuan


def test_a_new_student_collected_by_the_university_is_covered_from_the_day_of_collection(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a freshman registered by the university on Sep 3 2021 for coverage year 2022
    id_number = resident(rng, date(2003, 7, 19))
    enroll(
        ledger, id_number, coverage_year=2022, on=at(2021, 9, 3),
        category="university_new", channel="university", actor=UNIVERSITY,
    )

    # When the university collects the fee with tuition on Sep 6, and reports it on Oct 25
    pay(
        ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 6),
        occurred_at=at(2021, 10, 25), channel="university", actor=UNIVERSITY,
    )

    # Then they are covered from Sep 6 2021 through Dec 31 2022, with no waiting period
    answer = ledger.coverage(id_number, date(2021, 9, 6))
    assert answer.covered and not answer.in_waiting_period
    assert (answer.coverage_start, answer.coverage_end, answer.benefit_start) == (
        date(2021, 9, 6), date(2022, 12, 31), date(2021, 9, 6),
    )
    # and a question about a day in the autumn before the coverage year answers covered
    autumn = ledger.coverage(id_number, date(2021, 11, 11))
    assert autumn.covered and autumn.coverage_year == 2022
    assert ledger.coverage(id_number, date(2022, 12, 31)).covered
    # but not the day before collection, nor after the coverage year
    assert not ledger.coverage(id_number, date(2021, 9, 5)).covered
    assert not ledger.coverage(id_number, date(2023, 1, 1)).covered


def test_a_new_student_paying_through_wechat_is_covered_from_the_day_of_payment(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a freshman registered by the university
    id_number = resident(rng, date(2003, 1, 30))
    enroll(
        ledger, id_number, coverage_year=2022, on=at(2021, 9, 3),
        category="university_new", channel="university", actor=UNIVERSITY,
    )

    # When they pay through WeChat themselves on Oct 9
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 10, 9), actor=WECHAT)

    # Then they are covered from Oct 9 2021, not before
    assert ledger.coverage(id_number, date(2021, 10, 9)).covered
    assert not ledger.coverage(id_number, date(2021, 10, 8)).covered


@pytest.mark.parametrize("category", ["student", "resident"])
def test_only_new_students_are_covered_before_the_coverage_year(
    ledger: Ledger, rng: random.Random, category: str
) -> None:
    # Given a returning student (or an ordinary resident) whose fee was collected on Sep 6 2021
    id_number = resident(rng, date(2001, 5, 5))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 3), category=category, channel="university", actor=UNIVERSITY)
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 6), channel="university", actor=UNIVERSITY)

    # Then the coverage starts on Jan 1 2022 as for everyone in the concentrated period
    assert not ledger.coverage(id_number, date(2021, 11, 11)).covered
    assert ledger.coverage(id_number, date(2022, 1, 1)).coverage_start == date(2022, 1, 1)
