"""The composition root: builds ``ledger serve`` from its settings and tears it down.

``running(settings)`` assembles the service on one ``AsyncExitStack``, in this order, and takes it
apart in the reverse order:

1. the data directory's lock (a second serve on the same directory refuses to start);
2. the embedded nats-server, when no ``nats_url`` is set — so it is stopped last;
3. the ledger (the event store's connection and the policy);
4. the checkpoints (signed by the writer; once more when a writer stops, after its ingestion);
5. the broker's connection, and the streams the ingestion needs;
6. the projections (views, rejections reader, downstream publisher — held back on a standby);
7. the coverage.query responder;
8. the ingestion (the writer lease, the consumer);
9. the ``serve.url`` file other commands find the server by.

The CLI, the demo, the benchmarks and the tests build the service, or its parts, through the
functions here (``ingestion`` for the consumer alone); nothing else wires them together.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.secret_files import local_secret_file, read_secret_file
from ledger.urls import redacted, without_credentials
from service.settings import Settings

if TYPE_CHECKING:
    from consumers.app import IngestService, IngestSettings
    from consumers.streams import IntakeLimits
    from ledger.application import Ledger
    from ledger.jetstream.evidence import Checkpointer
    from ledger.jetstream.tls import NatsTls
    from projections.queries import CoverageQueryService
    from projections.runner import Projections
    from service.observability import Observability

log = logging.getLogger("ledger")

SERVE_URL_FILE = "serve.url"
"""Written by a running ``ledger serve`` in its data directory: other commands use its server."""

INTERRUPTED = 130
"""The exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it."""


# ---- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.read(
        nats_url=args.nats_url, data_dir=args.data_dir, views_url=args.views, policy_file=args.policy,
        batch_size=args.batch_size, replicas=args.replicas, sync_interval=args.sync_interval, port=args.port,
        cipher_key_file=args.cipher_key_file, metrics_address=args.metrics_address, signing_key_file=args.signing_key_file,
        payload_encryption=args.payload_encryption,
        nats_ca_file=args.nats_ca_file, nats_cert_file=args.nats_cert_file, nats_key_file=args.nats_key_file,
    )  # fmt: skip
    return asyncio.run(serve(settings))


@dataclass
class Service:
    """A running ``ledger serve``: its parts, as ``running`` built them."""

    settings: Settings
    url: str
    ledger: Ledger
    broker: Any
    connection: Any
    projections: Projections
    queries: CoverageQueryService
    checkpoints: Checkpointer
    ingestion: IngestService
    observability: Observability | None = None
    """/metrics, /healthz and /readyz, when ``metrics_address`` is set."""

    def check(self) -> None:
        """Raise what stopped a part: a failed projection, a connection closed for good."""
        self.projections.check()
        if self.connection.is_closed:
            raise SystemExit("the NATS connection is closed for good: stopping (a supervisor restarts the service)")

    def checkpoint(self) -> None:
        _checkpoint(self.checkpoints)


async def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM; stop gracefully. Exit code 0, or 130 after Ctrl-C."""
    stop = asyncio.Event()
    interrupted = False
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal interrupted
        interrupted = interrupted or sig == signal.SIGINT
        if stop.is_set():
            log.warning("event=stopping_already signal=%s: still stopping gracefully", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with running(settings) as service:
            print(f"ledger serving on {_redacted(service.url)}", flush=True)
            next_checkpoint = time.monotonic() + settings.checkpoint_seconds
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                except TimeoutError:
                    service.check()
                if time.monotonic() >= next_checkpoint and service.ingestion.writing:
                    await asyncio.to_thread(service.checkpoint)
                    next_checkpoint = time.monotonic() + settings.checkpoint_seconds
            stats = service.ingestion.stats
            log.info(
                "event=stopping recorded=%d rejected=%d questions=%d",
                stats.recorded, stats.rejected, service.queries.answered,
            )  # fmt: skip
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("event=stopped")
    return INTERRUPTED if interrupted else 0


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """The whole service, started; taken apart in reverse order on leaving (module docstring)."""
    if not settings.embedded:
        cipher_settings(settings)  # an external server without a payload key (nor an explicit off): refused at once
        if settings.signing_key_file is None:
            raise SystemExit(SIGNING_KEY_REQUIRED)  # nor without its signing key
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # its secrets, views and server: the owner's
    private_data_dir(data_dir)  # and one an earlier version left open is closed
    async with AsyncExitStack() as stack:
        stack.enter_context(_lock_data_dir(data_dir))
        stack.enter_context(nats_tls(settings))
        observed = await stack.enter_async_context(observability(settings))
        url = settings.nats_url
        if not url:
            url = await stack.enter_async_context(embedded_server(settings))
        signing_key = signing_key_file(settings)
        ledger = await asyncio.to_thread(functools.partial(ledger_for, settings, url, signing_key=signing_key))
        stack.push_async_callback(asyncio.to_thread, ledger.close)
        _log_payload_encryption(settings, ledger)
        observed.watch(ledger=ledger)
        checkpoints = start_checkpoints(ledger, settings, signing_key)
        roles: list[str] = []
        # A writer that stops signs a last checkpoint, once its ingestion and broker have stopped.
        stack.push_async_callback(_last_checkpoint, roles, checkpoints)
        broker, nc = await stack.enter_async_context(connected_broker(url))
        await ensure_ingest_streams(nc, settings.replicas, settings.intake_limits)
        observed.watch(connection=nc)
        projections = await asyncio.to_thread(start_projections, ledger, url, settings.views, settings.replicas, standby=True)
        stack.push_async_callback(asyncio.to_thread, projections.close)
        observed.watch(projections=projections)
        log.info("event=projections views=%s position=%s", _redacted(settings.views), projections.position())
        _warn_without_policy_table(ledger.policy)
        queries = await stack.enter_async_context(answering(ledger, broker, projections))
        observed.watch(queries=queries)
        publishing = _publishing_while_writing(projections)

        def on_role(role: str) -> None:
            roles.append(role)
            publishing(role)

        ingestion = await stack.enter_async_context(ingesting(ledger, broker, ingest_settings(settings), on_role=on_role))
        observed.watch(service=ingestion)
        url_file = data_dir / SERVE_URL_FILE
        url_file.write_text(without_credentials(url))  # where the server is; never who we are to it
        stack.callback(url_file.unlink, missing_ok=True)
        log.info("event=ready nats=%s stream=%s consumer=%s", _redacted(url), settings.ledger_stream, ingestion.settings.durable)
        yield Service(
            settings=settings, url=url, ledger=ledger, broker=broker, connection=nc, projections=projections,
            queries=queries, checkpoints=checkpoints, ingestion=ingestion, observability=observed.observability,
        )  # fmt: skip


def private_data_dir(data_dir: Path) -> None:
    """Make DATA_DIR its owner's alone. ``serve`` creates it 0700; one an earlier version made
    (0755) is tightened here at start — the directory 0700, and each file directly in it that
    group or others may read (its views' SQLite database: 0644) 0600 — said in one warning line;
    one ``serve`` may not change (another owner's) is refused, with the command to run. Files in
    a directory that is already 0700 are left as they are: nobody else can reach them."""
    import stat

    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if not mode & 0o077:
        return
    loose = [p for p in sorted(data_dir.iterdir()) if p.is_file() and not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    try:
        data_dir.chmod(mode & 0o700)
        for path in loose:
            path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o700)
    except PermissionError:
        raise SystemExit(
            f"data directory {data_dir} is open to others (mode {mode:04o}) and serve may not change it: "
            f"`chmod -R go-rwx {data_dir}` as its owner"
        ) from None
    log.warning(
        "event=data_dir_mode dir=%s was=%04o now=%04o files=%s: DATA_DIR (secrets, views, the embedded server's "
        "store) is its owner's alone", data_dir, mode, mode & 0o700, ",".join(p.name for p in loose) or "-",
    )  # fmt: skip


class _Watching:
    """What ``running`` hands the parts it builds to: the observability, or nothing when it is off."""

    def __init__(self, observability: Observability | None) -> None:
        self.observability = observability

    def watch(self, **parts: Any) -> None:
        if self.observability is not None:
            self.observability.watch(**parts)


@asynccontextmanager
async def observability(settings: Settings) -> AsyncIterator[_Watching]:
    """/metrics, /healthz and /readyz on ``metrics_address`` (none: off), started before the rest
    so that a probe hears of a serve still starting, and stopped after it."""
    if not settings.metrics_address:
        yield _Watching(None)
        return
    from service.observability import Observability

    observed = Observability(
        settings.metrics_address, checkpoint_interval=settings.checkpoint_seconds,
        ledger_stream=settings.ledger_stream, ledger_prefix=settings.ledger_prefix,
    )  # fmt: skip
    async with observed:
        yield _Watching(observed)


async def _last_checkpoint(roles: list[str], checkpoints: Checkpointer) -> None:
    if roles and roles[-1] == "writer":
        await asyncio.to_thread(_checkpoint, checkpoints)


def _publishing_while_writing(projections: Projections) -> Callable[[str], None]:
    """Only the writer publishes coverage downstream and signs checkpoints; a standby keeps its
    views and answers coverage.query."""

    def on_role(role: str) -> None:
        publisher = projections.publisher
        if publisher is None:
            return
        if role == "writer":
            publisher.activate()
        else:
            publisher.deactivate()

    return on_role


@asynccontextmanager
async def embedded_server(settings: Settings) -> AsyncIterator[str]:
    """A nats-server of our own under DATA_DIR/nats, stopped on leaving; yields its URL. It runs
    in a session of its own, so Ctrl-C in a terminal reaches serve, which stops it last."""
    from ledger.jetstream.server import EmbeddedNatsServer

    server = EmbeddedNatsServer(
        settings.data_dir / "nats", port=settings.port, sync_interval=settings.sync_interval, own_session=True
    )
    await asyncio.to_thread(server.start)
    print(f"embedded nats-server: {server.url} (data in {server.data_dir})", flush=True)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)


