"""``python -m bench.replay``: rebuilding every view from LEDGER (see the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.ingest.machine import IngestWatch
from bench.replay import runs
from bench.replay.season import KIND_NAMES, SEASON_DAYS, Generated, Plan, generate, plan_for_events, season_for
from bench.store.__main__ import server_version
from bench.store.backends import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, find_postgres, postgres_settings
from ledger.domain.policy import load_policy
from ledger.jetstream.server import EmbeddedNatsServer
from projections.projection import LedgerProjection

TARGET_RATE = 30_000.0
"""Ledger events per second replayed into SQLite (the issue)."""
TARGET_SHARE = 30.0
"""The replay into SQLite as a percentage of the raw read rate (the issue)."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=(
            "Replay benchmark: a synthetic Hefei season of N ledger events on JetStream, then, in the same run, "
            "the raw read rate of the stream (the ceiling), the library's ApplicationSubscription, and "
            "projections.runner.replay into SQLite and PostgreSQL."
        ),
        epilog="What each line means: bench/README.md and the bench.replay package docstring.",
    )
    parser.add_argument("--events", type=int, help="ledger events in the stream (default 1,000,000; --quick: 30,000)")
    parser.add_argument("--quick", action="store_true", help="30,000 events: a smoke run of well under a minute")
    parser.add_argument("--skip-postgres", action="store_true", help="leave out the replay into PostgreSQL")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the synthetic season (default 2026)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    args.events = args.events if args.events is not None else 30_000 if args.quick else 1_000_000
    if args.events < 1_000:
        parser.error("--events must be at least 1,000")
    return args


# ---- PostgreSQL ----------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_views() -> Iterator[tuple[str, str]]:
    """A view-database URL in a fresh schema of the first database that answers (dropped after)."""
    import psycopg

    dbname, why = find_postgres()
    if dbname is None:
        raise LookupError(why)
    schema = f"bench_replay_{uuid.uuid4().hex[:10]}"
    try:
        yield f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{dbname}?schema={schema}", dbname
    finally:
        with psycopg.connect(
            host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, autocommit=True
        ) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# ---- output --------------------------------------------------------------------------------


def describe_season(plan: Plan, generated: Generated, copied: runs.Copied) -> list[str]:
    season = plan.season
    lines = [
        f"Season: {season.start:%Y-%m-%d %H:%M} – {season.end:%Y-%m-%d %H:%M} CST (the last {SEASON_DAYS} days before now, "
        f"in the concentrated period), funding year {season.funding_year} → coverage year {season.coverage_year}; "
        f"policy version {season.policy.version}.",
    ]
    lines += [f"  NOTE: {note}." for note in season.notes]
    touched = generated.people_touched
    channels = sum(plan.by_channel.values()) or 1
    by_channel = ", ".join(f"{c} {100 * n / channels:.0f}%" for c, n in plan.by_channel.most_common())
    refused = ", ".join(f"{n:,} {r}" for r, n in _count(r[2] for r in generated.refused).most_common()) or "none"
    lines += [
        f"  {generated.facts_applied:,} upstream facts applied by the Ledger (in-memory POPO store) about {touched:,} people "
        f"in {plan.households:,} households across {len(season.policy.districts)} districts; enrollment channels: "
        f"{by_channel}; {sum(plan.by_subsidy.values()):,} people on subsidy rosters "
        f"({sum(n for c, n in plan.by_subsidy.items() if c in ('extreme_poverty', 'scattered_orphan', 'family_planning_special')):,} "
        f"fully subsidised, enrolled automatically); {plan.committees:,} community cash collectors; "
        f"{plan.agent_households:,} households behind village agents' phones and payer accounts.",
        f"  Refused by the ledger, as planned, and recorded on REJECTED: {refused}"
        + (f"; {generated.unplanned_refusals:,} refusals NOT planned (a bug in the season)" if generated.unplanned_refusals else "")
        + ".",
        "  Facts by kind: " + ", ".join(f"{n:,} {KIND_NAMES[k]}" for k, n in sorted(_count(f[1] for f in plan.facts[: generated.facts_applied]).items())) + ".",
        f"Stream LEDGER: {copied.events:,} events ({copied.state_bytes / max(copied.events, 1):,.0f} bytes of state "
        f"each on average); REJECTED: {copied.rejections:,} messages.",
        "  Events by type: " + ", ".join(f"{t} {n:,}" for t, n in copied.event_types.most_common()) + ".",
    ]
    return lines


