"""The ingestion service: a FastStream NATS broker with one durable JetStream pull consumer.

One consumer reads ``upstream.>`` in stream order, in batches: the order of each person's facts
across subjects (an enrollment before its payment) is kept, and one atomic append records a
whole batch: its events, its rejections and parkings, and the UPSTREAM position it reached
(``consumers.ingest``). A message at or below the recorded position is acknowledged without being
decided again. Transient failures are retried (the failed message and the rest of its batch are
redelivered next, after a back-off), never turned into rejections.

Any number of services may run on one set of streams: the one holding the writer lease
(``consumers.lease``) ingests; the others stand by (their consumer stopped) and take over when
the lease expires. A writer whose fence was claimed by another steps down at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, Union

import msgspec
from faststream import AckPolicy, Context
from faststream.nats import NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from faststream.nats.schemas import JStream
from faststream.params import NoCast
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from consumers import natsfix  # noqa: F401 - nats-py loses fetched messages on Python 3.11 without it
from consumers.ingest import Delivery, Ingestor, Journal, Verdict, read_parked
from consumers.lease import WriterLease
from consumers.streams import IntakeLimits
from contract.messages import SCHEMAS, Upstream
from contract.subjects import PARKED_RETRY_SUBJECT, UPSTREAM_STREAM, UPSTREAM_SUBJECTS
from ledger.application import Ledger
from ledger.jetstream.datastore import Fence, WriterFencedError

log = logging.getLogger(__name__)

GAP_WAIT = 0.25
"""Seconds to wait before asking again when earlier messages are still out for redelivery."""

"""Request ``{"seqs": [...]}`` (or ``{}`` for all): the writer decides those parked messages again."""


class RetryRequest(msgspec.Struct):
    seqs: list[int] | None = None


if TYPE_CHECKING:
    UpstreamMessage: TypeAlias = Upstream  # what the Union below is made of: mypy cannot read it
else:
    UpstreamMessage = Union[tuple(SCHEMAS.values())]  # noqa: UP007
"""Any of the contract's upstream messages (documented in the AsyncAPI document)."""


@dataclass
class IngestSettings:
    """How the ingestion consumer reads, retries and holds the writer lease."""

    durable: str = "ledger-ingest"
    batch_size: int = 500
    fetch_timeout: float = 0.05
    """Seconds to wait for a batch to fill before handling what came."""
    ack_wait: float = 10.0
    """Seconds before an unacknowledged message (its consumer died) is delivered again."""
    max_backoff: float = 30.0
    lease_ttl: float = 5.0
    """Seconds without renewal after which the writer lease expires and a standby takes over."""
    standby_poll: float = 0.5
    """How often a standby tries to take the lease."""
    replicas: int = 1
    """Replicas of the lease bucket when it is created."""
    refuse_unattributed: bool = False
    """Refuse messages that reached UPSTREAM without a sender account (``not_authorised``)."""
    intake_limits: IntakeLimits = field(default_factory=IntakeLimits)
    """The limits of each sender's intake stream, when the ingestion creates them."""


@dataclass
class IngestStats:
    batches: int = 0
    recorded: int = 0
    duplicates: int = 0
    rejected: int = 0
    parked: int = 0
    decided_before: int = 0
    retried: int = 0
    events: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    parked_by_reason: dict[str, int] = field(default_factory=dict)
    takeovers: int = 0
    stepped_down: int = 0

    def count(self, verdicts: list[Verdict]) -> None:
        self.batches += 1
        for v in verdicts:
            if v.kind == "recorded":
                self.recorded += 1
                self.events += v.events
            elif v.kind == "duplicate":
                self.duplicates += 1
            elif v.kind == "rejected":
                self.rejected += 1
                self.by_reason[v.reason or "?"] = self.by_reason.get(v.reason or "?", 0) + 1
            elif v.kind == "parked":
                self.parked += 1
                self.parked_by_reason[v.reason or "?"] = self.parked_by_reason.get(v.reason or "?", 0) + 1
            elif v.kind == "decided":
                self.decided_before += 1
            else:
                self.retried += 1

    @property
    def done(self) -> int:
        return self.recorded + self.duplicates + self.rejected + self.parked


