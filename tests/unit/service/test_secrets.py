"""Secrets the service keeps: created 0600 from the first byte, refused when others can read them,
and payload encryption on by default — a key of the data directory's own for the embedded setup,
a key or an explicit ``LEDGER_PAYLOAD_ENCRYPTION=off`` for an external server."""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import secret_files, urls
from ledger.secret_files import SecretFileExposed, create_secret_file, local_secret_file, read_secret_file
from service.bootstrap import (
    CIPHER_KEY_FILE,
    _redacted,
    cipher_settings,
    embedded_secrets,
    person_key_secret,
    private_data_dir,
    without_credentials,
)
from service.settings import Settings

KEY = base64.b64encode(b"k" * 32).decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The loosest umask there is: a file's mode is then exactly what it was created with."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


# ---- secret files ---------------------------------------------------------------------------------


def test_given_any_umask_when_a_secret_file_is_created_then_it_is_0600_from_its_first_byte(
    tmp_path: Path, loose_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    fdopen = os.fdopen

    def watching(fd: int, *args: Any, **kwargs: Any) -> Any:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))  # the file as it is before a byte is written
        return fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(secret_files.os, "fdopen", watching)
    path = tmp_path / "person-key.secret"
    assert create_secret_file(path, "s3cret\n")
    assert seen == [0o600] and mode(path) == 0o600 and path.read_text() == "s3cret\n"
    assert [p.name for p in tmp_path.iterdir()] == ["person-key.secret"], "no temporary file left behind"


def test_given_a_secret_file_exists_when_another_is_created_then_the_first_stays(tmp_path: Path) -> None:
    path = tmp_path / "cipher.key"
    assert create_secret_file(path, "first")
    assert not create_secret_file(path, "second")
    assert path.read_text() == "first" and len(list(tmp_path.iterdir())) == 1


def test_given_a_secret_the_service_keeps_readable_by_others_then_it_is_refused_with_the_remedy(tmp_path: Path) -> None:
    path = tmp_path / "person-key.secret"
    local_secret_file(path, lambda: "a" * 64)
    path.chmod(0o644)
    with pytest.raises(SecretFileExposed) as refused:
        local_secret_file(path, lambda: "b" * 64)
    assert f"chmod 600 {path}" in str(refused.value) and "0644" in str(refused.value) and "\n" not in str(refused.value)
    path.chmod(0o600)
    assert local_secret_file(path, lambda: "b" * 64) == "a" * 64


def test_given_an_embedded_data_directory_with_a_loose_person_key_secret_then_the_ledger_refuses_it(tmp_path: Path) -> None:
    settings = Settings.read({}, data_dir=tmp_path)
    secret = person_key_secret(settings)
    assert mode(tmp_path / "person-key.secret") == 0o600
    (tmp_path / "person-key.secret").chmod(0o640)
    with pytest.raises(SecretFileExposed, match="person-key secret"):
        person_key_secret(settings)
    (tmp_path / "person-key.secret").chmod(0o600)
    assert person_key_secret(settings) == secret


def test_given_an_operators_key_file_readable_by_others_then_it_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """How a platform mounts a secret (a container's 0444 secret file) is not the service's to refuse."""
    key_file = tmp_path / "cipher.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ledger"):
        env = cipher_settings(Settings.read({}, cipher_key_file=key_file, nats_url="nats://127.0.0.1:1"))
    assert env["CIPHER_KEY"] == KEY
    assert any("event=secret_file_mode" in r.getMessage() and "0644" in r.getMessage() for r in caplog.records)


def test_given_an_empty_secret_file_then_it_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cipher.key").write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        read_secret_file(tmp_path / "cipher.key", own=False)


# ---- payload encryption by default -----------------------------------------------------------------


