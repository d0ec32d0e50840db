"""The demo season (``simulation.season``): deterministic, every message as the contract says,
the documented mix of people, and, applied to a real ``Ledger`` in memory, exactly the refusals
it announces; the fraud rules then flag exactly the cases it planted.

Figures checked against (the contribution, the 30 days of the cash rule, the fraud thresholds)
are written out from ``deploy/policy/hefei.toml``, never read back from the policy object.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from eventsourcing.persistence import Tracking

from consumers.commands import apply
from contract.messages import SCHEMAS, decode
from ledger.application import Ledger
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.refusals import Malformed, Refusal
from projections.database import Database
from projections.fraud import RULES
from projections.projection import LedgerProjection
from projections.views import LedgerViews
from simulation.season import Season, simulate

Y = 2022
"""The coverage year Hefei's table ends with (funding year 2021)."""
STANDARD_Y = 32_000
"""个人缴费 for 2022, in fen (320 yuan)."""
SHARE_Y = {
    # What the person still pays of 320 yuan (方案 §五(五)), in fen.
    "extreme_poverty": 0, "scattered_orphan": 0, "family_planning_special": 0,
    "dibao": 3_200, "low_income_elderly": 3_200, "poverty_returned": 6_400,
    "poverty_unstable": 16_000, "monitored_low_income": 16_000,
}  # fmt: skip
CASH_REMIT_DAYS = 30
HEFEI_DISTRICTS = {"340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124", "340181"}
PLANTED_KINDS = {
    "payment_after_death": "after_death",
    "shared_phone": "shared_contact",
    "shared_account": "shared_contact",
    "cash_never_remitted": "cash_unremitted",
    "reused_receipt": "receipt_reused",
    "operator_burst": "operator_anomaly",
}
SECRET = b"demo-secret-demo-secret"
TIME_FIELDS = ("occurred_at", "paid_at", "remitted_at")


