"""Helpers for the ingestion tests: contract messages, a ``ledger serve`` process, outcomes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import nats

from consumers.streams import decode_rejection
from ledger.application import Ledger
from ledger.domain.identity import PersonKeyer, generate_id_number

SECRET = "ingestion-tests-person-key-secret"
ROOT = Path(__file__).resolve().parents[2]
T0 = "2021-09-02T10:00:00+08:00"


def people(count: int, seed: str) -> list[str]:
    """``count`` distinct synthetic ID numbers."""
    rng = random.Random(seed)
    numbers: set[str] = set()
    while len(numbers) < count:
        born = date(1940 + rng.randrange(70), 1 + rng.randrange(12), 1 + rng.randrange(28))
        numbers.add(generate_id_number(rng, birth_date=born))
    return sorted(numbers)


def season(count: int, seed: str = "season") -> list[tuple[str, dict[str, Any]]]:
    """Per person: an enrollment and its payment; every 10th pays the wrong amount (rejected)."""
    messages = []
    for i, id_number in enumerate(people(count, seed)):
        messages.append(
            (
                "upstream.enrollment.requested",
                {"msg_id": f"e-{i}", "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
                 "category": "resident", "channel": "wechat", "district": "340104"},
            )
        )
        messages.append(
            (
                "upstream.payment.received",
                {"msg_id": f"p-{i}", "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
                 "amount_fen": 100 if i % 10 == 0 else 32000, "channel": "wechat", "paid_at": T0},
            )
        )
    return messages


async def publish_all(url: str, messages: list[tuple[str, dict[str, Any]]]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    acks = []
    for subject, body in messages:
        acks.append(
            await js.publish_async(subject, json.dumps(body, ensure_ascii=False).encode(), headers={"Nats-Msg-Id": body["msg_id"]})
        )
        if len(acks) >= 1000:
            await asyncio.gather(*acks)
            acks.clear()
    await asyncio.gather(*acks)
    await nc.close()


async def api(url: str, subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=5)
        return json.loads(reply.data)
    finally:
        await nc.close()


def ingestion_finished(url: str, expected: int) -> bool:
    """Whether the ingestion consumer has every one of ``expected`` messages acknowledged."""
    info = asyncio.run(api(url, "$JS.API.CONSUMER.INFO.UPSTREAM.ledger-ingest"))
    if "error" in info:
        return False
    return info["ack_floor"]["stream_seq"] >= expected and info["num_ack_pending"] == 0 and info["num_pending"] == 0


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


async def rejections(url: str) -> list[Any]:
    """Every message on REJECTED, decoded."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    found = []
    sub = await js.subscribe("", stream="REJECTED", ordered_consumer=True)
    info = await js.stream_info("REJECTED")
    for _ in range(info.state.messages):
        msg = await sub.next_msg(timeout=5)
        found.append(decode_rejection(msg.data))
    await nc.close()
    return found


def recorded_facts(url: str) -> Counter[tuple[str, str]]:
    """(msg_id, event type) of every event in LEDGER, counted."""
    ledger = Ledger(
        {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url, "CREATE_TABLE": "no"},
        keyer=PersonKeyer(SECRET.encode()),
    )
    try:
        facts: Counter[tuple[str, str]] = Counter()
        start = None
        while True:
            page = ledger.recorder.select_notifications(start, 1000, inclusive_of_start=False)
            for notification in page:
                event = ledger.mapper.to_domain_event(notification)
                facts[(event.source.msg_id, type(event).__qualname__)] += 1
            if len(page) < 1000:
                return facts
            start = page[-1].id
    finally:
        ledger.close()


@dataclass
class Outcomes:
    recorded: set[str]
    rejected: Counter[str]
    doubled_events: list[tuple[str, str]]

    def of(self, msg_id: str) -> str:
        return "both" if msg_id in self.recorded and msg_id in self.rejected else (
            "recorded" if msg_id in self.recorded else "rejected" if msg_id in self.rejected else "none"
        )


def outcomes(url: str) -> Outcomes:
    facts = recorded_facts(url)
    rejected = Counter(r.msg_id for r in asyncio.run(rejections(url)))
    return Outcomes(
        recorded={msg_id for msg_id, _ in facts},
        rejected=rejected,
        doubled_events=[key for key, n in facts.items() if n > 1],
    )


class ServeProcess:
    """``ledger serve --nats-url URL`` in a child process, to be stopped or killed."""

    def __init__(self, url: str, log_path: Path, batch_size: int = 200, data_dir: Path | None = None) -> None:
        self.url = url
        self.log_path = log_path
        self.batch_size = batch_size
        self.data_dir = data_dir or log_path.parent / "data"
        """Views and local state: never the repository's ./data, which other tests would share."""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        env = {**os.environ, "LEDGER_PERSON_KEY_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "serve", "--nats-url", self.url, "--batch-size", str(self.batch_size),
             "--data-dir", str(self.data_dir)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        log.close()
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode
