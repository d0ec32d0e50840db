"""When (domain.md §3): the concentrated period (集中参保期) Sep 1 – Dec 31 of funding year F
gives coverage Jan 1 – Dec 31 of F+1 with no waiting period; its edges are judged by the
message's own time with its +08:00 offset; migrant rural workers (农村外出务工人员) may pay
until the end of February of F+1 (皖医保发〔2021〕7号 (二))."""

from __future__ import annotations

import random
from datetime import date, datetime

import pytest

from ledger.application import Ledger
from tests.scenario.conftest import CST, at, resident
from tests.scenario.steps_money import COMMUNITY_QR, enroll, pay, refused, yuan


def _minute(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=CST)


@pytest.mark.parametrize(
    ("channel", "actor"),
    [pytest.param("wechat", None, id="wechat"), pytest.param("community_qr", COMMUNITY_QR, id="community_qr")],
)
def test_enrolled_and_paid_in_the_concentrated_period_is_covered_all_next_year_without_waiting(
    ledger: Ledger, rng: random.Random, channel: str, actor
) -> None:  # type: ignore[no-untyped-def]
    # Given a resident who enrolls and pays 320 yuan on Nov 20 2021 through WeChat or the
    # community's QR code
    id_number = resident(rng, date(1968, 8, 8))
    extra = {"actor": actor} if actor else {}
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 11, 20), channel=channel, **extra)
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 11, 20), channel=channel, **extra)

    # Then they are covered from Jan 1 to Dec 31 2022, benefits from Jan 1 (no waiting period)
    answer = ledger.coverage(id_number, date(2022, 1, 1))
    assert answer.covered and not answer.in_waiting_period
    assert (answer.coverage_start, answer.coverage_end, answer.benefit_start) == (
        date(2022, 1, 1), date(2022, 12, 31), date(2022, 1, 1),
    )
    assert ledger.person(id_number).enrollments[2022].channel == channel  # type: ignore[union-attr]


def test_a_payment_at_23_59_on_december_31_is_inside_the_concentrated_period(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident who enrolled on Dec 31 2021
    id_number = resident(rng, date(1977, 5, 5))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 12, 31, hour=20))

    # When they pay at 23:59 Hefei time on Dec 31 (reported two days later)
    pay(
        ledger, id_number, coverage_year=2022, amount_fen=yuan(320),
        paid_at=_minute(2021, 12, 31, 23, 59), occurred_at=at(2022, 1, 2),
    )

    # Then they are covered from Jan 1 with no waiting period
    answer = ledger.coverage(id_number, date(2022, 1, 1))
    assert answer.covered and answer.benefit_start == date(2022, 1, 1)


def test_a_payment_at_midnight_starting_january_1_hefei_time_is_outside_the_period(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident who enrolled on Dec 31 2021
    id_number = resident(rng, date(1977, 5, 5))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 12, 31, hour=20))

    # When they pay at 00:00 on Jan 1 2022, +08:00 (still Dec 31 by UTC)
    # Then an ordinary resident's payment is refused, and they stay not covered
    with refused(ledger, "outside_enrollment_period"):
        pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=_minute(2022, 1, 1, 0, 0))
    assert not ledger.coverage(id_number, date(2022, 1, 2)).covered


def test_a_payment_before_september_1_is_outside_the_period(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident enrolled for 2022 on the first morning of the period
    id_number = resident(rng, date(1977, 5, 5))
    enroll(ledger, id_number, coverage_year=2022, on=_minute(2021, 9, 1, 0, 5))

    # When a payment stamped 23:59 on Aug 31 arrives, it is refused (preparation phase)
    with refused(ledger, "outside_enrollment_period"):
        pay(
            ledger, id_number, coverage_year=2022, amount_fen=yuan(320),
            paid_at=_minute(2021, 8, 31, 23, 59), occurred_at=_minute(2021, 9, 1, 0, 10),
        )
    # and one stamped 00:00 on Sep 1 is accepted
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=_minute(2021, 9, 1, 0, 0))
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered


def test_times_without_an_offset_are_malformed(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident enrolled for 2022
    id_number = resident(rng, date(1977, 5, 5))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 12, 31))

    # When a payment time carries no offset, the ledger cannot tell which day it was: refused
    with refused(ledger, "malformed"):
        pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=datetime(2021, 12, 31, 23, 59))