@contextmanager
def nats_tls(settings: Settings) -> Iterator[None]:
    """The TLS setting of ``settings`` for every NATS connection of this process while it runs
    (``ledger.jetstream.tls``), put back as it was on leaving. The embedded server listens on
    loopback without TLS: with it, TLS settings are ignored (and said so)."""
    from ledger.jetstream import tls

    if settings.embedded and settings.nats_tls.configured:
        log.warning("event=nats_tls_ignored: the embedded nats-server has no TLS; LEDGER_NATS_CA_FILE/CERT/KEY apply to NATS_URL")
        yield
        return
    previous = use_nats_tls(settings.nats_tls)
    try:
        yield
    finally:
        tls.use(previous)


def use_nats_tls(setting: NatsTls) -> NatsTls:
    """Make ``setting`` the process's for its NATS connections, once its files are known to be
    usable (else ``SystemExit`` naming the file); returns the previous setting."""
    from ledger.jetstream import tls

    if setting.configured:
        try:
            setting.context()
        except tls.TlsSettingError as e:
            raise SystemExit(str(e)) from None
    return tls.use(setting)


@asynccontextmanager
async def connected_broker(url: str) -> AsyncIterator[tuple[Any, Any]]:
    """A FastStream broker connected to ``url`` (and its nats-py connection), stopped on leaving.
    It reconnects for as long as it takes (a node or the cluster down for minutes): nats-py's
    default gives up after 60 attempts, and FastStream then spins on a closed connection."""
    from consumers.broker import nats_broker

    broker = nats_broker(url, logger=None, max_reconnect_attempts=-1, ping_interval=5, max_outstanding_pings=2)
    nc = await broker.connect()
    try:
        yield broker, nc
    finally:
        await broker.stop()


