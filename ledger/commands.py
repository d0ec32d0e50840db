"""The commands of the ``Ledger`` application: one frozen ``Struct`` per upstream fact.

A command holds what the application needs to decide a fact, named as the contract names it.
Who sent it is not part of the command but its ``Actor``. The upstream messages
(``contract.messages``) carry the same field names, so the ingestion turns one into the other
with ``msgspec.convert(message, Command, from_attributes=True)``; what only the wire has (an
operator, an organisation) goes to the actor. The wire validates; these types only describe.
"""

from __future__ import annotations

from datetime import date, datetime

import msgspec


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """What every fact carries: its sender's id for it, and when it was reported."""

    msg_id: str
    occurred_at: datetime


class RegisterPerson(Command, frozen=True, kw_only=True):
    """``upstream.person.registered``: a resident registered (or re-registered)."""

    id_number: str
    name: str
    district: str
    phone: str | None = None
    household_id: str | None = None
    residence_permit: bool = False
    hukou_district: str | None = None


class RequestEnrollment(Command, frozen=True, kw_only=True):
    """``upstream.enrollment.requested``: an enrollment for a coverage year (参保登记)."""

    id_number: str
    coverage_year: int
    category: str
    channel: str
    district: str
    migrant_worker: bool = False
    birth_date: date | None = None


class ReceivePayment(Command, frozen=True, kw_only=True):
    """``upstream.payment.received``: the individual share paid (cash with a receipt)."""

    id_number: str
    coverage_year: int
    amount_fen: int
    channel: str
    paid_at: datetime
    receipt_no: str | None = None
    collector_id: str | None = None
    payer_account: str | None = None


class ListSubsidy(Command, frozen=True, kw_only=True):
    """``upstream.subsidy.listed``: a department's roster entry (资助参保)."""

    id_number: str
    coverage_year: int
    subsidy_category: str
    department: str
    roster: str
    effective_from: date | None = None


class RemitCash(Command, frozen=True, kw_only=True):
    """``upstream.cash.remitted``: a committee's cash handed to the tax office."""

    collector_id: str
    amount_fen: int
    voucher_no: str
    remitted_at: datetime
    receipt_nos: tuple[str, ...] = ()


class RegisterDeath(Command, frozen=True, kw_only=True):
    """``upstream.death.registered``: coverage ends on the date of death."""

    id_number: str
    date_of_death: date


class ChangeEmployeeInsurance(Command, frozen=True, kw_only=True):
    """``upstream.employee_insurance.changed``: a spell of employee insurance (职工医保)."""

    id_number: str
    insured_from: date
    continuous_months: int
    insured_until: date | None = None
    back_paid_months: int = 0


class RegisterDischarge(Command, frozen=True, kw_only=True):
    """``upstream.discharge.registered``: a soldier discharged, and the spouse who followed."""

    id_number: str
    discharged_on: date
    spouse_id_number: str | None = None


class SetTarget(Command, frozen=True, kw_only=True):
    """``upstream.target.set``: a district's enrollment target for a coverage year (参保任务)."""

    district: str
    coverage_year: int
    target_count: int
