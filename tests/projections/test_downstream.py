"""Downstream (contract.md): the KV bucket ``coverage``, ``coverage.changed.<district>`` on the
COVERAGE stream, and ``coverage.query`` with ``as_of`` across a correction.

A hospital's settlement service watches the bucket or subscribes to the stream and never polls:
it must see each change once, in ledger order, even when the publisher restarts.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import date, datetime
from typing import Any

import nats
import pytest

from contract.subjects import CHANGED_PREFIX, COVERAGE_BUCKET, COVERAGE_STREAM
from projections.queries import answer_query
from tests.projections.support import World, world
from tests.scenario.conftest import at
from tests.scenario.steps_status import STANDARD_Y, People, Y, death, enroll, now_between_facts, pay

HOME = "340104"


@pytest.fixture
def people(request: pytest.FixtureRequest) -> People:
    return People(random.Random(request.node.nodeid))


async def _watch_and_read(url: str, keys: set[str], expected: int, timeout: float = 20.0) -> tuple[list[tuple[str, int]], list[dict[str, Any]]]:
    """Every KV update of ``keys`` (key, ledger_seq) from a watcher, and every COVERAGE message about them."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await js.key_value(COVERAGE_BUCKET)
        seen: list[tuple[str, int]] = []
        watcher = await kv.watchall(include_history=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(seen) < expected and asyncio.get_running_loop().time() < deadline:
            try:
                entry = await watcher.updates(timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            if entry is None or entry.value is None or entry.key not in keys:
                continue
            seen.append((entry.key, json.loads(entry.value)["ledger_seq"]))
        await watcher.stop()
        messages = []
        sub = await js.subscribe(f"{CHANGED_PREFIX}.>", stream=COVERAGE_STREAM, ordered_consumer=True)
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                break
            body = json.loads(msg.data)
            if body["person_key"] in keys:
                messages.append({**body, "subject": msg.subject})
        await sub.unsubscribe()
        return seen, messages
    finally:
        await nc.close()


def test_watchers_see_each_coverage_change_once_in_ledger_order_across_a_publisher_restart(world: World, people: People, tmp_path: Any) -> None:
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    # Given two residents who enroll and pay, with the projections publishing downstream
    first, second = people.born(date(1971, 1, 1)), people.born(date(1972, 2, 2))
    projections = world.projections(views, publish=True)
    enroll(world.ledger, first, Y, "resident", at(2021, 10, 8))
    pay(world.ledger, first, Y, STANDARD_Y, at(2021, 10, 9))
    projections.wait(world.ledger.recorder.max_notification_id() or 0)
    # When the service stops and starts again, and more changes follow (a death)
    projections.close()
    projections = world.projections(views, publish=True)
    enroll(world.ledger, second, Y, "resident", at(2021, 10, 10))
    death(world.ledger, first, at(Y, 4, 2), date(Y, 4, 1))
    projections.wait(world.ledger.recorder.max_notification_id() or 0)
    projections.close()  # drains the outbox
    keys = {world.key(first), world.key(second)}
    # first: requested, decided (the payment before it shows nothing new), the date of death (the
    # bucket's value only: no coverage year changed), ended by death; second: requested
    expected_puts, expected_changes = 4 + 1, 3 + 1
    seen, messages = asyncio.run(_watch_and_read(world.url, keys, expected_puts))

    # Then the KV watcher saw each change exactly once, in ledger order per person
    assert len(seen) == expected_puts
    assert len(set(seen)) == len(seen), "no change seen twice"
    for key in keys:
        seqs = [seq for k, seq in seen if k == key]
        assert seqs == sorted(seqs)
    # And the COVERAGE stream has the changes of a coverage year once each (all puts but the
    # date of death's), on the district's subject, in the contract's reply shape
    assert len(messages) == expected_changes
    assert set((m["person_key"], m["ledger_seq"]) for m in messages) < set(seen)
    (death_put,) = set(seen) - {(m["person_key"], m["ledger_seq"]) for m in messages}
    assert death_put[0] == world.key(first)
    assert all(m["subject"] == f"{CHANGED_PREFIX}.{HOME}" for m in messages)
    last = max((m for m in messages if m["person_key"] == world.key(first)), key=lambda m: m["ledger_seq"])
    assert (last["status"], last["ended_reason"], last["covered"]) == ("ended", "death", False)
    decided = [m for m in messages if m["person_key"] == world.key(first) and m["status"] == "enrolled"]
    assert decided and decided[-1]["covered"] is True and decided[-1]["coverage_start"] == "2022-01-01"
    # And the bucket holds the latest coverage per coverage year for a plain get
    async def get() -> dict[str, Any]:
        nc = await nats.connect(world.url)
        try:
            entry = await (await nc.jetstream().key_value(COVERAGE_BUCKET)).get(world.key(first))
            return json.loads(entry.value)
        finally:
            await nc.close()

    value = asyncio.run(get())
    assert value["coverage"][str(Y)]["status"] == "ended" and value["date_of_death"] == "2022-04-01"


def test_as_of_answers_before_and_after_a_corrected_date_of_death(world: World, people: People) -> None:
    # Given a paid resident whose death was registered for May 1, then corrected to Jun 1
    person = people.born(date(1940, 7, 7))
    enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
    pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 8))
    death(world.ledger, person, at(Y, 5, 3), date(Y, 5, 1))
    before_correction = now_between_facts()
    death(world.ledger, person, at(Y, 6, 3), date(Y, 6, 1))

    def ask(as_of: datetime | None) -> dict[str, Any]:
        request = {"id_number": person, "date": "2022-05-15"}
        if as_of is not None:
            request["as_of"] = as_of.isoformat()
        return json.loads(answer_query(world.ledger, json.dumps(request).encode()))

    # When a hospital asks about May 15 as the ledger knew it before the correction, and now
    then, now = ask(before_correction), ask(None)
    # Then before the correction the person was not covered on May 15 (dead since May 1) …
    assert (then["status"], then["covered"], then["ended_reason"]) == ("ended", False, "death")
    assert then["as_of"] is not None
    # … and after it, covered on May 15 (alive until Jun 1)
    assert (now["status"], now["covered"]) == ("enrolled", True)


