"""``ledger status`` and ``ledger parked``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from contract.subjects import COVERAGE_STREAM, REJECTED_STREAM, UPSTREAM_STREAM, checkpoints_stream
from service.bootstrap import SERVE_URL_FILE
from service.cli.output import _emit
from service.cli.publish import connect_quietly
from service.cli.read import _Store
from service.settings import Settings

log = logging.getLogger("ledger")

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

    ledger_stream, prefix = datastore.stream, datastore.prefix
    tracking_subject = datastore.tracking_subject(UPSTREAM_STREAM)
    nc = await connect_quietly(url)
    # An auditor reads through its account's imports of the ledger's API (NATS_API_PREFIX).
    under = datastore.client.api_subject
    try:

        async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
            reply = await nc.request(under(subject), json.dumps(request).encode() if request else b"", timeout=10)
            return json.loads(reply.data)

        streams = {}
        # The report names them as a default deployment does; the stream asked is this one's.
        names = {"UPSTREAM": UPSTREAM_STREAM, "LEDGER": ledger_stream, "REJECTED": REJECTED_STREAM,
                 "COVERAGE": COVERAGE_STREAM, "LEDGER_CHECKPOINTS": checkpoints_stream(ledger_stream)}  # fmt: skip
        for name, stream in names.items():
            info = await api(f"$JS.API.STREAM.INFO.{stream}")
            if "error" not in info:
                streams[name] = {"messages": info["state"]["messages"], "last_seq": info["state"]["last_seq"],
                                 "replicas": info["config"].get("num_replicas", 1)}  # fmt: skip
        async def last(stream: str, subject: str) -> Any:
            """The last message on ``subject`` (None: none, or the stream is missing)."""
            try:
                message = await nc.request(
                    under(f"$JS.API.DIRECT.GET.{stream}"), json.dumps({"last_by_subj": subject}).encode(), timeout=10
                )
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return None
            return None if (message.headers or {}).get("Status") else message

        writer = None
        try:
            js = nc.jetstream(prefix=datastore.client.api_prefix)
            entry = await (await js.key_value(BUCKET)).get("ingest")
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError, nats.errors.NoRespondersError):
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
                return (await nc.request(under(subject), payload, timeout=10)).data

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

    url = Settings.read(data_dir=args.data_dir).views
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

    url = args.nats_url
    running = args.data_dir / SERVE_URL_FILE
    if not url and running.exists():
        url = running.read_text().strip()
    if not url:
        raise SystemExit("no running ledger serve: give --nats-url of the cluster it serves (the writer answers)")

    async def ask() -> Any:
        nc = await connect_quietly(url, what="reach the ledger's NATS")
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


