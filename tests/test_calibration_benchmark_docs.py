"""docs/calibration_benchmark.md says only what its committed files show.

A result in that page is cited as a reference-style Markdown link ``[<file>: <rows>][<ref>]``
whose ``[<ref>]: <path>`` points at a committed report file under ``docs/results/`` or at a run record
in a results store (``../results/<experiment>/runs.jsonl.gz#<path of the file in the workdir>``):

- a CSV, with rows named by their key columns joined by ``/`` (``label`` in most report tables,
  ``rho/gamma/metric`` in ``table_s4.csv``, ``method/prediction`` in ``table1.csv``,
  ``method/seed`` in ``runs.csv``), ``*`` matching any text;
- a JSON file, with fields as ``/``-separated paths (every numeric field when none is given);
- a ``metrics.jsonl``, with record keys (their values at every logged step).

Every decimal number between a citation and the previous one (or the start of its paragraph or
bullet) must equal one value of the cited rows or fields, rounded to the digits written, either as
it is or x 100 (a percentage). In the results section every decimal number must be followed by a
citation in its paragraph. Numbers that name a setting (after "rho", "gamma", "learning rate",
"weight decay", "dropout", "Sec.", "arXiv:") are not results and are not checked.
"""

import contextlib
import csv
import fnmatch
import json
import math
import os
import re
from collections.abc import Iterator

import pytest

from experiments import store

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
PAGE = os.path.join(DOCS, "calibration_benchmark.md")
RESULTS_SECTION = ("### What reproduces and what does not", "## The report")
REPORT_SECTION = "## The report"
COMMITTED_REPORT = os.path.join(DOCS, "results", "calibration_benchmark_fmnist", "report", "report.md")

KEY_COLUMNS = {"table_s4.csv": ("rho", "gamma", "metric"), "table1.csv": ("method", "prediction")}
KEY_COLUMNS["runs.csv"] = ("method", "seed")

CITATION = re.compile(r"\[(?P<file>[\w.]+\.(?:csv|json|jsonl))(?::\s*(?P<rows>[^\]]+))?\]\[(?P<ref>[\w-]+)\]")
REFERENCE = re.compile(r"^\[(?P<ref>[\w-]+)\]:\s*(?P<path>\S+)\s*$", re.MULTILINE)
# A decimal number that is not part of a version (0.10.2) or a longer token.
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.]|\.\d)")
SETTING = re.compile(r"(rho|gamma|learning rate|weight decay|dropout|Sec\.|arXiv:)\s*=?\s*$")


def _page() -> str:
    with open(PAGE, encoding="utf-8") as f:
        return f.read()


def _references(text: str) -> dict[str, str]:
    return {m["ref"]: m["path"] for m in REFERENCE.finditer(text)}


def _blocks(text: str) -> Iterator[str]:
    """Paragraphs and bullets (a bullet ends at the next bullet or blank line)."""
    text = REFERENCE.sub("", text)
    for paragraph in re.split(r"\n\s*\n", text):
        yield from (b for b in re.split(r"\n(?=- )", paragraph) if b.strip())


def _result_numbers(span: str) -> list[str]:
    """The decimal numbers of ``span`` that state results (not settings, not code)."""
    span = re.sub(r"`[^`]*`", "", span)
    return [m.group() for m in NUMBER.finditer(span) if not SETTING.search(span[: m.start()])]


