"""The streams ingestion needs: the senders' intakes, UPSTREAM (the facts as sent) and REJECTED
(what was refused), with each sender's share of REJECTED.

- ``UPSTREAM_<SENDER>``, one per sender account and one for unattributed messages: what that
  sender published (``upstream.<sender>.<noun>.<verb>``). It deduplicates on ``Nats-Msg-Id``
  within that sender's messages only, so two senders may use the same ``msg_id``; its limits
  (bytes, message size, age) bound what one sender can put on the server's disk. A full intake
  refuses the sender's next publish (discard new); nothing stored is dropped.
- UPSTREAM, derived by the server from all the intakes: the one ordered sequence the ledger
  decides, immutable, kept without limits. It has no subjects of its own.
- REJECTED, derived by the server from the rejections the ingestion records on LEDGER, in the
  same atomic appends as the position they were decided at: a message is never rejected twice
  because it is never decided twice. ``REJECTED_<SENDER>`` holds one sender's rejections, for
  that sender to read (and nobody else).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from contract.subjects import (
    LEDGER_PREFIX,
    LEDGER_STREAM,
    REJECTED_PREFIX,
    REJECTED_STREAM,
    UPSTREAM_SENDERS,
    UPSTREAM_STREAM,
    intake_stream,
    intake_subjects,
    sender_rejected_stream,
)
from ledger.jetstream.datastore import StreamSettingsError, StreamSpec
from ledger.senders import SENDERS


@dataclass(frozen=True, slots=True)
class IntakeLimits:
    """What one sender may hold on the server at a time (its intake stream's limits)."""

    max_bytes: int = 4 << 30
    max_msg_size: int = 1 << 20
    max_age_s: float = 30 * 86400.0


def intake_spec(sender: str, replicas: int = 1, limits: IntakeLimits = IntakeLimits(), duplicate_window_s: float = 3600.0) -> StreamSpec:
    """``sender``'s intake: its messages as published, deduplicated among themselves."""
    return StreamSpec(
        name=intake_stream(sender),
        subjects=(intake_subjects(sender),),
        replicas=replicas,
        duplicate_window_s=duplicate_window_s,
        max_bytes=limits.max_bytes,
        max_msg_size=limits.max_msg_size,
        max_age_s=limits.max_age_s,
    )


def upstream_spec(replicas: int = 1) -> StreamSpec:
    """UPSTREAM, derived from every intake, in the order the server copies them. It has no
    duplicate window: a stream deduplicates what it derives on ``Nats-Msg-Id`` too, so with one,
    two senders' messages with the same ``msg_id`` would become one (each intake deduplicates its
    own sender's)."""
    return StreamSpec(
        name=UPSTREAM_STREAM,
        subjects=(),
        replicas=replicas,
        duplicate_window_s=0.0,
        sources=tuple((intake_stream(s), intake_subjects(s), intake_subjects(s)) for s in UPSTREAM_SENDERS),
    )


def sender_rejected_spec(sender: str, replicas: int = 1) -> StreamSpec:
    """``sender``'s rejections, derived from REJECTED (``ledger.rejected.<reason>.<sender>``)."""
    mine = f"{REJECTED_PREFIX}.*.{sender}"
    return StreamSpec(name=sender_rejected_stream(sender), subjects=(), replicas=replicas, sources=((REJECTED_STREAM, mine, mine),))


def ingest_specs(replicas: int = 1, limits: IntakeLimits = IntakeLimits()) -> list[StreamSpec]:
    """Every stream of the ingestion, in the order to create them: each derived stream after
    those it is derived from (the server retries a source that is missing only after a back-off
    of seconds). An older UPSTREAM with subjects of its own must give them up before the intakes
    can take them: ``ensure_ingest_streams`` upgrades it first."""
    return [
        *(intake_spec(s, replicas, limits) for s in UPSTREAM_SENDERS),
        upstream_spec(replicas),
        rejected_spec(replicas),
        *(sender_rejected_spec(s, replicas) for s in SENDERS),
    ]


async def ensure_ingest_streams(api: Any, replicas: int = 1, limits: IntakeLimits = IntakeLimits()) -> None:
    """Create what is missing of ``ingest_specs`` and upgrade older layouts, through the JetStream
    API ``api(subject, request)``; an existing stream with weaker settings is refused
    (``StreamSettingsError``)."""
    upstream = upstream_spec(replicas)
    info = await api(f"$JS.API.STREAM.INFO.{upstream.name}")
    if "error" not in info and info["config"].get("subjects"):
        # The older layout: UPSTREAM gives up upstream.> (and its duplicate window) first, so that
        # the intakes can take those subjects; it gains the intakes as sources once they exist
        # (a source missing when it is added is retried only after a back-off of seconds).
        given_up = {**info["config"], "subjects": [], "duplicate_window": 0}
        reply = await api(f"$JS.API.STREAM.UPDATE.{upstream.name}", given_up)
        if "error" in reply:
            raise StreamSettingsError(f"stream {upstream.name} could not be upgraded: {reply['error'].get('description')}")
    for spec in ingest_specs(replicas, limits):
        await spec.ensure(api)


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
    from ledger.jetstream.tls import connect

    nc = await connect(url)  # with the process's TLS setting
    try:

        async def request(subject: str, payload: bytes) -> bytes:
            return (await nc.request(subject, payload, timeout=10)).data

        return await rejected_caught_up(request, timeout=timeout)
    finally:
        await nc.close()
