"""The AsyncAPI 3.0.0 document of the contract (``docs/asyncapi.json``), generated from the code.

Every channel the ledger receives on or sends to, with the payload schema msgspec derives from
the very types that decode or build the message, so the document cannot describe anything the
code does not do (``tests/integration/test_asyncapi_document.py`` keeps the committed file equal
to this, has the official parser check it, and validates real messages against it):

- ``upstream.<fact>`` (stream UPSTREAM), one channel per subject of ``contract.messages.SCHEMAS``:
  the ledger receives;
- ``coverage.query``: the ledger receives a ``CoverageRequest`` and replies (AsyncAPI 3 ``reply``)
  with a ``CoverageReply`` or a ``CoverageQueryError`` (``{error, detail}``);
- ``coverage.changed.{district}`` (stream COVERAGE, ``CoverageChanged``) and
  ``$KV.coverage.{person_key}`` (the KV bucket ``coverage``, ``CoverageValue``): the ledger sends
  each change of what a person shows downstream;
- ``ledger.rejected.{reason}.{sender}`` (stream REJECTED): the ledger sends each rejection.

Names of subjects, streams, buckets and headers come from ``contract.subjects``.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from contract.coverage import CoverageChanged, CoverageReply, CoverageRequest, CoverageValue
from contract.messages import SCHEMAS
from contract.rejection import Rejection
from contract.subjects import (
    COVERAGE_BUCKET,
    COVERAGE_QUERY,
    COVERAGE_QUERY_GROUP,
    COVERAGE_STREAM,
    LEDGER_SEQ_HEADER,
    LEDGER_SOURCE_HEADER,
    REJECTED_PREFIX,
    REJECTED_STREAM,
    UPSTREAM_SENDERS,
    UPSTREAM_STREAM,
    changed_subject,
)
from ledger.domain.coverage_question import NOT_ENROLLED
from ledger.domain.person import AWAITING_PAYMENT, ENDED, ENROLLED
from ledger.domain.refusals import REASONS, MsgIdConflict

VERSION = "1.0.0"
"""The contract's version (``info.version``)."""

UNPROCESSABLE = "unprocessable"
"""The reason of a rejected message whose body could not be read at all (``consumers.ingest``
gives it; a test checks the two agree)."""
REJECTION_REASONS: tuple[str, ...] = (*REASONS, MsgIdConflict.reason, UNPROCESSABLE)
"""Every ``reason`` a rejection can carry: the policy's refusals, ``msg_id_conflict`` and
``unprocessable``."""

STATUSES = (NOT_ENROLLED, AWAITING_PAYMENT, ENROLLED, ENDED)
"""The coverage reply's ``status``."""
ENROLLMENT_STATUSES = (AWAITING_PAYMENT, ENROLLED, ENDED)
"""An enrollment's ``status`` in the KV value."""

UPSTREAM_SEQ_HEADER = "Ledger-Upstream-Seq"
"""The header of a rejection naming its UPSTREAM sequence (set by ``consumers.ingest``)."""

_SCHEMAS = "#/components/schemas/"
_MESSAGES = "#/components/messages/"
_DIGITS = "^[0-9]+$"


# ---- shapes the ledger builds without a Struct of their own -----------------------------------


