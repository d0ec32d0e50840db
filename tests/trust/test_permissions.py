"""The accounts of ``deploy/nats/accounts.conf``, tried on a real nats-server.

One nats-server runs ``deploy/nats/single.conf`` unchanged (a copy in a temporary directory, on
a free port, with every password from the environment as in production) plus one test-only
user: ``admin``, unrestricted in the LEDGER account, to show that the streams themselves refuse
deletes and purges even to someone no permission stops. ``ledger serve`` runs as the ``ledger``
user and creates its streams (LEDGER with the store's own ``StreamSpec``, UPSTREAM, REJECTED,
COVERAGE, the KV bucket ``coverage``).

Each case in ``CASES`` is one attempt by one user and what the server must answer: a PubAck, a
reply, a permissions violation for that very subject, or a stream's own error. Refusals are then
checked in the streams as well (nothing forged reached LEDGER, REJECTED, UPSTREAM, COVERAGE or the
bucket). ``test_ingestion_through_deploy_users`` runs the real ingestion with these users.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import nats
import pytest

from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.person import person_id
from ledger.jetstream.datastore import StreamSpec
from ledger.jetstream.server import _read_info, find_server_binary, free_port
from tests.integration.ingest_support import CIPHER_KEY, SECRET, ServeProcess, ingestion_finished, wait_for
from tests.trust.tls_support import DevCerts, dev_certs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "nats"

# ---- who may send what: contract.md's "sender" column, as deploy/nats/accounts.conf grants it ----

FACTS = (
    "upstream.person.registered",
    "upstream.enrollment.requested",
    "upstream.payment.received",
    "upstream.subsidy.listed",
    "upstream.cash.remitted",
    "upstream.death.registered",
    "upstream.employee_insurance.changed",
    "upstream.discharge.registered",
    "upstream.target.set",
)
SENDERS: dict[str, tuple[str, ...]] = {
    "wechat_pay": ("upstream.enrollment.requested", "upstream.payment.received"),
    "tax": ("upstream.payment.received", "upstream.cash.remitted"),
    "community": (
        "upstream.person.registered", "upstream.enrollment.requested", "upstream.payment.received",
        "upstream.cash.remitted",
    ),
    "civil_affairs": ("upstream.subsidy.listed", "upstream.death.registered"),
    "universities": ("upstream.enrollment.requested", "upstream.payment.received"),
    "employee_insurance": ("upstream.employee_insurance.changed",),
    "public_security": ("upstream.person.registered", "upstream.death.registered"),
    "veterans": ("upstream.discharge.registered",),
    "bureau": ("upstream.target.set", "upstream.subsidy.listed"),
}  # fmt: skip
DOWNSTREAM = ("hospital", "reminders")
USERS = ("ledger", *SENDERS, *DOWNSTREAM, "auditor")
INBOX_PREFIX = {"hospital": "_INBOX_downstream", "reminders": "_INBOX_downstream"}
IMMUTABLE = ("LEDGER", "REJECTED", "UPSTREAM")
ADMIN_API = ("STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE", "STREAM.UPDATE")


def password_variable(user: str) -> str:
    return f"{user.upper()}_NATS_PASSWORD"


# ---- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One attempt: ``user`` does ``action`` on ``subject``; the server must answer ``expect``.

    action: ``publish`` (a JetStream publish or API request, waiting for its answer) or
    ``subscribe``; expect: ``acked`` (a PubAck), ``reply`` (any non-error answer), ``refused`` (a
    permissions violation for this subject), ``stream:<code>`` (the stream's own error code).
    """

    user: str
    action: str
    subject: str
    expect: str
    body: Any = None
    reply_to: str | None = None

    @property
    def id(self) -> str:
        redirect = f"(reply->{self.reply_to})" if self.reply_to else ""
        return f"{self.user}-{self.action}-{self.subject}{redirect}-{self.expect}"


def _marker(user: str, subject: str) -> dict[str, Any]:
    """A body that names who tried what (not a valid contract message: rejected if it lands)."""
    return {"msg_id": f"perm-{user}-{subject}-{secrets.token_hex(4)}", "forged_by": user, "attempt": subject}


