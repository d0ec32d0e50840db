"""Rows as a terminal table, JSON or CSV."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("ledger")



def _emit(
    rows: list[dict[str, Any]],
    fmt: str,
    *,
    title: str | None = None,
    columns: Sequence[str] | None = None,
    vertical: bool = False,
) -> None:
    """Rows as a terminal table, JSON or CSV."""
    if fmt == "json":
        print(json.dumps(rows if len(rows) != 1 or not vertical else rows[0], ensure_ascii=False, indent=2, default=str))
        return
    if fmt == "csv":
        import csv

        names = list(columns or (rows[0].keys() if rows else ()))
        writer = csv.DictWriter(sys.stdout, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in names})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"[bold]{title}[/bold]: none" if title else "none")
        return
    if vertical:
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in rows[0].items():
            table.add_row(key, _cell(value))
    else:
        names = list(columns or rows[0].keys())
        table = Table(title=title, title_justify="left")
        for name in names:
            table.add_column(name)
        for row in rows:
            table.add_row(*(_cell(row.get(name)) for name in names))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)

