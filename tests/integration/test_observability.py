"""Operating ``ledger serve``: its metrics count what the ingestion decided, /readyz says when it
can serve and why not, the alert rules name only metrics it exports, and its logs can be JSON
(real nats-servers; the service in this process, built as ``serve`` builds it)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from prometheus_client.parser import text_string_to_metric_families

from ledger.jetstream.server import EmbeddedNatsServer
from service.bootstrap import running
from service.observability import FAMILIES, JsonFormatter, Observability, exported_names
from service.settings import Settings
from tests.integration.ingest_support import CIPHER_KEY, ROOT, SECRET, T0, people, signing_key_for_tests, wait_for

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
ID, OTHER = people(2, "observability")
ENROLLMENT = {"msg_id": "e-1", "occurred_at": T0, "id_number": ID, "coverage_year": 2022, "category": "resident",
              "channel": "wechat", "district": "340104"}  # fmt: skip


# ---- helpers ---------------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) → value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await asyncio.to_thread(get, f"{base}/metrics")
    assert status == 200
    return samples(text)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def outcome(scraped: dict, kind: str, reason: str = "") -> float:
    return scraped[("ledger_ingest_messages_total", (("outcome", kind), ("reason", reason)))]


def value(scraped: dict, name: str, **labels: str) -> float | None:
    return scraped.get((name, tuple(sorted(labels.items()))))


# ---- the service in this process, observed ---------------------------------------------------------


async def test_the_metrics_count_each_outcome_and_readiness_follows_the_nats_connection(tmp_path: Path) -> None:
    """Given a serve (in this process) with its metrics on a free port, when a good enrollment, the
    same enrollment again under another Nats-Msg-Id and a malformed message are published and a
    coverage question is asked, then /metrics counts one recorded, one duplicate and one
    rejected as malformed (nothing else), no lag once caught up, the question in the latency
    histogram, and /readyz is 200 for the writer; when the nats-server stops, /readyz is 503
    naming the connection while /healthz still answers, and ready again once it is back."""
    server = EmbeddedNatsServer(tmp_path / "nats").start()
    settings = Settings.read(
        {}, nats_url=server.url, data_dir=tmp_path / "data", person_key_secret=SECRET, cipher_key=CIPHER_KEY,
        signing_key_file=signing_key_for_tests(), metrics_address="127.0.0.1:0",
    )
    try:
        async with running(settings) as service:
            assert service.observability is not None
            service.observability.refresh_interval = 0.5
            base = service.observability.url

            async def ready() -> bool:
                return (await asyncio.to_thread(get, f"{base}/readyz"))[0] == 200

            await until(ready, "the writer to be ready")
            status, body = await asyncio.to_thread(get, f"{base}/readyz")
            assert json.loads(body)["role"] == "writer" and json.loads(body)["writer"] == service.ingestion.lease.holder

            # When a good message, its harmless repeat and a malformed one are published
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            data = json.dumps(ENROLLMENT).encode()
            await js.publish("upstream.enrollment.requested", data, headers={"Nats-Msg-Id": "e-1"})
            await js.publish("upstream.enrollment.requested", data, headers={"Nats-Msg-Id": "e-1~again"})
            await js.publish("upstream.enrollment.requested", b"{not json", headers={"Nats-Msg-Id": "broken"})
            question = {"id_number": ID, "date": "2022-03-01"}
            reply = json.loads((await nc.request("coverage.query", json.dumps(question).encode(), timeout=10)).data)
            await nc.close()
            assert "error" not in reply

            async def caught_up() -> bool:
                scraped = await scrape(base)
                return (
                    value(scraped, "ledger_ingest_decided_total") == 3
                    and value(scraped, "ledger_upstream_last_seq") == 3
                    and value(scraped, "ledger_ingest_lag_messages") == 0
                    and value(scraped, "ledger_rejected_lag_messages") == 0
                    # the stream gauges are refreshed every refresh_interval, the counters at once:
                    # wait until they have seen the rejection too (and REJECTED its copy)
                    and value(scraped, "ledger_rejections_recorded") == value(scraped, "ledger_rejected_messages") == 1
                    and value(scraped, "ledger_views_lag_messages", stream="LEDGER") == 0
                )

            await until(caught_up, "the ingestion, REJECTED and the views to catch up")
            scraped = await scrape(base)
            # Then each outcome is counted once, by kind and reason
            assert (outcome(scraped, "recorded"), outcome(scraped, "duplicate"), outcome(scraped, "rejected", "malformed")) == (1, 1, 1)
            others = {k: v for k, v in scraped.items() if k[0] == "ledger_ingest_messages_total" and v and
                      k[1] not in ((("outcome", "recorded"), ("reason", "")), (("outcome", "duplicate"), ("reason", "")),
                                   (("outcome", "rejected"), ("reason", "malformed")))}  # fmt: skip
            assert others == {}
            assert value(scraped, "ledger_ingest_position") == 3
            assert value(scraped, "ledger_parked_messages") == 0
            assert value(scraped, "ledger_rejections_recorded") == value(scraped, "ledger_rejected_messages") == 1
            assert value(scraped, "ledger_writer") == 1 and value(scraped, "ledger_writer_known") == 1
            assert value(scraped, "ledger_coverage_query_seconds_count") == 1
            assert value(scraped, "ledger_coverage_queries_total") == 1
            assert value(scraped, "ledger_checkpoint_interval_seconds") == settings.checkpoint_seconds
            assert value(scraped, "process_resident_memory_bytes") is not None
            # And every metric the rules and the docs name is there
            names = {name for name, _labels in scraped}
            assert exported_names() - names == set()

            # When the nats-server stops
            server.stop()

            async def not_ready() -> bool:
                return (await asyncio.to_thread(get, f"{base}/readyz"))[0] == 503

            await until(not_ready, "/readyz to say 503")
            status, body = await asyncio.to_thread(get, f"{base}/readyz")
            # Then /readyz names the connection, and the process still answers /healthz
            assert json.loads(body)["reasons"] == ["not connected to NATS"]
            assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")
            assert value(await scrape(base), "ledger_nats_connected") == 0

            # When it is back, the service is ready again
            await asyncio.to_thread(server.start)
            await until(ready, "/readyz to say 200 again")
    finally:
        server.stop()


async def test_readiness_waits_for_every_part_and_a_standby_needs_a_known_writer(tmp_path: Path) -> None:
    """Given the endpoints started before anything else (as serve starts them), then /readyz is
    503 naming each missing part; given a serve that stands by behind another one's lease, then
    it is ready while that writer is known, and not once the lease is gone."""
    async with Observability("127.0.0.1:0") as observed:
        status, body = await asyncio.to_thread(get, f"{observed.url}/readyz")
        assert status == 503
        assert json.loads(body)["reasons"] == [
            "not connected to NATS", "the projections have not started", "the writer role is not decided yet"
        ]  # fmt: skip
        assert await asyncio.to_thread(get, f"{observed.url}/nothing") == (404, "not found: /metrics, /healthz, /readyz\n")

    server = EmbeddedNatsServer(tmp_path / "nats").start()
    try:
        first = Settings.read({}, nats_url=server.url, data_dir=tmp_path / "first", person_key_secret=SECRET, cipher_key=CIPHER_KEY,
                              signing_key_file=signing_key_for_tests(), lease_seconds=2.0)  # fmt: skip
        second = Settings.read({}, nats_url=server.url, data_dir=tmp_path / "second", person_key_secret=SECRET, cipher_key=CIPHER_KEY,
                               signing_key_file=signing_key_for_tests(), lease_seconds=2.0, metrics_address="127.0.0.1:0")  # fmt: skip
        async with running(first) as writer:
            assert writer.observability is None  # off unless an address is given
            await until(lambda: _true(writer.ingestion.writing), "the first serve to write")
            async with running(second) as standby:
                observed = standby.observability
                assert observed is not None
                observed.refresh_interval = 0.2
                await until(lambda: _true(standby.ingestion.role == "standby"), "the second serve to stand by")

                async def readiness() -> tuple[int, dict[str, Any]]:
                    status, body = await asyncio.to_thread(get, f"{observed.url}/readyz")
                    return status, json.loads(body)

                async def knows_the_writer() -> bool:
                    return (await readiness())[0] == 200

                await until(knows_the_writer, "the standby to know the writer")
                status, body = await readiness()
                assert body["role"] == "standby" and body["writer"] == writer.ingestion.lease.holder
                assert value(await scrape(observed.url), "ledger_writer") == 0

                # When the writer's lease is deleted behind its back and no one can take it
                # (the standby's own contention is stopped first)
                await standby.ingestion.close()
                await writer.ingestion.close()

                async def lease_gone() -> bool:
                    return (await readiness())[0] == 503

                await until(lease_gone, "the standby to see no writer")
                # Then the standby is not ready, and says why
                assert (await readiness())[1]["reasons"] == ["standing by, but no writer holds the lease"]
                assert value(await scrape(observed.url), "ledger_writer_known") == 0
    finally:
        server.stop()


async def _true(condition: bool) -> bool:
    return condition


# ---- the alert rules ----------------------------------------------------------------------------------


def _rules(text: str) -> list[dict[str, Any]]:
    """The rules of a Prometheus rules file (kept JSON-compatible YAML: no YAML parser is needed)."""
    return [rule for group in json.loads(text)["groups"] for rule in group["rules"]]


def test_every_alert_rule_names_only_metrics_serve_exports_and_the_docs_show_the_same_rules() -> None:
    """Given deploy/prometheus/alerts.yml, then it parses, each rule has an expression, a
    severity and a summary, and every ledger_* series it names is one the module exports (and
    describes to the registry); and docs/operations.md shows the same rules."""
    rules = _rules(ALERTS.read_text())
    assert {"LedgerNoWriter", "LedgerIngestionLagGrowing", "LedgerMessagesParked", "LedgerViewsBehind", "LedgerRejectedBehind",
            "LedgerCheckpointOverdue", "LedgerCoverageQueriesSlow"} <= {r["alert"] for r in rules}  # fmt: skip
    described = {f.name for f in FAMILIES}
    for rule in rules:
        assert rule["expr"] and rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        named = set(re.findall(r"\bledger_[a-z0-9_]+", rule["expr"]))
        assert named, rule["alert"]
        assert named - exported_names() == set(), rule["alert"]
        assert {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in named} - described - {"ledger_coverage_query_seconds"} == set()
    block = OPERATIONS.read_text().split("<!-- alert-rules -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert _rules(block) == rules


# ---- JSON logs -----------------------------------------------------------------------------------------


def test_a_json_log_record_is_one_object_with_the_messages_pairs_as_fields() -> None:
    """Given a record like serve's, with key=value pairs, a quoted reason and an exception, then
    the JSON line holds time, level, logger, the whole message, each pair as a field (numbers as
    numbers, quotes removed) and the traceback."""
    try:
        raise RuntimeError("no answer")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "consumers.app", logging.WARNING, __file__, 1, "event=stepped_down reason=%r epoch=%d holder=%s error=%r",
        ("the writer lease expired", 7, "host:12:ab", RuntimeError("a b")), exc_info,
    )  # fmt: skip
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["logger"]) == ("warning", "consumers.app")
    assert entry["message"] == "event=stepped_down reason='the writer lease expired' epoch=7 holder=host:12:ab error=RuntimeError('a b')"
    assert (entry["event"], entry["reason"], entry["epoch"], entry["holder"]) == ("stepped_down", "the writer lease expired", 7, "host:12:ab")
    assert entry["error"] == "RuntimeError('a b')"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert "RuntimeError: no answer" in entry["exception"]


# ---- ledger serve, as operators run it ------------------------------------------------------------------


class Serve:
    """``ledger serve --metrics-address 127.0.0.1:0 --log-format json`` in a child process."""

    def __init__(self, url: str, where: Path) -> None:
        self.stderr = where.with_suffix(".log")
        self.data_dir = where
        env = {**os.environ, "LEDGER_PERSON_KEY_SECRET": SECRET, "LEDGER_CIPHER_KEY": CIPHER_KEY, "PYTHONPATH": str(ROOT),
               "LEDGER_LOG_FORMAT": "json", "LEDGER_SIGNING_KEY_FILE": str(signing_key_for_tests())}  # fmt: skip
        with open(self.stderr, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--nats-url", url, "--data-dir", str(where),
                 "--metrics-address", "127.0.0.1:0"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        """Every line it logged, each parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line.strip()]

    def metrics_url(self) -> str | None:
        urls = [r["url"] for r in self.records() if r.get("event") == "metrics"]
        assert self.process.poll() is None, self.stderr.read_text()[-3000:]
        return urls[0].removesuffix("/metrics") if urls else None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


