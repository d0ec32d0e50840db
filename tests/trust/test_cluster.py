"""The ledger on a three-node JetStream cluster (three nats-server processes on loopback) while
nodes are killed: every acknowledged upstream message keeps exactly one outcome, the replicas of
LEDGER (and UPSTREAM, REJECTED) end identical, node by node, read from each node's own files; the
service never stops, its views catch up, its coverage changes reach KV and COVERAGE, and it still
stops gracefully. Every stream it creates is R3.

Figures (``TRUST-FIGURES`` lines with ``pytest -s``, and ``figures.json`` in the test's tmp dir):
messages ingested, outcomes lost and doubled (both must be 0), which nodes were killed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.streams import wait_for_rejected
from tests.integration.ingest_support import season
from tests.trust.cluster import (
    LedgerServe,
    NatsCluster,
    acked_up_to,
    ingestion_done,
    last_event_seq,
    outcome_figures,
    publish_reliably,
    read_copy,
    report,
    stream_messages,
    views_caught_up,
    views_state,
    wait_until,
)

pytestmark = pytest.mark.fault

STREAMS = ("LEDGER", "UPSTREAM", "REJECTED")
PEOPLE = 2500
"""Two messages each (enrollment, payment; every tenth payment the wrong amount): 5,000."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "cluster") as cluster:
        yield cluster


@pytest.fixture
def serves() -> Iterator[list[LedgerServe]]:
    """The ``ledger serve`` processes a test starts, killed afterwards if still running."""
    started: list[LedgerServe] = []
    yield started
    for serve in started:
        if serve.alive:
            serve.kill()


