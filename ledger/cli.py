"""``ledger``: run the enrollment ledger and talk to it.

    ledger serve   [--nats-url URL] [--data-dir DIR] [--policy FILE] …   run the service
    ledger publish SUBJECT FILE.jsonl [--nats-url URL]                   publish contract messages
    ledger asyncapi [--output FILE]                                      the AsyncAPI document

This module is the composition root: it builds the store, the application and the consumers;
nothing else wires them together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("ledger")

DEFAULT_DATA_DIR = Path("data")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="Event-sourced enrollment ledger for resident medical insurance (城乡居民基本医疗保险).",
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("LEDGER_LOG_LEVEL", "info"), help="debug, info, warning (LEDGER_LOG_LEVEL)"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the ledger: ingest upstream facts into the LEDGER stream",
        description=(
            "Run the ledger service. Without --nats-url it starts an embedded nats-server with "
            "its data under DATA_DIR/nats and prints its URL. Creates the streams it needs "
            "(LEDGER, UPSTREAM, REJECTED) if missing and refuses existing ones with weaker "
            "settings; consumes upstream.> in order; answers coverage.query; stops gracefully "
            "on SIGINT/SIGTERM."
        ),
    )
    serve.add_argument("--nats-url", default=os.environ.get("NATS_URL"), help="NATS server URL(s) (NATS_URL)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LEDGER_DATA_DIR", DEFAULT_DATA_DIR)),
        help="where the embedded server and local secrets live (LEDGER_DATA_DIR; default ./data)",
    )
    serve.add_argument("--policy", type=Path, default=os.environ.get("LEDGER_POLICY"), help="policy file (LEDGER_POLICY; default Hefei)")
    serve.add_argument(
        "--batch-size", type=int, default=int(os.environ.get("LEDGER_BATCH_SIZE", "500")), help="messages per pull (LEDGER_BATCH_SIZE)"
    )
    serve.add_argument(
        "--sync-interval",
        default=os.environ.get("LEDGER_SYNC_INTERVAL", "always"),
        help="embedded server's JetStream sync_interval (default always: fsync before acknowledging)",
    )
    serve.add_argument("--port", type=int, default=int(os.environ.get("LEDGER_NATS_PORT", "0")), help="embedded server port (0: free)")
    serve.set_defaults(run=_serve)

    publish = commands.add_parser(
        "publish",
        help="publish contract messages from a JSON-lines file",
        description=(
            "Publish one message per line of FILE (JSON objects, '-' for standard input; or a "
            ".csv file whose header names the contract's fields, e.g. a department's roster) on "
            "SUBJECT (e.g. upstream.subsidy.listed) to the UPSTREAM stream, with Nats-Msg-Id "
            "set to each message's msg_id, and wait for every acknowledgement."
        ),
    )
    publish.add_argument("subject", help="an upstream subject of the contract")
    publish.add_argument("file", help="JSON-lines file, a .csv file, or - for standard input")
    publish.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), help="NATS URL (NATS_URL)")
    publish.set_defaults(run=_publish)

    asyncapi = commands.add_parser("asyncapi", help="print or write the AsyncAPI document of the consumers")
    asyncapi.add_argument("--output", type=Path, help="write it to this file instead of standard output")
    asyncapi.set_defaults(run=_asyncapi)
    return parser


# ---- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    from faststream.nats import NatsBroker

    from consumers.app import IngestService, IngestSettings
    from ledger.jetstream.server import EmbeddedNatsServer
    from projections.queries import CoverageQueryService

    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
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
    try:
        ledger = await asyncio.to_thread(build_ledger, url, data_dir, args.policy, embedded=server is not None)
        broker = NatsBroker(url, logger=None)
        service = IngestService(ledger, broker, IngestSettings(batch_size=args.batch_size))
        CoverageQueryService(ledger, broker)
        await broker.connect()
        await ensure_ingest_streams(broker)
        await broker.start()
        log.info("event=ready nats=%s stream=LEDGER consumer=%s", url, service.settings.durable)
        print(f"ledger serving on {url}", flush=True)
        await stop.wait()
        log.info("event=stopping recorded=%d rejected=%d", service.stats.recorded, service.stats.rejected)
        await broker.stop()
        await asyncio.to_thread(ledger.close)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    log.info("event=stopped")
    return 0


def build_ledger(url: str, data_dir: Path, policy_file: Path | None, *, embedded: bool) -> Any:
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
    secret = os.environ.get(PERSON_KEY_SECRET)
    if not secret:
        if not embedded:
            raise SystemExit(f"{PERSON_KEY_SECRET} must be set when using an existing NATS server")
        secret = local_secret(data_dir / "person-key.secret")
    return Ledger(env, policy=load_policy(policy_file or DEFAULT_POLICY), keyer=PersonKeyer(secret.encode()))


def local_secret(path: Path) -> str:
    """A development secret kept beside the embedded server's data (created once, mode 0600)."""
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


