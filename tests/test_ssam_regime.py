"""Stable SAM's learning-rate regime (``experiments.ssam_regime``): the report's verdicts on hand-made
rows, and the driver end to end on its ``quick`` preset (a run that diverges, descent/ascent norm
tracking on the SAM-family runs only, and a compact export that rebuilds the same tables).
"""

import json
import os

import numpy as np
import pytest

from experiments import ssam_regime
from experiments.configs.ssam_regime import get_config
from sam_jax.training import validate_config
from sam_jax.training.config import optimizer_hparams


def row(accuracy, accuracy_std, nll=1.0, nll_std=0.0, diverged=0, finished=3):
    return {
        "seeds_finished": finished,
        "seeds_planned": 3,
        "diverged": diverged,
        "accuracy_mean": accuracy,
        "accuracy_std": accuracy_std,
        "nll_mean": nll,
        "nll_std": nll_std,
        "ece_mean": 0.05,
        "ece_std": 0.0,
    }


def test_compare_needs_a_gap_larger_than_both_spreads():
    reference = row(0.87, 0.01, nll=0.40, nll_std=0.01)
    assert ssam_regime.compare(row(0.90, 0.01), reference, "accuracy", True) == "better"  # 0.03 > 0.02
    assert ssam_regime.compare(row(0.885, 0.01), reference, "accuracy", True) == "tie"  # 0.015 < 0.02
    assert ssam_regime.compare(row(0.84, 0.005), reference, "accuracy", True) == "worse"  # -0.03, spread 0.015
    assert ssam_regime.compare(row(0.5, 0.0, nll=0.35), reference, "nll", False) == "better"  # lower NLL
    assert ssam_regime.compare(row(0.9, 0.0, nll=0.45), reference, "nll", False) == "worse"


def test_compare_divergence_and_missing_seeds():
    good, diverged = row(0.8, 0.0), row(float("nan"), float("nan"), diverged=1)
    assert ssam_regime.compare(good, diverged, "accuracy", True) == "better"
    assert ssam_regime.compare(diverged, good, "accuracy", True) == "worse"
    assert ssam_regime.compare(diverged, diverged, "accuracy", True) == "tie"
    assert ssam_regime.compare(row(0.9, 0.0, finished=2), good, "accuracy", True) == "incomplete"
    assert ssam_regime.compare(None, good, "accuracy", True) == "incomplete"


def test_comparison_rows_give_the_range_and_its_gaps():
    rows = []
    for lr, sam_accuracy in ((0.01, 0.90), (0.1, 0.80), (1.0, 0.90)):
        rows.append({"method": "sgd", "learning_rate": lr, **row(0.80, 0.01)})
        rows.append({"method": "sam", "learning_rate": lr, **row(sam_accuracy, 0.01)})
    (accuracy, *_) = ssam_regime.comparison_rows(rows, [("sam", "sgd")])
    assert accuracy["better_at"] == "0.01 1"
    assert (accuracy["lowest"], accuracy["highest"], accuracy["contiguous"]) == (0.01, 1.0, False)
    assert accuracy["lr0.1"] == "tie"


def test_quick_preset_trains_tracks_reports_and_exports(tmp_path):
    config = get_config("quick")
    config.workdir = str(tmp_path / "grid")
    ssam_regime.main(config, "all")
    jobs = {job.name: job for job in ssam_regime.grid_jobs(config)}
    with open(os.path.join(jobs["sgd/cross_entropy/lr1e+10/seed0"].workdir, "summary.json")) as f:
        assert json.load(f)["diverged"]
    for name, job in jobs.items():
        if "lr1e+10" in name:
            continue
        with open(os.path.join(job.workdir, "metrics.jsonl")) as f:
            tracked = [r["step"] for r in map(json.loads, f) if "sam_norms/ratio_mean" in r]
        # SAM-family runs are tracked at step 0, every regime.ratio_every steps and at the end.
        assert tracked == ([] if name.startswith("sgd/") else [0, 2, 4]), name
    report = tmp_path / "grid" / "report"
    for name in ("ssam_regime.md", "table.csv", "comparisons.csv", "ratio.csv", "metrics_vs_lr.png"):
        assert os.path.getsize(report / name) > 0
    text = (report / "ssam_regime.md").read_text()
    assert "| 1e+10 | diverged | not run | not run |" in text  # columns: sgd, sam, ssam
    ssam_regime.main(config, "export")
    config.workdir = os.path.join(config.workdir, "compact")
    ssam_regime.main(config, "report")
    for name in ("table.csv", "comparisons.csv", "ratio.csv"):
        assert (tmp_path / "grid" / "compact" / "report" / name).read_text() == (report / name).read_text(), name


@pytest.mark.parametrize("preset", ["fmnist", "cifar10_jpeg"])
def test_sweep_presets_share_one_protocol(preset):
    config = get_config(preset)
    jobs = ssam_regime.grid_jobs(config)
    rates = sorted({job.config.optimizer.learning_rate for job in jobs})
    assert len(rates) >= 7 and rates[-1] / rates[0] > 1e3
    np.testing.assert_allclose(np.diff(np.log10(rates)), 0.5, atol=1e-3)  # half a decade apart
    assert len(jobs) == 3 * len(rates) * 3  # sgd, sam, ssam x rates x seeds 0, 1, 2
    for job in jobs:
        validate_config(job.config)
        assert (job.config.optimizer.sgd.momentum, job.config.optimizer.sgd.weight_decay) == (0.9, 5e-4)
        assert job.config.optimizer.schedule == "cosine" and job.config.num_epochs == 20
        hparams = optimizer_hparams(job.config)[job.config.optimizer.name]
        assert hparams.get("rho", 0.05) == 0.05 and hparams.get("base", "sgd") == "sgd"
    assert {job.config.data.name for job in jobs} == {"cifar10_jpeg" if preset == "cifar10_jpeg" else "fashion_mnist"}
