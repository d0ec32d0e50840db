"""Tamper evidence for the LEDGER stream: signed saves, hash chains, signed checkpoints, ``verify``.

- Every save the ledger makes on LEDGER is signed with its ed25519 key (``signing``): the last
  message of the save carries a signature over each message's subject, ``Ledger-*`` headers and
  body. A message no valid signature of a pinned key covers was not written by the ledger.
- Every event carries the hash chain of its aggregate (``datastore.event_hash``): its own
  ``Ledger-Hash`` and the previous event's (``Ledger-Prev-Hash``).
- A **checkpoint** is a digest of the whole stream up to a sequence — each message's sequence,
  subject, version, topic, previous hash and body, folded in order — signed with the same key and
  stored on ``<prefix>.checkpoint`` in the stream ``<LEDGER>_CHECKPOINTS`` (deny delete, deny
  purge; the ledger never updates, deletes or purges it). ``ledger serve`` writes one
  periodically and when it stops; each continues the digest of the one before.
- ``verify`` reads the stream and its checkpoints back and checks, against the public keys the
  operator pins (never a key the stream or the data directory offers): every message's
  signature, every chain link, every checkpoint's digest and signature, and that checkpoints
  are there and recent — no message may wait longer than a set time for one. It reports every
  finding with the stream sequence it concerns. ``docs/threat-model.md`` says what that proves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.jetstream.client import OutgoingMessage, StoredMessage
from ledger.jetstream.datastore import (
    GENESIS_HASH,
    HASH,
    PREV_HASH,
    STREAM_NOT_FOUND,
    TOPIC,
    VERSION,
    JetStreamDatastore,
    StreamSpec,
    event_hash,
)
from ledger.jetstream.signing import (
    KEY_ID,
    SIGNATURE,
    SIGNED,
    PublicKey,
    SigningKey,
    message_digest,
    save_payload,
)

log = logging.getLogger("ledger.evidence")

CHECKPOINT_VERSION = 1
_PAGE = 1000
_MAX_FINDINGS = 1000


def fold(digest: str, message: StoredMessage) -> str:
    """The stream digest after ``message`` (its sequence, subject, chain headers and body)."""
    h = hashlib.sha256()
    headers = message.headers
    h.update(
        f"{digest}\n{message.seq}\n{message.subject}\n{headers.get(VERSION, '')}\n{headers.get(TOPIC, '')}\n"
        f"{headers.get(PREV_HASH, '')}\n".encode()
    )
    h.update(message.data)
    return h.hexdigest()


def checkpoint_spec(stream: str, prefix: str, replicas: int = 1) -> StreamSpec:
    """The checkpoint stream: kept forever, deny delete and deny purge (``StreamSpec``'s
    immutable default). The ledger creates it and appends to it, nothing else: its accounts can
    deny every user, the ledger included, the stream's update, delete, purge and message delete."""
    return StreamSpec(name=f"{stream}_CHECKPOINTS", subjects=(f"{prefix}.checkpoint",), replicas=replicas)


