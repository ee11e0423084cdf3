"""Markdown tables for reports and cards. Cells are text, never markup: pipes and newlines are escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def cell(value: Any) -> str:
    """A value as one table cell: floats with 2 decimals, None and NaN as '-', pipes and newlines escaped."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any] | Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table; a row is a list of cells or a mapping read by column name."""
    def cells(row: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        return [row.get(column) for column in columns] if isinstance(row, Mapping) else list(row)

    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(cell, cells(row))) + " |" for row in rows]
    return "\n".join(lines)
