"""Real messages are what ``docs/asyncapi.json`` says, and what it refuses the ledger refuses.

- every message of the synthetic season (``simulation.season``) matches its subject's channel
  exactly when the ledger's decoder accepts it (the season plants malformed ones);
- what a running ``ledger serve`` puts on the wire — rejections on REJECTED, coverage changes on
  COVERAGE, values in the KV bucket ``coverage``, replies to ``coverage.query`` — matches the
  channel its subject names, headers included;
- an array body, or a body missing a required field, matches none of them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from contract.messages import SCHEMAS, decode
from contract.subjects import COVERAGE_BUCKET, COVERAGE_QUERY, COVERAGE_STREAM, REJECTED_STREAM
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.refusals import Malformed
from ledger.jetstream.server import EmbeddedNatsServer
from simulation.season import Season, simulate
from tests.integration.asyncapi_support import DOCUMENT, Contract
from tests.integration.ingest_support import SECRET, ServeProcess, ingestion_finished, people, season, wait_for

CST = timezone(timedelta(hours=8))


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(json.loads(DOCUMENT.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def synthetic_season() -> Season:
    return simulate(300, seed=2021)


def _decodes(subject: str, body: dict[str, Any]) -> bool:
    try:
        decode(subject, json.dumps(body, ensure_ascii=False).encode())
    except Malformed:
        return False
    return True


# ---- upstream: the synthetic season ---------------------------------------------------------------


def test_given_the_synthetic_season_then_a_message_matches_its_channel_exactly_when_the_ledger_decodes_it(
    contract: Contract, synthetic_season: Season
) -> None:
    verdicts: Counter[tuple[str, bool]] = Counter()
    disagreements = []
    for message in synthetic_season.messages:
        errors = contract.message_errors(message.subject, message.body, {"Nats-Msg-Id": message.body["msg_id"]})
        decodes = _decodes(message.subject, message.body)
        verdicts[(message.subject, decodes)] += 1
        if (not errors) != decodes:
            disagreements.append((message.subject, message.body, errors))
    assert not disagreements, disagreements[:3]
    assert {subject for subject, decodes in verdicts if decodes} == set(SCHEMAS), "every upstream subject was checked"
    planted = sum(1 for bad in synthetic_season.bad_input if bad.reason == "malformed")
    assert planted > 0 and sum(n for (_, decodes), n in verdicts.items() if not decodes) == planted


@pytest.mark.parametrize("subject", sorted(SCHEMAS))
def test_given_an_upstream_message_when_it_is_an_array_or_lacks_a_required_field_then_the_document_refuses_it(
    contract: Contract, synthetic_season: Season, subject: str
) -> None:
    body = next(m.body for m in synthetic_season.messages if m.subject == subject and _decodes(subject, m.body))
    assert contract.message_errors(subject, body) == []

    assert contract.message_errors(subject, [body]), "an array body is refused"
    required = contract.document["components"]["schemas"][SCHEMAS[subject].__name__]["required"]
    assert {"msg_id", "occurred_at"} <= set(required)
    for field in required:
        assert contract.message_errors(subject, {k: v for k, v in body.items() if k != field}), f"{subject} without {field}"


def test_given_an_upstream_time_without_its_offset_then_the_document_refuses_it_as_the_ledger_does(
    contract: Contract, synthetic_season: Season
) -> None:
    body = next(m.body for m in synthetic_season.messages if m.subject == "upstream.payment.received" and _decodes(m.subject, m.body))
    naive = {**body, "paid_at": body["paid_at"].removesuffix("+08:00")}
    assert not _decodes("upstream.payment.received", naive)
    assert contract.message_errors("upstream.payment.received", naive)


# ---- what a running ledger serve puts on the wire ------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """NATS messages as downstream services and auditors receive them."""

    rejected: list[tuple[str, dict[str, str], Any]]
    changed: list[tuple[str, dict[str, str], Any]]
    kv: list[tuple[str, dict[str, str], Any]]
    requests: list[Any]
    replies: list[Any]


async def _publish(url: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for subject, data, headers in messages:
            await js.publish(subject, data, headers=headers or None)
    finally:
        await nc.close()


async def _stream(url: str, stream: str) -> list[tuple[str, dict[str, str], Any]]:
    """Every message ``stream`` holds: subject, headers, JSON body."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        found: list[tuple[str, dict[str, str], Any]] = []
        if not state.messages:  # empty: first_seq and last_seq are 0, and there is no message 0
            return found
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except NotFoundError:  # the bucket keeps a few values per key
                continue
            if msg.data:
                found.append((msg.subject, dict(msg.headers or {}), json.loads(msg.data)))
        return found
    finally:
        await nc.close()


