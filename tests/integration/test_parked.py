"""Poison is parked per person, listed, and decided again by an operator once the cause is fixed
(``ledger parked list|retry``), through a real nats-server and the real ingestion service."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from consumers.app import IngestSettings
from ledger.application import Ledger
from ledger.domain.identity import PersonKeyer
from ledger.jetstream.server import EmbeddedNatsServer
from service.bootstrap import ingestion
from tests.integration.ingest_support import ROOT, SECRET, T0, people, publish_all

ALICE, BOB = people(2, "parked")


class PaymentsBrokenUntilFixed(Ledger):
    """A ledger whose payments fail for a reason that is not the policy's until ``fixed``."""

    fixed = False

    def receive_payment(self, *args: Any) -> Any:
        if not self.fixed:
            raise RuntimeError("payment service bug")
        return super().receive_payment(*args)


def ledger_cli(url: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "parked", *args, "--nats-url", url, "--format", "json"],
        cwd=ROOT, env={**os.environ, "LEDGER_PERSON_KEY_SECRET": SECRET}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_parked_payment_holds_only_its_person_and_is_recorded_when_retried_after_the_fix(server: EmbeddedNatsServer) -> None:
    """Given a payment service bug, when Alice enrolls and pays, Bob enrolls, and Alice's
    registration changes, then Alice's payment is parked, her registration waits behind it, and
    Bob is recorded; `ledger parked list` shows both; once the bug is fixed, `ledger parked
    retry` has the writer record her payment and then her registration, and nothing is parked."""
    enrollment = {"occurred_at": T0, "coverage_year": 2022, "category": "resident", "channel": "wechat", "district": "340104"}
    messages = [
        ("upstream.enrollment.requested", {"msg_id": "e-a", "id_number": ALICE, **enrollment}),
        ("upstream.payment.received", {"msg_id": "p-a", "occurred_at": T0, "id_number": ALICE, "coverage_year": 2022,
                                       "amount_fen": 32000, "channel": "wechat", "paid_at": T0}),
        ("upstream.enrollment.requested", {"msg_id": "e-b", "id_number": BOB, **enrollment}),
        ("upstream.person.registered", {"msg_id": "r-a", "occurred_at": T0, "id_number": ALICE, "name": "甲",
                                        "district": "340104"}),
    ]

    async def run() -> None:
        ledger = await asyncio.to_thread(
            PaymentsBrokenUntilFixed, {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url},
            keyer=PersonKeyer(SECRET.encode()),
        )  # fmt: skip
        try:
            async with ingestion(ledger, server.url, IngestSettings(batch_size=10)) as service:
                await publish_all(server.url, messages)
                deadline = time.monotonic() + 30
                while service.stats.done < len(messages):
                    assert time.monotonic() < deadline, service.stats
                    await asyncio.sleep(0.02)
                assert (service.stats.recorded, service.stats.parked) == (2, 2)

                listed = await asyncio.to_thread(ledger_cli, server.url, "list")
                assert [(r["upstream_seq"], r["reason"]) for r in listed] == [(2, "unprocessable"), (4, "held")]
                assert "payment service bug" in listed[0]["detail"]

                ledger.fixed = True
                retried = await asyncio.to_thread(ledger_cli, server.url, "retry")
                assert [(r["upstream_seq"], r["outcome"]) for r in retried] == [(2, "recorded"), (4, "recorded")]
                assert await asyncio.to_thread(ledger_cli, server.url, "list") == []
                alice = await asyncio.to_thread(ledger.person, ALICE)
                assert alice is not None and alice.enrollments[2022].paid_fen == 32000 and alice.name == "甲"
        finally:
            await asyncio.to_thread(ledger.close)

    asyncio.run(run())
