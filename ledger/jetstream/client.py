"""A synchronous face on nats-py: a private event loop in its own thread, one connection.

The ``eventsourcing`` recorders are synchronous and may be called from many threads; nats-py is
asyncio. ``NatsClient`` owns a daemon thread running an event loop with one NATS connection;
callers hand it work and wait for the outcome with a timeout, so no call hangs when the server
is gone.

Appends go through a single writer coroutine that practises **group commit**: the saves that
arrive while a commit is in flight are gathered into the next JetStream atomic batch (up to the
server's 1,000 messages). Each save keeps its own all-or-nothing and conflict semantics: when a
gathered batch fails a check, the writer splits it and commits the halves, so the conflicting
save fails alone and the others commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
)
from nats.errors import TimeoutError as NatsTimeoutError

from ledger.jetstream import tls as nats_tls
from ledger.jetstream.tls import GuardedClient
from ledger.jetstream.tls import server_urls as server_urls  # where the callers have always found it
from ledger.urls import redacted

log = logging.getLogger("ledger.nats")

T = TypeVar("T")

MAX_ATOMIC_BATCH = 1000
"""nats-server refuses atomic batches of more than 1,000 messages (error 10199)."""

# JetStream API error codes the store acts on (measured on nats-server 2.15).
WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_SEQUENCE_IN_BATCH = 10164
BATCH_TOO_LARGE = 10199
BATCH_DUPLICATE_MSG_ID = 10201


class NatsUnavailableError(ConnectionError):
    """Raised when the NATS server cannot be reached or does not answer in time."""


class NotSentError(NatsUnavailableError):
    """Raised when a message could not be handed to the server (disconnected): nothing was stored."""


class OutcomeUnknownError(NatsUnavailableError):
    """Raised when an append was sent but its acknowledgement never came: it may have committed."""


class AppendRejectedError(Exception):
    """Raised when JetStream refuses an append; ``err_code`` is the server's JetStream error code."""

    def __init__(self, err_code: int, description: str) -> None:
        super().__init__(f"{description} (JetStream error {err_code})")
        self.err_code = err_code
        self.description = description


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    count: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_NOT_CONNECTED = (
    ConnectionClosedError,
    ConnectionDrainingError,
    ConnectionReconnectingError,
    OutboundBufferLimitError,
)

_decode_ack = msgspec.json.Decoder(_PubAck).decode
_encode = msgspec.json.encode


