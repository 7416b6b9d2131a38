"""The calibration benchmark of Tan et al. (2025, arXiv:2505.23866): every method's run config, the
tuned hyper-parameters, the evaluation suite against the metrics it wraps, and the quick preset end
to end (tuning, training, evaluation, ensembles, export and the report rebuilt from the export)."""

import csv
import json
import os
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import calibration_benchmark as driver
from experiments.calibration_benchmark import evaluation
from experiments.configs.calibration_benchmark import GROUPS, NAMES, PRESETS, get_config
from sam_jax import calibration, optim
from sam_jax.models import create_model
from sam_jax.training import optimizer_hparams, validate_config
from tests.data_gates import needs_fashion_mnist

TUNED = {"learning_rate": 0.03, "weight_decay": 2e-4}


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "quick"])
def test_every_method_is_a_valid_run_config(preset):
    config = get_config(preset)
    assert set(config.methods) == set(NAMES)
    jobs = driver.method_jobs(config, TUNED, GROUPS)
    assert {job.group for job in jobs} == set(NAMES)
    for job in jobs:
        validate_config(job.config)
        kwargs = job.config.model.kwargs.to_dict()
        create_model(job.config.model.name, 10, **kwargs)
        assert "benchmark" not in job.config and "methods" not in job.config
    seeds = {label: sorted({j.config.seed for j in jobs if j.group == label}) for label in NAMES}
    assert seeds["ce"] == [0, 1, 2] and seeds["sgd_dropout"] == [0, 1, 2, 3, 4] and seeds["sam_geometry"] == [0]


def test_tuned_learning_rate_and_weight_decay_reach_exactly_the_sgd_based_methods():
    config = get_config("fmnist")
    jobs = {job.group: job.config for job in driver.method_jobs(config, TUNED, GROUPS) if job.config.seed == 0}
    for label, job_config in jobs.items():
        name = job_config.optimizer.name
        reads_sgd = name == "sgd" or "sgd" in optim.get_optimizer_spec(name).reads(optimizer_hparams(job_config)[name])
        expected_decay = TUNED["weight_decay"] if reads_sgd else 0.0
        assert job_config.optimizer.sgd.weight_decay == expected_decay, label
        if config.methods[label].learning_rate == 0:
            assert job_config.optimizer.learning_rate == TUNED["learning_rate"], label
    assert jobs["vi"].optimizer.learning_rate == 1e-3 and jobs["bsam"].optimizer.learning_rate == 0.1
    assert jobs["csam_g05"].optimizer.csam.gamma == 0.5 and jobs["csam_g05"].optimizer.csam.rho == 0.05
    assert jobs["sam_r01"].optimizer.sam.rho == 0.1 and jobs["csam_g30"].optimizer.csam.gamma == 3.0
    assert jobs["focal_sam"].loss.name == "focal" and jobs["focal_sam"].optimizer.name == "sam"
    # FL+CSAM / ACLS+CSAM (Table S15): CSAM whose descent reweights the focal / ACLS loss (eq. 4).
    assert (jobs["focal_csam"].loss.name, jobs["focal_csam"].optimizer.name) == ("focal", "csam")
    assert (jobs["acls_csam"].loss.name, jobs["acls_csam"].optimizer.csam.gamma) == ("acls", 1.0)
    assert jobs["mimo"].model.kwargs.backbone == "lenet5" and jobs["mimo"].model.kwargs.ensemble_size == 3
    assert jobs["sgd_dropout"].model.kwargs.dropout_rate == 0.1


