"""Secrets on a real nats-server: no file the service writes holds a credential, the secrets it
keeps are 0600, and payload encryption is on unless refused in so many words.

- A nats-server that asks for a user and password (``authorization`` in its configuration), and
  ``ledger serve --nats-url nats://ledger:<password>@…``: ``DATA_DIR/serve.url`` names the server
  without the credentials, no file under DATA_DIR holds the password, and the one-off commands
  (``status``, ``coverage``, ``replay``) work given the credentials in their own
  environment (``NATS_URL``) — and say what is missing without them.
- The embedded setup (``ledger serve --data-dir D``, nothing configured): D is 0700, the
  person-key secret and the payload key it generates are 0600, LEDGER's events are encrypted
  (``tests/trust/test_personal_data.py`` searches a whole season's messages for personal data).
- An external server without a payload key is refused at once, in one line; a ledger written in
  clear is not silently given a new key.
- An external server without a signing key file is refused in one line (a standby would
  otherwise make a key of its own); a signing key file others can read is refused; the deploy
  templates hand serve its signing key and pinned public key (systemd credentials, compose secrets).
- A data directory an earlier version left open (0755, its views 0644) is closed when serve
  starts; a token in ``NATS_URL`` is shown as ``***``, like a password.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from ledger.jetstream.server import EmbeddedNatsServer
from ledger.jetstream.signing import SigningKey
from tests.integration.ingest_support import ROOT, SECRET, ingestion_finished, publish_all, season, wait_for

PASSWORD = "pw-" + secrets.token_hex(12)
PAID = season(4, "secrets")
"""Two people enrolled and paid (every 10th pays the wrong amount: the first is rejected)."""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a command run here: nothing of the caller's ledger settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "NATS_"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def ledger(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_serve(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "service.cli", "serve", *args], cwd=ROOT, env=env, stdout=out, stderr=out)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# ---- a server with a password ----------------------------------------------------------------------


@dataclass
class Guarded:
    server: EmbeddedNatsServer
    data_dir: Path
    key_file: Path
    log: Path

    @property
    def address(self) -> str:
        return self.server.url

    @property
    def with_password(self) -> str:
        return self.server.url.replace("nats://", f"nats://ledger:{PASSWORD}@")

    def env(self, *, credentials: bool) -> dict[str, str]:
        """A one-off command's environment: the secrets, and the credentials or not."""
        env = clean_env(LEDGER_PERSON_KEY_SECRET=SECRET, LEDGER_CIPHER_KEY_FILE=str(self.key_file))
        return {**env, "NATS_URL": self.with_password} if credentials else env


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """A nats-server asking for user ``ledger`` and its password, and ``ledger serve`` on it (the
    password in its --nats-url, the payload key in a file outside DATA_DIR), with a few people."""
    directory = tmp_path_factory.mktemp("guarded")
    server = EmbeddedNatsServer(
        directory / "nats", extra_config=f'authorization {{ user: ledger, password: "{PASSWORD}" }}'
    ).start()
    key_file = directory / "cipher.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key_file.chmod(0o600)
    SigningKey.create(directory / "signing-key.pem")  # outside DATA_DIR, as an operator keeps it
    run = Guarded(server, directory / "data", key_file, directory / "serve.log")
    env = clean_env(LEDGER_PERSON_KEY_SECRET=SECRET, LEDGER_CIPHER_KEY_FILE=str(key_file),
                    LEDGER_SIGNING_KEY_FILE=str(directory / "signing-key.pem"))  # fmt: skip
    serve = start_serve(["--nats-url", run.with_password, "--data-dir", str(run.data_dir)], env, run.log)
    try:
        wait_for(lambda: (run.data_dir / "serve.url").exists() or serve.poll() is not None, 60, "ledger serve")
        assert serve.poll() is None, run.log.read_text()[-3000:]
        asyncio.run(publish_all(run.with_password, PAID))
        wait_for(lambda: ingestion_finished(run.with_password, len(PAID)), 60, "the ingestion")
        yield run
    finally:
        assert stop(serve) == 0, run.log.read_text()[-3000:]
        server.stop()