def ingest_settings(settings: Settings) -> IngestSettings:
    from consumers.app import IngestSettings

    return IngestSettings(
        batch_size=settings.batch_size,
        replicas=settings.replicas,
        lease_ttl=settings.lease_seconds,
        refuse_unattributed=settings.unattributed == "refuse",
        intake_limits=settings.intake_limits,
    )


@asynccontextmanager
async def ingesting(
    ledger: Ledger,
    broker: Any,
    settings: IngestSettings | None = None,
    *,
    on_batch: Callable[[list[Any]], None] | None = None,
    on_role: Callable[[str], None] | None = None,
    contend: bool = True,
) -> AsyncIterator[IngestService]:
    """The ingestion on ``broker`` (connected): the streams it needs, its consumer started and,
    with ``contend``, contending for the writer lease; closed on leaving (the lease released, so
    a standby takes over at once rather than after the lease's TTL)."""
    from consumers.app import IngestService

    service = IngestService(ledger, broker, settings, on_batch=on_batch, on_role=on_role)
    nc = await broker.connect()
    await ensure_ingest_streams(nc, service.settings.replicas, service.settings.intake_limits)
    await broker.start()
    if contend:
        await service.start()
    try:
        yield service
    finally:
        await service.close()


@asynccontextmanager
async def answering(ledger: Ledger, broker: Any, projections: Projections | None = None) -> AsyncIterator[CoverageQueryService]:
    """The coverage.query responder on ``broker``'s connection (in a queue group), answering from
    the live projections when given, else from the event store; unsubscribed on leaving."""
    from projections.queries import CoverageQueryService

    queries = CoverageQueryService(ledger, projections.projection if projections is not None else None)
    await queries.start(await broker.connect())
    try:
        yield queries
    finally:
        await queries.stop()


