"""The insured person (参保人): registration, enrollments per coverage year, status changes.

One aggregate per person, identified by a UUID derived from the keyed person key (never the ID
number). Command methods check the rules and raise a ``Refusal``; event methods (past tense,
named in the policy's words) only change state, so replaying the events rebuilds the person.
Every event carries its ``Source`` (message, actor, effective time, policy version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from ledger.domain.coverage import CoverageTerms, EmployeeSpell, PersonFacts, add_months, decide_coverage
from ledger.domain.policy import RegionPolicy
from ledger.domain.refusals import (
    AlreadyEnrolled,
    AmountMismatch,
    Deceased,
    InEmployeeInsurance,
    NoEnrollment,
    NotEligible,
    OutsideEnrollmentPeriod,
    Refusal,
)
from ledger.domain.source import Source

LEDGER_NAMESPACE = uuid5(NAMESPACE_URL, "urn:enrollment-ledger")

OUTSIDE_PERIOD_CATEGORIES = frozenset({"newborn", "cross_scheme", "veteran", "assistance_new"})
"""Who may enroll during the coverage year itself (the policy §4)."""

AWAITING_PAYMENT = "awaiting_payment"
ENROLLED = "enrolled"
ENDED = "ended"


def person_id(person_key: str) -> UUID:
    """The aggregate id of the person with this key (a UUID derived from the keyed hash)."""
    return uuid5(LEDGER_NAMESPACE, f"person/{person_key}")


@dataclass
class RosterEntry:
    """One line of a department's subsidy roster (资助参保名单); all are kept for audit."""

    coverage_year: int
    subsidy_category: str
    department: str
    roster: str
    listed_on: date
    rate: int


@dataclass
class Enrollment:
    """A person's enrollment for one coverage year, as the events have made it."""

    coverage_year: int
    category: str
    channel: str
    district: str | None
    migrant_worker: bool
    requested_on: date
    contribution_fen: int
    subsidy_category: str | None
    subsidy_fen: int
    due_fen: int
    policy_version: str
    paid_fen: int = 0
    payments: list[str] = field(default_factory=list)
    terms: CoverageTerms | None = None
    status: str = AWAITING_PAYMENT
    ended_on: date | None = None
    ended_reason: str | None = None
    refund_fen: int = 0

    @property
    def active(self) -> bool:
        return self.status in (AWAITING_PAYMENT, ENROLLED)

    @property
    def outstanding_fen(self) -> int:
        return max(self.due_fen - self.paid_fen, 0)


