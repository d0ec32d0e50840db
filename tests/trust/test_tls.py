"""TLS on every listener of the deploy configs, with the certificates of ``deploy/tls/make-dev-ca``.

The deploy configs run as an operator runs them (copies in a temporary directory, free ports,
passwords and the ``NATS_TLS_*`` files in the servers' environment): ``single.conf`` through
``tests.trust.test_permissions.start_deploy_server``, the three ``cluster/node-*.conf`` rendered
here with their ports replaced (and, test only, an ``https:`` monitoring port to read the routes).
One development CA serves the whole module. Nothing here trusts the dev CA process-wide: the
ledger gets it as ``--nats-ca-file`` (or ``LEDGER_NATS_CA_FILE``), the test's own clients as an SSL
context, so a missing setting shows.

- The client listener refuses a client that does not start TLS, and a client that does not
  trust the server's CA cannot connect.
- ``ledger serve`` connects over TLS with the CA; upstream senders (accounts.conf users) publish
  over TLS; ``coverage.query`` answers over TLS; one-off commands take the same options.
- The ledger never sends its password to a server that does not start TLS (a fake server that
  records what it receives; plain nats-py, given the same TLS context, does send it).
- Mutual TLS (``NATS_TLS_VERIFY=true``): the ledger's client certificate is accepted, no
  certificate is refused.
- The 3-node cluster forms over route TLS, and ``ledger serve --replicas 3`` writes R3 streams
  through it; a route connection without a certificate of the CA is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from ledger.jetstream import tls as nats_tls
from ledger.jetstream.server import find_server_binary, free_port
from tests.integration.ingest_support import ROOT, SECRET, wait_for
from tests.trust.cluster import LedgerServe, serve_env
from tests.trust.test_permissions import (
    DEPLOY,
    PERSON,
    T0,
    DeployServer,
    _valid_id,
    password_variable,
    start_deploy_server,
    stop_deploy_server,
)
from tests.trust.tls_support import DevCerts, dev_certs

HOST = "127.0.0.1"
ID_NUMBER = _valid_id(PERSON)


# ---- the CA, the single server, the ledger on it -------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """The development CAs and certificates of the module (servers ledger-1..3; clients ``ledger``
    and ``wechat_pay``: what an upstream system holds for mutual TLS)."""
    return dev_certs(tmp_path_factory.mktemp("dev-ca"), clients=("ledger", "wechat_pay"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """Another CA's certificates with the same names: what an intruder could make."""
    return dev_certs(tmp_path_factory.mktemp("rogue-ca"), servers=("ledger-1",), clients=("ledger",))