def _body(stream: str, last_seq: int, digest: str, previous_seq: int, signed_at: str, kid: str) -> bytes:
    return json.dumps(
        {"v": CHECKPOINT_VERSION, "stream": stream, "last_seq": last_seq, "digest": digest,
         "previous_seq": previous_seq, "signed_at": signed_at, "key_id": kid},
        sort_keys=True, separators=(",", ":"),
    ).encode()  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as stored: its body, the bytes signed, the signature, the key it carries."""

    seq: int
    """Its sequence in the checkpoint stream."""
    body: dict[str, Any]
    signed: bytes
    signature: bytes
    public_pem: str

    @property
    def last_seq(self) -> int:
        return int(self.body["last_seq"])

    @classmethod
    def parse(cls, message: StoredMessage) -> Checkpoint:
        envelope = json.loads(message.data)
        body = envelope["checkpoint"]
        signed = _body(body["stream"], int(body["last_seq"]), body["digest"], int(body["previous_seq"]),
                       body["signed_at"], body["key_id"])  # fmt: skip
        return cls(message.seq, body, signed, base64.b64decode(envelope["signature"]), str(envelope.get("public_key", "")))

    def signed_by(self, key: PublicKey) -> bool:
        return key.verifies(self.signed, self.signature)

    def carried_key_id(self) -> str | None:
        """The id of the key the checkpoint carries, if its signature verifies with it."""
        try:
            carried = PublicKey.from_pem(self.public_pem)
        except (ValueError, IndexError, TypeError):
            return None
        return carried.key_id if self.signed_by(carried) else None


class Checkpointer:
    """Writes signed checkpoints of the LEDGER stream (see the module docstring).

    It creates the checkpoint stream only while LEDGER is still empty (a new ledger), or when
    told to start a new chain (``new_chain``): a checkpoint stream missing beside a ledger that
    has messages was deleted, and recreating it would sign whatever LEDGER holds now as if
    nothing had happened. It then signs nothing (``missing``), and ``ledger verify`` fails until
    an operator looks (``docs/operations.md``). It never updates, purges or deletes the stream."""

    def __init__(self, datastore: JetStreamDatastore, key: SigningKey, *, replicas: int = 1, new_chain: bool = False) -> None:
        self.datastore = datastore
        self.key = key
        self.spec = checkpoint_spec(datastore.stream, datastore.prefix, replicas)
        self.subject = self.spec.subjects[0]
        self.written = 0
        self.missing = False
        if _stream_exists(datastore, self.spec.name):
            datastore.ensure_stream(self.spec, create=False)  # checked, never changed
        elif new_chain or datastore.last_sequence(datastore.stream) == 0:
            datastore.ensure_stream(self.spec)
        else:
            self.missing = True
            log.error(
                "event=checkpoints_missing stream=%s ledger_stream=%s: the checkpoint stream is gone while %s holds "
                "messages; no checkpoint is signed until an operator recreates it (docs/operations.md)",
                self.spec.name, datastore.stream, datastore.stream,
            )  # fmt: skip

    def last(self) -> tuple[int, str]:
        """(last sequence, digest) of the latest checkpoint signed with this key, or (0, genesis):
        a checkpoint anybody else put there is never continued (``ledger verify`` reports it)."""
        seq = self.datastore.last_sequence(self.spec.name)
        while seq > 0:
            page = self.datastore.read_range(self.spec.name, seq, 1)
            if page and page[0].seq == seq:
                try:
                    checkpoint = Checkpoint.parse(page[0])
                except (ValueError, KeyError, TypeError):
                    checkpoint = None
                if checkpoint is not None and checkpoint.signed_by(self.key.public):
                    return checkpoint.last_seq, str(checkpoint.body["digest"])
                log.warning("event=checkpoint_foreign seq=%d: not signed with this ledger's key, skipped", seq)
            seq -= 1
        return 0, GENESIS_HASH

    def checkpoint(self) -> int | None:
        """A checkpoint up to the stream's current end; its sequence, or None if nothing new (or
        the checkpoint stream is ``missing``)."""
        if self.missing:
            return None
        previous_seq, digest = self.last()
        end = self.datastore.last_sequence(self.datastore.stream)
        if end <= previous_seq:
            return None
        for message in _read(self.datastore, previous_seq + 1, end):
            digest = fold(digest, message)
        signed_at = datetime.now(UTC).isoformat()
        body = _body(self.datastore.stream, end, digest, previous_seq, signed_at, self.key.key_id)
        envelope = json.dumps(
            {"checkpoint": json.loads(body), "signature": base64.b64encode(self.key.sign(body)).decode(),
             "public_key": self.key.public_pem()},
            sort_keys=True,
        ).encode()  # fmt: skip
        self.datastore.client.append(
            [OutgoingMessage(self.subject, envelope, {"Nats-Msg-Id": f"checkpoint:{end}"})], frozenset({self.subject})
        )
        self.written += 1
        return end


def _stream_exists(datastore: JetStreamDatastore, name: str) -> bool:
    return _stream_config(datastore, name) is not None


def _stream_config(datastore: JetStreamDatastore, name: str) -> dict[str, Any] | None:
    """The stream's configuration, or None when it does not exist."""
    info = datastore.client.run(datastore.client.api(f"$JS.API.STREAM.INFO.{name}"))
    error = info.get("error")
    if error and error.get("err_code") == STREAM_NOT_FOUND:
        return None
    if error:
        from eventsourcing.persistence import OperationalError

        raise OperationalError(f"stream {name}: {error.get('description')}")
    return dict(info["config"])


