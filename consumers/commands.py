"""One upstream message → one command of the ``Ledger`` application (no policy decisions here).

A message and its command name their fields alike, so ``msgspec.convert`` makes one from the
other; what differs per subject is data (``ROUTES``): which command, which upstream system the
subject stands for, and which of the message's fields say the channel, operator and organisation
of its ``Actor``. ``apply`` returns what the ledger did, or raises the ledger's ``Refusal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from contract import messages as s
from ledger import commands as c
from ledger.application import CASH_CHANNEL, Actor, Ledger, Outcome


@dataclass(frozen=True, slots=True)
class Route:
    """How the messages of one subject reach the ledger."""

    command: type[c.Command]
    system: str
    """The upstream system the subject stands for (the actor's ``system``)."""
    actor: tuple[tuple[str, str], ...] = ()
    """(actor field, the message field that gives it) for each field the message says."""
    channel: str | None = None
    """The actor's channel when the subject implies it (no message field says it)."""


ROUTES: dict[type[s.Upstream], Route] = {
    s.PersonRegistered: Route(c.RegisterPerson, "household_registry"),
    s.EnrollmentRequested: Route(
        c.RequestEnrollment, "enrollment", (("channel", "channel"), ("operator_id", "operator_id"), ("org_id", "org_id"))
    ),
    s.PaymentReceived: Route(
        c.ReceivePayment, "payment", (("channel", "channel"), ("operator_id", "operator_id"), ("org_id", "collector_id"))
    ),
    s.SubsidyListed: Route(c.ListSubsidy, "subsidy_roster", (("org_id", "department"),)),
    s.CashRemitted: Route(c.RemitCash, "cash_remittance", (("org_id", "collector_id"),), channel=CASH_CHANNEL),
    s.DeathRegistered: Route(c.RegisterDeath, "death_registry"),
    s.EmployeeInsuranceChanged: Route(c.ChangeEmployeeInsurance, "employee_insurance"),
    s.DischargeRegistered: Route(c.RegisterDischarge, "veterans_affairs"),
    s.TargetSet: Route(c.SetTarget, "medical_security_bureau"),
}
"""Every upstream message and how it reaches the ledger."""


def command_of(message: s.Upstream) -> c.Command:
    """The ledger's command for ``message`` (its fields, without those only the wire has)."""
    return msgspec.convert(message, ROUTES[type(message)].command, from_attributes=True)


def actor_of(
    message: s.Upstream, *, account: str | None = None, upstream_seq: int | None = None, digest: str | None = None
) -> Actor:
    """Who sent ``message``: its sender's ``account`` (from its credentials; None: unattributed),
    the subject's system and what the message says of its channel, operator and organisation."""
    route = ROUTES[type(message)]
    said = {field: getattr(message, attribute) for field, attribute in route.actor}
    if route.channel is not None:
        said["channel"] = route.channel
    return Actor(route.system, **said, account=account, upstream_seq=upstream_seq, digest=digest)


def apply(
    ledger: Ledger,
    message: s.Upstream,
    *,
    account: str | None = None,
    upstream_seq: int | None = None,
    digest: str | None = None,
) -> Outcome:
    """Hand ``message``, sent by ``account`` (None: unattributed), to the ledger; returns its
    outcome or raises its ``Refusal``. ``account``, ``upstream_seq`` and ``digest`` (the
    message's place in UPSTREAM, its content's digest) are recorded in the source of every
    event it causes."""
    actor = actor_of(message, account=account, upstream_seq=upstream_seq, digest=digest)
    return ledger.handle(command_of(message), actor)
