"""The JetStream side of the event store: streams, subjects, appends with optimistic concurrency.

Layout of the LEDGER stream (``architecture.md``, decision 1):

- ``<prefix>.evt.<aggregate id>``: one subject per aggregate; the message body is the stored
  event's state, its headers carry ``Ledger-Topic``, ``Ledger-Version`` and the aggregate's hash
  chain (``Ledger-Prev-Hash``, ``Ledger-Hash``: see ``event_hash``); the stream sequence is the
  notification id;
- ``<prefix>.trk.<application>``: tracking records (``Ledger-Tracking-Id``), written in the same
  atomic batch as the events they accompany.

Every save (an append or a claim) is signed with the ledger's key when the datastore has one:
the last message of the save carries the signature over all of them (``signing``).

Each aggregate's versions strictly increase along its subject. An append expects, on the first
message for each subject, the subject's last sequence (``Nats-Expected-Last-Subject-Sequence``),
which the datastore remembers from earlier reads and writes; a wrong guess costs one refresh, a
real conflict raises the library's ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)

from ledger.jetstream.client import (
    BATCH_DUPLICATE_MSG_ID,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_BATCH,
    AppendRejectedError,
    DirectReply,
    NatsClient,
    NatsUnavailableError,
    NotSentError,
    OutcomeUnknownError,
    OutgoingMessage,
    StoredMessage,
)
from ledger.jetstream.signing import SigningKey, sign_save

T = TypeVar("T")

TOPIC = "Ledger-Topic"
VERSION = "Ledger-Version"
TRACKING_ID = "Ledger-Tracking-Id"
WRITER_EPOCH = "Ledger-Writer-Epoch"
"""On a fenced tracking record: the epoch of the writer that made it (``Fence``)."""
NONCE = "Ledger-Nonce"
"""On a fenced tracking record: a random value telling this write from every other."""
HASH = "Ledger-Hash"
PREV_HASH = "Ledger-Prev-Hash"
GENESIS_HASH = "0" * 64
"""``Ledger-Prev-Hash`` of an aggregate's first event."""


def event_hash(previous: str, subject: str, version: str, topic: str, data: bytes) -> str:
    """The hash an event carries (``Ledger-Hash``): SHA-256 over the previous event's hash, the
    event's subject, version, topic and body. Changing any event of an aggregate breaks every
    later link of its chain; ``ledger verify`` recomputes them."""
    digest = hashlib.sha256()
    digest.update(f"{previous}\n{subject}\n{version}\n{topic}\n".encode())
    digest.update(data)
    return digest.hexdigest()
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
LEDGER_SUBJECT_KINDS = ("evt", "trk", "rej", "park")
"""The event stream's subjects below its prefix: events, tracking records, and what an ingestion
decided beside its events (rejections, parked messages), all in the same atomic appends."""
MSG_ID = "Nats-Msg-Id"

STREAM_NOT_FOUND = 10059
STREAM_NAME_IN_USE = 10058

_TOKENS = re.compile(r"[^\s.*>]+(\.[^\s.*>]+)*")
_READ_PAGE = 1000
_MULTI_LAST_CHUNK = 250
_MAX_ATTEMPTS = 8
_NOT_SENT_PATIENCE = 30.0
"""Seconds an append keeps trying while nothing can be sent (a stream leader being elected)."""
_CACHE_LIMIT = 200_000


class WriterFencedError(IntegrityError):
    """Raised when another writer has claimed the tracking subject since this one did: this
    writer must stop writing (its lease is gone). The refused append was not recorded by this
    attempt (an earlier attempt whose acknowledgement was lost may have been)."""


class PositionMovedError(IntegrityError):
    """Raised when the tracking subject moved to a record of this writer's that it did not know
    had been committed (its acknowledgement was lost): the caller re-reads the position."""


@dataclass(frozen=True)
class Fence:
    """A writer's claim on a tracking subject: every append it makes expects the subject's last
    message to be its own, so a writer that lost its lease (paused, partitioned) cannot append a
    single message once another has claimed the subject."""

    subject: str
    epoch: int


@dataclass
class Decisions:
    """What an append records beside its events: further messages (``subject`` below the store's
    prefix, body, headers) and a tracking record on the fence's subject at ``position``, whose body
    says what was decided. All of it is one atomic batch with the events, expected behind the
    fence."""

    fence: Fence
    position: int
    body: bytes
    messages: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    nonce: str = field(default_factory=lambda: os.urandom(12).hex())