@asynccontextmanager
async def ingestion(
    ledger: Ledger,
    url: str,
    settings: IngestSettings | None = None,
    *,
    on_batch: Callable[[list[Any]], None] | None = None,
    on_role: Callable[[str], None] | None = None,
    contend: bool = True,
) -> AsyncIterator[IngestService]:
    """``ingesting`` on a broker of its own, connected to ``url`` (tests, benchmarks)."""
    async with connected_broker(url) as (broker, _), ingesting(
        ledger, broker, settings, on_batch=on_batch, on_role=on_role, contend=contend
    ) as service:
        yield service


@contextmanager
def _lock_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold ``DATA_DIR/serve.lock`` for as long as this ``serve`` runs: a second ``serve`` on the
    same directory would start a second nats-server on the same store and share the views."""
    import fcntl

    with open(data_dir / "serve.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise SystemExit(
                f"another ledger serve (pid {holder}) is running on {data_dir}: stop it first, or start this one "
                "with its own --data-dir and the same --nats-url to stand by as a second writer"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def _warn_without_policy_table(policy: Any) -> None:
    """Say at start when the funding year being collected now has no table (its enrollments
    are refused ``no_policy_for_year`` until an operator loads one)."""
    from datetime import datetime

    from ledger.domain.source import CHINA_STANDARD_TIME

    year = policy.current_funding_year(datetime.now(CHINA_STANDARD_TIME).date())
    if year not in policy.years:
        log.warning(
            "event=policy_missing funding_year=%d policy=%s years=%s: enrollments for coverage year %d are refused "
            "no_policy_for_year until a table for it is loaded",
            year, policy.version, ",".join(map(str, policy.years)), year + 1,
        )  # fmt: skip


def start_projections(ledger: Ledger, url: str, views_url: str, replicas: int = 1, *, standby: bool = False) -> Projections:
    """The live projections of ``ledger`` into ``views_url``, publishing coverage downstream
    (with ``standby``, only once ``publisher.activate()`` is called: the writer publishes)."""
    from projections.runner import Projections

    return Projections(
        ledger_env=dict(ledger.env), views_url=views_url, nats_url=url, policy=ledger.policy, loader=ledger,
        publish=True, replicas=replicas, standby=standby,
    )  # fmt: skip


def start_checkpoints(ledger: Ledger, settings: Settings, key_file: Path | None = None) -> Checkpointer:
    """Signed checkpoints of LEDGER (tamper evidence), with the ledger's signing key (the one in
    ``key_file``, default ``signing_key_file(settings)``)."""
    from ledger.jetstream.evidence import Checkpointer
    from ledger.jetstream.signing import SigningKey

    key = SigningKey.load(key_file or signing_key_file(settings))
    return Checkpointer(ledger.recorder.datastore, key, replicas=settings.replicas)  # type: ignore[attr-defined]  # the JetStream recorder's


DEV_SIGNING_KEY = "signing-key.pem"
"""The embedded setup's signing key in DATA_DIR, when LEDGER_SIGNING_KEY_FILE names none."""

