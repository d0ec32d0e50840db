"""``coverage.query``: "is this person covered on this date?" over NATS request/reply.

The answer is the domain's coverage question, asked of the person's events in the event store
(with ``as_of``: only the events recorded by then). A malformed request, or one with an invalid
ID number, gets ``{"error": reason}``; an unknown person is a reply (``not_enrolled``), not an
error. ``ledger_seq`` is the ledger's last notification id when the answer was given.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from typing import Annotated

import msgspec
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from faststream.params import NoCast

from consumers.schemas import Documented
from ledger.application import Ledger
from ledger.domain.refusals import Malformed, Refusal

COVERAGE_QUERY = "coverage.query"


class CoverageRequest(Documented, frozen=True, kw_only=True):
    """A coverage question: ``as_of`` asks what the ledger knew at that recorded time."""

    id_number: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    date: date
    as_of: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


_decode_request = msgspec.json.Decoder(CoverageRequest).decode
_encode = msgspec.json.Encoder().encode


def answer_query(ledger: Ledger, data: bytes) -> bytes:
    """The reply (JSON) to one ``coverage.query`` request."""
    try:
        request = _decode_request(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        return _encode({"error": Malformed.reason, "detail": str(e)})
    try:
        answer = ledger.coverage(request.id_number, request.date, as_of=request.as_of)
    except Refusal as refusal:
        return _encode({"error": refusal.reason, "detail": refusal.detail})
    reply = msgspec.to_builtins(answer)  # the contract's coverage reply, field for field
    reply["ledger_seq"] = ledger.recorder.max_notification_id()
    return _encode(reply)


class CoverageQueryService:
    """Answers ``coverage.query`` requests (a queue group, so several ledgers can share them)."""

    def __init__(self, ledger: Ledger | None, broker: NatsBroker) -> None:
        self.ledger = ledger
        broker.subscriber(
            COVERAGE_QUERY,
            queue="ledger-coverage-query",
            title="coverage question",
            description=(
                "Request {id_number, date, as_of?}; reply: the contract's coverage reply, or "
                "{error: reason} for a malformed request or an invalid ID number."
            ),
        )(self.handle)

    async def handle(self, request: Annotated[CoverageRequest, NoCast], message: NatsMessage) -> bytes:
        """The reply, as bytes: the request is decoded (and refused) by ``answer_query`` itself."""
        assert self.ledger is not None
        return await asyncio.to_thread(answer_query, self.ledger, message.body)
