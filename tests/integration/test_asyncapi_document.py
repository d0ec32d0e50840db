"""The AsyncAPI document under docs/ is what the consumers generate: code and document agree."""

from __future__ import annotations

import json
from pathlib import Path

from contract.messages import SCHEMAS
from service.cli import asyncapi_text

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_the_committed_asyncapi_document_matches_the_code() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == asyncapi_text(), (
        "docs/asyncapi.json is out of date: run `ledger asyncapi --output docs/asyncapi.json`"
    )


def test_the_document_describes_every_upstream_message_of_the_contract() -> None:
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    text = json.dumps(document, ensure_ascii=False)
    for subject, schema in SCHEMAS.items():
        assert subject in text, f"{subject} is not described"
        assert schema.__name__ in text
    assert "upstream.>" in text
