"""Subsidised enrollment (资助参保, domain.md §5; 合肥市2021年方案 §五(五)): the medical-assistance
fund pays part of the 2021 contribution of 320 yuan by category; fully subsidised people are
enrolled when their roster arrives, partially subsidised ones pay their share; one subsidy per
person at the highest rate; by Dec 31 the fund transfers the sum of subsidies granted."""

from __future__ import annotations

import random
from datetime import date

import pytest

from ledger.application import Ledger
from ledger.commands import ListSubsidy
from tests.scenario.conftest import at, resident
from tests.scenario.steps_money import (
    COMMUNITY_QR,
    DEPARTMENT_OF,
    SHARE_2021_YUAN,
    enroll,
    list_on_roster,
    pay,
    refused,
    yuan,
)

CONTRIBUTION_2021 = yuan(320)
FULLY_SUBSIDISED = [c for c, share in SHARE_2021_YUAN.items() if share == 0]
PARTIALLY_SUBSIDISED = [c for c, share in SHARE_2021_YUAN.items() if share > 0]


def _enrollment(ledger: Ledger, id_number: str, coverage_year: int = 2022):  # type: ignore[no-untyped-def]
    person = ledger.person(id_number)
    assert person is not None
    return person.enrollments[coverage_year]


@pytest.mark.parametrize(("category", "share_yuan"), list(SHARE_2021_YUAN.items()))
def test_a_roster_entry_leaves_the_person_owing_their_category_share_of_320_yuan(
    ledger: Ledger, rng: random.Random, category: str, share_yuan: int
) -> None:
    # Given a resident enrolled for 2022 on Sep 2 2021, owing the full 320 yuan
    id_number = resident(rng, date(1957, 9, 9))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 2))
    assert _enrollment(ledger, id_number).outstanding_fen == CONTRIBUTION_2021

    # When their department lists them in the category during the period
    list_on_roster(ledger, id_number, category, on=at(2021, 10, 12), roster="2021-10")

    # Then they owe their share, the assistance fund the rest, and nothing is counted twice
    enrollment = _enrollment(ledger, id_number)
    assert enrollment.outstanding_fen == yuan(share_yuan)
    assert enrollment.subsidy_fen == CONTRIBUTION_2021 - yuan(share_yuan)
    assert enrollment.subsidy_category == category


@pytest.mark.parametrize("category", PARTIALLY_SUBSIDISED)
def test_a_partially_subsidised_person_pays_their_share_and_is_covered(
    ledger: Ledger, rng: random.Random, category: str
) -> None:
    share = yuan(SHARE_2021_YUAN[category])
    # Given a person on the August 2021 roster of their department
    id_number = resident(rng, date(1956, 1, 23))
    list_on_roster(ledger, id_number, category, on=at(2021, 8, 25))

    # When they enroll in September
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 8), channel="community_qr", actor=COMMUNITY_QR)

    # Then they owe their share: the full contribution, or a fen less than the share, is refused
    assert _enrollment(ledger, id_number).outstanding_fen == share
    for wrong in (CONTRIBUTION_2021, share - 1):
        with refused(ledger, "amount_mismatch"):
            pay(ledger, id_number, coverage_year=2022, amount_fen=wrong, paid_at=at(2021, 9, 8), channel="community_qr")

    # When they pay exactly their share
    pay(ledger, id_number, coverage_year=2022, amount_fen=share, paid_at=at(2021, 9, 8), channel="community_qr")

    # Then they are covered all of 2022, the subsidy recorded against their category
    answer = ledger.coverage(id_number, date(2022, 1, 1))
    assert answer.covered and answer.status == "enrolled"
    assert answer.subsidy_category == category


@pytest.mark.parametrize("category", FULLY_SUBSIDISED)
def test_a_fully_subsidised_person_is_enrolled_automatically_by_the_august_roster(
    ledger: Ledger, rng: random.Random, category: str
) -> None:
    # Given nobody has enrolled a person
    id_number = resident(rng, date(1948, 4, 12))

    # When the August 2021 roster lists them in a fully subsidised category
    outcome = list_on_roster(ledger, id_number, category, on=at(2021, 8, 25))
    assert outcome.recorded > 0

    # Then they are enrolled for 2022 through channel auto, with nothing to pay
    enrollment = _enrollment(ledger, id_number)
    assert (enrollment.channel, enrollment.status, enrollment.outstanding_fen, enrollment.paid_fen) == (
        "auto", "enrolled", 0, 0,
    )
    # and covered from Jan 1 2022 for the whole year, not before
    answer = ledger.coverage(id_number, date(2022, 1, 1))
    assert answer.covered and not answer.in_waiting_period
    assert (answer.coverage_start, answer.coverage_end, answer.subsidy_category) == (
        date(2022, 1, 1), date(2022, 12, 31), category,
    )
    assert not ledger.coverage(id_number, date(2021, 12, 31)).covered
    # and a later enrollment request through WeChat is a second enrollment: refused
    with refused(ledger, "already_enrolled"):
        enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 5))