def test_losing_one_node_then_another_keeps_one_outcome_per_message_and_identical_replicas(
    cluster: NatsCluster, serves: list[LedgerServe], tmp_path: Path
) -> None:
    started = time.monotonic()
    messages = season(PEOPLE, seed="cluster")
    first, second, third = messages[:2400], messages[2400:3700], messages[3700:]
    # serve is given every server (NATS_URL's comma-separated form) and fails over among them.
    serve = LedgerServe(cluster.url, tmp_path / "data", tmp_path / "serve.log", "--replicas", "3").start()
    serves.append(serve)
    urls = cluster.urls

    def floor() -> int:
        return acked_up_to(cluster.running_urls())

    wait_until(lambda: ingest_state_ready(cluster), 60, "the service to be ready", alive=serve)
    acked: set[str] = set()
    kills: list[dict[str, Any]] = []

    def kill(victim: int, why: str) -> None:
        kills.append({"node": cluster.node_name(victim), "why": why, "acked_at_kill": floor()})
        cluster.kill(victim)

    # 1. Kill the LEDGER stream's leader in the middle of ingestion; publish more while it is down.
    acked |= asyncio.run(publish_reliably(urls, first))
    wait_until(lambda: floor() >= 800, 60, "some messages to be applied", alive=serve)
    victim1 = cluster.leader("LEDGER")
    kill(victim1, "LEDGER leader")
    acked |= asyncio.run(publish_reliably(cluster.running_urls(), second))
    at_kill = kills[-1]["acked_at_kill"]
    kills[-1]["recovered_in_s"] = round(
        wait_until(lambda: floor() >= at_kill + 800, 90, "progress with one node down", alive=serve), 1
    )
    cluster.restart(victim1)

    # 2. Then another node: the ingestion consumer's leader, else the LEDGER leader, else any
    #    other than the one just restarted.
    acked |= asyncio.run(publish_reliably(urls, third))
    wait_until(lambda: floor() >= len(first) + len(second) + 300, 90, "more messages to be applied", alive=serve)
    roles = {"ingestion consumer leader": cluster.leader("UPSTREAM", "ledger-ingest"), "LEDGER leader": cluster.leader("LEDGER")}
    why, victim2 = next(((w, i) for w, i in roles.items() if i != victim1), ("a follower", (victim1 + 1) % cluster.size))
    kill(victim2, why)
    at_kill = kills[-1]["acked_at_kill"]
    kills[-1]["recovered_in_s"] = round(
        wait_until(lambda: floor() >= min(at_kill + 300, len(messages)), 90, "progress with another node down", alive=serve), 1
    )
    cluster.restart(victim2)

    wait_until(lambda: ingestion_done(cluster.running_urls(), len(messages)), 120, "every message to be applied", alive=serve)
    for stream in STREAMS:
        wait_until(lambda stream=stream: cluster.converged(stream), 60, f"{stream}'s replicas to converge", alive=serve)
    url = cluster.urls[victim2]  # read through the node that came back last
    asyncio.run(wait_for_rejected(url))  # REJECTED is derived from LEDGER: let it catch up
    ledger_seq, rejected_seq = last_event_seq(url), stream_messages(url, "REJECTED")
    views = tmp_path / "data" / "views.sqlite"
    wait_until(lambda: views_caught_up(views, ledger_seq, rejected_seq), 60, "the views to catch up", alive=serve)
    wait_until(lambda: views_state(views)["outbox"] == 0, 60, "coverage changes to reach KV and COVERAGE", alive=serve)
    assert serve.alive and serve.started == 1, "the service ran through both failures without a restart"

    figures = outcome_figures(url, messages, acked)
    replication = {s: cluster.stream_info(s)["config"]["num_replicas"] for s in (*STREAMS, "COVERAGE", "KV_coverage")}
    view_counts = views_state(views)
    stopped = serve.stop(timeout=30)
    cluster.stop()
    copies = {s: [read_copy(cluster, i, s, tmp_path / "copies") for i in range(cluster.size)] for s in STREAMS}
    report(tmp_path, "cluster: SIGKILL two nodes in turn during ingestion", {
        **figures,
        "kills": kills,
        "upstream_messages": copies["UPSTREAM"][0].messages,
        "replicas": replication,
        "copies": {s: [{"node": c.node, "messages": c.messages, "last_seq": c.last_seq, "sha256": c.digest[:16]} for c in copies[s]]
                   for s in STREAMS},
        "views": view_counts,
        "serve_exit_on_sigterm": stopped,
        "seconds": round(time.monotonic() - started, 1),
    })  # fmt: skip

    assert figures["ingested"] == len(messages)
    assert figures["lost"] == 0, f"acknowledged messages without an outcome: {figures['lost_examples']}"
    assert figures["doubled"] == 0, f"messages with two outcomes: {figures['doubled_examples']}"
    assert not figures["unexpected_rejections"] and not figures["missing_rejections"], "each person's facts in order"
    assert replication == dict.fromkeys(replication, 3), f"every stream R3: {replication}"
    assert stopped == 0, "serve stops gracefully on SIGTERM"
    for stream in STREAMS:
        assert len({(c.messages, c.first_seq, c.last_seq, c.digest) for c in copies[stream]}) == 1, (
            f"{stream} differs between the nodes' files: {copies[stream]}"
        )
    ledger, upstream, rejected = (copies[s][0].messages for s in ("LEDGER", "UPSTREAM", "REJECTED"))
    assert figures["ledger_events"] == view_counts["audit"], "one audit row per LEDGER event"
    # LEDGER also holds each rejection and a tracking record per save, beside the events.
    assert ledger > figures["ledger_events"] + rejected, "rejections and positions recorded with the events"
    assert rejected == figures["rejected_messages"] == view_counts["rejections"], "one row per REJECTED message"
    # UPSTREAM may hold a message twice if the server's deduplication missed a resend across a
    # leader change (figure upstream_messages); the ledger's own msg_id check keeps one outcome.
    assert upstream >= len(messages), f"UPSTREAM holds {upstream} of {len(messages)} acknowledged messages"
    assert view_counts["coverage"] == figures["enrollments"] == PEOPLE, "one coverage row per (person, year) enrollment"


def ingest_state_ready(cluster: NatsCluster) -> bool:
    try:
        cluster.stream_info("UPSTREAM", "ledger-ingest")
    except AssertionError:
        return False
    return True


def test_serve_takes_every_server_of_the_cluster_comma_separated(
    cluster: NatsCluster, serves: list[LedgerServe], tmp_path: Path
) -> None:
    serve = LedgerServe(cluster.url, tmp_path / "data", tmp_path / "serve.log", "--replicas", "3").start()
    serves.append(serve)
    wait_until(lambda: ingest_state_ready(cluster), 30, "the service to be ready", alive=serve)
    time.sleep(1.0)
    assert serve.alive


def test_serve_replicates_the_downstream_coverage_stream_and_bucket(
    cluster: NatsCluster, serves: list[LedgerServe], tmp_path: Path
) -> None:
    serve = LedgerServe(cluster.urls[0], tmp_path / "data", tmp_path / "serve.log", "--replicas", "3").start()
    serves.append(serve)
    wait_until(lambda: ingest_state_ready(cluster), 30, "the service to be ready", alive=serve)
    replicas = {s: cluster.stream_info(s)["config"]["num_replicas"] for s in (*STREAMS, "COVERAGE", "KV_coverage")}
    assert replicas == dict.fromkeys(replicas, 3)
