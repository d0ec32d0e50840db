"""Rows as a terminal table, JSON or CSV; results on stdout, notes on stderr.

Tables fit the width of the output: the terminal's, else ``COLUMNS``, else 80 columns (a pipe,
a file, a CI log). A table whose rows fit on one line each is printed as it is; a wider one is
printed vertically, one block of ``field │ value`` lines per record, and a value longer than its
column is wrapped (or folded, when one word is too long), never cut: every character of the data
is in the output.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("ledger")


def console(*, stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr) as wide as the terminal, ``COLUMNS`` or 80."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def say(text: str, *, err: bool = False) -> None:
    """A line of text for people, wrapped at the output's width (notes and progress: ``err``)."""
    console(stderr=err).print(text, markup=False, highlight=False)


def emit_document(document: Any) -> None:
    """One JSON document on stdout (``--format json``)."""
    print(json.dumps(document, ensure_ascii=False, indent=2, default=str))


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
        emit_document(rows if len(rows) != 1 or not vertical else rows[0])
        return
    if fmt == "csv":
        import csv

        names = list(columns or (rows[0].keys() if rows else ()))
        writer = csv.DictWriter(sys.stdout, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in names})
        return
    print_table(rows, title=title, columns=columns, vertical=vertical)


def print_table(
    rows: list[dict[str, Any]],
    *,
    title: str | None = None,
    columns: Sequence[str] | None = None,
    vertical: bool = False,
    right: Sequence[str] = (),
    out: Any = None,
) -> None:
    """``rows`` as a table that fits the output's width (see the module's docstring); columns
    named in ``right`` are right-aligned when the table is printed across."""
    from rich.table import Table
    from rich.text import Text

    out = out or console()
    if not rows:
        out.print(f"{title}: none" if title else "none", markup=False)
        return
    names = list(columns or rows[0].keys())
    cells = [[_cell(row.get(name)) for name in names] for row in rows]
    if not vertical and _natural_width(names, cells) <= out.width:
        if title:
            out.print(Text(title))
        table = Table()
        for name in names:
            table.add_column(name, justify="right" if name in right else "left", overflow="fold")
        for line in cells:
            table.add_row(*map(Text, line))
        out.print(table)
        return
    heading = title if len(rows) == 1 else f"{title or 'records'}: {len(rows)} records, one block each"
    if heading:
        out.print(Text(heading))
    table = Table(show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for number, line in enumerate(cells):
        if number:
            table.add_section()
        for name, value in zip(names, line, strict=True):
            table.add_row(Text(name), Text(value))
    out.print(table)


def _natural_width(names: Sequence[str], cells: list[list[str]]) -> int:
    """The width of a table whose every cell is on one line: cells, padding and borders."""
    from rich.cells import cell_len

    widths = [cell_len(name) for name in names]
    for line in cells:
        for i, value in enumerate(line):
            widths[i] = max(widths[i], max((cell_len(part) for part in value.splitlines()), default=0))
    return sum(widths) + 3 * len(names) + 1


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
