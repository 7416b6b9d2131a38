"""The bSAM Table 1 experiment (Möllenhoff & Khan 2022, arXiv:2210.01620): Table 6 in the presets, the
grid's method labels, and the quick preset end to end on real Fashion-MNIST."""

import csv
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
import scipy.special

from experiments import bsam_table1 as driver
from experiments import grid
from experiments.configs.bsam_table1 import ABLATIONS, PAPER_TABLE1, PRESETS, TRAIN_SIZES, VOGN_DAMPING, get_config
from sam_jax.training import load_trained, optimizer_hparams, predict, validate_config
from tests.data_gates import needs_fashion_mnist


def _jobs_by_label(preset: str) -> dict[str, grid.Job]:
    return {job.group: job for job in driver.grid_jobs(get_config(preset)) if job.config.seed == 0}


def test_fmnist_preset_is_table6_with_eight_sub_batches_of_sixteen():
    jobs = _jobs_by_label("fmnist")
    assert sorted(jobs) == ["adam", "bsam", "bsam_gamma_ablation", "ivon", "sam_adam", "sam_sgd", "sgd", "swag", "vogn"]
    num_train = TRAIN_SIZES["fashion_mnist"]
    delta = 60 / num_train  # N * delta = 60 for every method but bSAM (50)
    expected = {
        "sgd": ("sgd", 0.01, {"sgd": {"momentum": 0.8, "weight_decay": delta}}),
        "adam": ("adam", 0.001, {"adam": {"b1": 0.9, "weight_decay": delta}}),
        "sam_sgd": ("sam", 0.05, {"sam": {"rho": 0.05, "m": 16, "base": "sgd"}, "sgd": {"momentum": 0.8}}),
        "sam_adam": ("sam", 0.001, {"sam": {"rho": 0.02, "m": 16, "base": "adam"}, "adam": {"weight_decay": delta}}),
        "bsam": (
            "bsam",
            0.1,
            {"bsam": {"rho": 0.002, "beta1": 0.95, "prior_precision": 50.0, "m": 16, "damping": 0.1}},
        ),
        "bsam_gamma_ablation": ("bsam", 0.1, {"bsam": {"rho": 0.002, "prior_precision": 50.0, "damping": 0.05}}),
        # VOGN's row of Table 6 (its beta2 and gamma columns), 16 sub-batches of 8 with their own sample.
        "vogn": (
            "vogn",
            0.0001,
            {"vogn": {"beta1": 0.95, "beta2": 0.99, "prior_precision": 25.0, "damping": 0.05, "m": 8}},
        ),
        # Not in the paper: IVON with its package's defaults at bSAM's alpha and N * delta, ess = N.
        "ivon": (
            "ivon",
            0.1,
            {"ivon": {"hess_init": 1.0, "beta1": 0.9, "beta2": 0.99999, "ess": 0.0, "weight_decay": 50 / num_train}},
        ),
        # App. H: SGD (Table 6's row) for 105 of 120 epochs, then 15 at alpha 0.001 and beta1 0.8; here
        # 10 epochs of 468 steps, so the collection starts at step 4,095 (105/120 of 4,680).
        "swag": (
            "swag",
            0.01,
            {
                "swag": {"start_step": 4095, "collect_learning_rate": 0.001, "collect_every": 100, "rank": 20},
                "sgd": {"momentum": 0.8, "weight_decay": delta},
            },
        ),
    }
    for label, (name, learning_rate, blocks) in expected.items():
        config = jobs[label].config
        validate_config(config, num_train)
        assert config.optimizer.name == name and config.optimizer.learning_rate == learning_rate
        hparams = optimizer_hparams(config)
        for block, values in blocks.items():
            for field, value in values.items():
                assert hparams[block][field] == pytest.approx(value), (label, block, field)
        assert config.batch_size == 128 and config.optimizer.schedule == "cosine"
        assert config.optimizer.decay_steps == (4095 if label == "swag" else 0)
        assert config.data.val_size == 0 and config.num_bins == 20 and config.model.name == "lenet5"
    seeds = sorted({job.config.seed for job in driver.grid_jobs(get_config("fmnist"))})
    assert seeds == [0, 1, 2]
    assert "table1" not in jobs["sgd"].config  # evaluation settings never enter a run's config


