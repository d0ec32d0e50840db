"""``python -m bench.store``: run every backend, print the table (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from eventsourcing.persistence import ApplicationRecorder

from bench.store import workloads
from bench.store.backends import (
    find_postgres,
    jetstream_recorder,
    postgres_recorder,
    postgres_settings,
    sqlite_recorder,
)
from bench.store.events import EventFactory
from bench.store.machine import MachineWatch
from bench.store.measure import Measurement
from bench.store.raw import RawJetStream
from bench.store.report import (
    POSTGRES,
    RAW_ALWAYS,
    RAW_DEFAULT,
    SQLITE,
    STORE_ALWAYS,
    STORE_DEFAULT,
    Results,
    Workload,
    evaluate_targets,
    format_memory,
    format_section,
    format_targets,
)
from ledger.jetstream.server import EmbeddedNatsServer, find_server_binary

T = TypeVar("T")

SAVE_AGGREGATES = 20
SAVE_VERSIONS = 5
"""Saves of 100 (workload b): 20 new aggregates × 5 events each per ``insert_events``."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def sections(events: int, loads: int) -> list[Workload]:
    per_save = SAVE_AGGREGATES * SAVE_VERSIONS
    threads = workloads.GROUP_COMMIT_THREADS
    return [
        Workload(
            "a",
            f"(a) single-event saves: {events:,} new aggregates, one thread, one event per save "
            "[raw: request per message]",
            latencies=True,
        ),
        Workload(
            "b",
            f"(b) saves of {per_save}: {events // per_save:,} saves of {SAVE_AGGREGATES} aggregates × "
            f"{SAVE_VERSIONS} events, one thread [raw: atomic batches of {per_save}]",
            latencies=True,
        ),
        Workload(
            "c",
            f"(c) read everything back: select_notifications pages of {workloads.READ_PAGE:,} [raw: ordered consumer]",
        ),
        Workload(
            "d",
            f"(d) aggregate loads: select_events of {loads:,} aggregates × {workloads.LOAD_VERSIONS} "
            "events, random order [raw: batched direct get]",
            rate_unit="loads/s",
            latencies=True,
        ),
        Workload(
            "e",
            f"(e) group commit: {threads} threads, {events:,} single-event saves in all [raw: pipelined publish_async]",
            latencies=True,
        ),
    ]


Step = tuple[str, str, Callable[[], Measurement]]
"""A workload key, a title for the progress lines, and the call that measures it."""


def recorder_steps(recorder: ApplicationRecorder, factory: EventFactory, args: argparse.Namespace) -> list[Step]:
    """Workloads (a)–(e) on a recorder; each builds its events before its clock starts."""
    saves = args.events // (SAVE_AGGREGATES * SAVE_VERSIONS)
    return [
        ("a", "single-event saves", lambda: workloads.single_saves(recorder, factory.single(args.events))),
        (
            "b",
            "saves of 100",
            lambda: workloads.batched_saves(recorder, factory.saves(saves, SAVE_AGGREGATES, SAVE_VERSIONS)),
        ),
        ("c", "read all", lambda: workloads.read_all(recorder)),
        (
            "d",
            "aggregate loads",
            lambda: workloads.load_aggregates(recorder, factory.aggregates(args.loads, workloads.LOAD_VERSIONS)),
        ),
        ("e", "group commit", lambda: workloads.group_commit(recorder, factory.single(args.events))),
    ]


