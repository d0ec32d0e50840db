"""The ingestion service: a FastStream NATS broker with one durable JetStream pull consumer.

One consumer reads ``upstream.>`` in stream order, in batches: the order of each person's facts
across subjects (an enrollment before its payment) is kept, and one ``save()`` records a whole
batch. A message is acknowledged only once its outcome is durable: its events saved, or its
rejection stored on REJECTED. Transient failures are retried (the failed message and the rest
of its batch are redelivered next, after a back-off), never turned into rejections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import msgspec
from faststream import AckPolicy
from faststream.nats import NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.schemas import JStream
from faststream.params import NoCast
from faststream.specification import AsyncAPI
from nats.js.api import ConsumerConfig, DeliverPolicy

from consumers import natsfix  # noqa: F401 - nats-py loses fetched messages on Python 3.11 without it
from consumers.ingest import Delivery, Ingestor, Verdict
from consumers.schemas import SCHEMAS
from consumers.streams import REJECTED_PREFIX, UPSTREAM_SUBJECTS, Rejection, encode_rejection
from ledger.application import Ledger

log = logging.getLogger(__name__)

GAP_WAIT = 0.25
"""Seconds to wait before asking again when earlier messages are still out for redelivery."""

HEADER_ROOM = 1024
"""Bytes of a NATS message kept for a rejection's headers (the rest may hold its JSON)."""

UpstreamMessage = Union[tuple(SCHEMAS.values())]  # type: ignore[valid-type]  # noqa: UP007
"""Any of the contract's upstream messages (documented in the AsyncAPI document)."""


@dataclass
class IngestSettings:
    """How the ingestion consumer reads and retries."""

    durable: str = "ledger-ingest"
    batch_size: int = 500
    fetch_timeout: float = 0.05
    """Seconds to wait for a batch to fill before handling what came."""
    ack_wait: float = 10.0
    """Seconds before an unacknowledged message (its consumer died) is delivered again."""
    max_deliveries: int = 8
    """After this many deliveries a message failing for a non-policy reason is parked."""
    max_backoff: float = 30.0


@dataclass
class IngestStats:
    batches: int = 0
    recorded: int = 0
    duplicates: int = 0
    rejected: int = 0
    retried: int = 0
    events: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

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
            else:
                self.retried += 1

    @property
    def done(self) -> int:
        return self.recorded + self.duplicates + self.rejected


