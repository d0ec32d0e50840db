"""The sender is its credentials, on the deploy configuration (issue 12 §2; docs/contract.md "Who
sent it"): ``ledger serve`` as the ``ledger`` user on ``deploy/nats/single.conf`` with its
``accounts.conf`` (TLS, a free port, generated passwords: ``tests.trust.test_permissions``), each
upstream system publishing with its own account's user.

The serve runs with ``LEDGER_UNATTRIBUTED=refuse``, small intakes (``LEDGER_INTAKE_MAX_BYTES``
256 KiB, ``LEDGER_INTAKE_MAX_MSG_SIZE`` 4 KiB) and a checkpoint a second, payload encryption off
(the outcomes are counted from the stored events: ``tests.trust.outcomes``). First a simulated
season of 200 people goes in, every message through the account of the system that sends it
(``simulation.season.sender_of``); then each test adds what it tries.

- every sender's facts arrive as ``upstream.<sender>.<noun>.<verb>`` in its own intake, and every
  event they cause names that account in its source;
- a cash payment from the WeChat system is ``not_authorised``; WeChat reads why from
  ``REJECTED_WECHAT_PAY``, the tax office can neither read that stream nor find it in its own;
- one ``msg_id`` (and ``Nats-Msg-Id``) from the tax office and from civil affairs is two messages,
  each with exactly one outcome;
- a message over the size limit is refused at publish, a full intake refuses its sender only;
- an auditor (its own account, ``NATS_API_PREFIX=$JS.ledger.API``) runs ``ledger verify``,
  ``replay``, ``coverage``, ``parked list`` and ``status``, reading by stream info and direct get only;
- with ``LEDGER_UNATTRIBUTED=refuse``, a fact without a sender token is ``not_authorised``;
- and every upstream message has exactly one outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest

from contract.rejection import Rejection, decode_rejection
from contract.subjects import intake_stream, sender_rejected_stream, upstream_subject
from ledger.senders import SENDERS
from simulation.season import MIN_PEOPLE, Message, simulate
from tests.integration.ingest_support import ROOT, ingestion_finished, wait_for
from tests.trust.cluster import LedgerServe, serve_env
from tests.trust.outcomes import assert_exactly_one_outcome, count_outcomes, read_stream
from tests.trust.test_permissions import API, DeployServer, _valid_id, start_deploy_server, stop_deploy_server
from tests.trust.test_permissions import SENDERS as FACTS_OF

MAX_BYTES = 256 * 1024
MAX_MSG_SIZE = 4096
SERVE_SETTINGS = {
    "LEDGER_UNATTRIBUTED": "refuse",
    "LEDGER_INTAKE_MAX_BYTES": str(MAX_BYTES),
    "LEDGER_INTAKE_MAX_MSG_SIZE": str(MAX_MSG_SIZE),
    "LEDGER_CHECKPOINT_SECONDS": "1",
}
T0 = "2021-09-20T10:00:00+08:00"
SHARE_2022 = 32000
"""A resident's 2022 individual share, in fen."""
TAX_PAYER = _valid_id("340104198203040021")
"""Enrolled by the community and paid through the tax office, with the season."""
UNPAID = _valid_id("340104197911120032")
"""Enrolled by the community, unpaid: for the msg_id shared by two senders."""


def extras() -> list[Message]:
    """Besides the season: two residents registered and enrolled (through community_qr), one paid
    through the tax office (whatever the season's tax-channel enrollments become)."""
    messages = []
    for n, id_number in enumerate((TAX_PAYER, UNPAID)):
        messages += [
            Message("upstream.person.registered", {"msg_id": f"extra-reg-{n}", "occurred_at": T0, "id_number": id_number,
                                                   "name": "测试", "district": "340104"}),
            Message("upstream.enrollment.requested", {"msg_id": f"extra-enr-{n}", "occurred_at": T0, "id_number": id_number,
                                                      "coverage_year": 2022, "category": "resident", "channel": "community_qr",
                                                      "district": "340104"}),
        ]  # fmt: skip
    messages.append(Message("upstream.payment.received", {"msg_id": "extra-tax-pay", "occurred_at": T0, "id_number": TAX_PAYER,
                                                          "coverage_year": 2022, "amount_fen": SHARE_2022, "channel": "tax",
                                                          "paid_at": T0}))  # fmt: skip
    return messages


