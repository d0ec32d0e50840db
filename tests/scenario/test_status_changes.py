"""Status changes: death, joining employee insurance, corrections, and what the ledger knew when
(domain.md §6; 皖医保发〔2021〕7号 (二十一) 清理无效、重复参保数据; contract: coverage reply ``as_of``).

Every change has an effective time (from the message: when it is true in the world) and a
recorded time (the event's timestamp: when the ledger learned it); both are kept, and a
correction is a new event, never an edit.
"""

from __future__ import annotations

import random
from datetime import date, datetime

import pytest

from ledger.application import Ledger
from ledger.commands import ReceivePayment
from ledger.domain.refusals import Deceased
from tests.scenario.conftest import CST, at
from tests.scenario.steps_status import (
    STANDARD_Y,
    TAX_OFFICE,
    People,
    Y,
    death,
    discharge,
    employee_insurance,
    enroll,
    enroll_and_pay,
    events_of,
    list_on_roster,
    named,
    now_between_facts,
    pay,
    recorded,
    register,
)


@pytest.fixture
def people(rng: random.Random) -> People:
    return People(rng)


@pytest.fixture
def enrolled(ledger: Ledger, people: People) -> str:
    """A resident enrolled and paid in the 2021 concentrated period: covered all of 2022."""
    someone = people.born(date(1955, 1, 20))
    register(ledger, someone, at(Y - 1, 8, 1))
    enroll_and_pay(ledger, someone, Y, "resident", at(Y - 1, 9, 10))
    assert ledger.coverage(someone, date(Y, 1, 1)).covered
    return someone


# ---- death (死亡) ---------------------------------------------------------------------------------


def test_coverage_ends_on_the_date_of_death(ledger: Ledger, enrolled: str) -> None:
    # When public security registers the death on Jun 15, 2022, five days later
    death(ledger, enrolled, at(Y, 6, 20), date(Y, 6, 15))
    # Then the person is covered on the day of death
    on_the_day = ledger.coverage(enrolled, date(Y, 6, 15))
    assert on_the_day.covered and on_the_day.status == "enrolled"
    # And from the next day coverage has ended, for death
    after = ledger.coverage(enrolled, date(Y, 6, 16))
    assert not after.covered and not after.in_waiting_period
    assert (after.status, after.ended_reason) == ("ended", "death")
    assert ledger.coverage(enrolled, date(Y, 12, 31)).status == "ended"
    assert ledger.coverage(enrolled, date(Y, 3, 1)).covered


def test_an_enrollment_dated_after_the_death_is_refused_as_deceased(ledger: Ledger, people: People) -> None:
    # Given a resident who died on Oct 1, 2021, during the concentrated period
    someone = people.born(date(1948, 4, 4))
    register(ledger, someone, at(Y - 1, 3, 1))
    death(ledger, someone, at(Y - 1, 10, 3), date(Y - 1, 10, 1))
    before = recorded(ledger)
    # When an enrollment for 2022 arrives, dated Oct 10
    with pytest.raises(Deceased) as refused:
        enroll(ledger, someone, Y, "resident", at(Y - 1, 10, 10))
    # Then it is refused as deceased and nothing is recorded
    assert refused.value.reason == "deceased"
    assert recorded(ledger) == before
    assert ledger.coverage(someone, date(Y, 1, 1)).status == "not_enrolled"


def test_a_payment_dated_after_the_death_is_refused_as_deceased(ledger: Ledger, people: People) -> None:
    # Given an enrollment for 2022 requested in September 2021, awaiting payment
    someone = people.born(date(1950, 2, 2))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 5))
    # And a death on Sep 20, 2021
    death(ledger, someone, at(Y - 1, 9, 21), date(Y - 1, 9, 20))
    before = recorded(ledger)
    # When a payment dated Sep 25 arrives
    with pytest.raises(Deceased) as refused:
        pay(ledger, someone, Y, STANDARD_Y, at(Y - 1, 9, 25))
    # Then it is refused as deceased, and nothing is recorded
    assert refused.value.reason == "deceased"
    assert recorded(ledger) == before


