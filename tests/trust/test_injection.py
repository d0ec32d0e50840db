"""No write but the ledger's (issue 12, item 1), tried exhaustively on the deploy/ configuration.

One nats-server runs ``deploy/nats/single.conf`` with its ``accounts.conf`` (a copy, passwords
generated, a free port: ``tests.trust.test_permissions.start_deploy_server``); ``ledger serve``
runs as the ``ledger`` user and has ingested a few facts: a resident registered and enrolled
(awaiting payment), and one marker message from every upstream sender on every fact it may send
(rejected as malformed, so that rejections exist too).

Nothing of the accounts' design is assumed: the test discovers, as the ledger user, every stream
of the ledger's account, its subjects and what it holds, and aims at one or two concrete subjects
per subject filter of every stream (the resident's own events and KV key first: the
``$KV.coverage.<key>`` value, ``ledger.evt.<the resident>``, the tracking subject, the writer
lease ``$KV.ledger_writer.ingest``, the checkpoints, each upstream intake, rejections, …).

Then every user of ``accounts.conf`` but ``ledger`` connects with its own credentials and, for
every request of a broad candidate set — every JetStream API verb on every stream and on every
consumer (the ledger's and one of its own), direct and message gets, consumer creation (pull,
and push with the deliver subject aimed at each target), stream snapshots delivered to each
target, MSG.NEXT, acknowledgements (``$JS.ACK`` +ACK/+NXT/+WPI/-NAK/+TERM) and flow control
(``$JS.FC``), KV puts, ``coverage.query``, the parked-retry command, every upstream fact
subject with and without a sender token, ``$SYS.REQ`` and ``$SRV`` pings, and a plain publish on
every target — publishes it with each target as the reply subject. Permission errors are
expected and counted; the connection is reopened if the server closes it.

The state of every stream (messages, first and last sequence, per-subject counts, configuration)
is compared before and after each user's attempts: nothing may change. The ledger's own work
cannot blur the comparison: ingestion is idle before the attack, the writer lease is long
(``LEDGER_LEASE_SECONDS``, no renewal during the attack) and checkpoints come within half a
second of a change to LEDGER (``LEDGER_CHECKPOINT_SECONDS``), so any change is an injection or
its consequence. A sender's publish of a fact it may send would be a legitimate write: those are
sent with the ``Nats-Msg-Id`` of its earlier marker, so the stream drops them as duplicates and
only a redirected answer could be stored. Afterwards the resident's next fact (the payment, from
the WeChat payment system) must still be recorded and reach ``coverage.query`` and the KV bucket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import nats
import pytest

from contract.messages import SCHEMAS
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.person import person_id
from tests.integration.ingest_support import SECRET, ServeProcess, wait_for
from tests.trust.test_permissions import (
    DEPLOY,
    INBOX_PREFIX,
    SENDERS,
    DeployServer,
    _valid_id,
    serve_as_ledger,
    start_deploy_server,
    stop_deploy_server,
)

FACTS = tuple(SCHEMAS)
"""Every upstream fact subject of the contract (``upstream.<noun>.<verb>``)."""
WRITER = "ledger"
"""The one user allowed to write the ledger's streams: not attacked."""
T0 = "2021-09-02T10:00:00+08:00"
ID_NUMBER = _valid_id("340104198507150011")
DISTRICT = "340104"
KEY = PersonKeyer(SECRET.encode()).key_of(ResidentId.parse(ID_NUMBER, today=date(2022, 1, 1)))
TARGETS_PER_FILTER = 2
BATCH = 2000
"""Publishes between two flushes (and a JetStream API round trip, so that the API's queue never
overflows and drops a request unseen)."""
QUIET = 0.6
"""Seconds without any change in any stream before a state counts as settled (checkpoints are
written every 0.5 s here, the copies into derived streams within milliseconds)."""
ACK_BODIES = (b"+WPI", b"+NXT", b"-NAK", b"+ACK", b"+TERM")


