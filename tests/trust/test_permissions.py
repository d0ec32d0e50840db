"""The accounts of ``deploy/nats/accounts.conf``, tried on a real nats-server.

One nats-server runs ``deploy/nats/single.conf`` unchanged (a copy in a temporary directory, on
a free port, with TLS and every password from the environment as in production) plus one
test-only user: ``admin``, unrestricted in the LEDGER account, to show that the streams
themselves refuse deletes and purges even to someone no permission stops. ``ledger serve`` runs
as the ``ledger`` user and creates its streams (LEDGER with the store's own ``StreamSpec``, the
senders' intakes ``UPSTREAM_<SENDER>``, UPSTREAM, REJECTED and each sender's ``REJECTED_<SENDER>``,
COVERAGE, the KV bucket ``coverage``).

The layout: the LEDGER account's only user is the ledger service. Every other system is a user of
an account of its own: each upstream sender publishes ``upstream.<noun>.<verb>`` (its account's
import stores it as ``upstream.<sender>.<noun>.<verb>`` in its intake) and reads its own
rejections by direct get under ``$JS.ledger.API``; downstream services (hospital, reminders) ask
``coverage.query``, get KV keys and COVERAGE messages by direct get and subscribe to
``coverage.changed.>`` and ``$KV.coverage.>``; the auditor gets stream info and direct gets of
LEDGER, its checkpoints, UPSTREAM and REJECTED. Nobody but the ledger makes a consumer.

Each case in ``CASES`` is one attempt by one user and what the server must answer: a PubAck from
the sender's own intake, a reply, a permissions violation for that very subject, or a stream's own
error; a case with a reply subject aimed at a stream's subject also checks that nothing was stored
there. Who may send which fact is ``ledger/senders.py`` (``SENDERS``) through the contract's
subjects (``contract.messages.SCHEMAS``) and their commands (``consumers.commands.ROUTES``), not
a copy. Refusals are then checked in the streams as well (nothing forged reached any stream).
``test_ingestion_through_deploy_users`` runs the real ingestion with these users.
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

from consumers.commands import ROUTES
from contract.messages import SCHEMAS
from contract.rejection import decode_rejection
from contract.subjects import intake_stream, sender_rejected_stream, upstream_subject
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.person import person_id
from ledger.jetstream.datastore import StreamSpec
from ledger.jetstream.server import _read_info, find_server_binary, free_port
from ledger.senders import SENDERS as ENTITLEMENTS
from tests.integration.ingest_support import CIPHER_KEY, SECRET, ServeProcess, ingestion_finished, wait_for
from tests.trust.tls_support import DevCerts, dev_certs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "nats"
API = "$JS.ledger.API"
"""Where users of other accounts find the ledger's JetStream API (their accounts' imports)."""

# ---- who may send what: ledger/senders.py, on the contract's subjects -----------------------------

FACTS = tuple(SCHEMAS)
"""Every upstream fact subject of the contract (``upstream.<noun>.<verb>``)."""


def facts_of(sender: str) -> tuple[str, ...]:
    """The fact subjects ``sender`` may send: those whose command ``ledger.senders`` entitles it to."""
    commands = ENTITLEMENTS[sender].commands
    return tuple(subject for subject, schema in SCHEMAS.items() if ROUTES[schema].command in commands)


SENDERS: dict[str, tuple[str, ...]] = {sender: facts_of(sender) for sender in ENTITLEMENTS}
"""Every upstream sender (its account's user) and the facts it may send."""
DOWNSTREAM = ("hospital", "reminders")
USERS = ("ledger", *SENDERS, *DOWNSTREAM, "auditor")
INBOX_PREFIX: dict[str, str] = {}
"""A user needing an inbox prefix other than ``_INBOX`` (none since every reader has an account of
its own: kept for ``tests/trust/test_injection.py``)."""
IMMUTABLE = ("LEDGER", "LEDGER_CHECKPOINTS", "REJECTED", "UPSTREAM")
"""The streams whose configuration nobody may change (the ledger user included)."""
ADMIN_API = ("STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE", "STREAM.UPDATE")


def password_variable(user: str) -> str:
    return f"{user.upper()}_NATS_PASSWORD"


def _other(sender: str) -> str:
    """Another sender (the next one), for attempts on someone else's subjects and rejections."""
    names = list(SENDERS)
    return names[(names.index(sender) + 1) % len(names)]


# ---- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One attempt: ``user`` does ``action`` on ``subject``; the server must answer ``expect``.

    action: ``publish`` (a JetStream publish or API request, waiting for its answer) or
    ``subscribe``; expect: ``acked:<stream>`` (a PubAck from that stream), ``reply`` (any
    non-error answer, a direct get's "no message" included), ``refused`` (a permissions violation
    for this subject), ``allowed`` (a subscription the server kept), ``api:<code>`` (the stream's
    own error code). ``reply_to``: the publish names this reply subject (and one of the test's
    own, to see the answer); ``target``: (stream, subject in the ledger's account) that must not
    have stored the answer aimed at ``reply_to``.
    """

    user: str
    action: str
    subject: str
    expect: str
    body: Any = None
    reply_to: str | None = None
    target: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        redirect = f"(reply->{self.reply_to})" if self.reply_to else ""
        change = f"({self.body}=false)" if isinstance(self.body, str) else ""
        return f"{self.user}-{self.action}-{self.subject}{change}{redirect}-{self.expect}"


def _marker(user: str, subject: str) -> dict[str, Any]:
    """A body that names who tried what (not a valid contract message: rejected if it lands)."""
    return {"msg_id": f"perm-{user}-{subject}-{secrets.token_hex(4)}", "forged_by": user, "attempt": subject}


FIRST = {"seq": 1}
"""A direct get of a stream's first message (answered "no message" while the stream is empty)."""


def _sender_cases(user: str, allowed: tuple[str, ...]) -> list[Case]:
    cases: list[Case] = []
    mine, other = sender_rejected_stream(user), sender_rejected_stream(_other(user))
    intake = intake_stream(user)
    # Exactly its own facts (stored in its own intake), nothing else.
    for fact in FACTS:
        cases.append(Case(user, "publish", fact, f"acked:{intake}" if fact in allowed else "refused"))
    # Not the subject its import maps to, nor another sender's: the sender comes from the account.
    cases.append(Case(user, "publish", upstream_subject(allowed[0], user), "refused"))
    someone = _other(user)
    cases.append(Case(user, "publish", upstream_subject(SENDERS[someone][0], someone), "refused"))
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
        # its own rejections: by direct get through the import only
        f"$JS.API.DIRECT.GET.{mine}",
        f"{API}.CONSUMER.CREATE.{mine}",
        f"{API}.STREAM.MSG.GET.{mine}",
        f"{API}.STREAM.MSG.DELETE.{mine}",
        f"{API}.STREAM.INFO.{intake}",
        # nobody else's rejections, nor all of them
        f"{API}.STREAM.INFO.{other}",
        f"{API}.DIRECT.GET.{other}",
        f"{API}.DIRECT.GET.REJECTED",
        f"{API}.DIRECT.GET.LEDGER",
    ):
        cases.append(Case(user, "publish", subject, "refused"))
    # Its own rejections: stream info and direct get work.
    cases.append(Case(user, "publish", f"{API}.STREAM.INFO.{mine}", "reply", body={}))
    cases.append(Case(user, "publish", f"{API}.DIRECT.GET.{mine}", "reply", body=FIRST))
    for subject in (">", "upstream.>", "ledger.>", "coverage.changed.>", "$KV.coverage.>"):
        cases.append(Case(user, "subscribe", subject, "refused"))
    cases.append(Case(user, "subscribe", "_INBOX.>", "allowed"))
    # Answers aimed elsewhere: its PubAck aimed back at one of its own facts (the subject its
    # account's import forwards to the ledger) does not come back as a fact; answers aimed at
    # another sender's or the ledger's subjects stay in its own account. (The answer to a
    # JetStream API request aimed at its own fact does come back as its own message:
    # test_an_api_answer_aimed_at_a_senders_own_fact_is_only_that_senders_message.)
    aim = allowed[-1]
    cases.append(Case(user, "publish", allowed[0], f"acked:{intake}", reply_to=aim, target=(intake, upstream_subject(aim, user))))
    theirs = upstream_subject(SENDERS[someone][0], someone)
    cases.append(Case(user, "publish", f"{API}.STREAM.INFO.{mine}", "reply", body={}, reply_to=theirs,
                      target=(intake_stream(someone), theirs)))  # fmt: skip
    forged = f"ledger.evt.forged.{user}"
    cases.append(Case(user, "publish", f"{API}.DIRECT.GET.{mine}", "reply", body=FIRST, reply_to=forged, target=("LEDGER", forged)))
    return cases


def _downstream_cases(user: str) -> list[Case]:
    cases: list[Case] = []
    for subject in (
        *FACTS,
        f"$KV.coverage.forged_{user}",  # a KV put (also delete and purge: same subject)
        f"coverage.changed.forged.{user}",
        f"ledger.evt.forged.{user}",
        f"ledger.rejected.forged.{user}",
        "$JS.API.STREAM.INFO.KV_coverage",  # its own account has no JetStream: only the imports
        f"{API}.STREAM.DELETE.KV_coverage",
        f"{API}.STREAM.PURGE.KV_coverage",
        f"{API}.STREAM.MSG.DELETE.KV_coverage",
        f"{API}.STREAM.MSG.GET.KV_coverage",
        f"{API}.DIRECT.GET.KV_coverage",  # a batch of everyone's values: only one key at a time
        f"{API}.STREAM.UPDATE.COVERAGE",
        f"{API}.STREAM.PURGE.COVERAGE",
        f"{API}.STREAM.CREATE.COPY",
        f"{API}.STREAM.INFO.LEDGER",
        f"{API}.DIRECT.GET.LEDGER",
        f"{API}.DIRECT.GET.UPSTREAM",
        f"{API}.DIRECT.GET.REJECTED",
        # no consumers, ephemeral or durable: a deliver subject is another way to make the server write
        f"{API}.CONSUMER.CREATE.KV_coverage",
        f"{API}.CONSUMER.CREATE.COVERAGE",
        f"{API}.CONSUMER.DURABLE.CREATE.COVERAGE.{user}",
        f"{API}.CONSUMER.CREATE.LEDGER",
        f"{API}.CONSUMER.DELETE.KV_coverage.someone",
        f"{API}.CONSUMER.DELETE.COVERAGE.someone",
    ):
        cases.append(Case(user, "publish", subject, "refused"))
    cases.append(Case(user, "publish", f"{API}.STREAM.INFO.KV_coverage", "reply", body={}))
    cases.append(Case(user, "publish", f"{API}.STREAM.INFO.COVERAGE", "reply", body={}))
    cases.append(Case(user, "publish", f"{API}.DIRECT.GET.COVERAGE", "reply", body=FIRST))
    cases.append(Case(user, "publish", f"{API}.DIRECT.GET.KV_coverage.$KV.coverage.nobody", "reply", body=b""))
    cases.append(Case(user, "publish", "coverage.query", "reply", body={"id_number": _valid_id(PERSON), "date": "2022-03-01"}))
    for subject in ("coverage.query", "ledger.>", "upstream.>", ">", "$JS.>"):
        cases.append(Case(user, "subscribe", subject, "refused"))
    for subject in ("_INBOX.>", "coverage.changed.>", "$KV.coverage.>"):
        cases.append(Case(user, "subscribe", subject, "allowed"))
    # The answers to its requests, aimed at a bucket key, a COVERAGE subject or a ledger subject,
    # stay in its own account.
    kv, changed = f"$KV.coverage.forged_{user}", f"coverage.changed.forged.{user}"
    cases.append(Case(user, "publish", f"{API}.STREAM.INFO.COVERAGE", "reply", body={}, reply_to=kv, target=("KV_coverage", kv)))
    cases.append(Case(user, "publish", f"{API}.DIRECT.GET.COVERAGE", "reply", body=FIRST, reply_to=changed,
                      target=("COVERAGE", changed)))  # fmt: skip
    cases.append(Case(user, "publish", "coverage.query", "reply", body={"id_number": _valid_id(PERSON), "date": "2022-03-01"},
                      reply_to=f"ledger.evt.forged.{user}", target=("LEDGER", f"ledger.evt.forged.{user}")))  # fmt: skip
    return cases


def _auditor_cases() -> list[Case]:
    user = "auditor"
    cases: list[Case] = []
    for stream in IMMUTABLE:
        for api in ADMIN_API:
            cases.append(Case(user, "publish", f"$JS.API.{api}.{stream}", "refused"))
            cases.append(Case(user, "publish", f"{API}.{api}.{stream}", "refused"))
    for subject in (
        *FACTS,
        "ledger.evt.forged.auditor",
        "ledger.rejected.forged.auditor",
        "$KV.coverage.forged_auditor",
        "coverage.changed.forged.auditor",
        "coverage.query",
        f"{API}.STREAM.CREATE.AUDIT_COPY",
        f"{API}.STREAM.DELETE.KV_coverage",
        f"{API}.STREAM.PURGE.COVERAGE",
        f"{API}.STREAM.MSG.GET.LEDGER",
        f"{API}.STREAM.SNAPSHOT.LEDGER",
        # no consumers, ephemeral or durable (it could not delete a durable one)
        f"{API}.CONSUMER.CREATE.LEDGER",
        f"{API}.CONSUMER.CREATE.REJECTED",
        f"{API}.CONSUMER.DURABLE.CREATE.LEDGER.audit",
        f"{API}.CONSUMER.DELETE.UPSTREAM.ledger-ingest",
        f"{API}.CONSUMER.MSG.NEXT.UPSTREAM.ledger-ingest",
        # what is not the ledger's record: coverage, one sender's share
        f"{API}.STREAM.INFO.KV_coverage",
        f"{API}.DIRECT.GET.KV_coverage.$KV.coverage.nobody",
        f"{API}.DIRECT.GET.{sender_rejected_stream('tax')}",
    ):
        cases.append(Case(user, "publish", subject, "refused"))
    for stream in IMMUTABLE:
        cases.append(Case(user, "publish", f"{API}.STREAM.INFO.{stream}", "reply", body={}))
        if stream != "UPSTREAM":  # the senders' raw messages, in clear: not the auditors'
            cases.append(Case(user, "publish", f"{API}.DIRECT.GET.{stream}", "reply", body=FIRST))
    cases.append(Case(user, "publish", f"{API}.DIRECT.GET.UPSTREAM", "refused"))
    cases.append(Case(user, "publish", f"{API}.DIRECT.GET.LEDGER.ledger.trk.Ledger.UPSTREAM", "reply", body=b""))
    for subject in (">", "ledger.>", "coverage.changed.>", "$KV.coverage.>"):
        cases.append(Case(user, "subscribe", subject, "refused"))
    cases.append(Case(user, "subscribe", "_INBOX.>", "allowed"))
    for stream, subject in (("LEDGER", "ledger.evt.forged.auditor"), ("REJECTED", "ledger.rejected.forged.auditor")):
        cases.append(Case(user, "publish", f"{API}.STREAM.INFO.{stream}", "reply", body={}, reply_to=subject, target=(stream, subject)))
    return cases


def _ledger_cases() -> list[Case]:
    """The ledger service writes the ledger, but can neither forge a fact (its own account's
    subjects included) nor delete, purge or reconfigure a stream that must stay as it is."""
    user = "ledger"
    cases = [Case(user, "publish", fact, "refused") for fact in FACTS]
    cases += [Case(user, "publish", upstream_subject(SENDERS[s][0], s), "refused") for s in SENDERS]
    for stream in (*IMMUTABLE, "COVERAGE", "KV_coverage", intake_stream("tax"), sender_rejected_stream("tax")):
        for api in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE"):
            cases.append(Case(user, "publish", f"$JS.API.{api}.{stream}", "refused"))
    for stream in IMMUTABLE:
        cases.append(Case(user, "publish", f"$JS.API.STREAM.UPDATE.{stream}", "refused"))
        cases.append(Case(user, "publish", f"$JS.API.STREAM.RESTORE.{stream}", "refused"))
    for stream in (*IMMUTABLE, intake_stream("tax"), sender_rejected_stream("tax")):
        cases.append(Case(user, "publish", f"$JS.API.STREAM.INFO.{stream}", "reply", body={}))
    # Even its credentials cannot make a fact appear as a sender's: no new stream (it could
    # republish into an intake), no change to an intake's or any stream's configuration.
    for stream in ("FORGE", "LEDGER_SNAPSHOTS", "UPSTREAM_ELSEWHERE"):
        cases.append(Case(user, "publish", f"$JS.API.STREAM.CREATE.{stream}", "refused"))
    for stream in (intake_stream("tax"), sender_rejected_stream("tax"), "COVERAGE", "KV_coverage", "KV_ledger_writer"):
        cases.append(Case(user, "publish", f"$JS.API.STREAM.UPDATE.{stream}", "refused"))
    return cases


def _admin_cases() -> list[Case]:
    """Nobody: the streams themselves refuse deletes and purges and keep those settings, even
    for an unrestricted user (codes: 10110 purge not permitted, 10057 message delete not
    permitted, 10052 an update cannot cancel deny_delete/deny_purge)."""
    cases = []
    for stream in (*IMMUTABLE, intake_stream("tax"), sender_rejected_stream("tax")):
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.PURGE.{stream}", "api:10110", body={}))
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.MSG.DELETE.{stream}", "api:10057", body={"seq": 1}))
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.UPDATE.{stream}", "api:10052", body="deny_delete"))
        cases.append(Case("admin", "publish", f"$JS.API.STREAM.UPDATE.{stream}", "api:10052", body="deny_purge"))
    return cases


T0 = "2021-09-02T10:00:00+08:00"
PERSON = "340104199001011237"


def _valid_id(number: str) -> str:
    """``number`` with its check digit corrected (GB 11643)."""
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    total = sum(int(d) * w for d, w in zip(number[:17], weights, strict=True))
    return number[:17] + "10X98765432"[total % 11]


def _cases() -> list[Case]:
    cases: list[Case] = []
    for user, allowed in SENDERS.items():
        cases += _sender_cases(user, allowed)
    for user in DOWNSTREAM:
        cases += _downstream_cases(user)
    cases += _auditor_cases()
    cases += _ledger_cases()
    cases += _admin_cases()
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



def serve_as_ledger(server: Any, directory: Path, user: str = "ledger") -> ServeProcess:
    """``ledger serve`` on ``server`` as ``user`` (data in ``directory/data``), once it has started."""
    serve = ServeProcess(server.url(user), directory / "serve.log", batch_size=100, data_dir=directory / "data")
    server.serve = serve.start()
    wait_for(
        lambda: (directory / "data" / "serve.url").exists() or serve.process.poll() is not None,  # type: ignore[union-attr]
        60, "ledger serve to start as the ledger user",
    )  # fmt: skip
    assert serve.process is not None and serve.process.poll() is None, (directory / "serve.log").read_text()[-3000:]
    return serve

@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployServer]:
    """The deploy server, and ``ledger serve`` on it as the ``ledger`` user, ready."""
    directory = tmp_path_factory.mktemp("deploy")
    server = start_deploy_server(directory, admin=True)
    try:
        serve_as_ledger(server, directory)
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
    """What the server answered: acked:<stream>, reply, api:<code>, refused, allowed, no
    responders, nothing, or "redirected answer stored"."""
    errors: asyncio.Queue[str] = asyncio.Queue()
    nc = await _connect(server, case.user, errors)
    try:
        if case.action == "subscribe":
            await nc.subscribe(case.subject)
            # The server answers the SUB (with -ERR when refused) before the PONG of this flush.
            await nc.flush()
            try:
                await asyncio.wait_for(_violation(errors, "subscription", case.subject), 0.5)
                return "refused"
            except TimeoutError:
                return "allowed"
        if isinstance(case.body, str):
            body = await _update_body(nc, case.subject.rsplit(".", 1)[1], case.body)
        elif isinstance(case.body, bytes):
            body = case.body
        elif case.body is not None:
            body = json.dumps(case.body).encode()
        else:
            body = json.dumps(_marker(case.user, case.subject)).encode()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        before = await _subject_count(server, *case.target) if case.target else 0
        if case.reply_to:
            # The redirected answer goes to reply_to; our own check publishes with our inbox.
            await nc.publish(case.subject, body, reply=case.reply_to)
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
        if case.target:
            # Both publishes were answered in order: ours last. What the first one's answer could
            # have caused has had a round trip to the ledger's account and back.
            await asyncio.sleep(0.2)
            own = 2 if case.target[1] == upstream_subject(case.subject, case.user) else 0
            if await _subject_count(server, *case.target) != before + own:
                return "redirected answer stored"
        status = msg.headers.get("Status") if msg.headers else None
        if status == "503":
            return "no responders"
        if status is not None and not (status == "404" and "DIRECT.GET" in case.subject):
            return f"status:{status}"
        try:
            data = json.loads(msg.data) if msg.data else {}
        except ValueError:
            return "reply"
        if isinstance(data, dict) and "error" in data:
            return f"api:{data['error'].get('err_code')}"
        if isinstance(data, dict) and "stream" in data and "seq" in data:
            return f"acked:{data['stream']}"
        return "reply"
    finally:
        await nc.close()