def _refusals(datastore: JetStreamDatastore, name: str, found: Callable[[str, str], None]) -> None:
    """A stream of the evidence that accepts message deletes or purges is a finding."""
    config = _stream_config(datastore, name)
    for flag in ("deny_delete", "deny_purge"):
        if config is not None and not config.get(flag):
            found(f"stream {name}", f"{flag} is not set: its messages can be removed")


def _read(datastore: JetStreamDatastore, first: int, last: int) -> Iterator[StoredMessage]:
    seq = first
    while seq <= last:
        page = datastore.read_range(datastore.stream, seq, min(_PAGE, last - seq + 1))
        if not page:
            return
        for message in page:
            if message.seq > last:
                return
            yield message
        seq = page[-1].seq + 1


@dataclass
class Finding:
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class Verification:
    messages: int = 0
    events: int = 0
    signed_saves: int = 0
    """Saves whose signature verified with a pinned key."""
    checkpoints: int = 0
    """Checkpoints that verified (signed with a pinned key, digest equal)."""
    last_checkpoint_seq: int = 0
    last_checkpoint_signed_at: str | None = None
    last_checkpoint_digest: str | None = None
    """Worth keeping outside NATS: a later verify must reach at least this far with the same
    digest here (``docs/threat-model.md``: a rollback)."""
    uncovered: int = 0
    """Messages after the last verified checkpoint."""
    pinned: list[str] = field(default_factory=list)
    """The ids of the keys signatures were checked against."""
    findings: list[Finding] = field(default_factory=list)
    more_findings: int = 0
    """Findings beyond the first ``_MAX_FINDINGS`` (counted, not kept)."""

    @property
    def ok(self) -> bool:
        return not self.findings


class _Saves:
    """Checks the save signatures of LEDGER's messages, fed in stream order."""

    def __init__(self, keys: dict[str, PublicKey], found: Callable[[str, str], None]) -> None:
        self.keys = keys
        self.found = found
        self.pending: list[tuple[int, bytes]] = []
        self.seen: dict[bytes, int] = {}
        self.valid = 0

    def feed(self, message: StoredMessage) -> None:
        headers = message.headers
        self.pending.append((message.seq, message_digest(message.subject, headers, message.data)))
        signature = headers.get(SIGNATURE)
        if signature is None:
            return
        pending, self.pending = self.pending, []
        try:
            count = int(headers.get(SIGNED, ""))
        except ValueError:
            count = 0
        if not 1 <= count <= len(pending):
            self._unsigned(pending[:-1])
            self.found(
                f"LEDGER {message.seq} ({message.subject})",
                f"its signature claims to cover {headers.get(SIGNED)} messages, but the save it would end holds "
                f"{len(pending)}: not a save of the ledger",
            )
            return
        self._unsigned(pending[:-count])
        covered = pending[-count:]
        where = _range(covered[0][0], covered[-1][0]) + ("" if count > 1 else f" ({message.subject})")
        try:
            raw = base64.b64decode(signature, validate=True)
        except ValueError:
            raw = b""
        key = self.keys.get(headers.get(KEY_ID, ""))
        payload = save_payload([digest for _seq, digest in covered])
        if key is None:
            others = [k for k in self.keys.values() if k.verifies(payload, raw)]
            if not others:
                self.found(where, f"signed by key {headers.get(KEY_ID) or '(none)'}, not a pinned key: not written by this ledger")
                return
            key = others[0]
        elif not key.verifies(payload, raw):
            self.found(where, "the signature does not verify: a message of this save was changed, moved or forged")
            return
        first = self.seen.get(raw[:16])
        if first is not None:
            self.found(where, f"a copy of the signed save ending at LEDGER {first}: replayed, not written by this ledger")
            return
        self.seen[raw[:16]] = message.seq
        self.valid += 1

    def finish(self) -> None:
        pending, self.pending = self.pending, []
        self._unsigned(pending)

    def _unsigned(self, pending: list[tuple[int, bytes]]) -> None:
        for seq, _digest in pending:
            self.found(f"LEDGER {seq}", "no signature covers it: not written by this ledger")


def _range(first: int, last: int) -> str:
    return f"LEDGER {first}" if first == last else f"LEDGER {first}–{last}"