def _count(items: Any) -> Any:
    from collections import Counter

    return Counter(items)


def _cpu(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def format_reads(reads: list[runs.Read], raw: runs.Read) -> list[str]:
    lines = [f"  {'read of the whole LEDGER stream':<42}{'events':>11}{'seconds':>9}{'events/s':>10}{'÷ raw':>7}"
             f"{'process CPU s':>15}{'server CPU s':>14}"]  # fmt: skip
    for r in reads:
        lines.append(
            f"  {r.name:<42}{r.events:>11,}{r.seconds:>9.2f}{r.rate:>10,.0f}{r.rate / raw.rate:>7.2f}"
            f"{_cpu(r.process_cpu_s):>15}{_cpu(r.server_cpu_s):>14}"
        )
    return lines


def format_views(read: runs.Read, counts: dict[str, Any], other: tuple[runs.Read, dict[str, Any]] | None) -> list[str]:
    coverage = counts["coverage"]
    flags = counts["flags"]
    name = read.name.removeprefix("replay → ")
    same = ""
    if other is not None:
        other_read, other_counts = other
        other_name = other_read.name.removeprefix("replay → ")
        if read.stalled or other_read.stalled:
            same = f"; {other_name} not compared: a replay stalled"
        elif other_counts == counts:
            same = f"; {other_name}: the same counts"
        else:
            same = f"; {other_name} DIFFERS: {other_counts}"
    audit = counts["audit"]
    if audit == read.events:
        audited = "one per ledger event replayed"
    else:
        audited = (
            f"MISSING {read.events - audit:,} of the {read.events:,} ledger events the views' position says were "
            "replayed: events were lost between the stream and the projection"
        )
    return [
        f"Views after the replay ({name}{same}):",
        f"  coverage rows {sum(coverage.values()):,} ("
        + ", ".join(f"{status} {n:,}" for status, n in coverage.items())
        + f"), of them in a waiting period {counts['waiting_periods']:,}; people rows {counts['people']:,}",
        f"  audit rows {audit:,} ({audited}); rejections {counts['rejections']:,}; targets {counts['targets']:,}; "
        f"collectors {counts['collectors']:,}; contacts {counts['contacts']:,}; operators {counts['operators']:,}; "
        f"outbox {counts['outbox']:,} (publication off)",
        f"  flags {sum(flags.values()):,}: " + ", ".join(f"{rule} {n:,}" for rule, n in flags.items()),
    ]


def evaluate(sqlite: runs.Read, raw: runs.Read, postgres: runs.Read | None) -> list[dict[str, Any]]:
    """The issue's targets; a replay that stalled meets none (its rate is shown up to the stall)."""
    ok = sqlite.stalled is None
    rows = [
        {"target": f"replay into SQLite ≥ {TARGET_RATE:,.0f} events/s", "value": sqlite.rate, "unit": "events/s",
         "met": ok and sqlite.rate >= TARGET_RATE, "stalled": not ok},
        {"target": f"replay into SQLite ≥ {TARGET_SHARE:.0f}% of the raw read rate", "value": 100 * sqlite.rate / raw.rate,
         "unit": "%", "met": ok and 100 * sqlite.rate / raw.rate >= TARGET_SHARE, "stalled": not ok},
    ]  # fmt: skip
    if postgres is not None:
        share = 100 * postgres.rate / raw.rate
        ok = postgres.stalled is None
        rows.append({"target": f"(PostgreSQL, for reference) ≥ {TARGET_SHARE:.0f}% of the raw read rate",
                     "value": share, "unit": "%", "met": ok and share >= TARGET_SHARE, "stalled": not ok})  # fmt: skip
    return rows


def format_targets(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["Targets from the issue (information, not assertions), as measured in this run:"]
    for row in rows:
        value = float(row["value"])
        shown = f"{value:,.1f}%" if row["unit"] == "%" else f"{value:,.0f} {row['unit']}"
        verdict = "met" if row["met"] else "not met" + (" (the replay STALLED: rate up to the stall)" if row["stalled"] else "")
        lines.append(f"  {row['target']:<58}{shown:>16}  {verdict}")
    return lines


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: server, schema and temp dir are cleaned up


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    season = season_for(datetime.now(UTC), load_policy())
    for note in season.notes:
        log(f"note: {note}")
    log(f"planning a season of at least {args.events:,} ledger events ...")
    plan = plan_for_events(args.events, season, args.seed)
    log(f"planned {len(plan.people):,} people in {plan.households:,} households, {len(plan.facts):,} facts")

    def gen_progress(done: int, total: int) -> None:
        log(f"generating: {done:,} of {total:,} events recorded in memory")

    generated = generate(plan, args.events, gen_progress)
    log(
        f"generated {generated.events:,} events from {generated.facts_applied:,} facts in {generated.seconds:,.0f} s "
        f"({generated.events / generated.seconds:,.0f} events/s)"
    )
    watch = IngestWatch()
    notes: list[str] = []
    postgres: runs.Read | None = None
    pg_counts: dict[str, Any] | None = None
    pg_info: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        tmp_path = Path(tmp)
        server = EmbeddedNatsServer(tmp_path / "nats").start()  # sync_interval: always (its default)
        try:
            pid = server._process.pid if server._process is not None else None
            if pid is not None:
                watch.add_own(pid)
            log(f"nats-server on {server.url} (sync_interval always), data in {tmp_path / 'nats'}")
            copied = runs.copy_to_jetstream(generated, server.url, season.policy, log)
            log(f"copied {copied.events:,} events in {copied.seconds:,.0f} s; {copied.rejections:,} rejections on REJECTED")
            runs.free(generated)

            watch.start()
            measured_from = time.monotonic()
            log("raw read: nats-py ordered consumer over LEDGER ...")
            raw = runs.raw_read(server.url, "LEDGER", copied.events, pid)
            log(f"raw read: {raw.rate:,.0f} events/s")
            log("ApplicationSubscription over the JetStream recorder ...")
            subscription = runs.application_subscription(server.url, season.policy, pid)
            log(f"ApplicationSubscription: {subscription.rate:,.0f} events/s")
            sqlite_file = tmp_path / "views.sqlite"
            log(f"replay into SQLite ({sqlite_file}) ...")
            sqlite, sqlite_counts = runs.replay_into(
                "replay → SQLite", f"sqlite:///{sqlite_file}", server.url, season.policy, pid, log
            )
            sqlite.extra["file_bytes"] = runs.file_size(sqlite_file)
            log(f"replay into SQLite: {sqlite.rate:,.0f} events/s" + (" (STALLED)" if sqlite.stalled else ""))
            if args.skip_postgres:
                notes.append("PostgreSQL: skipped (--skip-postgres).")
            else:
                try:
                    with postgres_views() as (pg_url, dbname):
                        pg_info = postgres_settings(dbname)
                        log(f"replay into PostgreSQL ({pg_url}) ...")
                        postgres, pg_counts = runs.replay_into(
                            "replay → PostgreSQL", pg_url, server.url, season.policy, pid, log
                        )
                        log(f"replay into PostgreSQL: {postgres.rate:,.0f} events/s" + (" (STALLED)" if postgres.stalled else ""))
                    notes.append(
                        f"PostgreSQL {pg_info.get('server_version', '?')} at {POSTGRES_HOST}:{POSTGRES_PORT}, fresh schema "
                        f"(dropped afterwards), fsync {pg_info.get('fsync', '?')}, synchronous_commit "
                        f"{pg_info.get('synchronous_commit', '?')}."
                    )
                except LookupError as why:
                    notes.append(f"PostgreSQL: skipped, {why}.")
                    log(notes[-1])
            measured = time.monotonic() - measured_from
        finally:
            watch.stop()
            server.stop()

    reads = [raw, subscription, sqlite] + ([postgres] if postgres else [])
    targets = evaluate(sqlite, raw, postgres)
    elapsed = time.monotonic() - started
    lines = [
        "Replay benchmark (bench.replay): every view rebuilt from the LEDGER stream by projections.runner.replay, "
        "against reading the same stream raw.",
        *describe_season(plan, generated, copied),
        (
            f"  Built in {generated.seconds:,.0f} s (generating) + {copied.seconds:,.0f} s (copying: insert_events of "
            f"{runs.COPY_CHUNK:,}, the embedded nats-server's default sync_interval always; no read below depends on it)."
        ),
        (
            f"{server_version()} (embedded, fresh, temporary directory); Python {platform.python_version()}; "
            f"SQLite {sqlite3.sqlite_version}. People in the ledger {generated.people_touched:,}; the projection "
            f"keeps up to {LedgerProjection.cache_size:,} in memory (others are loaded from the store)."
        ),
        "",
    ]
    lines += format_reads(reads, raw)
    lines.append(f"  ratio replay into SQLite ÷ raw: {sqlite.rate / raw.rate:.2f}" + (
        f"; replay into PostgreSQL ÷ raw: {postgres.rate / raw.rate:.2f}" if postgres else ""))  # fmt: skip
    lines.append(f"  ratio replay into SQLite ÷ ApplicationSubscription: {sqlite.rate / subscription.rate:.2f}")
    lines += [f"  {note}" for note in notes]
    for r in reads:
        if r.stalled:
            lines.append(
                f"  {r.name}: {r.stalled} events; the row's figures are up to the last commit. LEDGER's consumers on "
                f"the server then: {r.extra.get('server_consumers')} (a consumer that has delivered past what the views "
                "committed means events were lost between the client and the projection)."
            )
    lines.append("")
    lines += format_views(sqlite, sqlite_counts, (postgres, pg_counts) if postgres and pg_counts else None)
    lines.append("")
    lines += format_targets(targets)
    lines.append("")
    lines.append(watch.describe(measured).replace("run took", "the measurements took", 1))
    lines.append(f"Whole run {elapsed:,.0f} s (planning, generating and copying included).")
    print("\n".join(lines))

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "season": {
                        "start": season.start.isoformat(), "end": season.end.isoformat(),
                        "funding_year": season.funding_year, "coverage_year": season.coverage_year,
                        "policy_version": season.policy.version, "notes": list(season.notes),
                        "people_planned": len(plan.people), "households": plan.households,
                        "facts_applied": generated.facts_applied, "people_in_ledger": generated.people_touched,
                        "by_channel": dict(plan.by_channel), "by_subsidy": dict(plan.by_subsidy),
                        "refused": dict(_count(r[2] for r in generated.refused)),
                        "unplanned_refusals": generated.unplanned_refusals,
                        "generate_s": generated.seconds,
                    },
                    "stream": {
                        "events": copied.events, "event_types": dict(copied.event_types),
                        "state_bytes": copied.state_bytes, "rejections": copied.rejections, "copy_s": copied.seconds,
                    },
                    "reads": [r.as_json() for r in reads],
                    "ratios": {
                        "sqlite_over_raw": sqlite.rate / raw.rate,
                        "postgres_over_raw": postgres.rate / raw.rate if postgres else None,
                        "sqlite_over_subscription": sqlite.rate / subscription.rate,
                    },
                    "views": {"sqlite": sqlite_counts, "postgres": pg_counts},
                    "postgres": pg_info,
                    "notes": notes,
                    "targets": targets,
                    "machine": watch.summary(),
                    "measured_s": measured,
                    "elapsed_s": elapsed,
                },
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
