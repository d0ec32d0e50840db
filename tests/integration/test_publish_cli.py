"""Integrators publish contract messages with ``ledger publish``: JSON lines or a CSV roster."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.streams import upstream_spec
from ledger.jetstream.server import EmbeddedNatsServer
from tests.integration.ingest_support import ROOT, api, people

ROSTER = "msg_id,occurred_at,id_number,coverage_year,subsidy_category,department,roster\n"


def publish(url: str, subject: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", "publish", subject, str(path), "--nats-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def upstream(tmp_path: Path) -> EmbeddedNatsServer:
    server = EmbeddedNatsServer(tmp_path / "nats").start()

    async def create() -> None:
        async def call(subject: str, request: dict | None = None) -> dict:
            return await api(server.url, subject, request)

        await upstream_spec().ensure(call)

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

    info = asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM"))
    assert info["state"]["messages"] == 3
    first = asyncio.run(api(upstream.url, "$JS.API.STREAM.MSG.GET.UPSTREAM", {"seq": 1}))["message"]
    import base64

    body = json.loads(base64.b64decode(first["data"]))
    assert body["coverage_year"] == 2022 and body["id_number"] == ids[0]  # a number, not "2022"
    assert "Nats-Msg-Id: r0" in base64.b64decode(first["hdrs"]).decode()

    again = publish(upstream.url, "upstream.subsidy.listed", roster)  # sent twice: deduplicated
    assert again.returncode == 0
    assert asyncio.run(api(upstream.url, "$JS.API.STREAM.INFO.UPSTREAM"))["state"]["messages"] == 3


def test_a_csv_row_the_schema_refuses_names_its_line(upstream: EmbeddedNatsServer, tmp_path: Path) -> None:
    roster = tmp_path / "bad.csv"
    roster.write_text(ROSTER + "r1,2021-08-20T09:00:00+08:00,x,twenty,dibao,civil_affairs,2021-08\n", encoding="utf-8")
    run = publish(upstream.url, "upstream.subsidy.listed", roster)
    assert run.returncode != 0
    assert "line 2" in run.stderr and "coverage_year" in run.stderr
