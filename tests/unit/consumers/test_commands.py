"""Each upstream message becomes its ledger command field by field, and its actor by subject."""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest

from consumers.commands import ROUTES, actor_of, command_of
from contract import messages as s
from ledger.application import HANDLERS, Actor
from ledger.commands import ReceivePayment, RemitCash

T = datetime.fromisoformat("2021-09-02T10:00:00+08:00")


@pytest.mark.parametrize("message", sorted(ROUTES, key=lambda m: m.__name__), ids=lambda m: m.__name__)
def test_every_field_of_a_command_is_a_field_of_its_message(message: type[s.Upstream]) -> None:
    """No command field silently takes its default because the message names it otherwise."""
    command = ROUTES[message].command
    assert set(command.__struct_fields__) <= set(message.__struct_fields__)
    assert command in HANDLERS
    for field, attribute in ROUTES[message].actor:
        assert field in {"channel", "operator_id", "org_id"} and attribute in message.__struct_fields__


def test_every_upstream_subject_has_a_route() -> None:
    assert set(ROUTES) == set(s.SCHEMAS.values())


def test_a_cash_payment_becomes_its_command_and_its_actor() -> None:
    message = s.PaymentReceived(
        msg_id="p1", occurred_at=T, id_number="x", coverage_year=2022, amount_fen=32000, channel="community_cash",
        paid_at=T, receipt_no="r1", collector_id="340104-sq-12", operator_id="op-07",
    )  # fmt: skip
    assert command_of(message) == ReceivePayment(
        msg_id="p1", occurred_at=T, id_number="x", coverage_year=2022, amount_fen=32000, channel="community_cash",
        paid_at=T, receipt_no="r1", collector_id="340104-sq-12",
    )  # fmt: skip
    assert actor_of(message, upstream_seq=7, digest="d") == Actor(
        "payment", channel="community_cash", operator_id="op-07", org_id="340104-sq-12", upstream_seq=7, digest="d"
    )


def test_a_remittance_is_sent_through_the_cash_channel() -> None:
    message = s.CashRemitted(msg_id="r", occurred_at=T, collector_id="c1", amount_fen=100, voucher_no="v", remitted_at=T, receipt_nos=("a",))
    assert command_of(message) == msgspec.convert(message, RemitCash, from_attributes=True)
    assert actor_of(message) == Actor("cash_remittance", channel="community_cash", org_id="c1")
