"""The "Too Sharp, Too Sure" experiment: grid runner, Table 1 correlations, and an end-to-end smoke run."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import scipy.stats

from experiments import curvature_calibration as driver
from experiments import grid, runner, store
from experiments.configs.curvature_calibration import CIFAR10_EOS_LEARNING_RATES, get_config
from sam_jax.analysis import mean_std_over_learning_rates, pearson, trajectory, trajectory_correlation
from sam_jax.training import build_run, load_run_data, read_metrics, validate_config
from sam_jax.training.loop import log_spaced_steps
from sam_jax.training.workdir import LOCK_FILE
from tests.data_gates import needs_fashion_mnist

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _quick(workdir) -> ml_collections.ConfigDict:
    config = get_config("quick")
    config.workdir = str(workdir)
    return config


# --- grid expansion, shards, skip-if-done ---------------------------------------------------------


def test_expand_grid_names_and_fields(tmp_path):
    config = get_config("fmnist")
    config.workdir = str(tmp_path)
    config.grid.seeds = (0, 1)
    jobs = grid.expand_grid(config)
    spec = config.grid.optimizers
    expected = sum(len(s.learning_rates) * len(s.losses) * math.prod(len(v) for _, v in s.axes) for s in spec.values())
    expected *= 2  # seeds
    assert len(jobs) == expected
    assert len({job.workdir for job in jobs}) == len(jobs)
    by_name = {job.name: job for job in jobs}
    bulk = by_name[os.path.join("bulk_sgd_k3", "cross_entropy", "lr0.02857", "seed1")]
    assert bulk.group == "bulk_sgd_k3"
    assert bulk.config.optimizer.name == "bulk_sgd" and bulk.config.optimizer.bulk_sgd.k == 3
    assert bulk.config.optimizer.learning_rate == pytest.approx(2 / 70)
    assert bulk.config.seed == 1 and bulk.config.resume
    assert bulk.workdir == os.path.join(str(tmp_path), "bulk_sgd_k3", "cross_entropy", "lr0.02857", "seed1")
    assert "grid" not in bulk.config
    gd_mse = by_name[os.path.join("gd", "mse", "lr0.02", "seed0")]
    assert gd_mse.config.loss.name == "mse"
    # learning_rates_by_loss replaces the rates for that loss only.
    assert {
        job.config.optimizer.learning_rate for job in jobs if job.group == "sgd" and job.config.loss.name == "mse"
    } == set(spec.sgd.learning_rates_by_loss.mse)
    assert os.path.join("gd", "cross_entropy", "lr0.25", "seed0") in by_name
    # Per-optimizer overrides reach only that optimizer's jobs.
    assert gd_mse.config.curvature.quantities == "hessian,gauss_newton"
    assert gd_mse.config.num_steps != bulk.config.num_steps
    assert "batch_sharpness" in bulk.config.curvature.quantities


@pytest.mark.parametrize("preset, bulk_num_iters", [("quick", 4), ("fmnist", 12), ("paper", 20)])
def test_every_job_validates_with_plain_gradient_settings(preset, bulk_num_iters):
    # Per-optimizer settings live in each optimizer's overrides: every job must pass
    # validate_config, and none has momentum or weight decay (the 2/lr threshold of plain (S)GD).
    for job in grid.expand_grid(get_config(preset)):
        validate_config(job.config)
        opt = job.config.optimizer
        assert opt.schedule == "constant"
        if opt.name in ("sgd", "sam"):
            assert (opt.sgd.momentum, opt.sgd.weight_decay) == (0.0, 0.0), job.name
        if opt.name == "sam":
            assert (opt.sam.rho, opt.sam.base, opt.sam.m) == (0.05, "sgd", 0)
        if opt.name in ("gd", "adamw", "muon"):
            assert opt[opt.name].weight_decay == 0.0, job.name
        if opt.name == "bulk_sgd":
            assert (opt.bulk_sgd.num_iters, opt.bulk_sgd.momentum) == (bulk_num_iters, 0.0)
            assert job.group == f"bulk_sgd_k{opt.bulk_sgd.k}"


def test_expand_grid_is_deterministic():
    names = [job.name for job in grid.expand_grid(get_config("paper"))]
    assert names == [job.name for job in grid.expand_grid(get_config("paper"))]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.grid.optimizers.sgd.update({"learning_rates": ()}), "learning_rates"),
        (lambda c: c.grid.optimizers.sgd.update({"ks": (1,)}), "replaced by an axis"),
        (lambda c: c.grid.optimizers.sgd.update({"axes": (("optimizer.sgd.no_such", (1,)),)}), "does not have"),
        (lambda c: c.grid.optimizers.sgd.update({"axes": (("optimizer.sgd.momentum",),)}), "each axis"),
        (lambda c: c.grid.optimizers.gd.learning_rates_by_loss.update({"hinge": (0.1,)}), "one of its losses"),
        (lambda c: c.grid.optimizers.sgd.overrides.update({"no_such_field": 1}), "no_such_field"),
    ],
)
def test_expand_grid_rejects_bad_grids(change, message):
    config = get_config("quick")
    change(config)
    with pytest.raises(ValueError, match=message):
        grid.expand_grid(config)


def test_grid_axes_sweep_any_config_path():
    """An axis is a dotted config path: the jobs are the product of the axes, labelled by them."""
    config = get_config("quick")
    config.grid.optimizers = {
        "sgd": {
            "learning_rates": (0.1,),
            "axes": (("optimizer.sgd.momentum", (0.0, 0.9)), ("model.kwargs.activation", ("tanh", "relu"))),
        }
    }
    jobs = grid.expand_grid(config)
    assert [job.group for job in jobs] == [
        "sgd_momentum0.0_activationtanh",
        "sgd_momentum0.0_activationrelu",
        "sgd_momentum0.9_activationtanh",
        "sgd_momentum0.9_activationrelu",
    ]
    last = jobs[-1].config
    assert (last.optimizer.sgd.momentum, last.model.kwargs.activation) == (0.9, "relu")
    assert jobs[-1].name == os.path.join("sgd_momentum0.9_activationrelu", "cross_entropy", "lr0.1", "seed0")


def test_expand_grid_needs_grid_block():
    config = get_config("quick")
    del config["grid"]
    with pytest.raises(ValueError, match="no grid.optimizers"):
        grid.expand_grid(config)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="quick"):
        get_config("huge")


@pytest.mark.parametrize("count", [1, 2, 3, 7, 10])
def test_shards_partition_the_jobs(count):
    jobs = grid.expand_grid(get_config("fmnist"))
    shards = [grid.shard_jobs(jobs, i, count) for i in range(count)]
    names = [job.name for shard in shards for job in shard]
    assert sorted(names) == sorted(job.name for job in jobs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("text", ["2/2", "-1/2", "a/b", "1", "0/0"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="shard"):
        grid.parse_shard(text)


def test_parse_shard():
    assert grid.parse_shard("3/4") == (3, 4)


def test_select_jobs_keeps_the_matching_jobs_in_order_and_rejects_a_pattern_that_matches_none():
    jobs = grid.expand_grid(get_config("fmnist"))
    assert runner.select_jobs(jobs, ()) == jobs
    chosen = runner.select_jobs(jobs, ["sam/*/seed0", "gd/*"])
    wanted = lambda name: name.startswith("gd/") or (name.startswith("sam/") and name.endswith("/seed0"))
    assert chosen == [job for job in jobs if wanted(job.name)]
    assert chosen and len(chosen) < len(jobs)
    with pytest.raises(ValueError, match="samm"):
        runner.select_jobs(jobs, ["sam/*", "samm/*"])


def test_done_jobs_are_skipped(tmp_path, monkeypatch):
    jobs = grid.expand_grid(_quick(tmp_path))
    done, todo = jobs[0], jobs[1]
    os.makedirs(done.workdir)
    with open(os.path.join(done.workdir, "summary.json"), "w") as f:
        json.dump({"test/accuracy": 0.5}, f)
    trained = []
    monkeypatch.setattr(grid, "load_run_data", lambda config: "data")
    monkeypatch.setattr(grid, "build_run", lambda config, run_data: (config.workdir, run_data))
    monkeypatch.setattr(
        grid,
        "train_and_evaluate",
        lambda config, workdir, hooks, run: trained.append((workdir, run, tuple(hooks))) or {},
    )
    assert grid.run_job(done) == {"test/accuracy": 0.5}
    grid.run_jobs([done, todo], progress=False)
    assert trained == [(todo.workdir, (todo.workdir, "data"), ())]  # no hooks unless a driver gives them


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Prints whether another process can take the lock of the directory argv[1].
CLAIM_SCRIPT = (
    "import sys; from sam_jax.training.workdir import try_workdir_lock\n"
    "with try_workdir_lock(sys.argv[1]) as mine: print(mine)"
)


def test_exclusive_runs_skip_a_job_held_by_another_process_until_it_exits(tmp_path, monkeypatch):
    held, free = grid.expand_grid(_quick(tmp_path))[:2]
    os.makedirs(held.workdir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True);"
            " time.sleep(60)",
            os.path.join(held.workdir, LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
    )
    trained = []
    monkeypatch.setattr(grid, "ensure_debian_fashion_mnist", lambda: None)
    monkeypatch.setattr(grid, "load_run_data", lambda config: "data")
    monkeypatch.setattr(grid, "run_job", lambda job, run_data, after_job, hooks: trained.append(job.name))
    try:
        assert holder.stdout.readline() == b"1\n"
        grid.run_jobs([held, free], progress=False, exclusive=True)
        assert trained == [free.name]
        grid.run_jobs([held], progress=False)  # without exclusive, locks are not consulted
        assert trained == [free.name, held.name]
    finally:
        holder.kill()
        holder.wait()
    grid.run_jobs([held], progress=False, exclusive=True)  # the killed holder's lock is gone
    assert trained == [free.name, held.name, held.name]
    # Re-entrant within a process: a claimed job is then trained under the same lock.
    with grid.claim_job(free) as mine, grid.claim_job(free) as again:
        assert mine and again
        claimed = subprocess.run(
            [sys.executable, "-c", CLAIM_SCRIPT, free.workdir], capture_output=True, text=True, cwd=ROOT
        )
        assert claimed.stdout.strip() == "False", claimed.stderr[-2000:]


def test_run_data_cache_loads_each_data_config_once_for_the_grid_and_its_caller(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(grid, "ensure_debian_fashion_mnist", lambda: None)
    monkeypatch.setattr(grid, "load_run_data", lambda config: loaded.append(config.data.train_size) or object())
    monkeypatch.setattr(grid, "run_job", lambda job, run_data, after_job, hooks: None)
    config = _quick(tmp_path)
    other = _quick(tmp_path)
    other.data.train_size = 500
    cache = grid.RunDataCache()
    grid.run_jobs(grid.expand_grid(config)[:3], progress=False, run_data=cache)
    assert loaded == [1000]
    assert cache(config) is cache(get_config("quick")) and cache(other) is not cache(config)
    assert loaded == [1000, 500]


def test_diverged_job_is_recorded_and_not_retried(tmp_path, monkeypatch):
    job = grid.expand_grid(_quick(tmp_path))[0]
    os.makedirs(job.workdir)

    def diverge(config, workdir, hooks, run):
        raise grid.TrainingDivergedError("loss is nan")

    monkeypatch.setattr(grid, "build_run", lambda config, run_data: None)
    monkeypatch.setattr(grid, "train_and_evaluate", diverge)
    assert grid.run_job(job)["diverged"]
    assert job.done


# --- correlations and Table 1 against numpy / scipy -------------------------------------------------


def _synthetic_records(rng, steps, ece_scale, noise):
    sharp = 10 + 5 * np.sin(steps / 40.0)
    records = []
    for step, s in zip(steps, sharp):
        records.append(
            {
                "step": int(step),
                "curvature/gauss_newton_top1": float(s),
                "curvature/batch_sharpness": float(s + 3 * rng.normal()),
                "train/ece": float(ece_scale * s + noise * rng.normal()),
                "train/kce": float(-ece_scale * s + noise * rng.normal()),
                "val/ece": float(rng.normal()),
                "val/kce": float(rng.normal()),
                "train/loss": 1.0,
                "train/accuracy": float(min(1.0, 0.5 + step / (1.4 * steps[-1]))),
                "train/mean_margin": 0.1,
                "val/loss": 1.0,
                "val/accuracy": 0.5,
                "val/mean_margin": 0.1,
                "train/mean_confidence": 0.3,
                "val/mean_confidence": 0.3,
            }
        )
        records.append({"step": int(step) + 1, "train_step/loss": 1.0})  # a log-only record
    return records


def test_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(size=17), rng.normal(size=17)
        y = y + rng.uniform(-2, 2) * x
        assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)


def test_pearson_undefined_cases():
    assert math.isnan(pearson(np.ones(5), np.arange(5.0)))
    assert math.isnan(pearson(np.arange(2.0), np.arange(2.0)))
    with pytest.raises(ValueError, match="equal length"):
        pearson(np.arange(3.0), np.arange(4.0))


def test_trajectory_keeps_steps_where_all_keys_are_finite():
    records = [
        {"step": 1, "a": 1.0, "b": 2.0},
        {"step": 2, "a": 3.0},
        {"step": 3, "a": "nan", "b": 1.0},
        {"step": 4, "a": float("inf"), "b": 1.0},
        {"step": 5, "a": 5.0, "b": 0.0},
    ]
    series = trajectory(records, ("a", "b"))
    np.testing.assert_array_equal(series["step"], [1, 5])
    np.testing.assert_array_equal(series["a"], [1.0, 5.0])


def test_trajectory_correlation_matches_scipy():
    rng = np.random.default_rng(1)
    records = _synthetic_records(rng, np.arange(10, 410, 10), 0.01, 0.02)
    rows = [r for r in records if "train/ece" in r]
    ece = [r["train/ece"] for r in rows]
    sharp = [r["curvature/gauss_newton_top1"] for r in rows]
    assert trajectory_correlation(records, "train/ece") == pytest.approx(scipy.stats.pearsonr(ece, sharp)[0], abs=1e-12)


def test_mean_std_over_learning_rates():
    correlations = {0.1: [0.9, 0.7], 0.2: [0.5], 0.3: [float("nan")], 0.4: [0.2, float("nan")]}
    mean, std, n = mean_std_over_learning_rates(correlations)
    per_rate = np.array([0.8, 0.5, 0.2])
    assert n == 3
    assert mean == pytest.approx(per_rate.mean()) and std == pytest.approx(per_rate.std())
    assert all(math.isnan(v) for v in mean_std_over_learning_rates({0.1: [float("nan")]})[:2])


def _expected_correlation(records, variant, split_metric, eval_every):
    """Table 1 entry of one run by hand: the variant's window and sharpness, then scipy's Pearson."""
    rows = [r for r in records if split_metric in r]
    last = max(r["step"] for r in records)
    first_99 = min((r["step"] for r in rows if r["train/accuracy"] >= 0.99), default=None)
    if variant == "evenly_spaced":
        rows = [r for r in rows if r["step"] % eval_every == 0]
    if variant == "log_spaced_points":
        rows = [r for r in rows if r["step"] % eval_every != 0]
    if variant == "before_99":
        rows = [r for r in rows if r["step"] < first_99]
    if variant == "from_99":
        rows = [r for r in rows if r["step"] >= first_99]
    if variant == "after_first_5pct":
        rows = [r for r in rows if r["step"] >= 0.05 * last]
    if variant == "pre_interpolation":
        rows = [r for r in rows if r["train/accuracy"] < 0.95]
    key = "curvature/batch_sharpness" if variant == "batch_sharpness" else "curvature/gauss_newton_top1"
    return scipy.stats.pearsonr([r[split_metric] for r in rows], [r[key] for r in rows])[0]


def test_report_table_matches_scipy(tmp_path, monkeypatch):
    # The tables only: the figures of these 36 synthetic runs take a minute (the end-to-end test draws them).
    report_module = sys.modules["experiments.curvature_calibration.report"]
    for name in ("plot_confidence_gap", "plot_dynamics", "plot_ece_vs_sharpness", "plot_figure1"):
        monkeypatch.setattr(report_module, name, lambda *args, **kwargs: None)
    config = _quick(tmp_path)
    config.grid.seeds = (0, 1)
    config.grid.optimizers.sgd.learning_rates = (0.05, 0.1)
    config.eval_every_steps = 10  # records every 5 steps: the odd multiples play the log-spaced points
    jobs = grid.expand_grid(config)
    rng = np.random.default_rng(2)
    expected = {}
    for job in jobs:
        records = _synthetic_records(rng, np.arange(5, 105, 5), rng.uniform(0.005, 0.02), 0.03)
        os.makedirs(job.workdir)
        with open(os.path.join(job.workdir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        with open(os.path.join(job.workdir, "summary.json"), "w") as f:
            json.dump({"total_steps": records[-1]["step"]}, f)
        for variant in driver.VARIANTS:
            for split, metric in driver.TABLE_ROWS:
                key = (variant, job.config.loss.name, job.group, split, metric)
                value = _expected_correlation(records, variant, f"{split}/{metric}", config.eval_every_steps)
                expected.setdefault(key, {}).setdefault(job.config.optimizer.learning_rate, []).append(value)
    out = driver.report(config, jobs)
    with open(os.path.join(out, "table1.csv")) as f:
        table = list(csv.DictReader(f))
    checked = 0
    for row in table:
        key = (row["variant"], row["loss"], row["optimizer"], row["split"], row["metric"])
        per_rate = np.array([np.mean(v) for v in expected[key].values()])
        assert float(row["mean"]) == pytest.approx(per_rate.mean(), abs=1e-9)
        assert float(row["std"]) == pytest.approx(per_rate.std(), abs=1e-9)
        checked += 1
    assert checked == len(expected)
    # The windows differ, so the variants are not copies of each other.
    means = {row["variant"]: row["mean"] for row in table if row["optimizer"] == "sgd" and row["metric"] == "ece"}
    assert len(set(means.values())) == len(driver.VARIANTS)
    sgd = [r for r in table if r["optimizer"] == "sgd" and r["split"] == "train" and r["metric"] == "ece"]
    assert int(sgd[0]["num_learning_rates"]) == 2 and int(sgd[0]["seeds"]) == 2
    with open(os.path.join(out, "table1.md")) as f:
        text = f.read()
    assert "+0.84 ± 0.07" in text  # the paper's SGD train-ECE cell, beside ours


def test_report_final_ece_and_late_dips(tmp_path):
    """runs.csv and protocol.md: final train ECE, the first step at 0.95 train accuracy, and the
    lowest accuracy / highest ECE after it, by hand on two runs, one of which dips late."""
    config = _quick(tmp_path)
    config.grid.seeds = (0,)
    config.grid.optimizers.sgd.learning_rates = (0.05, 0.1)
    jobs = [job for job in grid.expand_grid(config) if job.group == "sgd" and job.config.loss.name == "cross_entropy"]
    accuracy = {0.05: [0.1, 0.9, 0.96, 0.97, 0.99], 0.1: [0.1, 0.96, 0.7, 0.85, 0.99]}
    ece = {0.05: [0.04, 0.3, 0.05, 0.04, 0.03], 0.1: [0.04, 0.1, 0.25, 0.12, 0.02]}
    for job in jobs:
        lr = job.config.optimizer.learning_rate
        os.makedirs(job.workdir)
        with open(os.path.join(job.workdir, "metrics.jsonl"), "w") as f:
            for i, (a, e) in enumerate(zip(accuracy[lr], ece[lr])):
                record = {"step": 10 * i, "train/accuracy": a, "train/ece": e, "curvature/gauss_newton_top1": 5.0 + i}
                f.write(json.dumps(record) + "\n")
    out = driver.report(config, jobs)
    with open(os.path.join(out, "runs.csv")) as f:
        runs = {float(r["learning_rate"]): r for r in csv.DictReader(f)}
    assert set(runs) == {0.05, 0.1}
    assert float(runs[0.05]["final_train_ece"]) == pytest.approx(0.03)
    assert float(runs[0.05]["first_step_at_train_accuracy_0.95"]) == 20
    assert float(runs[0.05]["lowest_train_accuracy_after_0.95"]) == pytest.approx(0.97)
    assert float(runs[0.05]["highest_train_ece_after_0.95"]) == pytest.approx(0.04)
    assert float(runs[0.1]["first_step_at_train_accuracy_0.95"]) == 10
    assert float(runs[0.1]["lowest_train_accuracy_after_0.95"]) == pytest.approx(0.7)
    assert float(runs[0.1]["highest_train_ece_after_0.95"]) == pytest.approx(0.25)
    assert float(runs[0.1]["peak_gn_sharpness"]) == 9.0
    with open(os.path.join(out, "protocol.md")) as f:
        text = f.read()
    assert "| sgd | cross_entropy | 2 | 0.025 (0.020-0.030) | 1 | 0.700-0.700 | 0.250-0.250 |" in text


def test_faithful_schedule_tracks_at_least_40_points_up_to_the_fastest_measured_interpolation():
    """Each faithful job's tracking schedule (log-spaced plus regular steps) has >= 40 points up to
    the earliest step at which a committed run of its optimizer reached the interpolation accuracy."""
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "curvature_calibration_faithful")
    with open(os.path.join(path, "report", "runs.csv")) as f:
        runs = [row for row in csv.DictReader(f) if row["interpolated"] == "True" and row["loss"] == "cross_entropy"]
    fastest = {}
    for row in runs:
        fastest[row["optimizer"]] = min(fastest.get(row["optimizer"], math.inf), int(row["last_step"]))
    assert {"gd", "sgd", "sam", "adamw", "muon"} <= set(fastest)
    for job in grid.expand_grid(get_config("faithful")):
        config = job.config
        if config.optimizer.name in fastest and config.loss.name == "cross_entropy":
            last = fastest[config.optimizer.name]
            points = log_spaced_steps(config.eval_points_per_decade, last) | set(
                range(0, last + 1, config.eval_every_steps)
            )
            assert len(points) >= 40, (job.name, last, len(points))


@pytest.mark.slow  # a property of the preset's numbers: rerun it when they change
@pytest.mark.parametrize(
    "preset, data_present, seeds",
    [
        ("faithful", os.path.isdir(FASHION_MNIST_DIR), (0, 1, 2)),
        # One seed in the suite (a CIFAR-10 (JPEG) lambda_0 costs about 30 s here); docs give all three.
        ("faithful_cifar10", os.path.isfile(os.path.join(SHARED_DATA, "cifar10-jpeg.tar.gz")), (0,)),
    ],
)
def test_faithful_learning_rates_are_below_the_edge_of_stability_at_initialisation(preset, data_present, seeds):
    """2/lr > lambda_0 for every plain-gradient learning rate of a faithful preset, with lambda_0
    the GN sharpness of each seed's own initialisation on its whole training subset, per loss."""
    if not data_present:
        pytest.skip(f"needs the data of preset {preset}")
    config = get_config(preset)
    config.data.data_dir = SHARED_DATA
    jobs = grid.expand_grid(config)
    assert {job.config.curvature.subset_size for job in jobs} == {0}  # tracked on the whole subset
    largest = {}
    for job in jobs:
        if job.config.optimizer.name in driver.EOS_OPTIMIZERS:
            key = (job.config.loss.name, job.config.seed)
            largest[key] = max(largest.get(key, 0.0), job.config.optimizer.learning_rate)
    assert {seed for _, seed in largest} == {0, 1, 2} and {loss for loss, _ in largest} == {"cross_entropy", "mse"}
    run_data = load_run_data(jobs[0].config)
    for seed in seeds:
        job = next(j for j in jobs if j.config.seed == seed)
        measured = driver.initial_sharpness(build_run(job.config, run_data), ("cross_entropy", "mse"))
        for loss, lambda_0 in measured.items():
            assert 2 / largest[(loss, seed)] > lambda_0, (loss, seed, lambda_0)
            assert lambda_0 > (10 if loss == "cross_entropy" else 100)  # a real measurement, not 0


