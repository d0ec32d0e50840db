"""The private parts of nats-py the ledger relies on, pinned down.

Three places reach into nats-py's internals (and one into FastStream's), each where no public
API does the job:

- ``consumers.natsfix`` replaces ``Subscription.next_msg`` on Python 3.11 (its ``wait_for`` can
  drop a message taken from the queue just as it times out, CPython gh-86296);
- ``ledger.jetstream.client._LedgerConnection`` overrides ``Client._process_msg`` (direct-get
  replies go straight to one handler) and ``Client._process_headers`` (headers parsed lazily),
  both for speed;
- ``ledger.jetstream.tls.GuardedClient`` overrides ``Client._connect_command`` (no credentials
  in clear where TLS is required), and ``consumers.broker.GuardedNatsBroker`` overrides
  FastStream's ``NatsBroker._connect`` to connect with it.

pyproject.toml pins nats-py's minor version. These tests fail when an upgrade changes what the
overrides rely on (a signature, a source, a behaviour), and when the fix is no longer needed, so
that an upgrade is a decision: read the new code, adjust the override, then update the
fingerprint here.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import sys
from importlib import metadata
from typing import Any

import nats.protocol.parser
import pytest
from faststream.nats import NatsBroker
from nats import errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from consumers import natsfix
from ledger.jetstream.client import RawHeaders, _LedgerConnection
from ledger.jetstream.tls import GuardedClient


def _fingerprint(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


# sha256 of the source of each private method overridden or copied, in nats-py 2.16.0.
NEXT_MSG = "6abe56b0718cc68ea8b89fc2899b8ddfef500e018b3748553d81c794318a607e"
PROCESS_MSG = "6cff75947e97717a14ec0ed53f1679b8179e81d18a2fafff780baa08160ecc0a"
PROCESS_HEADERS = "fe656f61147df9894dbeafc1a26fc43552eddbef3ed3e24ff790519d577bf1cb"
PARSE_HEADER_LINES = "049cf69148e0bb4f6d897648c92c3a3816df04091fa345f01b93316bbc4d187f"
CONNECT_COMMAND = "1999c01f55c91ecc4862bb139994c343dc181da3a422dc7491f3783beb4b5703"
PROCESS_CONNECT_INIT = "e1ed2da075c82ab002bdfe914719ed97fc35ce37741d161e831de27217d24f09"
NATS_CONNECT = "082d1e186993c4535f26dfd4c387d36a31b0c7b465a0146debd2b4cb888af966"
# ... and of FastStream 0.7.8's NatsBroker._connect.
FASTSTREAM_CONNECT = "196692e980c85d14b46a1eae5ef07a068575bc6576174643db6d2a11d03fc03e"


def test_nats_py_is_the_minor_version_the_overrides_were_written_for() -> None:
    assert metadata.version("nats-py").startswith("2.16."), "re-check the overrides below, then move the pin"


# ---- consumers.natsfix: Subscription.next_msg --------------------------------------------------


def test_the_next_msg_fix_is_installed_exactly_where_wait_for_drops_results() -> None:
    # Python 3.12 reimplemented wait_for on asyncio.timeout (CPython gh-86296 fixed): no patch.
    needed = sys.version_info < (3, 12)
    assert natsfix.APPLIED is needed
    assert (Subscription.next_msg is natsfix._next_msg) is needed


def test_the_original_next_msg_still_waits_with_wait_for() -> None:
    """When nats-py stops using wait_for here, the fix is not needed any more: remove it."""
    source = inspect.getsource(natsfix._original_next_msg)
    assert "asyncio.wait_for(self._pending_queue.get(), timeout)" in source


def test_the_original_next_msg_is_the_one_the_fix_was_copied_from() -> None:
    """The fix is a copy of nats-py's method with the wait replaced: any other change to the
    original must be carried over (then update NEXT_MSG)."""
    def shape(function: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    assert shape(natsfix._original_next_msg) == shape(natsfix._next_msg)
    assert _fingerprint(natsfix._original_next_msg) == NEXT_MSG


class _Connection:
    is_closed = False


async def test_the_fixed_next_msg_returns_a_queued_message_and_times_out_as_nats_py_does() -> None:
    sub = Subscription(_Connection(), id=1, subject="x")
    msg = Msg(_client=None, subject="x", data=b"hello")  # type: ignore[arg-type]  # no client needed to queue it
    sub._pending_queue.put_nowait(msg)
    sub._pending_size += len(msg.data)
    assert await natsfix._next_msg(sub, timeout=0.5) is msg
    assert sub._pending_size == 0 and sub._pending_next_msgs_calls == {}
    with pytest.raises(errors.TimeoutError):
        await natsfix._next_msg(sub, timeout=0.01)
    assert sub._pending_next_msgs_calls == {}


# ---- ledger.jetstream.client: Client._process_msg and Client._process_headers -----------------


def test_the_parser_hands_messages_to_process_msg_as_the_override_takes_them() -> None:
    assert "await self.nc._process_msg(sid, subject, reply, payload, hdr)" in inspect.getsource(nats.protocol.parser)
    assert inspect.signature(_LedgerConnection._process_msg).parameters.keys() == inspect.signature(Client._process_msg).parameters.keys()
    assert inspect.iscoroutinefunction(Client._process_msg)


def test_process_msg_is_the_one_the_direct_path_was_written_against() -> None:
    """The direct-get path skips it but keeps its statistics; headers go through
    ``_process_headers`` (then update PROCESS_MSG)."""
    source = inspect.getsource(Client._process_msg)
    assert 'self.stats["in_msgs"] += 1' in source and 'self.stats["in_bytes"] += payload_size' in source
    assert "await self._process_headers(headers)" in source
    assert _fingerprint(Client._process_msg) == PROCESS_MSG


def test_process_headers_and_its_line_parser_are_the_ones_raw_headers_mirrors() -> None:
    assert inspect.signature(_LedgerConnection._process_headers).parameters.keys() == inspect.signature(Client._process_headers).parameters.keys()
    assert isinstance(inspect.getattr_static(Client, "_parse_header_lines"), staticmethod)
    assert _fingerprint(Client._process_headers) == PROCESS_HEADERS
    assert _fingerprint(Client._parse_header_lines) == PARSE_HEADER_LINES


@pytest.mark.parametrize(
    "block",
    [
        b"NATS/1.0\r\nNats-Subject: ledger.evt.x\r\nNats-Sequence: 42\r\nLedger-Topic: a:b\r\n\r\n",
        b"NATS/1.0\r\nA: one\r\nB:two\r\nA: again\r\nC:  spaced  \r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
        b"NATS/1.0 100\r\nIdle Heartbeat\r\nNats-Last-Consumer: 1016\r\nNats-Last-Stream: 1024\r\n\r\n",
        b"NATS/1.0\r\n\r\n",
        b"",
    ],
)
async def test_headers_read_as_nats_py_reads_them(block: bytes) -> None:
    ours = await _LedgerConnection()._process_headers(block)
    theirs = await Client()._process_headers(block)
    if isinstance(ours, RawHeaders):
        assert dict(ours.items()) == theirs
        for key in theirs or {}:
            assert ours[key] == theirs[key] and ours.get(key) == theirs[key] and key in ours
    else:
        assert ours == theirs


async def test_direct_replies_bypass_the_subscription_and_are_counted() -> None:
    nc = _LedgerConnection()
    got: list[tuple[bytes, bytes, bytes | None]] = []
    sub = Subscription(nc, id=7, subject="_INBOX.x")
    assert sub._id == 7  # what direct_replies reads
    nc.direct_replies(sub, lambda subject, data, headers: got.append((subject, data, headers)))
    await nc._process_msg(7, b"_INBOX.x.1", b"", b"body", b"NATS/1.0\r\nA: b\r\n\r\n")
    assert got == [(b"_INBOX.x.1", b"body", b"NATS/1.0\r\nA: b\r\n\r\n")]
    assert (nc.stats["in_msgs"], nc.stats["in_bytes"]) == (1, 4)
    # Any other subscription is nats-py's (an unknown one is dropped by it, counted).
    await nc._process_msg(8, b"other", b"", b"xy", b"")
    assert len(got) == 1 and nc.stats["in_msgs"] == 2


# ---- ledger.jetstream.tls.GuardedClient and consumers.broker.GuardedNatsBroker -----------------


def test_connect_is_written_only_by_connect_command_after_the_tls_upgrade() -> None:
    """The guard checks the transport in ``_connect_command``: nats-py must upgrade to TLS (when
    the server asks) before it builds CONNECT, and build it nowhere else (then update the
    fingerprints)."""
    source = inspect.getsource(Client._process_connect_init)
    assert source.index("connect_tls(") < source.index("connect_cmd = self._connect_command()")
    assert _fingerprint(Client._process_connect_init) == PROCESS_CONNECT_INIT
    assert _fingerprint(Client._connect_command) == CONNECT_COMMAND
    assert "def _connect_command" in inspect.getsource(GuardedClient)


def test_the_guarded_broker_connects_as_faststream_does_but_with_the_guarded_client() -> None:
    """FastStream connects with ``nats.connect(**self._connection_kwargs)``, which is
    ``NATS(); await nc.connect(servers, **options)``: the override does the same with a
    ``GuardedClient`` (then update the fingerprints)."""
    assert "await nats.connect(**self._connection_kwargs)" in inspect.getsource(NatsBroker._connect)
    assert _fingerprint(NatsBroker._connect) == FASTSTREAM_CONNECT
    assert _fingerprint(nats.connect) == NATS_CONNECT
    assert metadata.version("faststream").startswith("0.7.")


def test_the_transport_tells_whether_it_is_tls() -> None:
    """``_is_tls`` reads the TCP transport's stream writer (``_io_writer``)."""
    from nats.aio.transport import TcpTransport

    assert "_io_writer" in inspect.getsource(TcpTransport.connect_tls)
    assert "_io_writer" in inspect.getsource(TcpTransport.connect)


def test_no_event_loop_is_left_running() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