class StreamSettingsError(ProgrammingError):
    """Raised when an existing stream is configured more weakly than the ledger requires."""


@dataclass(frozen=True, slots=True)
class _Last:
    """The last message on a subject: the version (or tracking id) it carries, and its sequence."""

    position: int
    seq: int
    hash: str | None = None
    """The last event's ``Ledger-Hash`` (None for tracking subjects and unchained messages)."""
    epoch: int | None = None
    """On a fenced tracking subject: the writer epoch of its last message."""
    nonce: str | None = None
    """On a fenced tracking subject: the nonce of its last message."""

    @classmethod
    def of(cls, message: StoredMessage) -> _Last:
        headers = message.headers
        epoch = headers.get(WRITER_EPOCH)
        return cls(
            _position(message), message.seq, headers.get(HASH),
            int(epoch) if epoch is not None else None, headers.get(NONCE),
        )  # fmt: skip


@dataclass(frozen=True)
class StreamSpec:
    """What a stream must be. The LEDGER stream is immutable; snapshot streams need not be."""

    name: str
    subjects: tuple[str, ...]
    immutable: bool = True
    replicas: int = 1
    duplicate_window_s: float = 120.0
    max_msgs_per_subject: int = -1
    sources: tuple[tuple[str, str, str], ...] = ()
    """Streams this one is derived from by the server: (stream, subjects there, subjects here)."""
    max_bytes: int = -1
    max_msg_size: int = -1
    max_age_s: float = 0.0
    """Limits of a buffer (an intake stream whose messages the server copies on into a stream
    kept forever). With limits, a full stream refuses new messages (discard new): nothing stored
    is ever dropped to make room."""

    def config(self) -> dict[str, Any]:
        config = self._config()
        if self.sources:
            config["sources"] = [_source(name, src, dest) for name, src, dest in self.sources]
        return config

    def _config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": "limits",
            "storage": "file",
            "discard": "new" if self.limited else "old",
            "num_replicas": self.replicas,
            "max_msgs": -1,
            "max_bytes": self.max_bytes,
            "max_msg_size": self.max_msg_size,
            "max_age": int(self.max_age_s * 1e9),
            "max_msgs_per_subject": self.max_msgs_per_subject,
            "duplicate_window": int(self.duplicate_window_s * 1e9),
            "deny_delete": self.immutable,
            "deny_purge": self.immutable,
            "allow_direct": True,
            "allow_atomic": True,
        }

    @property
    def limited(self) -> bool:
        return self.max_bytes > 0 or self.max_msg_size > 0 or self.max_age_s > 0

    async def ensure(self, api: Callable[..., Awaitable[dict[str, Any]]], *, create: bool = True) -> None:
        """Create the stream through the JetStream API ``api(subject, request)`` when missing
        (if ``create``); raise ``StreamSettingsError`` when it exists with weaker settings."""
        info = await api(f"$JS.API.STREAM.INFO.{self.name}")
        if _error_code(info) == STREAM_NOT_FOUND and create:
            info = await api(f"$JS.API.STREAM.CREATE.{self.name}", self.config())
            if _error_code(info) == STREAM_NAME_IN_USE:  # created meanwhile by another process
                info = await api(f"$JS.API.STREAM.INFO.{self.name}")
        if "error" in info:
            raise StreamSettingsError(f"stream {self.name}: {info['error'].get('description')}")
        if create and self.upgradable(info["config"]):
            # An older layout of the same stream: add what this version records there (new
            # subjects, the streams it is derived from); nothing stored is touched.
            info = await api(f"$JS.API.STREAM.UPDATE.{self.name}", self.upgraded(info["config"]))
            if "error" in info:
                raise StreamSettingsError(f"stream {self.name} could not be upgraded: {info['error'].get('description')}")
        weaknesses = self.weaknesses(info["config"])
        if weaknesses:
            raise StreamSettingsError(
                f"stream {self.name} exists with settings weaker than the ledger requires: "
                + "; ".join(weaknesses)
                + ". Fix the stream (or use another name); the ledger will not use it."
            )

    def weaknesses(self, config: dict[str, Any]) -> list[str]:
        """What in an existing stream's ``config`` falls short of this spec."""
        found = []
        if config.get("storage") != "file":
            found.append(f"storage is {config.get('storage')!r}, not 'file'")
        for flag in ("allow_direct", "allow_atomic") + (("deny_delete", "deny_purge") if self.immutable else ()):
            if not config.get(flag):
                found.append(f"{flag} is not set")
        if self.immutable:
            if config.get("retention", "limits") != "limits":
                found.append(f"retention is {config.get('retention')!r}, not 'limits'")
            if self.limited:
                found.extend(self._other_limits(config))
            else:
                for limit in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
                    if config.get(limit, -1) not in (-1, 0):
                        found.append(f"{limit} is {config.get(limit)} (events would be discarded)")
                if config.get("max_age", 0):
                    found.append(f"max_age is {config.get('max_age')} ns (events would expire)")
            if config.get("num_replicas", 1) < self.replicas:
                found.append(f"num_replicas is {config.get('num_replicas', 1)}, fewer than {self.replicas}")
        missing = set(self.subjects) - set(config.get("subjects") or ())
        if missing:
            found.append(f"subjects lack {sorted(missing)}")
        lacking = self._missing_sources(config)
        if lacking:
            found.append(f"it is not derived from {sorted(lacking)}")
        if self.sources and config.get("subjects"):
            found.append(f"it has subjects of its own {config.get('subjects')} (anyone allowed could publish into it)")
        if self.sources and not self.duplicate_window_s and config.get("duplicate_window"):
            found.append("it deduplicates what it derives (a duplicate window): messages of different origins with one Nats-Msg-Id would be lost")
        return found

    _LIMITS = ("max_bytes", "max_msg_size", "max_age", "discard")

    def _other_limits(self, config: dict[str, Any]) -> list[str]:
        wanted = self._config()
        return [
            f"limits differ: {limit} is {config.get(limit)!r}, configured {wanted[limit]!r}"
            for limit in self._LIMITS
            if config.get(limit) != wanted[limit]
        ]

    def _missing_sources(self, config: dict[str, Any]) -> set[tuple[str, str, str]]:
        have = {
            (source.get("name"), t.get("src"), t.get("dest"))
            for source in config.get("sources") or ()
            for t in source.get("subject_transforms") or ()
        } | {
            (source.get("name"), source["filter_subject"], source["filter_subject"])
            for source in config.get("sources") or ()
            if source.get("filter_subject")
        }
        return set(self.sources) - have

    def upgradable(self, config: dict[str, Any]) -> bool:
        """Whether the existing stream lacks only subjects or sources of this spec."""
        weak = self.weaknesses(config)
        return bool(weak) and all(
            w.startswith(("subjects lack", "it is not derived", "it has subjects of its own", "limits differ", "it deduplicates"))
            for w in weak
        )

    def upgraded(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with this spec's subjects and sources (a derived stream keeps no subjects
        of its own: nobody can publish into it)."""
        wanted = self.config()
        config = dict(config)
        config["subjects"] = sorted(set(config.get("subjects") or ()) | set(self.subjects)) if not self.sources else list(self.subjects)
        if self.sources:
            config["sources"] = wanted["sources"]
            config["duplicate_window"] = wanted["duplicate_window"]
        if self.limited:
            config.update({limit: wanted[limit] for limit in self._LIMITS})
        return config


def _source(name: str, src: str, dest: str) -> dict[str, Any]:
    """A stream source: the subjects ``src`` of stream ``name``, as ``dest`` here (the same
    subjects: a filter; others: a subject transform)."""
    if src == dest:
        return {"name": name, "filter_subject": src}
    return {"name": name, "subject_transforms": [{"src": src, "dest": dest}]}


class JetStreamDatastore:
    """Shared by the recorders of one factory: the connection, the stream names and what is known
    of each subject's last message."""

    def __init__(
        self,
        client: NatsClient,
        *,
        stream: str = "LEDGER",
        subject_prefix: str = "ledger",
        originator_id_type: Literal["uuid", "text"] = "uuid",
        replicas: int = 1,
        duplicate_window_s: float = 120.0,
        follower: str | None = None,
        signer: SigningKey | None = None,
    ) -> None:
        if not _TOKENS.fullmatch(subject_prefix):
            raise ValueError(f"subject prefix {subject_prefix!r} is not a valid NATS subject")
        if originator_id_type not in ("uuid", "text"):
            raise ValueError(f"originator id type must be 'uuid' or 'text', not {originator_id_type!r}")
        self.client = client
        self.stream = stream
        self.prefix = subject_prefix
        self.originator_id_type = originator_id_type
        self.replicas = replicas
        self.duplicate_window_s = duplicate_window_s
        if follower is not None and not _token(follower):
            raise ValueError(f"follower name {follower!r} cannot be a NATS subject token")
        self.follower = follower
        """The application these recorders belong to: tracking subjects name it beside the
        application followed, so two followers of one upstream never share a subject."""
        self.signer = signer
        """The ledger's signing key: every save is signed with it (``signing``); None: unsigned
        (tests, tools, readers — ``ledger verify`` reports what such a store wrote)."""
        self._last: dict[str, _Last] = {}
        self._last_lock = threading.Lock()
        self._own_nonces: dict[str, deque[str]] = {}

    # ---- streams ------------------------------------------------------------------------------

    def events_spec(self) -> StreamSpec:
        return StreamSpec(
            name=self.stream,
            subjects=tuple(f"{self.prefix}.{kind}.>" for kind in LEDGER_SUBJECT_KINDS),
            replicas=self.replicas,
            duplicate_window_s=self.duplicate_window_s,
        )

    def purpose_spec(self, purpose: str, max_msgs_per_subject: int = -1) -> StreamSpec:
        """A stream for another purpose (snapshots): derived data, so deletable."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", purpose):
            raise ValueError(f"purpose {purpose!r} must be a lower-case word")
        return StreamSpec(
            name=f"{self.stream}_{purpose.upper()}",
            subjects=(f"{self.prefix}.{purpose}.>",),
            immutable=False,
            replicas=self.replicas,
            duplicate_window_s=self.duplicate_window_s,
            max_msgs_per_subject=max_msgs_per_subject,
        )

    def ensure_stream(self, spec: StreamSpec, *, create: bool = True) -> None:
        """Create the stream when missing (if ``create``); refuse one with weaker settings."""
        try:
            self.client.run(spec.ensure(self.client.api, create=create))
        except NatsUnavailableError as e:
            raise OperationalError(str(e)) from e

    def last_sequence(self, stream: str) -> int:
        info = self._call_api(f"$JS.API.STREAM.INFO.{stream}")
        return int(info["state"]["last_seq"])

    def _call_api(self, subject: str) -> dict[str, Any]:
        try:
            info = self.client.run(self.client.api(subject))
        except NatsUnavailableError as e:
            raise OperationalError(str(e)) from e
        if "error" in info:
            raise OperationalError(f"{subject}: {info['error'].get('description')}")
        return info

    # ---- subjects and ids ---------------------------------------------------------------------

    def aggregate_subject(self, base: str, originator_id: UUID | str) -> str:
        if isinstance(originator_id, UUID):
            return f"{base}.{originator_id.hex}"
        if self.originator_id_type == "uuid":
            try:
                return f"{base}.{UUID(originator_id).hex}"
            except ValueError:
                raise DataError(f"originator id {originator_id!r} is not a UUID") from None
        if not _TOKENS.fullmatch(originator_id):
            raise DataError(
                f"originator id {originator_id!r} cannot be a NATS subject "
                "(no spaces, '*', '>' or empty dot-separated parts)"
            )
        return f"{base}.{originator_id}"

    def originator_id(self, base: str, subject: str) -> UUID | str:
        tail = subject[len(base) + 1 :]
        return UUID(tail) if self.originator_id_type == "uuid" else tail

    def tracking_subject(self, application_name: str) -> str:
        """``<prefix>.trk.<follower>.<application followed>`` (``<prefix>.trk.<application>``
        for a datastore that names no follower)."""
        if not _token(application_name):
            raise DataError(f"application name {application_name!r} cannot be a NATS subject token")
        if self.follower is None:
            return f"{self.prefix}.trk.{application_name}"
        return f"{self.prefix}.trk.{self.follower}.{application_name}"

    # ---- reads --------------------------------------------------------------------------------

    def get(self, stream: str, request: dict[str, Any], *, batch: bool) -> list[StoredMessage]:
        try:
            return self.client.get(stream, request, batch=batch)
        except NatsUnavailableError as e:
            raise OperationalError(str(e)) from e

    def read_subject(self, stream: str, subject: str) -> list[StoredMessage]:
        """Every message on ``subject``, in order, by batched direct get."""
        messages = self.read_filtered(stream, subject)
        if messages:
            self._remember(subject, _Last.of(messages[-1]))
        return messages

    def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        found = self.get(stream, {"last_by_subj": subject}, batch=False)
        return found[0] if found else None

    def last_messages(self, stream: str, subjects: Sequence[str]) -> list[StoredMessage]:
        """The last message of each of ``subjects`` that has one, by batched direct get
        (``multi_last``), a few hundred subjects a request."""
        found: list[StoredMessage] = []
        for start in range(0, len(subjects), _MULTI_LAST_CHUNK):
            chunk = list(subjects[start : start + _MULTI_LAST_CHUNK])
            found.extend(self.get(stream, {"multi_last": chunk, "batch": len(chunk)}, batch=True))
        for m in found:
            self._remember(m.subject, _Last.of(m))
        return found

    def read_filtered(self, stream: str, subjects: str) -> list[StoredMessage]:
        """Every message on ``subjects``, in order, by batched direct get. A wildcard filter walks
        the stream's subjects: for start-up reads of rare subjects, not for hot paths."""
        messages: list[StoredMessage] = []
        seq = 1
        while True:
            page = self.get(stream, {"seq": seq, "next_by_subj": subjects, "batch": _READ_PAGE}, batch=True)
            messages.extend(page)
            if len(page) < _READ_PAGE:
                return messages
            seq = page[-1].seq + 1

    def position(self, stream: str, subject: str) -> int:
        """The tracking id of the last record on the tracking ``subject`` (0 when none)."""
        return self._refresh(stream, subject).position

    def read_range(self, stream: str, first_seq: int, count: int) -> list[StoredMessage]:
        """Up to ``count`` messages (any subject) from ``first_seq`` on, in stream order."""
        return self.get(stream, {"seq": first_seq, "batch": count}, batch=True)

    def start_reading_range(
        self, stream: str, first_seq: int, count: int, convert: Callable[[DirectReply], T]
    ) -> Future[list[T]]:
        """Start reading up to ``count`` messages from ``first_seq``, each through ``convert``."""
        client = self.client
        return client.start(client.direct_get(stream, {"seq": first_seq, "batch": count}, batch=True, convert=convert))

    def wait(self, future: Future[T]) -> T:
        try:
            return self.client.result(future)
        except NatsUnavailableError as e:
            raise OperationalError(str(e)) from e

    def _refresh(self, stream: str, subject: str) -> _Last:
        message = self.last_message(stream, subject)
        last = _Last.of(message) if message else _Last(0, 0)
        self._remember(subject, last, force=True)
        return last

    def _remember(self, subject: str, last: _Last, force: bool = False) -> None:
        with self._last_lock:
            known = self._last.get(subject)
            if force or known is None or known.seq < last.seq:
                if len(self._last) >= _CACHE_LIMIT:
                    self._last.clear()
                self._last[subject] = last

    # ---- appends ------------------------------------------------------------------------------

    def append(
        self,
        stream: str,
        base: str,
        stored_events: Sequence[StoredEvent],
        tracking: Tracking | None = None,
        decisions: Decisions | None = None,
    ) -> list[int]:
        """Append events (and a tracking record, or ``decisions``) atomically; return the
        events' sequences.

        Raises ``IntegrityError`` when an event's version is already taken on its aggregate, or
        the tracking id is not above the application's last; ``WriterFencedError`` when the
        ``decisions``' fence was claimed by another writer; nothing is then recorded. While
        nothing can be sent (no connection, no stream leader) it keeps trying for a while, then
        raises ``OperationalError``.
        """
        plan = _Plan.build(self, base, stored_events, tracking, decisions)
        if plan.fence is not None:
            self._check_own_record(stream, plan.fence)
        unknown_outcome = False
        attempts = 0
        not_sent_until: float | None = None
        while True:
            conflict = self._known_conflict(stream, plan)
            if conflict:
                if unknown_outcome:
                    committed = self._find_committed(stream, plan)
                    if committed is not None:
                        return committed
                raise IntegrityError(conflict)
            attempts += 1
            if attempts > _MAX_ATTEMPTS:
                raise OperationalError(f"append gave up after {_MAX_ATTEMPTS} attempts on changing subjects")
            if plan.nonce is not None and plan.fence is not None:
                self._sent(plan.fence.subject, plan.nonce)
            try:
                seqs = self.client.append(self._messages(plan), plan.subjects)
            except AppendRejectedError as e:
                if e.err_code not in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_BATCH, BATCH_DUPLICATE_MSG_ID):
                    raise DataError(f"JetStream refused the append: {e}") from e
                if plan.fence is not None:
                    committed = self._check_fence(stream, plan)
                    if committed is not None:
                        return committed
                self._refresh_plan(stream, plan)
                continue
            except OutcomeUnknownError:
                unknown_outcome = True
                try:
                    if plan.fence is not None:
                        committed = self._check_fence(stream, plan)
                        if committed is not None:
                            return committed
                    self._refresh_plan(stream, plan)
                except OperationalError as e:
                    raise OperationalError(
                        f"the append's outcome is unknown and NATS is unreachable: {e}"
                    ) from e
                continue
            except NotSentError as e:
                # Nothing was stored (disconnected, or no stream leader to answer): try again
                # with back-off for a while, without counting it as an attempt.
                now = time.monotonic()
                if not_sent_until is None:
                    not_sent_until = now + _NOT_SENT_PATIENCE
                if now >= not_sent_until:
                    raise OperationalError(f"could not send the append for {_NOT_SENT_PATIENCE:g} s: {e}") from e
                attempts -= 1
                time.sleep(min(1.0, 0.05 * 2 ** min(attempts + 1, 5)))
                continue
            except NatsUnavailableError as e:
                raise OperationalError(str(e)) from e
            except ValueError as e:
                raise ProgrammingError(str(e)) from e
            for subject, last_index in plan.last_index.items():
                self._remember(
                    subject,
                    _Last(
                        plan.positions[last_index], seqs[last_index], plan.hashes.get(last_index),
                        plan.fence.epoch if plan.fence is not None and subject == plan.fence.subject else None,
                        plan.nonce if plan.fence is not None and subject == plan.fence.subject else None,
                    ),
                )  # fmt: skip
            return seqs[: len(plan.events)]

    def claim(self, stream: str, fence: Fence, body: bytes = b"", initial_position: int = 0) -> int:
        """Claim ``fence.subject`` for the writer of ``fence.epoch``: append a record of the claim
        there, expecting the subject's last message, so that any append of an earlier writer
        (which expects its own last record) is refused from now on. Returns the position (the
        tracking id) the subject was at (``initial_position`` when it has no record yet). Call it
        only while holding the writer lease of ``fence.epoch``: the lease decides who may claim,
        the claim makes it stick.
        """
        for _attempt in range(_MAX_ATTEMPTS * 4):
            last_message = self.last_message(stream, fence.subject)
            last = _Last.of(last_message) if last_message is not None else _Last(initial_position, 0)
            nonce = os.urandom(12).hex()
            headers = {
                TRACKING_ID: str(last.position),
                WRITER_EPOCH: str(fence.epoch),
                NONCE: nonce,
                MSG_ID: f"{fence.subject}:{nonce}",
                EXPECTED_LAST_SUBJECT_SEQUENCE: str(last.seq),
            }
            self._sent(fence.subject, nonce)
            try:
                seqs = self.client.append(self._signed([OutgoingMessage(fence.subject, body, headers)]), frozenset({fence.subject}))
            except AppendRejectedError as e:
                if e.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_BATCH, BATCH_DUPLICATE_MSG_ID):
                    continue
                raise DataError(f"JetStream refused the claim: {e}") from e
            except NatsUnavailableError:
                time.sleep(0.2)
                continue  # the next round reads what is there (our claim, if it was stored)
            self._remember(fence.subject, _Last(last.position, seqs[0], None, fence.epoch, nonce), force=True)
            return last.position
        raise OperationalError(f"could not claim {fence.subject}")

    def _check_fence(self, stream: str, plan: _Plan) -> list[int] | None:
        """After a refused or unanswered fenced append, by what the fence subject's last record
        is: this append (it was committed: its events' sequences), the record this writer last
        knew of (untouched: None, try again), another record of this writer's own (an earlier
        append whose outcome was unknown was committed after all: ``PositionMovedError``, re-read
        the position), or anybody else's (``WriterFencedError``: another writer claimed it)."""
        assert plan.fence is not None
        subject = plan.fence.subject
        last = self._refresh(stream, subject)
        if last.nonce is not None and last.nonce == plan.nonce:
            first = last.seq - len(plan.drafts) + 1
            return list(range(first, first + len(plan.events)))
        if last.nonce is not None and last.nonce == plan.expected_nonce:
            return None
        if last.nonce is not None and last.nonce in self._own_nonces.get(subject, ()):
            raise PositionMovedError(
                f"{subject} moved to an earlier record of this writer (position {last.position}): re-read the position"
            )
        raise WriterFencedError(
            f"{subject} was claimed by another writer (epoch {last.epoch}; this writer's is {plan.fence.epoch}): "
            "this writer must stop"
        )

    def _check_own_record(self, stream: str, fence: Fence) -> None:
        """Before a fenced append: the fence subject's last record as known must be this
        writer's own (its claim or one of its appends); anybody else's means another writer
        claimed it since, and this one must not write on top of it (``WriterFencedError``)."""
        known = self._last.get(fence.subject) or self._refresh(stream, fence.subject)
        if known.nonce is None or known.nonce not in self._own_nonces.get(fence.subject, ()):
            raise WriterFencedError(
                f"{fence.subject} was claimed by another writer (epoch {known.epoch}; this writer's is "
                f"{fence.epoch}): this writer must stop"
            )

    def _sent(self, subject: str, nonce: str) -> None:
        """Remember a nonce this writer sent on ``subject`` (the last few hundred)."""
        with self._last_lock:
            sent = self._own_nonces.setdefault(subject, deque(maxlen=256))
            sent.append(nonce)

    def _known_conflict(self, stream: str, plan: _Plan) -> str | None:
        for subject, first_index in plan.first_index.items():
            if plan.fence is not None and subject == plan.fence.subject:
                continue  # the fence is checked by the server: the subject's last must be ours
            last: _Last | None
            if subject == plan.tracking_subject:
                last = self._last.get(subject) or self._refresh(stream, subject)
            else:
                last = self._last.get(subject)
            if last is not None and last.position >= plan.positions[first_index]:
                what = "tracking id" if subject == plan.tracking_subject else "version"
                return (
                    f"{what} {plan.positions[first_index]} on {subject} is not above "
                    f"the recorded {last.position}"
                )
        return None

    def _messages(self, plan: _Plan) -> list[OutgoingMessage]:
        """The messages to send, with what is known now: each subject's expected last sequence
        on its first message, and on every event the hash chain of its aggregate
        (``Ledger-Prev-Hash``: the previous event's ``Ledger-Hash``)."""
        messages = []
        chain: dict[str, str] = {}
        plan.hashes = {}
        for i, (subject, data, headers) in enumerate(plan.drafts):
            if plan.first_index.get(subject) == i:
                last = self._last.get(subject)
                headers = {**headers, EXPECTED_LAST_SUBJECT_SEQUENCE: str(last.seq if last else 0)}
                chain[subject] = (last.hash or "") if last is not None and last.seq else GENESIS_HASH
            if TOPIC in headers:
                previous = chain[subject]
                own = event_hash(previous, subject, headers[VERSION], headers[TOPIC], data)
                headers = {**headers, PREV_HASH: previous, HASH: own}
                chain[subject] = plan.hashes[i] = own
            messages.append(OutgoingMessage(subject, data, headers))
        return self._signed(messages)

    def _signed(self, messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
        """One save's messages, signed on the last with the ledger's key (when it has one)."""
        return sign_save(self.signer, messages) if self.signer is not None else messages

    def _refresh_plan(self, stream: str, plan: _Plan) -> None:
        for subject in plan.first_index:
            self._refresh(stream, subject)

    def _find_committed(self, stream: str, plan: _Plan) -> list[int] | None:
        """After an unknown outcome: the sequences of this very append if it was committed."""
        seqs: list[int] = []
        for subject in dict.fromkeys(d[0] for d in plan.drafts[: len(plan.events)]):
            stored = {_position(m): m for m in self.read_subject(stream, subject)}
            for i, (draft_subject, data, headers) in enumerate(plan.drafts[: len(plan.events)]):
                if draft_subject != subject:
                    continue
                m = stored.get(plan.positions[i])
                if m is None or m.data != data or m.headers.get(TOPIC) != headers[TOPIC]:
                    return None
                seqs.append(m.seq)
        return sorted(seqs)


@dataclass
class _Plan:
    """One append, ready to send: per message its subject, body and headers (without the
    expected-sequence header, which depends on what is known when it is sent)."""

    events: Sequence[StoredEvent]
    drafts: list[tuple[str, bytes, dict[str, str]]]
    positions: list[int]
    first_index: dict[str, int]
    last_index: dict[str, int]
    subjects: frozenset[str]
    tracking_subject: str | None
    fence: Fence | None = None
    nonce: str | None = None
    expected_nonce: str | None = None
    """The nonce of the fence subject's last record as this writer knew it when it planned."""
    hashes: dict[int, str] = field(default_factory=dict)
    """Each event's ``Ledger-Hash``, by index, as last sent."""

    @classmethod
    def build(
        cls,
        store: JetStreamDatastore,
        base: str,
        events: Sequence[StoredEvent],
        tracking: Tracking | None,
        decisions: Decisions | None = None,
    ) -> _Plan:
        drafts: list[tuple[str, bytes, dict[str, str]]] = []
        positions: list[int] = []
        first_index: dict[str, int] = {}
        last_index: dict[str, int] = {}
        subject_of: dict[UUID | str, str] = {}
        for i, event in enumerate(events):
            subject = subject_of.get(event.originator_id)
            if subject is None:
                subject = subject_of[event.originator_id] = store.aggregate_subject(base, event.originator_id)
            version = event.originator_version
            previous = last_index.get(subject)
            if previous is not None and positions[previous] >= version:
                raise IntegrityError(
                    f"version {version} of {subject} follows version {positions[previous]} in one append"
                )
            first_index.setdefault(subject, i)
            last_index[subject] = i
            positions.append(version)
            drafts.append(
                (
                    subject,
                    event.state,
                    {MSG_ID: f"{subject}:{version}", TOPIC: event.topic, VERSION: str(version)},
                )
            )
        tracking_subject = None
        if tracking is not None:
            tracking_subject = store.tracking_subject(tracking.application_name)
            i = len(drafts)
            first_index[tracking_subject] = last_index[tracking_subject] = i
            positions.append(tracking.notification_id)
            drafts.append(
                (
                    tracking_subject,
                    b"",
                    {
                        MSG_ID: f"{tracking_subject}:{tracking.notification_id}",
                        TRACKING_ID: str(tracking.notification_id),
                    },
                )
            )
        if decisions is not None:
            if tracking is not None:
                raise ProgrammingError("an append has a tracking record or decisions, not both")
            for subject, data, headers in decisions.messages:
                drafts.append((f"{store.prefix}.{subject}", data, headers))
                positions.append(0)
            fence = decisions.fence
            tracking_subject = fence.subject
            i = len(drafts)
            first_index[tracking_subject] = last_index[tracking_subject] = i
            positions.append(decisions.position)
            drafts.append(
                (
                    tracking_subject,
                    decisions.body,
                    {
                        MSG_ID: f"{tracking_subject}:{decisions.nonce}",
                        TRACKING_ID: str(decisions.position),
                        WRITER_EPOCH: str(fence.epoch),
                        NONCE: decisions.nonce,
                    },
                )
            )
        return cls(
            events=events,
            drafts=drafts,
            positions=positions,
            first_index=first_index,
            last_index=last_index,
            subjects=frozenset(first_index),
            tracking_subject=tracking_subject,
            fence=decisions.fence if decisions is not None else None,
            nonce=decisions.nonce if decisions is not None else None,
            expected_nonce=_known_nonce(store, decisions.fence.subject) if decisions is not None else None,
        )


def _known_nonce(store: JetStreamDatastore, subject: str) -> str | None:
    known = store._last.get(subject)
    return known.nonce if known is not None else None


def _token(text: str) -> bool:
    return bool(_TOKENS.fullmatch(text)) and "." not in text


def _position(message: StoredMessage) -> int:
    headers = message.headers
    value = headers.get(VERSION) or headers.get(TRACKING_ID)
    if value is None:
        raise DataError(f"message {message.seq} on {message.subject} carries no version or tracking id")
    return int(value)


def _error_code(reply: dict[str, Any]) -> int | None:
    error = reply.get("error")
    return error.get("err_code") if error else None

