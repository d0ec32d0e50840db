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

from consumers.ingest import Delivery, Ingestor, Verdict
from consumers.schemas import SCHEMAS
from consumers.streams import REJECTED_PREFIX, UPSTREAM_SUBJECTS, Rejection, encode_rejection
from ledger.application import Ledger

log = logging.getLogger(__name__)

UpstreamMessage = Union[tuple(SCHEMAS.values())]  # type: ignore[valid-type]  # noqa: UP007
"""Any of the contract's upstream messages (documented in the AsyncAPI document)."""


@dataclass
class IngestSettings:
    """How the ingestion consumer reads and retries."""

    durable: str = "ledger-ingest"
    batch_size: int = 500
    fetch_timeout: float = 0.05
    """Seconds to wait for a batch to fill before handling what came."""
    ack_wait: float = 30.0
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
        broker.subscriber(
            UPSTREAM_SUBJECTS,
            stream=JStream("UPSTREAM", declare=False),
            durable=settings.durable,
            config=ConsumerConfig(
                ack_wait=settings.ack_wait,
                max_ack_pending=max(settings.batch_size * 2, 1000),
                deliver_policy=DeliverPolicy.ALL,
            ),
            pull_sub=PullSub(batch_size=settings.batch_size, timeout=settings.fetch_timeout, batch=True),
            ack_policy=AckPolicy.MANUAL,
            title="ledger ingestion",
            description=(
                "Every upstream fact of the contract, in stream order, in batches: each message is "
                "recorded in the ledger or rejected onto ledger.rejected.<reason>, then acknowledged."
            ),
        )(self.handle)

    async def handle(self, bodies: Annotated[list[UpstreamMessage], NoCast], message: NatsMessage) -> None:
        """One pull: apply it, store the rejections, acknowledge what is durable."""
        raws = message.raw_message
        deliveries = [
            Delivery(m.subject, m.data, m.metadata.num_delivered, m.metadata.sequence.stream) for m in raws
        ]
        try:
            verdicts = await asyncio.to_thread(self.ingestor.process, deliveries)
            await self._store_rejections(deliveries, verdicts)
        except Exception as e:  # noqa: BLE001 - nothing is acknowledged: all of it comes again
            log.warning("batch of %d not handled (%r): redelivering it", len(raws), e)
            verdicts = [Verdict("retry", detail=repr(e))] * len(raws)
        retry = False
        for raw, verdict in zip(raws, verdicts, strict=True):
            if verdict.final:
                await raw.ack()
            else:
                retry = True
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

    async def _store_rejections(self, deliveries: list[Delivery], verdicts: list[Verdict]) -> None:
        js = self.broker.config.connection_state.stream
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
            )
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


def asyncapi_document(service: IngestService) -> dict[str, Any]:
    """The AsyncAPI document FastStream generates for the ingestion subscriber."""
    spec = AsyncAPI(
        service.broker,
        title="Enrollment ledger — upstream contract",
        version="1.0.0",
        description=(
            "Upstream systems publish the facts of contract.md on upstream.<fact>; the ledger "
            "consumes them in order and rejects bad ones onto ledger.rejected.<reason>."
        ),
    )
    return msgspec.json.decode(msgspec.json.encode(spec.to_specification().to_jsonable()))
