"""Crashes on a single node: SIGKILL of the nats-server and, separately, of the ledger service,
at random moments (several seeds) during ingestion and during a replay of the views.

Afterwards the counts agree exactly: every upstream message has one outcome (its events in
LEDGER or its rejection on REJECTED, never both, never twice), the views hold one audit row per
LEDGER event, one rejection row per REJECTED message and one coverage row per enrollment, and a
replay that was killed and resumed equals a fresh, uninterrupted one, table by table.

Figures (``TRUST-FIGURES`` lines with ``pytest -s``, and ``figures.json`` in each test's tmp
dir): messages ingested, outcomes lost and doubled (both must be 0), where each kill landed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from consumers.streams import wait_for_rejected
from ledger.jetstream.server import EmbeddedNatsServer
from tests.integration.ingest_support import season
from tests.projections.support import dump
from tests.trust.cluster import (
    ROOT,
    LedgerServe,
    acked_up_to,
    ingest_state,
    ingestion_done,
    last_event_seq,
    outcome_figures,
    publish_reliably,
    report,
    stream_messages,
    views_caught_up,
    views_state,
    wait_until,
)
from tests.trust.cluster import (
    replay_command as _replay_command,
)
from tests.trust.cluster import (
    run_replay as _replay,
)
from tests.trust.cluster import (
    serve_env as _env,
)

pytestmark = pytest.mark.fault

PEOPLE = 1000
"""Two messages each (enrollment, payment; every tenth payment the wrong amount): 2,000."""
SEEDS = (1, 2, 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_of_server_and_service_at_random_moments_of_ingestion_and_replay_loses_and_doubles_nothing(
    seed: int, tmp_path: Path
) -> None:
    """One seed: the nats-server and the ledger service are each SIGKILLed once at a random
    moment of ingestion (random order, random share applied); then a replay is interrupted at a
    random moment, by SIGKILL of its own process (odd seeds) or of the nats-server under it
    (even seeds), resumed, and compared with a fresh one."""
    started = time.monotonic()
    rng = random.Random(f"crash/{seed}")
    messages = season(PEOPLE, seed=f"crash-{seed}")
    server = EmbeddedNatsServer(tmp_path / "nats").start()
    serve = LedgerServe(server.url, tmp_path / "data", tmp_path / "serve.log").start()
    marks: dict[str, float] = {}
    try:
        wait_until(lambda: ingest_state([server.url]) is not None, 60, "the service to be ready", alive=serve)

        # Ingestion in three stages. An upstream system publishes each (resending until
        # acknowledged) while the ledger applies; during the first two, one of the two is killed
        # and started again. A stage with a kill is published in two parts: the rest is held back
        # until after the kill, so the kill always comes before the stage's end. Once a random
        # share of the first part is applied, the service is frozen (SIGSTOP): the share applied
        # is sampled while nothing moves, and more of the stage is published while it is frozen,
        # so messages are waiting, delivered or in flight when the victim dies. Then the victim is
        # SIGKILLed (the frozen service itself, or the nats-server under it, restarted at once
        # while the service is still frozen), the service thawed or started again, and the rest
        # of the stage published. A stage is published only once the one before is applied.
        stages = [messages[: len(messages) * 2 // 5], messages[len(messages) * 2 // 5 : len(messages) * 4 // 5],
                  messages[len(messages) * 4 // 5 :]]  # fmt: skip
        acked: set[str] = set()
        kills: list[dict[str, Any]] = []
        victims = rng.sample(["nats-server", "ledger-serve"], 2)
        begin = 0

        def publish(part: list[tuple[str, dict[str, Any]]]) -> threading.Thread:
            thread = threading.Thread(target=lambda: acked.update(asyncio.run(publish_reliably([server.url], part))))
            thread.start()
            return thread

        for stage, victim in zip(stages, [*victims, None], strict=True):
            end = begin + len(stage)
            if victim is None:
                publishers = [publish(stage)]
            else:
                first_part = int(len(stage) * rng.uniform(0.3, 0.6))
                while_frozen = len(stage) // 10
                threshold = begin + max(1, int(first_part * rng.uniform(0.2, 0.8)))
                publishers = [publish(stage[:first_part])]
                wait_until(lambda t=threshold: acked_up_to([server.url]) >= t, 90, f"{threshold} messages applied", alive=serve)
                time.sleep(rng.uniform(0.0, 0.1))
                serve.freeze()
                applied = _settled_ack_floor(server.url)
                publishers[0].join(60)
                held_back = asyncio.run(publish_reliably([server.url], stage[first_part : first_part + while_frozen]))
                acked.update(held_back)
                kills.append({"victim": victim, "applied_at_kill": applied, "published_at_kill": begin + first_part + while_frozen,
                              "stage": [begin, end]})  # fmt: skip
                if victim == "nats-server":
                    server.kill()
                    time.sleep(rng.uniform(0.0, 1.0))
                    server.start()  # same port, same store
                    serve.thaw()
                else:
                    serve.kill()  # frozen: SIGKILL still ends it
                    serve.start()  # same data directory: its views resume from their tracking position
                publishers.append(publish(stage[first_part + while_frozen :]))
            for publisher in publishers:
                publisher.join(120)
                assert not publisher.is_alive(), "the upstream publisher never got every acknowledgement"
            wait_until(lambda e=end: acked_up_to([server.url]) >= e, 120, f"the {end} messages published to be applied", alive=serve)
            begin = end
        marks["killed"] = time.monotonic() - started
        wait_until(lambda: ingestion_done([server.url], len(messages)), 120, "every message to be applied", alive=serve)
        marks["ingested"] = time.monotonic() - started
        asyncio.run(wait_for_rejected(server.url))  # REJECTED is derived from LEDGER: let it catch up
        ledger_seq, rejected_seq = last_event_seq(server.url), stream_messages(server.url, "REJECTED")
        views = tmp_path / "data" / "views.sqlite"
        wait_until(lambda: views_caught_up(views, ledger_seq, rejected_seq), 60, "the views to catch up", alive=serve)
        marks["views"] = time.monotonic() - started
        figures = outcome_figures(server.url, messages, acked)
        live_views = views_state(views)
        upstream = stream_messages(server.url, "UPSTREAM")

        # Replay: a fresh, uninterrupted one; then one interrupted by a SIGKILL, resumed, and
        # compared with the fresh one, table by table.
        fresh, _ = _replay(server.url, tmp_path, "fresh")
        victim = "ledger-replay" if seed % 2 else "nats-server"
        interrupted = _interrupted_replay(server, tmp_path, f"resumed-after-{victim}", victim, rng, ledger_seq)
        resumed, _ = _replay(server.url, tmp_path, interrupted["database"])
        replays = [{"victim": victim, **interrupted, "resumed_equals_fresh": dump(f"sqlite:///{resumed}") == dump(f"sqlite:///{fresh}")}]
        marks["replays"] = time.monotonic() - started
        fresh_views = views_state(fresh)
        report(tmp_path, f"single node, seed {seed}: SIGKILL nats-server and ledger serve during ingestion, then during a replay", {
            **figures,
            "seed": seed,
            "kills": kills,
            "upstream_messages": upstream,
            "views": live_views,
            "replays": replays,
            "replayed_events": fresh_views["audit"],
            "serve_processes": serve.started,
            "seconds": round(time.monotonic() - started, 1),
            "marks": {k: round(v, 1) for k, v in marks.items()},
        })  # fmt: skip
    finally:
        if serve.alive:
            serve.kill()  # a graceful stop is not what this test is about (see test_cluster)
        server.stop()

    assert all(k["stage"][0] < k["applied_at_kill"] < k["published_at_kill"] < k["stage"][1] for k in kills), (
        f"each kill in the middle of ingestion, with messages published and not yet applied: {kills}"
    )
    assert upstream == figures["ingested"] == len(messages)
    assert figures["lost"] == 0, f"acknowledged messages without an outcome: {figures['lost_examples']}"
    assert figures["doubled"] == 0, f"messages with two outcomes: {figures['doubled_examples']}"
    assert figures["recorded"] + figures["rejected"] == len(messages)
    assert not figures["unexpected_rejections"] and not figures["missing_rejections"], "each person's facts in order"
    assert live_views["audit"] == figures["ledger_events"], "one audit row per LEDGER event"
    assert live_views["rejections"] == figures["rejected_messages"] == rejected_seq, "one row per REJECTED message"
    assert live_views["coverage"] == figures["enrollments"] == PEOPLE, "one coverage row per (person, year) enrollment"
    assert (fresh_views["audit"], fresh_views["rejections"], fresh_views["coverage"]) == (
        live_views["audit"], live_views["rejections"], live_views["coverage"]
    ), "a replay rebuilds what the live views hold"
    for replay in replays:
        assert replay["frozen_at"] < ledger_seq, f"killed mid-replay: {replay}"
        if replay["victim"] == "ledger-replay":
            assert replay["interrupted_at"] == replay["frozen_at"], f"nothing committed after the kill: {replay}"
        else:  # the replay fails with the server (and is run again), or rides it out to the end
            assert replay["replay_exit"] != 0 or replay["interrupted_at"] == ledger_seq, replay
        assert replay["resumed_equals_fresh"], f"the resumed replay differs from a fresh one: {replay}"


def _settled_ack_floor(url: str, settle: float = 0.3) -> int:
    """The ingestion consumer's ack floor once it stops moving (the service is frozen, but acks it
    wrote just before may still be on their way to the server)."""
    last = acked_up_to([url])
    while True:
        time.sleep(settle)
        now = acked_up_to([url])
        if now == last:
            return now
        last = now


def _interrupted_replay(
    server: EmbeddedNatsServer, tmp_path: Path, name: str, victim: str, rng: random.Random, ledger_seq: int
) -> dict[str, Any]:
    """Start a replay into a new database and, once it has committed a random share of LEDGER,
    freeze it (SIGSTOP) and check that it is mid-way (its views commit in jumps of hundreds or
    thousands of events, a few milliseconds apart: a kill could otherwise land after the end).
    Then SIGKILL the victim: the replay process itself, or the nats-server under it (restarted
    at once, the replay let go on: it fails, or rides it out). Too late: again, earlier."""
    share = rng.uniform(0.1, 0.8) if victim == "ledger-replay" else rng.uniform(0.05, 0.3)
    for attempt in range(1, 5):
        db_name = f"{name}-{attempt}"
        db = tmp_path / f"{db_name}.sqlite"
        target = int(ledger_seq * share)
        with open(tmp_path / f"{db_name}.log", "ab") as log:
            process = subprocess.Popen(
                _replay_command(server.url, tmp_path, db_name), cwd=ROOT, env=_env(), stdout=log, stderr=log
            )
        position = 0
        while process.poll() is None and position < target:
            try:
                position = views_state(db)["ledger_position"]
            except Exception:  # noqa: BLE001 - not created yet
                position = 0
            time.sleep(0.002)
        if process.poll() is not None:
            share /= 3  # it ran to the end first
            continue
        process.send_signal(signal.SIGSTOP)
        position = views_state(db)["ledger_position"]
        if position >= ledger_seq:
            process.kill()
            process.wait(10)
            share /= 3
            continue
        outcome: dict[str, Any] = {"attempt": attempt, "database": db_name, "target": target, "frozen_at": position}
        if victim == "ledger-replay":
            process.kill()
            process.wait(10)
            outcome["replay_exit"] = "SIGKILL"
        else:
            server.kill()
            server.start()
            process.send_signal(signal.SIGCONT)
            try:
                outcome["replay_exit"] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                outcome["replay_exit"] = "hung: SIGKILL after 30 s"
        state = views_state(db)
        return {**outcome, "interrupted_at": state["ledger_position"], "rejected_at": state["rejected_position"], "of": ledger_seq}
    raise AssertionError(f"could not catch a replay mid-way in 4 attempts (last target {target} of {ledger_seq})")


def test_coverage_publishing_resumes_within_seconds_after_a_nats_server_crash(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats").start()
    serve = LedgerServe(server.url, tmp_path / "data", tmp_path / "serve.log").start()
    views = tmp_path / "data" / "views.sqlite"
    try:
        wait_until(lambda: ingest_state([server.url]) is not None, 60, "the service to be ready", alive=serve)
        messages = season(10, seed="downstream")
        asyncio.run(publish_reliably([server.url], messages))
        wait_until(lambda: ingestion_done([server.url], len(messages)), 30, "every message to be applied", alive=serve)
        ledger_seq = last_event_seq(server.url)
        wait_until(lambda: views_caught_up(views, ledger_seq, 0), 30, "the views to catch up", alive=serve)
        # The publisher has published (its first round also reads the bucket, with a timeout).
        wait_until(lambda: views_state(views)["outbox"] == 0 and stream_messages(server.url, "KV_coverage") > 0, 30,
                   "the outbox to be published", alive=serve)  # fmt: skip
        # The server freezes (it takes bytes, answers nothing) while a coverage change is in the
        # outbox: the publisher sends it and waits; then the server crashes and comes back.
        assert server._process is not None
        os.kill(server._process.pid, signal.SIGSTOP)
        _add_to_outbox(views)
        time.sleep(1.5)
        server.kill()
        server.start()
        wait_until(lambda: views_state(views)["outbox"] == 0, 15, "the outbox to be published again", alive=serve)
    finally:
        serve.kill()
        server.stop()


def _add_to_outbox(views: Path) -> None:
    """A coverage change as the projection leaves it for the publisher (a person the test makes up)."""
    import sqlite3

    db = sqlite3.connect(views, timeout=10)
    try:
        with db:
            db.execute(
                "INSERT INTO outbox (ledger_seq, person_key, district, kv_value, message) VALUES (?, ?, ?, ?, ?)",
                (10**9, "trust-probe", "340104", "{}", "{}"),
            )
    finally:
        db.close()
