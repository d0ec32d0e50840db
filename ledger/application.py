"""The ledger application: one method per upstream fact of ``contract.md``.

Each method decides by the policy and the message's own times, then either records events (one
``save()``, atomic across every aggregate it touches) or raises a ``Refusal`` with exactly one
reason from the contract. The same ``msg_id`` twice changes nothing and is not an error.

The store is whatever ``PERSISTENCE_MODULE`` selects: the library's in-memory store by default,
``ledger.jetstream`` in production.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, JSONTranscoder

from ledger.domain.cash import CashCollector, CashReceipt, collector_id, receipt_id
from ledger.domain.coverage_question import CoverageAnswer, answer, answer_as_of
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.person import InsuredPerson, person_id
from ledger.domain.policy import DEFAULT_POLICY, RegionPolicy, load_policy
from ledger.domain.refusals import DuplicateReceipt, Malformed, MsgIdConflict, NoEnrollment, Refusal
from ledger.domain.source import Source
from ledger.domain.targets import DistrictTarget, target_id
from ledger.transcodings import LEDGER_TRANSCODINGS

PERSON_KEY_SECRET = "LEDGER_PERSON_KEY_SECRET"
CASH_CHANNEL = "community_cash"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who sent a fact: the upstream system and, where known, channel, operator, organisation."""

    system: str
    channel: str | None = None
    operator_id: str | None = None
    org_id: str | None = None
    upstream_seq: int | None = None
    """Where the message sits in UPSTREAM (recorded in every event it causes)."""
    digest: str | None = None
    """A digest of the message's content, to tell a harmless repeat of its ``msg_id`` from a
    conflicting one."""


class DecisionRecord(Protocol):
    """What a batch records beside its events at each save (the ingestion's journal)."""

    def take(self) -> Any:
        """What to record with this save (None: nothing)."""

    def settled(self) -> None:
        """The save that took it went through."""

    @property
    def fenced(self) -> bool:
        """Whether every save must carry what ``take`` gives (events never go alone)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a fact did: how many events it recorded, or that it was a duplicate."""

    recorded: int
    duplicate: bool = False


DUPLICATE = Outcome(0, duplicate=True)


