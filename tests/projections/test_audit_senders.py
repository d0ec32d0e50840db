"""The audit trail says who sent each fact: the sender's account, as the NATS server
authenticated it (docs/contract.md "Who sent it"), not what the message says."""

from __future__ import annotations

from datetime import date

from contract.subjects import upstream_subject
from projections.reports import audit_trail
from tests.projections.conftest import Message, Office, People, at, enrollment, payment


def as_sent_by(sender: str, message: Message) -> Message:
    subject, body = message
    return upstream_subject(subject, sender), body


def test_the_audit_trail_names_the_account_that_sent_each_fact(office: Office, people: People) -> None:
    someone = people.born(date(1980, 3, 3))
    # Given an enrollment sent by the community committees' account and a payment by WeChat's
    enrolled = as_sent_by("community", enrollment(someone, at(2021, 9, 5), channel="community_qr"))
    paid = as_sent_by("wechat_pay", payment(someone, at(2021, 9, 6)))
    office.send(enrolled)  # two systems: the payment comes after the enrollment was decided,
    office.send(paid)  # as it would (two senders' facts are ordered only as UPSTREAM received them)
    # Then each audit row names its sender's account, and the audit trail shows it as the actor
    assert office.audit_of(enrolled, "EnrollmentRequested")["account"] == "community"
    assert office.audit_of(paid, "PaymentReceived")["account"] == "wechat_pay"
    trail = audit_trail(office._caught_up().db, office.key(someone))
    actors = {row["what"]: row["actor"] for row in trail}
    assert actors["EnrollmentRequested"].startswith("community:community_qr")
    assert actors["PaymentReceived"].startswith("wechat_pay:wechat")


def test_an_unattributed_fact_has_no_account_in_the_audit_trail(office: Office, people: People) -> None:
    someone = people.born(date(1980, 4, 4))
    enrolled = enrollment(someone, at(2021, 9, 5))
    office.send(enrolled)
    assert office.audit_of(enrolled, "EnrollmentRequested")["account"] is None


def test_views_made_before_senders_were_recorded_gain_the_account_column(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from projections.database import Database
    from projections.views import LedgerViews

    # Given a view database whose audit table predates the account column
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE audit (ledger_seq BIGINT PRIMARY KEY, subject_key TEXT NOT NULL, event TEXT NOT NULL, "
        "coverage_year INTEGER, effective_at TEXT, recorded_at TEXT NOT NULL, system TEXT, channel TEXT, "
        "operator_id TEXT, org_id TEXT, msg_id TEXT, policy_version TEXT, detail TEXT)"
    )
    old.execute("INSERT INTO audit (ledger_seq, subject_key, event, recorded_at) VALUES (1, 'k', 'PersonRegistered', 'x')")
    old.commit()
    old.close()
    # When the views open it
    views = LedgerViews(Database.open(f"sqlite:///{path}"))
    try:
        # Then the audit table has the column, and its rows are kept
        assert views.db.query_dicts("SELECT ledger_seq, account FROM audit") == [{"ledger_seq": 1, "account": None}]
    finally:
        views.close()
