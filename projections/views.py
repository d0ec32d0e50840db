"""The materialised views of the ledger, and their tracking position, in one SQL database.

``LedgerViews`` is the library's ``TrackingRecorder`` for the projection: every row the
projection stages and the position of the last event it processed are written in **one
transaction**, so after a crash the views and their position agree and the runner resumes right
after the last committed event (nothing applied twice, nothing skipped).

Rows are staged in memory and committed in groups: every ``COMMIT_EVENTS`` events, and by a
flusher thread at most ``linger`` seconds after the first uncommitted event. That keeps replay
fast (one transaction per few thousand events) and live changes prompt (tens of milliseconds).

Tables (dates and times as ISO text; see ``SCHEMA``): ``people``, ``coverage`` (one row per
person and coverage year), the ``waiting_periods`` view, ``audit`` (every ledger event with its
source), ``rejections`` (REJECTED messages about a person), ``flags`` (fraud rules, each with
its evidence), ``targets``, ``collectors`` (cash on hand), ``contacts`` and ``operators`` (state
the fraud rules keep), ``outbox`` (changes for downstream, published after commit) and
``tracking``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import (
    InfrastructureFactory,
    ProgrammingError,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)
from eventsourcing.utils import Environment, EnvType

from contract.subjects import REJECTED_STREAM
from projections.database import Database

REJECTED_TRACKING = REJECTED_STREAM
"""The tracking row of the rejections reader (the REJECTED stream's sequence)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracking (
    application_name TEXT PRIMARY KEY,
    notification_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS people (
    person_key TEXT PRIMARY KEY,
    district TEXT, birth_date TEXT, sex TEXT, phone TEXT, household_id TEXT,
    date_of_death TEXT, registered_at TEXT, ledger_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS coverage (
    person_key TEXT NOT NULL, coverage_year INTEGER NOT NULL,
    district TEXT, category TEXT, channel TEXT, status TEXT NOT NULL, requested_on TEXT,
    coverage_start TEXT, coverage_end TEXT, benefit_start TEXT, waiting_months INTEGER,
    retroactive INTEGER NOT NULL, rule TEXT, subsidy_category TEXT,
    contribution_fen BIGINT NOT NULL, subsidy_fen BIGINT NOT NULL, due_fen BIGINT NOT NULL,
    paid_fen BIGINT NOT NULL, refund_fen BIGINT NOT NULL, ended_on TEXT, ended_reason TEXT,
    policy_version TEXT, ledger_seq BIGINT NOT NULL,
    PRIMARY KEY (person_key, coverage_year)
);
CREATE INDEX IF NOT EXISTS coverage_by_district ON coverage (coverage_year, district);
CREATE VIEW IF NOT EXISTS waiting_periods AS
    SELECT person_key, coverage_year, district, category, coverage_start, benefit_start,
           waiting_months, rule AS reason
    FROM coverage
    WHERE status = 'enrolled' AND benefit_start > coverage_start;
CREATE TABLE IF NOT EXISTS audit (
    ledger_seq BIGINT PRIMARY KEY, subject_key TEXT NOT NULL, event TEXT NOT NULL,
    coverage_year INTEGER, effective_at TEXT, recorded_at TEXT NOT NULL, system TEXT, channel TEXT,
    operator_id TEXT, org_id TEXT, msg_id TEXT, policy_version TEXT, detail TEXT, account TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_subject ON audit (subject_key, ledger_seq);
CREATE TABLE IF NOT EXISTS rejections (
    rejected_seq BIGINT PRIMARY KEY, person_key TEXT, reason TEXT NOT NULL, subject TEXT,
    msg_id TEXT, detail TEXT, recorded_at TEXT
);
CREATE INDEX IF NOT EXISTS rejections_by_person ON rejections (person_key, rejected_seq);
CREATE TABLE IF NOT EXISTS flags (
    rule TEXT NOT NULL, subject_key TEXT NOT NULL, position TEXT NOT NULL,
    coverage_year INTEGER, detail TEXT NOT NULL, parameters TEXT NOT NULL, evidence TEXT NOT NULL,
    raised_at TEXT,
    PRIMARY KEY (rule, subject_key, position)
);
CREATE INDEX IF NOT EXISTS flags_by_subject ON flags (subject_key);
CREATE TABLE IF NOT EXISTS targets (
    district TEXT NOT NULL, coverage_year INTEGER NOT NULL, target_count BIGINT NOT NULL,
    PRIMARY KEY (district, coverage_year)
);
CREATE TABLE IF NOT EXISTS collectors (
    collector TEXT PRIMARY KEY, received_fen BIGINT NOT NULL, remitted_fen BIGINT NOT NULL,
    balance_fen BIGINT NOT NULL, oldest_unremitted_at TEXT, last_effective_at TEXT,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    kind TEXT NOT NULL, value TEXT NOT NULL, person_key TEXT NOT NULL, household_id TEXT,
    ledger_seq BIGINT NOT NULL,
    PRIMARY KEY (kind, value, person_key)
);
CREATE TABLE IF NOT EXISTS operators (
    operator_id TEXT PRIMARY KEY, home_district TEXT, recent TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY, value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    ledger_seq BIGINT NOT NULL, person_key TEXT NOT NULL, district TEXT, kv_value TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (ledger_seq, person_key)
);
"""


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


def _insert_new(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(key)}) DO NOTHING"


PEOPLE = ("person_key", "district", "birth_date", "sex", "phone", "household_id", "date_of_death", "registered_at", "ledger_seq")
COVERAGE = (
    "person_key", "coverage_year", "district", "category", "channel", "status", "requested_on",
    "coverage_start", "coverage_end", "benefit_start", "waiting_months", "retroactive", "rule",
    "subsidy_category", "contribution_fen", "subsidy_fen", "due_fen", "paid_fen", "refund_fen",
    "ended_on", "ended_reason", "policy_version", "ledger_seq",
)
ADDED_COLUMNS = (("audit", "account", "TEXT"),)
"""Columns added to a table after views were first created: added to older view databases on start."""

AUDIT = (
    "ledger_seq", "subject_key", "event", "coverage_year", "effective_at", "recorded_at", "system",
    "channel", "operator_id", "org_id", "msg_id", "policy_version", "detail", "account",
)
REJECTIONS = ("rejected_seq", "person_key", "reason", "subject", "msg_id", "detail", "recorded_at")
FLAGS = ("rule", "subject_key", "position", "coverage_year", "detail", "parameters", "evidence", "raised_at")
TARGETS = ("district", "coverage_year", "target_count")
COLLECTORS = ("collector", "received_fen", "remitted_fen", "balance_fen", "oldest_unremitted_at", "last_effective_at", "version")
CONTACTS = ("kind", "value", "person_key", "household_id", "ledger_seq")
OPERATORS = ("operator_id", "home_district", "recent")
OUTBOX = ("ledger_seq", "person_key", "district", "kv_value", "message")

_STATEMENTS = {
    "people": (_upsert("people", PEOPLE, ("person_key",)), True),
    "coverage": (_upsert("coverage", COVERAGE, ("person_key", "coverage_year")), True),
    "audit": (_insert_new("audit", AUDIT, ("ledger_seq",)), False),
    "rejections": (_insert_new("rejections", REJECTIONS, ("rejected_seq",)), False),
    "flags": (_insert_new("flags", FLAGS, ("rule", "subject_key", "position")), False),
    "targets": (_upsert("targets", TARGETS, ("district", "coverage_year")), True),
    "collectors": (_upsert("collectors", COLLECTORS, ("collector",)), True),
    "contacts": (_upsert("contacts", CONTACTS, ("kind", "value", "person_key")), True),
    "operators": (_upsert("operators", OPERATORS, ("operator_id",)), True),
    "outbox": (_insert_new("outbox", OUTBOX, ("ledger_seq", "person_key")), False),
}
_DELETES = {"contacts": "DELETE FROM contacts WHERE kind = ? AND value = ? AND person_key = ?"}
_TRACKING_UPSERT = _upsert("tracking", ("application_name", "notification_id"), ("application_name",))
_KEYS = {"people": 1, "coverage": 2, "targets": 2, "collectors": 1, "contacts": 3, "operators": 1}


class ViewsMismatchError(Exception):
    """The view database belongs to another event stream."""


class LedgerViews(TrackingRecorder):
    """The views and their tracking positions, committed together (see the module docstring)."""

    COMMIT_EVENTS = 2000

    def __init__(self, database: Database, *, linger: float = 0.02, create: bool = True) -> None:
        self.db = database
        self.linger = linger
        if create:
            self.create_tables()
        self._lock = threading.Lock()
        self._committing = threading.Lock()
        self._commit_now = threading.Event()
        self._committed = threading.Condition(threading.Lock())
        self._staged: dict[str, Any] = {}
        self._deleted: dict[str, set[tuple[Any, ...]]] = {}
        self._reset_stage()
        self._pending = threading.local()
        """Per staging thread (the projection's, the rejections reader's): the rows of the event
        it is processing, not committable before that event's ``insert_tracking``."""
        self._positions: dict[str, int] = {}
        self._staged_events = 0
        self._first_staged_at: float | None = None
        self._after_commit: list[Callable[[], None]] = []
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._max_committed: dict[str, int] = {
            name: seq for name, seq in self.db.query("SELECT application_name, notification_id FROM tracking")
        }
        self.fresh = not self._max_committed
        """Nothing was committed before this start: what the projection keeps in memory is then
        everything the database holds, and it need not look anything up there."""
        self._flusher = threading.Thread(target=self._flush_when_lingering, name="views-flusher", daemon=True)
        self._flusher.start()

    def create_tables(self) -> None:
        with self.db.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    sql = statement
                    if self.db.dialect == "postgresql":
                        sql = sql.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW")
                    self.db.execute(sql)
            for table, column, kind in ADDED_COLUMNS:
                if not self._has_column(table, column):
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _has_column(self, table: str, column: str) -> bool:
        if self.db.dialect == "postgresql":
            return bool(self.db.query(
                "SELECT 1 FROM information_schema.columns WHERE table_name = ? AND column_name = ? AND table_schema = current_schema()",
                (table, column),
            ))  # fmt: skip
        return any(row[1] == column for row in self.db.query(f"PRAGMA table_info({table})"))

    # ---- staging (the projection's thread) ------------------------------------------------------

    @staticmethod
    def _empty_stage() -> tuple[dict[str, Any], dict[str, set[tuple[Any, ...]]]]:
        return (
            {table: ({} if keyed else []) for table, (_, keyed) in _STATEMENTS.items()},
            {table: set() for table in _DELETES},
        )

    def _reset_stage(self) -> None:
        self._staged, self._deleted = self._empty_stage()

    def _event_stage(self) -> tuple[dict[str, Any], dict[str, set[tuple[Any, ...]]]]:
        """The calling thread's stage of the event it is processing."""
        pending = getattr(self._pending, "stage", None)
        if pending is None:
            pending = self._pending.stage = self._empty_stage()
        return pending

    def stage(self, table: str, row: tuple[Any, ...]) -> None:
        """Stage one row for ``table`` (the later row for the same key wins).

        The row belongs to the event the calling thread is processing: it becomes committable
        with that event's ``insert_tracking``, never before (a commit in between — the flusher's,
        or the last one at a stop after a failure — cannot write it without its position)."""
        staged, deleted = self._event_stage()
        rows = staged[table]
        if isinstance(rows, dict):
            key = row[: _KEYS[table]]
            rows[key] = row
            if table in deleted:
                deleted[table].discard(key)
        else:
            rows.append(row)

    def unstage(self, table: str, key: tuple[Any, ...]) -> None:
        """Stage the deletion of the row of ``table`` with this key (a staged upsert of it too)."""
        staged, deleted = self._event_stage()
        staged[table].pop(key, None)
        deleted[table].add(key)

    def _take_event_stage_locked(self) -> None:
        """Move the calling thread's event rows into what the next commit writes (``_lock`` held)."""
        pending = getattr(self._pending, "stage", None)
        if pending is None:
            return
        self._pending.stage = None
        staged, deleted = pending
        for table, keys in deleted.items():
            for key in keys:
                self._staged[table].pop(key, None)
                self._deleted[table].add(key)
        for table, rows in staged.items():
            if not rows:
                continue
            if isinstance(rows, dict):
                self._staged[table].update(rows)
                if table in self._deleted:
                    self._deleted[table].difference_update(rows.keys())
            else:
                self._staged[table].extend(rows)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the committing thread) after every commit."""
        self._after_commit.append(callback)

    def insert_tracking(self, tracking: Tracking) -> None:
        """The event at ``tracking`` is fully staged: its position commits with its rows.

        Past ``COMMIT_EVENTS`` staged events the flusher is woken to commit them while the
        projection goes on staging; past four times that, the projection commits itself (so a
        slow database holds the projection back instead of memory filling up)."""
        with self._lock:
            self._raise_if_failed()
            # The event's rows and its position become committable together, atomically.
            self._take_event_stage_locked()
            self._positions[tracking.application_name] = tracking.notification_id
            self._staged_events += 1
            staged = self._staged_events
            if self._first_staged_at is None:
                self._first_staged_at = time.monotonic()
        if staged >= self.COMMIT_EVENTS:
            self._commit_now.set()
            if staged >= 4 * self.COMMIT_EVENTS:
                self.commit()

    def commit(self) -> None:
        """Write everything staged and the positions in one transaction.

        Commits are serialised (``_committing``); staging continues while one is written. Rows
        of an event whose position is not yet inserted are not written — except the calling
        thread's own, when it commits explicitly (rows staged outside any tracked event)."""
        with self._committing:
            with self._lock:
                self._take_event_stage_locked()
                if not self._positions and not any(self._staged.values()) and not any(self._deleted.values()):
                    return
                staged, deleted, positions = self._staged, self._deleted, dict(self._positions)
                self._reset_stage()
                self._positions.clear()
                self._staged_events = 0
                self._first_staged_at = None
            try:
                with self.db.transaction():
                    for table, keys in deleted.items():
                        if keys:
                            self.db.executemany(_DELETES[table], list(keys))
                    for table, (sql, keyed) in _STATEMENTS.items():
                        rows = staged[table]
                        if rows:
                            self.db.executemany(sql, list(rows.values()) if keyed else rows)
                    if positions:
                        self.db.executemany(_TRACKING_UPSERT, list(positions.items()))
            except BaseException as e:
                self._error = e
                raise
            with self._committed:
                self._max_committed.update(positions)
                self._committed.notify_all()
            for callback in self._after_commit:
                callback()

    def _flush_when_lingering(self) -> None:
        while not self._closed.is_set():
            self._commit_now.wait(self.linger / 2)
            first = self._first_staged_at
            due = self._commit_now.is_set() or (first is not None and time.monotonic() - first >= self.linger)
            self._commit_now.clear()
            if due:
                try:
                    self.commit()
                except BaseException:  # noqa: BLE001 - kept in _error, raised to the projection
                    return

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the view database failed to commit: {self._error}") from self._error

    # ---- TrackingRecorder -------------------------------------------------------------------

    def max_tracking_id(self, application_name: str) -> int | None:
        with self._committed:
            return self._max_committed.get(application_name)

    def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: threading.Event | None = None,
    ) -> None:
        """Block until the views have committed ``notification_id`` (woken by each commit)."""
        deadline = time.monotonic() + timeout
        with self._committed:
            while not self.has_tracking_id_locked(application_name, notification_id):
                if interrupt is not None and interrupt.is_set():
                    raise WaitInterruptedError
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"views not at {notification_id} of {application_name} after {timeout} s")
                self._committed.wait(min(remaining, 0.1))

    def has_tracking_id_locked(self, application_name: str, notification_id: int | None) -> bool:
        if notification_id is None:
            return True
        seen = self._max_committed.get(application_name)
        return seen is not None and seen >= notification_id

    def bind(self, source: str) -> None:
        """Tie the views to the stream they are built from (its name and creation time): views
        built from another stream — a new server, a recreated stream — are refused, not mixed."""
        rows = self.db.query("SELECT value FROM meta WHERE name = 'source'")
        if rows and rows[0][0] != source:
            raise ViewsMismatchError(
                f"these views were built from {rows[0][0]}, not from {source}: use another view "
                "database (--views), or replay into a fresh one"
            )
        if not rows:
            with self.db.transaction():
                self.db.execute("INSERT INTO meta (name, value) VALUES ('source', ?)", (source,))

    def close(self) -> None:
        """Commit what is staged, stop the flusher and close the database."""
        if self._closed.is_set():
            return
        try:
            if self._error is None:
                self.commit()
        finally:
            self._closed.set()
            self._flusher.join()
            self.db.close()


class ViewsFactory(InfrastructureFactory[LedgerViews]):
    """Persistence module for the views (``<PROJECTION>_PERSISTENCE_MODULE=projections.views``):
    the runner asks it for the tracking recorder; ``VIEWS_URL`` says which database."""

    VIEWS_URL = "VIEWS_URL"

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        url = self.env.get(self.VIEWS_URL)
        if not url:
            raise OSError(f"view database URL not found in environment with keys: {', '.join(self.env.create_keys(self.VIEWS_URL))}")
        self.url = url

    def tracking_recorder(self, tracking_recorder_class: type[LedgerViews] | None = None) -> LedgerViews:
        return (tracking_recorder_class or LedgerViews)(Database.open(self.url))

    def aggregate_recorder(self, purpose: str = "events") -> Any:
        raise ProgrammingError("the view database records views, not events: use ledger.jetstream for events")

    def application_recorder(self) -> Any:
        raise ProgrammingError("the view database records views, not events: use ledger.jetstream for events")

    def process_recorder(self) -> Any:
        raise ProgrammingError("the view database records views, not events: use ledger.jetstream for events")
