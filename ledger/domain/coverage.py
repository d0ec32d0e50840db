"""When coverage starts and when benefits start (the policy §3–4).

``decide_coverage`` turns an enrollment that has just been paid (or fully subsidised) into its
coverage terms: coverage start and end, benefit start, waiting period (待遇享受等待期) and whether
the coverage reaches back before the decision (retroactive). It judges by the payment's own
date, never the wall clock, and refuses with one reason when the policy allows no coverage.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date

from ledger.domain.policy import RegionPolicy
from ledger.domain.refusals import NotEligible, OutsideEnrollmentPeriod


def add_months(day: date, months: int) -> date:
    """``day`` plus whole months, clamped to the month's end (Nov 30 + 3 months = Feb 28/29)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def next_day(day: date) -> date:
    return date.fromordinal(day.toordinal() + 1)


@dataclass(frozen=True, slots=True)
class EmployeeSpell:
    """A spell of employee insurance (职工医保) reported by the employee-insurance system."""

    insured_from: date
    insured_until: date | None
    """None while still insured."""
    continuous_months: int
    back_paid_months: int = 0
    """Months paid afterwards (补缴): they do not count towards the two continuous years."""

    def covers(self, start: date, end: date) -> bool:
        """Whether this spell overlaps the days ``start``…``end``."""
        return self.insured_from <= end and (self.insured_until is None or self.insured_until >= start)


@dataclass(frozen=True, slots=True)
class PersonFacts:
    """What the rules need to know about a person besides the enrollment itself."""

    birth_date: date
    employee_spells: tuple[EmployeeSpell, ...] = ()
    discharged_on: date | None = None
    """Discharge from the army (退役) of the person, or of the soldier a spouse followed."""
    discharged_as_spouse: bool = False
    assistance_identified_on: tuple[date, ...] = ()
    """Days on which assistance rosters newly listed the person (动态新增救助对象)."""


@dataclass(frozen=True, slots=True)
class CoverageTerms:
    """The coverage an enrollment gives (参保待遇): what downstream services are told."""

    coverage_start: date
    coverage_end: date
    benefit_start: date
    waiting_months: int = 0
    retroactive: bool = False
    rule: str = field(default="concentrated_period")
    """Which rule decided it: ``concentrated_period``, ``migrant_extension``, ``newborn`` …"""


def decide_coverage(
    policy: RegionPolicy,
    *,
    coverage_year: int,
    category: str,
    paid_on: date,
    migrant_worker: bool,
    facts: PersonFacts,
) -> CoverageTerms:
    """The coverage of an enrollment for ``coverage_year`` completed on ``paid_on``.

    Raises ``OutsideEnrollmentPeriod`` when the day falls outside every window the person may
    use, and ``NotEligible`` when the person claims an outside-period category whose conditions
    they do not meet.
    """
    funding_year = coverage_year - 1
    year_start, year_end = date(coverage_year, 1, 1), date(coverage_year, 12, 31)
    period_start, period_end = policy.concentrated_period(funding_year)

    born = facts.birth_date.year
    if category == "newborn" and (born == coverage_year or (born == funding_year and paid_on >= year_start)):
        # 新生儿: enrolled for the year of birth (also during the concentrated period, which lets
        # a newborn enroll for the current year and the next), or, born late in the year, for the
        # next year once it has begun.
        return _newborn(policy, facts.birth_date, paid_on, year_start, year_end)

    if period_start <= paid_on <= period_end:
        if category == "university_new":
            # 新入学大学生: covered from the day the fee was collected (by the university) or paid
            # (through WeChat), through the end of the coverage year, no waiting period.
            return CoverageTerms(paid_on, year_end, paid_on, rule="university_new")
        return CoverageTerms(year_start, year_end, year_start)

    if migrant_worker and year_start <= paid_on <= policy.migrant_extension_end(funding_year):
        # 农村外出务工人员 may pay until the end of February [choice: as inside the period,
        # coverage from Jan 1, no waiting period, marked retroactive].
        return CoverageTerms(year_start, year_end, year_start, retroactive=True, rule="migrant_extension")

    if paid_on < period_start or paid_on > year_end:
        raise OutsideEnrollmentPeriod(
            f"{paid_on} is neither in the concentrated period {period_start}–{period_end} "
            f"nor in coverage year {coverage_year}"
        )
    return _outside_the_period(policy, category, paid_on, year_end, facts)


def _newborn(
    policy: RegionPolicy, birth_date: date, paid_on: date, year_start: date, year_end: date
) -> CoverageTerms:
    if paid_on <= add_months(birth_date, policy.newborn_window_months):
        # 新生儿自出生之日起3个月内参保缴费的，自出生之日起享受当年居民医保待遇 (皖医保发〔2021〕7号 (三)):
        # from birth, within the coverage year.
        start = max(birth_date, year_start)
        return CoverageTerms(start, year_end, start, retroactive=paid_on > start, rule="newborn")
    # Later [choice: late_newborn_rule]: from the day after payment, no waiting period.
    start = next_day(paid_on)
    return CoverageTerms(start, year_end, start, rule="newborn_late")


def _outside_the_period(
    policy: RegionPolicy, category: str, paid_on: date, year_end: date, facts: PersonFacts
) -> CoverageTerms:
    """Enrollment during the coverage year itself (皖医保发〔2021〕7号 (七); 医保发〔2021〕32号 §二)."""
    start = next_day(paid_on)  # 自参保缴费次日起享受待遇
    if category == "cross_scheme":
        spell = _last_ended_spell(facts.employee_spells, paid_on)
        if spell is None:
            raise NotEligible("no ended employee-insurance spell before the payment")
        counted = spell.continuous_months - (0 if policy.employee_back_payments_count else spell.back_paid_months)
        if counted < policy.employee_min_continuous_months:
            raise NotEligible(
                f"{counted} continuous months of employee insurance (back payments excluded), "
                f"fewer than {policy.employee_min_continuous_months}"
            )
        assert spell.insured_until is not None
        if paid_on <= add_months(spell.insured_until, policy.employee_lapse_months):
            return CoverageTerms(start, year_end, start, rule="cross_scheme")
        waiting = policy.waiting_period_months
        return CoverageTerms(
            start, year_end, add_months(start, waiting), waiting_months=waiting, rule="cross_scheme_waiting"
        )
    if category == "veteran":
        if facts.discharged_on is None or facts.discharged_on.year != paid_on.year:
            raise NotEligible("no discharge from the army registered this year")
        if facts.discharged_as_spouse and not policy.veteran_spouse_included:
            raise NotEligible("the region does not include spouses of discharged soldiers")
        return CoverageTerms(start, year_end, start, rule="veteran")
    if category == "assistance_new":
        if not any(day.year == paid_on.year and day <= paid_on for day in facts.assistance_identified_on):
            raise NotEligible("not newly listed on an assistance roster this year")
        return CoverageTerms(start, year_end, start, rule="assistance_new")
    if policy.late_enrollment_rule == "waiting_period":
        waiting = policy.waiting_period_months
        return CoverageTerms(
            start, year_end, add_months(start, waiting), waiting_months=waiting, rule="late_enrollment"
        )
    raise OutsideEnrollmentPeriod(
        f"{paid_on} is after the concentrated period, and a {category} enrollment may not start then"
    )


def _last_ended_spell(spells: tuple[EmployeeSpell, ...], before: date) -> EmployeeSpell | None:
    ended = [s for s in spells if s.insured_until is not None and s.insured_until < before]
    return max(ended, key=lambda s: s.insured_until or before, default=None)
