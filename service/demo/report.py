"""What the demo shows at the end: the season as the views saw it, in the terminal and in HTML.

Everything here is read from the view database (``projections.reports``) after the service has
caught up, plus the list of planted fraud cases the simulation knows about, to say whether each
was caught. The HTML page is self-contained: inline SVG charts, no scripts, no external files.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ledger.domain.policy import RegionPolicy
from projections import reports
from projections.database import Database


@dataclass(frozen=True)
class PlantedCheck:
    """One planted fraud case and whether the flags caught it."""

    kind: str
    rule: str
    subject_key: str
    description: str
    caught: bool


@dataclass
class DemoReport:
    coverage_year: int
    on: date
    people: int
    published: int
    publish_seconds: float
    catch_up_seconds: float
    ledger_events: int
    districts: list[dict[str, Any]]
    waiting: int
    rejections: dict[str, int]
    flags: dict[str, int]
    planted: list[PlantedCheck]
    payments_per_day: list[tuple[str, int]]
    cash: list[dict[str, Any]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        keys = ("target", "enrolled", "individual_fen", "assistance_fen", "fiscal_fen", "total_fen")
        return {k: sum(int(row.get(k) or 0) for row in self.districts) for k in keys}

    @property
    def caught(self) -> int:
        return sum(1 for p in self.planted if p.caught)


def gather(
    db: Database,
    policy: RegionPolicy,
    *,
    coverage_year: int,
    on: date,
    people: int,
    published: int,
    publish_seconds: float,
    catch_up_seconds: float,
    planted: list[tuple[str, str, str, str]],
) -> DemoReport:
    """``planted``: (kind, rule, subject key, description) of each planted case."""
    checks = []
    for kind, rule, subject_key, description in planted:
        caught = bool(db.query("SELECT 1 FROM flags WHERE rule = ? AND subject_key = ? LIMIT 1", (rule, subject_key)))
        checks.append(PlantedCheck(kind, rule, subject_key, description, caught))
    days = db.query(
        "SELECT substr(effective_at, 1, 10) AS day, COUNT(*) FROM audit WHERE event = 'PaymentReceived' "
        "GROUP BY substr(effective_at, 1, 10) ORDER BY day"
    )
    return DemoReport(
        coverage_year=coverage_year,
        on=on,
        people=people,
        published=published,
        publish_seconds=publish_seconds,
        catch_up_seconds=catch_up_seconds,
        ledger_events=int(db.query("SELECT COUNT(*) FROM audit")[0][0]),
        districts=reports.district_report(db, policy, coverage_year),
        waiting=len(reports.waiting_periods(db, year=coverage_year)),
        rejections=reports.rejection_counts(db),
        flags=reports.flag_counts(db),
        planted=checks,
        payments_per_day=[(str(d), int(n)) for d, n in days],
        cash=[c for c in reports.cash_on_hand(db, policy, on) if c["overdue"] or c["over_limit"]],
    )


def _yuan(fen: int | None) -> str:
    return "—" if fen is None else f"{fen / 100:,.0f}"


def print_report(report: DemoReport) -> None:
    """The report on stdout, its tables as wide as the output (``service.cli.output``)."""
    from service.cli.output import console, print_table

    out = console()
    out.rule(f"Hefei enrollment season for coverage year {report.coverage_year}")
    out.print(
        f"{report.people:,} synthetic residents · {report.published:,} upstream messages published in "
        f"{report.publish_seconds:.0f} s · {report.ledger_events:,} ledger events · views caught up "
        f"{report.catch_up_seconds:.0f} s after the last message",
        markup=False,
    )
    rows = [
        {"district": f"{row['district_name']} ({row['district']})", "target": f"{row['target'] or '—'}",
         "enrolled": f"{row['enrolled']:,}", "rate": f"{row['rate_percent'] if row['rate_percent'] is not None else '—'}%",
         "individual": _yuan(row["individual_fen"]), "assistance fund": _yuan(row["assistance_fen"]),
         "fiscal": _yuan(row["fiscal_fen"]), "total": _yuan(row["total_fen"])}
        for row in report.districts
    ]  # fmt: skip
    totals = report.totals
    rows.append({
        "district": "all districts", "target": f"{totals['target']:,}", "enrolled": f"{totals['enrolled']:,}",
        "rate": f"{100 * totals['enrolled'] / totals['target']:.2f}%" if totals["target"] else "—",
        "individual": _yuan(totals["individual_fen"]), "assistance fund": _yuan(totals["assistance_fen"]),
        "fiscal": _yuan(totals["fiscal_fen"]) if any(r["fiscal_fen"] is not None for r in report.districts) else "—",
        "total": _yuan(totals["total_fen"]),
    })  # fmt: skip
    numbers = ("target", "enrolled", "rate", "individual", "assistance fund", "fiscal", "total")
    print_table(rows, title="Enrollment rate per district (goal 99%) and funds, yuan", right=numbers, out=out)
    out.print(f"In a waiting period (等待期) during {report.coverage_year}: {report.waiting:,} people", markup=False)
    counts = lambda items, name: [{name: k, "count": f"{v:,}"} for k, v in items.items()]  # noqa: E731
    print_table(counts(report.rejections, "reason"), title="Rejections by reason", right=("count",), out=out)
    print_table(counts(report.flags, "rule"), title="Fraud flags by rule", right=("count",), out=out)
    planted = [
        {"case": p.description, "rule": p.rule, "subject": p.subject_key[:24], "caught": "yes" if p.caught else "NO"}
        for p in report.planted
    ]
    print_table(planted, title=f"Planted fraud: {report.caught} of {len(report.planted)} caught", out=out)


def write_html(report: DemoReport, path: Path) -> None:
    """The same report as one self-contained HTML page with two charts."""
    totals = report.totals
    rates = [
        (f"{row['district_name']}", float(row["rate_percent"] or 0.0)) for row in report.districts if row["target"]
    ]
    district_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            f"{row['district_name']} ({row['district']})", row["target"] or "—", f"{row['enrolled']:,}",
            f"{row['rate_percent']}%" if row["rate_percent"] is not None else "—", _yuan(row["individual_fen"]),
            _yuan(row["assistance_fen"]), _yuan(row["fiscal_fen"]), _yuan(row["total_fen"]),
        )) + "</tr>"  # fmt: skip
        for row in report.districts
    )
    planted_rows = "".join(
        f"<tr><td>{html.escape(p.description)}</td><td>{p.rule}</td><td><code>{html.escape(p.subject_key[:24])}</code></td>"
        f"<td class={'yes' if p.caught else 'no'}>{'caught' if p.caught else 'missed'}</td></tr>"
        for p in report.planted
    )
    counts = lambda items: "".join(f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in items.items())  # noqa: E731
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Hefei enrollment season {report.coverage_year}: ledger demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} .yes {{ color: #1a7f37; }} .no {{ color: #cf222e; font-weight: bold; }}
h2 {{ margin-top: 1.6em; }} .note {{ color: #555; }}
</style></head><body>
<h1>Hefei enrollment season for coverage year {report.coverage_year} (城乡居民基本医疗保险)</h1>
<p class="note">{report.people:,} synthetic residents; {report.published:,} upstream messages published through the contract in
{report.publish_seconds:.0f} s; {report.ledger_events:,} ledger events; views caught up {report.catch_up_seconds:.0f} s after
the last message. Everything below is read from the ledger's views.</p>
<h2>Enrollment rate per district</h2>
{_bar_chart(rates, goal=float(report.districts[0]["goal_percent"]) if report.districts else 99.0)}
<table><tr><th>district</th><th>target</th><th>enrolled</th><th>rate</th><th>individual (yuan)</th>
<th>assistance fund</th><th>fiscal</th><th>total</th></tr>{district_rows}
<tr><th>all districts</th><th>{totals['target']:,}</th><th>{totals['enrolled']:,}</th>
<th>{f"{100 * totals['enrolled'] / totals['target']:.2f}%" if totals['target'] else '—'}</th>
<th>{_yuan(totals['individual_fen'])}</th><th>{_yuan(totals['assistance_fen'])}</th><th>—</th><th>{_yuan(totals['total_fen'])}</th></tr></table>
<h2>Payments per day through the season</h2>
{_daily_chart(report.payments_per_day)}
<p>In a waiting period during {report.coverage_year}: <b>{report.waiting:,}</b> people.</p>
<h2>Rejections by reason</h2><table><tr><th>reason</th><th>count</th></tr>{counts(report.rejections)}</table>
<h2>Fraud flags by rule</h2><table><tr><th>rule</th><th>count</th></tr>{counts(report.flags)}</table>
<h2>Planted fraud: {report.caught} of {len(report.planted)} caught</h2>
<table><tr><th>case</th><th>rule</th><th>subject</th><th>caught</th></tr>{planted_rows}</table>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


def _bar_chart(bars: list[tuple[str, float]], *, goal: float) -> str:
    """Horizontal bars, one per district, with the goal as a line."""
    if not bars:
        return "<p>(no targets set)</p>"
    width, label_w, row_h = 900, 220, 24
    height = row_h * len(bars) + 30
    scale = (width - label_w - 60) / max(100.0, max(v for _, v in bars))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, (label, value) in enumerate(bars):
        y = 10 + i * row_h
        colour = "#2da44e" if value >= goal else "#d4a72c"
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="13">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{value * scale:.1f}" height="{row_h - 8}" fill="{colour}"/>')
        parts.append(f'<text x="{label_w + value * scale + 6:.1f}" y="{y + 15}" font-size="12">{value:.1f}%</text>')
    gx = label_w + goal * scale
    parts.append(f'<line x1="{gx:.1f}" y1="5" x2="{gx:.1f}" y2="{height - 18}" stroke="#cf222e" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{gx:.1f}" y="{height - 4}" text-anchor="middle" font-size="12" fill="#cf222e">goal {goal:.0f}%</text>')
    parts.append("</svg>")
    return "".join(parts)


def _daily_chart(days: list[tuple[str, int]]) -> str:
    """Columns of payments per effective day."""
    if not days:
        return "<p>(no payments)</p>"
    width, height, pad = 1000, 260, 40
    peak = max(n for _, n in days)
    step = (width - 2 * pad) / len(days)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, (day, count) in enumerate(days):
        h = (height - 2 * pad) * count / peak
        x = pad + i * step
        parts.append(
            f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{max(step - 1, 1):.1f}" height="{h:.1f}" fill="#0969da">'
            f"<title>{day}: {count}</title></rect>"
        )
    for i, (day, _) in enumerate(days):
        if i % max(1, len(days) // 8) == 0:
            parts.append(f'<text x="{pad + i * step:.1f}" y="{height - pad + 16}" font-size="11">{day}</text>')
    parts.append(f'<text x="{pad}" y="{pad - 10}" font-size="12">peak {peak:,} payments a day</text>')
    parts.append("</svg>")
    return "".join(parts)