def test_a_payment_reported_at_a_time_without_an_offset_is_malformed(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident enrolled for 2022
    id_number = resident(rng, date(1977, 5, 5))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 12, 31))

    # When the payment's occurred_at carries no offset (paid_at does)
    # Then the message is malformed, like any required time without an offset
    with refused(ledger, "malformed"):
        pay(
            ledger, id_number, coverage_year=2022, amount_fen=yuan(320),
            paid_at=_minute(2021, 12, 31, 23, 0), occurred_at=datetime(2021, 12, 31, 23, 5),
        )


@pytest.mark.parametrize(
    ("coverage_year", "last_day", "contribution_yuan"),
    [
        pytest.param(2022, date(2022, 2, 28), 320, id="2022_february_28"),
        pytest.param(2020, date(2020, 2, 29), 250, id="2020_leap_year_february_29"),
    ],
)
def test_a_migrant_worker_paying_by_the_end_of_february_is_covered_from_january_1_retroactively(
    ledger: Ledger, rng: random.Random, coverage_year: int, last_day: date, contribution_yuan: int
) -> None:
    # Given a migrant rural worker enrolled in December, away until Spring Festival
    id_number = resident(rng, date(1983, 2, 2), district="340124")
    enroll(
        ledger, id_number, coverage_year=coverage_year, on=at(coverage_year - 1, 12, 20),
        migrant_worker=True, district="340124",
    )

    # When they pay on the last day of February of the coverage year
    pay(
        ledger, id_number, coverage_year=coverage_year, amount_fen=yuan(contribution_yuan),
        paid_at=_minute(last_day.year, last_day.month, last_day.day, 21, 30),
    )

    # Then they are covered from Jan 1, no waiting period, and the coverage is marked retroactive
    answer = ledger.coverage(id_number, date(coverage_year, 1, 15))
    assert answer.covered and not answer.in_waiting_period
    assert (answer.coverage_start, answer.benefit_start) == (date(coverage_year, 1, 1), date(coverage_year, 1, 1))
    terms = ledger.person(id_number).enrollments[coverage_year].terms  # type: ignore[union-attr]
    assert terms is not None and terms.retroactive


def test_a_migrant_worker_may_also_enroll_in_february(ledger: Ledger, rng: random.Random) -> None:
    # Given a migrant rural worker back for Spring Festival, not yet enrolled for 2022
    id_number = resident(rng, date(1983, 2, 2), district="340124")

    # When they enroll and pay on Feb 10 2022
    enroll(ledger, id_number, coverage_year=2022, on=at(2022, 2, 10), migrant_worker=True, district="340124")
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2022, 2, 10))

    # Then they are covered from Jan 1, marked retroactive
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered
    assert ledger.person(id_number).enrollments[2022].terms.retroactive  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("coverage_year", "contribution_yuan"),
    [pytest.param(2022, 320, id="2022"), pytest.param(2020, 250, id="2020_leap_year")],
)
def test_a_migrant_worker_paying_on_march_1_is_refused(
    ledger: Ledger, rng: random.Random, coverage_year: int, contribution_yuan: int
) -> None:
    # Given a migrant rural worker enrolled in December
    id_number = resident(rng, date(1983, 2, 2))
    enroll(ledger, id_number, coverage_year=coverage_year, on=at(coverage_year - 1, 12, 20), migrant_worker=True)

    # When they pay at midnight starting March 1 of the coverage year
    # Then the payment is refused: the extension ended with February
    with refused(ledger, "outside_enrollment_period"):
        pay(
            ledger, id_number, coverage_year=coverage_year, amount_fen=yuan(contribution_yuan),
            paid_at=_minute(coverage_year, 3, 1, 0, 0),
        )
    # and a new migrant enrollment on March 1 is refused too
    late = resident(rng, date(1984, 3, 3))
    with refused(ledger, "outside_enrollment_period"):
        enroll(ledger, late, coverage_year=coverage_year, on=at(coverage_year, 3, 1), migrant_worker=True)


def test_an_ordinary_resident_may_not_use_the_migrant_extension(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident (not a migrant worker) enrolled in December 2021
    id_number = resident(rng, date(1983, 2, 2))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 12, 20))

    # When they pay in February 2022
    # Then the payment is refused
    with refused(ledger, "outside_enrollment_period"):
        pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2022, 2, 15))


def test_coverage_paid_inside_the_period_is_not_marked_retroactive(ledger: Ledger, rng: random.Random) -> None:
    # Given a migrant worker who, this time, pays in December
    id_number = resident(rng, date(1983, 2, 2))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 12, 20), migrant_worker=True)
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 12, 20))

    # Then the coverage starts after it was decided: nothing retroactive to audit
    terms = ledger.person(id_number).enrollments[2022].terms  # type: ignore[union-attr]
    assert terms is not None and not terms.retroactive and terms.coverage_start == date(2022, 1, 1)
