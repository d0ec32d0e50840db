"""History that a NATS credential cannot forge (issue 12, item 3).

The forger holds NATS credentials that can publish on the ledger's subjects — and nothing else:
not the ledger's signing key, which only ``ledger serve`` reads. On a ledger written by a real
``ledger serve`` (embedded nats-server, a season of enrollments and payments, some rejected), the
forger tries what such credentials allow; the operator then runs ``ledger verify`` with the
public key pinned outside the data directory (``ledger keys public``). Every forgery must make
verify fail, naming the forged message's stream sequence; the untouched ledger must pass.

Each case runs on a fresh copy of the same server store. The figure (forgeries tried, caught) is
printed by the last test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from eventsourcing.persistence import StoredEvent

from contract.subjects import LEDGER_FOLLOWER
from ledger.jetstream.client import NatsClient, OutgoingMessage, StoredMessage
from ledger.jetstream.datastore import HASH, TOPIC, VERSION, JetStreamDatastore, event_hash
from ledger.jetstream.evidence import Checkpointer, fold
from ledger.jetstream.server import EmbeddedNatsServer
from ledger.jetstream.signing import KEY_ID, SIGNATURE, SIGNED, SigningKey, sign_save
from tests.integration.ingest_support import ingestion_finished, publish_all, season, wait_for

ROOT = Path(__file__).resolve().parents[2]
PEOPLE = 30

TRIED: list[str] = []
CAUGHT: list[str] = []


def _env(**extra: str) -> dict[str, str]:
    """The environment of a command as an operator runs it: none of the test runner's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "NATS_"))}
    return {**env, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **extra}


def _ledger(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=120
    )


@dataclass
class Written:
    """The ledger ``ledger serve`` wrote: its data directory and the public key pinned outside it."""

    data_dir: Path
    pinned: Path


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    base = tmp_path_factory.mktemp("forgery")
    data_dir = base / "data"
    log = open(base / "serve.log", "wb")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data_dir)], cwd=ROOT, env=_env(), stdout=log, stderr=log
    )
    try:
        wait_for(lambda: (data_dir / "serve.url").exists() or serve.poll() is not None, 60, "ledger serve to be ready")
        assert serve.poll() is None, (base / "serve.log").read_text()
        url = (data_dir / "serve.url").read_text().strip()
        messages = season(PEOPLE, "forgery")  # every tenth payment is the wrong amount: rejected
        asyncio.run(publish_all(url, messages))
        wait_for(lambda: ingestion_finished(url, len(messages)), 120, "the ingestion of the season", every=0.2)
    finally:
        serve.send_signal(signal.SIGTERM)  # a graceful stop signs a last checkpoint
        serve.wait(60)
        log.close()
    # The operator pins the ledger's public key, outside its data directory
    public = _ledger("keys", "public", "--data-dir", str(data_dir))
    assert public.returncode == 0, public.stderr
    pinned = base / "pinned-ledger-key.pem"
    pinned.write_text(public.stdout)
    yield Written(data_dir, pinned)


@dataclass
class Copy:
    """A fresh copy of the written ledger on a server of its own, for one forgery."""

    url: str
    pinned: Path
    work: Path
    store: JetStreamDatastore
    signing_key: Path
    """The ledger's key file: used only to let the ledger itself go on writing, never by the forger."""

    def messages(self) -> list[StoredMessage]:
        return self.store.read_range(self.store.stream, 1, 10_000)

    def verify(self, *options: str, **env: str) -> tuple[int, dict[str, Any]]:
        """``ledger verify`` as the operator runs it, with the pinned key; (exit code, its JSON)."""
        run = _ledger("verify", "--nats-url", self.url, "--data-dir", str(self.work), "--trust-key", str(self.pinned),
                      "--format", "json", *options, **env)  # fmt: skip
        assert run.stdout, run.stderr
        return run.returncode, json.loads(run.stdout)

    def ledger_goes_on(self) -> int:
        """The ledger writes one more save after whatever the forger did (it signs it); its sequence."""
        writer = JetStreamDatastore(NatsClient(self.url), follower=LEDGER_FOLLOWER, signer=SigningKey.load(self.signing_key))
        try:
            event = StoredEvent(originator_id=uuid.uuid4(), originator_version=1, topic="tests.trust:Continued", state=b"{}")
            (seq,) = writer.append(writer.stream, f"{writer.prefix}.evt", [event])
        finally:
            writer.client.close()
        return seq


