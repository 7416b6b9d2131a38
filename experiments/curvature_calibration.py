""" "Too Sharp, Too Sure": calibration follows curvature along training (Morosini et al. 2026, arXiv:2604.20614).

    python -m experiments.curvature_calibration --config=experiments/configs/curvature_calibration.py:quick
    python -m experiments.curvature_calibration --config=...:fmnist --mode=run --shard=0/2   # and 1/2
    python -m experiments.curvature_calibration --config=...:fmnist --mode=report

``run`` trains the jobs of one shard of the grid (each resumable, finished ones skipped); ``report``
reads every job's ``metrics.jsonl`` and writes to ``<workdir>/report/``: Table 1 (Pearson correlation
of ECE and KCE with GN sharpness over each trajectory, mean +- std over learning rates; Markdown and
CSV), the App. C dynamics figure per optimizer and loss, the Figure A1 scatter of ECE vs GN sharpness,
and the App. D check of MSE underconfidence. ``all`` (default) runs then reports.
"""

import collections
import csv
import json
import math
import os
from typing import Any, Sequence

import ml_collections

from experiments import cli
from experiments.grid import Job, expand_grid, parse_shard, run_jobs, shard_jobs
from sam_jax.analysis import mean_std_over_learning_rates, plot_dynamics, plot_ece_vs_sharpness, trajectory_correlation
from sam_jax.calibration import mse_optimum_confidence
from sam_jax.data import NUM_CLASSES
from sam_jax.training import read_metrics
from sam_jax.training.writers import METRICS_FILE, SUMMARY_FILE

MODES = ("run", "report", "all")
# Table 1 rows: the paper's "Test" is held-out data; we use the validation split.
TABLE_ROWS = (("train", "ece"), ("train", "kce"), ("val", "ece"), ("val", "kce"))
# Optimizers whose sharpness is bounded by 2/lr at the edge of stability (no preconditioner).
EOS_OPTIMIZERS = ("gd", "sgd", "sam", "bulk_sgd")


def _load(job: Job) -> tuple[list[dict[str, Any]], bool]:
    """The job's metric records and whether it diverged; no records when it never started."""
    if not os.path.exists(os.path.join(job.workdir, METRICS_FILE)):
        return [], False
    diverged = False
    if os.path.exists(os.path.join(job.workdir, SUMMARY_FILE)):
        with open(os.path.join(job.workdir, SUMMARY_FILE)) as f:
            diverged = bool(json.load(f).get("diverged", False))
    return read_metrics(job.workdir), diverged


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:+.2f} ± {std:.2f}"


def _group_runs(jobs: Sequence[Job], records: dict[str, list], loss: str) -> dict[str, dict[float, list]]:
    """``{optimizer label: {learning_rate: [records of each seed]}}`` of the jobs of one loss that ran."""
    groups: dict[str, dict[float, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for job in jobs:
        if job.config.loss.name == loss and records[job.name]:
            groups[job.group][job.config.optimizer.learning_rate].append(records[job.name])
    return groups


def _table(jobs: Sequence[Job], records: dict[str, list], loss: str) -> list[dict[str, Any]]:
    """Table 1 cells for one loss: one row per (group, split, metric)."""
    rows = []
    for group, runs_by_lr in _group_runs(jobs, records, loss).items():
        for split, metric in TABLE_ROWS:
            correlations = {
                lr: [trajectory_correlation(r, f"{split}/{metric}") for r in runs] for lr, runs in runs_by_lr.items()
            }
            mean, std, n = mean_std_over_learning_rates(correlations)
            rows.append(
                {
                    "loss": loss,
                    "optimizer": group,
                    "split": split,
                    "metric": metric,
                    "mean": mean,
                    "std": std,
                    "num_learning_rates": n,
                    "seeds": max(len(runs) for runs in runs_by_lr.values()),
                }
            )
    return rows


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    groups = list(dict.fromkeys(r["optimizer"] for r in rows))
    cells = {(r["optimizer"], r["split"], r["metric"]): _fmt(r["mean"], r["std"]) for r in rows}
    lines = ["| split | metric | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for split, metric in TABLE_ROWS:
        label = "train" if split == "train" else "validation (held out)"
        lines.append(
            f"| {label} | {metric.upper()} | " + " | ".join(cells.get((g, split, metric), "n/a") for g in groups) + " |"
        )
    return "\n".join(lines)


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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
    # Diverged runs stay in the figures (up to divergence) but not in the correlations.
    clean = {name: ([] if bad else records) for name, (records, bad) in loaded.items()}
    records = {name: records for name, (records, _) in loaded.items()}

    dataset = config.data.name
    losses = list(dict.fromkeys(job.config.loss.name for job in jobs))
    table_rows, sections = [], []
    for loss in losses:
        rows = _table(jobs, clean, loss)
        if rows:
            table_rows += rows
            sections.append(f"### {loss}\n\n{_markdown_table(rows)}")
    notes = [
        f"Pearson correlation of ECE / KCE with GN sharpness over each training trajectory, "
        f"mean ± std (ddof=0) over learning rates (seeds averaged first); {dataset}, "
        f"MLP 2x200 tanh, {config.data.train_size} train / {config.data.val_size} validation."
    ]
    if diverged:
        notes.append("Diverged (left out of the table, partial curves in the figures): " + ", ".join(diverged))
    if missing:
        notes.append("Not run yet (left out): " + ", ".join(missing))
    with open(os.path.join(out, "table1.md"), "w") as f:
        f.write("\n\n".join(notes + sections) + "\n")
    _write_csv(os.path.join(out, "table1.csv"), table_rows)

    for loss in losses:
        groups = _group_runs(jobs, records, loss)
        for group, runs_by_lr in groups.items():
            name = group.split("_k")[0]
            plot_dynamics(
                runs_by_lr,
                os.path.join(out, f"dynamics_{group}_{loss}.png"),
                f"{group} | {loss} | {dataset}",
                eos_threshold=name in EOS_OPTIMIZERS,
            )
        plot_ece_vs_sharpness(
            groups,
            os.path.join(out, f"ece_vs_gn_sharpness_{loss}.png"),
            title=f"train ECE vs GN sharpness | {loss} | {dataset} (o first tracked step, x last)",
        )

    mse_rows = _mse_rows(jobs, records)
    if mse_rows:
        _write_csv(os.path.join(out, "mse_confidence.csv"), mse_rows)
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


def main(config: ml_collections.ConfigDict, mode: str = "all", shard: str = "0/1") -> None:
    """Runs one shard of the grid (``mode`` run), writes the report (``report``), or both (``all``).

    Args:
      config: the grid config (a preset of ``experiments/configs/curvature_calibration.py``).
      mode: one of ``MODES``.
      shard: ``"i/n"``: train only jobs ``i, i + n, ...`` of the grid.
    """
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}; choose one of {MODES}.")
    jobs = expand_grid(config)
    if mode in ("run", "all"):
        index, count = parse_shard(shard)
        run_jobs(shard_jobs(jobs, index, count), compilation_cache_dir=os.path.join(config.workdir, "jax_cache"))
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