async def _subject_count(server: DeployServer, stream: str, subject: str) -> int:
    """Messages on ``subject`` in ``stream`` (as the ledger user sees them)."""
    nc = await nats.connect(server.url("ledger"))
    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", json.dumps({"subjects_filter": subject}).encode(), timeout=5)
        return int((json.loads(reply.data)["state"].get("subjects") or {}).get(subject, 0))
    finally:
        await nc.close()


# ---- the real ingestion with the deploy users ---------------------------------------------------


async def direct_get(nc: Any, stream: str, seq: int) -> Any:
    """Message ``seq`` of the ledger's ``stream``, by direct get through ``nc``'s account's import
    (None: no such message)."""
    reply = await nc.request(f"{API}.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=5)
    return None if (reply.headers or {}).get("Status") else reply


def test_ingestion_through_deploy_users(deployed: DeployServer) -> None:
    """First (before the cases below trickle their messages in): public_security registers a
    resident, wechat_pay enrolls and pays, community sends a bad ID number; ``ledger serve`` (the
    ``ledger`` user) records and rejects; a downstream user asks coverage.query, gets the KV key
    (nats-py's KV with the prefix of its import) and watches coverage.changed and the key by plain
    subscription; the community reads its own rejection; an auditor reads LEDGER and REJECTED by
    direct get."""
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
        hospital = await nats.connect(deployed.url("hospital"))
        changed = await hospital.subscribe("coverage.changed.>")
        watched = await hospital.subscribe(f"$KV.coverage.{key}")
        kv = await hospital.jetstream(prefix=API).key_value("coverage")
        for user, subject, body in messages:
            nc = await nats.connect(deployed.url(user))
            ack = await nc.jetstream().publish(subject, json.dumps(body, ensure_ascii=False).encode(),
                                               headers={"Nats-Msg-Id": body["msg_id"]})  # fmt: skip
            assert ack.stream == intake_stream(user), ack
            await nc.close()
        upstream_end = (await _stream_info(deployed, "UPSTREAM"))["state"]["last_seq"]
        await asyncio.to_thread(wait_for, lambda: ingestion_finished(deployed.url("ledger"), upstream_end), 60, "ingestion")
        while seen.get("changed", {}).get("status") != "enrolled":  # awaiting_payment, then enrolled
            seen["changed"] = json.loads((await changed.next_msg(timeout=20)).data)
        while seen.get("watched", {}).get("coverage", {}).get("2022", {}).get("status") != "enrolled":
            update = await watched.next_msg(timeout=20)
            if update.data:
                seen["watched"] = json.loads(update.data)
        # A plain subscriber sees the ledger's put as it is published, maybe a moment before the
        # bucket's stream has stored it: the key is read until it holds what was seen.
        deadline = time.monotonic() + 20
        while (value := json.loads((await kv.get(key)).value))["ledger_seq"] < seen["watched"]["ledger_seq"]:
            assert time.monotonic() < deadline, (value, seen["watched"])
            await asyncio.sleep(0.05)
        seen["kv"] = value
        reply = await hospital.request("coverage.query", json.dumps({"id_number": id_number, "date": "2022-03-01"}).encode(), timeout=10)
        seen["query"] = json.loads(reply.data)
        await hospital.close()
        # The community reads its own rejection (REJECTED_COMMUNITY, derived a moment later).
        community = await nats.connect(deployed.url("community"))
        deadline = time.monotonic() + 30
        while (own := await direct_get(community, sender_rejected_stream("community"), 1)) is None:
            assert time.monotonic() < deadline, "the community's rejection never reached REJECTED_COMMUNITY"
            await asyncio.sleep(0.1)
        seen["own_rejection"] = decode_rejection(own.data)
        await community.close()
        # The auditor reads the events and the rejections by direct get (it makes no consumer).
        auditor = await nats.connect(deployed.url("auditor"))
        ledger_info = await auditor.jetstream(prefix=API).stream_info("LEDGER")
        seen["events"] = [
            (await direct_get(auditor, "LEDGER", seq)).headers["Nats-Subject"] for seq in range(1, ledger_info.state.last_seq + 1)
        ]
        rejected = await direct_get(auditor, "REJECTED", 1)
        seen["rejected_subject"] = rejected.headers.get("Nats-Subject") if rejected is not None else None
        await auditor.close()
        return seen

    seen = asyncio.run(run())
    assert seen["query"]["covered"] is True and seen["query"]["status"] == "enrolled", seen["query"]
    assert seen["query"]["person_key"] == key
    assert seen["changed"]["person_key"] == key and seen["changed"]["covered"] is True
    assert seen["kv"] == seen["watched"] and seen["kv"]["person_key"] == key, (seen["kv"], seen["watched"])
    assert f"ledger.evt.{person_id(key).hex}" in seen["events"], seen["events"]
    assert seen["own_rejection"].msg_id == "c-1" and seen["own_rejection"].subject == "upstream.community.person.registered"
    assert seen["rejected_subject"] and re.fullmatch(r"ledger\.rejected\.\w+\.community", seen["rejected_subject"]), seen
    TRIED.append(("ingestion-through-deploy-users", "recorded, queried, watched, own rejection read, audited"))


async def _stream_info(server: DeployServer, stream: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
    nc = await nats.connect(server.url("ledger"))
    try:
        return json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", json.dumps(request or {}).encode(), timeout=5)).data)
    finally:
        await nc.close()


def test_auditor_can_replay(deployed: DeployServer, tmp_path: Path) -> None:
    """``ledger replay`` as the auditor (NATS_API_PREFIX=$JS.ledger.API): stream info and direct
    gets are enough to rebuild the views."""
    env = {**os.environ, "LEDGER_PERSON_KEY_SECRET": SECRET, "LEDGER_CIPHER_KEY": CIPHER_KEY, "PYTHONPATH": str(ROOT),
           "NATS_API_PREFIX": API}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "replay", "--nats-url", deployed.url("auditor"),
         "--data-dir", str(tmp_path), "--views", f"sqlite:///{tmp_path / 'audit.sqlite'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"replayed [1-9][\d,]* ledger events and [1-9][\d,]* rejections", result.stdout), result.stdout
    assert deployed.passwords["auditor"] not in result.stdout + result.stderr
    TRIED.append(("auditor-replay", "views rebuilt"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_permission(deployed: DeployServer, case: Case) -> None:
    outcome = asyncio.run(try_case(deployed, case))
    TRIED.append((case.id, outcome))
    assert outcome == case.expect, f"{case.user} {case.action} {case.subject}: {outcome}"


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


def test_each_sender_reads_its_own_rejections_and_only_its_own(deployed: DeployServer) -> None:
    """After the cases: every sender's accepted attempts (marker bodies, no contract message) were
    rejected, and the sender reads each of those rejections from its own REJECTED_<SENDER> by
    direct get — all of them, each about its own message, none about anybody else's."""
    acked = {user: sum(2 if c.reply_to else 1 for c in CASES if c.user == user and c.expect.startswith("acked:")) for user in SENDERS}
    """Messages each sender's acknowledged cases stored (a redirected case publishes twice)."""

    async def read() -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for user in SENDERS:
            nc = await nats.connect(deployed.url(user))
            try:
                stream = sender_rejected_stream(user)
                deadline = time.monotonic() + 30
                while True:
                    info = await nc.jetstream(prefix=API).stream_info(stream)
                    if info.state.messages >= acked[user] or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                found[user] = []
                for seq in range(1, info.state.last_seq + 1):
                    msg = await direct_get(nc, stream, seq)
                    assert msg is not None and msg.headers["Nats-Subject"].endswith(f".{user}"), (user, msg and msg.headers)
                    found[user].append(decode_rejection(msg.data))
            finally:
                await nc.close()
        return found

    found = asyncio.run(read())
    for user, rejections in found.items():
        assert all(r.subject.startswith(f"upstream.{user}.") for r in rejections), (user, [r.subject for r in rejections])
        markers = [r for r in rejections if (r.msg_id or "").startswith(f"perm-{user}-")]
        assert len(markers) == acked[user], (user, len(markers), acked[user])
    TRIED.append(("senders-read-own-rejections", ", ".join(f"{u} {len(r)}" for u, r in found.items())))


def test_streams_hold_nothing_forged(deployed: DeployServer) -> None:
    """After every case: no refused attempt, and no answer aimed at a stream's subject, left a
    trace in any stream the ledger's account holds (every one, found at run time)."""

    async def check() -> None:
        nc = await nats.connect(deployed.url("ledger"))
        try:
            names = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)).data)["streams"]
            assert {"LEDGER", "UPSTREAM", "REJECTED", "COVERAGE", "KV_coverage", *map(intake_stream, SENDERS)} <= set(names)
            for stream in names:
                info = json.loads(
                    (await nc.request(f"$JS.API.STREAM.INFO.{stream}", json.dumps({"subjects_filter": ">"}).encode(), timeout=5)).data
                )
                subjects = info["state"].get("subjects") or {}
                assert not [s for s in subjects if "forged" in s], (stream, subjects)
                for sender in SENDERS:
                    if stream == intake_stream(sender):  # only the sender's own facts
                        assert set(subjects) <= {upstream_subject(f, sender) for f in SENDERS[sender]}, (stream, subjects)
                    if stream == sender_rejected_stream(sender):  # only the sender's own rejections
                        assert all(s.endswith(f".{sender}") for s in subjects), (stream, subjects)
            # UPSTREAM: only what a sender was allowed to publish, never a server's answer.
            js = nc.jetstream()
            info = await js.stream_info("UPSTREAM")
            sub = await js.subscribe("", stream="UPSTREAM", ordered_consumer=True)
            for _ in range(info.state.messages):
                msg = await sub.next_msg(timeout=5)
                body = json.loads(msg.data)
                assert "stream" not in body and "type" not in body, f"a server answer stored as {msg.subject}: {body}"
                _, sender, noun, verb = msg.subject.split(".")
                assert f"upstream.{noun}.{verb}" in SENDERS[sender], msg.subject
                if "forged_by" in body:
                    assert body["forged_by"] == sender, (msg.subject, body)
            await sub.unsubscribe()
            # Every stream kept the settings the ledger requires (LEDGER: the store's own spec).
            ledger_config = json.loads((await nc.request("$JS.API.STREAM.INFO.LEDGER", b"", timeout=5)).data)["config"]
            assert StreamSpec(name="LEDGER", subjects=("ledger.evt.>", "ledger.trk.>")).weaknesses(ledger_config) == []
            for stream in (*IMMUTABLE, *map(intake_stream, SENDERS), *map(sender_rejected_stream, SENDERS)):
                config = (await js.stream_info(stream)).config
                assert config.deny_delete and config.deny_purge, stream
        finally:
            await nc.close()

    asyncio.run(check())


def test_real_work_needs_no_refused_permission(deployed: DeployServer) -> None:
    """The server logged a permissions violation for the refused cases and for nothing else:
    ``ledger serve``, the senders' publishes and reads of their rejections, the downstream
    reads and subscriptions and the auditor's direct gets and replay all ran within their
    permissions. No log holds a password."""
    refused = {(c.user, c.subject) for c in CASES if c.expect == "refused"}
    log = (deployed.directory / "nats-server.log").read_text()
    violations = re.findall(r'"\w+/user:(\w+)" - (?:Publish|Subscription) Violation - Subject "([^"]+)"', log)
    assert violations, "no violation logged: the log format changed?"
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
          f"{len(CONNECT_CASES)} connections; the ingestion, the senders' own rejections and a replay with the deploy users)")  # fmt: skip
    if len(TRIED) < len(CASES) + len(CONNECT_CASES):
        pytest.skip("the figure needs the whole module")