@pytest.fixture(autouse=True, scope="module")
def _no_process_trust() -> Iterator[None]:
    """The dev CA reaches every client explicitly here, never as a system CA."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SSL_CERT_FILE", raising=False)
        mp.delenv("LEDGER_NATS_CA_FILE", raising=False)
        yield


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, certs: DevCerts) -> Iterator[DeployServer]:
    server = start_deploy_server(tmp_path_factory.mktemp("single"), admin=False, certs=certs, trust=False)
    try:
        yield server
    finally:
        stop_deploy_server(server)


@pytest.fixture(scope="module")
def serve(single: DeployServer, certs: DevCerts) -> Iterator[LedgerServe]:
    """``ledger serve`` as the ``ledger`` user over TLS, the dev CA given as ``--nats-ca-file``."""
    directory = single.directory
    started = LedgerServe(
        single.url("ledger"), directory / "data", directory / "serve.log", *certs.cli_options(), batch_size=100
    ).start()
    try:
        wait_for(lambda: (directory / "data" / "serve.url").exists() or not started.alive, 60, "ledger serve over TLS")
        assert started.alive, started.log_tail()
        yield started
    finally:
        started.stop()


# ---- clients -------------------------------------------------------------------------------------


async def _quiet(_error: Exception) -> None:
    """nats-py would log each refused attempt."""


async def connect(url: str, tls: ssl.SSLContext | None, **options: Any) -> Any:
    return await nats.connect(
        url, tls=tls, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, error_cb=_quiet, **options
    )


MESSAGES = [
    ("public_security", "upstream.person.registered",
     {"msg_id": "tls-ps-1", "occurred_at": T0, "id_number": ID_NUMBER, "name": "测试居民", "district": "340104"}),
    ("wechat_pay", "upstream.enrollment.requested",
     {"msg_id": "tls-wx-e-1", "occurred_at": T0, "id_number": ID_NUMBER, "coverage_year": 2022,
      "category": "resident", "channel": "wechat", "district": "340104"}),
    ("wechat_pay", "upstream.payment.received",
     {"msg_id": "tls-wx-p-1", "occurred_at": T0, "id_number": ID_NUMBER, "coverage_year": 2022,
      "amount_fen": 32000, "channel": "wechat", "paid_at": T0}),
]  # fmt: skip


async def publish_facts(url_of: Any, tls: ssl.SSLContext) -> None:
    """Each sender publishes its fact with its own user over TLS, and gets the PubAck."""
    for user, subject, body in MESSAGES:
        nc = await connect(url_of(user), tls)
        try:
            ack = await nc.jetstream().publish(subject, json.dumps(body, ensure_ascii=False).encode(),
                                               headers={"Nats-Msg-Id": body["msg_id"]})  # fmt: skip
            assert ack.seq >= 1 and not ack.duplicate, (user, subject, ack)
        finally:
            await nc.close()


async def covered(url: str, tls: ssl.SSLContext, timeout: float = 60.0) -> dict[str, Any]:
    """Ask coverage.query (as the hospital, over TLS) until the person is enrolled; the reply."""
    nc = await connect(url, tls)
    try:
        deadline = time.monotonic() + timeout
        request = json.dumps({"id_number": ID_NUMBER, "date": "2022-03-01"}).encode()
        while True:
            try:
                reply = json.loads((await nc.request("coverage.query", request, timeout=5)).data)
            except nats.errors.NoRespondersError:
                reply = {}
            if reply.get("status") == "enrolled" or time.monotonic() > deadline:
                return dict(reply)
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def server_log(server: DeployServer) -> str:
    return (server.directory / "nats-server.log").read_text(errors="replace")


# ---- (a) the client listener -----------------------------------------------------------------------


def test_the_client_listener_refuses_a_client_that_does_not_start_tls(single: DeployServer) -> None:
    """Given single.conf, when a client sends CONNECT with a valid password in clear, then the
    server (whose INFO says TLS is required) answers nothing and closes the connection: no PONG,
    no session. (A recv that timed out instead of ending would fail the test.)"""
    with socket.create_connection((HOST, single.port), timeout=5) as sock:
        info = json.loads(sock.makefile("rb").readline()[len(b"INFO ") :])
        sock.sendall(b'CONNECT {"user":"auditor","pass":"' + single.passwords["auditor"].encode() + b'"}\r\nPING\r\n')
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert info["tls_required"] is True, info
    assert answer == b"", answer


def test_a_client_that_does_not_trust_the_ca_cannot_connect(single: DeployServer, certs: DevCerts) -> None:
    """Given the server's certificate from the dev CA, when a client checks it against the
    system's CAs (a tls:// URL without a CA file), then the connection fails on verification;
    with the CA file it succeeds."""

    async def attempt(setting: nats_tls.NatsTls) -> str:
        try:
            nc = await nats_tls.connect(single.url("auditor"), setting, allow_reconnect=False, connect_timeout=5, error_cb=_quiet)
        except Exception as e:  # noqa: BLE001 - the refusal is the point
            return repr(e)
        await nc.close()
        return "connected"

    without = asyncio.run(attempt(nats_tls.NatsTls()))
    with_ca = asyncio.run(attempt(certs.client()))
    assert "CERTIFICATE_VERIFY_FAILED" in without, without
    assert with_ca == "connected"


def test_serve_over_tls_records_upstream_facts_and_answers_coverage_query(
    single: DeployServer, serve: LedgerServe, certs: DevCerts
) -> None:
    """Given ``ledger serve`` on single.conf over TLS with the dev CA, when the accounts' senders
    publish a registration, an enrollment and a payment over TLS, then the hospital's
    coverage.query (over TLS) answers enrolled and covered."""
    tls = certs.context()
    asyncio.run(publish_facts(single.url, tls))
    reply = asyncio.run(covered(single.url("hospital"), tls))
    assert reply.get("status") == "enrolled" and reply.get("covered") is True, (reply, serve.log_tail())
    assert serve.alive
    assert single.passwords["ledger"] not in (single.directory / "serve.log").read_text()


def test_one_off_commands_take_the_ca_file(single: DeployServer, serve: LedgerServe, certs: DevCerts, tmp_path: Path) -> None:
    """Given the running ledger, when ``ledger status`` is given the URL and ``--nats-ca-file``,
    then it reads the streams and the writer over TLS; without the CA file it cannot connect."""
    command = [sys.executable, "-m", "service.cli", "status", "--nats-url", single.url("ledger"),
               "--data-dir", str(tmp_path), "--format", "json"]  # fmt: skip
    env = serve_env()
    done = subprocess.run([*command, *certs.cli_options()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    status = json.loads(done.stdout)
    assert status["writer"] is not None and "LEDGER" in status["streams"], (done.stdout[-2000:], done.stderr[-2000:])
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr[-2000:]
    assert single.passwords["ledger"] not in refused.stderr


# ---- the guard: no password to a server that does not start TLS -----------------------------------


@dataclass
class FakeServer:
    """A TCP server that greets like a nats-server without TLS and records what clients send."""

    received: list[bytes] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    port: int = 0

    def settled(self) -> list[bytes]:
        """What every connection accepted so far sent, once each has ended."""
        wait_for(lambda: len(self.received) == len(self.accepted), 10, "the fake server's connections to end")
        return list(self.received)

    def __enter__(self) -> FakeServer:
        received, accepted = self.received, self.accepted

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                accepted.append(1)
                info = {"server_id": "FAKE", "version": "2.15.1", "proto": 1, "headers": True,
                        "max_payload": 1048576, "auth_required": True}  # fmt: skip
                self.request.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
                self.request.settimeout(2)
                data = b""
                try:
                    while chunk := self.request.recv(4096):
                        data += chunk
                        if b"PING" in data:
                            break
                except OSError:
                    pass
                received.append(data)

        self._server = socketserver.ThreadingTCPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


PASSWORD = "never-in-clear-7f3a"


def test_the_ledger_never_sends_its_password_to_a_server_that_does_not_start_tls(certs: DevCerts) -> None:
    """Given a server (or something in the middle) that does not ask for TLS, when the ledger
    connects with TLS required (a CA file, a tls:// URL), then each of its connections — the
    one-off ``connect``, the event store's ``NatsClient``, the FastStream broker — fails and the
    password never leaves the process. Plain nats-py, given the very same TLS context, sends it
    in clear: the guard is what stops it."""
    from consumers.broker import nats_broker
    from ledger.jetstream.client import NatsClient, NatsUnavailableError

    with FakeServer() as fake:
        url = f"tls://ledger:{PASSWORD}@{HOST}:{fake.port}"
        failures: dict[str, str] = {}

        async def one_off() -> None:
            await nats_tls.connect(url, certs.client(), allow_reconnect=False, connect_timeout=2, error_cb=_quiet)

        async def broker() -> None:
            await nats_broker(url, allow_reconnect=False, connect_timeout=2, error_cb=_quiet).connect()

        previous = nats_tls.use(certs.client())
        try:
            for name, attempt in (("connect", one_off), ("broker", broker)):
                with pytest.raises(nats_tls.TlsNotStartedError) as refused:
                    asyncio.run(attempt())
                failures[name] = str(refused.value)
            with pytest.raises(NatsUnavailableError) as refused_store:
                NatsClient(url, connect_timeout=0.5)
            failures["store"] = str(refused_store.value)
        finally:
            nats_tls.use(previous)
        guarded = fake.settled()

        async def plain_nats_py() -> None:
            try:
                nc = await nats.connect(url, tls=certs.context(), allow_reconnect=False, connect_timeout=2, error_cb=_quiet)
                await nc.close()
            except Exception:  # noqa: BLE001 - the fake never answers PONG
                pass

        asyncio.run(plain_nats_py())
        unguarded = fake.settled()[len(guarded) :]

    assert all("did not start TLS" in message for message in failures.values()), failures
    assert all(PASSWORD not in message for message in failures.values()), failures
    assert len(guarded) >= 3 and not [data for data in guarded if data], guarded
    assert any(PASSWORD.encode() in data for data in unguarded), unguarded


# ---- mutual TLS --------------------------------------------------------------------------------


def test_with_verify_the_ledger_presents_its_client_certificate_and_none_is_refused(
    certs: DevCerts, rogue: DevCerts, tmp_path: Path
) -> None:
    """Given single.conf with NATS_TLS_VERIFY=true, when the ledger connects with
    ``--nats-cert-file``/``--nats-key-file`` (a client certificate of the dev CA), then it is
    served; without a certificate, or with one of another CA, the handshake is refused."""
    server = start_deploy_server(tmp_path / "mtls", admin=False, certs=certs, trust=False, verify_clients=True)
    try:
        env = serve_env()
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "status", "--nats-url", server.url("ledger"), "--data-dir", str(tmp_path),
             "--format", "json", *certs.cli_options(client="ledger")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "streams" in json.loads(done.stdout or "{}"), done.stderr[-2000:]

        async def attempt(setting: nats_tls.NatsTls) -> str:
            try:
                nc = await nats_tls.connect(server.url("auditor"), setting, allow_reconnect=False, connect_timeout=5, error_cb=_quiet)
            except Exception as e:  # noqa: BLE001 - the refusal is the point
                return repr(e)
            await nc.close()
            return "connected"

        no_certificate = asyncio.run(attempt(certs.client()))
        foreign = asyncio.run(attempt(nats_tls.NatsTls(ca_file=certs.ca_file, cert_file=rogue.directory / "client-ledger.crt",
                                                       key_file=rogue.directory / "client-ledger.key")))  # fmt: skip
        own = asyncio.run(attempt(certs.client("ledger")))
    finally:
        stop_deploy_server(server)
    assert own == "connected"
    assert no_certificate != "connected" and foreign != "connected", (no_certificate, foreign)
    log = server_log(server)
    assert "TLS handshake error" in log and re.search(r"certificate|tls: ", log), log[-2000:]


# ---- (b) the cluster -----------------------------------------------------------------------------


@dataclass
class DeployCluster:
    """deploy/nats/cluster/node-*.conf, rendered with free ports, running."""

    directory: Path
    certs: DevCerts
    passwords: dict[str, str]
    client_ports: list[int]
    route_ports: list[int]
    monitor_ports: list[int]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, user: str, node: int | None = None) -> str:
        nodes = range(3) if node is None else [node]
        return ",".join(f"tls://{user}:{self.passwords[user]}@{HOST}:{self.client_ports[i]}" for i in nodes)

    def monitor(self, i: int, path: str) -> dict[str, Any]:
        """The node's monitoring endpoint, over https (the node's certificate, the dev CA)."""
        with urllib.request.urlopen(f"https://{HOST}:{self.monitor_ports[i]}{path}", timeout=5,
                                    context=self.certs.context()) as reply:  # fmt: skip
            return dict(json.loads(reply.read()))

    def log(self, i: int) -> str:
        return (self.directory / f"node-{i + 1}.log").read_text(errors="replace")


def render_cluster(directory: Path, certs: DevCerts) -> DeployCluster:
    """Copies of the deploy configs with every port of 4231-4233 (clients) and 6231-6233 (routes)
    replaced by a free one, and an ``https:`` monitoring port added (test only)."""
    shutil.copytree(DEPLOY, directory / "nats")
    taken: set[int] = set()

    def port() -> int:
        while (p := free_port(HOST)) in taken:
            pass
        taken.add(p)
        return p

    clients, routes, monitors = [port() for _ in range(3)], [port() for _ in range(3)], [port() for _ in range(3)]
    for i in range(3):
        path = directory / "nats" / "cluster" / f"node-{i + 1}.conf"
        text = path.read_text()
        for j in range(3):
            text = text.replace(f"127.0.0.1:423{j + 1}", f"127.0.0.1:{clients[j]}")
            text = text.replace(f"127.0.0.1:623{j + 1}", f"127.0.0.1:{routes[j]}")
        assert f"listen: 127.0.0.1:{clients[i]}" in text and f"listen: 127.0.0.1:{routes[i]}" in text, text
        path.write_text(f'https: "{HOST}:{monitors[i]}"  # test only: the routes are read here\n' + text)
    accounts = (directory / "nats" / "accounts.conf").read_text()
    variables = sorted(set(re.findall(r"\$([A-Z][A-Z0-9_]*_NATS_PASSWORD)\b", accounts)))
    passwords = {v.removesuffix("_NATS_PASSWORD").lower(): "p" + os.urandom(16).hex() for v in variables}
    return DeployCluster(directory, certs, passwords, clients, routes, monitors)


def start_cluster(cluster: DeployCluster) -> None:
    binary = str(find_server_binary())
    base = {**os.environ, **{password_variable(user): p for user, p in cluster.passwords.items()}}
    for i in range(3):
        env = {**base, **cluster.certs.server_env(f"ledger-{i + 1}")}
        config = f"nats/cluster/node-{i + 1}.conf"
        check = subprocess.run([binary, "-t", "-c", config], cwd=cluster.directory, env=env, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        cluster.processes.append(subprocess.Popen(
            [binary, "-c", config, "-l", str(cluster.directory / f"node-{i + 1}.log")],
            cwd=cluster.directory, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip


def stop_cluster(cluster: DeployCluster) -> None:
    for process in cluster.processes:
        process.terminate()
    for process in cluster.processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def routes_up(cluster: DeployCluster) -> bool:
    """Every node has a route to both others, and JetStream's meta group has a leader."""
    try:
        for i in range(3):
            peers = {r.get("remote_name") for r in cluster.monitor(i, "/routez").get("routes") or ()}
            if peers != {f"ledger-{j + 1}" for j in range(3) if j != i}:
                return False
            if not (cluster.monitor(i, "/jsz").get("meta_cluster") or {}).get("leader"):
                return False
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, certs: DevCerts) -> Iterator[DeployCluster]:
    rendered = render_cluster(tmp_path_factory.mktemp("cluster"), certs)
    try:
        start_cluster(rendered)
        wait_for(lambda: routes_up(rendered) or any(p.poll() is not None for p in rendered.processes), 60,
                 "the three nodes to route to each other over TLS")  # fmt: skip
        assert all(p.poll() is None for p in rendered.processes), [rendered.log(i)[-2000:] for i in range(3)]
        yield rendered
    finally:
        stop_cluster(rendered)


