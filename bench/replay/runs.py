"""The stream and the four reads of it: raw ceiling, application subscription, replay into
SQLite, replay into PostgreSQL (see the package docstring)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.projection import ApplicationSubscription

from bench.replay.season import ENROLL, PAY, SECRET, Generated
from bench.store.machine import _cpu_seconds
from contract.rejection import Rejection, encode_rejection
from contract.subjects import REJECTED_PREFIX
from ledger.application import PERSON_KEY_SECRET, Ledger
from ledger.domain.identity import PersonKeyer
from ledger.domain.policy import RegionPolicy
from projections.database import Database
from projections.fraud import RULES
from projections.runner import replay

Log = Callable[[str], None]
COPY_CHUNK = 1_000
"""Events per ``insert_events`` when copying the season into JetStream (one atomic batch)."""
SUBJECTS = {ENROLL: "upstream.enrollment.requested", PAY: "upstream.payment.received"}


@dataclass
class Read:
    """One timed read of the whole LEDGER stream."""

    name: str
    events: int
    seconds: float
    process_cpu_s: float
    server_cpu_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def stalled(self) -> str | None:
        return self.extra.get("stalled")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "events": self.events, "seconds": self.seconds, "events_per_s": self.rate,
            "process_cpu_s": self.process_cpu_s, "server_cpu_s": self.server_cpu_s, **self.extra,
        }  # fmt: skip


class Clock:
    """Wall time, this process's CPU (all threads) and the nats-server's CPU over a block."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> Clock:
        self.cpu0 = time.process_time()
        self.server0 = _cpu_seconds(self.server_pid) if self.server_pid else None
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        server1 = _cpu_seconds(self.server_pid) if self.server_pid else None
        self.server_cpu = server1 - self.server0 if server1 is not None and self.server0 is not None else None


def ledger_env(url: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url, PERSON_KEY_SECRET: SECRET}


def jetstream_ledger(url: str, policy: RegionPolicy) -> Ledger:
    return Ledger(ledger_env(url), policy=policy, keyer=PersonKeyer(SECRET.encode()))


# ---- building the stream -------------------------------------------------------------------


@dataclass
class Copied:
    events: int
    seconds: float
    event_types: Counter[str]
    state_bytes: int
    rejections: int


def copy_to_jetstream(generated: Generated, url: str, policy: RegionPolicy, log: Log) -> Copied:
    """The in-memory store's events, in notification order, into LEDGER (``insert_events`` of
    1,000 at a time), and the refused facts into REJECTED as ``ledger serve`` records them."""
    source = generated.ledger.recorder
    target = jetstream_ledger(url, policy)
    types: Counter[str] = Counter()
    size = copied = 0
    started = last = time.perf_counter()
    total = generated.events
    try:
        start = 1
        while True:
            notes = source.select_notifications(start=start, limit=COPY_CHUNK)
            if not notes:
                break
            batch = [StoredEvent(n.originator_id, n.originator_version, n.topic, n.state) for n in notes]
            target.recorder.insert_events(batch)
            for n in notes:
                types[n.topic.rpartition(":")[2]] += 1
                size += len(n.state)
            copied += len(notes)
            start = notes[-1].id + 1
            now = time.perf_counter()
            if now - last >= 5:
                last = now
                rate = copied / (now - started)
                log(f"copying into JetStream: {copied:,} of {total:,} events ({rate:,.0f}/s)")
        seconds = time.perf_counter() - started
        end = target.recorder.max_notification_id() or 0
        if end != copied:
            raise AssertionError(f"LEDGER ends at {end:,} after {copied:,} events were copied")
    finally:
        target.close()
    rejections = asyncio.run(_publish_rejections(url, generated))
    return Copied(copied, seconds, types, size, rejections)


async def _publish_rejections(url: str, generated: Generated) -> int:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="REJECTED", subjects=[f"{REJECTED_PREFIX}.>"], storage=StorageType.FILE))
        for number, (seq, kind, reason, detail, person_key, body) in enumerate(generated.refused, start=1):
            rejection = Rejection.of(
                msg_id=f"fact-{seq}", subject=SUBJECTS.get(kind, "upstream"), reason=reason, detail=detail,
                data=body, upstream_seq=number, person_key=person_key,
            )  # fmt: skip
            await js.publish(f"{REJECTED_PREFIX}.{reason}", encode_rejection(rejection), headers=rejection.headers())
        return len(generated.refused)
    finally:
        await nc.close()


def free(generated: Generated) -> None:
    """Drop the in-memory store before anything is timed (it holds every event twice)."""
    generated.ledger.close()
    generated.ledger = None  # type: ignore[assignment]
    gc.collect()


# ---- the reads -----------------------------------------------------------------------------


def raw_read(url: str, stream: str, expected: int, server_pid: int | None) -> Read:
    """The ceiling: a plain nats-py ordered push consumer over the whole stream, counting the
    messages in its callback, nothing decoded."""

    async def run() -> int:
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            done = asyncio.Event()
            count = 0

            async def on_message(msg: Any) -> None:
                nonlocal count
                count += 1
                if count >= expected:
                    done.set()

            sub = await js.subscribe(
                "ledger.>", stream=stream, ordered_consumer=True, cb=on_message,
                pending_msgs_limit=-1, pending_bytes_limit=-1,
            )  # fmt: skip
            await asyncio.wait_for(done.wait(), timeout=1800)
            await sub.unsubscribe()
            return count
        finally:
            await nc.close()

    with Clock(server_pid) as clock:
        count = asyncio.run(run())
    return Read("raw nats-py ordered consumer", count, clock.seconds, clock.cpu, clock.server_cpu)


