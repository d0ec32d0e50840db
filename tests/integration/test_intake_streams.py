"""Each sender's intake: deduplicated among its own messages, bounded by its own limits, and all
of them copied by the server into UPSTREAM, the one sequence the ledger decides (docs/contract.md
"Who sent it"; consumers/streams.py). On a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import APIError

from consumers.streams import IntakeLimits, ensure_ingest_streams
from ledger.jetstream.server import EmbeddedNatsServer

Api = Callable[..., Awaitable[dict[str, Any]]]


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Any, Api]]:
    with EmbeddedNatsServer(tmp_path / "nats") as running:
        nc = await nats.connect(running.url)

        async def api(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
            reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
            return dict(json.loads(reply.data))

        try:
            yield nc, api
        finally:
            await nc.close()


async def upstream_subjects(api: Api) -> dict[str, int]:
    info = await api("$JS.API.STREAM.INFO.UPSTREAM", {"subjects_filter": ">"})
    return dict(info["state"].get("subjects") or {})


async def test_the_same_msg_id_from_two_senders_reaches_upstream_twice_and_a_senders_repeat_once(
    server: tuple[Any, Api],
) -> None:
    nc, api = server
    await ensure_ingest_streams(api)
    js = nc.jetstream()
    # Given the tax office and civil affairs both use msg_id "2021-0001", and the tax office resends it
    first = await js.publish("upstream.tax.payment.received", b"{}", headers={"Nats-Msg-Id": "2021-0001"})
    other = await js.publish("upstream.civil_affairs.death.registered", b"{}", headers={"Nats-Msg-Id": "2021-0001"})
    again = await js.publish("upstream.tax.payment.received", b"{}", headers={"Nats-Msg-Id": "2021-0001"})
    # Then each sender's intake took its own, the resend is a duplicate, and UPSTREAM holds both
    assert (first.stream, other.stream) == ("UPSTREAM_TAX", "UPSTREAM_CIVIL_AFFAIRS")
    assert not first.duplicate and not other.duplicate and again.duplicate
    want = {"upstream.tax.payment.received": 1, "upstream.civil_affairs.death.registered": 1}

    async def both() -> bool:
        return await upstream_subjects(api) == want

    await _until(both, "UPSTREAM to hold both senders' messages")


async def test_a_sender_over_its_limits_is_refused_and_the_others_go_on(server: tuple[Any, Api]) -> None:
    nc, api = server
    await ensure_ingest_streams(api, limits=IntakeLimits(max_bytes=4096, max_msg_size=1024, max_age_s=3600))
    js = nc.jetstream()
    # When WeChat sends a message over the size limit: refused, nothing stored
    with pytest.raises(APIError):
        await js.publish("upstream.wechat_pay.payment.received", b"x" * 2000, headers={"Nats-Msg-Id": "big"})
    # When WeChat fills its intake: its next message is refused, nothing it had is dropped
    stored = 0
    with pytest.raises(APIError):
        for n in range(100):
            await js.publish("upstream.wechat_pay.payment.received", b"y" * 500, headers={"Nats-Msg-Id": f"w{n}"})
            stored += 1
    intake = await api("$JS.API.STREAM.INFO.UPSTREAM_WECHAT_PAY")
    assert 0 < stored == intake["state"]["messages"] and intake["state"]["first_seq"] == 1
    # Then the tax office still publishes
    ack = await js.publish("upstream.tax.payment.received", b"{}", headers={"Nats-Msg-Id": "t1"})
    assert ack.stream == "UPSTREAM_TAX"

    async def all_copied() -> bool:
        return sum((await upstream_subjects(api)).values()) == stored + 1

    await _until(all_copied, "UPSTREAM to hold what the intakes took")


async def test_an_older_upstream_gives_its_subjects_to_the_intakes_and_keeps_what_it_holds(
    server: tuple[Any, Api],
) -> None:
    nc, api = server
    # Given the older layout: UPSTREAM with subjects upstream.>, holding a message
    await api(
        "$JS.API.STREAM.CREATE.UPSTREAM",
        {"name": "UPSTREAM", "subjects": ["upstream.>"], "storage": "file", "deny_delete": True, "deny_purge": True,
         "allow_direct": True, "allow_atomic": True, "duplicate_window": 3600 * 10**9},
    )  # fmt: skip
    js = nc.jetstream()
    await js.publish("upstream.payment.received", b"{}", headers={"Nats-Msg-Id": "old"})
    # When the ingestion's streams are ensured
    await ensure_ingest_streams(api)
    # Then UPSTREAM has no subjects of its own and no duplicate window, keeps its message, and
    # takes new messages through the intakes
    config = (await api("$JS.API.STREAM.INFO.UPSTREAM"))["config"]
    assert not config.get("subjects") and not config.get("duplicate_window")
    # (another id: for up to an hour UPSTREAM still remembers the ids it stored before the upgrade)
    ack = await js.publish("upstream.wechat_pay.payment.received", b"{}", headers={"Nats-Msg-Id": "new"})
    assert ack.stream == "UPSTREAM_WECHAT_PAY"

    async def both() -> bool:
        return await upstream_subjects(api) == {"upstream.payment.received": 1, "upstream.wechat_pay.payment.received": 1}

    await _until(both, "UPSTREAM to hold the old message and the new one")