def test_a_payment_dated_before_the_death_but_recorded_after_it_covers_until_the_date_of_death(
    ledger: Ledger, people: People
) -> None:
    # Given a baby born on Mar 1, 2022, enrolled on Mar 5, whose parents paid on Mar 10
    born = date(Y, 3, 1)
    baby = people.born(born)
    enroll(ledger, baby, Y, "newborn", at(Y, 3, 5))
    # And the baby's death on Mar 12, registered before the tax office reports the payment
    death(ledger, baby, at(Y, 3, 13), date(Y, 3, 12))
    # When the payment of Mar 10 arrives on Mar 14
    ledger.receive_payment(ReceivePayment(
        msg_id="tax-late-1", occurred_at=at(Y, 3, 14), id_number=baby, coverage_year=Y, amount_fen=STANDARD_Y,
        channel="tax", paid_at=at(Y, 3, 10),
    ), TAX_OFFICE)  # fmt: skip
    # Then the baby was covered from birth to the date of death, and not after
    assert ledger.coverage(baby, born).covered
    assert ledger.coverage(baby, date(Y, 3, 12)).covered
    after = ledger.coverage(baby, date(Y, 3, 13))
    assert (after.covered, after.status, after.ended_reason) == (False, "ended", "death")


def test_a_death_ends_an_enrollment_still_awaiting_payment(ledger: Ledger, people: People) -> None:
    # Given an enrollment for 2022 requested in September 2021, not yet paid
    someone = people.born(date(1949, 3, 3))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 5))
    # When the person dies on Oct 1, 2021
    death(ledger, someone, at(Y - 1, 10, 3), date(Y - 1, 10, 1))
    # Then the enrollment has ended for death and covers nothing
    enrollment = ledger.person(someone).enrollments[Y]  # type: ignore[union-attr]
    assert (enrollment.status, enrollment.ended_reason) == ("ended", "death")
    answer = ledger.coverage(someone, date(Y, 1, 1))
    assert not answer.covered and answer.status == "ended"


def test_a_corrected_date_of_death_moves_the_end_of_coverage(ledger: Ledger, enrolled: str) -> None:
    # Given a death registered as Jun 15, 2022
    death(ledger, enrolled, at(Y, 6, 20), date(Y, 6, 15))
    # When civil affairs corrects it to Jun 10
    death(ledger, enrolled, at(Y, 6, 25), date(Y, 6, 10))
    # Then both registrations are kept
    assert [e.date_of_death for e in named(events_of(ledger, enrolled), "DeathRegistered")] == [
        date(Y, 6, 15), date(Y, 6, 10),
    ]  # fmt: skip
    # And coverage ends on the corrected date
    assert ledger.coverage(enrolled, date(Y, 6, 10)).covered
    after = ledger.coverage(enrolled, date(Y, 6, 12))
    assert not after.covered and after.status == "ended"


# ---- joining employee insurance (不得跨制度重复参保) --------------------------------------------------


def test_joining_employee_insurance_cancels_the_resident_enrollment_and_refunds_the_share_paid(
    ledger: Ledger, enrolled: str
) -> None:
    # When the employee-insurance system reports the person insured from May 1, 2022
    employee_insurance(ledger, enrolled, at(Y, 5, 8), insured_from=date(Y, 5, 1), continuous_months=0)
    # Then the 2022 resident enrollment is cancelled, the reason recorded, the 320 yuan refunded
    enrollment = ledger.person(enrolled).enrollments[Y]  # type: ignore[union-attr]
    assert enrollment.status == "ended"
    assert enrollment.ended_reason is not None and "employee_insurance" in enrollment.ended_reason
    assert enrollment.refund_fen == STANDARD_Y
    cancelled = named(events_of(ledger, enrolled), "EnrollmentCancelled")
    assert [(e.coverage_year, e.refund_fen) for e in cancelled] == [(Y, STANDARD_Y)]
    # And the coverage reply says so
    answer = ledger.coverage(enrolled, date(Y, 6, 1))
    assert not answer.covered and answer.status == "ended"
    assert answer.ended_reason == enrollment.ended_reason


def test_the_refund_for_a_cancelled_subsidised_enrollment_is_the_individual_share_only(
    ledger: Ledger, people: People
) -> None:
    # Given a 低保 recipient who paid 32 of 320 yuan in the concentrated period
    recipient = people.born(date(1970, 4, 4))
    register(ledger, recipient, at(Y - 1, 8, 1))
    list_on_roster(ledger, recipient, Y, "dibao", at(Y - 1, 8, 20))
    enroll(ledger, recipient, Y, "resident", at(Y - 1, 9, 15))
    pay(ledger, recipient, Y, 3_200, at(Y - 1, 9, 15))
    # When they join employee insurance in March 2022
    employee_insurance(ledger, recipient, at(Y, 3, 5), insured_from=date(Y, 3, 1), continuous_months=0)
    # Then the enrollment is cancelled and 32 yuan refunded, not the assistance fund's 288
    enrollment = ledger.person(recipient).enrollments[Y]  # type: ignore[union-attr]
    assert (enrollment.status, enrollment.refund_fen) == ("ended", 3_200)


