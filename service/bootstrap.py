"""The composition root: builds the ledger service from its settings and tears it down."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("ledger")


def default_views_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'views.sqlite').resolve()}"


# ---- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    from faststream.nats import NatsBroker

    from consumers.app import IngestService, IngestSettings
    from ledger.jetstream.client import server_urls
    from ledger.jetstream.server import EmbeddedNatsServer
    from projections.queries import CoverageQueryService

    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(data_dir)
    server = None
    url = args.nats_url
    if not url:
        server = EmbeddedNatsServer(data_dir / "nats", port=args.port, sync_interval=args.sync_interval)
        await asyncio.to_thread(server.start)
        url = server.url
        print(f"embedded nats-server: {url} (data in {server.data_dir})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    projections = None
    url_file = data_dir / SERVE_URL_FILE
    try:
        os.environ["NATS_REPLICAS"] = str(args.replicas)  # the LEDGER stream's, read by the event store
        ledger = await asyncio.to_thread(
            build_ledger, url, data_dir, args.policy, embedded=server is not None, cipher_key_file=args.cipher_key_file
        )
        # Reconnect for as long as it takes (a node or the cluster down for minutes): nats-py's
        # default gives up after 60 attempts, and FastStream then spins on a closed connection.
        broker = NatsBroker(
            server_urls(url), logger=None, max_reconnect_attempts=-1, ping_interval=5, max_outstanding_pings=2
        )
        def on_role(role: str) -> None:
            """Only the writer publishes coverage downstream and signs checkpoints; a standby
            keeps its views and answers coverage.query."""
            if projections is None or projections.publisher is None:
                return
            if role == "writer":
                projections.publisher.activate()
            elif hasattr(projections.publisher, "deactivate"):
                projections.publisher.deactivate()

        service = IngestService(
            ledger, broker, on_role=on_role, settings=
            IngestSettings(
                batch_size=args.batch_size, replicas=args.replicas,
                lease_ttl=float(os.environ.get("LEDGER_LEASE_SECONDS", "5")),
            ),
        )  # fmt: skip
        await broker.connect()
        await ensure_ingest_streams(broker, args.replicas)
        views_url = args.views or default_views_url(data_dir)
        projections = await asyncio.to_thread(start_projections, ledger, url, views_url, args.replicas, standby=True)
        log.info("event=projections views=%s position=%s", _redacted(views_url), projections.position())
        _warn_without_policy_table(ledger.policy)
        queries = CoverageQueryService(ledger, broker, projections.projection)
        await queries.start(broker.config.connection_state.connection)
        checkpoints = start_checkpoints(ledger, data_dir, args.replicas)
        await broker.start()
        await service.start()
        url_file.write_text(url)
        log.info("event=ready nats=%s stream=LEDGER consumer=%s", _redacted(url), service.settings.durable)
        print(f"ledger serving on {_redacted(url)}", flush=True)
        interval = float(os.environ.get("LEDGER_CHECKPOINT_SECONDS", "60"))
        next_checkpoint = time.monotonic() + interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                projections.check()  # a failed projection stops the service loudly
                if broker.config.connection_state.connection.is_closed:
                    raise SystemExit("the NATS connection is closed for good: stopping (a supervisor restarts the service)")
            if time.monotonic() >= next_checkpoint and service.writing:
                await asyncio.to_thread(_checkpoint, checkpoints)
                next_checkpoint = time.monotonic() + interval
        log.info(
            "event=stopping recorded=%d rejected=%d questions=%d",
            service.stats.recorded, service.stats.rejected, queries.answered,
        )  # fmt: skip
        await queries.stop()
        writing = service.writing
        await service.close()  # a standby takes over at once, not after the lease's TTL
        await broker.stop()
        if writing:
            await asyncio.to_thread(_checkpoint, checkpoints)
    finally:
        url_file.unlink(missing_ok=True)
        if projections is not None:
            await asyncio.to_thread(projections.close)
        if "ledger" in locals():
            await asyncio.to_thread(ledger.close)
        if server is not None:
            await asyncio.to_thread(server.stop)
        lock.close()
    log.info("event=stopped")
    return 0


def _lock_data_dir(data_dir: Path) -> Any:
    """Hold ``DATA_DIR/serve.lock`` for as long as this ``serve`` runs: a second ``serve`` on the
    same directory would start a second nats-server on the same store and share the views."""
    import fcntl

    lock = open(data_dir / "serve.lock", "a+")  # noqa: SIM115 - held until serve stops
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise SystemExit(
            f"another ledger serve (pid {holder}) is running on {data_dir}: stop it first, or start this one "
            "with its own --data-dir and the same --nats-url to stand by as a second writer"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


SERVE_URL_FILE = "serve.url"
"""Written by a running ``ledger serve`` in its data directory: other commands use its server."""


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


def start_projections(ledger: Any, url: str, views_url: str, replicas: int = 1, *, standby: bool = False) -> Any:
    """The live projections of ``ledger`` into ``views_url``, publishing coverage downstream
    (with ``standby``, only once ``publisher.activate()`` is called: the writer publishes)."""
    from projections.runner import Projections

    return Projections(
        ledger_env=dict(ledger.env), views_url=views_url, nats_url=url, policy=ledger.policy, loader=ledger,
        publish=True, replicas=replicas, standby=standby,
    )  # fmt: skip


def start_checkpoints(ledger: Any, data_dir: Path, replicas: int = 1) -> Any:
    """Signed checkpoints of LEDGER (tamper evidence), with the key from LEDGER_SIGNING_KEY_FILE
    or, by default, DATA_DIR/signing-key.pem (created once; its public half beside it)."""
    from ledger.jetstream.evidence import Checkpointer, SigningKey

    path = Path(os.environ.get("LEDGER_SIGNING_KEY_FILE") or data_dir / "signing-key.pem")
    key = SigningKey.local(path)
    log.info("event=checkpoints key_id=%s", key.key_id())
    return Checkpointer(ledger.recorder.datastore, key, replicas=replicas)


def _checkpoint(checkpoints: Any) -> None:
    try:
        last = checkpoints.checkpoint()
    except Exception as e:  # noqa: BLE001 - retried at the next interval; the events are safe
        log.warning("event=checkpoint_failed error=%r", e)
        return
    if last is not None:
        log.info("event=checkpoint last_seq=%d", last)


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def build_ledger(
    url: str, data_dir: Path, policy_file: Path | None, *, embedded: bool, cache: bool = True, cipher_key_file: Path | None = None
) -> Any:
    """The Ledger on the JetStream store at ``url``, with the region's policy."""
    from ledger.application import PERSON_KEY_SECRET, Ledger
    from ledger.domain.identity import PersonKeyer
    from ledger.domain.policy import DEFAULT_POLICY, load_policy

    env = {
        "PERSISTENCE_MODULE": "ledger.jetstream",
        "NATS_URL": url,
        # One ingestion process writes: keep persons in memory, trust them, check on save.
        "AGGREGATE_CACHE_MAXSIZE": os.environ.get("LEDGER_CACHE_SIZE", "200000"),
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }
    if not cache:
        env = {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url}
    env.update(cipher_settings(cipher_key_file))
    secret = person_key_secret(data_dir, embedded=embedded)
    return Ledger({**env, PERSON_KEY_SECRET: secret}, policy=load_policy(policy_file or DEFAULT_POLICY), keyer=PersonKeyer(secret.encode()))


