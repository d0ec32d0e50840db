"""Policy tables as data: one TOML file per region, one row per funding year (the policy §1, §3–5).

A region's file holds everything the rules read that a region may set: the funding standard per
funding year (筹资标准: individual contribution and fiscal subsidy), the assistance-fund subsidy
rates per category (资助参保), the enrollment calendar (集中参保期, 排查阶段, the migrant extension),
the newborn window, the rules for late newborns and late enrollment, the cross-scheme transfer
conditions (跨制度参保衔接), the waiting period (等待期), the cash remittance limits, the duplicate
refund rule, the enrollment-rate goal and the fraud-flag thresholds.

Each file carries a ``version``; every decision event records the version it applied. A second
region is a second file: no code changes. A fact for a funding year no table covers is refused
with ``no_policy_for_year``: never guessed. Figures the sources do not give (the fiscal subsidy
before 2020) stay unset (``None``) rather than invented.

Money is integer fen (1 yuan = 100 fen), rates are integer percent (0–100), calendar dates are
``"MM-DD"`` strings within the funding year. The structs are frozen and refuse unknown fields, so
a typo in a policy file is an error naming the file and the field, not a silently ignored line.
"""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Final, Literal, get_args

import msgspec

from ledger.domain.refusals import Malformed, UnknownDistrict
from ledger.domain.refusals import NoPolicyForYear as NoPolicyForYear  # re-exported: what the policy's queries raise

DEFAULT_POLICY: Final = Path(__file__).resolve().parents[2] / "deploy" / "policy" / "hefei.toml"
"""The Hefei policy file (合肥市), the ledger's default region."""

SubsidyCategory = Literal[
    "extreme_poverty",  # 特困供养人员
    "scattered_orphan",  # 社会散居孤儿
    "family_planning_special",  # 计划生育特殊家庭父母
    "dibao",  # 低保对象
    "low_income_elderly",  # 低收入家庭老年人
    "poverty_returned",  # 返贫致贫人口
    "poverty_unstable",  # 脱贫不稳定人口
    "monitored_low_income",  # 纳入农村低收入人口监测范围的人口
]
SUBSIDY_CATEGORIES: Final[tuple[str, ...]] = get_args(SubsidyCategory)
"""The contract's ``subsidy_category`` values; every region's table gives a rate for each."""