@pytest.fixture
def copy(written: Written, tmp_path: Path) -> Iterator[Copy]:
    shutil.copytree(written.data_dir / "nats", tmp_path / "nats")
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        store = JetStreamDatastore(NatsClient(server.url), follower=LEDGER_FOLLOWER)
        try:
            yield Copy(server.url, written.pinned, tmp_path, store, written.data_dir / "signing-key.pem")
        finally:
            store.client.close()


def forge(url: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> list[int]:
    """What the forger's credentials allow: publish on the ledger's subjects; the sequences stored."""

    async def publish() -> list[int]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            return [(await js.publish(subject, data, headers={**headers, "Nats-Msg-Id": uuid.uuid4().hex})).seq
                    for subject, data, headers in messages]  # fmt: skip
        finally:
            await nc.close()

    return asyncio.run(publish())


def as_published(message: StoredMessage) -> dict[str, str]:
    """A stored message's headers as its writer sent them (without what the server adds)."""
    return {k: v for k, v in message.headers.items() if not k.startswith("Nats-")}


def by_subject(messages: list[StoredMessage], kind: str) -> dict[str, list[StoredMessage]]:
    found: dict[str, list[StoredMessage]] = {}
    for m in messages:
        if f".{kind}." in m.subject:
            found.setdefault(m.subject, []).append(m)
    return found


def chained(subject: str, after: StoredMessage, templates: list[StoredMessage]) -> list[tuple[str, bytes, dict[str, str]]]:
    """``templates``' bodies and topics as the next events of ``subject``, correctly hash-chained."""
    forged = []
    previous, version = after.headers[HASH], int(after.headers[VERSION])
    for template in templates:
        version += 1
        topic = template.headers[TOPIC]
        own = event_hash(previous, subject, str(version), topic, template.data)
        forged.append((subject, template.data, {TOPIC: topic, VERSION: str(version), "Ledger-Prev-Hash": previous, HASH: own}))
        previous = own
    return forged


def payment_for_someone_who_never_paid(copy: Copy) -> list[tuple[str, bytes, dict[str, str]]]:
    """A PaymentReceived and a CoverageDecided, copied from a person who paid, chained onto a
    person whose payment was refused (wrong amount): coverage for someone who never paid."""
    events = by_subject(copy.messages(), "evt")
    paid = next(ms for ms in events.values() if any(m.headers[TOPIC].endswith(".PaymentReceived") for m in ms))
    templates = [next(m for m in paid if m.headers[TOPIC].endswith(name)) for name in (".PaymentReceived", ".CoverageDecided")]
    unpaid = next(s for s, ms in events.items() if not any(m.headers[TOPIC].endswith(".PaymentReceived") for m in ms))
    return chained(unpaid, events[unpaid][-1], templates)


def findings_at(report: dict[str, Any], *seqs: int) -> list[str]:
    """The findings naming any of ``seqs`` (``LEDGER n:``, ``LEDGER n (…)`` or a range ``LEDGER a–b``)."""

    def names(finding: str, seq: int) -> bool:
        where = finding.split(": ", 1)[0]
        if not where.startswith("LEDGER "):
            return False
        span = where[len("LEDGER ") :].split(" ", 1)[0]
        first, _, last = span.partition("–")
        return int(first) <= seq <= int(last or first)

    return [f for f in report["findings"] if any(names(f, seq) for seq in seqs)]


# ---- the forgeries ------------------------------------------------------------------------------


def forged_payment_appended_at_the_end(copy: Copy) -> tuple[list[int], str]:
    seqs = forge(copy.url, payment_for_someone_who_never_paid(copy))
    return seqs, "no signature covers it"


def forged_payment_with_a_signature_lifted_from_a_genuine_save(copy: Copy) -> tuple[list[int], str]:
    genuine = next(m for m in reversed(copy.messages()) if SIGNATURE in m.headers)
    forged = payment_for_someone_who_never_paid(copy)
    subject, data, headers = forged[-1]
    forged[-1] = (subject, data, {**headers, SIGNED: str(len(forged)), KEY_ID: genuine.headers[KEY_ID],
                                  SIGNATURE: genuine.headers[SIGNATURE]})  # fmt: skip
    return forge(copy.url, forged), "the signature does not verify"


def forged_payment_signed_with_the_forgers_own_key(copy: Copy) -> tuple[list[int], str]:
    own = SigningKey.generate()
    signed = sign_save(own, [OutgoingMessage(*m) for m in payment_for_someone_who_never_paid(copy)])
    return forge(copy.url, [(m.subject, m.data, m.headers) for m in signed]), f"signed by key {own.key_id}, not a pinned key"


def tracking_record_inserted_in_the_middle(copy: Copy) -> tuple[list[int], str]:
    tracking = next(m for m in reversed(copy.messages()) if ".trk." in m.subject)
    headers = {"Ledger-Tracking-Id": "1", "Ledger-Writer-Epoch": tracking.headers["Ledger-Writer-Epoch"], "Ledger-Nonce": "00" * 12}
    seqs = forge(copy.url, [(tracking.subject, b'{"decided": []}', headers)])  # the position moved back to 1
    after = copy.ledger_goes_on()
    assert after > seqs[-1], "the forged record stands in the middle of the stream"
    return seqs, "no signature covers it"


def event_chained_onto_another_aggregate_in_the_middle(copy: Copy) -> tuple[list[int], str]:
    events = by_subject(copy.messages(), "evt")
    subject, history = next(iter(events.items()))
    seqs = forge(copy.url, chained(subject, history[-1], [history[-1]]))
    copy.ledger_goes_on()
    return seqs, "no signature covers it"


def rejection_with_a_made_up_signature_in_the_middle(copy: Copy) -> tuple[list[int], str]:
    rejection = next(m for m in copy.messages() if ".rej." in m.subject)
    key_id = next(m.headers[KEY_ID] for m in copy.messages() if KEY_ID in m.headers)
    headers = {**as_published(rejection), SIGNED: "1", KEY_ID: key_id, SIGNATURE: base64.b64encode(os.urandom(64)).decode()}
    seqs = forge(copy.url, [(rejection.subject, rejection.data, headers)])
    copy.ledger_goes_on()
    return seqs, "the signature does not verify"


def signed_claim_copied_to_another_subject(copy: Copy) -> tuple[list[int], str]:
    claim = next(m for m in copy.messages() if m.headers.get(SIGNED) == "1")
    other = claim.subject.rsplit(".", 1)[0] + ".ELSEWHERE"
    return forge(copy.url, [(other, claim.data, as_published(claim))]), "the signature does not verify"


def last_message_of_a_signed_save_copied_to_another_subject(copy: Copy) -> tuple[list[int], str]:
    last = next(m for m in copy.messages() if int(m.headers.get(SIGNED, "0")) > 1)
    other = f"{copy.store.prefix}.evt.{uuid.uuid4().hex}"
    return forge(copy.url, [(other, last.data, as_published(last))]), "its signature claims to cover"


def signed_save_replayed_on_its_own_subject(copy: Copy) -> tuple[list[int], str]:
    claim = next(m for m in copy.messages() if m.headers.get(SIGNED) == "1")
    return forge(copy.url, [(claim.subject, claim.data, as_published(claim))]), "a copy of the signed save"


def checkpoint_signed_with_the_forgers_key(copy: Copy) -> tuple[list[int], str]:
    forged = forge(copy.url, payment_for_someone_who_never_paid(copy))
    digest = "0" * 64
    for message in copy.messages():
        digest = fold(digest, message)
    own = SigningKey.generate()
    end = copy.messages()[-1].seq
    body = {"v": 1, "stream": copy.store.stream, "last_seq": end, "digest": digest, "previous_seq": 0,
            "signed_at": datetime.now(UTC).isoformat(), "key_id": own.key_id}  # fmt: skip
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    envelope = {"checkpoint": body, "signature": base64.b64encode(own.sign(raw)).decode(), "public_key": own.public_pem()}
    forge(copy.url, [(f"{copy.store.prefix}.checkpoint", json.dumps(envelope).encode(), {})])
    return forged, f"checkpoint up to LEDGER {end}: signed by key {own.key_id}, not a pinned key"


FORGERIES: dict[str, Callable[[Copy], tuple[list[int], str]]] = {
    f.__name__: f
    for f in (
        forged_payment_appended_at_the_end,
        forged_payment_with_a_signature_lifted_from_a_genuine_save,
        forged_payment_signed_with_the_forgers_own_key,
        tracking_record_inserted_in_the_middle,
        event_chained_onto_another_aggregate_in_the_middle,
        rejection_with_a_made_up_signature_in_the_middle,
        signed_claim_copied_to_another_subject,
        last_message_of_a_signed_save_copied_to_another_subject,
        signed_save_replayed_on_its_own_subject,
        checkpoint_signed_with_the_forgers_key,
    )
}


# ---- the tests ----------------------------------------------------------------------------------


def test_given_the_ledger_as_serve_wrote_it_then_verify_with_the_pinned_key_passes(copy: Copy) -> None:
    code, report = copy.verify()
    assert code == 0 and report["intact"] is True, report["findings"]
    assert report["messages"] > 100 and report["signed_saves"] >= 2 and report["checkpoints"] >= 1
    assert report["uncovered_messages"] == 0, "a graceful stop signs a last checkpoint"


@pytest.mark.parametrize("name", list(FORGERIES))
def test_given_a_forger_with_nats_credentials_but_not_the_key_then_verify_names_each_forged_message(copy: Copy, name: str) -> None:
    # Given the ledger serve wrote, intact
    assert copy.verify()[0] == 0
    # When the forger does what NATS credentials allow
    TRIED.append(name)
    seqs, problem = FORGERIES[name](copy)
    # Then verify fails and names every forged message by its stream sequence
    code, report = copy.verify()
    assert code == 1 and report["intact"] is False
    for seq in seqs:
        named = findings_at(report, seq) if "checkpoint up to" not in problem else report["findings"]
        assert any(problem in f for f in named), (seq, report["findings"])
    # And nothing the ledger itself wrote is blamed
    assert all(findings_at(report, seq) == [] for seq in range(1, min(seqs)))
    CAUGHT.append(name)


def test_given_the_checkpoint_stream_deleted_then_verify_fails_checkpoints_missing(copy: Copy) -> None:
    TRIED.append("checkpoint_stream_deleted")
    # When someone deletes the checkpoint stream (this server's configuration allows it)
    deleted = copy.store.client.run(copy.store.client.api(f"$JS.API.STREAM.DELETE.{copy.store.stream}_CHECKPOINTS"))
    assert deleted.get("success") is True, deleted
    # Then verify fails: checkpoints missing
    code, report = copy.verify()
    assert code == 1 and any("missing" in f for f in report["findings"]), report["findings"]
    # And an empty checkpoint stream in its place is missing checkpoints all the same
    copy.store.client.run(copy.store.client.api(f"$JS.API.STREAM.CREATE.{copy.store.stream}_CHECKPOINTS", {
        "name": f"{copy.store.stream}_CHECKPOINTS", "subjects": [f"{copy.store.prefix}.checkpoint"], "storage": "file",
        "allow_direct": True}))  # fmt: skip
    code, report = copy.verify("--stale-after", "0")
    assert code == 1 and any("missing: no checkpoint of a pinned key covers" in f for f in report["findings"]), report
    CAUGHT.append("checkpoint_stream_deleted")


def test_given_checkpoints_that_stopped_while_the_ledger_writes_then_verify_fails_them_stale(copy: Copy) -> None:
    TRIED.append("checkpoints_stopped")
    # Given the ledger goes on writing (signed), but no checkpoint is signed any more
    seq = copy.ledger_goes_on()
    time.sleep(0.2)
    # When the operator verifies with checkpoints due every 50 ms, allowing one interval
    code, report = copy.verify("--stale-after", "1", LEDGER_CHECKPOINT_SECONDS="0.05")
    # Then verify fails: the checkpoints are stale, from the first message they do not cover
    assert code == 1 and report["uncovered_messages"] == 1
    assert [f for f in report["findings"] if "stale" in f and f"LEDGER {seq}" in f], report["findings"]
    # And with the default allowance (three intervals of a minute) the same ledger passes
    assert copy.verify()[0] == 0
    CAUGHT.append("checkpoints_stopped")


def test_given_a_checkpoint_recorded_outside_nats_then_a_rolled_back_stream_fails(copy: Copy, written: Written, tmp_path: Path) -> None:
    TRIED.append("stream_rolled_back")
    # Given the ledger went on (signed, and sealed by a new checkpoint), verified and recorded
    copy.ledger_goes_on()
    writer = JetStreamDatastore(NatsClient(copy.url), follower=LEDGER_FOLLOWER)
    try:
        Checkpointer(writer, SigningKey.load(copy.signing_key)).checkpoint()
    finally:
        writer.client.close()
    code, later = copy.verify()
    assert code == 0
    recorded = f"{later['last_checkpoint_seq']}:{later['last_checkpoint_digest']}"
    assert copy.verify("--known-checkpoint", recorded)[0] == 0
    # When the streams are put back as they were before (an operator restoring an old copy):
    # every message and checkpoint in it is genuine, so verify alone passes it
    shutil.copytree(written.data_dir / "nats", tmp_path / "before")
    with EmbeddedNatsServer(tmp_path / "before") as server:
        before = Copy(server.url, copy.pinned, copy.work, copy.store, copy.signing_key)
        assert before.verify()[0] == 0
        # Then with the recorded checkpoint it fails: rolled back
        code, report = before.verify("--known-checkpoint", recorded)
    assert code == 1 and any("rolled back" in f for f in report["findings"]), report["findings"]
    CAUGHT.append("stream_rolled_back")


def test_given_a_key_other_than_the_pinned_one_then_every_save_and_checkpoint_fails(copy: Copy) -> None:
    # Given a key that is not the one the ledger signs with
    other = copy.work / "other.pem"
    other.write_text(SigningKey.generate().public_pem())
    # When the ledger is verified against it
    run = _ledger("verify", "--nats-url", copy.url, "--trust-key", str(other), "--data-dir", str(copy.work), "--format", "json")
    report = json.loads(run.stdout)
    # Then every save and the checkpoint are refused, and the checkpoints count as missing
    assert run.returncode == 1 and report["signed_saves"] == 0 and report["checkpoints"] == 0
    assert any("not a pinned key" in f for f in report["findings"] if f.startswith("checkpoint up to"))
    assert len([f for f in report["findings"] if f.startswith("LEDGER") and "not a pinned key" in f]) >= 2


def test_given_no_pinned_key_then_verify_refuses_to_vouch_for_the_ledger(copy: Copy) -> None:
    run = _ledger("verify", "--nats-url", copy.url, "--data-dir", str(copy.work))
    assert run.returncode == 1 and "no pinned public key" in run.stderr and run.stdout == ""


def test_every_forgery_tried_was_caught() -> None:
    if not TRIED:
        pytest.skip("run with the forgeries above")
    print(f"\nforgeries tried: {len(TRIED)}, caught by ledger verify: {len(CAUGHT)}")
    assert CAUGHT == TRIED
