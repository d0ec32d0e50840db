"""The workloads, each a function of an ``eventsourcing`` application recorder.

They only use the library's recorder interface (``insert_events``, ``select_notifications``,
``select_events``), so the same function measures this store, SQLite and PostgreSQL. Events are
built before the clock starts (see ``events.py``); each function times only recorder calls.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from eventsourcing.persistence import ApplicationRecorder, StoredEvent

from bench.store.events import EventFactory
from bench.store.measure import Measurement

READ_PAGE = 1000
"""Notifications asked for per ``select_notifications`` call when reading everything back."""

GROUP_COMMIT_THREADS = 64
LOAD_VERSIONS = 5

perf = time.perf_counter


def warm_up(recorder: ApplicationRecorder, events: EventFactory) -> None:
    """A few of every call, untimed: connections, prepared statements, streams, caches."""
    for event in events.single(100):
        recorder.insert_events([event])
    for save in events.saves(3, aggregates_per_save=20, versions=5):
        recorder.insert_events(save)
    recorder.select_notifications(None, limit=READ_PAGE)
    for aggregate in events.aggregates(20, LOAD_VERSIONS):
        recorder.insert_events(aggregate)
        recorder.select_events(aggregate[0].originator_id)
    _run_threads(8, [[e] for e in events.single(200)], recorder.insert_events)


def single_saves(recorder: ApplicationRecorder, events: Sequence[StoredEvent]) -> Measurement:
    """(a) One thread saves one event of a new aggregate at a time, waiting for each."""
    latencies = []
    started = perf()
    for event in events:
        t = perf()
        recorder.insert_events([event])
        latencies.append(perf() - t)
    elapsed = perf() - started
    return Measurement(len(events), elapsed, latencies_ms=[x * 1e3 for x in latencies])


def batched_saves(recorder: ApplicationRecorder, saves: Sequence[Sequence[StoredEvent]]) -> Measurement:
    """(b) One thread saves many events per call (each call atomic)."""
    latencies = []
    started = perf()
    for save in saves:
        t = perf()
        recorder.insert_events(save)
        latencies.append(perf() - t)
    elapsed = perf() - started
    return Measurement(sum(len(s) for s in saves), elapsed, latencies_ms=[x * 1e3 for x in latencies])


def read_all(recorder: ApplicationRecorder) -> Measurement:
    """(c) Page through the whole application sequence, ``READ_PAGE`` notifications a call."""
    count = calls = 0
    start: int | None = None
    inclusive = True
    started = perf()
    while True:
        page = recorder.select_notifications(start, limit=READ_PAGE, inclusive_of_start=inclusive)
        calls += 1
        count += len(page)
        if len(page) < READ_PAGE:
            break
        start, inclusive = page[-1].id, False
    elapsed = perf() - started
    return Measurement(count, elapsed, extra={"calls": calls})


def load_aggregates(recorder: ApplicationRecorder, aggregates: Sequence[Sequence[StoredEvent]]) -> Measurement:
    """(d) Insert the aggregates (untimed, several threads), then time ``select_events`` of each,
    in random order. The rate is aggregates loaded per second; latencies are per load."""
    _run_threads(16, aggregates, recorder.insert_events)
    ids = [aggregate[0].originator_id for aggregate in aggregates]
    random.Random(5).shuffle(ids)
    expected = len(aggregates[0])
    latencies = []
    started = perf()
    for originator_id in ids:
        t = perf()
        found = recorder.select_events(originator_id)
        latencies.append(perf() - t)
        if len(found) != expected:
            raise AssertionError(f"loaded {len(found)} events of {originator_id}, expected {expected}")
    elapsed = perf() - started
    return Measurement(len(ids), elapsed, unit="aggregates", latencies_ms=[x * 1e3 for x in latencies])


def group_commit(
    recorder: ApplicationRecorder, events: Sequence[StoredEvent], threads: int = GROUP_COMMIT_THREADS
) -> Measurement:
    """(e) ``threads`` threads each save single events of new aggregates, all at once.

    The clock runs from releasing the threads together until the last save returns; latencies
    are per save, as one thread sees them.
    """
    elapsed, latencies = _run_threads(threads, [[e] for e in events], recorder.insert_events)
    return Measurement(len(events), elapsed, latencies_ms=[x * 1e3 for x in latencies])


def _run_threads(
    threads: int, saves: Sequence[Sequence[StoredEvent]], save: Callable[[Sequence[StoredEvent]], object]
) -> tuple[float, list[float]]:
    """Run ``save`` on every item of ``saves`` from ``threads`` threads started together; return
    the elapsed seconds and each call's duration (seconds)."""
    shares = [saves[i::threads] for i in range(threads)]
    gate = threading.Barrier(threads + 1)
    durations: list[list[float]] = [[] for _ in range(threads)]

    def worker(i: int) -> None:
        gate.wait()
        mine = durations[i]
        for item in shares[i]:
            t = perf()
            save(item)
            mine.append(perf() - t)

    with ThreadPoolExecutor(threads, thread_name_prefix="bench") as pool:
        futures = [pool.submit(worker, i) for i in range(threads)]
        gate.wait()
        started = perf()
        for future in futures:
            future.result()
        elapsed = perf() - started
    return elapsed, [d for mine in durations for d in mine]


def server_memory_per_subject(
    recorder: ApplicationRecorder,
    server_pid: int,
    aggregates: int,
    events: EventFactory,
    aggregates_per_save: int = 100,
    threads: int = 8,
) -> Measurement:
    """(f) nats-server's resident memory added by ``aggregates`` new single-event aggregates.

    Saves of ``aggregates_per_save`` new aggregates from ``threads`` threads (which the group
    commit merges into batches of up to 1,000), on a fresh stream. ``extra`` holds the RSS
    before/after and bytes per subject; the count is the aggregates added.
    """
    saves_per_round = 200  # build events in rounds to keep the benchmark's own memory small
    rss_before = read_rss(server_pid)
    remaining = aggregates
    elapsed = 0.0
    while remaining:
        n = min(remaining, saves_per_round * aggregates_per_save)
        saves = [events.single(min(aggregates_per_save, n - i)) for i in range(0, n, aggregates_per_save)]
        seconds, _ = _run_threads(threads, saves, recorder.insert_events)
        elapsed += seconds
        remaining -= n
    time.sleep(1.0)  # let the server settle (flushes, the Go runtime's bookkeeping)
    rss_after = read_rss(server_pid)
    per_subject = (rss_after - rss_before) / aggregates
    return Measurement(
        aggregates,
        elapsed,
        unit="aggregates",
        extra={
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "bytes_per_subject": per_subject,
            "bytes_per_million_aggregates": per_subject * 1_000_000,
        },
    )


def read_rss(pid: int) -> int:
    """VmRSS of process ``pid`` in bytes (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
