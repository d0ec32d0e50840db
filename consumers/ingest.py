"""Deciding upstream messages: each gets exactly one outcome, recorded with the position.

``Ingestor.process`` takes the messages of one pull, in stream order, and returns a verdict for
each: ``recorded`` (events saved), ``duplicate`` (its ``msg_id`` was applied before, with the same
content), ``rejected`` (malformed, or refused by the policy: reason and detail are recorded),
``parked`` (it failed the same way on every try, or it waits behind such a message about the same
person), ``decided`` (decided before, by this or an earlier writer: acknowledged, never decided
again) or ``retry`` (the store could not be reached: it and every later message come again).

**Exactly one outcome by construction.** Every save of the ingestion is one atomic append of the
batch's events *and* its decisions (``Journal``): a rejection message per rejected message
(``<prefix>.rej.<reason>``), a parking record per parked one (``<prefix>.park.<seq>``) and a
tracking record on ``<prefix>.trk.Ledger.UPSTREAM`` whose id is the highest UPSTREAM sequence
decided and whose body lists every decision. A message at or below that position is never
decided again, whatever happened to acknowledgements, consumers, caches or processes. The
tracking record is fenced (``ledger.jetstream.datastore.Fence``): a writer that lost its lease
cannot append anything once another has claimed the subject.

It is synchronous (the ``Ledger`` is) and meant to run in one worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from eventsourcing.persistence import InterfaceError, OperationalError

from consumers.commands import apply
from contract.messages import TargetSet, Text, Upstream, decode
from contract.rejection import SEAL_ROOM, Rejection, encode_rejection
from contract.subjects import split_upstream
from ledger.application import Ledger
from ledger.domain.refusals import NotAuthorised, Refusal
from ledger.jetstream.datastore import Decisions, Fence, WriterFencedError
from ledger.senders import UNATTRIBUTED

log = logging.getLogger(__name__)

UNPROCESSABLE = "unprocessable"
UPSTREAM_SEQ = "Ledger-Upstream-Seq"
PARKED = "Ledger-Parked"

TRANSIENT = (OperationalError, InterfaceError, TimeoutError, ConnectionError)
"""Failures of the store's reach (not of a message): the batch is retried for as long as they
last, never turned into a rejection or a parking."""

TRIES = 3
"""How often a message failing for a reason that is not the policy's is tried (with fresh
state each time) before it is parked."""

Kind = Literal["recorded", "duplicate", "rejected", "parked", "decided", "retry"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One upstream message as the consumer received it."""

    subject: str
    data: bytes
    deliveries: int = 1
    """How many times the server has delivered it, this time included."""
    stream_seq: int = 0

    @property
    def sender(self) -> str | None:
        """The sender's account, from the subject its account's import gave the message (None:
        unattributed)."""
        return split_upstream(self.subject)[0]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one message."""

    kind: Kind
    msg_id: str | None = None
    events: int = 0
    reason: str | None = None
    detail: str | None = None
    person_key: str | None = None
    """For a rejection: the person the message was about, when its ID number is valid."""

    @property
    def final(self) -> bool:
        """Whether the message is done with (to be acknowledged: its outcome is durable)."""
        return self.kind != "retry"


DECIDED = Verdict("decided")


class _MsgId(msgspec.Struct):
    msg_id: Text | None = None
    """Only one of the contract's form: a huge one would not fit in the rejection."""


class ParkedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message the ingestion could not decide, as recorded on ``<prefix>.park.<seq>``."""

    upstream_seq: int
    subject: str
    msg_id: str | None
    reason: str
    """``unprocessable`` (it failed on every try) or ``held`` (behind a parked message)."""
    detail: str
    holds: list[str]
    """What it is about (person keys, collectors, targets): later messages about any of them wait."""
    released: bool = False
    """On a later record of the same sequence: decided after an operator's retry."""


encode_parked = msgspec.json.Encoder().encode
decode_parked = msgspec.json.Decoder(ParkedMessage).decode


