"""One upstream message → one call of the ``Ledger`` application (no policy decisions here).

``apply`` maps each contract message to its application method, with the actor the subject
stands for (the upstream system, the channel, operator and organisation where the message says).
It returns what the ledger did, or raises the ledger's ``Refusal``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contract import messages as s
from ledger.application import Actor, Ledger, Outcome


def _person_registered(ledger: Ledger, m: s.PersonRegistered, actor: Callable[..., Actor]) -> Outcome:
    return ledger.register_person(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        id_number=m.id_number,
        name=m.name,
        district=m.district,
        phone=m.phone,
        household_id=m.household_id,
        residence_permit=m.residence_permit,
        hukou_district=m.hukou_district,
        actor=actor("household_registry"),
    )


def _enrollment_requested(ledger: Ledger, m: s.EnrollmentRequested, actor: Callable[..., Actor]) -> Outcome:
    return ledger.request_enrollment(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        id_number=m.id_number,
        coverage_year=m.coverage_year,
        category=m.category,
        channel=m.channel,
        district=m.district,
        migrant_worker=m.migrant_worker,
        birth_date=m.birth_date,
        actor=actor("enrollment", channel=m.channel, operator_id=m.operator_id, org_id=m.org_id),
    )


def _payment_received(ledger: Ledger, m: s.PaymentReceived, actor: Callable[..., Actor]) -> Outcome:
    return ledger.receive_payment(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        id_number=m.id_number,
        coverage_year=m.coverage_year,
        amount_fen=m.amount_fen,
        channel=m.channel,
        paid_at=m.paid_at,
        receipt_no=m.receipt_no,
        collector_id=m.collector_id,
        payer_account=m.payer_account,
        actor=actor("payment", channel=m.channel, operator_id=m.operator_id, org_id=m.collector_id),
    )


def _subsidy_listed(ledger: Ledger, m: s.SubsidyListed, actor: Callable[..., Actor]) -> Outcome:
    return ledger.list_subsidy(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        id_number=m.id_number,
        coverage_year=m.coverage_year,
        subsidy_category=m.subsidy_category,
        department=m.department,
        roster=m.roster,
        effective_from=m.effective_from,
        actor=actor("subsidy_roster", org_id=m.department),
    )


def _cash_remitted(ledger: Ledger, m: s.CashRemitted, actor: Callable[..., Actor]) -> Outcome:
    return ledger.remit_cash(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        collector_id=m.collector_id,
        amount_fen=m.amount_fen,
        voucher_no=m.voucher_no,
        remitted_at=m.remitted_at,
        receipt_nos=m.receipt_nos,
        actor=actor("cash_remittance", channel="community_cash", org_id=m.collector_id),
    )


def _death_registered(ledger: Ledger, m: s.DeathRegistered, actor: Callable[..., Actor]) -> Outcome:
    return ledger.register_death(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        id_number=m.id_number,
        date_of_death=m.date_of_death,
        actor=actor("death_registry"),
    )


def _employee_insurance_changed(ledger: Ledger, m: s.EmployeeInsuranceChanged, actor: Callable[..., Actor]) -> Outcome:
    return ledger.change_employee_insurance(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        id_number=m.id_number,
        insured_from=m.insured_from,
        continuous_months=m.continuous_months,
        insured_until=m.insured_until,
        back_paid_months=m.back_paid_months,
        actor=actor("employee_insurance"),
    )


def _discharge_registered(ledger: Ledger, m: s.DischargeRegistered, actor: Callable[..., Actor]) -> Outcome:
    return ledger.register_discharge(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        id_number=m.id_number,
        discharged_on=m.discharged_on,
        spouse_id_number=m.spouse_id_number,
        actor=actor("veterans_affairs"),
    )


def _target_set(ledger: Ledger, m: s.TargetSet, actor: Callable[..., Actor]) -> Outcome:
    return ledger.set_target(
        msg_id=m.msg_id,
        occurred_at=m.occurred_at,
        district=m.district,
        coverage_year=m.coverage_year,
        target_count=m.target_count,
        actor=actor("medical_security_bureau"),
    )


COMMANDS: dict[type[s.Upstream], Callable[[Ledger, Any, Callable[..., Actor]], Outcome]] = {
    s.PersonRegistered: _person_registered,
    s.EnrollmentRequested: _enrollment_requested,
    s.PaymentReceived: _payment_received,
    s.SubsidyListed: _subsidy_listed,
    s.CashRemitted: _cash_remitted,
    s.DeathRegistered: _death_registered,
    s.EmployeeInsuranceChanged: _employee_insurance_changed,
    s.DischargeRegistered: _discharge_registered,
    s.TargetSet: _target_set,
}


def apply(ledger: Ledger, message: s.Upstream, *, upstream_seq: int | None = None, digest: str | None = None) -> Outcome:
    """Hand ``message`` to the ledger; returns its outcome or raises its ``Refusal``.
    ``upstream_seq`` and ``digest`` (the message's place in UPSTREAM, its content's digest) are
    recorded in the source of every event it causes."""

    def actor(system: str, **known: Any) -> Actor:
        return Actor(system, **known, upstream_seq=upstream_seq, digest=digest)

    return COMMANDS[type(message)](ledger, message, actor)
