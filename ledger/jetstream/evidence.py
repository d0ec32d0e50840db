"""Tamper evidence for the LEDGER stream: hash chains, signed checkpoints, and ``verify``.

- Every event carries the hash chain of its aggregate (``datastore.event_hash``): its own
  ``Ledger-Hash`` and the previous event's (``Ledger-Prev-Hash``).
- A **checkpoint** is a digest of the whole stream up to a sequence — each message's sequence,
  subject, version, topic, previous hash and body, folded in order — signed with the ledger's
  ed25519 key and stored on ``<prefix>.checkpoint`` in the stream ``<LEDGER>_CHECKPOINTS``
  (deny delete, deny purge). ``ledger serve`` writes one periodically and when it stops; each
  continues the digest of the one before.
- ``verify`` reads the stream and its checkpoints back, recomputes every chain link and every
  checkpoint digest, checks the signatures, and reports the first inconsistency: an event whose
  body no longer gives its hash, a link that does not follow, a gap, a checkpoint whose digest or
  signature does not match. An event changed after it was written fails its own hash; one
  removed or changed together with its hashes fails the next link or the checkpoint after it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.jetstream.client import OutgoingMessage, StoredMessage
from ledger.jetstream.datastore import (
    GENESIS_HASH,
    HASH,
    PREV_HASH,
    TOPIC,
    VERSION,
    JetStreamDatastore,
    StreamSpec,
    event_hash,
)

CHECKPOINT_VERSION = 1
_PAGE = 1000


class SigningKey:
    """An ed25519 key pair (pycryptodome, already installed with ``eventsourcing[crypto]``)."""

    def __init__(self, key: Any) -> None:
        self.key = key

    @classmethod
    def generate(cls) -> SigningKey:
        from Crypto.PublicKey import ECC

        return cls(ECC.generate(curve="ed25519"))

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        from Crypto.PublicKey import ECC

        return cls(ECC.import_key(path.read_text()))

    @classmethod
    def local(cls, path: Path) -> SigningKey:
        """The key in ``path``, created (mode 0600, with ``<path>.pub`` beside it) if missing."""
        if not path.exists():
            key = cls.generate()
            path.write_text(key.key.export_key(format="PEM"))
            path.chmod(0o600)
            path.with_suffix(path.suffix + ".pub").write_text(key.public_pem())
        return cls.load(path)

    def public_pem(self) -> str:
        return str(self.key.public_key().export_key(format="PEM"))

    def key_id(self) -> str:
        return key_id(self.public_pem())

    def sign(self, message: bytes) -> str:
        from Crypto.Signature import eddsa

        return base64.b64encode(eddsa.new(self.key, "rfc8032").sign(message)).decode()


def key_id(public_pem: str) -> str:
    return hashlib.sha256(public_pem.strip().encode()).hexdigest()[:16]


def signature_valid(public_pem: str, message: bytes, signature: str) -> bool:
    from Crypto.PublicKey import ECC
    from Crypto.Signature import eddsa

    try:
        eddsa.new(ECC.import_key(public_pem), "rfc8032").verify(message, base64.b64decode(signature))
    except (ValueError, TypeError):
        return False
    return True


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
    return StreamSpec(name=f"{stream}_CHECKPOINTS", subjects=(f"{prefix}.checkpoint",), replicas=replicas)


def _body(stream: str, last_seq: int, digest: str, previous_seq: int, signed_at: str, kid: str) -> bytes:
    return json.dumps(
        {"v": CHECKPOINT_VERSION, "stream": stream, "last_seq": last_seq, "digest": digest,
         "previous_seq": previous_seq, "signed_at": signed_at, "key_id": kid},
        sort_keys=True, separators=(",", ":"),
    ).encode()  # fmt: skip


class Checkpointer:
    """Writes signed checkpoints of the LEDGER stream (see the module docstring)."""

    def __init__(self, datastore: JetStreamDatastore, key: SigningKey, *, replicas: int = 1) -> None:
        self.datastore = datastore
        self.key = key
        self.spec = checkpoint_spec(datastore.stream, datastore.prefix, replicas)
        self.subject = self.spec.subjects[0]
        datastore.ensure_stream(self.spec)
        self.written = 0

    def last(self) -> tuple[int, str]:
        """(last sequence, digest) of the latest checkpoint, or (0, genesis)."""
        message = self.datastore.last_message(self.spec.name, self.subject)
        if message is None:
            return 0, GENESIS_HASH
        body = json.loads(message.data)["checkpoint"]
        return int(body["last_seq"]), str(body["digest"])

    def checkpoint(self) -> int | None:
        """A checkpoint up to the stream's current end; its sequence, or None if nothing new."""
        previous_seq, digest = self.last()
        end = self.datastore.last_sequence(self.datastore.stream)
        if end <= previous_seq:
            return None
        for message in _read(self.datastore, previous_seq + 1, end):
            digest = fold(digest, message)
        signed_at = datetime.now(UTC).isoformat()
        body = _body(self.datastore.stream, end, digest, previous_seq, signed_at, self.key.key_id())
        envelope = json.dumps(
            {"checkpoint": json.loads(body), "signature": self.key.sign(body), "public_key": self.key.public_pem()},
            sort_keys=True,
        ).encode()
        self.datastore.client.append(
            [OutgoingMessage(self.subject, envelope, {"Nats-Msg-Id": f"checkpoint:{end}"})], frozenset({self.subject})
        )
        self.written += 1
        return end


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
    checkpoints: int = 0
    last_checkpoint_seq: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def verify(
    datastore: JetStreamDatastore,
    *,
    trusted_keys: set[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_at_first: bool = True,
) -> Verification:
    """Recompute every hash chain and checkpoint of the stream (see the module docstring).

    ``trusted_keys``: key ids whose signatures are accepted (None: any key the checkpoints
    carry, which proves integrity since signing but not who signed)."""
    result = Verification()
    spec = checkpoint_spec(datastore.stream, datastore.prefix)
    checkpoints = _checkpoints(datastore, spec)
    end = datastore.last_sequence(datastore.stream)
    chains: dict[str, tuple[int, str]] = {}
    digest = GENESIS_HASH
    expected_seq = 1
    pending = iter(checkpoints)
    next_checkpoint = next(pending, None)
    started = time.monotonic()

    def found(where: str, problem: str) -> bool:
        result.findings.append(Finding(where, problem))
        return stop_at_first

    for message in _read(datastore, 1, end):
        if message.seq != expected_seq and found(f"LEDGER {expected_seq}", f"missing: the next message is {message.seq}"):
            return result
        expected_seq = message.seq + 1
        result.messages += 1
        digest = fold(digest, message)
        headers = message.headers
        if TOPIC in headers:
            result.events += 1
            where = f"LEDGER {message.seq} ({message.subject} v{headers.get(VERSION)})"
            if HASH not in headers:
                if found(where, "carries no hash chain: written before chains, or not by the ledger"):
                    return result
                chains[message.subject] = (int(headers[VERSION]), "")
                continue
            own = event_hash(headers.get(PREV_HASH, ""), message.subject, headers[VERSION], headers[TOPIC], message.data)
            if headers.get(HASH) != own and found(where, "its content no longer gives its Ledger-Hash: the event was changed"):
                return result
            version, previous = chains.get(message.subject, (0, GENESIS_HASH))
            if int(headers[VERSION]) != version + 1 and found(where, f"follows version {version}: an event is missing"):
                return result
            if headers.get(PREV_HASH) != previous and found(
                where, "Ledger-Prev-Hash is not the previous event's hash: the chain is broken"
            ):
                return result
            chains[message.subject] = (int(headers[VERSION]), headers.get(HASH) or "")
        while next_checkpoint is not None and next_checkpoint[0]["last_seq"] == message.seq:
            if not _check_checkpoint(next_checkpoint, digest, trusted_keys, result, found):
                return result
            next_checkpoint = next(pending, None)
        if progress is not None and time.monotonic() - started > 0.2:
            progress(message.seq, end)
    if next_checkpoint is not None:
        found(
            f"checkpoint up to LEDGER {next_checkpoint[0]['last_seq']}",
            f"the stream ends at {end}: messages it covered are gone",
        )
    if progress is not None:
        progress(end, end)
    return result


def _check_checkpoint(
    checkpoint: tuple[dict[str, Any], str, str, bytes],
    digest: str,
    trusted_keys: set[str] | None,
    result: Verification,
    found: Callable[[str, str], bool],
) -> bool:
    body, signature, public_pem, raw = checkpoint
    where = f"checkpoint up to LEDGER {body['last_seq']}"
    if not signature_valid(public_pem, raw, signature):
        return not found(where, "its signature does not verify")
    if trusted_keys is not None and key_id(public_pem) not in trusted_keys:
        return not found(where, f"signed by key {key_id(public_pem)}, not a trusted key")
    if body["digest"] != digest:
        previous = body.get("previous_seq", 0)
        return not found(
            where, f"the stream's digest differs: a message between LEDGER {previous + 1} and {body['last_seq']} changed"
        )
    result.checkpoints += 1
    result.last_checkpoint_seq = int(body["last_seq"])
    return True


def _checkpoints(datastore: JetStreamDatastore, spec: StreamSpec) -> list[tuple[dict[str, Any], str, str, bytes]]:
    try:
        end = datastore.last_sequence(spec.name)
    except Exception:  # noqa: BLE001 - no checkpoint stream: no checkpoints yet
        return []
    found = []
    seq = 1
    while seq <= end:
        page = datastore.read_range(spec.name, seq, _PAGE)
        if not page:
            break
        for message in page:
            envelope = json.loads(message.data)
            body = envelope["checkpoint"]
            raw = _body(body["stream"], body["last_seq"], body["digest"], body["previous_seq"], body["signed_at"], body["key_id"])
            found.append((body, envelope["signature"], envelope["public_key"], raw))
        seq = page[-1].seq + 1
    return sorted(found, key=lambda c: c[0]["last_seq"])