def test_given_the_embedded_setup_and_no_key_then_payloads_are_encrypted_with_a_key_generated_in_the_data_directory(
    tmp_path: Path,
) -> None:
    settings = Settings.read({}, data_dir=tmp_path)
    assert settings.payload_encryption == "on"
    env = cipher_settings(settings)
    key_file = tmp_path / CIPHER_KEY_FILE
    assert env == {"CIPHER_TOPIC": "eventsourcing.cipher:AESCipher", "CIPHER_KEY": key_file.read_text().strip()}
    assert len(base64.b64decode(env["CIPHER_KEY"])) == 32 and mode(key_file) == 0o600
    assert cipher_settings(settings) == env, "the same key the next time"


@pytest.mark.parametrize("url", ["nats://ledger:pw@10.0.0.1:4222", "nats://10.0.0.1:4222"])
def test_given_an_external_server_without_a_key_then_serve_is_refused_with_one_line_naming_both_ways_out(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        cipher_settings(Settings.read({}, data_dir=tmp_path, nats_url=url))
    line = str(refused.value)
    assert "\n" not in line and "LEDGER_CIPHER_KEY_FILE" in line and "LEDGER_PAYLOAD_ENCRYPTION=off" in line
    assert not (tmp_path / CIPHER_KEY_FILE).exists(), "no key is made up for someone else's server"


def test_given_an_external_server_and_encryption_explicitly_off_then_payloads_are_stored_in_clear(tmp_path: Path) -> None:
    settings = Settings.read({"LEDGER_PAYLOAD_ENCRYPTION": "off"}, data_dir=tmp_path, nats_url="nats://10.0.0.1:4222")
    assert cipher_settings(settings) == {"CIPHER_TOPIC": "", "CIPHER_KEY": ""}
    assert cipher_settings(Settings.read({}, data_dir=tmp_path, payload_encryption="off")) == {"CIPHER_TOPIC": "", "CIPHER_KEY": ""}
    assert not (tmp_path / CIPHER_KEY_FILE).exists()


def test_given_an_external_server_and_a_key_then_that_key_encrypts(tmp_path: Path) -> None:
    settings = Settings.read({"LEDGER_CIPHER_KEY": KEY}, data_dir=tmp_path, nats_url="nats://10.0.0.1:4222")
    assert cipher_settings(settings)["CIPHER_KEY"] == KEY


def test_given_encryption_off_and_a_key_then_the_contradiction_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="LEDGER_PAYLOAD_ENCRYPTION=off, yet a payload key"):
        cipher_settings(Settings.read({"LEDGER_PAYLOAD_ENCRYPTION": "off", "LEDGER_CIPHER_KEY": KEY}, data_dir=tmp_path))


def test_given_a_malformed_encryption_setting_then_it_is_one_line() -> None:
    with pytest.raises(SystemExit, match="LEDGER_PAYLOAD_ENCRYPTION must be on or off, not 'maybe'"):
        Settings.read({"LEDGER_PAYLOAD_ENCRYPTION": "maybe"})