# ---- the configuration itself --------------------------------------------------------------------


def _account_blocks(text: str) -> dict[str, str]:
    """Each account's block of ``accounts.conf`` (``NAME: {`` at two spaces' indent, to the next)."""
    starts = [(m.group(1), m.start()) for m in re.finditer(r"^  ([A-Z_]+): \{", text, re.M)]
    return {name: text[start : (starts[i + 1][1] if i + 1 < len(starts) else len(text))] for i, (name, start) in enumerate(starts)}


def test_accounts_conf_grants_each_sender_what_ledger_senders_says() -> None:
    """The configuration and ``ledger/senders.py`` agree: each sender's account has a user of its
    name allowed to publish exactly its facts, each imported as ``upstream.<sender>.<fact>``, and
    its own REJECTED_<SENDER> (stream info, direct get); the ledger's account exports each
    sender's facts and rejections to that account only; no account imports another's."""
    text = re.sub(r"#[^\n]*", "", (DEPLOY / "accounts.conf").read_text())
    blocks = _account_blocks(text)
    assert set(blocks) == {"LEDGER", "HOSPITAL", "REMINDERS", "AUDIT", *(s.upper() for s in SENDERS)}, set(blocks)
    for sender, facts in SENDERS.items():
        block = blocks[sender.upper()]
        assert re.search(rf"user: {sender}, password: \${password_variable(sender)}\b", block), sender
        allowed = re.search(r"publish: \{ allow: \[([^\]]*)\]", block)
        assert allowed, sender
        mine = sender_rejected_stream(sender)
        assert set(re.findall(r'"([^"]+)"', allowed.group(1))) == {*facts, f"{API}.STREAM.INFO.{mine}", f"{API}.DIRECT.GET.{mine}"}
        imports = dict(re.findall(r'subject: "([^"]+)" \}, to: "([^"]+)"', block))
        assert imports == {
            **{upstream_subject(f, sender): f for f in facts},
            f"$JS.API.STREAM.INFO.{mine}": f"{API}.STREAM.INFO.{mine}",
            f"$JS.API.DIRECT.GET.{mine}": f"{API}.DIRECT.GET.{mine}",
        }, sender
        exports = re.findall(rf'service: "([^"]+)", accounts: \[{sender.upper()}\]', blocks["LEDGER"])
        assert set(exports) == {f"upstream.{sender}.*.*", f"$JS.API.STREAM.INFO.{mine}", f"$JS.API.DIRECT.GET.{mine}"}, exports
    assert re.findall(r"user: (\w+)", blocks["LEDGER"]) == ["ledger"]