def raw_steps(raw: RawJetStream, loop: BackgroundLoop, factory: EventFactory, args: argparse.Namespace) -> list[Step]:
    """The raw nats-py counterparts of (a)–(e), run on ``loop``."""

    def states(n: int) -> list[bytes]:
        return [e.state for e in factory.single(n)]

    def batches() -> list[list[tuple[str, bytes]]]:
        result = []
        for _ in range(args.events // (SAVE_AGGREGATES * SAVE_VERSIONS)):
            groups = [[e.state for e in agg] for agg in factory.aggregates(SAVE_AGGREGATES, SAVE_VERSIONS)]
            result.append([m for agg in raw.aggregates(groups) for m in agg])
        return result

    def loads() -> list[list[tuple[str, bytes]]]:
        aggregates = factory.aggregates(args.loads, workloads.LOAD_VERSIONS)
        return raw.aggregates([[e.state for e in agg] for agg in aggregates])

    return [
        ("a", "single publish", lambda: loop.call(raw.single_publish(raw.messages(states(args.events))))),
        ("b", "atomic batches", lambda: loop.call(raw.atomic_batches(batches()))),
        ("c", "ordered consumer", lambda: loop.call(raw.read_all())),
        ("d", "batched direct get", lambda: loop.call(raw.direct_get_loads(loads()))),
        ("e", "pipelined publish_async", lambda: loop.call(raw.pipelined_publish(raw.messages(states(args.events))))),
    ]


def run_steps(suites: list[tuple[str, list[Step]]], results: Results) -> None:
    """Run the suites' steps alternately (a of each, then b of each, ...): backends measured side
    by side see the same disturbances, if any."""
    for round_ in zip(*(steps for _, steps in suites), strict=True):
        for (name, _), (key, title, step) in zip(suites, round_, strict=True):
            log(f"{name}: ({key}) {title} ...")
            m = step()
            results.setdefault(key, {})[name] = m
            log(f"{name}: ({key}) {_brief(m)}")


def run_recorder(
    name: str,
    make: Callable[[], AbstractContextManager[ApplicationRecorder]],
    args: argparse.Namespace,
    results: Results,
) -> None:
    """Workloads (a)–(e) on one recorder backend, in that order, after a warm-up."""
    factory = EventFactory()
    with make() as recorder:
        log(f"{name}: warm-up")
        workloads.warm_up(recorder, factory)
        run_steps([(name, recorder_steps(recorder, factory, args))], results)


def run_nats(server: EmbeddedNatsServer, store: str, raw_name: str, args: argparse.Namespace, results: Results) -> None:
    """This store and raw nats-py on one server, workload by workload, each on its own stream."""
    factory = EventFactory()
    with jetstream_recorder(server.url) as recorder, BackgroundLoop() as loop:
        raw = RawJetStream(server.url)
        loop.call(raw.open())
        try:
            log(f"{store}: warm-up")
            workloads.warm_up(recorder, factory)
            log(f"{raw_name}: warm-up")
            loop.call(raw.warm_up(raw.messages([e.state for e in factory.single(200)])))
            run_steps(
                [(store, recorder_steps(recorder, factory, args)), (raw_name, raw_steps(raw, loop, factory, args))],
                results,
            )
        finally:
            loop.call(raw.close())


class BackgroundLoop:
    """An asyncio event loop in its own thread, so raw nats-py steps can alternate with the
    recorders' synchronous ones. The raw workloads time themselves inside the loop."""

    def __enter__(self) -> BackgroundLoop:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-raw", daemon=True)
        self.thread.start()
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def run_memory(url: str, pid: int, args: argparse.Namespace) -> Measurement:
    log(f"store (sync always): (f) server memory, adding {args.aggregates:,} aggregates ...")
    with jetstream_recorder(url) as recorder:
        m = workloads.server_memory_per_subject(recorder, pid, args.aggregates, EventFactory())
    log(f"store (sync always): (f) {m.extra['bytes_per_subject']:,.0f} bytes per subject")
    return m


@contextlib.contextmanager
def nats_server(directory: Path, sync: str, watch: MachineWatch) -> Iterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(directory, sync_interval=sync).start()
    assert server._process is not None
    watch.add_own(server._process.pid)
    log(f"nats-server (sync {sync}) on {server.url}, data in {directory}")
    try:
        yield server
    finally:
        server.stop()


def server_version() -> str:
    try:
        out = subprocess.run([str(find_server_binary()), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "nats-server (version unknown)"
    except Exception as e:  # noqa: BLE001 - only a label
        return f"nats-server (version unknown: {e})"


def _brief(m: Measurement) -> str:
    text = f"{m.count:,} {m.unit} in {m.seconds:.2f} s = {m.rate:,.0f}/s"
    if m.latencies_ms:
        text += f", p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms"
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store",
        description="Event-store benchmark: this store on NATS JetStream against raw nats-py, SQLite and PostgreSQL.",
        epilog="What each line means: bench/README.md and the bench.store package docstring.",
    )
    parser.add_argument("--events", type=int, help="events per write workload (default 10,000; --quick: 1,000)")
    parser.add_argument(
        "--aggregates", type=int, help="aggregates added for the memory figure (default 200,000; --quick: 20,000)"
    )
    parser.add_argument("--loads", type=int, help="aggregates loaded in (d) (default 1,000; --quick: 200)")
    parser.add_argument("--quick", action="store_true", help="fewer events: a smoke run of well under a minute")
    parser.add_argument("--skip-postgres", action="store_true", help="leave out the PostgreSQL baseline")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events if args.events is not None else 1_000 if quick else 10_000
    args.aggregates = args.aggregates if args.aggregates is not None else 20_000 if quick else 200_000
    args.loads = args.loads if args.loads is not None else 200 if quick else 1_000
    per_save = SAVE_AGGREGATES * SAVE_VERSIONS
    if args.events < per_save or args.aggregates < 1 or args.loads < 1:
        parser.error(f"--events must be at least {per_save}; --aggregates and --loads at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: Results = {}
    memory: Measurement | None = None
    notes: list[str] = []
    postgres_info: dict[str, str] = {}
    watch = MachineWatch().start()
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        tmp_path = Path(tmp)
        for sync, store, raw in (("always", STORE_ALWAYS, RAW_ALWAYS), ("default", STORE_DEFAULT, RAW_DEFAULT)):
            with nats_server(tmp_path / f"nats-{sync}", sync, watch) as server:
                run_nats(server, store, raw, args, results)
                if sync == "always":
                    assert server._process is not None
                    memory = run_memory(server.url, server._process.pid, args)

        run_recorder(SQLITE, lambda: sqlite_recorder(tmp_path), args, results)

        if args.skip_postgres:
            notes.append("PostgreSQL: skipped (--skip-postgres).")
        else:
            dbname, why = find_postgres()
            if dbname is None:
                notes.append(f"PostgreSQL: skipped, {why}.")
                log(notes[-1])
            else:
                postgres_info = {"database": dbname, **postgres_settings(dbname)}
                run_recorder(POSTGRES, lambda: postgres_recorder(dbname), args, results)
                notes.append(
                    f"PostgreSQL {postgres_info['server_version']} at 127.0.0.1:5432, database {dbname}, fresh "
                    f"schema; fsync={postgres_info['fsync']}, synchronous_commit="
                    f"{postgres_info['synchronous_commit']}; the library's defaults (pool of 5 + 10 overflow)."
                )

    watch.stop()
    elapsed = time.monotonic() - started
    targets = evaluate_targets(results)

    lines = [
        f"Event-store benchmark (bench.store): {args.events:,} events per write workload; "
        f"{server_version()} (embedded), Python {platform.python_version()}",
        "Ratios: this store's rate ÷ the row's rate (always÷row: store with sync always; default÷row: store "
        "with the server's default sync). Raw rows are compared with the store on the same server only.",
        "",
    ]
    for workload in sections(args.events, args.loads):
        section = format_section(workload, results)
        if section:
            lines += section + [""]
    lines += format_memory(memory) + [""]
    lines += format_targets(targets) + [""]
    lines += notes
    lines.append(watch.describe(elapsed))
    print("\n".join(lines))

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "results": {w: {b: m.as_json() for b, m in by.items()} for w, by in results.items()},
                    "memory": memory.as_json() if memory else None,
                    "targets": targets,
                    "notes": notes,
                    "postgres": postgres_info or None,
                    "machine": watch.summary(),
                    "elapsed_s": elapsed,
                },
                indent=2,
            )
            + "\n"
        )
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