def test_changes_published_but_not_yet_cleared_before_a_crash_are_not_seen_twice(world: World, people: People, tmp_path: Any) -> None:
    from projections.database import Database

    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    # Given a change that was published …
    person = people.born(date(1973, 3, 3))
    key = world.key(person)
    projections = world.projections(views, publish=True)
    enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
    projections.wait(world.ledger.recorder.max_notification_id() or 0)
    projections.close()
    _, (message,) = asyncio.run(_watch_and_read(world.url, {key}, 1))

    async def kv_value() -> str:
        nc = await nats.connect(world.url)
        try:
            return (await (await nc.jetstream().key_value(COVERAGE_BUCKET)).get(key)).value.decode()
        finally:
            await nc.close()

    # … and a crash before its outbox row was cleared (the row put back as the projection wrote it)
    reply = json.dumps({k: v for k, v in message.items() if k != "subject"})
    db = Database.open(views)
    with db.transaction():
        db.execute(
            "INSERT INTO outbox (ledger_seq, person_key, district, kv_value, message) VALUES (?, ?, ?, ?, ?)",
            (message["ledger_seq"], key, HOME, asyncio.run(kv_value()), reply),
        )
    db.close()
    # When the service starts again and publishes its outbox
    projections = world.projections(views, publish=True)
    assert projections.publisher is not None
    projections.publisher.drain()
    republished = projections.publisher.published
    projections.close()
    # Then the row was processed, but watchers and subscribers saw the change once
    assert republished == 1
    seen, messages = asyncio.run(_watch_and_read(world.url, {key}, 2, timeout=3))
    assert len(seen) == 1 and len(messages) == 1


def test_coverage_questions_are_answered_from_the_projection_as_the_event_store_would(
    world: World, people: People, tmp_path: Any
) -> None:
    from projections.queries import CoverageAnswerer

    # Given a paid resident, one awaiting payment, and live projections that applied both
    paid, waiting = people.born(date(1971, 1, 1)), people.born(date(1972, 2, 2))
    enroll(world.ledger, paid, Y, "resident", at(2021, 10, 8))
    pay(world.ledger, paid, Y, STANDARD_Y, at(2021, 10, 9))
    enroll(world.ledger, waiting, Y, "resident", at(2021, 10, 10))
    projections = world.projections(f"sqlite:///{tmp_path / 'views.sqlite'}")
    try:
        end = world.ledger.recorder.max_notification_id() or 0
        projections.wait(end)
        from_memory = CoverageAnswerer(world.ledger, projections.projection)
        from_store = CoverageAnswerer(world.ledger)
        for person in (paid, waiting, people.born(date(1973, 3, 3))):
            request = json.dumps({"id_number": person, "date": "2022-05-01"}).encode()
            quick = from_memory.quick(request)
            # When a hospital asks about each of them, then the projection answers the people it
            # holds without reading the store, with the answer the event store gives
            memory, store = json.loads(from_memory.reply(request)), json.loads(from_store.reply(request))
            assert {k: v for k, v in memory.items() if k != "ledger_seq"} == {k: v for k, v in store.items() if k != "ledger_seq"}
            assert memory["ledger_seq"] == end
            if person in (paid, waiting):
                assert quick is not None
            else:
                assert quick is None, "an unknown person is looked up in the store"
                assert memory["status"] == "not_enrolled"
        assert json.loads(from_memory.reply(json.dumps({"id_number": paid, "date": "2022-05-01"}).encode()))["covered"] is True
    finally:
        projections.close()
