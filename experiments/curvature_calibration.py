""" "Too Sharp, Too Sure": calibration follows curvature along training (Morosini et al. 2026, arXiv:2604.20614).

    python -m experiments.curvature_calibration --config=experiments/configs/curvature_calibration.py:quick
    python -m experiments.curvature_calibration --config=...:fmnist --mode=run --shard=0/2   # and 1/2
    python -m experiments.curvature_calibration --config=...:fmnist --mode=report

``run`` trains the jobs of one shard of the grid (each resumable, finished ones skipped); ``report``
reads every job's ``metrics.jsonl`` and writes to ``<workdir>/report/``: Table 1 (Pearson correlation
of ECE and KCE with GN sharpness over each trajectory, mean +- std over learning rates; Markdown and
CSV) with the paper's numbers beside ours, in four variants (the whole trajectory; without its first
5 % of steps; before interpolation only, train accuracy < 0.95; batch sharpness in place of GN
sharpness), the initial sharpness lambda_0 against each 2/lr, which runs interpolated, the Lanczos
accuracy check, Figure 1 (GD and SGD), the App. C dynamics figure per optimizer and loss, the
Figure A1 paths of ECE vs GN sharpness, the sign of the miscalibration along training, and the App. D
check of MSE underconfidence. ``all`` (default) runs then reports. ``export`` writes a compact copy of
the finished runs (config, summary, the metrics the report reads) to ``<workdir>/compact/``, small
enough to commit: ``report`` on that copy rebuilds the report, and ``run`` on it continues the grid.
"""

import collections
import json
import math
import os
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from experiments import cli
from experiments.grid import Job, expand_grid, export_in_progress, parse_shard, run_jobs, shard_jobs
from experiments.tables import markdown_table, write_csv
from sam_jax.analysis import (
    mean_std_over_learning_rates,
    plot_confidence_gap,
    plot_dynamics,
    plot_ece_vs_sharpness,
    plot_figure1,
    trajectory_correlation,
)
from sam_jax.calibration import mse_optimum_confidence
from sam_jax.data import DISPLAY_NAMES, NUM_CLASSES
from sam_jax.curvature import gauss_newton_operator, ritz_pairs
from sam_jax.losses import get_loss
from sam_jax.training import Run, read_metrics
from sam_jax.training.writers import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

MODES = ("run", "report", "all", "export")
# Table 1 rows: the paper's "Test" is held-out data; we use the validation split.
TABLE_ROWS = (("train", "ece"), ("train", "kce"), ("val", "ece"), ("val", "kce"))
# Optimizers whose sharpness is bounded by 2/lr at the edge of stability (no preconditioner).
EOS_OPTIMIZERS = ("gd", "sgd", "sam", "bulk_sgd")
GN_SHARPNESS = "curvature/gauss_newton_top1"
BATCH_SHARPNESS = "curvature/batch_sharpness"
# Table 1 of Morosini et al. (2026) on CIFAR-10: (mean, std) over 4 learning rates.
PAPER_TABLE1 = {
    ("train", "ece"): {
        "gd": (0.83, 0.08),
        "sgd": (0.84, 0.07),
        "adamw": (0.72, 0.07),
        "muon": (0.63, 0.26),
        "sam": (0.92, 0.04),
    },
    ("train", "kce"): {
        "gd": (0.83, 0.08),
        "sgd": (0.84, 0.07),
        "adamw": (0.70, 0.08),
        "muon": (0.61, 0.28),
        "sam": (0.91, 0.04),
    },
    ("val", "ece"): {
        "gd": (0.96, 0.02),
        "sgd": (0.97, 0.01),
        "adamw": (0.15, 0.15),
        "muon": (-0.10, 0.28),
        "sam": (0.98, 0.01),
    },
    ("val", "kce"): {
        "gd": (0.97, 0.01),
        "sgd": (0.97, 0.01),
        "adamw": (0.21, 0.22),
        "muon": (-0.16, 0.31),
        "sam": (0.98, 0.01),
    },
}
# Train accuracy that counts as interpolating the train subset (variants before_99 and from_99).
INTERPOLATION_ACCURACY = 0.99
# Folder of the compact copy holding the unfinished jobs (checkpoint included) to resume elsewhere.
IN_PROGRESS_DIR = "in_progress"
# Train accuracy below which a step is "well before convergence" (variant pre_interpolation).
PRE_INTERPOLATION_ACCURACY = 0.95
# Fraction of a run's steps that variant after_first_5pct drops.
EARLY_FRACTION = 0.05
# A run "dips" when, after first reaching PRE_INTERPOLATION_ACCURACY on the train subset, its train
# accuracy falls below this at a later tracked point (BulkSGD's late instability).
LATE_DIP_ACCURACY = 0.8
# runs.csv columns of the late-dip check.
FIRST_STEP_REACHED = f"first_step_at_train_accuracy_{PRE_INTERPOLATION_ACCURACY:g}"
LOWEST_ACCURACY_AFTER = f"lowest_train_accuracy_after_{PRE_INTERPOLATION_ACCURACY:g}"
HIGHEST_ECE_AFTER = f"highest_train_ece_after_{PRE_INTERPOLATION_ACCURACY:g}"
# The report's Table 1 variants: (description, sharpness key, window). A window takes a run's records
# and its config and returns the filter of the records it keeps (None = all).
RecordFilter = Optional[Callable[[Mapping[str, Any]], bool]]
Window = Callable[[Sequence[Mapping[str, Any]], ml_collections.ConfigDict], RecordFilter]


