"""The upstream schemas are the contract's messages: required fields, value sets, times with
offsets; and each message becomes one ledger call (handler logic only: no broker here)."""

from __future__ import annotations

import json
import random
from datetime import date

import pytest

from consumers.commands import apply
from contract.messages import SCHEMAS, decode
from ledger.application import Ledger
from ledger.domain.identity import PersonKeyer, generate_id_number
from ledger.domain.refusals import Malformed

RNG = random.Random("schemas")
ID = generate_id_number(RNG, division_code="340104", birth_date=date(1980, 1, 2))
SPOUSE = generate_id_number(RNG, division_code="340104", birth_date=date(1982, 3, 4))
T = "2021-09-02T10:00:00+08:00"

VALID: dict[str, dict[str, object]] = {
    "upstream.person.registered": {"id_number": ID, "name": "李四", "district": "340104", "phone": "13800000000"},
    "upstream.enrollment.requested": {
        "id_number": ID, "coverage_year": 2022, "category": "resident", "channel": "wechat", "district": "340104",
    },
    "upstream.payment.received": {
        "id_number": ID, "coverage_year": 2022, "amount_fen": 32000, "channel": "wechat", "paid_at": T,
    },
    "upstream.subsidy.listed": {
        "id_number": ID, "coverage_year": 2022, "subsidy_category": "dibao", "department": "civil_affairs",
        "roster": "2021-08",
    },
    "upstream.cash.remitted": {"collector_id": "c1", "amount_fen": 0, "voucher_no": "v1", "remitted_at": T},
    "upstream.death.registered": {"id_number": ID, "date_of_death": "2022-05-01"},
    "upstream.employee_insurance.changed": {"id_number": ID, "insured_from": "2019-01-01", "continuous_months": 30},
    "upstream.discharge.registered": {"id_number": ID, "discharged_on": "2021-06-01", "spouse_id_number": SPOUSE},
    "upstream.target.set": {"district": "340104", "coverage_year": 2022, "target_count": 1000},
}


def message(subject: str, **changes: object) -> bytes:
    body = {"msg_id": f"m-{subject}", "occurred_at": T, **VALID[subject], **changes}
    return json.dumps({k: v for k, v in body.items() if v is not None}, ensure_ascii=False).encode()


def test_every_contract_subject_has_a_schema_and_an_example() -> None:
    assert set(SCHEMAS) == set(VALID)


@pytest.mark.parametrize("subject", sorted(VALID))
def test_a_message_missing_a_required_field_is_malformed_naming_it(subject: str) -> None:
    for field in ("msg_id", "occurred_at", *VALID[subject]):
        if field in ("phone", "spouse_id_number"):
            continue  # optional
        with pytest.raises(Malformed, match=field):
            decode(subject, message(subject, **{field: None}))


@pytest.mark.parametrize("subject", sorted(VALID))
def test_unknown_extra_fields_are_ignored(subject: str) -> None:
    assert decode(subject, message(subject, some_future_field=1)).msg_id == f"m-{subject}"


def test_a_time_without_an_offset_is_malformed() -> None:
    with pytest.raises(Malformed, match="occurred_at"):
        decode("upstream.death.registered", message("upstream.death.registered", occurred_at="2021-09-02T10:00:00"))


@pytest.mark.parametrize(
    ("subject", "field", "value"),
    [
        ("upstream.enrollment.requested", "category", "tourist"),
        ("upstream.enrollment.requested", "channel", "fax"),
        ("upstream.subsidy.listed", "subsidy_category", "rich"),
        ("upstream.payment.received", "amount_fen", 320.5),
        ("upstream.payment.received", "amount_fen", -1),
        ("upstream.enrollment.requested", "coverage_year", "2022"),
        ("upstream.death.registered", "date_of_death", "2022/05/01"),
        ("upstream.target.set", "district", "3401"),
    ],
)
def test_a_value_outside_the_contract_is_malformed(subject: str, field: str, value: object) -> None:
    with pytest.raises(Malformed, match=field):
        decode(subject, message(subject, **{field: value}))


def test_bytes_that_are_not_json_are_malformed() -> None:
    with pytest.raises(Malformed, match="not JSON"):
        decode("upstream.target.set", b"\xff{")


def test_an_unknown_subject_is_malformed() -> None:
    with pytest.raises(Malformed):
        decode("upstream.weather.changed", b"{}")


def test_each_message_becomes_one_ledger_call() -> None:
    ledger = Ledger(keyer=PersonKeyer(b"schemas-test-secret-0123456789"))
    outcomes = {}
    for subject in (
        "upstream.person.registered",
        "upstream.target.set",
        "upstream.enrollment.requested",
        "upstream.payment.received",
        "upstream.subsidy.listed",
        "upstream.discharge.registered",
        "upstream.death.registered",
    ):
        outcomes[subject] = apply(ledger, decode(subject, message(subject)))
    assert all(o.recorded >= 1 for o in outcomes.values()), outcomes
    person = ledger.person(ID)
    assert person is not None and person.name == "李四"
    assert person.enrollments[2022].paid_fen == 32000
    assert person.date_of_death == date(2022, 5, 1)
    assert ledger.person(SPOUSE) is not None  # the discharge reached the spouse too
    again = apply(ledger, decode("upstream.payment.received", message("upstream.payment.received")))
    assert again.duplicate