def test_an_unpaid_enrollment_overlapping_employee_insurance_is_cancelled_without_refund(
    ledger: Ledger, people: People
) -> None:
    # Given an enrollment for 2022 awaiting payment
    someone = people.born(date(1990, 10, 10))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 10, 1))
    # When the person is reported in employee insurance from Nov 1, 2021, with no end
    employee_insurance(ledger, someone, at(Y - 1, 11, 3), insured_from=date(Y - 1, 11, 1), continuous_months=0)
    # Then the enrollment is cancelled, nothing to refund
    enrollment = ledger.person(someone).enrollments[Y]  # type: ignore[union-attr]
    assert (enrollment.status, enrollment.refund_fen) == ("ended", 0)
    assert ledger.coverage(someone, date(Y, 1, 1)).status == "ended"


def test_employee_insurance_beginning_after_the_coverage_year_leaves_the_enrollment_alone(
    ledger: Ledger, enrolled: str
) -> None:
    # When the person is reported in employee insurance from Jan 1, 2023
    employee_insurance(ledger, enrolled, at(Y, 12, 20), insured_from=date(Y + 1, 1, 1), continuous_months=0)
    # Then the 2022 enrollment stands
    enrollment = ledger.person(enrolled).enrollments[Y]  # type: ignore[union-attr]
    assert (enrollment.status, enrollment.refund_fen) == ("enrolled", 0)
    assert ledger.coverage(enrolled, date(Y, 12, 31)).covered


# ---- both times, and corrections -------------------------------------------------------------------


def test_every_status_change_keeps_its_effective_time_and_its_recorded_time(ledger: Ledger, people: People) -> None:
    # Given a soldier and his spouse, enrolled after his discharge
    soldier = people.born(date(1990, 1, 1), sex="male")
    spouse = people.born(date(1992, 2, 2), sex="female")
    facts: list[tuple[str, str, datetime]] = []  # (whose, event, effective time from the message)

    started = datetime.now(CST)
    discharge(ledger, soldier, at(Y, 2, 1, 9), date(Y, 1, 20), spouse=spouse)
    facts += [(soldier, "DischargeRegistered", at(Y, 2, 1, 9)), (spouse, "DischargeRegistered", at(Y, 2, 1, 9))]
    enroll(ledger, soldier, Y, "veteran", at(Y, 2, 3, 11))
    facts.append((soldier, "EnrollmentRequested", at(Y, 2, 3, 11)))
    pay(ledger, soldier, Y, STANDARD_Y, at(Y, 2, 4, 15))
    facts += [(soldier, "PaymentReceived", at(Y, 2, 4, 15)), (soldier, "CoverageDecided", at(Y, 2, 4, 15))]
    # When he joins employee insurance, and later dies
    employee_insurance(ledger, soldier, at(Y, 7, 2, 8), insured_from=date(Y, 7, 1), continuous_months=0)
    facts += [(soldier, "EmployeeInsuranceChanged", at(Y, 7, 2, 8)), (soldier, "EnrollmentCancelled", at(Y, 7, 2, 8))]
    death(ledger, soldier, at(Y, 9, 9, 16), date(Y, 9, 8))
    facts.append((soldier, "DeathRegistered", at(Y, 9, 9, 16)))
    finished = datetime.now(CST)

    # Then each event keeps the message's effective time and the time the ledger recorded it
    for whose, name, effective_at in facts:
        [event] = [e for e in named(events_of(ledger, whose), name) if e.source.effective_at == effective_at]
        assert event.source.effective_at.utcoffset() == effective_at.utcoffset()
        assert started <= event.timestamp <= finished, name
    # And the recorded times run in the order the ledger learned the facts
    timestamps = [e.timestamp for e in events_of(ledger, soldier)]
    assert timestamps == sorted(timestamps)
    assert named(events_of(ledger, soldier), "DeathRegistered")[0].date_of_death == date(Y, 9, 8)


