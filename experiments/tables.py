"""What the experiment reports share: Markdown tables and CSV files of result rows, mean ± std."""

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and standard deviation (ddof 0) of the finite values (None, NaN and inf left out);
    ``(nan, nan)`` when there is none. The one rule every report uses."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return (float(np.mean(finite)), float(np.std(finite))) if finite else (math.nan, math.nan)


def mean_std_cell(
    mean: float,
    std: float,
    number: str = ".2f",
    *,
    spread_number: str | None = None,
    scale: float = 1.0,
    parentheses: bool = False,
    missing: str = "n/a",
) -> str:
    """``mean ± std`` (or ``mean (std)``) after multiplying both by ``scale``; ``missing`` when the
    mean is NaN. The mean is formatted with ``number``, the std with ``spread_number`` (default:
    ``number`` without a sign flag, so ``+.2f`` signs the mean only)."""
    if math.isnan(mean):
        return missing
    text, spread = format(scale * mean, number), format(scale * std, spread_number or number.lstrip("+"))
    return f"{text} ({spread})" if parentheses else f"{text} ± {spread}"


def markdown_row(cells: Sequence[str]) -> str:
    """One line of a Markdown table."""
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]] = ()) -> list[str]:
    """The lines of a Markdown table: ``header``, its separator, then one line per row of cells."""
    return [markdown_row(header), "|" + "---|" * len(header)] + [markdown_row(cells) for cells in rows]


def write_table(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    """Writes ``rows`` to the CSV file ``path`` (every key, full precision) and returns the lines of the
    Markdown table of the same rows: one column per ``(header, key, format spec)``, each cell
    ``format(row[key], spec)``."""
    write_csv(path, rows)
    return markdown_table(
        [header for header, _, _ in columns], ([format(row[key], spec) for _, key, spec in columns] for row in rows)
    )


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


PROVENANCE_FILE = "provenance.md"


def provenance_table(summaries: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """Markdown lines of what a report's runs were made with: one row per distinct code version,
    library versions and device (from each run's ``summary.json``), with its number of runs.

    A run that is unfinished has no summary; a run made before summaries recorded their provenance
    has none of these keys: both are counted in rows of their own.
    """
    counts: dict[tuple[str, ...], int] = {}
    for summary in summaries:
        if summary is None:
            key = ("unfinished (no summary yet)",) + ("",) * 6
        elif "provenance" not in summary:
            key = (
                ("not recorded (run before provenance was kept)",)
                + ("",) * 4
                + (
                    str(summary.get("device", "")),
                    str(summary.get("num_devices", "")),
                )
            )
        else:
            record = summary["provenance"]
            versions = record.get("versions", {})
            commit = record.get("git_commit") or "outside a git checkout"
            key = (
                commit[:12] + (" (uncommitted changes)" if record.get("git_dirty") else ""),
                str(versions.get("jax")),
                str(versions.get("flax")),
                str(versions.get("optax")),
                str(versions.get("numpy")),
                str(summary.get("device", "")),
                str(summary.get("num_devices", "")),
            )
        counts[key] = counts.get(key, 0) + 1
    header = ("commit", "jax", "flax", "optax", "numpy", "device", "devices", "runs")
    return markdown_table(header, [(*key, str(count)) for key, count in sorted(counts.items())])
