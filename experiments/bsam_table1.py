"""Möllenhoff & Khan (2022, arXiv:2210.01620), "SAM as an Optimal Relaxation of Bayes", Table 1.

    python -m experiments.bsam_table1 --config=experiments/configs/bsam_table1.py:quick
    python -m experiments.bsam_table1 --config=...:fmnist --mode=run --shard=0/2   # and 1/2
    python -m experiments.bsam_table1 --config=...:fmnist --mode=report

``run`` trains the jobs of one shard of the grid (SGD, SAM-SGD, SWAG, VOGN, Adam, SAM-Adam and bSAM
with the hyper-parameters of the paper's Table 6 and App. H, plus the bSAM damping ablation and IVON; seeds
first so that an interrupted grid has whole seeds), each resumable, and evaluates every finished job
on the test set: the methods with a posterior (bSAM, VOGN, SWAG, IVON) by the average of
``table1.posterior_samples`` posterior samples (Sec. 5), the others at their point estimate, with
accuracy, NLL, ECE over 20 bins and the AUROC of correct vs. wrong predictions (Osawa et al. 2019,
App. H). The evaluation goes to ``<job>/table1_eval.json``; ``export --store=<folder>`` keeps it with
the run's config, summary and metrics in a results store, from which ``report --store=<folder>``
rebuilds the report without the checkpoints. ``report`` writes ``<workdir>/report/``: Table 1 with the
paper's numbers in adjacent columns (Markdown and CSV), and for every method with a posterior,
accuracy/ECE/NLL against the number of posterior samples and (bSAM) a histogram of the posterior
precision, as ``<label>_posterior_samples.png`` and ``<label>_precision_histogram.png``. ``all``
(default) does both.
"""

import collections
import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import runner
from experiments.configs.bsam_table1 import EPOCHS, PAPER_TABLE1
from experiments.grid import AfterJob, Job, data_key, expand_grid, run_jobs
from experiments.runner import Experiment
from experiments.store import Kept
from experiments.tables import markdown_row, markdown_table, mean_std, mean_std_cell, write_csv
from sam_jax import calibration, optim
from sam_jax.analysis.calibration_figures import plot_posterior_samples, plot_precision_histogram
from sam_jax.training import (
    Checkpointer,
    Run,
    RunData,
    TrainState,
    load_run_data,
    load_trained,
    make_predictive,
)
from sam_jax.training.writers import CONFIG_FILE, SUMMARY_FILE, to_python

EVAL_FILE = "table1_eval.json"
# Table 1's rows in the paper's order, then the rows with no paper number (the ablation, IVON).
METHOD_NAMES = {
    "sgd": "SGD",
    "sam_sgd": "SAM-SGD",
    "swag": "SWAG",
    "vogn": "VOGN",
    "adam": "Adam",
    "sam_adam": "SAM-Adam",
    "bsam": "bSAM",
    "bsam_gamma_ablation": "bSAM, γ of Table 6's γ column (ablation)",
    "ivon": "IVON (not in the paper)",
}
METRICS = ("accuracy", "nll", "ece", "auroc")
# log10 of the posterior precision N s: the histogram's fixed bins, so seeds and runs add up.
PRECISION_BINS = np.linspace(0.0, 10.0, 101)


def grid_jobs(config: ml_collections.ConfigDict) -> list[Job]:
    """The grid's jobs, seed-major (every method of seed 0, then of seed 1, ...)."""
    run_config = ml_collections.ConfigDict(config.to_dict())
    del run_config["table1"]
    jobs = expand_grid(run_config)
    return sorted(jobs, key=lambda job: job.config.seed)


def test_metrics(probs: np.ndarray, labels: np.ndarray, num_bins: int) -> dict[str, float]:
    """Table 1's columns on predictive probabilities: accuracy (%), NLL, ECE, AUROC."""
    probs, labels = jnp.asarray(probs), jnp.asarray(labels)
    return {
        "accuracy": 100.0 * float(calibration.accuracy(probs, labels)),
        "nll": float(calibration.nll(probs, labels)),
        "ece": float(calibration.ece(probs, labels, num_bins)),
        "auroc": float(calibration.misclassification_auroc(probs, labels)),
    }


# Optimizer states that hold a diagonal Gaussian posterior's precision (divided by N) as ``precision``.
DIAGONAL_POSTERIORS = (optim.BSAMState, optim.VOGNState)


def _posterior_precision(opt_state: Any) -> np.ndarray | None:
    """The per-weight precision ``s`` of a diagonal Gaussian posterior in ``opt_state``; None without one."""
    found = [
        leaf
        for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, DIAGONAL_POSTERIORS))
        if isinstance(leaf, DIAGONAL_POSTERIORS)
    ]
    if len(found) != 1:
        return None
    return np.concatenate([np.ravel(np.asarray(s)) for s in jax.tree.leaves(found[0].precision)])


