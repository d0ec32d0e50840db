"""The upstream messages of ``contract.md``: one msgspec ``Struct`` per subject, exactly its fields.

Dates are ``YYYY-MM-DD``; times are ISO 8601 with an offset (a time without one is malformed);
money is integer fen. Unknown extra fields are ignored; a missing or malformed required field
is refused with reason ``malformed`` and the path of the field. Decoders are built once.

These are integration messages, not domain events: ``consumers.commands`` turns each into one
call of the ``Ledger`` application.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect

from ledger.domain.refusals import Malformed
from ledger.domain.source import CHINA_STANDARD_TIME

Time = Annotated[datetime, msgspec.Meta(tz=True)]
"""A time with its offset (+08:00); a naive time is malformed."""
Fen = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Year = Annotated[int, msgspec.Meta(ge=2000, le=2100)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
IdNumber = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
"""Any text: whether it is a valid resident ID number is the ledger's ``invalid_id_number``."""
DivisionCode = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")]
Months = Annotated[int, msgspec.Meta(ge=0, le=1200)]

Category = Literal[
    "resident",
    "minor_of_employee",
    "residence_permit",
    "student",
    "university_new",
    "foreign_expert_family",
    "newborn",
    "cross_scheme",
    "veteran",
    "assistance_new",
]
Channel = Literal["wechat", "community_qr", "community_cash", "university", "school", "tax", "auto"]
SubsidyCategory = Literal[
    "extreme_poverty",
    "scattered_orphan",
    "family_planning_special",
    "dibao",
    "low_income_elderly",
    "poverty_returned",
    "poverty_unstable",
    "monitored_low_income",
]


class Documented(msgspec.Struct, frozen=True, kw_only=True):
    """A message FastStream can document (AsyncAPI).

    FastStream documents handlers through pydantic, which does not know msgspec Structs: these
    two hooks hand it the JSON schema msgspec derives from the Struct itself, so the document
    describes exactly what is decoded.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.any_schema()

    @classmethod
    def __get_pydantic_json_schema__(cls, _core: Any, _handler: Any) -> dict[str, Any]:
        _, components = msgspec.json.schema_components([cls], ref_template="#/$defs/{name}")
        return dict(components[cls.__name__])


EARLIEST = date(1900, 1, 1)
LATEST = date(2199, 12, 31)
"""The days a message's dates and times (in China Standard Time) may fall on: the earliest birth
date an ID number may carry, to a century past the last coverage year (2100). A fact dated in
year 1 or 9999 is malformed, not a fact the ledger's calendar arithmetic should attempt."""


class Upstream(Documented, frozen=True, kw_only=True):
    """What every upstream message carries."""

    msg_id: Text
    occurred_at: Time

    def __post_init__(self) -> None:
        check_days(self, _DATED[type(self)])
        for name, pattern in _PATTERNED[type(self)]:
            value = getattr(self, name)
            if value is not None and pattern.fullmatch(value) is None:
                # msgspec matches with re.search, where "$" also matches before a final newline
                raise ValueError(f"`{name}` {value!r} does not match {pattern.pattern}")


def check_days(message: Any, names: tuple[str, ...]) -> None:
    """Raises ``ValueError`` (msgspec makes it a ``ValidationError``) when one of the date or
    time fields ``names`` of ``message`` falls outside ``EARLIEST``–``LATEST``."""
    for name in names:
        value = getattr(message, name)
        if value is None:
            continue
        try:
            day = value.astimezone(CHINA_STANDARD_TIME).date() if isinstance(value, datetime) else value
        except OverflowError:
            day = None
        if day is None or not EARLIEST <= day <= LATEST:
            raise ValueError(f"`{name}` {value.isoformat()} is not between {EARLIEST} and {LATEST}")


class PersonRegistered(Upstream, frozen=True, kw_only=True):
    """``upstream.person.registered`` — public security / community."""

    id_number: IdNumber
    name: Text
    district: DivisionCode
    phone: Text | None = None
    household_id: Text | None = None
    residence_permit: bool = False
    hukou_district: DivisionCode | None = None


class EnrollmentRequested(Upstream, frozen=True, kw_only=True):
    """``upstream.enrollment.requested`` — WeChat account, community, school, university."""

    id_number: IdNumber
    coverage_year: Year
    category: Category
    channel: Channel
    district: DivisionCode
    operator_id: Text | None = None
    org_id: Text | None = None
    migrant_worker: bool = False
    birth_date: date | None = None


class PaymentReceived(Upstream, frozen=True, kw_only=True):
    """``upstream.payment.received`` — WeChat pay, tax office, community, university."""

    id_number: IdNumber
    coverage_year: Year
    amount_fen: Fen
    channel: Channel
    paid_at: Time
    receipt_no: Text | None = None
    collector_id: Text | None = None
    payer_account: Text | None = None
    operator_id: Text | None = None


