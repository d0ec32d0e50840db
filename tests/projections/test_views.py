"""The views (domain.md §6–8): coverage, waiting periods, audit trail, reports, and replay.

Every test runs on SQLite and on PostgreSQL (``views_url``), against a real nats-server. Facts go
through the ``Ledger`` as upstream messages would; the views are read back with the report
queries the CLI uses. Coverage year 2022 (funding year 2021: 320 yuan); the concentrated period
for it is Sep 1 – Dec 31, 2021.
"""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest

from ledger.application import Actor
from ledger.commands import RemitCash, SetTarget
from projections import reports
from projections.database import Database
from projections.runner import Projections
from tests.projections.support import World, another_url, drop_schema, dump, views_url, world
from tests.scenario.conftest import at
from tests.scenario.steps_status import (
    COMMUNITY_CASH,
    STANDARD_Y,
    People,
    Y,
    death,
    employee_insurance,
    enroll,
    enroll_and_pay,
    list_on_roster,
    pay,
    register,
)

BUREAU = Actor(system="medical_security_bureau")
HOME = "340104"


@pytest.fixture
def people(request: pytest.FixtureRequest) -> People:
    return People(random.Random(request.node.nodeid))


def read(url: str) -> Database:
    return Database.open(url)


def close(projections: Projections) -> None:
    projections.close()


# ---- coverage and waiting periods ---------------------------------------------------------------


def test_coverage_rows_carry_the_domains_terms_for_each_person_and_year(world: World, views_url: str, people: People) -> None:
    # Given one resident paid in the period, one lapsed employee who enrolled late (six months'
    # waiting period), one who has not paid yet, and one who died in May
    paid, lapsed, unpaid, dead = (people.born(date(1970 + i, 3, 4)) for i in range(4))
    enroll_and_pay(world.ledger, paid, Y, "resident", at(2021, 10, 8))
    employee_insurance(
        world.ledger, lapsed, at(Y, 2, 3), insured_from=date(2018, 2, 1), insured_until=date(Y, 1, 31), continuous_months=48
    )
    enroll_and_pay(world.ledger, lapsed, Y, "cross_scheme", at(Y, 6, 15))
    enroll(world.ledger, unpaid, Y, "resident", at(2021, 10, 9))
    enroll_and_pay(world.ledger, dead, Y, "resident", at(2021, 10, 10))
    death(world.ledger, dead, at(Y, 5, 3), date(Y, 5, 1))

    # When the projections have caught up
    projections = world.caught_up(views_url)
    try:
        db = projections.view.db
        rows = {row["person_key"]: row for row in db.query_dicts("SELECT * FROM coverage WHERE coverage_year = ?", (Y,))}

        # Then each person has the coverage row the domain decided
        assert len(rows) == 4
        row = rows[world.key(paid)]
        assert (row["status"], row["coverage_start"], row["coverage_end"], row["benefit_start"]) == (
            "enrolled", "2022-01-01", "2022-12-31", "2022-01-01",
        )
        assert row["paid_fen"] == STANDARD_Y and row["retroactive"] == 0
        row = rows[world.key(lapsed)]
        assert (row["coverage_start"], row["benefit_start"], row["waiting_months"]) == ("2022-06-16", "2022-12-16", 6)
        assert rows[world.key(unpaid)]["status"] == "awaiting_payment"
        assert rows[world.key(unpaid)]["coverage_start"] is None
        row = rows[world.key(dead)]
        assert (row["status"], row["ended_reason"], row["ended_on"]) == ("ended", "death", "2022-05-01")

        # And each row agrees with the ledger's own answer to "covered on this date?"
        for id_number in (paid, lapsed, dead):
            answer = world.ledger.coverage(id_number, date(Y, 9, 1))
            row = rows[world.key(id_number)]
            assert row["coverage_start"] == answer.coverage_start.isoformat()
            assert row["benefit_start"] == answer.benefit_start.isoformat()

        # And the waiting-period view lists exactly the lapsed employee on Sep 1, until Dec 16, with the rule
        waiting = reports.waiting_periods(db, on=date(Y, 9, 1))
        assert [w["person_key"] for w in waiting] == [world.key(lapsed)]
        assert waiting[0]["benefit_start"] == "2022-12-16" and waiting[0]["waiting_months"] == 6
        assert waiting[0]["reason"], "the rule that imposed the waiting period is named"
        assert reports.waiting_periods(db, on=date(Y, 12, 16)) == [], "benefits start on Dec 16"
    finally:
        close(projections)


