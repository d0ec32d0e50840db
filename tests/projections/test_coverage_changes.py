"""What goes downstream, and when (docs/contract.md, "coverage.changed" and the bucket): a
coverage.changed message and a KV put only for an event that changes what a person's coverage
looks like, and a message that says which day it describes.

Against a real nats-server: the projections publish, then the tests read back the COVERAGE
stream and the bucket's stream (every put the bucket keeps) and compare them with the person's
ledger events, named in the audit view.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from contract.coverage import CoverageChanged, CoverageReply, CoverageValue, CoverageYear
from contract.subjects import CHANGED_PREFIX, COVERAGE_BUCKET, COVERAGE_STREAM, LEDGER_SEQ_HEADER
from projections.database import Database
from projections.queries import answer_query
from tests.projections.support import World, world
from tests.scenario.conftest import at
from tests.scenario.steps_status import STANDARD_Y, People, Y, death, enroll, list_on_roster, pay


@pytest.fixture
def people(request: pytest.FixtureRequest) -> People:
    return People(random.Random(request.node.nodeid))


def published(url: str, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every coverage.changed message about ``key`` (COVERAGE, in stream order) and every value
    the bucket keeps for it (its history, oldest first), each as sent."""

    async def read(stream: str, subject: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            end = (await js.stream_info(stream)).state.last_seq
            found: list[tuple[dict[str, str], dict[str, Any]]] = []
            if not end:
                return found
            sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break
                body = json.loads(msg.data)
                if body.get("person_key") == key:
                    found.append((dict(msg.headers or {}), {**body, "subject": msg.subject}))
                if msg.metadata.sequence.stream >= end:
                    break
            await sub.unsubscribe()
            return found
        finally:
            await nc.close()

    changed = asyncio.run(read(COVERAGE_STREAM, f"{CHANGED_PREFIX}.>"))
    values = asyncio.run(read(f"KV_{COVERAGE_BUCKET}", f"$KV.{COVERAGE_BUCKET}.{key}"))
    for headers, body in changed + values:
        assert int(headers[LEDGER_SEQ_HEADER]) == body["ledger_seq"], "the header and the body name one change"
    return [body for _, body in changed], [body for _, body in values]


def events(views: str, key: str) -> dict[str, list[int]]:
    """The ledger sequences of the person's events, by event name (from the audit view)."""
    db = Database.open(views)
    try:
        by_name: dict[str, list[int]] = {}
        for seq, name in db.query("SELECT ledger_seq, event FROM audit WHERE subject_key = ? ORDER BY ledger_seq", (key,)):
            by_name.setdefault(name, []).append(int(seq))
        return by_name
    finally:
        db.close()


def test_given_a_paid_resident_when_a_payment_and_a_roster_listing_change_nothing_visible_then_nothing_is_published(
    world: World, people: People, tmp_path: Path
) -> None:
    """Given a resident who enrolls and pays (the payment itself changes nothing a reader sees:
    the coverage decision right after it does), then is listed on a subsidy roster for the year
    already paid (kept for audit; the enrollment stays as it was),
    when the projections publish,
    then coverage.changed and the bucket carry the request and the decision only: no message and
    no put for the payment or for the listing."""
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    person = people.born(date(1971, 1, 1))
    key = world.key(person)
    projections = world.projections(views, publish=True)
    try:
        enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
        pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 9))
        list_on_roster(world.ledger, person, Y, "dibao", at(2021, 11, 1))
        projections.wait(world.ledger.recorder.max_notification_id() or 0)
    finally:
        projections.close()  # drains the outbox
    seqs = events(views, key)
    assert seqs.keys() >= {"EnrollmentRequested", "PaymentReceived", "CoverageDecided", "SubsidyListed"}
    changes, values = published(world.url, key)

    expected = seqs["EnrollmentRequested"] + seqs["CoverageDecided"]
    assert [m["ledger_seq"] for m in changes] == expected
    assert [v["ledger_seq"] for v in values] == expected
    assert [m["status"] for m in changes] == ["awaiting_payment", "enrolled"]


def test_given_a_dead_resident_when_the_death_is_registered_again_then_only_real_changes_are_published(
    world: World, people: People, tmp_path: Path
) -> None:
    """Given a paid resident whose death (April 1) is registered, and registered again with the
    same date by a second message,
    when the projections publish,
    then the bucket gets the date of death (a change of its value, no coverage year's) and the
    end of coverage; coverage.changed gets the end of coverage only; the repeated registration
    publishes nothing."""
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    person = people.born(date(1940, 7, 7))
    key = world.key(person)
    projections = world.projections(views, publish=True)
    try:
        enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
        pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 9))
        death(world.ledger, person, at(Y, 4, 2), date(Y, 4, 1))
        death(world.ledger, person, at(Y, 4, 5), date(Y, 4, 1))
        projections.wait(world.ledger.recorder.max_notification_id() or 0)
    finally:
        projections.close()
    seqs = events(views, key)
    assert len(seqs["DeathRegistered"]) == 2, "the second registration is recorded (a new message)"
    changes, values = published(world.url, key)

    first_death, repeated = seqs["DeathRegistered"]
    assert [m["ledger_seq"] for m in changes] == seqs["EnrollmentRequested"] + seqs["CoverageDecided"] + seqs["CoverageEnded"]
    assert [v["ledger_seq"] for v in values] == sorted(
        seqs["EnrollmentRequested"] + seqs["CoverageDecided"] + [first_death] + seqs["CoverageEnded"]
    )
    assert repeated not in {v["ledger_seq"] for v in values}
    assert values[-1]["date_of_death"] == "2022-04-01"


