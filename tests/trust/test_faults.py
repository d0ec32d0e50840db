"""Faults beyond SIGKILL, on real nats-servers, each with a season whose verdicts depend on state
(``stateful_season``: payments before their enrollment, payments after a death, reused cash
receipts, repeated msg_ids), so that a message decided a second time shows: every UPSTREAM
sequence must have exactly one outcome, the one its place in the published order calls for,
counted from three independent sources in LEDGER (``tests/trust/outcomes.py``), and the live
views must equal a fresh ``ledger replay``.

- acks lost: ``ledger serve`` reaches the server through a TCP proxy that drops every connection
  several times mid-ingestion (batches being appended, acknowledgements in flight);
- the ingestion's durable consumer deleted mid-ingestion, twice, and recreated by the service;
- two ``ledger serve`` on one server: the writer frozen (SIGSTOP) past its lease while the
  standby takes over, then thawed: it must not write a single event;
- the LEDGER stream's leader frozen (SIGSTOP) in a three-node cluster, then thawed.

Figures (``TRUST-FIGURES`` lines with ``pytest -s``, and ``figures.json`` in each test's tmp dir):
messages, outcomes per message, takeover time, parked count, the faults as they landed. No
timing is asserted; timeouts are only for waiting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from consumers.streams import SOURCE_CATCH_UP
from contract.subjects import WRITER_BUCKET, WRITER_KEY
from ledger.jetstream.server import EmbeddedNatsServer
from tests.integration.ingest_support import StatefulSeason, stateful_season
from tests.projections.support import dump
from tests.trust.cluster import (
    LedgerServe,
    NatsCluster,
    _api,
    acked_up_to,
    ingest_state,
    ingestion_done,
    last_event_seq,
    publish_reliably,
    report,
    run_replay,
    stream_messages,
    views_caught_up,
    views_state,
    wait_until,
)
from tests.trust.outcomes import (
    OutcomeCounts,
    assert_exactly_one_outcome,
    count_outcomes,
    mismatched,
    rejected_caught_up,
    upstream_order,
)
from tests.trust.proxy import TcpProxy

pytestmark = pytest.mark.fault

PEOPLE = 400
"""About 1,080 messages (see ``stateful_season``)."""
DROPS = 6
PAUSE_S = 10.0
"""How long the LEDGER leader stays frozen."""
PARTITION_S = 12.0
"""Longer than the writer lease (a few seconds)."""
CONSUMER = "ledger-ingest"
LEASE_BUCKET, LEASE_KEY = WRITER_BUCKET, WRITER_KEY


@pytest.fixture
def serves() -> Iterator[list[LedgerServe]]:
    """The ``ledger serve`` processes a test starts: thawed and killed afterwards if running."""
    started: list[LedgerServe] = []
    yield started
    for serve in started:
        if serve.alive:
            serve.thaw()
            serve.kill()


# ---- the proxy itself ------------------------------------------------------------------------------


def test_the_proxy_drops_every_client_connection_and_the_client_reconnects_through_it(server: EmbeddedNatsServer) -> None:
    async def scenario() -> dict[str, Any]:
        with TcpProxy.to(server.url) as proxy:
            events: list[str] = []
            reconnected = asyncio.Event()

            async def on_disconnect() -> None:
                events.append("disconnected")

            async def on_reconnect() -> None:
                events.append("reconnected")
                reconnected.set()

            nc = await nats.connect(proxy.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                                    disconnected_cb=on_disconnect, reconnected_cb=on_reconnect)  # fmt: skip
            try:
                got: list[bytes] = []

                async def received(msg: Any) -> None:
                    got.append(msg.data)

                await nc.subscribe("probe", cb=received)
                await nc.flush()
                first = await asyncio.to_thread(proxy.drop)
                await asyncio.wait_for(reconnected.wait(), 10)
                await nc.publish("probe", b"after")  # the subscription was restored on reconnect
                await nc.flush()
                await asyncio.sleep(0.2)
                # Paused: bytes wait in the proxy; nothing reaches the server or the client until
                # it resumes. (No flush while paused: nats-py breaks on a PONG after a flush timeout.)
                await asyncio.to_thread(proxy.pause)
                await nc.publish("probe", b"while paused")
                await asyncio.sleep(0.5)
                during_pause = list(got)
                await asyncio.to_thread(proxy.resume)
                await nc.flush(timeout=5)
                await asyncio.sleep(0.2)
                return {"dropped": first, "events": events, "got": got, "during_pause": during_pause,
                        "accepted": proxy.accepted, "connected_through_proxy": nc.connected_url.port == proxy.port}  # fmt: skip
            finally:
                await nc.close()

    result = asyncio.run(scenario())
    assert result["dropped"] == 1, result
    assert result["events"][:2] == ["disconnected", "reconnected"], result
    assert result["accepted"] == 2 and result["connected_through_proxy"], result
    assert result["during_pause"] == [b"after"], result
    assert result["got"] == [b"after", b"while paused"], result


# ---- (a) acknowledgements lost -------------------------------------------------------------------


def test_connections_dropped_mid_ingestion_lose_acks_but_every_message_keeps_exactly_one_outcome(
    server: EmbeddedNatsServer, serves: list[LedgerServe], tmp_path: Path
) -> None:
    started = time.monotonic()
    season = stateful_season(PEOPLE, seed="faults-acks")
    feed = Feed([server.url], season, parts=10)
    with TcpProxy.to(server.url) as proxy:
        serve = LedgerServe(proxy.url, tmp_path / "data", tmp_path / "serve.log").start()
        serves.append(serve)
        wait_until(lambda: ingest_state([server.url]) is not None, 60, "the service to be ready", alive=serve)
        time.sleep(1.0)
        baseline = proxy.connections  # every connection the service opens, once it is up
        drops: list[dict[str, Any]] = []
        rng = random.Random("faults-acks")
        for n in range(DROPS + 1):
            feed.publish(1)
            # The first half as soon as a batch is out (back to back: the service barely
            # recovers), the rest only once it has made progress since the last drop. Then a
            # partition longer than the writer lease: nothing passes for PARTITION_S while a
            # batch is out, then every connection drops; if the lease lapsed, the service takes it
            # again (a new epoch); either way it decides nothing twice.
            last = drops[-1]["acked_at_drop"] if drops and n >= DROPS // 2 else -1
            state = _when_in_flight([server.url], also=lambda: proxy.connections >= baseline,
                                    ready=lambda st, last=last: st["ack_floor"] > last)  # fmt: skip
            if state is None:
                continue
            time.sleep(rng.uniform(0.0, 0.05))  # at different points of a batch
            drop: dict[str, Any] = {"acked_at_drop": state["ack_floor"], "ack_pending": state["ack_pending"]}
            if n == DROPS:
                proxy.pause()
                time.sleep(PARTITION_S)
                drop["partition_s"] = PARTITION_S
            drop["connections"] = proxy.drop()
            proxy.resume()
            drops.append(drop)
        feed.publish_rest()
        wait_until(lambda: ingestion_done([server.url], feed.total), 180, "every message to be applied", alive=serve)
        outcome = _settle_and_count(server.url, season, [serve], tmp_path)
        figures = {**outcome.figures, "drops": drops, "proxy_connections_accepted": proxy.accepted,
                   "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    report(tmp_path, f"acks lost: every client connection of ledger serve dropped {len(drops)} times mid-batch "
                     f"(the last after a {PARTITION_S:.0f} s partition)", figures)  # fmt: skip
    assert len(drops) >= 4, f"the connections were dropped mid-batch only {len(drops)} times: {drops}"
    outcome.check()


# ---- (b) the durable consumer deleted --------------------------------------------------------------


def test_the_ingestion_consumer_deleted_mid_ingestion_is_recreated_and_nothing_is_decided_twice(
    server: EmbeddedNatsServer, serves: list[LedgerServe], tmp_path: Path
) -> None:
    started = time.monotonic()
    season = stateful_season(PEOPLE, seed="faults-consumer")
    feed = Feed([server.url], season, parts=10)
    serve = LedgerServe(server.url, tmp_path / "data", tmp_path / "serve.log").start()
    serves.append(serve)
    wait_until(lambda: ingest_state([server.url]) is not None, 60, "the service to be ready", alive=serve)
    deletions: list[dict[str, Any]] = []
    for _ in range(2):
        feed.publish(3)
        state = _when_in_flight([server.url], timeout=30) or {}
        answer = asyncio.run(_api(server.url, f"$JS.API.CONSUMER.DELETE.UPSTREAM.{CONSUMER}"))
        recreated = wait_until(lambda: ingest_state([server.url]) is not None, 60, "the consumer to be recreated", alive=serve)
        deletions.append({"acked_at_delete": state.get("ack_floor"), "ack_pending": state.get("ack_pending"),
                          "deleted": bool(answer.get("success")), "recreated_in_s": round(recreated, 2),
                          "recreated_at_floor": acked_up_to([server.url])})  # fmt: skip
    feed.publish_rest()
    wait_until(lambda: ingestion_done([server.url], feed.total), 180, "every message to be applied", alive=serve)
    outcome = _settle_and_count(server.url, season, [serve], tmp_path)
    report(tmp_path, "the durable consumer ledger-ingest deleted twice mid-batch", {
        **outcome.figures, "deletions": deletions, "seconds": round(time.monotonic() - started, 1),
    })  # fmt: skip
    assert all(d["deleted"] and d["ack_pending"] for d in deletions), f"each deletion with a batch out: {deletions}"
    outcome.check()


# ---- (c) the writer paused past its lease ----------------------------------------------------------


def test_a_writer_paused_past_its_lease_is_replaced_by_the_standby_and_writes_nothing_when_it_wakes(
    server: EmbeddedNatsServer, serves: list[LedgerServe], tmp_path: Path
) -> None:
    started = time.monotonic()
    season = stateful_season(PEOPLE, seed="faults-writer")
    feed = Feed([server.url], season, parts=10)
    first = LedgerServe(server.url, tmp_path / "data-1", tmp_path / "serve-1.log").start()
    serves.append(first)
    wait_until(lambda: lease(server.url) is not None, 60, "a writer to hold the lease", alive=first)
    second = LedgerServe(server.url, tmp_path / "data-2", tmp_path / "serve-2.log").start()
    serves.append(second)
    wait_until(lambda: ingest_state([server.url]) is not None, 60, "the service to be ready", alive=first)
    holder = lease(server.url) or {}
    writer, standby = (second, first) if _pid_of(holder) == second.pid else (first, second)
    wait_until(lambda: _views_ready(standby), 60, "the standby to be up", alive=standby)

    feed.publish(3)
    in_hand = _when_in_flight([server.url], timeout=30) or {}
    writer.freeze()  # with a batch in hand: it wakes up to append it
    frozen_at = time.monotonic()
    writer_epoch = _last_epoch(server.url)
    floor_at_freeze = acked_up_to([server.url])
    feed.publish(4)
    # The standby takes over: a record with a later epoch on the tracking subject (its claim).
    takeover = wait_until(lambda: _last_epoch(server.url) > writer_epoch, 60, "the standby to take over", alive=standby)
    new_lease = lease(server.url) or {}
    # The old writer stays frozen well past its lease while the new one ingests (the batch it
    # holds comes back to the new one after ack_wait), then wakes.
    wait_until(lambda: acked_up_to([server.url]) >= floor_at_freeze + 300, 60, "progress under the new writer", alive=standby)
    frozen_for = time.monotonic() - frozen_at
    ledger_before_thaw = stream_messages(server.url, "LEDGER")
    writer.thaw()
    feed.publish_rest()
    wait_until(lambda: ingestion_done([server.url], feed.total), 180, "every message to be applied", alive=standby)
    time.sleep(2.0)  # whatever the woken writer was about to append has been tried by now
    serving = [s for s in (standby, writer) if s.alive]
    outcome = _settle_and_count(server.url, season, serving, tmp_path)
    stale = _writes_after_a_later_epoch(outcome.counts)
    figures = {
        **outcome.figures,
        "takeover_s": round(takeover, 2),
        "frozen_s": round(frozen_for, 1),
        "acked_at_freeze": floor_at_freeze,
        "ack_pending_at_freeze": in_hand.get("ack_pending", 0),
        "epochs": {"old_writer": writer_epoch, "new_writer": max(outcome.counts.epochs, default=None)},
        "lease_holders": {"before": holder.get("holder"), "after": new_lease.get("holder")},
        "ledger_messages_at_thaw": ledger_before_thaw,
        "stale_writes_after_takeover": stale,
        "old_writer_alive_after_thaw": writer.alive,
        "seconds": round(time.monotonic() - started, 1),
    }
    report(tmp_path, "two ledger serve on one server: the writer SIGSTOPped past its lease with a batch in hand, the standby "
                     "takes over, SIGCONT", figures)  # fmt: skip
    assert in_hand.get("ack_pending"), "the writer was frozen with a batch in hand"
    assert new_lease.get("holder") != holder.get("holder"), f"the lease changed hands: {holder} → {new_lease}"
    assert not stale, f"tracking records of an older writer epoch after a newer one (the woken writer wrote): {stale}"
    outcome.check()


# ---- (d) the LEDGER leader paused in a cluster ----------------------------------------------------


def test_the_ledger_stream_leader_paused_in_a_cluster_keeps_exactly_one_outcome_per_message(
    serves: list[LedgerServe], tmp_path: Path
) -> None:
    started = time.monotonic()
    season = stateful_season(PEOPLE, seed="faults-cluster")
    with NatsCluster(tmp_path / "cluster") as cluster:
        feed = Feed(cluster.urls, season, parts=10)
        serve = LedgerServe(cluster.url, tmp_path / "data", tmp_path / "serve.log", "--replicas", "3").start()
        serves.append(serve)
        wait_until(lambda: ingest_state(cluster.urls) is not None, 90, "the service to be ready", alive=serve)
        feed.publish(3)
        in_flight = _when_in_flight(cluster.urls, timeout=30) or {}
        victim = cluster.leader("LEDGER")
        process = cluster.nodes[victim]._process
        assert process is not None
        at_pause = acked_up_to(cluster.urls)
        others = [u for i, u in enumerate(cluster.urls) if i != victim]
        os.kill(process.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            # Paused, not dead: its peers elect another leader; upstream keeps publishing (to
            # whichever node answers) and ingestion goes on if it can.
            publishing = threading.Thread(target=lambda: Feed(others, season, parts=10, after=feed).publish(3), daemon=True)
            publishing.start()
            progressed = _wait_quietly(lambda: acked_up_to(others) >= at_pause + 100, PAUSE_S)
            new_leader = _leader_among(cluster, "LEDGER", others)
            time.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused_at)))
        finally:
            os.kill(process.pid, signal.SIGCONT)
        paused_for = time.monotonic() - paused_at
        publishing.join(120)
        assert not publishing.is_alive(), "the upstream publisher never got every acknowledgement"
        feed.skip(3)
        feed.publish_rest()
        wait_until(lambda: ingestion_done(cluster.urls, feed.total), 180, "every message to be applied", alive=serve)
        for stream in ("LEDGER", "UPSTREAM"):
            wait_until(lambda s=stream: cluster.converged(s), 90, f"{stream}'s replicas to converge", alive=serve)
        # Read through the node that was paused, once every replica holds the same.
        outcome = _settle_and_count(cluster.urls[victim], season, [serve], tmp_path)
        report(tmp_path, "cluster: the LEDGER stream leader SIGSTOPped mid-batch, then SIGCONT", {
            **outcome.figures,
            "paused": {"node": cluster.node_name(victim), "acked_at_pause": at_pause, "ack_pending": in_flight.get("ack_pending"),
                       "paused_s": round(paused_for, 1),
                       "progress_while_paused_s": None if progressed is None else round(progressed, 1),
                       "new_leader": new_leader},
            "seconds": round(time.monotonic() - started, 1),
        })  # fmt: skip
    outcome.check()


# ---- shared ---------------------------------------------------------------------------------------


class Settled:
    """The outcome of one scenario: counts, figures and the checks, asserted after reporting."""

    def __init__(self, counts: OutcomeCounts, upstream: int, season: StatefulSeason, expected: dict[int, Any] | str,
                 views: dict[str, Any]) -> None:  # fmt: skip
        self.counts = counts
        self.upstream = upstream
        self.season = season
        self.expected = expected
        self.views = views
        self.wrong = mismatched(counts, expected) if isinstance(expected, dict) else {}
        self.figures: dict[str, Any] = {
            **counts.figures(upstream),
            "season": season.figures(),
            "wrong_outcomes": len(self.wrong),
            "wrong_examples": dict(list(self.wrong.items())[:5]),
            "upstream_order": "as published" if isinstance(expected, dict) else expected,
            "views": views,
        }

    def check(self) -> None:
        assert isinstance(self.expected, dict), self.expected
        assert self.upstream == len(self.season), f"UPSTREAM holds {self.upstream} of {len(self.season)} messages"
        assert_exactly_one_outcome(self.counts, self.upstream)
        assert not self.wrong, f"{len(self.wrong)} messages decided other than their place in the order calls for: " + json.dumps(
            dict(list(self.wrong.items())[:10])
        )
        for name, state in self.views.items():
            if name.startswith("live"):
                assert state["equals_replay"], f"{name} differ from a fresh replay in {state['differs']}"
                assert state["rejections"] == self.counts.rejections, f"{name}: one rejection row per rejection: {state}"


def _settle_and_count(url: str, season: StatefulSeason, serving: list[LedgerServe], tmp_path: Path) -> Settled:
    """Once every message is acknowledged: wait for REJECTED (derived from LEDGER) and each
    running service's views to catch up; count the outcomes; replay the views afresh and compare."""
    wait_until(lambda: rejected_caught_up(url), SOURCE_CATCH_UP, "REJECTED to catch up with LEDGER's rejections")
    ledger_seq, rejected_seq = last_event_seq(url), stream_messages(url, "REJECTED")
    for serve in serving:
        views = serve.data_dir / "views.sqlite"
        wait_until(lambda v=views: views_caught_up(v, ledger_seq, rejected_seq), 90, f"the views of {serve.data_dir.name}",
                   alive=serve)  # fmt: skip
    counts = count_outcomes(url, read_rejected=True)
    order = upstream_order(url)
    try:
        expected: dict[int, Any] | str = season.expected_by_seq(order)
    except AssertionError as e:
        expected = str(e)
    fresh, seconds = run_replay(url, tmp_path, "fresh-replay", serving[0].data_dir)
    replayed = dump(f"sqlite:///{fresh}")
    views: dict[str, Any] = {"replay": {**_counts(views_state(fresh)), "seconds": round(seconds, 1)}}
    for serve in serving:
        live_db = serve.data_dir / "views.sqlite"
        live = dump(f"sqlite:///{live_db}")
        differs = sorted(t for t in live if t != "tracking" and live[t] != replayed.get(t))
        views[f"live {serve.data_dir.name}"] = {**_counts(views_state(live_db)), "equals_replay": not differs, "differs": differs}
    return Settled(counts, len(order), season, expected, views)


