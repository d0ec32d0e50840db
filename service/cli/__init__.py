"""``ledger``: run the enrollment ledger and talk to it.

    ledger serve   [--nats-url URL] [--data-dir DIR] [--views URL] …    run the service
    ledger publish SUBJECT FILE.jsonl [--nats-url URL]                   publish contract messages
    ledger coverage ID_NUMBER [--date D] [--as-of T]                     is this person covered?
    ledger audit ID_NUMBER                                               a person's history and flags
    ledger report [--district D] [--year Y]                              districts, funds, cash, flags
    ledger replay [--until T] [--views URL]                              rebuild every view afresh
    ledger verify --trust-key PEM [--stale-after N]                      signatures, hash chains, checkpoints
    ledger keys generate FILE | public                                   the signing key, its public half
    ledger demo [--people N] [--report FILE]                             a Hefei season end to end
    ledger asyncapi [--output FILE]                                      the AsyncAPI document

This module is the composition root: it builds the store, the application and the consumers;
nothing else wires them together.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ledger.senders import SENDERS
from service.bootstrap import _serve
from service.cli.keys import _keys_generate, _keys_public
from service.cli.publish import _publish
from service.cli.read import _audit, _coverage, _replay, _report, _verify
from service.cli.status import _parked_list, _parked_retry, _status
from service.settings import Settings

log = logging.getLogger("ledger")


_LOG_FORMAT_HELP = "text (key=value lines, the default) or json (one object per line) (LEDGER_LOG_FORMAT)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.log_format not in ("text", "json"):
        parser.error(f"--log-format (LEDGER_LOG_FORMAT): text or json, not {args.log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        from service.observability import JsonFormatter  # imported only then: it brings the metrics

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    try:
        _use_tls_options(args)
        return int(args.run(args) or 0)
    except BrokenPipeError:  # `ledger audit … | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl-C: the command has stopped what it started (finally blocks)
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # raise SystemExit("what is wrong"): one line, exit 1
        if not isinstance(e.code, str):
            raise
        print(f"{parser.prog}: {_one_line(e.code)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback at debug level
        return _failed(parser.prog, e)


def _failed(prog: str, error: Exception) -> int:
    """An error as one line on stderr (exit 1): the ones a user can cause say what is wrong,
    anything else says so and where to look (``--log-level debug`` logs the traceback)."""
    from eventsourcing.persistence import OperationalError

    from ledger.domain.policy import PolicyError
    from projections.database import ViewDatabaseError

    if isinstance(error, (PolicyError, ViewDatabaseError, ConnectionError, OperationalError)):
        print(f"{prog}: {_one_line(str(error))}", file=sys.stderr)
    elif isinstance(error, OSError) and error.filename:
        print(f"{prog}: {error.filename}: {error.strerror}", file=sys.stderr)
    else:
        log.debug("event=failed", exc_info=error)
        detail = _one_line(str(error)) or "(no detail)"
        print(f"{prog}: failed: {type(error).__name__}: {detail} (--log-level debug for the traceback)", file=sys.stderr)
    return 1


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if "authorization violation" in line.lower():
        line += f"; {NEEDS_CREDENTIALS}"
    return line


NEEDS_CREDENTIALS = (
    "the server asks for credentials: give them with NATS_URL or --nats-url (nats://user:password@host:port); "
    "DATA_DIR/serve.url names a running serve's server, never its credentials"
)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2, as argparse's), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    env = Settings.read()  # the environment, read once; an option given wins over its variable
    parser = _Parser(
        prog="ledger",
        description="Event-sourced enrollment ledger for resident medical insurance (城乡居民基本医疗保险).",
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("LEDGER_LOG_LEVEL", "info"), help="debug, info, warning (LEDGER_LOG_LEVEL)"
    )
    parser.add_argument("--log-format", default=os.environ.get("LEDGER_LOG_FORMAT", "text"), help=_LOG_FORMAT_HELP)
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
    serve.add_argument("--nats-url", default=env.nats_url, help="NATS server URL(s) (NATS_URL)")
    _tls_options(env, serve)
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=env.data_dir,
        help="where the embedded server and local secrets live (LEDGER_DATA_DIR; default ./data)",
    )
    serve.add_argument("--policy", type=Path, default=env.policy_file, help="policy file (LEDGER_POLICY; default Hefei)")
    serve.add_argument(
        "--batch-size", type=int, default=env.batch_size, help="messages per pull (LEDGER_BATCH_SIZE)"
    )
    serve.add_argument(
        "--replicas",
        type=int,
        default=env.replicas,
        help="replicas of the streams it creates: LEDGER, UPSTREAM, REJECTED, LEDGER_CHECKPOINTS, COVERAGE and the "
        "coverage bucket (NATS_REPLICAS; 3 in a cluster)",
    )
    serve.add_argument(
        "--sync-interval",
        default=env.sync_interval,
        help="embedded server's JetStream sync_interval (default always: fsync before acknowledging)",
    )
    serve.add_argument("--port", type=int, default=env.port, help="embedded server port (0: free)")
    serve.add_argument(
        "--cipher-key-file",
        type=Path,
        default=None,
        help="encrypt event payloads with the key in this file (base64 AES key; or LEDGER_CIPHER_KEY / "
        "LEDGER_CIPHER_KEY_FILE); every command reading the events needs the same key",
    )
    serve.add_argument(
        "--signing-key-file", type=Path, default=None, metavar="PEM",
        help="the ed25519 key signing every write and checkpoint (LEDGER_SIGNING_KEY_FILE; `ledger keys generate FILE`); "
        "required with an external server (the same file for every serve, standbys included); "
        "the embedded server: DATA_DIR/signing-key.pem, created",
    )  # fmt: skip
    serve.add_argument(
        "--payload-encryption", choices=("on", "off"), default=None,
        help="on (LEDGER_PAYLOAD_ENCRYPTION's default): encrypt with that key, else (embedded server only) with "
        "DATA_DIR/cipher.key, generated; an external server needs a key. off: store payloads in clear",
    )  # fmt: skip
    serve.add_argument(
        "--metrics-address", default=None, metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz over HTTP there (LEDGER_METRICS_ADDRESS; port 0: a free one; default off)",
    )  # fmt: skip
    _views_option(env, serve)
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
        "--sender", default=None, choices=sorted(SENDERS), metavar="ACCOUNT",
        help="play this upstream sender on a server without accounts (development): publish on "
        "upstream.<sender>.<noun>.<verb>, as the sender's account import would deliver it. With the "
        "deployment's accounts, connect as the sender's user instead and leave this out",
    )  # fmt: skip
    publish.add_argument(
        "--nats-url", default=env.nats_url,
        help="NATS URL (NATS_URL); default: the running `ledger serve` of DATA_DIR",
    )  # fmt: skip
    _tls_options(env, publish)
    _data_dir_option(env, publish)
    _format_option(publish)
    publish.set_defaults(run=_publish)

    coverage = commands.add_parser(
        "coverage",
        help="is this person covered on a date (and what did the ledger know at a past time)?",
        description="The coverage reply of the contract, from the person's events in the ledger.",
    )
    coverage.add_argument("id_number")
    coverage.add_argument("--date", type=_date, default=None, help="the day asked about (default: today, China time)")
    coverage.add_argument("--as-of", type=_time, default=None, help="what the ledger knew at this recorded time (ISO, with offset)")
    _store_options(env, coverage)
    _format_option(coverage)
    coverage.set_defaults(run=_coverage)

    audit = commands.add_parser(
        "audit",
        help="a person's full history: events, rejections, flags",
        description="Every event about the person (effective and recorded time, actor, channel, msg_id, policy "
        "version) and every rejected message about them, with the fraud flags pointing at each, from the views.",
    )
    audit.add_argument("id_number")
    _data_dir_option(env, audit)
    _views_option(env, audit)
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
    _data_dir_option(env, report)
    _views_option(env, report)
    _policy_option(env, report)
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
    _store_options(env, replay)
    _views_option(env, replay, default=None)
    _format_option(replay)
    replay.set_defaults(run=_replay)

    verify = commands.add_parser(
        "verify",
        help="check every message's signature, the hash chains and the signed checkpoints against a pinned key",
        description="Reads LEDGER and its checkpoints and checks, against the public key(s) you pin with "
        "--trust-key (never a key the streams or DATA_DIR offer): that every message is covered by a signature "
        "of the ledger, every event's hash chain, every checkpoint's digest and signature, and that checkpoints "
        "are there and recent. Reports every finding with its stream sequence. Exit 0: intact; 1: not. "
        "docs/threat-model.md says what it proves and what it cannot.",
    )
    verify.add_argument(
        "--trust-key", "--public-key", dest="trust_key", type=Path, action="append", default=None, metavar="PEM",
        help="the ledger's public key, pinned (repeatable, for a rotated key; LEDGER_TRUST_KEY_FILE): keep it outside "
        "DATA_DIR; `ledger keys public` prints it",
    )  # fmt: skip
    verify.add_argument(
        "--stale-after", type=float, default=env.verify_stale_intervals, metavar="INTERVALS",
        help="fail when a message has waited more than this many checkpoint intervals (LEDGER_CHECKPOINT_SECONDS) for a "
        f"checkpoint (LEDGER_VERIFY_STALE_INTERVALS; default {env.verify_stale_intervals:g}; 0: every message covered)",
    )  # fmt: skip
    verify.add_argument(
        "--known-checkpoint", default=None, metavar="SEQ:DIGEST",
        help="a checkpoint verified before (last_checkpoint_seq:last_checkpoint_digest of --format json), kept outside "
        "NATS: fail if the stream no longer reaches it with that digest (rolled back or rewritten)",
    )  # fmt: skip
    verify.set_defaults(trust_key_default=env.trust_key_file, checkpoint_seconds=env.checkpoint_seconds)
    _store_options(env, verify)
    _format_option(verify)
    verify.set_defaults(run=_verify)

    keys = commands.add_parser(
        "keys",
        help="the ledger's signing key: make one, or print its public half to pin",
        description="`generate FILE` makes a new ed25519 signing key (mode 0600; never over an existing file) for "
        "LEDGER_SIGNING_KEY_FILE and prints its public key; `public` prints the public key of the ledger's signing "
        "key (LEDGER_SIGNING_KEY_FILE, else DATA_DIR/signing-key.pem) for `ledger verify --trust-key`.",
    )
    keys_commands = keys.add_subparsers(required=True, metavar="ACTION")
    keys_generate = keys_commands.add_parser("generate", help="a new signing key in FILE; its public key on stdout")
    keys_generate.add_argument("file", type=Path, metavar="FILE")
    keys_generate.set_defaults(run=_keys_generate)
    keys_public = keys_commands.add_parser("public", help="the public key (PEM) of the ledger's signing key, on stdout")
    keys_public.add_argument(
        "--signing-key-file", type=Path, default=env.signing_key_file, metavar="PEM",
        help="the signing key (LEDGER_SIGNING_KEY_FILE; default DATA_DIR/signing-key.pem)",
    )  # fmt: skip
    _data_dir_option(env, keys_public)
    keys_public.set_defaults(run=_keys_public)

    status = commands.add_parser(
        "status",
        help="who writes, how far behind each part is, what is parked, the last checkpoint, the policy years",
        description="The state of a running ledger, read from NATS (and the views of DATA_DIR when they are "
        "there): the streams, the writer (lease holder and the ingestion's recorded position), the ingestion's "
        "lag behind UPSTREAM, REJECTED's lag behind LEDGER, the views' position, parked messages, the last "
        "signed checkpoint, and the policy's funding years (warning when the current one has no table).",
    )
    _store_options(env, status)
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
    _store_options(env, parked_list)
    _format_option(parked_list)
    parked_list.set_defaults(run=_parked_list)
    parked_retry = parked_commands.add_parser("retry", help="decide parked messages again (all, or the sequences given)")
    parked_retry.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="UPSTREAM sequences (default: all)")
    _store_options(env, parked_retry)
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
    demo.add_argument("--people", type=_season_size, default=20_000, help="synthetic residents (at least 200; default 20,000)")
    demo.add_argument("--seed", type=int, default=2021, help="simulation seed (same seed, same season)")
    demo.add_argument("--report", type=Path, default=None, help="also write the report as a self-contained HTML page")
    demo.add_argument(
        "--data-dir", type=Path, default=Path("data/demo"),
        help="where the demo's ledger stays (default data/demo; an earlier demo there is replaced)",
    )  # fmt: skip
    _policy_option(env, demo)
    _format_option(demo)
    demo.set_defaults(run=_demo)

    asyncapi = commands.add_parser("asyncapi", help="print or write the AsyncAPI 3 document of the contract")
    asyncapi.add_argument("--output", type=Path, help="write it to this file instead of standard output")
    asyncapi.set_defaults(run=_asyncapi)
    _everywhere(parser, "--log-level", help="debug, info, warning (LEDGER_LOG_LEVEL); before or after the command")
    _everywhere(parser, "--log-format", help=_LOG_FORMAT_HELP)
    return parser


def _everywhere(parser: argparse.ArgumentParser, option: str, **kwargs: Any) -> None:
    """Accept a global ``option`` after the command too (``ledger serve --log-level debug``), in
    every subcommand at any depth; given there, it wins over the value before the command."""
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument(option, default=argparse.SUPPRESS, **kwargs)
                _everywhere(sub, option, **kwargs)


def _data_dir_option(env: Settings, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=env.data_dir,
        help="the ledger's data directory (LEDGER_DATA_DIR; default ./data)",
    )


def _views_option(env: Settings, parser: argparse.ArgumentParser, default: str | None = "env") -> None:
    parser.add_argument(
        "--views",
        default=env.views_url if default == "env" else default,
        help="view database: sqlite:///FILE or postgresql://… (LEDGER_VIEWS; default sqlite:///DATA_DIR/views.sqlite)",
    )


def _policy_option(env: Settings, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, default=env.policy_file, help="policy file (LEDGER_POLICY; default Hefei)")


def _tls_options(env: Settings, parser: argparse.ArgumentParser) -> None:
    """TLS to the NATS servers (docs/operations.md, TLS): a CA file (or a tls:// URL) makes TLS
    required for every connection of the command."""
    parser.add_argument(
        "--nats-ca-file", type=Path, default=env.nats_ca_file, metavar="PEM",
        help="CA certificate(s) the NATS servers' certificates are checked against; TLS required (LEDGER_NATS_CA_FILE)",
    )  # fmt: skip
    parser.add_argument(
        "--nats-cert-file", type=Path, default=env.nats_cert_file, metavar="PEM",
        help="client certificate for mutual TLS, with --nats-key-file (LEDGER_NATS_CERT_FILE)",
    )  # fmt: skip
    parser.add_argument(
        "--nats-key-file", type=Path, default=env.nats_key_file, metavar="PEM",
        help="its private key (LEDGER_NATS_KEY_FILE)",
    )  # fmt: skip


def _use_tls_options(args: argparse.Namespace) -> None:
    """The command's TLS options as the process's setting for its NATS connections."""
    if not hasattr(args, "nats_ca_file") or args.run is _serve:
        return  # a command that connects to no NATS server; serve's settings do it (bootstrap.nats_tls)
    from ledger.jetstream.tls import NatsTls
    from service.bootstrap import use_nats_tls

    if (args.nats_cert_file is None) != (args.nats_key_file is None):
        raise SystemExit("--nats-cert-file and --nats-key-file go together: both or neither")
    use_nats_tls(NatsTls(ca_file=args.nats_ca_file, cert_file=args.nats_cert_file, key_file=args.nats_key_file))


def _store_options(env: Settings, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-url",
        default=env.nats_url,
        help="NATS URL (NATS_URL); default: the running `ledger serve` of DATA_DIR, else its embedded server's data",
    )
    _tls_options(env, parser)
    _data_dir_option(env, parser)
    _policy_option(env, parser)


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table", help="table (default), json or csv")


def _season_size(text: str) -> int:
    from simulation.season import MIN_PEOPLE

    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < MIN_PEOPLE:
        raise argparse.ArgumentTypeError(f"a season needs at least {MIN_PEOPLE} people, not {number}")
    return number


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



# ---- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ledger.domain.policy import DEFAULT_POLICY, load_policy
    from service.cli.output import _emit
    from service.demo.run import run_demo

    started = time.perf_counter()
    summary = run_demo(
        people=args.people,
        data_dir=args.data_dir,
        report_html=args.report,
        seed=args.seed,
        policy=load_policy(args.policy or DEFAULT_POLICY),
        show_report=args.format == "table",
    )
    missed = [p for p in summary["planted"] if not p["caught"]]
    if args.format == "json":
        _emit([summary], "json", vertical=True)
    elif args.format == "csv":
        _emit(summary["planted"], "csv")
    print(f"demo finished in {time.perf_counter() - started:.0f} s; planted cases caught: "
          f"{len(summary['planted']) - len(missed)} of {len(summary['planted'])}",
          file=sys.stdout if args.format == "table" else sys.stderr)  # fmt: skip
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
    """The AsyncAPI 3 document of the contract, as committed in docs/asyncapi.json."""
    from contract.asyncapi import asyncapi_text as text

    return text()


if __name__ == "__main__":
    sys.exit(main())
