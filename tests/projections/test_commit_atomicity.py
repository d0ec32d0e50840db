"""An event's rows and its tracking position commit together (issue 11, part 4).

Against a real nats-server and a real view database (SQLite file and PostgreSQL): the
projection is held in the middle of an event — its rows staged, its position not yet — long
enough for the views' flusher to commit many times, then the event fails (as a crash would end
it). Restarted, the projections apply that event again: its rows must not already be there.
"""

from __future__ import annotations

import random
import time
from datetime import date
from typing import Any

import pytest

from ledger.application import Actor, Ledger
from ledger.commands import RequestEnrollment
from projections.database import Database
from projections.fraud import FraudRules
from tests.projections.support import World, views_url, world
from tests.scenario.conftest import at
from tests.scenario.steps_status import People, Y, new_msg_id

OPERATOR = Actor(system="community", channel="community_qr", operator_id="op-atomic-01", org_id="340104-sq-12")
HOME = "340104"


class Crash(Exception):
    """The projection dies in the middle of an event."""


@pytest.fixture
def people(request: pytest.FixtureRequest) -> People:
    return People(random.Random(request.node.nodeid))


def test_rows_of_an_event_never_commit_before_its_tracking_position(
    world: World, views_url: str, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given three enrollments by one community operator (the fraud rules keep the operator's
    recent enrollment times in the ``operators`` view),
    when the projection is held in the third enrollment after staging its rows (the flusher
    commits meanwhile) and then dies there, and the projections are started again,
    then the views never held a row of an event beyond their tracking position, and the
    operator's recent times hold each enrollment once (not the third one twice)."""
    residents = [people.born(date(1960 + i, 5, 6)) for i in range(3)]
    for i, id_number in enumerate(residents):
        world.ledger.request_enrollment(RequestEnrollment(
            msg_id=new_msg_id("enroll"), occurred_at=at(2021, 10, 8, 9 + i), id_number=id_number, coverage_year=Y,
            category="resident", channel="community_qr", district=HOME,
        ), OPERATOR)  # fmt: skip
    end = world.ledger.recorder.max_notification_id() or 0

    original = FraudRules._operator
    calls: list[int] = []
    seen_in_the_middle: list[tuple[int, int]] = []

    def held_then_crashing(self: FraudRules, event: Any, person: Any, seq: int) -> None:
        original(self, event, person, seq)
        calls.append(seq)
        if len(calls) == 3:
            time.sleep(0.5)  # the flusher (linger 20 ms) runs many times while the event is half done
            db = Database.open(views_url)
            try:
                tracked = db.query("SELECT notification_id FROM tracking WHERE application_name = ?", (Ledger.name,))
                audited = db.query("SELECT MAX(ledger_seq) FROM audit")
            finally:
                db.close()
            seen_in_the_middle.append((tracked[0][0] if tracked else 0, audited[0][0] or 0))
            raise Crash(f"died in the middle of event {seq}")

    monkeypatch.setattr(FraudRules, "_operator", held_then_crashing)
    projections = world.projections(views_url)
    with pytest.raises(Crash):
        try:
            projections.wait(end, timeout=30)
        finally:
            projections.close()
    assert len(calls) == 3

    # Then, in the middle of the event, nothing of it was committed beyond the position
    ((tracked, audited),) = seen_in_the_middle
    assert audited <= tracked, f"rows of event {audited} committed with tracking position {tracked}"

    # And after a restart the event is applied once: the operator's recent times, once each
    monkeypatch.setattr(FraudRules, "_operator", original)
    projections = world.caught_up(views_url)
    try:
        projections.check()
        (recent,) = projections.view.db.query("SELECT recent FROM operators WHERE operator_id = ?", ("op-atomic-01",))
        (audit_rows,) = projections.view.db.query("SELECT COUNT(*) FROM audit")
    finally:
        projections.close()
    import json

    times = json.loads(recent[0])["times"]
    assert len(times) == 3 and len(set(times)) == 3, f"recent enrollment times {times}"
    assert audit_rows[0] == len(world.ledger.recorder.select_notifications(start=1, limit=10_000))