def test_given_changes_then_each_message_describes_the_day_it_takes_effect_with_the_reply_for_that_day(
    world: World, people: People, tmp_path: Path
) -> None:
    """Given a resident who enrolls and pays in October for next year, and dies on May 1 with the
    death registered that same day,
    when the projections publish,
    then each coverage.changed names its ``effective_date`` — January 1 for the request and the
    decision (coverage starts then), May 2 for the death (the first day without coverage) — and
    carries the coverage.query reply for that day, field for field; there is no ambiguous
    ``date``."""
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    person = people.born(date(1950, 3, 3))
    key = world.key(person)
    projections = world.projections(views, publish=True)
    try:
        enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
        pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 9))
        death(world.ledger, person, at(Y, 5, 1, 18), date(Y, 5, 1))
        projections.wait(world.ledger.recorder.max_notification_id() or 0)
    finally:
        projections.close()
    changes, _ = published(world.url, key)

    requested, decided, ended = (msgspec.convert({k: v for k, v in m.items() if k != "subject"}, CoverageChanged) for m in changes)
    assert "date" not in changes[0]
    assert (requested.effective_date, requested.status, requested.covered) == (date(Y, 1, 1), "awaiting_payment", False)
    assert (decided.effective_date, decided.status, decided.covered) == (date(Y, 1, 1), "enrolled", True)
    assert (ended.effective_date, ended.status, ended.covered, ended.ended_reason) == (date(Y, 5, 2), "ended", False, "death")
    for change in (requested, decided, ended):
        reply = json.loads(answer_query(world.ledger, json.dumps({"id_number": person, "date": change.effective_date.isoformat()}).encode()))
        message = msgspec.to_builtins(change)
        shared = reply.keys() & message.keys() - {"ledger_seq"}
        assert shared >= {"person_key", "covered", "in_waiting_period", "coverage_year", "coverage_start", "coverage_end",
                          "benefit_start", "status", "subsidy_category", "ended_reason"}
        if change is ended:  # the reply of now; the earlier messages were true when sent
            assert {k: message[k] for k in shared} == {k: reply[k] for k in shared}
        assert change.coverage_year == Y and change.district == "340104"


def test_given_a_published_person_then_the_bucket_value_has_the_documented_shape_and_agrees_with_the_changes(
    world: World, people: People, tmp_path: Path
) -> None:
    """Given a paid resident,
    when the projections publish,
    then the bucket's value decodes strictly as ``contract.coverage.CoverageValue`` (no field
    more, none less), its coverage year has the decision's dates and status, and its
    ``ledger_seq`` is the last change's."""
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    person = people.born(date(1960, 6, 6))
    key = world.key(person)
    projections = world.projections(views, publish=True)
    try:
        enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
        pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 9))
        projections.wait(world.ledger.recorder.max_notification_id() or 0)
    finally:
        projections.close()
    changes, values = published(world.url, key)

    raw = {k: v for k, v in values[-1].items() if k != "subject"}
    value = msgspec.json.decode(json.dumps(raw).encode(), type=CoverageValue, strict=True)
    assert set(raw) == set(CoverageValue.__struct_fields__)
    assert set(raw["coverage"][str(Y)]) == set(CoverageYear.__struct_fields__)
    year = value.coverage[str(Y)]
    decided = changes[-1]
    assert (year.status, year.coverage_start, year.coverage_end, year.benefit_start) == (
        "enrolled", date(Y, 1, 1), date(Y, 12, 31), date.fromisoformat(decided["benefit_start"])
    )
    assert value.ledger_seq == decided["ledger_seq"] and value.person_key == key


def test_given_a_corrected_date_of_death_then_the_change_takes_effect_from_the_earlier_date(
    world: World, people: People, tmp_path: Path
) -> None:
    """Given a paid resident whose death was registered for May 1, then corrected to June 1,
    when the projections publish,
    then the correction's message takes effect on May 2 (the first day whose answer it changes:
    covered again) and says so with the reply for May 2."""
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    person = people.born(date(1945, 4, 4))
    key = world.key(person)
    projections = world.projections(views, publish=True)
    try:
        enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
        pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 9))
        death(world.ledger, person, at(Y, 5, 3), date(Y, 5, 1))
        death(world.ledger, person, at(Y, 6, 3), date(Y, 6, 1))
        projections.wait(world.ledger.recorder.max_notification_id() or 0)
    finally:
        projections.close()
    changes, values = published(world.url, key)

    ended, corrected = changes[-2:]
    assert (ended["effective_date"], ended["status"]) == ("2022-05-02", "ended")
    assert (corrected["effective_date"], corrected["status"], corrected["covered"]) == ("2022-05-02", "enrolled", True)
    assert values[-1]["coverage"][str(Y)]["ended_on"] == "2022-06-01" and values[-1]["date_of_death"] == "2022-06-01"


def test_given_any_request_then_the_coverage_query_reply_has_exactly_the_documented_shape(world: World, people: People) -> None:
    """Given a paid resident and a person unknown to the ledger,
    when a hospital asks coverage.query about each,
    then each reply decodes strictly as ``contract.coverage.CoverageReply``, no field more."""
    paid = people.born(date(1966, 6, 6))
    enroll(world.ledger, paid, Y, "resident", at(2021, 10, 8))
    pay(world.ledger, paid, Y, STANDARD_Y, at(2021, 10, 9))
    for person in (paid, people.born(date(1967, 7, 7))):
        data = answer_query(world.ledger, json.dumps({"id_number": person, "date": "2022-05-01"}).encode())
        reply = msgspec.json.decode(data, type=CoverageReply, strict=True)
        assert set(json.loads(data)) == set(CoverageReply.__struct_fields__)
        assert reply.person_key == world.key(person)
