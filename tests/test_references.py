"""The papers that sam_jax's docstrings cite are those of docs/references.md, with its years.

docs/references.md lists each paper once, under one key, with one year (see its opening lines);
a docstring that cites "Author et al. YEAR", "Author & Other YEAR" or "Author YEAR", or an arXiv
id, must name a paper listed there with that same year, so that a paper is never cited with two
years in two places.
"""

import ast
import os
import re
from collections.abc import Iterator
from typing import NamedTuple

import sam_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCES = os.path.join(ROOT, "docs", "references.md")
# A surname: "Foret", "O'Connor", "Lopez-Paz", "DeVries", "Ben Ayed" (not an acronym such as "ICLR").
NAME = r"[A-Z][\w'-]*[a-z\u00df-\u00ff](?: [A-Z][\w'-]*[a-z])?"
ARXIV_ID = r"\d{4}\.\d{4,5}"
ARXIV = re.compile(rf"arXiv:(?P<id>{ARXIV_ID})")
# "Foret et al. 2020", "Möllenhoff & Khan (2022", "Wen, Tran and Ba, 2020", "Brier 1950"; an arXiv id
# right after the year ("Tan et al. 2025, arXiv:2505.23866") names the paper.
CITATION = re.compile(
    rf"(?<![\w'-])(?P<first>{NAME})(?: et al\.|(?:, {NAME})* (?:&|and) {NAME})?,? \(?(?P<year>(?:19|20)\d\d)\b"
    rf"(?:[,;]? arXiv:(?P<arxiv>{ARXIV_ID}))?"
)
# A reference row: "| [KEY] | First, Second & Third, YEAR. *Title.* ... arXiv:ID |".
ENTRY = re.compile(r"^\| \[(?P<key>[^\]]+)\] \| (?P<authors>[^|]+?), (?P<year>(?:19|20)\d\d)\. (?P<rest>[^|]*)\|$")


class Entry(NamedTuple):
    """One row of docs/references.md."""

    key: str
    first_author: str
    year: str
    arxiv: str | None


def _entries() -> list[Entry]:
    with open(REFERENCES, encoding="utf-8") as f:
        rows = [ENTRY.match(line.rstrip("\n")) for line in f]
    return [
        Entry(row["key"], re.split(r", | & | et al\.", row["authors"])[0], row["year"], _first_arxiv_id(row["rest"]))
        for row in rows
        if row
    ]


def _first_arxiv_id(text: str) -> str | None:
    match = ARXIV.search(text)
    return match["id"] if match else None


def _docstrings() -> Iterator[tuple[str, int, str]]:
    """``(file, line, docstring)`` of every module, class and function of ``sam_jax``."""
    package = os.path.dirname(sam_jax.__file__)
    for folder, _, files in sorted(os.walk(package)):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    docstring = ast.get_docstring(node, clean=False)
                    if docstring:
                        yield os.path.relpath(path, ROOT), getattr(node, "lineno", 1), docstring


def test_each_paper_is_listed_once():
    entries = _entries()
    assert len(entries) > 20, "docs/references.md's tables were not parsed"
    keys = [entry.key for entry in entries]
    ids = [entry.arxiv for entry in entries if entry.arxiv]
    assert len(set(keys)) == len(keys), f"keys listed twice: {sorted({k for k in keys if keys.count(k) > 1})}"
    assert len(set(ids)) == len(ids), f"arXiv ids listed twice: {sorted({i for i in ids if ids.count(i) > 1})}"


def test_docstring_citations_match_references():
    entries = _entries()
    cited = {(entry.first_author, entry.year) for entry in entries}
    by_id = {entry.arxiv: entry for entry in entries if entry.arxiv}
    problems = []
    for path, line, docstring in _docstrings():
        for citation in CITATION.finditer(docstring):
            first, year = citation["first"], citation["year"]
            entry = by_id.get(citation["arxiv"])
            if entry and (entry.first_author, entry.year) != (first, year):
                problems.append(
                    f"{path}:{line}: '{citation[0]}' cites [{entry.key}] ({entry.first_author} {entry.year})"
                )
            elif (first, year) not in cited:
                years = sorted(e.year for e in entries if e.first_author == first)
                known = f"listed with {', '.join(years)}" if years else "not listed"
                problems.append(f"{path}:{line}: '{citation[0]}' ({first} {known} in docs/references.md)")
        for arxiv in ARXIV.finditer(docstring):
            if arxiv["id"] not in by_id:
                problems.append(f"{path}:{line}: arXiv:{arxiv['id']} is not in docs/references.md")
    assert not problems, (
        "docstrings cite papers that docs/references.md does not list, or with another year; use the "
        "year listed there, or add the paper (one row; the page's opening lines say which year):\n"
        + "\n".join(problems)
    )