def test_the_person_row_follows_registration_and_death(world: World, views_url: str, people: People) -> None:
    # Given a person registered with a phone, who moves district and later dies
    person = people.born(date(1950, 1, 2))
    register(world.ledger, person, at(2021, 9, 3), phone="13900000001", household_id="hh-1")
    register(world.ledger, person, at(2021, 9, 20), district="340111", phone="13900000001", household_id="hh-1")
    death(world.ledger, person, at(Y, 2, 2), date(Y, 1, 30))
    # When the views catch up
    projections = world.caught_up(views_url)
    try:
        row = reports.person_of(projections.view.db, world.key(person))
        # Then the person row shows the latest district and the date of death
        assert row is not None
        assert (row["district"], row["phone"], row["household_id"], row["date_of_death"]) == ("340111", "13900000001", "hh-1", "2022-01-30")
        assert row["birth_date"] == "1950-01-02"
    finally:
        close(projections)


# ---- audit trail --------------------------------------------------------------------------------


def test_the_audit_trail_has_every_event_with_its_source_and_every_rejection(world: World, views_url: str, people: People) -> None:
    # Given a person who enrolled, paid the wrong amount (refused), then paid the right one
    person = people.born(date(1966, 6, 6))
    enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
    refused = world.reject(person, "amount_mismatch", "upstream.payment.received", "pay-wrong", "paid 100 fen, owes 32000 fen")
    pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 9))
    # When the views catch up
    projections = world.caught_up(views_url)
    try:
        trail = reports.audit_trail(projections.view.db, world.key(person))
    finally:
        close(projections)
    # Then the trail lists the events in the order recorded, each with effective and recorded
    # time, actor, channel, msg_id and policy version, and the rejection with its reason
    events = [row for row in trail if row["position"].startswith("LEDGER")]
    assert [row["what"] for row in events] == ["Registered", "EnrollmentRequested", "PaymentReceived", "CoverageDecided"]
    requested = events[1]
    assert requested["effective_at"].startswith("2021-10-08T10:00:00")
    assert requested["recorded_at"] > requested["effective_at"]
    assert requested["policy_version"] == world.ledger.policy.version
    assert requested["msg_id"].startswith("enroll-")
    assert (requested["actor"], requested["channel"]) == ("wechat:wechat", "wechat")
    rejected = [row for row in trail if row["position"] == f"REJECTED {refused}"]
    assert len(rejected) == 1 and rejected[0]["what"] == "rejected: amount_mismatch" and rejected[0]["msg_id"] == "pay-wrong"
    assert [row["recorded_at"] for row in trail] == sorted(row["recorded_at"] for row in trail)


# ---- reports ------------------------------------------------------------------------------------