def test_serve_exports_what_it_decided_and_is_ready_as_writer_and_as_standby_until_nats_is_gone(tmp_path: Path) -> None:
    """Given two `ledger serve --metrics-address 127.0.0.1:0 --log-format json` on one nats-server,
    when an integrator publishes a good enrollment with `ledger publish` and a system sends a
    malformed message, then the writer's /metrics counts one recorded and one rejected as
    malformed, the standby's counts nothing, both /readyz are 200 (the standby naming the
    writer), and every log line is a JSON object; when the nats-server is gone, both /readyz are
    503 naming the connection, and 200 again once it is back."""
    server = EmbeddedNatsServer(tmp_path / "nats").start()
    serves = [Serve(server.url, tmp_path / "first")]
    try:
        wait_for(lambda: serves[0].metrics_url() is not None, 60, "the first serve's metrics")
        base = serves[0].metrics_url()
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, 60, "the first serve to be ready")
        serves.append(Serve(server.url, tmp_path / "second"))
        wait_for(lambda: serves[1].metrics_url() is not None, 60, "the second serve's metrics")
        standby = serves[1].metrics_url()
        wait_for(lambda: get(f"{standby}/readyz")[0] == 200, 60, "the standby to be ready")
        writer_body = json.loads(get(f"{base}/readyz")[1])
        standby_body = json.loads(get(f"{standby}/readyz")[1])
        assert writer_body["role"] == "writer" and standby_body["role"] == "standby"
        assert standby_body["writer"] == writer_body["writer"]

        # When a good enrollment is published with `ledger publish`, and a malformed message
        good = tmp_path / "enrollments.jsonl"
        good.write_text(json.dumps(ENROLLMENT) + "\n")
        published = subprocess.run(
            [sys.executable, "-m", "service.cli", "publish", "upstream.enrollment.requested", str(good), "--nats-url", server.url],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr

        async def malformed() -> None:
            nc = await nats.connect(server.url)
            await nc.jetstream().publish("upstream.payment.received", b'{"msg_id": 7', headers={"Nats-Msg-Id": "broken"})
            await nc.close()

        asyncio.run(malformed())

        def scraped(url: str) -> dict:
            status, text = get(f"{url}/metrics")
            assert status == 200
            return samples(text)

        wait_for(lambda: value(scraped(base), "ledger_ingest_decided_total") == 2, 60, "both messages to be decided")
        wait_for(lambda: value(scraped(base), "ledger_ingest_lag_messages") == 0, 60, "the lag to be read as 0")
        writer, other = scraped(base), scraped(standby)
        # Then the writer counts one recorded and one malformed, the standby nothing
        assert (outcome(writer, "recorded"), outcome(writer, "rejected", "malformed")) == (1, 1)
        assert sum(v for (name, _), v in writer.items() if name == "ledger_ingest_messages_total") == 2
        assert value(other, "ledger_ingest_decided_total") == 0
        assert (value(writer, "ledger_writer"), value(other, "ledger_writer")) == (1, 0)
        wait_for(lambda: value(scraped(standby), "ledger_ingest_position") == 2, 60, "the standby to read the position")
        # And every line either serve logged is a JSON object with its fields
        for serve in serves:
            records = serve.records()
            assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert any(r.get("event") == "writer" and isinstance(r.get("epoch"), int) for s in serves for r in s.records())

        # When the nats-server is gone
        server.stop()
        for url in (base, standby):
            wait_for(lambda u=url: get(f"{u}/readyz")[0] == 503, 60, "/readyz to say 503")
            # Then /readyz says why, and the process still answers
            assert json.loads(get(f"{url}/readyz")[1])["reasons"] == ["not connected to NATS"]
            assert get(f"{url}/healthz") == (200, "ok\n")

        # When it is back, both are ready again (and can stop gracefully)
        server.start()
        for url in (base, standby):
            wait_for(lambda u=url: get(f"{u}/readyz")[0] == 200, 60, "/readyz to say 200 again")
    finally:
        codes = [serve.stop() for serve in reversed(serves)]
        server.stop()
    assert codes == [0, 0], [s.stderr.read_text()[-2000:] for s in serves]
