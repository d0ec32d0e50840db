"""Policy tables as data: Hefei's figures from the sources, and a made-up region from a file alone."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.policy import (
    DEFAULT_POLICY,
    SUBSIDY_CATEGORIES,
    PolicyError,
    decode_policy,
    load_policy,
    load_policy_dir,
)
from ledger.domain.refusals import NoPolicyForYear, UnknownDistrict

HEFEI = load_policy()
YUAN = 100  # fen

LAKESIDE_DISTRICTS = {"990101": "North Shore", "990102": "South Shore"}


def lakeside_toml(
    *,
    contribution_fen: int = 25_000,
    rates: dict[str, int] | None = None,
    year: int = 2030,
    extra_top: str = "",
    extra_year: str = "",
) -> str:
    """A made-up region "lakeside": two districts, one funding year, its own figures."""
    rates = rates if rates is not None else dict.fromkeys(SUBSIDY_CATEGORIES, 60) | {"dibao": 75}
    rate_lines = "\n".join(f"{category} = {rate}" for category, rate in rates.items())
    district_lines = "\n".join(f'{code} = "{name}"' for code, name in LAKESIDE_DISTRICTS.items())
    return f"""
region = "lakeside"
name = "Lakeside"
version = "lakeside-{year}.3"
enrollment_rate_goal_percent = 97
concentrated_start = "10-01"
concentrated_end = "12-15"
check_up_start = "12-01"
check_up_end = "12-15"
newborn_window_months = 2
late_newborn_rule = "day_after_payment"
late_enrollment_rule = "waiting_period"
waiting_period_months = 3
employee_min_continuous_months = 12
employee_back_payments_count = true
employee_lapse_months = 1
veteran_discharge = "same_year"
veteran_spouse_included = false
cash_remit_days = 7
cash_remit_fen = 5_000_000
duplicate_refund = "individual_share"
{extra_top}

[districts]
{district_lines}

[subsidy_rates]
{rate_lines}

[fraud]
phone_max_people = 3
payer_account_max_people = 4
backdated_days = 10
operator_burst_per_hour = 20
adverse_selection_days = 14