def test_given_the_demo_then_serve_gets_the_data_directorys_secrets_and_the_off_switch_is_honoured(tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    on = embedded_secrets(Settings.read({}, data_dir=tmp_path / "on"))
    assert on["LEDGER_CIPHER_KEY_FILE"] == str((tmp_path / "on" / CIPHER_KEY_FILE).resolve())
    assert mode(tmp_path / "on" / CIPHER_KEY_FILE) == 0o600 and mode(tmp_path / "on" / "person-key.secret") == 0o600
    assert on["LEDGER_SIGNING_KEY_FILE"] == str((tmp_path / "on" / "signing-key.pem").resolve())
    assert mode(tmp_path / "on" / "signing-key.pem") == 0o600  # serve, pointed at the demo's server, requires one
    (tmp_path / "off").mkdir()
    off = embedded_secrets(Settings.read({"LEDGER_PAYLOAD_ENCRYPTION": "off"}, data_dir=tmp_path / "off"))
    assert set(off) == {"LEDGER_PERSON_KEY_SECRET", "LEDGER_SIGNING_KEY_FILE"} and not (tmp_path / "off" / CIPHER_KEY_FILE).exists()


# ---- serve.url -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bare", "shown"),
    [
        ("nats://ledger:s3cret@10.0.0.1:4222", "nats://10.0.0.1:4222", "nats://ledger:***@10.0.0.1:4222"),
        ("nats://t0ken@10.0.0.1:4222", "nats://10.0.0.1:4222", "nats://***@10.0.0.1:4222"),
        (
            "nats://ledger:s3cret@10.0.0.1:4222,nats://ledger:s3cret@10.0.0.2:4222",
            "nats://10.0.0.1:4222,nats://10.0.0.2:4222",
            "nats://ledger:***@10.0.0.1:4222,nats://ledger:***@10.0.0.2:4222",
        ),
        ("tls://ledger:p%40ss@[::1]:4222", "tls://[::1]:4222", "tls://ledger:***@[::1]:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("tls://S3CRETTOKEN@10.0.0.1:4222,tls://S3CRETTOKEN@10.0.0.2:4222", "tls://10.0.0.1:4222,tls://10.0.0.2:4222",
         "tls://***@10.0.0.1:4222,tls://***@10.0.0.2:4222"),
        ("S3CRETTOKEN@10.0.0.1:4222", "10.0.0.1:4222", "***@10.0.0.1:4222"),  # no scheme: nats-py takes it
        # Mistyped (an unescaped / or @ in the password): whatever stands before the last @ is hidden
        ("nats://ledger:pa/ss@10.0.0.1:4222", "nats://10.0.0.1:4222", "nats://ledger:***@10.0.0.1:4222"),
        ("nats://ledger:p@ss@10.0.0.1:4222", "nats://10.0.0.1:4222", "nats://ledger:***@10.0.0.1:4222"),
        ("postgresql://ledger:s3cret@db:5432/ledger?schema=views", "postgresql://db:5432/ledger?schema=views",
         "postgresql://ledger:***@db:5432/ledger?schema=views"),
    ],
)
@pytest.mark.parametrize("redact", [_redacted, urls.redacted], ids=["bootstrap", "ledger.urls"])
def test_given_a_url_with_credentials_then_serve_url_holds_none_and_logs_show_none(
    url: str, bare: str, shown: str, redact: Any
) -> None:
    """Every place that shows a URL (serve's log, the commands' errors, the connections' messages)
    hides a password or a token the same way; serve.url holds neither."""
    assert without_credentials(url) == bare
    assert redact(url) == shown
    assert "s3cret" not in redact(url) and "S3CRETTOKEN" not in redact(url) and "ss@" not in redact(url)


# ---- DATA_DIR ----------------------------------------------------------------------------------------


def test_given_an_open_data_directory_that_serve_may_not_change_then_it_is_refused_with_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)

    def not_the_owner(self: Path, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "chmod", not_the_owner)
    with pytest.raises(SystemExit, match=rf"data directory {data} is open to others \(mode 0755\).*`chmod -R go-rwx {data}`"):
        private_data_dir(data)


def test_given_a_private_data_directory_then_nothing_is_changed_or_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "views.sqlite").touch(mode=0o600)
    with caplog.at_level(logging.WARNING, logger="ledger"):
        private_data_dir(data)
    assert mode(data) == 0o700 and caplog.records == []


def test_given_serve_restarted_on_its_own_data_directory_then_nothing_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a 0700 DATA_DIR holding the files serve wrote at umask 022 (views.sqlite, serve.url: 0644)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "views.sqlite").touch(mode=0o644)
    (data / "views.sqlite").chmod(0o644)
    # Then a restart changes nothing and warns of nothing: nobody else can reach them
    with caplog.at_level(logging.WARNING, logger="ledger"):
        private_data_dir(data)
    assert mode(data) == 0o700 and mode(data / "views.sqlite") == 0o644 and caplog.records == []