class Ledger(Application[UUID]):
    """The enrollment ledger (参保登记台账) of one region."""

    name = "Ledger"

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        policy: RegionPolicy | None = None,
        keyer: PersonKeyer | None = None,
    ) -> None:
        super().__init__(env)
        self.policy = policy or load_policy(DEFAULT_POLICY)
        self.keyer = keyer or self._keyer_from_environment()
        self._unit: _Unit | None = None
        self._loader: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._loader is not None:
            self._loader.shutdown()
        super().close()

    def _keyer_from_environment(self) -> PersonKeyer:
        secret = self.env.get(PERSON_KEY_SECRET) or os.environ.get(PERSON_KEY_SECRET)
        if not secret:
            raise OSError(
                f"{PERSON_KEY_SECRET} is not set: the person key is a keyed hash of the ID number "
                "and its secret comes from the environment, never from the repository"
            )
        return PersonKeyer(secret.encode())

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        for transcoding in LEDGER_TRANSCODINGS:
            transcoder.register(transcoding)

    # ---- upstream facts ---------------------------------------------------------------------

    def register_person(
        self,
        *,
        msg_id: str,
        occurred_at: datetime,
        id_number: str,
        name: str,
        district: str,
        phone: str | None = None,
        household_id: str | None = None,
        residence_permit: bool = False,
        hukou_district: str | None = None,
        actor: Actor,
    ) -> Outcome:
        """``upstream.person.registered``: a resident registered (or re-registered)."""
        resident = self._resident(id_number, occurred_at)
        key = self.keyer.key_of(resident)
        person = self._person(key)
        source = _source(msg_id, occurred_at, actor)
        if person is not None and _repeat(person.seen, source):
            return DUPLICATE
        self.policy.district_name(district)
        details = dict(
            district=district,
            name=name,
            phone=phone,
            household_id=household_id,
            residence_permit=residence_permit,
            hukou_district=hukou_district,
        )
        if person is None:
            person = InsuredPerson(
                person_key=key, birth_date=resident.birth_date, sex=resident.sex, source=source, **details
            )
        else:
            person.update_registration(source=source, **details)
        return self._save(person)

    def request_enrollment(
        self,
        *,
        msg_id: str,
        occurred_at: datetime,
        id_number: str,
        coverage_year: int,
        category: str,
        channel: str,
        district: str,
        migrant_worker: bool = False,
        birth_date: date | None = None,
        actor: Actor,
    ) -> Outcome:
        """``upstream.enrollment.requested``: an enrollment for a coverage year (参保登记)."""
        resident = self._resident(id_number, occurred_at)
        if birth_date is not None and birth_date != resident.birth_date:
            raise Malformed(f"birth_date {birth_date} differs from the ID number's birth date")
        person, source = self._person_for(msg_id, occurred_at, resident, actor, district=district)
        if person is None:
            return DUPLICATE
        person.request_enrollment(
            self.policy,
            coverage_year=coverage_year,
            category=category,
            channel=channel,
            district=district,
            migrant_worker=migrant_worker,
            source=source,
        )
        return self._save(person)

    def receive_payment(
        self,
        *,
        msg_id: str,
        occurred_at: datetime,
        id_number: str,
        coverage_year: int,
        amount_fen: int,
        channel: str,
        paid_at: datetime,
        receipt_no: str | None = None,
        collector_id: str | None = None,
        payer_account: str | None = None,
        actor: Actor,
    ) -> Outcome:
        """``upstream.payment.received``: the individual share paid (cash with a receipt)."""
        resident = self._resident(id_number, occurred_at)
        key = self.keyer.key_of(resident)
        person = self._person(key)
        if person is None:
            raise NoEnrollment(f"no enrollment for {coverage_year}: the person is not in the ledger")
        source = _source(msg_id, paid_at, actor, occurred_at)
        if _repeat(person.seen, source):
            return DUPLICATE
        if amount_fen < 0:
            raise Malformed("a negative amount")
        cash = channel == CASH_CHANNEL
        if cash:
            if not receipt_no or not collector_id:
                raise Malformed("a cash payment needs receipt_no and collector_id (专用票据)")
            if self._exists(receipt_id(receipt_no)):
                raise DuplicateReceipt(f"receipt {receipt_no} was already used")
        person.receive_payment(
            self.policy,
            coverage_year=coverage_year,
            amount_fen=amount_fen,
            channel=channel,
            receipt_no=receipt_no,
            payer_account=payer_account,
            source=source,
        )
        if not cash:
            return self._save(person)
        assert receipt_no and collector_id
        receipt = CashReceipt(
            receipt_no=receipt_no,
            collector_id=collector_id,
            person_key=key,
            coverage_year=coverage_year,
            amount_fen=amount_fen,
            source=source,
        )
        collector = self._collector(collector_id, source)
        collector.receive_cash(receipt_no=receipt_no, amount_fen=amount_fen, source=source)
        try:
            return self._save(person, receipt, collector)
        except IntegrityError:
            if self._exists(receipt_id(receipt_no)):  # another payment took the number meanwhile
                raise DuplicateReceipt(f"receipt {receipt_no} was already used") from None
            raise

    def list_subsidy(
        self,
        *,
        msg_id: str,
        occurred_at: datetime,
        id_number: str,
        coverage_year: int,
        subsidy_category: str,
        department: str,
        roster: str,
        effective_from: date | None = None,
        actor: Actor,
    ) -> Outcome:
        """``upstream.subsidy.listed``: a department's roster entry (资助参保)."""
        # Rosters carry no district, and an ID number's division code is where it was first
        # issued, not where the person lives: a new person's district stays unknown.
        person, source = self._person_for(msg_id, occurred_at, id_number, actor)
        if person is None:
            return DUPLICATE
        person.list_subsidy(
            self.policy,
            coverage_year=coverage_year,
            subsidy_category=subsidy_category,
            department=department,
            roster=roster,
            effective_from=effective_from,
            source=source,
        )
        return self._save(person)

    def remit_cash(
        self,
        *,
        msg_id: str,
        occurred_at: datetime,
        collector_id: str,
        amount_fen: int,
        voucher_no: str,
        remitted_at: datetime,
        receipt_nos: tuple[str, ...] = (),
        actor: Actor,
    ) -> Outcome:
        """``upstream.cash.remitted``: a committee's cash handed to the tax office."""
        source = _source(msg_id, remitted_at, actor, occurred_at)
        collector = self._collector(collector_id, source)
        if _repeat(collector.seen, source):
            return DUPLICATE
        collector.remit(voucher_no=voucher_no, amount_fen=amount_fen, receipt_nos=tuple(receipt_nos), source=source)
        return self._save(collector)

    def register_death(self, *, msg_id: str, occurred_at: datetime, id_number: str, date_of_death: date, actor: Actor) -> Outcome:
        """``upstream.death.registered``: coverage ends on the date of death."""
        person, source = self._person_for(msg_id, occurred_at, id_number, actor)
        if person is None:
            return DUPLICATE
        person.register_death(self.policy, date_of_death=date_of_death, source=source)
        return self._save(person)

    def change_employee_insurance(
        self,
        *,
        msg_id: str,
        occurred_at: datetime,
        id_number: str,
        insured_from: date,
        continuous_months: int,
        insured_until: date | None = None,
        back_paid_months: int = 0,
        actor: Actor,
    ) -> Outcome:
        """``upstream.employee_insurance.changed``: a spell of employee insurance (职工医保)."""
        if continuous_months < 0 or back_paid_months < 0 or back_paid_months > continuous_months:
            raise Malformed("months must be ≥ 0, back-paid months at most the continuous months")
        person, source = self._person_for(msg_id, occurred_at, id_number, actor)
        if person is None:
            return DUPLICATE
        person.change_employee_insurance(
            self.policy,
            insured_from=insured_from,
            insured_until=insured_until,
            continuous_months=continuous_months,
            back_paid_months=back_paid_months,
            source=source,
        )
        return self._save(person)

    def register_discharge(
        self,
        *,
        msg_id: str,
        occurred_at: datetime,
        id_number: str,
        discharged_on: date,
        spouse_id_number: str | None = None,
        actor: Actor,
    ) -> Outcome:
        """``upstream.discharge.registered``: a soldier discharged this year, and the non-working
        spouse who followed (随军未就业配偶); both in one save."""
        spouse_resident = self._resident(spouse_id_number, occurred_at) if spouse_id_number else None
        soldier_resident = self._resident(id_number, occurred_at)
        if spouse_resident is not None and self.keyer.key_of(spouse_resident) == self.keyer.key_of(soldier_resident):
            raise Malformed("spouse_id_number is the soldier's own ID number")
        soldier, source = self._person_for(msg_id, occurred_at, soldier_resident, actor)
        if soldier is None:
            return DUPLICATE
        soldier.register_discharge(discharged_on=discharged_on, as_spouse=False, source=source)
        touched = [soldier]
        if spouse_resident is not None:
            spouse_key = self.keyer.key_of(spouse_resident)
            spouse = self._person(spouse_key) or self._new_person(spouse_key, spouse_resident, None, source)
            spouse.register_discharge(discharged_on=discharged_on, as_spouse=True, source=source)
            touched.append(spouse)
        return self._save(*touched)

    def set_target(
        self, *, msg_id: str, occurred_at: datetime, district: str, coverage_year: int, target_count: int, actor: Actor
    ) -> Outcome:
        """``upstream.target.set``: a district's enrollment target for a coverage year (参保任务)."""
        self.policy.district_name(district)
        self.policy.for_coverage_year(coverage_year)
        if target_count < 0:
            raise Malformed("a negative target")
        source = _source(msg_id, occurred_at, actor)
        target: DistrictTarget | None = self._load(target_id(district, coverage_year))
        if target is None:
            target = DistrictTarget(district=district, coverage_year=coverage_year, target_count=target_count, source=source)
        elif _repeat(target.seen, source):
            return DUPLICATE
        else:
            target.change(target_count=target_count, source=source)
        return self._save(target)

    # ---- questions ----------------------------------------------------------------------------

    def coverage(self, id_number: str, on: date, as_of: datetime | None = None) -> CoverageAnswer:
        """Is this person covered on ``on``? With ``as_of``: as the ledger knew it then."""
        resident = ResidentId.parse(id_number)
        key = self.keyer.key_of(resident)
        if as_of is not None:
            return answer_as_of(self.repository.event_store.get(person_id(key)), key, on, as_of)
        return answer(self._person(key), key, on)

    def person(self, id_number: str) -> InsuredPerson | None:
        return self._person(self.keyer.key_of(ResidentId.parse(id_number)))

    # ---- helpers ------------------------------------------------------------------------------

    def _resident(self, id_number: str, occurred_at: datetime) -> ResidentId:
        return ResidentId.parse(id_number, today=occurred_at.date())

    def _person(self, key: str) -> InsuredPerson | None:
        return self._load(person_id(key))

    def _exists(self, aggregate_id: UUID) -> bool:
        return self._load(aggregate_id) is not None

    def _load(self, aggregate_id: UUID) -> Any:
        """The aggregate as this fact should see it: changed earlier in the current batch, or
        from the store (None when it does not exist)."""
        unit = self._unit
        if unit is not None:
            if aggregate_id in unit.aggregates:
                return unit.aggregates[aggregate_id]
            if aggregate_id in unit.absent:
                return None
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def _new_person(self, key: str, resident: ResidentId, district: str | None, source: Source) -> InsuredPerson:
        """A person first known from a fact other than registration."""
        return InsuredPerson(
            person_key=key,
            birth_date=resident.birth_date,
            sex=resident.sex,
            district=district,
            name=None,
            phone=None,
            household_id=None,
            residence_permit=False,
            hukou_district=None,
            source=source,
        )

    def _person_for(
        self,
        msg_id: str,
        occurred_at: datetime,
        resident: ResidentId | str,
        actor: Actor,
        *,
        district: str | None = None,
    ) -> tuple[InsuredPerson | None, Source]:
        """The person a fact concerns — known, or new (in ``district`` when the fact names one) —
        and the fact's source; no person when this fact was applied before (a duplicate).
        ``resident`` is the parsed ID number, or its text (parsed against the message date)."""
        if isinstance(resident, str):
            resident = self._resident(resident, occurred_at)
        key = self.keyer.key_of(resident)
        source = _source(msg_id, occurred_at, actor)
        person = self._person(key)
        if person is None:
            if district is not None:
                self.policy.district_name(district)
            return self._new_person(key, resident, district, source), source
        return (None if _repeat(person.seen, source) else person), source

    def _collector(self, collector: str, source: Source) -> CashCollector:
        return self._load(collector_id(collector)) or CashCollector(collector=collector, source=source)

    def _save(self, *aggregates: Any) -> Outcome:
        unit = self._unit
        if unit is not None:
            return unit.add(aggregates)
        try:
            return Outcome(len(self.save(*aggregates)))
        except BaseException:
            # The aggregates may be the cached objects themselves, changed by this fact: a cache
            # that kept them would make the retried fact look like a duplicate.
            self._forget(a.id for a in aggregates)
            raise

    # ---- batches ------------------------------------------------------------------------------

    @contextmanager
    def batch(self, expected_ids: Iterable[str] = (), record: DecisionRecord | None = None) -> Iterator[None]:
        """Apply many facts, then save them together (one atomic append per ``FLUSH_EVENTS``).

        Each fact sees what earlier facts of the batch did. A refused fact changes nothing (its
        commands decide before they emit). If saving fails, nothing of the unsaved part is kept
        (cached aggregates it touched are dropped) and the exception propagates: the caller
        applies the facts again one by one, and those already saved come back as duplicates.
        ``expected_ids`` (ID numbers the facts concern) are looked up together first.
        ``record`` gives, at each save, what the store records atomically with the events (the
        ingestion's decisions and position: ``decisions`` for ``insert_events``), and hears when
        that save went through.
        """
        if self._unit is not None:
            raise RuntimeError("batches do not nest")
        self._unit = unit = _Unit(record)
        try:
            self._preload(unit, expected_ids)
            yield
            self._flush(unit)
        except BaseException:
            self._forget(unit.aggregates)
            raise
        finally:
            self._unit = None

    def flush_if_full(self, extra_messages: int = 0) -> None:
        """Save the batch so far when it nears the store's atomic limit (between two facts);
        ``extra_messages``: how many more messages ``record`` would add."""
        unit = self._unit
        if unit is not None and unit.pending_events + extra_messages >= FLUSH_EVENTS:
            self._flush(unit)

    def _flush(self, unit: _Unit) -> None:
        record = unit.record
        decisions = record.take() if record is not None else None
        if decisions is not None:
            self.save(*unit.aggregates.values(), decisions=decisions)
        elif record is not None and record.fenced and unit.pending_events:
            # Events that no decision names would be recorded outside the fence: never.
            raise RuntimeError(f"{unit.pending_events} events to save without the decisions that caused them")
        elif unit.aggregates:
            self.save(*unit.aggregates.values())
        if record is not None:
            record.settled()
        unit.saved()

    def forget_cache(self) -> None:
        """Drop every aggregate held in memory: the next reads come from the store (after a
        failed save, or when this process becomes the writer after another)."""
        cache = self.repository.cache
        if cache is None:
            return
        if hasattr(cache, "clear"):
            cache.clear()
        else:
            self.repository.cache = type(cache)()

    def _forget(self, aggregate_ids: Iterable[UUID]) -> None:
        """Drop aggregates from the repository's cache (they may hold unsaved changes)."""
        cache = self.repository.cache
        if cache is not None:
            for aggregate_id in aggregate_ids:
                try:
                    cache.get(aggregate_id, evict=True)
                except KeyError:
                    pass

    def _preload(self, unit: _Unit, id_numbers: Iterable[str]) -> None:
        ids: dict[UUID, None] = {}
        for text in id_numbers:
            try:
                ids[person_id(self.keyer.key_of(ResidentId.parse(text)))] = None
            except Refusal:
                continue
        cache = self.repository.cache
        if cache is not None:
            for aggregate_id in list(ids):
                try:
                    cache.get(aggregate_id)
                except KeyError:
                    continue
                del ids[aggregate_id]  # in memory already: loading it is cheap
        last_versions = getattr(self.recorder, "last_versions", None)
        if ids and last_versions is not None:
            existing = last_versions(list(ids))  # one round trip tells which persons are new
            for aggregate_id in [i for i in ids if i not in existing]:
                unit.absent.add(aggregate_id)
                del ids[aggregate_id]
        if not ids:
            return

        def load(aggregate_id: UUID) -> tuple[UUID, Any]:
            try:
                return aggregate_id, self.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return aggregate_id, None

        if self._loader is None:
            self._loader = ThreadPoolExecutor(PRELOAD_THREADS, thread_name_prefix="ledger-preload")
        for aggregate_id, aggregate in self._loader.map(load, ids):
            if aggregate is None:
                unit.absent.add(aggregate_id)
            else:
                unit.aggregates[aggregate_id] = aggregate


