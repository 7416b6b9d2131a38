"""The curvature-calibration report: Table 1 in its variants beside the paper's, the protocol, the
figures and the App. D check of MSE's confidence (Morosini et al. 2026, arXiv:2604.20614)."""

import collections
import math
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from experiments.curvature_calibration.protocol import EOS_OPTIMIZERS, PAPER_TABLE1, TABLE_ROWS, VARIANTS
from experiments.curvature_calibration.runs import load_run, protocol_report, run_rows
from experiments.grid import Job
from experiments.tables import markdown_table, mean_std_cell, write_csv, write_table
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


def _paper(group: str, split: str, metric: str) -> str:
    return mean_std_cell(*PAPER_TABLE1[(split, metric)][group], "+.2f")


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
    cells = {(r["optimizer"], r["split"], r["metric"]): mean_std_cell(r["mean"], r["std"], "+.2f") for r in rows}
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


# mse_confidence.md: (header, key of the row, format).
MSE_COLUMNS = (
    ("optimizer", "optimizer", ""),
    ("lr", "learning_rate", ".3g"),
    ("seed", "seed", ""),
    ("step", "step", ""),
    ("train acc", "train_accuracy", ".3f"),
    ("train conf", "train_confidence", ".3f"),
    ("train ECE", "train_ece", ".3f"),
    ("val acc", "val_accuracy", ".3f"),
    ("val conf", "val_confidence", ".3f"),
    ("e/(e+K-1)", "optimum_confidence", ".3f"),
)


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


def report(config: ml_collections.ConfigDict, jobs: Sequence[Job], out: str | None = None) -> str:
    """Writes Table 1, the figures and the MSE check to ``out`` (default ``<workdir>/report``).

    Args:
      config: the grid config (its ``workdir`` holds the jobs).
      jobs: the grid's jobs (:func:`experiments.grid.expand_grid`); jobs not run yet are listed
        in ``table1.md`` and left out.
      out: the report folder.

    Returns:
      The report directory.

    Raises:
      ValueError: no job has metrics yet.
    """
    out = out or os.path.join(config.workdir, "report")
    os.makedirs(out, exist_ok=True)
    loaded = {job.name: load_run(job) for job in jobs}
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

    # The groups whose sharpness 2/lr bounds (their optimizer has no preconditioner).
    plain_groups = {job.group for job in jobs if job.config.optimizer.name in EOS_OPTIMIZERS}
    rows = run_rows(jobs, loaded)
    write_csv(os.path.join(out, "runs.csv"), rows)
    with open(os.path.join(out, "protocol.md"), "w") as f:
        f.write(protocol_report(config, rows, plain_groups) + "\n")

    for loss in losses:
        groups = _group_runs(jobs, records, loss)
        if not groups:
            continue
        log_steps = config.eval_points_per_decade > 0
        for group, runs_by_lr in groups.items():
            plot_dynamics(
                runs_by_lr,
                os.path.join(out, f"dynamics_{group}_{loss}.png"),
                f"{group} | {loss} | {dataset}",
                eos_threshold=group in plain_groups,
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
        lines = write_table(os.path.join(out, "mse_confidence.csv"), mse_rows, MSE_COLUMNS)
        with open(os.path.join(out, "mse_confidence.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return out