def test_cifar10_cpu_preset_splits_tunes_with_two_seeds_and_runs_baselines_at_their_own_settings():
    from experiments.configs.calibration_benchmark import OWN_SETTINGS

    config = get_config("cifar10_cpu")
    assert (config.data.name, config.data.val_size, config.data.train_size) == ("cifar10_jpeg", 5000, 0)
    assert (config.batch_size, config.optimizer.schedule, config.optimizer.sgd.momentum) == (128, "cosine", 0.9)
    assert not config.data.augment.crop_padding and not config.data.augment.flip
    tune = driver.tune_jobs(config)
    assert len(tune) == 3 * 3 * 2 and sorted({job.config.seed for job in tune}) == [0, 1]
    jobs = {job.group: job.config for job in driver.method_jobs(config, TUNED, GROUPS) if job.config.seed == 0}
    focal = jobs["focal"]
    assert (focal.optimizer.learning_rate, focal.optimizer.sgd.weight_decay) == (0.1, 5e-4)
    assert focal.optimizer.schedule == "step" and focal.optimizer.step_boundaries == (150 / 350, 250 / 350)
    # A baseline whose own setting is not known keeps SGD's tuned one, and so do SGD and SAM.
    assert OWN_SETTINGS["acls"] is None
    for label in ("acls", "ce", "sam"):
        assert jobs[label].optimizer.learning_rate == TUNED["learning_rate"], label
        assert jobs[label].optimizer.sgd.weight_decay == TUNED["weight_decay"], label
        assert jobs[label].optimizer.schedule == "cosine", label
    assert set(OWN_SETTINGS) <= set(NAMES)
    assert jobs["bsam"].optimizer.learning_rate == 0.1 and jobs["bsam"].optimizer.bsam.prior_precision == 25.0


def test_search_picks_the_best_mean_over_its_seeds_and_drops_a_diverged_setting(tmp_path):
    config = get_config("quick")
    config.workdir = str(tmp_path)
    config.benchmark.seeds = (0, 1)
    config.benchmark.tune_seeds = 2
    config.benchmark.tune_learning_rates = (0.01, 0.05, 0.1)
    config.benchmark.tune_weight_decays = (5e-4,)
    # lr 0.1 has the best single seed but diverged on the other; lr 0.05 has the best mean.
    scores = {(0.01, 0): 0.80, (0.01, 1): 0.81, (0.05, 0): 0.84, (0.05, 1): 0.83}
    scores.update({(0.1, 0): 0.90, (0.1, 1): float("nan")})
    jobs = driver.tune_jobs(config)
    assert len(jobs) == 6
    assert driver.tuned_hparams(config) is None  # nothing trained yet
    for job in jobs:
        os.makedirs(job.workdir)
        with open(os.path.join(job.workdir, "summary.json"), "w") as f:
            json.dump({"val/accuracy": scores[(job.config.optimizer.learning_rate, job.config.seed)]}, f)
    tuned = driver.tuned_hparams(config)
    assert (tuned["learning_rate"], tuned["weight_decay"]) == (0.05, 5e-4)
    assert tuned["val/accuracy"] == pytest.approx(0.835)
    by_rate = {c["learning_rate"]: c for c in tuned["candidates"]}
    assert by_rate[0.1]["val/accuracy"] is None and by_rate[0.05]["per_seed"] == [0.84, 0.83]


def test_jobs_run_group_by_group_and_seed_by_seed():
    config = get_config("fmnist")
    jobs = driver.method_jobs(config, TUNED, GROUPS)
    keys = [(GROUPS.index(config.methods[job.group].group), job.config.seed) for job in jobs]
    assert keys == sorted(keys)
    assert config.methods[jobs[0].group].group == "main"


def test_unknown_group_is_refused():
    config = get_config("quick")
    config.benchmark.groups = "main,tables"
    with pytest.raises(ValueError, match="benchmark.groups"):
        driver.main(config, "report")


def test_calibration_suite_equals_the_metrics_it_wraps():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 5)) * 3
    labels = (np.argmax(logits + rng.normal(size=logits.shape) * 2, axis=1)).astype(np.int32)
    probs = np.exp(logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))).astype(np.float32)
    val, test = slice(0, 200), slice(200, 400)
    suite = driver.calibration_suite(probs[test], labels[test], probs[val], labels[val], 15)
    assert suite["ece"] == pytest.approx(float(calibration.ece(jnp.asarray(probs[test]), labels[test], 15)), abs=1e-6)
    log_probs = jnp.log(jnp.asarray(probs))
    tce = calibration.tce(log_probs[val], labels[val], log_probs[test], labels[test], 15)
    assert suite["tce"] == pytest.approx(float(tce), abs=1e-5)
    isotonic = calibration.fit_isotonic(probs[val], labels[val])
    assert suite["ece_isotonic"] == pytest.approx(
        float(calibration.ece(isotonic(jnp.asarray(probs[test])), labels[test], 15)), abs=1e-6
    )
    assert suite["auroc_ovr"] == pytest.approx(
        float(calibration.one_vs_rest_auroc(jnp.asarray(probs[test]), labels[test])), abs=1e-6
    )
    assert suite["classwise_ece"] == pytest.approx(
        float(calibration.classwise_ece(jnp.asarray(probs[test]), labels[test], 15)), abs=1e-6
    )


