"""Fraud flags (the policy §8; national 医保发〔2021〕32号 §六 "三假"): nine named rules.

A flag is a pointer for an auditor, not a verdict: each names its rule, the thresholds it used
(from the policy file's ``[fraud]`` table and cash rule) and the evidence behind it, as ledger
sequences (``ledger``) and REJECTED sequences (``rejected``). A flag is raised once per rule,
subject and position (the primary key), so replaying the same events raises the same flags.

| rule | raised when |
|---|---|
| ``after_death`` | a fact about a person takes effect after their registered death (recorded, or refused as ``deceased``) |
| ``backdated`` | an effect dated more than ``backdated_days`` before the sender reported it (a payment's ``paid_at``, a roster's ``effective_from``, a date of death, against the message's ``occurred_at``), or coverage decided retroactively |
| ``double_enrollment`` | an enrollment cancelled as a duplicate of employee insurance, or a second enrollment for a year refused (``already_enrolled``, ``in_employee_insurance``) |
| ``subsidy_mismatch`` | an enrollment priced with a subsidy category the person has no roster entry for, or an amount or rate other than the policy's |
| ``receipt_reused`` | a cash receipt number presented a second time (refused as ``duplicate_receipt``) |
| ``cash_unremitted`` | a collector holding cash longer than ``cash_remit_days``, or more than ``cash_remit_fen`` |
| ``shared_contact`` | one phone number, or one payer account, behind more than ``phone_max_people`` / ``payer_account_max_people`` people of different households |
| ``operator_anomaly`` | an operator enrolling outside the district of their first enrollment, or more than ``operator_burst_per_hour`` enrollments within an hour |
| ``adverse_selection`` | a person insured nowhere the year before who enrolls outside the concentrated period and whose benefits start within ``adverse_selection_days`` of the request |

About ``backdated`` (§8.2, "effective date well before the recorded time"): the rule compares the
effect with the time the *sender* reported it (the message's ``occurred_at``, kept in the event's
source), not with the ledger's wall clock. In live operation the two differ by the pipeline's
delay; they part when old messages are loaded or replayed into a new ledger (a migration, the
demo's re-enacted 2021 season), where the wall clock would flag every event. Rules judge by the
times in the message (contract.md), and so does this flag: the same messages give the same flags.
The recorded time stays in every audit row for the auditor.

About ``adverse_selection`` (§8.9, "right before heavy use of coverage"): the ledger receives no
claims, so it cannot see the use itself. It flags the exposure instead: someone with no coverage
the year before (no resident enrollment for the previous coverage year, no employee insurance in
the lapse window) who enrolls outside the concentrated period with coverage usable almost at
once — the migrant paying in February and covered back to January 1 is the typical case. Entries
decided by birth or by a public body (``newborn``, ``veteran``, ``assistance_new``) are not
flagged. The threshold is the policy's ``adverse_selection_days``.
"""

from __future__ import annotations

import bisect
import json
import threading
from datetime import datetime
from typing import Any

import msgspec

from ledger.domain.cash import CashCollector
from ledger.domain.person import InsuredPerson
from ledger.domain.policy import NoPolicyForYear, RegionPolicy
from ledger.domain.source import CHINA_STANDARD_TIME
from projections.views import LedgerViews

_encode = msgspec.json.Encoder().encode

RULES = (
    "after_death",
    "backdated",
    "double_enrollment",
    "subsidy_mismatch",
    "receipt_reused",
    "cash_unremitted",
    "shared_contact",
    "operator_anomaly",
    "adverse_selection",
)

_DEATH_EFFECTS = frozenset({"DeathRegistered", "CoverageEnded"})
"""Events that follow from a death itself, never flagged as ``after_death``."""

_HOUR = 3600.0

_EFFECT_DATES = {"SubsidyListed": "listed_on", "DeathRegistered": "date_of_death"}
"""Facts whose effect is a date of their own, not the message's time."""

_DECISIONS = frozenset({"CoverageDecided", "CoverageEnded", "PremiumReassessed", "EnrollmentCancelled"})
"""Events the ledger decides from a fact, carrying that fact's source: the fact's own event is
the one a lateness flag points at."""

_PUBLIC_ENTRIES = frozenset({"newborn", "veteran", "assistance_new"})
"""Enrollments outside the period decided by birth or by a public body: not adverse selection."""

