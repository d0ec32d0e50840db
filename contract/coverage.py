"""What the ledger says about coverage (``docs/contract.md``): the ``coverage.query`` request and
reply, the KV bucket ``coverage``'s value, and the ``coverage.changed.<district>`` message.

The reply is the domain's coverage answer (``ledger.domain.coverage_question.CoverageAnswer``),
field for field, with ``ledger_seq`` added: the last LEDGER event the answer had seen
(``CoverageReply`` names that shape). ``projections.projection`` makes the KV value
(``CoverageValue``) and the change message (``CoverageChanged``: the reply for the day the change
takes effect).
"""

from __future__ import annotations

import datetime as dt
from datetime import date, datetime
from typing import Annotated

import msgspec

from contract.messages import Documented, check_days


class CoverageRequest(Documented, frozen=True, kw_only=True):
    """A coverage question: ``as_of`` asks what the ledger knew at that recorded time."""

    id_number: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    date: dt.date  # qualified: the field's name hides the type in the class body
    as_of: Annotated[datetime, msgspec.Meta(tz=True)] | None = None

    def __post_init__(self) -> None:
        check_days(self, ("date", "as_of"))  # the days upstream messages may carry, no others


# ---- what the ledger answers and publishes about coverage (docs/contract.md) --------------------


class CoverageReply(Documented, frozen=True, kw_only=True):
    """The ``coverage.query`` reply: ``CoverageAnswer`` field for field, and ``ledger_seq``.

    ``status`` is the status on ``date``: ``not_enrolled`` (no enrollment covers the day, or the
    person is unknown), ``awaiting_payment``, ``enrolled`` (covered once ``benefit_start`` is
    reached: see ``in_waiting_period``) or ``ended`` (with ``ended_reason``). ``coverage_year`` is
    the year of the enrollment the answer is about (``date``'s year when there is none)."""

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
    ended_reason: str | None
    as_of: datetime | None
    ledger_seq: int
    """The last LEDGER event the answer reflects."""


class CoverageYear(msgspec.Struct, frozen=True, kw_only=True):
    """One coverage year in the KV value: the enrollment as a whole, not one day of it.

    ``status`` is the enrollment's: ``awaiting_payment``, ``enrolled`` or ``ended`` (never
    ``not_enrolled``; an enrollment ended by death was covered up to and including ``ended_on``;
    one ended with ``ended_on`` null — cancelled — covers no day of the year)."""

    status: str
    coverage_start: date | None
    coverage_end: date | None
    benefit_start: date | None
    waiting_months: int | None
    subsidy_category: str | None
    ended_on: date | None
    ended_reason: str | None


class CoverageValue(Documented, frozen=True, kw_only=True):
    """The value of key ``<person key>`` in the KV bucket ``coverage``: a person's coverage, every
    coverage year the ledger has an enrollment for (keyed by the year as a string, ``"2022"``).
    Rewritten only when a field other than ``ledger_seq`` changes; ``ledger_seq`` is the ledger
    event that made this value."""

    person_key: str
    district: str | None
    """The district of residence (division code) as registered."""
    date_of_death: date | None
    coverage: dict[str, CoverageYear]
    ledger_seq: int


class CoverageChanged(Documented, frozen=True, kw_only=True):
    """A ``coverage.changed.<district>`` message: one coverage year of a person changed.

    The fields from ``covered`` to ``ended_reason``, with ``person_key`` and ``coverage_year``,
    are the ``coverage.query`` reply for ``effective_date`` as the ledger knew it at
    ``ledger_seq`` (the reply's ``date`` is ``effective_date`` here; ``as_of`` is not sent)."""

    person_key: str
    district: str | None
    """The district in the subject: the enrollment's district, else the district of residence."""
    coverage_year: int
    effective_date: date
    """The first day the change applies to: for an end of coverage by death, the day after the
    date of death (after the earlier of the two dates when the date of death is corrected); for a
    cancellation, the coverage start (it voids the year); otherwise the day the fact took effect,
    moved into the coverage period (its first day when the fact came earlier, its last day when
    later)."""
    covered: bool
    in_waiting_period: bool
    coverage_start: date | None
    coverage_end: date | None
    benefit_start: date | None
    status: str
    subsidy_category: str | None
    ended_reason: str | None
    ledger_seq: int