def test_the_cluster_forms_over_route_tls(cluster: DeployCluster) -> None:
    """Given the three node configs with their certificates, then each node's route listener
    requires mutual TLS, each node routes to the two others (so over TLS), and JetStream's meta
    group has a leader all agree on."""
    leaders = set()
    for i in range(3):
        varz = cluster.monitor(i, "/varz")
        assert varz["tls_required"] and varz["cluster"]["tls_required"] and varz["cluster"]["tls_verify"], varz["cluster"]
        routes = cluster.monitor(i, "/routez")["routes"]
        assert {r["remote_name"] for r in routes} == {f"ledger-{j + 1}" for j in range(3) if j != i}, routes
        leaders.add(cluster.monitor(i, "/jsz")["meta_cluster"]["leader"])
    assert len(leaders) == 1 and leaders <= {"ledger-1", "ledger-2", "ledger-3"}, leaders


def test_serve_writes_r3_streams_through_the_cluster_over_tls(cluster: DeployCluster, certs: DevCerts) -> None:
    """Given the cluster, when ``ledger serve --replicas 3`` connects to its three nodes over TLS
    (``tls://`` URLs, the dev CA) and the senders publish over TLS, then the person is enrolled
    (coverage.query over TLS), and LEDGER is an R3 stream whose two followers are current."""
    directory = cluster.directory
    serve = LedgerServe(
        cluster.url("ledger"), directory / "data", directory / "serve.log", "--replicas", "3", *certs.cli_options(),
        batch_size=100,
    ).start()  # fmt: skip
    try:
        tls = certs.context()
        wait_for(lambda: (directory / "data" / "serve.url").exists() or not serve.alive, 60, "ledger serve on the cluster")
        assert serve.alive, serve.log_tail()
        asyncio.run(publish_facts(lambda user: cluster.url(user, node=1), tls))
        reply = asyncio.run(covered(cluster.url("hospital", node=2), tls))
        assert reply.get("status") == "enrolled", (reply, serve.log_tail())

        def ledger_info() -> dict[str, Any]:
            async def ask() -> dict[str, Any]:
                nc = await connect(cluster.url("ledger", node=0), tls)
                try:
                    return dict(json.loads((await nc.request("$JS.API.STREAM.INFO.LEDGER", b"", timeout=5)).data))
                finally:
                    await nc.close()

            return asyncio.run(ask())

        wait_for(lambda: all(r.get("current") for r in (ledger_info().get("cluster") or {}).get("replicas") or [{}]), 30,
                 "LEDGER's followers to be current")  # fmt: skip
        info = ledger_info()
    finally:
        stopped = serve.stop()
    assert info["config"]["num_replicas"] == 3 and info["state"]["messages"] > 0, info
    replicas = info["cluster"]["replicas"]
    assert len(replicas) == 2 and all(r["current"] for r in replicas), info["cluster"]
    assert stopped == 0, serve.log_tail()
    assert "eof_received" not in (directory / "serve.log").read_text(), "asyncio's TLS close warning is quieted"


