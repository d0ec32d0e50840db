"""Signed writes: every save the ledger makes on LEDGER carries an ed25519 signature.

A **save** is one ``JetStreamDatastore.append`` or ``claim``: messages stored together, in one
atomic batch, so they stand next to each other in the stream. Its last message carries:

- ``Ledger-Signed``: how many messages the signature covers, ending with this one;
- ``Ledger-Key-Id``: the id of the key that signed (``key_id``: 16 hex digits of SHA-256 over
  the raw public key);
- ``Ledger-Signature``: base64 of the ed25519 signature over ``save_payload``: a label naming
  the format, the count, and for each message of the save, in order, ``message_digest`` —
  SHA-256 over its subject, every ``Ledger-*`` header it carries (the chain headers
  ``Ledger-Hash``/``Ledger-Prev-Hash``, topic, version, tracking id, epoch, nonce, the count
  and key id …, but not the signature itself) and its body.

So a signed message changed, moved to another subject, given other chain headers, dropped from
its save or joined by another message fails the signature; a message that no signature covers
is unsigned. One signature per save rather than per message: a save of the ingestion holds a
whole batch of decisions (hundreds of messages), and with pycryptodome a signature costs about
70 µs to make and 170 µs to check where a message's digest costs under 1 µs (measured on the
two-core development machine).

The key is a file the ledger service reads (``LEDGER_SIGNING_KEY_FILE``), mode 0600 or 0400 (a
file group or others can read is refused); it is never published.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger.jetstream.client import OutgoingMessage, RawHeaders
from ledger.secret_files import read_secret_file

SIGNATURE = "Ledger-Signature"
SIGNED = "Ledger-Signed"
KEY_ID = "Ledger-Key-Id"
_PREFIX = "Ledger-"
_SIGNATURE_BYTES = SIGNATURE.encode()
_PREFIX_BYTES = _PREFIX.encode()
SAVE_LABEL = b"enrollment-ledger signed save v1\n"
"""Starts every signed payload: a save's signature can never pass for a checkpoint's (JSON)."""


def key_id(raw_public_key: bytes) -> str:
    """The id of a public key: 16 hex digits of SHA-256 over its 32 raw bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


class PublicKey:
    """An ed25519 public key (pycryptodome, installed with ``eventsourcing[crypto]``)."""

    def __init__(self, key: Any) -> None:
        from Crypto.Signature import eddsa

        self.key = key
        self.raw: bytes = key.export_key(format="raw")
        self.key_id = key_id(self.raw)
        self._verifier = eddsa.new(key, "rfc8032")

    @classmethod
    def from_pem(cls, pem: str) -> PublicKey:
        from Crypto.PublicKey import ECC

        key = ECC.import_key(pem)
        if key.curve != "Ed25519":
            raise ValueError(f"not an ed25519 key: {key.curve}")
        return cls(key.public_key())

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        """The public key in the PEM file ``path`` (a private key file gives its public half)."""
        try:
            return cls.from_pem(path.read_text())
        except (ValueError, IndexError, TypeError) as e:
            raise ValueError(f"{path}: not an ed25519 key in PEM ({e})") from None

    def pem(self) -> str:
        return str(self.key.export_key(format="PEM")) + "\n"

    def verifies(self, payload: bytes, signature: bytes) -> bool:
        try:
            self._verifier.verify(payload, signature)
        except (ValueError, TypeError):
            return False
        return True


class SigningKey:
    """The ledger's ed25519 signing key: its writes and its checkpoints."""

    def __init__(self, key: Any) -> None:
        from Crypto.Signature import eddsa

        self.key = key
        self.public = PublicKey(key.public_key())
        self._signer = eddsa.new(key, "rfc8032")

    @classmethod
    def generate(cls) -> SigningKey:
        from Crypto.PublicKey import ECC

        return cls(ECC.generate(curve="ed25519"))

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key in the PEM file ``path``, which group and others may not read: a key file they
        can read is refused (``SecretFileExposed``, with the ``chmod`` to run), whoever made it —
        whoever could read it could sign the ledger's history."""
        from Crypto.PublicKey import ECC

        try:
            key = ECC.import_key(read_secret_file(path, own=True, what="signing key"))
        except (ValueError, IndexError, TypeError) as e:
            raise ValueError(f"{path}: not an ed25519 private key in PEM ({e})") from None
        if key.curve != "Ed25519" or not key.has_private():
            raise ValueError(f"{path}: not an ed25519 private key")
        return cls(key)

    @classmethod
    def create(cls, path: Path) -> SigningKey:
        """A new key written to ``path`` (mode 0600 from the start; never over an existing file)."""
        import os

        key = cls.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.private_pem())
        return key

    @classmethod
    def local(cls, path: Path) -> SigningKey:
        """The key in ``path``, created (mode 0600) if missing: the development arrangement of
        the embedded setup, where it sits in DATA_DIR."""
        if not path.exists():
            try:
                return cls.create(path)
            except FileExistsError:
                pass  # made meanwhile by another process
        return cls.load(path)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def private_pem(self) -> str:
        return str(self.key.export_key(format="PEM")) + "\n"

    def public_pem(self) -> str:
        return self.public.pem()

    def sign(self, payload: bytes) -> bytes:
        return bytes(self._signer.sign(payload))


def _header_lines(headers: Mapping[str, str]) -> Iterable[tuple[bytes, bytes]]:
    if isinstance(headers, RawHeaders):
        return headers.lines()
    return ((name.encode(), value.encode()) for name, value in headers.items())


def message_digest(subject: str, headers: Mapping[str, str], data: bytes) -> bytes:
    """SHA-256 over a message's subject, its ``Ledger-*`` headers but the signature (sorted,
    values without surrounding blanks, a repeated header kept) and its body."""
    lines = sorted(
        name + b":" + value.strip() + b"\n"
        for name, value in _header_lines(headers)
        if name.startswith(_PREFIX_BYTES) and name != _SIGNATURE_BYTES
    )
    digest = hashlib.sha256(subject.encode())
    digest.update(b"\n")
    digest.update(b"".join(lines))
    digest.update(b"\n")
    digest.update(data)
    return digest.digest()


def save_payload(digests: Sequence[bytes]) -> bytes:
    """What a save's signature signs: the label, the count, each message's digest in order."""
    return SAVE_LABEL + str(len(digests)).encode() + b"\n" + b"".join(digests)


def sign_save(key: SigningKey, messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
    """``messages`` (one save, in the order they are stored) with the signature on the last."""
    if not messages:
        return []
    last = messages[-1]
    headers = {**last.headers, SIGNED: str(len(messages)), KEY_ID: key.key_id}
    signed = [*messages[:-1], OutgoingMessage(last.subject, last.data, headers)]
    payload = save_payload([message_digest(m.subject, m.headers, m.data) for m in signed])
    headers[SIGNATURE] = base64.b64encode(key.sign(payload)).decode()
    return signed
