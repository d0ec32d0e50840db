"""Where a ledger event comes from: the upstream message, who sent it, when it was true.

Every ledger event carries a ``Source``: the effective time from the message (when the fact is
true in the world; the rules judge by it, never by the wall clock), the upstream ``msg_id``, the
actor (system, operator, organisation, channel) and the version of the policy table the decision
used. The recorded time is the event's own ``timestamp`` (the wall clock when the ledger learned
it). Corrections are new events; nothing is edited.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")


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
    reported_at: datetime | None = None
    """When the sender reported the fact (the message's ``occurred_at``), if not ``effective_at``:
    a payment is effective when paid (``paid_at``) and reported later."""
    upstream_seq: int | None = None
    """The UPSTREAM stream sequence of the message behind the event (None outside ingestion)."""
    digest: str | None = None
    """A digest of the message's content: a repeat of ``msg_id`` with another content is a
    conflict, not a duplicate."""
    account: str | None = None
    """The sender's account: who sent the message, as its subject names it — with the
    deployment's accounts, the account the NATS server authenticated (its import adds the name);
    on a server without them, whatever the publisher chose. None: no sender was named, and the
    sender is what the message says."""

    @property
    def effective_on(self) -> date:
        """The calendar day of ``effective_at`` in China Standard Time (UTC+8), whatever offset
        the message used: periods and deadlines are Hefei days."""
        return self.effective_at.astimezone(CHINA_STANDARD_TIME).date()

    @property
    def sender(self) -> str:
        """Who sent the message: its account, or (unattributed) the system and, within it, the
        channel or organisation the message names."""
        if self.account is not None:
            return self.account
        return f"{self.system}:{self.channel or self.org_id or ''}"

    @property
    def fact_key(self) -> str:
        """What identifies the upstream fact: ``msg_id`` is unique only per sender."""
        return f"{self.sender}#{self.msg_id}"

    def with_policy(self, version: str) -> Source:
        if self.policy_version == version:
            return self
        return replace(self, policy_version=version)

    def as_dict(self) -> dict[str, Any]:
        """The fields, shallowly (``dataclasses.asdict`` deep-copies every value)."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Source))