def _route_handshake(port: int, context: ssl.SSLContext) -> str:
    """Open a route connection to ``port`` as a node would (TLS first, then the server's INFO)
    and read: what happened."""
    with socket.create_connection((HOST, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=HOST) as tls:
                data = tls.recv(4096)
        except (ssl.SSLError, OSError) as e:
            return f"refused: {e!r}"
    if data.startswith(b"INFO "):
        return "INFO"  # the route's greeting: the handshake passed
    return f"answered: {data[:40]!r}" if data else "closed"


def test_a_route_without_a_certificate_of_the_ca_is_refused(cluster: DeployCluster, certs: DevCerts, rogue: DevCerts) -> None:
    """Given the cluster's route port (mutual TLS), when something connects as a route without
    a certificate, with one from another CA for the same node name, or with a client
    certificate of the dev CAs, then the server refuses the handshake and keeps its two routes;
    a node's certificate of the dev CA is let through."""
    anonymous = certs.context()
    foreign = certs.context()
    foreign.load_cert_chain(str(rogue.directory / "ledger-1.crt"), str(rogue.directory / "ledger-1.key"))
    client = certs.context("wechat_pay")
    member = certs.context()
    member.load_cert_chain(str(certs.directory / "ledger-2.crt"), str(certs.directory / "ledger-2.key"))
    outcomes = {name: _route_handshake(cluster.route_ports[0], context)
                for name, context in (("anonymous", anonymous), ("foreign", foreign), ("client", client), ("member", member))}  # fmt: skip
    assert "CERTIFICATE_REQUIRED" in outcomes["anonymous"], outcomes
    assert "UNKNOWN_CA" in outcomes["foreign"] and "UNKNOWN_CA" in outcomes["client"], outcomes
    assert outcomes["member"] == "INFO", outcomes
    wait_for(lambda: "TLS route handshake error: tls: client didn't provide a certificate" in cluster.log(0)
             and "certificate signed by unknown authority" in cluster.log(0), 10, "node 1 to log both refusals")  # fmt: skip
    peers = {r["remote_name"] for r in cluster.monitor(0, "/routez")["routes"]}
    assert peers == {"ledger-2", "ledger-3"}, peers


def test_a_nats_server_with_a_client_certificate_cannot_join_the_cluster(
    cluster: DeployCluster, certs: DevCerts, tmp_path: Path
) -> None:
    """Given the cluster, when an intruder runs a nats-server of its own whose routes present a
    client certificate of the dev CAs (``client-wechat_pay``: what an upstream system holds for
    mutual TLS) and dial node 1's route port, trusting the nodes' CA (public), then no route
    forms: node 1 refuses the handshake, keeps its routes to ledger-2 and ledger-3 only, and the
    intruder has none (a route would carry every account's traffic past every permission)."""
    refusals = cluster.log(0).count("TLS route handshake error")
    rogue = _start_rogue_node(tmp_path, certs, "wechat_pay", cluster.route_ports[0])
    try:

        def settled() -> bool:
            return cluster.log(0).count("TLS route handshake error") > refusals or bool(rogue.routes())

        wait_for(settled, 30, "node 1 to refuse the intruder's route, or the route to form")
        intruder_routes = rogue.routes()
    finally:
        rogue.stop()
    assert intruder_routes == [], f"a route formed with a client certificate: {intruder_routes}"
    peers = {r["remote_name"] for r in cluster.monitor(0, "/routez")["routes"]}
    assert peers == {"ledger-2", "ledger-3"}, peers
    assert "rogue" not in {r.get("remote_name") for i in range(3) for r in cluster.monitor(i, "/routez")["routes"]}


@dataclass
class RogueNode:
    directory: Path
    monitor_port: int
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.directory / "rogue.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def routes(self) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.monitor_port}/routez", timeout=5) as reply:
                return list(json.loads(reply.read()).get("routes") or [])
        except OSError:
            return []

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _start_rogue_node(directory: Path, certs: DevCerts, client: str, route_port: int) -> RogueNode:
    """A nats-server named ``rogue`` in cluster ``ledger`` whose routes present the client
    certificate ``client`` and trust the nodes' CA, soliciting a route to ``route_port``."""
    monitor = free_port(HOST)
    config = directory / "rogue.conf"
    config.write_text(
        f"""server_name: rogue
listen: {HOST}:{free_port(HOST)}
http: {HOST}:{monitor}
cluster {{
  name: ledger
  listen: {HOST}:{free_port(HOST)}
  tls {{
    cert_file: "{certs.directory / f"client-{client}.crt"}"
    key_file: "{certs.directory / f"client-{client}.key"}"
    ca_file: "{certs.ca_file}"
    verify: true
    timeout: 2
  }}
  routes: [ nats-route://{HOST}:{route_port} ]
}}
"""
    )
    process = subprocess.Popen(
        [str(find_server_binary()), "-c", str(config), "-l", str(directory / "rogue.log")],
        cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return RogueNode(directory, monitor, process)


# ---- the configs and the script ------------------------------------------------------------------


def test_every_listener_of_the_deploy_configs_requires_tls() -> None:
    """Given deploy/nats, then every config has TLS on its client listener with the certificate,
    key and the clients' CA from the environment, mutual TLS on its cluster routes trusting the
    nodes' CA (another variable: a client certificate is no route's), and no listener without
    TLS: no http monitoring, no leafnode, websocket, MQTT or gateway block."""
    configs = [DEPLOY / "single.conf", *sorted((DEPLOY / "cluster").glob("node-*.conf"))]
    assert len(configs) == 4

    def tls_block(ca: str) -> re.Pattern[str]:
        return re.compile(
            r"tls\s*\{[^}]*cert_file:\s*\$NATS_TLS_CERT_FILE[^}]*key_file:\s*\$NATS_TLS_KEY_FILE[^}]*ca_file:\s*\$"
            + ca + r"\s[^}]*\}"
        )

    for config in configs:
        text = re.sub(r"#.*", "", config.read_text())  # comments say how to add a listener
        top_level = re.sub(r"\w+\s*\{(?:[^{}]|\{[^{}]*\})*\}", "", text)  # blocks removed
        client_tls = re.search(r"(?m)^tls\s*\{[^}]*\}", text)
        assert client_tls and tls_block("NATS_TLS_CLIENT_CA_FILE").fullmatch(client_tls.group(0)), f"{config}: no client TLS"
        assert not re.search(r"^\s*(http|http_port|monitor_port)\s*[:=]", top_level, re.M), f"{config}: plain http monitoring"
        assert not re.search(r"^\s*(leafnodes?|websocket|mqtt|gateway)\s*[{:=]", text, re.M), config
        assert "allow_non_tls" not in text, config
        cluster = re.search(r"cluster\s*\{(?:[^{}]|\{[^{}]*\})*\}", text)
        if config.name.startswith("node-"):
            assert cluster, config
            route_tls = tls_block("NATS_TLS_CA_FILE").search(cluster.group(0))
            assert route_tls and re.search(r"verify:\s*true", route_tls.group(0)), f"{config}: routes without mutual TLS"
        else:
            assert cluster is None, config


def test_make_dev_ca_is_idempotent_and_keeps_keys_private(tmp_path: Path) -> None:
    """Given an empty directory, the script makes two CAs, a certificate per server (SANs
    localhost, 127.0.0.1, ::1, its name, --san) signed by the nodes' CA only, one per client
    signed by the clients' CA only, keys mode 0600; run again, it keeps every file as it is;
    asked for another SAN, it remakes the server certificates only."""
    first = dev_certs(tmp_path, clients=("ledger",))
    made = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert set(made) == {"ca.crt", "ca.key", "client-ca.crt", "client-ca.key", "client-ledger.crt", "client-ledger.key",
                         *(f"ledger-{i}.{ext}" for i in (1, 2, 3) for ext in ("crt", "key"))}, set(made)  # fmt: skip
    assert first.output.count("made") == 6, first.output
    for name in made:
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith(".key") else 0o644), (name, oct(mode))
    sans = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "ledger-2.crt"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    for san in ("DNS:localhost", "DNS:ledger-2", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"):
        assert san in sans, sans
    def verifies(ca: str, certificate: str) -> bool:
        return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / ca), str(tmp_path / certificate)],
                              capture_output=True).returncode == 0  # fmt: skip

    assert verifies("ca.crt", "ledger-2.crt") and not verifies("client-ca.crt", "ledger-2.crt")
    assert verifies("client-ca.crt", "client-ledger.crt") and not verifies("ca.crt", "client-ledger.crt")

    again = dev_certs(tmp_path, clients=("ledger",))
    assert again.output.count("kept") == 6 and "made" not in again.output.split("development certificates")[0], again.output
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == made

    done = subprocess.run([str(ROOT / "deploy" / "tls" / "make-dev-ca"), "--dir", str(tmp_path), "--client", "ledger",
                           "--san", "nats"], capture_output=True, text=True, check=True)  # fmt: skip
    remade = {line.split()[1].rsplit("/", 1)[1] for line in done.stdout.splitlines() if line.startswith("made")}
    assert remade == {"ledger-1.crt", "ledger-2.crt", "ledger-3.crt"}, done.stdout
    assert (tmp_path / "ca.crt").read_bytes() == made["ca.crt"]
    assert (tmp_path / "client-ledger.crt").read_bytes() == made["client-ledger.crt"]