async def ensure_ingest_streams(broker: Any) -> None:
    from consumers.streams import rejected_spec, upstream_spec

    nc = broker.config.connection_state.connection

    async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
        return json.loads(reply.data)

    for spec in (upstream_spec(), rejected_spec()):
        await spec.ensure(api)


# ---- publish -------------------------------------------------------------------------------------


def _publish(args: argparse.Namespace) -> int:
    lines = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", newline="")  # noqa: SIM115
    with lines:
        started = time.perf_counter()
        rows = csv_messages(args.subject, lines) if args.file.endswith(".csv") else lines
        count = asyncio.run(publish_messages(args.nats_url, args.subject, rows, progress=True))
    print(f"published {count} messages on {args.subject} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


async def publish_messages(
    url: str,
    subject: str,
    messages: Iterable[str | bytes | dict[str, Any]],
    *,
    window: int = 2000,
    progress: bool = False,
) -> int:
    """Publish contract messages on ``subject`` with ``Nats-Msg-Id = msg_id``; wait for every
    acknowledgement (in windows of ``window``). Returns how many were acknowledged."""
    import nats

    from consumers.schemas import SCHEMAS

    if subject not in SCHEMAS:
        raise SystemExit(f"{subject} is not an upstream subject of the contract: {', '.join(SCHEMAS)}")
    nc = await nats.connect(url)
    js = nc.jetstream()
    pending: list[Any] = []
    count = 0
    try:
        for number, item in enumerate(messages, start=1):
            body = _body(item)
            if body is None:
                continue
            msg_id = json.loads(body).get("msg_id")
            if not msg_id:
                raise SystemExit(f"line {number}: no msg_id")
            pending.append(await js.publish_async(subject, body, headers={"Nats-Msg-Id": str(msg_id)}))
            if len(pending) >= window:
                count += len(await asyncio.gather(*pending))
                pending.clear()
                if progress:
                    print(f"\r{count} acknowledged", end="", file=sys.stderr, flush=True)
        count += len(await asyncio.gather(*pending))
        if progress:
            print(f"\r{count} acknowledged", file=sys.stderr)
    finally:
        await nc.close()
    return count


def csv_messages(subject: str, lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    """Rows of a department's CSV roster (a header line with the contract's field names) as
    messages of ``subject``: values converted to the schema's types, empty cells left out.
    Raises ``SystemExit`` naming the line of a row the schema refuses."""
    import csv

    import msgspec

    from consumers.schemas import SCHEMAS

    schema = SCHEMAS.get(subject)
    if schema is None:
        raise SystemExit(f"{subject} is not an upstream subject of the contract")
    for number, row in enumerate(csv.DictReader(lines), start=2):
        values = {k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip()}
        try:
            message = msgspec.convert(values, type=schema, strict=False)
        except msgspec.ValidationError as e:
            raise SystemExit(f"line {number}: {e}") from None
        yield msgspec.to_builtins(message)


def _body(item: str | bytes | dict[str, Any]) -> bytes | None:
    if isinstance(item, dict):
        return json.dumps(item, ensure_ascii=False).encode()
    text = item.decode() if isinstance(item, bytes) else item
    text = text.strip()
    return text.encode() if text else None


# ---- asyncapi ------------------------------------------------------------------------------------


def _asyncapi(args: argparse.Namespace) -> int:
    text = asyncapi_text()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def asyncapi_text() -> str:
    """The AsyncAPI document of the ingestion consumer, as committed under docs/."""
    from faststream.nats import NatsBroker

    from consumers.app import IngestService, asyncapi_document
    from projections.queries import CoverageQueryService

    broker = NatsBroker("nats://127.0.0.1:4222", logger=None)
    service = IngestService(None, broker)
    CoverageQueryService(None, broker)
    return json.dumps(asyncapi_document(service), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.exit(main())