def _cases() -> list[Case]:
    cases: list[Case] = []
    # Upstream systems: exactly their own facts, nothing else, not even via a reply subject.
    for user, allowed in SENDERS.items():
        for fact in FACTS:
            cases.append(Case(user, "publish", fact, "acked" if fact in allowed else "refused"))
        for subject in (
            f"ledger.evt.forged.{user}",
            f"ledger.trk.forged{user}",
            f"ledger.rejected.forged.{user}",
            f"$KV.coverage.forged_{user}",
            f"coverage.changed.forged.{user}",
            "coverage.query",
            "$JS.API.STREAM.INFO.UPSTREAM",
            "$JS.API.STREAM.PURGE.UPSTREAM",
            "$JS.API.STREAM.DELETE.LEDGER",
            "$JS.API.CONSUMER.CREATE.UPSTREAM",
        ):
            cases.append(Case(user, "publish", subject, "refused"))
        for subject in (">", "upstream.>", "ledger.>"):
            cases.append(Case(user, "subscribe", subject, "refused"))
        # The PubAck of an allowed publish, redirected onto another system's subject, must not
        # become a message there (it goes back into the sender's own account).
        other = next(f for f in FACTS if f not in allowed)
        cases.append(Case(user, "publish", allowed[0], "acked", reply_to=other))
    # Downstream services: read coverage, write nothing.
    for user in DOWNSTREAM:
        for subject in (
            *FACTS,
            f"$KV.coverage.forged_{user}",  # a KV put (also delete and purge: same subject)
            f"coverage.changed.forged.{user}",
            f"ledger.evt.forged.{user}",
            f"ledger.rejected.forged.{user}",
            "$JS.API.STREAM.DELETE.KV_coverage",
            "$JS.API.STREAM.PURGE.KV_coverage",
            "$JS.API.STREAM.MSG.DELETE.KV_coverage",
            "$JS.API.STREAM.UPDATE.COVERAGE",
            "$JS.API.STREAM.PURGE.COVERAGE",
            "$JS.API.STREAM.CREATE.COPY",
            "$JS.API.STREAM.INFO.LEDGER",
            "$JS.API.DIRECT.GET.LEDGER",
            "$JS.API.CONSUMER.CREATE.LEDGER",
            "$JS.API.DIRECT.GET.UPSTREAM",
            "$JS.API.CONSUMER.DELETE.KV_coverage.someone",
            "$JS.API.CONSUMER.DELETE.COVERAGE.someone",
        ):
            cases.append(Case(user, "publish", subject, "refused"))
        cases.append(Case(user, "publish", "$JS.API.STREAM.INFO.KV_coverage", "reply", body={}))
        cases.append(Case(user, "publish", "$JS.API.STREAM.INFO.COVERAGE", "reply", body={}))
        for subject in ("coverage.query", "_INBOX.>", "ledger.>", "upstream.>", ">"):
            cases.append(Case(user, "subscribe", subject, "refused"))
    # Auditors: read LEDGER and REJECTED; never change a stream, never publish a fact.
    for stream in IMMUTABLE:
        for api in ADMIN_API:
            cases.append(Case("auditor", "publish", f"$JS.API.{api}.{stream}", "refused"))
    for subject in (
        *FACTS,
        "ledger.evt.forged.auditor",
        "ledger.rejected.forged.auditor",
        "$KV.coverage.forged_auditor",
        "coverage.changed.forged.auditor",
        "$JS.API.STREAM.CREATE.AUDIT_COPY",
        "$JS.API.STREAM.DELETE.KV_coverage",
        "$JS.API.STREAM.PURGE.COVERAGE",
        "$JS.API.CONSUMER.DELETE.UPSTREAM.ledger-ingest",
        "$JS.API.CONSUMER.DELETE.LEDGER.someone",
        "$JS.API.CONSUMER.DELETE.REJECTED.someone",
        "$JS.API.DIRECT.GET.UPSTREAM",
    ):
        cases.append(Case("auditor", "publish", subject, "refused"))
    for stream in ("LEDGER", "REJECTED"):
        cases.append(Case("auditor", "publish", f"$JS.API.STREAM.INFO.{stream}", "reply", body={}))
    # The ledger service writes the ledger, but can neither forge a fact nor change a stream.
    for fact in FACTS:
        cases.append(Case("ledger", "publish", fact, "refused"))
    for stream in IMMUTABLE:
        for api in ADMIN_API:
            cases.append(Case("ledger", "publish", f"$JS.API.{api}.{stream}", "refused"))
    # Nobody: the streams themselves refuse deletes and purges and keep those settings, even for
    # an unrestricted user (codes: 10110 purge not permitted, 10057 message delete not
    # permitted, 10052 an update cannot cancel deny_delete/deny_purge).
    for stream in IMMUTABLE:
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.PURGE.{stream}", "stream:10110", body={}))
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.MSG.DELETE.{stream}", "stream:10057", body={"seq": 1}))
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.UPDATE.{stream}", "stream:10052", body="deny_delete"))
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.UPDATE.{stream}", "stream:10052", body="deny_purge"))
    return cases


