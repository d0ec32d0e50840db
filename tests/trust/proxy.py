"""A TCP proxy the fault tests control: a local port forwarded to a nats-server's client port.

Clients (``ledger serve --nats-url nats://127.0.0.1:<proxy port>``) connect to the proxy, which
opens one connection to the server per client connection and copies bytes both ways. The test
can then, from any thread:

- ``drop()``: abort every client connection at once (both sides, with a reset): whatever was in
  flight is lost — a batch being appended, the acknowledgements of a pull just applied. The
  clients see a disconnection, reconnect through the proxy (it keeps listening) and carry on.
- ``pause()`` / ``resume()``: stop copying bytes (connections stay open, the server and the
  clients hear nothing from each other), then copy again what waited meanwhile.

It runs its own asyncio loop in a daemon thread. For a single nats-server only: a cluster's INFO
advertises the other nodes' real ports, and a client could reconnect around the proxy.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
CHUNK = 64 * 1024


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.server):
            writer.transport.abort()  # a reset, nothing buffered is sent
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Forwards ``listen_port`` (0: any free one) on 127.0.0.1 to ``target_host:target_port``."""

    def __init__(self, target_port: int, target_host: str = HOST, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = listen_port
        self.accepted = 0
        """Client connections accepted so far."""
        self.dropped = 0
        """Client connections aborted by ``drop()`` so far."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._flowing: asyncio.Event | None = None

    @classmethod
    def to(cls, url: str) -> TcpProxy:
        """A started proxy to the server of ``url`` (``nats://host:port``)."""
        host_port = url.split("://", 1)[-1].rsplit("@", 1)[-1]
        host, port = host_port.rsplit(":", 1)
        return cls(int(port), host).start()

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as e:  # noqa: BLE001 - reported to start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"tcp-proxy-{self.target_port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listening socket and every connection; stop the loop."""
        if self._loop is None or not self._loop.is_running():
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            self._connections.clear()

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> TcpProxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- faults -----------------------------------------------------------------------------

    def drop(self) -> int:
        """Abort every open connection (client and server side) at once; how many there were.
        New connections are accepted as before."""

        async def abort() -> int:
            connections = list(self._connections)
            self._connections.clear()
            for connection in connections:
                connection.abort()
            self.dropped += len(connections)
            return len(connections)

        return self._call(abort())

    def pause(self) -> None:
        """Stop copying bytes, both ways, on every connection (new ones included)."""

        async def pause() -> None:
            assert self._flowing is not None
            self._flowing.clear()

        self._call(pause())

    def resume(self) -> None:
        async def resume() -> None:
            assert self._flowing is not None
            self._flowing.set()

        self._call(resume())

    @property
    def connections(self) -> int:
        """Client connections open now."""

        async def count() -> int:
            return len(self._connections)

        return self._call(count())

    # ---- internals --------------------------------------------------------------------------

    def _call(self, coroutine: Any) -> Any:
        assert self._loop is not None, "start the proxy first"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()  # the server is down: so is the proxy, to the client
            return
        self.accepted += 1
        connection = _Connection(client_writer, server_writer)
        self._connections.add(connection)
        connection.tasks = [
            asyncio.ensure_future(self._pump(client_reader, server_writer, connection)),
            asyncio.ensure_future(self._pump(server_reader, client_writer, connection)),
        ]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            # One side closed or failed: close both, as a direct connection would be.
            self._connections.discard(connection)
            for w in (connection.client, connection.server):
                if not w.transport.is_closing():
                    w.transport.abort()
