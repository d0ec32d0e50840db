"""After a nats-server restart the views follow LEDGER and REJECTED again at once (issue 11,
part 4): not after the ordered consumers have missed enough heartbeats to reset themselves
(1–17 s measured before, ~20 s on a clean restart here)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ledger.jetstream.server import EmbeddedNatsServer
from tests.projections.support import World, world
from tests.scenario.conftest import at
from tests.scenario.steps_status import People, Y, enroll, register

T = TypeVar("T")

CATCH_UP_TIMEOUT = 5.0
"""Generous for views that resubscribe on the reconnect (about 0.3 s measured), short of the
heartbeat-driven recovery they had before."""


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    """A nats-server of this test's own, restarted by it (the session's one is shared)."""
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def people(request: pytest.FixtureRequest) -> People:
    return People(random.Random(request.node.nodeid))


def retried(action: Callable[[], T], timeout: float = 30.0) -> T:
    """``action`` as soon as the restarted server takes it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_after_a_server_restart_the_views_catch_up_with_new_events_and_rejections_at_once(
    world: World, nats_server: EmbeddedNatsServer, people: People, tmp_path: Path, record_property: Any
) -> None:
    """Given live projections that have caught up with LEDGER and REJECTED,
    when the nats-server restarts (same port, same store) and an event and a rejection follow,
    then the views commit both within a few seconds (both consumers resubscribed on the
    reconnect), each once."""
    views = f"sqlite:///{tmp_path / 'views.sqlite'}"
    first, second = people.born(date(1980, 1, 1)), people.born(date(1981, 2, 2))
    register(world.ledger, first, at(2021, 9, 1))
    enroll(world.ledger, first, Y, "resident", at(2021, 10, 8))
    world.reject(first, "no_enrollment", "upstream.payment.received", "pay-before-restart")
    projections = world.caught_up(views)
    try:
        # When the server restarts, and an event and a rejection follow
        nats_server.stop()
        nats_server.start()
        back = time.monotonic()
        retried(lambda: register(world.ledger, second, at(2021, 9, 2)))
        rejected = retried(lambda: world.reject(second, "no_enrollment", "upstream.payment.received", "pay-after-restart"))
        ledger_end = world.ledger.recorder.max_notification_id() or 0
        sent = time.monotonic()
        projections.wait(ledger_end, rejected, timeout=CATCH_UP_TIMEOUT)
        done = time.monotonic()
        record_property("views_caught_up_after_server_back_s", round(done - back, 3))
        record_property("views_caught_up_after_last_write_s", round(done - sent, 3))
        print(f"\nviews caught up {done - back:.3f} s after the server was back ({done - sent:.3f} s after the last write)")
        projections.check()
        db = projections.view.db
        assert db.query("SELECT COUNT(*) FROM people WHERE person_key = ?", (world.key(second),))[0][0] == 1
        assert db.query("SELECT COUNT(*) FROM rejections WHERE msg_id = 'pay-after-restart'")[0][0] == 1
        assert db.query("SELECT COUNT(*) FROM rejections")[0][0] == 2
    finally:
        projections.close()
