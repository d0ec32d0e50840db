"""A ``Ledger`` on each store: the library's in-memory one and JetStream on a real nats-server.

Every scenario test runs on both (``ledger`` is parametrised), so the policy is checked the same
way whatever holds the events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import pytest

from ledger.application import Actor, Ledger
from ledger.domain.identity import PersonKeyer, generate_id_number
from ledger.jetstream.server import EmbeddedNatsServer
from tests.conftest import unique_names

CST = timezone(timedelta(hours=8))
"""China Standard Time: upstream times carry +08:00."""

SECRET = b"scenario-tests-person-key-secret"
WECHAT = Actor(system="wechat", channel="wechat")


@pytest.fixture(params=["memory", "jetstream"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    env: dict[str, str] = {}
    if request.param == "jetstream":
        server: EmbeddedNatsServer = request.getfixturevalue("nats_server")
        stream, prefix = unique_names()
        env = {
            "PERSISTENCE_MODULE": "ledger.jetstream",
            "NATS_URL": server.url,
            "NATS_STREAM": stream,
            "NATS_SUBJECT_PREFIX": prefix,
        }
    app = Ledger(env, keyer=PersonKeyer(SECRET))
    yield app
    app.close()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A generator seeded from the test's name, so failures repeat (the seed is the name)."""
    return random.Random(request.node.nodeid)


def at(year: int, month: int, day: int, hour: int = 10) -> datetime:
    """A time in Hefei (+08:00)."""
    return datetime(year, month, day, hour, tzinfo=CST)


def resident(rng: random.Random, born: date, district: str = "340104", sex: str | None = None) -> str:
    """A synthetic, valid resident ID number (never a real one)."""
    return generate_id_number(rng, division_code=district, birth_date=born, sex=sex)  # type: ignore[arg-type]
