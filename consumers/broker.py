"""The FastStream broker of ``ledger serve``, on the process's TLS setting.

``nats_broker(url)`` is a ``NatsBroker`` for the comma-separated servers of ``url`` that takes the
process's TLS setting (``ledger.jetstream.tls``) like every other connection of the ledger: an
SSL context when TLS is required, and a connection that never sends its credentials in clear
(``GuardedClient``). FastStream connects with ``nats.connect``, which makes a plain nats-py
client; ``_connect`` is overridden to make the guarded one (``tests/unit/test_dependency_internals.py``
pins the FastStream source this copies).
"""

from __future__ import annotations

from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.security import NatsSecurity
from nats.aio.client import Client

from ledger.jetstream import tls as nats_tls


class GuardedNatsBroker(NatsBroker):
    """``NatsBroker`` whose connection is a ``GuardedClient``."""

    async def _connect(self) -> Client:
        connection = nats_tls.GuardedClient()
        await connection.connect(**self._connection_kwargs)
        self.config.connect(connection)
        return connection


def nats_broker(url: str, **options: Any) -> NatsBroker:
    """A broker for the servers of ``url`` under the process's TLS setting (``options``: the
    broker's others, e.g. reconnection)."""
    connect = nats_tls.connect_options(url)
    tls = connect.get("tls")
    if tls is not None:
        options["security"] = NatsSecurity(ssl_context=tls)
    return GuardedNatsBroker(connect["servers"], **options)