def parse_conf(text: str) -> dict[str, Any]:
    """A nats-server configuration (the subset ``accounts.conf`` uses: maps, arrays, quoted and
    bare strings, ``#`` and ``//`` comments, and ``$NAME`` for a block defined earlier in the
    file, resolved; ``$NAME`` of the environment is kept as it is)."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[{}\[\],:=]|[^\s{}\[\],:=#"\']+', re.sub(r"(#|//)[^\n]*", "", text))
    defined: dict[str, Any] = {}
    at = 0

    def value() -> Any:
        nonlocal at
        token = tokens[at]
        at += 1
        if token == "{":
            return block("}")
        if token == "[":
            items = []
            while tokens[at] != "]":
                if tokens[at] == ",":
                    at += 1
                    continue
                items.append(value())
            at += 1
            return items
        if token[0] in "\"'":
            return token[1:-1]
        if token.startswith("$") and token[1:] in defined:
            return defined[token[1:]]
        return token

    def block(end: str | None) -> dict[str, Any]:
        nonlocal at
        found: dict[str, Any] = {}
        while at < len(tokens) and tokens[at] != end:
            if tokens[at] == ",":
                at += 1
                continue
            key = tokens[at].strip("\"'")
            at += 1
            if at < len(tokens) and tokens[at] in (":", "="):
                at += 1
            found[key] = value()
            if end is None:
                defined[key] = found[key]
        at += 1
        return found

    return block(None)


@dataclass(frozen=True)
class ConfUser:
    name: str
    password_variable: str
    account: str
    publish_allowed: tuple[str, ...]
    """Its publish permissions' allow list (empty: no list, everything its account reaches)."""
    service_imports: tuple[tuple[str, str], ...]
    """(the subject as its account sees it, the subject in the exporting account)."""
    inbox_prefix: str
    """Where its replies may come (its subscribe permissions' ``_INBOX….>``)."""


def deploy_users() -> dict[str, ConfUser]:
    """Every user of ``accounts.conf``, with its account's service imports and its permissions."""
    conf = parse_conf((DEPLOY / "accounts.conf").read_text())
    users = {}
    for account, body in (conf.get("accounts") or {}).items():
        imports = []
        for item in body.get("imports") or []:
            service = item.get("service") if isinstance(item, dict) else None
            if isinstance(service, dict) and "subject" in service:
                imports.append((str(item.get("to") or service["subject"]), str(service["subject"])))
        for user in body.get("users") or []:
            permissions = user.get("permissions") or {}
            allowed, listens = (
                (p.get("allow", []) if isinstance(p, dict) else p) for p in (permissions.get("publish") or {}, permissions.get("subscribe") or {})
            )
            inboxes = [str(s)[:-2] for s in (listens if isinstance(listens, list) else [listens]) if str(s).startswith("_INBOX") and str(s).endswith(".>")]
            users[user["user"]] = ConfUser(
                user["user"], str(user.get("password", "")).lstrip("$"), account,
                tuple(allowed if isinstance(allowed, list) else [allowed]), tuple(imports),
                inboxes[0] if inboxes else INBOX_PREFIX.get(user["user"], "_INBOX"),
            )  # fmt: skip
    assert WRITER in users and len(users) > 3, users
    return users


def local_forms(subject: str, user: ConfUser) -> list[str]:
    """``subject`` of the ledger's account as ``user`` would name it through its account's
    service imports, where an import renames it (``to``; wildcards carried over in order)."""
    forms = []
    have = subject.split(".")
    for local, remote in user.service_imports:
        if local == remote or not matches(remote, subject):
            continue
        wild = [have[i] if token == "*" else ".".join(have[i:]) for i, token in enumerate(remote.split(".")) if token in ("*", ">")]
        tokens = [wild.pop(0) if token in ("*", ">") and wild else token for token in local.split(".")]
        forms.append(".".join(tokens))
    return forms


