"""Integrators publish contract messages with ``ledger publish``: JSON lines or a CSV roster."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.streams import ensure_ingest_streams
from ledger.jetstream.server import EmbeddedNatsServer
from tests.integration.ingest_support import ROOT, api, people, wait_for

ROSTER = "msg_id,occurred_at,id_number,coverage_year,subsidy_category,department,roster\n"


def publish(url: str, subject: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "publish", subject, str(path), "--nats-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def upstream(tmp_path: Path) -> EmbeddedNatsServer:
    server = EmbeddedNatsServer(tmp_path / "nats").start()

    async def create() -> None:
        async def call(subject: str, request: dict | None = None) -> dict:
            return await api(server.url, subject, request)

        await ensure_ingest_streams(call)

    asyncio.run(create())
    yield server
    server.stop()


def test_a_csv_roster_is_published_as_typed_messages_with_their_msg_id(upstream: EmbeddedNatsServer, tmp_path: Path) -> None:
    ids = people(3, "roster")
    roster = tmp_path / "dibao-2021-08.csv"
    roster.write_text(
        ROSTER + "".join(f"r{i},2021-08-20T09:00:00+08:00,{p},2022,dibao,civil_affairs,2021-08\n" for i, p in enumerate(ids)),
        encoding="utf-8",
    )
    run = publish(upstream.url, "upstream.subsidy.listed", roster)
    assert run.returncode == 0, run.stderr
    assert "published 3 messages" in run.stderr

    wait_for(lambda: asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM"))["state"]["messages"] == 3, 10, "UPSTREAM")
    first = asyncio.run(api(upstream.url, "$JS.API.STREAM.MSG.GET.UPSTREAM", {"seq": 1}))["message"]
    import base64

    body = json.loads(base64.b64decode(first["data"]))
    assert body["coverage_year"] == 2022 and body["id_number"] == ids[0]  # a number, not "2022"
    assert "Nats-Msg-Id: r0" in base64.b64decode(first["hdrs"]).decode()

    again = publish(upstream.url, "upstream.subsidy.listed", roster)  # sent twice: deduplicated
    assert again.returncode == 0
    intake = asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM_UNATTRIBUTED"))
    assert intake["state"]["messages"] == 3
    assert asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM"))["state"]["messages"] == 3


def test_a_roster_published_as_a_sender_reaches_that_senders_intake(upstream: EmbeddedNatsServer, tmp_path: Path) -> None:
    """``--sender`` plays a sender on a server without accounts: the messages go where that
    sender's account import would deliver them, and only that sender's ids deduplicate them."""
    roster = tmp_path / "dibao.csv"
    roster.write_text(ROSTER + f"r0,2021-08-20T09:00:00+08:00,{people(1, 'sender')[0]},2022,dibao,civil_affairs,2021-08\n")
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "publish", "upstream.subsidy.listed", str(roster), "--nats-url", upstream.url,
         "--sender", "civil_affairs"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    publish(upstream.url, "upstream.subsidy.listed", roster)  # the same msg_id, unattributed: another message
    intake = asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM_CIVIL_AFFAIRS", {"subjects_filter": ">"}))
    assert intake["state"]["subjects"] == {"upstream.civil_affairs.subsidy.listed": 1}
    wait_for(lambda: asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM"))["state"]["messages"] == 2, 10, "UPSTREAM")


def test_a_csv_row_the_schema_refuses_names_its_line(upstream: EmbeddedNatsServer, tmp_path: Path) -> None:
    roster = tmp_path / "bad.csv"
    roster.write_text(ROSTER + "r1,2021-08-20T09:00:00+08:00,x,twenty,dibao,civil_affairs,2021-08\n", encoding="utf-8")
    run = publish(upstream.url, "upstream.subsidy.listed", roster)
    assert run.returncode != 0
    assert "line 2" in run.stderr and "coverage_year" in run.stderr


def test_a_file_with_a_bad_line_is_refused_whole_naming_the_line_and_nothing_is_published(
    upstream: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Given a JSON-lines file whose third line is not JSON, when it is published, then the
    command says which line in one line (no traceback) and UPSTREAM holds none of the lines
    before it."""
    lines = tmp_path / "payments.jsonl"
    lines.write_text('{"msg_id": "p1"}\n{"msg_id": "p2"}\n{"msg_id": "p3",\n', encoding="utf-8")
    run = publish(upstream.url, "upstream.payment.received", lines)
    assert run.returncode != 0
    assert "line 3: not JSON" in run.stderr and "nothing was published" in run.stderr
    assert "Traceback" not in run.stderr
    assert asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM"))["state"]["messages"] == 0


def test_a_missing_file_and_a_missing_server_are_one_line_errors(tmp_path: Path) -> None:
    """Given no such file, or no server to publish to (no --nats-url, NATS_URL or running serve),
    then the command says so in one line and exits non-zero, without a traceback."""
    missing = publish("nats://127.0.0.1:1", "upstream.payment.received", tmp_path / "nope.jsonl")
    assert missing.returncode != 0 and "nope.jsonl: No such file" in missing.stderr and "Traceback" not in missing.stderr
    lines = tmp_path / "one.jsonl"
    lines.write_text('{"msg_id": "p1"}\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    no_server = subprocess.run(
        [sys.executable, "-m", "service.cli", "publish", "upstream.payment.received", str(lines), "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert no_server.returncode != 0 and "no NATS server" in no_server.stderr and "Traceback" not in no_server.stderr
    unreachable = publish("nats://127.0.0.1:1", "upstream.payment.received", lines)
    assert unreachable.returncode != 0 and "cannot publish to NATS" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_the_log_level_may_follow_the_command(tmp_path: Path) -> None:
    """`ledger COMMAND --log-level warning` is accepted as `ledger --log-level warning COMMAND`
    is (argparse used to refuse it: "unrecognized arguments")."""
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "status", "--log-level", "warning", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "unrecognized arguments" not in run.stderr
    assert run.returncode == 1 and "no ledger in" in run.stderr
