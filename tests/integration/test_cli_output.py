"""What ``ledger`` prints can be trusted: tables at 80 columns keep every value whole, and every
command that prints results prints them as JSON on stdout with ``--format json`` (notes on stderr).

Run as a user runs it (a subprocess, output captured: not a terminal) on a small demo's ledger.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len

from tests.integration.ingest_support import ROOT


def ledger(*args: str, columns: int = 80, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "LEDGER_PERSON_KEY_SECRET", "LEDGER_VIEWS")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished demo's ledger (the smallest season) and its summary, from ``demo --format json``."""
    data_dir = tmp_path_factory.mktemp("out") / "demo"
    run = ledger("demo", "--people", "200", "--data-dir", str(data_dir), "--format", "json", timeout=300)
    summary = json.loads(run.stdout)  # stdout is the JSON document and nothing else
    assert summary["status"] == "done" and summary["people"] == 200, run.stderr[-2000:]
    assert "publishing" in run.stderr, "progress goes to stderr"
    return data_dir, summary


def cells(output: str) -> list[str]:
    """The values of the tables in ``output``, each put back together from its lines: a cell
    wrapped or folded over several lines of a record block (``field │ value``, the field cell
    empty on the lines that continue it) is one value; whitespace is dropped, since wrapping moves it."""
    values: list[str] = []
    for line in output.splitlines():
        if not line.startswith(("│", "┃")):
            continue
        parts = [part.strip() for part in line.strip("│┃").replace("┃", "│").split("│")]
        if len(parts) == 2 and not parts[0] and values:
            values[-1] += parts[1].replace(" ", "")
        else:
            values.extend(part.replace(" ", "") for part in parts)
    return values


def shown(value: object) -> str:
    """A value as a table cell shows it (lists and objects as JSON), without whitespace."""
    text = "" if value is None else json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)
    return "".join(text.split())


def test_a_person_s_audit_at_80_columns_has_no_longer_line_and_every_value_whole(demo: tuple[Path, dict]) -> None:
    # Given a person with a history, and their audit as JSON (the whole data)
    data_dir, summary = demo
    person = summary["example_id_number"]
    document = json.loads(ledger("audit", person, "--data-dir", str(data_dir), "--format", "json").stdout)
    assert document["timeline"], "the example resident has events"
    # When the audit is printed as tables into a pipe at 80 columns
    run = ledger("audit", person, "--data-dir", str(data_dir))
    assert run.returncode == 0, run.stderr
    # Then no line is wider than 80 columns
    assert max(cell_len(line) for line in run.stdout.splitlines()) <= 80
    assert [line for line in run.stdout.splitlines() if line.startswith("│") and "…" in line] == [], "no cell is cut"
    # And every value of the timeline, the coverage and the flags is in it, whole
    printed = set(cells(run.stdout))
    columns = ("recorded_at", "effective_at", "what", "coverage_year", "actor", "msg_id", "policy_version", "position")
    missing = [
        (row[c], c) for row in document["timeline"] for c in columns if shown(row.get(c)) and shown(row.get(c)) not in printed
    ]
    shown_coverage = ("coverage_year", "status", "category", "channel", "coverage_start", "coverage_end", "benefit_start",
                      "waiting_months", "subsidy_category", "paid_fen", "ended_reason")  # the table's columns
    missing += [(v, k) for row in document["coverage"] for k, v in row.items()
                if k in shown_coverage and shown(v) and shown(v) not in printed]  # fmt: skip
    missing += [(v, k) for row in document["flags"] for k, v in row.items()
                if k in ("rule", "position", "detail", "evidence", "parameters") and shown(v) and shown(v) not in printed]  # fmt: skip
    assert missing == []


def test_the_report_at_80_columns_keeps_every_district_s_figures(demo: tuple[Path, dict]) -> None:
    # Given the district report as CSV (money in fen: the data)
    data_dir, _ = demo
    rows = list(csv.DictReader(io.StringIO(ledger("report", "--year", "2022", "--format", "csv", "--data-dir", str(data_dir)).stdout)))
    assert rows
    # When the whole report is printed into a pipe at 80 columns
    run = ledger("report", "--year", "2022", "--on", "2022-01-31", "--data-dir", str(data_dir))
    assert run.returncode == 0, run.stderr
    # Then it fits, and each district's name, target and enrolled count are there whole
    assert max(cell_len(line) for line in run.stdout.splitlines()) <= 80
    printed = set(cells(run.stdout))
    for row in rows:
        assert {shown(row["district_name"]), shown(row["target"]), shown(row["enrolled"])} <= printed, row
    # And on a wide terminal the same report is one row per district, across
    wide = ledger("report", "--year", "2022", "--on", "2022-01-31", "--data-dir", str(data_dir), columns=200)
    assert any(rows[0]["district_name"] in line and rows[0]["district"] in line for line in wide.stdout.splitlines())


def test_verify_and_replay_print_their_result_as_json(demo: tuple[Path, dict]) -> None:
    data_dir, _ = demo
    pinned = data_dir.parent / "pinned-ledger-key.pem"  # the ledger's public key, pinned outside its data directory
    pinned.write_text(ledger("keys", "public", "--data-dir", str(data_dir)).stdout)
    # When the ledger is verified with --format json
    verify = ledger("verify", "--data-dir", str(data_dir), "--trust-key", str(pinned), "--format", "json")
    # Then stdout is one JSON document saying it is intact, with the counts
    result = json.loads(verify.stdout)
    assert verify.returncode == 0 and result["intact"] is True and result["findings"] == []
    assert result["events"] > 0 and result["checkpoints"] >= 1
    # When it is replayed with --format json into a database under the data directory
    replay = ledger("replay", "--data-dir", str(data_dir), "--views", f"sqlite:///{data_dir / 'replayed.sqlite'}",
                    "--format", "json")  # fmt: skip
    # Then stdout is the replay's result as JSON, the progress went to stderr
    done = json.loads(replay.stdout)
    assert replay.returncode == 0 and done["ledger_events"] >= result["events"] > 0
    assert "replayed.sqlite" in done["views"]
    # And as CSV, a header and one row
    verify_csv = list(csv.DictReader(io.StringIO(ledger("verify", "--data-dir", str(data_dir), "--trust-key", str(pinned), "--format", "csv").stdout)))
    assert [row["intact"] for row in verify_csv] == ["True"]


def test_publish_prints_its_summary_as_json(tmp_path: Path) -> None:
    # Given a running NATS with the UPSTREAM stream and a file of one message
    import asyncio

    from consumers.streams import ensure_ingest_streams
    from ledger.jetstream.server import EmbeddedNatsServer
    from tests.integration.ingest_support import api

    lines = tmp_path / "payments.jsonl"
    lines.write_text('{"msg_id": "p1"}\n{"msg_id": "p2"}\n', encoding="utf-8")
    with EmbeddedNatsServer(tmp_path / "nats") as server:

        async def create() -> None:
            async def call(subject: str, request: dict | None = None) -> dict:
                return await api(server.url, subject, request)

            await ensure_ingest_streams(call)

        asyncio.run(create())
        # When the file is published with --format json
        run = ledger("publish", "upstream.payment.received", str(lines), "--nats-url", server.url, "--format", "json")
    # Then stdout is the summary as JSON; the note stays on stderr
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["published"] == 2 and json.loads(run.stdout)["subject"] == "upstream.payment.received"
    assert "published 2 messages" in run.stderr
