"""Where a ledger event comes from: the upstream message, who sent it, when it was true.

Every ledger event carries a ``Source``: the effective time from the message (when the fact is
true in the world; the rules judge by it, never by the wall clock), the upstream ``msg_id``, the
actor (system, operator, organisation, channel) and the version of the policy table the decision
used. The recorded time is the event's own ``timestamp`` (the wall clock when the ledger learned
it). Corrections are new events; nothing is edited.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Source:
    """The upstream fact behind an event (来源)."""

    msg_id: str
    effective_at: datetime
    """When the fact is true in the world, from the message (``occurred_at``, ``paid_at`` …)."""
    system: str
    """The upstream system: ``wechat``, ``tax``, ``community``, ``civil_affairs`` …"""
    channel: str | None = None
    operator_id: str | None = None
    org_id: str | None = None
    policy_version: str | None = None

    @property
    def effective_on(self) -> date:
        """The calendar day of ``effective_at`` in the message's own time zone (+08:00)."""
        return self.effective_at.date()

    def with_policy(self, version: str) -> Source:
        return Source(**{**asdict(self), "policy_version": version})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