def _csv_values(path: str, rows: list[str]) -> list[float]:
    with open(path, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    columns = KEY_COLUMNS.get(os.path.basename(path), ("label",))
    values = []
    for pattern in rows:
        matched = [r for r in records if fnmatch.fnmatchcase("/".join(r[c] for c in columns), pattern)]
        assert matched, f"{os.path.basename(path)} has no row {pattern!r} (rows are named by {'/'.join(columns)})"
        for record in matched:
            for value in record.values():
                with contextlib.suppress(ValueError):
                    values.append(float(value))
    return values


def _json_values(node, fields: list[str]) -> list[float]:
    if not fields:
        if isinstance(node, dict):
            return [v for child in node.values() for v in _json_values(child, [])]
        if isinstance(node, list):
            return [v for child in node for v in _json_values(child, [])]
        return [float(node)] if isinstance(node, (int, float)) and not isinstance(node, bool) else []
    values = []
    for field in fields:
        value = node
        for part in field.split("/"):
            assert isinstance(value, dict) and part in value, f"no field {field!r}"
            value = value[part]
        values.extend(_json_values(value, []))
    return values


def _jsonl_values(text: str, file: str, keys: list[str]) -> list[float]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    values = []
    for key in keys:
        found = [r[key] for r in records if key in r]
        assert found, f"{file} has no key {key!r}"
        values.extend(float(v) for v in found)
    return values


def _run_record(path: str) -> str:
    """The text of ``<store>/runs.jsonl.gz#<file in the workdir>`` (``path`` relative to docs/)."""
    store_file, member = path.split("#", 1)
    assert os.path.basename(store_file) == store.STORE_FILE, f"{path} does not name a results store"
    runs = store.read_store(os.path.dirname(os.path.join(DOCS, store_file)))
    directory, name = os.path.split(member)
    assert name in runs.get(directory, {}), f"the store {store_file} has no {member}"
    return runs[directory][name]


def cited_values(file: str, rows: str, path: str) -> list[float]:
    """The numbers a citation ``[file: rows][ref]`` points at: ``[ref]: path`` is a committed file
    relative to docs/, or a run record in a results store, ``<store>/runs.jsonl.gz#<its path>``."""
    assert os.path.basename(path.split("#")[-1]) == file, f"citation names {file} but links {path}"
    keys = [k.strip() for k in (rows or "").split(",") if k.strip()]
    if "#" in path:
        text = _run_record(path)
    else:
        full = os.path.join(DOCS, path)
        assert os.path.isfile(full), f"{path} is not a committed file"
        if file.endswith(".csv"):
            assert keys, f"a citation of {file} names its rows"
            return _csv_values(full, keys)
        with open(full, encoding="utf-8") as f:
            text = f.read()
    if file.endswith(".jsonl"):
        assert keys, f"a citation of {file} names its keys"
        return _jsonl_values(text, file, keys)
    return _json_values(json.loads(text), keys)


def matches(number: str, values: list[float]) -> bool:
    """Whether ``number`` (as written) is one of ``values``, or one of them x 100, to its digits."""
    digits = len(number.split(".")[1])
    written = float(number)
    for value in values:
        for shown in (value, 100.0 * value):
            if math.isfinite(shown) and f"{shown:.{digits}f}" in (number, f"{written:.{digits}f}"):
                return True
    return False


def check(text: str, references: dict[str, str], every_number_cited: bool) -> list[str]:
    """Problems with the citations of ``text`` (and its uncited numbers, when asked)."""
    problems = []
    for block in _blocks(text):
        start = 0
        for citation in CITATION.finditer(block):
            span = block[start : citation.start()]
            start = citation.end()
            if citation["ref"] not in references:
                problems.append(f"[{citation['ref']}] is not defined: {citation.group()}")
                continue
            try:
                values = cited_values(citation["file"], citation["rows"], references[citation["ref"]])
            except AssertionError as err:
                problems.append(f"{citation.group()}: {err}")
                continue
            for number in _result_numbers(span):
                if not matches(number, values):
                    problems.append(f"{number} is not in {citation.group()}: ...{span[-160:]!r}")
        if every_number_cited:
            for number in _result_numbers(block[start:]):
                problems.append(f"{number} has no citation after it: ...{block[start:][:160]!r}")
    return problems


def test_every_cited_number_is_in_its_committed_file():
    page = _page()
    assert CITATION.search(page), "the page cites no committed file"
    problems = check(page, _references(page), every_number_cited=False)
    assert not problems, "\n".join(problems)


def test_every_number_of_the_results_section_is_cited():
    page = _page()
    begin, end = (page.index(marker) for marker in RESULTS_SECTION)
    problems = check(page[begin:end], _references(page), every_number_cited=True)
    assert not problems, "\n".join(problems)


def test_the_report_on_the_page_is_the_committed_report():
    page = _page()
    on_page = page[page.index(REPORT_SECTION) :].split("\n", 1)[1]
    with open(COMMITTED_REPORT, encoding="utf-8") as f:
        committed = f.read().split("\n", 1)[1]  # below its title
    assert on_page.strip() == committed.strip()


@pytest.mark.parametrize(
    "sentence, problem",
    [
        # A number that is in no cited row, a row that does not exist, a number left uncited.
        ("SAM's ECE is 2.46 % [table3.csv: sam][t3].", "2.46 is not in"),
        ("SAM's ECE is 2.45 % [table3.csv: sma][t3].", "no row 'sma'"),
        ("SAM's ECE is 2.45 % [table3.csv: sam][t3], SGD's 2.83 %.", "2.83 has no citation"),
        ("SAM's ECE is 2.45 % [table3.csv: sam][t9].", "[t9] is not defined"),
    ],
)
def test_the_checker_finds_wrong_and_uncited_numbers(sentence, problem):
    references = {"t3": "results/calibration_benchmark_fmnist/report/table3.csv"}
    assert not check("SAM's ECE is 2.45 % [table3.csv: sam][t3] at rho 0.05.", references, True)
    problems = check(sentence, references, every_number_cited=True)
    assert any(problem in p for p in problems), problems