def body_bytes(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def bad_reasons(season: Season) -> dict[str, str]:
    return {b.msg_id: b.reason for b in season.bad_input}


def accepted(season: Season, subject: str) -> list[dict]:
    """The bodies of ``subject`` the ledger is meant to accept."""
    bad = bad_reasons(season)
    return [m.body for m in season.messages if m.subject == subject and m.body["msg_id"] not in bad]


@pytest.fixture(scope="module")
def season() -> Season:
    return simulate(500, seed=2021)


# ---- deterministic ---------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_season_and_another_seed_another() -> None:
    first, again, other = simulate(300, seed=7), simulate(300, seed=7), simulate(300, seed=8)
    assert first.messages == again.messages
    assert (first.planted, first.bad_input) == (again.planted, again.bad_input)
    assert first.messages != other.messages


def test_a_season_too_small_to_hold_every_case_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        simulate(100)


# ---- every message as the contract says -------------------------------------------------------


def test_every_message_decodes_with_its_subjects_schema_except_the_malformed_ones(season: Season) -> None:
    reasons = bad_reasons(season)
    assert {m.subject for m in season.messages} == set(SCHEMAS)
    for message in season.messages:
        data = body_bytes(message.body)
        if reasons.get(message.body["msg_id"]) == "malformed":
            with pytest.raises(Malformed):
                decode(message.subject, data)
        else:
            assert type(decode(message.subject, data)) is SCHEMAS[message.subject]


def test_bodies_are_json_with_dates_times_in_china_time_and_money_in_fen(season: Season) -> None:
    for message in season.messages:
        assert json.loads(body_bytes(message.body)) == message.body
        for name in TIME_FIELDS:
            if name in message.body:
                moment = datetime.fromisoformat(message.body[name])
                assert moment.utcoffset() == timedelta(hours=8), (name, message.body)
                assert message.body[name].endswith("+08:00")
        if "amount_fen" in message.body:
            assert type(message.body["amount_fen"]) is int


def test_id_numbers_are_valid_except_the_mistyped_ones(season: Season) -> None:
    reasons = bad_reasons(season)
    invalid = 0
    for message in season.messages:
        today = datetime.fromisoformat(message.body["occurred_at"]).date()
        for name in ("id_number", "spouse_id_number"):
            if name not in message.body:
                continue
            if reasons.get(message.body["msg_id"]) == "invalid_id_number":
                invalid += 1
                with pytest.raises(Refusal):
                    ResidentId.parse(message.body[name], today=today)
            else:
                ResidentId.parse(message.body[name], today=today)
    assert invalid == sum(1 for reason in reasons.values() if reason == "invalid_id_number") >= 1


def test_messages_are_in_the_order_they_occurred(season: Season) -> None:
    times = [datetime.fromisoformat(m.body["occurred_at"]) for m in season.messages]
    assert times == sorted(times)


def test_each_person_is_registered_before_enrolling_and_enrolls_before_paying(season: Season) -> None:
    registered: set[str] = set()
    enrolled: set[str] = set()
    for message in season.messages:
        body = message.body
        if message.subject == "upstream.person.registered" and "name" in body:
            registered.add(body["id_number"])
        elif message.subject == "upstream.enrollment.requested" and "district" in body:
            assert body["id_number"] in registered or body["msg_id"] in bad_reasons(season)
            enrolled.add(body["id_number"])
        elif message.subject == "upstream.payment.received" and body["msg_id"] not in bad_reasons(season):
            assert body["id_number"] in enrolled


def test_msg_ids_are_unique_and_every_expected_refusal_names_a_message(season: Season) -> None:
    ids = [m.body["msg_id"] for m in season.messages]
    assert len(ids) == len(set(ids))
    assert {b.msg_id for b in season.bad_input} <= set(ids)
    assert len(season.bad_input) == len({b.msg_id for b in season.bad_input})


# ---- the mix of people -------------------------------------------------------------------------


def test_every_planted_kind_is_present_at_500_people_with_the_rule_that_catches_it(season: Season) -> None:
    assert {(p.kind, p.rule) for p in season.planted} == set(PLANTED_KINDS.items())
    assert {p.rule for p in season.planted} <= set(RULES)
    for planted in season.planted:
        assert (planted.id_number is None) == (planted.subject_key_hint is not None), planted
        assert planted.description


def test_planted_cases_scale_with_the_population() -> None:
    kinds = Counter(p.kind for p in simulate(4_000, seed=1).planted)
    assert kinds == {kind: 2 for kind in PLANTED_KINDS}


def test_every_expected_reason_is_present(season: Season) -> None:
    assert {b.reason for b in season.bad_input} == {
        "amount_mismatch", "invalid_id_number", "outside_enrollment_period", "no_enrollment", "malformed",
        "duplicate_receipt", "deceased",
    }  # fmt: skip


def test_shares_are_roughly_as_documented() -> None:
    season = simulate(5_000, seed=3)
    people = season.people

    def share(count: float) -> float:
        return count / people

    channels = Counter(body["channel"] for body in accepted(season, "upstream.enrollment.requested"))
    assert share(channels["wechat"]) == pytest.approx(0.59, abs=0.03)
    assert share(channels["community_qr"]) == pytest.approx(0.12, abs=0.02)
    assert share(channels["community_cash"]) == pytest.approx(0.10, abs=0.02)
    for channel, expected in (("tax", 0.05), ("school", 0.05), ("university", 0.04)):
        assert share(channels[channel]) == pytest.approx(expected, abs=0.01)
    categories = Counter(body["category"] for body in accepted(season, "upstream.enrollment.requested"))
    assert share(categories["newborn"]) == pytest.approx(0.006, abs=0.003)
    assert share(categories["cross_scheme"]) == pytest.approx(0.008, abs=0.004)
    assert share(len({b["id_number"] for b in accepted(season, "upstream.subsidy.listed")})) == pytest.approx(
        0.04, abs=0.01
    )
    deaths = accepted(season, "upstream.death.registered")
    assert share(len(deaths)) == pytest.approx(0.005 + 1 / 2000, abs=0.002)
    assert 0.02 <= share(len(season.bad_input)) <= 0.03
    registered = {b["id_number"] for b in accepted(season, "upstream.person.registered")}
    assert len(registered) == people


def test_every_district_gets_a_target_near_its_population(season: Season) -> None:
    targets = {b["district"]: b["target_count"] for b in accepted(season, "upstream.target.set")}
    assert set(targets) == HEFEI_DISTRICTS
    population = Counter(b["district"] for b in accepted(season, "upstream.person.registered"))
    for district, target in targets.items():
        assert population[district] * 0.9 <= target <= population[district] / 0.97 + 1


def test_fully_subsidised_people_send_no_enrollment_and_the_others_owe_their_share(season: Season) -> None:
    rosters: dict[str, list[str]] = defaultdict(list)
    for body in accepted(season, "upstream.subsidy.listed"):
        rosters[body["id_number"]].append(body["subsidy_category"])
    enrolled = {b["id_number"] for b in accepted(season, "upstream.enrollment.requested")}
    owed = {
        b["id_number"]: b["amount_fen"]
        for b in accepted(season, "upstream.payment.received")
        if b["coverage_year"] == Y
    }
    full = [n for n, categories in rosters.items() if min(SHARE_Y[c] for c in categories) == 0]
    partial = [n for n in rosters if n not in full and n in owed]
    assert full and partial
    assert not enrolled & set(full)
    for number in partial:
        assert owed[number] == min(SHARE_Y[c] for c in rosters[number])
    for number, amount in owed.items():
        if number not in rosters:
            assert amount == STANDARD_Y


def test_cash_is_remitted_within_30_days_except_by_the_committees_planted_as_keeping_it(season: Season) -> None:
    keeping = {
        (p.subject_key_hint or "").removeprefix("collector:") for p in season.planted if p.kind == "cash_never_remitted"
    }
    remitted = {}
    for body in accepted(season, "upstream.cash.remitted"):
        for receipt in body["receipt_nos"]:
            remitted[receipt] = datetime.fromisoformat(body["remitted_at"])
    kept = 0
    for body in accepted(season, "upstream.payment.received"):
        if body["channel"] != "community_cash":
            continue
        taken = datetime.fromisoformat(body["paid_at"])
        if body["receipt_no"] in remitted:
            assert (remitted[body["receipt_no"]].date() - taken.date()).days <= CASH_REMIT_DAYS
        else:
            assert body["collector_id"] in keeping
            kept += 1
    assert kept >= 1


# ---- end to end: the ledger's verdicts and the fraud rules ------------------------------------------


@dataclass
class Applied:
    season: Season
    ledger: Ledger
    reasons: dict[str, str | None]
    """Each message's rejection reason, ``None`` when it was recorded."""
    rejections: list[tuple[str, str | None, str]]
    """(reason, person key, detail) of each refusal, in order: what REJECTED would hold."""


@pytest.fixture(scope="module")
def applied(season: Season) -> Iterator[Applied]:
    """The season fed in order through ``consumers.commands.apply`` into an in-memory ledger."""
    ledger = Ledger({}, keyer=PersonKeyer(SECRET))
    reasons: dict[str, str | None] = {}
    rejections: list[tuple[str, str | None, str]] = []
    for message in season.messages:
        msg_id = message.body["msg_id"]
        try:
            outcome = apply(ledger, decode(message.subject, body_bytes(message.body)))
        except Refusal as refusal:
            reasons[msg_id] = refusal.reason
            rejections.append((refusal.reason, _person_key(ledger, message.body), refusal.detail))
            continue
        reasons[msg_id] = "duplicate" if outcome.duplicate else None
    yield Applied(season, ledger, reasons, rejections)
    ledger.close()


def _person_key(ledger: Ledger, body: dict) -> str | None:
    try:
        return ledger.keyer(body.get("id_number", ""))
    except Refusal:
        return None


def test_the_ledger_refuses_exactly_the_bad_input_with_its_reason_and_accepts_everything_else(
    applied: Applied,
) -> None:
    expected = bad_reasons(applied.season)
    unexpected = [
        (m.subject, m.body["msg_id"], expected.get(m.body["msg_id"]), applied.reasons[m.body["msg_id"]])
        for m in applied.season.messages
        if applied.reasons[m.body["msg_id"]] != expected.get(m.body["msg_id"])
    ]
    assert unexpected == []


def test_the_season_covers_about_95_percent_of_each_target_through_every_rule_of_coverage(applied: Applied) -> None:
    season, ledger = applied.season, applied.ledger
    people = {b["id_number"]: b["district"] for b in accepted(season, "upstream.person.registered")}
    targets = {b["district"]: b["target_count"] for b in accepted(season, "upstream.target.set")}
    enrolled: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    for number, district in people.items():
        person = ledger.person(number)
        assert person is not None
        enrollment = person.enrollments.get(Y)
        if enrollment is None or enrollment.terms is None:
            continue
        rules[enrollment.terms.rule] += 1
        if enrollment.status == "enrolled" or enrollment.ended_reason == "death":
            enrolled[district] += 1
    rate = sum(enrolled.values()) / sum(targets.values())
    assert 0.90 <= rate <= 1.0
    assert set(rules) == {
        "concentrated_period", "university_new", "migrant_extension", "newborn", "newborn_late", "cross_scheme",
        "cross_scheme_waiting", "veteran", "assistance_new",
    }  # fmt: skip
    auto = [p for p in map(ledger.person, people) if p and Y in p.enrollments and p.enrollments[Y].channel == "auto"]
    assert auto and all(p.enrollments[Y].status in ("enrolled", "ended") for p in auto)


def test_the_fraud_rules_flag_every_planted_case_and_nothing_else_of_their_rules(applied: Applied) -> None:
    # Given the ledger's events and refusals, projected as ``ledger serve`` does (SQLite views)
    season, ledger = applied.season, applied.ledger
    views = LedgerViews(Database.open("sqlite:///:memory:"))
    try:
        projection = LedgerProjection.configured(
            policy=ledger.policy, load=lambda aggregate_id, version: ledger.repository.get(aggregate_id, version=version)
        )(views)  # fmt: skip
        for item in ledger.recorder.select_notifications(start=1, limit=10**9):
            projection.process_event(ledger.mapper.to_domain_event(item), Tracking(ledger.name, item.id))
        for seq, (reason, key, detail) in enumerate(applied.rejections, start=1):
            projection.fraud.on_rejection(reason, key, seq, detail, None)
        views.commit()
        flags = views.db.query("SELECT rule, subject_key FROM flags")
    finally:
        views.close()
    # Then each planted case is flagged by its rule, about its subject
    planted = {(p.rule, p.subject_key_hint or ledger.keyer(p.id_number or "")) for p in season.planted}
    assert planted <= set(flags)
    # and those rules flag nothing that was not planted
    planted_rules = {rule for rule, _ in planted}
    assert {flag for flag in flags if flag[0] in planted_rules} == planted
    assert not {rule for rule, _ in flags} & {"double_enrollment", "subsidy_mismatch"}
