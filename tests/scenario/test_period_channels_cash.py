"""Cash at the community committee (合肥市2021年方案 §五(一)): each cash payment has a numbered
special receipt (专用票据) used once, the committee holds the cash until it remits it to the tax
office (within 30 days, or at 200,000 yuan), and a remittance must equal the receipts it covers."""

from __future__ import annotations

import random
from datetime import date

import pytest
from eventsourcing.application import AggregateNotFoundError

from ledger.application import Ledger
from ledger.domain.cash import CashCollector, collector_id
from ledger.domain.refusals import DuplicateReceipt
from tests.scenario.conftest import at, resident
from tests.scenario.steps_money import (
    COMMUNITY_CASH,
    enroll,
    events_recorded,
    pay_cash,
    refused,
    remit,
    yuan,
)

COLLECTOR = "340104-sq-12"
"""The committee of a 蜀山区 community, collecting cash."""
OTHER_COLLECTOR = "340102-sq-03"
"""A committee in 瑶海区."""


def _collector(ledger: Ledger, collector: str = COLLECTOR) -> CashCollector:
    return ledger.repository.get(collector_id(collector))


def _elder_enrolled_at_the_committee(ledger: Ledger, rng: random.Random, born: date = date(1940, 3, 1)) -> str:
    id_number = resident(rng, born)
    enroll(ledger, id_number, coverage_year=2022, on=at(2021, 9, 13), channel="community_cash", actor=COMMUNITY_CASH)
    return id_number


def test_an_elder_paying_cash_with_a_receipt_is_covered_and_the_committee_holds_the_cash(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given an elderly resident enrolled at the community committee
    id_number = _elder_enrolled_at_the_committee(ledger, rng)

    # When they pay 320 yuan in cash and the committee prints receipt 0001
    pay_cash(
        ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 13),
        receipt_no="AH2021-0001", collector_id=COLLECTOR,
    )

    # Then they are covered in 2022
    assert ledger.coverage(id_number, date(2022, 1, 1)).covered
    # and the committee holds 320 yuan, receipt 0001 being the oldest not remitted
    collector = _collector(ledger)
    assert collector.balance_fen == yuan(320)
    oldest = collector.oldest_unremitted()
    assert oldest is not None and oldest.receipt_no == "AH2021-0001"


@pytest.mark.parametrize(
    ("receipt_no", "collector"),
    [
        pytest.param(None, COLLECTOR, id="no_receipt_no"),
        pytest.param("AH2021-0002", None, id="no_collector_id"),
        pytest.param("", COLLECTOR, id="empty_receipt_no"),
    ],
)
def test_a_cash_payment_without_a_receipt_number_or_collector_is_malformed(
    ledger: Ledger, rng: random.Random, receipt_no: str | None, collector: str | None
) -> None:
    # Given an elder enrolled at the committee
    id_number = _elder_enrolled_at_the_committee(ledger, rng)

    # When a cash payment arrives without a receipt number or without the collecting committee
    # Then it is refused as malformed, and the elder is still awaiting payment
    with refused(ledger, "malformed"):
        pay_cash(
            ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 13),
            receipt_no=receipt_no, collector_id=collector,
        )
    assert ledger.coverage(id_number, date(2022, 1, 1)).status == "awaiting_payment"


def test_a_receipt_number_used_twice_is_refused_even_for_another_person_and_collector(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given receipt 0003 already printed for one elder by the 蜀山区 committee
    first = _elder_enrolled_at_the_committee(ledger, rng)
    pay_cash(
        ledger, first, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 13),
        receipt_no="AH2021-0003", collector_id=COLLECTOR,
    )
    # and another elder enrolled elsewhere
    second = _elder_enrolled_at_the_committee(ledger, rng, born=date(1942, 6, 6))

    # When a 瑶海区 committee reports the second elder's cash under the same receipt number
    # Then the payment is refused, the second elder stays unpaid and that committee holds nothing
    with refused(ledger, "duplicate_receipt"):
        pay_cash(
            ledger, second, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 20),
            receipt_no="AH2021-0003", collector_id=OTHER_COLLECTOR,
        )
    assert ledger.coverage(second, date(2022, 1, 1)).status == "awaiting_payment"
    assert _collector(ledger).balance_fen == yuan(320)
    with pytest.raises(AggregateNotFoundError):  # the 瑶海区 committee never received cash
        _collector(ledger, OTHER_COLLECTOR)