def test_a_correction_is_a_new_event_and_the_event_list_only_grows(ledger: Ledger, people: People) -> None:
    # Given a resident registered in 蜀山区 with one phone number
    someone = people.born(date(1966, 6, 6))
    register(ledger, someone, at(Y - 1, 3, 1), phone="13800000001", district="340104")
    first = events_of(ledger, someone)
    # When the community corrects the registration: 包河区, another phone
    register(ledger, someone, at(Y - 1, 4, 1), phone="13800000002", district="340111")
    # Then the correction is appended, and the first registration is still there, unchanged
    after = events_of(ledger, someone)
    assert len(after) == len(first) + 1
    assert [(e.originator_version, e.timestamp, type(e).__name__) for e in after[: len(first)]] == [
        (e.originator_version, e.timestamp, type(e).__name__) for e in first
    ]
    assert (after[0].district, after[0].phone) == ("340104", "13800000001")
    assert (after[-1].district, after[-1].phone) == ("340111", "13800000002")
    person = ledger.person(someone)
    assert person is not None and (person.district, person.phone) == ("340111", "13800000002")


# ---- what the ledger knew (as_of) --------------------------------------------------------------------


def test_as_of_a_moment_before_the_payment_was_recorded_the_person_awaits_payment(
    ledger: Ledger, people: People
) -> None:
    # Given an enrollment recorded, then (a moment later) its payment
    someone = people.born(date(1977, 7, 7))
    enroll(ledger, someone, Y, "resident", at(Y - 1, 9, 20))
    before_payment = now_between_facts()
    pay(ledger, someone, Y, STANDARD_Y, at(Y - 1, 9, 21))
    after_payment = now_between_facts()
    # When asked about Mar 1, 2022 as the ledger knew it before the payment
    then = ledger.coverage(someone, date(Y, 3, 1), as_of=before_payment)
    # Then it awaited payment and was not covered; after the payment, covered
    assert (then.status, then.covered, then.as_of) == ("awaiting_payment", False, before_payment)
    later = ledger.coverage(someone, date(Y, 3, 1), as_of=after_payment)
    assert (later.status, later.covered) == ("enrolled", True)
    assert ledger.coverage(someone, date(Y, 3, 1)).covered


def test_as_of_a_moment_before_the_death_was_recorded_the_person_was_covered(ledger: Ledger, enrolled: str) -> None:
    # Given a death on Jun 15, 2022, recorded some time after the enrollment
    before_death = now_between_facts()
    death(ledger, enrolled, at(Y, 6, 20), date(Y, 6, 15))
    after_death = now_between_facts()
    # When asked about Jul 1 as the ledger knew it before and after the death was recorded
    then = ledger.coverage(enrolled, date(Y, 7, 1), as_of=before_death)
    later = ledger.coverage(enrolled, date(Y, 7, 1), as_of=after_death)
    # Then it was covered before, and ended after
    assert (then.status, then.covered) == ("enrolled", True)
    assert (later.status, later.covered, later.ended_reason) == ("ended", False, "death")


def test_as_of_a_moment_before_the_cancellation_was_recorded_the_person_was_covered(
    ledger: Ledger, enrolled: str
) -> None:
    # Given the person reported in employee insurance from May 1, 2022, recorded after the enrollment
    before_cancellation = now_between_facts()
    employee_insurance(ledger, enrolled, at(Y, 5, 8), insured_from=date(Y, 5, 1), continuous_months=0)
    # Then as the ledger knew it before, Jun 1 was covered; as it knows it now, the enrollment ended
    then = ledger.coverage(enrolled, date(Y, 6, 1), as_of=before_cancellation)
    assert (then.status, then.covered) == ("enrolled", True)
    now = ledger.coverage(enrolled, date(Y, 6, 1), as_of=datetime.now(CST))
    assert (now.status, now.covered) == ("ended", False)


def test_as_of_a_moment_before_the_person_was_known_they_were_not_enrolled(ledger: Ledger, people: People) -> None:
    # Given a moment before anything about the person was recorded
    someone = people.born(date(1978, 8, 8))
    before_anything = now_between_facts()
    enroll_and_pay(ledger, someone, Y, "resident", at(Y - 1, 9, 20))
    # Then as of that moment they were not enrolled (a reply, not an error)
    then = ledger.coverage(someone, date(Y, 3, 1), as_of=before_anything)
    assert (then.status, then.covered) == ("not_enrolled", False)
