"""The rejection: what the ledger keeps of a refused upstream message (``ledger.rejected.<reason>``)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import msgspec


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """A refused upstream message as stored on ``ledger.rejected.<reason>`` (contract.md)."""

    msg_id: str | None
    subject: str
    reason: str
    detail: str
    payload: str
    """The original bytes, base64; with ``payload_encrypted``, those bytes sealed with the ledger's
    payload key (AES-GCM, as its events), base64."""
    upstream_seq: int
    person_key: str | None = None
    payload_encrypted: bool = False
    """The ledger encrypts its payloads: ``payload`` is sealed (the sender keeps its message; UPSTREAM
    holds it at ``upstream_seq``)."""

    @classmethod
    def of(
        cls,
        *,
        msg_id: str | None,
        subject: str,
        reason: str,
        detail: str,
        data: bytes,
        upstream_seq: int,
        person_key: str | None = None,
    ) -> Rejection:
        return cls(
            msg_id=msg_id,
            subject=subject,
            reason=reason,
            detail=detail,
            payload=base64.b64encode(data).decode(),
            upstream_seq=upstream_seq,
            person_key=person_key,
        )

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.payload)

    def fitting(self, max_bytes: int) -> Rejection:
        """This rejection, or, when it would not fit in a NATS message of ``max_bytes`` (a body
        near the server's ``max_payload`` grows by a third in base64), one whose payload is the
        first bytes of the original, as many as fit; the detail says so. The whole message stays
        on UPSTREAM at ``upstream_seq``."""
        size = len(encode_rejection(self))
        if size <= max_bytes:
            return self
        original = self.original
        note = f" (payload: the first {{}} of {len(original)} bytes; the whole message is UPSTREAM sequence {self.upstream_seq})"
        room = max_bytes - (size - len(self.payload)) - len(note) - 32
        keep = max(0, room) // 4 * 3
        return msgspec.structs.replace(
            self,
            detail=self.detail + note.format(keep),
            payload=base64.b64encode(original[:keep]).decode(),
        )

    def sealed(self, seal: Callable[[bytes], bytes]) -> Rejection:
        """This rejection with its payload sealed by ``seal`` (the payload cipher's ``encrypt``).
        Seal a rejection that already ``fitting`` with ``SEAL_ROOM`` to spare."""
        return msgspec.structs.replace(self, payload=base64.b64encode(seal(self.original)).decode(), payload_encrypted=True)

    def headers(self) -> dict[str, str]:
        return {"Nats-Msg-Id": f"rejected/{self.upstream_seq}"}


SEAL_ROOM = 64
"""Bytes a sealed payload may add to a rejection (AES-GCM's nonce and tag, 28 bytes, in base64)."""

encode_rejection = msgspec.json.Encoder().encode
decode_rejection: Any = msgspec.json.Decoder(Rejection).decode
