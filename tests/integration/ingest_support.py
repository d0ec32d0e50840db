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

from consumers.streams import rejected_caught_up
from contract.rejection import decode_rejection
from ledger.application import Ledger
from ledger.domain.identity import PersonKeyer, generate_id_number

SECRET = "ingestion-tests-person-key-secret"
CIPHER_KEY = "aW5nZXN0aW9uLXRlc3RzLXBheWxvYWQta2V5LTMyYiE="
"""The tests' payload key (base64 of 32 bytes): ``ledger serve`` on a test-started nats-server
encrypts with it, as production does (an external server needs a key, or encryption refused)."""
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


def wait_for(condition: Any, timeout: float, what: str, *, raising: bool = True, every: float = 0.05) -> bool:
    """Until ``condition()`` holds (True), or ``timeout`` seconds: then an AssertionError naming
    ``what`` (False without ``raising``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if raising:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            return False
        time.sleep(every)
    return True


async def rejections(url: str) -> list[Any]:
    """Every message on REJECTED, decoded."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    found = []

    async def request(subject: str, payload: bytes) -> bytes:
        return (await nc.request(subject, payload, timeout=5)).data

    await rejected_caught_up(request)
    sub = await js.subscribe("", stream="REJECTED", ordered_consumer=True)
    info = await js.stream_info("REJECTED")
    for _ in range(info.state.messages):
        msg = await sub.next_msg(timeout=5)
        found.append(decode_rejection(msg.data))
    await nc.close()
    return found


_SIGNING_KEY: list[Path] = []


def signing_key_for_tests() -> Path:
    """The ledger's signing key for every ``ledger serve`` the tests start on a nats-server of
    their own (``LEDGER_SIGNING_KEY_FILE``, which serve requires with an external server): one
    key for the whole run, as every serve of a ledger — writer and standbys — shares one. Made
    once per test process (mode 0600, in a directory of its own, removed at exit)."""
    if not _SIGNING_KEY:
        import atexit
        import shutil
        import tempfile

        from ledger.jetstream.signing import SigningKey

        directory = Path(tempfile.mkdtemp(prefix="ledger-tests-signing-"))
        atexit.register(shutil.rmtree, directory, True)
        SigningKey.create(directory / "signing-key.pem")
        _SIGNING_KEY.append(directory / "signing-key.pem")
    return _SIGNING_KEY[0]


def payload_encryption(cipher_key: str | None) -> dict[str, str]:
    """The settings of a ledger serve or command here: encrypted with ``cipher_key``, or (None)
    encryption refused explicitly."""
    return {"LEDGER_CIPHER_KEY": cipher_key} if cipher_key else {"LEDGER_PAYLOAD_ENCRYPTION": "off"}


def cipher_env(cipher_key: str | None) -> dict[str, str]:
    """The ledger environment that reads (or writes) what a serve with ``cipher_key`` wrote: the
    same Settings ``ledger serve`` takes."""
    from service.bootstrap import cipher_settings
    from service.settings import Settings

    return cipher_settings(Settings.read(payload_encryption(cipher_key), nats_url="nats://test-started"))


