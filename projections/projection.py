"""The ledger's projection: LEDGER events, in stream order, into the views of ``views.py``.

The projection does not re-implement the rules. For each person event it folds the event into
the person (``event.mutate``: the aggregate's own event method), then writes the rows the
person now implies: the coverage row of the coverage year the event touched (with the domain's
terms: start, end, benefit start, waiting period, rule), the person row, the audit row, and the
fraud flags (``fraud.py``). Persons stay in an LRU cache; one not in it (after a restart, or
evicted) is read from the event store **as of the version before this event**, so a projection
that is behind never sees the future.

With a publisher, each change of what downstream readers see of a person goes to the ``outbox``
table, in the same transaction as the rows; ``downstream.py`` publishes it after the commit.
"What they see" is the KV value (``contract.coverage.CoverageValue``, ``coverage_value``): an
event is compared with the value the person had just before it, which is the value last
published for them (every change is staged, in ledger order). An event that leaves it as it was
(a payment before its coverage decision, a roster listing for a year already paid, a death
registered again with the same date) stages nothing. One that changes it stages the new value
for the bucket, and — when it changed the coverage year the event is about — a
``CoverageChanged`` for ``coverage.changed`` (``change_message``); a change of the value alone
(the date of death, the district) has no message (``message`` is empty in the outbox).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date, datetime, timedelta
from functools import singledispatchmethod
from typing import Any, ClassVar, Protocol, runtime_checkable
from uuid import UUID

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from contract.coverage import CoverageChanged, CoverageValue, CoverageYear
from ledger.domain.cash import CashCollector, CashReceipt, collector_id
from ledger.domain.coverage_question import CoverageAnswer, answer
from ledger.domain.person import ENDED, Enrollment, InsuredPerson, person_id
from ledger.domain.policy import DEFAULT_POLICY, RegionPolicy, load_policy
from ledger.domain.targets import DistrictTarget
from projections.fraud import FraudRules
from projections.views import LedgerViews

Loader = Callable[[UUID, int], Any]
"""Reads an aggregate from the event store at a version: ``load(aggregate_id, version)``."""

_encode = msgspec.json.Encoder().encode
_NOT_DETAIL = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic", "source", "name"})
"""Event fields the audit row shows in columns of its own, or not at all (the name)."""

PERSON_COLUMNS_EVENTS = frozenset({"Registered", "RegistrationUpdated", "DeathRegistered"})


@runtime_checkable
class _ReceiptEvent(Protocol):
    """A receipt's event (``CashReceipt``'s one event, ``Issued``, made by the library from its
    ``__init__``, so not a class the type checker sees): it names the receipt."""

    receipt_no: str


class _LRU:
    """Persons by id, the least recently used dropped beyond ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: dict[UUID, Any] = {}

    def get(self, key: UUID) -> Any:
        value = self.items.pop(key, None)
        if value is not None:
            self.items[key] = value
        return value

    def put(self, key: UUID, value: Any) -> None:
        self.items.pop(key, None)
        self.items[key] = value
        if len(self.items) > self.size:
            del self.items[next(iter(self.items))]