def test_the_oldest_unremitted_receipt_is_the_one_collected_first(ledger: Ledger, rng: random.Random) -> None:
    # Given two elders paying cash: one on Sep 20, and one on Sep 14 whose receipt is reported later
    later, earlier = _elder_enrolled_at_the_committee(ledger, rng), _elder_enrolled_at_the_committee(
        ledger, rng, born=date(1945, 1, 1)
    )
    pay_cash(
        ledger, later, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 20),
        receipt_no="AH2021-0011", collector_id=COLLECTOR,
    )
    pay_cash(
        ledger, earlier, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 14),
        receipt_no="AH2021-0010", collector_id=COLLECTOR,
    )

    # Then the committee holds 640 yuan and its oldest unremitted receipt is the Sep 14 one
    collector = _collector(ledger)
    assert collector.balance_fen == yuan(640)
    assert collector.oldest_unremitted().receipt_no == "AH2021-0010"  # type: ignore[union-attr]


def test_cash_held_more_than_30_days_is_overdue_for_remittance(ledger: Ledger, rng: random.Random) -> None:
    # Given cash collected on Sep 13 2021 and not remitted
    id_number = _elder_enrolled_at_the_committee(ledger, rng)
    pay_cash(
        ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 13),
        receipt_no="AH2021-0020", collector_id=COLLECTOR,
    )

    # Then it is due by Oct 13 (30 days) and overdue from Oct 14
    collector = _collector(ledger)
    days = ledger.policy.cash_remit_days
    assert days == 30
    assert not collector.remittance_overdue(date(2021, 10, 13), days=days)
    assert collector.remittance_overdue(date(2021, 10, 14), days=days)


def _three_receipts(ledger: Ledger, rng: random.Random) -> None:
    """Three elders paying 320 yuan in cash on Sep 13, 14 and 15: receipts 0031, 0032, 0033."""
    for day, receipt in ((13, "AH2021-0031"), (14, "AH2021-0032"), (15, "AH2021-0033")):
        id_number = _elder_enrolled_at_the_committee(ledger, rng, born=date(1940, 1, day))
        pay_cash(
            ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, day),
            receipt_no=receipt, collector_id=COLLECTOR,
        )


def test_remitting_cash_lowers_the_balance_oldest_receipts_first(ledger: Ledger, rng: random.Random) -> None:
    # Given a committee holding three receipts of 320 yuan
    _three_receipts(ledger, rng)

    # When it remits 640 yuan to the tax office without naming receipts
    remit(ledger, COLLECTOR, amount_fen=yuan(640), remitted_at=at(2021, 10, 8))

    # Then it holds 320 yuan, and the receipt still held is the newest
    collector = _collector(ledger)
    assert collector.balance_fen == yuan(320)
    assert collector.oldest_unremitted().receipt_no == "AH2021-0033"  # type: ignore[union-attr]


def test_remitting_named_receipts_removes_exactly_those(ledger: Ledger, rng: random.Random) -> None:
    # Given a committee holding three receipts of 320 yuan
    _three_receipts(ledger, rng)

    # When it remits receipts 0031 and 0033 by number
    remit(ledger, COLLECTOR, amount_fen=yuan(640), remitted_at=at(2021, 10, 8), receipt_nos=("AH2021-0031", "AH2021-0033"))

    # Then only 0032 is still held
    collector = _collector(ledger)
    assert collector.balance_fen == yuan(320)
    assert set(collector.held) == {"AH2021-0032"}


@pytest.mark.parametrize(
    ("amount_yuan", "receipt_nos"),
    [
        pytest.param(500, (), id="not_a_sum_of_oldest_receipts"),
        pytest.param(1000, (), id="more_than_held"),
        pytest.param(320, ("AH2021-0031", "AH2021-0032"), id="less_than_the_named_receipts"),
        pytest.param(640, ("AH2021-0031", "AH2021-9999"), id="a_receipt_not_held"),
    ],
)
def test_a_remittance_that_does_not_equal_its_receipts_is_refused(
    ledger: Ledger, rng: random.Random, amount_yuan: int, receipt_nos: tuple[str, ...]
) -> None:
    # Given a committee holding three receipts of 320 yuan
    _three_receipts(ledger, rng)

    # When a remittance's amount does not equal the receipts it covers
    # Then it is refused and the committee still holds all of its cash
    with refused(ledger, "amount_mismatch"):
        remit(ledger, COLLECTOR, amount_fen=yuan(amount_yuan), remitted_at=at(2021, 10, 8), receipt_nos=receipt_nos)
    assert _collector(ledger).balance_fen == yuan(960)


def test_a_receipt_held_by_another_committee_cannot_be_remitted(ledger: Ledger, rng: random.Random) -> None:
    # Given receipt 0031 held by the 蜀山区 committee
    _three_receipts(ledger, rng)

    # When the 瑶海区 committee remits it
    # Then the remittance is refused
    with refused(ledger, "amount_mismatch"):
        remit(ledger, OTHER_COLLECTOR, amount_fen=yuan(320), remitted_at=at(2021, 10, 8), receipt_nos=("AH2021-0031",))


