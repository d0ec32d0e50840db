"""The AsyncAPI 3 document (``docs/asyncapi.json``) is generated from the code, accepted by the
official parser (``@asyncapi/parser``), and describes every channel of the contract.

Real messages are validated against it in ``test_asyncapi_messages.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from consumers.ingest import UNPROCESSABLE
from contract.asyncapi import REJECTION_REASONS, asyncapi_document
from contract.messages import SCHEMAS
from contract.subjects import CHANGED_PREFIX, COVERAGE_BUCKET, COVERAGE_QUERY, REJECTED_PREFIX
from ledger.domain.refusals import Refusal
from service.cli import asyncapi_text, main
from tests.integration.asyncapi_support import DOCUMENT, official_parser


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return json.loads(DOCUMENT.read_text(encoding="utf-8"))


def test_given_the_code_when_the_document_is_generated_then_it_is_the_committed_one() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == asyncapi_text(), (
        "docs/asyncapi.json is out of date: run `ledger asyncapi --output docs/asyncapi.json`"
    )


def test_given_ledger_asyncapi_output_when_run_then_it_writes_the_document(tmp_path: Path) -> None:
    written = tmp_path / "out" / "asyncapi.json"
    assert main(["asyncapi", "--output", str(written)]) == 0
    assert json.loads(written.read_text(encoding="utf-8")) == asyncapi_document()


def test_given_the_committed_document_when_the_official_parser_reads_it_then_it_is_valid_asyncapi_3() -> None:
    run = official_parser(DOCUMENT)
    assert run.returncode == 0, f"@asyncapi/parser refuses docs/asyncapi.json:\n{run.stdout}\n{run.stderr}"
    assert "valid AsyncAPI 3.0.0" in run.stdout


def _broken_ref(document: dict[str, Any]) -> None:
    document["components"]["messages"]["PaymentReceived"]["payload"] = {"$ref": "#/components/schemas/NoSuchSchema"}


def _wrong_payload_type(document: dict[str, Any]) -> None:
    document["components"]["schemas"]["PaymentReceived"]["type"] = "record"


def _message_of_another_channel(document: dict[str, Any]) -> None:
    document["operations"]["receivePaymentReceived"]["messages"] = [{"$ref": "#/channels/coverageQuery/messages/CoverageRequest"}]


@pytest.mark.parametrize(
    ("breakage", "diagnostic"),
    [
        (_broken_ref, "NoSuchSchema"),
        (_wrong_payload_type, "/components/schemas/PaymentReceived"),
        (_message_of_another_channel, "/operations/receivePaymentReceived/messages"),
    ],
)
def test_given_a_broken_copy_of_the_document_when_the_official_parser_reads_it_then_it_refuses_it(
    tmp_path: Path, document: dict[str, Any], breakage: Any, diagnostic: str
) -> None:
    broken = copy.deepcopy(document)
    breakage(broken)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken), encoding="utf-8")

    run = official_parser(path)

    assert run.returncode != 0, f"the parser accepted a broken document:\n{run.stdout}"
    assert "error:" in run.stderr and diagnostic in run.stderr, run.stderr


def test_given_the_document_then_every_upstream_subject_has_its_channel_received_by_the_ledger(document: dict[str, Any]) -> None:
    by_address = {channel["address"]: channel_id for channel_id, channel in document["channels"].items()}
    receiving = {op["channel"]["$ref"].rsplit("/", 1)[1]: op for op in document["operations"].values() if op["action"] == "receive"}
    for subject, schema in SCHEMAS.items():
        channel_id = by_address.get(subject)
        assert channel_id is not None, f"{subject} has no channel"
        (message,) = document["channels"][channel_id]["messages"].values()
        payload = document["components"]["messages"][message["$ref"].rsplit("/", 1)[1]]["payload"]
        assert payload == {"$ref": f"#/components/schemas/{schema.__name__}"}
        assert document["components"]["schemas"][schema.__name__]["type"] == "object", "a message body is an object"
        assert channel_id in receiving, f"the ledger does not receive {subject}"
    assert "upstream.>" not in by_address, "one channel per subject, not a wildcard"


def test_given_the_document_then_coverage_query_is_received_and_replied_to(document: dict[str, Any]) -> None:
    (operation,) = [op for op in document["operations"].values() if op["channel"]["$ref"] == "#/channels/coverageQuery"]
    assert document["channels"]["coverageQuery"]["address"] == COVERAGE_QUERY
    assert operation["action"] == "receive"
    replies = {ref["$ref"].rsplit("/", 1)[1] for ref in operation["reply"]["messages"]}
    assert replies == {"CoverageReply", "CoverageQueryError"}
    reply = document["components"]["schemas"]["CoverageReply"]
    assert "ledger_seq" in reply["required"] and reply["properties"]["ledger_seq"]["type"] == "integer"


def test_given_the_document_then_the_ledger_sends_coverage_changes_kv_values_and_rejections(document: dict[str, Any]) -> None:
    sent = {document["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"] for op in document["operations"].values() if op["action"] == "send"}
    assert sent == {f"{CHANGED_PREFIX}.{{district}}", f"$KV.{COVERAGE_BUCKET}.{{person_key}}", f"{REJECTED_PREFIX}.{{reason}}.{{sender}}"}


def _reasons(cls: type[Refusal]) -> set[str]:
    return {sub.reason for sub in cls.__subclasses__()} | {r for sub in cls.__subclasses__() for r in _reasons(sub)}


def test_given_the_code_then_the_rejection_reasons_of_the_document_are_every_reason_the_ledger_gives(document: dict[str, Any]) -> None:
    assert set(REJECTION_REASONS) == _reasons(Refusal) | {UNPROCESSABLE}
    assert document["channels"]["ledgerRejected"]["parameters"]["reason"]["enum"] == list(REJECTION_REASONS)
    assert document["components"]["schemas"]["Rejection"]["properties"]["reason"]["enum"] == list(REJECTION_REASONS)