async def _ask(url: str, requests: list[Any]) -> list[Any]:
    nc = await nats.connect(url)
    try:
        replies = []
        for request in requests:
            data = json.dumps(request).encode()
            replies.append(json.loads((await nc.request(COVERAGE_QUERY, data, timeout=10)).data))
        return replies
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Wire:
    """Given ``ledger serve`` and ten residents who enroll and pay (the first the wrong amount),
    one of whom dies, a malformed enrollment and an array body: what it published, and its
    replies to coverage questions."""
    tmp = tmp_path_factory.mktemp("asyncapi-wire")
    data_dir = tmp / "data"
    messages = season(10, seed="asyncapi")
    paid = messages[3][1]["id_number"]
    dead = messages[5][1]["id_number"]
    death = {"msg_id": "d-2", "occurred_at": "2022-04-02T10:00:00+08:00", "id_number": dead, "date_of_death": "2022-04-01"}
    no_district = {**messages[0][1], "msg_id": "e-no-district"}
    del no_district["district"]
    raw = [(subject, json.dumps(body).encode(), {"Nats-Msg-Id": body["msg_id"]}) for subject, body in [*messages, ("upstream.death.registered", death)]]
    raw += [
        ("upstream.enrollment.requested", json.dumps(no_district).encode(), {"Nats-Msg-Id": "e-no-district"}),
        ("upstream.payment.received", json.dumps([messages[1][1]]).encode(), {}),
    ]
    keyer = PersonKeyer(SECRET.encode())
    dead_key = keyer.key_of(ResidentId.parse(dead))
    (stranger,) = people(1, "asyncapi-stranger")
    now = datetime.now(CST).isoformat(timespec="seconds")
    requests: list[Any] = [
        {"id_number": paid, "date": "2022-03-01"},
        {"id_number": paid, "date": "2022-03-01", "as_of": now},
        {"id_number": dead, "date": "2022-06-01"},
        {"id_number": stranger, "date": "2022-03-01"},
        {"id_number": "123", "date": "2022-03-01"},
        [{"id_number": paid, "date": "2022-03-01"}],
    ]

    with EmbeddedNatsServer(tmp / "nats") as server:
        serve = ServeProcess(server.url, tmp / "serve.log", data_dir=data_dir).start()
        try:
            wait_for(lambda: (data_dir / "serve.url").exists(), 60, "ledger serve to be ready")
            asyncio.run(_publish(server.url, raw))
            wait_for(lambda: ingestion_finished(server.url, len(raw)), 60, "ingestion")

            def published() -> bool:
                kv = asyncio.run(_stream(server.url, f"KV_{COVERAGE_BUCKET}"))
                rejected = asyncio.run(_stream(server.url, REJECTED_STREAM))
                return len(rejected) >= 3 and any(s.endswith(dead_key) and v["date_of_death"] for s, _, v in kv)

            wait_for(published, 60, "the rejections and the death's coverage change to be published")
            return Wire(
                rejected=asyncio.run(_stream(server.url, REJECTED_STREAM)),
                changed=asyncio.run(_stream(server.url, COVERAGE_STREAM)),
                kv=asyncio.run(_stream(server.url, f"KV_{COVERAGE_BUCKET}")),
                requests=requests,
                replies=asyncio.run(_ask(server.url, requests)),
            )
        finally:
            serve.stop()


