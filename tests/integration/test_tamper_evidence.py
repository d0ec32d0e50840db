"""Tamper evidence: signed saves, hash chains per aggregate, signed checkpoints, and ``verify``
catching a changed message — one altered by rewriting the server's data directory offline, and one
forged by an insider publishing straight to an aggregate's subject. (The forger's whole repertoire
is in tests/trust/test_forgery.py.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ledger.application import Actor, Ledger
from ledger.commands import ReceivePayment, RequestEnrollment
from ledger.domain.identity import PersonKeyer
from ledger.jetstream.client import NatsClient, OutgoingMessage
from ledger.jetstream.datastore import GENESIS_HASH, HASH, PREV_HASH, JetStreamDatastore, event_hash
from ledger.jetstream.evidence import Checkpoint, Checkpointer, verify
from ledger.jetstream.server import EmbeddedNatsServer
from ledger.jetstream.signing import KEY_ID, SIGNATURE, SIGNED, PublicKey, SigningKey, message_digest, save_payload
from tests.integration.ingest_support import ROOT, SECRET, people

CST = timezone(timedelta(hours=8))
T = datetime(2021, 10, 8, 10, tzinfo=CST)
WECHAT = Actor("payment", "wechat")


def season(ledger: Ledger, count: int, tag: str) -> list[str]:
    residents = people(count, tag)
    for i, person in enumerate(residents):
        ledger.request_enrollment(RequestEnrollment(msg_id=f"{tag}-e{i}", occurred_at=T, id_number=person, coverage_year=2022,
                                  category="resident", channel="wechat", district="340104"), WECHAT)  # fmt: skip
        ledger.receive_payment(ReceivePayment(msg_id=f"{tag}-p{i}", occurred_at=T, paid_at=T, id_number=person, coverage_year=2022,
                               amount_fen=32_000, channel="wechat"), WECHAT)  # fmt: skip
    return residents


def signed_ledger(url: str, key_file: Path) -> Ledger:
    """A ledger that signs its saves with the key in ``key_file``, as ``ledger serve``'s does."""
    return Ledger(
        {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url, "LEDGER_SIGNING_KEY_FILE": str(key_file)},
        keyer=PersonKeyer(SECRET.encode()),
    )


def datastore_on(url: str) -> JetStreamDatastore:
    return JetStreamDatastore(NatsClient(url, timeout=5.0))


def test_every_event_carries_its_aggregates_hash_chain(tmp_path: Path) -> None:
    key_file = tmp_path / "signing-key.pem"
    SigningKey.local(key_file)
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = signed_ledger(server.url, key_file)
        try:
            # Given a person enrolled and paid (four events on one aggregate)
            (person,) = season(ledger, 1, "chain")
            store = datastore_on(server.url)
            subject = store.aggregate_subject(f"{store.prefix}.evt", ledger.person(person).id)
            messages = store.read_subject(store.stream, subject)
            store.client.close()
        finally:
            ledger.close()
    # Then each names the previous one's hash, and its own hash is that of its content
    assert [m.headers["Ledger-Version"] for m in messages] == ["1", "2", "3", "4"]
    previous = GENESIS_HASH
    for m in messages:
        assert m.headers[PREV_HASH] == previous
        assert m.headers[HASH] == event_hash(previous, m.subject, m.headers["Ledger-Version"], m.headers["Ledger-Topic"], m.data)
        previous = m.headers[HASH]


def test_every_save_is_signed_on_its_last_message_over_each_messages_subject_headers_and_body(tmp_path: Path) -> None:
    key_file = tmp_path / "signing-key.pem"
    key = SigningKey.local(key_file)
    # Then the development key is the owner's alone
    assert key_file.stat().st_mode & 0o777 == 0o600
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = signed_ledger(server.url, key_file)
        try:
            # Given three people enrolled and paid, one save per fact
            season(ledger, 3, "signed")
            store = datastore_on(server.url)
            messages = store.read_range(store.stream, 1, 100)
            store.client.close()
        finally:
            ledger.close()
    # Then every save ends with a message signed with the ledger's key, covering the whole save
    signed = [m for m in messages if SIGNATURE in m.headers]
    assert signed and signed[-1].seq == messages[-1].seq
    covered = 0
    for last in signed:
        count = int(last.headers[SIGNED])
        save = [m for m in messages if last.seq - count < m.seq <= last.seq]
        payload = save_payload([message_digest(m.subject, m.headers, m.data) for m in save])
        assert last.headers[KEY_ID] == key.key_id
        assert key.public.verifies(payload, base64.b64decode(last.headers[SIGNATURE]))
        # And the same save on another subject does not verify
        moved = [message_digest(m.subject + "x", m.headers, m.data) for m in save]
        assert not key.public.verifies(save_payload(moved), base64.b64decode(last.headers[SIGNATURE]))
        covered += count
    assert covered == len(messages) == 12


