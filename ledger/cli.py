"""``ledger``: run the enrollment ledger and talk to it.

    ledger serve   [--nats-url URL] [--data-dir DIR] [--views URL] …    run the service
    ledger publish SUBJECT FILE.jsonl [--nats-url URL]                   publish contract messages
    ledger coverage ID_NUMBER [--date D] [--as-of T]                     is this person covered?
    ledger audit ID_NUMBER                                               a person's history and flags
    ledger report [--district D] [--year Y]                              districts, funds, cash, flags
    ledger replay [--until T] [--views URL]                              rebuild every view afresh
    ledger verify [--public-key PEM]                                     hash chains and checkpoints
    ledger demo [--people N] [--report FILE]                             a Hefei season end to end
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
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # `ledger audit … | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


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
        "--replicas",
        type=int,
        default=int(os.environ.get("NATS_REPLICAS", "1")),
        help="replicas of the streams it creates: LEDGER, UPSTREAM, REJECTED, LEDGER_CHECKPOINTS, COVERAGE and the "
        "coverage bucket (NATS_REPLICAS; 3 in a cluster)",
    )
    serve.add_argument(
        "--sync-interval",
        default=os.environ.get("LEDGER_SYNC_INTERVAL", "always"),
        help="embedded server's JetStream sync_interval (default always: fsync before acknowledging)",
    )
    serve.add_argument("--port", type=int, default=int(os.environ.get("LEDGER_NATS_PORT", "0")), help="embedded server port (0: free)")
    serve.add_argument(
        "--cipher-key-file",
        type=Path,
        default=None,
        help="encrypt event payloads with the key in this file (base64 AES key; or LEDGER_CIPHER_KEY / "
        "LEDGER_CIPHER_KEY_FILE); every command reading the events needs the same key",
    )
    _views_option(serve)
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
    publish.add_argument(
        "--nats-url", default=os.environ.get("NATS_URL"),
        help="NATS URL (NATS_URL); default: the running `ledger serve` of DATA_DIR",
    )  # fmt: skip
    _data_dir_option(publish)
    publish.set_defaults(run=_publish)

    coverage = commands.add_parser(
        "coverage",
        help="is this person covered on a date (and what did the ledger know at a past time)?",
        description="The coverage reply of the contract, from the person's events in the ledger.",
    )
    coverage.add_argument("id_number")
    coverage.add_argument("--date", type=_date, default=None, help="the day asked about (default: today, China time)")
    coverage.add_argument("--as-of", type=_time, default=None, help="what the ledger knew at this recorded time (ISO, with offset)")
    _store_options(coverage)
    _format_option(coverage)
    coverage.set_defaults(run=_coverage)

    audit = commands.add_parser(
        "audit",
        help="a person's full history: events, rejections, flags",
        description="Every event about the person (effective and recorded time, actor, channel, msg_id, policy "
        "version) and every rejected message about them, with the fraud flags pointing at each, from the views.",
    )
    audit.add_argument("id_number")
    _data_dir_option(audit)
    _views_option(audit)
    _format_option(audit)
    audit.set_defaults(run=_audit)

    report = commands.add_parser(
        "report",
        help="per district: target, enrolled, rate, funds; waiting periods, cash on hand, flags, rejections",
        description="The bureau's reports from the views. Money in yuan in tables, in fen in JSON and CSV.",
    )
    report.add_argument("--district", help="one district (division code)")
    report.add_argument("--year", type=int, help="coverage year (default: the latest in the views)")
    report.add_argument("--on", type=_date, default=None, help="date for cash alarms and waiting periods (default: today, China time)")
    report.add_argument(
        "--section",
        choices=("all", "districts", "waiting", "cash", "not-renewed", "flags", "rejections"),
        default="all",
        help="one part only (CSV prints one part: districts unless named)",
    )
    _data_dir_option(report)
    _views_option(report)
    _policy_option(report)
    _format_option(report)
    report.set_defaults(run=_report)

    replay = commands.add_parser(
        "replay",
        help="rebuild every view from the start of the streams into a fresh database",
        description="Replays LEDGER and REJECTED from the start into a new view database (default "
        "DATA_DIR/replay-<time>.sqlite; an interrupted replay database given with --views resumes), "
        "without disturbing the running service, and stops at the streams' ends when it started.",
    )
    replay.add_argument("--until", type=_time, default=None, help="only events recorded up to this time (ISO, with offset)")
    _store_options(replay)
    _views_option(replay, default=None)
    replay.set_defaults(run=_replay)

    verify = commands.add_parser(
        "verify",
        help="recompute the ledger's hash chains and signed checkpoints; report the first inconsistency",
        description="Reads LEDGER and its checkpoints, recomputes every event's hash chain and every "
        "checkpoint digest, checks the signatures, and reports the first inconsistency. Exit 0: intact; 1: not.",
    )
    verify.add_argument(
        "--public-key", type=Path, action="append", default=None,
        help="a trusted signing key (PEM; repeatable); default DATA_DIR/signing-key.pem.pub if present",
    )  # fmt: skip
    _store_options(verify)
    verify.set_defaults(run=_verify)

    status = commands.add_parser(
        "status",
        help="who writes, how far behind each part is, what is parked, the last checkpoint, the policy years",
        description="The state of a running ledger, read from NATS (and the views of DATA_DIR when they are "
        "there): the streams, the writer (lease holder and the ingestion's recorded position), the ingestion's "
        "lag behind UPSTREAM, REJECTED's lag behind LEDGER, the views' position, parked messages, the last "
        "signed checkpoint, and the policy's funding years (warning when the current one has no table).",
    )
    _store_options(status)
    _format_option(status)
    status.set_defaults(run=_status)

    parked = commands.add_parser(
        "parked",
        help="list messages the ingestion parked, or have the writer decide them again",
        description="A message that failed the same way on every try (not for a policy reason) is parked "
        "with its reason; later messages about the same person wait behind it (parked, held). `list` shows "
        "them from LEDGER; `retry` asks the running writer to decide them again, oldest first, once the "
        "cause is fixed.",
    )
    parked_commands = parked.add_subparsers(required=True, metavar="ACTION")
    parked_list = parked_commands.add_parser("list", help="the parked messages, oldest first")
    _store_options(parked_list)
    _format_option(parked_list)
    parked_list.set_defaults(run=_parked_list)
    parked_retry = parked_commands.add_parser("retry", help="decide parked messages again (all, or the sequences given)")
    parked_retry.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="UPSTREAM sequences (default: all)")
    _store_options(parked_retry)
    _format_option(parked_retry)
    parked_retry.set_defaults(run=_parked_retry)

    demo = commands.add_parser(
        "demo",
        help="a Hefei enrollment season end to end on embedded defaults (make demo)",
        description=(
            "Starts an embedded nats-server and `ledger serve`, publishes a simulated season for a "
            "synthetic Hefei population through the upstream contract (rosters, WeChat, community QR and "
            "cash, universities, newborns, migrant workers, employee-insurance lapses, deaths, veterans, "
            "bad input and planted fraud), waits for the ledger and its views, and prints the report. "
            "The state stays in DATA_DIR for `ledger coverage/audit/report/replay --data-dir DATA_DIR`."
        ),
    )
    demo.add_argument("--people", type=int, default=20_000, help="synthetic residents (default 20,000)")
    demo.add_argument("--seed", type=int, default=2021, help="simulation seed (same seed, same season)")
    demo.add_argument("--report", type=Path, default=None, help="also write the report as a self-contained HTML page")
    demo.add_argument(
        "--data-dir", type=Path, default=Path("data/demo"),
        help="where the demo's ledger stays (default data/demo; an earlier demo there is replaced)",
    )  # fmt: skip
    _policy_option(demo)
    demo.set_defaults(run=_demo)

    asyncapi = commands.add_parser("asyncapi", help="print or write the AsyncAPI document of the consumers")
    asyncapi.add_argument("--output", type=Path, help="write it to this file instead of standard output")
    asyncapi.set_defaults(run=_asyncapi)
    _everywhere(parser, "--log-level", help="debug, info, warning (LEDGER_LOG_LEVEL); before or after the command")
    return parser


def _everywhere(parser: argparse.ArgumentParser, option: str, **kwargs: Any) -> None:
    """Accept a global ``option`` after the command too (``ledger serve --log-level debug``), in
    every subcommand at any depth; given there, it wins over the value before the command."""
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument(option, default=argparse.SUPPRESS, **kwargs)
                _everywhere(sub, option, **kwargs)


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LEDGER_DATA_DIR", DEFAULT_DATA_DIR)),
        help="the ledger's data directory (LEDGER_DATA_DIR; default ./data)",
    )


def _views_option(parser: argparse.ArgumentParser, default: str | None = "env") -> None:
    parser.add_argument(
        "--views",
        default=os.environ.get("LEDGER_VIEWS") if default == "env" else default,
        help="view database: sqlite:///FILE or postgresql://… (LEDGER_VIEWS; default sqlite:///DATA_DIR/views.sqlite)",
    )


def _policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, default=os.environ.get("LEDGER_POLICY"), help="policy file (LEDGER_POLICY; default Hefei)")


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("NATS_URL"),
        help="NATS URL (NATS_URL); default: the running `ledger serve` of DATA_DIR, else its embedded server's data",
    )
    _data_dir_option(parser)
    _policy_option(parser)


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table", help="table (default), json or csv")


def _date(text: str) -> Any:
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _time(text: str) -> Any:
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"a time needs an offset (e.g. +08:00): {text!r}")
    return moment


def default_views_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'views.sqlite').resolve()}"


# ---- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    from faststream.nats import NatsBroker

    from consumers.app import IngestService, IngestSettings
    from ledger.jetstream.server import EmbeddedNatsServer
    from ledger.jetstream.client import server_urls
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


# ---- publish -------------------------------------------------------------------------------------


def _publish(args: argparse.Namespace) -> int:
    """Read and check the whole file first (JSON, a ``msg_id`` on every line; CSV rows against
    the schema): nothing is sent unless every line is fit to send."""
    url = args.nats_url
    running = args.data_dir / SERVE_URL_FILE
    if not url and running.exists():
        url = running.read_text().strip()
    if not url:
        raise SystemExit(f"no NATS server: give --nats-url (or NATS_URL), or run `ledger serve --data-dir {args.data_dir}`")
    try:
        lines = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as e:
        raise SystemExit(f"{args.file}: {e.strerror}") from None
    try:
        with lines:
            rows = list(csv_messages(args.subject, lines) if args.file.endswith(".csv") else checked_lines(lines))
    except UnicodeDecodeError as e:
        raise SystemExit(f"{args.file}: not UTF-8 ({e.reason} at byte {e.start})") from None
    import nats.errors

    started = time.perf_counter()
    try:
        count = asyncio.run(publish_messages(url, args.subject, rows, progress=True))
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as e:
        raise SystemExit(f"cannot publish to NATS at {_redacted(url)}: {e!r}") from None
    print(f"published {count} messages on {args.subject} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def checked_lines(lines: Iterable[str]) -> Iterable[str]:
    """The non-empty lines of a JSON-lines file, each a JSON object with a ``msg_id``; raises
    ``SystemExit`` naming the first line that is not."""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            body = json.loads(text)
        except ValueError as e:
            raise SystemExit(f"line {number}: not JSON ({e.msg} at column {e.colno}); nothing was published") from None
        if not isinstance(body, dict) or not body.get("msg_id"):
            raise SystemExit(f"line {number}: not a JSON object with a msg_id; nothing was published")
        yield text


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
    from ledger.jetstream.client import server_urls

    if subject not in SCHEMAS:
        raise SystemExit(f"{subject} is not an upstream subject of the contract: {', '.join(SCHEMAS)}")

    async def quiet(_error: Exception) -> None:
        """A server that cannot be reached is said once, by the caller, not logged per try."""

    nc = await nats.connect(
        server_urls(url), connect_timeout=5, max_reconnect_attempts=3, reconnect_time_wait=1, error_cb=quiet
    )
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
            raise SystemExit(f"line {number}: {e}; nothing was published") from None
        yield msgspec.to_builtins(message)


def _body(item: str | bytes | dict[str, Any]) -> bytes | None:
    if isinstance(item, dict):
        return json.dumps(item, ensure_ascii=False).encode()
    text = item.decode() if isinstance(item, bytes) else item
    text = text.strip()
    return text.encode() if text else None


# ---- questions: coverage, audit, report, replay ------------------------------------------------


class _Store:
    """The ledger's NATS server for a one-off command: ``--nats-url``, else the running
    ``ledger serve`` of the data directory, else its embedded server's data (started here, on a
    free port, and stopped afterwards)."""

    def __init__(self, args: argparse.Namespace, *, ledger: bool = True) -> None:
        """``ledger=False``: only the streams (no person-key secret needed, nothing created)."""
        from ledger.jetstream.server import EmbeddedNatsServer

        self.server = None
        data_dir: Path = args.data_dir
        url = args.nats_url
        running = data_dir / SERVE_URL_FILE
        if not url and running.exists():
            url = running.read_text().strip()
        if not url:
            if not (data_dir / "nats").is_dir():
                raise SystemExit(
                    f"no ledger in {data_dir}: run `ledger serve` or `make demo` first, or give --nats-url"
                )
            self.server = EmbeddedNatsServer(data_dir / "nats").start()
            url = self.server.url
        self.url = url
        self.ledger = (
            build_ledger(url, data_dir, args.policy, embedded=self.server is not None or running.exists(), cache=False)
            if ledger
            else None
        )
        self.datastore = self.ledger.recorder.datastore if self.ledger is not None else _datastore(url)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        else:
            self.datastore.client.close()
        if self.server is not None:
            self.server.stop()


def _datastore(url: str) -> Any:
    """The event store's streams at ``url``, as the ledger names them (NATS_STREAM,
    NATS_SUBJECT_PREFIX), without opening the application."""
    from ledger.jetstream.client import NatsClient
    from ledger.jetstream.datastore import JetStreamDatastore

    return JetStreamDatastore(
        NatsClient(url), stream=os.environ.get("NATS_STREAM", "LEDGER"),
        subject_prefix=os.environ.get("NATS_SUBJECT_PREFIX", "ledger"), follower="Ledger",
    )  # fmt: skip


def _coverage(args: argparse.Namespace) -> int:
    from datetime import datetime

    import msgspec

    from ledger.domain.refusals import Refusal
    from ledger.domain.source import CHINA_STANDARD_TIME

    day = args.date or datetime.now(CHINA_STANDARD_TIME).date()
    store = _Store(args)
    try:
        try:
            answer = store.ledger.coverage(args.id_number, day, as_of=args.as_of)
        except Refusal as refusal:
            raise SystemExit(f"{refusal.reason}: {refusal.detail}") from None
        reply = msgspec.to_builtins(answer)
        reply["ledger_seq"] = store.ledger.recorder.max_notification_id()
    finally:
        store.close()
    _emit([reply], args.format, title=f"coverage on {day}", vertical=True)
    return 0


def _views_db(args: argparse.Namespace) -> Any:
    from projections.database import Database, ViewDatabaseError, sqlite_path

    url = args.views or default_views_url(args.data_dir)
    if url.startswith("sqlite:") and not Path(sqlite_path(url)).exists():
        raise SystemExit(f"no views at {url}: run `ledger serve` (or `make demo`) first, or give --views")
    try:
        return Database.open(url)
    except ViewDatabaseError as e:
        raise SystemExit(str(e)) from None


def _person_key(args: argparse.Namespace) -> str:
    from datetime import datetime

    from ledger.domain.identity import PersonKeyer, ResidentId
    from ledger.domain.refusals import Refusal
    from ledger.domain.source import CHINA_STANDARD_TIME

    secret = person_key_secret(args.data_dir, embedded=(args.data_dir / "person-key.secret").exists())
    try:
        resident = ResidentId.parse(args.id_number, today=datetime.now(CHINA_STANDARD_TIME).date())
    except Refusal as refusal:
        raise SystemExit(f"{refusal.reason}: {refusal.detail}") from None
    return PersonKeyer(secret.encode()).key_of(resident)


def _audit(args: argparse.Namespace) -> int:
    from projections import reports

    key = _person_key(args)
    db = _views_db(args)
    try:
        person = reports.person_of(db, key)
        coverage = reports.coverage_of(db, key)
        trail = reports.audit_trail(db, key)
        flags = reports.flags_of(db, key)
    finally:
        db.close()
    if args.format != "table":
        if args.format == "json":
            document = {"person_key": key, "person": person, "coverage": coverage, "timeline": trail, "flags": flags}
            print(json.dumps(document, ensure_ascii=False, indent=2, default=str))
        else:
            _emit(trail, "csv")
        return 0
    if person is None and not trail:
        print(f"person {key[:12]}… is not in the views")
        return 0
    _emit([person] if person else [], "table", title=f"person {key[:12]}…", vertical=True)
    _emit(coverage, "table", title="coverage per year", columns=(
        "coverage_year", "status", "category", "channel", "coverage_start", "coverage_end", "benefit_start",
        "waiting_months", "retroactive", "subsidy_category", "paid_fen", "ended_reason"))
    _emit(trail, "table", title="timeline", columns=(
        "recorded_at", "effective_at", "what", "coverage_year", "actor", "msg_id", "policy_version", "position", "flags"))
    _emit(flags, "table", title="flags", columns=("rule", "position", "detail", "evidence", "parameters"))
    return 0


def _report(args: argparse.Namespace) -> int:
    from datetime import datetime

    from ledger.domain.policy import DEFAULT_POLICY, load_policy
    from ledger.domain.source import CHINA_STANDARD_TIME
    from projections import reports

    policy = load_policy(args.policy or DEFAULT_POLICY)
    on = args.on or datetime.now(CHINA_STANDARD_TIME).date()
    db = _views_db(args)
    try:
        years = reports.years_in_views(db)
        year = args.year or (years[-1] if years else on.year)
        sections: dict[str, list[dict[str, Any]]] = {}
        wanted = args.section
        if args.format == "csv" and wanted == "all":
            wanted = "districts"
        if wanted in ("all", "districts"):
            sections["districts"] = reports.district_report(db, policy, year, args.district)
        if wanted in ("all", "waiting"):
            sections["waiting"] = reports.waiting_periods(db, on=on, district=args.district)
        if wanted in ("all", "cash"):
            sections["cash"] = reports.cash_on_hand(db, policy, on)
        if wanted in ("all", "not-renewed"):
            sections["not-renewed"] = reports.not_renewed(db, year, args.district)
        if wanted in ("all", "flags"):
            sections["flags"] = [{"rule": r, "count": c} for r, c in reports.flag_counts(db).items()]
        if wanted in ("all", "rejections"):
            sections["rejections"] = [{"reason": r, "count": c} for r, c in reports.rejection_counts(db).items()]
    finally:
        db.close()
    if args.format == "json":
        print(json.dumps({"coverage_year": year, "on": on.isoformat(), **sections}, ensure_ascii=False, indent=2, default=str))
        return 0
    if args.format == "csv":
        (rows,) = sections.values()
        _emit(rows, "csv")
        return 0
    titles = {
        "districts": f"coverage year {year}: enrollment and funds per district (yuan)",
        "waiting": f"in a waiting period on {on}",
        "cash": f"cash on hand on {on} (limit {policy.cash_remit_days} days / {policy.cash_remit_fen // 100:,} yuan)",
        "not-renewed": f"enrolled for {year - 1}, not yet for {year} (check-up list)",
        "flags": "fraud flags by rule",
        "rejections": "rejections by reason",
    }
    for name, rows in sections.items():
        columns = None
        if name == "cash":
            rows = [_in_yuan(r) for r in rows]
            columns = ("collector", "balance", "received", "remitted", "oldest_unremitted_at", "days_held", "overdue", "over_limit")
        if name == "districts":
            rows = [_in_yuan(r) for r in rows]
            columns = ("district", "district_name", "target", "enrolled", "rate_percent", "goal_percent",
                       "individual", "assistance", "fiscal", "total", "assistance_transfer_due")
        if name in ("waiting", "not-renewed") and len(rows) > 20:
            print(f"{titles[name]}: {len(rows)} people (first 20; --format json or csv for all)")
            rows = rows[:20]
        _emit(rows, "table", title=titles[name], columns=columns)
    return 0


def _in_yuan(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key.endswith("_fen"):
            out[key.removesuffix("_fen")] = None if value is None else f"{value / 100:,.2f}"
        else:
            out[key] = value
    return out


def _replay(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from projections.runner import replay

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    views_url = args.views or f"sqlite:///{(args.data_dir / f'replay-{stamp}.sqlite').resolve()}"
    store = _Store(args)
    try:
        with Progress(
            TextColumn("replaying LEDGER"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
            TimeRemainingColumn(), transient=False, redirect_stdout=False,
        ) as bar:
            task = bar.add_task("replay", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = replay(
                ledger_env=dict(store.ledger.env), views_url=views_url, nats_url=store.url, policy=store.ledger.policy,
                loader=store.ledger, until=args.until, progress=progress,
            )
    finally:
        store.close()
    print(
        f"replayed {result.ledger_events:,} ledger events and {result.rejections:,} rejections "
        f"in {result.seconds:.1f} s ({result.rate:,.0f} events/s) into {_redacted(result.views_url)}"
    )
    return 0


def _emit(
    rows: list[dict[str, Any]],
    fmt: str,
    *,
    title: str | None = None,
    columns: Sequence[str] | None = None,
    vertical: bool = False,
) -> None:
    """Rows as a terminal table, JSON or CSV."""
    if fmt == "json":
        print(json.dumps(rows if len(rows) != 1 or not vertical else rows[0], ensure_ascii=False, indent=2, default=str))
        return
    if fmt == "csv":
        import csv

        names = list(columns or (rows[0].keys() if rows else ()))
        writer = csv.DictWriter(sys.stdout, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in names})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"[bold]{title}[/bold]: none" if title else "none")
        return
    if vertical:
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in rows[0].items():
            table.add_row(key, _cell(value))
    else:
        names = list(columns or rows[0].keys())
        table = Table(title=title, title_justify="left")
        for name in names:
            table.add_column(name)
        for row in rows:
            table.add_row(*(_cell(row.get(name)) for name in names))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


# ---- verify --------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from ledger.jetstream.evidence import key_id, verify

    keys = args.public_key or [p for p in [args.data_dir / "signing-key.pem.pub"] if p.exists()]
    trusted = {key_id(p.read_text()) for p in keys} if keys else None
    store = _Store(args)
    try:
        report = verify(store.ledger.recorder.datastore, trusted_keys=trusted)
    finally:
        store.close()
    print(
        f"{report.messages:,} messages, {report.events:,} events, {report.checkpoints} checkpoints verified "
        f"(the last up to LEDGER {report.last_checkpoint_seq})"
        + ("" if trusted else "; no trusted key given: signatures checked against the keys they carry")
    )
    if report.ok:
        print("intact: every hash chain and checkpoint holds")
        return 0
    print(f"NOT INTACT: {report.findings[0]}")
    return 1


# ---- status --------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    """``ledger status``: see its help. Exit 0, or 1 when something needs an operator (no writer,
    parked messages, no policy table for the current funding year)."""
    from datetime import datetime

    from consumers.ingest import Journal, read_parked
    from ledger.domain.policy import DEFAULT_POLICY, load_policy
    from ledger.domain.source import CHINA_STANDARD_TIME
    from ledger.jetstream.recorders import JetStreamApplicationRecorder

    policy = load_policy(args.policy or DEFAULT_POLICY)
    store = _Store(args, ledger=False)
    try:
        datastore = store.datastore
        state = asyncio.run(_stream_state(store.url, datastore))
        parked = Journal(parked=read_parked(datastore)).parked if "LEDGER" in state["streams"] else {}
        last_event = JetStreamApplicationRecorder(datastore).max_notification_id() or 0 if "LEDGER" in state["streams"] else 0
    finally:
        store.close()
    views = _views_positions(args)
    today = datetime.now(CHINA_STANDARD_TIME).date()
    funding_year = policy.current_funding_year(today)
    upstream_last = state["streams"].get("UPSTREAM", {}).get("last_seq", 0)
    position = state["position"]
    report = {
        "writer": state["writer"],
        "ingestion": {
            "position": position,
            "upstream_last_seq": upstream_last,
            "behind": max(0, upstream_last - position),
            "recorded_by": state["recorded_by"],
        },
        "rejected": {"on_ledger": state["rejections"], "on_rejected": state["streams"].get("REJECTED", {}).get("messages", 0)},
        "views": {**views, "ledger_last_event": last_event, "behind": max(0, last_event - views["ledger"]) if views else None},
        "parked": [{"upstream_seq": m.upstream_seq, "reason": m.reason, "subject": m.subject} for m in sorted(parked.values(), key=lambda m: m.upstream_seq)],
        "last_checkpoint": state["checkpoint"],
        "policy": {"region": policy.region, "version": policy.version, "funding_years": list(policy.years),
                   "current_funding_year": funding_year, "current_year_has_table": funding_year in policy.years},
        "streams": state["streams"],
    }  # fmt: skip
    problems = []
    if state["writer"] is None:
        problems.append("no ledger serve holds the writer lease: nothing is ingested")
    if parked:
        problems.append(f"{len(parked)} parked messages (ledger parked list)")
    if not report["policy"]["current_year_has_table"]:
        problems.append(f"the policy has no table for funding year {funding_year}: its enrollments are refused no_policy_for_year")
    report["problems"] = problems
    if args.format == "json":
        print(json.dumps(report, ensure_ascii=False, indent=2, default=str))
        return 1 if problems else 0
    writer = state["writer"]
    rows = [{
        "writer": f"{writer['holder']} (epoch {writer['epoch']})" if writer else "none",
        "ingested up to UPSTREAM": f"{position:,} of {upstream_last:,} ({report['ingestion']['behind']:,} behind)",
        "rejections": f"{state['rejections']:,} recorded, {report['rejected']['on_rejected']:,} on REJECTED",
        "views": (f"LEDGER {views['ledger']:,} of {last_event:,}, REJECTED {views['rejected']:,}" if views else "none in this data directory"),
        "parked": str(len(parked)),
        "last checkpoint": (f"LEDGER {state['checkpoint']['last_seq']:,}, signed {state['checkpoint']['signed_at']}"
                            if state["checkpoint"] else "none"),
        "policy": f"{policy.version}: funding years {', '.join(map(str, policy.years))}",
    }]  # fmt: skip
    _emit(rows, args.format, title="ledger status", vertical=True)
    for problem in problems:
        print(f"! {problem}", file=sys.stderr)
    return 1 if problems else 0


async def _stream_state(url: str, datastore: Any) -> dict[str, Any]:
    import msgspec
    import nats
    import nats.js.errors

    from consumers.lease import BUCKET
    from consumers.streams import rejections_recorded
    from ledger.jetstream.client import server_urls

    ledger_stream, prefix = datastore.stream, datastore.prefix
    tracking_subject = datastore.tracking_subject("UPSTREAM")
    nc = await nats.connect(server_urls(url))
    try:

        async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
            reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
            return json.loads(reply.data)

        streams = {}
        names = {"UPSTREAM": "UPSTREAM", "LEDGER": ledger_stream, "REJECTED": "REJECTED", "COVERAGE": "COVERAGE",
                 "LEDGER_CHECKPOINTS": f"{ledger_stream}_CHECKPOINTS"}  # fmt: skip
        for name, stream in names.items():
            info = await api(f"$JS.API.STREAM.INFO.{stream}")
            if "error" not in info:
                streams[name] = {"messages": info["state"]["messages"], "last_seq": info["state"]["last_seq"],
                                 "replicas": info["config"].get("num_replicas", 1)}  # fmt: skip
        async def last(stream: str, subject: str) -> Any:
            """The last message on ``subject`` (None: none, or the stream is missing)."""
            try:
                message = await nc.request(
                    f"$JS.API.DIRECT.GET.{stream}", json.dumps({"last_by_subj": subject}).encode(), timeout=10
                )
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return None
            return None if (message.headers or {}).get("Status") else message

        writer = None
        try:
            entry = await (await nc.jetstream().key_value(BUCKET)).get("ingest")
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
            entry = None
        if entry is not None and entry.value:
            value = msgspec.json.decode(entry.value)
            writer = {"holder": value.get("holder"), "epoch": value.get("epoch")}
        position, recorded_by = 0, None
        tracked = await last(ledger_stream, tracking_subject)
        if tracked is not None:
            position = int(tracked.headers.get("Ledger-Tracking-Id", "0"))
            recorded_by = {"epoch": tracked.headers.get("Ledger-Writer-Epoch"), "at": tracked.headers.get("Nats-Time-Stamp")}
        rejections = 0
        if "LEDGER" in streams:

            async def request(subject: str, payload: bytes) -> bytes:
                return (await nc.request(subject, payload, timeout=10)).data

            rejections = await rejections_recorded(request, ledger_stream=ledger_stream, ledger_prefix=prefix)
        checkpoint = None
        signed = await last(f"{ledger_stream}_CHECKPOINTS", f"{prefix}.checkpoint")
        if signed is not None:
            body = msgspec.json.decode(signed.data).get("checkpoint", {})
            checkpoint = {"last_seq": body.get("last_seq"), "signed_at": body.get("signed_at")}
        return {"streams": streams, "writer": writer, "position": position, "recorded_by": recorded_by,
                "rejections": rejections, "checkpoint": checkpoint}  # fmt: skip
    finally:
        await nc.close()


def _views_positions(args: argparse.Namespace) -> dict[str, int]:
    """The positions of the views of DATA_DIR (or ``LEDGER_VIEWS``), or {} when there are none."""
    from projections.runner import view_positions

    url = os.environ.get("LEDGER_VIEWS") or default_views_url(args.data_dir)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}
    try:
        ledger_position, rejected_position = view_positions(url)
    except Exception as e:  # noqa: BLE001 - a status must not fail on the views
        log.warning("event=views_unreadable error=%r", e)
        return {}
    return {"ledger": ledger_position, "rejected": rejected_position}


# ---- parked messages -----------------------------------------------------------------------------


def _parked_list(args: argparse.Namespace) -> int:
    from consumers.ingest import Journal, read_parked

    store = _Store(args, ledger=False)
    try:
        journal = Journal(parked=read_parked(store.datastore))
    finally:
        store.close()
    rows = [
        {"upstream_seq": m.upstream_seq, "subject": m.subject, "msg_id": m.msg_id, "reason": m.reason,
         "detail": m.detail, "persons": len(m.holds)}
        for m in sorted(journal.parked.values(), key=lambda m: m.upstream_seq)
    ]  # fmt: skip
    _emit(rows, args.format, title=f"{len(rows)} parked messages")
    return 0


def _parked_retry(args: argparse.Namespace) -> int:
    import msgspec
    import nats

    from consumers.app import PARKED_RETRY_SUBJECT
    from ledger.jetstream.client import server_urls

    url = args.nats_url
    running = args.data_dir / SERVE_URL_FILE
    if not url and running.exists():
        url = running.read_text().strip()
    if not url:
        raise SystemExit("no running ledger serve: give --nats-url of the cluster it serves (the writer answers)")

    async def ask() -> Any:
        nc = await nats.connect(server_urls(url))
        try:
            reply = await nc.request(PARKED_RETRY_SUBJECT, msgspec.json.encode({"seqs": args.seqs or None}), timeout=60)
        except nats.errors.NoRespondersError:
            raise SystemExit("no ledger serve answers: is one running and writing?") from None
        except nats.errors.TimeoutError:
            raise SystemExit("the writer did not answer within 60 s (its log says why)") from None
        finally:
            await nc.close()
        return msgspec.json.decode(reply.data)

    answer = asyncio.run(ask())
    if "error" in answer:
        raise SystemExit(f"the writer could not retry: {answer['error']}")
    _emit(answer["results"], args.format, title=f"retried by {answer['writer']}")
    return 0


# ---- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ledger.demo.run import run_demo
    from ledger.domain.policy import DEFAULT_POLICY, load_policy

    if args.people < 1:
        raise SystemExit("--people must be at least 1")
    started = time.perf_counter()
    summary = run_demo(
        people=args.people,
        data_dir=args.data_dir,
        report_html=args.report,
        seed=args.seed,
        policy=load_policy(args.policy or DEFAULT_POLICY),
    )
    missed = [p for p in summary["planted"] if not p["caught"]]
    print(f"demo finished in {time.perf_counter() - started:.0f} s; planted cases caught: "
          f"{len(summary['planted']) - len(missed)} of {len(summary['planted'])}")  # fmt: skip
    return 0 if not missed else 1


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