@dataclass
class Deployed:
    server: DeployServer
    serve: LedgerServe
    season: list[Message]
    acks: list[tuple[Message, Any]] = field(default_factory=list)
    """Each season message and the PubAck its sender got."""

    def url(self, user: str) -> str:
        return self.server.url(user)

    @property
    def data_dir(self) -> Path:
        return self.serve.data_dir


async def publish(server: DeployServer, user: str, subject: str, body: dict[str, Any] | bytes, msg_id: str | None = None) -> Any:
    """``user`` publishes ``body`` on ``subject`` with JetStream (Nats-Msg-Id ``msg_id``, by default
    the body's); the PubAck."""
    nc = await nats.connect(server.url(user))
    try:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        msg_id = msg_id or (body["msg_id"] if isinstance(body, dict) else None)
        return await nc.jetstream().publish(subject, data, headers={"Nats-Msg-Id": msg_id} if msg_id else None)
    finally:
        await nc.close()


def upstream_end(deployed: Deployed) -> int:
    async def ask() -> int:
        nc = await nats.connect(deployed.url("admin"))
        try:
            return int((await nc.jetstream().stream_info("UPSTREAM")).state.last_seq)
        finally:
            await nc.close()

    return asyncio.run(ask())


def ingested(deployed: Deployed) -> int:
    """Wait until the ingestion has decided every UPSTREAM message (UPSTREAM is derived from the
    intakes a moment after each publish); UPSTREAM's last sequence."""
    end = upstream_end(deployed)
    wait_for(lambda: ingestion_finished(deployed.url("admin"), end), 60, f"the ingestion of UPSTREAM up to {end}")
    return end


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    directory = tmp_path_factory.mktemp("senders")
    server = start_deploy_server(directory, admin=True)
    try:
        serve = LedgerServe(server.url("ledger"), directory / "data", directory / "serve.log", batch_size=100,
                                settings=SERVE_SETTINGS).start()  # fmt: skip
        server.serve = serve  # type: ignore[assignment]  # stopped by stop_deploy_server
        wait_for(lambda: (directory / "data" / "serve.url").exists() or not serve.alive, 60, "ledger serve as the ledger user")
        assert serve.alive, serve.log_tail()
        # A season message its sender may not send at all (ledger/senders.py; accounts.conf would
        # refuse the publish as a permissions violation) is left out: with the tax office entitled
        # to payments and remittances only, its tax-channel enrollments were.
        season = [m for m in simulate(MIN_PEOPLE, seed=12).messages if m.subject in FACTS_OF[m.sender]] + extras()
        deployed = Deployed(server, serve, season)

        async def publish_season() -> None:
            connections = {user: await nats.connect(server.url(user)) for user in SENDERS}
            try:
                for message in deployed.season:
                    js = connections[message.sender].jetstream()
                    data = json.dumps(message.body, ensure_ascii=False).encode()
                    ack = await js.publish(message.subject, data, headers={"Nats-Msg-Id": message.body["msg_id"]})
                    deployed.acks.append((message, ack))
            finally:
                for nc in connections.values():
                    await nc.close()

        asyncio.run(publish_season())
        ingested(deployed)
        yield deployed
    finally:
        stop_deploy_server(server)


# ---- reading what the ledger holds ---------------------------------------------------------------


async def _read_all(url: str, stream: str) -> list[Any]:
    nc = await nats.connect(url)
    try:
        return [m async for m in read_stream(nc, stream)]
    finally:
        await nc.close()


def stored(deployed: Deployed, stream: str) -> list[Any]:
    """Every message of ``stream`` (read by the test-only admin of the ledger's account)."""
    return asyncio.run(_read_all(deployed.url("admin"), stream))


def event_sources(deployed: Deployed) -> list[dict[str, Any]]:
    """The source of every event on LEDGER (stored in clear: this serve does not encrypt)."""
    sources = []
    for m in stored(deployed, "LEDGER"):
        if m.subject.startswith("ledger.evt."):
            source = msgspec.json.decode(m.data)["source"]
            sources.append(source.get("_data_", source))
    return sources


