"""The overconfidence premise check (``sam_jax.analysis.overconfidence``, ``experiments.overconfidence``)."""

import json
import os

import pytest

from experiments import overconfidence as driver
from experiments.configs.overconfidence import get_config
from sam_jax.analysis import overconfidence


def _records(nlls, accuracies, confidences, split="test"):
    records = []
    for step, (nll, accuracy, confidence) in enumerate(zip(nlls, accuracies, confidences)):
        records.append({"step": 10 * step, "epoch": float(step), "train_step/loss": 1.0})  # a record without them
        records.append(
            {
                "step": 10 * step,
                "epoch": float(step),
                f"{split}/nll": nll,
                f"{split}/accuracy": accuracy,
                f"{split}/mean_confidence": confidence,
            }
        )
    return records


def test_a_run_whose_nll_rises_again_while_confidence_outgrows_accuracy_is_past_its_best():
    summary = overconfidence(
        _records([2.0, 1.2, 1.0, 1.1, 1.4], [0.3, 0.5, 0.6, 0.62, 0.63], [0.3, 0.5, 0.62, 0.7, 0.8])
    )
    assert summary["best_step"] == 20 and summary["best_nll"] == 1.0
    assert summary["final_step"] == 40 and summary["final_nll"] == 1.4
    assert summary["nll_rise"] == pytest.approx(0.4)
    assert summary["confidence_minus_accuracy"] == pytest.approx(0.17)
    assert summary["confidence_minus_accuracy_at_best"] == pytest.approx(0.02)
    assert summary["past_best"] is True


@pytest.mark.parametrize(
    "nlls, confidences",
    [
        ([2.0, 1.5, 1.2, 1.1], [0.3, 0.6, 0.8, 0.9]),  # NLL still falling: not past its best
        ([2.0, 1.0, 1.1, 1.2], [0.3, 0.4, 0.5, 0.55]),  # NLL rises but the model is underconfident
    ],
)
def test_a_run_that_is_not_past_its_best_or_not_overconfident_is_not(nlls, confidences):
    assert overconfidence(_records(nlls, [0.3, 0.5, 0.6, 0.6], confidences))["past_best"] is False


def test_the_split_is_chosen_and_a_run_without_its_evaluations_is_a_clear_error():
    records = _records([2.0, 1.0, 1.5], [0.3, 0.6, 0.6], [0.3, 0.6, 0.9], split="val")
    assert overconfidence(records, "val")["past_best"] is True
    with pytest.raises(ValueError, match="test/nll"):
        overconfidence(records)


def test_parse_runs_labels_and_rejects():
    assert driver.parse_runs("sgd=runs/a, runs/b/") == {"sgd": "runs/a", "b": "runs/b/"}
    with pytest.raises(ValueError, match="twice"):
        driver.parse_runs("a=x,a=y")
    with pytest.raises(ValueError, match="empty"):
        driver.parse_runs(" , ")


def test_report_writes_the_table_csv_and_figure(tmp_path):
    for name, nlls in (("rises", [2.0, 1.0, 1.3]), ("falls", [2.0, 1.5, 1.2])):
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "metrics.jsonl", "w") as f:
            for record in _records(nlls, [0.3, 0.6, 0.6], [0.3, 0.6, 0.7]):
                f.write(json.dumps(record) + "\n")
    config = get_config()
    config.runs = f"sgd={tmp_path / 'rises'},{tmp_path / 'falls'}"
    config.output_dir = str(tmp_path / "out")
    rows = driver.report(config)
    assert [(row["run"], row["past_best"]) for row in rows] == [("sgd", True), ("falls", False)]
    table = (tmp_path / "out" / "overconfidence.md").read_text()
    assert "| sgd | 10 | 1.0000 | 20 | 1.3000 | +0.3000 |" in table
    assert (tmp_path / "out" / "overconfidence.png").stat().st_size > 1000
    assert (tmp_path / "out" / "overconfidence.csv").read_text().count("\n") == 3