class IngestService:
    """Consumes UPSTREAM into the ``Ledger``; publishes rejections to REJECTED."""

    def __init__(
        self,
        ledger: Ledger | None,
        broker: NatsBroker,
        settings: IngestSettings | None = None,
        on_batch: Callable[[list[Verdict]], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.broker = broker
        self.settings = settings = settings or IngestSettings()
        self.ingestor = Ingestor(ledger, max_deliveries=settings.max_deliveries)  # type: ignore[arg-type]
        self.stats = IngestStats()
        self._on_batch = on_batch
        self._failures = 0
        self._done: int | None = None
        broker.subscriber(
            UPSTREAM_SUBJECTS,
            stream=JStream("UPSTREAM", declare=False),
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
        )(self.handle)

    async def handle(self, bodies: Annotated[list[UpstreamMessage], NoCast], message: NatsMessage) -> None:
        """One pull: apply it in stream order, store the rejections, acknowledge what is durable.

        UPSTREAM's sequences have no gaps (it refuses deletes), so a message may be applied only
        when every earlier one has been: a pull that skips some (they are still out with a
        consumer that died, awaiting redelivery) is put back until they arrive. This keeps each
        person's facts in order through crashes and reconnections.
        """
        if self._done is None:
            self._done = await self._ack_floor()
        raws = sorted(message.raw_message, key=lambda m: m.metadata.sequence.stream)
        ready, later = self._in_order(raws)
        missing: list[Delivery] = []
        if later and not ready:
            # An earlier message is out and not here: with a consumer that died (redelivered
            # after ack_wait), or lost on its way to this client. Either way it is in the stream:
            # read it from there and apply it first, in order, rather than hold everything behind
            # it for ack_wait. Its own delivery comes back later, a duplicate acknowledged so.
            missing = await self._read_missing(self._done + 1, later[0].metadata.sequence.stream)
            if missing:
                self._done = missing[-1].stream_seq
                ready, later = self._in_order(later)
        deliveries = missing + [
            Delivery(m.subject, m.data, m.metadata.num_delivered, m.metadata.sequence.stream) for m in ready
        ]
        try:
            verdicts = await asyncio.to_thread(self.ingestor.process, deliveries) if deliveries else []
            await self._store_rejections(deliveries, verdicts)
        except Exception as e:  # noqa: BLE001 - nothing is acknowledged: all of it comes again
            log.warning("batch of %d not handled (%r): redelivering it", len(deliveries), e)
            verdicts = [Verdict("retry", detail=repr(e))] * len(deliveries)
        if missing and not all(v.final for v in verdicts[: len(missing)]):
            self._done = missing[0].stream_seq - 1  # they come again with their redelivery
        retry = False
        for raw, verdict in zip(ready, verdicts[len(missing) :], strict=True):
            if verdict.final:
                await raw.ack()
                seq = raw.metadata.sequence.stream
                if not retry and seq == self._done + 1:
                    self._done = seq
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

    async def _read_missing(self, first: int, end: int) -> list[Delivery]:
        """Messages ``first`` … ``end - 1`` of UPSTREAM read from the stream (at most a batch)."""
        js = self.broker.config.connection_state.stream
        found = []
        for seq in range(first, min(end, first + self.settings.batch_size)):
            try:
                stored = await js.get_msg("UPSTREAM", seq, direct=True)
            except Exception as e:  # noqa: BLE001 - then wait for its redelivery, as before
                log.warning("could not read UPSTREAM %d ahead of its redelivery: %r", seq, e)
                break
            found.append(Delivery(stored.subject or "", stored.data or b"", 1, seq))
        return found

    def _in_order(self, raws: list[Any]) -> tuple[list[Any], list[Any]]:
        """The messages that follow what is done without a gap, and those after a gap."""
        assert self._done is not None
        expect = self._done + 1
        ready: list[Any] = []
        for index, raw in enumerate(raws):
            seq = raw.metadata.sequence.stream
            if seq > expect:
                return ready, raws[index:]
            ready.append(raw)
            expect = max(expect, seq + 1)
        return ready, []

    async def _ack_floor(self) -> int:
        """The last stream sequence up to which every message has been acknowledged (or, before
        any, the one before the stream's first message)."""
        nc = self.broker.config.connection_state.connection
        consumer = await nc.request(f"$JS.API.CONSUMER.INFO.UPSTREAM.{self.settings.durable}", b"", timeout=10)
        stream = await nc.request("$JS.API.STREAM.INFO.UPSTREAM", b"", timeout=10)
        acked = int(msgspec.json.decode(consumer.data)["ack_floor"]["stream_seq"])
        first = int(msgspec.json.decode(stream.data)["state"]["first_seq"])
        return max(acked, first - 1)

    async def _store_rejections(self, deliveries: list[Delivery], verdicts: list[Verdict]) -> None:
        js = self.broker.config.connection_state.stream
        fits = self.broker.config.connection_state.connection.max_payload - HEADER_ROOM
        acks = []
        for delivery, verdict in zip(deliveries, verdicts, strict=True):
            if verdict.kind != "rejected":
                continue
            rejection = Rejection.of(
                msg_id=verdict.msg_id,
                subject=delivery.subject,
                reason=verdict.reason or "unprocessable",
                detail=verdict.detail or "",
                data=delivery.data,
                upstream_seq=delivery.stream_seq,
                person_key=verdict.person_key,
            ).fitting(fits)
            acks.append(
                js.publish(
                    f"{REJECTED_PREFIX}.{rejection.reason}",
                    encode_rejection(rejection),
                    headers=rejection.headers(),
                    stream="REJECTED",
                )
            )
        if acks:
            await asyncio.gather(*acks)


async def _bodies_as_sent(message: Any) -> Any:
    """The pull's bodies, undecoded: ``handle`` decodes each with its subject's schema.

    FastStream's default decoder would first ``json.loads`` every body, and a body that makes it
    raise (JSON nested thousands deep, a number of more than 4,300 digits, or any malformed body
    with a JSON content-type header) would fail the whole pull before ``handle`` runs: nothing
    acknowledged, the same failure at every redelivery, the ingestion stalled behind it.
    """
    return message.body


def asyncapi_document(service: IngestService) -> dict[str, Any]:
    """The AsyncAPI document FastStream generates for the ingestion subscriber."""
    spec = AsyncAPI(
        service.broker,
        title="Enrollment ledger — upstream contract",
        version="1.0.0",
        description=(
            "Upstream systems publish the facts of contract.md on upstream.<fact>; the ledger "
            "consumes them in order and rejects bad ones onto ledger.rejected.<reason>. "
            "Downstream services ask coverage.query."
        ),
    )
    return msgspec.json.decode(msgspec.json.encode(spec.to_specification().to_jsonable()))
