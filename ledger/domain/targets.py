"""Enrollment targets per district and coverage year (参保任务, the policy §7).

The bureau gives each district a target count; the enrollment rate is enrolled ÷ target.
"""

from __future__ import annotations

from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from ledger.domain.person import LEDGER_NAMESPACE
from ledger.domain.source import Source


def target_id(district: str, coverage_year: int) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"target/{district}/{coverage_year}")


class DistrictTarget(Aggregate):
    """How many people a district is to enroll for a coverage year; later settings replace it."""

    @staticmethod
    def create_id(district: str, coverage_year: int, **_: object) -> UUID:
        return target_id(district, coverage_year)

    @event("TargetSet")
    def __init__(self, district: str, coverage_year: int, target_count: int, source: Source) -> None:
        self.district = district
        self.coverage_year = coverage_year
        self.target_count = target_count
        self.seen: dict[str, str | None] = {source.fact_key: source.digest}

    @event("TargetChanged")
    def change(self, target_count: int, source: Source) -> None:
        self.target_count = target_count
        self.seen[source.fact_key] = source.digest
