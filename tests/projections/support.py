"""Fixtures for the view tests: a ledger on a fresh stream, a REJECTED stream of its own, and a
view database on SQLite and on PostgreSQL (the same test cases run on both)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contract.rejection import Rejection, encode_rejection
from ledger.application import PERSON_KEY_SECRET, Ledger
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.jetstream.datastore import StreamSpec
from ledger.jetstream.server import EmbeddedNatsServer
from projections.database import Database
from projections.runner import Projections, replay
from tests.conftest import unique_names

SECRET = "projection-tests-person-key-secret"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when a server answers."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
    except psycopg.Error as e:
        return f"no PostgreSQL at 127.0.0.1:5432 as postgres/test ({str(e).strip()[:120]})"
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def views_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh view database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'views.sqlite'}"
        return
    reason = postgres_reason()
    if reason:
        pytest.skip(f"PostgreSQL view tests skipped: {reason}")
    schema = f"views_{uuid.uuid4().hex[:12]}"
    yield f"{POSTGRES}?schema={schema}"
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def another_url(url: str, tmp_path: Path, name: str) -> str:
    """A second, fresh database of the same kind as ``url`` (for a second replay)."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / (name + '.sqlite')}"
    return url.rsplit("?schema=", 1)[0] + f"?schema={url.rsplit('=', 1)[1]}_{name}"


def drop_schema(url: str) -> None:
    if url.startswith("postgresql") and "?schema=" in url:
        import psycopg

        schema = url.rsplit("=", 1)[1]
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class World:
    """A ledger on a fresh stream of the session's nats-server, with a REJECTED stream of its own."""

    server: EmbeddedNatsServer
    ledger: Ledger
    env: dict[str, str]
    rejected_stream: str
    rejected_prefix: str

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, id_number: str) -> str:
        return PersonKeyer(SECRET.encode()).key_of(ResidentId.parse(id_number))

    def reject(self, id_number: str, reason: str, subject: str, msg_id: str, detail: str = "refused") -> int:
        """Store a rejection as the ingestion does (``ledger.rejected.<reason>``); its sequence."""
        rejection = Rejection.of(
            msg_id=msg_id, subject=subject, reason=reason, detail=detail,
            data=json.dumps({"msg_id": msg_id, "id_number": id_number}).encode(),
            upstream_seq=abs(hash(msg_id)) % 10**9, person_key=self.key(id_number),
        )  # fmt: skip

        async def publish() -> int:
            import nats

            nc = await nats.connect(self.url)
            try:
                ack = await nc.jetstream().publish(
                    f"{self.rejected_prefix}.{reason}", encode_rejection(rejection), headers=rejection.headers()
                )
                return int(ack.seq)
            finally:
                await nc.close()

        return asyncio.run(publish())

    def rejected_end(self) -> int:
        from projections.runner import stream_last_seq

        return stream_last_seq(self.url, self.rejected_stream)

    def projections(self, views_url: str, *, publish: bool = False) -> Projections:
        return Projections(
            ledger_env=self.env, views_url=views_url, nats_url=self.url, policy=self.ledger.policy,
            loader=self.ledger, publish=publish, rejected_stream=self.rejected_stream,
        )  # fmt: skip

    def caught_up(self, views_url: str, *, publish: bool = False) -> Projections:
        """Projections that have committed everything recorded so far (the caller closes them)."""
        projections = self.projections(views_url, publish=publish)
        projections.wait(self.ledger.recorder.max_notification_id() or 0, self.rejected_end(), timeout=30)
        return projections

    def replay(self, views_url: str, **options: Any) -> Any:
        return replay(
            ledger_env=self.env, views_url=views_url, nats_url=self.url, policy=self.ledger.policy,
            loader=self.ledger, rejected_stream=self.rejected_stream, **options,
        )  # fmt: skip


@pytest.fixture
def world(nats_server: EmbeddedNatsServer) -> Iterator[World]:
    stream, prefix = unique_names()
    env = {
        "PERSISTENCE_MODULE": "ledger.jetstream",
        "NATS_URL": nats_server.url,
        "NATS_STREAM": stream,
        "NATS_SUBJECT_PREFIX": prefix,
        PERSON_KEY_SECRET: SECRET,
    }
    ledger = Ledger(env, keyer=PersonKeyer(SECRET.encode()))
    rejected_stream, rejected_prefix = f"{stream}_REJECTED", f"{prefix}.rejected"

    async def create() -> None:
        import nats

        nc = await nats.connect(nats_server.url)
        try:
            async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
                reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
                return json.loads(reply.data)

            await StreamSpec(name=rejected_stream, subjects=(f"{rejected_prefix}.>",)).ensure(api)
        finally:
            await nc.close()

    asyncio.run(create())
    yield World(nats_server, ledger, env, rejected_stream, rejected_prefix)
    ledger.close()


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every view table, sorted (to compare two databases)."""
    db = Database.open(url)
    try:
        tables = ("people", "coverage", "audit", "rejections", "flags", "targets", "collectors", "contacts", "operators", "tracking")
        return {t: sorted(db.query(f"SELECT * FROM {t}"), key=repr) for t in tables}
    finally:
        db.close()
