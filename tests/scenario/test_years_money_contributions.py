"""Years and money (domain.md §1): funding year F pays for coverage year F+1, the individual
contribution of each funding year is what a person owes, a year no table covers is refused, and
every decision records the policy version it applied."""

from __future__ import annotations

import random
import tomllib
from datetime import date

import msgspec
import pytest

from ledger.application import Ledger
from ledger.domain.policy import DEFAULT_POLICY
from tests.scenario.conftest import at, resident
from tests.scenario.steps_money import (
    CONTRIBUTION_YUAN,
    enroll,
    enroll_and_pay,
    list_on_roster,
    pay,
    person_events,
    refused,
    register,
    yuan,
)

POLICY_FILE_VERSION = tomllib.loads(DEFAULT_POLICY.read_text(encoding="utf-8"))["version"]
"""The ``version`` written in deploy/policy/hefei.toml."""


def test_paying_in_funding_year_2020_covers_calendar_year_2021_only(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident who enrolls and pays the 2020 standard in October 2020
    id_number = resident(rng, date(1975, 3, 14))
    enroll_and_pay(ledger, id_number, coverage_year=2021, on=at(2020, 10, 12), amount_fen=yuan(280))

    # Then the coverage is the next calendar year, Jan 1 to Dec 31 2021
    first, last = ledger.coverage(id_number, date(2021, 1, 1)), ledger.coverage(id_number, date(2021, 12, 31))
    assert first.covered and last.covered
    assert (first.coverage_year, first.coverage_start, first.coverage_end) == (2021, date(2021, 1, 1), date(2021, 12, 31))
    # and neither the funding year itself nor the year after
    assert not ledger.coverage(id_number, date(2020, 12, 31)).covered
    assert not ledger.coverage(id_number, date(2022, 1, 1)).covered


def test_the_concentrated_period_of_2021_does_not_sell_coverage_for_2021_itself(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident who has not enrolled for 2021
    id_number = resident(rng, date(1982, 6, 2))
    register(ledger, id_number, on=at(2021, 8, 1))

    # When they ask in September 2021 to enroll for coverage year 2021 (its funding year was 2020)
    # Then they are refused: the period for 2021 ended on Dec 31 2020
    with refused(ledger, "outside_enrollment_period"):
        enroll(ledger, id_number, coverage_year=2021, on=at(2021, 9, 10))


@pytest.mark.parametrize("funding_year", sorted(CONTRIBUTION_YUAN))
def test_individual_contribution_of_the_funding_year_is_what_a_resident_owes(
    ledger: Ledger, rng: random.Random, funding_year: int
) -> None:
    contribution = yuan(CONTRIBUTION_YUAN[funding_year])
    # Given a resident enrolled in the concentrated period of funding year F
    id_number = resident(rng, date(1966, 11, 20))
    enroll(ledger, id_number, coverage_year=funding_year + 1, on=at(funding_year, 10, 15))

    # When they pay one fen less, or one fen more, than that year's contribution
    # Then the payment is refused and they stay unpaid
    for wrong in (contribution - 1, contribution + 1):
        with refused(ledger, "amount_mismatch"):
            pay(ledger, id_number, coverage_year=funding_year + 1, amount_fen=wrong, paid_at=at(funding_year, 10, 16))
    assert ledger.coverage(id_number, date(funding_year + 1, 6, 1)).status == "awaiting_payment"

    # When they pay exactly the contribution
    pay(ledger, id_number, coverage_year=funding_year + 1, amount_fen=contribution, paid_at=at(funding_year, 10, 16))

    # Then they are covered all of F+1
    answer = ledger.coverage(id_number, date(funding_year + 1, 1, 1))
    assert answer.covered and answer.status == "enrolled"
    enrollment = ledger.person(id_number).enrollments[funding_year + 1]  # type: ignore[union-attr]
    assert (enrollment.contribution_fen, enrollment.paid_fen) == (contribution, contribution)


@pytest.mark.parametrize("coverage_year", [2016, 2030])
def test_an_enrollment_for_a_coverage_year_no_table_covers_is_refused(
    ledger: Ledger, rng: random.Random, coverage_year: int
) -> None:
    # Given a resident, and a coverage year whose funding year the Hefei table does not have
    id_number = resident(rng, date(1950, 1, 9))
    register(ledger, id_number, on=at(coverage_year - 1, 8, 1))

    # When they enroll for it in that funding year's autumn
    # Then the ledger refuses rather than guess a contribution
    with refused(ledger, "no_policy_for_year"):
        enroll(ledger, id_number, coverage_year=coverage_year, on=at(coverage_year - 1, 9, 20))


@pytest.mark.parametrize("coverage_year", [2016, 2030])
def test_a_payment_for_a_coverage_year_no_table_covers_is_refused(
    ledger: Ledger, rng: random.Random, coverage_year: int
) -> None:
    # Given a resident enrolled for 2022 (a year the table covers)
    id_number = resident(rng, date(1958, 4, 30))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 20))

    # When a payment arrives for a coverage year no table covers
    # Then it is refused for want of a policy, not taken for a missing enrollment
    with refused(ledger, "no_policy_for_year"):
        pay(ledger, id_number, coverage_year=coverage_year, amount_fen=yuan(320), paid_at=at(2021, 9, 21))