async def own_rejections(server: DeployServer, user: str, stream: str | None = None) -> list[Rejection]:
    """Every rejection in ``stream`` (default: the user's own REJECTED_<SENDER>), read by ``user``
    by direct get through its account's import."""
    stream = stream or sender_rejected_stream(user)
    nc = await nats.connect(server.url(user))
    try:
        found, seq = [], 1
        while True:
            reply = await nc.request(f"{API}.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=5)
            if (reply.headers or {}).get("Status"):
                return found
            assert reply.headers["Nats-Subject"].endswith(f".{user}"), reply.headers
            found.append(decode_rejection(reply.data))
            seq = int(reply.headers["Nats-Sequence"]) + 1
    finally:
        await nc.close()


def wait_for_rejection(server: DeployServer, user: str, msg_id: str, timeout: float = 30.0) -> Rejection:
    """The rejection of ``msg_id`` as ``user`` reads it from its own REJECTED_<SENDER>."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in asyncio.run(own_rejections(server, user)) if r.msg_id == msg_id]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"no rejection of {msg_id} in {sender_rejected_stream(user)}"
        time.sleep(0.1)


def ledger_command(deployed: Deployed, user: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``ledger <args>`` as ``user`` (its password in the URL), payload encryption off as serve's."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args, "--nats-url", deployed.url(user)],
        cwd=ROOT, env={**serve_env(), **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def person_of(deployed: Deployed, subject: str, **wanted: Any) -> str:
    """The ID number of a season message on ``subject`` whose body has ``wanted``."""
    for m in deployed.season:
        if m.subject == subject and all(m.body.get(k) == v for k, v in wanted.items()) and "id_number" in m.body:
            return str(m.body["id_number"])
    raise AssertionError(f"no {subject} with {wanted} in the season")


# ---- (a) the sender from its credentials ----------------------------------------------------------


def test_each_senders_facts_arrive_under_its_name_and_their_events_name_its_account(deployed: Deployed) -> None:
    """Given a season published by every sender through its own account, when the ledger has
    ingested it, then each message was acknowledged by the sender's own intake, UPSTREAM holds it
    as upstream.<sender>.<noun>.<verb>, and every event it caused records that account as its
    source's account (whatever the body says of channels)."""
    senders = Counter(m.sender for m in deployed.season)
    assert set(senders) == set(SENDERS), senders  # every sender has sent something
    for message, ack in deployed.acks:
        assert ack.stream == intake_stream(message.sender) and not ack.duplicate, (message, ack)
    upstream = stored(deployed, "UPSTREAM")
    by_msg_id = {m.headers.get("Nats-Msg-Id"): m for m in upstream}
    sender_at: dict[int, str] = {}
    for message in deployed.season:
        held = by_msg_id[message.body["msg_id"]]
        assert held.subject == upstream_subject(message.subject, message.sender), (held.subject, message.sender)
        sender_at[held.seq] = message.sender
    sources = [s for s in event_sources(deployed) if s.get("upstream_seq") in sender_at]
    recorded = Counter(s["account"] for s in sources)
    wrong = [s for s in sources if s["account"] != sender_at[s["upstream_seq"]]]
    assert not wrong, wrong[:5]
    assert set(recorded) == set(SENDERS), f"events per account: {recorded}"


# ---- (b) not entitled: refused, and the refusal is the sender's alone -----------------------------


def test_a_cash_payment_from_the_wechat_system_is_not_authorised_and_only_wechat_reads_why(deployed: Deployed) -> None:
    """Given a resident enrolled through WeChat, when the WeChat system posts a payment through the
    community_cash channel naming a collector and a receipt, then the ledger refuses it
    not_authorised and records nothing; WeChat reads the rejection from REJECTED_WECHAT_PAY; the
    tax office's request for REJECTED_WECHAT_PAY is a permissions violation, and REJECTED_TAX does
    not hold it."""
    id_number = person_of(deployed, "upstream.enrollment.requested", channel="wechat")
    cash = {"msg_id": "wx-cash-1", "occurred_at": T0, "id_number": id_number, "coverage_year": 2022, "amount_fen": 38000,
            "channel": "community_cash", "paid_at": T0, "collector_id": "collector-7", "receipt_no": "R-0001"}  # fmt: skip
    ack = asyncio.run(publish(deployed.server, "wechat_pay", "upstream.payment.received", cash))
    assert ack.stream == intake_stream("wechat_pay")
    rejection = wait_for_rejection(deployed.server, "wechat_pay", "wx-cash-1")
    assert rejection.reason == "not_authorised" and rejection.subject == "upstream.wechat_pay.payment.received", rejection
    assert "community_cash" in rejection.detail, rejection.detail
    assert not [s for s in event_sources(deployed) if s["msg_id"] == "wx-cash-1"]

    async def tax_asks() -> tuple[list[str], bool]:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e).lower())

        nc = await nats.connect(deployed.url("tax"), error_cb=on_error)
        try:
            try:
                await nc.request(f"{API}.DIRECT.GET.{sender_rejected_stream('wechat_pay')}", b'{"seq": 1}', timeout=1)
                answered = True
            except nats.errors.TimeoutError:
                answered = False
            await nc.flush()
        finally:
            await nc.close()
        return errors, answered

    errors, answered = asyncio.run(tax_asks())
    assert not answered
    assert any('permissions violation for publish to "$js.ledger.api.direct.get.rejected_wechat_pay"' in e for e in errors), errors
    taxes = asyncio.run(own_rejections(deployed.server, "tax"))
    assert "wx-cash-1" not in {r.msg_id for r in taxes}


