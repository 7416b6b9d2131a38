"""The Markdown and CSV helpers every experiment report writes with."""

import csv
import math

import numpy as np
import pytest

from experiments import tables
from experiments.tables import markdown_row, markdown_table, mean_std, mean_std_cell, write_csv, write_table


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


def test_mean_std_is_over_the_finite_values_with_ddof_0():
    values = [1.0, 2.0, None, math.nan, math.inf, 4.0]
    assert mean_std(values) == pytest.approx((np.mean([1, 2, 4]), np.std([1, 2, 4])))
    assert all(math.isnan(v) for v in mean_std([None, math.nan]))


@pytest.mark.parametrize(
    "args, kwargs, text",
    [
        ((0.1234, 0.05), {}, "0.12 ± 0.05"),
        ((0.1234, 0.05, "+.2f"), {}, "+0.12 ± 0.05"),  # the sign flag is the mean's only
        ((0.01234, 0.0005), {"scale": 100}, "1.23 ± 0.05"),
        ((90.751, 0.128, ".2f"), {"parentheses": True}, "90.75 (0.13)"),
        ((1234.5, 12.34, ".3g"), {"spread_number": ".2g"}, "1.23e+03 ± 12"),
        ((math.nan, 0.1), {}, "n/a"),
        ((math.nan, 0.1), {"missing": "—"}, "—"),
    ],
)
def test_mean_std_cell(args, kwargs, text):
    assert mean_std_cell(*args, **kwargs) == text


def test_write_table_writes_the_csv_and_returns_the_markdown_of_the_same_rows(tmp_path):
    rows = [{"method": "sgd", "ece": 0.01234, "seed": 0}, {"method": "sam", "ece": 0.005, "seed": 1}]
    lines = write_table(str(tmp_path / "t.csv"), rows, [("method", "method", ""), ("ECE", "ece", ".3f")])
    assert lines == ["| method | ECE |", "|---|---|", "| sgd | 0.012 |", "| sam | 0.005 |"]
    with open(tmp_path / "t.csv") as f:
        assert list(csv.reader(f))[1] == ["sgd", "0.01234", "0"]


def test_provenance_table_groups_runs_by_commit_versions_and_device():
    made = {
        "device": "cpu: cpu",
        "num_devices": 1,
        "provenance": {
            "git_commit": "0123456789abcdef",
            "git_dirty": True,
            "versions": {"jax": "0.4.38", "flax": "0.10.2", "optax": "0.2.4", "numpy": "2.0.2"},
        },
    }
    lines = tables.provenance_table([made, dict(made), {"device": "cpu: cpu", "num_devices": 1}, None])
    assert lines[0] == "| commit | jax | flax | optax | numpy | device | devices | runs |"
    rows = lines[2:]
    assert "| 0123456789ab (uncommitted changes) | 0.4.38 | 0.10.2 | 0.2.4 | 2.0.2 | cpu: cpu | 1 | 2 |" in rows
    assert "| not recorded (run before provenance was kept) |  |  |  |  | cpu: cpu | 1 | 1 |" in rows
    assert "| unfinished (no summary yet) |  |  |  |  |  |  | 1 |" in rows
    assert len(rows) == 3
