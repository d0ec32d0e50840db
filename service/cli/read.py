"""The questions: coverage, audit, report, replay, verify."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.subjects import LEDGER_FOLLOWER
from service.bootstrap import (
    SERVE_URL_FILE,
    _redacted,
    build_ledger,
    person_key_secret,
)
from service.cli.output import _emit, emit_document, say
from service.settings import Settings, default_views_url

if TYPE_CHECKING:
    from ledger.application import Ledger
    from ledger.jetstream.datastore import JetStreamDatastore

log = logging.getLogger("ledger")


class _Store:
    """The ledger's NATS server for a one-off command: ``--nats-url``, else the running
    ``ledger serve`` of the data directory, else its embedded server's data (started here, on a
    free port, and stopped afterwards)."""

    def __init__(self, args: argparse.Namespace, *, ledger: bool = True) -> None:
        """``ledger=False``: only the streams (no person-key secret needed, nothing created)."""
        from ledger.jetstream import tls
        from ledger.jetstream.server import EmbeddedNatsServer

        self.server = None
        data_dir: Path = args.data_dir
        url = args.nats_url
        running = data_dir / SERVE_URL_FILE
        if not url and running.exists():
            url = running.read_text().strip()
        if not url:
            if not (data_dir / "nats").is_dir():
                raise SystemExit(
                    f"no ledger in {data_dir}: run `ledger serve` or `make demo` first, or give --nats-url"
                )
            self.server = EmbeddedNatsServer(data_dir / "nats", own_session=True)
            url = self.server.url
            tls.use(tls.NatsTls())  # it listens on loopback without TLS: the TLS settings are for NATS_URL
        self.url = url
        try:
            if self.server is not None:
                self.server.start()
            self.ledger = (
                build_ledger(url, data_dir, args.policy, embedded=self.server is not None or running.exists(), cache=False)
                if ledger
                else None
            )
            self.datastore = _datastore_of(self.ledger) if self.ledger is not None else _datastore(url)
        except BaseException:  # a bad policy, secret or server: the embedded server started here stops
            if self.server is not None:
                self.server.stop()
            raise

    @property
    def opened(self) -> Ledger:
        """The ledger of a store opened with ``ledger=True``."""
        if self.ledger is None:
            raise RuntimeError("the store was opened without the ledger")
        return self.ledger

    def close(self) -> None:
        try:
            if self.ledger is not None:
                self.ledger.close()
            else:
                self.datastore.client.close()
        finally:
            if self.server is not None:
                self.server.stop()


ONE_OFF_CONNECT_SECONDS = 2.0
"""How long a one-off command (status, parked) waits for a server before saying it cannot reach it."""


def _datastore_of(ledger: Ledger) -> JetStreamDatastore:
    """The streams of the ledger's event store (its recorder is the JetStream one)."""
    from ledger.jetstream.recorders import JetStreamApplicationRecorder

    recorder = ledger.recorder
    if not isinstance(recorder, JetStreamApplicationRecorder):
        raise TypeError(f"the ledger's recorder is a {type(recorder).__name__}, not the JetStream recorder")
    return recorder.datastore


def _datastore(url: str) -> JetStreamDatastore:
    """The event store's streams at ``url``, as the ledger names them (NATS_STREAM,
    NATS_SUBJECT_PREFIX), without opening the application."""
    from ledger.jetstream.client import NatsClient
    from ledger.jetstream.datastore import JetStreamDatastore

    settings = Settings.read()
    return JetStreamDatastore(
        # NATS_API_PREFIX: an auditor in an account of its own reads through its imports ($JS.ledger.API).
        NatsClient(url, connect_timeout=ONE_OFF_CONNECT_SECONDS, api_prefix=settings.api_prefix),
        stream=settings.ledger_stream, subject_prefix=settings.ledger_prefix, follower=LEDGER_FOLLOWER,
    )  # fmt: skip


