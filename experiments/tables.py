"""What the experiment reports share: Markdown tables and CSV files of result rows."""

import csv
from typing import Any, Iterable, Mapping, Sequence


def markdown_row(cells: Sequence[str]) -> str:
    """One line of a Markdown table."""
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]] = ()) -> list[str]:
    """The lines of a Markdown table: ``header``, its separator, then one line per row of cells."""
    return [markdown_row(header), "|" + "---|" * len(header)] + [markdown_row(cells) for cells in rows]


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes ``rows`` to ``path`` with one column per key of any row, in first-seen order (no file
    when there is no row); a row without a key leaves its cell empty."""
    if not rows:
        return
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