def _whole(records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict) -> None:
    return None


def _after_early_steps(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    last = max(r["step"] for r in records)
    return lambda r: r["step"] >= EARLY_FRACTION * last


def _before_interpolation(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    return lambda r: r.get("train/accuracy", 1.0) < PRE_INTERPOLATION_ACCURACY


def _regular(config: ml_collections.ConfigDict) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a record is at one of the run's evenly spaced evaluation steps (multiples of
    ``eval_every_steps``), as opposed to its log-spaced early points."""
    every = config.eval_every_steps
    return lambda r: every > 0 and r["step"] % every == 0


def _evenly_spaced(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    return _regular(config)


def _log_spaced_only(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    regular = _regular(config)
    return lambda r: not regular(r)


def first_step_at(records: Sequence[Mapping[str, Any]], accuracy: float) -> Optional[int]:
    """The first evaluated step whose train accuracy is >= ``accuracy`` (None if none)."""
    return next((int(r["step"]) for r in records if r.get("train/accuracy", -1.0) >= accuracy), None)


def _before_target(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    first = first_step_at(records, INTERPOLATION_ACCURACY)
    return lambda r: first is None or r["step"] < first


def _from_target(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    first = first_step_at(records, INTERPOLATION_ACCURACY)
    return lambda r: first is not None and r["step"] >= first


VARIANTS: dict[str, tuple[str, str, Window]] = {
    "full": ("the whole trajectory", GN_SHARPNESS, _whole),
    "evenly_spaced": (
        "evenly spaced steps only (every eval_every_steps; the log-spaced early points left out)",
        GN_SHARPNESS,
        _evenly_spaced,
    ),
    "log_spaced_points": (
        "the log-spaced early points only (the evenly spaced steps left out)",
        GN_SHARPNESS,
        _log_spaced_only,
    ),
    "before_99": (
        f"before the step that first reached train accuracy {INTERPOLATION_ACCURACY}",
        GN_SHARPNESS,
        _before_target,
    ),
    "from_99": (
        f"from the step that first reached train accuracy {INTERPOLATION_ACCURACY} on (runs that never did: none)",
        GN_SHARPNESS,
        _from_target,
    ),
    "after_first_5pct": (
        f"without the first {EARLY_FRACTION:.0%} of each run's steps",
        GN_SHARPNESS,
        _after_early_steps,
    ),
    "pre_interpolation": (
        f"before interpolation only (steps with train accuracy < {PRE_INTERPOLATION_ACCURACY})",
        GN_SHARPNESS,
        _before_interpolation,
    ),
    "batch_sharpness": ("the whole trajectory, batch sharpness in place of GN sharpness", BATCH_SHARPNESS, _whole),
}
# The metrics the report reads: what ``export`` keeps of each record.
REPORT_KEYS = (
    "step",
    "epoch",
    "train_step/loss",
    "curvature/gauss_newton_lanczos_steps",
    "curvature/gauss_newton_relative_residual",
    "curvature/gauss_newton_top1_reference",
    "curvature/hessian_top1",
    GN_SHARPNESS,
    BATCH_SHARPNESS,
) + tuple(
    f"{split}/{key}"
    for split in ("train", "val")
    for key in ("loss", "accuracy", "ece", "kce", "mean_confidence", "mean_margin", "margin_moment")
)


def _summary(job: Job) -> dict[str, Any]:
    """The job's ``summary.json`` ({} while it has none)."""
    path = os.path.join(job.workdir, SUMMARY_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _load(job: Job) -> tuple[list[dict[str, Any]], bool]:
    """The job's metric records and whether it diverged; no records when it never started."""
    if not os.path.exists(os.path.join(job.workdir, METRICS_FILE)):
        return [], False
    return read_metrics(job.workdir), bool(_summary(job).get("diverged", False))


def _stop_reason(config: ml_collections.ConfigDict, records: Sequence[Mapping[str, Any]], last: int) -> str:
    """Why a finished run ended at step ``last``: its early-stop rule (target, horizon, loss floor) or the cap."""
    rule = config.early_stop
    final = next((r for r in reversed(records) if r["step"] == last and rule.below_metric in r), {})
    if rule.below_metric and final.get(rule.below_metric, math.inf) < rule.below:
        return f"{rule.below_metric} < {rule.below:g}"
    if last >= config.num_steps:
        return "step cap"
    if rule.metric and rule.get("horizon_factor", 0):
        return f"{rule.horizon_factor:g} x first step at {rule.metric} >= {rule.at_least:g}"
    return f"{rule.metric} >= {rule.at_least:g}" if rule.metric else "step cap"


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:+.2f} ± {std:.2f}"


def _paper(group: str, split: str, metric: str) -> str:
    mean, std = PAPER_TABLE1[(split, metric)][group]
    return f"{mean:+.2f} ± {std:.2f}"


def _group_runs(jobs: Sequence[Job], records: dict[str, list], loss: str) -> dict[str, dict[float, list]]:
    """``{optimizer label: {learning_rate: [records of each seed]}}`` of the jobs of one loss that ran."""
    groups: dict[str, dict[float, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for job in jobs:
        if job.config.loss.name == loss and records[job.name]:
            groups[job.group][job.config.optimizer.learning_rate].append(records[job.name])
    return groups


def _table(jobs: Sequence[Job], records: dict[str, list], loss: str, variant: str = "full") -> list[dict[str, Any]]:
    """Table 1 cells for one loss and variant: one row per (group, split, metric)."""
    _, sharpness, window = VARIANTS[variant]
    by_group: dict[str, dict[float, list[Job]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for job in jobs:
        if job.config.loss.name == loss and records[job.name]:
            by_group[job.group][job.config.optimizer.learning_rate].append(job)
    rows = []
    for group, jobs_by_lr in by_group.items():
        for split, metric in TABLE_ROWS:
            correlations = {
                lr: [
                    trajectory_correlation(
                        records[j.name], f"{split}/{metric}", sharpness, window(records[j.name], j.config)
                    )
                    for j in runs
                ]
                for lr, runs in jobs_by_lr.items()
            }
            mean, std, n = mean_std_over_learning_rates(correlations)
            rows.append(
                {
                    "variant": variant,
                    "loss": loss,
                    "optimizer": group,
                    "split": split,
                    "metric": metric,
                    "mean": mean,
                    "std": std,
                    "num_learning_rates": n,
                    "seeds": max(len(runs) for runs in jobs_by_lr.values()),
                }
            )
    return rows


def _markdown_table(rows: list[dict[str, Any]], with_paper: bool = False) -> str:
    """Table 1 in Markdown; with ``with_paper``, the paper's CIFAR-10 value beside each optimizer it has."""
    groups = list(dict.fromkeys(r["optimizer"] for r in rows))
    cells = {(r["optimizer"], r["split"], r["metric"]): _fmt(r["mean"], r["std"]) for r in rows}
    columns = [(g, False) for g in groups]
    if with_paper:
        columns = [
            c for g in groups for c in ([(g, False), (g, True)] if g in PAPER_TABLE1[TABLE_ROWS[0]] else [(g, False)])
        ]
    header = [f"{g} (paper, CIFAR-10)" if paper else g for g, paper in columns]
    body = [
        ["train" if split == "train" else "validation (held out)", metric.upper()]
        + [_paper(g, split, metric) if paper else cells.get((g, split, metric), "n/a") for g, paper in columns]
        for split, metric in TABLE_ROWS
    ]
    return "\n".join(markdown_table(["split", "metric"] + header, body))


def _mse_rows(jobs: Sequence[Job], records: dict[str, list]) -> list[dict[str, Any]]:
    """App. D.1: final softmax confidence of the MSE runs against ``e / (e + K - 1)``."""
    rows = []
    for job in jobs:
        if job.config.loss.name != "mse" or not records[job.name]:
            continue
        last = {k: v for r in records[job.name] for k, v in r.items()}  # latest value of every key
        rows.append(
            {
                "optimizer": job.group,
                "learning_rate": job.config.optimizer.learning_rate,
                "seed": job.config.seed,
                "step": last["step"],
                "train_accuracy": last.get("train/accuracy"),
                "train_confidence": last.get("train/mean_confidence"),
                "train_ece": last.get("train/ece"),
                "val_accuracy": last.get("val/accuracy"),
                "val_confidence": last.get("val/mean_confidence"),
                "val_ece": last.get("val/ece"),
                "optimum_confidence": mse_optimum_confidence(NUM_CLASSES[job.config.data.name]),
            }
        )
    return rows


def _value_at(records: Sequence[Mapping[str, Any]], key: str, step: int) -> float:
    return next((float(r[key]) for r in records if r["step"] == step and key in r), math.nan)


def _after_reaching(records: Sequence[Mapping[str, Any]], accuracy: float) -> tuple[float, float, float]:
    """The first step with train accuracy >= ``accuracy``, then the lowest train accuracy and the
    highest train ECE at the records after it (NaN where the run never got there)."""
    evaluated = [r for r in records if "train/accuracy" in r]
    first = first_step_at(evaluated, accuracy)
    if first is None:
        return math.nan, math.nan, math.nan
    later = [r for r in evaluated if r["step"] > first]
    return (
        float(first),
        min((float(r["train/accuracy"]) for r in later), default=math.nan),
        max((float(r["train/ece"]) for r in later if "train/ece" in r), default=math.nan),
    )


def _guard_vectors(job: Job) -> int:
    """The guard vectors the job was tracked with: from the config saved in its directory (a run
    tracked before the field existed had none), or from the grid's config when none was saved."""
    curvature = job.config.curvature.to_dict()
    path = os.path.join(job.workdir, CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as f:
            curvature = json.load(f).get("curvature", {})
    return int(curvature.get("guard_vectors", 0)) if curvature.get("warm_start") else 0


def _run_rows(jobs: Sequence[Job], loaded: dict[str, tuple[list, bool]]) -> list[dict[str, Any]]:
    """One row per job that ran: length, interpolation, tracking, lambda_0 and the Lanczos check."""
    rows = []
    for job in jobs:
        records, diverged = loaded[job.name]
        if not records:
            continue
        tracked = [r for r in records if GN_SHARPNESS in r]
        last = max(r["step"] for r in records)
        references = [
            abs(r[GN_SHARPNESS] - r[f"{GN_SHARPNESS}_reference"]) / abs(r[f"{GN_SHARPNESS}_reference"])
            for r in tracked
            if f"{GN_SHARPNESS}_reference" in r
        ]
        steps = [
            r["curvature/gauss_newton_lanczos_steps"] for r in tracked if "curvature/gauss_newton_lanczos_steps" in r
        ]
        accuracy = _value_at(records, "train/accuracy", last)
        reached, lowest_after, highest_ece_after = _after_reaching(records, PRE_INTERPOLATION_ACCURACY)
        interpolated_at = first_step_at(records, INTERPOLATION_ACCURACY)
        summary = _summary(job)
        target = job.config.early_stop.at_least if job.config.early_stop.metric else math.nan
        rows.append(
            {
                "job": job.name,
                "optimizer": job.group,
                "loss": job.config.loss.name,
                "learning_rate": job.config.optimizer.learning_rate,
                "seed": job.config.seed,
                "finished": job.done,
                "diverged": diverged,
                "last_step": last,
                "max_steps": job.config.num_steps,
                "final_train_accuracy": accuracy,
                "interpolated": accuracy >= target,
                "final_train_ece": _value_at(records, "train/ece", last),
                "final_train_loss": _value_at(records, "train/loss", last),
                f"first_step_at_train_accuracy_{INTERPOLATION_ACCURACY:g}": (
                    math.nan if interpolated_at is None else interpolated_at
                ),
                "stop_reason": _stop_reason(job.config, records, last) if job.done and not diverged else "",
                "wall_time_s": summary.get("wall_time_s", math.nan),
                "device": summary.get("device", ""),
                # wall_time_s is the last process's: a job resumed at step > 0 ran longer in all.
                "resumed_from_step": summary.get("resumed_from_step", math.nan),
                FIRST_STEP_REACHED: reached,
                LOWEST_ACCURACY_AFTER: lowest_after,
                HIGHEST_ECE_AFTER: highest_ece_after,
                "tracked_points": len(tracked),
                "lambda_0": _value_at(records, GN_SHARPNESS, 0),
                "peak_gn_sharpness": max((r[GN_SHARPNESS] for r in tracked), default=math.nan),
                "lanczos_steps_mean": float(sum(steps) / len(steps)) if steps else math.nan,
                "lanczos_steps_first": steps[0] if steps else math.nan,
                "guard_vectors": _guard_vectors(job),
                "reference_checks": len(references),
                "max_relative_deviation_from_reference": max(references, default=math.nan),
            }
        )
    return rows


def _protocol_report(config: ml_collections.ConfigDict, rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: lambda_0 against 2/lr, interpolation per run group, the Lanczos accuracy check."""
    lines = ["## Initial GN sharpness lambda_0 and the learning rates of the plain gradient methods", ""]
    lines += [
        "| loss | seed | lambda_0 | largest plain-method lr | its 2/lr | 2/lr > lambda_0 |",
        "|---|---|---|---|---|---|",
    ]
    for (loss, seed), group in _by(rows, ("loss", "seed")).items():
        lambda_0 = max(r["lambda_0"] for r in group)
        plain = [r["learning_rate"] for r in group if r["optimizer"].split("_k")[0] in EOS_OPTIMIZERS]
        if plain and not math.isnan(lambda_0):
            top = max(plain)
            lines.append(f"| {loss} | {seed} | {lambda_0:.3f} | {top:.4g} | {2 / top:.4g} | {2 / top > lambda_0} |")
    lines += ["", "## Runs: steps, interpolation, tracked points", ""]
    lines += [
        "| optimizer | loss | lr | seeds run | finished | interpolated | last step (per seed) | tracked points (min) "
        "| peak GN sharpness (per seed) | final train ECE (per seed) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (optimizer, loss, lr), group in _by(rows, ("optimizer", "loss", "learning_rate")).items():
        lines.append(
            f"| {optimizer} | {loss} | {lr:.4g} | {len(group)} | {sum(r['finished'] for r in group)} | "
            f"{sum(bool(r['interpolated']) for r in group)} | {', '.join(str(r['last_step']) for r in group)} | "
            f"{min(r['tracked_points'] for r in group)} | "
            f"{', '.join(format(r['peak_gn_sharpness'], '.4g') for r in group)} | "
            f"{', '.join(format(r['final_train_ece'], '.3f') for r in group)} |"
        )
    lines += ["", _final_ece_and_dips(rows)]
    deviations = [r["max_relative_deviation_from_reference"] for r in rows if r["reference_checks"]]
    checks = sum(r["reference_checks"] for r in rows)
    if checks:
        cold = [r["lanczos_steps_first"] for r in rows if not math.isnan(r["lanczos_steps_first"])]
        mean = [r["lanczos_steps_mean"] for r in rows if not math.isnan(r["lanczos_steps_mean"])]
        lines += [
            "",
            "## Lanczos accuracy",
            "",
            f"GN sharpness: Lanczos stops once the top Ritz residual, a bound on the eigenvalue's error, is "
            f"below {config.curvature.tolerance:g} of the value (at most {config.curvature.num_iters} steps; warm "
            f"start: {config.curvature.warm_start}). "
            f"{checks} tracked values were checked against a cold run with 3x the maximum steps: the "
            f"largest relative deviation is {max(deviations):.2e} (runs with a check: {len(deviations)}). "
            f"Lanczos steps per estimate: {sum(cold) / len(cold):.1f} at the first (cold) point, "
            f"{sum(mean) / len(mean):.1f} on average over all points.",
        ]
        for guard, group in sorted(_by([r for r in rows if r["reference_checks"]], ["guard_vectors"]).items()):
            lines.append(
                f"- tracked with {guard[0]} guard vector(s): {len(group)} runs, "
                f"{sum(r['reference_checks'] for r in group)} checks, largest relative deviation "
                f"{max(r['max_relative_deviation_from_reference'] for r in group):.2e}"
            )
    return "\n".join(lines)


def _final_ece_and_dips(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: final train ECE per optimizer and loss, and the runs that lost train accuracy late."""
    lines = [
        "## Final train ECE and late dips",
        "",
        f"A run dips when its train accuracy, after first reaching {PRE_INTERPOLATION_ACCURACY:g}, falls below "
        f"{LATE_DIP_ACCURACY:g} at a later tracked point; lowest accuracy and highest train ECE are "
        "taken over the tracked points after that first step.",
        "",
        "| optimizer | loss | runs | final train ECE: mean (min-max) | runs that dip | lowest train accuracy "
        "after dipping (min-max) | highest train ECE after dipping (min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (optimizer, loss), group in _by(rows, ("optimizer", "loss")).items():
        final = [r["final_train_ece"] for r in group if not math.isnan(r["final_train_ece"])]
        dips = [r for r in group if r[LOWEST_ACCURACY_AFTER] < LATE_DIP_ACCURACY]
        lowest = [r[LOWEST_ACCURACY_AFTER] for r in dips]
        highest = [r[HIGHEST_ECE_AFTER] for r in dips]
        lines.append(
            f"| {optimizer} | {loss} | {len(group)} | "
            + (f"{sum(final) / len(final):.3f} ({min(final):.3f}-{max(final):.3f})" if final else "-")
            + f" | {len(dips)} | "
            + (f"{min(lowest):.3f}-{max(lowest):.3f} | {min(highest):.3f}-{max(highest):.3f} |" if dips else "- | - |")
        )
    return "\n".join(lines)


def _by(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list]:
    groups: dict[tuple, list] = collections.defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def export(config: ml_collections.ConfigDict, jobs: Sequence[Job]) -> str:
    """Writes a compact copy of the finished jobs (config, summary, ``REPORT_KEYS`` of each record),
    and of the unfinished ones with a checkpoint under ``in_progress/`` (``grid.export_in_progress``).

    Args:
      config: the grid config (its ``workdir`` holds the jobs).
      jobs: the grid's jobs.

    Returns:
      The directory, ``<workdir>/compact``, laid out like the grid (``--config.workdir=<it>``).
    """
    out = os.path.join(config.workdir, "compact")
    for job in jobs:
        if not job.done:
            continue
        target = os.path.join(out, job.name)
        os.makedirs(target, exist_ok=True)
        for name in (CONFIG_FILE, SUMMARY_FILE):
            shutil.copyfile(os.path.join(job.workdir, name), os.path.join(target, name))
        with open(os.path.join(target, METRICS_FILE), "w") as f:
            for record in read_metrics(job.workdir):
                kept = {k: record[k] for k in REPORT_KEYS if k in record}
                if len(kept) > 1:
                    f.write(json.dumps(kept) + "\n")
    in_progress = export_in_progress(jobs, os.path.join(out, IN_PROGRESS_DIR))
    if in_progress:
        print(f"Unfinished jobs copied with their checkpoint to {out}/{IN_PROGRESS_DIR}: {', '.join(in_progress)}")
    return out


def report(config: ml_collections.ConfigDict, jobs: Sequence[Job]) -> str:
    """Writes Table 1, the figures and the MSE check to ``<workdir>/report``; returns that directory.

    Args:
      config: the grid config (its ``workdir`` holds the jobs).
      jobs: the grid's jobs (:func:`experiments.grid.expand_grid`); jobs not run yet are listed
        in ``table1.md`` and left out.

    Returns:
      The report directory.

    Raises:
      ValueError: no job has metrics yet.
    """
    out = os.path.join(config.workdir, "report")
    os.makedirs(out, exist_ok=True)
    loaded = {job.name: _load(job) for job in jobs}
    missing = [job.name for job in jobs if not loaded[job.name][0]]
    if len(missing) == len(jobs):
        raise ValueError(f"No job of the grid has metrics under {config.workdir}; run --mode=run first.")
    diverged = [name for name, (_, bad) in loaded.items() if bad]
    in_progress = [job.name for job in jobs if loaded[job.name][0] and not job.done]
    # Diverged and unfinished runs stay in the figures (as far as they got) but not in the correlations.
    left_out = set(diverged) | set(in_progress)
    clean = {name: ([] if name in left_out else records) for name, (records, _) in loaded.items()}
    records = {name: records for name, (records, _) in loaded.items()}

    dataset = DISPLAY_NAMES[config.data.name]
    losses = list(dict.fromkeys(job.config.loss.name for job in jobs))
    table_rows, sections = [], []
    for variant, (description, _, _) in VARIANTS.items():
        for loss in losses:
            rows = _table(jobs, clean, loss, variant)
            if not rows or all(math.isnan(r["mean"]) for r in rows):
                continue
            table_rows += rows
            title = f"### {variant}: {description} | {loss}"
            sections.append(f"{title}\n\n{_markdown_table(rows, with_paper=loss == 'cross_entropy')}")
    notes = [
        f"Pearson correlation of ECE / KCE with GN sharpness over each training trajectory, "
        f"mean ± std (ddof=0) over learning rates (seeds averaged first); {dataset}, "
        f"MLP 2x200 tanh, {config.data.train_size} train / {config.data.val_size} validation. "
        "The paper's columns are its Table 1 (CIFAR-10, the original, whole trajectory); 'validation' is its "
        "'Test'."
    ]
    if diverged:
        notes.append("Diverged (left out of the table, partial curves in the figures): " + ", ".join(diverged))
    if in_progress:
        notes.append("Still training (left out of the table, partial curves in the figures): " + ", ".join(in_progress))
    if missing:
        notes.append("Not run yet (left out): " + ", ".join(missing))
    with open(os.path.join(out, "table1.md"), "w") as f:
        f.write("\n\n".join(notes + sections) + "\n")
    write_csv(os.path.join(out, "table1.csv"), table_rows)

    run_rows = _run_rows(jobs, loaded)
    write_csv(os.path.join(out, "runs.csv"), run_rows)
    with open(os.path.join(out, "protocol.md"), "w") as f:
        f.write(_protocol_report(config, run_rows) + "\n")

    for loss in losses:
        groups = _group_runs(jobs, records, loss)
        if not groups:
            continue
        log_steps = config.eval_points_per_decade > 0
        for group, runs_by_lr in groups.items():
            name = group.split("_k")[0]
            plot_dynamics(
                runs_by_lr,
                os.path.join(out, f"dynamics_{group}_{loss}.png"),
                f"{group} | {loss} | {dataset}",
                eos_threshold=name in EOS_OPTIMIZERS,
                log_steps=log_steps,
            )
        plot_ece_vs_sharpness(
            groups,
            os.path.join(out, f"ece_vs_gn_sharpness_{loss}.png"),
            title=f"train ECE vs GN sharpness | {loss} | {dataset} (o first tracked step, x last)",
        )
        plain = {group: groups[group] for group in ("gd", "sgd") if group in groups}
        if plain:
            title = f"Figure 1 | {loss} | {dataset}: train ECE and GN sharpness, 2/lr dashed (seed mean)"
            plot_figure1(plain, os.path.join(out, f"figure1_{loss}.png"), title)
        plot_confidence_gap(
            groups,
            os.path.join(out, f"confidence_gap_{loss}.png"),
            f"over- (>0) and underconfidence (<0) on the train subset | {loss} | {dataset}",
        )

    mse_rows = _mse_rows(jobs, records)
    if mse_rows:
        write_csv(os.path.join(out, "mse_confidence.csv"), mse_rows)
        lines = [
            "| optimizer | lr | seed | step | train acc | train conf | train ECE | val acc | val conf | e/(e+K-1) |",
            "|---" * 10 + "|",
        ]
        lines += [
            f"| {r['optimizer']} | {r['learning_rate']:.3g} | {r['seed']} | {r['step']} | "
            f"{r['train_accuracy']:.3f} | {r['train_confidence']:.3f} | {r['train_ece']:.3f} | "
            f"{r['val_accuracy']:.3f} | {r['val_confidence']:.3f} | {r['optimum_confidence']:.3f} |"
            for r in mse_rows
        ]
        with open(os.path.join(out, "mse_confidence.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return out


def initial_sharpness(run: Run, losses: Sequence[str] = ("cross_entropy",)) -> dict[str, float]:
    """lambda_0: the GN sharpness of a run's initial parameters on its whole training subset, per loss.

    The quantity the learning rates of the plain gradient methods are chosen against (2/lr >
    lambda_0, so that each run starts below the edge of stability and sharpens into it; Cohen et
    al. 2021, arXiv:2103.00065; Morosini et al. 2026, arXiv:2604.20614, Sec. 3). The initial
    parameters depend on the seed and the model, not on the loss, so one run serves every loss.
    Lanczos stops at an estimated relative error of 1e-5.

    Args:
      run: a built run (``sam_jax.training.build_run``) whose ``init_state`` is measured.
      losses: loss names whose Gauss-Newton matrices are measured.

    Returns:
      ``{loss: lambda_0}``.
    """
    state = run.init_state
    subset = {"image": jnp.asarray(run.data.train.images), "label": jnp.asarray(run.data.train.labels)}

    @jax.jit
    def top(params):
        def apply_fn(p, x):
            return run.eval_step(p, state.model_state, x)

        return {
            loss: ritz_pairs(
                gauss_newton_operator(apply_fn, get_loss(loss), params, subset), params, num_iters=60, tol=1e-5
            ).values[0]
            for loss in losses
        }

    return {loss: float(value) for loss, value in top(state.params).items()}


def run_order(jobs: Sequence[Job], priority: Sequence[str] = ()) -> list[Job]:
    """Jobs in the order to train them: the cross-entropy runs of the ``priority`` groups (the
    grid's ``grid.priority``; Table 1's main rows) seed by seed, then the other cross-entropy runs
    and the other losses (App. D), seed by seed, one seed of each before the next, so an interrupted
    grid has whole seeds of the main table first and then one seed of every other row and figure.
    Within a seed, the priority groups train in their listed order."""

    def key(job: Job) -> tuple[bool, int, int, int]:
        cross_entropy = job.config.loss.name == "cross_entropy"
        tier = 0 if cross_entropy and job.group in priority else 1 if cross_entropy else 2
        rank = priority.index(job.group) if job.group in priority else len(priority)
        return (tier > 0, job.config.seed, tier, rank)

    return sorted(jobs, key=key)


def main(config: ml_collections.ConfigDict, mode: str = "all", shard: str = "0/1") -> None:
    """Runs one shard of the grid (``mode`` run), writes the report (``report``), or both (``all``).

    Args:
      config: the grid config (a preset of ``experiments/configs/curvature_calibration.py``).
      mode: one of ``MODES``.
      shard: ``"i/n"``: train only jobs ``i, i + n, ...`` of the grid. Processes started with the
        same shard share its jobs as a queue: each trains the next job that no other one holds.
    """
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}; choose one of {MODES}.")
    jobs = expand_grid(config)
    if mode in ("run", "all"):
        index, count = parse_shard(shard)
        run_jobs(
            shard_jobs(run_order(jobs, tuple(config.grid.get("priority", ()))), index, count),
            compilation_cache_dir=os.path.join(config.workdir, "jax_cache"),
            exclusive=True,
        )
    if mode == "export":
        print(f"Compact copy of the finished runs: {export(config, jobs)}")
    if mode in ("report", "all"):
        out = report(config, jobs)
        with open(os.path.join(out, "table1.md")) as f:
            print(f.read())
        print(f"Report: {out}")


if __name__ == "__main__":
    cli.run_grid(
        main,
        os.path.join(os.path.dirname(__file__), "configs", "curvature_calibration.py:quick"),
        MODES,
        "Train jobs, write the report, or both.",
    )
