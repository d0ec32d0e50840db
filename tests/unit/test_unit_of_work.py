"""The unit of work saves a batch of facts in one call, and the ledger still records the facts'
events in the order the facts were decided (an auditor reading LEDGER reads them as they
happened; rules across persons, such as one phone behind too many households, see who came
last)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ledger.application import Actor, Ledger
from ledger.commands import RegisterPerson
from ledger.domain.identity import PersonKeyer
from tests.integration.ingest_support import people

CST = timezone(timedelta(hours=8))
REGISTRY = Actor("household_registry")


def _registered(ledger: Ledger, id_number: str, msg_id: str, name: str) -> None:
    ledger.register_person(
        RegisterPerson(msg_id=msg_id, occurred_at=datetime(2021, 9, 1, 9, tzinfo=CST), id_number=id_number,
                       name=name, district="340104", phone="13800000000"),
        REGISTRY,
    )  # fmt: skip


def test_given_facts_about_persons_looked_up_in_another_order_then_their_events_are_recorded_in_the_facts_order() -> None:
    ledger = Ledger({}, keyer=PersonKeyer(b"unit-of-work-test-secret-0123456789"))
    try:
        # Given three residents already registered
        first, second, third = people(3, "unit-of-work")
        for number, id_number in enumerate((first, second, third)):
            _registered(ledger, id_number, f"r{number}", "甲")
        before = ledger.recorder.max_notification_id() or 0
        # When one batch (one save) re-registers them in the order third, first, second, the
        # persons having been looked up in the order first, second, third
        with ledger.batch([first, second, third]):
            for id_number in (third, first, second):
                _registered(ledger, id_number, f"again-{id_number}", "乙")
        # Then LEDGER holds the three new events in the order the facts came: third, first, second
        recorded = ledger.recorder.select_notifications(start=before + 1, limit=10)
        keys = [ledger.keyer(id_number) for id_number in (third, first, second)]
        persons = [ledger.person(id_number) for id_number in (third, first, second)]
        assert all(p is not None and p.name == "乙" for p in persons)
        assert [n.originator_id for n in recorded] == [p.id for p in persons if p is not None], keys
    finally:
        ledger.close()
