"""The writer lease: exactly one ``ledger serve`` ingests at a time, elected on NATS itself.

The lease is a key of the KV bucket ``ledger_writer`` (one key per partition: ``ingest`` today).
Whoever creates the key holds the lease; the holder renews it by compare-and-set on the key's
revision; the bucket's TTL removes a key that was not renewed in time (the holder died, paused
or lost its connection), and the next ``create`` by a standby takes over. The server's clock
alone decides expiry.

A lease alone cannot stop a writer that was paused past it and wakes up believing it still
writes: the **fence** does (``ledger.jetstream.datastore.Fence``). The revision at which a writer
acquired the lease is its epoch; on taking over it claims the ingestion's tracking subject with
that epoch, and every append it makes expects the subject's last message to be its own. An old
writer's next append is refused by the server, and it steps down.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from contract.subjects import WRITER_BUCKET as BUCKET

log = logging.getLogger(__name__)



class _Holder(msgspec.Struct):
    holder: str
    epoch: int


@dataclass
class WriterLease:
    """One process's view of the lease on ``key`` (see the module's docstring)."""

    js: JetStreamContext
    key: str = "ingest"
    ttl: float = 5.0
    replicas: int = 1
    holder: str = ""
    epoch: int | None = None
    """While held: the revision at which it was acquired."""
    _revision: int | None = None
    _kv: KeyValue | None = None

    def __post_init__(self) -> None:
        if not self.holder:
            self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def held(self) -> bool:
        return self.epoch is not None

    @property
    def renew_every(self) -> float:
        """Seconds between renewals: a fifth of the TTL, so that a few lost renewals do not
        lose the lease."""
        return self.ttl / 5

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                kv = await self.js.key_value(BUCKET)
            except BucketNotFoundError:
                kv = await self.js.create_key_value(
                    bucket=BUCKET, ttl=self.ttl, history=1, replicas=self.replicas,
                    description="which ledger serve ingests (the writer lease)",
                )  # fmt: skip
            # The bucket's TTL is the lease's, whatever this process was configured with: every
            # contender must renew in time for the same expiry.
            status = await kv.status()
            if status.ttl and abs(status.ttl - self.ttl) > 0.001:
                log.warning("event=lease_ttl configured=%g bucket=%g: using the bucket's", self.ttl, status.ttl)
                self.ttl = status.ttl
            self._kv = kv
        return self._kv

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process now holds it."""
        kv = await self._bucket()
        try:
            revision = await kv.create(self.key, b"")
        except KeyWrongLastSequenceError:
            return False
        # The value names the holder and its epoch (the revision it was created at).
        try:
            self._revision = await kv.update(
                self.key, msgspec.json.encode(_Holder(self.holder, revision)), last=revision
            )
        except KeyWrongLastSequenceError:
            return False
        except BaseException:
            await self._let_go(revision)
            raise
        self.epoch = revision
        log.info("event=lease_acquired key=%s epoch=%d holder=%s", self.key, revision, self.holder)
        return True

    async def renew(self) -> bool:
        """Keep the lease; False (and no longer held) when it expired or was taken."""
        if self._revision is None or self.epoch is None:
            return False
        kv = await self._bucket()
        try:
            self._revision = await kv.update(
                self.key, msgspec.json.encode(_Holder(self.holder, self.epoch)), last=self._revision
            )
            return True
        except KeyWrongLastSequenceError:
            if await self._still_ours():
                return True  # the renewal before went through though its answer was lost
            log.warning("event=lease_lost key=%s epoch=%d holder=%s", self.key, self.epoch, self.holder)
            self.epoch = self._revision = None
            return False

    async def _still_ours(self) -> bool:
        """Whether the key still names this holder and epoch (adopting its revision if so)."""
        found = await self._entry()
        if found is None or (found[0].holder, found[0].epoch) != (self.holder, self.epoch):
            return False
        self._revision = found[1]
        return True

    async def _entry(self) -> tuple[_Holder, int] | None:
        """The key's value and revision (None when nobody holds the lease)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:
            return None
        if not entry.value or entry.revision is None:  # (a value read is always at a revision)
            return None
        return msgspec.json.decode(entry.value, type=_Holder), entry.revision

    async def _let_go(self, revision: int) -> None:
        """Delete the key created at ``revision`` if it is still that one (a half-taken lease)."""
        try:
            kv = await self._bucket()
            await kv.delete(self.key, last=revision)
        except Exception as e:  # noqa: BLE001 - then it expires by itself
            log.info("event=lease_not_released error=%r (it expires by itself)", e)

    async def release(self) -> None:
        """Give the lease up at once (a graceful stop): a standby need not wait for the TTL."""
        if self._revision is None:
            return
        kv = await self._bucket()
        try:
            await kv.delete(self.key, last=self._revision)
            log.info("event=lease_released key=%s epoch=%s holder=%s", self.key, self.epoch, self.holder)
        except (KeyWrongLastSequenceError, KeyNotFoundError, BadRequestError):
            pass  # taken meanwhile (a conditional delete answers "wrong last sequence" as a bad request)
        finally:
            self.epoch = self._revision = None

    async def current(self) -> tuple[str, int] | None:
        """Who holds the lease now, and its epoch (None when nobody does)."""
        found = await self._entry()
        return None if found is None else (found[0].holder, found[0].epoch)