SIGNING_KEY_REQUIRED = (
    "a signing key is required with an external NATS server: give LEDGER_SIGNING_KEY_FILE (--signing-key-file; "
    "`ledger keys generate FILE` makes one), the same file to every serve of this ledger, standbys included"
)


def signing_key_file(settings: Settings) -> Path:
    """The file of the ledger's signing key: ``signing_key_file`` (it must exist: ``ledger keys
    generate FILE`` makes one), else — with the embedded server only — DATA_DIR/signing-key.pem,
    created once (mode 0600), beside the embedded server's data; an external server without one
    is refused (every serve of a ledger, on whichever host, must sign with the same key, or
    ``ledger verify`` fails after a failover). When ``trust_key_file`` is set, the key must be
    the one pinned there: serve refuses to sign with any other."""
    from ledger.jetstream.signing import PublicKey, SigningKey

    path = settings.signing_key_file
    try:
        if path is None:
            if not settings.embedded:
                raise SystemExit(SIGNING_KEY_REQUIRED)
            path = settings.data_dir / DEV_SIGNING_KEY
            key = SigningKey.local(path)
            log.info("event=signing_key key_id=%s file=%s: the embedded setup's key, in DATA_DIR", key.key_id, path)
        else:
            key = SigningKey.load(path)
            log.info("event=signing_key key_id=%s file=%s", key.key_id, path)
        if settings.trust_key_file is not None and PublicKey.load(settings.trust_key_file).key_id != key.key_id:
            raise SystemExit(
                f"the signing key {path} (key id {key.key_id}) is not the pinned key {settings.trust_key_file} "
                f"(key id {PublicKey.load(settings.trust_key_file).key_id}): everything it signed would fail ledger verify"
            )
    except OSError as e:
        raise SystemExit(f"signing key: {e.filename or path}: {e.strerror}") from None
    except ValueError as e:
        raise SystemExit(f"signing key: {e}") from None
    return path


def _checkpoint(checkpoints: Checkpointer) -> None:
    try:
        last = checkpoints.checkpoint()
    except Exception as e:  # noqa: BLE001 - retried at the next interval; the events are safe
        log.warning("event=checkpoint_failed error=%r", e)
        return
    if last is not None:
        log.info("event=checkpoint last_seq=%d", last)


_redacted = redacted
"""``ledger.urls.redacted``: one function shows every URL, here and in the connections."""