def test_verify_passes_a_clean_ledger_and_catches_a_message_rewritten_offline(tmp_path: Path) -> None:
    key_file = tmp_path / "signing-key.pem"
    key = SigningKey.local(key_file)
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = signed_ledger(server.url, key_file)
        try:
            # Given a ledger with two signed checkpoints
            store = datastore_on(server.url)
            checkpoints = Checkpointer(store, key)
            season(ledger, 20, "clean")
            first = checkpoints.checkpoint()
            season(ledger, 5, "target")
            second = checkpoints.checkpoint()
            assert first is not None and second is not None and second > first
            assert checkpoints.checkpoint() is None, "nothing new: no checkpoint"
            # When it is verified as written, against the pinned key
            clean = verify(store, trusted=[key.public], stale_after=0)
            store.client.close()
        finally:
            ledger.close()
    # Then every signature, every link and both checkpoints hold
    assert clean.ok, clean.findings
    assert (clean.checkpoints, clean.last_checkpoint_seq, clean.events, clean.signed_saves) == (2, second, 100, 50)

    # When someone with the disk rewrites one payment's message id in the stream's files
    before, after = b'"msg_id":"target-p3"', b'"msg_id":"target-p9"'
    blocks = [p for p in (tmp_path / "nats").rglob("*.blk") if before in p.read_bytes()]
    assert blocks, "the message is in a block file of the store"
    for block in blocks:
        block.write_bytes(block.read_bytes().replace(before, after))
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        store = datastore_on(server.url)
        try:
            tampered = verify(store, trusted=[key.public], stale_after=0)
        finally:
            store.client.close()
    # Then verify reports it (the server may serve the changed bytes, or drop the damaged record:
    # either is caught)
    assert not tampered.ok
    text = " ".join(str(f) for f in tampered.findings)
    assert "LEDGER" in text
    assert any(word in text for word in ("was changed", "does not verify", "missing", "digest differs", "gone"))


def test_verify_catches_an_event_forged_straight_onto_an_aggregates_subject(tmp_path: Path) -> None:
    key_file = tmp_path / "signing-key.pem"
    key = SigningKey.local(key_file)
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = signed_ledger(server.url, key_file)
        try:
            store = datastore_on(server.url)
            checkpoints = Checkpointer(store, key)
            (person,) = season(ledger, 1, "forged")
            checkpoints.checkpoint()
            subject = store.aggregate_subject(f"{store.prefix}.evt", ledger.person(person).id)
            last = store.read_subject(store.stream, subject)[-1]
            # When an insider appends a version 5 whose body was edited after hashing
            body = last.data.replace(b"2022-12-31", b"2099-12-31")  # coverage "extended" to 2099
            assert body != last.data
            headers = {"Ledger-Topic": last.headers["Ledger-Topic"], "Ledger-Version": "5",
                       PREV_HASH: last.headers[HASH], HASH: event_hash(last.headers[HASH], subject, "5", last.headers["Ledger-Topic"], last.data)}  # fmt: skip
            (seq,) = store.client.append([OutgoingMessage(subject, body, headers)], frozenset({subject}))
            report = verify(store, trusted=[key.public])
            store.client.close()
        finally:
            ledger.close()
    # Then verify names that very event: unsigned, and changed after hashing
    assert not report.ok
    assert f"LEDGER {seq}: no signature covers it: not written by this ledger" in [str(f) for f in report.findings]
    assert any("v5" in str(f) and "was changed" in str(f) for f in report.findings)


def test_the_checkpoints_of_a_new_ledger_are_created_once_and_never_recreated_behind_its_back(tmp_path: Path) -> None:
    key_file = tmp_path / "signing-key.pem"
    key = SigningKey.local(key_file)
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = signed_ledger(server.url, key_file)
        store = datastore_on(server.url)
        try:
            # Given a new ledger: its checkpoint stream is created, deny delete and deny purge
            Checkpointer(store, key).checkpoint()
            config = store.client.run(store.client.api(f"$JS.API.STREAM.INFO.{store.stream}_CHECKPOINTS"))["config"]
            assert config["deny_delete"] and config["deny_purge"]
            season(ledger, 2, "recreate")
            # When the checkpoint stream is deleted (a server that allows it) and the ledger starts again
            store.client.run(store.client.api(f"$JS.API.STREAM.DELETE.{store.stream}_CHECKPOINTS"))
            restarted = Checkpointer(store, key)
            # Then it signs nothing and leaves the stream missing, for verify to report
            assert restarted.missing and restarted.checkpoint() is None
            info = store.client.run(store.client.api(f"$JS.API.STREAM.INFO.{store.stream}_CHECKPOINTS"))
            assert info["error"]["err_code"] == 10059
            report = verify(store, trusted=[key.public], stale_after=60)
        finally:
            store.client.close()
            ledger.close()
    assert [str(f) for f in report.findings if "missing" in str(f)], report.findings