CASES = _cases()
CONNECT_CASES = ("anonymous", "wrong-password")
TRIED: list[tuple[str, str]] = []
"""(case id, outcome) of every case run, for the figure "permission cases tried"."""


# ---- the server and the ledger ------------------------------------------------------------------


@dataclass
class DeployServer:
    directory: Path
    port: int
    passwords: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    serve: ServeProcess | None = None
    certs: DevCerts | None = None
    """The development CA and certificates the server's TLS listener uses."""
    trusted: tuple[str | None] | None = None
    """``SSL_CERT_FILE`` as it was before the server trusted its CA process-wide (None: it did not)."""

    def url(self, user: str | None = None, password: str | None = None) -> str:
        if user is None:
            return f"tls://127.0.0.1:{self.port}"
        return f"tls://{user}:{password or self.passwords[user]}@127.0.0.1:{self.port}"


def start_deploy_server(
    directory: Path, *, admin: bool, certs: DevCerts | None = None, trust: bool = True, verify_clients: bool = False
) -> DeployServer:
    """nats-server on ``deploy/nats/single.conf`` (a copy, in ``directory``) on a free port.

    TLS as deployed: the certificates of ``deploy/tls/make-dev-ca`` (made in ``directory/tls``
    unless given) in the server's ``NATS_TLS_*`` variables; clients must use TLS (``url`` gives
    ``tls://`` URLs). With ``trust`` (the default), this process and the commands it starts
    trust the dev CA as if it were a system CA (``SSL_CERT_FILE``, which OpenSSL reads for every
    default SSL context: nats-py's for a ``tls://`` URL, the ledger's without
    ``LEDGER_NATS_CA_FILE``) until ``stop_deploy_server``: the tests of what the accounts allow
    need no TLS option at each connection. ``tests/trust/test_tls.py`` passes the CA explicitly
    instead."""
    shutil.copytree(DEPLOY, directory / "nats")
    certs = certs or dev_certs(directory / "tls")
    passwords = {user: "p" + secrets.token_hex(16) for user in USERS}  # see nats.env.example
    # Every other user accounts.conf has (a password variable each) gets one too.
    for name in re.findall(r"\$([A-Z][A-Z0-9_]*)_NATS_PASSWORD\b", (directory / "nats" / "accounts.conf").read_text()):
        passwords.setdefault(name.lower(), "p" + secrets.token_hex(16))
    if admin:
        passwords["admin"] = "p" + secrets.token_hex(16)
        accounts = directory / "nats" / "accounts.conf"
        text = accounts.read_text()
        # Test only: an unrestricted user in the LEDGER account (its users list comes first).
        text = text.replace("    users: [\n", "    users: [\n      { user: admin, password: $ADMIN_NATS_PASSWORD }\n", 1)
        accounts.write_text(text)
    env = {**os.environ, **{password_variable(u): p for u, p in passwords.items()},
           **certs.server_env("ledger-1", verify_clients=verify_clients)}  # fmt: skip
    server = DeployServer(directory, free_port(), passwords, certs=certs)
    check = subprocess.run(
        [str(find_server_binary()), "-t", "-c", "nats/single.conf"], cwd=directory, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    server.process = subprocess.Popen(
        [str(find_server_binary()), "-c", "nats/single.conf", "-a", "127.0.0.1", "-p", str(server.port),
         "-l", str(directory / "nats-server.log")],
        cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"nats-server exited: {server.process.stderr.read().decode() if server.process.stderr else ''}")
        try:
            info = _read_info("127.0.0.1", server.port)
            assert info.get("jetstream") and info.get("auth_required") and info.get("tls_required"), info
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if trust:
        server.trusted = (os.environ.get("SSL_CERT_FILE"),)
        os.environ["SSL_CERT_FILE"] = str(certs.ca_file)
    return server


def stop_deploy_server(server: DeployServer) -> None:
    if server.trusted is not None:
        (previous,) = server.trusted
        if previous is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = previous
        server.trusted = None
    if server.serve is not None and server.serve.process is not None:
        server.serve.stop()
    if server.process is not None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        if server.process.stderr:
            server.process.stderr.close()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployServer]:
    """The deploy server, and ``ledger serve`` on it as the ``ledger`` user, ready."""
    directory = tmp_path_factory.mktemp("deploy")
    server = start_deploy_server(directory, admin=True)
    try:
        serve = ServeProcess(server.url("ledger"), directory / "serve.log", batch_size=100, data_dir=directory / "data")
        server.serve = serve.start()
        wait_for(
            lambda: (directory / "data" / "serve.url").exists() or serve.process.poll() is not None,  # type: ignore[union-attr]
            60, "ledger serve to start as the ledger user",
        )  # fmt: skip
        assert serve.process is not None and serve.process.poll() is None, (directory / "serve.log").read_text()[-3000:]
        yield server
    finally:
        stop_deploy_server(server)


