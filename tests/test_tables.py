"""The Markdown and CSV helpers every experiment report writes with."""

import csv

from experiments.tables import markdown_row, markdown_table, write_csv


def test_markdown_table_has_header_separator_and_one_line_per_row():
    lines = markdown_table(["a", "b"], [["1", "2"], ["3", "4"]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]
    assert markdown_table(["x"]) == ["| x |", "|---|"]
    assert markdown_row(["only"]) == "| only |"


def test_write_csv_takes_every_key_in_first_seen_order(tmp_path):
    path = tmp_path / "rows.csv"
    write_csv(str(path), [{"a": 1, "b": 2}, {"b": 3, "c": 4}])
    with open(path) as f:
        assert list(csv.reader(f)) == [["a", "b", "c"], ["1", "2", ""], ["", "3", "4"]]
    write_csv(str(tmp_path / "none.csv"), [])
    assert not (tmp_path / "none.csv").exists()