def _coverage(args: argparse.Namespace) -> int:
    from datetime import datetime

    import msgspec

    from ledger.domain.refusals import Refusal
    from ledger.domain.source import CHINA_STANDARD_TIME

    day = args.date or datetime.now(CHINA_STANDARD_TIME).date()
    store = _Store(args)
    try:
        try:
            answer = store.opened.coverage(args.id_number, day, as_of=args.as_of)
        except Refusal as refusal:
            raise SystemExit(f"{refusal.reason}: {refusal.detail}") from None
        reply = msgspec.to_builtins(answer)
        reply["ledger_seq"] = store.opened.recorder.max_notification_id()
    finally:
        store.close()
    _emit([reply], args.format, title=f"coverage on {day}", vertical=True)
    return 0


def _views_db(args: argparse.Namespace) -> Any:
    from projections.database import Database, ViewDatabaseError, sqlite_path

    url = args.views or default_views_url(args.data_dir)
    if url.startswith("sqlite:") and not Path(sqlite_path(url)).exists():
        raise SystemExit(f"no views at {url}: run `ledger serve` (or `make demo`) first, or give --views")
    try:
        return Database.open(url)
    except ViewDatabaseError as e:
        raise SystemExit(str(e)) from None


def _person_key(args: argparse.Namespace) -> str:
    from datetime import datetime

    from ledger.domain.identity import PersonKeyer, ResidentId
    from ledger.domain.refusals import Refusal
    from ledger.domain.source import CHINA_STANDARD_TIME

    secret = person_key_secret(Settings.read(data_dir=args.data_dir), embedded=(args.data_dir / "person-key.secret").exists())
    try:
        resident = ResidentId.parse(args.id_number, today=datetime.now(CHINA_STANDARD_TIME).date())
    except Refusal as refusal:
        raise SystemExit(f"{refusal.reason}: {refusal.detail}") from None
    return PersonKeyer(secret.encode()).key_of(resident)


def _audit(args: argparse.Namespace) -> int:
    from projections import reports

    db = _views_db(args)  # first: no views, no ledger here (whatever the ID number)
    try:
        key = _person_key(args)
    except BaseException:
        db.close()
        raise
    try:
        person = reports.person_of(db, key)
        coverage = reports.coverage_of(db, key)
        trail = reports.audit_trail(db, key)
        flags = reports.flags_of(db, key)
    finally:
        db.close()
    if args.format != "table":
        if args.format == "json":
            emit_document({"person_key": key, "person": person, "coverage": coverage, "timeline": trail, "flags": flags})
        else:
            _emit(trail, "csv")
        return 0
    if person is None and not trail:
        say(f"person {key[:12]}… is not in the views")
        return 0
    _emit([person] if person else [], "table", title=f"person {key[:12]}…", vertical=True)
    _emit(coverage, "table", title="coverage per year", columns=(
        "coverage_year", "status", "category", "channel", "coverage_start", "coverage_end", "benefit_start",
        "waiting_months", "retroactive", "subsidy_category", "paid_fen", "ended_reason"))
    _emit(trail, "table", title="timeline", columns=(
        "recorded_at", "effective_at", "what", "coverage_year", "actor", "msg_id", "policy_version", "position", "flags"))
    _emit(flags, "table", title="flags", columns=("rule", "position", "detail", "evidence", "parameters"))
    return 0