def test_a_receipt_named_twice_in_one_remittance_counts_once(ledger: Ledger, rng: random.Random) -> None:
    # Given a committee holding three receipts of 320 yuan
    _three_receipts(ledger, rng)

    # When a remittance of 640 yuan names receipt 0031 twice
    # Then it is refused: the receipts it covers add up to 320 yuan
    with refused(ledger, "amount_mismatch"):
        remit(
            ledger, COLLECTOR, amount_fen=yuan(640), remitted_at=at(2021, 10, 8),
            receipt_nos=("AH2021-0031", "AH2021-0031"),
        )
    assert _collector(ledger).balance_fen == yuan(960)


def test_a_remittance_redelivered_with_the_same_msg_id_is_applied_once(ledger: Ledger, rng: random.Random) -> None:
    # Given a committee holding three receipts, which remitted the oldest (msg rm-1)
    _three_receipts(ledger, rng)
    first = remit(ledger, COLLECTOR, amount_fen=yuan(320), remitted_at=at(2021, 10, 8), msg_id="rm-1", voucher_no="V-1")
    assert first.recorded > 0 and not first.duplicate
    before = events_recorded(ledger)

    # When the same message is delivered again
    again = remit(ledger, COLLECTOR, amount_fen=yuan(320), remitted_at=at(2021, 10, 8), msg_id="rm-1", voucher_no="V-1")

    # Then it is a duplicate: nothing recorded, the balance dropped only once
    assert again.duplicate and again.recorded == 0
    assert events_recorded(ledger) == before
    assert _collector(ledger).balance_fen == yuan(640)


def test_a_receipt_already_remitted_cannot_be_remitted_again(ledger: Ledger, rng: random.Random) -> None:
    # Given a committee that remitted receipt 0031 by number
    _three_receipts(ledger, rng)
    remit(ledger, COLLECTOR, amount_fen=yuan(320), remitted_at=at(2021, 10, 8), receipt_nos=("AH2021-0031",))

    # When a new remittance (another voucher) names 0031 again
    # Then it is refused, and the committee still holds the other two receipts
    with refused(ledger, "amount_mismatch"):
        remit(ledger, COLLECTOR, amount_fen=yuan(320), remitted_at=at(2021, 10, 9), receipt_nos=("AH2021-0031",))
    assert _collector(ledger).balance_fen == yuan(640)


def test_a_remittance_is_not_taken_for_a_duplicate_of_a_cash_payment_with_the_same_msg_id(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given the committee reported an elder's cash in its message "77"
    id_number = _elder_enrolled_at_the_committee(ledger, rng)
    pay_cash(
        ledger, id_number, coverage_year=2022, amount_fen=yuan(320), paid_at=at(2021, 9, 13),
        receipt_no="AH2021-0077", collector_id=COLLECTOR, msg_id="77",
    )

    # When the tax office reports the remittance of that cash in its own message "77"
    outcome = remit(ledger, COLLECTOR, amount_fen=yuan(320), remitted_at=at(2021, 10, 8), msg_id="77")

    # Then the remittance is applied and the committee holds nothing
    assert not outcome.duplicate
    assert _collector(ledger).balance_fen == 0


def test_one_remittance_reported_by_the_committee_and_by_the_tax_office_counts_once(
    ledger: Ledger, rng: random.Random
) -> None:
    # Given a committee holding three receipts of 320 yuan, which reports remitting 640 yuan on
    # voucher V-7 (its own message)
    _three_receipts(ledger, rng)
    remit(ledger, COLLECTOR, amount_fen=yuan(640), remitted_at=at(2021, 10, 8), msg_id="committee-1", voucher_no="V-7")
    before = events_recorded(ledger)

    # When the tax office reports the same voucher (another sender, another msg_id)
    again = remit(ledger, COLLECTOR, amount_fen=yuan(640), remitted_at=at(2021, 10, 8), msg_id="tax-9", voucher_no="V-7")

    # Then it is the same remittance: nothing recorded, the newest receipt still held
    assert again.duplicate and events_recorded(ledger) == before
    collector = _collector(ledger)
    assert collector.balance_fen == yuan(320)
    assert collector.oldest_unremitted().receipt_no == "AH2021-0033"  # type: ignore[union-attr]


def test_a_voucher_reported_again_with_another_amount_is_a_duplicate_receipt(ledger: Ledger, rng: random.Random) -> None:
    _three_receipts(ledger, rng)
    remit(ledger, COLLECTOR, amount_fen=yuan(320), remitted_at=at(2021, 10, 8), voucher_no="V-8")
    before = events_recorded(ledger)
    with pytest.raises(DuplicateReceipt):
        remit(ledger, COLLECTOR, amount_fen=yuan(640), remitted_at=at(2021, 10, 9), voucher_no="V-8")
    assert events_recorded(ledger) == before and _collector(ledger).balance_fen == yuan(640)