def test_the_district_report_counts_enrolled_against_the_target_and_sums_the_funds(world: World, views_url: str, people: People) -> None:
    # Given a target of 4 people for 2022 in Shushan, three paid residents (one on the dibao roster)
    # and one who has not paid
    world.ledger.set_target(SetTarget(msg_id="target-1", occurred_at=at(2021, 8, 1), district=HOME, coverage_year=Y, target_count=4), BUREAU)
    residents = [people.born(date(1960 + i, 1, 1)) for i in range(4)]
    list_on_roster(world.ledger, residents[0], Y, "dibao", at(2021, 8, 20))
    enroll(world.ledger, residents[0], Y, "resident", at(2021, 10, 1))
    pay(world.ledger, residents[0], Y, STANDARD_Y // 10, at(2021, 10, 1))  # dibao: 90% subsidised
    for person in residents[1:3]:
        enroll_and_pay(world.ledger, person, Y, "resident", at(2021, 10, 2))
    enroll(world.ledger, residents[3], Y, "resident", at(2021, 10, 3))
    # When the views catch up
    projections = world.caught_up(views_url)
    try:
        (row,) = reports.district_report(projections.view.db, world.ledger.policy, Y, HOME)
    finally:
        close(projections)
    # Then 3 of 4 are enrolled: 75% against the 99% goal, and the funds add up
    assert (row["target"], row["enrolled"], row["awaiting_payment"]) == (4, 3, 1)
    assert row["rate_percent"] == 75.0 and row["meets_goal"] is False and row["goal_percent"] == 99
    assert row["individual_fen"] == STANDARD_Y // 10 + 2 * STANDARD_Y
    assert row["assistance_fen"] == STANDARD_Y - STANDARD_Y // 10 == row["assistance_transfer_due_fen"]
    assert row["subsidised_people"] == 1
    fiscal = world.ledger.policy.for_coverage_year(Y).fiscal_subsidy_fen
    assert row["fiscal_fen"] == (None if fiscal is None else 3 * fiscal)
    assert row["total_fen"] == row["individual_fen"] + row["assistance_fen"] + (row["fiscal_fen"] or 0)


def test_cash_on_hand_raises_the_thirty_day_alarm(world: World, views_url: str, people: People) -> None:
    # Given a community committee that took two cash payments and remitted one
    a, b = people.born(date(1955, 5, 5)), people.born(date(1956, 5, 5))
    for person, receipt, day in ((a, "R-0001", 8), (b, "R-0002", 20)):
        enroll(world.ledger, person, Y, "resident", at(2021, 10, day), channel="community_cash")
        pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, day), channel="community_cash", receipt_no=receipt,
            collector_id="sq-12", actor=COMMUNITY_CASH)  # fmt: skip
    world.ledger.remit_cash(RemitCash(
        msg_id="remit-1", occurred_at=at(2021, 10, 25), collector_id="sq-12", amount_fen=STANDARD_Y,
        voucher_no="V-1", remitted_at=at(2021, 10, 25), receipt_nos=("R-0001",),
    ), COMMUNITY_CASH)  # fmt: skip
    projections = world.caught_up(views_url)
    try:
        db = projections.view.db
        # When the bureau looks on Nov 15 and again on Nov 25
        (early,) = reports.cash_on_hand(db, world.ledger.policy, date(2021, 11, 15))
        (late,) = reports.cash_on_hand(db, world.ledger.policy, date(2021, 11, 25))
    finally:
        close(projections)
    # Then the committee holds one receipt's cash; overdue only more than 30 days after Oct 20
    assert early["balance_fen"] == STANDARD_Y and early["remitted_fen"] == STANDARD_Y
    assert early["oldest_unremitted_at"].startswith("2021-10-20")
    assert not early["overdue"] and late["overdue"] and late["days_held"] == 36
    assert not late["over_limit"]


def test_the_check_up_list_has_last_years_enrollees_who_have_not_renewed(world: World, views_url: str, people: People) -> None:
    # Given three people enrolled for 2021; one renewed for 2022, one asked but has not paid, one died
    renewed, pending, silent, dead = (people.born(date(1975 + i, 2, 2)) for i in range(4))
    for person in (renewed, pending, silent, dead):
        enroll_and_pay(world.ledger, person, Y - 1, "resident", at(2020, 10, 5), amount_fen=28_000)
    enroll_and_pay(world.ledger, renewed, Y, "resident", at(2021, 10, 5))
    enroll(world.ledger, pending, Y, "resident", at(2021, 10, 6))
    death(world.ledger, dead, at(2021, 11, 2), date(2021, 11, 1))
    projections = world.caught_up(views_url)
    try:
        # When the December check-up list for 2022 is drawn
        missing = reports.not_renewed(projections.view.db, Y)
    finally:
        close(projections)
    # Then only the one who neither renewed, asked, nor died is on it
    assert [row["person_key"] for row in missing] == [world.key(silent)]


# ---- replay -------------------------------------------------------------------------------------