class IngestService:
    """Consumes UPSTREAM into the ``Ledger`` while it holds the writer lease."""

    def __init__(
        self,
        ledger: Ledger | None,
        broker: NatsBroker,
        settings: IngestSettings | None = None,
        on_batch: Callable[[list[Verdict]], None] | None = None,
        on_role: Callable[[str], None] | None = None,
    ) -> None:
        """``on_role(role)`` is told each time the service becomes the ``writer`` or a
        ``standby`` (``ledger serve`` publishes coverage downstream only while writing)."""
        self.ledger = ledger
        self._on_role = on_role
        self.broker = broker
        self.settings = settings = settings or IngestSettings()
        self.ingestor = Ingestor(ledger, refuse_unattributed=settings.refuse_unattributed) if ledger is not None else None
        self.stats = IngestStats()
        self._on_batch = on_batch
        self._failures = 0
        self._done = 0
        self.role = "starting"
        """``writer`` while holding the lease, ``standby`` otherwise."""
        self.lease: WriterLease | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._standing_by = False
        self._consumer_missing = 0
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._deciding = asyncio.Lock()
        """Held while a pull or an operator's retry is decided: one at a time."""
        self._retries: Any = None
        self._nc: Client | None = None
        """The broker's connection, from ``start``."""
        self._closed = False
        self.subscriber = broker.subscriber(
            UPSTREAM_SUBJECTS,
            stream=JStream(UPSTREAM_STREAM, declare=False),
            durable=settings.durable,
            config=ConsumerConfig(
                ack_wait=settings.ack_wait,
                # Room for the next pull while one is applied. Order does not depend on it:
                # ``_in_order`` puts back whatever comes after messages still out for redelivery.
                max_ack_pending=settings.batch_size * 2,
                deliver_policy=DeliverPolicy.ALL,
            ),
            pull_sub=PullSub(batch_size=settings.batch_size, timeout=settings.fetch_timeout, batch=True),
            ack_policy=AckPolicy.MANUAL,
            decoder=_bodies_as_sent,
            title="ledger ingestion",
            description=(
                "Every upstream fact of the contract, in stream order, in batches: each message is "
                "recorded in the ledger or rejected onto ledger.rejected.<reason>, then acknowledged."
            ),
        )
        self.subscriber(self.handle)
        # The broker stops its subscribers before it closes the connection: that is the moment to
        # give the lease up, so that a standby need not wait for it to expire. (The service itself
        # stops and restarts the consumer with ``_stop_consumer`` when it stands by.)
        self._stop_consumer = self.subscriber.stop
        self.subscriber.stop = self._on_broker_stop  # type: ignore[method-assign]

    # ---- the writer role ----------------------------------------------------------------------

    @property
    def nc(self) -> Client:
        """The broker's connection (after ``start``)."""
        if self._nc is None:
            raise RuntimeError("IngestService.start() was not called")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """JetStream on the broker's connection (after ``start``)."""
        return self.nc.jetstream()

    @property
    def writing(self) -> bool:
        return self.role == "writer" and self.lease is not None and self.lease.held

    def _start_keeper(self) -> None:
        if self._keeper is None and not self._closed:
            self.lease = WriterLease(self.js, ttl=self.settings.lease_ttl, replicas=self.settings.replicas)
            self._keeper = asyncio.create_task(self._keep_lease(), name="ledger-writer-lease")

    async def _keep_lease(self) -> None:
        """Hold the lease while writing, try to take it while standing by, until ``close``."""
        assert self.lease is not None
        lease = self.lease
        try:
            while not self._closed:
                try:
                    if lease.held and self.role == "writer":
                        if not await lease.renew():
                            await self._step_down("the writer lease expired or was taken")
                        else:
                            await self._check_consumer()
                        await asyncio.sleep(lease.renew_every)
                        continue
                    if lease.held:
                        # Held but not writing (a take-over that failed half way): let it go.
                        await lease.release()
                    elif await lease.acquire():
                        await self._take_over()
                        continue
                    elif self.role != "standby":
                        await self._stand_by()
                except WriterFencedError as e:
                    await self._step_down(str(e))
                except Exception as e:  # noqa: BLE001 - NATS away for a moment: keep trying
                    log.warning("event=lease_error error=%r", e)
                await asyncio.sleep(self.settings.standby_poll)
        finally:
            if lease.held:
                try:
                    await lease.release()
                except Exception as e:  # noqa: BLE001 - it expires by itself
                    log.info("event=lease_not_released error=%r (it expires by itself)", e)

    async def _take_over(self) -> None:
        """Become the writer: claim the fence, read the position and the parked messages back,
        forget every cached aggregate (another writer may have changed them). Nothing is decided
        meanwhile (an operator's retry waits). If any of it fails, the lease is let go."""
        assert self.lease is not None and self.lease.epoch is not None and self.ledger is not None
        assert self.ingestor is not None
        datastore = self.ledger.recorder.datastore  # type: ignore[attr-defined]
        stream = datastore.stream
        fence = Fence(datastore.tracking_subject(UPSTREAM_STREAM), self.lease.epoch)
        body = msgspec.json.encode({"claim": fence.epoch, "writer": self.lease.holder})
        try:
            async with self._deciding:
                # Streams written before this layout have no tracking record: what the consumer
                # acknowledged then had its outcome, so the first claim starts from there.
                first = await self._acknowledged()
                position = await asyncio.to_thread(datastore.claim, stream, fence, body, first)
                parked = await asyncio.to_thread(read_parked, datastore)
                self.ledger.forget_cache()
                self.ingestor.journal = Journal(
                    fence=fence,
                    position=position,
                    max_payload=self.nc.max_payload,
                    writer=self.lease.holder,
                    read_position=lambda: datastore.position(stream, fence.subject),
                    parked=parked,
                    read_parked=lambda: read_parked(datastore),
                    seal=getattr(self.ledger.mapper.cipher, "encrypt", None),
                )
        except BaseException:
            await self.lease.release()
            raise
        self._done = position
        self._set_role("writer")
        self.stats.takeovers += 1
        log.info(
            "event=writer epoch=%d holder=%s position=%d parked=%d",
            fence.epoch, self.lease.holder, position, len(self.ingestor.journal.parked),
        )  # fmt: skip
        if self._standing_by:
            self._standing_by = False
            await self.subscriber.start()

    async def _acknowledged(self) -> int:
        """The durable consumer's ack floor (0 if it does not exist yet)."""
        js = self.js
        try:
            info = await js.consumer_info(UPSTREAM_STREAM, self.settings.durable)
        except NotFoundError:
            return 0
        return int(info.ack_floor.stream_seq) if info.ack_floor else 0

    async def _check_consumer(self) -> None:
        """Recreate the durable consumer if someone deleted it (its pull loop cannot recover by
        itself), and restart the pull loop if it is not running. Nothing is decided twice: the
        position, not the consumer, says what is done. "Not found" must be said twice in a row
        (a consumer whose stream is electing a leader can look missing for a moment)."""
        js = self.js
        try:
            await js.consumer_info(UPSTREAM_STREAM, self.settings.durable)
            self._consumer_missing = 0
        except NotFoundError:
            self._consumer_missing += 1
            if self._consumer_missing < 2:
                return
            log.warning("event=consumer_missing consumer=%s: recreating it", self.settings.durable)
            self._consumer_missing = 0
            self._background(self._restart_consumer(), "restart the consumer")
            return
        if not self.subscriber.running and not self._closed and not self._standing_by:
            self._background(self._restart_consumer(), "restart the consumer")

    async def _restart_consumer(self) -> None:
        """Stop the pull loop (after the pull under way) and start it again, which creates the
        durable consumer if it is missing. Not in the lease's loop: renewals go on meanwhile."""
        await self._stop_consumer()
        if not self._closed and not self._standing_by:
            await self.subscriber.start()

    def _background(self, work: Any, what: str) -> None:
        """Run ``work`` as a task of its own, once at a time per ``what``; its failure is logged."""
        running = self._tasks.get(what)
        if running is not None and not running.done():
            work.close()
            return
        task = asyncio.create_task(work, name=what)
        self._tasks[what] = task

        def done(finished: asyncio.Task[Any]) -> None:
            if not finished.cancelled() and finished.exception() is not None:
                log.error("event=background_failed what=%r error=%r", what, finished.exception())

        task.add_done_callback(done)

    async def _stand_by(self) -> None:
        holder = await self.lease.current() if self.lease is not None else None
        log.info("event=standby writer=%s", holder[0] if holder else "?")
        self._set_role("standby")
        if not self._standing_by and self.subscriber.running:
            self._standing_by = True
            await self._stop_consumer()

    def _set_role(self, role: str) -> None:
        changed, self.role = self.role != role, role
        if changed and self._on_role is not None:
            try:
                self._on_role(role)
            except Exception as e:  # noqa: BLE001 - the role holds whatever the listener does
                log.error("event=role_listener_failed role=%s error=%r", role, e)

    async def _step_down(self, why: str) -> None:
        log.warning("event=stepped_down reason=%r", why)
        self.stats.stepped_down += 1
        self._set_role("standby")  # at once: no pull is decided from here on
        if self.lease is not None and self.lease.held:
            try:
                await self.lease.release()  # fenced while holding it: let another writer (or this one) claim anew
            except Exception as e:  # noqa: BLE001 - it expires by itself
                log.info("event=lease_not_released error=%r (it expires by itself)", e)
        # The journal keeps its fence: a batch still in flight can only be recorded if no other
        # writer has claimed the subject yet (and then the successor's claim comes after it).
        # The cache is forgotten when this service writes again (``_take_over``).
        await self._stand_by()

    async def _on_broker_stop(self) -> None:
        await self._stop_consumer()
        await self.close()

    async def start(self) -> None:
        """Start contending for the writer lease (after the broker started), and answer
        operators' retries of parked messages while writing."""
        # The broker's connection (it is connected by now: this returns the same one).
        self._nc = nc = await self.broker.connect()
        self._start_keeper()
        self._retries = await nc.subscribe(PARKED_RETRY_SUBJECT, cb=self._on_retry)

    async def _on_retry(self, msg: Any) -> None:
        if not self.writing:
            return  # standbys stay silent: the writer answers
        try:
            request = msgspec.json.decode(msg.data or b"{}", type=RetryRequest)
            results = await self.retry_parked(request.seqs)
            reply = msgspec.json.encode({"writer": self.lease.holder if self.lease else "", "results": results})
        except WriterFencedError as e:
            reply = msgspec.json.encode({"error": f"this service is no longer the writer: {e}"})
            self._background(self._step_down(str(e)), "step down")
        except Exception as e:  # noqa: BLE001 - the operator hears of it
            reply = msgspec.json.encode({"error": repr(e)[:500]})
        if msg.reply:
            await msg.respond(reply)

    async def retry_parked(self, seqs: list[int] | None = None) -> list[dict[str, Any]]:
        """Decide parked messages again (all, or ``seqs``), oldest first, each after the ones
        about the same person before it; a message still held behind one that stays parked is
        left as it is. Returns each message's new outcome."""
        assert self.ingestor is not None
        js = self.js
        results: list[dict[str, Any]] = []
        async with self._deciding:
            journal = self.ingestor.journal
            for seq in sorted(seqs if seqs else list(journal.parked)):
                parked = journal.parked.get(seq)
                if parked is None:
                    results.append({"upstream_seq": seq, "outcome": "not_parked"})
                    continue
                behind = journal.holding(parked.holds)
                if behind is not None and behind != seq:
                    results.append({"upstream_seq": seq, "outcome": "parked", "reason": "held", "behind": behind})
                    continue
                stored = await js.get_msg(UPSTREAM_STREAM, seq, direct=True)
                delivery = Delivery(stored.subject or "", stored.data or b"", 1, seq)
                (verdict,) = await asyncio.to_thread(self.ingestor.process, [delivery], retrying=True)
                self.stats.count([verdict])
                results.append({"upstream_seq": seq, "outcome": verdict.kind, "reason": verdict.reason})
        return results

    async def close(self) -> None:
        """Stop holding (or waiting for) the lease; the broker stops the consumer itself."""
        self._closed = True
        for task in self._tasks.values():
            task.cancel()
        if self._retries is not None:
            await self._retries.unsubscribe()
            self._retries = None
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self.lease is not None and self.lease.held:
            await self.lease.release()

    # ---- handling a pull ----------------------------------------------------------------------

    async def handle(
        self, bodies: Annotated[list[UpstreamMessage], NoCast], message: Annotated[NatsBatchMessage, Context("message")]
    ) -> None:
        """One pull: decide it in stream order and acknowledge what is recorded.

        UPSTREAM's sequences have no gaps (it refuses deletes), so a message may be decided only
        when every earlier one has been: a pull that skips some (they are still out with a
        consumer that died, awaiting redelivery) reads them from the stream first.
        """
        # One delivery per message: a pull that spans a redelivery can hold a message twice.
        raws = sorted({m.metadata.sequence.stream: m for m in message.raw_message}.values(), key=lambda m: m.metadata.sequence.stream)
        if not self.writing:
            self._start_keeper()
            if not await self._wait_for_role():
                for raw in raws:
                    await raw.nak(delay=1)
                return
        assert self.ingestor is not None
        journal = self.ingestor.journal
        self._done = journal.position
        for raw in raws:
            if raw.metadata.sequence.stream <= self._done:
                await raw.ack()  # decided before: by this writer or an earlier one
        raws = [r for r in raws if r.metadata.sequence.stream > self._done]
        ready, later = self._in_order(raws)
        missing: list[Delivery] = []
        if later and not ready:
            # An earlier message is out and not here: with a consumer that died (redelivered
            # after ack_wait), or lost on its way to this client. Either way it is in the stream:
            # read it from there and decide it first, in order, rather than hold everything behind
            # it for ack_wait. Its own delivery comes back later and is acknowledged as decided.
            missing = await self._read_missing(self._done + 1, later[0].metadata.sequence.stream)
            if missing:
                self._done = missing[-1].stream_seq
                ready, later = self._in_order(later)
        deliveries = missing + [
            Delivery(m.subject, m.data, m.metadata.num_delivered, m.metadata.sequence.stream) for m in ready
        ]
        try:
            async with self._deciding:
                verdicts = await asyncio.to_thread(self.ingestor.process, deliveries) if deliveries else []
        except WriterFencedError as e:
            for raw in ready + later:
                await raw.nak(delay=1)
            # Not from here: stopping the consumer waits for this very handler to return.
            self._background(self._step_down(str(e)), "step down")
            return
        except Exception as e:  # noqa: BLE001 - nothing is acknowledged: all of it comes again
            log.warning("batch of %d not handled (%r): redelivering it", len(deliveries), e)
            verdicts = [Verdict("retry", detail=repr(e))] * len(deliveries)
        self._done = journal.position
        retry = False
        for raw in ready:
            if raw.metadata.sequence.stream <= self._done:
                await raw.ack()
            else:
                retry = True
                await raw.nak()
        for raw in later:
            await raw.nak()
        self.stats.count(verdicts)
        if self._on_batch is not None:
            self._on_batch(verdicts)
        if retry:
            # Redeliveries come before new messages: waiting here keeps each person's order.
            self._failures += 1
            await asyncio.sleep(min(self.settings.max_backoff, 0.2 * 2 ** min(self._failures, 8)))
        else:
            self._failures = 0
            if later:
                await asyncio.sleep(GAP_WAIT)

    async def _wait_for_role(self) -> bool:
        """Until the lease keeper has decided this service's role; True when it writes."""
        deadline = time.monotonic() + self.settings.lease_ttl * 2
        while self.role == "starting" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.writing

    async def _read_missing(self, first: int, end: int) -> list[Delivery]:
        """Messages ``first`` … ``end - 1`` of UPSTREAM read from the stream (at most a batch)."""
        js = self.js
        found = []
        for seq in range(first, min(end, first + self.settings.batch_size)):
            try:
                stored = await js.get_msg(UPSTREAM_STREAM, seq, direct=True)
            except Exception as e:  # noqa: BLE001 - then wait for its redelivery, as before
                log.warning("could not read UPSTREAM %d ahead of its redelivery: %r", seq, e)
                break
            found.append(Delivery(stored.subject or "", stored.data or b"", 1, seq))
        return found

    def _in_order(self, raws: list[Any]) -> tuple[list[Any], list[Any]]:
        """The messages that follow what is done without a gap, and those after a gap."""
        expect = self._done + 1
        ready: list[Any] = []
        for index, raw in enumerate(raws):
            seq = raw.metadata.sequence.stream
            if seq > expect:
                return ready, raws[index:]
            ready.append(raw)
            expect = max(expect, seq + 1)
        return ready, []


async def _bodies_as_sent(message: Any) -> Any:
    """The pull's bodies, undecoded: ``handle`` decodes each with its subject's schema.

    FastStream's default decoder would first ``json.loads`` every body, and a body that makes it
    raise (JSON nested thousands deep, a number of more than 4,300 digits, or any malformed body
    with a JSON content-type header) would fail the whole pull before ``handle`` runs: nothing
    acknowledged, the same failure at every redelivery, the ingestion stalled behind it.
    """
    return message.body