class LedgerProjection(Projection[LedgerViews]):
    """Coverage, waiting periods, audit trail, fraud flags, targets and cash, from LEDGER."""

    name = "LedgerViews"
    policy: ClassVar[RegionPolicy | None] = None
    load: ClassVar[Loader | None] = None
    """Read through the class (``type(self).load``): a function, not a method of the projection."""
    until: ClassVar[datetime | None] = None
    publish: ClassVar[bool] = False
    cache_size: ClassVar[int] = 200_000

    @classmethod
    def configured(
        cls,
        *,
        policy: RegionPolicy,
        load: Loader,
        until: datetime | None = None,
        publish: bool = False,
        cache_size: int = 200_000,
    ) -> type[LedgerProjection]:
        """This projection with its settings (the runner constructs it from the class)."""
        settings = {"policy": policy, "load": staticmethod(load), "until": until, "publish": publish, "cache_size": cache_size}
        return type(cls.__name__, (cls,), {"name": cls.name, **settings})

    def __init__(self, view: LedgerViews) -> None:
        super().__init__(view)
        self.rules = self.policy or load_policy(DEFAULT_POLICY)
        self.persons = _LRU(self.cache_size)
        self.collectors: dict[UUID, CashCollector] = {}
        self.targets: dict[UUID, DistrictTarget] = {}
        self.latest_day: date | None = None
        self.position = 0
        """The last ledger event applied (in memory; the views commit it a little later)."""
        self.lock = threading.Lock()
        """Held while an event is folded into a person: readers (coverage.query) see whole events."""
        self.fraud = FraudRules(self.rules, view)
        load = type(self).load
        if not view.fresh and load is not None:
            # Collectors still holding cash, as of the views' position: time passing (later
            # events' effective days) must find them overdue even if they never collect again.
            for collector, version in view.db.query("SELECT collector, version FROM collectors WHERE balance_fen > 0"):
                self.collectors[collector_id(collector)] = load(collector_id(collector), version)

    # ---- dispatch ---------------------------------------------------------------------------

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Events the views do not show (none yet) are tracked all the same."""
        self.view.insert_tracking(tracking)

    @process_event.register
    def _person_event(self, domain_event: InsuredPerson.Event, tracking: Tracking) -> None:
        if not self._skipped(domain_event, tracking):
            with self.lock:
                self._on_person(domain_event, tracking.notification_id)
                self.position = tracking.notification_id
        self.view.insert_tracking(tracking)

    @process_event.register
    def _collector_event(self, domain_event: CashCollector.Event, tracking: Tracking) -> None:
        if not self._skipped(domain_event, tracking):
            self._on_collector(domain_event, tracking.notification_id)
        self.position = tracking.notification_id
        self.view.insert_tracking(tracking)

    @process_event.register
    def _receipt_event(self, domain_event: CashReceipt.Event, tracking: Tracking) -> None:
        if not self._skipped(domain_event, tracking):
            if not isinstance(domain_event, _ReceiptEvent):
                raise TypeError(f"{type(domain_event).__name__}: a receipt event without a receipt_no")
            self._audit(f"receipt:{domain_event.receipt_no}", domain_event, tracking.notification_id)
        self.position = tracking.notification_id
        self.view.insert_tracking(tracking)

    @process_event.register
    def _target_event(self, domain_event: DistrictTarget.Event, tracking: Tracking) -> None:
        if not self._skipped(domain_event, tracking):
            seq = tracking.notification_id
            district = getattr(domain_event, "district", None)
            target = self._fold_target(domain_event)
            self.view.stage("targets", (target.district, target.coverage_year, target.target_count))
            self._audit(f"target:{district or target.district}:{target.coverage_year}", domain_event, seq)
        self.position = tracking.notification_id
        self.view.insert_tracking(tracking)

    def answer(self, person_key: str, day: date) -> tuple[CoverageAnswer, int] | None:
        """The domain's coverage answer for a person held in memory, with the position it
        reflects; None when the person is not held (ask the event store)."""
        with self.lock:
            person = self.persons.items.get(person_id(person_key))
            if person is None:
                return None
            return answer(person, person_key, day), self.position

    def _skipped(self, domain_event: Any, tracking: Tracking) -> bool:
        """With ``until`` (replay for auditors): events recorded later are not in the views."""
        return self.until is not None and domain_event.timestamp > self.until

    # ---- persons ----------------------------------------------------------------------------

    def _on_person(self, event: Any, seq: int) -> None:
        before = self._person_before(event)
        died_before = before.date_of_death if before is not None else None
        phone_before = before.phone if before is not None else None
        shown_before = coverage_value(before, 0) if self.publish else None  # ``mutate`` changes ``before``
        person: InsuredPerson = event.mutate(before)
        self.persons.put(event.originator_id, person)
        kind = type(event).__name__
        if kind in PERSON_COLUMNS_EVENTS:
            self._stage_person(person, event, seq)
        year = getattr(event, "coverage_year", None)
        if year is not None and year in person.enrollments:
            self._stage_coverage(person, person.enrollments[year], seq)
        if self.publish:
            self._stage_change(person, shown_before, event, seq)
        self._audit(person.person_key, event, seq)
        day = event.source.effective_on
        self.fraud.on_person_event(event, person, seq, died_before, day, phone_before)
        if self.latest_day is None or day > self.latest_day:
            self.latest_day = day
            self.fraud.on_day(day, self.collectors.values(), seq, event.timestamp)

    def _person_before(self, event: Any) -> InsuredPerson | None:
        return self._before(event, self.persons.get(event.originator_id))

    def _before(self, event: Any, cached: Any) -> Any:
        """The aggregate as it was just before ``event``: the cached one if it is at that version,
        else read from the event store at that version (None before a first event)."""
        version = event.originator_version - 1
        if version == 0:
            return None
        if cached is not None and cached.version == version:
            return cached
        load = type(self).load
        if load is None:
            raise LookupError(f"{event.originator_id} v{version} is not cached and no loader is set")
        return load(event.originator_id, version)

    def _stage_person(self, person: InsuredPerson, event: Any, seq: int) -> None:
        self.view.stage(
            "people",
            (
                person.person_key,
                person.district,
                person.birth_date.isoformat(),
                person.sex,
                person.phone,
                person.household_id,
                _iso(person.date_of_death),
                person.created_on.isoformat(),
                seq,
            ),
        )

    def _stage_coverage(self, person: InsuredPerson, e: Enrollment, seq: int) -> None:
        terms = e.terms
        self.view.stage(
            "coverage",
            (
                person.person_key, e.coverage_year, e.district, e.category, e.channel, e.status,
                e.requested_on.isoformat(),
                _iso(terms.coverage_start if terms else None),
                _iso(terms.coverage_end if terms else None),
                _iso(terms.benefit_start if terms else None),
                terms.waiting_months if terms else None,
                int(bool(terms and terms.retroactive)),
                terms.rule if terms else None,
                e.subsidy_category, e.contribution_fen, e.subsidy_fen, e.due_fen, e.paid_fen, e.refund_fen,
                _iso(e.ended_on), e.ended_reason, e.policy_version, seq,
            ),
        )

    def _stage_change(self, person: InsuredPerson, shown_before: CoverageValue | None, event: Any, seq: int) -> None:
        """Stages the person's KV value and coverage.changed message if ``event`` changed what
        they show (see the module docstring); nothing otherwise."""
        value = coverage_value(person, seq)
        if value is None or (shown_before is not None and msgspec.structs.replace(value, ledger_seq=0) == shown_before):
            return
        year = getattr(event, "coverage_year", None)
        message = ""
        district = person.district
        if year is not None and year in person.enrollments:
            enrollment = person.enrollments[year]
            was = shown_before.coverage.get(str(year)) if shown_before is not None else None
            if was != value.coverage[str(year)]:
                district = enrollment.district or person.district
                message = _encode(change_message(person, enrollment, was, event, seq, district)).decode()
        self.view.stage("outbox", (seq, person.person_key, district, _encode(value).decode(), message))

    # ---- cash and targets -------------------------------------------------------------------

    def _on_collector(self, event: Any, seq: int) -> None:
        collector: CashCollector = event.mutate(self._before(event, self.collectors.get(event.originator_id)))
        self.collectors[event.originator_id] = collector
        oldest = collector.oldest_unremitted()
        self.view.stage(
            "collectors",
            (
                collector.collector, collector.received_fen, collector.remitted_fen, collector.balance_fen,
                oldest.received_at.isoformat() if oldest else None, event.source.effective_at.isoformat(),
                collector.version,
            ),
        )
        self._audit(f"collector:{collector.collector}", event, seq)
        self.fraud.on_collector_event(event, collector, seq)

    def _fold_target(self, event: Any) -> DistrictTarget:
        target: DistrictTarget = event.mutate(self._before(event, self.targets.get(event.originator_id)))
        self.targets[event.originator_id] = target
        return target

    # ---- audit ------------------------------------------------------------------------------

    def _audit(self, subject_key: str, event: Any, seq: int) -> None:
        source = getattr(event, "source", None)
        detail = {k: v for k, v in event.__dict__.items() if k not in _NOT_DETAIL}
        self.view.stage(
            "audit",
            (
                seq,
                subject_key,
                type(event).__name__,
                getattr(event, "coverage_year", None),
                source.effective_at.isoformat() if source else None,
                event.timestamp.isoformat(),
                source.system if source else None,
                source.channel if source else None,
                source.operator_id if source else None,
                source.org_id if source else None,
                source.msg_id if source else None,
                source.policy_version if source else None,
                _encode(detail).decode(),
                getattr(source, "account", None),
            ),
        )


def coverage_year_of(e: Enrollment) -> CoverageYear:
    terms = e.terms
    return CoverageYear(
        status=e.status,
        coverage_start=terms.coverage_start if terms else None,
        coverage_end=terms.coverage_end if terms else None,
        benefit_start=terms.benefit_start if terms else None,
        waiting_months=terms.waiting_months if terms else None,
        subsidy_category=e.subsidy_category,
        ended_on=e.ended_on,
        ended_reason=e.ended_reason,
    )


def coverage_value(person: InsuredPerson | None, seq: int) -> CoverageValue | None:
    """The KV bucket ``coverage`` value of a person: their coverage per coverage year (None for a
    person without an enrollment: the bucket has no key for them)."""
    if person is None or not person.enrollments:
        return None
    return CoverageValue(
        person_key=person.person_key,
        district=person.district,
        date_of_death=person.date_of_death,
        coverage={str(year): coverage_year_of(e) for year, e in sorted(person.enrollments.items())},
        ledger_seq=seq,
    )


def change_message(
    person: InsuredPerson, enrollment: Enrollment, was: CoverageYear | None, event: Any, seq: int, district: str | None
) -> CoverageChanged:
    """The coverage.changed message of ``event``: the coverage reply for the day it takes effect."""
    day = effective_date(enrollment, was, event)
    reply = answer(person, person.person_key, day)
    return CoverageChanged(
        person_key=person.person_key,
        district=district,
        coverage_year=reply.coverage_year,
        effective_date=day,
        covered=reply.covered,
        in_waiting_period=reply.in_waiting_period,
        coverage_start=reply.coverage_start,
        coverage_end=reply.coverage_end,
        benefit_start=reply.benefit_start,
        status=reply.status,
        subsidy_category=reply.subsidy_category,
        ended_reason=reply.ended_reason,
        ledger_seq=seq,
    )


def effective_date(enrollment: Enrollment, was: CoverageYear | None, event: Any) -> date:
    """The first day a change of ``enrollment`` (``was`` before it) applies to, within its
    coverage period (``CoverageChanged.effective_date``)."""
    terms = enrollment.terms
    start, end = (terms.coverage_start, terms.coverage_end) if terms else _year_of(enrollment)
    if enrollment.status == ENDED and enrollment.ended_on is not None:
        last = enrollment.ended_on  # covered up to and including the date of death
        if was is not None and was.status == ENDED and was.ended_on is not None:
            last = min(last, was.ended_on)  # a corrected date of death: the answers change from the earlier
        day = last + timedelta(days=1)
    elif enrollment.status == ENDED:
        day = start  # cancelled: void from the start
    else:
        day = event.source.effective_on
    return min(max(day, start), end)


def _year_of(enrollment: Enrollment) -> tuple[date, date]:
    return date(enrollment.coverage_year, 1, 1), date(enrollment.coverage_year, 12, 31)


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None

