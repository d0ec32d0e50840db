"""The ledger application: one method per upstream fact of ``contract.md``.

Each method takes the fact's command (``ledger.commands``) and the ``Actor`` that sent it
(``handle`` picks the method by the command's type). It decides by the policy and the message's
own times, then either records events (one ``save()``, atomic across every aggregate it touches)
or raises a ``Refusal`` with exactly one reason from the contract. The same ``msg_id`` twice
changes nothing and is not an error.

The store is whatever ``PERSISTENCE_MODULE`` selects: the library's in-memory store by default,
``ledger.jetstream`` in production. Batches of facts saved together (the ingestion's unit of
work) are ``ledger.unit_of_work``'s; ``batch``, ``flush_if_full`` and ``forget_cache`` reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, JSONTranscoder

from ledger import senders
from ledger.commands import (
    ChangeEmployeeInsurance,
    Command,
    ListSubsidy,
    ReceivePayment,
    RegisterDeath,
    RegisterDischarge,
    RegisterPerson,
    RemitCash,
    RequestEnrollment,
    SetTarget,
)
from ledger.domain.cash import CashCollector, CashReceipt, collector_id, receipt_id
from ledger.domain.coverage_question import CoverageAnswer, answer, answer_as_of
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.person import InsuredPerson, person_id
from ledger.domain.policy import DEFAULT_POLICY, RegionPolicy, load_policy
from ledger.domain.refusals import DuplicateReceipt, Malformed, MsgIdConflict, NoEnrollment, Refusal
from ledger.domain.source import Source
from ledger.domain.targets import DistrictTarget, target_id
from ledger.senders import CASH_CHANNEL
from ledger.transcodings import LEDGER_TRANSCODINGS
from ledger.unit_of_work import DecisionRecord, UnitOfWork

PERSON_KEY_SECRET = "LEDGER_PERSON_KEY_SECRET"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who sent a fact: the upstream system and, where known, channel, operator, organisation."""

    system: str
    channel: str | None = None
    operator_id: str | None = None
    org_id: str | None = None
    account: str | None = None
    """The sender's NATS account (``ledger.senders``), from its credentials; None when the server
    could not tell (unattributed)."""
    upstream_seq: int | None = None
    """Where the message sits in UPSTREAM (recorded in every event it causes)."""
    digest: str | None = None
    """A digest of the message's content, to tell a harmless repeat of its ``msg_id`` from a
    conflicting one."""


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
        self.work = UnitOfWork(self)

    def close(self) -> None:
        self.work.close()
        super().close()

    def _keyer_from_environment(self) -> PersonKeyer:
        secret = self.env.get(PERSON_KEY_SECRET)  # the library merges the process environment in
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

    def handle(self, command: Command, actor: Actor) -> Outcome:
        """Apply ``command`` (sent by ``actor``) with the method for its type."""
        method: Callable[[Any, Actor], Outcome] = getattr(self, HANDLERS[type(command)])
        senders.check(actor.account, command, actor.channel, actor.operator_id)
        return method(command, actor)

    def register_person(self, c: RegisterPerson, actor: Actor) -> Outcome:
        """``upstream.person.registered``: a resident registered (or re-registered)."""
        resident = self._resident(c.id_number, c.occurred_at)
        key = self.keyer.key_of(resident)
        person = self._person(key)
        source = _source(c.msg_id, c.occurred_at, actor)
        if person is not None and _repeat(person.seen, source):
            return DUPLICATE
        self.policy.district_name(c.district)
        details: dict[str, Any] = dict(
            district=c.district,
            name=c.name,
            phone=c.phone,
            household_id=c.household_id,
            residence_permit=c.residence_permit,
            hukou_district=c.hukou_district,
        )
        if person is None:
            person = InsuredPerson(
                person_key=key, birth_date=resident.birth_date, sex=resident.sex, source=source, **details
            )
        else:
            person.update_registration(source=source, **details)
        return self._save(person)

    def request_enrollment(self, c: RequestEnrollment, actor: Actor) -> Outcome:
        """``upstream.enrollment.requested``: an enrollment for a coverage year (参保登记)."""
        resident = self._resident(c.id_number, c.occurred_at)
        if c.birth_date is not None and c.birth_date != resident.birth_date:
            raise Malformed(f"birth_date {c.birth_date} differs from the ID number's birth date")
        person, source = self._person_for(c, resident, actor, district=c.district)
        if person is None:
            return DUPLICATE
        person.request_enrollment(
            self.policy,
            coverage_year=c.coverage_year,
            category=c.category,
            channel=c.channel,
            district=c.district,
            migrant_worker=c.migrant_worker,
            source=source,
        )
        return self._save(person)

    def receive_payment(self, c: ReceivePayment, actor: Actor) -> Outcome:
        """``upstream.payment.received``: the individual share paid (cash with a receipt)."""
        resident = self._resident(c.id_number, c.occurred_at)
        key = self.keyer.key_of(resident)
        person = self._person(key)
        if person is None:
            raise NoEnrollment(f"no enrollment for {c.coverage_year}: the person is not in the ledger")
        source = _source(c.msg_id, c.paid_at, actor, c.occurred_at)
        if _repeat(person.seen, source):
            return DUPLICATE
        if c.amount_fen < 0:
            raise Malformed("a negative amount")
        cash = c.channel == CASH_CHANNEL
        if cash:
            if not c.receipt_no or not c.collector_id:
                raise Malformed("a cash payment needs receipt_no and collector_id (专用票据)")
            if self._exists(receipt_id(c.receipt_no)):
                raise DuplicateReceipt(f"receipt {c.receipt_no} was already used")
        person.receive_payment(
            self.policy,
            coverage_year=c.coverage_year,
            amount_fen=c.amount_fen,
            channel=c.channel,
            receipt_no=c.receipt_no,
            payer_account=c.payer_account,
            source=source,
        )
        if not cash:
            return self._save(person)
        assert c.receipt_no and c.collector_id
        receipt = CashReceipt(
            receipt_no=c.receipt_no,
            collector_id=c.collector_id,
            person_key=key,
            coverage_year=c.coverage_year,
            amount_fen=c.amount_fen,
            source=source,
        )
        collector = self._collector(c.collector_id, source)
        collector.receive_cash(receipt_no=c.receipt_no, amount_fen=c.amount_fen, source=source)
        try:
            return self._save(person, receipt, collector)
        except IntegrityError:
            if self._exists(receipt_id(c.receipt_no)):  # another payment took the number meanwhile
                raise DuplicateReceipt(f"receipt {c.receipt_no} was already used") from None
            raise

    def list_subsidy(self, c: ListSubsidy, actor: Actor) -> Outcome:
        """``upstream.subsidy.listed``: a department's roster entry (资助参保)."""
        # Rosters carry no district, and an ID number's division code is where it was first
        # issued, not where the person lives: a new person's district stays unknown.
        person, source = self._person_for(c, c.id_number, actor)
        if person is None:
            return DUPLICATE
        person.list_subsidy(
            self.policy,
            coverage_year=c.coverage_year,
            subsidy_category=c.subsidy_category,
            department=c.department,
            roster=c.roster,
            effective_from=c.effective_from,
            source=source,
        )
        return self._save(person)

    def remit_cash(self, c: RemitCash, actor: Actor) -> Outcome:
        """``upstream.cash.remitted``: a committee's cash handed to the tax office."""
        source = _source(c.msg_id, c.remitted_at, actor, c.occurred_at)
        collector = self._collector(c.collector_id, source)
        if _repeat(collector.seen, source) or collector.already_remitted(c.voucher_no, c.amount_fen):
            return DUPLICATE
        collector.remit(voucher_no=c.voucher_no, amount_fen=c.amount_fen, receipt_nos=tuple(c.receipt_nos), source=source)
        return self._save(collector)

    def register_death(self, c: RegisterDeath, actor: Actor) -> Outcome:
        """``upstream.death.registered``: coverage ends on the date of death."""
        person, source = self._person_for(c, c.id_number, actor)
        if person is None:
            return DUPLICATE
        person.register_death(self.policy, date_of_death=c.date_of_death, source=source)
        return self._save(person)

    def change_employee_insurance(self, c: ChangeEmployeeInsurance, actor: Actor) -> Outcome:
        """``upstream.employee_insurance.changed``: a spell of employee insurance (职工医保)."""
        if c.continuous_months < 0 or c.back_paid_months < 0 or c.back_paid_months > c.continuous_months:
            raise Malformed("months must be ≥ 0, back-paid months at most the continuous months")
        person, source = self._person_for(c, c.id_number, actor)
        if person is None:
            return DUPLICATE
        person.change_employee_insurance(
            self.policy,
            insured_from=c.insured_from,
            insured_until=c.insured_until,
            continuous_months=c.continuous_months,
            back_paid_months=c.back_paid_months,
            source=source,
        )
        return self._save(person)

    def register_discharge(self, c: RegisterDischarge, actor: Actor) -> Outcome:
        """``upstream.discharge.registered``: a soldier discharged this year, and the non-working
        spouse who followed (随军未就业配偶); both in one save."""
        spouse_resident = self._resident(c.spouse_id_number, c.occurred_at) if c.spouse_id_number else None
        soldier_resident = self._resident(c.id_number, c.occurred_at)
        if spouse_resident is not None and self.keyer.key_of(spouse_resident) == self.keyer.key_of(soldier_resident):
            raise Malformed("spouse_id_number is the soldier's own ID number")
        soldier, source = self._person_for(c, soldier_resident, actor)
        if soldier is None:
            return DUPLICATE
        soldier.register_discharge(discharged_on=c.discharged_on, as_spouse=False, source=source)
        touched = [soldier]
        if spouse_resident is not None:
            spouse_key = self.keyer.key_of(spouse_resident)
            spouse = self._person(spouse_key) or self._new_person(spouse_key, spouse_resident, None, source)
            spouse.register_discharge(discharged_on=c.discharged_on, as_spouse=True, source=source)
            touched.append(spouse)
        return self._save(*touched)

    def set_target(self, c: SetTarget, actor: Actor) -> Outcome:
        """``upstream.target.set``: a district's enrollment target for a coverage year (参保任务)."""
        self.policy.district_name(c.district)
        self.policy.for_coverage_year(c.coverage_year)
        if c.target_count < 0:
            raise Malformed("a negative target")
        source = _source(c.msg_id, c.occurred_at, actor)
        target: DistrictTarget | None = self._load(target_id(c.district, c.coverage_year))
        if target is None:
            target = DistrictTarget(district=c.district, coverage_year=c.coverage_year, target_count=c.target_count, source=source)
        elif _repeat(target.seen, source):
            return DUPLICATE
        else:
            target.change(target_count=c.target_count, source=source)
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
        """The aggregate as this fact should see it (None when it does not exist)."""
        return self.work.load(aggregate_id)

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
        self, c: Command, resident: ResidentId | str, actor: Actor, *, district: str | None = None
    ) -> tuple[InsuredPerson | None, Source]:
        """The person a fact concerns — known, or new (in ``district`` when the fact names one) —
        and the fact's source; no person when this fact was applied before (a duplicate).
        ``resident`` is the parsed ID number, or its text (parsed against the message date)."""
        if isinstance(resident, str):
            resident = self._resident(resident, c.occurred_at)
        key = self.keyer.key_of(resident)
        source = _source(c.msg_id, c.occurred_at, actor)
        person = self._person(key)
        if person is None:
            if district is not None:
                self.policy.district_name(district)
            return self._new_person(key, resident, district, source), source
        return (None if _repeat(person.seen, source) else person), source

    def _collector(self, collector: str, source: Source) -> CashCollector:
        return self._load(collector_id(collector)) or CashCollector(collector=collector, source=source)

    def _save(self, *aggregates: Any) -> Outcome:
        return Outcome(self.work.save(aggregates))

    # ---- batches (the unit of work) -------------------------------------------------------------

    def batch(self, expected_ids: Iterable[str] = (), record: DecisionRecord | None = None) -> AbstractContextManager[None]:
        """Apply many facts, then save them together: ``UnitOfWork.batch``, with the persons
        of ``expected_ids`` (ID numbers the facts concern) looked up together first."""
        return self.work.batch(self._person_ids(expected_ids), record)

    def flush_if_full(self, extra_messages: int = 0) -> None:
        self.work.flush_if_full(extra_messages)

    def forget_cache(self) -> None:
        self.work.forget_cache()

    def _person_ids(self, id_numbers: Iterable[str]) -> Iterator[UUID]:
        for text in id_numbers:
            try:
                yield person_id(self.keyer.key_of(ResidentId.parse(text)))
            except Refusal:
                continue


HANDLERS: dict[type[Command], str] = {
    RegisterPerson: "register_person",
    RequestEnrollment: "request_enrollment",
    ReceivePayment: "receive_payment",
    ListSubsidy: "list_subsidy",
    RemitCash: "remit_cash",
    RegisterDeath: "register_death",
    ChangeEmployeeInsurance: "change_employee_insurance",
    RegisterDischarge: "register_discharge",
    SetTarget: "set_target",
}
"""The ``Ledger`` method of each command (by name: a subclass may override one)."""


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
        account=actor.account,
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