def recorded_facts(url: str, cipher_key: str | None = None) -> Counter[tuple[str, str]]:
    """(msg_id, event type) of every event in LEDGER, counted (written with ``cipher_key``, or in clear)."""
    ledger = Ledger(
        {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url, "CREATE_TABLE": "no", **cipher_env(cipher_key)},
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


def outcomes(url: str, cipher_key: str | None = None) -> Outcomes:
    facts = recorded_facts(url, cipher_key)
    rejected = Counter(r.msg_id for r in asyncio.run(rejections(url)))
    return Outcomes(
        recorded={msg_id for msg_id, _ in facts},
        rejected=rejected,
        doubled_events=[key for key, n in facts.items() if n > 1],
    )


class ServeProcess:
    """``ledger serve --nats-url URL`` in a child process, to be stopped or killed. It encrypts
    with ``cipher_key`` (the tests' key by default, as production encrypts), or — None — stores
    payloads in clear, refused explicitly (for readers of the stored bytes: ``tests.trust.outcomes``).
    It signs with the tests' signing key (``signing_key_for_tests``)."""

    def __init__(
        self, url: str, log_path: Path, batch_size: int = 200, data_dir: Path | None = None, cipher_key: str | None = CIPHER_KEY
    ) -> None:
        self.url = url
        self.cipher_key = cipher_key
        self.log_path = log_path
        self.batch_size = batch_size
        self.data_dir = data_dir or log_path.parent / "data"
        """Views and local state: never the repository's ./data, which other tests would share."""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_CIPHER", "LEDGER_PAYLOAD"))}
        env |= {"LEDGER_PERSON_KEY_SECRET": SECRET, "PYTHONPATH": str(ROOT), **payload_encryption(self.cipher_key),
                "LEDGER_SIGNING_KEY_FILE": str(signing_key_for_tests())}  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--nats-url", self.url, "--batch-size", str(self.batch_size),
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


# ---- a season whose verdicts depend on state ---------------------------------------------------

PAYMENT_FEN = 32000
"""The 2022 individual share of a resident (the policy's contribution)."""


@dataclass(frozen=True)
class Published:
    """One upstream message as published: its subject, its body, the ``Nats-Msg-Id`` header (the
    ``msg_id``, or another one for a deliberate repeat that UPSTREAM's deduplication would
    otherwise drop), and the outcome its place in the order calls for."""

    subject: str
    body: dict[str, Any]
    nats_msg_id: str
    kind: str
    """``recorded``, ``duplicate``, ``rejected`` or ``conflict`` (a repeated msg_id, another body)."""
    reason: str | None = None
    """The rejection's reason (``msg_id_conflict`` for a conflict)."""

    def as_tuple(self) -> tuple[str, dict[str, Any], str]:
        """(subject, body, Nats-Msg-Id): what ``tests.trust.cluster.publish_reliably`` takes."""
        return self.subject, self.body, self.nats_msg_id


@dataclass(frozen=True)
class StatefulSeason:
    messages: list[Published]

    def publishable(self) -> list[tuple[str, dict[str, Any], str]]:
        return [m.as_tuple() for m in self.messages]

    def __len__(self) -> int:
        return len(self.messages)

    def expected_by_seq(self, order: list[tuple[int, str, str | None]]) -> dict[int, tuple[str, str | None]]:
        """The expected (kind, reason) per UPSTREAM sequence, given UPSTREAM's order as
        ``(seq, subject, Nats-Msg-Id)`` (``tests.trust.outcomes.upstream_order``). Fails unless
        UPSTREAM holds exactly the season in the published order: the expectations hold for
        that order only."""
        published = [m.nats_msg_id for m in self.messages]
        stored = [msg_id for _, _, msg_id in order]
        if stored != published:
            first = next((i for i, (a, b) in enumerate(zip(stored, published, strict=False)) if a != b), min(len(stored), len(published)))
            raise AssertionError(
                f"UPSTREAM holds {len(stored)} messages, {len(published)} published; first difference at index {first}: "
                f"{stored[first:first + 3]} stored, {published[first:first + 3]} published"
            )
        return {seq: (m.kind, m.reason) for (seq, _, _), m in zip(order, self.messages, strict=True)}

    def figures(self) -> dict[str, Any]:
        kinds = Counter(m.kind if m.reason is None or m.kind == "conflict" else f"{m.kind}:{m.reason}" for m in self.messages)
        return {"messages": len(self.messages), "expected": dict(sorted(kinds.items()))}


def stateful_season(count: int, seed: str = "stateful", block: int = 40) -> StatefulSeason:
    """``count`` people whose messages' verdicts depend on what the ledger knows when it decides
    them, so that a message decided a second time (after a lost acknowledgement, a recreated
    consumer, a second writer) shows:

    - a payment published *before* its enrollment (``no_enrollment``; decided again after the
      enrollment it would be recorded), then the enrollment, then, a block later, the payment
      again under a new msg_id (recorded; ``already_enrolled`` had the first been recorded);
    - an enrollment, the death, then a payment dated after it (``deceased``);
    - cash: one person pays with a receipt, the next reuses that receipt number
      (``duplicate_receipt``) and then pays with a fresh one (recorded);
    - a wrong amount (``amount_mismatch``) followed by the right one;
    - repeats of a msg_id a block later: an enrollment with the same body (a harmless
      ``duplicate``: no events, no rejection) and a payment with a different amount (``conflict``:
      one rejection ``msg_id_conflict``; the first stands). Repeats are published under another
      ``Nats-Msg-Id`` so that UPSTREAM keeps them;
    - everyone else enrolls and pays (recorded).

    People come in blocks of ``block``: within a block, early payments, then enrollments, deaths
    and payments; repeats and resends of a block go out with the next one.
    """
    ids = people(count, seed)
    rng = random.Random(seed)
    roles = ["plain", "early", "early", "dies", "cash_first", "cash_reuse", "repeat_same", "repeat_different",
             "wrong_amount", "plain"]  # fmt: skip
    died, registered, paid_late = "2021-09-10", "2021-09-12T10:00:00+08:00", "2021-09-20T10:00:00+08:00"
    messages: list[Published] = []
    carried: list[Published] = []

    def enrollment(i: int) -> dict[str, Any]:
        return {"msg_id": f"e-{i}", "occurred_at": T0, "id_number": ids[i], "coverage_year": 2022,
                "category": "resident", "channel": "wechat", "district": "340104"}  # fmt: skip

    def payment(i: int, msg_id: str, amount: int = PAYMENT_FEN, at: str = T0, **extra: Any) -> dict[str, Any]:
        return {"msg_id": msg_id, "occurred_at": at, "id_number": ids[i], "coverage_year": 2022,
                "amount_fen": amount, "channel": "wechat", "paid_at": at, **extra}  # fmt: skip

    def cash(i: int, msg_id: str, receipt: str) -> dict[str, Any]:
        return {**payment(i, msg_id), "channel": "community_cash", "receipt_no": receipt, "collector_id": "C340104-07"}

    ENROLL, PAY, DEATH = "upstream.enrollment.requested", "upstream.payment.received", "upstream.death.registered"
    for start in range(0, count, block):
        members = list(range(start, min(start + block, count)))
        offset = rng.randrange(len(roles))
        role = {i: roles[(i + offset) % len(roles)] for i in members}
        early, enrollments, deaths, payments, later = [], [], [], [], []
        for i in members:
            r = role[i]
            enrollments.append(Published(ENROLL, enrollment(i), f"e-{i}", "recorded"))
            if r == "early":
                body = payment(i, f"p-{i}")
                early.append(Published(PAY, body, f"p-{i}", "rejected", "no_enrollment"))
                later.append(Published(PAY, payment(i, f"p-{i}-again"), f"p-{i}-again", "recorded"))
            elif r == "dies":
                deaths.append(Published(DEATH, {"msg_id": f"d-{i}", "occurred_at": registered, "id_number": ids[i],
                                                "date_of_death": died}, f"d-{i}", "recorded"))  # fmt: skip
                payments.append(Published(PAY, payment(i, f"p-{i}", at=paid_late), f"p-{i}", "rejected", "deceased"))
            elif r == "cash_first":
                payments.append(Published(PAY, cash(i, f"p-{i}", f"R-{i}"), f"p-{i}", "recorded"))
            elif r == "cash_reuse":
                # The receipt of the person before, if that one paid cash; else an ordinary cash payment.
                if role.get(i - 1) == "cash_first":
                    payments.append(Published(PAY, cash(i, f"p-{i}-reused", f"R-{i - 1}"), f"p-{i}-reused", "rejected",
                                              "duplicate_receipt"))  # fmt: skip
                payments.append(Published(PAY, cash(i, f"p-{i}", f"R-{i}"), f"p-{i}", "recorded"))
            elif r == "wrong_amount":
                payments.append(Published(PAY, payment(i, f"p-{i}-wrong", amount=PAYMENT_FEN - 100), f"p-{i}-wrong",
                                          "rejected", "amount_mismatch"))  # fmt: skip
                payments.append(Published(PAY, payment(i, f"p-{i}"), f"p-{i}", "recorded"))
            else:
                payments.append(Published(PAY, payment(i, f"p-{i}"), f"p-{i}", "recorded"))
                if r == "repeat_same":
                    later.append(Published(ENROLL, enrollment(i), f"e-{i}~repeat", "duplicate"))
                elif r == "repeat_different":
                    later.append(Published(PAY, payment(i, f"p-{i}", amount=PAYMENT_FEN + 100), f"p-{i}~other",
                                           "conflict", "msg_id_conflict"))  # fmt: skip
        # The block's early payments come a few dozen messages before their enrollments (within
        # one pull), the previous block's repeats and resends before this block's payments.
        messages.extend(early)
        messages.extend(enrollments)
        messages.extend(deaths)
        messages.extend(carried)
        messages.extend(payments)
        carried = later
    messages.extend(carried)
    return StatefulSeason(messages)