FLUSH_EVENTS = 800
"""A batch is saved when its pending events reach this (the store's atomic limit is 1,000)."""
PRELOAD_THREADS = 16


class _Unit:
    """The aggregates a batch has loaded or changed, and the ids known not to exist yet."""

    def __init__(self, record: DecisionRecord | None = None) -> None:
        self.record = record
        self.aggregates: dict[UUID, Any] = {}
        self.absent: set[UUID] = set()
        self.pending: dict[UUID, int] = {}
        self.pending_events = 0

    def add(self, aggregates: tuple[Any, ...]) -> Outcome:
        added = 0
        for aggregate in aggregates:
            self.aggregates[aggregate.id] = aggregate
            self.absent.discard(aggregate.id)
            count = len(aggregate.pending_events)
            added += count - self.pending.get(aggregate.id, 0)
            self.pending[aggregate.id] = count
        self.pending_events += added
        return Outcome(added)

    def saved(self) -> None:
        self.pending.clear()
        self.pending_events = 0


def _source(msg_id: str, effective_at: datetime, actor: Actor, occurred_at: datetime | None = None) -> Source:
    for moment in (effective_at, occurred_at):
        if moment is not None and moment.tzinfo is None:
            raise Malformed("times need an offset (e.g. +08:00)")
    return Source(
        msg_id=msg_id,
        effective_at=effective_at,
        system=actor.system,
        channel=actor.channel,
        operator_id=actor.operator_id,
        org_id=actor.org_id,
        reported_at=occurred_at if occurred_at is not None and occurred_at != effective_at else None,
        upstream_seq=actor.upstream_seq,
        digest=actor.digest,
    )


def _repeat(seen: dict[str, str | None], source: Source) -> bool:
    """Whether ``source``'s message was applied before (a harmless duplicate); raises
    ``MsgIdConflict`` when its sender used the same ``msg_id`` for a different message."""
    if source.fact_key not in seen:
        return False
    first = seen[source.fact_key]
    if first is not None and source.digest is not None and first != source.digest:
        raise MsgIdConflict(f"msg_id {source.msg_id} was used before for a different message; the first stands")
    return True