def evaluate_job(job: Job, table1: ml_collections.ConfigDict, run: Run, state: TrainState) -> dict[str, Any]:
    """Evaluates a job's final ``state`` on the test set and writes ``<job>/table1_eval.json``.

    A posterior (bSAM, VOGN, SWAG) predicts with the mean of ``table1.posterior_samples`` sampled softmaxes, and
    the curve has one such predictive per count of ``table1.sample_counts``; everything else
    predicts at its point estimate. All go through ``sam_jax.training.make_predictive``.
    """
    test = run.data.test
    num_bins = job.config.num_bins
    point = make_predictive([(run, state)])(test)
    result: dict[str, Any] = {
        "job": job.name,
        "step": int(state.step),
        "point": test_metrics(point, test.labels, num_bins),
    }
    if run.optimizer.posterior_sample is None:
        result["test"] = result["point"]
    else:
        counts = sorted(set(table1.sample_counts) | {table1.posterior_samples})
        curve = {
            k: test_metrics(
                make_predictive([(run, state)], posterior_samples=k, seed=table1.seed)(test), test.labels, num_bins
            )
            for k in counts
        }
        result["test"] = curve[table1.posterior_samples]
        result["posterior_samples"] = table1.posterior_samples
        result["sample_curve"] = {str(k): v for k, v in curve.items()}
    precision = _posterior_precision(state.opt_state)
    if precision is not None:
        log_precision = np.log10(len(run.data.train.labels) * precision)
        result["precision_histogram"] = {
            "log10_edges": PRECISION_BINS.tolist(),
            "counts": np.histogram(np.clip(log_precision, PRECISION_BINS[0], PRECISION_BINS[-1]), PRECISION_BINS)[
                0
            ].tolist(),
            "log10_quantiles": dict(
                zip(
                    ("min", "p05", "median", "p95", "max"), np.quantile(log_precision, [0, 0.05, 0.5, 0.95, 1]).tolist()
                )
            ),
        }
    result["wall_time_s"] = job.summary().get("wall_time_s")
    with open(os.path.join(job.workdir, EVAL_FILE), "w") as f:
        json.dump(to_python(result), f, indent=2)
    return result


def evaluate_finished(jobs: Sequence[Job], table1: ml_collections.ConfigDict) -> None:
    """Evaluates every trained job that has a checkpoint and no ``table1_eval.json`` yet."""
    cache: dict[str, RunData] = {}
    for job in jobs:
        if (
            not job.done
            or os.path.exists(os.path.join(job.workdir, EVAL_FILE))
            or not os.path.isdir(os.path.join(job.workdir, "checkpoints"))
        ):
            continue
        if job.summary().get("diverged"):
            continue
        key = data_key(job.config)
        if key not in cache:
            cache[key] = load_run_data(job.config)
        evaluate_job(job, table1, *load_trained(job.workdir, run_data=cache[key]))


def evaluate_trained(table1: ml_collections.ConfigDict) -> AfterJob:
    """``after_job(job, run)`` for the grid runner: evaluates the checkpoint just written."""

    def after_job(job: Job, run: Run) -> None:
        checkpointer = Checkpointer(job.workdir)
        try:
            state = checkpointer.restore(run.init_state)
        finally:
            checkpointer.close()
        evaluate_job(job, table1, run, state)

    return after_job


# Decimal places of each metric in the table.
DIGITS = {"accuracy": 2, "nll": 3, "ece": 4, "auroc": 3}


