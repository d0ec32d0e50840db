"""The backends: how each recorder is made, through ``InfrastructureFactory.construct(env)``.

Each backend is a context manager yielding an application recorder on empty storage and
removing that storage afterwards (stream, SQLite file, PostgreSQL schema).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from eventsourcing.persistence import ApplicationRecorder, InfrastructureFactory

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"
POSTGRES_DATABASES = ("test", "postgres")


def unique_token() -> str:
    return uuid.uuid4().hex[:10]


@contextlib.contextmanager
def jetstream_recorder(url: str) -> Iterator[ApplicationRecorder]:
    """This store, on a fresh stream and subject prefix of the server at ``url``."""
    token = unique_token()
    stream = f"BENCH{token}".upper()
    factory = InfrastructureFactory.construct(
        {
            "PERSISTENCE_MODULE": "ledger.jetstream",
            "NATS_URL": url,
            "NATS_STREAM": stream,
            "NATS_SUBJECT_PREFIX": f"bench{token}",
        }
    )
    try:
        yield factory.application_recorder()
    finally:
        with contextlib.suppress(Exception):  # the stream denies purge, not deletion
            client = factory.datastore.client  # type: ignore[attr-defined]
            client.run(client.api(f"$JS.API.STREAM.DELETE.{stream}"))
        factory.close()


@contextlib.contextmanager
def sqlite_recorder(directory: Path) -> Iterator[ApplicationRecorder]:
    """The library's SQLite recorder on a new database file in ``directory``."""
    path = directory / f"bench-{unique_token()}.sqlite"
    factory = InfrastructureFactory.construct(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )
    try:
        yield factory.application_recorder()
    finally:
        factory.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def find_postgres() -> tuple[str | None, str]:
    """The first database that answers at 127.0.0.1:5432 as ``postgres`` (trust), or None and why."""
    try:
        import psycopg
    except ImportError as e:
        return None, f"psycopg is not installed ({e})"
    errors = []
    for dbname in POSTGRES_DATABASES:
        try:
            with psycopg.connect(
                host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, connect_timeout=3
            ) as conn:
                conn.execute("SELECT 1")
            return dbname, ""
        except Exception as e:  # noqa: BLE001 - any failure means: skip PostgreSQL, say why
            errors.append(f"{dbname}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    return None, f"no PostgreSQL answered at {POSTGRES_HOST}:{POSTGRES_PORT} as {POSTGRES_USER} ({'; '.join(errors)})"


def postgres_settings(dbname: str) -> dict[str, str]:
    """``fsync``, ``synchronous_commit`` and the server version, to print beside the figures."""
    import psycopg

    with psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname) as conn:
        return {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit")
        }


@contextlib.contextmanager
def postgres_recorder(dbname: str) -> Iterator[ApplicationRecorder]:
    """The library's PostgreSQL recorder in a new schema of ``dbname`` (dropped afterwards)."""
    import psycopg

    schema = f"bench_{unique_token()}"
    with psycopg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, autocommit=True
    ) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    factory = InfrastructureFactory.construct(
        {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": POSTGRES_HOST,
            "POSTGRES_PORT": str(POSTGRES_PORT),
            "POSTGRES_USER": POSTGRES_USER,
            "POSTGRES_PASSWORD": "",
            "POSTGRES_SCHEMA": schema,
        }
    )
    try:
        yield factory.application_recorder()
    finally:
        factory.close()
        with psycopg.connect(
            host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, autocommit=True
        ) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