def test_run_order_puts_whole_seeds_of_the_priority_groups_first(tmp_path):
    """faithful_cifar10's order: every (optimizer, rate) of SGD, SAM, GD at seed 0 (in that order),
    then seed 1, then seed 2, then the other cross-entropy groups seed by seed, then MSE."""
    config = get_config("faithful_cifar10")
    config.workdir = str(tmp_path)
    order = driver.run_order(grid.expand_grid(config), config.grid.priority)
    head = order[: 3 * 3 * 4]
    assert [(j.config.seed, j.group) for j in head[:12]] == [(0, g) for g in ("sgd", "sam", "gd") for _ in range(4)]
    assert [j.config.seed for j in head] == [0] * 12 + [1] * 12 + [2] * 12
    assert {j.config.loss.name for j in head} == {"cross_entropy"}
    assert {j.config.optimizer.learning_rate for j in head} == set(CIFAR10_EOS_LEARNING_RATES)
    # Then seed by seed: within a seed, the other cross-entropy groups (AdamW, Muon, BulkSGD) before MSE.
    rest = [(j.config.seed, j.config.loss.name != "cross_entropy") for j in order[len(head) :]]
    assert rest == sorted(rest)
    assert {j.group for j in order[len(head) :] if j.config.seed == 0 and j.config.loss.name == "cross_entropy"} >= {
        "adamw",
        "muon",
        "bulk_sgd_k1",
    }


