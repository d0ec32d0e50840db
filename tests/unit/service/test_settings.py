"""The service's settings are read once, in one place: the environment, then the options."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from service.bootstrap import cipher_settings, ledger_for
from service.settings import Settings, markdown_table

DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_given_the_settings_then_the_configuration_page_lists_each_with_its_variable_and_default() -> None:
    assert markdown_table() in DOCS.read_text(encoding="utf-8"), (
        "docs/configuration.md is out of date: paste service.settings.markdown_table() into it"
    )


def test_given_a_variable_and_an_option_then_the_option_wins_and_the_rest_come_from_the_environment() -> None:
    environ = {"LEDGER_BATCH_SIZE": "50", "NATS_REPLICAS": "3", "LEDGER_LEASE_SECONDS": "2.5", "LEDGER_DATA_DIR": "/srv/ledger"}
    settings = Settings.read(environ, batch_size=80, views_url=None)
    assert (settings.batch_size, settings.replicas, settings.lease_seconds) == (80, 3, 2.5)
    assert settings.data_dir == Path("/srv/ledger") and settings.views == "sqlite:////srv/ledger/views.sqlite"


def test_given_nothing_set_then_the_defaults_embed_a_server_in_data() -> None:
    settings = Settings.read({})
    assert settings.embedded and settings.data_dir == Path("data") and settings.batch_size == 500


@pytest.mark.parametrize(
    ("variable", "value"), [("LEDGER_BATCH_SIZE", "many"), ("LEDGER_LEASE_SECONDS", "soon"), ("NATS_REPLICAS", "2")]
)
def test_given_a_malformed_value_then_serve_stops_with_one_line_naming_it(variable: str, value: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        Settings.read({variable: value})
    message = str(stopped.value)
    assert "\n" not in message and (variable in message or "replicas" in message)


def test_given_settings_read_then_they_cannot_change_under_the_running_service() -> None:
    settings = Settings.read({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 1  # type: ignore[misc]


def test_given_three_replicas_then_the_ledger_gets_them_in_its_own_environment_not_the_process(tmp_path: Path) -> None:
    before = dict(os.environ)
    settings = Settings.read({}, data_dir=tmp_path, replicas=3)
    assert settings.ledger_env()["NATS_REPLICAS"] == "3"
    assert dict(os.environ) == before


def test_given_a_cipher_key_file_then_its_key_is_used_and_an_unreadable_one_is_one_line(tmp_path: Path) -> None:
    key_file = tmp_path / "cipher.key"
    key_file.write_text("c2l4dGVlbiBieXRlcyBrZXk=\n")
    assert cipher_settings(Settings.read({"LEDGER_CIPHER_KEY": "other"}, cipher_key_file=key_file))["CIPHER_KEY"] == (
        "c2l4dGVlbiBieXRlcyBrZXk="
    )
    assert not cipher_settings(Settings.read({"LEDGER_PAYLOAD_ENCRYPTION": "off"})).get("CIPHER_KEY")
    with pytest.raises(SystemExit, match="cipher key file"):
        cipher_settings(Settings.read({}, cipher_key_file=tmp_path / "missing.key"))


def test_given_an_external_server_without_a_person_key_secret_then_the_ledger_is_not_built(tmp_path: Path) -> None:
    settings = Settings.read({"LEDGER_CIPHER_KEY": "c2l4dGVlbiBieXRlcyBrZXk="}, data_dir=tmp_path, nats_url="nats://127.0.0.1:1")
    with pytest.raises(SystemExit, match="LEDGER_PERSON_KEY_SECRET"):
        ledger_for(settings, "nats://127.0.0.1:1")
