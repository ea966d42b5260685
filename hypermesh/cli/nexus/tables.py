"""Human tables from the server's `meta.k8s.io/v1` Table responses, aligned the way kubectl does.

nexus asks the server for a Table (as kubectl does), so a kind's printer columns are decided by
the server and a CRD's `additionalPrinterColumns` show up without client changes. This module
only lays cells out: kubectl's tabwriter settings (three spaces of padding, columns at least six
wide, the last column never padded), upper-case headers, `-o wide` for priority > 0 columns,
`-A` adding NAMESPACE first, `--show-labels` adding LABELS last, and colour on status words
when, and only when, the caller says stdout is a terminal.

`TablePrinter` keeps the widths of what it already printed, so rows that arrive one by one from
a watch stay under their header instead of jumping about.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypermesh import ages

PADDING = 3
MIN_WIDTH = 6
NONE = "<none>"

# Status words worth a colour; anything else prints plain.
_GREEN = {"true", "ready", "running", "active", "succeeded", "bound", "available", "issued", "synced"}
_RED = {"false", "failed", "error", "crashloopbackoff", "notready", "degraded", "invalid"}
_YELLOW = {"pending", "unknown", "terminating", "progressing", "creating", "containercreating"}
_COLOURED_COLUMNS = {"STATUS", "PHASE", "READY", "STATE", "CONDITION"}
_CODES = {"green": "\x1b[32m", "red": "\x1b[31m", "yellow": "\x1b[33m"}
_RESET = "\x1b[0m"


@dataclass(frozen=True)
class TableOptions:
    """How to show a Table: the human-output flags of `nexus get`."""

    wide: bool = False
    no_headers: bool = False
    show_labels: bool = False
    show_namespace: bool = False
    color: bool = False


def format_cell(value: Any, col_type: str = "string") -> str:
    """One cell as text: empty for missing values (as kubectl), lower-case booleans, ages for raw dates."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if col_type == "date" and isinstance(value, str) and ages.parse_timestamp(value) is not None:
        return ages.age(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def format_labels(labels: dict[str, str] | None) -> str:
    """`a=1,b=2` sorted by key, or `<none>`, like kubectl's LABELS column."""
    if not labels:
        return NONE
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def _row_metadata(row: dict[str, Any]) -> dict[str, Any]:
    obj = row.get("object")
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            return meta
    return {}


def table_cells(table: dict[str, Any], options: TableOptions) -> tuple[list[str], list[list[str]]]:
    """The header and text cells of a Table after the wide, namespace and labels choices."""
    columns: list[dict[str, Any]] = list(table.get("columnDefinitions") or [])
    shown = [i for i, col in enumerate(columns) if options.wide or int(col.get("priority") or 0) == 0]
    header = [str(columns[i].get("name", "")).upper() for i in shown]
    if options.show_namespace:
        header.insert(0, "NAMESPACE")
    if options.show_labels:
        header.append("LABELS")
    rows: list[list[str]] = []
    for row in table.get("rows") or []:
        cells = list(row.get("cells") or [])
        text = [format_cell(cells[i] if i < len(cells) else None, str(columns[i].get("type", "string"))) for i in shown]
        meta = _row_metadata(row)
        if options.show_namespace:
            text.insert(0, str(meta.get("namespace") or ""))
        if options.show_labels:
            text.append(format_labels(meta.get("labels")))
        rows.append(text)
    return header, rows


def _colour(word: str, column: str) -> str:
    if column not in _COLOURED_COLUMNS:
        return word
    key = word.strip().lower()
    if key in _GREEN:
        code = _CODES["green"]
    elif key in _RED:
        code = _CODES["red"]
    elif key in _YELLOW:
        code = _CODES["yellow"]
    else:
        return word
    return f"{code}{word}{_RESET}"


def column_widths(lines: Iterable[Sequence[str]], previous: Sequence[int] = ()) -> list[int]:
    """Each column's width including padding, never narrower than `previous`."""
    widths = list(previous)
    for line in lines:
        for i, cell in enumerate(line):
            width = max(len(cell) + PADDING, MIN_WIDTH)
            if i >= len(widths):
                widths.append(width)
            elif width > widths[i]:
                widths[i] = width
    return widths


def render_line(cells: Sequence[str], widths: Sequence[int], header: Sequence[str] = (), *, color: bool = False) -> str:
    """One aligned line: every cell but the last padded to its column's width."""
    parts: list[str] = []
    last = len(cells) - 1
    for i, cell in enumerate(cells):
        text = cell if i == last else cell.ljust(widths[i])
        if color and i < len(header):
            # Colour wraps the word only, so the escape codes never disturb the alignment.
            pad = text[len(cell):]
            text = _colour(cell, header[i]) + pad
        parts.append(text)
    return "".join(parts)


def render(table: dict[str, Any], options: TableOptions) -> str:
    """A whole Table as aligned text, ending in a newline (empty when there are no rows)."""
    return TablePrinter(options).add(table)


@dataclass
class TablePrinter:
    """Prints a Table, then more rows of the same kind, keeping the columns aligned."""

    options: TableOptions
    widths: list[int] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    printed_header: bool = False

    def add(self, table: dict[str, Any]) -> str:
        """Text for the rows of `table` (with the header first, the first time there are rows)."""
        header, rows = table_cells(table, self.options)
        if not rows:
            return ""
        self.header = header
        lines: list[list[str]] = list(rows)
        show_header = not self.printed_header and not self.options.no_headers
        if show_header:
            lines.insert(0, header)
        self.widths = column_widths(lines, self.widths)
        out: list[str] = []
        for i, line in enumerate(lines):
            is_header = show_header and i == 0
            out.append(render_line(line, self.widths, header, color=self.options.color and not is_header))
        self.printed_header = True
        return "\n".join(out) + "\n"


def render_rows(header: Sequence[str], rows: Sequence[Sequence[str]], *, no_headers: bool = False) -> str:
    """Plain rows (not from a server Table) aligned like one, for api-resources and friends."""
    lines: list[Sequence[str]] = list(rows) if no_headers else [header, *rows]
    if not lines:
        return ""
    widths = column_widths(lines)
    return "\n".join(render_line(line, widths) for line in lines) + "\n"