def test_deploy_configs_are_valid(tmp_path: Path) -> None:
    """Every nats-server configuration in deploy/nats passes ``nats-server -t`` (passwords and the
    TLS files of deploy/tls/make-dev-ca from the environment), and each keeps JetStream's
    sync_interval at always."""
    env = {**os.environ, **{password_variable(u): "x" for u in USERS}, **dev_certs(tmp_path / "tls").server_env()}
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


# ---- a limit of the imports, pinned --------------------------------------------------------------


def test_an_api_answer_aimed_at_a_senders_own_fact_is_only_that_senders_message(deployed: DeployServer) -> None:
    """What a sender can still make the server store, and that it stays its own: an answer to one
    of its JetStream API requests aimed at one of its own fact subjects (the reply subject of a
    stream info of its rejections = ``upstream.discharge.registered``) is delivered in its account
    on that subject, which its import forwards to the ledger like anything it publishes there. The
    server's answer is then stored in the sender's own intake as the sender's message (what it
    could publish itself), and the ledger rejects it, to the sender; no other stream receives
    anything. (Runs last: the other checks of this module see no server answer in UPSTREAM.)"""
    user = "veterans"
    fact = SENDERS[user][0]
    aimed = upstream_subject(fact, user)
    mine = sender_rejected_stream(user)
    watched = (*map(intake_stream, SENDERS), *map(sender_rejected_stream, SENDERS), "KV_coverage", "COVERAGE")

    async def last_seqs() -> dict[str, int]:
        return {s: (await _stream_info(deployed, s))["state"]["last_seq"] for s in watched}

    async def run() -> tuple[dict[str, int], dict[str, int], Any, Any]:
        before = await last_seqs()
        nc = await nats.connect(deployed.url(user))
        try:
            await nc.publish(f"{API}.STREAM.INFO.{mine}", b"{}", reply=fact)
            await nc.flush()
            deadline = time.monotonic() + 30
            while (rejection := await direct_get(nc, mine, before[mine] + 1)) is None:
                assert time.monotonic() < deadline, "the stored answer was never rejected"
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
        admin = await nats.connect(deployed.url("admin"))
        try:
            stored = await admin.request(
                f"$JS.API.DIRECT.GET.{intake_stream(user)}", json.dumps({"seq": before[intake_stream(user)] + 1}).encode(), timeout=5
            )
        finally:
            await admin.close()
        return before, await last_seqs(), stored, rejection

    before, after, stored, rejection = asyncio.run(run())
    assert stored.headers["Nats-Subject"] == aimed
    assert json.loads(stored.data)["type"] == "io.nats.jetstream.api.v1.stream_info_response"
    refused = decode_rejection(rejection.data)
    assert refused.subject == aimed and refused.reason == "malformed", refused
    grown = {s for s in watched if after[s] != before[s]}
    assert grown == {intake_stream(user), mine}, {s: (before[s], after[s]) for s in grown}
    TRIED.append(("api-answer-aimed-at-own-fact", "stored in the sender's own intake, rejected to the sender"))
