"""Stable SAM's learning-rate regime: SGD, SAM and SSAM over a log grid of learning rates (Tan et al. 2024).

    python -m experiments.ssam_regime --config=experiments/configs/ssam_regime.py:quick
    python -m experiments.ssam_regime --config=experiments/configs/ssam_regime.py:fmnist --mode=run --shard=0/2
    python -m experiments.ssam_regime --config=experiments/configs/ssam_regime.py:fmnist --mode=run --shard=1/2
    python -m experiments.ssam_regime --config=experiments/configs/ssam_regime.py:fmnist --mode=export
    python -m experiments.ssam_regime --config=experiments/configs/ssam_regime.py:fmnist --mode=report

Tan et al. (2024, arXiv:2401.07250, abstract): compared with SGD, SAM's benefit "is only assured in
a limited regime of learning rate", and SSAM "extends this regime of learning rate" and "can
consistently perform better than SAM". ``run`` trains one shard of the grid (seed-major; each job
resumable, locked while it trains, skipped once finished; a diverged job is recorded as such) and
tracks, on every run with a perturbation radius, the ratio of SAM's descent- to ascent-gradient norm
(``sam_jax.training.hooks.make_descent_norm_tracker``; SSAM divides its step by exactly this ratio).
``report`` writes ``<workdir>/report/``: ``ssam_regime.md`` (final test accuracy, NLL and ECE per
method and learning rate, mean +- std over seeds; for each comparison of ``regime.comparisons``, the
learning rates where the first method beats the second by more than the seeds' spread; the ratio
along training), ``table.csv``, ``comparisons.csv``, ``ratio.csv``, ``metrics_vs_lr.png`` and
``descent_ascent_ratio.png``. ``export`` writes a compact copy of the finished jobs (config, summary,
the records the report reads) to ``<workdir>/compact/``; ``report`` and ``run`` work on it with
``--config.workdir=<it>``. ``all`` (default) runs, then reports.
"""

import collections
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import runner
from experiments.grid import Job, JobHooks, expand_grid
from experiments.runner import Experiment
from experiments.store import Kept, kept_keys
from experiments.tables import markdown_table, mean_std, write_csv
from sam_jax import data
from sam_jax.analysis.regime_figures import plot_metrics_vs_learning_rate, plot_ratio_trajectories
from sam_jax.data import DISPLAY_NAMES
from sam_jax.losses import get_loss
from sam_jax.training import Hook, Run, read_metrics
from sam_jax.training.config import chosen_hparams, optimizer_hparams
from sam_jax.training.hooks import make_descent_norm_tracker
from sam_jax.training.hooks.descent_norm import PREFIX as RATIO_PREFIX
from sam_jax.training.writers import METRICS_FILE

# Final test metrics of the report: (key in summary.json, label, higher is better, digits).
METRICS = (
    ("test/accuracy", "test accuracy", True, 4),
    ("test/nll", "test NLL", False, 4),
    ("test/ece", "test ECE", False, 4),
)
RATIO = RATIO_PREFIX + "ratio_mean"
# The fractions of training at which the ratio table reads the seed-mean trajectory.
RATIO_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# What ``export`` keeps of each metrics record.
EXPORT_KEYS = (
    ("step", "train_step/loss", "train/loss", "train/accuracy", "val/accuracy", "val/nll", "val/ece")
    + tuple(key for key, *_ in METRICS)
    + tuple(RATIO_PREFIX + k for k in ("ratio_mean", "ratio_std", "ratio_min", "ratio_max", "cosine_mean"))
)


def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The grid config without the driver's ``regime`` block."""
    copy = ml_collections.ConfigDict(config.to_dict())
    del copy["regime"]
    return copy


def grid_jobs(config: ml_collections.ConfigDict) -> list[Job]:
    """The grid's jobs, seed-major, so that an interrupted grid has whole seeds."""
    return sorted(expand_grid(run_config(config)), key=lambda job: job.config.seed)


def ratio_hooks(regime: ml_collections.ConfigDict) -> JobHooks:
    """``hooks(job, run)`` for the grid runner: the descent/ascent norm tracker on runs with a radius.

    The tracker's examples are ``regime.ratio_batches`` batches of the run's size, drawn from the
    train subset by a permutation seeded with ``regime.ratio_seed`` (the same for every run).
    """

    def hooks(job: Job, run: Run) -> Sequence[Hook]:
        hparams = optimizer_hparams(job.config)[job.config.optimizer.name]
        rho = run.optimizer.perturbation_radius(hparams)
        if rho is None:
            return ()
        loss_fn = get_loss(job.config.loss.name, **chosen_hparams(job.config.loss))
        tracker = make_descent_norm_tracker(run.eval_step, loss_fn, rho, batch_size=run.batch_size)
        train = run.data.train
        index = data.epoch_permutation(len(train.labels), regime.ratio_seed, 0)[: regime.ratio_batches * run.batch_size]
        images, labels = jnp.asarray(train.images[index]), jnp.asarray(train.labels[index])
        return (Hook(regime.ratio_every, lambda state: tracker(state.params, state.model_state, images, labels)),)

    return hooks


