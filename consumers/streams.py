"""The streams ingestion needs: UPSTREAM (the facts as sent) and REJECTED (what was refused).

Both are immutable file streams kept without limits. UPSTREAM deduplicates on ``Nats-Msg-Id``
(= the sender's ``msg_id``) within its window. REJECTED is derived by the server from the
rejections the ingestion records on LEDGER, in the same atomic appends as the position they were
decided at: a message is never rejected twice because it is never decided twice.
"""

from __future__ import annotations

from typing import Any

import msgspec

from contract.subjects import (
    LEDGER_PREFIX,
    LEDGER_STREAM,
    REJECTED_PREFIX,
    REJECTED_STREAM,
    UPSTREAM_STREAM,
    UPSTREAM_SUBJECTS,
)
from ledger.jetstream.datastore import StreamSpec


def upstream_spec(replicas: int = 1, duplicate_window_s: float = 3600.0) -> StreamSpec:
    return StreamSpec(
        name=UPSTREAM_STREAM, subjects=(UPSTREAM_SUBJECTS,), replicas=replicas, duplicate_window_s=duplicate_window_s
    )


def rejected_spec(
    replicas: int = 1, duplicate_window_s: float = 3600.0, *, ledger_stream: str = LEDGER_STREAM, ledger_prefix: str = LEDGER_PREFIX
) -> StreamSpec:
    """REJECTED, derived by the server from the rejections the ingestion records on LEDGER
    (``<prefix>.rej.<reason>``, in the same atomic append as the batch's events and position):
    it has no subjects of its own, so nobody publishes into it, and it holds exactly what LEDGER
    holds."""
    return StreamSpec(
        name=REJECTED_STREAM,
        subjects=(),
        replicas=replicas,
        duplicate_window_s=duplicate_window_s,
        sources=((ledger_stream, f"{ledger_prefix}.rej.>", f"{REJECTED_PREFIX}.>"),),
    )


async def rejections_recorded(request: Any, *, ledger_stream: str = LEDGER_STREAM, ledger_prefix: str = LEDGER_PREFIX) -> int:
    """How many rejections LEDGER holds (``<prefix>.rej.>``); ``request`` as for
    ``rejected_caught_up``."""
    info = msgspec.json.decode(
        await request(f"$JS.API.STREAM.INFO.{ledger_stream}", msgspec.json.encode({"subjects_filter": f"{ledger_prefix}.rej.>"}))
    )
    return sum((info.get("state", {}).get("subjects") or {}).values())


SOURCE_CATCH_UP = 150.0
"""Seconds to allow REJECTED to catch up with LEDGER: a moment normally, but after a node of a
cluster failed the server re-creates its source consumer with a back-off of 10 s, 20 s, … up to
2 minutes."""


async def rejected_caught_up(
    request: Any, *, timeout: float = SOURCE_CATCH_UP, ledger_stream: str = LEDGER_STREAM, ledger_prefix: str = LEDGER_PREFIX
) -> int:
    """Wait until REJECTED holds every rejection LEDGER holds (the server copies them a moment
    after they are recorded, longer after a node failure: ``SOURCE_CATCH_UP``); return how many
    there are. ``request(subject, payload)`` is a NATS request returning the reply's bytes."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        recorded = await rejections_recorded(request, ledger_stream=ledger_stream, ledger_prefix=ledger_prefix)
        rejected = msgspec.json.decode(await request(f"$JS.API.STREAM.INFO.{REJECTED_STREAM}", b""))
        held = int(rejected.get("state", {}).get("messages", 0))
        if held >= recorded:
            return recorded
        if time.monotonic() > deadline:
            raise TimeoutError(f"REJECTED holds {held} of the {recorded} rejections on {ledger_stream}")
        await asyncio.sleep(0.02)


async def wait_for_rejected(url: str, *, timeout: float = SOURCE_CATCH_UP) -> int:
    """``rejected_caught_up`` on a connection of its own to the servers at ``url``."""
    import nats

    from ledger.jetstream.client import server_urls

    nc = await nats.connect(server_urls(url))
    try:

        async def request(subject: str, payload: bytes) -> bytes:
            return (await nc.request(subject, payload, timeout=10)).data

        return await rejected_caught_up(request, timeout=timeout)
    finally:
        await nc.close()
