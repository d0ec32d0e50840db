""""Is this person covered on this date?" — answered from the person's events alone.

``answer`` reads a person as the events made them; ``answer_as_of`` first folds only the events
the ledger had recorded by a past moment, so an auditor sees what the ledger knew then. The
reply has the contract's shape (``contract.md``, coverage reply); ``covered`` means costs on that
date are reimbursable: enrolled, paid, on or after the benefit start, not ended by death or
cancellation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from eventsourcing.domain import DomainEventProtocol

from ledger.domain.person import AWAITING_PAYMENT, ENDED, ENROLLED, Enrollment, InsuredPerson

NOT_ENROLLED = "not_enrolled"


@dataclass(frozen=True, slots=True)
class CoverageAnswer:
    """The coverage reply of the contract, less what only the store knows (``ledger_seq``)."""

    person_key: str
    date: dt.date  # qualified: the field's name hides the type in the class body
    covered: bool
    in_waiting_period: bool
    coverage_year: int
    coverage_start: dt.date | None
    coverage_end: dt.date | None
    benefit_start: dt.date | None
    status: str
    subsidy_category: str | None
    ended_reason: str | None = None
    as_of: datetime | None = None


def answer(person: InsuredPerson | None, person_key: str, day: date, as_of: datetime | None = None) -> CoverageAnswer:
    """Coverage of ``person`` (None: unknown to the ledger) on ``day``."""
    enrollment = _enrollment_for(person, day) if person is not None else None
    if enrollment is not None and person is not None and person.date_of_death is not None and day > person.date_of_death:
        return CoverageAnswer(
            person_key, day, False, False, day.year,
            *(_terms_of(enrollment)), ENDED,
            enrollment.subsidy_category,
            ended_reason="death", as_of=as_of,
        )
    if enrollment is None:
        return CoverageAnswer(person_key, day, False, False, day.year, None, None, None, NOT_ENROLLED, None, as_of=as_of)
    terms = enrollment.terms
    start, end, benefit = (terms.coverage_start, terms.coverage_end, terms.benefit_start) if terms else (None, None, None)
    status = enrollment.status
    if status == ENDED and enrollment.ended_on is not None and day <= enrollment.ended_on and terms is not None:
        status = ENROLLED  # covered until the day coverage ended (death), ended afterwards
    in_range = start is not None and end is not None and start <= day <= end
    if status == ENROLLED and not in_range:
        status = NOT_ENROLLED
    enrolled = status == ENROLLED
    return CoverageAnswer(
        person_key=person_key,
        date=day,
        covered=enrolled and benefit is not None and day >= benefit,
        in_waiting_period=enrolled and benefit is not None and day < benefit,
        coverage_year=enrollment.coverage_year,
        coverage_start=start,
        coverage_end=end,
        benefit_start=benefit,
        status=status,
        subsidy_category=enrollment.subsidy_category,
        ended_reason=enrollment.ended_reason if status == ENDED else None,
        as_of=as_of,
    )


def answer_as_of(events: Iterable[DomainEventProtocol[Any]], person_key: str, day: date, as_of: datetime) -> CoverageAnswer:
    """Coverage on ``day`` as the ledger knew it at ``as_of`` (events recorded by then only)."""
    return answer(fold(e for e in _of_a_person(events) if e.timestamp <= as_of), person_key, day, as_of)


def fold(events: Iterable[DomainEventProtocol[Any]]) -> InsuredPerson | None:
    """The person the events of one person make, in order (None: no events)."""
    person: InsuredPerson | None = None
    for e in _of_a_person(events):
        person = e.mutate(person)
    return person


def _of_a_person(events: Iterable[DomainEventProtocol[Any]]) -> Iterator[InsuredPerson.Event]:
    for e in events:
        if not isinstance(e, InsuredPerson.Event):
            raise TypeError(f"not an event of a person: {e!r}")
        yield e


def _terms_of(enrollment: Enrollment | None) -> tuple[date | None, date | None, date | None]:
    terms = enrollment.terms if enrollment is not None else None
    return (terms.coverage_start, terms.coverage_end, terms.benefit_start) if terms else (None, None, None)


def _enrollment_for(person: InsuredPerson, day: date) -> Enrollment | None:
    """The enrollment whose coverage contains ``day``; else the one for ``day``'s year.

    A new university student's coverage for year Y starts in the autumn before it, so the next
    year's enrollment can cover a day too.
    """
    candidates = [person.enrollments.get(day.year), person.enrollments.get(day.year + 1)]
    for enrollment in candidates:
        terms = enrollment.terms if enrollment is not None else None
        if terms is not None and terms.coverage_start <= day <= terms.coverage_end:
            return enrollment
    own = candidates[0]
    if own is not None and own.status in (AWAITING_PAYMENT, ENROLLED, ENDED):
        return own
    return None
