"""Steps shared by the scenario tests of enrollment outside the concentrated period, status
changes, refusals and the ledger's invariants (domain.md §2, §4, §6).

Each step sends one upstream fact to the ``Ledger`` application with the fields the contract
names, so tests read as given / when / then. The policy's figures are written out here from
domain.md and the seeds, never read back from the ledger's own policy object: a wrong table in
the ledger makes a test fail.
"""

from __future__ import annotations

import itertools
import random
import time
from datetime import date, datetime, timedelta
from typing import Any

from ledger.application import Actor, Ledger, Outcome
from ledger.commands import (
    ChangeEmployeeInsurance,
    ListSubsidy,
    ReceivePayment,
    RegisterDeath,
    RegisterDischarge,
    RegisterPerson,
    RequestEnrollment,
)
from ledger.domain.identity import generate_id_number
from tests.scenario.conftest import CST, WECHAT

# ---- who sends the facts ----------------------------------------------------------------------

PUBLIC_SECURITY = Actor(system="public_security")
"""Registers people and deaths (公安)."""
EMPLOYEE_INSURANCE = Actor(system="employee_insurance")
"""The employee-insurance system (职工医保)."""
VETERANS_AFFAIRS = Actor(system="veterans_affairs")
"""Registers discharges from the army (退役军人事务)."""
CIVIL_AFFAIRS = Actor(system="civil_affairs")
"""Sends the assistance rosters (民政: 特困, 低保 …)."""
TAX_OFFICE = Actor(system="tax", channel="tax", org_id="shushan-tax")
"""The tax office reporting a payment it received (税务)."""
COMMUNITY_CASH = Actor(system="community", channel="community_cash", operator_id="op-07", org_id="340104-sq-12")

HOME = "340104"
"""蜀山区, where the tests' residents live."""

# ---- the policy's figures (domain.md §1, §4, §5) -----------------------------------------------

CONTRIBUTION_FEN: dict[int, int] = {
    # 个人缴费 per funding year F (covers F+1), Hefei (seed 000), in fen.
    2016: 12_000,
    2017: 15_000,
    2018: 22_000,
    2019: 25_000,
    2020: 28_000,
    2021: 32_000,
}
SUBSIDY_PERCENT: dict[str, int] = {
    # The assistance fund's share of the individual contribution (方案 §五(五)).
    "extreme_poverty": 100,
    "scattered_orphan": 100,
    "family_planning_special": 100,
    "dibao": 90,
    "low_income_elderly": 90,
    "poverty_returned": 80,
    "poverty_unstable": 50,
    "monitored_low_income": 50,
}
Y = 2022
"""The coverage year the outside-period scenarios live in (funding year 2021: 320 yuan)."""
STANDARD_Y = CONTRIBUTION_FEN[Y - 1]


def day_after(day: date) -> date:
    return day + timedelta(days=1)


# ---- people and messages ----------------------------------------------------------------------


class People:
    """Synthetic, valid and distinct ID numbers (never real ones) from a seeded generator."""

    def __init__(self, rng: random.Random, district: str = HOME) -> None:
        self.rng = rng
        self.district = district
        self.issued: set[str] = set()

    def born(self, born: date, sex: str | None = None) -> str:
        while True:
            number = generate_id_number(self.rng, division_code=self.district, birth_date=born, sex=sex)  # type: ignore[arg-type]
            if number not in self.issued:
                self.issued.add(number)
                return number


_numbers = itertools.count(1)


def new_msg_id(kind: str) -> str:
    """A msg_id no other message in the test session carries."""
    return f"{kind}-{next(_numbers)}"


def register(ledger: Ledger, id_number: str, on: datetime, **fields: Any) -> Outcome:
    fields.setdefault("name", "居民")
    fields.setdefault("district", HOME)
    return ledger.register_person(
        RegisterPerson(msg_id=new_msg_id("person"), occurred_at=on, id_number=id_number, **fields), PUBLIC_SECURITY
    )


