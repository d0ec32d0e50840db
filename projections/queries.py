"""``coverage.query``: "is this person covered on this date?" over NATS request/reply.

The answer is the domain's coverage question (``ledger.domain.coverage_question``) asked of the
person as the ledger's **committed** events made them:

- with live projections (``ledger serve``), from the person the projection folded from the
  LEDGER stream, in memory (no round trip); ``ledger_seq`` is the last ledger event the
  projection had applied, so the answer says how current it is. A person the projection does
  not hold in memory is read from the event store.
- with ``as_of``, from the events recorded by then only (what the ledger knew at that time).

Never from the ingestion's working copies: a fact being applied but not yet saved is not an
answer. A malformed request, or one with an invalid ID number, gets ``{"error": reason}``; an
unknown person is a reply (``not_enrolled``), not an error.

The responder is a plain NATS subscription in a queue group (several ledgers can share the
load), on the broker's connection; ``docs/asyncapi.json`` documents the request and its reply
(``contract.asyncapi``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from contract.coverage import CoverageRequest
from contract.messages import check_utf8
from contract.subjects import COVERAGE_QUERY
from contract.subjects import COVERAGE_QUERY_GROUP as QUEUE_GROUP
from ledger.domain.coverage_question import CoverageAnswer, answer, answer_as_of, fold
from ledger.domain.identity import ResidentId
from ledger.domain.person import person_id
from ledger.domain.refusals import Malformed, Refusal

if TYPE_CHECKING:
    from ledger.application import Ledger
    from projections.projection import LedgerProjection

log = logging.getLogger("ledger.queries")



_decode_request = msgspec.json.Decoder(CoverageRequest).decode
_encode = msgspec.json.Encoder().encode


class CoverageAnswerer:
    """Answers coverage requests from committed events (see the module docstring)."""

    SEQ_REFRESH = 0.2
    """Seconds a store-read ``ledger_seq`` is reused (without projections)."""

    def __init__(self, ledger: Ledger, projection: LedgerProjection | None = None) -> None:
        self.ledger = ledger
        self.projection = projection
        self._seq = (0, -1.0)

    def quick(self, data: bytes) -> bytes | None:
        """The reply when it needs no store read (a malformed request, or a person the projection
        holds); None when ``reply`` must read the store (call it off the event loop)."""
        request, error = _parse(data)
        if error is not None:
            return error
        assert request is not None
        if request.as_of is not None or self.projection is None:
            return None
        key = self.ledger.keyer.key_of(request.resident)
        known = self.projection.answer(key, request.date)
        if known is None:
            return None
        reply, seq = known
        return _reply(reply, seq)

    def reply(self, data: bytes) -> bytes:
        """The reply to one request (may read the event store)."""
        quick = self.quick(data)
        if quick is not None:
            return quick
        request, _ = _parse(data)
        assert request is not None
        key = self.ledger.keyer.key_of(request.resident)
        events = list(self.ledger.repository.event_store.get(person_id(key)))
        if request.as_of is not None:
            result = answer_as_of(events, key, request.date, request.as_of)
        else:
            result = answer(fold(events), key, request.date)
        if self.projection is not None:
            seq = self.projection.position
        else:
            seq = self._store_seq()
        return _reply(result, seq)

    def _store_seq(self) -> int:
        seq, at = self._seq
        now = time.monotonic()
        if now - at > self.SEQ_REFRESH:
            seq = self.ledger.recorder.max_notification_id() or 0
            self._seq = (seq, now)
        return seq


@dataclass(frozen=True, slots=True)
class _Request:
    resident: ResidentId
    date: date
    as_of: datetime | None


def _parse(data: bytes) -> tuple[_Request | None, bytes | None]:
    try:
        check_utf8(data)
        request = _decode_request(data)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        return None, _encode({"error": Malformed.reason, "detail": str(e)})
    try:
        resident = ResidentId.parse(request.id_number)
    except Refusal as refusal:
        return None, _encode({"error": refusal.reason, "detail": refusal.detail})
    return _Request(resident, request.date, request.as_of), None


def _reply(result: CoverageAnswer, seq: int) -> bytes:
    reply = msgspec.to_builtins(result)  # the contract's coverage reply, field for field
    reply["ledger_seq"] = seq
    return _encode(reply)


def answer_query(ledger: Ledger, data: bytes, projection: LedgerProjection | None = None) -> bytes:
    """The reply (JSON) to one ``coverage.query`` request."""
    return CoverageAnswerer(ledger, projection).reply(data)


class CoverageQueryService:
    """The ``coverage.query`` responder of ``ledger serve`` (a queue group, so several ledgers
    can share the requests)."""

    def __init__(self, ledger: Ledger, projection: LedgerProjection | None = None) -> None:
        self.answerer = CoverageAnswerer(ledger, projection)
        self.answered = 0
        self.observe: Callable[[float, bool], None] | None = None
        """Told each answer's seconds and whether it was 'unavailable' (``ledger serve``'s metrics)."""
        self._subscription: Any = None

    async def start(self, nc: Any) -> None:
        """Subscribe on the connection ``nc`` (nats-py)."""
        self._subscription = await nc.subscribe(COVERAGE_QUERY, queue=QUEUE_GROUP, cb=self._handle)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _handle(self, msg: Any) -> None:
        if not msg.reply:
            return
        answerer = self.answerer
        started, failed = time.perf_counter(), False
        try:
            reply = answerer.quick(msg.data)
            if reply is None:
                reply = await asyncio.to_thread(answerer.reply, msg.data)
        except Exception as e:  # noqa: BLE001 - a reply, never a dead responder
            log.warning("event=coverage_query_failed error=%r", e)
            reply = _encode({"error": "unavailable", "detail": "the ledger could not answer now; ask again"})
            failed = True
        self.answered += 1
        await msg.respond(reply)
        if self.observe is not None:
            self.observe(time.perf_counter() - started, failed)