def _quick(workdir: str) -> ml_collections.ConfigDict:
    config = get_config("quick")
    config.workdir = workdir
    keep = ("ce", "sam", "csam_g10", "sam_geometry", "sgd_dropout")
    config.methods = ml_collections.ConfigDict({k: v for k, v in config.methods.items() if k in keep})
    return config


@pytest.mark.slow  # the driver end to end (LeNet-5, 9 runs); its parts have the tests above
@needs_fashion_mnist
def test_quick_preset_tunes_trains_evaluates_exports_and_reports(tmp_path):
    config = _quick(str(tmp_path / "grid"))
    driver.main(config, "all")

    tuned = json.loads((tmp_path / "grid" / driver.TUNED_FILE).read_text())
    best = max(tuned["candidates"], key=lambda c: c["val/accuracy"])
    assert (tuned["learning_rate"], tuned["weight_decay"]) == (best["learning_rate"], best["weight_decay"])
    _, jobs = driver.all_jobs(config)
    assert len(jobs) == 6 and all(job.config.optimizer.learning_rate == tuned["learning_rate"] for job in jobs)
    evaluation = json.loads(open(os.path.join(jobs[0].workdir, driver.EVAL_FILE)).read())
    assert set(evaluation["test"]) >= {"accuracy", "ece", "classwise_ece", "adaptive_ece", "tce", "auroc_ovr"}
    assert evaluation["kappa_max"] > 0 and len(evaluation["reliability"]["counts"]) == config.num_bins
    assert evaluation["ood"]["digits"]["num_ood"] > 0
    dropout = [job for job in jobs if job.group == "sgd_dropout"]
    dropout_evaluations = [json.loads(open(os.path.join(j.workdir, driver.EVAL_FILE)).read()) for j in dropout]
    assert all("mc_dropout" in e and "kappa_max" not in e for e in dropout_evaluations)  # not one of S16's
    ensemble = json.loads((tmp_path / "grid" / "sgd_dropout" / driver.ENSEMBLE_FILE).read_text())
    assert ensemble["members"] == [job.name for job in dropout]
    (geometry_job,) = [job for job in jobs if job.group == "sam_geometry"]
    geometry = [json.loads(line) for line in open(os.path.join(geometry_job.workdir, "metrics.jsonl"))]
    assert any("sam_geometry/kappa_min_t1.0" in record for record in geometry)

    report = tmp_path / "grid" / "report"
    for name in ("report.md", "table3.csv", "table1.csv", "figure3.png", "reliability.png", "figure2.png", "runs.csv"):
        assert (report / name).exists(), name
    with open(report / "table3.csv") as f:
        rows = {row["label"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"ce", "sam", "csam_g10", "csam_best"}
    assert float(rows["ce"]["test.ece_mean"]) == pytest.approx(evaluation["test"]["ece"])

    driver.main(config, "export")
    compact = tmp_path / "compact"
    shutil.move(str(tmp_path / "grid" / "compact"), compact)
    assert not list(compact.rglob("checkpoints"))
    copy = _quick(str(compact))
    driver.main(copy, "report")
    assert (compact / "report" / "table3.csv").read_text() == (report / "table3.csv").read_text()
    assert (compact / "report" / "table1.csv").read_text() == (report / "table1.csv").read_text()


def test_ood_images_take_the_model_input_size_and_channels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 8, 8, 1)).astype(np.uint8)
    dataset = evaluation.data.ArrayDataset(images, np.arange(4, dtype=np.int32), 10)
    gray = evaluation._as_model_input(dataset, (28, 28, 1))
    assert gray.images.shape == (4, 28, 28, 1) and gray.images.dtype == np.uint8
    assert np.array_equal(gray.labels, dataset.labels)
    color = evaluation._as_model_input(dataset, (32, 32, 3))
    assert color.images.shape == (4, 32, 32, 3)
    assert np.array_equal(color.images[..., 0], color.images[..., 2])
    same = evaluation._as_model_input(dataset, (8, 8, 1))
    assert np.array_equal(same.images, images)
