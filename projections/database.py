"""The view database: SQLite (embedded default) or PostgreSQL (production), one SQL for both.

    sqlite:///data/views.sqlite            a file (created with its directory)
    sqlite:///:memory:                     private to one connection (tests)
    postgresql://user@host:5432/db         PostgreSQL; ``?schema=name`` keeps the views in a schema

Both speak the same SQL here: ``?`` placeholders (translated for psycopg), ``INSERT … ON CONFLICT
… DO UPDATE SET col = excluded.col``, dates and times as ISO text (so they compare and sort the
same way in both). One connection, used by one writer at a time behind a lock.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ViewDatabaseError(Exception):
    """The view database cannot be opened or used (a clear reason, never a stack of driver noise)."""


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/file``, ``sqlite:////absolute/file`` or ``sqlite:///:memory:``."""
    path = url.removeprefix("sqlite://")
    return path[1:] if path.startswith("/") else path


class Database(ABC):
    """A connection to the view database, with the few operations the views need."""

    dialect: str
    url: str

    def __init__(self) -> None:
        self.lock = threading.RLock()

    @staticmethod
    def open(url: str) -> Database:
        if url.startswith("sqlite://"):
            return SQLiteDatabase(url)
        if url.startswith(("postgresql://", "postgres://")):
            return PostgresDatabase(url)
        raise ViewDatabaseError(f"unsupported view database {url!r}: use sqlite:///FILE or postgresql://…")

    # -- implemented per dialect --------------------------------------------------------------

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """All statements inside commit together, or none."""

    @abstractmethod
    def close(self) -> None: ...

    # -- shared ---------------------------------------------------------------------------------

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.lock:
            rows, names = self._query_with_names(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    @abstractmethod
    def _query_with_names(self, sql: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], list[str]]: ...


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        path = sqlite_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            # A commit is durable on return (FULL): a tracking position is never ahead of the rows.
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as e:
            raise ViewDatabaseError(f"cannot open SQLite view database {path!r}: {e}") from e

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.lock:
            self.connection.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.lock:
            self.connection.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.connection.execute(sql, params).fetchall()

    def _query_with_names(self, sql: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], list[str]]:
        cursor = self.connection.execute(sql, params)
        return cursor.fetchall(), [d[0] for d in cursor.description or ()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.connection.close()


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - the postgres extra is installed by make
            raise ViewDatabaseError("PostgreSQL views need psycopg: pip install '.[postgres]'") from e
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        schema = (query.pop("schema", [None])[0] or "").lower() or None
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ViewDatabaseError(f"invalid schema name {schema!r}")
        self.url = url
        self.schema = schema
        conninfo = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        try:
            self.connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
            if schema:
                self.connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                self.connection.execute(f'SET search_path TO "{schema}"')
        except psycopg.Error as e:
            raise ViewDatabaseError(f"cannot open PostgreSQL view database {parts.hostname}:{parts.port}: {e}") from e

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.lock:
            self.connection.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        with self.lock, self.connection.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.connection.execute(self._sql(sql), params).fetchall()

    def _query_with_names(self, sql: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], list[str]]:
        cursor = self.connection.execute(self._sql(sql), params)
        return cursor.fetchall(), [d.name for d in cursor.description or ()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.lock, self.connection.transaction():
            yield

    def close(self) -> None:
        with self.lock:
            self.connection.close()
