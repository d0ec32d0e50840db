"""Applying a batch of upstream messages: each gets exactly one outcome.

``Ingestor.process`` takes the messages of one pull, in stream order, and returns a verdict for
each: ``recorded`` (events saved), ``duplicate`` (its ``msg_id`` was applied before), ``rejected``
(malformed, or refused by the policy: reason and detail go to the REJECTED stream), or ``retry``
(a transient failure: the message and every later one of the batch are redelivered, so each
person's facts stay in order). Store and conflict failures are retried as long as they last; a
message that keeps failing for any other reason (a bug) is parked as ``rejected`` with reason
``unprocessable`` after ``max_deliveries``.

It is synchronous (the ``Ledger`` is) and meant to run in one worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import msgspec

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from consumers.commands import apply
from consumers.schemas import Text, Upstream, decode
from ledger.application import Ledger
from ledger.domain.refusals import Refusal

log = logging.getLogger(__name__)

UNPROCESSABLE = "unprocessable"

TRANSIENT = (OperationalError, IntegrityError, InterfaceError, TimeoutError, ConnectionError)
"""Failures of the store or of a concurrent writer: retried for as long as they last, never
turned into a rejection (only a message failing for any other reason is ever parked)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One upstream message as the consumer received it."""

    subject: str
    data: bytes
    deliveries: int = 1
    """How many times the server has delivered it, this time included."""
    stream_seq: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one message."""

    kind: Literal["recorded", "duplicate", "rejected", "retry"]
    msg_id: str | None = None
    events: int = 0
    reason: str | None = None
    detail: str | None = None
    person_key: str | None = None
    """For a rejection: the person the message was about, when its ID number is valid."""

    @property
    def final(self) -> bool:
        """Whether the message is done with (to be acknowledged once the outcome is durable)."""
        return self.kind != "retry"


class Ingestor:
    """Applies batches of upstream messages to a ``Ledger``."""

    def __init__(self, ledger: Ledger, *, max_deliveries: int = 8) -> None:
        self.ledger = ledger
        self.max_deliveries = max_deliveries

    def process(self, batch: list[Delivery]) -> list[Verdict]:
        """A verdict per message of ``batch``, in the same order."""
        decoded = [self._decode(d) for d in batch]
        try:
            with self.ledger.batch(_id_numbers(decoded)):
                verdicts = []
                for message in decoded:
                    verdicts.append(self._apply(message) if isinstance(message, Upstream) else message)
                    self.ledger.flush_if_full()
            return verdicts
        except Exception as e:  # noqa: BLE001 - the batch failed as a whole: go one by one
            log.warning("batch of %d failed (%r); applying its messages one by one", len(batch), e)
        return self._one_by_one(batch, decoded)

    def _one_by_one(self, batch: list[Delivery], decoded: list[Upstream | Verdict]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for index, (delivery, message) in enumerate(zip(batch, decoded, strict=True)):
            if not isinstance(message, Upstream):
                verdicts.append(message)
                continue
            try:
                verdicts.append(self._apply(message))
            except Exception as e:  # noqa: BLE001 - store unreachable, conflict, or a bug
                if delivery.deliveries >= self.max_deliveries and not isinstance(e, TRANSIENT):
                    log.error("parking %s after %d deliveries: %r", message.msg_id, delivery.deliveries, e)
                    verdicts.append(Verdict("rejected", message.msg_id, reason=UNPROCESSABLE, detail=repr(e)[:500]))
                    continue
                log.warning("will retry %s and the %d after it: %r", message.msg_id, len(batch) - index - 1, e)
                retry = Verdict("retry", detail=repr(e)[:500])
                verdicts.extend([retry] * (len(batch) - index))
                break
        return verdicts

    def _decode(self, delivery: Delivery) -> Upstream | Verdict:
        try:
            return decode(delivery.subject, delivery.data)
        except Refusal as refusal:
            return Verdict("rejected", _msg_id_of(delivery.data), reason=refusal.reason, detail=refusal.detail)
        except Exception as e:  # noqa: BLE001 - decoding fails alike at every delivery: never retried
            log.error("parking a message on %s that could not be decoded: %r", delivery.subject, e)
            return Verdict("rejected", _msg_id_of(delivery.data), reason=UNPROCESSABLE, detail=repr(e)[:500])

    def _apply(self, message: Upstream) -> Verdict:
        try:
            outcome = apply(self.ledger, message)
        except Refusal as refusal:
            return Verdict(
                "rejected",
                message.msg_id,
                reason=refusal.reason,
                detail=refusal.detail,
                person_key=self._person_key(message),
            )
        if outcome.duplicate:
            return Verdict("duplicate", message.msg_id)
        return Verdict("recorded", message.msg_id, events=outcome.recorded)


    def _person_key(self, message: Upstream) -> str | None:
        id_number = getattr(message, "id_number", None)
        if id_number is None:
            return None
        try:
            return self.ledger.keyer(id_number)
        except Refusal:
            return None


def _id_numbers(messages: list[Upstream | Verdict]) -> list[str]:
    return [m.id_number for m in messages if isinstance(m, Upstream) and hasattr(m, "id_number")]  # type: ignore[attr-defined]


class _MsgId(msgspec.Struct):
    msg_id: Text | None = None
    """Only one of the contract's form: a huge one would not fit in the rejection."""


def _msg_id_of(data: bytes) -> str | None:
    """The ``msg_id`` of a message that failed to decode, if one can be found in it."""
    try:
        return msgspec.json.decode(data, type=_MsgId).msg_id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