@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in ("quick", "fmnist")])
def test_every_paper_setting_validates_with_its_model_schedule_and_paper_row(preset):
    config = get_config(preset)
    jobs = {job.group: job for job in driver.grid_jobs(config) if job.config.seed == 0}
    dataset = config.data.name
    assert sorted(jobs) == sorted([*PAPER_TABLE1[dataset], *ABLATIONS, "ivon"])
    for job in jobs.values():
        validate_config(job.config, TRAIN_SIZES[dataset])
    expected = {"mnist": ("mlp", 75), "fashion_mnist": ("lenet5", 120), "cifar10": ("resnet20_frn", 180)}
    model, epochs = expected.get(dataset, ("resnet20_frn", 180))
    assert (config.model.name, config.num_epochs) == (model, epochs)
    # SWAG: App. H's epochs of SGD, then 15 epochs of collection; the SGD phase's cosine ends with it.
    steps_per_epoch = TRAIN_SIZES[dataset] // 128
    sgd_epochs = {"mnist": 60, "fashion_mnist": 105}.get(dataset, 165)
    swag = jobs["swag"].config.optimizer
    assert swag.swag.start_step == sgd_epochs * steps_per_epoch
    assert (epochs - sgd_epochs, swag.swag.rank, swag.swag.collect_every) == (15, 20, 100)
    assert swag.decay_steps == (0 if dataset.startswith("cifar") else sgd_epochs * steps_per_epoch)
    assert optimizer_hparams(jobs["vogn"].config)["vogn"]["m"] == 8  # 16 sub-batches of the batch of 128
    if dataset.startswith("cifar"):
        assert config.optimizer.schedule == "step" and config.optimizer.step_factor == 0.1
        assert tuple(round(b * 180) for b in config.optimizer.step_boundaries) == (100, 120)
        assert optimizer_hparams(jobs["bsam"].config)["bsam"]["rho"] == 0.001


@pytest.mark.parametrize("preset", PRESETS)
def test_bsam_damping_is_algorithm_1s_in_every_preset(preset):
    # Algorithm 1 fixes gamma = 0.1 (so does the authors' code); Table 6's gamma column is VOGN's
    # damping and enters bSAM only in the labelled ablation row.
    config = get_config(preset)
    jobs = {job.group: job for job in driver.grid_jobs(config) if job.config.seed == config.grid.seeds[0]}
    assert optimizer_hparams(jobs["bsam"].config)["bsam"]["damping"] == 0.1
    if "bsam_gamma_ablation" in jobs:
        ablation = optimizer_hparams(jobs["bsam_gamma_ablation"].config)["bsam"]
        assert ablation["damping"] == VOGN_DAMPING[config.data.name] != 0.1
    assert (preset == "quick") == ("bsam_gamma_ablation" not in jobs)


def test_jobs_are_seed_major_so_a_cut_grid_has_whole_seeds():
    config = get_config("fmnist_paper")
    seeds = [job.config.seed for job in driver.grid_jobs(config)]
    assert seeds == sorted(seeds) and len(seeds) == 5 * len(config.grid.optimizers)


def test_grid_labels_can_share_an_optimizer():
    config = get_config("quick")
    del config["table1"]
    config.grid.optimizers = ml_collections.ConfigDict(
        {
            "sam_a": {"optimizer": "sam", "learning_rates": (0.1,), "overrides": {"optimizer": {"sam": {"rho": 0.1}}}},
            "sam_b": {"optimizer": "sam", "learning_rates": (0.1,)},
            "bulk": {"optimizer": "bulk_sgd", "learning_rates": (0.1,), "axes": (("optimizer.bulk_sgd.k", (1, 2)),)},
        }
    )
    jobs = {job.group: job for job in grid.expand_grid(config)}
    assert sorted(jobs) == ["bulk_k1", "bulk_k2", "sam_a", "sam_b"]
    assert {jobs[label].config.optimizer.name for label in ("sam_a", "sam_b")} == {"sam"}
    assert (jobs["sam_a"].config.optimizer.sam.rho, jobs["sam_b"].config.optimizer.sam.rho) == (0.1, 0.05)
    assert jobs["sam_a"].workdir != jobs["sam_b"].workdir
    assert jobs["bulk_k2"].config.optimizer.bulk_sgd.k == 2
    config.grid.optimizers = ml_collections.ConfigDict(
        {"x": {"optimizer": "sgd", "learning_rates": (0.1,), "ks": (1,)}}
    )
    with pytest.raises(ValueError, match=r'ks is replaced by .*axes=\(\("optimizer.sgd.k", \(1,\)\),\)'):
        grid.expand_grid(config)