def ledger_for(
    settings: Settings, url: str, *, cache: bool = True, embedded: bool | None = None, signing_key: Path | None = None
) -> Ledger:
    """The Ledger on the JetStream store at ``url``, with the region's policy. ``cache``: the
    ingestion's (one process writes: keep persons in memory, trust them, check on save).
    ``signing_key``: the file of the key every save is signed with (``serve``: every process
    that may write); none: a reader, which signs nothing and never reads the key."""
    from ledger.application import PERSON_KEY_SECRET, Ledger
    from ledger.domain.identity import PersonKeyer
    from ledger.domain.policy import DEFAULT_POLICY, load_policy

    env = {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url, **settings.ledger_env()}
    # Said explicitly either way: the library would otherwise take it from the process environment.
    env["LEDGER_SIGNING_KEY_FILE"] = str(signing_key) if signing_key is not None else ""
    if cache:
        env.update({
            "AGGREGATE_CACHE_MAXSIZE": str(settings.cache_size),
            "AGGREGATE_CACHE_FASTFORWARD": "n",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
        })  # fmt: skip
    key_file = settings.data_dir / CIPHER_KEY_FILE
    new_key = not key_file.exists()
    env.update(cipher_settings(settings, embedded=embedded))
    new_key = new_key and key_file.exists()
    secret = person_key_secret(settings, embedded=embedded)
    policy = load_policy(settings.policy_file or DEFAULT_POLICY)
    ledger = Ledger({**env, PERSON_KEY_SECRET: secret}, policy=policy, keyer=PersonKeyer(secret.encode()))
    if new_key:
        _only_for_an_empty_ledger(ledger, key_file)
    return ledger


def _log_payload_encryption(settings: Settings, ledger: Ledger) -> None:
    """Say at start whether LEDGER's payloads are encrypted, and with which key (never the key)."""
    if ledger.mapper.cipher is None:
        log.info("event=payload_encryption state=off: LEDGER_PAYLOAD_ENCRYPTION=off, payloads stored in clear")
        return
    key = settings.cipher_key_file or ("LEDGER_CIPHER_KEY" if settings.cipher_key else settings.data_dir / CIPHER_KEY_FILE)
    log.info("event=payload_encryption state=on key=%s", key)


def _only_for_an_empty_ledger(ledger: Ledger, key_file: Path) -> None:
    """A payload key generated just now suits a new ledger only: LEDGER's messages were written in
    clear or with another key, and a second key would leave the ledger half unreadable."""
    datastore = ledger.recorder.datastore  # type: ignore[attr-defined]  # the JetStream recorder's
    held = datastore.last_sequence(datastore.stream)
    if held:
        ledger.close()
        key_file.unlink(missing_ok=True)
        raise SystemExit(
            f"no payload key for this ledger: {key_file} did not exist, yet {datastore.stream} holds {held} messages "
            "(written in clear, or with another key): give the key it was written with (LEDGER_CIPHER_KEY_FILE), "
            "or LEDGER_PAYLOAD_ENCRYPTION=off for a ledger written in clear"
        )


def build_ledger(
    url: str, data_dir: Path, policy_file: Path | None, *, embedded: bool, cache: bool = True, cipher_key_file: Path | None = None
) -> Ledger:
    """``ledger_for`` with the settings of the environment and these (the one-off commands)."""
    settings = Settings.read(data_dir=data_dir, policy_file=policy_file, cipher_key_file=cipher_key_file)
    return ledger_for(settings, url, cache=cache, embedded=embedded)


CIPHER_KEY_FILE = "cipher.key"
"""The payload key the embedded setup generates in its data directory (like the person-key secret)."""

PAYLOAD_KEY_REQUIRED = (
    "payload encryption is required with an external NATS server: give the key "
    "(LEDGER_CIPHER_KEY_FILE, or LEDGER_CIPHER_KEY), or refuse encryption explicitly with LEDGER_PAYLOAD_ENCRYPTION=off"
)