_REJECTION_RULES = {
    "deceased": "after_death",
    "duplicate_receipt": "receipt_reused",
    "already_enrolled": "double_enrollment",
    "in_employee_insurance": "double_enrollment",
}


class FraudRules:
    """Evaluates the rules event by event and stages flags in the views (same transaction)."""

    def __init__(self, policy: RegionPolicy, view: LedgerViews) -> None:
        self.policy = policy
        self.thresholds = policy.fraud
        self.view = view
        self.deaths: dict[str, int] = {}
        self.waiting_for_death: dict[str, list[tuple[int, str, datetime | None]]] = {}
        """``deceased`` refusals read before the death they followed was projected (REJECTED is
        read apart from LEDGER, and runs ahead of it in a replay): flagged when it is."""
        self._deaths_lock = threading.Lock()
        self.contacts: dict[tuple[str, str], dict[str, tuple[str | None, int]]] = {}
        self.operators: dict[str, tuple[str | None, dict[str, Any]]] = {}

    # ---- raising ----------------------------------------------------------------------------

    def raise_flag(
        self,
        rule: str,
        subject_key: str,
        position: str,
        detail: str,
        *,
        parameters: dict[str, Any],
        ledger: list[int] = (),  # type: ignore[assignment]
        rejected: list[int] = (),  # type: ignore[assignment]
        coverage_year: int | None = None,
        raised_at: datetime | None = None,
    ) -> None:
        evidence = {"ledger": sorted(set(ledger)), "rejected": sorted(set(rejected))}
        self.view.stage(
            "flags",
            (
                rule, subject_key, position, coverage_year, detail,
                _encode(parameters).decode(), _encode(evidence).decode(),
                raised_at.isoformat() if raised_at else None,
            ),
        )

    # ---- person events ----------------------------------------------------------------------

    def on_person_event(
        self, event: Any, person: InsuredPerson, seq: int, died_before: Any, day: Any, phone_before: str | None = None
    ) -> None:
        """``day``: the event's effective day (China time); ``phone_before``: the phone before it."""
        kind = type(event).__name__
        source = event.source
        key = person.person_key
        year = getattr(event, "coverage_year", None)
        if kind == "DeathRegistered":
            self._death_projected(key, seq)
        if died_before is not None and kind not in _DEATH_EFFECTS and day > died_before:
            self.raise_flag(
                "after_death", key, str(seq),
                f"{kind} effective {day} after the death registered for {died_before}",
                parameters={}, ledger=[self._death_seq(key), seq], coverage_year=year, raised_at=event.timestamp,
            )
        self._backdated(event, kind, key, seq, year)
        if kind == "EnrollmentCancelled" and event.reason == "duplicate_employee_insurance":
            self.raise_flag(
                "double_enrollment", key, str(seq),
                f"the {year} resident enrollment overlapped employee insurance and was cancelled",
                parameters={}, ledger=[seq], coverage_year=year, raised_at=event.timestamp,
            )
        if kind in ("EnrollmentRequested", "PremiumReassessed"):
            self._subsidy(event, kind, person, seq)
        if kind == "SubsidyListed":
            self._roster_rate(event, person, seq)
        if kind == "Registered" or kind == "RegistrationUpdated":
            if phone_before and phone_before != event.phone:
                self._leave("phone", phone_before, person.person_key)
            if event.phone:
                self._contact("phone", event.phone, person, seq, self.thresholds.phone_max_people, event.timestamp)
        if kind == "PaymentReceived" and event.payer_account:
            self._contact(
                "payer_account", event.payer_account, person, seq, self.thresholds.payer_account_max_people, event.timestamp
            )
        if kind == "EnrollmentRequested" and source.operator_id:
            self._operator(event, person, seq)
        if kind == "CoverageDecided":
            self._adverse_selection(event, person, seq)

    def _death_seq(self, person_key: str) -> int:
        seq = self.deaths.get(person_key)
        if seq is None and self.view.fresh:
            return 0
        if seq is None:
            rows = self.view.db.query(
                "SELECT MAX(ledger_seq) FROM audit WHERE subject_key = ? AND event = 'DeathRegistered'", (person_key,)
            )
            seq = rows[0][0] if rows and rows[0][0] is not None else 0
            self.deaths[person_key] = seq
        return seq

    def _death_projected(self, person_key: str, seq: int) -> None:
        with self._deaths_lock:
            self.deaths[person_key] = seq
            waiting = self.waiting_for_death.pop(person_key, [])
        if not self.view.fresh:  # refusals an earlier run committed while they still waited
            rows = self.view.db.query(
                "SELECT rejected_seq, detail, recorded_at FROM rejections WHERE person_key = ? AND reason = 'deceased'",
                (person_key,),
            )
            waiting += [(r, d, datetime.fromisoformat(t) if t else None) for r, d, t in rows]
        for rejected_seq, detail, at in waiting:
            self._refused_as_deceased(person_key, seq, rejected_seq, detail, at)

    def _refused_as_deceased(
        self, person_key: str, death_seq: int, rejected_seq: int, detail: str, at: datetime | None
    ) -> None:
        self.raise_flag(
            "after_death", person_key, f"R{rejected_seq}", f"refused as deceased: {detail}",
            parameters={}, ledger=[death_seq], rejected=[rejected_seq], raised_at=at,
        )

    def _backdated(self, event: Any, kind: str, key: str, seq: int, year: int | None) -> None:
        days = self.thresholds.backdated_days
        source = event.source
        if kind == "CoverageDecided" and event.retroactive:
            self.raise_flag(
                "backdated", key, str(seq),
                f"coverage for {year} decided retroactively from {event.coverage_start} (rule {event.rule})",
                parameters={"backdated_days": days}, ledger=[seq], coverage_year=year, raised_at=event.timestamp,
            )
            return
        if kind in _DECISIONS:
            return  # follows from a fact flagged (or not) on its own event
        reported = source.reported_at or source.effective_at
        effect_day = _EFFECT_DATES.get(kind)
        if effect_day is not None:
            effect = getattr(event, effect_day)
            lag_days = (reported.astimezone(CHINA_STANDARD_TIME).date() - effect).days
        else:
            effect = source.effective_at
            if source.reported_at is None:
                return  # reported when it took effect
            lag_days = (reported - effect).days
        if lag_days > days:
            self.raise_flag(
                "backdated", key, str(seq),
                f"{kind} effective {effect.isoformat()} reported {lag_days} days later ({reported.isoformat()})",
                parameters={"backdated_days": days}, ledger=[seq], coverage_year=year, raised_at=event.timestamp,
            )

    def _subsidy(self, event: Any, kind: str, person: InsuredPerson, seq: int) -> None:
        category = event.subsidy_category
        if category is None:
            return
        year = event.coverage_year
        listed = [r for r in person.rosters if r.coverage_year == year and r.subsidy_category == category]
        if not listed:
            self.raise_flag(
                "subsidy_mismatch", person.person_key, str(seq),
                f"{kind} for {year} with subsidy {category!r} but no roster lists the person so",
                parameters={}, ledger=[seq], coverage_year=year, raised_at=event.timestamp,
            )
            return
        try:
            expected = self.policy.subsidy_fen(year - 1, category)
        except (NoPolicyForYear, KeyError, ValueError):
            return
        if event.subsidy_fen != expected:
            self.raise_flag(
                "subsidy_mismatch", person.person_key, str(seq),
                f"subsidy {event.subsidy_fen} fen for {category!r} in {year}; the policy gives {expected} fen",
                parameters={"policy_version": self.policy.version}, ledger=[seq], coverage_year=year,
                raised_at=event.timestamp,
            )

    def _roster_rate(self, event: Any, person: InsuredPerson, seq: int) -> None:
        try:
            expected = self.policy.subsidy_rate(event.coverage_year - 1, event.subsidy_category)
        except (NoPolicyForYear, KeyError, ValueError):
            return
        if event.rate != expected:
            self.raise_flag(
                "subsidy_mismatch", person.person_key, str(seq),
                f"roster {event.roster} lists {event.subsidy_category!r} at {event.rate}%; the policy says {expected}%",
                parameters={"policy_version": self.policy.version}, ledger=[seq],
                coverage_year=event.coverage_year, raised_at=event.timestamp,
            )

    def _contact(self, kind: str, value: str, person: InsuredPerson, seq: int, limit: int, at: datetime) -> None:
        people = self._group(kind, value)
        key = person.person_key
        if key in people and people[key][0] == person.household_id:
            return
        people[key] = (person.household_id, seq)
        self.view.stage("contacts", (kind, value, key, person.household_id, seq))
        households = {household or f"person:{k}" for k, (household, _) in people.items()}
        if len(households) > limit:
            parameter = "phone_max_people" if kind == "phone" else "payer_account_max_people"
            self.raise_flag(
                "shared_contact", key, str(seq),
                f"one {kind.replace('_', ' ')} behind {len(people)} people of {len(households)} households",
                parameters={parameter: limit, "kind": kind},
                ledger=[s for _, s in people.values()], raised_at=at,
            )

    def _group(self, kind: str, value: str) -> dict[str, tuple[str | None, int]]:
        people = self.contacts.get((kind, value))
        if people is None and self.view.fresh:
            people = self.contacts[(kind, value)] = {}
        if people is None:
            rows = self.view.db.query(
                "SELECT person_key, household_id, ledger_seq FROM contacts WHERE kind = ? AND value = ?", (kind, value)
            )
            people = self.contacts[(kind, value)] = {k: (h, s) for k, h, s in rows}
        return people

    def _leave(self, kind: str, value: str, person_key: str) -> None:
        """A person who changed phone no longer counts behind the old one."""
        self._group(kind, value).pop(person_key, None)
        self.view.unstage("contacts", (kind, value, person_key))

    def _operator(self, event: Any, person: InsuredPerson, seq: int) -> None:
        operator = event.source.operator_id
        state = self.operators.get(operator)
        if state is None and self.view.fresh:
            state = (None, {"times": [], "flagged_until": 0.0})
        if state is None:
            rows = self.view.db.query("SELECT home_district, recent FROM operators WHERE operator_id = ?", (operator,))
            state = (rows[0][0], json.loads(rows[0][1])) if rows else (None, {"times": [], "flagged_until": 0.0})
        home, recent = state
        district = event.district or person.district
        if home is None:
            home = district
        elif district is not None and district != home:
            self.raise_flag(
                "operator_anomaly", f"operator:{operator}", f"{seq}:district",
                f"operator {operator} (district {home}) enrolled person {person.person_key} in district {district}",
                parameters={}, ledger=[seq], coverage_year=event.coverage_year, raised_at=event.timestamp,
            )
        recent = self._burst(operator, recent, event, seq)
        self.operators[operator] = (home, recent)
        self.view.stage("operators", (operator, home, json.dumps(recent)))

    def _burst(self, operator: str, recent: dict[str, Any], event: Any, seq: int) -> dict[str, Any]:
        """More than the limit within any one hour that contains this enrollment, whatever the
        order the enrollments reach the ledger in (a batch is saved person by person); one flag
        per burst."""
        limit = self.thresholds.operator_burst_per_hour
        moment = event.source.effective_at.timestamp()
        times: list[float] = recent["times"]
        bisect.insort(times, moment)
        latest = times[-1]
        del times[: bisect.bisect_left(times, latest - 2 * _HOUR)]  # older ones can no longer matter
        busiest, window_end = 0, moment
        for start in times[bisect.bisect_right(times, moment - _HOUR) : bisect.bisect_right(times, moment)]:
            # the hour [start, start + 1 h): 61 enrollments a minute apart span exactly one hour
            count = bisect.bisect_left(times, start + _HOUR) - bisect.bisect_left(times, start)
            if count > busiest:
                busiest, window_end = count, start + _HOUR
        flagged_until = recent["flagged_until"]
        if busiest > limit and moment > flagged_until:
            self.raise_flag(
                "operator_anomaly", f"operator:{operator}", f"{seq}:burst",
                f"operator {operator} recorded {busiest} enrollments within one hour",
                parameters={"operator_burst_per_hour": limit}, ledger=[seq], coverage_year=event.coverage_year,
                raised_at=event.timestamp,
            )
            flagged_until = window_end
        return {"times": times, "flagged_until": flagged_until}

    def _adverse_selection(self, event: Any, person: InsuredPerson, seq: int) -> None:
        enrollment = person.enrollments.get(event.coverage_year)
        if enrollment is None or enrollment.category in _PUBLIC_ENTRIES:
            return
        try:
            period_start, period_end = self.policy.concentrated_period(event.coverage_year - 1)
        except (NoPolicyForYear, KeyError, ValueError):
            return
        # By the day of the request, not the category: a newborn enrolled in December for the
        # next year is enrolled inside the period, like everyone else then.
        requested = enrollment.requested_on
        days = self.thresholds.adverse_selection_days
        if period_start <= requested <= period_end or (event.benefit_start - requested).days > days:
            return
        if self._insured_before(person, event.coverage_year, requested):
            return
        self.raise_flag(
            "adverse_selection", person.person_key, str(seq),
            f"enrolled {requested} outside the concentrated period ({enrollment.category}), uninsured the year "
            f"before; benefits from {event.benefit_start}",
            parameters={"adverse_selection_days": days}, ledger=[seq], coverage_year=event.coverage_year,
            raised_at=event.timestamp,
        )

    def _insured_before(self, person: InsuredPerson, coverage_year: int, requested: Any) -> bool:
        """A resident enrollment for the previous coverage year, or employee insurance up to the
        lapse window before the request."""
        previous = person.enrollments.get(coverage_year - 1)
        if previous is not None and previous.terms is not None:
            return True
        lapse = 31 * self.policy.employee_lapse_months
        return any(
            spell.insured_until is None or 0 <= (requested - spell.insured_until).days <= lapse
            for spell in person.employee_spells
        )

    # ---- cash -------------------------------------------------------------------------------

    def on_collector_event(self, event: Any, collector: CashCollector, seq: int) -> None:
        if type(event).__name__ != "CashReceived":
            return
        day = event.source.effective_on
        days, limit = self.policy.cash_remit_days, self.policy.cash_remit_fen
        oldest = collector.oldest_unremitted()
        subject = f"collector:{collector.collector}"
        if oldest is not None and collector.remittance_overdue(day, days=days):
            self.raise_flag(
                "cash_unremitted", subject, f"receipt:{oldest.receipt_no}",
                f"receipt {oldest.receipt_no} collected {oldest.received_at.date()} still not remitted on {day}",
                parameters={"cash_remit_days": days}, ledger=[seq], raised_at=event.timestamp,
            )
        before = collector.balance_fen - event.amount_fen
        if before <= limit < collector.balance_fen:
            self.raise_flag(
                "cash_unremitted", subject, str(seq),
                f"holding {collector.balance_fen} fen, above the {limit} fen limit",
                parameters={"cash_remit_fen": limit}, ledger=[seq], raised_at=event.timestamp,
            )

    def on_day(self, day: Any, collectors: Any, seq: int, at: datetime) -> None:
        """Time passes in the ledger by the effective dates of its events: on each new day, a
        collector who stopped collecting but still holds cash is found overdue too."""
        days = self.policy.cash_remit_days
        for collector in collectors:
            oldest = collector.oldest_unremitted()
            if oldest is not None and collector.remittance_overdue(day, days=days):
                self.raise_flag(
                    "cash_unremitted", f"collector:{collector.collector}", f"receipt:{oldest.receipt_no}",
                    f"receipt {oldest.receipt_no} collected {oldest.received_at.date()} still not remitted on {day}",
                    parameters={"cash_remit_days": days}, ledger=[seq], raised_at=at,
                )

    # ---- rejections -------------------------------------------------------------------------

    def on_rejection(
        self, reason: str, person_key: str | None, rejected_seq: int, detail: str, at: datetime | None, subject: str = ""
    ) -> None:
        rule = _REJECTION_RULES.get(reason)
        if rule is None or person_key is None:
            return
        if rule == "double_enrollment" and subject != "upstream.enrollment.requested":
            return  # a second payment of a paid enrollment is a refund to make, not a second enrollment
        if rule == "after_death":
            with self._deaths_lock:  # against the projection's thread recording the death meanwhile
                death_seq = self._death_seq(person_key)
                if not death_seq:
                    self.waiting_for_death.setdefault(person_key, []).append((rejected_seq, detail, at))
                    return
            self._refused_as_deceased(person_key, death_seq, rejected_seq, detail, at)
            return
        self.raise_flag(
            rule, person_key, f"R{rejected_seq}", f"refused as {reason}: {detail}",
            parameters={}, rejected=[rejected_seq], raised_at=at,
        )