def verify(
    datastore: JetStreamDatastore,
    *,
    trusted: Sequence[PublicKey],
    stale_after: float | None = None,
    now: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_at_first: bool = False,
    known: tuple[int, str] | None = None,
) -> Verification:
    """Check every message of the stream and every checkpoint (see the module docstring).

    ``trusted``: the pinned public keys (at least one): a signature of any other key is a
    finding. ``stale_after``: seconds a message may wait for a checkpoint covering it (the
    first message after the last checkpoint older than that is a finding: checkpoints stale,
    or missing when there are none; 0: every message must be covered); None: not checked.
    ``now``: the time to measure that against (default: the clock). ``known``: (sequence,
    digest) of a checkpoint verified earlier and recorded outside NATS: the stream must still
    reach that sequence with that digest (a stream rolled back or rewritten before it fails).
    Every finding is reported (the first thousand kept), unless ``stop_at_first``."""
    if not trusted:
        raise ValueError("verify needs at least one pinned public key")
    result = Verification(pinned=[k.key_id for k in trusted])
    stop = False

    def found(where: str, problem: str) -> None:
        nonlocal stop
        if len(result.findings) < _MAX_FINDINGS:
            result.findings.append(Finding(where, problem))
        else:
            result.more_findings += 1
        stop = stop_at_first

    spec = checkpoint_spec(datastore.stream, datastore.prefix)
    for name in (datastore.stream, spec.name):
        _refusals(datastore, name, found)
    checkpoints = _checkpoints(datastore, spec, found)
    end = datastore.last_sequence(datastore.stream)
    saves = _Saves({k.key_id: k for k in trusted}, found)
    chains: dict[str, tuple[int, str]] = {}
    digest = GENESIS_HASH
    expected_seq = 1
    pending = iter(checkpoints if checkpoints is not None else [])
    next_checkpoint = next(pending, None)
    started = time.monotonic()
    for message in _read(datastore, 1, end):
        if message.seq != expected_seq:
            found(f"LEDGER {expected_seq}", f"missing: the next message is {message.seq}")
        expected_seq = message.seq + 1
        result.messages += 1
        digest = fold(digest, message)
        saves.feed(message)
        headers = message.headers
        if TOPIC in headers:
            result.events += 1
            _check_chain(message, chains, found)
        if known is not None and message.seq == known[0] and digest != known[1]:
            found(f"LEDGER up to {known[0]}", "its digest is not the one recorded from an earlier checkpoint: history was rewritten")
        while next_checkpoint is not None and next_checkpoint.last_seq == message.seq:
            _check_checkpoint(next_checkpoint, digest, trusted, result, found)
            next_checkpoint = next(pending, None)
        while next_checkpoint is not None and next_checkpoint.last_seq < message.seq:  # a gap swallowed its end
            found(f"checkpoint up to LEDGER {next_checkpoint.last_seq}", "that message is not in the stream")
            next_checkpoint = next(pending, None)
        if stop:
            return result
        if progress is not None and time.monotonic() - started > 0.2:
            progress(message.seq, end)
    saves.finish()
    result.signed_saves = saves.valid
    while next_checkpoint is not None:
        found(f"checkpoint up to LEDGER {next_checkpoint.last_seq}", f"the stream ends at {end}: messages it covered are gone")
        next_checkpoint = next(pending, None)
    result.uncovered = max(0, end - result.last_checkpoint_seq)
    if known is not None and end < known[0]:
        found(f"LEDGER up to {known[0]}", f"the stream ends at {end}, before a checkpoint recorded earlier: it was rolled back")
    if checkpoints is None and end > 0:
        found(f"checkpoints ({spec.name})", f"missing: the stream does not exist, while LEDGER holds {end:,} messages")
    elif result.uncovered and stale_after is not None:
        _check_freshness(datastore, result, stale_after, time.time() if now is None else now, found)
    if progress is not None:
        progress(end, end)
    return result