def application_subscription(url: str, policy: RegionPolicy, server_pid: int | None) -> Read:
    """The library's ``ApplicationSubscription`` over the JetStream recorder: each event read,
    decoded and mapped to its domain event, nothing projected."""
    app = jetstream_ledger(url, policy)
    try:
        end = app.recorder.max_notification_id() or 0
        count = 0
        with Clock(server_pid) as clock, ApplicationSubscription(app, gt=None) as subscription:
            for _event, tracking in subscription:
                count += 1
                if tracking.notification_id >= end:
                    break
    finally:
        app.close()
    return Read("ApplicationSubscription (decode + map)", count, clock.seconds, clock.cpu, clock.server_cpu)


STALL_SECONDS = 60.0
"""A replay that commits nothing for this long, before the end, is stopped and reported stalled."""


class Stalled(Exception):
    """Raised from the progress callback to stop a replay that stopped committing."""


def replay_into(
    name: str, views_url: str, url: str, policy: RegionPolicy, server_pid: int | None, log: Log
) -> tuple[Read, dict[str, Any]]:
    """``projections.runner.replay`` into ``views_url`` (publication off, as replay does), then
    the row counts of the views it built. A replay that commits nothing for ``STALL_SECONDS``
    is stopped (from its progress callback) and its row says how far it got."""
    loader = jetstream_ledger(url, policy)
    started = time.perf_counter()
    state = {"done": 0, "total": 0, "changed": started, "logged": started}
    consumers: list[dict[str, Any]] = []

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        state["total"] = total
        if done != state["done"]:
            state["done"], state["changed"] = done, now
        elif now - state["changed"] >= STALL_SECONDS:
            consumers.extend(asyncio.run(_consumers(url, "LEDGER")))  # before the replay closes its own
            raise Stalled(f"no event committed for {STALL_SECONDS:.0f} s at {done:,} of {total:,}")
        if now - state["logged"] >= 5:
            state["logged"] = now
            log(f"{name}: {done:,} of {total:,} events committed")

    stalled: str | None = None
    try:
        with Clock(server_pid) as clock:
            try:
                result = replay(ledger_env=ledger_env(url), views_url=views_url, nats_url=url, policy=policy,
                                loader=loader, progress=progress)  # fmt: skip
            except Stalled as e:
                stalled = str(e)
    finally:
        loader.close()
    if stalled is None:
        read = Read(
            name, result.ledger_events, result.seconds, clock.cpu, clock.server_cpu,
            extra={"rejections": result.rejections, "wall_s_including_close": clock.seconds},
        )  # fmt: skip
    else:
        log(f"{name}: STALLED, {stalled}; LEDGER consumers on the server: {consumers}")
        read = Read(
            f"{name} (STALLED)", int(state["done"]), state["changed"] - started, clock.cpu, clock.server_cpu,
            extra={"stalled": stalled, "events_in_stream": int(state["total"]), "server_consumers": consumers},
        )  # fmt: skip
    return read, view_counts(views_url)


async def _consumers(url: str, stream: str) -> list[dict[str, Any]]:
    """What the server says about the stream's consumers (evidence for a stalled replay)."""
    import nats

    nc = await nats.connect(url)
    try:
        found = []
        for info in await nc.jetstream().consumers_info(stream):
            found.append({
                "name": info.name, "opt_start_seq": info.config.opt_start_seq,
                "delivered_stream_seq": info.delivered.stream_seq if info.delivered else None,
                "num_pending": info.num_pending,
            })  # fmt: skip
        return found
    except Exception as e:  # noqa: BLE001 - only evidence
        return [{"error": repr(e)}]
    finally:
        await nc.close()


def view_counts(views_url: str) -> dict[str, Any]:
    db = Database.open(views_url)
    try:
        one = lambda sql: int(db.query(sql)[0][0])  # noqa: E731
        coverage = dict(db.query("SELECT status, COUNT(*) FROM coverage GROUP BY status"))
        flags = dict(db.query("SELECT rule, COUNT(*) FROM flags GROUP BY rule"))
        return {
            "people": one("SELECT COUNT(*) FROM people"),
            "coverage": {k: int(v) for k, v in sorted(coverage.items())},
            "waiting_periods": one("SELECT COUNT(*) FROM waiting_periods"),
            "audit": one("SELECT COUNT(*) FROM audit"),
            "rejections": one("SELECT COUNT(*) FROM rejections"),
            "flags": {rule: int(flags.get(rule, 0)) for rule in RULES},
            "targets": one("SELECT COUNT(*) FROM targets"),
            "collectors": one("SELECT COUNT(*) FROM collectors"),
            "contacts": one("SELECT COUNT(*) FROM contacts"),
            "operators": one("SELECT COUNT(*) FROM operators"),
            "outbox": one("SELECT COUNT(*) FROM outbox"),
        }
    finally:
        db.close()


def file_size(path: Path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))