def test_serve_url_names_the_server_without_its_credentials(guarded: Guarded) -> None:
    # Given serve started with nats://ledger:<password>@… (above)
    # Then serve.url holds the server's address, and no file serve writes holds the password
    assert (guarded.data_dir / "serve.url").read_text() == guarded.address
    files = [p for p in guarded.data_dir.rglob("*") if p.is_file()]
    assert len(files) >= 3, files  # serve.url, serve.lock, the views (the keys are outside)
    assert [p.name for p in files if PASSWORD.encode() in p.read_bytes()] == []
    # And its log shows the user, never the password; and the payload key's file, never the key
    log = guarded.log.read_text()
    assert "nats://ledger:***@" in log and PASSWORD not in log
    assert f"event=payload_encryption state=on key={guarded.key_file}" in log
    assert guarded.key_file.read_text().strip() not in log


def test_commands_that_find_the_server_by_serve_url_bring_their_own_credentials(guarded: Guarded) -> None:
    d = ("--data-dir", str(guarded.data_dir))
    # Given no credentials of its own, a command that finds the server by serve.url says what is missing
    refused = ledger("status", *d, env=guarded.env(credentials=False))
    assert refused.returncode == 1 and "Authorization Violation" in refused.stderr, refused.stderr
    assert "give them with NATS_URL" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # Given the credentials in its environment, every command works
    status = ledger("status", *d, "--format", "json", env=guarded.env(credentials=True))
    # (status exits 1 when it has a warning to give: a policy table missing for this year)
    assert json.loads(status.stdout)["ingestion"]["behind"] == 0, status.stderr[-2000:]
    paid = PAID[2][1]["id_number"]  # the second person: enrolled and paid the right amount
    coverage = ledger("coverage", paid, "--date", "2022-06-01", *d, "--format", "json", env=guarded.env(credentials=True))
    assert coverage.returncode == 0, coverage.stderr[-2000:]
    assert json.loads(coverage.stdout)["status"] == "enrolled"
    replay = ledger("replay", *d, "--views", f"sqlite:///{guarded.data_dir.parent / 'replay.sqlite'}", "--format", "json",
                    env=guarded.env(credentials=True))  # fmt: skip
    assert replay.returncode == 0 and json.loads(replay.stdout)["ledger_events"] >= 3, replay.stderr[-2000:]
    for result in (status, coverage, replay):
        assert PASSWORD not in result.stdout + result.stderr


def test_a_token_in_nats_url_is_never_shown(tmp_path: Path) -> None:
    # Given a nats-server that asks for a token, and a command given a wrong one, then a right one
    token = "tok-" + secrets.token_hex(12)
    wrong = "tok-" + secrets.token_hex(12)
    with EmbeddedNatsServer(tmp_path / "nats", extra_config=f'authorization {{ token: "{token}" }}') as server:
        address = server.url.removeprefix("nats://")
        # When `ledger status` is refused with the wrong token
        refused = ledger("status", "--data-dir", str(tmp_path / "data"), env=clean_env(NATS_URL=f"nats://{wrong}@{address}"))
        # Then it says why and where, the token hidden
        assert refused.returncode == 1 and "Authorization Violation" in refused.stderr, refused.stderr
        assert f"nats://***@{address}" in refused.stderr and wrong not in refused.stdout + refused.stderr
        # And given the right token it reads the server, and shows the token nowhere either
        status = ledger("status", "--data-dir", str(tmp_path / "data"), env=clean_env(NATS_URL=f"nats://{token}@{address}"))
        assert "cannot" not in status.stderr and token not in status.stdout + status.stderr, status.stderr[-2000:]


# ---- the embedded setup ----------------------------------------------------------------------------