def final_results(jobs: Sequence[Job]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """``(group, learning rate) -> one entry per finished seed``: its seed, whether it diverged and its
    final test metrics (NaN for a diverged run). Unfinished jobs are left out."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = collections.defaultdict(list)
    for job in jobs:
        summary = job.summary()
        if not summary:
            continue
        diverged = bool(summary.get("diverged", False))
        entry = {"seed": job.config.seed, "diverged": diverged, "wall_time_s": summary.get("wall_time_s", math.nan)}
        entry.update({key: math.nan if diverged else float(summary.get(key, math.nan)) for key, *_ in METRICS})
        cells[(job.group, job.config.optimizer.learning_rate)].append(entry)
    return cells


def table_rows(cells: Mapping[tuple[str, float], Sequence[Mapping[str, Any]]], seeds: int) -> list[dict[str, Any]]:
    """One row per (method, learning rate): seeds finished and diverged, mean and std of each metric."""
    rows = []
    for (group, learning_rate), runs in sorted(cells.items(), key=lambda item: (item[0][0], item[0][1])):
        row: dict[str, Any] = {
            "method": group,
            "learning_rate": learning_rate,
            "seeds_finished": len(runs),
            "seeds_planned": seeds,
            "diverged": sum(r["diverged"] for r in runs),
        }
        for key, *_ in METRICS:
            mean, std = mean_std([r[key] for r in runs])
            name = key.split("/")[-1]
            row[f"{name}_mean"], row[f"{name}_std"] = mean, std
        rows.append(row)
    return rows


def compare(row: Mapping[str, Any] | None, reference: Mapping[str, Any] | None, metric: str, higher: bool) -> str:
    """Whether ``row``'s method beats ``reference``'s at one learning rate on ``metric``.

    ``"better"``: both have every planned seed, the method none diverged, and its mean is better
    than the reference's by more than the sum of the two standard deviations (the seeds' spread),
    or the reference diverged on some seed; ``"worse"``: the same the other way round; ``"tie"``
    otherwise; ``"incomplete"`` while a seed of either is missing.
    """
    if row is None or reference is None:
        return "incomplete"
    if any(r["seeds_finished"] < r["seeds_planned"] for r in (row, reference)):
        return "incomplete"
    if row["diverged"] or reference["diverged"]:
        if row["diverged"] and reference["diverged"]:
            return "tie"
        return "worse" if row["diverged"] else "better"
    sign = 1.0 if higher else -1.0
    gap = sign * (row[f"{metric}_mean"] - reference[f"{metric}_mean"])
    spread = row[f"{metric}_std"] + reference[f"{metric}_std"]
    return "better" if gap > spread else "worse" if -gap > spread else "tie"


def comparison_rows(rows: Sequence[Mapping[str, Any]], comparisons: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """For each (method, reference) pair and metric: the verdict at every learning rate, and the
    learning rates where the method is better (their range and whether they are contiguous in the grid)."""
    by_cell = {(r["method"], r["learning_rate"]): r for r in rows}
    rates = sorted({r["learning_rate"] for r in rows})
    out = []
    for method, reference in comparisons:
        for key, _, higher, _ in METRICS:
            metric = key.split("/")[-1]
            verdicts = {
                lr: compare(by_cell.get((method, lr)), by_cell.get((reference, lr)), metric, higher) for lr in rates
            }
            better = [lr for lr in rates if verdicts[lr] == "better"]
            positions = [rates.index(lr) for lr in better]
            out.append(
                {
                    "method": method,
                    "reference": reference,
                    "metric": metric,
                    "better_at": " ".join(f"{lr:g}" for lr in better),
                    "lowest": min(better) if better else math.nan,
                    "highest": max(better) if better else math.nan,
                    "contiguous": bool(better) and positions == list(range(positions[0], positions[0] + len(better))),
                    "worse_at": " ".join(f"{lr:g}" for lr in rates if verdicts[lr] == "worse"),
                    "incomplete_at": " ".join(f"{lr:g}" for lr in rates if verdicts[lr] == "incomplete"),
                    **{f"lr{lr:g}": verdicts[lr] for lr in rates},
                }
            )
    return out


def ratio_trajectories(jobs: Sequence[Job]) -> dict[tuple[str, float], list[list[tuple[int, float]]]]:
    """``(group, learning rate) -> per seed, [(step, descent/ascent ratio)]`` of the tracked runs."""
    out: dict[tuple[str, float], list[list[tuple[int, float]]]] = collections.defaultdict(list)
    for job in jobs:
        if not os.path.exists(os.path.join(job.workdir, METRICS_FILE)):
            continue
        points = [(int(r["step"]), float(r[RATIO])) for r in read_metrics(job.workdir) if RATIO in r]
        if points:
            out[(job.group, job.config.optimizer.learning_rate)].append(points)
    return out


def _seed_mean(runs: Sequence[Sequence[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps tracked in every seed, and the seeds' mean ratio there."""
    common = sorted(set.intersection(*(set(step for step, _ in run) for run in runs)))
    values = [dict(run) for run in runs]
    return np.asarray(common), np.asarray([np.mean([v[s] for v in values]) for s in common])