def test_make_dev_ca_starts_the_nodes_ca_over_when_a_client_certificate_of_it_is_found(tmp_path: Path) -> None:
    """Given a directory of an older make-dev-ca, where one CA signed the servers' and the
    clients' certificates (made here with openssl as it did: a client certificate signed by
    ca.crt), when the script runs, then it makes a new ca.crt and new server certificates, the
    old client certificate verifies against neither CA, and the new one against the clients' CA."""
    dev_certs(tmp_path, clients=("ledger",))
    old = tmp_path / "old-client.crt"
    subprocess.run(["openssl", "req", "-new", "-key", str(tmp_path / "client-ledger.key"), "-subj", "/CN=ledger",
                    "-out", str(tmp_path / "old.csr")], check=True, capture_output=True)  # fmt: skip
    (tmp_path / "ext.cnf").write_text("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(tmp_path / "old.csr"), "-CA", str(tmp_path / "ca.crt"),
                    "-CAkey", str(tmp_path / "ca.key"), "-CAcreateserial", "-CAserial", str(tmp_path / "old.srl"),
                    "-days", "30", "-extfile", str(tmp_path / "ext.cnf"), "-out", str(old)],
                   check=True, capture_output=True)  # fmt: skip
    shutil.copy(old, tmp_path / "client-ledger.crt")
    nodes_ca = (tmp_path / "ca.crt").read_bytes()

    again = dev_certs(tmp_path, clients=("ledger",))

    assert "was signed by the nodes' CA" in again.output, again.output
    remade = {line.split()[1].rsplit("/", 1)[1] for line in again.output.splitlines() if line.startswith("made")}
    assert remade == {"ca.crt", "ledger-1.crt", "ledger-2.crt", "ledger-3.crt", "client-ledger.crt"}, again.output
    assert (tmp_path / "ca.crt").read_bytes() != nodes_ca

    def verifies(ca: str, certificate: Path) -> bool:
        return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / ca), str(certificate)],
                              capture_output=True).returncode == 0  # fmt: skip

    assert not verifies("ca.crt", old) and not verifies("client-ca.crt", old)
    assert verifies("client-ca.crt", tmp_path / "client-ledger.crt") and verifies("ca.crt", tmp_path / "ledger-1.crt")
