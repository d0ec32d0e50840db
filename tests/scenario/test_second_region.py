"""A second region runs on the same code: only its policy file differs (issue: policy as data)."""

from __future__ import annotations

import random
from datetime import date

import pytest

from ledger.application import Ledger
from ledger.commands import ReceivePayment, RequestEnrollment
from ledger.domain.identity import PersonKeyer
from ledger.domain.policy import decode_policy
from ledger.domain.refusals import OutsideEnrollmentPeriod
from tests.scenario.conftest import SECRET, WECHAT, at, resident
from tests.unit.domain.test_policy import lakeside_toml


def test_a_made_up_region_enrolls_by_its_own_calendar_contribution_and_waiting_period() -> None:
    # Given "lakeside": its period is Oct 1–Dec 15, it asks 250 yuan, late enrollment waits 3 months
    lakeside = decode_policy(lakeside_toml(year=2030, contribution_fen=25_000))
    ledger = Ledger(policy=lakeside, keyer=PersonKeyer(SECRET))
    district = next(iter(lakeside.districts))
    rng = random.Random("lakeside")
    early, late = resident(rng, date(1970, 1, 1)), resident(rng, date(1971, 1, 1))

    # When one pays in its period and another after it, during the coverage year
    for id_number, day, msg in ((early, at(2030, 10, 2), "a"), (late, at(2031, 3, 1), "b")):
        ledger.request_enrollment(RequestEnrollment(
            msg_id=f"e-{msg}", occurred_at=day, id_number=id_number, coverage_year=2031,
            category="resident", channel="wechat", district=district,
        ), WECHAT)
        ledger.receive_payment(ReceivePayment(
            msg_id=f"p-{msg}", occurred_at=day, id_number=id_number, coverage_year=2031,
            amount_fen=25_000, channel="wechat", paid_at=day,
        ), WECHAT)

    # Then the first is covered all year, the second from the day after payment after 3 months
    assert ledger.coverage(early, date(2031, 1, 1)).covered
    late_answer = ledger.coverage(late, date(2031, 4, 1))
    assert late_answer.in_waiting_period and not late_answer.covered
    assert late_answer.coverage_start == date(2031, 3, 2)
    assert late_answer.benefit_start == date(2031, 6, 2)
    # And Hefei's calendar does not apply: Sep 15 is before lakeside's period opens
    third = resident(rng, date(1972, 1, 1))
    ledger.request_enrollment(RequestEnrollment(
        msg_id="e-c", occurred_at=at(2030, 9, 15), id_number=third, coverage_year=2031,
        category="resident", channel="wechat", district=district,
    ), WECHAT)
    with pytest.raises(OutsideEnrollmentPeriod):
        ledger.receive_payment(ReceivePayment(
            msg_id="p-c", occurred_at=at(2030, 9, 15), id_number=third, coverage_year=2031,
            amount_fen=25_000, channel="wechat", paid_at=at(2030, 9, 15),
        ), WECHAT)