# --- end to end on real data --------------------------------------------------------------------------


@needs_fashion_mnist
@pytest.mark.parametrize(
    "optimizers",
    [
        # Full-batch GD (both losses, the MSE table), SGD (batch sharpness) and Bulk-SGD (a swept
        # config path in its label); the other steps are pinned down by tests/test_wiring.py.
        pytest.param(("gd", "sgd", "bulk_sgd"), id="gd_sgd_bulk"),
        pytest.param(None, id="every_optimizer", marks=pytest.mark.slow),
    ],
)
def test_quick_preset_end_to_end(tmp_path, optimizers):
    config = _quick(tmp_path)
    for label in list(config.grid.optimizers.keys()):
        if optimizers is not None and label not in optimizers:
            del config.grid.optimizers[label]
    jobs = grid.expand_grid(config)
    expected = {"gd", "sgd", "adamw", "muon", "sam", "bulk_sgd"}
    assert {job.config.optimizer.name for job in jobs} == (expected if optimizers is None else set(optimizers))
    grid.run_jobs(jobs, progress=False, compilation_cache_dir=str(tmp_path / "jax_cache"))
    out = driver.report(config, jobs)

    tracked = [
        "train/loss",
        "train/accuracy",
        "train/ece",
        "train/kce",
        "train/mean_margin",
        "train/margin_moment",
        "val/loss",
        "val/accuracy",
        "val/ece",
        "val/kce",
        "val/mean_margin",
        "val/margin_moment",
        "curvature/gauss_newton_top1",
        "curvature/hessian_top1",
    ]
    for job in jobs:
        assert job.done
        records = [r for r in read_metrics(job.workdir) if "train/ece" in r]
        assert [r["step"] for r in records] == list(range(0, config.num_steps + 1, config.eval_every_steps))
        keys = tracked + (["curvature/batch_sharpness"] if job.config.optimizer.name != "gd" else [])
        for record in records:
            for key in keys:
                assert isinstance(record[key], float) and math.isfinite(record[key]), (job.name, key)

    expected_files = [
        "table1.md",
        "table1.csv",
        "mse_confidence.md",
        "mse_confidence.csv",
        "ece_vs_gn_sharpness_cross_entropy.png",
        "ece_vs_gn_sharpness_mse.png",
        "dynamics_gd_mse.png",
    ]
    expected_files += [f"dynamics_{job.group}_cross_entropy.png" for job in jobs]
    for name in expected_files:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "table1.csv")) as f:
        table = list(csv.DictReader(f))
    assert {r["optimizer"] for r in table if r["loss"] == "cross_entropy"} == {job.group for job in jobs}
    # The whole-trajectory train-ECE rows, recomputed from the runs' records with scipy (a window
    # may leave a short run fewer than 3 points, NaN; the whole trajectory never does).
    full = [r for r in table if r["variant"] == "full" and (r["split"], r["metric"]) == ("train", "ece")]
    assert len(full) == len({(job.group, job.config.loss.name) for job in jobs})
    for row in full:
        per_rate = {}
        for job in jobs:
            if (job.group, job.config.loss.name) == (row["optimizer"], row["loss"]):
                value = _expected_correlation(
                    read_metrics(job.workdir), "full", "train/ece", job.config.eval_every_steps
                )
                per_rate.setdefault(job.config.optimizer.learning_rate, []).append(value)
        expected = np.mean([np.mean(values) for values in per_rate.values()])
        assert math.isfinite(expected) and float(row["mean"]) == pytest.approx(expected, abs=1e-9), row
    with open(os.path.join(out, "mse_confidence.csv")) as f:
        (mse,) = list(csv.DictReader(f))
    assert float(mse["optimum_confidence"]) == pytest.approx(math.e / (math.e + 9))
    (mse_job,) = [job for job in jobs if job.config.loss.name == "mse"]
    with open(os.path.join(mse_job.workdir, "summary.json")) as f:
        final = json.load(f)  # the last evaluation's metrics
    assert float(mse["train_confidence"]) == pytest.approx(final["train/mean_confidence"], rel=1e-12)