# ---- (c) msg_id is unique per sender --------------------------------------------------------------


def test_the_same_msg_id_from_the_tax_office_and_civil_affairs_is_two_messages_each_with_one_outcome(
    deployed: Deployed,
) -> None:
    """Given the tax office (a payment) and civil affairs (a roster line) both sending msg_id
    "shared-7", as Nats-Msg-Id too, about the same resident, then neither PubAck is a duplicate,
    UPSTREAM holds both, and each has exactly one outcome of its own: both recorded (neither a
    duplicate nor a msg_id conflict of the other), each event naming its own sender."""
    payment = {"msg_id": "shared-7", "occurred_at": T0, "id_number": UNPAID, "coverage_year": 2022, "amount_fen": SHARE_2022,
               "channel": "tax", "paid_at": T0}  # fmt: skip
    roster = {"msg_id": "shared-7", "occurred_at": T0, "id_number": UNPAID, "coverage_year": 2022,
              "subsidy_category": "dibao", "department": "civil_affairs", "roster": "2021-09"}  # fmt: skip
    tax_ack = asyncio.run(publish(deployed.server, "tax", "upstream.payment.received", payment))
    civil_ack = asyncio.run(publish(deployed.server, "civil_affairs", "upstream.subsidy.listed", roster))
    assert (tax_ack.stream, civil_ack.stream) == (intake_stream("tax"), intake_stream("civil_affairs"))
    assert not tax_ack.duplicate and not civil_ack.duplicate, (tax_ack, civil_ack)
    end = ingested(deployed)
    seqs = {m.subject: m.seq for m in stored(deployed, "UPSTREAM") if m.headers.get("Nats-Msg-Id") == "shared-7"}
    assert set(seqs) == {"upstream.tax.payment.received", "upstream.civil_affairs.subsidy.listed"}, seqs
    counts = count_outcomes(deployed.url("admin"))
    for subject, seq in seqs.items():
        outcome = counts.by_seq[seq]
        assert outcome.outcomes == 1 and outcome.disagreement() is None, (subject, outcome.summary())
        assert outcome.kind == "recorded", (subject, outcome.summary())
    accounts = Counter(s["account"] for s in event_sources(deployed) if s["msg_id"] == "shared-7")
    assert set(accounts) == {"civil_affairs", "tax"}, accounts
    assert end >= max(seqs.values())


# ---- (d) limits per sender -------------------------------------------------------------------------


async def _intake_state(server: DeployServer, sender: str) -> tuple[int, int]:
    nc = await nats.connect(server.url("admin"))
    try:
        state = (await nc.jetstream().stream_info(intake_stream(sender))).state
        return state.messages, state.bytes
    finally:
        await nc.close()