def test_the_embedded_setup_keeps_its_secrets_0600_and_encrypts_by_default(tmp_path: Path) -> None:
    # Given nothing configured but a data directory
    data = tmp_path / "data"
    serve = start_serve(["--data-dir", str(data)], clean_env(), tmp_path / "serve.log")
    try:
        url = _paid_season_ingested(serve, data, tmp_path / "serve.log")
        events = asyncio.run(_event_bodies(url))
    finally:
        assert stop(serve) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    # Then the directory is its owner's, and the secrets serve generated in it are 0600
    assert mode(data) == 0o700
    for secret in ("person-key.secret", "cipher.key"):
        assert mode(data / secret) == 0o600, secret
    assert len(base64.b64decode((data / "cipher.key").read_text())) == 32
    assert f"event=payload_encryption state=on key={data / 'cipher.key'}" in (tmp_path / "serve.log").read_text()
    # And the ledger's events are sealed with that key: not JSON, no field name in sight
    assert len(events) >= 3
    for body in events:
        assert b'"' not in body[:1] and b"id_number" not in body and b"coverage_year" not in body
        with pytest.raises(ValueError):
            json.loads(body)
    # And the commands read them with the data directory's key
    paid = PAID[2][1]["id_number"]
    coverage = ledger("coverage", paid, "--date", "2022-06-01", "--data-dir", str(data), "--format", "json", env=clean_env())
    assert coverage.returncode == 0 and json.loads(coverage.stdout)["status"] == "enrolled", coverage.stderr[-2000:]


def test_a_data_directory_of_an_earlier_version_is_made_its_owners_alone(tmp_path: Path) -> None:
    # Given a data directory an earlier version left open (0755), its views database 0644 in it
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "views.sqlite").close()
    (data / "views.sqlite").chmod(0o644)
    data.chmod(0o755)
    # When serve starts on it
    serve = start_serve(["--data-dir", str(data)], clean_env(), tmp_path / "serve.log")
    try:
        wait_for(lambda: (data / "serve.url").exists() or serve.poll() is not None, 60, "ledger serve")
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        assert stop(serve) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    # Then the directory is 0700 and the files others could read in it are 0600, said in the log
    assert mode(data) == 0o700 and mode(data / "views.sqlite") == 0o600
    log = (tmp_path / "serve.log").read_text()
    assert f"event=data_dir_mode dir={data} was=0755 now=0700" in log and "views.sqlite" in log, log[-3000:]