def _report(args: argparse.Namespace) -> int:
    from datetime import datetime

    from ledger.domain.policy import DEFAULT_POLICY, load_policy
    from ledger.domain.refusals import UnknownDistrict
    from ledger.domain.source import CHINA_STANDARD_TIME
    from projections import reports

    policy = load_policy(args.policy or DEFAULT_POLICY)
    if args.district:
        try:
            policy.district_name(args.district)
        except UnknownDistrict as e:
            raise SystemExit(f"unknown district: {e}; one of {', '.join(policy.districts)}") from None
    on = args.on or datetime.now(CHINA_STANDARD_TIME).date()
    db = _views_db(args)
    try:
        years = reports.years_in_views(db)
        year = args.year or (years[-1] if years else on.year)
        sections: dict[str, list[dict[str, Any]]] = {}
        wanted = args.section
        if args.format == "csv" and wanted == "all":
            wanted = "districts"
        if wanted in ("all", "districts"):
            sections["districts"] = reports.district_report(db, policy, year, args.district)
        if wanted in ("all", "waiting"):
            sections["waiting"] = reports.waiting_periods(db, on=on, district=args.district)
        if wanted in ("all", "cash"):
            sections["cash"] = reports.cash_on_hand(db, policy, on)
        if wanted in ("all", "not-renewed"):
            sections["not-renewed"] = reports.not_renewed(db, year, args.district)
        if wanted in ("all", "flags"):
            sections["flags"] = [{"rule": r, "count": c} for r, c in reports.flag_counts(db).items()]
        if wanted in ("all", "rejections"):
            sections["rejections"] = [{"reason": r, "count": c} for r, c in reports.rejection_counts(db).items()]
    finally:
        db.close()
    if args.format == "json":
        emit_document({"coverage_year": year, "on": on.isoformat(), **sections})
        return 0
    if args.format == "csv":
        (rows,) = sections.values()
        _emit(rows, "csv")
        return 0
    titles = {
        "districts": f"coverage year {year}: enrollment and funds per district (yuan)",
        "waiting": f"in a waiting period on {on}",
        "cash": f"cash on hand on {on} (limit {policy.cash_remit_days} days / {policy.cash_remit_fen // 100:,} yuan)",
        "not-renewed": f"enrolled for {year - 1}, not yet for {year} (check-up list)",
        "flags": "fraud flags by rule",
        "rejections": "rejections by reason",
    }
    for name, rows in sections.items():
        columns: tuple[str, ...] | None = None
        if name == "cash":
            rows = [_in_yuan(r) for r in rows]
            columns = ("collector", "balance", "received", "remitted", "oldest_unremitted_at", "days_held", "overdue", "over_limit")
        if name == "districts":
            rows = [_in_yuan(r) for r in rows]
            columns = ("district", "district_name", "target", "enrolled", "rate_percent", "goal_percent",
                       "individual", "assistance", "fiscal", "total", "assistance_transfer_due")
        if name in ("waiting", "not-renewed") and len(rows) > 20:
            say(f"{titles[name]}: {len(rows)} people (the first 20 below; --format json or csv for all)")
            rows = rows[:20]
        _emit(rows, "table", title=titles[name], columns=columns)
    return 0