def test_a_message_over_the_size_limit_is_refused_at_publish_and_not_stored(deployed: Deployed) -> None:
    """Given LEDGER_INTAKE_MAX_MSG_SIZE of 4 KiB, when the bureau publishes a 5 KiB message, then
    its publish fails with the stream's error and its intake holds nothing more."""
    before = asyncio.run(_intake_state(deployed.server, "bureau"))
    big = {"msg_id": "bureau-big-1", "occurred_at": T0, "padding": "x" * (MAX_MSG_SIZE + 1000)}
    with pytest.raises(nats.js.errors.APIError) as refused:
        asyncio.run(publish(deployed.server, "bureau", "upstream.target.set", big))
    assert (refused.value.err_code, refused.value.description) == (10054, "message size exceeds maximum allowed"), refused.value
    assert asyncio.run(_intake_state(deployed.server, "bureau")) == before


def test_a_full_intake_refuses_its_sender_while_the_others_still_publish(deployed: Deployed) -> None:
    """Given LEDGER_INTAKE_MAX_BYTES of 256 KiB, when veterans affairs publishes 3 KiB messages
    until its intake refuses one, then the refused publish fails with the stream's error, nothing
    of it is stored, another publish of veterans affairs is refused too, and the bureau's next
    message is acknowledged."""
    padding = "x" * 3000
    refusal = None
    for n in range(1, MAX_BYTES // 3000 + 10):
        filler = {"msg_id": f"vet-fill-{n:04d}", "occurred_at": T0, "padding": padding}
        try:
            asyncio.run(publish(deployed.server, "veterans", "upstream.discharge.registered", filler))
        except nats.js.errors.APIError as e:
            refusal = e
            break
    assert refusal is not None, "the intake never filled"
    assert (refusal.err_code, refusal.description) == (10077, "maximum bytes exceeded"), refusal  # discard new
    full = asyncio.run(_intake_state(deployed.server, "veterans"))
    assert full[1] <= MAX_BYTES, full
    again = {**filler, "msg_id": "vet-fill-agai"}  # as large as the refused one
    with pytest.raises(nats.js.errors.APIError):
        asyncio.run(publish(deployed.server, "veterans", "upstream.discharge.registered", again))
    assert asyncio.run(_intake_state(deployed.server, "veterans")) == full
    target = {"msg_id": "bureau-after-full", "occurred_at": T0, "district": "340104", "coverage_year": 2022, "target_count": 1000}
    ack = asyncio.run(publish(deployed.server, "bureau", "upstream.target.set", target))
    assert ack.stream == intake_stream("bureau") and ack.seq > 0
    print(f"\nveterans' intake full after {n - 1} fillers: {full[0]} messages, {full[1]:,} bytes of {MAX_BYTES:,}")


# ---- (e) an auditor reads through its imports ------------------------------------------------------


def _views(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of a view database, its rows sorted."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        db.close()


def test_an_auditor_verifies_replays_and_reads_coverage_through_its_imports(deployed: Deployed, tmp_path: Path) -> None:
    """Given the auditor's account (stream info and direct get of LEDGER, its checkpoints,
    UPSTREAM and REJECTED; no consumer), when it runs ledger verify, replay, coverage and parked
    list with NATS_API_PREFIX=$JS.ledger.API, then each works: verify finds the ledger intact and
    checked against a checkpoint covering every message, the replay builds the same views as a
    replay by a user of the ledger's own account (which follows the streams with consumers), and
    coverage answers as it does for that user."""
    auditor = {"NATS_API_PREFIX": API}
    key = tmp_path / "ledger.pub"  # pinned outside the ledger's data directory
    public = subprocess.run([sys.executable, "-m", "service.cli", "keys", "public", "--data-dir", str(deployed.data_dir)],
                            cwd=ROOT, env=serve_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert public.returncode == 0, public.stderr
    key.write_text(public.stdout)
    ingested(deployed)
    ledger_end = stored(deployed, "LEDGER")[-1].seq

    def covered() -> bool:
        last = stored(deployed, "LEDGER_CHECKPOINTS")
        return bool(last) and msgspec.json.decode(last[-1].data)["checkpoint"]["last_seq"] >= ledger_end

    wait_for(covered, 60, f"a checkpoint covering LEDGER up to {ledger_end}")
    verify = ledger_command(deployed, "auditor", "verify", "--trust-key", str(key), "--format", "json",
                            "--data-dir", str(tmp_path / "audit"), env=auditor)  # fmt: skip
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    report = json.loads(verify.stdout)
    assert report["intact"] and report["checkpoints"] >= 1 and report["events"] > 0, report
    assert report["last_checkpoint_seq"] >= ledger_end and report["findings"] == [], report
    print(f"\nthe auditor's verify: {report['messages']} messages, {report['events']} events, {report['checkpoints']} checkpoints")

    replays = {}
    for user, env in (("auditor", auditor), ("admin", {})):
        views = tmp_path / f"{user}.sqlite"
        done = ledger_command(deployed, user, "replay", "--views", f"sqlite:///{views}", "--data-dir", str(tmp_path / user),
                              "--format", "json", env=env)  # fmt: skip
        assert done.returncode == 0, (user, done.stderr[-3000:])
        replays[user] = (json.loads(done.stdout), _views(views))
    (audited, audited_views), (own, own_views) = replays["auditor"], replays["admin"]
    assert audited["ledger_events"] == own["ledger_events"] > 0 and audited["rejections"] == own["rejections"] > 0
    assert audited_views == own_views

    id_number = person_of(deployed, "upstream.payment.received", channel="wechat")
    answers = {}
    for user, env in (("auditor", auditor), ("admin", {})):
        done = ledger_command(deployed, user, "coverage", id_number, "--date", "2022-03-01", "--format", "json",
                              "--data-dir", str(tmp_path / user), env=env)  # fmt: skip
        assert done.returncode == 0, (user, done.stderr[-3000:])
        answers[user] = json.loads(done.stdout)
    assert answers["auditor"] == answers["admin"] and answers["auditor"], answers

    parked = ledger_command(deployed, "auditor", "parked", "list", "--format", "json", "--data-dir", str(tmp_path / "audit"), env=auditor)
    assert parked.returncode == 0 and json.loads(parked.stdout) == [], parked.stdout + parked.stderr[-3000:]
    status = ledger_command(deployed, "auditor", "status", "--format", "json", "--data-dir", str(tmp_path / "audit"), env=auditor)
    assert status.stdout, status.stderr[-3000:]
    report = json.loads(status.stdout)
    assert report["writer"] and report["streams"]["LEDGER"]["messages"] and "COVERAGE" in report["streams"], status.stderr[-3000:]
    log = (deployed.server.directory / "nats-server.log").read_text()
    assert '"AUDIT/user:auditor" - Publish Violation' not in log, "the auditor's commands asked for something not imported"


# ---- (f) unattributed messages refused -------------------------------------------------------------


def test_an_unattributed_fact_is_not_authorised_when_the_ledger_refuses_them(deployed: Deployed) -> None:
    """Given LEDGER_UNATTRIBUTED=refuse, when a user of the ledger's own account (the test's
    admin: no import adds a sender token) publishes a valid registration as
    upstream.person.registered, then it is stored in UPSTREAM_UNATTRIBUTED and rejected
    not_authorised (on ledger.rejected.not_authorised.unattributed), with no event."""
    body = {"msg_id": "unattributed-1", "occurred_at": T0, "id_number": person_of(deployed, "upstream.person.registered"),
            "name": "无名", "district": "340104"}  # fmt: skip
    ack = asyncio.run(publish(deployed.server, "admin", "upstream.person.registered", body))
    assert ack.stream == "UPSTREAM_UNATTRIBUTED", ack
    ingested(deployed)

    def rejected() -> list[Any]:
        return [m for m in stored(deployed, "REJECTED") if decode_rejection(m.data).msg_id == "unattributed-1"]

    wait_for(lambda: bool(rejected()), 30, "the rejection of the unattributed message on REJECTED")
    (held,) = rejected()
    rejection = decode_rejection(held.data)
    assert held.subject == "ledger.rejected.not_authorised.unattributed", held.subject
    assert rejection.reason == "not_authorised" and rejection.subject == "upstream.person.registered", rejection
    assert not [s for s in event_sources(deployed) if s["msg_id"] == "unattributed-1"]


# ---- and every message had one outcome ---------------------------------------------------------------


def test_every_upstream_message_has_exactly_one_outcome(deployed: Deployed) -> None:
    """After everything above: each UPSTREAM message, whichever sender, has exactly one outcome
    (tracking records, rejections and events agree)."""
    end = ingested(deployed)
    counts = count_outcomes(deployed.url("admin"))
    assert_exactly_one_outcome(counts, end)
    print(f"\nsenders on the deploy config: {end} upstream messages, {json.dumps(counts.figures(end)['kinds'])}")