def read_parked(datastore: Any) -> list[ParkedMessage]:
    """Every parking record on the store's ``<prefix>.park.>``, in order (one that does not
    decode is reported and skipped: the ledger cannot have written it)."""
    parked = []
    for record in datastore.read_filtered(datastore.stream, f"{datastore.prefix}.park.>"):
        try:
            parked.append(decode_parked(record.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("event=parking_record_unreadable seq=%d error=%r", record.seq, e)
    return parked


class Journal:
    """What the ingestion has decided since its last save, and the position it has recorded.

    ``take`` (called by the ``Ledger`` as it saves) turns the pending decisions into the
    ``Decisions`` of that save; the position advances only when ``settled`` says that save went
    through. After a failure, ``resync`` reads the position and the parkings back.
    """

    def __init__(
        self,
        *,
        fence: Fence | None = None,
        position: int = 0,
        max_payload: int = 1024 * 1024,
        writer: str = "",
        read_position: Callable[[], int] | None = None,
        parked: Iterable[ParkedMessage] = (),
        read_parked: Callable[[], Iterable[ParkedMessage]] | None = None,
        seal: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.fence = fence
        self.seal = seal
        """The payload cipher's ``encrypt`` when the ledger encrypts: rejected originals are sealed too."""
        self.position = position
        self.max_payload = max_payload
        self.writer = writer
        self._read_position = read_position
        self._read_parked = read_parked
        self._pending: list[tuple[Delivery, Verdict, list[str]]] = []
        self._pending_bytes = 0
        self.stale = False
        """The position could not be read back after a failed save: read it before deciding."""
        self._taken: tuple[int, list[tuple[Delivery, Verdict, list[str]]]] | None = None
        self.parked: dict[int, ParkedMessage] = {}
        self.held: dict[str, int] = {}
        for message in parked:
            self._fold_parked(message)

    # ---- deciding -----------------------------------------------------------------------------

    def decide(self, delivery: Delivery, verdict: Verdict, holds: list[str] | None = None) -> None:
        self._pending.append((delivery, verdict, holds or []))
        if verdict.kind == "rejected":
            self._pending_bytes += len(delivery.data) * 4 // 3

    @property
    def fenced(self) -> bool:
        return self.fence is not None

    @property
    def decided_through(self) -> int:
        """The highest UPSTREAM sequence decided: recorded, or pending in the save under way (a
        pull can hold one message twice, its redelivery beside the first delivery)."""
        highest = self.position
        if self._pending:
            highest = max(highest, max(d.stream_seq for d, _v, _h in self._pending))
        if self._taken is not None:
            highest = max(highest, self._taken[0])
        return highest

    @property
    def pending_load(self) -> int:
        """How many messages the pending decisions add to a save (at most), or more than a save
        may hold once the rejections' bytes pass ``MAX_PENDING_BYTES``."""
        load = 2 * len(self._pending) + 1
        return load + MAX_ATOMIC_MESSAGES if self._pending_bytes > MAX_PENDING_BYTES else load

    def take(self) -> Decisions | None:
        """The pending decisions as one ``Decisions`` (None when there are none or no fence)."""
        self._taken = None  # a take never settled was not saved (the save failed): not ours to keep
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        position = max([self.position] + [d.stream_seq for d, _v, _h in pending])
        self._taken = (position, pending)
        if self.fence is None:
            return None
        messages = []
        decided = []
        for delivery, verdict, holds in pending:
            decided.append([delivery.stream_seq, verdict.kind, verdict.events])
            messages.extend(self._messages(delivery, verdict, holds))
        body = msgspec.json.encode({"epoch": self.fence.epoch, "writer": self.writer, "decided": decided})
        return Decisions(fence=self.fence, position=position, body=body, messages=messages)

    def settled(self) -> None:
        """The decisions taken last were saved: advance the position, update what is parked."""
        if self._taken is None:
            return
        position, taken = self._taken
        self._taken = None
        self.position = max(self.position, position)
        for delivery, verdict, holds in taken:
            if verdict.kind == "parked":
                self._fold_parked(self._parked(delivery, verdict, holds))
            elif delivery.stream_seq in self.parked:
                self._release(delivery.stream_seq)

    def resync(self) -> None:
        """After a failed save: forget what was not recorded, read the position back. Until
        that read succeeds the position is ``stale`` and nothing may be decided."""
        self._pending.clear()
        self._pending_bytes = 0
        self._taken = None
        if self._read_position is not None:
            self.stale = True
            self.position = self._read_position()
            if self._read_parked is not None:
                # A save whose answer was lost may have parked or released messages too.
                parked = list(self._read_parked())
                self.parked.clear()
                self.held.clear()
                for message in parked:
                    self._fold_parked(message)
            self.stale = False

    # ---- parking ------------------------------------------------------------------------------

    def holding(self, holds: Iterable[str]) -> int | None:
        """The parked message a message about ``holds`` must wait behind, if any."""
        behind = [self.held[key] for key in holds if key in self.held]
        return min(behind) if behind else None

    def _fold_parked(self, message: ParkedMessage) -> None:
        if message.released:
            self._release(message.upstream_seq)
            return
        self.parked[message.upstream_seq] = message
        for key in message.holds:
            self.held[key] = min(self.held.get(key, message.upstream_seq), message.upstream_seq)

    def _release(self, seq: int) -> None:
        message = self.parked.pop(seq, None)
        if message is None:
            return
        for key in message.holds:
            if self.held.get(key) == seq:
                del self.held[key]
                later = [s for s, m in self.parked.items() if key in m.holds]
                if later:
                    self.held[key] = min(later)

    def _parked(self, delivery: Delivery, verdict: Verdict, holds: list[str]) -> ParkedMessage:
        return ParkedMessage(
            upstream_seq=delivery.stream_seq,
            subject=delivery.subject,
            msg_id=verdict.msg_id,
            reason=verdict.reason or UNPROCESSABLE,
            detail=verdict.detail or "",
            holds=holds,
        )

    # ---- the messages of a save ---------------------------------------------------------------

    def _messages(self, delivery: Delivery, verdict: Verdict, holds: list[str]) -> list[tuple[str, bytes, dict[str, str]]]:
        seq = str(delivery.stream_seq)
        if verdict.kind == "rejected":
            rejection = Rejection.of(
                msg_id=verdict.msg_id,
                subject=delivery.subject,
                reason=verdict.reason or UNPROCESSABLE,
                detail=verdict.detail or "",
                data=delivery.data,
                upstream_seq=delivery.stream_seq,
                person_key=verdict.person_key,
            ).fitting(self.max_payload - HEADER_ROOM - (SEAL_ROOM if self.seal else 0))
            if self.seal is not None:
                rejection = rejection.sealed(self.seal)
            released = self._released(delivery)
            return released + [
                (
                    f"rej.{rejection.reason}.{delivery.sender or UNATTRIBUTED}",
                    encode_rejection(rejection),
                    {UPSTREAM_SEQ: seq, **rejection.headers()},
                )
            ]
        if verdict.kind == "parked":
            parked = self._parked(delivery, verdict, holds)
            return [(f"park.{seq}", encode_parked(parked), {UPSTREAM_SEQ: seq, PARKED: parked.reason})]
        return self._released(delivery)

    def _released(self, delivery: Delivery) -> list[tuple[str, bytes, dict[str, str]]]:
        parked = self.parked.get(delivery.stream_seq)
        if parked is None:
            return []
        released = msgspec.structs.replace(parked, released=True)
        seq = str(delivery.stream_seq)
        return [(f"park.{seq}", encode_parked(released), {UPSTREAM_SEQ: seq, PARKED: "released"})]


HEADER_ROOM = 1024
"""Bytes of a NATS message kept for a rejection's headers (the rest may hold its JSON)."""
MAX_PENDING_BYTES = 4 * 1024 * 1024
"""A save is made once its rejections' bytes pass this (an atomic batch is one raft entry)."""
MAX_ATOMIC_MESSAGES = 1000


@dataclass
class Ingestor:
    """Decides batches of upstream messages on a ``Ledger``, recording them in its ``Journal``."""

    ledger: Ledger
    journal: Journal = field(default_factory=Journal)
    tries: int = TRIES
    retry_pause: float = 0.05
    refuse_unattributed: bool = False
    """Refuse (``not_authorised``) messages no sender account is known for, instead of recording
    them as unattributed."""

    def process(self, batch: list[Delivery], *, retrying: bool = False) -> list[Verdict]:
        """A verdict per message of ``batch`` (in stream order), in the same order.

        ``retrying``: an operator's retry of parked messages (decided although at or below the
        position, and not held behind themselves).
        """
        if self.journal.stale:
            try:
                self.journal.resync()
            except TRANSIENT as e:
                return [Verdict("retry", detail=repr(e)[:500])] * len(batch)
        decoded = [self._decode(d) for d in batch]
        verdicts: list[Verdict] = []
        try:
            with self.ledger.batch(_id_numbers(decoded), record=self.journal):
                for delivery, message in zip(batch, decoded, strict=True):
                    verdicts.append(self._decide(delivery, message, retrying))
                    self.ledger.flush_if_full(extra_messages=self.journal.pending_load)
            return verdicts
        except WriterFencedError:
            self.journal.resync()
            raise
        except Exception as e:  # noqa: BLE001 - the batch failed as a whole: go one by one
            log.warning("batch of %d failed (%r); deciding its messages one by one", len(batch), e)
        self.ledger.forget_cache()
        try:
            self.journal.resync()
        except TRANSIENT as e:
            log.warning("cannot read the ingestion's position (%r): the batch comes again", e)
            return [Verdict("retry", detail=repr(e)[:500])] * len(batch)
        return self._one_by_one(batch, decoded, retrying)

    def _decide(self, delivery: Delivery, message: Upstream | Verdict, retrying: bool) -> Verdict:
        """Decide one message inside the current unit of work and note the decision."""
        if self.journal.stale:
            raise OperationalError("the ingestion's position is not known: it is read back first")
        if not retrying and delivery.stream_seq and delivery.stream_seq <= self.journal.decided_through:
            return DECIDED  # recorded before, or already decided in this very batch (delivered twice)
        holds = self._holds(message) if isinstance(message, Upstream) else []
        if retrying and delivery.stream_seq in self.journal.parked:
            holds = self.journal.parked[delivery.stream_seq].holds
        behind = self.journal.holding(holds)
        if behind is not None and behind != delivery.stream_seq:
            verdict = Verdict(
                "parked", getattr(message, "msg_id", None), reason="held",
                detail=f"waits behind parked UPSTREAM message {behind} about the same person",
            )  # fmt: skip
        elif isinstance(message, Upstream):
            verdict = self._apply(message, delivery)
        else:
            verdict = message
        self.journal.decide(delivery, verdict, holds)
        return verdict

    def _one_by_one(self, batch: list[Delivery], decoded: list[Upstream | Verdict], retrying: bool) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for index, (delivery, message) in enumerate(zip(batch, decoded, strict=True)):
            failure: BaseException | None = None
            for attempt in range(self.tries):
                try:
                    with self.ledger.batch(_id_numbers([message]), record=self.journal):
                        verdict = self._decide(delivery, message, retrying)
                    verdicts.append(verdict)
                    failure = None
                    break
                except WriterFencedError:
                    self.journal.resync()
                    raise
                except Exception as e:  # noqa: BLE001 - store unreachable, conflict, or a bug
                    failure = e
                    self.ledger.forget_cache()
                    try:
                        self.journal.resync()
                    except TRANSIENT as unreachable:
                        failure = unreachable
                        break
                    if isinstance(e, TRANSIENT):
                        break
                    log.warning("%s failed (try %d of %d): %r", _describe(delivery), attempt + 1, self.tries, e)
                    time.sleep(self.retry_pause * (attempt + 1))
            if failure is None:
                continue
            if isinstance(failure, TRANSIENT):
                log.warning("will retry %s and the %d after it: %r", _describe(delivery), len(batch) - index - 1, failure)
                verdicts.extend([Verdict("retry", detail=repr(failure)[:500])] * (len(batch) - index))
                return verdicts
            try:
                verdicts.append(self._park(delivery, message, failure))
            except WriterFencedError:
                raise
            except Exception as e:  # noqa: BLE001 - the parking itself could not be saved: comes again
                log.warning("could not park %s (%r): it and the %d after it come again", _describe(delivery), e, len(batch) - index - 1)
                verdicts.extend([Verdict("retry", detail=repr(e)[:500])] * (len(batch) - index))
                return verdicts
        return verdicts

    def _park(self, delivery: Delivery, message: Upstream | Verdict, failure: BaseException) -> Verdict:
        """Record ``delivery`` as parked: it failed the same way on every try."""
        msg_id = getattr(message, "msg_id", None)
        verdict = Verdict("parked", msg_id, reason=UNPROCESSABLE, detail=repr(failure)[:500])
        holds = self._holds(message) if isinstance(message, Upstream) else []
        log.error("parking %s after %d tries: %r", _describe(delivery), self.tries, failure)
        try:
            with self.ledger.batch((), record=self.journal):
                self.journal.decide(delivery, verdict, holds)
        except Exception:
            self.journal.stale = True  # read the position back before deciding anything else
            raise
        return verdict

    def _decode(self, delivery: Delivery) -> Upstream | Verdict:
        sender, subject = split_upstream(delivery.subject)
        if sender is None and self.refuse_unattributed:
            refusal = NotAuthorised(
                f"{delivery.subject} reached the ledger without a sender account: only messages sent through an "
                "upstream account's import are accepted (LEDGER_UNATTRIBUTED=refuse)"
            )
            return Verdict("rejected", _msg_id_of(delivery.data), reason=refusal.reason, detail=refusal.detail)
        try:
            return decode(subject, delivery.data)
        except Refusal as refusal:
            return Verdict("rejected", _msg_id_of(delivery.data), reason=refusal.reason, detail=refusal.detail)
        except Exception as e:  # noqa: BLE001 - decoding fails alike at every delivery: never retried
            log.error("rejecting a message on %s that could not be decoded: %r", delivery.subject, e)
            return Verdict("rejected", _msg_id_of(delivery.data), reason=UNPROCESSABLE, detail=repr(e)[:500])

    def _apply(self, message: Upstream, delivery: Delivery) -> Verdict:
        try:
            outcome = apply(
                self.ledger, message, account=delivery.sender, upstream_seq=delivery.stream_seq or None, digest=digest_of(message)
            )
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

    def _holds(self, message: Upstream) -> list[str]:
        """What a message is about, for parking: its persons, else its collector or target."""
        keys = []
        for attribute in ("id_number", "spouse_id_number"):
            number = getattr(message, attribute, None)
            if number:
                try:
                    keys.append(f"person:{self.ledger.keyer(number)}")
                except Refusal:
                    pass
        collector = getattr(message, "collector_id", None)
        if collector:
            keys.append(f"collector:{collector}")
        if not keys and isinstance(message, TargetSet):
            keys.append(f"target:{message.district}:{message.coverage_year}")
        return keys


_encode_message = msgspec.json.Encoder(order="deterministic").encode


def digest_of(message: Upstream) -> str:
    """A digest of a message's content as decoded (so spacing and field order do not matter)."""
    return hashlib.blake2b(_encode_message(message), digest_size=12).hexdigest()


def _describe(delivery: Delivery) -> str:
    return f"UPSTREAM {delivery.stream_seq} ({delivery.subject})"


def _id_numbers(messages: list[Upstream | Verdict]) -> list[str]:
    found = []
    for m in messages:
        if isinstance(m, Upstream):
            for attribute in ("id_number", "spouse_id_number"):
                number = getattr(m, attribute, None)
                if number:
                    found.append(number)
    return found


def _msg_id_of(data: bytes) -> str | None:
    """The ``msg_id`` of a message that failed to decode, if one can be found in it."""
    try:
        return msgspec.json.decode(data, type=_MsgId).msg_id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None

