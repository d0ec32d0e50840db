"""The outbox records publication per target (issue 11, part 4): the KV bucket ``coverage`` and
the COVERAGE stream are each decided on their own, and a row is done only when both have it.

Against the session's real nats-server. What the publisher *sends* is observed with a plain
NATS subscription on both targets' subjects (it sees every publish, including ones the stream
would drop as duplicates), what the targets *hold* by reading the stream back.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from datetime import date
from pathlib import Path
from typing import Any

import nats
import pytest

from contract.subjects import CHANGED_PREFIX, COVERAGE_BUCKET, COVERAGE_STREAM
from contract.subjects import LEDGER_SEQ_HEADER as LEDGER_SEQ
from contract.subjects import LEDGER_SOURCE_HEADER as LEDGER_SOURCE
from projections.database import Database
from projections.downstream import CoveragePublisher
from projections.runner import Projections, stream_source
from tests.projections.support import World, world
from tests.scenario.conftest import at
from tests.scenario.steps_status import STANDARD_Y, People, Y, death, enroll, pay


@pytest.fixture
def people(request: pytest.FixtureRequest) -> People:
    return People(random.Random(request.node.nodeid))


def projections(world: World, views: str, *, standby: bool = False) -> Projections:
    return Projections(
        ledger_env=world.env, views_url=views, nats_url=world.url, policy=world.ledger.policy, loader=world.ledger,
        publish=True, rejected_stream=world.rejected_stream, standby=standby,
    )  # fmt: skip


class Tap:
    """Every publish on the bucket's and COVERAGE's subjects about ``keys``: (target, key, ledger_seq)."""

    def __init__(self, url: str, keys: set[str]) -> None:
        self.url = url
        self.keys = keys
        self.seen: list[tuple[str, str, int]] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the tap did not subscribe"

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await nats.connect(self.url)

        async def on_kv(msg: Any) -> None:
            key = msg.subject.rsplit(".", 1)[1]
            if key in self.keys:
                self.seen.append(("kv", key, json.loads(msg.data)["ledger_seq"]))

        async def on_changed(msg: Any) -> None:
            body = json.loads(msg.data)
            if body.get("person_key") in self.keys:
                self.seen.append(("changed", body["person_key"], body["ledger_seq"]))

        await nc.subscribe(f"$KV.{COVERAGE_BUCKET}.>", cb=on_kv)
        await nc.subscribe(f"{CHANGED_PREFIX}.>", cb=on_changed)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.flush()
        await nc.close()

    def stop(self) -> list[tuple[str, str, int]]:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        return self.seen


def coverage_held(url: str, keys: set[str]) -> list[tuple[str, int]]:
    """(person_key, ledger_seq) of every COVERAGE message about ``keys``, in stream order."""

    async def read() -> list[tuple[str, int]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            end = (await js.stream_info(COVERAGE_STREAM)).state.last_seq
            held: list[tuple[str, int]] = []
            sub = await js.subscribe(f"{CHANGED_PREFIX}.>", stream=COVERAGE_STREAM, ordered_consumer=True)
            while end:
                msg = await sub.next_msg(timeout=5)
                body = json.loads(msg.data)
                if body.get("person_key") in keys:
                    held.append((body["person_key"], body["ledger_seq"]))
                if msg.metadata.sequence.stream >= end:
                    break
            await sub.unsubscribe()
            return held
        finally:
            await nc.close()

    return asyncio.run(read())


def outbox(views: str) -> list[tuple[int, str, str]]:
    db = Database.open(views)
    try:
        return [(int(s), k, v) for s, k, v in db.query("SELECT ledger_seq, person_key, kv_value FROM outbox ORDER BY ledger_seq")]
    finally:
        db.close()


def test_a_change_put_in_the_bucket_but_not_on_coverage_before_a_crash_goes_to_coverage_once(
    world: World, people: People, tmp_path: Path
) -> None:
    """Given coverage changes in the outbox whose KV values were put but whose COVERAGE messages
    were not (the publisher crashed between the two),
    when the publisher starts again,
    then each COVERAGE message is sent exactly once, and no KV value is put again."""
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    residents = [people.born(date(1974, 4, 4)), people.born(date(1975, 5, 5))]
    keys = {world.key(r) for r in residents}
    standby = projections(world, views, standby=True)  # keeps the outbox, publishes nothing
    try:
        for i, resident in enumerate(residents):
            enroll(world.ledger, resident, Y, "resident", at(2021, 10, 8 + i))
            pay(world.ledger, resident, Y, STANDARD_Y, at(2021, 10, 9 + i))
        standby.wait(world.ledger.recorder.max_notification_id() or 0)
    finally:
        standby.close()
    rows = outbox(views)
    assert len(rows) >= 4 and {k for _, k, _ in rows} == keys
    source = stream_source(world.url, world.env["NATS_STREAM"])

    async def put_kv_only() -> None:  # what the publisher did before it crashed
        nc = await nats.connect(world.url)
        try:
            js = nc.jetstream()
            for seq, key, value in rows:
                await js.publish(
                    f"$KV.{COVERAGE_BUCKET}.{key}", value.encode(),
                    headers={"Nats-Msg-Id": f"kv/{seq}/{key}", LEDGER_SEQ: str(seq), LEDGER_SOURCE: str(source)},
                )  # fmt: skip
        finally:
            await nc.close()

    asyncio.run(put_kv_only())
    assert coverage_held(world.url, keys) == []

    # When the publisher starts again
    tap = Tap(world.url, keys)
    restarted = projections(world, views)
    try:
        assert restarted.publisher is not None
        restarted.publisher.drain()
    finally:
        restarted.close()
    sent = tap.stop()

    # Then COVERAGE got each change once, and the bucket nothing again
    expected = [(k, s) for s, k, _ in rows]
    assert sorted((k, s) for t, k, s in sent if t == "changed") == sorted(expected)
    assert [x for x in sent if x[0] == "kv"] == []
    assert coverage_held(world.url, keys) == expected
    assert outbox(views) == []


def test_a_standby_taking_over_publication_resends_nothing_the_targets_already_hold(
    world: World, people: People, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a publishing service and a standby whose views (and outbox) were built while the
    service published, more changes than one publishing batch,
    when the service stops and the standby's publisher takes over, and one more change follows,
    then the standby sends nothing the bucket or COVERAGE already held, and the new change once
    to each; COVERAGE holds every change exactly once."""
    monkeypatch.setattr(CoveragePublisher, "BATCH", 2)  # a backlog of several batches
    views_a, views_s = (f"sqlite:///{tmp_path / name}" for name in ("a.sqlite", "s.sqlite"))
    residents = [people.born(date(1976 + i, 6, 6)) for i in range(3)]
    keys = {world.key(r) for r in residents}
    service = projections(world, views_a)
    standby = projections(world, views_s, standby=True)
    try:
        try:
            for i, resident in enumerate(residents):
                enroll(world.ledger, resident, Y, "resident", at(2021, 10, 8 + i))
                pay(world.ledger, resident, Y, STANDARD_Y, at(2021, 10, 9 + i))
            end = world.ledger.recorder.max_notification_id() or 0
            service.wait(end)
            standby.wait(end)
            assert service.publisher is not None
            service.publisher.drain()
        finally:
            service.close()
        backlog = outbox(views_s)
        assert len(backlog) > 2 * CoveragePublisher.BATCH
        before = coverage_held(world.url, keys)
        assert sorted(before) == sorted((k, s) for s, k, _ in backlog)

        # When the standby takes over, and one more change follows
        tap = Tap(world.url, keys)
        assert standby.publisher is not None
        standby.publisher.activate()
        standby.publisher.drain()
        death(world.ledger, residents[0], at(Y, 4, 2), date(Y, 4, 1))
        standby.wait(world.ledger.recorder.max_notification_id() or 0)
        standby.publisher.drain()
    finally:
        standby.close()
    sent = tap.stop()

    # Then only the new changes were sent, once each: the date of death to the bucket alone, the
    # end of coverage to both
    held = coverage_held(world.url, keys)
    new = [change for change in held if change not in set(before)]
    assert len(new) == 1
    ((key, seq),) = new
    assert sorted(sent) == [("changed", key, seq), ("kv", key, seq - 1), ("kv", key, seq)]
    assert len(held) == len(set(held)) == len(before) + 1