class SubsidyListed(Upstream, frozen=True, kw_only=True):
    """``upstream.subsidy.listed`` — civil affairs, rural revitalisation, health commission."""

    id_number: IdNumber
    coverage_year: Year
    subsidy_category: SubsidyCategory
    department: Text
    roster: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}$")]
    effective_from: date | None = None


class CashRemitted(Upstream, frozen=True, kw_only=True):
    """``upstream.cash.remitted`` — community committee / tax office."""

    collector_id: Text
    amount_fen: Fen
    voucher_no: Text
    remitted_at: Time
    receipt_nos: Annotated[tuple[Text, ...], msgspec.Meta(max_length=10_000)] = ()


class DeathRegistered(Upstream, frozen=True, kw_only=True):
    """``upstream.death.registered`` — public security / civil affairs."""

    id_number: IdNumber
    date_of_death: date


class EmployeeInsuranceChanged(Upstream, frozen=True, kw_only=True):
    """``upstream.employee_insurance.changed`` — the employee-insurance system."""

    id_number: IdNumber
    insured_from: date
    continuous_months: Months
    insured_until: date | None = None
    back_paid_months: Months = 0


class DischargeRegistered(Upstream, frozen=True, kw_only=True):
    """``upstream.discharge.registered`` — veterans affairs."""

    id_number: IdNumber
    discharged_on: date
    spouse_id_number: IdNumber | None = None


class TargetSet(Upstream, frozen=True, kw_only=True):
    """``upstream.target.set`` — the medical security bureau."""

    district: DivisionCode
    coverage_year: Year
    target_count: Annotated[int, msgspec.Meta(ge=0, le=10**9)]


SCHEMAS: dict[str, type[Upstream]] = {
    "upstream.person.registered": PersonRegistered,
    "upstream.enrollment.requested": EnrollmentRequested,
    "upstream.payment.received": PaymentReceived,
    "upstream.subsidy.listed": SubsidyListed,
    "upstream.cash.remitted": CashRemitted,
    "upstream.death.registered": DeathRegistered,
    "upstream.employee_insurance.changed": EmployeeInsuranceChanged,
    "upstream.discharge.registered": DischargeRegistered,
    "upstream.target.set": TargetSet,
}
"""Every upstream subject of the contract and its message."""

def _field_types(schema: type[Upstream]) -> list[tuple[str, msgspec.inspect.Type]]:
    """Each field of ``schema`` with its type, once per member of a union (``T | None``)."""
    info = msgspec.inspect.type_info(schema)
    assert isinstance(info, msgspec.inspect.StructType)  # a Struct's type info
    return [
        (f.name, t)
        for f in info.fields
        for t in (f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,))
    ]


_DATED: dict[type[Upstream], tuple[str, ...]] = {
    schema: tuple(
        name
        for name, t in _field_types(schema)
        if isinstance(t, (msgspec.inspect.DateType, msgspec.inspect.DateTimeType))
    )
    for schema in SCHEMAS.values()
}
"""The date and time fields of each message (checked against ``EARLIEST``/``LATEST``)."""
_PATTERNED: dict[type[Upstream], tuple[tuple[str, re.Pattern[str]], ...]] = {
    schema: tuple(
        (name, re.compile(t.pattern))
        for name, t in _field_types(schema)
        if isinstance(t, msgspec.inspect.StrType) and t.pattern
    )
    for schema in SCHEMAS.values()
}
"""The fields of each message with a pattern, which the whole value must match."""

_DECODERS = {subject: msgspec.json.Decoder(schema) for subject, schema in SCHEMAS.items()}


def decode(subject: str, data: bytes) -> Upstream:
    """The message on ``subject``; raises ``Malformed`` naming what is wrong (and where).

    A body that is not UTF-8 (anywhere, ignored fields included) is not JSON (RFC 8259 §8.1),
    and one nested deeper than the decoder goes is refused too (§9 lets a parser limit depth):
    either would otherwise fail the same way at every delivery.
    """
    decoder = _DECODERS.get(subject)
    if decoder is None:
        raise Malformed(f"{subject} is not an upstream subject of the contract")
    try:
        check_utf8(data)
        return decoder.decode(data)
    except msgspec.ValidationError as e:
        raise Malformed(str(e)) from None
    except msgspec.DecodeError as e:
        raise Malformed(f"not JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise Malformed(f"not JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise Malformed("not JSON: nested too deeply") from None


def check_utf8(data: bytes) -> None:
    """Raises ``UnicodeDecodeError`` unless ``data`` is UTF-8 (ASCII, the usual case, is quick)."""
    if not data.isascii():
        data.decode("utf-8")