def enroll(
    ledger: Ledger, id_number: str, year: int, category: str, on: datetime, *, channel: str = "wechat", **fields: Any
) -> Outcome:
    fields.setdefault("district", HOME)
    return ledger.request_enrollment(RequestEnrollment(
        msg_id=new_msg_id("enroll"), occurred_at=on, id_number=id_number, coverage_year=year,
        category=category, channel=channel, **fields,
    ), WECHAT)  # fmt: skip


def pay(ledger: Ledger, id_number: str, year: int, amount_fen: int, paid_at: datetime, **fields: Any) -> Outcome:
    fields.setdefault("channel", "wechat")
    actor = fields.pop("actor", WECHAT)
    return ledger.receive_payment(ReceivePayment(
        msg_id=new_msg_id("pay"), occurred_at=paid_at, id_number=id_number, coverage_year=year,
        amount_fen=amount_fen, paid_at=paid_at, **fields,
    ), actor)  # fmt: skip


def enroll_and_pay(
    ledger: Ledger, id_number: str, year: int, category: str, on: datetime, amount_fen: int = STANDARD_Y, **fields: Any
) -> None:
    """Enrollment requested and the individual share paid the same day, through WeChat."""
    enroll(ledger, id_number, year, category, on, **fields)
    pay(ledger, id_number, year, amount_fen, on)


def employee_insurance(
    ledger: Ledger,
    id_number: str,
    on: datetime,
    *,
    insured_from: date,
    continuous_months: int,
    insured_until: date | None = None,
    back_paid_months: int = 0,
) -> Outcome:
    return ledger.change_employee_insurance(ChangeEmployeeInsurance(
        msg_id=new_msg_id("employee"), occurred_at=on, id_number=id_number, insured_from=insured_from,
        continuous_months=continuous_months, insured_until=insured_until, back_paid_months=back_paid_months,
    ), EMPLOYEE_INSURANCE)  # fmt: skip


def discharge(ledger: Ledger, id_number: str, on: datetime, discharged_on: date, spouse: str | None = None) -> Outcome:
    return ledger.register_discharge(RegisterDischarge(
        msg_id=new_msg_id("discharge"), occurred_at=on, id_number=id_number, discharged_on=discharged_on,
        spouse_id_number=spouse,
    ), VETERANS_AFFAIRS)  # fmt: skip


def list_on_roster(
    ledger: Ledger, id_number: str, year: int, category: str, on: datetime, effective_from: date | None = None
) -> Outcome:
    return ledger.list_subsidy(ListSubsidy(
        msg_id=new_msg_id("roster"), occurred_at=on, id_number=id_number, coverage_year=year,
        subsidy_category=category, department="civil_affairs", roster=f"{on:%Y-%m}",
        effective_from=effective_from,
    ), CIVIL_AFFAIRS)  # fmt: skip


def death(ledger: Ledger, id_number: str, on: datetime, date_of_death: date) -> Outcome:
    return ledger.register_death(
        RegisterDeath(msg_id=new_msg_id("death"), occurred_at=on, id_number=id_number, date_of_death=date_of_death),
        PUBLIC_SECURITY,
    )


# ---- what the ledger recorded -----------------------------------------------------------------


def recorded(ledger: Ledger) -> int:
    """How many events the ledger's store holds (its last notification id)."""
    return ledger.recorder.max_notification_id() or 0


def events_of(ledger: Ledger, id_number: str) -> list[Any]:
    """The person's domain events, oldest first."""
    person = ledger.person(id_number)
    assert person is not None, "the person is not in the ledger"
    return list(ledger.repository.event_store.get(person.id))


def named(events: list[Any], name: str) -> list[Any]:
    return [e for e in events if type(e).__name__ == name]


def now_between_facts() -> datetime:
    """The wall clock between two recorded facts, a few milliseconds from either."""
    time.sleep(0.005)
    moment = datetime.now(CST)
    time.sleep(0.005)
    return moment
