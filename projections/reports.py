"""Questions people ask of the views: a person's coverage and history, the district reports.

Every function reads the view database only (never the event store), so it can be asked of a
live service's views or of a replay database alike. Results are plain rows (dicts), printed as
tables, JSON or CSV by the CLI.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from ledger.domain.policy import NoPolicyForYear, RegionPolicy
from projections.database import Database

ENROLLED_SQL = "(status = 'enrolled' OR (status = 'ended' AND ended_reason = 'death'))"
"""Counted as enrolled for the year: paid and decided; a death ends coverage, not the enrollment."""


def coverage_of(db: Database, person_key: str) -> list[dict[str, Any]]:
    """The person's coverage rows, one per coverage year."""
    return db.query_dicts("SELECT * FROM coverage WHERE person_key = ? ORDER BY coverage_year", (person_key,))


def person_of(db: Database, person_key: str) -> dict[str, Any] | None:
    rows = db.query_dicts("SELECT * FROM people WHERE person_key = ?", (person_key,))
    return rows[0] if rows else None


def waiting_periods(db: Database, *, on: date | None = None, district: str | None = None, year: int | None = None) -> list[dict[str, Any]]:
    """Who is in a waiting period (等待期) — on ``on`` if given — until when, and why."""
    sql = "SELECT * FROM waiting_periods WHERE 1 = 1"
    params: list[str | int] = []
    if on is not None:
        sql += " AND coverage_start <= ? AND benefit_start > ?"
        params += [on.isoformat(), on.isoformat()]
    if district:
        sql += " AND district = ?"
        params.append(district)
    if year:
        sql += " AND coverage_year = ?"
        params.append(year)
    return db.query_dicts(sql + " ORDER BY benefit_start, person_key", params)


def audit_trail(db: Database, person_key: str) -> list[dict[str, Any]]:
    """Every event about the person and every rejection of a message about them, in the order
    the ledger learned them, each with the flags that point at it."""
    events = db.query_dicts("SELECT * FROM audit WHERE subject_key = ? ORDER BY ledger_seq", (person_key,))
    rejections = db.query_dicts("SELECT * FROM rejections WHERE person_key = ? ORDER BY rejected_seq", (person_key,))
    flags = flags_of(db, person_key)
    by_ledger: dict[int, list[str]] = {}
    by_rejected: dict[int, list[str]] = {}
    for flag in flags:
        evidence = flag["evidence"]
        for seq in evidence["ledger"]:
            by_ledger.setdefault(seq, []).append(flag["rule"])
        for seq in evidence["rejected"]:
            by_rejected.setdefault(seq, []).append(flag["rule"])
    rows = [
        {
            "recorded_at": e["recorded_at"], "effective_at": e["effective_at"], "what": e["event"],
            "coverage_year": e["coverage_year"], "actor": _actor(e), "channel": e["channel"],
            "msg_id": e["msg_id"], "policy_version": e["policy_version"], "position": f"LEDGER {e['ledger_seq']}",
            "flags": sorted(set(by_ledger.get(e["ledger_seq"], []))), "detail": e["detail"],
        }
        for e in events
    ]
    rows += [
        {
            "recorded_at": r["recorded_at"], "effective_at": None, "what": f"rejected: {r['reason']}",
            "coverage_year": None, "actor": r["subject"], "channel": None, "msg_id": r["msg_id"],
            "policy_version": None, "position": f"REJECTED {r['rejected_seq']}",
            "flags": sorted(set(by_rejected.get(r["rejected_seq"], []))), "detail": r["detail"],
        }
        for r in rejections
    ]
    return sorted(rows, key=lambda r: r["recorded_at"] or "")


def flags_of(db: Database, subject_key: str | None = None, rule: str | None = None) -> list[dict[str, Any]]:
    sql, params = "SELECT * FROM flags WHERE 1 = 1", []
    if subject_key:
        sql += " AND subject_key = ?"
        params.append(subject_key)
    if rule:
        sql += " AND rule = ?"
        params.append(rule)
    rows = db.query_dicts(sql + " ORDER BY raised_at, rule, subject_key, position", params)
    for row in rows:
        row["parameters"] = json.loads(row["parameters"])
        row["evidence"] = json.loads(row["evidence"])
    return rows


def flag_counts(db: Database) -> dict[str, int]:
    return {rule: count for rule, count in db.query("SELECT rule, COUNT(*) FROM flags GROUP BY rule ORDER BY rule")}


def rejection_counts(db: Database) -> dict[str, int]:
    return {reason: count for reason, count in db.query("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason")}