class CoverageQueryError(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to a request the ledger cannot answer: ``malformed`` (not the request's JSON),
    ``invalid_id_number``, or ``unavailable`` (the ledger could not answer now; ask again)."""

    error: str
    detail: str


# ---- the document -----------------------------------------------------------------------------


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the contract (a JSON-ready dict)."""
    upstream = list(SCHEMAS.items())
    _, schemas = msgspec.json.schema_components(
        [
            *(schema for _, schema in upstream),
            CoverageRequest, CoverageReply, CoverageQueryError, CoverageChanged, CoverageValue, Rejection,
        ],
        ref_template=_SCHEMAS + "{name}",
    )  # fmt: skip
    _restrict(schemas["CoverageReply"], "status", enum=list(STATUSES))
    # as_of echoes the request's, a time with its offset (msgspec's schema of a datetime allows none)
    _restrict(schemas["CoverageReply"], "as_of", anyOf=[{"type": "string", "format": "date-time"}, {"type": "null"}])
    _restrict(schemas["CoverageChanged"], "status", enum=list(STATUSES))
    _restrict(schemas["CoverageYear"], "status", enum=list(ENROLLMENT_STATUSES))
    _restrict(schemas["CoverageValue"], "coverage", propertyNames={"pattern": "^[0-9]{4}$"})  # the year, "2022"
    _restrict(schemas["Rejection"], "reason", enum=list(REJECTION_REASONS))
    _restrict(schemas["Rejection"], "payload", contentEncoding="base64")
    schemas.update(_HEADERS)

    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    for subject, schema in upstream:
        name = schema.__name__
        messages[name] = _message(
            name, schema, headers="UpstreamHeaders",
            summary=f"{subject}, sent by {_senders(schema.__doc__)}",
        )  # fmt: skip
        channel = _identifier(subject)
        channels[channel] = {
            "address": subject,
            "title": subject,
            "description": (
                f"An upstream fact, stored on the stream {UPSTREAM_STREAM}. Publish it with JetStream "
                "and the header Nats-Msg-Id = msg_id: the stream drops a repeat of an id within its "
                "duplicate window. The ledger decides exactly one outcome for it: its events, a "
                f"harmless duplicate, or one rejection on {REJECTED_PREFIX}.<reason>."
            ),
            "messages": {name: {"$ref": _MESSAGES + name}},
            "x-jetstream-stream": UPSTREAM_STREAM,
        }
        operations[f"receive{name}"] = _operation("receive", channel, [name], f"The ledger records {subject}, or rejects it.")

    messages["CoverageRequest"] = _message(
        "CoverageRequest", CoverageRequest, summary="Is this person covered on this date (as the ledger knew it at as_of)?"
    )
    messages["CoverageReply"] = _message(
        "CoverageReply", CoverageReply, summary="The person's coverage on the date; status not_enrolled for an unknown person."
    )
    messages["CoverageQueryError"] = _message(
        "CoverageQueryError", CoverageQueryError, summary="A request the ledger cannot answer, and why."
    )
    channels["coverageQuery"] = {
        "address": COVERAGE_QUERY,
        "title": COVERAGE_QUERY,
        "description": (
            f"NATS request/reply; every ledger serve answers, in the queue group {COVERAGE_QUERY_GROUP}. "
            "The answer comes from the ledger's committed events; ledger_seq says how current it is."
        ),
        "messages": {"CoverageRequest": {"$ref": _MESSAGES + "CoverageRequest"}},
    }
    channels["coverageQueryReply"] = {
        "address": None,
        "title": "coverage.query reply",
        "description": "The requester's inbox: the reply subject of the NATS request.",
        "messages": {
            "CoverageReply": {"$ref": _MESSAGES + "CoverageReply"},
            "CoverageQueryError": {"$ref": _MESSAGES + "CoverageQueryError"},
        },
    }
    operations["answerCoverageQuery"] = {
        **_operation("receive", "coverageQuery", ["CoverageRequest"], "The ledger answers a coverage question."),
        "bindings": {"nats": {"queue": COVERAGE_QUERY_GROUP, "bindingVersion": "0.1.0"}},
        "reply": {
            "channel": {"$ref": "#/channels/coverageQueryReply"},
            "messages": [
                {"$ref": "#/channels/coverageQueryReply/messages/CoverageReply"},
                {"$ref": "#/channels/coverageQueryReply/messages/CoverageQueryError"},
            ],
        },
    }

    messages["CoverageChanged"] = _message(
        "CoverageChanged", CoverageChanged, headers="DownstreamHeaders",
        summary="One coverage year of a person changed: the coverage reply for the day the change takes effect.",
    )  # fmt: skip
    channels["coverageChanged"] = {
        "address": changed_subject("{district}"),
        "title": changed_subject("<district>"),
        "description": (
            f"Stored on the stream {COVERAGE_STREAM}: every change of a person's coverage, in ledger order, "
            "published by the writer only. A message published again after a crash carries the same "
            "Nats-Msg-Id and is dropped by the stream."
        ),
        "parameters": {
            "district": {
                "description": "The division code of the enrollment's district, else of the district of residence; unknown when neither is known.",
                "examples": ["340104"],
            }
        },
        "messages": {"CoverageChanged": {"$ref": _MESSAGES + "CoverageChanged"}},
        "x-jetstream-stream": COVERAGE_STREAM,
    }
    operations["sendCoverageChanged"] = _operation("send", "coverageChanged", ["CoverageChanged"], "The ledger publishes a coverage change.")

    messages["CoverageValue"] = _message(
        "CoverageValue", CoverageValue, headers="DownstreamHeaders",
        summary="The person's latest coverage per coverage year.",
    )  # fmt: skip
    channels["coverageBucket"] = {
        "address": f"$KV.{COVERAGE_BUCKET}.{{person_key}}",
        "title": f"KV bucket {COVERAGE_BUCKET}",
        "description": (
            f"The KV bucket {COVERAGE_BUCKET} (stream KV_{COVERAGE_BUCKET}), key = the person key: "
            "get the latest value, or follow it by subscribing to $KV.coverage.> (downstream accounts create no consumers); each change is put once, in ledger order."
        ),
        "parameters": {
            "person_key": {"description": "The person key: a keyed hash of the ID number (never the ID number)."}
        },
        "messages": {"CoverageValue": {"$ref": _MESSAGES + "CoverageValue"}},
        "x-kv-bucket": COVERAGE_BUCKET,
    }
    operations["putCoverageValue"] = _operation("send", "coverageBucket", ["CoverageValue"], "The ledger puts a person's latest coverage.")

    messages["Rejection"] = _message(
        "Rejection", Rejection, headers="RejectionHeaders",
        summary="A refused upstream message, its reason, and the original bytes.",
    )  # fmt: skip
    channels["ledgerRejected"] = {
        "address": f"{REJECTED_PREFIX}.{{reason}}.{{sender}}",
        "title": f"{REJECTED_PREFIX}.<reason>.<sender>",
        "description": (
            f"Stored on the stream {REJECTED_STREAM}: every rejected upstream message, once. Nothing is "
            "dropped: a payload too large to fit is cut (the detail says so) and the whole message "
            f"stays on {UPSTREAM_STREAM} at upstream_seq. Each sender reads its own share from the "
            f"stream {REJECTED_STREAM}_<SENDER>."
        ),
        "parameters": {
            "reason": {"enum": list(REJECTION_REASONS), "description": "Why the message was refused."},
            "sender": {
                "enum": list(UPSTREAM_SENDERS),
                "description": "The sender's account (unattributed: the server did not say).",
            },
        },
        "messages": {"Rejection": {"$ref": _MESSAGES + "Rejection"}},
        "x-jetstream-stream": REJECTED_STREAM,
    }
    operations["sendRejection"] = _operation("send", "ledgerRejected", ["Rejection"], "The ledger records a rejection.")

    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Enrollment ledger — resident basic medical insurance",
            "version": VERSION,
            "description": (
                "Upstream systems publish facts on upstream.<fact>, each in its own NATS account, which "
                "delivers them to the ledger as upstream.<sender>.<fact>; the ledger records each, or "
                "rejects it onto ledger.rejected.<reason>.<sender>. Downstream services ask coverage.query, "
                "subscribe to coverage.changed.<district> or to the KV bucket coverage. Messages are JSON in UTF-8; "
                "dates are YYYY-MM-DD, times ISO 8601 with an offset, money integer fen. Unknown extra "
                "fields are ignored. See docs/contract.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "The deployment's NATS servers with JetStream (ledger serve --nats-url).",
                "variables": {"host": {"default": "localhost:4222", "description": "host:port of a NATS server"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
    result: dict[str, Any] = json.loads(json.dumps(document))  # JSON's types only (a tuple's default is a tuple)
    return result


def asyncapi_text() -> str:
    """The document as committed in ``docs/asyncapi.json``: sorted, indented JSON and a newline."""
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


_HEADERS: dict[str, Any] = {
    "UpstreamHeaders": {
        "type": "object",
        "properties": {
            "Nats-Msg-Id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "The message's msg_id: the stream drops a repeat within its duplicate window.",
            }
        },
    },
    "DownstreamHeaders": {
        "type": "object",
        "properties": {
            LEDGER_SEQ_HEADER: {"type": "string", "pattern": _DIGITS, "description": "The ledger sequence of the change."},
            LEDGER_SOURCE_HEADER: {"type": "string", "description": "The ledger stream the change comes from (<stream>@<created>)."},
            "Nats-Msg-Id": {"type": "string", "description": "Derived from the ledger sequence and the person key."},
        },
        "required": [LEDGER_SEQ_HEADER, "Nats-Msg-Id"],
    },
    "RejectionHeaders": {
        "type": "object",
        "properties": {
            UPSTREAM_SEQ_HEADER: {"type": "string", "pattern": _DIGITS, "description": "The rejected message's UPSTREAM sequence."},
            "Nats-Msg-Id": {"type": "string", "pattern": "^rejected/[0-9]+$", "description": "rejected/<upstream_seq>"},
        },
        "required": [UPSTREAM_SEQ_HEADER, "Nats-Msg-Id"],
    },
}


def _restrict(schema: dict[str, Any], field: str, **keywords: Any) -> None:
    """Adds ``keywords`` to the schema of ``field`` (which must exist)."""
    schema["properties"][field].update(keywords)


def _message(name: str, schema: type, *, summary: str, headers: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": name,
        "summary": summary,
        "payload": {"$ref": _SCHEMAS + schema.__name__},
    }
    if headers is not None:
        message["headers"] = {"$ref": _SCHEMAS + headers}
    return message


def _operation(action: str, channel: str, messages: list[str], summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in messages],
    }


def _identifier(subject: str) -> str:
    """``upstream.employee_insurance.changed`` → ``upstreamEmployeeInsuranceChanged``."""
    first, *rest = subject.replace("_", ".").split(".")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _senders(doc: str | None) -> str:
    """Who sends a message, from its docstring (``upstream.<fact>`` — who.)."""
    line = (doc or "").strip().splitlines()[0]
    return line.split("—", 1)[-1].strip().rstrip(".")