def test_runs_csv_says_why_each_run_stopped(tmp_path):
    """runs.csv under the horizon rule: final train loss, the first step at 0.99 train accuracy, the
    stop reason (loss floor, horizon, step cap) and the wall time, by hand on three finished runs."""
    config = _quick(tmp_path)
    config.num_steps = 100
    config.early_stop.metric = "train/accuracy"
    config.early_stop.at_least = 0.99
    config.early_stop.horizon_factor = 3.0
    config.early_stop.below_metric = "train/loss"
    config.early_stop.below = 1e-3
    config.grid.seeds = (0,)
    config.grid.optimizers.sgd.learning_rates = (0.05, 0.1, 0.2, 0.4)
    jobs = [job for job in grid.expand_grid(config) if job.group == "sgd" and job.config.loss.name == "cross_entropy"]
    runs = {  # learning rate: (steps, accuracies, losses, wall time; None: still training)
        0.4: ((0, 10, 20), (0.5, 0.6, 0.7), (1.0, 0.9, 0.8), None),
        0.05: ((0, 10, 20, 30), (0.5, 0.99, 1.0, 1.0), (1.0, 0.1, 0.01, 0.005), 12.5),
        0.1: ((0, 10, 20), (0.5, 0.995, 1.0), (1.0, 0.01, 5e-4), 7.0),
        0.2: ((0, 50, 100), (0.5, 0.9, 0.98), (1.0, 0.5, 0.2), 30.0),
    }
    for job in jobs:
        steps, accuracies, losses, wall = runs[job.config.optimizer.learning_rate]
        os.makedirs(job.workdir)
        with open(os.path.join(job.workdir, "metrics.jsonl"), "w") as f:
            for step, accuracy, loss in zip(steps, accuracies, losses):
                record = {"step": step, "train/accuracy": accuracy, "train/loss": loss, "train/ece": 1 - accuracy}
                f.write(json.dumps({**record, "curvature/gauss_newton_top1": 5.0 + step}) + "\n")
        if wall is not None:
            with open(os.path.join(job.workdir, "summary.json"), "w") as f:
                json.dump({"total_steps": steps[-1], "wall_time_s": wall}, f)
    out = driver.report(config, jobs)
    with open(os.path.join(out, "table1.md")) as f:
        assert "Still training (left out of the table, partial curves in the figures): " + jobs[-1].name in f.read()
    with open(os.path.join(out, "table1.csv")) as f:
        cells = {(r["variant"], r["optimizer"], r["split"], r["metric"]): r for r in csv.DictReader(f)}
    assert int(cells[("full", "sgd", "train", "ece")]["num_learning_rates"]) == 3
    with open(os.path.join(out, "runs.csv")) as f:
        rows = {float(r["learning_rate"]): r for r in csv.DictReader(f)}
    assert rows[0.05]["stop_reason"] == "3 x first step at train/accuracy >= 0.99"
    assert float(rows[0.05]["first_step_at_train_accuracy_0.99"]) == 10
    assert float(rows[0.05]["final_train_loss"]) == pytest.approx(0.005)
    assert float(rows[0.05]["wall_time_s"]) == 12.5
    assert rows[0.1]["stop_reason"] == "train/loss < 0.001"
    assert rows[0.2]["stop_reason"] == "step cap"
    assert math.isnan(float(rows[0.2]["first_step_at_train_accuracy_0.99"]))
    assert rows[0.4]["stop_reason"] == "" and rows[0.4]["finished"] == "False"