@pytest.mark.parametrize("coverage_year", [2016, 2030])
def test_a_roster_entry_for_a_coverage_year_no_table_covers_is_refused(
    ledger: Ledger, rng: random.Random, coverage_year: int
) -> None:
    # Given a person on no roster yet
    id_number = resident(rng, date(1944, 12, 1))

    # When civil affairs lists them for a coverage year no table covers
    # Then the entry is refused: no rate can be applied to a year without a table
    with refused(ledger, "no_policy_for_year"):
        list_on_roster(
            ledger, id_number, "dibao", on=at(coverage_year - 1, 8, 20),
            coverage_year=coverage_year, roster=f"{coverage_year - 1}-08",
        )


def test_every_decision_event_records_the_policy_version_of_the_policy_file(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a registered resident on the dibao roster who enrolls and pays their share
    id_number = resident(rng, date(1961, 2, 17))
    register(ledger, id_number, on=at(2021, 8, 1))
    list_on_roster(ledger, id_number, "dibao", on=at(2021, 8, 25))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(32), paid_at=at(2021, 9, 7))

    # Then every event that applied a figure of the policy records the file's version
    events = person_events(ledger, id_number)
    decisions = {type(e).__name__: e for e in events if type(e).__name__ != "Registered"}
    assert {"SubsidyListed", "EnrollmentRequested", "PaymentReceived", "CoverageDecided"} <= decisions.keys()
    assert {name: e.source.policy_version for name, e in decisions.items()} == dict.fromkeys(
        decisions, POLICY_FILE_VERSION
    )
    # and the enrollment remembers the version it was priced with
    assert ledger.person(id_number).enrollments[2022].policy_version == POLICY_FILE_VERSION  # type: ignore[union-attr]


def test_a_roster_that_enrols_automatically_records_the_policy_version(ledger: Ledger, rng: random.Random) -> None:
    # Given a person in extreme poverty (特困) on the August roster: enrolled without a request
    id_number = resident(rng, date(1939, 7, 7))
    list_on_roster(ledger, id_number, "extreme_poverty", on=at(2021, 8, 20))

    # Then the roster entry, the automatic enrollment and its coverage all record the version
    versions = {type(e).__name__: e.source.policy_version for e in person_events(ledger, id_number)[1:]}
    assert versions == dict.fromkeys(["SubsidyListed", "EnrollmentRequested", "CoverageDecided"], POLICY_FILE_VERSION)


def test_decisions_after_a_policy_change_record_the_new_version_and_old_events_keep_theirs(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident enrolled under the policy file's version
    id_number = resident(rng, date(1970, 10, 3))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))

    # When the region deploys a revised table (same figures, raised version) and they pay
    ledger.policy = msgspec.structs.replace(ledger.policy, version="hefei-2021.2")
    pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 8))

    # Then the request keeps the old version and the payment's decisions carry the new one
    versions = [(type(e).__name__, e.source.policy_version) for e in person_events(ledger, id_number)[1:]]
    assert versions == [
        ("EnrollmentRequested", POLICY_FILE_VERSION),
        ("PaymentReceived", "hefei-2021.2"),
        ("CoverageDecided", "hefei-2021.2"),
    ]


def test_a_payment_for_a_year_the_person_did_not_enroll_for_is_refused(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident enrolled for 2022 only
    id_number = resident(rng, date(1969, 9, 19))
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 6))

    # When a payment arrives for 2021 (a year the table covers, in its own period)
    # Then it is refused: there is no 2021 enrollment to pay for
    with refused(ledger, "no_enrollment"):
        pay(ledger, id_number, coverage_year=2021, amount_fen=yuan(280), paid_at=at(2020, 12, 1), occurred_at=at(2021, 9, 6))


def test_a_payment_by_someone_the_ledger_does_not_know_is_refused(ledger: Ledger, rng: random.Random) -> None:
    # Given a resident who never enrolled
    id_number = resident(rng, date(1969, 9, 19))

    # When a payment arrives for them
    # Then it is refused, and the payment does not create the person
    with refused(ledger, "no_enrollment"):
        pay(ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 6))
    assert ledger.person(id_number) is None