def _without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


def test_given_rejections_on_rejected_then_each_matches_its_reasons_channel_and_a_changed_one_does_not(
    contract: Contract, wire: Wire
) -> None:
    assert Counter(body["reason"] for _, _, body in wire.rejected) == {"amount_mismatch": 1, "malformed": 2}
    assert any(body["msg_id"] is None for _, _, body in wire.rejected), "the array body has no msg_id"
    for subject, headers, body in wire.rejected:
        assert contract.channel_of(subject) == "ledgerRejected"
        assert contract.message_errors(subject, body, headers) == [], (subject, headers, body)

    subject, headers, body = wire.rejected[0]
    assert contract.message_errors(subject, _without(body, "upstream_seq"))
    assert contract.message_errors(subject, {**body, "reason": "no_reason_at_all"})
    assert contract.message_errors(subject, [body])
    assert contract.message_errors(subject, body, _without(headers, "Nats-Msg-Id"))
    assert contract.channels_matching("ledger.rejected.no_reason_at_all") == []


def test_given_coverage_changes_on_coverage_then_each_matches_the_district_channel_and_a_broken_one_does_not(
    contract: Contract, wire: Wire
) -> None:
    statuses = Counter(body["status"] for _, _, body in wire.changed)
    assert {"awaiting_payment", "enrolled"} <= set(statuses), statuses
    for subject, headers, body in wire.changed:
        assert contract.channel_of(subject) == "coverageChanged"
        assert contract.message_errors(subject, body, headers) == [], (subject, headers, body)

    subject, headers, body = wire.changed[-1]
    assert contract.message_errors(subject, _without(body, "ledger_seq"))
    assert contract.message_errors(subject, {**body, "status": "covered"})
    assert contract.message_errors(subject, [body])


def test_given_values_in_the_coverage_bucket_then_each_matches_the_bucket_channel_and_a_broken_one_does_not(
    contract: Contract, wire: Wire
) -> None:
    assert any(value["date_of_death"] == "2022-04-01" for _, _, value in wire.kv)
    for subject, headers, value in wire.kv:
        assert contract.channel_of(subject) == "coverageBucket"
        assert contract.message_errors(subject, value, headers) == [], (subject, headers, value)

    subject, headers, value = wire.kv[-1]
    assert contract.message_errors(subject, _without(value, "coverage"))
    assert contract.message_errors(subject, {**value, "coverage": {"22": value["coverage"]["2022"]}})
    assert contract.message_errors(subject, [value])
    assert contract.message_errors(subject, value, _without(headers, "Ledger-Seq"))


def test_given_coverage_questions_then_requests_and_replies_match_the_query_operation_and_broken_ones_do_not(
    contract: Contract, wire: Wire
) -> None:
    covered, as_of, dead, stranger, bad_id, array = wire.replies
    assert covered["covered"] is True and as_of["as_of"] is not None and dead["status"] == "ended"
    assert stranger["status"] == "not_enrolled"
    assert bad_id["error"] == "invalid_id_number" and array["error"] == "malformed"
    for reply in wire.replies:
        assert contract.reply_errors("answerCoverageQuery", reply) == [], reply
    for request in wire.requests[:-1]:
        assert contract.message_errors(COVERAGE_QUERY, request) == [], request
    assert contract.message_errors(COVERAGE_QUERY, wire.requests[-1]), "an array request is refused"
    assert contract.message_errors(COVERAGE_QUERY, _without(wire.requests[0], "date"))

    assert contract.reply_errors("answerCoverageQuery", _without(covered, "covered"))
    assert contract.reply_errors("answerCoverageQuery", [covered])
    assert contract.reply_errors("answerCoverageQuery", _without(bad_id, "detail"))