def ratio_rows(trajectories: Mapping[tuple[str, float], Sequence]) -> list[dict[str, Any]]:
    """Per (method, learning rate): the seed-mean ratio at ``RATIO_POINTS`` of its tracked steps, its
    minimum and maximum along training, and the seeds it averages."""
    rows = []
    for (group, learning_rate), runs in sorted(trajectories.items()):
        steps, mean = _seed_mean(runs)
        if not len(steps):
            continue
        row = {"method": group, "learning_rate": learning_rate, "seeds": len(runs), "last_step": int(steps[-1])}
        for fraction in RATIO_POINTS:
            row[f"ratio_at_{fraction:g}"] = float(mean[int(np.argmin(np.abs(steps - fraction * steps[-1])))])
        row["ratio_min"], row["ratio_max"] = float(mean.min()), float(mean.max())
        rows.append(row)
    return rows


def _cell(row: Mapping[str, Any] | None, metric: str, digits: int) -> str:
    if row is None:
        return "not run"
    text = f"{row[f'{metric}_mean']:.{digits}g} ± {row[f'{metric}_std']:.{digits}g}"
    if row["diverged"] == row["seeds_finished"]:
        text = "diverged"
    elif row["diverged"]:
        text += f" ({row['diverged']} diverged)"
    if row["seeds_finished"] < row["seeds_planned"]:
        text += f" [{row['seeds_finished']}/{row['seeds_planned']} seeds]"
    return text