async def _event_bodies(url: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        count = (await js.stream_info("LEDGER")).state.messages
        sub = await js.subscribe("", stream="LEDGER", ordered_consumer=True)
        messages = [await sub.next_msg(timeout=10) for _ in range(count)]
        return [m.data for m in messages if m.subject.startswith("ledger.evt.")]
    finally:
        await nc.close()


def test_an_external_server_without_a_payload_key_is_refused_in_one_line(tmp_path: Path) -> None:
    refused = ledger(
        "serve", "--nats-url", "nats://ledger:pw@127.0.0.1:1", "--data-dir", str(tmp_path),
        env=clean_env(LEDGER_PERSON_KEY_SECRET=SECRET),
    )  # fmt: skip
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "payload encryption is required" in refused.stderr and "LEDGER_PAYLOAD_ENCRYPTION=off" in refused.stderr
    assert not (tmp_path / "cipher.key").exists()


def test_an_external_server_without_a_signing_key_is_refused_in_one_line(tmp_path: Path) -> None:
    # Given an external server, the payload key, and no signing key
    data = tmp_path / "data"
    refused = ledger(
        "serve", "--nats-url", "nats://ledger:pw@127.0.0.1:1", "--data-dir", str(data),
        env=clean_env(LEDGER_PERSON_KEY_SECRET=SECRET, LEDGER_CIPHER_KEY=base64.b64encode(os.urandom(32)).decode()),
    )  # fmt: skip
    # Then serve refuses at once, in one line, and makes no key of its own (a standby on another
    # host would make another: the ledger's history signed by two keys, verify failing after a failover)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "a signing key is required with an external NATS server" in refused.stderr and "LEDGER_SIGNING_KEY_FILE" in refused.stderr
    assert not data.exists()


def test_a_signing_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    # Given the operator's signing key file, readable by others (0644)
    key = tmp_path / "signing-key.pem"
    SigningKey.create(key)
    key.chmod(0o644)
    env = clean_env(LEDGER_PERSON_KEY_SECRET=SECRET, LEDGER_CIPHER_KEY=base64.b64encode(os.urandom(32)).decode(),
                    LEDGER_SIGNING_KEY_FILE=str(key))  # fmt: skip
    # When serve starts with it
    refused = ledger("serve", "--nats-url", "nats://ledger:pw@127.0.0.1:1", "--data-dir", str(tmp_path / "data"), env=env)
    # Then it is refused in one line saying how to put it right
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"signing key file {key} is readable by others (mode 0644): `chmod 600 {key}`" in refused.stderr
    # And as systemd hands a credential over (0400, the service's user's), it is taken
    key.chmod(0o400)
    assert SigningKey.load(key).key_id


def test_the_deploy_templates_give_every_serve_the_signing_key() -> None:
    """Given deploy/ (systemd unit and environment, compose), then serve gets LEDGER_SIGNING_KEY_FILE
    and LEDGER_TRUST_KEY_FILE from files only it can read: systemd credentials (a root-owned 0600
    file in /etc/ledger is unreadable to User=ledger), compose secrets."""
    deploy = ROOT / "deploy"
    unit = (deploy / "systemd" / "ledger.service").read_text()
    assert "LoadCredential=signing-key.pem:/etc/ledger/signing-key.pem" in unit, unit
    assert "Environment=LEDGER_SIGNING_KEY_FILE=%d/signing-key.pem" in unit, unit
    assert "LoadCredential=ledger-public-key.pem:/etc/ledger/ledger-public-key.pem" in unit, unit
    assert "Environment=LEDGER_TRUST_KEY_FILE=%d/ledger-public-key.pem" in unit, unit
    env_example = (deploy / "systemd" / "ledger.env.example").read_text()
    assert "LEDGER_SIGNING_KEY_FILE" in env_example and "same" in env_example
    compose = (deploy / "compose.yaml").read_text()
    assert "LEDGER_SIGNING_KEY_FILE: /run/secrets/signing_key" in compose and "LEDGER_TRUST_KEY_FILE: /run/secrets/ledger_public_key" in compose
    assert re.search(r"(?m)^  signing_key:\n    file: .*/signing-key\.pem$", compose), compose


def test_a_ledger_written_in_clear_is_not_given_a_new_key(tmp_path: Path) -> None:
    # Given an embedded ledger written with encryption refused explicitly
    data = tmp_path / "data"
    serve = start_serve(["--data-dir", str(data), "--payload-encryption", "off"], clean_env(), tmp_path / "serve.log")
    try:
        _paid_season_ingested(serve, data, tmp_path / "serve.log")
    finally:
        assert stop(serve) == 0
    assert not (data / "cipher.key").exists()
    assert "event=payload_encryption state=off" in (tmp_path / "serve.log").read_text()
    # When it is served again with the default (encryption on)
    again = ledger("serve", "--data-dir", str(data), env=clean_env())
    # Then it is refused in one line, and no key is left behind to mix with the clear events
    assert again.returncode == 1, again.stdout + again.stderr
    assert "no payload key for this ledger" in again.stderr and "LEDGER_PAYLOAD_ENCRYPTION=off" in again.stderr
    assert not (data / "cipher.key").exists()
    # And with the choice repeated, the ledger reads as before
    paid = PAID[2][1]["id_number"]
    coverage = ledger("coverage", paid, "--date", "2022-06-01", "--data-dir", str(data), "--format", "json",
                      env=clean_env(LEDGER_PAYLOAD_ENCRYPTION="off"))  # fmt: skip
    assert coverage.returncode == 0 and json.loads(coverage.stdout)["status"] == "enrolled", coverage.stderr[-2000:]


def _paid_season_ingested(serve: subprocess.Popen[bytes], data: Path, log: Path) -> str:
    """Once ``serve`` (on ``data``'s embedded server) is up: PAID published and ingested; the URL."""
    wait_for(lambda: (data / "serve.url").exists() or serve.poll() is not None, 60, "ledger serve")
    assert serve.poll() is None, log.read_text()[-3000:]
    url = (data / "serve.url").read_text()
    asyncio.run(publish_all(url, PAID))
    wait_for(lambda: ingestion_finished(url, len(PAID)), 60, "the ingestion")
    return url
