"""The ledger runs end to end on both stores (the rule-by-rule tests live beside this file)."""

from __future__ import annotations

import random
from datetime import date

from ledger.application import Ledger
from ledger.commands import ReceivePayment, RegisterPerson, RequestEnrollment
from tests.scenario.conftest import WECHAT, at, resident


def test_a_resident_enrolled_and_paid_in_the_concentrated_period_is_covered_all_next_year(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a resident of 蜀山区 registered before the period
    id_number = resident(rng, date(1960, 5, 1))
    ledger.register_person(RegisterPerson(
        msg_id="r1", occurred_at=at(2021, 8, 1), id_number=id_number, name="张三", district="340104"
    ), WECHAT)
    # When they enroll and pay 320 yuan through WeChat in September 2021
    ledger.request_enrollment(RequestEnrollment(
        msg_id="e1", occurred_at=at(2021, 9, 2), id_number=id_number, coverage_year=2022,
        category="resident", channel="wechat", district="340104",
    ), WECHAT)
    ledger.receive_payment(ReceivePayment(
        msg_id="p1", occurred_at=at(2021, 9, 3), id_number=id_number, coverage_year=2022, amount_fen=32000,
        channel="wechat", paid_at=at(2021, 9, 3),
    ), WECHAT)
    # Then they are covered from Jan 1 to Dec 31 2022 with no waiting period
    answer = ledger.coverage(id_number, date(2022, 1, 1))
    assert answer.covered and answer.status == "enrolled"
    assert (answer.coverage_start, answer.coverage_end, answer.benefit_start) == (
        date(2022, 1, 1), date(2022, 12, 31), date(2022, 1, 1),
    )
    assert not ledger.coverage(id_number, date(2021, 12, 31)).covered