def _metric_tables(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[str]:
    by_cell = {(r["method"], r["learning_rate"]): r for r in rows}
    rates = sorted({r["learning_rate"] for r in rows})
    sections = []
    for key, label, higher, digits in METRICS:
        metric = key.split("/")[-1]
        body = [[f"{lr:g}"] + [_cell(by_cell.get((m, lr)), metric, digits) for m in methods] for lr in rates]
        arrow = "higher is better" if higher else "lower is better"
        sections.append(f"### Final {label} ({arrow})\n\n" + "\n".join(markdown_table(["lr"] + list(methods), body)))
    return sections


def _range(row: Mapping[str, Any]) -> str:
    if not row["better_at"]:
        return "-"
    return f"{row['lowest']:g} to {row['highest']:g}" + ("" if row["contiguous"] else " (with gaps)")


def _comparison_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = [
        [
            f"{r['method']} vs {r['reference']}",
            r["metric"],
            r["better_at"] or "none",
            "-"
            if not r["better_at"]
            else f"{r['lowest']:g} to {r['highest']:g}" + ("" if r["contiguous"] else " (gaps)"),
            r["worse_at"] or "none",
            r["incomplete_at"] or "-",
        ]
        for r in rows
    ]
    header = ["comparison", "metric", "better at lr", "range", "worse at lr", "incomplete at lr"]
    return "\n".join(markdown_table(header, body))


def _ratio_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ["method", "lr", "seeds"] + [f"at {f:.0%} of training" for f in RATIO_POINTS] + ["min", "max"]
    body = [
        [r["method"], f"{r['learning_rate']:g}", str(r["seeds"])]
        + [f"{r[f'ratio_at_{f:g}']:.3f}" for f in RATIO_POINTS]
        + [f"{r['ratio_min']:.3f}", f"{r['ratio_max']:.3f}"]
        for r in rows
    ]
    return "\n".join(markdown_table(header, body))


def report(config: ml_collections.ConfigDict, jobs: Sequence[Job], out: str | None = None) -> str:
    """Writes the report of the finished jobs to ``out`` (default ``<workdir>/report``); returns it.

    Raises:
      ValueError: no job has finished yet.
    """
    cells = final_results(jobs)
    if not cells:
        raise ValueError(f"No job of the grid has finished under {config.workdir}; run --mode=run first.")
    out = out or os.path.join(config.workdir, "report")
    os.makedirs(out, exist_ok=True)
    # Columns: each comparison's reference before its method (sgd, sam, ssam), then any other label.
    order = [label for pair in config.regime.comparisons for label in reversed(tuple(pair))]
    methods = list(dict.fromkeys(order + sorted(config.grid.optimizers.keys())))
    rows = table_rows(cells, len(config.grid.seeds))
    comparisons = comparison_rows(rows, [tuple(pair) for pair in config.regime.comparisons])
    trajectories = ratio_trajectories(jobs)
    ratios = ratio_rows(trajectories)
    write_csv(os.path.join(out, "table.csv"), rows)
    write_csv(os.path.join(out, "comparisons.csv"), comparisons)
    write_csv(os.path.join(out, "ratio.csv"), ratios)
    dataset = DISPLAY_NAMES[config.data.name]
    budget = f"{config.num_steps} steps" if config.num_steps else f"{config.num_epochs} epochs"
    sgd = config.optimizer.sgd
    rhos = {
        name: spec.overrides.optimizer[name].rho for name, spec in config.grid.optimizers.items() if "overrides" in spec
    }
    missing = [job.name for job in jobs if not job.summary()]
    diverged = [job.name for job in jobs if job.summary().get("diverged")]
    device = sorted({str(job.summary().get("device", "")) for job in jobs if job.summary().get("device")})
    notes = [
        f"# Stable SAM's learning-rate regime: {dataset} / {config.model.name}",
        f"{dataset}, {config.model.name}, {budget}, batch {config.batch_size}, {config.optimizer.schedule} schedule; "
        f"SGD base for every method: momentum {sgd.momentum:g}, L2 weight decay {sgd.weight_decay:g}; radius "
        + ", ".join(f"{name} rho {rho:g}" for name, rho in rhos.items())
        + f"; seeds {tuple(config.grid.seeds)}; devices: {', '.join(device) or 'unknown'}. Mean ± std (ddof 0) over "
        "the seeds that did not diverge. A method beats another at a learning rate when every seed of both "
        "finished, and its mean is better by more than the sum of their standard deviations, or only the other "
        "one diverged on some seed.",
    ]
    if diverged:
        notes.append("Diverged (no final metrics): " + ", ".join(diverged))
    if missing:
        notes.append("Not finished yet (left out): " + ", ".join(missing))
    sections = notes + ["## Final test metrics"] + _metric_tables(rows, methods)
    sections += ["## Where each method beats its reference", _comparison_table(comparisons)]
    if ratios:
        sections += [
            "## Descent / ascent gradient-norm ratio along training",
            f"`{RATIO}`: mean over {config.regime.ratio_batches} fixed training batches of ||grad L_B(w + e)|| / "
            f"||grad L_B(w)||, every {config.regime.ratio_every} steps, then over seeds. SSAM rescales its descent "
            "gradient by the inverse of this ratio; for SSAM runs the ratio is measured before that rescaling.",
            _ratio_table(ratios),
        ]
    with open(os.path.join(out, "ssam_regime.md"), "w") as f:
        f.write("\n\n".join(sections) + "\n")
    title = f"{dataset} / {config.model.name}, {budget}: final test metrics vs learning rate (mean ± std over seeds)"
    metrics = [(key, label, higher) for key, label, higher, _ in METRICS]
    plot_metrics_vs_learning_rate(rows, methods, metrics, os.path.join(out, "metrics_vs_lr.png"), title)
    if trajectories:
        plot_ratio_trajectories(
            {cell: _seed_mean(runs) for cell, runs in trajectories.items()},
            os.path.join(out, "descent_ascent_ratio.png"),
            f"{dataset} / {config.model.name}",
        )
    return out


EXPERIMENT = Experiment(
    name="ssam_regime",
    default_config=os.path.join(os.path.dirname(__file__), "configs", "ssam_regime.py:quick"),
    jobs=grid_jobs,
    report=report,
    report_file="ssam_regime.md",
    hooks=lambda config: ratio_hooks(config.regime),
    exclusive=True,
    keep=lambda config, job: Kept(metrics=kept_keys(EXPORT_KEYS)),
)
main = functools.partial(runner.main, EXPERIMENT)

if __name__ == "__main__":
    runner.run_from_command_line(EXPERIMENT)
