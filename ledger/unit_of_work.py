"""The unit of work of an ``eventsourcing`` application: batches of facts saved together.

Outside a batch, ``save`` saves at once. Inside one (``batch()``), each fact sees what earlier
facts of the batch did (``load`` returns the batch's own aggregates first) and nothing is saved
until the batch ends or nears the store's atomic limit (``flush_if_full``): then everything the
batch changed is saved in one call, with what its ``DecisionRecord`` gives recorded atomically
beside the events (the ingestion's decisions and position). It knows aggregates and ids only,
none of the policy.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application

FLUSH_EVENTS = 800
"""A batch is saved when its pending events reach this (the store's atomic limit is 1,000)."""
PRELOAD_THREADS = 16


class DecisionRecord(Protocol):
    """What a batch records beside its events at each save (the ingestion's journal)."""

    def take(self) -> Any:
        """What to record with this save (None: nothing)."""

    def settled(self) -> None:
        """The save that took it went through."""

    @property
    def fenced(self) -> bool:
        """Whether every save must carry what ``take`` gives (events never go alone)."""


class UnitOfWork:
    """The batches of one application (one at a time) and its aggregate cache."""

    def __init__(self, app: Application[UUID]) -> None:
        # A weak reference: the application holds its unit of work, and a reference cycle would
        # leave an abandoned application to the cyclic garbage collector, whose ``__del__`` may
        # then run (and join the preload threads) inside a thread that is just starting: a
        # deadlock. Without the cycle it is freed when its last reference goes.
        self._app: Application[UUID] = weakref.proxy(app)
        self._batch: _Batch | None = None
        self._loader: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._loader is not None:
            self._loader.shutdown()

    @contextmanager
    def batch(self, expected: Iterable[UUID] = (), record: DecisionRecord | None = None) -> Iterator[None]:
        """Apply many facts, then save them together (one atomic append per ``FLUSH_EVENTS``).

        A refused fact changes nothing (its commands decide before they emit). If saving fails,
        nothing of the unsaved part is kept (cached aggregates it touched are dropped) and the
        exception propagates: the caller applies the facts again one by one, and those already
        saved come back as duplicates. ``expected`` (aggregates the facts concern) are looked up
        together first. ``record`` gives, at each save, what the store records atomically with
        the events (``decisions`` for ``insert_events``), and hears when that save went through.
        """
        if self._batch is not None:
            raise RuntimeError("batches do not nest")
        self._batch = batch = _Batch(record)
        try:
            self._preload(batch, expected)
            yield
            self._flush(batch)
        except BaseException:
            self._forget(batch.aggregates)
            raise
        finally:
            self._batch = None

    def load(self, aggregate_id: UUID) -> Any:
        """The aggregate as the current fact should see it: changed earlier in the current
        batch, or from the store (None when it does not exist)."""
        batch = self._batch
        if batch is not None:
            if aggregate_id in batch.aggregates:
                return batch.aggregates[aggregate_id]
            if aggregate_id in batch.absent:
                return None
        try:
            return self._app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def save(self, aggregates: tuple[Any, ...]) -> int:
        """Save ``aggregates`` (in a batch: when the batch saves); how many new events they hold."""
        batch = self._batch
        if batch is not None:
            return batch.add(aggregates)
        try:
            return len(self._app.save(*aggregates))
        except BaseException:
            # The aggregates may be the cached objects themselves, changed by this fact: a cache
            # that kept them would make the retried fact look like a duplicate.
            self._forget(a.id for a in aggregates)
            raise

    def flush_if_full(self, extra_messages: int = 0) -> None:
        """Save the batch so far when it nears the store's atomic limit (between two facts);
        ``extra_messages``: how many more messages ``record`` would add."""
        batch = self._batch
        if batch is not None and batch.pending_events + extra_messages >= FLUSH_EVENTS:
            self._flush(batch)

    def forget_cache(self) -> None:
        """Drop every aggregate held in memory: the next reads come from the store (after a
        failed save, or when this process becomes the writer after another)."""
        repository = self._app.repository
        cache = repository.cache
        if cache is None:
            return
        if hasattr(cache, "clear"):
            cache.clear()
        else:
            repository.cache = type(cache)()

    def _flush(self, batch: _Batch) -> None:
        record = batch.record
        decisions = record.take() if record is not None else None
        if decisions is not None or batch.aggregates:
            # The events in the order the facts emitted them, then the aggregates (their events
            # taken, for the cache): one save, recorded as the facts were decided.
            events = batch.events_in_order()
            if decisions is None and record is not None and record.fenced and events:
                # Events that no decision names would be recorded outside the fence: never.
                raise RuntimeError(f"{len(events)} events to save without the decisions that caused them")
            kwargs = {"decisions": decisions} if decisions is not None else {}
            self._app.save(*events, *batch.aggregates.values(), **kwargs)
        if record is not None:
            record.settled()
        batch.saved()

    def _forget(self, aggregate_ids: Iterable[UUID]) -> None:
        """Drop aggregates from the repository's cache (they may hold unsaved changes)."""
        cache = self._app.repository.cache
        if cache is not None:
            for aggregate_id in aggregate_ids:
                try:
                    cache.get(aggregate_id, evict=True)
                except KeyError:
                    pass

    def _preload(self, batch: _Batch, expected: Iterable[UUID]) -> None:
        ids = dict.fromkeys(expected)
        repository = self._app.repository
        cache = repository.cache
        if cache is not None:
            for aggregate_id in list(ids):
                try:
                    cache.get(aggregate_id)
                except KeyError:
                    continue
                del ids[aggregate_id]  # in memory already: loading it is cheap
        last_versions = getattr(self._app.recorder, "last_versions", None)
        if ids and last_versions is not None:
            existing = last_versions(list(ids))  # one round trip tells which aggregates are new
            for aggregate_id in [i for i in ids if i not in existing]:
                batch.absent.add(aggregate_id)
                del ids[aggregate_id]
        if not ids:
            return

        def load(aggregate_id: UUID) -> tuple[UUID, Any]:
            try:
                return aggregate_id, repository.get(aggregate_id)
            except AggregateNotFoundError:
                return aggregate_id, None

        if self._loader is None:
            self._loader = ThreadPoolExecutor(PRELOAD_THREADS, thread_name_prefix="ledger-preload")
        for aggregate_id, aggregate in self._loader.map(load, ids):
            if aggregate is None:
                batch.absent.add(aggregate_id)
            else:
                batch.aggregates[aggregate_id] = aggregate


class _Batch:
    """The aggregates a batch has loaded or changed, and the ids known not to exist yet."""

    def __init__(self, record: DecisionRecord | None = None) -> None:
        self.record = record
        self.aggregates: dict[UUID, Any] = {}
        self.absent: set[UUID] = set()
        self.pending: dict[UUID, int] = {}
        self.pending_events = 0
        self.order: list[tuple[UUID, int]] = []
        """Which aggregate's events, how many, in the order the facts emitted them."""

    def add(self, aggregates: tuple[Any, ...]) -> int:
        added = 0
        for aggregate in aggregates:
            self.aggregates[aggregate.id] = aggregate
            self.absent.discard(aggregate.id)
            count = len(aggregate.pending_events)
            new = count - self.pending.get(aggregate.id, 0)
            if new > 0:
                self.order.append((aggregate.id, new))
            added += new
            self.pending[aggregate.id] = count
        self.pending_events += added
        return added

    def events_in_order(self) -> list[Any]:
        """Every aggregate's pending events (taken from it), interleaved in the facts' order."""
        pending = {aggregate_id: iter(a.collect_events()) for aggregate_id, a in self.aggregates.items()}
        events = []
        for aggregate_id, count in self.order:
            for _ in range(count):
                event = next(pending[aggregate_id], None)
                if event is not None:
                    events.append(event)
        for rest in pending.values():  # events no fact announced (none expected): kept, after
            events.extend(rest)
        return events

    def saved(self) -> None:
        self.pending.clear()
        self.order.clear()
        self.pending_events = 0