def test_the_writer_never_continues_a_checkpoint_it_did_not_sign(tmp_path: Path) -> None:
    key_file = tmp_path / "signing-key.pem"
    key = SigningKey.local(key_file)
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = signed_ledger(server.url, key_file)
        store = datastore_on(server.url)
        try:
            checkpoints = Checkpointer(store, key)
            season(ledger, 2, "own")
            own = checkpoints.checkpoint()
            # Given a checkpoint someone else signed with a made-up digest, after the writer's own
            season(ledger, 1, "later")
            other = SigningKey.generate()
            body = {"v": 1, "stream": store.stream, "last_seq": own + 4, "digest": "f" * 64, "previous_seq": own,
                    "signed_at": datetime.now(CST).isoformat(), "key_id": other.key_id}  # fmt: skip
            raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            envelope = {"checkpoint": body, "signature": base64.b64encode(other.sign(raw)).decode(), "public_key": other.public_pem()}
            store.client.append([OutgoingMessage(checkpoints.subject, json.dumps(envelope).encode(), {})], frozenset({checkpoints.subject}))
            # When the writer signs its next checkpoint
            assert checkpoints.last() == (own, Checkpoint.parse(store.read_range(checkpoints.spec.name, 1, 1)[0]).body["digest"])
            latest = checkpoints.checkpoint()
            report = verify(store, trusted=[key.public], stale_after=0)
        finally:
            store.client.close()
            ledger.close()
    # Then it continued its own chain, whose checkpoints all verify; the stranger's is reported
    assert latest == own + 4 and report.checkpoints == 2 and report.last_checkpoint_seq == latest
    assert [str(f) for f in report.findings] == [
        f"checkpoint up to LEDGER {own + 4}: signed by key {other.key_id}, not a pinned key ({key.key_id})"
    ]


def test_verify_of_an_empty_ledger_is_clean(tmp_path: Path) -> None:
    key = SigningKey.generate()
    with EmbeddedNatsServer(tmp_path / "nats") as server:
        ledger = Ledger({"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url}, keyer=PersonKeyer(SECRET.encode()))
        try:
            store = datastore_on(server.url)
            Checkpointer(store, key)
            report = verify(store, trusted=[key.public], stale_after=0)
            store.client.close()
        finally:
            ledger.close()
    assert report.ok and report.events == 0 and report.messages == 0


def test_a_key_file_is_made_for_its_owner_alone_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    key = SigningKey.create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert SigningKey.load(path).key_id == key.key_id
    try:
        SigningKey.create(path)
    except FileExistsError:
        pass
    else:
        raise AssertionError("an existing key file was overwritten")
    assert SigningKey.load(path).key_id == key.key_id


def test_serve_signs_only_with_its_own_key_file_and_refuses_one_that_is_not_the_pinned_key(tmp_path: Path) -> None:
    from service.bootstrap import signing_key_file
    from service.settings import Settings

    # Given no key configured: the development key, made in DATA_DIR (as serve makes it) for its owner alone
    (tmp_path / "data").mkdir()
    made = signing_key_file(Settings.read({}, data_dir=tmp_path / "data"))
    assert made == tmp_path / "data" / "signing-key.pem" and made.stat().st_mode & 0o777 == 0o600
    # Given a configured key file that does not exist: serve stops, naming it (no key is made up)
    with pytest.raises(SystemExit, match="missing.pem"):
        signing_key_file(Settings.read({}, data_dir=tmp_path / "data", signing_key_file=tmp_path / "missing.pem"))
    assert not (tmp_path / "missing.pem").exists()
    # Given a key and a pinned public key that is another's: serve refuses to sign with it
    SigningKey.create(tmp_path / "key.pem")
    (tmp_path / "pinned.pem").write_text(SigningKey.generate().public_pem())
    with pytest.raises(SystemExit, match="is not the pinned key"):
        signing_key_file(Settings.read({}, signing_key_file=tmp_path / "key.pem", trust_key_file=tmp_path / "pinned.pem"))
    # And with its own public key pinned, it signs
    (tmp_path / "pinned.pem").write_text(SigningKey.load(tmp_path / "key.pem").public_pem())
    assert signing_key_file(Settings.read({}, signing_key_file=tmp_path / "key.pem", trust_key_file=tmp_path / "pinned.pem"))


def test_ledger_keys_generate_makes_a_key_and_public_prints_the_half_to_pin(tmp_path: Path) -> None:
    def ledger(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "NATS_"))}
        return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    made = ledger("keys", "generate", str(tmp_path / "signing.pem"))
    assert made.returncode == 0 and (tmp_path / "signing.pem").stat().st_mode & 0o777 == 0o600
    printed = ledger("keys", "public", "--signing-key-file", str(tmp_path / "signing.pem"))
    assert printed.returncode == 0 and printed.stdout == made.stdout and "PRIVATE" not in printed.stdout
    assert PublicKey.from_pem(printed.stdout).key_id == SigningKey.load(tmp_path / "signing.pem").key_id
    again = ledger("keys", "generate", str(tmp_path / "signing.pem"))
    assert again.returncode == 1 and "never overwritten" in again.stderr
