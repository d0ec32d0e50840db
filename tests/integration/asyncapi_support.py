"""Helpers for the AsyncAPI tests: the official parser (Node.js, ``tools/asyncapi``) and the
document's schemas as a ``jsonschema`` validator of real messages, found by their NATS subject."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "asyncapi.json"
TOOLS = ROOT / "tools" / "asyncapi"
VALIDATE = TOOLS / "validate.mjs"
BASE = "urn:asyncapi:ledger"


def official_parser(path: Path) -> subprocess.CompletedProcess[str]:
    """``node tools/asyncapi/validate.mjs PATH``: the verdict of ``@asyncapi/parser``.

    Fails the test (never skips it) when Node.js or the parser is missing: ``make test`` installs
    the parser (``npm ci --prefix tools/asyncapi``), so a missing one is a broken setup.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: the AsyncAPI document is checked by the official parser "
            "(@asyncapi/parser, Node.js >= 18); install Node.js, then run `make test`"
        )
    if not (TOOLS / "node_modules" / "@asyncapi" / "parser" / "package.json").exists():
        pytest.fail(
            "@asyncapi/parser is not installed in tools/asyncapi/node_modules: run "
            "`npm ci --prefix tools/asyncapi` (`make test` does)"
        )
    return subprocess.run([node, str(VALIDATE), str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT)


class Contract:
    """The AsyncAPI document as a validator: which channel a subject is on, and whether a body
    and headers are what that channel's message says (JSON Schema draft 7, the AsyncAPI schema's
    base, with ``date`` and ``date-time`` formats checked)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(BASE, DRAFT7.create_resource(document))

    @cached_property
    def _addresses(self) -> list[tuple[str, re.Pattern[str]]]:
        found = []
        for channel_id, channel in self.document["channels"].items():
            address = channel.get("address")
            if address is None:
                continue
            parameters = channel.get("parameters", {})
            pattern = ""
            for literal, name in re.findall(r"([^{]*)(?:\{([^}]*)\})?", address):
                pattern += re.escape(literal)
                if name:
                    enum = parameters[name].get("enum")
                    pattern += f"(?:{'|'.join(map(re.escape, enum))})" if enum else r"[^.]+"
            found.append((channel_id, re.compile(pattern)))
        return found

    def channels_matching(self, subject: str) -> list[str]:
        """The channels whose address matches ``subject`` (parameters with an ``enum`` match only
        its values)."""
        return [channel_id for channel_id, pattern in self._addresses if pattern.fullmatch(subject)]

    def channel_of(self, subject: str) -> str:
        """The one channel whose address matches ``subject`` (a test fails on none or several)."""
        matches = self.channels_matching(subject)
        assert len(matches) == 1, f"{subject!r} matches the channels {matches} of the document, not exactly one"
        return matches[0]

    def messages_of(self, channel_id: str) -> list[str]:
        """JSON pointers of the channel's messages (in components)."""
        return [ref["$ref"].removeprefix("#") for ref in self.document["channels"][channel_id]["messages"].values()]

    def reply_messages_of(self, operation_id: str) -> list[str]:
        """JSON pointers of the messages an operation may reply with."""
        reply = self.document["operations"][operation_id]["reply"]
        pointers = []
        for ref in reply["messages"]:
            channel_id, _, name = ref["$ref"].removeprefix("#/channels/").partition("/messages/")
            pointers.append(self.document["channels"][channel_id]["messages"][name]["$ref"].removeprefix("#"))
        return pointers

    def errors(self, pointer: str, instance: Any) -> list[str]:
        """Why ``instance`` is not valid against the schema at ``pointer`` (empty: valid)."""
        validator = Draft7Validator(
            {"$ref": f"{BASE}#{pointer}"}, registry=self.registry, format_checker=Draft7Validator.FORMAT_CHECKER
        )
        return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in validator.iter_errors(instance)]

    def message_errors(self, subject: str, body: Any, headers: dict[str, str] | None = None) -> list[str]:
        """Why a message published on ``subject`` is not the message its channel describes (empty:
        it is one of them, headers included when given)."""
        channel_id = self.channel_of(subject)
        every = []
        for message in self.messages_of(channel_id):
            problems = self.errors(f"{message}/payload", body)
            if headers is not None and "headers" in self._resolve(message):
                problems += [f"header {p}" for p in self.errors(f"{message}/headers", headers)]
            if not problems:
                return []
            every += problems
        return every

    def reply_errors(self, operation_id: str, body: Any) -> list[str]:
        """Why ``body`` is none of the operation's reply messages (empty: it is one)."""
        every = []
        for message in self.reply_messages_of(operation_id):
            problems = self.errors(f"{message}/payload", body)
            if not problems:
                return []
            every += problems
        return every

    def _resolve(self, pointer: str) -> Any:
        node: Any = self.document
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node