def known_senders() -> set[str]:
    """The upstream senders the contract knows (the sender tokens of ``upstream.<sender>.…``)."""
    senders = set(SENDERS)
    try:
        from ledger.senders import SENDERS as ENTITLED  # the sender accounts, where they exist

        senders |= set(ENTITLED)
    except ImportError:
        pass
    return senders


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``subject`` matches ``pattern`` (``*`` one token, ``>`` the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


# ---- the streams' state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamState:
    messages: int
    first_seq: int
    last_seq: int
    deleted: int
    subjects: tuple[tuple[str, int], ...]
    config: str


Snapshot = dict[str, StreamState]


async def _api(nc: Any, subject: str, request: Any = None, timeout: float = 5.0) -> dict[str, Any]:
    payload = b"" if request is None else json.dumps(request).encode()
    reply = json.loads((await nc.request(subject, payload, timeout=timeout)).data)
    assert isinstance(reply, dict)
    return reply


async def stream_names(nc: Any) -> list[str]:
    names: list[str] = []
    while True:
        page = await _api(nc, "$JS.API.STREAM.NAMES", {"offset": len(names)})
        names += page.get("streams") or []
        if not page.get("streams") or len(names) >= page.get("total", 0):
            return sorted(names)


async def stream_infos(nc: Any) -> dict[str, dict[str, Any]]:
    """Every stream of the account with every subject it holds and how many messages on each."""
    infos = {}
    for name in await stream_names(nc):
        info = await _api(nc, f"$JS.API.STREAM.INFO.{name}", {"subjects_filter": ">"})
        if "error" not in info:
            infos[name] = info
    return infos


async def snapshot(nc: Any) -> Snapshot:
    state = {}
    for name, info in (await stream_infos(nc)).items():
        s = info["state"]
        state[name] = StreamState(
            s.get("messages", 0), s.get("first_seq", 0), s.get("last_seq", 0), s.get("num_deleted", 0),
            tuple(sorted((s.get("subjects") or {}).items())), json.dumps(info["config"], sort_keys=True),
        )  # fmt: skip
    return state


@dataclass
class Change:
    stream: str
    stored: int
    """Messages stored (the last sequence's advance, derived copies included)."""
    what: str


def changes(before: Snapshot, after: Snapshot) -> list[Change]:
    found = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            found.append(Change(name, 0, "stream deleted"))
        elif name not in before:
            found.append(Change(name, after[name].last_seq, "stream created"))
        elif before[name] != after[name]:
            b, a = before[name], after[name]
            old, new = dict(b.subjects), dict(a.subjects)
            moved = sorted(s for s in old.keys() | new.keys() if old.get(s) != new.get(s))
            what = [f"messages {b.messages}->{a.messages}, last_seq {b.last_seq}->{a.last_seq}"]
            if moved:
                what.append("on " + ", ".join(f"{s} ({old.get(s, 0)}->{new.get(s, 0)})" for s in moved[:4]))
            if b.config != a.config:
                what.append("configuration changed")
            found.append(Change(name, a.last_seq - b.last_seq, "; ".join(what)))
    return found


async def settled(nc: Any, *, quiet: float = QUIET, limit: float = 20.0) -> Snapshot:
    """The streams' state once nothing changed for ``quiet`` seconds (or after ``limit``)."""
    deadline = time.monotonic() + limit
    last = await snapshot(nc)
    since = time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = await snapshot(nc)
        if now != last:
            last, since = now, time.monotonic()
    return last


def kind_of(subject: str, data: bytes, headers: bytes) -> str:
    """What a stored message is, to tell the routes that got through apart."""
    status = re.match(rb"NATS/1.0 (\d+)", headers)
    if status:
        return f"a status {status.group(1).decode()} message"
    try:
        body = json.loads(data) if data else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        if "type" in body:
            return f"the server's {str(body['type']).rsplit('.', 1)[-1]}"
        if "injected_by" in body:
            return f"a publish by {body['injected_by']}"
        if "checkpoint" in body:
            return "the ledger's checkpoint (after a change)"
        if "decided" in body or subject.startswith(("ledger.rej.", "ledger.rejected.")):
            return "the ledger's decision on an injected message"
        if "covered" in body:
            return "a coverage.query answer"
    if b"Nats-Stream" in headers:
        return "a direct get (a copy of a stored message)"
    if not data:
        return "an empty message (an acknowledgement's answer)"
    return "a copy of a stored message"


async def what_landed(nc: Any, before: Snapshot, after: Snapshot) -> Counter[str]:
    """The kinds of the messages stored between ``before`` and ``after``."""
    kinds: Counter[str] = Counter()
    for name, state in after.items():
        for seq in range(before[name].last_seq + 1 if name in before else state.first_seq, state.last_seq + 1):
            got = await _api(nc, f"$JS.API.STREAM.MSG.GET.{name}", {"seq": seq})
            if "message" in got:
                m = got["message"]
                kinds[kind_of(m["subject"], base64.b64decode(m.get("data") or ""), base64.b64decode(m.get("hdrs") or ""))] += 1
    return kinds


async def caught_up(nc: Any) -> bool:
    """Whether the ledger's account is idle: every stream derived from others (sources, mirror)
    holds everything its origins hold, and every consumer but the test's own has delivered and
    seen acknowledged everything."""
    infos = await stream_infos(nc)
    for name, info in infos.items():
        config = info["config"]
        origins = [*(config.get("sources") or []), *([config["mirror"]] if config.get("mirror") else [])]
        expected = 0
        for origin in origins:
            held = (infos.get(origin["name"], {}).get("state", {}).get("subjects")) or {}
            filters = [t["src"] for t in origin.get("subject_transforms") or []] or [origin.get("filter_subject") or ">"]
            expected += sum(n for subject, n in held.items() if any(matches(f, subject) for f in filters))
        if info["state"].get("messages", 0) < expected:
            return False
        for consumer in (await _api(nc, f"$JS.API.CONSUMER.LIST.{name}")).get("consumers") or []:
            if not consumer["name"].startswith("inj-") and (consumer.get("num_pending") or consumer.get("num_ack_pending")):
                return False
    return True


# ---- the targets ---------------------------------------------------------------------------------


def concrete(pattern: str) -> str:
    return ".".join("injected" if token in ("*", ">") else token for token in pattern.split("."))


def targets_of(infos: dict[str, dict[str, Any]], prefer: tuple[str, ...]) -> dict[str, list[str]]:
    """Per stream: one or two concrete subjects of each of its subject filters — subjects it
    holds, the resident's own first, or one made up when it holds none."""
    targets: dict[str, list[str]] = {}
    for name, info in infos.items():
        held = sorted((info["state"].get("subjects") or {}), key=lambda s: (not any(p in s for p in prefer), s))
        chosen: list[str] = []
        for pattern in info["config"].get("subjects") or ():
            mine = [s for s in held if matches(pattern, s)][:TARGETS_PER_FILTER] or [concrete(pattern)]
            chosen += [s for s in mine if s not in chosen]
        if chosen:
            targets[name] = chosen
    return targets


# ---- the deployment ------------------------------------------------------------------------------


@dataclass
class Deployment:
    server: DeployServer
    serve: ServeProcess
    users: dict[str, ConfUser]
    senders: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per sender: the subjects it may publish (a PubAck came back) → its marker's Nats-Msg-Id."""

    def url(self, user: str) -> str:
        return self.server.url(user)


async def connect(deployment: Deployment, user: str, on_error: Any = None) -> Any:
    async def swallow(e: Exception) -> None:
        if on_error is not None:
            on_error(e)

    return await nats.connect(
        deployment.url(user), inbox_prefix=deployment.users[user].inbox_prefix, allow_reconnect=False,
        connect_timeout=5, error_cb=swallow, max_reconnect_attempts=0,
    )  # fmt: skip


def _fact(subject: str, msg_id: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return subject, {"msg_id": msg_id, "occurred_at": T0, "id_number": ID_NUMBER, **fields}


async def publish_fact(deployment: Deployment, user: str, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    nc = await connect(deployment, user)
    try:
        ack = await nc.request(subject, json.dumps(body, ensure_ascii=False).encode(), timeout=5,
                               headers={"Nats-Msg-Id": body["msg_id"]})  # fmt: skip
        answer = json.loads(ack.data)
        assert "error" not in answer, (user, subject, answer)
        return dict(answer)
    finally:
        await nc.close()


async def seed(deployment: Deployment) -> None:
    """The resident, registered and enrolled; a marker from every sender on every fact subject it
    may publish (plain, or with its own sender token), remembered for the attack."""
    await publish_fact(deployment, "public_security", *_fact(
        "upstream.person.registered", "inj-ps-1", name="注入测试", district=DISTRICT))  # fmt: skip
    await publish_fact(deployment, "wechat_pay", *_fact(
        "upstream.enrollment.requested", "inj-wx-e-1", coverage_year=2022, category="resident", channel="wechat",
        district=DISTRICT))  # fmt: skip
    senders = [u for u in deployment.users if u in known_senders()]

    async def try_publish(user: str, nc: Any, subject: str) -> tuple[str, str, bool]:
        msg_id = f"seed-{user}-{subject}"
        body = json.dumps({"msg_id": msg_id, "seeded_by": user}).encode()
        try:
            reply = await nc.request(subject, body, timeout=1.5, headers={"Nats-Msg-Id": msg_id})
        except Exception:  # noqa: BLE001 - refused (a permissions violation) or nobody there
            return user, subject, False
        answer = json.loads(reply.data) if reply.data else {}
        return user, subject, isinstance(answer, dict) and "seq" in answer and "error" not in answer

    connections = {user: await connect(deployment, user) for user in senders}
    try:
        attempts = [
            try_publish(user, connections[user], subject)
            for user in senders
            for fact in FACTS
            for subject in (fact, f"upstream.{user}.{fact.split('.', 1)[1]}")
        ]
        for user, subject, acked in await asyncio.gather(*attempts):
            if acked:
                deployment.senders.setdefault(user, {})[subject] = f"seed-{user}-{subject}"
    finally:
        for nc in connections.values():
            await nc.close()
    assert deployment.senders.get("wechat_pay"), "the WeChat payment system could publish nothing"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("injection")
    users = deploy_users()
    with pytest.MonkeyPatch.context() as mp:
        # The ledger's own writes, made predictable: no lease renewal during the test, a
        # checkpoint within half a second of any change to LEDGER.
        mp.setenv("LEDGER_LEASE_SECONDS", "3600")
        mp.setenv("LEDGER_CHECKPOINT_SECONDS", "0.5")
        for user in users.values():  # users the shared helper may not know (yet)
            if user.password_variable not in os.environ:
                mp.setenv(user.password_variable, "p" + os.urandom(16).hex())
        server = start_deploy_server(directory, admin=False)
        for user in users.values():
            server.passwords.setdefault(user.name, os.environ[user.password_variable])
        try:
            serve = serve_as_ledger(server, directory, WRITER)
            found = Deployment(server, serve, users)
            asyncio.run(seed(found))
            yield found
        finally:
            stop_deploy_server(server)


# ---- the attack ----------------------------------------------------------------------------------


@dataclass
class UserResult:
    tried: int = 0
    refused: int = 0
    """Permissions violations the server answered."""
    stored: int = 0
    reconnects: int = 0
    changes: list[Change] = field(default_factory=list)
    landed: Counter[str] = field(default_factory=Counter)
    routes: list[str] = field(default_factory=list)
    """Consumers it created in the ledger's account delivering to a target."""
    """What the stored messages are (``kind_of``)."""


@dataclass
class Attack:
    before: Snapshot
    after: Snapshot
    targets: dict[str, list[str]]
    consumers: dict[str, list[str]]
    per_user: dict[str, UserResult]
    seconds: float

    @property
    def tried(self) -> int:
        return sum(r.tried for r in self.per_user.values())

    @property
    def stored(self) -> int:
        return sum(r.stored for r in self.per_user.values())


def _marker(user: str, n: int) -> bytes:
    return json.dumps({"msg_id": f"inj-{user}-{n}", "injected_by": user}).encode()


def requests_for(user: str, deployment: Deployment, infos: dict[str, dict[str, Any]], consumers: dict[str, list[str]],
                 own: dict[str, str], acks: dict[str, str], targets: list[str]) -> Iterator[tuple[str, bytes, str | None, dict[str, str] | None]]:  # fmt: skip
    """(subject, body, reply, headers) of every attempt by ``user``."""
    bad = b"not json"
    plain: list[tuple[str, bytes, dict[str, str] | None]] = [
        ("$JS.API.INFO", b"", None), ("$JS.API.STREAM.NAMES", b"", None), ("$JS.API.STREAM.LIST", b"", None),
        ("$JS.API.STREAM.DELETE.INJECTION_NO_SUCH_STREAM", b"", None), ("$JS.API.META.LEADER.STEPDOWN", bad, None),
        ("$JS.API.ACCOUNT.PURGE.INJECTION_NO_SUCH_ACCOUNT", b"", None),
    ]
    for stream, info in infos.items():
        state = info["state"]
        held = sorted(state.get("subjects") or {})
        api = "$JS.API.STREAM"
        plain += [
            (f"{api}.INFO.{stream}", b"{}", None),
            (f"{api}.MSG.GET.{stream}", json.dumps({"seq": state.get("last_seq", 1)}).encode(), None),
            (f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": state.get("last_seq", 1)}).encode(), None),
            (f"{api}.CREATE.{stream}", bad, None),
            (f"{api}.UPDATE.{stream}", bad, None),
            (f"{api}.PURGE.{stream}", json.dumps({"filter": "injection.matches.nothing"}).encode(), None),
            (f"{api}.MSG.DELETE.{stream}", json.dumps({"seq": state.get("last_seq", 0) + 1_000_000}).encode(), None),
            (f"{api}.SNAPSHOT.{stream}", bad, None),
            (f"{api}.RESTORE.{stream}", bad, None),
            (f"{api}.LEADER.STEPDOWN.{stream}", bad, None),
            (f"{api}.PEER.REMOVE.{stream}", bad, None),
            (f"$JS.API.CONSUMER.NAMES.{stream}", b"", None),
            (f"$JS.API.CONSUMER.LIST.{stream}", b"", None),
            (f"$JS.API.CONSUMER.CREATE.{stream}", bad, None),
            (f"$JS.API.CONSUMER.CREATE.{stream}.inj-{user}-x", bad, None),
            (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.inj-{user}-x", bad, None),
            (f"$JS.API.CONSUMER.DELETE.{stream}.injection-no-such-consumer", b"", None),
        ]
        if held:
            plain.append((f"$JS.API.DIRECT.GET.{stream}.{held[-1]}", b"", None))
            plain.append((f"$JS.API.CONSUMER.CREATE.{stream}.inj-{user}-x.{held[-1]}", bad, None))
        names = [*consumers.get(stream, ()), *([own[stream]] if stream in own else [])]
        for name in names:
            plain += [
                (f"$JS.API.CONSUMER.INFO.{stream}.{name}", b"", None),
                (f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", json.dumps({"batch": 1, "no_wait": True}).encode(), None),
                (f"$JS.API.CONSUMER.PAUSE.{stream}.{name}", bad, None),
                (f"$JS.API.CONSUMER.UNPIN.{stream}.{name}", bad, None),
                (f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{name}", bad, None),
                (f"$JS.ACK.{stream}.{name}.1.1.1.0.0", b"+ACK", None),
                (f"$JS.FC.{stream}.{name}.injected", b"", None),
            ]
        if stream in acks:
            plain += [(acks[stream], body, None) for body in ACK_BODIES]
    allowed = deployment.senders.get(user, {})
    for fact in FACTS:
        noun_verb = fact.split(".", 1)[1]
        for subject in (fact, *(f"upstream.{sender}.{noun_verb}" for sender in sorted(known_senders()))):
            if subject in allowed:  # a duplicate of its own marker: nothing legitimate is stored
                plain.append((subject, json.dumps({"msg_id": allowed[subject]}).encode(), {"Nats-Msg-Id": allowed[subject]}))
            else:
                plain.append((subject, _marker(user, len(plain)), None))
    plain += [
        ("coverage.query", json.dumps({"id_number": ID_NUMBER, "date": "2022-03-01"}).encode(), None),
        ("ledger.admin.parked.retry", b"[]", None),
        *((f"$SYS.REQ.{what}", b"", None) for what in (
            "SERVER.PING", "SERVER.PING.STATZ", "SERVER.PING.CONNZ", "SERVER.PING.JSZ", "SERVER.PING.IDZ",
            "ACCOUNT.PING.CONNZ", "ACCOUNT.PING.STATZ", "USER.INFO", "ACCOUNT.LEDGER.CONNZ", "ACCOUNT.LEDGER.JSZ",
            "ACCOUNT.LEDGER.INFO", "ACCOUNT.LEDGER.SUBSZ")),
        *((f"$SRV.{what}", b"", None) for what in ("PING", "INFO", "STATS", "PING.ledger", "INFO.ledger")),
    ]  # fmt: skip
    # What the user's account imports under names of its own, and what its permissions allow
    # (wildcards filled in), besides.
    conf = deployment.users[user]
    known = {subject for subject, _, _ in plain}
    renamed = {form: (body, headers) for subject, body, headers in plain for form in local_forms(subject, conf) if form not in known}
    plain += [(form, body, headers) for form, (body, headers) in renamed.items()]
    known |= set(renamed)
    patterns = [*conf.publish_allowed, *(local for local, _ in conf.service_imports)]
    plain += [(concrete(p), b"{}", None) for p in dict.fromkeys(patterns) if concrete(p) not in known]
    # A reply or delivery aimed at a subject the user may publish on itself goes back into its
    # account and through its own import: its own publish, not an injection.
    aims = [t for t in targets if t not in allowed]
    for subject, body, headers in plain:
        for target in aims:
            yield subject, body, target, headers
    # Plain publishes on every target, without and with another target as the reply.
    for n, subject in enumerate(targets):
        for reply in (None, *aims):
            if subject in allowed:
                yield subject, json.dumps({"msg_id": allowed[subject]}).encode(), reply, {"Nats-Msg-Id": allowed[subject]}
            else:
                yield subject, _marker(user, n), reply, None
    # Deliveries aimed at each target: push consumers (three ways to create one), snapshots —
    # under the names the user's account imports them by, too.
    for stream in infos:
        for n, target in enumerate(aims):
            name = f"inj-{user}-{n}"
            last = int(infos[stream]["state"].get("last_seq", 0))  # its last three messages, whatever they are
            config = {"deliver_subject": target, "deliver_policy": "by_start_sequence", "opt_start_seq": max(1, last - 2),
                      "ack_policy": "none", "inactive_threshold": 5_000_000_000}  # fmt: skip
            for subject, request in (
                (f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}),
                (f"$JS.API.CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": {**config, "name": name}}),
                (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}d", {"stream_name": stream, "config": {**config, "durable_name": f"{name}d"}}),
                (f"$JS.API.STREAM.SNAPSHOT.{stream}", {"deliver_subject": target, "chunk_size": 1024}),
            ):
                for form in (subject, *local_forms(subject, conf)):
                    yield form, json.dumps(request).encode(), target, None


async def prepare(deployment: Deployment, user: str, infos: dict[str, dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """A pull consumer of ``user``'s own on every stream it may create one on, and the ack subject
    of a message it fetched there (what a reader may legitimately hold)."""
    own: dict[str, str] = {}
    acks: dict[str, str] = {}
    nc = await connect(deployment, user)
    name = f"inj-{user}"

    async def one(stream: str) -> None:
        config = {"name": name, "durable_name": name, "ack_policy": "explicit", "deliver_policy": "all"}
        try:
            created = await _api(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": config}, 1.5)
        except Exception:  # noqa: BLE001 - refused: no consumer of its own there
            return
        if "error" in created:
            return
        own[stream] = name
        try:
            msg = await nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", json.dumps({"batch": 1, "no_wait": True}).encode(), timeout=1.5)
        except Exception:  # noqa: BLE001 - an empty stream
            return
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            acks[stream] = msg.reply

    try:
        await asyncio.gather(*(one(stream) for stream in infos))
    finally:
        await nc.close()
    return own, acks


async def remove_attack_consumers(nc: Any, baseline: dict[str, list[str]], targets: set[str]) -> list[str]:
    """Consumers an attacker managed to create in the ledger's account that deliver to a target
    (a way to have messages written, even where none was yet): removed, so that they stop
    copying messages around once counted; their names and deliver subjects."""
    found = []
    for stream in await stream_names(nc):
        listing = await _api(nc, f"$JS.API.CONSUMER.LIST.{stream}", {"offset": 0})
        for consumer in listing.get("consumers") or []:
            name, config = consumer["name"], consumer.get("config", {})
            if name not in baseline.get(stream, ()) and (config.get("deliver_subject") in targets or name.startswith("inj-")):
                found.append(f"{stream}.{name} -> {config.get('deliver_subject')}")
                await _api(nc, f"$JS.API.CONSUMER.DELETE.{stream}.{name}")
    return found


async def attack_as(deployment: Deployment, user: str, cases: Iterator[tuple[str, bytes, str | None, dict[str, str] | None]],
                    writer: Any) -> UserResult:  # fmt: skip
    result = UserResult()
    refused = Counter[str]()

    def on_error(e: Exception) -> None:
        refused["permissions" if "permissions violation" in str(e).lower() else "other"] += 1

    nc = await connect(deployment, user, on_error)
    try:
        for subject, body, reply, headers in cases:
            if nc.is_closed:
                nc = await connect(deployment, user, on_error)
                result.reconnects += 1
            try:
                await nc.publish(subject, body, reply=reply or "", headers=headers)
            except nats.errors.ConnectionClosedError:
                nc = await connect(deployment, user, on_error)
                result.reconnects += 1
                await nc.publish(subject, body, reply=reply or "", headers=headers)
            result.tried += 1
            if result.tried % BATCH == 0:
                await nc.flush(timeout=10)
                await writer.request("$JS.API.INFO", b"", timeout=10)  # the API's queue is drained
        await nc.flush(timeout=10)
        await writer.request("$JS.API.INFO", b"", timeout=10)
        await asyncio.sleep(0.2)  # the last permission errors on their way back
    finally:
        await nc.close()
    result.refused = refused["permissions"]
    return result


@pytest.fixture(scope="module")
def attack(deployment: Deployment) -> Attack:
    async def run() -> Attack:
        writer = await connect(deployment, WRITER)
        try:
            await asyncio.to_thread(wait_for, lambda: _kv_value(deployment) is not None, 60, "the resident's coverage in the KV bucket")
            attackers = [u for u in deployment.users if u != WRITER]
            infos = await stream_infos(writer)
            prepared = dict(zip(attackers, await asyncio.gather(*(prepare(deployment, u, infos) for u in attackers)), strict=True))
            consumers = {
                stream: sorted((await _api(writer, f"$JS.API.CONSUMER.NAMES.{stream}")).get("consumers") or [])
                for stream in infos
            }
            deadline = time.monotonic() + 60
            while not await caught_up(writer):
                assert time.monotonic() < deadline, "the ledger did not catch up with the seeded facts in 60 s"
                await asyncio.sleep(0.2)
            before = await settled(writer, quiet=2 * QUIET)
            infos = await stream_infos(writer)
            targets = targets_of(infos, prefer=(KEY, person_id(KEY).hex))
            everything = [t for subjects in targets.values() for t in subjects]
            started = time.monotonic()
            per_user: dict[str, UserResult] = {}
            state = before
            for user in attackers:
                own, acks = prepared[user]
                cases = requests_for(user, deployment, infos, consumers, own, acks, everything)
                result = await attack_as(deployment, user, cases, writer)
                result.routes = await remove_attack_consumers(writer, consumers, set(everything))
                now = await settled(writer)
                result.changes = changes(state, now)
                result.stored = sum(c.stored for c in result.changes)
                result.landed = await what_landed(writer, state, now)
                per_user[user], state = result, now
            # Anything later still counts (to nobody in particular).
            after = await settled(writer, quiet=2 * QUIET)
            if after != state:
                late = UserResult(changes=changes(state, after), landed=await what_landed(writer, state, after))
                late.stored = sum(c.stored for c in late.changes)
                per_user["(after everyone)"] = late
            return Attack(before, after, targets, consumers, per_user, time.monotonic() - started)
        finally:
            await writer.close()

    return asyncio.run(run())


def _kv_value(deployment: Deployment) -> dict[str, Any] | None:
    async def get() -> dict[str, Any] | None:
        nc = await connect(deployment, WRITER)
        try:
            got = await _api(nc, "$JS.API.STREAM.MSG.GET.KV_coverage", {"last_by_subj": f"$KV.coverage.{KEY}"})
            if "message" not in got:
                return None
            try:
                value = json.loads(base64.b64decode(got["message"].get("data") or ""))
            except ValueError:
                value = None
            return value if isinstance(value, dict) else {"not a coverage value": value}
        finally:
            await nc.close()

    return asyncio.run(get())


# ---- the rule ------------------------------------------------------------------------------------


def test_no_user_but_the_ledger_can_store_a_message_in_its_streams(deployment: Deployment, attack: Attack) -> None:
    """Given the deploy accounts, a ledger that ingested facts and rejections, and every stream's
    state; when every user but the ledger makes every request it can with a reply or deliver
    subject on every stream's subjects and KV keys, or publishes there; then no stream changed."""
    print(f"\ninjection: {len(attack.before)} streams, {sum(map(len, attack.targets.values()))} targets "
          f"({'; '.join(s + ': ' + ' '.join(t) for s, t in attack.targets.items())}); "
          f"{attack.tried:,} cases tried (user x request x target) in {attack.seconds:.1f} s; "
          f"writes that got through: {attack.stored:,} (the {WRITER} user, the writer, not tried)")  # fmt: skip
    for user, result in attack.per_user.items():
        account = deployment.users[user].account if user in deployment.users else "-"
        print(f"  {user} ({account}): {result.tried:,} tried, {result.refused:,} refused by permissions, "
              f"{result.reconnects} reconnections, {result.stored:,} stored, {len(result.routes)} delivering consumers")  # fmt: skip
        for change in result.changes:
            print(f"    {change.stream}: {change.what}")
        if result.landed:
            print("    stored: " + ", ".join(f"{kind} {n}" for kind, n in result.landed.most_common()))
    assert attack.tried > 0 and all(r.tried for r in attack.per_user.values() if not r.changes)
    log = (deployment.server.directory / "nats-server.log").read_text()
    assert "queue limit" not in log, "the server dropped JetStream API requests: cases not tried"
    assert all(not r.changes for r in attack.per_user.values()), {u: r.changes for u, r in attack.per_user.items() if r.changes}
    assert all(not r.routes for r in attack.per_user.values()), {u: r.routes[:5] for u, r in attack.per_user.items() if r.routes}
    assert attack.stored == 0


def test_the_targeted_residents_next_fact_still_applies(deployment: Deployment, attack: Attack) -> None:
    """Given the attack on the resident's subjects; when the WeChat payment system sends the
    resident's payment; then it is recorded and coverage.query and the KV bucket say enrolled."""
    assert deployment.serve.process is not None and deployment.serve.process.poll() is None, "ledger serve stopped"
    events = f"ledger.evt.{person_id(KEY).hex}"
    before = dict(attack.after["LEDGER"].subjects).get(events, 0)
    asyncio.run(publish_fact(deployment, "wechat_pay", *_fact(
        "upstream.payment.received", "inj-wx-p-1", coverage_year=2022, amount_fen=32000, channel="wechat", paid_at=T0)))  # fmt: skip

    def enrolled() -> bool:
        value = _kv_value(deployment) or {}
        return value.get("coverage", {}).get("2022", {}).get("status") == "enrolled"

    wait_for(enrolled, 30, "the payment to reach the KV bucket", raising=False)

    async def query() -> tuple[dict[str, Any], int]:
        nc = await connect(deployment, WRITER)
        try:
            reply = await _api(nc, "coverage.query", {"id_number": ID_NUMBER, "date": "2022-03-01"}, 10)
            info = await _api(nc, "$JS.API.STREAM.INFO.LEDGER", {"subjects_filter": events})
            return reply, int((info["state"].get("subjects") or {}).get(events, 0))
        finally:
            await nc.close()

    answer, after = asyncio.run(query())
    assert after > before, f"no new event on {events}"
    assert answer.get("covered") is True and answer.get("status") == "enrolled", answer
    assert enrolled(), _kv_value(deployment)