def _season(world: World, people: People, count: int = 30) -> None:
    residents = [people.born(date(1950 + i % 50, 1 + i % 12, 1 + i % 28)) for i in range(count)]
    for i, person in enumerate(residents):
        register(world.ledger, person, at(2021, 9, 1 + i % 28), phone=f"1390000{i % 4:04d}")
        if i % 5 == 0:
            list_on_roster(world.ledger, person, Y, "dibao", at(2021, 8, 20))
        enroll(world.ledger, person, Y, "resident", at(2021, 10, 1 + i % 28))
        if i % 3:
            pay(world.ledger, person, Y, STANDARD_Y // 10 if i % 5 == 0 else STANDARD_Y, at(2021, 10, 1 + i % 28))
        if i % 7 == 0:
            world.reject(person, "amount_mismatch", "upstream.payment.received", f"bad-{i}")
    death(world.ledger, residents[1], at(Y, 3, 3), date(Y, 3, 1))


def test_a_replay_interrupted_and_resumed_gives_the_same_views_as_one_without_interruption(
    world: World, views_url: str, people: People, tmp_path: Path
) -> None:
    # Given a season of facts and rejections in the streams
    _season(world, people)
    end = world.ledger.recorder.max_notification_id() or 0
    # When one replay stops half way and is started again on the same database
    first = world.replay(views_url, stop_after=end // 2)
    assert 0 < first.ledger_events <= end
    resumed = world.replay(views_url)
    # Then together they replayed every event once, and the views equal an uninterrupted replay's
    assert first.ledger_events + resumed.ledger_events == end
    straight_url = another_url(views_url, tmp_path, "straight")
    try:
        straight = world.replay(straight_url)
        assert straight.ledger_events == end and straight.rejections == world.rejected_end()
        assert dump(views_url) == dump(straight_url)
    finally:
        drop_schema(straight_url)


def test_replaying_twice_gives_identical_views_and_the_live_ones_agree(
    world: World, views_url: str, people: People, tmp_path: Path
) -> None:
    # Given a season of facts, with live projections that followed it as it happened
    live = world.projections(views_url)
    _season(world, people)
    live.wait(world.ledger.recorder.max_notification_id() or 0, world.rejected_end(), timeout=30)
    close(live)
    # When the auditors replay twice into fresh databases
    urls = [another_url(views_url, tmp_path, f"replay{i}") for i in (1, 2)]
    try:
        for url in urls:
            world.replay(url)
        # Then both replays are identical, and identical to the live views
        assert dump(urls[0]) == dump(urls[1]) == dump(views_url)
        db = read(urls[0])
        try:
            assert db.query("SELECT COUNT(*) FROM audit")[0][0] == world.ledger.recorder.max_notification_id()
        finally:
            db.close()
    finally:
        for url in urls:
            drop_schema(url)


def test_a_replay_until_a_time_shows_only_what_was_recorded_by_then(world: World, views_url: str, people: People) -> None:
    from tests.scenario.steps_status import now_between_facts

    # Given a person who enrolled, and paid only after the auditor's moment
    person = people.born(date(1980, 8, 8))
    enroll(world.ledger, person, Y, "resident", at(2021, 10, 8))
    moment = now_between_facts()
    pay(world.ledger, person, Y, STANDARD_Y, at(2021, 10, 9))
    # When the views are replayed until that moment
    world.replay(views_url, until=moment)
    # Then the person is awaiting payment there, as the ledger knew then
    db = read(views_url)
    try:
        (row,) = reports.coverage_of(db, world.key(person))
        assert row["status"] == "awaiting_payment" and row["paid_fen"] == 0
    finally:
        db.close()


def test_views_built_from_one_stream_refuse_another(world: World, views_url: str, people: People) -> None:
    from ledger.application import Ledger
    from ledger.domain.identity import PersonKeyer
    from projections.views import ViewsMismatchError
    from tests.conftest import unique_names
    from tests.projections.support import SECRET

    # Given views built from the ledger's stream
    enroll(world.ledger, people.born(date(1990, 1, 1)), Y, "resident", at(2021, 10, 8))
    world.replay(views_url)
    # When a ledger on another stream (a new server, a recreated stream) is pointed at them
    stream, prefix = unique_names()
    other_env = {**world.env, "NATS_STREAM": stream, "NATS_SUBJECT_PREFIX": prefix}
    other = Ledger(other_env, keyer=PersonKeyer(SECRET.encode()))
    try:
        # Then the projections refuse them instead of mixing two histories
        with pytest.raises(ViewsMismatchError, match="built from"):
            Projections(ledger_env=other_env, views_url=views_url, nats_url=world.url, policy=other.policy,
                        loader=other, publish=False, rejected_stream=world.rejected_stream)  # fmt: skip
    finally:
        other.close()