def test_a_fully_subsidised_person_added_during_the_period_is_enrolled_at_once(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a scattered orphan first listed by civil affairs on Nov 5 2021 (动态新增)
    id_number = resident(rng, date(2012, 2, 14))
    list_on_roster(ledger, id_number, "scattered_orphan", on=at(2021, 11, 5), roster="2021-11")

    # Then they are covered from Jan 1 2022 with nothing to pay
    answer = ledger.coverage(id_number, date(2022, 1, 1))
    assert answer.covered and answer.status == "enrolled"
    assert _enrollment(ledger, id_number).channel == "auto"


@pytest.mark.parametrize("category", PARTIALLY_SUBSIDISED)
def test_a_partially_subsidised_person_stays_awaiting_payment_until_they_pay(
    ledger: Ledger, rng: random.Random, category: str
) -> None:
    # Given a person on the August roster in a partially subsidised category
    id_number = resident(rng, date(1950, 10, 1))
    list_on_roster(ledger, id_number, category, on=at(2021, 8, 25))

    # Then the roster alone does not enroll them
    assert ledger.coverage(id_number, date(2022, 1, 1)).status == "not_enrolled"

    # When they enroll but do not pay
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 20))

    # Then they are awaiting payment and not covered, even after the period
    for day in (date(2022, 1, 1), date(2022, 6, 30)):
        answer = ledger.coverage(id_number, day)
        assert (answer.status, answer.covered) == ("awaiting_payment", False)

    # When they pay their share before Dec 31, they are enrolled
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(SHARE_2021_YUAN[category]), paid_at=at(2021, 12, 15))
    assert ledger.coverage(id_number, date(2022, 1, 1)).status == "enrolled"


def test_a_roster_arriving_after_the_enrollment_lowers_what_is_still_owed(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident enrolled on Sep 2 2021, owing 320 yuan
    id_number = resident(rng, date(1963, 3, 3))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 2))

    # When rural revitalisation lists them as fallen back into poverty (返贫致贫, 80%) in October
    list_on_roster(ledger, id_number, "poverty_returned", on=at(2021, 10, 15), roster="2021-10")

    # Then 320 yuan is no longer accepted, and 64 yuan covers them
    with refused(ledger, "amount_mismatch"):
        pay(ledger, id_number, coverage_year=2022, amount_fen=CONTRIBUTION_2021, paid_at=at(2021, 10, 20))
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(64), paid_at=at(2021, 10, 20))
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered


def test_a_full_roster_arriving_after_the_enrollment_completes_it_without_payment(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident enrolled on Sep 2 2021 and not yet paid
    id_number = resident(rng, date(1950, 3, 3))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 2))

    # When the health commission lists them as a parent of a special family-planning family
    list_on_roster(ledger, id_number, "family_planning_special", on=at(2021, 10, 15), roster="2021-10")

    # Then they are covered from Jan 1 2022 without paying anything
    answer = ledger.coverage(id_number, date(2022, 1, 1))
    assert answer.covered and _enrollment(ledger, id_number).paid_fen == 0


@pytest.mark.parametrize(
    ("rosters", "best", "share_yuan"),
    [
        pytest.param(("dibao", "poverty_unstable"), "dibao", 32, id="highest_first"),
        pytest.param(("poverty_unstable", "dibao"), "dibao", 32, id="highest_last"),
        pytest.param(("poverty_returned", "monitored_low_income", "low_income_elderly"), "low_income_elderly", 32, id="three_rosters"),
        pytest.param(("poverty_unstable", "extreme_poverty"), "extreme_poverty", 0, id="full_after_partial"),
    ],
)
def test_a_person_on_several_rosters_gets_one_subsidy_at_the_highest_rate_and_every_entry_is_kept(
    ledger: Ledger, rng: random.Random, rosters: tuple[str, ...], best: str, share_yuan: int
) -> None:
    # Given a resident enrolled for 2022 and not yet paid
    id_number = resident(rng, date(1946, 6, 16))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 2))

    # When several departments list them, one after the other
    for month, category in enumerate(rosters, start=9):
        list_on_roster(ledger, id_number, category, on=at(2021, month, 20), roster=f"2021-{month:02d}")

    # Then one subsidy is granted, the highest-rate one, and they owe only its share
    enrollment = _enrollment(ledger, id_number)
    assert (enrollment.subsidy_category, enrollment.outstanding_fen) == (best, yuan(share_yuan))
    assert enrollment.subsidy_fen == CONTRIBUTION_2021 - yuan(share_yuan)
    # and every roster entry is kept, with its department and roster
    person = ledger.person(id_number)
    assert person is not None
    assert [(r.subsidy_category, r.department, r.roster) for r in person.rosters] == [
        (category, DEPARTMENT_OF[category][0], f"2021-{month:02d}") for month, category in enumerate(rosters, start=9)
    ]