def report(config: ml_collections.ConfigDict, jobs: Sequence[Job], out: str | None = None) -> str:
    """Writes Table 1, the sample curve and the precision histogram to ``out`` (default ``<workdir>/report``).

    Returns:
      The report directory.

    Raises:
      ValueError: no job has been evaluated yet.
    """
    out = out or os.path.join(config.workdir, "report")
    os.makedirs(out, exist_ok=True)
    evaluations: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    missing = []
    for job in jobs:
        path = os.path.join(job.workdir, EVAL_FILE)
        if os.path.exists(path):
            with open(path) as f:
                evaluations[job.group].append(json.load(f))
        else:
            missing.append(job.name)
    if not evaluations:
        raise ValueError(f"No job under {config.workdir} has {EVAL_FILE}; run --mode=run first.")

    rows, lines = [], []
    header = [c for m in ("Accuracy % ↑", "NLL ↓", "ECE ↓", "AUROC ↑") for c in (f"{m} (ours)", f"{m} (paper)")]
    lines += markdown_table(["method", "seeds"] + header)
    labels = {job.group for job in jobs}
    for label, name in METHOD_NAMES.items():
        if label not in labels:
            continue
        runs = evaluations.get(label, [])
        row: dict[str, Any] = {"method": name, "seeds": len(runs)}
        cells = []
        for metric in METRICS:
            mean, std = mean_std([r["test"][metric] for r in runs])
            paper = PAPER_TABLE1[config.data.name].get(label, {}).get(metric, (math.nan, math.nan))
            row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_paper": paper[0]})
            number = f".{DIGITS[metric]}f"
            cells += [mean_std_cell(m, s, number, parentheses=True) for m, s in ((mean, std), paper)]
        rows.append(row)
        lines.append(markdown_row([name, str(len(runs))] + cells))
    steps = sorted({r["step"] for runs in evaluations.values() for r in runs})
    budget = f"{config.num_steps} steps" if config.num_steps else f"{config.num_epochs} epochs"
    notes = [
        f"{config.data.name} / {config.model.name}, test set; mean (std, ddof=0) over seeds; {budget} "
        f"(trained steps: {steps}). Paper: {EPOCHS[config.data.name]} epochs, 5 seeds. bSAM, VOGN, SWAG and IVON "
        f"predict with {config.table1.posterior_samples} posterior samples, the others at their point estimate; "
        f"ECE with {config.num_bins} bins; AUROC of correct vs. wrong predictions by confidence."
    ]
    if missing:
        notes.append("Not evaluated yet (left out): " + ", ".join(missing))
    with open(os.path.join(out, "table1.md"), "w") as f:
        f.write("\n\n".join(notes + ["\n".join(lines)]) + "\n")
    write_csv(os.path.join(out, "table1.csv"), rows)
    for label, runs in sorted(evaluations.items()):
        if "sample_curve" in runs[0]:
            _sample_curve(label, runs, out)
        if "precision_histogram" in runs[0]:
            _precision_histogram(label, runs, out)
    return out


def _sample_curve(label: str, runs: Sequence[dict[str, Any]], out: str) -> None:
    counts = sorted(int(k) for k in runs[0]["sample_curve"])
    curve_rows, panels = [], []
    for metric, title in zip(("accuracy", "ece", "nll"), ("test accuracy (%)", "ECE (20 bins)", "NLL")):
        stats = [mean_std([r["sample_curve"][str(k)][metric] for r in runs]) for k in counts]
        means, stds = [m for m, _ in stats], [s for _, s in stats]
        panels.append((title, means, stds, mean_std([r["point"][metric] for r in runs])[0]))
        curve_rows += [{"samples": k, "metric": metric, "mean": m, "std": s} for k, m, s in zip(counts, means, stds)]
    name = METHOD_NAMES.get(label, label)
    plot_posterior_samples(
        counts,
        panels,
        f"{name}: predictive vs. number of posterior samples ({len(runs)} seeds)",
        os.path.join(out, f"{label}_posterior_samples.png"),
    )
    write_csv(os.path.join(out, f"{label}_posterior_samples.csv"), curve_rows)


def _precision_histogram(label: str, runs: Sequence[dict[str, Any]], out: str) -> None:
    plot_precision_histogram(
        runs[0]["precision_histogram"]["log10_edges"],
        [(run["job"].split("/")[-1], run["precision_histogram"]["counts"]) for run in runs],
        f"{METHOD_NAMES.get(label, label)}: posterior precision",
        os.path.join(out, f"{label}_precision_histogram.png"),
    )


def run_shard(config: ml_collections.ConfigDict, select: Callable[[Sequence[Job]], list[Job]]) -> None:
    """Trains and evaluates the jobs of the seed-major job list that ``select`` keeps (a shard)."""
    mine = select(grid_jobs(config))
    run_jobs(
        mine,
        compilation_cache_dir=os.path.join(config.workdir, "jax_cache"),
        after_job=evaluate_trained(config.table1),
    )
    evaluate_finished(mine, config.table1)


EXPERIMENT = Experiment(
    name="bsam_table1",
    default_config=os.path.join(os.path.dirname(__file__), "configs", "bsam_table1.py:quick"),
    jobs=grid_jobs,
    report=report,
    report_file="table1.md",
    run=run_shard,
    before_report=lambda config, jobs: evaluate_finished(jobs, config.table1),
    keep=lambda config, job: Kept(files=(CONFIG_FILE, SUMMARY_FILE, EVAL_FILE), metrics=lambda key: True),
)
main = functools.partial(runner.main, EXPERIMENT)

if __name__ == "__main__":
    runner.run_from_command_line(EXPERIMENT)
