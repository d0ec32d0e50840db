"""Fraud flags (domain.md §8; 医保发〔2021〕32号 §六 "三假"), rule by rule: what raises a flag and
the closest thing that must not, each flag checked for its rule, subject, the thresholds it
recorded and the evidence it points at (the audit row of a LEDGER sequence, the rejections row of
a REJECTED sequence).

Facts arrive as upstream messages through the real ingestion (``consumers.app.IngestService``)
into the ``Ledger``; what the ledger refuses lands on REJECTED as in production. The policy's
thresholds are written out here from ``deploy/policy/hefei.toml`` (``[fraud]`` and the cash rule),
never read back from the policy object.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta

import msgspec
import pytest

from ledger.domain.source import Source
from tests.projections.conftest import (
    CST,
    ELSEWHERE,
    HOME,
    STANDARD_Y,
    Flag,
    Message,
    Office,
    People,
    at,
    cash_payment,
    death,
    employee_insurance,
    enrollment,
    msg_id,
    payment,
    registered,
    remittance,
    roster,
)

BACKDATED_DAYS = 45
CASH_REMIT_DAYS = 30
CASH_REMIT_FEN = 20_000_000  # 20万元
PHONE_MAX_PEOPLE = 5
PAYER_ACCOUNT_MAX_PEOPLE = 5
OPERATOR_BURST_PER_HOUR = 60
ADVERSE_SELECTION_DAYS = 30
POLICY_VERSION = "hefei-2021.1"

COLLECTOR = "340104-sq-12"
"""A community committee of 蜀山区 collecting cash (社区居委会)."""


def only(flags: list[Flag]) -> Flag:
    assert len(flags) == 1, flags
    return flags[0]


def seq_of(office: Office, message: Message, event: str) -> int:
    return int(office.audit_of(message, event)["ledger_seq"])


# ---- 1. after_death: anything after a registered death -------------------------------------------


def test_after_death__a_payment_dated_after_the_death_is_flagged(office: Office, people: People) -> None:
    # Given an enrollment for 2022 requested on Sep 5, 2021, awaiting payment
    someone = people.born(date(1950, 2, 2))
    # And a death on Sep 20, registered the next day
    died = death(someone, at(2021, 9, 21), date(2021, 9, 20))
    office.send(enrollment(someone, at(2021, 9, 5)), died)
    # When a payment dated Sep 25 arrives
    paid = payment(someone, at(2021, 9, 25))
    verdicts = office.send(paid)
    # Then it is refused as deceased
    assert verdicts[msg_id(paid)].reason == "deceased"
    # And flagged after_death, pointing at the refusal on REJECTED and the death in LEDGER
    flag = only(office.flags("after_death"))
    assert (flag.subject_key, flag.parameters) == (office.key(someone), {})
    (rejected,) = flag.rejected
    assert flag.position == f"R{rejected}"
    refusal = office.rejection(rejected)
    assert (refusal["reason"], refusal["msg_id"], refusal["subject"]) == (
        "deceased", msg_id(paid), "upstream.payment.received",
    )  # fmt: skip
    assert flag.ledger == [seq_of(office, died, "DeathRegistered")]


def test_after_death__a_roster_entry_effective_after_the_death_is_flagged(office: Office, people: People) -> None:
    # Given a resident who died on Oct 1, 2021
    someone = people.born(date(1948, 4, 4))
    died = death(someone, at(2021, 10, 3), date(2021, 10, 1))
    office.send(registered(someone, at(2021, 3, 1)), died)
    # When civil affairs lists them on the November dibao roster for 2022
    listed = roster(someone, at(2021, 11, 5), "dibao")
    assert office.send(listed)[msg_id(listed)].kind == "recorded", "a roster entry is kept for audit"
    # Then the roster entry is flagged after_death, with the death and the entry as evidence
    flag = only(office.flags("after_death"))
    entry = seq_of(office, listed, "SubsidyListed")
    assert (flag.subject_key, flag.position, flag.coverage_year) == (office.key(someone), str(entry), 2022)
    assert flag.ledger == [seq_of(office, died, "DeathRegistered"), entry]
    assert (flag.rejected, flag.parameters) == ([], {})
    assert [office.audit(s)["event"] for s in flag.ledger] == ["DeathRegistered", "SubsidyListed"]


def test_after_death__a_refusal_read_before_the_death_is_projected_still_points_at_the_death(
    office: Office, people: People
) -> None:
    # Given 500 enrollments, then a death, then a payment refused as deceased
    someone = people.born(date(1952, 3, 3))
    died = death(someone, at(2021, 9, 21), date(2021, 9, 20))
    office.send(
        *[enrollment(p, at(2021, 9, 5)) for p in people.many(500)], enrollment(someone, at(2021, 9, 5)), died,
    )  # fmt: skip
    paid = payment(someone, at(2021, 9, 25))
    assert office.send(paid)[msg_id(paid)].reason == "deceased"
    # When the views are built from the start (REJECTED is read apart from LEDGER, and its one
    # refusal is read long before the projection reaches the death)
    flag = only(office.flags("after_death"))
    # Then the flag still points at the death
    assert flag.ledger == [seq_of(office, died, "DeathRegistered")]
    assert office.rejection(flag.rejected[0])["msg_id"] == msg_id(paid)


def test_after_death__a_payment_dated_before_the_death_but_reported_after_it_is_not_flagged(
    office: Office, people: People
) -> None:
    # Given an enrollment for 2022 requested on Sep 5, 2021
    someone = people.born(date(1951, 6, 6))
    # And a death on Sep 20, registered the next day
    office.send(enrollment(someone, at(2021, 9, 5)), death(someone, at(2021, 9, 21), date(2021, 9, 20)))
    # When the tax office reports on Sep 22 a payment made on Sep 18
    paid = payment(someone, at(2021, 9, 18), channel="tax", reported=at(2021, 9, 22))
    # Then it is recorded (covered until the date of death), and nothing is flagged after_death
    assert office.send(paid)[msg_id(paid)].kind == "recorded"
    assert office.audit_of(paid, "CoverageEnded")["event"] == "CoverageEnded"
    assert office.flags("after_death") == []


def test_after_death__a_corrected_date_of_death_is_not_flagged(office: Office, people: People) -> None:
    # Given a resident enrolled for 2022, who died on Jun 15, 2022
    someone = people.born(date(1940, 7, 7))
    office.send(
        enrollment(someone, at(2021, 9, 10)), payment(someone, at(2021, 9, 10)),
        death(someone, at(2022, 6, 20), date(2022, 6, 15)),
    )  # fmt: skip
    # When civil affairs corrects the date of death to Jun 10
    office.send(death(someone, at(2022, 6, 25), date(2022, 6, 10)))
    # Then the correction and the moved end of coverage follow from the death: no flag
    assert office.flags("after_death") == []


# ---- 2. backdated: effects well before they were recorded, retroactive coverage -------------------


def test_backdated__a_payment_reported_more_than_45_days_after_it_was_paid_is_flagged(
    office: Office, people: People
) -> None:
    # Given a resident enrolled on Oct 1, 2021
    someone = people.born(date(1990, 5, 5))
    office.send(enrollment(someone, at(2021, 10, 1)))
    # When a payment said to be made on Oct 1 is reported only on Nov 16 (46 days later)
    late = payment(someone, at(2021, 10, 1), reported=at(2021, 11, 16))
    office.send(late)
    # Then it is flagged backdated, pointing at the payment, with the policy's 45 days
    flag = only(office.flags("backdated"))
    seq = seq_of(office, late, "PaymentReceived")
    assert (flag.subject_key, flag.position, flag.ledger, flag.rejected) == (office.key(someone), str(seq), [seq], [])
    assert flag.parameters == {"backdated_days": BACKDATED_DAYS}
    assert "PaymentReceived effective 2021-10-01T10:00:00+08:00 reported 46 days later" in flag.detail


def test_backdated__a_payment_reported_44_days_after_it_was_paid_is_not_flagged(office: Office, people: People) -> None:
    # When a payment made on Oct 1 is reported on Nov 14 (monthly statements run up to ~36 days
    # late: within the 45 days the policy allows)
    someone = people.born(date(1990, 5, 5))
    office.send(enrollment(someone, at(2021, 10, 1)), payment(someone, at(2021, 10, 1), reported=at(2021, 11, 14)))
    # Then nothing is flagged backdated
    assert office.flags("backdated") == []


def test_backdated__a_death_registered_more_than_45_days_after_it_happened_is_flagged(
    office: Office, people: People
) -> None:
    # When public security registers on Mar 20, 2022 a death of Jan 31 (48 days before)
    someone = people.born(date(1940, 5, 5))
    late = death(someone, at(2022, 3, 20), date(2022, 1, 31))
    office.send(late)
    # Then the registration is flagged backdated
    flag = only(office.flags("backdated"))
    assert (flag.subject_key, flag.position) == (office.key(someone), str(seq_of(office, late, "DeathRegistered")))
    assert "DeathRegistered effective 2022-01-31 reported 48 days later" in flag.detail


def test_backdated__facts_reported_when_they_happened_are_not_flagged_however_late_the_ledger_records_them(
    office: Office, people: People
) -> None:
    # When a season of 2021 is loaded into the ledger years later (registration, enrollment,
    # payment, each reported when it happened)
    someone = people.born(date(1990, 5, 5))
    office.send(
        registered(someone, at(2021, 9, 1)), enrollment(someone, at(2021, 9, 2)), payment(someone, at(2021, 9, 2))
    )
    # Then nothing is backdated: the rules judge by the messages' times, not the wall clock
    assert office.flags("backdated") == []


def test_backdated__coverage_decided_retroactively_from_birth_is_flagged(office: Office, people: People) -> None:
    # Given a baby born on Mar 1, 2022, enrolled as a newborn on Mar 5
    baby = people.born(date(2022, 3, 1))
    office.send(enrollment(baby, at(2022, 3, 5), category="newborn"))
    # When the parents pay on Mar 10, within three months of birth
    paid = payment(baby, at(2022, 3, 10))
    office.send(paid)
    # Then the coverage decided on Mar 10 reaches back to the birth, and is flagged so
    decided = seq_of(office, paid, "CoverageDecided")
    flag = only([f for f in office.flags("backdated") if f.position == str(decided)])
    assert (flag.subject_key, flag.ledger, flag.coverage_year) == (office.key(baby), [decided], 2022)
    assert flag.parameters == {"backdated_days": BACKDATED_DAYS}
    assert "decided retroactively from 2022-03-01 (rule newborn)" in flag.detail
    assert json.loads(office.audit(decided)["detail"])["retroactive"] is True


def test_backdated__a_newborn_paid_on_the_day_of_birth_is_not_covered_retroactively(
    office: Office, people: People
) -> None:
    # Given a baby born on Mar 1, 2022, enrolled and paid for that day
    baby = people.born(date(2022, 3, 1))
    paid = payment(baby, at(2022, 3, 1, 18))
    office.send(enrollment(baby, at(2022, 3, 1, 17), category="newborn"), paid)
    # Then coverage from birth decided on the day of birth is not retroactive: nothing flagged
    assert seq_of(office, paid, "CoverageDecided")
    assert office.flags("backdated") == []


# ---- 3. double_enrollment: two active enrollments for one person and year -------------------------


def test_double_enrollment__an_enrollment_cancelled_for_employee_insurance_is_flagged(
    office: Office, people: People
) -> None:
    # Given a resident enrolled and paid for 2022 in September 2021
    someone = people.born(date(1985, 3, 3))
    office.send(enrollment(someone, at(2021, 9, 10)), payment(someone, at(2021, 9, 10)))
    # When employee insurance reports a job from Mar 1, 2022
    job = employee_insurance(someone, at(2022, 3, 5), insured_from=date(2022, 3, 1), continuous_months=0)
    office.send(job)
    # Then the resident enrollment is cancelled as a duplicate, and flagged
    flag = only(office.flags("double_enrollment"))
    cancelled = seq_of(office, job, "EnrollmentCancelled")
    assert (flag.subject_key, flag.position, flag.coverage_year) == (office.key(someone), str(cancelled), 2022)
    assert (flag.ledger, flag.rejected, flag.parameters) == ([cancelled], [], {})
    assert json.loads(office.audit(cancelled)["detail"])["reason"] == "duplicate_employee_insurance"


def test_double_enrollment__a_second_enrollment_for_the_year_in_another_district_is_flagged(
    office: Office, people: People
) -> None:
    # Given a resident enrolled for 2022 in 蜀山区
    someone = people.born(date(1986, 4, 4))
    office.send(enrollment(someone, at(2021, 9, 10)), payment(someone, at(2021, 9, 10)))
    # When another enrollment for 2022 arrives from 瑶海区
    again = enrollment(someone, at(2021, 10, 8), district=ELSEWHERE)
    assert office.send(again)[msg_id(again)].reason == "already_enrolled"
    # Then the refusal is flagged, pointing at it on REJECTED
    flag = only(office.flags("double_enrollment"))
    (rejected,) = flag.rejected
    assert (flag.subject_key, flag.position, flag.ledger, flag.parameters) == (
        office.key(someone), f"R{rejected}", [], {},
    )  # fmt: skip
    refusal = office.rejection(rejected)
    assert (refusal["reason"], refusal["msg_id"]) == ("already_enrolled", msg_id(again))


def test_double_enrollment__a_resident_enrollment_while_in_employee_insurance_is_flagged(
    office: Office, people: People
) -> None:
    # Given an employee insured since Jan 1, 2020, still insured
    someone = people.born(date(1987, 5, 5))
    office.send(employee_insurance(someone, at(2020, 1, 5), insured_from=date(2020, 1, 1), continuous_months=20))
    # When a resident enrollment for 2022 arrives
    resident = enrollment(someone, at(2021, 9, 10))
    assert office.send(resident)[msg_id(resident)].reason == "in_employee_insurance"
    # Then the refusal is flagged
    flag = only(office.flags("double_enrollment"))
    (rejected,) = flag.rejected
    assert (flag.subject_key, flag.position) == (office.key(someone), f"R{rejected}")
    assert (office.rejection(rejected)["reason"], office.rejection(rejected)["msg_id"]) == (
        "in_employee_insurance", msg_id(resident),
    )  # fmt: skip


def test_double_enrollment__a_resident_enrollment_after_employee_insurance_ended_is_not_flagged(
    office: Office, people: People
) -> None:
    # Given an employee whose employee insurance ended on Jun 30, 2021
    someone = people.born(date(1988, 6, 6))
    office.send(
        employee_insurance(someone, at(2021, 7, 5), insured_from=date(2019, 1, 1), insured_until=date(2021, 6, 30),
                           continuous_months=30),
    )  # fmt: skip
    # When they enroll as a resident for 2022 in the concentrated period
    resident = enrollment(someone, at(2021, 9, 10))
    # Then the enrollment is recorded, and nothing is flagged
    assert office.send(resident, payment(someone, at(2021, 9, 10)))[msg_id(resident)].kind == "recorded"
    assert office.flags("double_enrollment") == []


def test_double_enrollment__the_same_enrollment_sent_twice_is_not_a_second_enrollment(
    office: Office, people: People
) -> None:
    # Given a resident enrolled for 2022
    someone = people.born(date(1989, 7, 7))
    enrolled = enrollment(someone, at(2021, 9, 10))
    office.send(enrolled)
    # When the same message is sent again, after the stream's duplicate window
    assert office.send(enrolled, resent=True)[msg_id(enrolled)].kind == "duplicate"
    # Then it is one enrollment: nothing refused, nothing flagged
    assert office.flags("double_enrollment") == []


def test_double_enrollment__a_second_payment_of_a_paid_enrollment_is_not_a_second_enrollment(
    office: Office, people: People
) -> None:
    # Given a resident enrolled and paid for 2022 through WeChat
    someone = people.born(date(1990, 8, 8))
    office.send(enrollment(someone, at(2021, 9, 10)), payment(someone, at(2021, 9, 10)))
    # When the tax office reports a second payment for the same enrollment
    twice = payment(someone, at(2021, 9, 12), channel="tax")
    assert office.send(twice)[msg_id(twice)].reason == "already_enrolled"
    # Then it is a payment to refund, not a second enrollment
    assert office.flags("double_enrollment") == []


# ---- 4. subsidy_mismatch: a subsidy with no roster entry, or not at the policy's rate -------------


def test_subsidy_mismatch__a_rate_and_a_subsidy_other_than_the_policys_are_flagged(
    office: Office, people: People
) -> None:
    # Given a ledger deciding by a draft table that gives dibao 80% (Hefei's file: 90%)
    draft = msgspec.structs.replace(
        office.policy, version="hefei-2021.0-draft", subsidy_rates={**office.policy.subsidy_rates, "dibao": 80}
    )
    drafted = office.ledger_applying(draft)
    # When the August dibao roster lists a resident, who enrolls for 2022 in September
    someone = people.born(date(1960, 9, 9))
    listed, enrolled = roster(someone, at(2021, 8, 20), "dibao"), enrollment(someone, at(2021, 9, 10))
    office.send(listed, enrolled, ledger=drafted)
    # Then the auditors, judging by Hefei's file, flag the roster's rate and the enrollment's subsidy
    entry, priced = seq_of(office, listed, "SubsidyListed"), seq_of(office, enrolled, "EnrollmentRequested")
    flags = {f.position: f for f in office.flags("subsidy_mismatch")}
    assert set(flags) == {str(entry), str(priced)}
    assert (flags[str(entry)].ledger, flags[str(priced)].ledger) == ([entry], [priced])
    for flag in flags.values():
        assert (flag.subject_key, flag.coverage_year) == (office.key(someone), 2022)
        assert flag.parameters == {"policy_version": POLICY_VERSION}
    assert "at 80%; the policy says 90%" in flags[str(entry)].detail
    assert "subsidy 25600 fen for 'dibao' in 2022; the policy gives 28800 fen" in flags[str(priced)].detail
    assert office.audit(priced)["policy_version"] == "hefei-2021.0-draft"


def test_subsidy_mismatch__an_enrollment_subsidised_without_a_roster_entry_is_flagged(
    office: Office, people: People
) -> None:
    # Given a registered resident on no roster
    someone = people.born(date(1961, 10, 10))
    office.send(registered(someone, at(2021, 3, 1)))
    # When an enrollment priced as extreme poverty (全额资助) is written past the rules, as an
    # import from an old system would (the ledger itself takes the category from the rosters)
    person = office.ledger.person(someone)
    assert person is not None
    person._enrollment_requested(
        coverage_year=2022, category="resident", channel="community", district=HOME, migrant_worker=False,
        contribution_fen=STANDARD_Y, subsidy_category="extreme_poverty", subsidy_fen=STANDARD_Y, due_fen=0,
        source=Source(msg_id="import-1", effective_at=at(2021, 9, 10), system="migration",
                      policy_version=POLICY_VERSION),
    )  # fmt: skip
    office.ledger.save(person)
    # Then it is flagged: no roster lists the person so
    flag = only(office.flags("subsidy_mismatch"))
    (seq,) = flag.ledger
    assert (flag.subject_key, flag.position, flag.coverage_year) == (office.key(someone), str(seq), 2022)
    assert (office.audit(seq)["event"], office.audit(seq)["msg_id"]) == ("EnrollmentRequested", "import-1")
    assert "'extreme_poverty' but no roster lists the person so" in flag.detail


def test_subsidy_mismatch__an_enrollment_priced_from_its_roster_at_the_policys_rate_is_not_flagged(
    office: Office, people: People
) -> None:
    # Given the August dibao roster listing a resident for 2022
    someone = people.born(date(1962, 11, 11))
    # When they enroll in September and pay their 10% (32 yuan)
    office.send(
        roster(someone, at(2021, 8, 20), "dibao"), enrollment(someone, at(2021, 9, 10)),
        payment(someone, at(2021, 9, 10), amount_fen=3_200),
    )  # fmt: skip
    # Then nothing is flagged
    assert office.flags("subsidy_mismatch") == []


# ---- 5. receipt_reused: a cash receipt number used twice ------------------------------------------


def test_receipt_reused__a_receipt_number_presented_a_second_time_is_flagged(office: Office, people: People) -> None:
    # Given a cash payment at the community committee against receipt 000123
    first, second = people.born(date(1970, 1, 1)), people.born(date(1971, 2, 2))
    office.send(
        enrollment(first, at(2021, 9, 10), channel="community_cash"),
        enrollment(second, at(2021, 9, 10), channel="community_cash"),
        cash_payment(first, at(2021, 9, 10), receipt="000123", collector=COLLECTOR),
    )  # fmt: skip
    # When another person's payment presents the same receipt number
    reused = cash_payment(second, at(2021, 9, 11), receipt="000123", collector=COLLECTOR)
    assert office.send(reused)[msg_id(reused)].reason == "duplicate_receipt"
    # Then the refusal is flagged for that person, pointing at it on REJECTED
    flag = only(office.flags("receipt_reused"))
    (rejected,) = flag.rejected
    assert (flag.subject_key, flag.position, flag.ledger, flag.parameters) == (
        office.key(second), f"R{rejected}", [], {},
    )  # fmt: skip
    refusal = office.rejection(rejected)
    assert (refusal["reason"], refusal["msg_id"], refusal["person_key"]) == (
        "duplicate_receipt", msg_id(reused), office.key(second),
    )  # fmt: skip


def test_receipt_reused__the_same_cash_payment_sent_twice_is_not_flagged(office: Office, people: People) -> None:
    # Given a cash payment against receipt 000124
    someone = people.born(date(1972, 3, 3))
    paid = cash_payment(someone, at(2021, 9, 10), receipt="000124", collector=COLLECTOR)
    office.send(enrollment(someone, at(2021, 9, 10), channel="community_cash"), paid)
    # When the same payment message is sent again, after the stream's duplicate window
    assert office.send(paid, resent=True)[msg_id(paid)].kind == "duplicate"
    # Then it is the same receipt, once: nothing flagged
    assert office.flags("receipt_reused") == []


# ---- 6. cash_unremitted: cash held beyond 30 days, or above 200,000 yuan -------------------------


def _cash_payers(office: Office, people: People, count: int, day: datetime, *, first_receipt: int = 1) -> list:
    payers = people.many(count)
    enrollments = [enrollment(p, day, channel="community_cash") for p in payers]
    payments = [
        cash_payment(p, day, receipt=f"{first_receipt + i:06d}", collector=COLLECTOR) for i, p in enumerate(payers)
    ]
    office.send(*enrollments, *payments)
    return payments


def test_cash_unremitted__a_committee_collecting_again_31_days_later_is_flagged_once_for_the_old_cash(
    office: Office, people: People
) -> None:
    # Given the committee collected 320 yuan on Sep 5, 2021 and has not remitted it
    _cash_payers(office, people, 1, at(2021, 9, 5))
    # When it collects again on Oct 6, 31 days later
    (later,) = _cash_payers(office, people, 1, at(2021, 10, 6), first_receipt=2)
    # Then the committee is flagged once for the Sep 5 receipt, with the first fact of Oct 6
    # (the new payer's enrollment, before the payment) as the evidence that the time passed
    flag = only(office.flags("cash_unremitted"))
    assert (flag.subject_key, flag.position) == (f"collector:{COLLECTOR}", "receipt:000001")
    assert flag.parameters == {"cash_remit_days": CASH_REMIT_DAYS}
    (seq,) = flag.ledger
    assert seq < seq_of(office, later, "CashReceived")
    assert office.audit(seq)["effective_at"].startswith("2021-10-06")
    assert "collected 2021-09-05 still not remitted on 2021-10-06" in flag.detail


def test_cash_unremitted__cash_not_remitted_is_flagged_when_time_passes_without_collections(
    office: Office, people: People
) -> None:
    # Given the committee collected 320 yuan on Sep 5, 2021 and then stopped collecting
    _cash_payers(office, people, 1, at(2021, 9, 5))
    # When the ledger's first fact dated Oct 6 (31 days later) arrives: someone else enrolling
    other = enrollment(people.born(date(1980, 1, 1)), at(2021, 10, 6))
    office.send(other)
    # Then the committee is flagged, with that fact as the evidence that the time passed
    flag = only(office.flags("cash_unremitted"))
    assert (flag.subject_key, flag.position) == (f"collector:{COLLECTOR}", "receipt:000001")
    assert flag.parameters == {"cash_remit_days": CASH_REMIT_DAYS}
    (seq,) = flag.ledger
    assert office.audit(seq)["msg_id"] == msg_id(other)
    assert office.audit(seq)["effective_at"].startswith("2021-10-06")


def test_cash_unremitted__cash_collected_exactly_30_days_before_is_not_flagged(office: Office, people: People) -> None:
    # Given the committee collected 320 yuan on Sep 5, 2021
    _cash_payers(office, people, 1, at(2021, 9, 5))
    # When it collects again on Oct 5, the 30th day
    _cash_payers(office, people, 1, at(2021, 10, 5), first_receipt=2)
    # Then it is still within the 30 days: nothing flagged
    assert office.flags("cash_unremitted") == []


def test_cash_unremitted__cash_remitted_within_30_days_is_not_flagged(office: Office, people: People) -> None:
    # Given the committee collected 320 yuan on Sep 5, 2021 and remitted it on Sep 25
    _cash_payers(office, people, 1, at(2021, 9, 5))
    office.send(remittance(COLLECTOR, at(2021, 9, 25), amount_fen=STANDARD_Y, receipts=("000001",)))
    # When it collects again on Oct 15, 40 days after the first collection
    _cash_payers(office, people, 1, at(2021, 10, 15), first_receipt=2)
    # Then nothing is flagged
    assert office.flags("cash_unremitted") == []


def test_cash_unremitted__holding_exactly_200000_yuan_is_not_flagged(office: Office, people: People) -> None:
    # When the committee collects 625 payments of 320 yuan on one day: 200,000 yuan, the limit
    _cash_payers(office, people, 625, at(2021, 10, 8))
    # Then it must remit now, but holds no more than the limit: nothing flagged
    assert office.flags("cash_unremitted") == []


def test_cash_unremitted__the_collection_that_takes_the_cash_held_above_200000_yuan_is_flagged(
    office: Office, people: People
) -> None:
    # When the committee collects 626 payments of 320 yuan on one day: 200,320 yuan
    payments = _cash_payers(office, people, 626, at(2021, 10, 8))
    # Then the 626th collection is flagged, with the limit
    flag = only(office.flags("cash_unremitted"))
    seq = seq_of(office, payments[-1], "CashReceived")
    assert (flag.subject_key, flag.position, flag.ledger) == (f"collector:{COLLECTOR}", str(seq), [seq])
    assert flag.parameters == {"cash_remit_fen": CASH_REMIT_FEN}
    assert "holding 20032000 fen, above the 20000000 fen limit" in flag.detail


# ---- 7. shared_contact: one phone or payer account behind many unrelated people -------------------


def test_shared_contact__one_phone_behind_six_households_is_flagged(office: Office, people: People) -> None:
    # When six people of six households register the same phone number
    neighbours = [people.born(date(1970 + i, 1, 1)) for i in range(6)]
    registrations = [
        registered(p, at(2021, 8, 1 + i), phone="13800000001", household=f"H-{i}") for i, p in enumerate(neighbours)
    ]
    office.send(*registrations)
    # Then the sixth is flagged, with all six registrations as evidence
    flag = only(office.flags("shared_contact"))
    seqs = [seq_of(office, r, "Registered") for r in registrations]
    assert (flag.subject_key, flag.position) == (office.key(neighbours[-1]), str(seqs[-1]))
    assert flag.parameters == {"phone_max_people": PHONE_MAX_PEOPLE, "kind": "phone"}
    assert flag.ledger == seqs
    assert [office.audit(s)["subject_key"] for s in flag.ledger] == [office.key(p) for p in neighbours]


def test_shared_contact__one_phone_behind_six_people_of_five_households_is_not_flagged(
    office: Office, people: People
) -> None:
    # When six people register the same phone number, two of them of one household
    households = ["H-0", "H-0", "H-1", "H-2", "H-3", "H-4"]
    office.send(
        *[
            registered(people.born(date(1970 + i, 1, 1)), at(2021, 8, 1 + i), phone="13800000002", household=h)
            for i, h in enumerate(households)
        ]
    )
    # Then it is five households, the most the policy allows: nothing flagged
    assert office.flags("shared_contact") == []


def test_shared_contact__a_person_who_changed_phone_no_longer_counts_behind_the_old_one(
    office: Office, people: People
) -> None:
    # Given five people of five households behind one phone, one of whom then changes number
    neighbours = [people.born(date(1960 + i, 1, 1)) for i in range(6)]
    office.send(*[registered(p, at(2021, 8, 1 + i), phone="13800000003", household=f"H-{i}") for i, p in enumerate(neighbours[:5])])
    office.send(registered(neighbours[0], at(2021, 8, 10), phone="13900000009", household="H-0"))
    # When a sixth person of a sixth household registers the old number
    office.send(registered(neighbours[5], at(2021, 8, 11), phone="13800000003", household="H-5"))
    # Then it is still five households behind it: nothing flagged
    assert office.flags("shared_contact") == []


def test_shared_contact__one_payer_account_paying_for_six_households_is_flagged(office: Office, people: People) -> None:
    # Given six residents of six households, enrolled for 2022
    payers = [people.born(date(1975 + i, 2, 2)) for i in range(6)]
    office.send(
        *[registered(p, at(2021, 8, 1), household=f"H-{i}") for i, p in enumerate(payers)],
        *[enrollment(p, at(2021, 9, 10)) for p in payers],
    )  # fmt: skip
    # When one payer account pays for all six
    payments = [payment(p, at(2021, 9, 11 + i), payer_account="6222-0000-0001") for i, p in enumerate(payers)]
    office.send(*payments)
    # Then the sixth payment is flagged, with all six as evidence
    flag = only(office.flags("shared_contact"))
    seqs = [seq_of(office, p, "PaymentReceived") for p in payments]
    assert (flag.subject_key, flag.position) == (office.key(payers[-1]), str(seqs[-1]))
    assert flag.parameters == {"payer_account_max_people": PAYER_ACCOUNT_MAX_PEOPLE, "kind": "payer_account"}
    assert flag.ledger == sorted(seqs)


def test_shared_contact__one_payer_account_paying_for_a_household_of_six_is_not_flagged(
    office: Office, people: People
) -> None:
    # Given a household of six, enrolled for 2022
    family = [people.born(date(1950 + 10 * i, 3, 3)) for i in range(6)]
    office.send(
        *[registered(p, at(2021, 8, 1), household="H-family") for p in family],
        *[enrollment(p, at(2021, 9, 10)) for p in family],
    )  # fmt: skip
    # When one account pays for all of them
    office.send(*[payment(p, at(2021, 9, 11), payer_account="6222-0000-0002") for p in family])
    # Then it is one household: nothing flagged
    assert office.flags("shared_contact") == []


# ---- 8. operator_anomaly: outside their district, or in bursts ------------------------------------


def test_operator_anomaly__an_operator_enrolling_outside_their_district_is_flagged(
    office: Office, people: People
) -> None:
    # Given an operator whose first enrollment was in 蜀山区
    office.send(enrollment(people.born(date(1980, 1, 1)), at(2021, 9, 10), operator="op-07"))
    # When the same operator enrolls someone in 瑶海区
    someone = people.born(date(1981, 2, 2), district=ELSEWHERE)
    outside = enrollment(someone, at(2021, 9, 11), district=ELSEWHERE, operator="op-07")
    office.send(outside)
    # Then the operator is flagged, pointing at that enrollment
    flag = only(office.flags("operator_anomaly"))
    seq = seq_of(office, outside, "EnrollmentRequested")
    assert (flag.subject_key, flag.position, flag.ledger, flag.parameters) == ("operator:op-07", f"{seq}:district", [seq], {})
    row = office.audit(seq)
    assert (row["operator_id"], row["subject_key"]) == ("op-07", office.key(someone))
    assert "(district 340104) enrolled person" in flag.detail and "in district 340102" in flag.detail


def test_operator_anomaly__an_operator_enrolling_in_their_own_district_is_not_flagged(
    office: Office, people: People
) -> None:
    # When an operator enrolls two people of 蜀山区, and a third whose ID number was issued elsewhere
    office.send(
        enrollment(people.born(date(1980, 1, 1)), at(2021, 9, 10), operator="op-08"),
        enrollment(people.born(date(1981, 2, 2)), at(2021, 9, 11), operator="op-08"),
        enrollment(people.born(date(1982, 3, 3), district=ELSEWHERE), at(2021, 9, 12), operator="op-08"),
    )
    # Then nothing is flagged: the district is where the person is enrolled
    assert office.flags("operator_anomaly") == []


def test_operator_anomaly__61_enrollments_by_one_operator_within_an_hour_are_flagged(
    office: Office, people: People
) -> None:
    # When an operator records 61 enrollments from 9:00 to 9:59 (one every 59 seconds)
    start = at(2021, 9, 10, 9)
    burst = [
        enrollment(p, start + timedelta(seconds=59 * i), operator="op-09") for i, p in enumerate(people.many(61))
    ]
    office.send(*burst)
    # Then the 61st is flagged, with the policy's 60 an hour
    flag = only(office.flags("operator_anomaly"))
    seq = seq_of(office, burst[-1], "EnrollmentRequested")
    assert (flag.subject_key, flag.position, flag.ledger) == ("operator:op-09", f"{seq}:burst", [seq])
    assert flag.parameters == {"operator_burst_per_hour": OPERATOR_BURST_PER_HOUR}
    assert "61 enrollments within one hour" in flag.detail


def test_operator_anomaly__a_burst_reaching_the_ledger_out_of_order_is_flagged_once(office: Office, people: People) -> None:
    # When an operator's 64 enrollments of 40 minutes reach the ledger shuffled (as a batch saved
    # person by person may record them)
    start = at(2021, 9, 12, 9)
    burst = [enrollment(p, start + timedelta(seconds=37 * i), operator="op-11") for i, p in enumerate(people.many(64))]
    random.Random(7).shuffle(burst)
    office.send(*burst)
    # Then the burst is flagged, once
    flag = only(office.flags("operator_anomaly"))
    assert flag.subject_key == "operator:op-11" and flag.position.endswith(":burst")
    assert "enrollments within one hour" in flag.detail


def test_operator_anomaly__61_enrollments_spread_over_a_full_hour_are_not_flagged(
    office: Office, people: People
) -> None:
    # When an operator records 61 enrollments from 9:00 to 10:00 (one a minute)
    start = at(2021, 9, 10, 9)
    office.send(
        *[enrollment(p, start + timedelta(minutes=i), operator="op-10") for i, p in enumerate(people.many(61))]
    )
    # Then no hour holds more than 60: nothing flagged
    assert office.flags("operator_anomaly") == []


# ---- 9. adverse_selection: outside the period, usable at once -------------------------------------


def migrant_enrollment(id_number: str, on: datetime) -> Message:
    subject, body = enrollment(id_number, on, district="340124")
    return subject, {**body, "migrant_worker": True}


def test_adverse_selection__a_migrant_uninsured_last_year_paying_in_february_is_flagged(
    office: Office, people: People
) -> None:
    # Given a migrant worker with no coverage for 2021
    someone = people.born(date(1983, 2, 2))
    # When they enroll and pay on Feb 10, 2022, in the migrants' extension, after the period
    paid = payment(someone, at(2022, 2, 10))
    office.send(migrant_enrollment(someone, at(2022, 2, 10)), paid)
    # Then they are covered back to Jan 1 at once, and the decision is flagged
    flag = only(office.flags("adverse_selection"))
    decided = seq_of(office, paid, "CoverageDecided")
    assert (flag.subject_key, flag.position, flag.ledger, flag.coverage_year) == (
        office.key(someone), str(decided), [decided], 2022,
    )  # fmt: skip
    assert flag.parameters == {"adverse_selection_days": ADVERSE_SELECTION_DAYS}
    assert json.loads(office.audit(decided)["detail"])["benefit_start"] == "2022-01-01"
    assert "enrolled 2022-02-10 outside the concentrated period (resident), uninsured the year before" in flag.detail


def test_adverse_selection__a_migrant_enrolled_last_year_paying_in_february_is_not_flagged(
    office: Office, people: People
) -> None:
    # Given a migrant worker covered for 2021
    someone = people.born(date(1983, 3, 3))
    office.send(enrollment(someone, at(2020, 10, 1), year=2021, district="340124"),
                payment(someone, at(2020, 10, 1), year=2021, amount_fen=28_000))  # fmt: skip
    # When they renew on Feb 10, 2022, in the migrants' extension
    office.send(migrant_enrollment(someone, at(2022, 2, 10)), payment(someone, at(2022, 2, 10)))
    # Then it is a renewal, not a person joining when needed: nothing flagged
    assert office.flags("adverse_selection") == []


def test_adverse_selection__a_cross_scheme_transfer_within_the_lapse_window_is_not_flagged(
    office: Office, people: People
) -> None:
    # Given an employee insured for 27 months until Jan 31, 2022 (a lapse of under 3 months)
    someone = people.born(date(1979, 4, 4))
    office.send(
        employee_insurance(someone, at(2022, 2, 5), insured_from=date(2019, 11, 1), insured_until=date(2022, 1, 31),
                           continuous_months=27),
    )  # fmt: skip
    # When they enroll across schemes on Mar 10, 2022 and pay the same day
    paid = payment(someone, at(2022, 3, 10))
    office.send(enrollment(someone, at(2022, 3, 10), category="cross_scheme"), paid)
    # Then benefits start Mar 11 with no waiting period, but they were insured: nothing flagged
    assert json.loads(office.audit_of(paid, "CoverageDecided")["detail"])["benefit_start"] == "2022-03-11"
    assert office.flags("adverse_selection") == []


def test_adverse_selection__a_cross_scheme_enrollment_behind_the_waiting_period_is_not_flagged(
    office: Office, people: People
) -> None:
    # Given an employee insured for 24 months until Oct 31, 2021 (a lapse of over 3 months by March)
    someone = people.born(date(1979, 5, 5))
    office.send(
        employee_insurance(someone, at(2021, 11, 5), insured_from=date(2019, 11, 1), insured_until=date(2021, 10, 31),
                           continuous_months=24),
    )  # fmt: skip
    # When they enroll across schemes on Mar 10, 2022 and pay the same day
    paid = payment(someone, at(2022, 3, 10))
    office.send(enrollment(someone, at(2022, 3, 10), category="cross_scheme"), paid)
    # Then benefits start after the 6-month waiting period: nothing flagged
    assert json.loads(office.audit_of(paid, "CoverageDecided")["detail"])["waiting_months"] == 6
    assert office.flags("adverse_selection") == []


def test_adverse_selection__an_enrollment_on_the_last_day_of_the_concentrated_period_is_not_flagged(
    office: Office, people: People
) -> None:
    # When a resident enrolls and pays on Dec 31, 2021, the last day of the concentrated period
    someone = people.born(date(1979, 6, 6))
    office.send(enrollment(someone, at(2021, 12, 31)), payment(someone, at(2021, 12, 31)))
    # Then benefits start the next day, but inside the period nothing is flagged
    assert office.flags("adverse_selection") == []


def test_adverse_selection__a_newborn_enrolled_inside_the_concentrated_period_is_not_flagged(
    office: Office, people: People
) -> None:
    # When a baby born on Dec 1, 2021 is enrolled as a newborn for 2022 on Dec 5, and paid
    baby = people.born(date(2021, 12, 1))
    office.send(enrollment(baby, at(2021, 12, 5), category="newborn"), payment(baby, at(2021, 12, 5)))
    # Then benefits start on Jan 1 like everyone enrolled in the period: nothing flagged
    assert office.flags("adverse_selection") == []