Fen = Annotated[int, msgspec.Meta(ge=0)]
Months = Annotated[int, msgspec.Meta(ge=0, le=120)]
Days = Annotated[int, msgspec.Meta(ge=1, le=3660)]
Count = Annotated[int, msgspec.Meta(ge=1)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
Year = Annotated[int, msgspec.Meta(ge=1900, le=2200)]
MonthDay = Annotated[str, msgspec.Meta(pattern=r"^\d{2}-\d{2}$")]
"""A day of the year as ``"MM-DD"``; Feb 29 is refused (it is not a day of every year)."""

_DIVISION_CODE = re.compile(r"^\d{6}$")


class PolicyError(ValueError):
    """Raised when a policy file cannot be read or breaks a rule of the table's layout.

    ``source`` names the file, ``field`` the offending field as a path into the file
    (``funding_years[2].individual_contribution_fen``), or ``None`` when the whole file is at fault.
    """

    def __init__(self, source: str, field: str | None, problem: str) -> None:
        super().__init__(f"{source}: {field}: {problem}" if field else f"{source}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A part of a policy file: immutable, and a field the schema does not name is an error.

    Subclasses inherit both settings; they repeat ``frozen=True`` for type checkers, which (after
    PEP 681) would read a subclass without it as mutable.
    """


class FraudThresholds(_Table, frozen=True):
    """When the audit flags a pattern (the policy §8; national 医保发〔2021〕32号 §六 "三假").

    All [choice] defaults of this project, not figures from the sources.
    """

    phone_max_people: Count
    """Flag a phone number behind more than this many people of different households (§8.7)."""
    payer_account_max_people: Count
    """Flag a payer account that paid for more than this many people of different households."""
    backdated_days: Days
    """Flag an effect dated more than this many days before the ledger recorded it (§8.2)."""
    operator_burst_per_hour: Count
    """Flag an operator recording more than this many enrollments within one hour (§8.8)."""
    adverse_selection_days: Days
    """Flag heavy use of coverage within this many days of an outside-period enrollment (§8.9)."""


class FundingYear(_Table, frozen=True):
    """The funding standard of one funding year (筹资年度) F, which covers year F+1."""

    year: Year
    individual_contribution_fen: Fen
    """个人缴费标准."""
    fiscal_subsidy_fen: Fen | None = None
    """财政补助标准: ``None`` where the sources do not give it (reports say so, never invent it)."""
    subsidy_rates: dict[str, int] | None = None
    """Rates that differ from the region's ``subsidy_rates`` in this year only (a subset)."""

    def __post_init__(self) -> None:
        if self.subsidy_rates is not None:
            _check_rates("subsidy_rates", self.subsidy_rates, complete=False)

    @property
    def coverage_year(self) -> int:
        """The year this funding year pays for (待遇享受期 = 筹资下一年度, 皖医保发〔2021〕7号 (二))."""
        return self.year + 1

    @property
    def funding_standard_fen(self) -> int | None:
        """Total funding per person (筹资标准) = fiscal subsidy + individual contribution, when both
        are known."""
        if self.fiscal_subsidy_fen is None:
            return None
        return self.fiscal_subsidy_fen + self.individual_contribution_fen


class RegionPolicy(_Table, frozen=True, kw_only=True):
    """The policy table of one region (统筹地区): the decision rules' parameters, with a version.

    Region-wide values apply to every funding year in ``funding_years``; a funding year absent
    from it has no policy at all, and every query about it raises ``NoPolicyForYear``.
    """

    region: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$")]
    """Machine name, e.g. ``hefei``."""
    name: Annotated[str, msgspec.Meta(min_length=1)]
    """Display name, e.g. ``合肥市``."""
    version: Annotated[str, msgspec.Meta(min_length=1)]
    """Recorded by every decision event that used this table, e.g. ``hefei-2021.1``."""

    enrollment_rate_goal_percent: Percent
    """参保率 target (the policy §7)."""

    concentrated_start: MonthDay
    """集中参保期 start, in the funding year."""
    concentrated_end: MonthDay
    check_up_start: MonthDay
    """排查阶段: compare with last year's enrollees and remind the missing; within the period."""
    check_up_end: MonthDay
    migrant_extension_until_month: Annotated[int, msgspec.Meta(ge=1, le=12)] | None = None
    """农村外出务工人员 may pay until the last day of this month of F+1; absent: no extension."""

    newborn_window_months: Months
    """新生儿 enrolled and paid within this many months of birth are covered from birth."""
    late_newborn_rule: Literal["day_after_payment"]
    """A newborn enrolled after that window: covered from the day after payment, no waiting."""
    late_enrollment_rule: Literal["refuse", "waiting_period"]
    """Anyone else outside the period: refused (``outside_enrollment_period``), or enrolled from
    the day after payment behind ``waiting_period_months``."""
    waiting_period_months: Months
    """待遇享受等待期 length (0: none)."""

    employee_min_continuous_months: Months
    """职工医保 months that let a lapsed employee member enroll outside the period."""
    employee_back_payments_count: bool
    """Whether back payments (补缴) count towards those continuous months."""
    employee_lapse_months: Months
    """A lapse (中断缴费) up to this many months means no waiting period; longer, the waiting period."""

    veteran_discharge: Literal["same_year"]
    """Soldiers discharged (退出现役) in the year they enroll may enroll outside the period."""
    veteran_spouse_included: bool
    """Whether their non-working spouses who followed them (随军未就业配偶) may too."""

    cash_remit_days: Days
    """Cash collected by a committee must reach the tax office within this many days …"""
    cash_remit_fen: Fen
    """… or as soon as the cash held reaches this amount."""

    duplicate_refund: Literal["individual_share"]
    """What a cancelled duplicate enrollment refunds: the individual share paid."""

    districts: dict[str, str]
    """Division code (GB/T 2260) → district name: the region's districts."""
    subsidy_rates: dict[str, int]
    """Assistance-fund (医疗救助基金) share of the individual contribution, percent, per category."""
    fraud: FraudThresholds
    funding_years: tuple[FundingYear, ...]

    def __post_init__(self) -> None:
        if not self.districts:
            raise ValueError("districts: a region needs at least one district")
        for code, district in self.districts.items():
            if not _DIVISION_CODE.match(code):
                raise ValueError(f"districts.{code}: not a 6-digit division code")
            if not district:
                raise ValueError(f"districts.{code}: the district name is empty")
        _check_rates("subsidy_rates", self.subsidy_rates, complete=True)
        start = _month_day("concentrated_start", self.concentrated_start)
        end = _month_day("concentrated_end", self.concentrated_end)
        if start > end:
            raise ValueError("concentrated_end: before concentrated_start")
        check_start = _month_day("check_up_start", self.check_up_start)
        check_end = _month_day("check_up_end", self.check_up_end)
        if not start <= check_start <= check_end <= end:
            raise ValueError("check_up_start: the check-up phase must lie within the concentrated period")
        if not self.funding_years:
            raise ValueError("funding_years: a policy needs at least one funding year")
        seen: set[int] = set()
        for row in self.funding_years:
            if row.year in seen:
                raise ValueError(f"funding_years: funding year {row.year} appears more than once")
            seen.add(row.year)

    @property
    def years(self) -> tuple[int, ...]:
        """The funding years this table covers, in order."""
        return tuple(sorted(row.year for row in self.funding_years))

    def funding_year(self, year: int) -> FundingYear:
        """The funding standard of funding year ``year``; raises ``NoPolicyForYear`` if the table
        does not cover it."""
        for row in self.funding_years:
            if row.year == year:
                return row
        raise NoPolicyForYear(
            f"{self.region} ({self.version}) has no table for funding year {year} "
            f"(coverage year {year + 1}); it covers funding years {', '.join(map(str, self.years))}"
        )

    def current_funding_year(self, day: date) -> int:
        """The funding year whose money is collected on ``day``: from the concentrated period's
        start the year of ``day``, before it the year before (its migrant extension and the
        enrollments outside the period still pay into it)."""
        start = _on(day.year, self.concentrated_start)  # whether or not the year has a table
        return day.year if day >= start else day.year - 1

    def for_coverage_year(self, coverage_year: int) -> FundingYear:
        """The funding year that pays for ``coverage_year``: ``coverage_year - 1`` (contract)."""
        return self.funding_year(coverage_year - 1)

    def concentrated_period(self, funding_year: int) -> tuple[date, date]:
        """集中参保期, first and last day (合肥市2021年方案 §四: 9月1日至12月31日)."""
        self.funding_year(funding_year)
        return (
            _on(funding_year, self.concentrated_start),
            _on(funding_year, self.concentrated_end),
        )

    def check_up(self, funding_year: int) -> tuple[date, date]:
        """排查阶段, first and last day (合肥市2021年方案 §六(三): 12月10日至12月31日)."""
        self.funding_year(funding_year)
        return _on(funding_year, self.check_up_start), _on(funding_year, self.check_up_end)

    def migrant_extension_end(self, funding_year: int) -> date:
        """Last day migrant rural workers may pay: the end of ``migrant_extension_until_month`` of
        F+1, so Feb 28 or Feb 29 (皖医保发〔2021〕7号 (二): 筹资时间可延长到2022年2月底). Without
        an extension, the last day of the concentrated period."""
        period_end = self.concentrated_period(funding_year)[1]
        month = self.migrant_extension_until_month
        if month is None:
            return period_end
        year = funding_year + 1
        return date(year, month, monthrange(year, month)[1])

    def subsidy_rate(self, funding_year: int, category: str) -> int:
        """The assistance fund's share of the individual contribution for ``category``, percent
        (合肥市2021年方案 §五(五)); a funding year's own rate overrides the region's."""
        row = self.funding_year(funding_year)
        if category not in SUBSIDY_CATEGORIES:
            raise Malformed(f"unknown subsidy category {category!r}; one of {', '.join(SUBSIDY_CATEGORIES)}")
        if row.subsidy_rates is not None and category in row.subsidy_rates:
            return row.subsidy_rates[category]
        return self.subsidy_rates[category]

    def subsidy_fen(self, funding_year: int, category: str) -> int:
        """The assistance-fund subsidy (定额资助): rate × individual contribution / 100, rounded
        half up to the fen (a half fen goes to the person)."""
        contribution = self.funding_year(funding_year).individual_contribution_fen
        return (self.subsidy_rate(funding_year, category) * contribution + 50) // 100

    def individual_share_fen(self, funding_year: int, category: str | None) -> int:
        """What the person pays (个人负担): the contribution minus the subsidy; everyone without a
        subsidy category (including stable post-poverty people not monitored) pays it all."""
        contribution = self.funding_year(funding_year).individual_contribution_fen
        if category is None:
            return contribution
        return contribution - self.subsidy_fen(funding_year, category)

    def district_name(self, code: str) -> str:
        """The name of district ``code``; raises ``UnknownDistrict`` if it is not the region's."""
        try:
            return self.districts[code]
        except KeyError:
            raise UnknownDistrict(f"{code!r} is not a district of {self.region} ({self.name})") from None


class PolicyBook:
    """The policies of several regions, by region name and by district code."""

    def __init__(self, policies: Iterable[RegionPolicy]) -> None:
        self._regions: dict[str, RegionPolicy] = {}
        self._by_district: dict[str, RegionPolicy] = {}
        for policy in policies:
            if policy.region in self._regions:
                raise ValueError(f"two policies for region {policy.region!r}")
            self._regions[policy.region] = policy
            for code in policy.districts:
                if code in self._by_district:
                    other = self._by_district[code].region
                    raise ValueError(f"district {code} belongs to both {other} and {policy.region}")
                self._by_district[code] = policy

    @property
    def regions(self) -> Mapping[str, RegionPolicy]:
        """Region name → policy."""
        return dict(self._regions)

    def region(self, name: str) -> RegionPolicy:
        """The policy of region ``name``; raises ``KeyError`` naming the regions loaded."""
        try:
            return self._regions[name]
        except KeyError:
            raise KeyError(f"no policy for region {name!r}; loaded: {', '.join(self._regions)}") from None

    def for_district(self, code: str) -> RegionPolicy:
        """The policy of the region district ``code`` belongs to; raises ``UnknownDistrict``."""
        try:
            return self._by_district[code]
        except KeyError:
            raise UnknownDistrict(
                f"{code!r} is not a district of any region loaded ({', '.join(self._regions)})"
            ) from None


def decode_policy(data: bytes | str, source: str = "<policy>") -> RegionPolicy:
    """A region's policy from TOML text; raises ``PolicyError`` naming ``source`` and the field."""
    try:
        return msgspec.toml.decode(data, type=RegionPolicy)
    except msgspec.ValidationError as error:
        raise PolicyError(source, *_locate(str(error))) from None
    except msgspec.DecodeError as error:
        raise PolicyError(source, None, f"not valid TOML: {error}") from None


def load_policy(path: Path | str = DEFAULT_POLICY) -> RegionPolicy:
    """A region's policy from the TOML file at ``path`` (by default Hefei's)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PolicyError(str(path), None, f"cannot be read: {error.strerror}") from None
    return decode_policy(data, str(path))


def load_policy_dir(path: Path | str) -> PolicyBook:
    """Every region's policy from the ``*.toml`` files in directory ``path``."""
    path = Path(path)
    files = sorted(path.glob("*.toml"))
    if not files:
        raise PolicyError(str(path), None, "no *.toml policy files in this directory")
    policies = [load_policy(file) for file in files]
    try:
        return PolicyBook(policies)
    except ValueError as error:
        raise PolicyError(str(path), None, str(error)) from None


def _check_rates(field: str, rates: dict[str, int], *, complete: bool) -> None:
    for category, rate in rates.items():
        if category not in SUBSIDY_CATEGORIES:
            known = ", ".join(SUBSIDY_CATEGORIES)
            raise ValueError(f"{field}.{category}: not a subsidy category; one of {known}")
        if not 0 <= rate <= 100:
            raise ValueError(f"{field}.{category}: {rate!r} is not a whole percent from 0 to 100")
    if complete:
        missing = [category for category in SUBSIDY_CATEGORIES if category not in rates]
        if missing:
            raise ValueError(f"{field}: no rate for {', '.join(missing)} (0 if none is granted)")


def _month_day(field: str, text: str) -> tuple[int, int]:
    month, day = int(text[:2]), int(text[3:])
    if not (1 <= month <= 12 and 1 <= day <= monthrange(2001, month)[1]):  # 2001: not a leap year
        raise ValueError(f"{field}: {text!r} is not a day of every year (MM-DD)")
    return month, day


def _on(year: int, month_day: str) -> date:
    return date(year, int(month_day[:2]), int(month_day[3:]))


_OWN_FIELD = re.compile(r"^(?P<field>[\w.\[\]]+): (?P<problem>.*)$", re.DOTALL)
_NAMED_FIELD = re.compile(r"^Object (?P<what>contains unknown|missing required) field `(?P<field>[^`]+)`$")


def _locate(message: str) -> tuple[str | None, str]:
    """(field path, problem) from a msgspec validation message ``"<problem> - at `$.a.b`"`` (no
    location at the top level); the checks in ``__post_init__`` above name their field as
    ``"<field>: <problem>"``."""
    problem, at, location = message.rpartition(" - at `$")
    if not at:
        problem, location = message, ""
    base = location.removesuffix("`").removeprefix(".")
    field = None
    if own := _OWN_FIELD.match(problem):
        field, problem = own["field"], own["problem"]
    elif named := _NAMED_FIELD.match(problem):
        field = named["field"]
        problem = "unknown field (a typo?)" if named["what"] == "contains unknown" else "missing"
    parts = [part for part in (base, field) if part]
    return (".".join(parts) or None), problem
