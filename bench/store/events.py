"""The events the workloads save: enrollment-like JSON states of about 300 bytes.

Everything is built before a timer starts, so the figures measure the recorders, not this file.
"""

from __future__ import annotations

import json
import random
from uuid import UUID, uuid4

from eventsourcing.persistence import StoredEvent

TOPIC = "ledger.domain.enrollment:Enrollment.Enrolled"
"""The topic every benchmark event carries (a realistic length for this ledger)."""

STATE_BYTES = 300
"""Target size of an event's state; :func:`enrollment_state` lands within a few bytes of it."""

_REGIONS = ("340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124")
_CHANNELS = ("wechat", "alipay", "counter", "bank", "community")


def enrollment_state(originator_id: UUID, version: int, rng: random.Random) -> bytes:
    """A JSON state like an enrollment event's, padded with a note to about 300 bytes."""
    state = {
        "person_id": originator_id.hex,
        "version": version,
        "id_card_sha1": f"{rng.getrandbits(160):040x}",
        "region": rng.choice(_REGIONS),
        "scheme": "urban-rural-resident-basic-medical",
        "year": 2026,
        "contribution_cents": 40000,
        "subsidy_cents": rng.choice((0, 20000, 40000)),
        "channel": rng.choice(_CHANNELS),
        "enrolled_at": f"2025-{rng.randint(9, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00+08:00",
        "note": "",
    }
    body = json.dumps(state, separators=(",", ":"))
    state["note"] = "x" * max(0, STATE_BYTES - len(body))
    return json.dumps(state, separators=(",", ":")).encode()


class EventFactory:
    """Makes stored events for fresh aggregates; seeded, so every backend gets the same shapes."""

    def __init__(self, seed: int = 2026) -> None:
        self.rng = random.Random(seed)

    def single(self, count: int) -> list[StoredEvent]:
        """``count`` events, each the first (version 1) of a new aggregate."""
        events = []
        for _ in range(count):
            originator_id = uuid4()
            events.append(StoredEvent(originator_id, 1, TOPIC, enrollment_state(originator_id, 1, self.rng)))
        return events

    def aggregates(self, count: int, versions: int) -> list[list[StoredEvent]]:
        """``count`` new aggregates, each with versions 1..``versions``."""
        result = []
        for _ in range(count):
            originator_id = uuid4()
            result.append(
                [
                    StoredEvent(originator_id, v, TOPIC, enrollment_state(originator_id, v, self.rng))
                    for v in range(1, versions + 1)
                ]
            )
        return result

    def saves(self, count: int, aggregates_per_save: int, versions: int) -> list[list[StoredEvent]]:
        """``count`` saves, each of ``aggregates_per_save`` new aggregates × ``versions`` events."""
        return [
            [e for aggregate in self.aggregates(aggregates_per_save, versions) for e in aggregate] for _ in range(count)
        ]