def test_an_unfinished_job_exported_with_its_checkpoint_resumes_elsewhere(tmp_path):
    """export_in_progress: a job interrupted after its step-20 checkpoint, copied to another
    workdir, resumes there from step 20 and ends with the uninterrupted run's final metrics."""
    from tests.test_training import digits_config

    def job(root):
        return grid.Job(name="sgd/run", group="sgd", config=digits_config(str(root / "sgd" / "run")))

    whole = job(tmp_path / "whole")
    expected = grid.run_job(whole)
    interrupted = job(tmp_path / "interrupted")
    grid.run_job(interrupted)
    # What a kill between the checkpoints at steps 20 and 40 leaves: no summary, no step-40 checkpoint.
    os.remove(os.path.join(interrupted.workdir, "summary.json"))
    shutil.rmtree(os.path.join(interrupted.workdir, "checkpoints", "40"))
    assert store.export_in_progress([interrupted, whole], str(tmp_path / "carried")) == ["sgd/run"]
    copied = sorted(os.listdir(tmp_path / "carried" / "sgd" / "run" / "checkpoints"))
    assert copied == ["20"]
    resumed = job(tmp_path / "elsewhere")
    shutil.copytree(tmp_path / "carried", tmp_path / "elsewhere")
    summary = grid.run_job(resumed)
    assert summary["resumed_from_step"] == 20 and summary["total_steps"] == 40
    for key in ("train/loss", "val/accuracy", "val/ece"):
        assert summary[key] == pytest.approx(expected[key], rel=1e-6), key
    steps = [r["step"] for r in read_metrics(resumed.workdir)]
    assert steps == sorted(steps) and steps[-1] == 40  # the records after step 20 were dropped, then rewritten once