def _counts(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("audit", "rejections", "coverage", "people")}


class Feed:
    """The upstream systems publishing the season in order, part by part, when the test says
    (each part resent until acknowledged): faults land while a part is being decided."""

    def __init__(self, urls: list[str], season: StatefulSeason, parts: int, after: Feed | None = None) -> None:
        self.urls = list(urls)
        messages = season.publishable()
        size = -(-len(messages) // parts)
        self.parts = [messages[i : i + size] for i in range(0, len(messages), size)]
        self.total = len(messages)
        self.next = after.next if after is not None else 0

    def publish(self, parts: int = 1) -> None:
        for part in self.parts[self.next : self.next + parts]:
            asyncio.run(publish_reliably(self.urls, part))
        self.skip(parts)

    def skip(self, parts: int) -> None:
        self.next = min(len(self.parts), self.next + parts)

    def publish_rest(self) -> None:
        self.publish(len(self.parts))


def _when_in_flight(urls: list[str], timeout: float = 30.0, also: Any = None, ready: Any = None) -> dict[str, int] | None:
    """Wait until the ingestion consumer has messages delivered and not yet acknowledged (a batch
    being decided or appended; ``ready(state)`` and ``also()`` true as well); its state then, or
    None if that did not happen within ``timeout`` (e.g. ingestion finished first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ingest_state(urls)
        if (state is not None and state["ack_pending"] > 0 and (ready is None or ready(state))
                and (also is None or also())):  # fmt: skip
            return state
        time.sleep(0.01)
    return None


def lease(url: str) -> dict[str, Any] | None:
    """The writer lease as the KV bucket holds it (``{"holder", "epoch"}``), or None."""

    async def read() -> dict[str, Any] | None:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            reply = await nc.request(f"$JS.API.STREAM.MSG.GET.KV_{LEASE_BUCKET}",
                                     json.dumps({"last_by_subj": f"$KV.{LEASE_BUCKET}.{LEASE_KEY}"}).encode(), timeout=5)  # fmt: skip
            answer = json.loads(reply.data)
            if "error" in answer:
                return None  # no bucket, or no key (expired, released)
            data = base64.b64decode(answer["message"].get("data") or "")
            headers = base64.b64decode(answer["message"].get("hdrs") or "")
            if not data or b"KV-Operation" in headers:
                return None  # created empty (being acquired), or deleted
            try:
                value = json.loads(data)
            except ValueError:
                return {"holder": data.decode(errors="replace")}
            return value if isinstance(value, dict) else {"holder": str(value)}
        except Exception:  # noqa: BLE001 - no bucket yet
            return None
        finally:
            await nc.close()

    return asyncio.run(read())


def _pid_of(holder: dict[str, Any]) -> int | None:
    """The process id in a lease holder ``host:pid:nonce``, if it has that form."""
    parts = str(holder.get("holder", "")).split(":")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _last_epoch(url: str) -> int:
    """``Ledger-Writer-Epoch`` of the last tracking record of the ingestion (0 if none)."""

    async def read() -> int:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            reply = await nc.request("$JS.API.DIRECT.GET.LEDGER", json.dumps({"last_by_subj": "ledger.trk.Ledger.UPSTREAM"}).encode(),
                                     timeout=5)  # fmt: skip
            headers = reply.headers or {}
            return 0 if headers.get("Status") else int(headers.get("Ledger-Writer-Epoch") or 0)
        finally:
            await nc.close()

    return asyncio.run(read())


def _writes_after_a_later_epoch(counts: OutcomeCounts) -> list[dict[str, int]]:
    """Tracking records, in LEDGER order, whose epoch is below one written before them."""
    stale, highest = [], 0
    for index, epoch in enumerate(counts.epochs):
        if epoch < highest:
            stale.append({"record": index, "epoch": epoch, "after_epoch": highest})
        highest = max(highest, epoch)
    return stale


def _views_ready(serve: LedgerServe) -> bool:
    return (serve.data_dir / "views.sqlite").exists()


def _wait_quietly(condition: Any, timeout: float) -> float | None:
    """Seconds until ``condition`` held, or None if it did not within ``timeout`` (no failure)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - a node is paused: its answers time out
            pass
        time.sleep(0.2)
    return None


def _leader_among(cluster: NatsCluster, stream: str, urls: list[str]) -> str | None:
    for url in urls:
        try:
            info = asyncio.run(_api(url, f"$JS.API.STREAM.INFO.{stream}"))
        except Exception:  # noqa: BLE001 - try the next
            continue
        leader = (info.get("cluster") or {}).get("leader")
        if leader:
            return leader
    return None