def cipher_settings(settings: Settings, *, embedded: bool | None = None) -> dict[str, str]:
    """Payload encryption with the library's cipher (AES-GCM): the ``eventsourcing`` environment
    for LEDGER's payloads (events and snapshots; the ingestion seals rejected originals with it).

    With ``payload_encryption`` on (the default) the key is the file ``cipher_key_file``
    (``--cipher-key-file`` or ``LEDGER_CIPHER_KEY_FILE``), else ``cipher_key``
    (``LEDGER_CIPHER_KEY``: base64 of 16, 24 or 32 random bytes), else — with the embedded
    server only (``embedded``, by default the settings') — ``DATA_DIR/cipher.key``, generated
    (mode 0600) the first time; an external server without a key is refused. Off: no cipher, an
    explicit choice that a configured key contradicts. The projections and every command reading
    events take the ledger's environment, so they decrypt with the same key."""
    key = (settings.cipher_key or "").strip()
    if settings.cipher_key_file is not None:
        try:
            key = read_secret_file(settings.cipher_key_file, own=False, what="cipher key")
        except OSError as e:
            raise SystemExit(f"cipher key file {settings.cipher_key_file}: {e.strerror}") from None
    if settings.payload_encryption == "off":
        if key:
            raise SystemExit(
                "LEDGER_PAYLOAD_ENCRYPTION=off, yet a payload key is given (LEDGER_CIPHER_KEY_FILE or LEDGER_CIPHER_KEY): "
                "drop one or the other"
            )
        # Said explicitly: the library would otherwise take CIPHER_KEY from the process environment.
        return {"CIPHER_TOPIC": "", "CIPHER_KEY": ""}
    if not key:
        if not (settings.embedded if embedded is None else embedded):
            raise SystemExit(PAYLOAD_KEY_REQUIRED)
        key = local_secret_file(settings.data_dir / CIPHER_KEY_FILE, new_payload_key, what="payload key")
    return {"CIPHER_TOPIC": "eventsourcing.cipher:AESCipher", "CIPHER_KEY": key}


def new_payload_key() -> str:
    """A new AES-256 key, as the cipher takes it (base64)."""
    import base64

    return base64.b64encode(secrets.token_bytes(32)).decode()


def embedded_secrets(settings: Settings) -> dict[str, str]:
    """The environment of a ``ledger serve`` pointed at the data directory's own nats-server
    (``ledger demo``): the secrets the embedded setup keeps in DATA_DIR (generated the first
    time), unless the settings give them."""
    from ledger.jetstream.signing import SigningKey

    env = {"LEDGER_PERSON_KEY_SECRET": person_key_secret(settings, embedded=True)}
    if settings.payload_encryption == "on" and not settings.cipher_key and settings.cipher_key_file is None:
        cipher_settings(settings, embedded=True)
        env["LEDGER_CIPHER_KEY_FILE"] = str((settings.data_dir / CIPHER_KEY_FILE).resolve())
    if settings.signing_key_file is None:
        SigningKey.local(settings.data_dir / DEV_SIGNING_KEY)
        env["LEDGER_SIGNING_KEY_FILE"] = str((settings.data_dir / DEV_SIGNING_KEY).resolve())
    return env


def person_key_secret(settings: Settings, *, embedded: bool | None = None) -> str:
    """The person-key secret: from the settings, else (embedded server only: ``embedded``, by
    default the settings') the data directory's."""
    from ledger.application import PERSON_KEY_SECRET

    secret = settings.person_key_secret
    if not secret:
        if not (settings.embedded if embedded is None else embedded):
            raise SystemExit(f"{PERSON_KEY_SECRET} must be set when using an existing NATS server")
        secret = local_secret(settings.data_dir / "person-key.secret")
    return secret


def local_secret(path: Path) -> str:
    """A development secret kept beside the embedded server's data (created once, mode 0600 from
    the start; refused if group or others may read it: ``ledger.secret_files``)."""
    return local_secret_file(path, lambda: secrets.token_hex(32), what="person-key secret")


async def ensure_ingest_streams(connection: Any, replicas: int = 1, limits: IntakeLimits | None = None) -> None:
    """The intakes, UPSTREAM and REJECTED (``consumers.streams``), created if missing (an existing
    one with weaker settings is refused, an older layout upgraded). ``connection``: a nats-py
    connection or a broker."""
    from consumers.streams import IntakeLimits
    from consumers.streams import ensure_ingest_streams as ensure

    nc = await connection.connect() if hasattr(connection, "subscriber") else connection

    async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
        return dict(json.loads(reply.data))

    await ensure(api, replicas, limits or IntakeLimits())