[[funding_years]]
year = {year}
individual_contribution_fen = {contribution_fen}
{extra_year}
"""


def hefei_with(replace: str, by: str) -> str:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    assert replace in text
    return text.replace(replace, by, 1)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# Funding standard (筹资标准) and years


def test_2021_funding_standard_is_900_of_which_individual_320_and_fiscal_580() -> None:
    year = HEFEI.funding_year(2021)

    assert year.individual_contribution_fen == 320 * YUAN
    assert year.fiscal_subsidy_fen == 580 * YUAN
    assert year.funding_standard_fen == 900 * YUAN


def test_the_2021_funding_year_pays_for_coverage_year_2022() -> None:
    assert HEFEI.for_coverage_year(2022) == HEFEI.funding_year(2021)
    assert HEFEI.funding_year(2021).coverage_year == 2022


@pytest.mark.parametrize(
    ("funding_year", "yuan"), [(2016, 120), (2017, 150), (2018, 220), (2019, 250), (2020, 280), (2021, 320)]
)
def test_individual_contributions_follow_the_hefei_history(funding_year: int, yuan: int) -> None:
    assert HEFEI.funding_year(funding_year).individual_contribution_fen == yuan * YUAN


def test_the_fiscal_subsidy_before_2020_is_unset_not_invented() -> None:
    for funding_year in (2016, 2017, 2018, 2019):
        year = HEFEI.funding_year(funding_year)
        assert year.fiscal_subsidy_fen is None
        assert year.funding_standard_fen is None
    assert HEFEI.funding_year(2020).fiscal_subsidy_fen == 550 * YUAN  # 580 - 30


@pytest.mark.parametrize("coverage_year", [2016, 2010, 2023, 2030])
def test_a_coverage_year_no_table_covers_is_refused_not_guessed(coverage_year: int) -> None:
    with pytest.raises(NoPolicyForYear) as refused:
        HEFEI.for_coverage_year(coverage_year)

    assert refused.value.reason == "no_policy_for_year"
    assert "hefei" in refused.value.detail
    assert f"funding year {coverage_year - 1}" in refused.value.detail


def test_every_query_about_an_uncovered_funding_year_is_refused() -> None:
    for query in (
        lambda: HEFEI.concentrated_period(2022),
        lambda: HEFEI.check_up(2022),
        lambda: HEFEI.migrant_extension_end(2022),
        lambda: HEFEI.subsidy_rate(2015, "dibao"),
        lambda: HEFEI.subsidy_fen(2015, "dibao"),
        lambda: HEFEI.individual_share_fen(2015, None),
    ):
        with pytest.raises(NoPolicyForYear):
            query()


def test_the_hefei_table_names_the_version_decisions_record() -> None:
    assert HEFEI.region == "hefei"
    assert HEFEI.name == "合肥市"
    assert HEFEI.version == "hefei-2021.1"
    assert HEFEI.years == (2016, 2017, 2018, 2019, 2020, 2021)


# Calendar (集中参保期, 排查阶段, migrant extension)


def test_the_concentrated_period_runs_from_september_1_to_december_31() -> None:
    assert HEFEI.concentrated_period(2021) == (date(2021, 9, 1), date(2021, 12, 31))


def test_the_check_up_phase_runs_from_december_10_to_december_31() -> None:
    assert HEFEI.check_up(2021) == (date(2021, 12, 10), date(2021, 12, 31))


def test_the_migrant_extension_ends_on_the_last_day_of_february_in_a_leap_year() -> None:
    assert HEFEI.migrant_extension_end(2019) == date(2020, 2, 29)


def test_the_migrant_extension_ends_on_february_28_in_a_common_year() -> None:
    assert HEFEI.migrant_extension_end(2021) == date(2022, 2, 28)


def test_a_region_without_a_migrant_extension_ends_it_with_the_period() -> None:
    lakeside = decode_policy(lakeside_toml())

    assert lakeside.migrant_extension_end(2030) == date(2030, 12, 15)


def test_the_hefei_rules_outside_the_period_are_the_defaults_of_the_sources() -> None:
    assert HEFEI.newborn_window_months == 3
    assert HEFEI.late_newborn_rule == "day_after_payment"
    assert HEFEI.late_enrollment_rule == "refuse"
    assert HEFEI.waiting_period_months == 6
    assert HEFEI.employee_min_continuous_months == 24
    assert HEFEI.employee_back_payments_count is False
    assert HEFEI.employee_lapse_months == 3
    assert HEFEI.veteran_discharge == "same_year"
    assert HEFEI.cash_remit_days == 30
    assert HEFEI.cash_remit_fen == 200_000 * YUAN
    assert HEFEI.duplicate_refund == "individual_share"
    assert HEFEI.enrollment_rate_goal_percent == 99


# Subsidised enrollment (资助参保, 方案 §五(五))


def test_dibao_pays_10_percent_of_320_that_is_32_yuan() -> None:
    assert HEFEI.subsidy_rate(2021, "dibao") == 90
    assert HEFEI.subsidy_fen(2021, "dibao") == 288 * YUAN
    assert HEFEI.individual_share_fen(2021, "dibao") == 32 * YUAN


@pytest.mark.parametrize(
    ("category", "share_yuan"),
    [
        ("extreme_poverty", 0),
        ("scattered_orphan", 0),
        ("family_planning_special", 0),
        ("dibao", 32),
        ("low_income_elderly", 32),
        ("poverty_returned", 64),
        ("poverty_unstable", 160),
        ("monitored_low_income", 160),
        (None, 320),  # stable post-poverty, not monitored: no subsidy any more
    ],
)
def test_2021_individual_shares_follow_the_subsidy_tiers(category: str | None, share_yuan: int) -> None:
    assert HEFEI.individual_share_fen(2021, category) == share_yuan * YUAN


@pytest.mark.parametrize("category", SUBSIDY_CATEGORIES)
@pytest.mark.parametrize("funding_year", HEFEI.years)
def test_share_plus_subsidy_is_the_contribution_in_every_hefei_year(funding_year: int, category: str) -> None:
    contribution = HEFEI.funding_year(funding_year).individual_contribution_fen

    subsidy = HEFEI.subsidy_fen(funding_year, category)

    assert HEFEI.individual_share_fen(funding_year, category) + subsidy == contribution
    assert subsidy * 100 == contribution * HEFEI.subsidy_rate(funding_year, category)  # whole fen


@given(
    contribution_fen=st.integers(min_value=0, max_value=10_000_000),
    rates=st.fixed_dictionaries({category: st.integers(0, 100) for category in SUBSIDY_CATEGORIES}),
    category=st.sampled_from(SUBSIDY_CATEGORIES),
)
def test_share_plus_subsidy_is_the_contribution_for_any_table(
    contribution_fen: int, rates: dict[str, int], category: str
) -> None:
    policy = decode_policy(lakeside_toml(contribution_fen=contribution_fen, rates=rates))

    subsidy = policy.subsidy_fen(2030, category)
    share = policy.individual_share_fen(2030, category)

    assert share + subsidy == contribution_fen
    assert 0 <= subsidy <= contribution_fen
    assert abs(subsidy * 100 - rates[category] * contribution_fen) <= 50  # within half a fen


def test_a_half_fen_subsidy_is_rounded_up() -> None:
    policy = decode_policy(lakeside_toml(contribution_fen=101, rates=dict.fromkeys(SUBSIDY_CATEGORIES, 50)))

    assert policy.subsidy_fen(2030, "dibao") == 51  # 50.5 fen
    assert policy.individual_share_fen(2030, "dibao") == 50


def test_a_funding_year_s_own_rate_overrides_the_region_s() -> None:
    policy = decode_policy(lakeside_toml(extra_year="subsidy_rates = { dibao = 80 }"))

    assert policy.subsidy_rate(2030, "dibao") == 80
    assert policy.subsidy_rate(2030, "poverty_unstable") == 60


# Districts


def test_an_unknown_district_is_refused() -> None:
    assert HEFEI.district_name("340181") == "巢湖市"
    with pytest.raises(UnknownDistrict) as refused:
        HEFEI.district_name("340199")

    assert refused.value.reason == "unknown_district"
    assert "340199" in refused.value.detail


def test_hefei_has_its_nine_districts() -> None:
    assert sorted(HEFEI.districts) == [
        "340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124", "340181",
    ]  # fmt: skip


# Another region: a file, no code


def test_a_second_region_loads_without_code_changes(tmp_path: Path) -> None:
    write(tmp_path, "hefei.toml", DEFAULT_POLICY.read_text(encoding="utf-8"))
    write(tmp_path, "lakeside.toml", lakeside_toml(contribution_fen=25_000))

    book = load_policy_dir(tmp_path)
    lakeside = book.for_district("990102")

    assert set(book.regions) == {"hefei", "lakeside"}
    assert book.region("lakeside") is lakeside
    assert book.for_district("340104").region == "hefei"
    assert lakeside.version == "lakeside-2030.3"
    assert lakeside.district_name("990102") == "South Shore"
    assert lakeside.for_coverage_year(2031).individual_contribution_fen == 250 * YUAN
    assert lakeside.for_coverage_year(2031).fiscal_subsidy_fen is None
    assert lakeside.individual_share_fen(2030, "dibao") == 62 * YUAN + 50  # 25% of 250 yuan
    assert lakeside.concentrated_period(2030) == (date(2030, 10, 1), date(2030, 12, 15))
    assert lakeside.late_enrollment_rule == "waiting_period"
    assert lakeside.waiting_period_months == 3
    with pytest.raises(NoPolicyForYear):
        lakeside.for_coverage_year(2022)
    with pytest.raises(UnknownDistrict):
        book.for_district("990103")


def test_a_district_claimed_by_two_regions_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "hefei.toml", DEFAULT_POLICY.read_text(encoding="utf-8"))
    write(tmp_path, "lakeside.toml", lakeside_toml().replace("990102", "340104"))

    with pytest.raises(PolicyError, match="340104"):
        load_policy_dir(tmp_path)


def test_a_directory_without_policy_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no \*\.toml policy files"):
        load_policy_dir(tmp_path)


# Mistakes in a policy file


def test_a_policy_file_with_an_unknown_field_is_refused_with_its_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "hefei.toml",
        hefei_with("individual_contribution_fen = 32_000", "individual_contribtion_fen = 32_000"),
    )

    with pytest.raises(PolicyError) as refused:
        load_policy(path)

    assert refused.value.field == "funding_years[5].individual_contribtion_fen"
    assert str(path) in str(refused.value)
    assert "individual_contribtion_fen" in str(refused.value)


def test_a_misspelt_top_level_field_is_refused_with_its_name(tmp_path: Path) -> None:
    path = write(tmp_path, "hefei.toml", hefei_with("waiting_period_months = 6", "waiting_period_month = 6"))

    with pytest.raises(PolicyError) as refused:
        load_policy(path)

    assert refused.value.field == "waiting_period_month"


def test_a_policy_file_missing_a_figure_is_refused_with_its_name(tmp_path: Path) -> None:
    path = write(tmp_path, "hefei.toml", hefei_with("employee_lapse_months = 3\n", ""))

    with pytest.raises(PolicyError) as refused:
        load_policy(path)

    assert refused.value.field == "employee_lapse_months"
    assert refused.value.problem == "missing"


def test_a_subsidy_category_without_a_rate_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "hefei.toml", hefei_with("monitored_low_income = 50", ""))

    with pytest.raises(PolicyError, match="monitored_low_income") as refused:
        load_policy(path)

    assert refused.value.field == "subsidy_rates"


@pytest.mark.parametrize(
    ("replace", "by", "field"),
    [
        ("dibao = 90", "dibao = 190", "subsidy_rates.dibao"),
        ("dibao = 90", "dibo = 90", "subsidy_rates.dibo"),
        ("individual_contribution_fen = 32_000", "individual_contribution_fen = -1", None),
        ('check_up_start = "12-10"', 'check_up_start = "08-10"', "check_up_start"),
        ('concentrated_start = "09-01"', 'concentrated_start = "02-29"', "concentrated_start"),
        ('concentrated_end = "12-31"', 'concentrated_end = "31-12"', "concentrated_end"),
        ('late_enrollment_rule = "refuse"', 'late_enrollment_rule = "guess"', "late_enrollment_rule"),
        ('340102 = "瑶海区"', '3401 = "瑶海区"', "districts.3401"),
        ("year = 2017", "year = 2016", "funding_years"),
        ('version = "hefei-2021.1"', "", "version"),
    ],
)
def test_a_figure_that_breaks_the_table_s_rules_is_refused_naming_its_field(
    tmp_path: Path, replace: str, by: str, field: str | None
) -> None:
    path = write(tmp_path, "hefei.toml", hefei_with(replace, by))

    with pytest.raises(PolicyError) as refused:
        load_policy(path)

    if field is None:  # a row of funding_years: the message names its index
        assert refused.value.field == "funding_years[5].individual_contribution_fen"
    else:
        assert refused.value.field == field
    assert str(path) in str(refused.value)


def test_a_file_that_is_not_toml_is_refused_with_its_name(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.toml", "region = \n")

    with pytest.raises(PolicyError, match=r"broken\.toml: not valid TOML"):
        load_policy(path)


def test_the_policy_tables_are_frozen() -> None:
    with pytest.raises(AttributeError):
        HEFEI.version = "hefei-2099.1"  # type: ignore[misc]


def test_the_funding_year_collected_is_this_years_from_the_concentrated_periods_start() -> None:
    """Given Hefei's period (September 1 – December 31), then on August 31 the money collected is
    still last funding year's (migrants, people outside the period), and from September 1 this
    year's."""
    from datetime import date

    from ledger.domain.policy import DEFAULT_POLICY, load_policy

    policy = load_policy(DEFAULT_POLICY)
    assert policy.current_funding_year(date(2026, 8, 31)) == 2025
    assert policy.current_funding_year(date(2026, 9, 1)) == 2026
    assert policy.current_funding_year(date(2026, 12, 31)) == 2026