# ---- trying one case -----------------------------------------------------------------------------


async def _connect(server: DeployServer, user: str, errors: asyncio.Queue[str]) -> Any:
    async def on_error(e: Exception) -> None:
        errors.put_nowait(str(e).lower())

    return await nats.connect(
        server.url(user), error_cb=on_error, allow_reconnect=False, connect_timeout=5,
        inbox_prefix=INBOX_PREFIX.get(user, "_INBOX"),
    )  # fmt: skip


async def _violation(errors: asyncio.Queue[str], kind: str, subject: str) -> str:
    """Wait for the server's permissions violation for ``kind`` (publish/subscription) on ``subject``."""
    wanted = f'permissions violation for {kind} to "{subject.lower()}"'
    while True:
        error = await errors.get()
        if wanted in error:
            return error


async def _update_body(nc: Any, stream: str, flag: str) -> bytes:
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
    config = info["config"]
    config[flag] = False
    return json.dumps(config).encode()


async def try_case(server: DeployServer, case: Case, timeout: float = 5.0) -> str:
    """What the server answered: acked, reply, api:<code>, refused, or nothing."""
    errors: asyncio.Queue[str] = asyncio.Queue()
    nc = await _connect(server, case.user, errors)
    try:
        if case.action == "subscribe":
            await nc.subscribe(case.subject)
            await nc.flush()
            try:
                await asyncio.wait_for(_violation(errors, "subscription", case.subject), 1.0)
                return "refused"
            except TimeoutError:
                return "allowed"
        if isinstance(case.body, str):
            body = await _update_body(nc, case.subject.rsplit(".", 1)[1], case.body)
        elif case.body is not None:
            body = json.dumps(case.body).encode()
        else:
            body = json.dumps(_marker(case.user, case.subject)).encode()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        before = await _subject_count(server, case.reply_to) if case.reply_to else 0
        if case.reply_to:
            # The redirected answer goes to reply_to; our own check publishes without a reply.
            await nc.publish(case.subject, body, reply=case.reply_to)
            await nc.publish(case.subject, body, reply=inbox)
        else:
            await nc.publish(case.subject, body, reply=inbox)
        answer = asyncio.ensure_future(sub.next_msg(timeout=timeout))
        refused = asyncio.ensure_future(_violation(errors, "publish", case.subject))
        done, pending = await asyncio.wait({answer, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if refused in done:
            return "refused"
        if answer not in done or answer.exception() is not None:
            return "nothing"
        msg = answer.result()
        if case.reply_to:
            await asyncio.sleep(0.2)
            if await _subject_count(server, case.reply_to) != before:
                return "redirected answer stored"
        if msg.headers and msg.headers.get("Status") == "503":
            return "no responders"
        try:
            data = json.loads(msg.data) if msg.data else {}
        except ValueError:
            return "reply"
        if isinstance(data, dict) and "error" in data:
            return f"api:{data['error'].get('err_code')}"
        if isinstance(data, dict) and "stream" in data and "seq" in data:
            return "acked"
        return "reply"
    finally:
        await nc.close()


async def _subject_count(server: DeployServer, subject: str) -> int:
    nc = await nats.connect(server.url("ledger"))
    try:
        reply = await nc.request("$JS.API.STREAM.INFO.UPSTREAM", json.dumps({"subjects_filter": subject}).encode(), timeout=5)
        return int((json.loads(reply.data)["state"].get("subjects") or {}).get(subject, 0))
    finally:
        await nc.close()


def _expected(case: Case) -> str:
    if case.expect.startswith("stream:"):
        return "api:" + case.expect.split(":", 1)[1]
    return case.expect


# ---- the real ingestion with the deploy users ---------------------------------------------------

T0 = "2021-09-02T10:00:00+08:00"
PERSON = "340104199001011237"


def _valid_id(number: str) -> str:
    """``number`` with its check digit corrected (GB 11643)."""
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    total = sum(int(d) * w for d, w in zip(number[:17], weights, strict=True))
    return number[:17] + "10X98765432"[total % 11]


def test_ingestion_through_deploy_users(deployed: DeployServer) -> None:
    """First (before the cases below trickle their messages in): public_security registers a
    resident, wechat_pay enrolls and pays, community sends a bad ID number; ``ledger serve`` (the
    ``ledger`` user) records and rejects; a downstream user asks coverage.query, reads and watches the KV
    bucket and coverage.changed; an auditor reads LEDGER and REJECTED."""
    id_number = _valid_id(PERSON)
    key = PersonKeyer(SECRET.encode()).key_of(ResidentId.parse(id_number, today=date(2022, 1, 1)))
    messages = [
        ("public_security", "upstream.person.registered",
         {"msg_id": "ps-1", "occurred_at": T0, "id_number": id_number, "name": "测试居民", "district": "340104"}),
        ("wechat_pay", "upstream.enrollment.requested",
         {"msg_id": "wx-e-1", "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
          "category": "resident", "channel": "wechat", "district": "340104"}),
        ("wechat_pay", "upstream.payment.received",
         {"msg_id": "wx-p-1", "occurred_at": T0, "id_number": id_number, "coverage_year": 2022,
          "amount_fen": 32000, "channel": "wechat", "paid_at": T0}),
        ("community", "upstream.person.registered",
         {"msg_id": "c-1", "occurred_at": T0, "id_number": PERSON[:17] + "0", "name": "测试", "district": "340104"}),
    ]  # fmt: skip

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        hospital = await nats.connect(deployed.url("hospital"), inbox_prefix="_INBOX_downstream")
        changed = await hospital.subscribe("coverage.changed.>")
        kv = await hospital.jetstream().key_value("coverage")
        watcher = await kv.watch(key)
        for user, subject, body in messages:
            nc = await nats.connect(deployed.url(user))
            ack = await nc.jetstream().publish(subject, json.dumps(body, ensure_ascii=False).encode(),
                                               headers={"Nats-Msg-Id": body["msg_id"]})  # fmt: skip
            assert ack.stream == "UPSTREAM"
            await nc.close()
        upstream_end = (await _stream_info(deployed, "UPSTREAM"))["state"]["last_seq"]
        await asyncio.to_thread(wait_for, lambda: ingestion_finished(deployed.url("ledger"), upstream_end), 60, "ingestion")
        while seen.get("changed", {}).get("status") != "enrolled":  # awaiting_payment, then enrolled
            seen["changed"] = json.loads((await changed.next_msg(timeout=20)).data)
        while seen.get("watched", {}).get("coverage", {}).get("2022", {}).get("status") != "enrolled":
            entry = await watcher.updates(timeout=20)
            if entry is not None and entry.value:
                seen["watched"] = json.loads(entry.value)
        seen["kv"] = json.loads((await kv.get(key)).value)
        reply = await hospital.request("coverage.query", json.dumps({"id_number": id_number, "date": "2022-03-01"}).encode(), timeout=10)
        seen["query"] = json.loads(reply.data)
        await watcher.stop()
        await hospital.close()
        # The auditor reads the events (ordered consumer) and the rejections (direct get).
        auditor = await nats.connect(deployed.url("auditor"))
        js = auditor.jetstream()
        ledger_info = await js.stream_info("LEDGER")
        sub = await js.subscribe("", stream="LEDGER", ordered_consumer=True)
        seen["events"] = [(await sub.next_msg(timeout=5)).subject for _ in range(ledger_info.state.messages)]
        rejected = await auditor.request("$JS.API.DIRECT.GET.REJECTED", json.dumps({"seq": 1}).encode(), timeout=5)
        seen["rejected_subject"] = rejected.headers.get("Nats-Subject") if rejected.headers else None
        await auditor.close()
        return seen

    seen = asyncio.run(run())
    assert seen["query"]["covered"] is True and seen["query"]["status"] == "enrolled", seen["query"]
    assert seen["query"]["person_key"] == key
    assert seen["changed"]["person_key"] == key and seen["changed"]["covered"] is True
    assert seen["kv"] == seen["watched"] and seen["kv"]["person_key"] == key, (seen["kv"], seen["watched"])
    assert f"ledger.evt.{person_id(key).hex}" in seen["events"], seen["events"]
    assert seen["rejected_subject"] and seen["rejected_subject"].startswith("ledger.rejected."), seen
    TRIED.append(("ingestion-through-deploy-users", "recorded, queried, watched, audited"))


async def _stream_info(server: DeployServer, stream: str) -> dict[str, Any]:
    nc = await nats.connect(server.url("ledger"))
    try:
        return json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
    finally:
        await nc.close()


def test_auditor_can_replay(deployed: DeployServer, tmp_path: Path) -> None:
    """``ledger replay`` as the auditor: read-only permissions are enough to rebuild the views."""
    env = {**os.environ, "LEDGER_PERSON_KEY_SECRET": SECRET, "LEDGER_CIPHER_KEY": CIPHER_KEY, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "replay", "--nats-url", deployed.url("auditor"),
         "--data-dir", str(tmp_path), "--views", f"sqlite:///{tmp_path / 'audit.sqlite'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"replayed [1-9][\d,]* ledger events", result.stdout), result.stdout
    assert deployed.passwords["auditor"] not in result.stdout + result.stderr
    TRIED.append(("auditor-replay", "views rebuilt"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_permission(deployed: DeployServer, case: Case) -> None:
    outcome = asyncio.run(try_case(deployed, case))
    TRIED.append((case.id, outcome))
    assert outcome == _expected(case), f"{case.user} {case.action} {case.subject}: {outcome}"


@pytest.mark.parametrize("how", CONNECT_CASES)
def test_no_connection_without_a_valid_user(deployed: DeployServer, how: str) -> None:
    url = deployed.url() if how == "anonymous" else deployed.url("ledger", "not-the-password")

    async def connect() -> str:
        try:
            nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
        except Exception as e:  # noqa: BLE001 - the refusal is what we want
            return str(e).lower()
        await nc.close()
        return "connected"

    outcome = asyncio.run(connect())
    TRIED.append((f"connect-{how}", outcome))
    assert "authorization violation" in outcome


def test_streams_hold_nothing_forged(deployed: DeployServer) -> None:
    """After every case: no refused attempt left a trace in any stream or the bucket."""

    async def check() -> None:
        nc = await nats.connect(deployed.url("ledger"))
        try:
            for stream, forged in (
                ("LEDGER", "ledger.*.forged.>"), ("LEDGER", "ledger.trk.>"), ("REJECTED", "ledger.rejected.forged.>"),
                ("COVERAGE", "coverage.changed.forged.>"), ("KV_coverage", "$KV.coverage.>"),
            ):  # fmt: skip
                reply = await nc.request(
                    f"$JS.API.STREAM.INFO.{stream}", json.dumps({"subjects_filter": forged}).encode(), timeout=5
                )
                subjects = json.loads(reply.data)["state"].get("subjects") or {}
                assert not [s for s in subjects if "forged" in s], (stream, subjects)
            # UPSTREAM: only what a sender was allowed to publish, never a server's answer.
            js = nc.jetstream()
            info = await js.stream_info("UPSTREAM")
            sub = await js.subscribe("", stream="UPSTREAM", ordered_consumer=True)
            for _ in range(info.state.messages):
                msg = await sub.next_msg(timeout=5)
                body = json.loads(msg.data)
                assert "stream" not in body, f"a server answer stored as {msg.subject}: {body}"
                if "forged_by" in body:
                    assert msg.subject in SENDERS.get(body["forged_by"], ()), (msg.subject, body)
            # Every stream kept the settings the ledger requires (LEDGER: the store's own spec).
            ledger_config = json.loads((await nc.request("$JS.API.STREAM.INFO.LEDGER", b"", timeout=5)).data)["config"]
            assert StreamSpec(name="LEDGER", subjects=("ledger.evt.>", "ledger.trk.>")).weaknesses(ledger_config) == []
            for stream in IMMUTABLE:
                config = (await js.stream_info(stream)).config
                assert config.deny_delete and config.deny_purge, stream
        finally:
            await nc.close()

    asyncio.run(check())


def test_real_work_needs_no_refused_permission(deployed: DeployServer) -> None:
    """The server logged a permissions violation for the refused cases and for nothing else:
    ``ledger serve``, the downstream reads and watches and the auditor's replay all ran within
    their permissions. No log holds a password."""
    refused = {(c.user, c.subject) for c in CASES if c.expect == "refused"}
    log = (deployed.directory / "nats-server.log").read_text()
    violations = re.findall(r'"\w+/user:(\w+)" - (?:Publish|Subscription) Violation - Subject "([^"]+)"', log)
    unexpected = {v for v in violations if v not in refused}
    assert not unexpected, unexpected
    serve_log = (deployed.directory / "serve.log").read_text()
    for password in deployed.passwords.values():
        assert password not in serve_log and password not in log


def test_count_permission_cases(deployed: DeployServer) -> None:
    """The figure "permission cases tried" (printed; every case above must have run)."""
    by_user: dict[str, int] = {}
    for case in CASES:
        by_user[case.user] = by_user.get(case.user, 0) + 1
    summary = ", ".join(f"{user} {count}" for user, count in by_user.items())
    print(f"\npermission cases tried: {len(TRIED)} ({len(CASES)} single attempts: {summary}; "
          f"{len(CONNECT_CASES)} connections; the ingestion and a replay with the deploy users)")  # fmt: skip
    if len(TRIED) < len(CASES) + len(CONNECT_CASES):
        pytest.skip("the figure needs the whole module")


def test_deploy_configs_are_valid(tmp_path: Path) -> None:
    """Every nats-server configuration in deploy/nats passes ``nats-server -t`` (passwords and the
    TLS files of deploy/tls/make-dev-ca from the environment), and each keeps JetStream's
    sync_interval at always."""
    variables = set(re.findall(r"\$([A-Z][A-Z0-9_]*_NATS_PASSWORD)\b", (DEPLOY / "accounts.conf").read_text()))
    env = {**os.environ, **dict.fromkeys(variables | {password_variable(u) for u in USERS}, "x"),
           **dev_certs(tmp_path / "tls").server_env()}  # fmt: skip
    configs = [DEPLOY / "single.conf", *sorted((DEPLOY / "cluster").glob("node-*.conf"))]
    assert len(configs) == 4
    for config in configs:
        result = subprocess.run([str(find_server_binary()), "-t", "-c", str(config)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, (config, result.stderr)
        assert re.search(r"^\s*sync_interval:\s*always", config.read_text(), re.M), config
    without_one = {k: v for k, v in env.items() if k != password_variable("auditor")}
    result = subprocess.run(
        [str(find_server_binary()), "-t", "-c", str(DEPLOY / "single.conf")], env=without_one, capture_output=True, text=True
    )
    assert result.returncode != 0 and "AUDITOR_NATS_PASSWORD" in result.stderr, "a missing password must stop the server"
    assert not re.search(r"password:\s*[\"']?[^\s$\"']", (DEPLOY / "accounts.conf").read_text()), "a literal password"