def _check_chain(message: StoredMessage, chains: dict[str, tuple[int, str]], found: Callable[[str, str], None]) -> None:
    headers = message.headers
    where = f"LEDGER {message.seq} ({message.subject} v{headers.get(VERSION)})"
    try:
        version_here = int(headers.get(VERSION, ""))
    except ValueError:
        found(where, "carries no version")
        return
    if HASH not in headers:
        found(where, "carries no hash chain: written before chains, or not by the ledger")
        chains[message.subject] = (version_here, "")
        return
    own = event_hash(headers.get(PREV_HASH, ""), message.subject, headers[VERSION], headers[TOPIC], message.data)
    if headers.get(HASH) != own:
        found(where, "its content no longer gives its Ledger-Hash: the event was changed")
    version, previous = chains.get(message.subject, (0, GENESIS_HASH))
    if version_here != version + 1:
        found(where, f"follows version {version}: an event is missing or repeated")
    if headers.get(PREV_HASH) != previous:
        found(where, "Ledger-Prev-Hash is not the previous event's hash: the chain is broken")
    chains[message.subject] = (version_here, headers.get(HASH) or "")


def _check_checkpoint(
    checkpoint: Checkpoint,
    digest: str,
    trusted: Sequence[PublicKey],
    result: Verification,
    found: Callable[[str, str], None],
) -> None:
    where = f"checkpoint up to LEDGER {checkpoint.last_seq}"
    if not any(checkpoint.signed_by(key) for key in trusted):
        carried = checkpoint.carried_key_id()
        if carried is not None:
            found(where, f"signed by key {carried}, not a pinned key ({', '.join(k.key_id for k in trusted)})")
        else:
            found(where, "its signature does not verify with a pinned key")
        return
    if checkpoint.body["digest"] != digest:
        previous = checkpoint.body.get("previous_seq", 0)
        found(where, f"the stream's digest differs: a message between LEDGER {previous + 1} and {checkpoint.last_seq} changed")
        return
    result.checkpoints += 1
    result.last_checkpoint_seq = checkpoint.last_seq
    result.last_checkpoint_signed_at = str(checkpoint.body.get("signed_at"))
    result.last_checkpoint_digest = str(checkpoint.body["digest"])


def _check_freshness(
    datastore: JetStreamDatastore, result: Verification, stale_after: float, now: float, found: Callable[[str, str], None]
) -> None:
    """The first message no checkpoint covers may not have waited longer than ``stale_after``."""
    first = result.last_checkpoint_seq + 1
    page = datastore.read_range(datastore.stream, first, 1)
    written = _stored_at(page[0]) if page else None
    waited = now - written if written is not None else float("inf")
    if waited <= stale_after:
        return
    end = result.last_checkpoint_seq + result.uncovered
    if not result.checkpoints:
        found(
            f"checkpoints ({checkpoints_name(datastore)})",
            f"missing: no checkpoint of a pinned key covers {_range(1, end)}, the first written {_ago(waited)}",
        )
        return
    found(
        f"checkpoints ({checkpoints_name(datastore)})",
        f"stale: the last covers LEDGER up to {result.last_checkpoint_seq:,} (signed {result.last_checkpoint_signed_at}); "
        f"{_range(first, end)} waited since {_ago(waited)}, more than the {stale_after:g} s allowed",
    )


def checkpoints_name(datastore: JetStreamDatastore) -> str:
    return checkpoint_spec(datastore.stream, datastore.prefix).name


def _ago(seconds: float) -> str:
    if seconds == float("inf"):
        return "an unknown time ago"
    return f"{seconds:,.0f} s ago"


def _stored_at(message: StoredMessage) -> float | None:
    """When the server stored ``message`` (its ``Nats-Time-Stamp``), as Unix time."""
    stamp = message.headers.get("Nats-Time-Stamp")
    if not stamp:
        return None
    text = stamp.strip().replace("Z", "+00:00")
    if "." in text:  # nanoseconds: Python takes at most microseconds
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _checkpoints(
    datastore: JetStreamDatastore, spec: StreamSpec, found: Callable[[str, str], None]
) -> list[Checkpoint] | None:
    """The checkpoints stored, in the order of what they cover; None when the stream is missing."""
    if not _stream_exists(datastore, spec.name):
        return None
    end = datastore.last_sequence(spec.name)
    checkpoints = []
    seq = 1
    while seq <= end:
        page = datastore.read_range(spec.name, seq, _PAGE)
        if not page:
            break
        for message in page:
            try:
                checkpoints.append(Checkpoint.parse(message))
            except (ValueError, KeyError, TypeError) as e:
                found(f"{spec.name} {message.seq}", f"not a checkpoint ({type(e).__name__}): not written by this ledger")
        seq = page[-1].seq + 1
    return sorted(checkpoints, key=lambda c: (c.last_seq, c.seq))