def test_a_second_roster_at_a_lower_rate_does_not_raise_what_is_owed_after_automatic_enrollment(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a person in extreme poverty enrolled automatically by the August roster
    id_number = resident(rng, date(1941, 1, 1))
    list_on_roster(ledger, id_number, "extreme_poverty", on=at(2021, 8, 25))

    # When rural revitalisation also lists them as unstable post-poverty (50%)
    list_on_roster(ledger, id_number, "poverty_unstable", on=at(2021, 9, 10), roster="2021-09")

    # Then they stay covered with the full subsidy, and both entries are kept
    enrollment = _enrollment(ledger, id_number)
    assert (enrollment.subsidy_category, enrollment.subsidy_fen, enrollment.outstanding_fen) == (
        "extreme_poverty", CONTRIBUTION_2021, 0,
    )
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered
    assert len(ledger.person(id_number).rosters) == 2  # type: ignore[union-attr]


def test_the_december_31_transfer_equals_the_subsidies_granted_to_people_who_enrolled(
    ledger: Ledger, rng: random.Random
) -> None:
    people: dict[str, str] = {}

    def someone(label: str, born: date) -> str:
        people[label] = resident(rng, born)
        return people[label]

    # Given, for coverage year 2022:
    # two fully subsidised people enrolled by the August roster
    list_on_roster(ledger, someone("extreme_poverty", date(1940, 1, 1)), "extreme_poverty", on=at(2021, 8, 25))
    list_on_roster(ledger, someone("orphan", date(2011, 1, 1)), "scattered_orphan", on=at(2021, 8, 25))
    # a 低保 recipient on the August roster who paid 32 yuan
    dibao = someone("dibao", date(1955, 1, 1))
    list_on_roster(ledger, dibao, "dibao", on=at(2021, 8, 25))
    enroll(ledger, dibao, coverage_year=2022, on=at(2021, 9, 6))
    pay(ledger, dibao, coverage_year=2022, amount_fen=yuan(32), paid_at=at(2021, 9, 6))
    # someone listed as fallen back into poverty after enrolling, who paid 64 yuan
    returned = someone("returned", date(1966, 1, 1))
    enroll(ledger, returned, coverage_year=2022, on=at(2021, 9, 6))
    list_on_roster(ledger, returned, "poverty_returned", on=at(2021, 10, 11), roster="2021-10")
    pay(ledger, returned, coverage_year=2022, amount_fen=yuan(64), paid_at=at(2021, 10, 12))
    # an elder on two rosters at 90%, who paid 32 yuan once
    elder = someone("elder", date(1944, 1, 1))
    list_on_roster(ledger, elder, "low_income_elderly", on=at(2021, 8, 25))
    list_on_roster(ledger, elder, "dibao", on=at(2021, 8, 26))
    enroll(ledger, elder, coverage_year=2022, on=at(2021, 11, 2))
    pay(ledger, elder, coverage_year=2022, amount_fen=yuan(32), paid_at=at(2021, 11, 2))
    # an unstable post-poverty person who enrolled but never paid, one on a roster who never
    # enrolled, and an ordinary resident who paid 320 yuan
    unpaid = someone("unpaid", date(1970, 1, 1))
    list_on_roster(ledger, unpaid, "poverty_unstable", on=at(2021, 8, 25))
    enroll(ledger, unpaid, coverage_year=2022, on=at(2021, 9, 6))
    list_on_roster(ledger, someone("absent", date(1971, 1, 1)), "monitored_low_income", on=at(2021, 8, 25))
    ordinary = someone("ordinary", date(1980, 1, 1))
    enroll(ledger, ordinary, coverage_year=2022, on=at(2021, 9, 6))
    pay(ledger, ordinary, coverage_year=2022, amount_fen=CONTRIBUTION_2021, paid_at=at(2021, 9, 6))

    # When the Dec 31 transfer is computed from the people enrolled for 2022
    granted = 0
    for id_number in people.values():
        if ledger.coverage(id_number, date(2022, 1, 1)).status != "enrolled":
            continue
        enrollment = _enrollment(ledger, id_number)
        granted += enrollment.subsidy_fen

    # Then it equals what the table grants the enrolled: 320 + 320 + 288 + 256 + 288 yuan
    expected = sum(
        yuan(320 - SHARE_2021_YUAN[c])
        for c in ("extreme_poverty", "scattered_orphan", "dibao", "poverty_returned", "low_income_elderly")
    )
    assert expected == yuan(1472)
    assert granted == expected


def test_a_roster_category_outside_the_contract_is_malformed_and_stable_post_poverty_people_pay_in_full(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident lifted out of poverty for good, not monitored (未纳入监测范围的稳定脱贫人口)
    id_number = resident(rng, date(1962, 12, 2))

    # When a roster lists them under a category the policy does not subsidise
    # Then the entry is refused as malformed
    with refused(ledger, "malformed"):
        ledger.list_subsidy(ListSubsidy(
            msg_id="roster-stable-1", occurred_at=at(2021, 8, 25), id_number=id_number, coverage_year=2022,
            subsidy_category="poverty_stable", department="rural_revitalisation", roster="2021-08",
        ), DEPARTMENT_OF["poverty_unstable"][1])
    # and when they enroll they owe the full 320 yuan
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))
    assert _enrollment(ledger, id_number).outstanding_fen == CONTRIBUTION_2021