def _in_yuan(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key.endswith("_fen"):
            out[key.removesuffix("_fen")] = None if value is None else f"{value / 100:,.2f}"
        else:
            out[key] = value
    return out


def _replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from projections.runner import replay
    from service.cli.output import console

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    views_url = args.views or f"sqlite:///{(args.data_dir / f'replay-{stamp}.sqlite').resolve()}"
    store = _Store(args)
    try:
        with Progress(
            TextColumn("replaying LEDGER"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
            TimeRemainingColumn(), transient=False, redirect_stdout=False, console=console(stderr=True),
        ) as bar:
            task = bar.add_task("replay", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            ledger = store.opened
            result = replay(
                ledger_env=dict(ledger.env), views_url=views_url, nats_url=store.url, policy=ledger.policy,
                loader=ledger, until=args.until, progress=progress,
            )
    finally:
        store.close()
    if args.format != "table":
        row = {"ledger_events": result.ledger_events, "rejections": result.rejections, "seconds": round(result.seconds, 3),
               "events_per_second": round(result.rate, 1), "views": _redacted(result.views_url)}  # fmt: skip
        _emit([row], args.format, vertical=True)
        return 0
    say(
        f"replayed {result.ledger_events:,} ledger events and {result.rejections:,} rejections "
        f"in {result.seconds:.1f} s ({result.rate:,.0f} events/s) into {_redacted(result.views_url)}"
    )
    return 0



# ---- verify --------------------------------------------------------------------------------------


def _pinned_keys(args: argparse.Namespace) -> tuple[list[Path], list[Any]]:
    """The public keys ``verify`` trusts: ``--trust-key`` (else ``LEDGER_TRUST_KEY_FILE``), never
    a key the streams or the data directory offer."""
    from ledger.jetstream.signing import PublicKey

    paths: list[Path] = args.trust_key or ([args.trust_key_default] if args.trust_key_default else [])
    if not paths:
        raise SystemExit(
            "no pinned public key: give --trust-key FILE (LEDGER_TRUST_KEY_FILE), the ledger's public key kept outside "
            "its data directory (`ledger keys public` prints it)"
        )
    trusted = []
    for path in paths:
        try:
            trusted.append(PublicKey.load(path))
        except OSError as e:
            raise SystemExit(f"--trust-key {path}: {e.strerror}") from None
        except ValueError as e:
            raise SystemExit(f"--trust-key {e}") from None
        if path.resolve().is_relative_to(args.data_dir.resolve()):
            say(f"note: the pinned key {path} lies in the ledger's data directory: whoever can write there can "
                "replace it; keep it elsewhere", err=True)  # fmt: skip
    return paths, trusted


def _known_checkpoint(args: argparse.Namespace) -> tuple[int, str] | None:
    if not args.known_checkpoint:
        return None
    seq, _, digest = args.known_checkpoint.partition(":")
    if not (seq.isdigit() and len(digest) == 64):
        raise SystemExit(f"--known-checkpoint {args.known_checkpoint!r}: SEQ:DIGEST, as verify's JSON gives them")
    return int(seq), digest


def _verify(args: argparse.Namespace) -> int:
    from ledger.jetstream.evidence import verify

    store = _Store(args, ledger=False)
    try:
        paths, trusted = _pinned_keys(args)
        stale_after = args.stale_after * args.checkpoint_seconds
        report = verify(store.datastore, trusted=trusted, stale_after=stale_after, known=_known_checkpoint(args))
    finally:
        store.close()
    findings = [str(f) for f in report.findings]
    if args.format != "table":
        row: dict[str, Any] = {"intact": report.ok, "messages": report.messages, "signed_saves": report.signed_saves,
               "events": report.events, "checkpoints": report.checkpoints, "last_checkpoint_seq": report.last_checkpoint_seq,
               "last_checkpoint_signed_at": report.last_checkpoint_signed_at,
               "last_checkpoint_digest": report.last_checkpoint_digest, "uncovered_messages": report.uncovered,
               "stale_after_seconds": stale_after, "pinned_keys": report.pinned, "trusted_keys": [str(p) for p in paths],
               "findings": findings, "more_findings": report.more_findings}  # fmt: skip
        if args.format == "csv":
            row["findings"] = "; ".join(findings)
            row["pinned_keys"] = " ".join(report.pinned)
            row["trusted_keys"] = " ".join(str(p) for p in paths)
        _emit([row], args.format, vertical=True)
        return 0 if report.ok else 1
    say(f"{report.messages:,} messages in {report.signed_saves:,} signed saves, {report.events:,} events")
    say(f"{report.checkpoints} checkpoints verified (the last up to LEDGER {report.last_checkpoint_seq:,}), "
        f"key {', '.join(report.pinned)}")  # fmt: skip
    if report.ok:
        say("intact: every message signed, every hash chain and checkpoint holds")
        return 0
    say(f"NOT INTACT: {findings[0]}")
    shown = 20
    for finding in findings[1:shown]:
        say(f"also: {finding}")
    hidden = len(findings) - min(len(findings), shown) + report.more_findings
    if hidden:
        say(f"and {hidden:,} more findings (--format json lists them)")
    return 1