@dataclass(slots=True)
class OutgoingMessage:
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class StoredMessage:
    """A message read back from the stream."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class _Append:
    messages: list[OutgoingMessage]
    subjects: frozenset[str]
    future: concurrent.futures.Future[list[int]] = field(default_factory=concurrent.futures.Future)


@dataclass
class CommitStats:
    """What the writer has done: atomic commits sent, saves and messages committed, failed
    gathered batches split to isolate a conflicting save."""

    batches: int = 0
    saves: int = 0
    messages: int = 0
    splits: int = 0


def stored_message(msg: DirectReply) -> StoredMessage:
    """A direct-get reply as a stored message."""
    headers = msg.headers
    return StoredMessage(
        subject=headers["Nats-Subject"], seq=int(headers["Nats-Sequence"]), data=msg.data, headers=headers
    )


class _MultiReply:
    """Collects the replies to one direct-get request until its end-of-batch status, converting
    each as it arrives (on the loop, while the rest are still on their way)."""

    __slots__ = ("convert", "future", "items", "single")

    def __init__(self, single: bool, convert: Callable[[DirectReply], Any]) -> None:
        self.single = single
        self.convert = convert
        self.items: list[Any] = []
        self.future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()


# A header line: a name of visible ASCII but ':' (so no whitespace), ':', the value up to the
# line's end, surrounding blanks dropped. Lines that do not match are skipped, as nats-py does.
_HEADER_LINE = re.compile(rb"^([!-9;-~]+):[ \t]*([^\r\n]*)", re.MULTILINE)
_STATUS_LINE_START = len(b"NATS/1.0")
_EMPTY_HEADERS = len(b"NATS/1.0\r\n\r\n")
_NEEDLES: dict[str, bytes] = {}


class RawHeaders(dict[str, str]):
    """Message headers parsed only as far as they are read.

    Reading the stream back is dominated by header parsing: every stored event carries about a
    dozen headers (ours, the batch's and the direct-get metadata) and nats-py parses them all,
    line by line, for every message. This mapping keeps the raw block; ``get``, ``[]`` and
    ``in`` find one header in it directly, anything else parses the whole block once.
    """

    __slots__ = ("_raw", "_parsed")

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self._raw = raw
        self._parsed = False

    def _find(self, key: str) -> str | None:
        if self._parsed:
            return dict.get(self, key)
        raw = self._raw
        needle = _NEEDLES.get(key)
        if needle is None:
            needle = _NEEDLES[key] = b"\n" + key.encode() + b":"
        at = raw.rfind(needle)
        if at < 0:
            return None
        start = at + len(needle)
        end = raw.find(b"\r", start)
        return raw[start:end].strip().decode("utf-8", "replace")

    def _parse(self) -> None:
        if not self._parsed:
            self._parsed = True
            self.update(_LedgerConnection._parse_header_lines(self._raw))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._find(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> str:
        value = self._find(key)
        if value is None:
            raise KeyError(key)
        return value

    def lines(self) -> list[tuple[bytes, bytes]]:
        """Every header line as stored, (name, value) in order, repeated names kept (the
        signature check reads them exactly: ``signing.message_digest``)."""
        return _HEADER_LINE.findall(self._raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def __bool__(self) -> bool:
        return True  # only made for a block with at least one header line

    def __len__(self) -> int:
        self._parse()
        return dict.__len__(self)

    def __iter__(self) -> Any:
        self._parse()
        return dict.__iter__(self)

    def keys(self) -> Any:
        self._parse()
        return dict.keys(self)

    def values(self) -> Any:
        self._parse()
        return dict.values(self)

    def items(self) -> Any:
        self._parse()
        return dict.items(self)

    def copy(self) -> dict[str, str]:
        self._parse()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._parse()
        return dict.__eq__(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        self._parse()
        return dict.__repr__(self)


class DirectReply:
    """One message of a direct-get reply: its headers (lazily parsed) and body."""

    __slots__ = ("data", "headers")

    def __init__(self, headers: RawHeaders, data: bytes) -> None:
        self.headers = headers
        self.data = data


class _LedgerConnection(GuardedClient):
    """nats-py's client (never sending credentials in clear where TLS is required:
    ``GuardedClient``), tuned for reading the stream back.

    - Headers are parsed lazily (``RawHeaders``); status messages (heartbeats, flow control) keep
      nats-py's own handling.
    - Direct-get replies skip nats-py's per-message machinery (message object, subscription
      queue, callback task): the parser hands them straight to one handler.
    """

    _direct_sid: int | None = None
    _direct_handler: Callable[[bytes, bytes, bytes | None], None]

    def direct_replies(self, subscription: Any, handler: Callable[[bytes, bytes, bytes | None], None]) -> None:
        """Route the messages of ``subscription`` to ``handler(subject, data, raw_headers)``."""
        self._direct_handler = handler
        self._direct_sid = subscription._id

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if sid == self._direct_sid:
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            self._direct_handler(subject, data, headers)
            return
        await super()._process_msg(sid, subject, reply, data, headers)

    async def _process_headers(self, headers: bytes) -> dict[str, str] | None:
        if not headers or len(headers) <= _EMPTY_HEADERS or headers[_STATUS_LINE_START : _STATUS_LINE_START + 1] == b" ":
            return await super()._process_headers(headers)
        return RawHeaders(headers)

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        return {
            name.decode(): value.strip().decode("utf-8", "replace")
            for name, value in _HEADER_LINE.findall(raw)
        }


def _call(listener: Callable[..., None], *args: Any) -> None:
    """A listener's failure is logged, never raised into nats-py's reconnect or error path."""
    try:
        listener(*args)
    except Exception as e:  # noqa: BLE001 - a listener must not break the connection
        log.warning("event=nats_listener_failed listener=%r error=%r", listener, e)


JS_API = "$JS.API"
"""The JetStream API's subjects in the account that holds the streams."""


