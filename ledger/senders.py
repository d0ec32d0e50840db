"""Who may say what: the upstream senders and the facts each is entitled to send.

A sender is an upstream system, known by its NATS account (its credentials), never by what a
message says. Each may send only the facts its office is responsible for, through its own
channels; a fact from any other sender is refused ``not_authorised``:

- payments and enrollments only through the sender's own channels (a WeChat payment cannot be a
  community cash payment, nor name a cash collector);
- a subsidy roster line only for the categories of the sender's department (资助参保 rosters:
  rural revitalisation lists 返贫致贫 and 脱贫不稳定, the health commission 计生特殊家庭, civil
  affairs the rest; the policy §5);
- registrations, deaths, employee-insurance spells, discharges and targets only from the office
  that keeps them.

A message whose sender the NATS server could not tell (a server without accounts, as in
development) is *unattributed*: it carries no account, and nothing of its sender can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import commands as c
from ledger.domain.refusals import NotAuthorised

UNATTRIBUTED = "unattributed"
"""The sender token of a message that reached the ledger without a sender's account."""

CASH_CHANNEL = "community_cash"


@dataclass(frozen=True, slots=True)
class Entitlement:
    """What one sender may send."""

    office: str
    """Who the sender is, for people (and error messages)."""
    commands: frozenset[type[c.Command]]
    channels: frozenset[str] = frozenset()
    """The enrollment and payment channels that are this sender's."""
    subsidy_categories: frozenset[str] = frozenset()
    """The roster categories of this sender's department."""
    operators: bool = False
    """Whether its enrollments and payments are keyed in by staff (``operator_id``): committees,
    schools and the tax office's counters; WeChat is self-service."""


_PAYMENTS: frozenset[type[c.Command]] = frozenset({c.RequestEnrollment, c.ReceivePayment})

SENDERS: dict[str, Entitlement] = {
    "wechat_pay": Entitlement("the WeChat payment system", _PAYMENTS, frozenset({"wechat"})),
    "tax": Entitlement(
        "the tax office (its app and counters enroll and collect; community cash is remitted to it)",
        frozenset[type[c.Command]]({c.RequestEnrollment, c.ReceivePayment, c.RemitCash}),
        frozenset({"tax"}),
        operators=True,
    ),
    "community": Entitlement(
        "the community (neighbourhood and village) committees",
        frozenset[type[c.Command]]({c.RegisterPerson, c.RequestEnrollment, c.ReceivePayment, c.RemitCash}),
        frozenset({"community_qr", CASH_CHANNEL}),
        operators=True,
    ),
    "universities": Entitlement(
        "universities and the education bureau's schools", _PAYMENTS, frozenset({"university", "school"}), operators=True
    ),
    "civil_affairs": Entitlement(
        "civil affairs (民政)",
        frozenset[type[c.Command]]({c.ListSubsidy, c.RegisterDeath}),
        subsidy_categories=frozenset(
            {"extreme_poverty", "scattered_orphan", "dibao", "low_income_elderly", "monitored_low_income"}
        ),
    ),
    "rural_revitalisation": Entitlement(
        "the rural revitalisation bureau (乡村振兴)",
        frozenset({c.ListSubsidy}),
        subsidy_categories=frozenset({"poverty_returned", "poverty_unstable"}),
    ),
    "health_commission": Entitlement(
        "the health commission (卫健)", frozenset({c.ListSubsidy}), subsidy_categories=frozenset({"family_planning_special"})
    ),
    "employee_insurance": Entitlement("the employee-insurance system", frozenset({c.ChangeEmployeeInsurance})),
    "public_security": Entitlement("public security (household registration)", frozenset[type[c.Command]]({c.RegisterPerson, c.RegisterDeath})),
    "veterans": Entitlement("veterans affairs", frozenset({c.RegisterDischarge})),
    "bureau": Entitlement("the medical security bureau", frozenset({c.SetTarget})),
}
"""Every upstream sender (its account's name) and what it may send."""


def check(sender: str | None, command: c.Command, channel: str | None, operator_id: str | None = None) -> None:
    """Raise ``NotAuthorised`` unless ``sender`` may send ``command`` through ``channel`` (keyed in
    by ``operator_id``, when the message names one). ``sender`` None: unattributed, nothing to
    check."""
    if sender is None:
        return
    entitlement = SENDERS.get(sender)
    if entitlement is None:
        raise NotAuthorised(f"{sender!r} is not an upstream sender of this ledger")
    fact = type(command).__name__
    if type(command) not in entitlement.commands:
        raise NotAuthorised(f"{entitlement.office} ({sender}) may not send {fact}")
    if type(command) in _PAYMENTS and channel not in entitlement.channels:
        raise NotAuthorised(f"{entitlement.office} ({sender}) may not send through channel {channel!r}")
    if operator_id is not None and not entitlement.operators:
        raise NotAuthorised(f"{entitlement.office} ({sender}) has no operators: its messages name no operator_id")
    names_cash = isinstance(command, c.ReceivePayment) and (command.collector_id is not None or command.receipt_no is not None)
    if names_cash and CASH_CHANNEL not in entitlement.channels:
        raise NotAuthorised(f"{entitlement.office} ({sender}) collects no cash: a payment from it names no collector or receipt")
    if isinstance(command, c.ListSubsidy) and command.subsidy_category not in entitlement.subsidy_categories:
        raise NotAuthorised(f"{entitlement.office} ({sender}) keeps no roster of {command.subsidy_category!r}")