ALL_METHODS = ["SGD", "SAM-SGD", "SWAG", "VOGN", "Adam", "SAM-Adam", "bSAM", "IVON (not in the paper)"]


@needs_fashion_mnist
@pytest.mark.parametrize(
    "methods",
    [
        # One method per evaluation path (a point, SWAG's low-rank posterior, bSAM's diagonal one,
        # which VOGN shares); every optimizer's steps are pinned down by tests/test_wiring.py.
        pytest.param(("sgd", "swag", "bsam"), id="posteriors"),
        pytest.param(None, id="every_method", marks=pytest.mark.slow),
    ],
)
def test_quick_preset_trains_evaluates_and_reports(tmp_path, methods):
    config = get_config("quick")
    config.workdir = str(tmp_path)
    for label in list(config.grid.optimizers.keys()):
        if methods is not None and label not in methods:
            del config.grid.optimizers[label]
    driver.main(config, mode="all")
    report = tmp_path / "report"
    with open(report / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    expected = [name for label, name in driver.METHOD_NAMES.items() if methods is None or label in methods]
    assert [row["method"] for row in rows] == [name for name in ALL_METHODS if name in expected]
    assert (report / "bsam_posterior_samples.png").exists() and (report / "bsam_precision_histogram.png").exists()

    jobs = {job.group: job for job in driver.grid_jobs(config)}
    # Each row is its one run's evaluation (one seed: std 0) ...
    labels = [label for label in driver.METHOD_NAMES if label in jobs]
    for row, label in zip(rows, labels, strict=True):
        with open(os.path.join(jobs[label].workdir, driver.EVAL_FILE)) as f:
            evaluation = json.load(f)["test"]
        assert row["seeds"] == "1"
        for metric in driver.METRICS:
            assert float(row[f"{metric}_mean"]) == pytest.approx(evaluation[metric], rel=1e-12)
            assert float(row[f"{metric}_std"]) == 0.0
    # ... and an evaluation is the saved model's: SGD's accuracy (%) and NLL from its test logits.
    run, state = load_trained(jobs["sgd"].workdir)
    probs = scipy.special.softmax(predict(run, state.params, state.model_state, run.data.test), axis=1)
    labels = run.data.test.labels
    sgd_test = rows[0]
    assert float(sgd_test["accuracy_mean"]) == pytest.approx(100 * np.mean(probs.argmax(1) == labels), abs=1e-4)
    nll = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    assert float(sgd_test["nll_mean"]) == pytest.approx(nll, rel=1e-4)
    with open(os.path.join(jobs["bsam"].workdir, driver.EVAL_FILE)) as f:
        bsam = json.load(f)
    assert sorted(bsam["sample_curve"], key=int) == ["1", "2"]
    assert bsam["test"] == bsam["sample_curve"]["2"] and bsam["test"] != bsam["point"]
    num_params = 61_706  # LeNet-5 with 10 outputs: one precision per weight
    assert sum(bsam["precision_histogram"]["counts"]) == num_params
    # VOGN and SWAG predict through the same posterior interface; VOGN's precision is diagonal too.
    for label in [label for label in ("vogn", "swag") if label in jobs]:
        with open(os.path.join(jobs[label].workdir, driver.EVAL_FILE)) as f:
            evaluation = json.load(f)
        assert evaluation["test"] == evaluation["sample_curve"]["2"] and evaluation["test"] != evaluation["point"]
        assert ("precision_histogram" in evaluation) == (label == "vogn")
    assert all((report / f"{label}_posterior_samples.png").exists() for label in ("vogn", "swag") if label in jobs)
    with open(os.path.join(jobs["sgd"].workdir, driver.EVAL_FILE)) as f:
        sgd = json.load(f)
    assert sgd["test"] == sgd["point"] and "sample_curve" not in sgd

    # The committed evaluations alone rebuild the report: no checkpoint is needed.
    before = (report / "table1.md").read_text()
    for job in jobs.values():
        shutil.rmtree(os.path.join(job.workdir, "checkpoints"))
    os.remove(report / "table1.md")
    driver.main(config, mode="report")
    assert (report / "table1.md").read_text() == before


def test_posterior_precision_is_read_from_the_chain_state():
    from sam_jax import optim

    params = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    tx = optim.bsam(0.1, 0.01, 100, prior_precision=1.0, init_precision=2.0)
    precision = driver._posterior_precision(jax.tree.map(np.asarray, tx.init(params)))
    assert precision.shape == (9,) and np.all(precision == 2.0)