class NatsClient:
    """One NATS connection on a private event loop, safe to call from many threads."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_batch: int = MAX_ATOMIC_BATCH,
        linger: float = 0.002,
        name: str = "enrollment-ledger",
        api_prefix: str = JS_API,
        **connect_options: Any,
    ) -> None:
        if not 1 <= max_batch <= MAX_ATOMIC_BATCH:
            raise ValueError(f"max_batch must be between 1 and {MAX_ATOMIC_BATCH}")
        self.url = url
        self.timeout = timeout
        self.api_prefix = api_prefix.rstrip(".")
        """Where this client's JetStream API is: ``$JS.API``, or for a user of another account
        that imports the ledger's API (an auditor), the prefix of that import (``$JS.ledger.API``)."""
        self.max_batch = max_batch
        self.linger = linger
        # uvloop: cheaper wake-ups and socket calls than asyncio's loop, which on this machine
        # made a single save ~12% faster (the thread hop and syscalls dominate it).
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nats-{redacted(url)}", daemon=True)
        self._thread.start()
        self._pending: deque[_Append] = deque()
        self._writer_idle = True
        self._wake_sent = False
        self._wake: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._replies: dict[str, _MultiReply] = {}
        self._reply_tokens = itertools.count()
        self._closed = False
        self._users = 1
        """How many owners share this client (``shared``); the last ``close`` closes it."""
        self._shared_key: tuple[Any, ...] | None = None
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._error_listeners: list[Callable[[Exception], None]] = []
        self.stats = CommitStats()
        try:
            self.nc: NATS = self.run(
                self._connect(url, connect_timeout, name, connect_options),
                timeout=connect_timeout * 2 + 5,
            )
        except BaseException:
            self._stop_loop()
            raise

    # ---- plumbing -------------------------------------------------------------------------

    async def _connect(self, url: str, connect_timeout: float, name: str, options: dict[str, Any]) -> NATS:
        async def on_error(e: Exception) -> None:
            """nats-py logs and retries by itself; failures reach callers as timeouts. Listeners
            (``on_error``) hear of errors that concern them, such as a slow consumer."""
            for listener in list(self._error_listeners):
                _call(listener, e)

        async def on_reconnected() -> None:
            for listener in list(self._reconnect_listeners):
                _call(listener)

        options.setdefault("max_reconnect_attempts", -1)
        # No buffering while reconnecting: a publish then fails at once, so an append is either
        # sent now or known not to be, instead of committing later behind the caller's back.
        options.setdefault("pending_size", 0)
        # Subjects are built from validated tokens (datastore); nats-py's per-publish check of
        # every subject was a tenth of the writer's time.
        options.setdefault("skip_subject_validation", True)
        options.setdefault("reconnect_time_wait", 0.25)
        # A server that stops answering (frozen, partitioned) is left for another within about
        # 15 s instead of nats-py's default of minutes.
        options.setdefault("ping_interval", 5)
        options.setdefault("max_outstanding_pings", 2)
        options.setdefault("error_cb", on_error)
        options.setdefault("reconnected_cb", on_reconnected)
        nc = _LedgerConnection()
        connecting = nc.connect(
            **nats_tls.connect_options(url),  # the servers, and the process's TLS when required
            name=name,
            # nats-py annotates it int but only passes it to asyncio.wait_for: seconds, any number.
            connect_timeout=connect_timeout,  # type: ignore[arg-type]
            allow_reconnect=True,
            **options,
        )
        try:
            # nats-py retries a first connection as long as reconnects; a wrong URL must be told.
            await asyncio.wait_for(connecting, connect_timeout * 2)
        except TimeoutError as e:
            last = f" (last error: {nc.last_error!r})" if nc.last_error else ""
            raise NatsUnavailableError(
                f"cannot connect to NATS at {redacted(url)}: no server answered within {connect_timeout * 2:g}s{last}"
            ) from e
        except Exception as e:
            raise NatsUnavailableError(f"cannot connect to NATS at {redacted(url)}: {e!r}") from e
        self._inbox_prefix = nc.new_inbox()
        self._inbox_prefix_bytes = self._inbox_prefix.encode() + b"."
        replies = await nc.subscribe(self._inbox_prefix + ".*")
        nc.direct_replies(replies, self._on_reply)
        self._wake = asyncio.Event()
        self._writer_task = asyncio.create_task(self._writer())
        return nc

    _shared: dict[tuple[Any, ...], NatsClient] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, url: str, **options: Any) -> NatsClient:
        """The process's one client for ``url`` with these options: made by the first caller,
        shared by the next ones (the event store of the ingestion, the projections' reader of
        the same store, the downstream publisher), closed when the last of them closes it.
        One connection and one event loop per server for the whole process."""
        key = (url, nats_tls.current(), tuple(sorted(options.items())))
        with cls._shared_lock:
            client = cls._shared.get(key)
            if client is not None and not client._closed and client._users > 0:
                client._users += 1
                return client
            client = cls(url, **options)
            client._shared_key = key
            cls._shared[key] = client
            return client

    def acquire(self) -> NatsClient:
        """Share this client with one more owner, who closes it in turn."""
        with self._shared_lock:
            if self._closed or self._users <= 0:
                raise NatsUnavailableError("the NATS client is closed")
            self._users += 1
        return self

    def on_reconnected(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` (on the client's loop) after each reconnection; returns the
        function that stops it."""
        self._reconnect_listeners.append(listener)
        return lambda: self._reconnect_listeners.remove(listener) if listener in self._reconnect_listeners else None

    def on_error(self, listener: Callable[[Exception], None]) -> Callable[[], None]:
        """Call ``listener(error)`` (on the client's loop) for each asynchronous error nats-py
        reports (a slow consumer, a lost connection); returns the function that stops it."""
        self._error_listeners.append(listener)
        return lambda: self._error_listeners.remove(listener) if listener in self._error_listeners else None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the private loop and wait for it (from any thread but the loop's)."""
        return self.result(self.start(coro), timeout)

    def close(self) -> None:
        if self._closed:
            return
        with self._shared_lock:
            self._users -= 1
            if self._users > 0:
                return  # others still share it
            if self._shared_key is not None and self._shared.get(self._shared_key) is self:
                del self._shared[self._shared_key]
        try:
            self.run(self._close(), timeout=self.timeout + 1)
        except Exception:  # noqa: BLE001 - closing must not fail the caller
            pass
        self._closed = True
        self._stop_loop()

    async def _close(self) -> None:
        if self._writer_task:
            self._writer_task.cancel()
        for append in self._pending:
            append.future.set_exception(NatsUnavailableError("the NATS client was closed"))
        self._pending.clear()
        await self.nc.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # ---- requests ---------------------------------------------------------------------------

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = "") -> None:
        try:
            await self.nc.publish(subject, payload, reply=reply, headers=headers)
        except _NOT_CONNECTED as e:
            raise NotSentError(f"not connected to NATS at {redacted(self.url)}: {e!r}") from e

    async def request(self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None) -> Msg:
        try:
            return await self.nc.request(subject, payload, timeout=self.timeout, headers=headers)
        except _NOT_CONNECTED as e:
            raise NotSentError(f"not connected to NATS at {redacted(self.url)}: {e!r}") from e
        except NoRespondersError as e:
            # Nobody took the request (no JetStream, or a stream without a leader just now): it
            # went nowhere, so an append sent this way was not stored and may be sent again.
            raise NotSentError(f"no responders on {subject} (is JetStream enabled, has the stream a leader?)") from e
        except NatsTimeoutError as e:
            raise NatsUnavailableError(f"NATS at {redacted(self.url)} did not answer {subject} in time") from e

    @property
    def through_imports(self) -> bool:
        """Whether this client reads another account's streams through imports (an auditor:
        ``api_prefix`` is not ``$JS.API``): stream info and direct gets only, no consumers."""
        return self.api_prefix != JS_API

    def api_subject(self, subject: str) -> str:
        """``subject`` (``$JS.API.…``) under this client's API prefix."""
        if self.api_prefix != JS_API and subject.startswith(JS_API + "."):
            return self.api_prefix + subject[len(JS_API) :]
        return subject

    async def api(self, subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JetStream API call (``$JS.API.…``, sent under the client's API prefix); returns the
        decoded JSON reply (which may hold an ``error``)."""
        subject = self.api_subject(subject)
        msg = await self.request(subject, _encode(request) if request is not None else b"")
        return msgspec.json.decode(msg.data)

    # ---- direct get -------------------------------------------------------------------------

    def _on_reply(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        token = subject[len(self._inbox_prefix_bytes) :].decode()
        waiter = self._replies.get(token)
        if waiter is None or waiter.future.done():
            return
        if not headers or headers[_STATUS_LINE_START : _STATUS_LINE_START + 1] == b" ":
            # A status instead of a message. Only 204 (end of batch) and 404 (nothing found) end
            # a read normally; any other (408, 503 while a restarted server recovers its
            # streams …) must not pass for "no more messages": that would load a person without
            # their events.
            status = headers[_STATUS_LINE_START + 1 : _STATUS_LINE_START + 4] if headers else b""
            if status in (b"204", b"404"):
                waiter.future.set_result(waiter.items)
            else:
                line = headers.split(b"\r\n", 1)[0].decode(errors="replace") if headers else "no headers"
                waiter.future.set_exception(NatsUnavailableError(f"direct get answered {line!r}"))
            return
        try:
            waiter.items.append(waiter.convert(DirectReply(RawHeaders(headers), data)))
        except Exception as e:  # noqa: BLE001 - the caller hears of it
            waiter.future.set_exception(e)
            return
        if waiter.single:
            waiter.future.set_result(waiter.items)

    async def direct_get(
        self,
        stream: str,
        request: dict[str, Any],
        *,
        batch: bool,
        convert: Callable[[DirectReply], T],
    ) -> list[T]:
        """JetStream direct get; with ``batch`` the request asks for several messages at once.

        Returns the messages found, each passed through ``convert`` (none on a 404).
        """
        token = str(next(self._reply_tokens))
        waiter = _MultiReply(single=not batch, convert=convert)
        self._replies[token] = waiter
        try:
            await self.publish(
                f"{self.api_prefix}.DIRECT.GET.{stream}", _encode(request), reply=f"{self._inbox_prefix}.{token}"
            )
            try:
                return await asyncio.wait_for(waiter.future, self.timeout)
            except TimeoutError as e:
                raise NatsUnavailableError(
                    f"direct get on stream {stream} was not answered in time "
                    "(is the stream there, with allow_direct?)"
                ) from e
        finally:
            del self._replies[token]

    def get(self, stream: str, request: dict[str, Any], *, batch: bool) -> list[StoredMessage]:
        return self.run(self.direct_get(stream, request, batch=batch, convert=stored_message))

    def start(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the private loop without waiting for it (e.g. to read ahead)."""
        if self._closed:
            coro.close()
            raise NatsUnavailableError("the NATS client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def result(self, future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
        """Wait for a future from ``start``; give up after ``timeout`` (default: twice the client's)."""
        try:
            return future.result(self.timeout * 2 + 1 if timeout is None else timeout)
        except concurrent.futures.TimeoutError as e:
            future.cancel()
            raise NatsUnavailableError(f"NATS at {redacted(self.url)} did not answer in time") from e

    # ---- appends (group commit) ----------------------------------------------------------------

    def append(self, messages: Sequence[OutgoingMessage], subjects: frozenset[str]) -> list[int]:
        """Append ``messages`` atomically; return their stream sequences.

        Raises ``AppendRejectedError`` when JetStream refuses them (nothing was stored),
        ``OutcomeUnknownError`` when the acknowledgement did not come in time (they may have been
        stored) and ``NatsUnavailableError`` when nothing could be sent.
        """
        if len(messages) > self.max_batch:
            raise ValueError(f"{len(messages)} messages exceed the atomic batch limit of {self.max_batch}")
        if self._closed:
            raise NatsUnavailableError("the NATS client is closed")
        append = _Append(list(messages), subjects)
        self._pending.append(append)
        if self._writer_idle and not self._wake_sent:
            # One wake-up for a crowd: the writer takes every save queued by the time it runs.
            self._wake_sent = True
            self._loop.call_soon_threadsafe(self._wake_writer)
        try:
            return append.future.result(self.timeout * 2 + 1)
        except concurrent.futures.TimeoutError as e:
            raise OutcomeUnknownError(f"no acknowledgement from NATS at {redacted(self.url)} in time") from e

    def _wake_writer(self) -> None:
        assert self._wake is not None
        self._wake_sent = False
        self._wake.set()

    async def _writer(self) -> None:
        """Send the queued saves as atomic batches, one batch at a time.

        Group commit: while a batch is in flight, new saves queue up and go together in the next.
        When a batch returns, the savers it releases usually come straight back with their next
        save; the writer waits for them (at most ``linger`` seconds, and only as long as saves
        keep arriving) so that batches stay large instead of halving. A lone saver never waits:
        its next save is all that was expected.
        """
        assert self._wake is not None
        expected = 0
        while True:
            self._writer_idle = True
            # Re-check after raising the flag: a save queued just before it was raised sent no wake.
            if not self._pending:
                await self._wake.wait()
            self._wake.clear()
            if expected > len(self._pending):
                await self._linger(expected)
            self._writer_idle = False
            group = self._gather()
            if not group:
                continue
            try:
                await self._commit(group)
            except Exception as e:  # noqa: BLE001 - every save must hear an outcome
                for append in group:
                    if not append.future.done():
                        append.future.set_exception(e)
            expected = min(len(group) + len(self._pending), self.max_batch)

    async def _linger(self, expected: int) -> None:
        """Wait until ``expected`` saves are queued, at most ``linger`` seconds."""
        assert self._wake is not None
        deadline = self._loop.time() + self.linger
        while len(self._pending) < expected:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return
            self._wake.clear()

    def _gather(self) -> list[_Append]:
        """Take the next saves that fit one atomic batch and touch disjoint subjects."""
        group: list[_Append] = []
        subjects: set[str] = set()
        size = 0
        pending = self._pending
        while pending:
            append = pending[0]
            if group and (size + len(append.messages) > self.max_batch or not subjects.isdisjoint(append.subjects)):
                break
            pending.popleft()
            if append.future.cancelled():
                continue
            group.append(append)
            subjects.update(append.subjects)
            size += len(append.messages)
        return group

    async def _commit(self, group: list[_Append]) -> None:
        if not group:
            return
        messages = [m for append in group for m in append.messages]
        try:
            ack = await self._publish_atomically(messages)
        except NatsUnavailableError as e:
            # Not sent at all: nothing stored. Sent but unanswered: it may have been committed.
            failure = e if isinstance(e, NotSentError) else OutcomeUnknownError(str(e))
            for append in group:
                append.future.set_exception(failure)
            return
        self.stats.batches += 1
        if ack.error is None:
            self.stats.messages += len(messages)
            self.stats.saves += len(group)
            first = ack.seq - len(messages) + 1
            for append in group:
                count = len(append.messages)
                append.future.set_result(list(range(first, first + count)))
                first += count
        elif len(group) == 1:
            group[0].future.set_exception(AppendRejectedError(ack.error.err_code, ack.error.description))
        else:
            # One save's check failed the whole batch: commit the halves so that it fails alone.
            self.stats.splits += 1
            middle = len(group) // 2
            await self._commit(group[:middle])
            await self._commit(group[middle:])

    async def _publish_atomically(self, messages: list[OutgoingMessage]) -> _PubAck:
        if len(messages) == 1:
            m = messages[0]
            reply = await self.request(m.subject, m.data, m.headers)
        else:
            batch_id = os.urandom(12).hex()
            last = len(messages) - 1
            for i, m in enumerate(messages[:last], start=1):
                headers = {**m.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                await self.publish(m.subject, m.data, headers)
            m = messages[last]
            headers = {
                **m.headers,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(last + 1),
                "Nats-Batch-Commit": "1",
            }
            reply = await self.request(m.subject, m.data, headers)
        ack = _decode_ack(reply.data)
        if ack.error is None and ack.count not in (0, len(messages)):
            raise NatsUnavailableError(f"JetStream acknowledged {ack.count} of {len(messages)} messages")
        return ack