CIPHER_KEY = "LEDGER_CIPHER_KEY"
CIPHER_KEY_FILE = "LEDGER_CIPHER_KEY_FILE"


def cipher_settings(key_file: Path | None = None) -> dict[str, str]:
    """Payload encryption with the library's cipher (AES-GCM) when a key is configured: the file
    ``key_file`` (``serve --cipher-key-file``), else ``LEDGER_CIPHER_KEY`` (base64 of 16, 24 or 32
    random bytes), else the file named by ``LEDGER_CIPHER_KEY_FILE``. The projections and every
    command reading events take the ledger's environment, so they decrypt with the same key."""
    key = "" if key_file else os.environ.get(CIPHER_KEY, "").strip()
    path = key_file or os.environ.get(CIPHER_KEY_FILE)
    if not key and path:
        try:
            key = Path(path).read_text().strip()
        except OSError as e:
            raise SystemExit(f"cipher key file {path}: {e.strerror}") from None
    if not key:
        return {}
    return {"CIPHER_TOPIC": "eventsourcing.cipher:AESCipher", "CIPHER_KEY": key}


def person_key_secret(data_dir: Path, *, embedded: bool) -> str:
    """The person-key secret: from the environment, else (embedded server only) the data directory's."""
    from ledger.application import PERSON_KEY_SECRET

    secret = os.environ.get(PERSON_KEY_SECRET)
    if not secret:
        if not embedded:
            raise SystemExit(f"{PERSON_KEY_SECRET} must be set when using an existing NATS server")
        secret = local_secret(data_dir / "person-key.secret")
    return secret


def local_secret(path: Path) -> str:
    """A development secret kept beside the embedded server's data (created once, mode 0600)."""
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


async def ensure_ingest_streams(broker: Any, replicas: int = 1) -> None:
    from consumers.streams import rejected_spec, upstream_spec

    nc = broker.config.connection_state.connection

    async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
        return json.loads(reply.data)

    for spec in (upstream_spec(replicas), rejected_spec(replicas)):
        await spec.ensure(api)