def district_report(db: Database, policy: RegionPolicy, year: int, district: str | None = None) -> list[dict[str, Any]]:
    """Per district for coverage year ``year``: target, enrolled, rate against the goal, and the
    fund figures (individual contributions, assistance-fund subsidies, fiscal subsidies, total;
    the assistance fund's transfer due). Money in fen."""
    where = "coverage_year = ?"
    params: list[str | int] = [year]
    if district:
        where += " AND district = ?"
        params.append(district)
    enrolled = {
        row[0]: row[1:]
        for row in db.query(
            f"SELECT district, COUNT(*), SUM(paid_fen - refund_fen), SUM(subsidy_fen), "
            f"SUM(CASE WHEN subsidy_fen > 0 THEN 1 ELSE 0 END) "
            f"FROM coverage WHERE {where} AND {ENROLLED_SQL} GROUP BY district",
            params,
        )
    }
    awaiting = dict(db.query(f"SELECT district, COUNT(*) FROM coverage WHERE {where} AND status = 'awaiting_payment' GROUP BY district", params))
    targets = dict(db.query(f"SELECT district, target_count FROM targets WHERE {where}", params))
    try:
        fiscal_per_head = policy.for_coverage_year(year).fiscal_subsidy_fen
    except NoPolicyForYear:
        fiscal_per_head = None
    goal = policy.enrollment_rate_goal_percent
    districts = sorted(set(enrolled) | set(targets) | set(awaiting) | ({district} if district else set()), key=str)
    rows = []
    for code in districts:
        count, individual, assistance, subsidised = enrolled.get(code, (0, 0, 0, 0))
        individual, assistance = int(individual or 0), int(assistance or 0)
        fiscal = fiscal_per_head * count if fiscal_per_head is not None else None
        target = targets.get(code)
        rate = round(100.0 * count / target, 2) if target else None
        rows.append(
            {
                "district": code,
                "district_name": _name(policy, code),
                "coverage_year": year,
                "target": target,
                "enrolled": count,
                "awaiting_payment": awaiting.get(code, 0),
                "rate_percent": rate,
                "goal_percent": goal,
                "meets_goal": None if rate is None else rate >= goal,
                "individual_fen": individual,
                "assistance_fen": assistance,
                "fiscal_fen": fiscal,
                "total_fen": individual + assistance + (fiscal or 0),
                "subsidised_people": int(subsidised or 0),
                "assistance_transfer_due_fen": assistance,
            }
        )
    return rows


def cash_on_hand(db: Database, policy: RegionPolicy, on: date) -> list[dict[str, Any]]:
    """Per collector: the cash held on ``on``, the oldest receipt not remitted, and the alarms
    (more than ``cash_remit_days`` held, or more than ``cash_remit_fen``)."""
    rows = db.query_dicts("SELECT * FROM collectors ORDER BY collector")
    for row in rows:
        oldest = row["oldest_unremitted_at"]
        held_days = (on - date.fromisoformat(oldest[:10])).days if oldest else 0
        row["days_held"] = held_days
        row["overdue"] = bool(oldest) and held_days > policy.cash_remit_days
        row["over_limit"] = row["balance_fen"] > policy.cash_remit_fen
    return rows


def not_renewed(db: Database, year: int, district: str | None = None) -> list[dict[str, Any]]:
    """Enrolled for ``year - 1`` and not (yet) enrolled for ``year``: the check-up list (排查,
    Dec 10–31) for reminders. Dead people are left out."""
    sql = (
        "SELECT last.person_key, last.district, last.category, last.channel "
        "FROM coverage last LEFT JOIN people p ON p.person_key = last.person_key "
        "WHERE last.coverage_year = ? AND last.status = 'enrolled' AND p.date_of_death IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM coverage next WHERE next.person_key = last.person_key "
        "AND next.coverage_year = ? AND next.status IN ('enrolled', 'awaiting_payment'))"
    )
    params: list[Any] = [year - 1, year]
    if district:
        sql += " AND last.district = ?"
        params.append(district)
    return db.query_dicts(sql + " ORDER BY last.district, last.person_key", params)


def years_in_views(db: Database) -> list[int]:
    return [int(r[0]) for r in db.query("SELECT DISTINCT coverage_year FROM coverage ORDER BY coverage_year")]


def _actor(event: dict[str, Any]) -> str:
    """Who sent the fact behind an audit row: the sender's account when the server said it (else
    the system the subject stands for), the channel or organisation, the operator."""
    parts = [event.get("account") or event.get("system") or "", event.get("channel") or event.get("org_id") or ""]
    if event.get("operator_id"):
        parts.append(f"operator {event['operator_id']}")
    return ":".join(p for p in parts[:2] if p) + (f" ({parts[2]})" if len(parts) > 2 else "")


def _name(policy: RegionPolicy, code: str) -> str:
    try:
        return policy.district_name(code)
    except Exception:  # noqa: BLE001 - an unknown code still gets a row
        return code
