"""``ledger publish``: contract messages from a file, checked whole before anything is sent."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from service.bootstrap import SERVE_URL_FILE, _redacted

log = logging.getLogger("ledger")


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
            messages: Iterable[str | dict[str, Any]] = (
                csv_messages(args.subject, lines) if args.file.endswith(".csv") else checked_lines(lines)
            )
            rows = list(messages)
    except UnicodeDecodeError as e:
        raise SystemExit(f"{args.file}: not UTF-8 ({e.reason} at byte {e.start})") from None
    import nats.errors

    started = time.perf_counter()
    try:
        count = asyncio.run(publish_messages(url, args.subject, rows, progress=True, sender=args.sender))
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as e:
        raise SystemExit(f"cannot publish to NATS at {_redacted(url)}: {e!r}") from None
    seconds = time.perf_counter() - started
    if args.format != "table":
        from service.cli.output import _emit

        _emit([{"subject": args.subject, "published": count, "seconds": round(seconds, 3)}], args.format, vertical=True)
    print(f"published {count} messages on {args.subject} in {seconds:.1f} s", file=sys.stderr)
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
        except json.JSONDecodeError as e:
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
    sender: str | None = None,
) -> int:
    """Publish contract messages on ``subject`` with ``Nats-Msg-Id = msg_id``; wait for every
    acknowledgement (in windows of ``window``). Returns how many were acknowledged. ``sender``:
    on a server without accounts, publish as that sender's import would deliver the messages
    (``upstream.<sender>.<noun>.<verb>``)."""
    from contract.messages import SCHEMAS
    from contract.subjects import upstream_subject

    if subject not in SCHEMAS:
        raise SystemExit(f"{subject} is not an upstream subject of the contract: {', '.join(SCHEMAS)}")
    subject = upstream_subject(subject, sender)
    nc = await connect_quietly(url, what="publish to NATS")
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


async def connect_quietly(url: str, *, what: str = "connect to NATS") -> Any:
    """A NATS connection for a one-off command; a server that cannot be reached is one line
    (``SystemExit``), not a log record per try."""
    import nats.errors

    from ledger.jetstream.tls import connect

    errors: list[Exception] = []

    async def quiet(error: Exception) -> None:
        """Said once, below, not logged per try."""
        errors.append(error)

    try:
        return await connect(url, connect_timeout=5, max_reconnect_attempts=3, reconnect_time_wait=1, error_cb=quiet)
    except (OSError, nats.errors.Error) as e:
        last = f" (last error: {errors[-1]!r})" if errors and errors[-1] is not e else ""
        raise SystemExit(f"cannot {what} at {_redacted(url)}: {e!r}{last}") from None


def csv_messages(subject: str, lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    """Rows of a department's CSV roster (a header line with the contract's field names) as
    messages of ``subject``: values converted to the schema's types, empty cells left out.
    Raises ``SystemExit`` naming the line of a row the schema refuses."""
    import csv

    import msgspec

    from contract.messages import SCHEMAS

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