class InsuredPerson(Aggregate):
    """A resident in the ledger: one active enrollment per coverage year, province-wide.

    Each command decides everything (and refuses, if it must) before it emits its first event,
    so a refused fact never leaves a half-changed person behind, even in memory.
    """

    @staticmethod
    def create_id(person_key: str, **_: object) -> UUID:
        return person_id(person_key)

    @event("Registered")
    def __init__(
        self,
        person_key: str,
        birth_date: date,
        sex: str,
        district: str | None,
        name: str | None,
        phone: str | None,
        household_id: str | None,
        residence_permit: bool,
        hukou_district: str | None,
        source: Source,
    ) -> None:
        self.person_key = person_key
        self.birth_date = birth_date
        self.sex = sex
        self._set_registration(district, name, phone, household_id, residence_permit, hukou_district)
        self.enrollments: dict[int, Enrollment] = {}
        self.ended_enrollments: list[Enrollment] = []
        self.rosters: list[RosterEntry] = []
        self.employee_spells: list[EmployeeSpell] = []
        self.discharged_on: date | None = None
        self.discharged_as_spouse = False
        self.date_of_death: date | None = None
        self.seen: dict[str, str | None] = {source.fact_key: source.digest}

    # ---- registration ---------------------------------------------------------------------

    @event("RegistrationUpdated")
    def update_registration(
        self,
        district: str,
        name: str | None,
        phone: str | None,
        household_id: str | None,
        residence_permit: bool,
        hukou_district: str | None,
        source: Source,
    ) -> None:
        self._set_registration(district, name, phone, household_id, residence_permit, hukou_district)
        self.seen[source.fact_key] = source.digest

    def _set_registration(
        self,
        district: str | None,
        name: str | None,
        phone: str | None,
        household_id: str | None,
        residence_permit: bool,
        hukou_district: str | None,
    ) -> None:
        self.district = district
        self.name = name
        self.phone = phone
        self.household_id = household_id
        self.residence_permit = residence_permit
        self.hukou_district = hukou_district

    # ---- enrollment -----------------------------------------------------------------------

    def request_enrollment(
        self,
        policy: RegionPolicy,
        *,
        coverage_year: int,
        category: str,
        channel: str,
        district: str,
        migrant_worker: bool,
        source: Source,
    ) -> None:
        """An enrollment request (参保登记); fully subsidised people are covered at once."""
        day = source.effective_on
        funding = policy.for_coverage_year(coverage_year)
        policy.district_name(district)
        self._check_alive(day)
        existing = self.enrollments.get(coverage_year)
        if existing is not None and existing.active:
            raise AlreadyEnrolled(f"already enrolled for {coverage_year} ({existing.status})")
        self._check_not_in_employee_insurance(coverage_year, day)
        self._check_category(category, day, coverage_year)
        self._check_request_timing(policy, coverage_year, category, migrant_worker, day)
        subsidy_category, subsidy_fen = self._best_subsidy(policy, coverage_year)
        contribution = funding.individual_contribution_fen
        terms = None
        if contribution == subsidy_fen:  # fully subsidised: decided now, before anything changes
            terms = decide_coverage(
                policy,
                coverage_year=coverage_year,
                category=category,
                paid_on=day,
                migrant_worker=migrant_worker,
                facts=self.facts(),
            )
        decided = source.with_policy(policy.version)
        self._enrollment_requested(
            coverage_year=coverage_year,
            category=category,
            channel=channel,
            district=district,
            migrant_worker=migrant_worker,
            contribution_fen=contribution,
            subsidy_category=subsidy_category,
            subsidy_fen=subsidy_fen,
            due_fen=contribution - subsidy_fen,
            source=decided,
        )
        if terms is not None:
            self._decided(terms, coverage_year, decided)

    @event("EnrollmentRequested")
    def _enrollment_requested(
        self,
        coverage_year: int,
        category: str,
        channel: str,
        district: str | None,
        migrant_worker: bool,
        contribution_fen: int,
        subsidy_category: str | None,
        subsidy_fen: int,
        due_fen: int,
        source: Source,
    ) -> None:
        previous = self.enrollments.get(coverage_year)
        if previous is not None:
            self.ended_enrollments.append(previous)
        self.enrollments[coverage_year] = Enrollment(
            coverage_year=coverage_year,
            category=category,
            channel=channel,
            district=district,
            migrant_worker=migrant_worker,
            requested_on=source.effective_on,
            contribution_fen=contribution_fen,
            subsidy_category=subsidy_category,
            subsidy_fen=subsidy_fen,
            due_fen=due_fen,
            policy_version=source.policy_version or "",
        )
        self.seen[source.fact_key] = source.digest

    def receive_payment(
        self,
        policy: RegionPolicy,
        *,
        coverage_year: int,
        amount_fen: int,
        channel: str,
        receipt_no: str | None,
        payer_account: str | None,
        source: Source,
    ) -> None:
        """A payment of the individual share (个人缴费); paid in full, the coverage is decided."""
        day = source.effective_on
        policy.for_coverage_year(coverage_year)
        self._check_alive(day)
        enrollment = self.enrollments.get(coverage_year)
        # An unpaid request ended by a death may still be paid by a payment dated before it.
        paid_before_death = (
            enrollment is not None and enrollment.ended_reason == "death" and enrollment.terms is None
        )
        if enrollment is None or (enrollment.status == ENDED and not paid_before_death):
            raise NoEnrollment(f"no enrollment for {coverage_year} to pay for")
        if enrollment.status == ENROLLED:
            raise AlreadyEnrolled(f"the {coverage_year} enrollment is already paid")
        if amount_fen != enrollment.outstanding_fen:
            raise AmountMismatch(f"paid {amount_fen} fen, owes {enrollment.outstanding_fen} fen for {coverage_year}")
        terms = self._terms(policy, enrollment, day)
        self._payment_received(
            coverage_year=coverage_year,
            amount_fen=amount_fen,
            channel=channel,
            receipt_no=receipt_no,
            payer_account=payer_account,
            source=source.with_policy(policy.version),
        )
        self._decided(terms, coverage_year, source.with_policy(policy.version))

    @event("PaymentReceived")
    def _payment_received(
        self,
        coverage_year: int,
        amount_fen: int,
        channel: str,
        receipt_no: str | None,
        payer_account: str | None,
        source: Source,
    ) -> None:
        enrollment = self.enrollments[coverage_year]
        enrollment.paid_fen += amount_fen
        enrollment.payments.append(source.msg_id)
        self.seen[source.fact_key] = source.digest

    def _complete(self, policy: RegionPolicy, coverage_year: int, day: date, source: Source) -> None:
        enrollment = self.enrollments[coverage_year]
        self._decided(self._terms(policy, enrollment, day), coverage_year, source.with_policy(policy.version))

    def _terms(self, policy: RegionPolicy, enrollment: Enrollment, day: date) -> CoverageTerms:
        """The coverage of ``enrollment`` completed on ``day``: by the category it was requested
        under, or else by one the person has come to qualify for since (discharged this year,
        newly listed on an assistance roster), so that a request left unpaid in the period does
        not bar what §4 allows during the year."""
        categories = [enrollment.category, *self._outside_period_qualifications(day)]
        first_refusal: Refusal | None = None
        for category in dict.fromkeys(categories):
            try:
                return decide_coverage(
                    policy,
                    coverage_year=enrollment.coverage_year,
                    category=category,
                    paid_on=day,
                    migrant_worker=enrollment.migrant_worker,
                    facts=self.facts(),
                )
            except (OutsideEnrollmentPeriod, NotEligible) as refusal:
                first_refusal = first_refusal or refusal
        assert first_refusal is not None
        raise first_refusal

    def _outside_period_qualifications(self, day: date) -> list[str]:
        found = []
        if self.discharged_on is not None and self.discharged_on.year == day.year:
            found.append("veteran")
        if any(r.listed_on.year == day.year and r.listed_on <= day for r in self.rosters):
            found.append("assistance_new")
        return found

    def _decided(self, terms: CoverageTerms, coverage_year: int, source: Source) -> None:
        self._coverage_decided(
            coverage_year=coverage_year,
            coverage_start=terms.coverage_start,
            coverage_end=terms.coverage_end,
            benefit_start=terms.benefit_start,
            waiting_months=terms.waiting_months,
            retroactive=terms.retroactive,
            rule=terms.rule,
            source=source,
        )
        if self.date_of_death is not None and terms.coverage_end >= self.date_of_death:
            # Paid before a death the ledger already knew of (the payment arrived late).
            self._coverage_ended(coverage_year=coverage_year, ended_on=self.date_of_death, reason="death", source=source)

    @event("CoverageDecided")
    def _coverage_decided(
        self,
        coverage_year: int,
        coverage_start: date,
        coverage_end: date,
        benefit_start: date,
        waiting_months: int,
        retroactive: bool,
        rule: str,
        source: Source,
    ) -> None:
        enrollment = self.enrollments[coverage_year]
        enrollment.terms = CoverageTerms(
            coverage_start, coverage_end, benefit_start, waiting_months, retroactive, rule
        )
        enrollment.status = ENROLLED
        self.seen[source.fact_key] = source.digest

    # ---- subsidies --------------------------------------------------------------------------

    def list_subsidy(
        self,
        policy: RegionPolicy,
        *,
        coverage_year: int,
        subsidy_category: str,
        department: str,
        roster: str,
        effective_from: date | None,
        source: Source,
    ) -> None:
        """A roster entry (资助参保名单). Kept always; it lowers what an unpaid enrollment owes,
        and a fully subsidised person is enrolled at once (the policy §5)."""
        funding = policy.for_coverage_year(coverage_year)
        listed_on = effective_from or source.effective_on
        self._subsidy_listed(
            coverage_year=coverage_year,
            subsidy_category=subsidy_category,
            department=department,
            roster=roster,
            listed_on=listed_on,
            rate=policy.subsidy_rate(funding.year, subsidy_category),
            source=source.with_policy(policy.version),
        )
        if self.date_of_death is not None and self.date_of_death < listed_on:
            return
        enrollment = self.enrollments.get(coverage_year)
        best_category, best_subsidy = self._best_subsidy(policy, coverage_year)
        if enrollment is not None and enrollment.status == AWAITING_PAYMENT:
            if best_subsidy > enrollment.subsidy_fen:
                self._premium_reassessed(
                    coverage_year=coverage_year,
                    subsidy_category=best_category,
                    subsidy_fen=best_subsidy,
                    due_fen=enrollment.contribution_fen - best_subsidy,
                    source=source.with_policy(policy.version),
                )
                if enrollment.outstanding_fen == 0:
                    self._complete_if_allowed(policy, coverage_year, listed_on, source)
        elif (enrollment is None or not enrollment.active) and best_subsidy == funding.individual_contribution_fen:
            self._enroll_automatically(policy, coverage_year, listed_on, source)

    def _enroll_automatically(self, policy: RegionPolicy, coverage_year: int, day: date, source: Source) -> None:
        """Fully subsidised people are enrolled when the roster arrives (channel ``auto``)."""
        if any(s.covers(date(coverage_year, 1, 1), date(coverage_year, 12, 31)) for s in self._current_spells(day)):
            return
        period_start, period_end = policy.concentrated_period(coverage_year - 1)
        category = "assistance_new" if day > period_end else "resident"
        contribution = policy.for_coverage_year(coverage_year).individual_contribution_fen
        self._enrollment_requested(
            coverage_year=coverage_year,
            category=category,
            channel="auto",
            district=self.district,
            migrant_worker=False,
            contribution_fen=contribution,
            subsidy_category=self._best_subsidy(policy, coverage_year)[0],
            subsidy_fen=contribution,
            due_fen=0,
            source=source.with_policy(policy.version),
        )
        # A roster that arrives before the concentrated period (the August roster) enrols for
        # the whole coverage year, as if enrolled on the period's first day.
        self._complete_if_allowed(policy, coverage_year, max(day, period_start), source)

    def _complete_if_allowed(self, policy: RegionPolicy, coverage_year: int, day: date, source: Source) -> None:
        try:
            self._complete(policy, coverage_year, day, source)
        except (OutsideEnrollmentPeriod, NotEligible):
            pass  # stays awaiting; the roster entry itself is recorded

    @event("SubsidyListed")
    def _subsidy_listed(
        self,
        coverage_year: int,
        subsidy_category: str,
        department: str,
        roster: str,
        listed_on: date,
        rate: int,
        source: Source,
    ) -> None:
        self.rosters.append(RosterEntry(coverage_year, subsidy_category, department, roster, listed_on, rate))
        self.seen[source.fact_key] = source.digest

    @event("PremiumReassessed")
    def _premium_reassessed(
        self, coverage_year: int, subsidy_category: str | None, subsidy_fen: int, due_fen: int, source: Source
    ) -> None:
        enrollment = self.enrollments[coverage_year]
        enrollment.subsidy_category = subsidy_category
        enrollment.subsidy_fen = subsidy_fen
        enrollment.due_fen = due_fen
        self.seen[source.fact_key] = source.digest

    def _best_subsidy(self, policy: RegionPolicy, coverage_year: int) -> tuple[str | None, int]:
        """The highest-rate roster entry for the year [choice: one subsidy, the highest rate]."""
        funding_year = coverage_year - 1
        entries = [r for r in self.rosters if r.coverage_year == coverage_year]
        if not entries:
            return None, 0
        best = max(entries, key=lambda r: policy.subsidy_rate(funding_year, r.subsidy_category))
        return best.subsidy_category, policy.subsidy_fen(funding_year, best.subsidy_category)

    # ---- status changes ---------------------------------------------------------------------

    def change_employee_insurance(
        self,
        policy: RegionPolicy,
        *,
        insured_from: date,
        insured_until: date | None,
        continuous_months: int,
        back_paid_months: int,
        source: Source,
    ) -> None:
        """A spell of employee insurance; a resident enrollment it overlaps is a duplicate
        (不得重复参保) and is cancelled, refunding the individual share paid [choice]."""
        self._employee_insurance_changed(
            insured_from=insured_from,
            insured_until=insured_until,
            continuous_months=continuous_months,
            back_paid_months=back_paid_months,
            source=source,
        )
        spell = self.employee_spells[-1]
        for enrollment in list(self.enrollments.values()):
            if enrollment.active and spell.covers(*self._period_of(enrollment)):
                self._enrollment_cancelled(
                    coverage_year=enrollment.coverage_year,
                    reason="duplicate_employee_insurance",
                    refund_fen=enrollment.paid_fen,
                    source=source.with_policy(policy.version),
                )

    @event("EmployeeInsuranceChanged")
    def _employee_insurance_changed(
        self,
        insured_from: date,
        insured_until: date | None,
        continuous_months: int,
        back_paid_months: int,
        source: Source,
    ) -> None:
        self.employee_spells = [s for s in self.employee_spells if s.insured_from != insured_from]
        self.employee_spells.append(EmployeeSpell(insured_from, insured_until, continuous_months, back_paid_months))
        self.seen[source.fact_key] = source.digest

    @event("EnrollmentCancelled")
    def _enrollment_cancelled(self, coverage_year: int, reason: str, refund_fen: int, source: Source) -> None:
        enrollment = self.enrollments[coverage_year]
        enrollment.status = ENDED
        enrollment.ended_reason = reason
        enrollment.ended_on = None  # void from the start: nothing of that year is reimbursed
        enrollment.refund_fen = refund_fen
        self.seen[source.fact_key] = source.digest

    def register_discharge(self, *, discharged_on: date, as_spouse: bool, source: Source) -> None:
        """Discharge from the army this year (退出现役), of the person or of the soldier a
        non-working spouse followed (随军未就业配偶)."""
        self._discharge_registered(discharged_on=discharged_on, as_spouse=as_spouse, source=source)

    @event("DischargeRegistered")
    def _discharge_registered(self, discharged_on: date, as_spouse: bool, source: Source) -> None:
        self.discharged_on = discharged_on
        self.discharged_as_spouse = as_spouse
        self.seen[source.fact_key] = source.digest

    def register_death(self, policy: RegionPolicy, *, date_of_death: date, source: Source) -> None:
        """A death registered by public security or civil affairs: coverage ends that day."""
        self._death_registered(date_of_death=date_of_death, source=source)
        source = source.with_policy(policy.version)
        for enrollment in list(self.enrollments.values()):
            ended_by_death = enrollment.status == ENDED and enrollment.ended_reason == "death"
            if ended_by_death and enrollment.ended_on != date_of_death:
                # A corrected date of death moves the end of coverage (a new event, no edit).
                self._coverage_ended(
                    coverage_year=enrollment.coverage_year, ended_on=date_of_death, reason="death", source=source
                )
                continue
            if not enrollment.active:
                continue
            if enrollment.terms is None or enrollment.terms.coverage_end >= date_of_death:
                self._coverage_ended(
                    coverage_year=enrollment.coverage_year, ended_on=date_of_death, reason="death", source=source
                )

    @event("DeathRegistered")
    def _death_registered(self, date_of_death: date, source: Source) -> None:
        self.date_of_death = date_of_death
        self.seen[source.fact_key] = source.digest

    @event("CoverageEnded")
    def _coverage_ended(self, coverage_year: int, ended_on: date, reason: str, source: Source) -> None:
        enrollment = self.enrollments[coverage_year]
        enrollment.status = ENDED
        enrollment.ended_on = ended_on
        enrollment.ended_reason = reason
        self.seen[source.fact_key] = source.digest

    # ---- checks -----------------------------------------------------------------------------

    def facts(self) -> PersonFacts:
        return PersonFacts(
            birth_date=self.birth_date,
            employee_spells=tuple(self.employee_spells),
            discharged_on=self.discharged_on,
            discharged_as_spouse=self.discharged_as_spouse,
            assistance_identified_on=tuple(r.listed_on for r in self.rosters),
        )

    def age_on(self, day: date) -> int:
        years = day.year - self.birth_date.year
        return years - ((day.month, day.day) < (self.birth_date.month, self.birth_date.day))

    def _check_alive(self, day: date) -> None:
        if self.date_of_death is not None and self.date_of_death < day:
            raise Deceased(f"died on {self.date_of_death}, the fact is of {day}")

    def _current_spells(self, day: date) -> list[EmployeeSpell]:
        return [s for s in self.employee_spells if s.insured_until is None or s.insured_until >= day]

    def _check_not_in_employee_insurance(self, coverage_year: int, day: date) -> None:
        for spell in self._current_spells(day):
            if spell.covers(date(coverage_year, 1, 1), date(coverage_year, 12, 31)):
                raise InEmployeeInsurance(f"in employee insurance from {spell.insured_from} in {coverage_year}")

    def _check_category(self, category: str, day: date, coverage_year: int) -> None:
        if category == "minor_of_employee" and self.age_on(day) >= 18:
            raise NotEligible("a minor of an employee must be under 18")
        if category == "newborn" and not (date(coverage_year - 1, 1, 1) <= self.birth_date <= day):
            raise NotEligible(f"born {self.birth_date}: not a newborn for {coverage_year}")
        if category == "residence_permit" and not self.residence_permit:
            raise NotEligible("no residence permit (居住证) registered")

    def _check_request_timing(
        self, policy: RegionPolicy, coverage_year: int, category: str, migrant_worker: bool, day: date
    ) -> None:
        """Refuse at once a request that no payment could ever complete."""
        funding_year = coverage_year - 1
        if day > date(coverage_year, 12, 31):
            newborn_in_window = (
                category == "newborn"
                and self.birth_date.year == coverage_year
                and day <= add_months(self.birth_date, policy.newborn_window_months)
            )
            if not newborn_in_window:  # a December baby may still enroll for its year of birth
                raise OutsideEnrollmentPeriod(f"{day} is after coverage year {coverage_year}")
            return
        _, period_end = policy.concentrated_period(funding_year)
        if day <= period_end or category in OUTSIDE_PERIOD_CATEGORIES:
            return
        if migrant_worker and day <= policy.migrant_extension_end(funding_year):
            return
        if policy.late_enrollment_rule == "waiting_period":
            return
        raise OutsideEnrollmentPeriod(
            f"the concentrated period for {coverage_year} ended on {period_end}; "
            f"a {category} enrollment may not start on {day}"
        )

    @staticmethod
    def _period_of(enrollment: Enrollment) -> tuple[date, date]:
        if enrollment.terms is not None:
            return enrollment.terms.coverage_start, enrollment.terms.coverage_end
        return date(enrollment.coverage_year, 1, 1), date(enrollment.coverage_year, 12, 31)


__all__ = [
    "AWAITING_PAYMENT",
    "ENDED",
    "ENROLLED",
    "Enrollment",
    "InsuredPerson",
    "RosterEntry",
    "person_id",
]
